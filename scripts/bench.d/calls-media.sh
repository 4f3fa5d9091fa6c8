#!/usr/bin/env bash
# Concurrent calls with G.711 RTP both ways through the agent bridge (echo agent), against a
# minimal UDP echo at the same packet rate, then an impairment run (jitter, reordering, loss, a
# pause, made by the bench's own caller). Writes $1/calls-media.md.
# Bounded: BENCH_MEDIA_BUDGET_SECS (default 300) plus at most one step, plus the impairment run
# (BENCH_IMPAIRED_CALLS calls, default 100, 0 skips it; about 45 s).
# Steps: BENCH_MEDIA_STEPS (default 50,200,500,1000,1500,2000).
set -euo pipefail
cd "$(dirname "$0")/../.."
export BENCH_MEDIA_BUDGET_SECS="${BENCH_MEDIA_BUDGET_SECS:-300}"
dir="${1:-bench/results}"
# The binaries of the build that `make bench` just made (CARGO_TARGET_DIR if set); the harness
# starts the media node found next to itself.
bin="${CARGO_TARGET_DIR:-target}/release/bench-calls"
before=$(cut -d' ' -f1-3 /proc/loadavg)
"$bin" media "$dir"
after=$(cut -d' ' -f1-3 /proc/loadavg)
# The machine is shared: say how busy it was (load average 1/5/15 min; 2 means both cores busy).
printf '\nMachine load average (1/5/15 min) when this harness started: %s; when it ended: %s.\n' \
    "$before" "$after" >> "$dir/calls-media.md"
