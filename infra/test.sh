#!/usr/bin/env bash
# Runs every test on a fresh machine: formatting, lints, unit tests (host and
# component cores), the host's containment tests, the backend contract tests
# (embedded, and real Redis + Cassandra), and the end-to-end suite against the
# real binary over real sockets: once on the embedded backend, once on a
# two-gateway cluster, plus the cluster fault tests behind HAProxy.
#
# Usage: infra/test.sh            (from anywhere)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

# Build artefacts live outside the checkout so a fresh clone on the same
# machine (as CI makes) rebuilds only what changed.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/switchboard/target}"
# The cache outlives checkouts, and every other checkout path or dependency set
# leaves its own test binaries and incremental state (65 GB seen). Drop what no
# build has touched for a day; anything still needed is rebuilt.
if [ -d "$CARGO_TARGET_DIR/debug/deps" ]; then
  find "$CARGO_TARGET_DIR/debug/deps" -maxdepth 1 -type f ! -name '*.*' -mtime +0 -delete || true
  find "$CARGO_TARGET_DIR/debug/incremental" -mindepth 1 -maxdepth 1 -mtime +0 -exec rm -rf {} + || true
fi

log "toolchain"
# rust-toolchain.toml pins the compiler and lists the wasm target; rustup
# installs the target only with a new toolchain, so make sure of it here.
rustup show active-toolchain
rustup target add wasm32-wasip2

log "format"
cargo fmt --all -- --check

log "build (host, with its components)"
cargo build --workspace --all-targets --locked

log "lint"
cargo clippy --workspace --all-targets --locked -- -D warnings
# The components' Wasm shells compile only for the wasm target.
cargo clippy --locked --target wasm32-wasip2 --target-dir "$CARGO_TARGET_DIR/components" \
  -p send -p fanout -p presence -p presence-query -p history -p chats -p spin-adapter -- -D warnings

log "services"
# Real Redis and Cassandra for the contract, cluster and fault tests; HAProxy
# for the load-balancer tests (they start their own from the same template).
# Services this run starts are stopped when it ends, pass or fail, so no
# node outlives the checkout whose directory holds its data.
started=()
stop_started() {
  for service in "${started[@]}"; do "$service" stop || true; done
}
trap stop_started EXIT
for service in infra/redis.sh infra/cassandra/cassandra.sh; do
  if ! "$service" status >/dev/null 2>&1; then
    "$service" start
    started+=("$service")
  else
    echo "$service: already running; left running afterwards"
  fi
done
infra/haproxy/install.sh >/dev/null
export SWITCHBOARD_TEST_REDIS_URL="redis://127.0.0.1:6379"
export SWITCHBOARD_TEST_CASSANDRA="127.0.0.1:9042"

log "tests"
export SWITCHBOARD_BIN="$CARGO_TARGET_DIR/debug/switchboard"
cargo test --workspace --locked

log "end-to-end suite on the cluster (two gateways, Redis, Cassandra)"
SWITCHBOARD_E2E_BACKEND=cluster cargo test --locked -p switchboard-e2e
