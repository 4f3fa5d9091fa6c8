#!/usr/bin/env bash
# Concurrent calls with G.711 RTP both ways through the agent bridge (echo agent), against a
# minimal UDP echo at the same packet rate. Writes $1/calls-media.md.
# Bounded: BENCH_MEDIA_BUDGET_SECS (default 300) plus at most one step.
set -euo pipefail
cd "$(dirname "$0")/../.."
export BENCH_MEDIA_BUDGET_SECS="${BENCH_MEDIA_BUDGET_SECS:-300}"
dir="${1:-bench/results}"
before=$(cut -d' ' -f1-3 /proc/loadavg)
./target/release/bench-calls media "$dir"
after=$(cut -d' ' -f1-3 /proc/loadavg)
# The machine is shared: say how busy it was (load average 1/5/15 min; 2 means both cores busy).
printf '\nMachine load average (1/5/15 min) when this harness started: %s; when it ended: %s.\n' \
    "$before" "$after" >> "$dir/calls-media.md"
