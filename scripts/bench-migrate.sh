#!/usr/bin/env bash
# Migration benchmark: vmm and Debian's QEMU 7.2 (-M microvm) each migrate the probe guest to a
# second process of their own over a unix socket, driven by the same QMP commands (QEMU's
# migrate, query-migrate, migrate-set-parameters), RUNS times each, alternating:
#   - an idle guest (probe.test=mem-walk probe.rate=0 over 16 MiB: filled once, then halted
#     between timer ticks) and a mem-walk guest (all but 32 MiB of RAM rewritten at RATE MiB/s,
#     default 512), at 256 MiB and 2 GiB of RAM;
#   - total-time, downtime and setup-time as each VMM reports them in query-migrate, the bytes
#     sent, the wall time from `migrate` to the destination guest's first progress line, and
#     the guest's own longest stall; every run ends with system_powerdown on the destination
#     and the guest verifying every page (bad=0, or the benchmark fails);
#   - then a snapshot of the paused mem-walk guest to a file (vmm: file:, QEMU 7.2: exec:cat),
#     its size on disk, and restore-to-running from process start, with Firecracker's
#     published resume latency alongside;
#   - then postcopy at 256 MiB (skip it with --no-postcopy, run it alone with --postcopy-only):
#     migrate-set-capabilities [postcopy-ram, events] on both sides, migrate then
#     migrate-start-postcopy, the idle and the mem-walk guest: migrate to the destination's
#     RESUME event, total-time, downtime, postcopy-requests/-bytes, and the guest's own timing
#     of its slow page touches on the destination (probe.touch: p50/p99); then a relay capped
#     at 1 MiB/s between the two, SIGSTOPped mid-postcopy: 1000 exec-oob round trips on the
#     stalled destination (vmm query-status, QEMU 7.2 query-yank) against the same on a VM
#     with no migration, and the recovery (migrate-pause, migrate-recover, migrate resume).
# Both VMMs get max-bandwidth 10 GiB/s (QEMU 7.2's default of 32 MiB/s would turn the
# comparison into one of throttles) and downtime-limit 300 ms. Medians and vmm/QEMU ratios.
# The program is scripts/bench/migrate.py (its --help lists the knobs: --sizes, --rate,
# --max-bandwidth, --downtime-limit, --timeout, --settle, --cpus N (all vCPUs walk: probe.cpus),
# --only vmm|qemu, --no-snapshot, --no-postcopy, --postcopy-only, --postcopy-mib, --touch-us,
# --relay-rate, --oob-requests).
# Usage: scripts/bench-migrate.sh [RUNS [migrate.py options]]   (default 3 runs)
#   VMM=path/to/vmm skips the release build (e.g. with --only qemu).
source "$(dirname "$0")/lib.sh"
RUNS=${1:-3}
shift || true
if [[ -n ${VMM:-} ]]; then
  apt_install qemu-system-x86
  bash "$ROOT/scripts/probe-guest.sh" >/dev/null
  KERNEL="$TARGET/probe-guest/bzImage"
else
  bench_setup
fi
exec python3 -B "$ROOT/scripts/bench/migrate.py" "$VMM" "$KERNEL" "$RUNS" "$@"
