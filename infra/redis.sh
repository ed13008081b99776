#!/usr/bin/env bash
# Starts, stops or checks a local Redis (Debian's redis-server, installed on
# first use) on 127.0.0.1:${SWITCHBOARD_REDIS_PORT:-6379}, state under infra/.state/redis.
#   infra/redis.sh start|stop|status
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
port="${SWITCHBOARD_REDIS_PORT:-6379}"
state="${SWITCHBOARD_STATE_DIR:-$here/.state}/redis-$port"

ensure_installed() {
  if ! command -v redis-server >/dev/null; then
    echo "redis: installing redis-server"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  fi
}

ping() { redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; }

case "${1:-}" in
  start)
    ensure_installed
    if ping; then echo "redis: already running on $port"; exit 0; fi
    mkdir -p "$state"
    redis-server --port "$port" --bind 127.0.0.1 --daemonize yes --dir "$state" \
      --pidfile "$state/redis.pid" --logfile "$state/redis.log" --save "" --appendonly no
    for _ in $(seq 1 50); do ping && { echo "redis: ready on $port"; exit 0; }; sleep 0.1; done
    echo "redis: not ready" >&2; exit 1 ;;
  stop)
    if ping; then redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; echo "redis: stopped"; fi ;;
  status)
    if ping; then echo "redis: running on $port"; else echo "redis: stopped"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
