#!/usr/bin/env bash
# Runs Switchboard on the embedded backend: builds the host and its Wasm
# components, then serves on 127.0.0.1:8080 with data in ./switchboard-data.
# Extra arguments go to `switchboard serve` (see `--help`).
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add wasm32-wasip2 >/dev/null
exec cargo run --release --locked -p host-gateway --bin switchboard -- serve "$@"
