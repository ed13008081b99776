#!/usr/bin/env bash
# Runs every test on a fresh machine: formatting, lints, unit tests (host and
# component cores), the host's containment tests and the end-to-end suite
# against the real binary over real sockets.
#
# Usage: infra/test.sh            (from anywhere)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

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
cargo clippy --locked --target wasm32-wasip2 --target-dir target/components \
  -p send -p fanout -p presence -p history -p chats -- -D warnings

log "services"
# The backend contract tests run against a real Redis.
infra/redis.sh start
export SWITCHBOARD_TEST_REDIS_URL="redis://127.0.0.1:6379"

log "tests"
export SWITCHBOARD_BIN="$PWD/target/debug/switchboard"
cargo test --workspace --locked
