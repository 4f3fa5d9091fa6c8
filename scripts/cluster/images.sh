#!/usr/bin/env bash
# Builds the operator and media-node images from the workspace's binaries (default
# target/debug; BIN_DIR=target/release for release ones) as docker-archive tarballs and imports
# them into every node's containerd in the running test cluster (scripts/cluster-up.sh). Tags:
# switchboard.local/switchboard-operator:TAG and switchboard.local/switchboard-media-node:TAG
# (TAG: $1, default "dev"); the chart runs them with imagePullPolicy: Never.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STATE="${SWITCHBOARD_CLUSTER_DIR:-/tmp/switchboard-cluster}"
BIN_DIR="${BIN_DIR:-$REPO/target/debug}"
TAG="${1:-dev}"
T0=$(date +%s%N)

out="$STATE/images"
mkdir -p "$out"
for name in switchboard-operator switchboard-media-node; do
    [[ -x "$BIN_DIR/$name" ]] || { echo "!!! images: $BIN_DIR/$name missing (cargo build --workspace --bins)" >&2; exit 1; }
    python3 "$REPO/scripts/cluster/mkimage.py" --tag "switchboard.local/$name:$TAG" \
        --out "$out/$name-$TAG.tar" "$BIN_DIR/$name"
    for sock in "$STATE"/node*/containerd.sock; do
        ctr --address "$sock" -n k8s.io images import --snapshotter native \
            "$out/$name-$TAG.tar" >/dev/null
    done
    rm -f "$out/$name-$TAG.tar"
done
printf '==> images: %s imported in %d ms\n' "$TAG" $((($(date +%s%N) - T0) / 1000000))
