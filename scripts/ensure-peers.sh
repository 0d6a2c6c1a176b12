#!/usr/bin/env bash
# Builds (once) the peers the benchmark examples/peers_bench.rs runs beside
# kmsecrets, from the modules pinned under tools/peers/ through the Go
# module proxy (not part of the test suite; the External Secrets build takes
# ~10 min cold on 2 cores):
#   bin/sealed-secrets-controller  github.com/bitnami-labs/sealed-secrets cmd/controller (v0.40.0)
#   bin/sealbulk                   seals Secrets offline with Sealed Secrets' pkg/crypto
#   bin/external-secrets           github.com/external-secrets/external-secrets (v0.16.2)
#   crds/<peer>/*.yaml             each peer's CRDs, copied from its module
# Cached outside the repo keyed by the sources, e.g.
# ~/.cache/kmsecrets/peers/<hash>; prints that directory on stdout.
#
#   KMSECRETS_TOOLS_CACHE  cache root's parent (default ${XDG_CACHE_HOME:-~/.cache}/kmsecrets/tools)
#   GO                     go command (default: go on PATH, else /usr/local/go/bin/go)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
peers="$root/tools/peers"
cache="$(dirname "${KMSECRETS_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kmsecrets/tools}")/peers"
go="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
if [[ ! -x "$go" ]]; then
  echo "ensure-peers: no Go toolchain (looked for go on PATH and /usr/local/go/bin/go); install Go 1.26+" >&2
  exit 1
fi
key="$(cd "$peers" && cat "$root/scripts/ensure-peers.sh" $(find . -name '*.go' -o -name go.mod -o -name go.sum | sort) | sha256sum | cut -c1-16)"
dir="$cache/$key"
mkdir -p "$cache"
exec 9>"$cache/$key.lock"
flock 9
if [[ -f "$dir/.complete" ]]; then
  echo "$dir"
  exit 0
fi
stage="$dir.partial"
rm -rf "$stage"
mkdir -p "$stage/bin" "$stage/crds/sealed-secrets" "$stage/crds/external-secrets"
export GOFLAGS="${GOFLAGS:-} -buildvcs=false -mod=readonly"
export CGO_ENABLED=0
build() { # module dir, output, package
  local t0=$SECONDS
  echo "ensure-peers: go build $3 ..." >&2
  (cd "$peers/$1" && "$go" build -trimpath -ldflags "-s -w" -o "$stage/bin/$2" "$3") >&2
  echo "ensure-peers: built $2 in $((SECONDS - t0)) s" >&2
}
moddir() { (cd "$peers/$1" && "$go" list -m -f '{{.Dir}}' "$2"); }

build sealed-secrets sealed-secrets-controller github.com/bitnami/sealed-secrets/cmd/controller
build sealed-secrets sealbulk ./sealbulk
cp "$(moddir sealed-secrets github.com/bitnami/sealed-secrets)"/helm/sealed-secrets/crds/*.yaml "$stage/crds/sealed-secrets/"
build external-secrets external-secrets github.com/external-secrets/external-secrets
cp "$(moddir external-secrets github.com/external-secrets/external-secrets)"/config/crds/bases/*.yaml "$stage/crds/external-secrets/"
rm -f "$stage/crds/external-secrets/kustomization.yaml"
chmod -R u+w "$stage/crds"
rm -rf "$dir"
mv "$stage" "$dir"
touch "$dir/.complete"
echo "$dir"
