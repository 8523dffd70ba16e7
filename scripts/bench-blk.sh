#!/usr/bin/env bash
# Block benchmark: the probe guest's blk-bench on one fully allocated raw image under vmm and
# under Debian's QEMU 7.2 twice (-M microvm, virtio-blk-device, same cache mode): QEMU's default
# engine (aio=threads) and its best (aio=io_uring with an iothread). Prints sequential MiB/s
# (1 MiB requests), 4 KiB random read / write / 70-30 mix IOPS at queue depths 1, 8, 32 and 128,
# with 1 and 4 queues (driven by as many vCPUs), host CPU seconds per GiB moved (all threads,
# and without the vCPU threads), the ratios vmm/QEMU-default and vmm/QEMU-best, the issue's
# goals against QEMU's best (met / not met), and a throttling accuracy row when vmm takes the
# throttling keys. The program is scripts/bench/blk.py (its docstring has the details).
#
# Usage: scripts/bench-blk.sh [blk.py options]
#   --secs N (2)  --rounds N (1)  --image-mib N (1024)  --cache none|writeback|unsafe (none)
#   --workloads seqw,seqr,randr,randw,mix  --depths 1,8,32,128  --queues 1,4
#   --configs vmm,qemu,qemu-best  --vmm-aio auto|io_uring|threads|off  --no-throttle
#   --vmm-mq-keys KEYS (more --disk keys for vmm's multi-queue runs, e.g. io-threads=1)
#   --throttle-iops N (2000)  --throttle-mib N (64)  --throttle-secs N (10)
#   --ram (the image in /dev/shm: no host-disk noise)  --warmup N (0)
#   --best (each figure's best round instead of the median)
# The defaults take 2.5 minutes on 2 cores (about 4 once vmm runs the 4-queue VMs and the
# throttling row); e.g. `--queues 1 --depths 1,32 --secs 1` for a
# quick look, `--rounds 3 --best` for steadier figures (7 minutes, about 10 with MQ).
# VMM=path/to/vmm uses that binary instead of building target/release/vmm.
source "$(dirname "$0")/lib.sh"
apt_install qemu-system-x86
if [[ -n ${VMM:-} ]]; then
  [[ -x $VMM ]] || die "VMM=$VMM is not an executable"
else
  VMM=$(build_vmm)
fi
bash "$ROOT/scripts/probe-guest.sh" >/dev/null
KERNEL="$TARGET/probe-guest/bzImage"
IMG="$TARGET/bench-blk.raw"
exec python3 -B "$ROOT/scripts/bench/blk.py" --vmm "$VMM" --kernel "$KERNEL" --image "$IMG" "$@"
