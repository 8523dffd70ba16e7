# SPDX-License-Identifier: Apache-2.0
"""Boot benchmark (run by scripts/bench-boot.sh): vmm and QEMU's microvm each boot the probe
guest (probe.test=idle) RUNS times after one warm-up boot.

Per VMM it prints the median and p90 time from process start to the guest's "PROBE ready"
line, the median peak RSS, and the median of the VMM's own memory (RSS minus the guest RAM
pages it touched, measured once the guest is idle), then the vmm/QEMU ratios.

Usage: boot.py VMM KERNEL RUNS MEM_MIB
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from collections.abc import Sequence

import benchlib

CMDLINE = "probe.test=idle"


def boot_once(argv: Sequence[str], mem_mib: int) -> tuple[float, int, int]:
    """Boots one VMM with the guest's serial port on a pipe and returns (seconds to the ready
    line, peak RSS in KiB, RSS minus guest RAM in KiB once the guest is idle)."""
    t0 = time.monotonic()
    p = benchlib.spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL)
    if not benchlib.wait_for_line(p.stdout, "PROBE ready"):
        p.kill()
        p.wait()
        raise SystemExit(f"{argv[0]} never printed the ready line")
    ready = time.monotonic() - t0
    benchlib.wait_for_line(p.stdout, "PROBE idle")
    own = benchlib.vm_rss_kib(p.pid) - benchlib.guest_ram_rss_kib(p.pid, mem_mib)
    p.terminate()
    _, status, usage = os.wait4(p.pid, 0)  # wait4: the child's peak RSS (ru_maxrss)
    p.returncode = os.waitstatus_to_exitcode(status)
    p.stdout.close()
    return ready, usage.ru_maxrss, own


def main() -> None:
    """Parses the arguments, runs the boots and prints the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("vmm")
    ap.add_argument("kernel")
    ap.add_argument("runs", type=int)
    ap.add_argument("mem_mib", type=int)
    a = ap.parse_args()

    commands = {
        "vmm": benchlib.vmm_argv(a.vmm, a.kernel, CMDLINE, a.mem_mib),
        "qemu": benchlib.qemu_argv(a.kernel, CMDLINE, a.mem_mib, display=["-nographic"]),
    }
    samples = benchlib.collect(
        {name: (lambda argv=argv: boot_once(argv, a.mem_mib)) for name, argv in commands.items()},
        a.runs, alternate=False, warmup=1)
    results = {}
    for name, ss in samples.items():
        times = [s[0] for s in ss]
        results[name] = {
            "median_ms": statistics.median(times) * 1000,
            "p90_ms": benchlib.percentile(times, 0.9) * 1000,
            "peak_rss_mib": statistics.median(s[1] for s in ss) / 1024,
            "overhead_mib": statistics.median(s[2] for s in ss) / 1024,
        }

    print(f"boot to 'PROBE ready', {a.runs} runs each, {a.mem_mib} MiB guest, 1 vCPU")
    benchlib.print_columns(results, [("median_ms", "median ms", 12), ("p90_ms", "p90 ms", 10),
                                     ("peak_rss_mib", "peak RSS MiB", 14),
                                     ("overhead_mib", "VMM own MiB", 13)],
                           label_width=10, ratio_label="ratio", value_format=".1f")
    print("goals: time ratio <= 0.5; vmm's own memory <= 5 MiB")


if __name__ == "__main__":
    main()
