#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets/) for SECONDS seconds each
# (default 60), like a benchmark, and prints a table: runs, executions per
# second, coverage, corpus size, crashes. Exits 1 if any target crashed;
# each crashing input is kept in fuzz/artifacts/<target>/ (turn it into a
# regression test in the owning crate, then delete it).
#
#   bash scripts/fuzz.sh [SECONDS]
#
# Needs the nightly toolchain (scripts/setup.sh installs it) and cargo-fuzz
# (installed from crates.io if missing). The corpus grows in fuzz/corpus/
# (not committed); fuzz/seeds/ holds committed starting inputs.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

SECONDS_EACH="${1:-60}"
case "$SECONDS_EACH" in
    ''|*[!0-9]*|0) echo "fuzz: SECONDS must be a whole number of seconds above 0, not ${SECONDS_EACH:-nothing}" >&2; exit 2 ;;
esac
# The targets never load the eBPF probes: no need to build them.
export AYA_BUILD_SKIP=1

command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
cargo +nightly fuzz build -O

mkdir -p ../target
report=""
crashed=0
for target in $(cargo +nightly fuzz list); do
    mkdir -p "corpus/$target" "seeds/$target" "artifacts/$target"
    log="../target/fuzz-$target.log"
    before=$(find "artifacts/$target" -type f | wc -l)
    echo "fuzz: $target for ${SECONDS_EACH}s (log $log)"
    # -timeout: an input taking over 10 s counts as a hang (a crash);
    # -rss_limit_mb: 2 GiB, well above what any input should need.
    set +e
    cargo +nightly fuzz run -O "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1 >"$log" 2>&1
    rc=$?
    set -e
    after=$(find "artifacts/$target" -type f | wc -l)
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
    corpus=$(find "corpus/$target" -type f | wc -l)
    new=$((after - before))
    if [ "$rc" -ne 0 ] || [ "$new" -gt 0 ]; then
        crashed=1
        grep -E 'panicked at|ERROR: (libFuzzer|AddressSanitizer)|SUMMARY' "$log" | head -5 >&2 || true
    fi
    report+=$(printf '%-15s %6ss %12s %10s %8s %8s %8s' "$target" "$SECONDS_EACH" "${runs:-?}" "${rate:-?}" "${cov:-?}" "$corpus" "$new")$'\n'
done

printf '\n%-15s %7s %12s %10s %8s %8s %8s\n' TARGET TIME RUNS EXEC/S COV CORPUS CRASHES
printf '%s' "$report"
if [ "$crashed" -ne 0 ]; then
    echo "fuzz: crashes found: see fuzz/artifacts/ and the logs in target/" >&2
    exit 1
fi
