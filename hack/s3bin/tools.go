//go:build tools

// Package s3bin pins the SeaweedFS weed command that gives the tests a real
// S3-compatible server on loopback (`make s3`); MinIO is AGPL, so not that.
package s3bin

import _ "github.com/seaweedfs/seaweedfs/weed"
