#!/usr/bin/env bash
# Event benchmark: BLOCK_IO_ERROR delivery under vmm and Debian's QEMU (-M microvm), both
# running the probe guest's io-loop on a disk whose writes all fail (vmm: --disk inject.0
# write EIO; QEMU: blkdebug), werror=report. The guest fails ERRORS writes per batch; batch 1
# goes to one client, batch 2 to CLIENTS clients (one socket each). Prints the latency from the
# error to the client (receive time minus the event's timestamp, p50/p99), the events/s
# delivered, the source rate and the events lost per side (emissions from query-blockstats
# minus events received), with the vmm/QEMU ratios. vmm's clients use explicit connections
# (its broadcast BLOCK_IO_ERROR is rate-limited, as QEMU 9.2+); QEMU 7.2's use the broadcast.
# The program is scripts/bench/events.py.
# Usage: scripts/bench-events.sh [ERRORS] [CLIENTS]   (defaults 10000, 16)
source "$(dirname "$0")/lib.sh"
ERRORS=${1:-10000}
CLIENTS=${2:-16}
bench_setup
IMG="$TARGET/bench-events.raw"
truncate -s 16M "$IMG"
exec python3 -B "$ROOT/scripts/bench/events.py" "$VMM" "$KERNEL" "$IMG" "$ERRORS" "$CLIENTS"
