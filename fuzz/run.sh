#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for SECONDS each, one after the
# other in one process each (one core), and prints executions and exec/s
# per target. Exits 1 if any target crashed (the crash file is named in the
# table and in its log), 3 if cargo-fuzz or the nightly toolchain is
# unavailable and cannot be installed, 2 on a build failure.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET[:RUNS]...]      (default 60, all)
#
# TARGET:RUNS stops that target after RUNS executions (before the time cap if
# the machine is fast enough). With FUZZ_SEED set as well, a run is the same
# sequence of inputs every time, so a crash CI finds is found again here
# (that is how .ci/run calls it).
#
# Environment:
#   FUZZ_MAX_RUNS   stop a target after this many executions (default: no cap)
#   FUZZ_WORK       scratch dir: the growing corpus and logs
#                   (default: $CARGO_TARGET_DIR or fuzz/target, + /fuzz-work)
#   FUZZ_SEED       libFuzzer's -seed (default: a random one per run)
#   FUZZ_ARGS       extra libFuzzer flags
#
# The committed corpus (fuzz/corpus/<target>/) is read, never written: what a
# run finds goes to $FUZZ_WORK/corpus/<target>/ and is reused by the next run.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
secs="${1:-60}"
shift || true

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "run.sh: installing the nightly toolchain" >&2
    rustup toolchain install nightly --profile minimal >&2 || { echo "run.sh: fuzzing unavailable: no nightly toolchain" >&2; exit 3; }
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "run.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked >&2 || cargo +nightly install cargo-fuzz --locked >&2 ||
        { echo "run.sh: fuzzing unavailable: cannot install cargo-fuzz" >&2; exit 3; }
fi

target_dir="${CARGO_TARGET_DIR:-$here/target}"
work="${FUZZ_WORK:-$target_dir/fuzz-work}"
mkdir -p "$work/logs"

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    # Every [[bin]] but the seed writer.
    mapfile -t targets < <(cargo +nightly fuzz list | grep -vx seed)
fi

echo "run.sh: building ${#targets[@]} targets" >&2
if ! cargo +nightly fuzz build >"$work/logs/build.log" 2>&1; then
    tail -40 "$work/logs/build.log" >&2
    echo "run.sh: build failed (log: $work/logs/build.log)" >&2
    exit 2
fi

seed=()
[ -n "${FUZZ_SEED:-}" ] && seed=("-seed=$FUZZ_SEED")
rows=()
failed=0
for spec in "${targets[@]}"; do
    t="${spec%%:*}"
    cap="${FUZZ_MAX_RUNS:-}"
    [ "$spec" != "$t" ] && cap="${spec#*:}"
    runs=()
    [ -n "$cap" ] && runs=("-runs=$cap")
    mkdir -p "$work/corpus/$t" "$here/artifacts/$t"
    log="$work/logs/$t.log"
    echo "run.sh: $t for ${secs}s (log: $log)" >&2
    start=$(date +%s)
    # -timeout: one input running this long is a hang, reported as a crash.
    # shellcheck disable=SC2086
    cargo +nightly fuzz run "$t" "$work/corpus/$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=25 -rss_limit_mb=2048 -print_final_stats=1 \
        "${runs[@]}" "${seed[@]}" ${FUZZ_ARGS:-} >"$log" 2>&1
    rc=$?
    took=$(( $(date +%s) - start ))
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
    if [ -z "$execs" ]; then
        # No final stats (killed): the last status line's count.
        execs=$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#')
    fi
    execs=${execs:-0}
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
    rate=${rate:-$(( execs / (took > 0 ? took : 1) ))}
    crash=$(grep -o 'Test unit written to [^ ]*' "$log" | tail -1 | sed 's/Test unit written to //')
    if [ "$rc" -ne 0 ] || [ -n "$crash" ]; then
        failed=1
        result="CRASH ${crash:-(exit $rc, see $log)}"
    else
        result="ok"
    fi
    rows+=("$(printf '%-8s %8s %14s %10s  %s' "$t" "${took}s" "$execs" "$rate" "$result")")
done

printf '\n%-8s %8s %14s %10s  %s\n' target time executions exec/s result
printf '%s\n' "${rows[@]}"
if [ "$failed" -ne 0 ]; then
    echo "run.sh: a target crashed; reproduce with: cargo +nightly fuzz run TARGET CRASH_FILE (in fuzz/)" >&2
    exit 1
fi
