//go:build tools

// Package tools pins External Secrets Operator for the peers benchmark
// (examples/peers_bench.rs): its controller (the module's main package) is
// built from this module.
package tools

import (
	_ "github.com/external-secrets/external-secrets"
)
