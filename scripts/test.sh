#!/usr/bin/env bash
# The whole test suite, with all set-up, on a fresh machine (README's second command; .ci/run calls it).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check -e '.[test]'
# An editable install runs the sources in place, and where PYTHONDONTWRITEBYTECODE is set (it is on this
# project's machines) Python never caches their bytecode: every run would compile every module again
# (about 0.1 s of CPU). Compile once here; a wheel install is compiled by pip itself.
python3 -m compileall -q kvmlite
# QEMU is the reference VMM the guest tests compare against, iasl (acpica-tools) checks the ACPI tables,
# passt is --net user's backend, libseccomp2 gives kvmlite's threads their system-call allow-lists;
# install what is missing where we may (root + apt).
missing=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || missing+=(qemu-system-x86)
command -v iasl >/dev/null 2>&1 || missing+=(acpica-tools)
command -v passt >/dev/null 2>&1 || missing+=(passt)  # --net user's backend
# libseccomp: kvmlite run confines its threads with it (docs/seccomp.md); without it, --seccomp is off
python3 -c "import ctypes.util, sys; sys.exit(not ctypes.util.find_library('seccomp'))" || missing+=(libseccomp2)
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && [ -z "${KVMLITE_NO_APT:-}" ]; then
    echo "installing ${missing[*]} (QEMU: reference VMM; acpica-tools: iasl; passt: --net user; libseccomp2: --seccomp; KVMLITE_NO_APT=1 skips this)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null) \
      || echo "could not install ${missing[*]}: the tests that need them will skip"
  else
    echo "${missing[*]} not installed: the QEMU comparison, iasl and passt tests will skip"
  fi
fi
python3 -m ruff check kvmlite tests bench guests
python3 -m mypy  # the packages and strictness in pyproject.toml's [tool.mypy]
python3 -m pytest -q "$@"
