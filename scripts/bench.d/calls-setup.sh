#!/usr/bin/env bash
# Call set-up rate: SIPp against a SIPp UAS (baseline), a media node with the logging call
# handler and a media node bridging to an echo agent. Writes $1/calls-setup.md.
# Bounded: BENCH_SETUP_BUDGET_SECS (default 300), steps of BENCH_SETUP_STEP_SECS (default 8) plus at most one step.
set -euo pipefail
cd "$(dirname "$0")/../.."
export BENCH_SETUP_BUDGET_SECS="${BENCH_SETUP_BUDGET_SECS:-300}" BENCH_SETUP_STEP_SECS="${BENCH_SETUP_STEP_SECS:-8}"
dir="${1:-bench/results}"
before=$(cut -d' ' -f1-3 /proc/loadavg)
./target/release/bench-calls setup "$dir"
after=$(cut -d' ' -f1-3 /proc/loadavg)
# The machine is shared: say how busy it was (load average 1/5/15 min; 2 means both cores busy).
printf '\nMachine load average (1/5/15 min) when this harness started: %s; when it ended: %s.\n' \
    "$before" "$after" >> "$dir/calls-setup.md"
