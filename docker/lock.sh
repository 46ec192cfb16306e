#!/bin/sh
# Regenerates the images' lock files from pyproject.toml: every package of one side
# (the base dependencies plus the `operator` and `optimize` extras, or the `edge`
# extra) and the build backend, pinned to one version with the sha256 of every file PyPI publishes for it, so that
# `pip install --require-hashes` in docker/install.sh installs exactly these bytes on
# any platform (amd64 and arm64 nodes alike). Run it after changing a dependency in
# pyproject.toml; tests/integration/test_packaging.py fails while a lock lags behind.
#   pip install uv   # into any throwaway environment, not the project's
#   sh docker/lock.sh [--upgrade]
set -eu
cd "$(dirname "$0")/.."
for side in operator edge; do
  lock="docker/requirements-$side.lock"
  # The operator image builds variants (the `optimize` extra) in child processes.
  extras="--extra $side" named=$side
  if [ "$side" = operator ]; then extras="$extras --extra optimize" named=operator,optimize; fi
  # setuptools is the [build-system] backend: install.sh builds the project with
  # --no-build-isolation, so the backend too comes from the lock, hashed. Reading the
  # existing lock (-o) keeps its pins unless pyproject.toml or --upgrade moves them.
  echo "setuptools>=77" | uv pip compile --quiet --generate-hashes --universal \
    --python-version 3.11 --no-header $extras -o "$lock" "$@" pyproject.toml -
  {
    echo "# The $side image's Python packages, pinned with hashes: generated from pyproject.toml"
    echo "# (edgefleet[$named] and the build backend); do not edit by hand. To regenerate:"
    echo "#   pip install uv  (in a throwaway environment);  sh docker/lock.sh [--upgrade]"
    cat "$lock"
  } >"$lock.new"
  mv "$lock.new" "$lock"
done
