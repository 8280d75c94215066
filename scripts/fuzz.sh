#!/usr/bin/env bash
# Runs each cargo-fuzz target in fuzz/ for SECS seconds (default 60), from the seeds in
# fuzz/seeds and the corpus kept in fuzz/corpus, and prints the CPU time each took and
# what it found. Crashes are kept in fuzz/artifacts/TARGET/; replay one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET fuzz/artifacts/TARGET/crash-…
# cargo-fuzz needs a nightly compiler for -Zsanitizer; RUSTC_BOOTSTRAP lets the stable
# one (the only one here) take those flags.
#   scripts/fuzz.sh [SECS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
targets=("$@")
((${#targets[@]})) || mapfile -t targets < <(cd fuzz && cargo fuzz list)
cd fuzz
cargo fuzz build -O
failed=()
printf '%-16s %8s %10s %8s  %s\n' target cpu-s execs corpus result
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    log=$(mktemp)

    set +e
    TIMEFORMAT='%U %S'
    { time cargo fuzz run -O "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1; } 2>"$log.time"
    rc=$?
    set -e
    cpu=$(awk '{printf "%.0f", $1+$2}' "$log.time")
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    corpus=$(find "corpus/$t" -type f | wc -l)
    if ((rc == 0)); then result=ok; else result="FOUND (exit $rc): $(grep -m1 -E 'panicked|ERROR: AddressSanitizer|ERROR: libFuzzer|deadly signal|timeout' "$log" || tail -1 "$log")"; failed+=("$t"); cp "$log" "artifacts/$t/last.log"; fi
    printf '%-16s %8s %10s %8s  %s\n' "$t" "$cpu" "$execs" "$corpus" "$result"
    rm -f "$log" "$log.time"
done
if ((${#failed[@]})); then
    echo "fuzz: findings in ${failed[*]}; logs and inputs in fuzz/artifacts/" >&2
    exit 1
fi
