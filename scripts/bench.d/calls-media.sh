#!/usr/bin/env bash
# Concurrent calls with G.711 RTP both ways through the agent bridge (echo agent), against a
# minimal UDP echo at the same packet rate. Writes $1/calls-media.md.
# Bounded: BENCH_MEDIA_BUDGET_SECS (default 420) plus at most one step.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec ./target/release/bench-calls media "${1:-bench/results}"
