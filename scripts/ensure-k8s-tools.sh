#!/usr/bin/env bash
# Builds (once) the real control plane and peers the test suite runs, from the
# pinned modules under tools/: kube-apiserver, kube-controller-manager and
# kubectl (k8s.io/kubernetes, one `go build` so shared packages compile once),
# etcd, helm, local-kms. The binaries go to a cache outside the repo keyed by
# the pins (go.mod/go.sum of every tools/ module and this script), e.g.
#   ~/.cache/kmsecrets/tools/<hash>/bin
# Idempotent and safe to call from parallel tests (flock). Prints the bin dir
# on stdout; progress goes to stderr. A cold build takes tens of minutes on
# 2 cores; later calls return at once.
#
#   KMSECRETS_TOOLS_CACHE  cache root (default ${XDG_CACHE_HOME:-~/.cache}/kmsecrets/tools)
#   GO                     go command (default: go on PATH, else /usr/local/go/bin/go)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tools="$root/tools"
cache="${KMSECRETS_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kmsecrets/tools}"
go="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
if [[ ! -x "$go" ]]; then
  echo "ensure-k8s-tools: no Go toolchain (looked for go on PATH and /usr/local/go/bin/go); install Go 1.26+" >&2
  exit 1
fi

k8s_version=v1.37.2
helm_version=v4.3.1

key="$(cd "$tools" && cat "$root/scripts/ensure-k8s-tools.sh" */go.mod */go.sum | sha256sum | cut -c1-16)"
dir="$cache/$key"
bin="$dir/bin"
mkdir -p "$cache"
exec 9>"$cache/$key.lock"
flock 9
if [[ -f "$dir/.complete" ]]; then
  echo "$bin"
  exit 0
fi

log() { echo "ensure-k8s-tools: $*" >&2; }
log "building the pinned control plane into $bin (one-off; tens of minutes cold on 2 cores)"
stage="$dir.partial"
rm -rf "$stage"
mkdir -p "$stage/bin"
export GOFLAGS="${GOFLAGS:-} -buildvcs=false -mod=readonly"
export CGO_ENABLED=0
build() { # name, module dir, ldflags, packages...
  local name="$1" mod="$2" ld="$3"
  shift 3
  local t0=$SECONDS
  log "go build $name ..."
  (cd "$tools/$mod" && "$go" build -trimpath -pgo=off -ldflags "-s -w $ld" -o "$stage/bin/" "$@") >&2
  log "built $name in $((SECONDS - t0)) s"
}

k8s_ld=""
minor="${k8s_version#v1.}"
minor="${minor%%.*}"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ld+=" -X $p.gitVersion=$k8s_version -X $p.gitMajor=1 -X $p.gitMinor=$minor"
  k8s_ld+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done
build "kube-apiserver, kube-controller-manager, kubectl $k8s_version" kubernetes "$k8s_ld" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl
build etcd etcd "" go.etcd.io/etcd/server/v3
mv "$stage/bin/server" "$stage/bin/etcd" # go names .../server/v3 "server"
build "helm $helm_version" helm "-X helm.sh/helm/v4/internal/version.version=$helm_version" helm.sh/helm/v4/cmd/helm
build local-kms local-kms "" github.com/nsmithuk/local-kms

rm -rf "$dir"
mv "$stage" "$dir"
touch "$dir/.complete"
log "done: $(du -sh "$bin" | cut -f1) in $bin"
echo "$bin"
