#!/usr/bin/env bash
# The whole production shape on one machine: Redis, Cassandra, two gateways
# on the cluster backend, and HAProxy in front of them.
#   infra/cluster.sh up       build (release), start what is not running, wait until ready
#   infra/cluster.sh down     stop everything `up` started (Redis and Cassandra only if `up` started them)
#   infra/cluster.sh status   what runs
#   infra/cluster.sh token U  a token for user U, valid on every gateway
# Clients use http://127.0.0.1:${SWITCHBOARD_LB_PORT:-8080} (WebSocket: /chat/connect).
# The gateways listen on 127.0.0.1:8081 and :8082; their logs are in infra/.state/cluster/.
set -euo pipefail
infra="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$infra/.." && pwd)"
state="${SWITCHBOARD_STATE_DIR:-$infra/.state}/cluster"
lb_port="${SWITCHBOARD_LB_PORT:-8080}"
gateway_ports=(8081 8082)
bin="${SWITCHBOARD_BIN:-$root/target/release/switchboard}"

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
ready() { curl -fsS -o /dev/null "http://127.0.0.1:$1/readyz" 2>/dev/null; }

wait_ready() { # port what
  for _ in $(seq 1 300); do ready "$1" && return 0; sleep 0.2; done
  echo "cluster: $2 not ready on port $1" >&2; return 1
}

secret() {
  mkdir -p "$state"
  if [[ ! -s "$state/jwt-secret" ]]; then
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$state/jwt-secret"
    chmod 600 "$state/jwt-secret"
  fi
  cat "$state/jwt-secret"
}

up() {
  mkdir -p "$state"
  # Remember which services this script started: `down` stops only those.
  "$infra/redis.sh" status >/dev/null 2>&1 || touch "$state/started-redis"
  "$infra/cassandra/cassandra.sh" status >/dev/null 2>&1 || touch "$state/started-cassandra"
  "$infra/redis.sh" start
  "$infra/cassandra/cassandra.sh" start
  local haproxy
  haproxy="$("$infra/haproxy/install.sh")"
  if [[ -z "${SWITCHBOARD_BIN:-}" ]]; then
    rustup target add wasm32-wasip2 >/dev/null
    (cd "$root" && cargo build --release --locked -p host-gateway --bin switchboard)
  fi
  local jwt
  jwt="$(secret)"
  local servers=""
  for i in "${!gateway_ports[@]}"; do
    local node=$((i + 1)) port="${gateway_ports[$i]}"
    local pidfile="$state/gateway-$node.pid"
    servers+="    server gw$node 127.0.0.1:$port check"$'\n'
    if alive "$pidfile"; then echo "cluster: gateway $node already running"; continue; fi
    mkdir -p "$state/gateway-$node"
    SWITCHBOARD_BACKEND=cluster SWITCHBOARD_NODE_ID="$node" SWITCHBOARD_JWT_SECRET="$jwt" \
      SWITCHBOARD_LISTEN="127.0.0.1:$port" SWITCHBOARD_DATA_DIR="$state/gateway-$node" \
      nohup "$bin" serve >"$state/gateway-$node.log" 2>&1 &
    echo $! >"$pidfile"
    # One at a time: the first creates the schema.
    wait_ready "$port" "gateway $node"
    echo "cluster: gateway $node ready on 127.0.0.1:$port"
  done
  if ! alive "$state/haproxy.pid"; then
    local template="$infra/haproxy/haproxy.cfg.template"
    local config="$state/haproxy.cfg"
    awk -v listen="127.0.0.1:$lb_port" -v servers="${servers%$'\n'}" \
      '{ gsub("@LISTEN@", listen); if ($0 == "@SERVERS@") print servers; else print }' \
      "$template" >"$config"
    "$haproxy" -c -q -f "$config"
    "$haproxy" -D -p "$state/haproxy.pid" -f "$config"
  fi
  wait_ready "$lb_port" "the load balancer"
  echo "cluster: ready on http://127.0.0.1:$lb_port"
  echo "  token:     infra/cluster.sh token alice"
  echo "  WebSocket: ws://127.0.0.1:$lb_port/chat/connect?userId=alice&token=TOKEN"
}

down() {
  if alive "$state/haproxy.pid"; then kill "$(cat "$state/haproxy.pid")"; echo "cluster: load balancer stopped"; fi
  rm -f "$state/haproxy.pid"
  for i in "${!gateway_ports[@]}"; do
    local pidfile="$state/gateway-$((i + 1)).pid"
    if alive "$pidfile"; then
      kill "$(cat "$pidfile")"  # SIGTERM: sockets close with 1001, clients reconnect elsewhere
      for _ in $(seq 1 50); do alive "$pidfile" || break; sleep 0.1; done
      echo "cluster: gateway $((i + 1)) stopped"
    fi
    rm -f "$pidfile"
  done
  if [[ -f "$state/started-cassandra" ]]; then "$infra/cassandra/cassandra.sh" stop; rm -f "$state/started-cassandra"; fi
  if [[ -f "$state/started-redis" ]]; then "$infra/redis.sh" stop; rm -f "$state/started-redis"; fi
}

status() {
  "$infra/redis.sh" status || true
  "$infra/cassandra/cassandra.sh" status || true
  for i in "${!gateway_ports[@]}"; do
    local port="${gateway_ports[$i]}"
    if ready "$port"; then echo "gateway $((i + 1)): ready on $port"; else echo "gateway $((i + 1)): not ready"; fi
  done
  if ready "$lb_port"; then echo "load balancer: ready on $lb_port"; else echo "load balancer: down"; fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  token)
    [[ -n "${2:-}" ]] || { echo "usage: $0 token USER" >&2; exit 2; }
    SWITCHBOARD_JWT_SECRET="$(secret)" "$bin" token "$2" --data-dir "$state" ;;
  *) echo "usage: $0 up|down|status|token USER" >&2; exit 2 ;;
esac
