//go:build tools

// Package helmbin pins the helm command the chart tests and `make helm` build.
package helmbin

import _ "helm.sh/helm/v3/cmd/helm"
