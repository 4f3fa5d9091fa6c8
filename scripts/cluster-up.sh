#!/usr/bin/env bash
# Starts a one-node Kubernetes cluster for the real-cluster tests, entirely inside network
# namespaces this script creates (nothing listens on or sends to the machine's own interfaces):
#
#   netns sbk8s-node  10.77.0.2/24  etcd, kube-apiserver (:6443), kube-controller-manager,
#                                   kube-scheduler, containerd, kubelet (node "sbnode"),
#                                   the pods (hostNetwork pods use 10.77.0.2; others get
#                                   10.244.0.0/24 from the CNI bridge)
#   netns sbk8s-ext   10.77.0.3/24  the outside world: the carrier (SIPp) and the agent
#
# joined by one veth pair. Binaries come from the test-deps cache (scripts/test-deps.sh builds
# them); images cannot be pulled, so the sandbox ("pause") image is built here with gcc and
# imported, and application images are imported with scripts/cluster/images.sh.
#
# State (PID files, logs, certificates, kubeconfig) lives in $SWITCHBOARD_CLUSTER_DIR
# (default /tmp/switchboard-cluster); scripts/cluster-down.sh removes everything this starts.
# Prints the time of each phase. Run as root.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${SWITCHBOARD_CACHE:-$HOME/.cache/switchboard}"
STATE="${SWITCHBOARD_CLUSTER_DIR:-/tmp/switchboard-cluster}"
K8S_VERSION="v1.35.4"
ETCD_VERSION="v3.6.5"
K8S="$CACHE/k8s-$K8S_VERSION"
ETCD="$CACHE/etcd-$ETCD_VERSION/etcd"
KUBECTL="$CACHE/bin/kubectl"
NODE_NS=sbk8s-node
EXT_NS=sbk8s-ext
NODE_IP=10.77.0.2
EXT_IP=10.77.0.3
NODE_NAME=sbnode
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.96.0.0/24
# Where the kubelet puts pod cgroups (cgroupfs driver, cgroup v1): one subtree per test
# cluster, so teardown can find and kill every container.
CGROUP_ROOT=/switchboard-cluster

T0=$(date +%s%N)
phase_start=$T0
phase() {
    local now
    now=$(date +%s%N)
    printf '==> cluster-up: %-28s %6d ms (total %6d ms)\n' "$1" $(((now - phase_start) / 1000000)) $(((now - T0) / 1000000))
    phase_start=$now
}
die() {
    printf '!!! cluster-up: %s\n' "$*" >&2
    exit 1
}
in_node() { nsenter --net="/run/netns/$NODE_NS" -- "$@"; }

[[ $(id -u) -eq 0 ]] || die "run as root (network namespaces, containerd, kubelet)"
for b in "$K8S/kube-apiserver" "$K8S/kube-controller-manager" "$K8S/kube-scheduler" "$K8S/kubelet" "$ETCD" "$KUBECTL"; do
    [[ -x $b ]] || die "missing $b: run scripts/test-deps.sh (make test-deps)"
done
for b in containerd containerd-shim-runc-v2 runc ctr nsenter gcc; do
    command -v "$b" >/dev/null || die "missing $b: run scripts/test-deps.sh (make test-deps)"
done
[[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback ]] ||
    die "missing CNI plugins in /usr/lib/cni (Debian containernetworking-plugins)"
if [[ -e /run/netns/$NODE_NS ]]; then
    die "a cluster is already up (netns $NODE_NS); run scripts/cluster-down.sh first"
fi

