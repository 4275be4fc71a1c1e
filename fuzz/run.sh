#!/usr/bin/env bash
# Runs every fuzz target for a while and reports executions, coverage and crashes.
#
#   fuzz/run.sh [SECONDS_PER_TARGET]        default 60; e.g. `fuzz/run.sh 10` is the CI smoke run
#   fuzz/run.sh --merge [SECONDS]           ...then fold what the run found into fuzz/corpus/
#   fuzz/run.sh --targets "a b" [SECONDS]   only those targets
#
# Works from a clean clone on a fresh machine (as root, or with cargo-fuzz already installed):
# installs cargo-fuzz from crates.io if missing, and a C++ compiler (libFuzzer is C++) through
# apt-get if missing. Uses the stable toolchain: cargo-fuzz passes nightly-only flags
# (-Zsanitizer=address, ...), which a stable compiler accepts with RUSTC_BOOTSTRAP=1.
#
# Build: runs shorter than 60 s per target use an unoptimised build (`cargo fuzz build --dev`,
# about a minute to build instead of 2.5, a few times fewer executions per second), longer
# runs the default optimised one. FUZZ_BUILD=dev|release overrides. Both keep AddressSanitizer,
# debug assertions and overflow checks.
#
# Corpora: fuzz/corpus/<target>/ (in git, seeds and merged finds) is read; new inputs go to
# fuzz/work/<target>/ (ignored by git), so a run never changes the repository unless --merge.
# Crashes go to fuzz/artifacts/<target>/; the script prints each one with the command that
# reproduces it, and exits 1 if there was any.
#
# SHMEM_FUZZ_KNOWN=issue,issue lets the targets step over reported bugs that are not fixed yet
# (see fuzz/README.md); CI must not set it.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)
fuzz="$root/fuzz"

merge=0
targets=""
seconds=60
while [ $# -gt 0 ]; do
    case "$1" in
        --merge) merge=1 ;;
        --targets) targets="$2"; shift ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *[!0-9]*|'') echo "run.sh: unknown argument: $1" >&2; exit 2 ;;
        *) seconds="$1" ;;
    esac
    shift
done
all_targets="request_decoder config_parser ring_reader ring_writer"
targets=${targets:-$all_targets}

export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
export RUSTC_BOOTSTRAP=1

if ! command -v c++ >/dev/null 2>&1; then
    echo "== installing a C++ compiler (libFuzzer)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --version '^0.13' --locked --quiet
fi

build=${FUZZ_BUILD:-$([ "$seconds" -lt 60 ] && echo dev || echo release)}
case "$build" in
    dev) build_flags=(--dev); profile=debug ;;
    release) build_flags=(); profile=release ;;
    *) echo "run.sh: FUZZ_BUILD must be dev or release" >&2; exit 2 ;;
esac

started=$(date +%s)
echo "== building fuzz targets ($build build, $(cargo fuzz --version))"
set +e
cargo fuzz build "${build_flags[@]}" 2>&1 | grep -Ev '^\s+(Compiling|Downloaded|Downloading|Locking|Updating|Adding)'
build_status=${PIPESTATUS[0]}
set -e
if [ "$build_status" -ne 0 ]; then
    echo "run.sh: building the fuzz targets failed" >&2
    exit 1
fi
bin_dir="$fuzz/target/x86_64-unknown-linux-gnu/$profile"
echo "== built in $(( $(date +%s) - started ))s"

failed=0
summary=()
for target in $targets; do
    work="$fuzz/work/$target"
    seeds="$fuzz/corpus/$target"
    artifacts="$fuzz/artifacts/$target"
    log="$fuzz/work/$target.log"
    mkdir -p "$work" "$seeds" "$artifacts"
    dict=()
    [ -f "$fuzz/dict/$target.dict" ] && dict=("-dict=$fuzz/dict/$target.dict")
    echo "== $target: ${seconds}s"
    set +e
    # Run the binary cargo fuzz built (what `cargo fuzz run` does, without a second build).
    "$bin_dir/$target" "$work" "$seeds" \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
        -artifact_prefix="$artifacts/" "${dict[@]}" >"$log" 2>&1
    status=$?
    set -e
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -1 || true)
    cov=$(sed -n 's/.*cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's/.* corp: \([^ ]*\).*/\1/p' <<<"$last")
    line="$target: ${execs:-?} executions (${rate:-?}/s), cov ${cov:-?} edges, ft ${ft:-?} features, corpus ${corp:-?}"
    crash=$(sed -n "s/^.*Test unit written to \(.*\)$/\1/p" "$log" | tail -1)
    if [ "$status" -ne 0 ] || [ -n "$crash" ]; then
        failed=1
        line="$line -- CRASH (exit $status)"
        echo "$line"
        grep -m1 -A2 -E "panicked at|ERROR: AddressSanitizer|ERROR: libFuzzer|SUMMARY:" "$log" | sed 's/^/    /' || true
        if [ -n "$crash" ]; then
            echo "    input: $crash"
            echo "    reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run ${build_flags[*]} $target $crash"
            echo "    minimize:  RUSTC_BOOTSTRAP=1 cargo fuzz tmin ${build_flags[*]} $target $crash"
        fi
        echo "    full log: $log"
    else
        echo "$line"
    fi
    summary+=("$line")
    if [ "$merge" -eq 1 ] && [ "$status" -eq 0 ]; then
        # Adds to corpus/<target> only inputs of work/<target> that bring new coverage.
        "$bin_dir/$target" -merge=1 "$seeds" "$work" >"$fuzz/work/$target.merge.log" 2>&1 ||
            echo "    merge failed: see $fuzz/work/$target.merge.log"
        echo "    corpus/$target now $(ls "$seeds" | wc -l) files, $(du -sk "$seeds" | cut -f1) KiB"
    fi
done

echo "== summary ($(( $(date +%s) - started ))s in all)"
printf '%s\n' "${summary[@]}"
if [ "$merge" -eq 1 ]; then
    kib=$(du -sk "$fuzz/corpus" | cut -f1)
    echo "corpus in the repository: $kib KiB"
    [ "$kib" -lt 1024 ] || echo "warning: fuzz/corpus is over 1 MiB; prune it (cargo fuzz cmin)"
fi
exit $failed
