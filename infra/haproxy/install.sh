#!/usr/bin/env bash
# Installs Debian's HAProxy if it is missing and prints its path. Debian also
# starts a system-wide instance on install; ours are separate processes.
set -euo pipefail
if ! command -v haproxy >/dev/null && [[ ! -x /usr/sbin/haproxy ]]; then
  echo "haproxy: installing" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null
fi
command -v haproxy || echo /usr/sbin/haproxy
