#!/usr/bin/env bash
# Builds the fuzz targets in fuzz/ and runs each for a bounded time; fails if any crashes.
#
#   scripts/fuzz.sh [seconds-per-target] [target...]     (default: 30 s, every target)
#
# Engine: libFuzzer, linked in by the libfuzzer-sys crate (it compiles libFuzzer with the system
# C++ compiler), coverage from stable rustc's SanitizerCoverage flags below: what `cargo fuzz
# build -s none` does, without cargo-fuzz or a nightly toolchain. Targets build in release mode
# with debug assertions and overflow checks on (fuzz/Cargo.toml), so an arithmetic overflow
# on a length from the network is a crash.
#
# Before fuzzing, every input in fuzz/regressions/<target>/ (crashes found earlier) is replayed;
# one that still crashes fails the run. Each target then starts from its committed seeds
# (fuzz/corpus/<target>/) plus the inputs earlier runs found, kept under the target dir
# ($FUZZ_DIR/corpus/<target>/), so repeated or longer runs go deeper. Crash inputs are written
# to $FUZZ_DIR/artifacts/<target>/ and printed with the command that reproduces them.
#
# Environment: FUZZ_DIR (default ${CARGO_TARGET_DIR:-target}/fuzz), FUZZ_ARGS (extra libFuzzer
# flags, e.g. FUZZ_ARGS="-jobs=4 -workers=4" for a long parallel run).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECONDS_PER_TARGET="${1:-30}"
shift || true
[[ "$SECONDS_PER_TARGET" =~ ^[0-9]+$ ]] || { echo "usage: $0 [seconds-per-target] [target...]" >&2; exit 2; }

FUZZ_DIR="${FUZZ_DIR:-${CARGO_TARGET_DIR:-$REPO/target}/fuzz}"
HOST="$(rustc -vV | sed -n 's/^host: //p')"
BIN_DIR="$FUZZ_DIR/$HOST/release"

# name:max_len:dictionary
ALL_TARGETS=(
    sip_datagram:4096:sip
    sip_stream:8192:sip
    sip_headers:1024:sip
    sdp:4096:sdp
    rtp:4096:
    rtcp:2048:
    rfc4733:1024:
    sip_info:512:
    digest:2048:json
    agent_json:16384:json
)
if (($#)); then
    selected=()
    for want in "$@"; do
        found=""
        for t in "${ALL_TARGETS[@]}"; do [[ "${t%%:*}" == "$want" ]] && found="$t"; done
        [[ -n "$found" ]] || { echo "unknown fuzz target: $want" >&2; exit 2; }
        selected+=("$found")
    done
else
    selected=("${ALL_TARGETS[@]}")
fi

log() { printf '==> fuzz: %s\n' "$*"; }

# --target makes RUSTFLAGS apply to the target crates only, not to build scripts and proc macros.
log "building fuzz targets into $FUZZ_DIR"
build_start=$SECONDS
RUSTFLAGS="-Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
--cfg fuzzing" \
    CARGO_TARGET_DIR="$FUZZ_DIR" \
    cargo build --release --quiet --manifest-path "$REPO/fuzz/Cargo.toml" --target "$HOST" --bins
log "build took $((SECONDS - build_start)) s"

failed=()
summary=()
for spec in "${selected[@]}"; do
    IFS=: read -r name max_len dict <<<"$spec"
    bin="$BIN_DIR/$name"
    seeds="$REPO/fuzz/corpus/$name"
    work="$FUZZ_DIR/corpus/$name"
    artifacts="$FUZZ_DIR/artifacts/$name"
    logfile="$FUZZ_DIR/logs/$name.log"
    mkdir -p "$work" "$artifacts" "$(dirname "$logfile")"

    # Known crashes first: each must now run clean.
    regressions="$REPO/fuzz/regressions/$name"
    if [[ -d "$regressions" ]]; then
        for input in "$regressions"/*; do
            [[ -f "$input" ]] || continue
            if ! "$bin" "$input" >"$logfile.regression" 2>&1; then
                echo "!!! fuzz: $name: regression input still crashes: $input" >&2
                grep -m3 -E "panicked|ERROR: libFuzzer" "$logfile.regression" >&2 || true
                echo "    reproduce: $bin $input" >&2
                failed+=("$name (regression $(basename "$input"))")
            fi
        done
    fi

    args=(-max_total_time="$SECONDS_PER_TARGET" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048
        -print_final_stats=1 -artifact_prefix="$artifacts/")
    [[ -n "$dict" ]] && args+=(-dict="$REPO/fuzz/dict/$dict.dict")
    # shellcheck disable=SC2206 # FUZZ_ARGS is a list of flags
    args+=(${FUZZ_ARGS:-})
    stamp="$logfile.start"
    touch "$stamp"
    log "$name: ${SECONDS_PER_TARGET} s"
    status=0
    "$bin" "${args[@]}" "$work" "$seeds" >"$logfile" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logfile" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$logfile" | tail -1)
    # -fork mode prints no final stats: take the last progress line instead.
    [[ -n "$execs" ]] || execs=$(grep -oE '^#[0-9]+' "$logfile" | tail -1 | tr -d '#')
    [[ -n "$rate" ]] || rate=$(grep -oE 'exec/s: [0-9]+' "$logfile" | tail -1 | cut -d' ' -f2)
    cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$logfile" | tail -1)
    corpus=$(find "$work" -type f | wc -l)
    summary+=("$(printf '%-13s %10s execs %7s exec/s  %-22s corpus %s' "$name" "${execs:-?}" "${rate:-?}" "${cov:-cov: ?}" "$corpus")")
    new_crashes=$(find "$artifacts" -type f -newer "$stamp")
    if ((status != 0)) || [[ -n "$new_crashes" ]]; then
        echo "!!! fuzz: $name: crash (libFuzzer exit $status); log: $logfile" >&2
        grep -m5 -E "panicked|ERROR: libFuzzer|SUMMARY" "$logfile" >&2 || true
        for crash in $new_crashes; do
            echo "    input: $crash" >&2
            echo "    reproduce: $bin $crash" >&2
        done
        failed+=("$name")
    fi
done

log "summary (${SECONDS_PER_TARGET} s per target):"
printf '    %s\n' "${summary[@]}"
# The closing line CI reads: targets (with their regression replays) passed and failed.
failed_targets=$(printf '%s\n' "${failed[@]}" | sed 's/ (.*//' | sort -u | grep -c . || true)
echo "fuzz: $((${#selected[@]} - failed_targets)) passed, $failed_targets failed"
if ((${#failed[@]})); then
    echo "!!! fuzz: FAILED: ${failed[*]}" >&2
    echo "    Add each crash input to fuzz/regressions/<target>/ and a unit test in the parser's module." >&2
    exit 1
fi
log "no crashes"
