#!/usr/bin/env bash
# Call set-up rate: SIPp against a SIPp UAS (baseline), a media node with the logging call
# handler and a media node bridging to an echo agent. Writes $1/calls-setup.md.
# Bounded: BENCH_SETUP_BUDGET_SECS (default 420) plus at most one step.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec ./target/release/bench-calls setup "${1:-bench/results}"
