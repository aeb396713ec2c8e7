#!/usr/bin/env bash
# The whole test suite, with all set-up, on a fresh machine (README's second command; .ci/run calls it).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check -e '.[test]'
# QEMU is the reference VMM the guest tests compare against; install it where we may (root + apt).
if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && [ -z "${KVMLITE_NO_APT:-}" ]; then
    echo "installing qemu-system-x86 (reference VMM for comparison tests; KVMLITE_NO_APT=1 skips this)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-x86 >/dev/null) \
      || echo "could not install QEMU: the QEMU comparison tests will skip"
  else
    echo "qemu-system-x86_64 not found: the QEMU comparison tests will skip"
  fi
fi
python3 -m ruff check kvmlite tests bench guests
python3 -m pytest -q "$@"
