//go:build tools

// Package envtest pins the Kubernetes binaries the end-to-end tests run: the
// control plane (kube-apiserver, kube-controller-manager, kube-scheduler) and,
// for the real-cluster tests (scripts/cluster-up.sh), the node's kubelet and
// kube-proxy. One module, one version: the node reports the same version as
// the API server.
package envtest

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
