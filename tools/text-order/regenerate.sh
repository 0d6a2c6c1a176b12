#!/usr/bin/env bash
# Regenerates tools/text-order/hot.ld: profiles the image's controller
# (release, --no-default-features --features jemalloc) under callgrind on the
# real control plane — a local-key cold start, an AWS-path cold start
# through moto with a resync window, and the peers benchmark's kmsecrets row
# (100 namespaces) — and lists the functions that ran.
# The symbol names do not depend on the order (build.rs adds a link argument
# only). Run after a dependency, toolchain or feature change (their symbol hashes
# change; stale names still match through the hashless patterns). ~10 min.
# Needs valgrind (apt-get install valgrind) and what the examples need
# (scripts/ensure-k8s-tools.sh builds the control plane).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
command -v valgrind >/dev/null || { echo "regenerate: valgrind missing (apt-get install valgrind)" >&2; exit 1; }
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
image=(--release --locked --no-default-features --features jemalloc --bin kmsecrets --target-dir target/image)
# Profiled without the order: valgrind names only functions inside `.text`.
KMSECRETS_TEXT_ORDER=0 cargo build --quiet "${image[@]}"
cargo build --quiet --release --example scale_real --example peers_bench
bin="$root/target/image/release/kmsecrets"
cat >"$out/wrap" <<WRAP
#!/usr/bin/env bash
if [ "\$1" = controller ]; then
  exec valgrind --quiet --tool=callgrind --dump-instr=no --demangle=no --compress-strings=no \
    --callgrind-out-file="$out/callgrind.\${TEXT_ORDER_SCENARIO:?}.\$\$" "$bin" "\$@"
fi
exec "$bin" "\$@"
WRAP
chmod +x "$out/wrap"
export KMSECRETS_BIN="$out/wrap"
# the scenario names the profile (collect.py orders by it: code every run
# executes first, then the local-key path's, then the AWS path's)
TEXT_ORDER_SCENARIO=local SCALE_STEADY=0 target/release/examples/scale_real 2000 2000 0 real local >&2
TEXT_ORDER_SCENARIO=peers target/release/examples/peers_bench 1000 kmsecrets >&2
TEXT_ORDER_SCENARIO=aws SCALE_STEADY=20 SCALE_CONTROLLER_ARGS="--resync-interval 15s" \
  target/release/examples/scale_real 2000 200 100 real aws >&2
python3 tools/text-order/collect.py tools/text-order/hot.ld \
  "$out"/callgrind.local.* "$out"/callgrind.peers.* "$out"/callgrind.aws.*
cargo build --quiet "${image[@]}"
readelf -S -W "$bin" | grep -E ' \.text' >&2
