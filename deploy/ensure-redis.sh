#!/usr/bin/env bash
# Make sure a Redis answers on REDIS_HOST:REDIS_PORT (default
# 127.0.0.1:6379): use the running one, or start Debian's redis-server (installing
# it when missing).
set -euo pipefail
host=${REDIS_HOST:-127.0.0.1}
port=${REDIS_PORT:-6379}

ping() {
  # RESP PING over bash's /dev/tcp, so no client needs to be installed
  exec 3<>"/dev/tcp/$host/$port" 2>/dev/null || return 1
  printf 'PING\r\n' >&3
  local reply
  IFS= read -r -t 2 reply <&3 || true
  exec 3>&- 3<&-
  [[ "$reply" == "+PONG"* ]]
}

if ping; then
  echo "redis: answering on $host:$port"
  exit 0
fi
if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis: not installed; installing Debian's redis-server"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq redis-server >/dev/null
fi
redis-server --port "$port" --bind "$host" --daemonize yes --save "" --appendonly no >/dev/null
for _ in $(seq 1 50); do
  if ping; then
    echo "redis: started on $host:$port"
    exit 0
  fi
  sleep 0.1
done
echo "redis: could not start a server on $host:$port" >&2
exit 1
