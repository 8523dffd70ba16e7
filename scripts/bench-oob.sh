#!/usr/bin/env bash
# Out-of-band benchmark: exec-oob query-yank round trips under vmm and Debian's QEMU 7.2
# (-M microvm), both running the probe guest (probe.test=idle), p50/p99 over
# REQUESTS requests on a connection negotiated with oob: idle, then while another connection's
# blockdev-add of a file on a hung FUSE mount (tests/qmp/hangfs.py) stalls (QEMU: its main loop
# in openat(); vmm: a worker thread). Also checks whether a connection opened during the stall
# can negotiate, then releases the hang and checks that the blockdev-add completes. Needs fuse3
# and mfusepy (target/qmp-venv, scripts/qmp-venv.sh). The program is scripts/bench/oob.py.
# Usage: scripts/bench-oob.sh [REQUESTS]   (default 10000)
source "$(dirname "$0")/lib.sh"
REQUESTS=${1:-10000}
bench_setup
apt_install fuse3
PY=$(bash "$ROOT/scripts/qmp-venv.sh")
exec "$PY" -B "$ROOT/scripts/bench/oob.py" "$VMM" "$KERNEL" "$REQUESTS"
