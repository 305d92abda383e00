#!/usr/bin/env bash
# Builds the fuzz targets of fuzz/ with cargo-fuzz on the nightly toolchain and runs each for
# the given number of seconds (default 10): `scripts/fuzz.sh [seconds] [target...]`.
#
# Installs what it needs when missing: the nightly toolchain (rustup) and cargo-fuzz. Each
# target starts from its committed corpus, fuzz/corpus/<target>/, which it only reads; what it
# finds goes to fuzz/target/work-corpus/<target>/ (kept between runs, not committed). A crash
# or a slow input (over 10 s) stops the script, the input saved under fuzz/artifacts/<target>/.
# Built without a sanitizer: replguard has no unsafe code, and the build is much shorter.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-10}
shift || true

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz: installing the nightly toolchain"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

cargo +nightly fuzz build --sanitizer none
host=$(rustc +nightly -vV | sed -n 's/^host: //p')
bin=${CARGO_TARGET_DIR:-target}/$host/release
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
for t in "${targets[@]}"; do
  mkdir -p "target/work-corpus/$t" "artifacts/$t"
  log=$(mktemp)
  if ! "$bin/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="artifacts/$t/" "target/work-corpus/$t" "corpus/$t" >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz: $t FAILED; the input is under fuzz/artifacts/$t/: fix the cause, then copy it" \
      "into fuzz/corpus/$t/ (replayed by cargo test: tests/it/fuzz_corpus.rs)"
    rm -f "$log"
    exit 1
  fi
  # libFuzzer's last words: "Done <runs> runs in <secs> second(s)".
  echo "fuzz: $t $(grep -E '^Done [0-9]+ runs' "$log" | tail -n 1)"
  rm -f "$log"
done
