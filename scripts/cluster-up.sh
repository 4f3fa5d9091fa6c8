#!/usr/bin/env bash
# Starts a Kubernetes cluster of $SWITCHBOARD_CLUSTER_NODES nodes (default 1, at most 3) for the
# real-cluster tests, entirely inside network namespaces this script creates (nothing listens on
# or sends to the machine's own interfaces):
#
#   netns sbk8s-node   10.77.0.2/24  etcd, kube-apiserver (:6443), kube-controller-manager,
#                                    kube-scheduler, metrics-server (:4443, behind the API
#                                    server's aggregation layer), and node "sbnode": containerd, kubelet, its
#                                    pods (hostNetwork pods use the node's address; others get
#                                    10.244.0.0/24 from the CNI bridge)
#   netns sbk8s-node2  10.77.0.4/24  node "sbnode2" (pods 10.244.1.0/24), when 2 or more nodes
#   netns sbk8s-node3  10.77.0.5/24  node "sbnode3" (pods 10.244.2.0/24), when 3
#   netns sbk8s-ext    10.77.0.3/24  the outside world: the carrier (SIPp) and the agent, and the
#                                    bridge every node's veth is attached to
#
# Each node has its own containerd, kubelet, CNI bridge and cgroup subtree. Binaries come from the test-deps cache (scripts/test-deps.sh builds
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
METRICS_SERVER="$CACHE/metrics-server-v0.8.0/metrics-server"
NODES="${SWITCHBOARD_CLUSTER_NODES:-1}"
NODE_NS=sbk8s-node
EXT_NS=sbk8s-ext
NODE_IP=10.77.0.2
EXT_IP=10.77.0.3
SERVICE_CIDR=10.96.0.0/24
node_ns() { if (($1 == 1)); then echo sbk8s-node; else echo "sbk8s-node$1"; fi; }
node_ip() { case $1 in 1) echo 10.77.0.2 ;; 2) echo 10.77.0.4 ;; 3) echo 10.77.0.5 ;; esac; }
node_name() { if (($1 == 1)); then echo sbnode; else echo "sbnode$1"; fi; }
pod_cidr() { echo "10.244.$(($1 - 1)).0/24"; }
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
[[ $NODES =~ ^[123]$ ]] || die "SWITCHBOARD_CLUSTER_NODES must be 1, 2 or 3 (got $NODES)"
for b in "$K8S/kube-apiserver" "$K8S/kube-controller-manager" "$K8S/kube-scheduler" "$K8S/kubelet" "$ETCD" "$KUBECTL" "$METRICS_SERVER"; do
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
mkdir -p "$STATE"/{pids,logs,certs,etcd}
printf '%s\n' "$CGROUP_ROOT" >"$STATE/cgroup-root"
printf '%s\n' "$NODES" >"$STATE/nodes"
# The kubelet's cgroup root must exist in every hierarchy (a new cpuset needs its CPUs and
# memory nodes before anything can join it).
for h in /sys/fs/cgroup/*/; do
    [[ -e $h/cgroup.procs ]] || continue
    for i in $(seq 1 "$NODES"); do
        mkdir -p "$h${CGROUP_ROOT#/}/node$i"
        if [[ -e $h/cpuset.cpus ]]; then
            for d in "$h${CGROUP_ROOT#/}" "$h${CGROUP_ROOT#/}/node$i"; do
                cat "$h/cpuset.cpus" >"$d/cpuset.cpus"
                cat "$h/cpuset.mems" >"$d/cpuset.mems"
            done
        fi
    done
done

# Starts a long-lived process in node $1's namespace, in its own session (so teardown can
# signal its process group), with its PID in pids/NAME.pid and its output in logs/NAME.log.
start_on() {
    local ns name=$2
    ns=$(node_ns "$1")
    shift 2
    nsenter --net="/run/netns/$ns" -- setsid "$@" >"$STATE/logs/$name.log" 2>&1 </dev/null &
    echo $! >"$STATE/pids/$name.pid"
}
start() { start_on 1 "$@"; }
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
ip netns add "$EXT_NS"
ip -n "$EXT_NS" link set lo up
ip -n "$EXT_NS" link add sbk8sbr type bridge
ip -n "$EXT_NS" addr add "$EXT_IP/24" dev sbk8sbr
ip -n "$EXT_NS" link set sbk8sbr up
for i in $(seq 1 "$NODES"); do
    ns=$(node_ns "$i")
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip link add sbk8s0 netns "$ns" type veth peer name "sbk8s$i" netns "$EXT_NS"
    ip -n "$ns" addr add "$(node_ip "$i")/24" dev sbk8s0
    ip -n "$ns" link set sbk8s0 up
    ip -n "$EXT_NS" link set "sbk8s$i" master sbk8sbr up
    nsenter --net="/run/netns/$ns" -- sysctl -qw net.ipv4.ip_forward=1
    # The outside world reaches hostNetwork pods directly, other pods through their node.
    ip -n "$EXT_NS" route add "$(pod_cidr "$i")" via "$(node_ip "$i")"
done
# Pods on one node reach pods on another through that node.
for i in $(seq 1 "$NODES"); do
    for j in $(seq 1 "$NODES"); do
        ((i == j)) || ip -n "$(node_ns "$i")" route add "$(pod_cidr "$j")" via "$(node_ip "$j")"
    done
done
phase "network namespaces"

# -------------------------------------------------------------- credentials
# Static tokens: the admin (kubectl, helm, controller-manager, scheduler) and the kubelet,
# which the Node authorizer recognises as system:node:<name> in group system:nodes.
ADMIN_TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
printf '%s,admin,1,system:masters\n' "$ADMIN_TOKEN" >"$STATE/certs/tokens.csv"
for i in $(seq 1 "$NODES"); do
    token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
    printf '%s\n' "$token" >"$STATE/certs/kubelet-$i.token"
    printf '%s,system:node:%s,%d,system:nodes\n' "$token" "$(node_name "$i")" $((i + 1)) >>"$STATE/certs/tokens.csv"
done
chmod 600 "$STATE/certs/tokens.csv"
openssl ecparam -name prime256v1 -genkey -noout -out "$STATE/certs/sa.key" 2>/dev/null
openssl ec -in "$STATE/certs/sa.key" -pubout -out "$STATE/certs/sa.pub" 2>/dev/null
# The aggregation layer (metrics-server behind the API server): the front-proxy CA and the
# client certificate the API server presents to aggregated API servers.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=front-proxy-ca -keyout "$STATE/certs/front-proxy-ca.key" \
    -out "$STATE/certs/front-proxy-ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj /CN=front-proxy-client -keyout "$STATE/certs/front-proxy-client.key" \
    -out "$STATE/certs/front-proxy-client.csr" 2>/dev/null
openssl x509 -req -in "$STATE/certs/front-proxy-client.csr" -days 2 \
    -CA "$STATE/certs/front-proxy-ca.crt" -CAkey "$STATE/certs/front-proxy-ca.key" \
    -CAcreateserial -out "$STATE/certs/front-proxy-client.crt" 2>/dev/null
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
    --kubelet-preferred-address-types=InternalIP --allow-privileged=true --profiling=false \
    --requestheader-client-ca-file="$STATE/certs/front-proxy-ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$STATE/certs/front-proxy-client.crt" \
    --proxy-client-key-file="$STATE/certs/front-proxy-client.key" \
    --enable-aggregator-routing=true
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
wait_for "kube-apiserver" 60 "$STATE/logs/kube-apiserver.log" \
    in_node "$KUBECTL" --kubeconfig="$STATE/admin.kubeconfig" get --raw=/readyz
phase "etcd + kube-apiserver"

start kube-controller-manager "$K8S/kube-controller-manager" \
    --kubeconfig="$STATE/admin.kubeconfig" --authentication-kubeconfig="$STATE/admin.kubeconfig" \
    --authorization-kubeconfig="$STATE/admin.kubeconfig" \
    --service-account-private-key-file="$STATE/certs/sa.key" \
    --root-ca-file="$STATE/certs/apiserver.crt" --use-service-account-credentials=true \
    --leader-elect=false --bind-address=127.0.0.1 --secure-port=10257 \
    --horizontal-pod-autoscaler-sync-period=5s
start kube-scheduler "$K8S/kube-scheduler" \
    --kubeconfig="$STATE/admin.kubeconfig" --authentication-kubeconfig="$STATE/admin.kubeconfig" \
    --authorization-kubeconfig="$STATE/admin.kubeconfig" \
    --leader-elect=false --bind-address=127.0.0.1 --secure-port=10259
phase "controller-manager + scheduler"

# ------------------------------------------------------------------- nodes
if [[ ! -s "$CACHE/images/pause.tar" ]]; then
    mkdir -p "$CACHE/images"
    gcc -static -O2 -o "$STATE/pause" "$REPO/scripts/cluster/pause.c"
    python3 "$REPO/scripts/cluster/mkimage.py" --tag switchboard.local/pause:1 \
        --out "$CACHE/images/pause.tar.tmp" "$STATE/pause" >/dev/null
    mv "$CACHE/images/pause.tar.tmp" "$CACHE/images/pause.tar"
fi
# One node: its CNI bridge, containerd and kubelet, in its own namespace and cgroup subtree.
start_node() { # INDEX
    local i=$1 dir="$STATE/node$1" name ip
    name=$(node_name "$i")
    ip=$(node_ip "$i")
    mkdir -p "$dir"/{cni/net.d,cni/ipam,containerd,kubelet}
    cat >"$dir/cni/net.d/10-sbk8s.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "sbk8s",
  "plugins": [
    {
      "type": "bridge", "bridge": "sbcni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {"type": "host-local", "ranges": [[{"subnet": "$(pod_cidr "$i")"}]],
               "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$dir/cni/ipam"}
    },
    {"type": "loopback"}
  ]
}
EOF
    # restrict_oom_score_adj: root here lacks CAP_SYS_RESOURCE, so lowering a score fails every
    # sandbox ("can't get final child's PID from pipe"). The native snapshotter needs no overlay
    # mounts; images are small.
    cat >"$dir/containerd/config.toml" <<EOF
version = 2
root = "$dir/containerd/root"
state = "$dir/containerd/state"
[grpc]
  address = "$dir/containerd.sock"
[ttrpc]
  address = "$dir/containerd.sock.ttrpc"
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
    conf_dir = "$dir/cni/net.d"
EOF
    start_on "$i" "containerd-$i" containerd --config "$dir/containerd/config.toml"
    wait_for "containerd on $name" 30 "$STATE/logs/containerd-$i.log" \
        ctr --address "$dir/containerd.sock" version
    ctr --address "$dir/containerd.sock" -n k8s.io images import --snapshotter native \
        "$CACHE/images/pause.tar" >/dev/null
    kubeconfig "$dir/kubelet.kubeconfig" "$(cat "$STATE/certs/kubelet-$i.token")" "system:node:$name"
    cat >"$dir/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $ip
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
containerRuntimeEndpoint: unix://$dir/containerd.sock
# No systemd, cgroup v1; one cgroup subtree per node.
cgroupDriver: cgroupfs
cgroupRoot: $CGROUP_ROOT/node$i
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
    start_on "$i" "kubelet-$i" "$K8S/kubelet" --config="$dir/kubelet/config.yaml" \
        --kubeconfig="$dir/kubelet.kubeconfig" --node-ip="$ip" \
        --hostname-override="$name" --root-dir="$dir/kubelet/root" \
        --cert-dir="$dir/kubelet/pki" --v=1
}
for i in $(seq 1 "$NODES"); do
    start_node "$i"
done
phase "containerds + kubelets"
for i in $(seq 1 "$NODES"); do
    wait_for "node $(node_name "$i") Ready" 90 "$STATE/logs/kubelet-$i.log" \
        in_node "$KUBECTL" --kubeconfig="$STATE/admin.kubeconfig" wait --for=condition=Ready \
        "node/$(node_name "$i")" --timeout=1s
done
phase "nodes Ready"

# ----------------------------------------------------------- metrics-server
# The resource metrics API for HorizontalPodAutoscalers, as a process on the first node behind
# the API server's aggregation layer (no kube-proxy runs: the API server routes to the
# endpoint itself, --enable-aggregator-routing).
start metrics-server "$METRICS_SERVER" --secure-port=4443 --bind-address="$NODE_IP" \
    --cert-dir="$STATE/certs/metrics-server" \
    --kubeconfig="$STATE/admin.kubeconfig" --authentication-kubeconfig="$STATE/admin.kubeconfig" \
    --authorization-kubeconfig="$STATE/admin.kubeconfig" \
    --kubelet-insecure-tls --kubelet-preferred-address-types=InternalIP --metric-resolution=10s --kubelet-request-timeout=5s
cat >"$STATE/metrics-server.yaml" <<EOF
apiVersion: v1
kind: Service
metadata: {name: metrics-server, namespace: kube-system}
spec:
  ports: [{name: https, port: 443, targetPort: 4443}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: metrics-server, namespace: kube-system}
subsets:
  - addresses: [{ip: $NODE_IP}]
    ports: [{name: https, port: 4443}]
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1beta1.metrics.k8s.io}
spec:
  group: metrics.k8s.io
  version: v1beta1
  service: {name: metrics-server, namespace: kube-system, port: 443}
  insecureSkipTLSVerify: true
  groupPriorityMinimum: 100
  versionPriority: 100
EOF
in_node "$KUBECTL" --kubeconfig="$STATE/admin.kubeconfig" apply -f "$STATE/metrics-server.yaml" >/dev/null 2>&1
wait_for "metrics-server (the metrics.k8s.io API)" 60 "$STATE/logs/metrics-server.log" \
    in_node "$KUBECTL" --kubeconfig="$STATE/admin.kubeconfig" get --raw=/apis/metrics.k8s.io/v1beta1
phase "metrics-server"

cat >"$STATE/env" <<EOF
KUBECONFIG=$STATE/admin.kubeconfig
NODES=$NODES
NODE_NS=$NODE_NS
EXT_NS=$EXT_NS
NODE_IP=$NODE_IP
EXT_IP=$EXT_IP
EOF
echo "cluster up: kubectl --kubeconfig=$STATE/admin.kubeconfig (inside: nsenter --net=/run/netns/$NODE_NS)"
