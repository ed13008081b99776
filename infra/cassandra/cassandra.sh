#!/usr/bin/env bash
# Starts, stops or checks a single-node Apache Cassandra 5.0 from its Maven
# Central jars, on Java 17, with state under infra/.state/cassandra.
#   infra/cassandra/cassandra.sh start|stop|status
# Idempotent: `start` returns at once if a node answers on 9042; it waits
# (up to 180 s) until the native port is open.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
state="${SWITCHBOARD_STATE_DIR:-$here/../.state}/cassandra"
pidfile="$state/cassandra.pid"
java_home="${CASSANDRA_JAVA_HOME:-/usr/lib/jvm/java-17-openjdk-amd64}"

listening() { (exec 3<>/dev/tcp/127.0.0.1/9042) 2>/dev/null; }

fetch_jars() {
  if [[ ! -f "$here/lib/.complete" ]]; then
    echo "cassandra: fetching server jars (once)"
    (cd "$here" && mvn -q -B dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory=lib)
    touch "$here/lib/.complete"
  fi
}

start() {
  if listening; then echo "cassandra: already running"; return 0; fi
  [[ -x "$java_home/bin/java" ]] || { echo "cassandra: Java 17 not found at $java_home" >&2; exit 1; }
  fetch_jars
  mkdir -p "$state/data" "$state/logs" "$state/tmp"
  local opens=(java.base/java.lang.module java.base/jdk.internal.loader java.base/jdk.internal.ref
    java.base/jdk.internal.reflect java.base/jdk.internal.math java.base/jdk.internal.module
    java.base/jdk.internal.util.jar java.base/sun.nio.ch java.base/java.io java.base/java.lang.reflect
    java.base/java.lang java.base/java.util java.base/java.nio jdk.management/com.sun.management.internal
    jdk.compiler/com.sun.tools.javac java.rmi/sun.rmi.transport.tcp)
  local exports=(java.base/jdk.internal.misc java.base/java.lang.ref
    java.management.rmi/com.sun.jmx.remote.internal.rmi java.management/com.sun.jmx.remote.security
    java.rmi/sun.rmi.registry java.rmi/sun.rmi.server java.rmi/sun.rmi.transport.tcp java.sql/java.sql
    jdk.unsupported/sun.misc jdk.compiler/com.sun.tools.javac.file jdk.attach/sun.tools.attach)
  local args=(-Xms2G -Xmx2G -XX:+UseG1GC -Xss512k)
  for o in "${opens[@]}"; do args+=("--add-opens=$o=ALL-UNNAMED"); done
  for e in "${exports[@]}"; do args+=("--add-exports=$e=ALL-UNNAMED"); done
  args+=(
    "-javaagent:$(ls "$here"/lib/jamm-*.jar | head -n1)"
    "-Dcassandra.config=file://$here/cassandra.yaml"
    "-Dcassandra.storagedir=$state/data"
    "-Dcassandra.logdir=$state/logs"
    "-Dlogback.configurationFile=$here/logback.xml"
    "-Djava.io.tmpdir=$state/tmp"
    -Dcassandra-foreground=yes
    -Dcassandra.jmx.local.port=7199
    -Dcassandra.skip_wait_for_gossip_to_settle=0
    -Dcassandra.ring_delay_ms=1000
    -Dcassandra.initial_token=0
    -cp "$here:$here/lib/*"
    org.apache.cassandra.service.CassandraDaemon
  )
  echo "cassandra: starting (log: $state/logs/system.log)"
  nohup "$java_home/bin/java" "${args[@]}" >"$state/logs/stdout.log" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 1 180); do
    if listening; then echo "cassandra: ready"; return 0; fi
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      echo "cassandra: exited during start-up" >&2; tail -n 40 "$state/logs/stdout.log" >&2; exit 1
    fi
    sleep 1
  done
  echo "cassandra: not ready after 180 s" >&2; exit 1
}

stop() {
  if [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    kill "$(cat "$pidfile")"
    for _ in $(seq 1 30); do kill -0 "$(cat "$pidfile")" 2>/dev/null || break; sleep 1; done
    kill -9 "$(cat "$pidfile")" 2>/dev/null || true
    echo "cassandra: stopped"
  fi
  rm -f "$pidfile"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if listening; then echo "cassandra: running"; else echo "cassandra: stopped"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
