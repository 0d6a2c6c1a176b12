#!/usr/bin/env bash
# Builds (once) the small Go helpers the test suite runs, from the pinned
# modules under tools/helpers/ (gitops-checks: Argo CD's Lua VM, gopher-lua,
# and sigs.k8s.io/cli-utils kstatus). Kept apart from ensure-k8s-tools.sh so
# a change here never rebuilds the control plane. Cached outside the repo,
# keyed by the sources, e.g. ~/.cache/kmsecrets/helpers/<hash>/bin; prints
# that bin dir on stdout. Idempotent and safe from parallel tests (flock).
#
#   KMSECRETS_TOOLS_CACHE  cache root's parent (default ${XDG_CACHE_HOME:-~/.cache}/kmsecrets/tools)
#   GO                     go command (default: go on PATH, else /usr/local/go/bin/go)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
helpers="$root/tools/helpers"
cache="$(dirname "${KMSECRETS_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kmsecrets/tools}")/helpers"
go="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
if [[ ! -x "$go" ]]; then
  echo "ensure-go-helpers: no Go toolchain (looked for go on PATH and /usr/local/go/bin/go); install Go 1.26+" >&2
  exit 1
fi
key="$(cd "$helpers" && cat "$root/scripts/ensure-go-helpers.sh" $(find . -name '*.go' -o -name go.mod -o -name go.sum | sort) | sha256sum | cut -c1-16)"
dir="$cache/$key"
mkdir -p "$cache"
exec 9>"$cache/$key.lock"
flock 9
if [[ -f "$dir/.complete" ]]; then
  echo "$dir/bin"
  exit 0
fi
stage="$dir.partial"
rm -rf "$stage"
mkdir -p "$stage/bin"
export GOFLAGS="${GOFLAGS:-} -buildvcs=false -mod=readonly"
export CGO_ENABLED=0
for m in "$helpers"/*/; do
  name="$(basename "$m")"
  t0=$SECONDS
  echo "ensure-go-helpers: go build $name ..." >&2
  (cd "$m" && "$go" build -trimpath -ldflags "-s -w" -o "$stage/bin/$name" .) >&2
  echo "ensure-go-helpers: built $name in $((SECONDS - t0)) s" >&2
done
rm -rf "$dir"
mv "$stage" "$dir"
touch "$dir/.complete"
echo "$dir/bin"
