#!/usr/bin/env bash
# Boot benchmarks: vmm and Debian's QEMU (-M microvm) boot the same guests side by side.
#   1. The probe guest, RUNS times each: median and p90 time from process start to the guest's
#      ready line, median peak RSS, and the VMM's own memory (RSS minus the guest RAM pages it
#      touched), and the vmm/QEMU ratios (scripts/bench/boot.py).
#   2. Real Linux, LINUX_RUNS times each, alternating: this host's guest kernel
#      (scripts/linux-guest.sh: the project-built kernel on PVM hosts, Debian's stock kernel
#      with hardware virtualization) through PVH, the same initramfs and command line, from
#      process start to the guest's first userspace line; median, fastest and slowest boot and
#      the ratios (scripts/bench/boot_linux.py). 256 MiB and LINUX_CPUS vCPUs (default 1).
# Usage: scripts/bench-boot.sh [RUNS [LINUX_RUNS]]   (defaults 20 and 3; LINUX_RUNS=0 skips
# Linux). The first Linux run on a PVM host builds the kernel (3-7 minutes on 2 cores).
source "$(dirname "$0")/lib.sh"
RUNS=${1:-20}
LINUX_RUNS=${2:-3}
LINUX_CPUS=${LINUX_CPUS:-1}
bench_setup
MEM_MIB=256
python3 -B "$ROOT/scripts/bench/boot.py" "$VMM" "$KERNEL" "$RUNS" "$MEM_MIB"
if ((LINUX_RUNS > 0)); then
  echo
  declare -A guest
  while IFS='=' read -r key value; do
    guest[$key]=$value
  done < <(bash "$ROOT/scripts/linux-guest.sh")
  echo "guest: ${guest[host]} host, ${guest[vmlinux]}"
  python3 -B "$ROOT/scripts/bench/boot_linux.py" "$VMM" "${guest[vmlinux]}" "${guest[initrd]}" \
    "${guest[cmdline]}" "$LINUX_RUNS" "$MEM_MIB" "$LINUX_CPUS"
fi
