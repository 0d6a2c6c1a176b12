//go:build tools

// Package tools pins Bitnami Sealed Secrets for the peers benchmark
// (examples/peers_bench.rs): its controller is built from this module, and
// sealbulk/ seals the benchmark's Secrets with its own pkg/crypto.
package tools

import (
	_ "github.com/bitnami/sealed-secrets/cmd/controller"
)
