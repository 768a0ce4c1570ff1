//go:build tools

// Package tools records the binaries built from this module so go mod tidy keeps them.
package tools

import _ "go.etcd.io/etcd/server/v3"
