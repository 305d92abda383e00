#!/usr/bin/env bash
# The chaos run (tests/it/chaos.rs): three Redis 7.0 nodes, each behind its own link of the
# replguard binary (one link group), three Sentinels on the master's link, a steady writer, and a
# seeded sequence of faults: replguard kill -9 and SIGTERM, replica kill -9 and clean restarts,
# the master cutting its replica links, clean master restarts, Sentinel failovers. After each
# fault, with writes paused, every replica must reach the master's offset and hold the master's
# data (DEBUG DIGEST), and no acknowledged write may be lost.
#   scripts/chaos.sh [FAULTS [SEED]]   or   REPLGUARD_CHAOS_FAULTS=500 REPLGUARD_CHAOS_SEED=42 scripts/chaos.sh
# FAULTS defaults to 20; SEED to one from the clock, printed first so the run can be repeated.
set -euo pipefail
cd "$(dirname "$0")/.."
export REPLGUARD_CHAOS_FAULTS=${1:-${REPLGUARD_CHAOS_FAULTS:-20}}
if [ -n "${2:-}" ]; then
  export REPLGUARD_CHAOS_SEED=$2
elif [ -z "${REPLGUARD_CHAOS_SEED:-}" ]; then
  REPLGUARD_CHAOS_SEED=$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')
  export REPLGUARD_CHAOS_SEED
fi
echo "chaos: REPLGUARD_CHAOS_SEED=$REPLGUARD_CHAOS_SEED REPLGUARD_CHAOS_FAULTS=$REPLGUARD_CHAOS_FAULTS"
cargo test --release --test it -- --ignored --exact chaos::chaos_run --nocapture
