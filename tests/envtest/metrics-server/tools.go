//go:build tools

// Package metricsserver pins metrics-server for the real-cluster tests.
package metricsserver

import (
	_ "sigs.k8s.io/metrics-server/cmd/metrics-server"
)
