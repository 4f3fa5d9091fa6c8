#!/usr/bin/env bash
# CallCampaign: 100,000 callees loaded with the calling window closed (operator
# memory, load time, the object's size), then a second campaign dialling
# through two media nodes to a SIPp carrier until ~2,000 callees are done and
# suspended (dials per second, memory, results ConfigMaps). Writes $1/campaign.md
# (with the machine's load average). Bounded: BENCH_CAMPAIGN_DIAL_SECS (default 120)
# caps the dialling phase; every other wait has its own deadline.
set -euo pipefail
cd "$(dirname "$0")/../.."
dir="${1:-bench/results}"
./target/release/bench-campaign "$dir"
