#!/usr/bin/env bash
# Builds the helm command of the pinned release into $EDGEFLEET_HELM_DIR (default
# ~/.cache/edgefleet/helm-<version>), once; later calls find it and return at once.
# Prints the directory.
set -euo pipefail
cd "$(dirname "$0")"
version=$(go list -m -f '{{.Version}}' helm.sh/helm/v3)
out=${EDGEFLEET_HELM_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/edgefleet/helm-${version}}
if [ -x "$out/helm" ]; then echo "$out"; exit 0; fi
mkdir -p "$out.partial"
start=$(date +%s)
echo ">> building helm ${version} into ${out} (first time only; a few minutes on 2 cores)" >&2
# As helm's own Makefile does: the Kubernetes version it assumes without a cluster
# (helm template, lint) is the one of the client-go it was built with.
client_go=$(go list -m -f '{{.Version}}' k8s.io/client-go)   # v0.<minor>.<patch>
minor=${client_go#v0.}; minor=${minor%%.*}
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=${version}"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ldflags+=" -X ${pkg}.k8sVersionMajor=1 -X ${pkg}.k8sVersionMinor=${minor}"
done
CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" \
  -o "$out.partial/helm" helm.sh/helm/v3/cmd/helm
rm -rf "$out" && mv "$out.partial" "$out"
echo ">> built in $(( $(date +%s) - start ))s" >&2
echo "$out"
