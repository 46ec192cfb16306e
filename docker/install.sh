#!/bin/sh
# Installs one side of EdgeFleet into a fresh virtual environment. The container
# images run this, and a test runs it on every `make test`, so that the images'
# install steps cannot silently rot.
#   install.sh operator|edge SOURCE_DIR VENV_DIR
# The dependencies come from SOURCE_DIR/docker/requirements-SIDE.lock (docker/lock.sh
# writes it): exact versions, each file checked against its sha256, wheels only, so no
# package's build code runs here. The project itself then goes in with --no-deps, built
# by the locked setuptools (--no-build-isolation: nothing fetched unpinned), and
# `pip check` proves the lock holds everything the project needs.
set -eu
side=$1
source_dir=$2
venv=$3
case "$side" in
  operator|edge) ;;
  *) echo "install.sh: side must be operator or edge, not '$side'" >&2; exit 2 ;;
esac
pip_install="$venv/bin/pip install --no-cache-dir --quiet --disable-pip-version-check"
python3 -m venv "$venv"
$pip_install --require-hashes --only-binary :all: -r "$source_dir/docker/requirements-$side.lock"
$pip_install --no-deps --no-build-isolation "$source_dir"
"$venv/bin/pip" check --disable-pip-version-check
