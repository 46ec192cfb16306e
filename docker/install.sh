#!/bin/sh
# Installs one side of EdgeFleet into a fresh virtual environment. The container
# images run this, and a test runs it on every `make test`, so that the images'
# install steps cannot silently rot.
#   install.sh operator|edge SOURCE_DIR VENV_DIR
set -eu
side=$1
source_dir=$2
venv=$3
case "$side" in
  operator|edge) ;;
  *) echo "install.sh: side must be operator or edge, not '$side'" >&2; exit 2 ;;
esac
python3 -m venv "$venv"
"$venv/bin/pip" install --no-cache-dir --quiet --disable-pip-version-check "$source_dir[$side]"
