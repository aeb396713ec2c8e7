#!/bin/sh
# Fetch Debian's cloud kernel and a static busybox into kvmlite's asset cache
# ($KVMLITE_ASSETS, default ~/.cache/kvmlite/assets) and print their paths.
# Needs apt-get and dpkg-deb; no root unless apt's package lists are missing
# (then run `sudo apt-get update` once). Arguments go to kvmlite.tools.assets
# (--dir DIR, --force).
set -eu
cd "$(dirname "$0")/.."
exec python3 -m kvmlite.tools.assets "$@"
