//go:build tools

// Package tools pins github.com/nsmithuk/local-kms for the test suite.
package tools

import _ "github.com/nsmithuk/local-kms"
