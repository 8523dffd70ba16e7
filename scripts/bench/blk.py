# SPDX-License-Identifier: Apache-2.0
"""Block benchmark (run by scripts/bench-blk.sh): the probe guest's blk-bench
(probe.test=blk-bench) on the same raw image under vmm and under QEMU's microvm
(virtio-blk-device, the same cache mode).

The guest runs 1 MiB sequential writes and reads and 4 KiB random reads at queue depth 1 and
32, SECS seconds each, and powers off. Meanwhile the host samples each VMM thread's CPU time
from /proc, so that the CPU seconds per GiB moved are reported for all threads and without
the vCPU threads (what the VMM itself spends on the I/O path). The VMMs run ROUNDS times,
alternating, and the medians are printed with the vmm/QEMU ratios.

Usage: blk.py VMM KERNEL IMAGE SECS CACHE ROUNDS
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import time
from collections.abc import Sequence

import benchlib

MEM_MIB = 256
# vmm's cache modes as QEMU -drive options.
QEMU_CACHE = {"none": "cache.direct=on", "writeback": "cache.direct=off",
              "unsafe": "cache.direct=off,cache.no-flush=on"}
COLUMNS = [("seq_write", "seq write MiB/s", 17), ("seq_read", "seq read MiB/s", 17),
           ("iops_qd1", "4k IOPS qd1", 17), ("iops_qd32", "4k IOPS qd32", 17),
           ("cpu_s_per_gib", "CPU s/GiB", 17), ("vmm_cpu_s_per_gib", "VMM CPU s/GiB", 17)]


def run_once(argv: Sequence[str]) -> dict[str, float]:
    """Runs one VMM until the guest powers off, sampling per-thread CPU every 50 ms, and
    returns the guest's figures and the host CPU seconds per GiB moved."""
    p = benchlib.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    os.set_blocking(p.stdout.fileno(), False)
    chunks, last = [], {}
    while p.poll() is None:
        try:
            last.update(benchlib.thread_ticks(p.pid))
        except OSError:
            pass
        try:
            data = p.stdout.read()
            if data:
                chunks.append(data)
        except BlockingIOError:
            pass
        time.sleep(0.05)
    rest = p.stdout.read()
    if rest:
        chunks.append(rest)
    p.stdout.close()
    out = b"".join(chunks).decode(errors="replace")
    vcpu_s, own_s = benchlib.cpu_seconds(last)
    lines = [l for l in out.splitlines() if l.startswith("PROBE blk-bench")]
    summary = [l for l in lines if "seq_write_mib_s=" in l]
    if not summary:
        raise SystemExit(f"{argv[0]}: no blk-bench summary\n{out}")
    fields = dict(re.findall(r"(\w+)=(\S+)", summary[0]))
    phases = [dict(re.findall(r"(\w+)=(\S+)", l)) for l in lines if " test=" in l]
    gib = sum(int(ph.get("ios", 0)) * int(ph.get("bs", 0)) for ph in phases) / 2**30
    return {
        "seq_write": float(fields["seq_write_mib_s"]),
        "seq_read": float(fields["seq_read_mib_s"]),
        "iops_qd1": float(fields["rand_read_iops_qd1"]),
        "iops_qd32": float(fields["rand_read_iops_qd32"]),
        "cpu_s_per_gib": (own_s + vcpu_s) / gib if gib else float("nan"),
        "vmm_cpu_s_per_gib": own_s / gib if gib else float("nan"),
    }


def main() -> None:
    """Parses the arguments, runs the rounds and prints the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("vmm")
    ap.add_argument("kernel")
    ap.add_argument("image")
    ap.add_argument("secs")
    ap.add_argument("cache", choices=sorted(QEMU_CACHE))
    ap.add_argument("rounds", type=int)
    a = ap.parse_args()

    cmdline = f"probe.test=blk-bench probe.dev=0 probe.secs={a.secs}"
    commands = {
        "vmm": benchlib.vmm_argv(a.vmm, a.kernel, cmdline, MEM_MIB,
                                 ["--disk", f"path={a.image},cache={a.cache}"]),
        "qemu": benchlib.qemu_argv(a.kernel, cmdline, MEM_MIB, extra=[
            "-name", "bench,debug-threads=on", "-global", "virtio-mmio.force-legacy=false",
            "-drive", f"id=d0,file={a.image},format=raw,if=none,{QEMU_CACHE[a.cache]}",
            "-device", "virtio-blk-device,drive=d0"]),
    }
    samples = benchlib.collect({name: (lambda argv=argv: run_once(argv))
                                for name, argv in commands.items()}, a.rounds, alternate=True)
    res = {name: benchlib.medians(ss) for name, ss in samples.items()}

    print(f"probe blk-bench, {a.secs} s per phase, cache={a.cache}, "
          f"image {os.path.getsize(a.image) >> 20} MiB, median of {a.rounds} alternating rounds")
    benchlib.print_columns(res, COLUMNS, label_width=8, ratio_label="vmm/qemu")
    print("CPU s/GiB counts every thread; VMM CPU s/GiB leaves out the vCPU threads (the guest's own")
    print("work), i.e. what the VMM spends on the I/O path.")
    print("goal: >= 1.00 on throughput and IOPS, < 1.00 on CPU per GiB")


if __name__ == "__main__":
    main()
