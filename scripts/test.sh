#!/usr/bin/env bash
# The whole test suite: installs the real servers, then unit and property tests (debug and
# release), real-server scenario and CLI tests, the load test (its figures printed), and the
# benchmarks at a small size, and every fuzz target for a few seconds. The tests
# named real_kvrocks_* run against the real Kvrocks server at $KVROCKS_BIN; unless it is set, it
# comes from ../shared/kvrocks/install.sh when that exists (KVROCKS_BIN= skips them).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
KVROCKS_INSTALL=../shared/kvrocks/install.sh
if [ -z "${KVROCKS_BIN+set}" ] && [ -f "$KVROCKS_INSTALL" ]; then
  KVROCKS_BIN=$(bash "$KVROCKS_INSTALL") || KVROCKS_BIN=
fi
if [ -n "${KVROCKS_BIN:-}" ]; then
  export KVROCKS_BIN
  echo "kvrocks: $KVROCKS_BIN"
  SKIP_REAL=()
else
  unset KVROCKS_BIN
  echo "real-Kvrocks tests skipped: KVROCKS_BIN is not set"
  SKIP_REAL=(--skip real_kvrocks_)
fi
LOAD=load::sustained_writes_with_a_replica_restart
results=$(mktemp)
trap 'rm -f "$results"' EXIT
# Unit and property tests in a debug build too: integer-overflow checks and debug assertions on.
cargo test --lib 2>&1 | tee "$results"
cargo test --release -- --skip "$LOAD" "${SKIP_REAL[@]}" 2>&1 | tee -a "$results"
cargo test --release --test it -- --exact "$LOAD" --nocapture 2>&1 \
  | grep -E '^load:|test result|panicked|FAILED|assert' | tee -a "$results"
cargo bench --bench relay -- --quick --noplot 2>/dev/null | grep -E '^relay/|thrpt:'
REPLGUARD_E2E_WRITES=${REPLGUARD_E2E_WRITES:-1000} REPLGUARD_E2E_SYNC_ROUNDS=${REPLGUARD_E2E_SYNC_ROUNDS:-2} \
  REPLGUARD_E2E_KEYS=${REPLGUARD_E2E_KEYS:-300000} REPLGUARD_E2E_KVROCKS_MB=${REPLGUARD_E2E_KVROCKS_MB:-64} \
  cargo bench --bench e2e 2>/dev/null
# Every fuzz target briefly (nightly and cargo-fuzz are installed when missing); their corpora
# already ran as tests above (fuzz_corpus). REPLGUARD_FUZZ_SECS=0 skips this step.
if [ "${REPLGUARD_FUZZ_SECS:-3}" != 0 ]; then
  scripts/fuzz.sh "${REPLGUARD_FUZZ_SECS:-3}"
fi
REPLGUARD_CHAOS_FAULTS=20 scripts/chaos.sh 2>&1 | tee -a "$results"
real_kvrocks=$(grep -cE 'test .*real_kvrocks_.* ok' "$results" || true)
echo "real-Kvrocks tests: $real_kvrocks ran"
passed=$(grep -oE 'test result: ok\. [0-9]+ passed' "$results" | awk '{s += $4} END {print s + 0}')
echo "tests: $passed passed, 0 failed"
