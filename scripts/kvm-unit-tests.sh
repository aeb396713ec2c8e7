#!/usr/bin/env bash
# Upstream kvm-unit-tests (x86_64) under kvmlite and under QEMU: fetch at a pinned commit, build, run.
#
#   scripts/kvm-unit-tests.sh build                 fetch and build into $KUT_DIR
#   scripts/kvm-unit-tests.sh run kvmlite [TEST...] upstream's run_tests.sh, QEMU=kvmlite-qemu
#   scripts/kvm-unit-tests.sh run qemu [TEST...]    the same with qemu-system-x86_64 -enable-kvm
#   scripts/kvm-unit-tests.sh table                 test | kvmlite | QEMU from the last two runs
#
# Environment:
#   KUT_SRC     where to fetch from: a git URL or a local repository (default: upstream on GitLab).
#               Machines without access to GitLab point it at a mirror, e.g. KUT_SRC=/path/to/repo.
#   KUT_DIR     the checkout and build directory (default ~/.cache/kvmlite/kvm-unit-tests)
#   TIMEOUT     per-test timeout for run_tests.sh (default 90s, upstream's own default)
#   ACCEL       kvm (default) or tcg (kvmlite: its own emulator; QEMU: TCG)
#
# The suite is never committed to this repository: this script fetches the commit below.  Results
# go to $KUT_DIR/results/<vmm>/ (run_tests.sh's logs and its summary); docs/conformance.md holds
# the table for this project's machines and the reason for every difference.
set -euo pipefail

KUT_COMMIT=1da1819e49fc4938985edca67df669099b4c87a7 # master of 2026-06-26
KUT_SRC=${KUT_SRC:-https://gitlab.com/kvm-unit-tests/kvm-unit-tests.git}
KUT_DIR=${KUT_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kvmlite/kvm-unit-tests}
REPO=$(cd "$(dirname "$0")/.." && pwd)

die() { echo "kvm-unit-tests.sh: $*" >&2; exit 2; }

fetch() {
  if [ ! -d "$KUT_DIR/.git" ]; then
    mkdir -p "$(dirname "$KUT_DIR")"
    git clone -q "$KUT_SRC" "$KUT_DIR" || die "cannot clone $KUT_SRC (set KUT_SRC to a reachable URL or a local copy)"
  fi
  if ! git -C "$KUT_DIR" cat-file -e "$KUT_COMMIT^{commit}" 2>/dev/null; then
    git -C "$KUT_DIR" fetch -q "$KUT_SRC" || die "cannot fetch from $KUT_SRC"
  fi
  git -C "$KUT_DIR" cat-file -e "$KUT_COMMIT^{commit}" 2>/dev/null || die "$KUT_SRC lacks commit $KUT_COMMIT"
  git -C "$KUT_DIR" checkout -q "$KUT_COMMIT"
}

build() {
  fetch
  cd "$KUT_DIR"
  if [ ! -f config.mak ] || [ "$(git rev-parse HEAD)" != "$(cat .kvmlite-built 2>/dev/null)" ]; then
    ./configure --arch=x86_64 >/dev/null
    make -s -j"$(nproc)" >/dev/null 2>&1 || make -j"$(nproc)" # show the error the second time
    git rev-parse HEAD >.kvmlite-built
  fi
}

# run_tests.sh takes $QEMU as one word: give it one executable that is this checkout's kvmlite-qemu.
kvmlite_wrapper() {
  local wrapper="$KUT_DIR/kvmlite-qemu"
  cat >"$wrapper" <<EOF
#!/bin/sh
PYTHONPATH="$REPO\${PYTHONPATH:+:\$PYTHONPATH}" exec "$(command -v python3)" -m kvmlite.cli.qemu "\$@"
EOF
  chmod +x "$wrapper"
  echo "$wrapper"
}

run() {
  local vmm=${1:-}
  shift || true
  [ "$vmm" = kvmlite ] || [ "$vmm" = qemu ] || die "run kvmlite|qemu [TEST...]"
  [ -f "$KUT_DIR/.kvmlite-built" ] || build
  cd "$KUT_DIR"
  local qemu
  if [ "$vmm" = kvmlite ]; then
    qemu=$(kvmlite_wrapper)
  else
    qemu=$(command -v qemu-system-x86_64) || die "qemu-system-x86_64 is not installed"
  fi
  rm -rf logs logs.old
  local status=0
  QEMU=$qemu ACCEL=${ACCEL:-kvm} TIMEOUT=${TIMEOUT:-90s} ./run_tests.sh -v "$@" | tee summary.txt || status=$?
  rm -rf "results/$vmm"
  mkdir -p results
  cp -r logs "results/$vmm"
  sed 's/\x1b\[[0-9;]*m//g' summary.txt | grep -E '^(PASS|FAIL|SKIP) ' >"results/$vmm/summary.txt" || true
  return $status
}

result() { awk -v t="$1" '$2 == t { $2 = ""; sub(/ +$/, ""); print; exit }' "$2"; }

table() {
  local k="$KUT_DIR/results/kvmlite/summary.txt" q="$KUT_DIR/results/qemu/summary.txt"
  [ -f "$k" ] && [ -f "$q" ] || die "run both first: run kvmlite, run qemu"
  echo "| test | kvmlite | QEMU |"
  echo "| --- | --- | --- |"
  cut -d' ' -f2 "$k" "$q" | sort -u | while read -r t; do
    printf '| %s | %s | %s |\n' "$t" "$(result "$t" "$k")" "$(result "$t" "$q")"
  done
}

case ${1:-} in
  build) build ;;
  run) shift; run "$@" ;;
  table) table ;;
  *) die "usage: $0 build | run kvmlite|qemu [TEST...] | table" ;;
esac
