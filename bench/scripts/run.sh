#!/usr/bin/env bash
# Reruns every benchmark and regenerates the table and plots in docs/.
#   bench/scripts/run.sh           full sizes (minutes)
#   bench/scripts/run.sh --quick   a smoke run with tiny sizes
#   bench/scripts/run.sh --cluster also scenarios 1-4 on two gateways over Redis + Cassandra
set -euo pipefail
cd "$(dirname "$0")/../.."
# A fresh machine has the pinned toolchain but not yet its wasm target.
rustup target add wasm32-wasip2 >/dev/null
cargo build --release --locked -p host-gateway -p switchboard-bench
if [[ " $* " == *" --cluster "* ]]; then
  infra/redis.sh start
  infra/cassandra/cassandra.sh start
fi
samples="$(mktemp -d)"
ulimit -n 65536 2>/dev/null || true
target/release/switchboard-bench --bin target/release/switchboard --samples-dir "$samples" "$@" | tee "$samples/table.md"
# The plots need matplotlib, which a fresh machine lacks.
python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install --quiet matplotlib
python3 bench/scripts/plot.py "$samples" docs/benchmarks
echo "table: $samples/table.md"
