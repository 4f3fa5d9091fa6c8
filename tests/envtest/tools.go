//go:build tools

// Package envtest pins the control-plane binaries the end-to-end tests run.
package envtest

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
)
