#!/usr/bin/env bash
# Creates (once) the git-ignored Python venv the test suite needs: moto (KMS
# peer), helm-python-sdk (real Helm library), kubernetes-validate.
# Idempotent and safe to call from parallel tests (flock). Prints the venv's
# python path on stdout; everything else goes to stderr.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${KMSECRETS_VENV:-$root/.venv}"
req="$root/tests/python-requirements.txt"
stamp="$venv/.kmsecrets-stamp"
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [[ ! -x "$venv/bin/python" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  py="$(command -v python3 || command -v python || true)"
  if [[ -z "$py" ]]; then
    echo "ensure-venv: no python3 on PATH; install Python 3.9+ (apt-get install python3 python3-venv)" >&2
    exit 1
  fi
  echo "ensure-venv: creating $venv (one-off, ~1 min)" >&2
  rm -rf "$venv"
  "$py" -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req" >&2
  echo "$want" >"$stamp"
fi
echo "$venv/bin/python"
