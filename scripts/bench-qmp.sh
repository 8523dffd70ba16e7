#!/usr/bin/env bash
# QMP benchmark: vmm and Debian's QEMU (-M microvm) side by side, both running the probe guest
# (probe.test=idle), driven by the same raw-socket client:
#   - latency: query-status round trips from one client, one request at a time (p50/p99),
#     and the same for query-kvm (vmm answers query-status, an allow-oob command, on its
#     monitor thread; query-kvm goes through the main loop, like most commands);
#   - throughput with 8 pipelined query-status requests in flight on one connection;
#   - throughput with 16 clients, each on its own socket (QEMU serves one client per -qmp
#     socket, so both VMMs get 16 extra sockets), one request in flight per client;
#   - another client's round trips while one client streams a 60 MiB request.
# The client is one Python thread (selectors); it may be the bottleneck of the throughput
# figures, identically for both VMMs. The program is scripts/bench/qmp.py.
# Usage: scripts/bench-qmp.sh [REQUESTS]   (default 10000 latency samples)
source "$(dirname "$0")/lib.sh"
REQUESTS=${1:-10000}
bench_setup
exec python3 -B "$ROOT/scripts/bench/qmp.py" "$VMM" "$KERNEL" "$REQUESTS"
