#!/usr/bin/env bash
# Tears down what scripts/cluster-up.sh started and checks that nothing is left: no process,
# mount, network namespace, link (they live in the namespaces), cgroup or iptables rule (also
# namespaced). Safe to run when nothing is up. Exits non-zero naming whatever it could not
# remove. KEEP_CLUSTER_STATE=1 keeps the state directory (logs) for a post-mortem.
set -uo pipefail

STATE="${SWITCHBOARD_CLUSTER_DIR:-/tmp/switchboard-cluster}"
EXT_NS=sbk8s-ext
CGROUP_ROOT=$(cat "$STATE/cgroup-root" 2>/dev/null || echo /switchboard-cluster)
T0=$(date +%s%N)
left=()

# Every process of the cluster: the pods (in the kubelet's cgroup subtree), then the PID
# files' process groups, then anything still running from the state directory (shims).
pod_pids() {
    local h
    for h in /sys/fs/cgroup/*/; do
        [[ -d $h${CGROUP_ROOT#/} ]] || continue
        find "$h${CGROUP_ROOT#/}" -name cgroup.procs -exec cat {} + 2>/dev/null
    done | sort -u
}
state_pids() {
    local p
    for p in /proc/[0-9]*; do
        if tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -qF -- "$STATE"; then
            echo "${p#/proc/}"
        fi
    done
}
stop_group() { # SIGNAL
    local f pid
    for f in kubelet-1 kubelet-2 kubelet-3 kube-scheduler kube-controller-manager kube-apiserver \
        containerd-1 containerd-2 containerd-3 metrics-server etcd; do
        pid=$(cat "$STATE/pids/$f.pid" 2>/dev/null) || continue
        kill "-$1" -- "-$pid" 2>/dev/null || kill "-$1" "$pid" 2>/dev/null || true
    done
}

for sig in TERM KILL; do
    pids=$(pod_pids)
    [[ -n $pids ]] && kill "-$sig" $pids 2>/dev/null
    stop_group "$sig"
    pids=$(state_pids)
    [[ -n $pids ]] && kill "-$sig" $pids 2>/dev/null
    for _ in $(seq 1 50); do
        [[ -z "$(pod_pids)$(state_pids)" ]] && break
        sleep 0.1
    done
done
[[ -n "$(pod_pids)$(state_pids)" ]] && left+=("processes: $(pod_pids) $(state_pids)")

# Mounts under the state directory (volumes, sandbox /dev/shm) and the pods' network
# namespaces (bind mounts in /run/netns named cni-*).
grep -F -- " $STATE" /proc/mounts | awk '{print $2}' | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null
done
for ns in /run/netns/cni-*; do
    [[ -e $ns ]] || continue
    ip netns del "$(basename "$ns")" 2>/dev/null || { umount -l "$ns" 2>/dev/null; rm -f "$ns"; }
done
grep -qF -- " $STATE" /proc/mounts && left+=("mounts: $(grep -F -- " $STATE" /proc/mounts | awk '{print $2}' | tr '\n' ' ')")

for ns in sbk8s-node sbk8s-node2 sbk8s-node3 "$EXT_NS"; do
    [[ -e /run/netns/$ns ]] && ip netns del "$ns"
    [[ -e /run/netns/$ns ]] && left+=("netns $ns")
done

# Cgroups, deepest first.
for h in /sys/fs/cgroup/*/; do
    [[ -d $h${CGROUP_ROOT#/} ]] || continue
    find "$h${CGROUP_ROOT#/}" -depth -type d -exec rmdir {} \; 2>/dev/null
    [[ -d $h${CGROUP_ROOT#/} ]] && left+=("cgroup $h${CGROUP_ROOT#/}")
done

if [[ ${KEEP_CLUSTER_STATE:-0} != 1 ]]; then
    rm -rf "$STATE" 2>/dev/null || left+=("state directory $STATE")
fi
printf '==> cluster-down: %d ms\n' $((($(date +%s%N) - T0) / 1000000))
if ((${#left[@]})); then
    printf '!!! cluster-down: left behind: %s\n' "${left[@]}" >&2
    exit 1
fi
