//go:build tools

// Package tools pins helm.sh/helm/v4 for the test suite.
package tools

import _ "helm.sh/helm/v4/cmd/helm"
