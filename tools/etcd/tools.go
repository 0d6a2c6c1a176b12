//go:build tools

// Package tools pins go.etcd.io/etcd/server/v3 for the test suite.
package tools

import _ "go.etcd.io/etcd/server/v3"
