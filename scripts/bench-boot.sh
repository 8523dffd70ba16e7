#!/usr/bin/env bash
# Boot benchmark: vmm and Debian's QEMU (-M microvm) boot the same probe guest N times each.
# Prints, for each VMM: median and p90 time from process start to the guest's ready line,
# median peak RSS, and the VMM's own memory (RSS minus the guest RAM pages it touched), and the
# vmm/QEMU ratios. The program is scripts/bench/boot.py.
# Usage: scripts/bench-boot.sh [RUNS]   (default 20)
source "$(dirname "$0")/lib.sh"
RUNS=${1:-20}
bench_setup
MEM_MIB=256
exec python3 -B "$ROOT/scripts/bench/boot.py" "$VMM" "$KERNEL" "$RUNS" "$MEM_MIB"
