#!/usr/bin/env bash
# A CLI round trip on embedded defaults (local key, no cluster, no AWS).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q
bin=target/debug/kmsecrets
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
$bin keygen "$dir/local.key"
$bin encrypt --key "file:$dir/local.key" --name db-creds -n payments \
  --from-literal username=admin --from-literal password=s3cr3t | tee "$dir/es.yaml"
$bin decrypt -f "$dir/es.yaml" --local-key "$dir/local.key"
