#!/usr/bin/env bash
# Coverage-guided fuzzing of the untrusted-input parsers (fuzz/), each target
# for SECONDS (default 600). Needs cargo-fuzz (`cargo install cargo-fuzz`);
# RUSTC_BOOTSTRAP=1 lets the stable toolchain build libFuzzer's
# instrumentation. Prints executions per target; a crash leaves its input in
# fuzz/artifacts/TARGET/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_PER_TARGET="${1:-600}"
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || { echo "fuzz.sh: cargo-fuzz is missing: cargo install cargo-fuzz" >&2; exit 1; }
targets=(manifest envelope_open key_file sealing_key template)
cargo fuzz build --release
for t in "${targets[@]}"; do
  # new inputs go to work/ (git-ignored); corpus/ holds the committed seeds
  mkdir -p "work/$t" "corpus/$t"
  log=$(mktemp)
  if ! cargo fuzz run --release "$t" "work/$t" "corpus/$t" -- -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log"; echo "fuzz.sh: $t found a crash (input in fuzz/artifacts/$t/)" >&2; exit 1
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
  echo "$t: ${execs} executions in ${SECONDS_PER_TARGET}s, ${cov:-cov: ?}, no crash"
  rm -f "$log"
done
