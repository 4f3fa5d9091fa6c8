#!/usr/bin/env bash
# `make bench`: builds release binaries, runs every benchmark harness (each
# writes a Markdown section into bench/results/), and assembles BENCHMARKS.md
# with the machine it ran on. Bounded: each harness stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/test-deps.sh
cargo build --release --workspace --bins
mkdir -p bench/results

echo "==> bench: operator (programming numbers onto media nodes)"
./target/release/bench-operator bench/results

# Other harnesses add their own sections here (bench/results/<name>.md).
for extra in scripts/bench.d/*.sh; do
    [ -e "$extra" ] || continue
    echo "==> bench: $extra"
    bash "$extra" bench/results
done

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
mem=$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)
{
    echo "# Benchmarks"
    echo
    echo "Written by \`make bench\` ($(date -u +%Y-%m-%dT%H:%MZ)); re-running it replaces this file."
    echo "Machine: $(nproc) cores ($cpu), $mem, $(uname -sr); $(rustc --version)."
    echo "Everything runs on loopback on this one machine, so load generators share its cores with what they measure."
    echo
    for f in bench/results/*.md; do
        cat "$f"
        echo
    done
} > BENCHMARKS.md
echo "==> bench: wrote BENCHMARKS.md"
