#!/usr/bin/env bash
# Builds SeaweedFS's weed command of the pinned commit into $EDGEFLEET_S3_DIR
# (default ~/.cache/edgefleet/seaweedfs-<version>), once; later calls find it and
# return at once. Prints the directory. The tests run it as a real S3 server on
# loopback (MinIO is AGPL, so not that).
set -euo pipefail
cd "$(dirname "$0")"
version=$(go list -m -f '{{.Version}}' github.com/seaweedfs/seaweedfs)
out=${EDGEFLEET_S3_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/edgefleet/seaweedfs-${version}}
if [ -x "$out/weed" ]; then echo "$out"; exit 0; fi
mkdir -p "$out.partial"
start=$(date +%s)
echo ">> building weed ${version} into ${out} (first time only; several minutes on 2 cores)" >&2
# No build tags: the heavy optional filer stores (elastic, gocdk, sqlite, ydb,
# tarantool, tikv, rclone, rocksdb, foundationdb) are opt-in tags upstream, so the
# plain build already leaves them out, as upstream's default release binary does.
# COMMIT is what upstream's release workflows stamp (shown by `weed version`).
commit=${version##*-}
CGO_ENABLED=0 go build -trimpath \
  -ldflags "-s -w -X github.com/seaweedfs/seaweedfs/weed/util/version.COMMIT=${commit}" \
  -o "$out.partial/weed" github.com/seaweedfs/seaweedfs/weed
rm -rf "$out" && mv "$out.partial" "$out"
echo ">> built in $(( $(date +%s) - start ))s" >&2
echo "$out"