# A previous run's state (kept for its logs) must not leak into this cluster (etcd data).
rm -rf "$STATE"
mkdir -p "$STATE"/{pids,logs,certs,etcd,cni/net.d,cni/ipam,containerd,kubelet}
printf '%s\n' "$CGROUP_ROOT" >"$STATE/cgroup-root"
# The kubelet's cgroup root must exist in every hierarchy (a new cpuset needs its CPUs and
# memory nodes before anything can join it).
for h in /sys/fs/cgroup/*/; do
    [[ -e $h/cgroup.procs ]] || continue
    mkdir -p "$h${CGROUP_ROOT#/}"
    if [[ -e $h/cpuset.cpus ]]; then
        cat "$h/cpuset.cpus" >"$h${CGROUP_ROOT#/}/cpuset.cpus"
        cat "$h/cpuset.mems" >"$h${CGROUP_ROOT#/}/cpuset.mems"
    fi
done

# Starts a long-lived process in the node's namespace, in its own session (so teardown can
# signal its process group), with its PID in pids/NAME.pid and its output in logs/NAME.log.
start() {
    local name=$1
    shift
    in_node setsid "$@" >"$STATE/logs/$name.log" 2>&1 </dev/null &
    echo $! >"$STATE/pids/$name.pid"
}
# Polls `cmd` until it succeeds, for at most $2 seconds; fails naming the log to read.
wait_for() {
    local what=$1 secs=$2 log=$3
    shift 3
    local deadline=$(($(date +%s) + secs))
    until "$@" >/dev/null 2>&1; do
        if (($(date +%s) >= deadline)); then
            echo "--- last lines of $log:" >&2
            tail -n 30 "$log" >&2 || true
            die "$what not up within ${secs}s"
        fi
        sleep 0.2
    done
}

# ------------------------------------------------------------------ network
ip netns add "$NODE_NS"
ip netns add "$EXT_NS"
ip -n "$NODE_NS" link set lo up
ip -n "$EXT_NS" link set lo up
ip link add sbk8s0 netns "$NODE_NS" type veth peer name sbk8s1 netns "$EXT_NS"
ip -n "$NODE_NS" addr add "$NODE_IP/24" dev sbk8s0
ip -n "$EXT_NS" addr add "$EXT_IP/24" dev sbk8s1
ip -n "$NODE_NS" link set sbk8s0 up
ip -n "$EXT_NS" link set sbk8s1 up
# The outside world reaches hostNetwork pods directly, other pods through the node.
ip -n "$EXT_NS" route add "$POD_CIDR" via "$NODE_IP"
in_node sysctl -qw net.ipv4.ip_forward=1
phase "network namespaces"

# -------------------------------------------------------------- credentials
# Static tokens: the admin (kubectl, helm, controller-manager, scheduler) and the kubelet,
# which the Node authorizer recognises as system:node:<name> in group system:nodes.
ADMIN_TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
KUBELET_TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
cat >"$STATE/certs/tokens.csv" <<EOF
$ADMIN_TOKEN,admin,1,system:masters
$KUBELET_TOKEN,system:node:$NODE_NAME,2,system:nodes
EOF
chmod 600 "$STATE/certs/tokens.csv"
openssl ecparam -name prime256v1 -genkey -noout -out "$STATE/certs/sa.key" 2>/dev/null
openssl ec -in "$STATE/certs/sa.key" -pubout -out "$STATE/certs/sa.pub" 2>/dev/null
phase "credentials"

# ------------------------------------------------------------ control plane
start etcd "$ETCD" --data-dir="$STATE/etcd" \
    --listen-client-urls=http://127.0.0.1:2379 --advertise-client-urls=http://127.0.0.1:2379 \
    --listen-peer-urls=http://127.0.0.1:2380 --initial-advertise-peer-urls=http://127.0.0.1:2380 \
    --initial-cluster=default=http://127.0.0.1:2380 --unsafe-no-fsync --log-level=warn
# kube-apiserver writes its own serving certificate (SANs: the advertise address, the
# `kubernetes` Service IP and its DNS names) and the CA that signed it into --cert-dir.
start kube-apiserver "$K8S/kube-apiserver" \
    --etcd-servers=http://127.0.0.1:2379 --bind-address=0.0.0.0 --secure-port=6443 \
    --advertise-address="$NODE_IP" --cert-dir="$STATE/certs" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --service-account-key-file="$STATE/certs/sa.pub" \
    --service-account-signing-key-file="$STATE/certs/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --token-auth-file="$STATE/certs/tokens.csv" \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --kubelet-preferred-address-types=InternalIP --allow-privileged=true --profiling=false
wait_for "kube-apiserver serving certificate" 60 "$STATE/logs/kube-apiserver.log" test -s "$STATE/certs/apiserver.crt"

kubeconfig() { # FILE TOKEN USER
    cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: sbk8s
  cluster:
    server: https://$NODE_IP:6443
    certificate-authority: $STATE/certs/apiserver.crt
users:
- name: $3
  user:
    token: $2
contexts:
- name: sbk8s
  context: {cluster: sbk8s, user: $3}
current-context: sbk8s
EOF
    chmod 600 "$1"
}
kubeconfig "$STATE/admin.kubeconfig" "$ADMIN_TOKEN" admin
kubeconfig "$STATE/kubelet.kubeconfig" "$KUBELET_TOKEN" "system:node:$NODE_NAME"
wait_for "kube-apiserver" 60 "$STATE/logs/kube-apiserver.log" \
    in_node "$KUBECTL" --kubeconfig="$STATE/admin.kubeconfig" get --raw=/readyz
phase "etcd + kube-apiserver"

start kube-controller-manager "$K8S/kube-controller-manager" \
    --kubeconfig="$STATE/admin.kubeconfig" --authentication-kubeconfig="$STATE/admin.kubeconfig" \
    --authorization-kubeconfig="$STATE/admin.kubeconfig" \
    --service-account-private-key-file="$STATE/certs/sa.key" \
    --root-ca-file="$STATE/certs/apiserver.crt" --use-service-account-credentials=true \
    --leader-elect=false --bind-address=127.0.0.1 --secure-port=10257
start kube-scheduler "$K8S/kube-scheduler" \
    --kubeconfig="$STATE/admin.kubeconfig" --authentication-kubeconfig="$STATE/admin.kubeconfig" \
    --authorization-kubeconfig="$STATE/admin.kubeconfig" \
    --leader-elect=false --bind-address=127.0.0.1 --secure-port=10259
phase "controller-manager + scheduler"

# --------------------------------------------------------------- containerd
cat >"$STATE/cni/net.d/10-sbk8s.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "sbk8s",
  "plugins": [
    {
      "type": "bridge", "bridge": "sbcni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]],
               "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$STATE/cni/ipam"}
    },
    {"type": "loopback"}
  ]
}
EOF
# restrict_oom_score_adj: root here lacks CAP_SYS_RESOURCE, so lowering a score fails every
# sandbox ("can't get final child's PID from pipe"). The native snapshotter needs no overlay
# mounts; images are small.
cat >"$STATE/containerd/config.toml" <<EOF
version = 2
root = "$STATE/containerd/root"
state = "$STATE/containerd/state"
[grpc]
  address = "$STATE/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "switchboard.local/pause:1"
  restrict_oom_score_adj = true
  enable_selinux = false
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
EOF
start containerd containerd --config "$STATE/containerd/config.toml"
wait_for "containerd" 30 "$STATE/logs/containerd.log" ctr --address "$STATE/containerd.sock" version
if [[ ! -s "$CACHE/images/pause.tar" ]]; then
    mkdir -p "$CACHE/images"
    gcc -static -O2 -o "$STATE/pause" "$REPO/scripts/cluster/pause.c"
    python3 "$REPO/scripts/cluster/mkimage.py" --tag switchboard.local/pause:1 \
        --out "$CACHE/images/pause.tar.tmp" "$STATE/pause" >/dev/null
    mv "$CACHE/images/pause.tar.tmp" "$CACHE/images/pause.tar"
fi
ctr --address "$STATE/containerd.sock" -n k8s.io images import --snapshotter native \
    "$CACHE/images/pause.tar" >/dev/null
phase "containerd + pause image"

# ------------------------------------------------------------------ kubelet
cat >"$STATE/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
containerRuntimeEndpoint: unix://$STATE/containerd.sock
# No systemd, cgroup v1.
cgroupDriver: cgroupfs
cgroupRoot: $CGROUP_ROOT
failCgroupV1: false
failSwapOn: false
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
# Locally imported images can never be pulled again: never collect or evict them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%", "nodefs.inodesFree": "1%"}
resolvConf: /etc/resolv.conf
serializeImagePulls: false
registerNode: true
EOF
start kubelet "$K8S/kubelet" --config="$STATE/kubelet/config.yaml" \
    --kubeconfig="$STATE/kubelet.kubeconfig" --node-ip="$NODE_IP" \
    --hostname-override="$NODE_NAME" --root-dir="$STATE/kubelet/root" \
    --cert-dir="$STATE/kubelet/pki" --v=1
wait_for "node $NODE_NAME Ready" 90 "$STATE/logs/kubelet.log" \
    in_node "$KUBECTL" --kubeconfig="$STATE/admin.kubeconfig" wait --for=condition=Ready \
    "node/$NODE_NAME" --timeout=1s
phase "kubelet + node Ready"

cat >"$STATE/env" <<EOF
KUBECONFIG=$STATE/admin.kubeconfig
NODE_NS=$NODE_NS
EXT_NS=$EXT_NS
NODE_IP=$NODE_IP
EXT_IP=$EXT_IP
CONTAINERD_ADDRESS=$STATE/containerd.sock
EOF
echo "cluster up: kubectl --kubeconfig=$STATE/admin.kubeconfig (inside: nsenter --net=/run/netns/$NODE_NS)"
