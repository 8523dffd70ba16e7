#!/usr/bin/env bash
# Shared helpers for the project's scripts. Source it; do not run it.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET="$ROOT/target"
APT_UPDATED_STAMP="$TARGET/.apt-updated"

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
die() { printf '[%s] error: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

# Runs apt-get update once per machine boot (the stamp lives in target/, so a fresh clone
# updates once; package lists are needed before any apt-get download or install).
apt_update_once() {
  mkdir -p "$TARGET"
  if [[ ! -f $APT_UPDATED_STAMP ]] || [[ -z $(ls /var/lib/apt/lists/ 2>/dev/null | grep -v lock) ]]; then
    log "apt-get update"
    apt-get update -qq >/dev/null
    touch "$APT_UPDATED_STAMP"
  fi
}

# Installs Debian packages that are missing (idempotent). Needs root.
apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  [[ $(id -u) == 0 ]] || die "need root to install: ${missing[*]} (or install them yourself)"
  apt_update_once
  log "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# Builds the vmm binary (release) and prints its path.
build_vmm() {
  (cd "$ROOT" && cargo build --release -q -p vmm) >&2
  echo "$TARGET/release/vmm"
}

# Common set-up of the side-by-side benchmarks: Debian's QEMU, a release vmm and the probe
# guest. Sets VMM and KERNEL (the probe's bzImage).
bench_setup() {
  apt_install qemu-system-x86
  VMM=$(build_vmm)
  bash "$ROOT/scripts/probe-guest.sh" >/dev/null
  KERNEL="$TARGET/probe-guest/bzImage"
}
