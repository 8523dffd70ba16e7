# SPDX-License-Identifier: Apache-2.0
"""Real-Linux boot benchmark (run by scripts/bench-boot.sh): vmm and QEMU's microvm boot the
same kernel (the ELF vmlinux, through PVH), initramfs and command line RUNS times each, in
alternation, and each boot is timed from process start to the guest's first userspace line:
"VMMTEST init", the first thing the initramfs's /init prints (scripts/guest-initramfs.sh).
The VMM is then killed. Prints the median, the fastest and the slowest boot per VMM and the
vmm/QEMU ratios, then where each VMM's CPU time went up to the marker (medians, all threads):
in the VMM's own user-space code, in the host kernel (KVM, and on PVM hosts the emulation of
the guest's ring 0), and in guest user code run natively.

QEMU runs its fastest configuration for this: -M microvm (no PCI, no firmware tables beyond
ACPI), no option ROMs, no RTC, -nodefaults -no-user-config, KVM with the host CPU, the kernel
through -kernel (PVH, as vmm), COM1 on a pipe as vmm's.

Usage: boot_linux.py VMM VMLINUX INITRD CMDLINE RUNS MEM_MIB CPUS
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from collections.abc import Sequence

import benchlib

MARKER = "VMMTEST init"
# A guard against a guest that hangs; boots take 10-20 s where ring 0 is emulated.
TIMEOUT_S = 300


def cpu_split(pid: int) -> tuple[float, float, float]:
    """CPU seconds of a running process, summed over its threads: (its own user-space code,
    the host kernel, guest code). /proc's utime includes guest time, so the first is utime
    minus guest_time."""
    user = kernel = guest = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        # Fields 14 (utime), 15 (stime) and 43 (guest_time) of proc(5), from field 3 on.
        utime, stime, guest_time = int(fields[11]), int(fields[12]), int(fields[40])
        user += utime - guest_time
        kernel += stime
        guest += guest_time
    hz = os.sysconf("SC_CLK_TCK")
    return user / hz, kernel / hz, guest / hz


def boot_once(argv: Sequence[str]) -> tuple[float, tuple[float, float, float]]:
    """Boots one VMM with the guest's serial port on a pipe and returns the seconds from its
    start to the marker line and its `cpu_split` then; ends the benchmark if the guest never
    prints the marker."""
    t0 = time.monotonic()
    p = benchlib.spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL)
    seen = benchlib.wait_for_line(p.stdout, MARKER)
    elapsed = time.monotonic() - t0
    cpu = cpu_split(p.pid) if seen else (0.0, 0.0, 0.0)
    p.kill()
    p.wait()
    p.stdout.close()
    if not seen or elapsed > TIMEOUT_S:
        raise SystemExit(f"{argv[0]} never printed {MARKER!r}")
    return elapsed, cpu


def main() -> None:
    """Parses the arguments, runs the boots and prints the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("vmm")
    ap.add_argument("vmlinux")
    ap.add_argument("initrd")
    ap.add_argument("cmdline")
    ap.add_argument("runs", type=int)
    ap.add_argument("mem_mib", type=int)
    ap.add_argument("cpus", type=int)
    a = ap.parse_args()

    cmdline = f"{a.cmdline} vmmtest=ready"
    commands = {
        "vmm": benchlib.vmm_argv(a.vmm, a.vmlinux, cmdline, a.mem_mib,
                                 extra=["--initrd", a.initrd, "--cpus", str(a.cpus),
                                        "--no-reboot"]),
        "qemu": benchlib.qemu_argv(a.vmlinux, cmdline, a.mem_mib, serial="stdio",
                                   extra=["-smp", str(a.cpus), "-initrd", a.initrd,
                                          "-no-reboot"]),
    }
    samples = benchlib.collect({name: (lambda argv=argv: boot_once(argv))
                                for name, argv in commands.items()},
                               a.runs, alternate=True)
    results = {}
    for name, ss in samples.items():
        times = [t for t, _ in ss]
        results[name] = {
            "median_s": statistics.median(times),
            "min_s": min(times),
            "max_s": max(times),
            "user_s": statistics.median(c[0] for _, c in ss),
            "kernel_s": statistics.median(c[1] for _, c in ss),
            "guest_s": statistics.median(c[2] for _, c in ss),
        }
    print(f"real Linux (PVH vmlinux) to {MARKER!r}, {a.runs} runs each, alternating, "
          f"{a.mem_mib} MiB, {a.cpus} vCPU(s)")
    benchlib.print_columns(results, [("median_s", "median s", 11), ("min_s", "fastest s", 11),
                                     ("max_s", "slowest s", 11)],
                           label_width=10, ratio_label="ratio", value_format=".2f")
    print("goal: median ratio <= 0.8")
    print("CPU seconds up to the marker (medians):")
    benchlib.print_columns(results, [("user_s", "VMM user", 11), ("kernel_s", "host kernel", 13),
                                     ("guest_s", "guest user", 12)],
                           label_width=10, ratio_label="ratio", value_format=".3f")


if __name__ == "__main__":
    main()
