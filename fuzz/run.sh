#!/usr/bin/env bash
# Runs every fuzz target for a bounded number of runs (default 1,000,000)
# or seconds: fuzz/run.sh [RUNS] [MAX_SECONDS]. Needs cargo-fuzz
# (`cargo install cargo-fuzz`); on a stable toolchain RUSTC_BOOTSTRAP=1 lets
# it use the sanitizer flags it needs. Fails if any target finds a crash.
set -euo pipefail
cd "$(dirname "$0")"
runs=${1:-1000000}
secs=${2:-600}
export RUSTC_BOOTSTRAP=1
for t in msr_sequence shared_struct snapshot_decode; do
  # corpus/ is the working corpus (not committed); seeds/ holds the
  # committed seed corpus.
  mkdir -p "corpus/$t" "seeds/$t"
  log=$(mktemp)
  echo "=== fuzz target $t: up to $runs runs / ${secs}s"
  rc=0
  cargo fuzz run "$t" "corpus/$t" "seeds/$t" -- -runs="$runs" -max_total_time="$secs" >"$log" 2>&1 || rc=$?
  grep -E 'Done [0-9]+ runs|^#[0-9]+ +DONE' "$log" || true
  if [ "$rc" -ne 0 ]; then
    tail -40 "$log"
    echo "fuzz target $t failed (exit $rc)"
    exit 1
  fi
  rm -f "$log"
done
