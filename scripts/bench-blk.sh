#!/usr/bin/env bash
# Block benchmark: the probe guest's blk-bench on the same raw image under vmm and under
# Debian's QEMU (-M microvm, virtio-blk-device, same cache mode). Prints sequential write/read
# MiB/s (1 MiB requests), 4 KiB random-read IOPS at queue depth 1 and 32, host CPU seconds per
# GiB moved (all threads, and without the vCPU threads), and the vmm/QEMU ratios (higher is
# better for throughput, lower for CPU).
# Each VMM runs ROUNDS times, alternating, and the medians are reported (host noise is large
# on shared machines). The program is scripts/bench/blk.py.
# Usage: scripts/bench-blk.sh [SECONDS_PER_PHASE] [IMAGE_MIB] [CACHE] [ROUNDS]
#        (defaults 3, 1024, none, 3)
source "$(dirname "$0")/lib.sh"
SECS=${1:-3}
IMG_MIB=${2:-1024}
CACHE=${3:-none}
ROUNDS=${4:-3}
bench_setup
IMG="$TARGET/bench-blk.raw"
truncate -s "${IMG_MIB}M" "$IMG"
exec python3 -B "$ROOT/scripts/bench/blk.py" "$VMM" "$KERNEL" "$IMG" "$SECS" "$CACHE" "$ROUNDS"
