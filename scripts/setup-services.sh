#!/bin/sh
# Install the servers shardcast's tests start throwaway instances of:
# Redis 7 (redis-server, redis-benchmark) and PostgreSQL 15. Idempotent and
# non-interactive; does nothing when both are present. The packaged
# services are not needed (tests run their own instances on free ports), so
# they are stopped and disabled if apt started them.
set -eu

need=""
command -v redis-server >/dev/null 2>&1 || need="$need redis-server"
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need="$need postgresql"

if [ -n "$need" ]; then
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  # shellcheck disable=SC2086
  $SUDO apt-get install -y -q --no-install-recommends $need
  for svc in redis-server postgresql; do
    if command -v systemctl >/dev/null 2>&1; then
      $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true
    fi
    $SUDO service "$svc" stop >/dev/null 2>&1 || true
  done
fi

echo "redis-server: $(command -v redis-server)"
echo "postgres:     $(ls -d /usr/lib/postgresql/*/bin | tail -n1)"
