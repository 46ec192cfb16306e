#!/usr/bin/env bash
# Installs Prometheus (server and promtool) from Debian's packages when it is missing:
# the metrics tests scrape the real thing.
set -euo pipefail
if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "prometheus is missing; install Debian's package: sudo apt-get install prometheus" >&2
  exit 1
fi
echo ">> installing prometheus from Debian's packages" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
