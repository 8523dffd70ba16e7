# SPDX-License-Identifier: Apache-2.0
"""Block benchmark (run by scripts/bench-blk.sh): the probe guest's blk-bench
(probe.test=blk-bench) on one raw image under vmm and under Debian's QEMU 7.2 (-M microvm,
virtio-blk-device) twice: QEMU's default engine (aio=threads) and its best configuration on
Linux (aio=io_uring with an iothread). Same image, same cache mode, same guest workload.

The matrix: sequential 1 MiB writes and reads (MiB/s, depth 4), 4 KiB random reads, writes and
a 70/30 read/write mix (IOPS) at each queue depth, with each number of queues (N queues are
driven by N vCPUs at once, one queue each; the device gets num-queues=N). Each VM runs every
phase of one queue count, SECS seconds per phase. Meanwhile the host samples every VMM thread's
CPU time from /proc at each phase's end, which gives the host CPU seconds per GiB moved over the
sequential and over the 4 KiB phases, for all threads and without the vCPU threads (what the
VMM itself spends on the I/O path). The VMs run ROUNDS times, alternating, and the medians are
printed with the ratios vmm/QEMU-default and vmm/QEMU-best, then the issue's goals against
QEMU's best: >= 1.5x IOPS at depth >= 32, >= 1.2x sequential MiB/s, VMM CPU per GiB <= 0.7x.

vmm's keys are detected by booting it once with each (`probe.test=boot`): `num-queues=` (else
"vmm: no MQ yet" and vmm sits out the multi-queue runs), `aio=` (passed as --vmm-aio says; the
engine used is reported, with what vmm printed about it), and `throttling.iops-total=` /
`throttling.bps-total=` (then a throttling accuracy row: configured versus measured IOPS and
MiB/s over --throttle-secs, vmm and QEMU default; printed, not judged).

Probe guest lines parsed (tests/probe-guest/src/guest/work/bench.rs documents them):
`PROBE blk-bench dev=0 setup queues=..`, `PROBE blk-bench dev=0 test=T bs=.. qd=.. ios=.. errors=..
ms=.. mib_s=.. iops=.. queues=.. reads=.. writes=.. asked_qd=..`, `PROBE blk-bench dev=0 test=T
qd=ASKED limit=DEPTH`, `PROBE blk-bench dev=0 ... status=timeout|fault` and `PROBE blk-bench dev=0
done ...`.

Usage: blk.py --vmm VMM --kernel BZIMAGE --image IMAGE [--image-mib 1024] [--secs 2]
       [--rounds 1] [--cache none|writeback|unsafe] [--workloads seqw,seqr,randr,randw,mix]
       [--depths 1,8,32,128] [--queues 1,4] [--configs vmm,qemu,qemu-best]
       [--vmm-aio auto|io_uring|threads|off] [--no-throttle] [--throttle-iops 2000]
       [--throttle-mib 64] [--throttle-secs 10] [--ram] [--warmup 0] [--best]
--ram puts the image in /dev/shm instead (tmpfs takes O_DIRECT; the file is removed at exit): the
figures then measure the VMMs' I/O paths without the host disk, whose speed varies by 2x from one
run to the next on shared machines. --warmup N runs each configuration N times first, unreported.
--best reports each figure's best round (highest throughput, lowest CPU per GiB) instead of the
median: other work on the host only ever makes a figure worse.
The defaults (the whole matrix, 2 s phases, one round) take 2.5 minutes on 2 cores (about 4 once
vmm runs the 4-queue VMs and the throttling row); --rounds 3 about three times that.
"""

from __future__ import annotations

import argparse
import atexit
import os
import re
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import benchlib

MEM_MIB = 256
# vmm's cache modes as QEMU -drive options.
QEMU_CACHE = {"none": "cache.direct=on", "writeback": "cache.direct=off",
              "unsafe": "cache.direct=off,cache.no-flush=on"}
CONFIGS = ("vmm", "qemu", "qemu-best")
LABELS = {"vmm": "vmm", "qemu": "QEMU default", "qemu-best": "QEMU best"}
WORKLOADS = {"seqw": "seq-write", "seqr": "seq-read", "randr": "rand-read",
             "randw": "rand-write", "mix": "rand-mix"}
SEQUENTIAL = ("seq-write", "seq-read")
SEQ_QD = 4
# Goals against QEMU's best (issue 14).
GOAL_IOPS, GOAL_IOPS_DEPTH, GOAL_SEQ, GOAL_CPU = 1.5, 32, 1.2, 0.7
LINE = re.compile(r"(\w+)=(\S+)")


def fields(line: str) -> dict[str, str]:
    """The key=value words of a PROBE line."""
    return dict(LINE.findall(line))


# ---------------------------------------------------------------------------------------------
# Command lines


def vmm_argv(a: argparse.Namespace, cmdline: str, queues: int, disk_extra: Sequence[str] = (),
             kernel: str | None = None) -> list[str]:
    """vmm with `queues` vCPUs and the image as its disk (cache mode, num-queues when more than
    one queue, the detected aio= choice, then `disk_extra` keys)."""
    keys = [f"path={a.image}", f"cache={a.cache}"]
    if queues > 1:
        keys.append(f"num-queues={queues}")
    if a.vmm_aio_key:
        keys.append(a.vmm_aio_key)
    if queues > 1 and a.vmm_mq_keys:
        keys.append(a.vmm_mq_keys)
    keys += disk_extra
    return benchlib.vmm_argv(a.vmm, kernel or a.kernel, cmdline, MEM_MIB,
                             ["--cpus", str(queues), "--disk", ",".join(keys)])


def qemu_argv(a: argparse.Namespace, cmdline: str, queues: int, best: bool,
              drive_extra: Sequence[str] = ()) -> list[str]:
    """QEMU's microvm with `queues` vCPUs and the image on virtio-blk-device with
    num-queues=`queues`; `best`: aio=io_uring and an iothread, else QEMU's default engine."""
    drive = [f"id=d0,file={a.image},format=raw,if=none,{QEMU_CACHE[a.cache]}"]
    device = [f"virtio-blk-device,drive=d0,num-queues={queues}"]
    extra = ["-name", "bench,debug-threads=on", "-smp", str(queues),
             "-global", "virtio-mmio.force-legacy=false"]
    if best:
        extra += ["-object", "iothread,id=io0"]
        drive.append("aio=io_uring")
        device.append("iothread=io0")
    drive += drive_extra
    extra += ["-drive", ",".join(drive), "-device", ",".join(device)]
    return benchlib.qemu_argv(a.kernel, cmdline, MEM_MIB, extra=extra)


def bench_cmdline(workloads: str, depths: str, queues: int, secs: int) -> str:
    """The probe's command line for one VM run."""
    return (f"probe.test=blk-bench probe.dev=0 probe.secs={secs} probe.bench={workloads} "
            f"probe.qd={depths} probe.queues={queues}")


# ---------------------------------------------------------------------------------------------
# Runs


def run_vm(argv: Sequence[str], timeout: float) -> dict[str, Any]:
    """Runs one VM until the guest powers off (or `timeout` seconds pass: the VM is killed
    and the benchmark ends). Returns the setup and done fields, one dict per phase (its
    fields plus the host CPU seconds it took, all threads and non-vCPU threads, as
    `cpu_all` / `cpu_own`), the other blk-bench lines, stderr and the exit status."""
    with tempfile.TemporaryFile() as err:
        p = benchlib.spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        fd = p.stdout.fileno()
        deadline = time.monotonic() + timeout
        hz = os.sysconf("SC_CLK_TCK")
        buf, out_lines = b"", []
        run: dict[str, Any] = {"setup": None, "done": None, "phases": [], "notes": []}
        mark = None

        def sample() -> tuple[float, float]:
            """(all threads, all but the vCPU threads) CPU seconds so far: the process's
            own count (which keeps the time of threads that ended) and the vCPU threads'."""
            try:
                total = process_ticks(p.pid)
                vcpu = sum(t for (_, name), t in benchlib.thread_ticks(p.pid).items()
                           if benchlib.is_vcpu_thread(name))
            except (OSError, ValueError):
                return mark or (0.0, 0.0)
            return total / hz, (total - vcpu) / hz

        def line(text: str) -> None:
            nonlocal mark
            out_lines.append(text)
            if not text.startswith("PROBE blk-bench dev="):
                return
            f = fields(text)
            if " setup " in text:
                run["setup"] = f
                mark = sample()
            elif " done " in text:
                run["done"] = f
            elif "bs" in f and "test" in f:
                now = sample()
                if mark is not None:
                    f["cpu_all"], f["cpu_own"] = now[0] - mark[0], now[1] - mark[1]
                mark = now
                run["phases"].append(f)
            else:
                run["notes"].append(text)

        eof = False
        while not eof:
            if time.monotonic() > deadline:
                p.kill()
                p.wait()
                tail = "\n".join(out_lines[-20:])
                raise SystemExit(f"{argv[0]}: no poweroff within {timeout:.0f} s\n{tail}")
            ready, _, _ = select.select([fd], [], [], 0.05)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    eof = True
                buf += chunk
                *complete, buf = buf.split(b"\n")
                for raw in complete:
                    line(raw.decode(errors="replace").rstrip("\r"))
        if buf:
            line(buf.decode(errors="replace"))
        try:
            rc = p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            rc = p.wait()
        p.stdout.close()
        err.seek(0)
        run["stderr"] = err.read().decode(errors="replace")
    run["rc"] = rc
    run["output"] = out_lines
    return run


def process_ticks(pid: int) -> int:
    """CPU ticks (user + system) of a process, its ended threads included."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    rest = stat[stat.rindex(")") + 2:].split()
    return int(rest[11]) + int(rest[12])


def check(run: dict[str, Any], what: str) -> dict[str, Any]:
    """Ends the benchmark when a run did not finish its phases cleanly."""
    bad = [n for n in run["notes"] if "status=timeout" in n or "status=fault" in n]
    if run["done"] is None or bad:
        tail = "\n".join(run["output"][-15:])
        raise SystemExit(f"{what}: blk-bench did not complete (exit {run['rc']})\n"
                         f"{run['stderr'].strip()}\n{tail}")
    return run


def figures(run: dict[str, Any]) -> dict[str, float]:
    """One run's figures: per phase (test, asked depth) MiB/s or IOPS, the depth that ran,
    and the CPU seconds per GiB over the sequential and the 4 KiB phases."""
    out: dict[str, float] = {}
    cpu = {"seq": [0.0, 0.0, 0.0], "rand": [0.0, 0.0, 0.0]}  # all, own, GiB
    for ph in run["phases"]:
        test, asked = ph["test"], int(ph["asked_qd"])
        seq = test in SEQUENTIAL
        out[f"{test}/{asked}"] = float(ph["mib_s"]) if seq else float(ph["iops"])
        out[f"{test}/{asked}/qd"] = float(ph["qd"])
        out[f"{test}/{asked}/errors"] = float(ph["errors"])
        if "cpu_all" in ph:
            c = cpu["seq" if seq else "rand"]
            c[0] += ph["cpu_all"]
            c[1] += ph["cpu_own"]
            c[2] += int(ph["ios"]) * int(ph["bs"]) / 2**30
    for group, (all_s, own_s, gib) in cpu.items():
        if gib:
            out[f"cpu/{group}/all"] = all_s / gib
            out[f"cpu/{group}/own"] = own_s / gib
    out["queues"] = float(run["setup"]["queues"]) if run["setup"] else 0.0
    return out


def combine(samples: Sequence[dict[str, float]], best: bool) -> dict[str, float]:
    """Per key present in every sample, the median, or with `best` the best round's figure
    (the highest throughput, the lowest CPU per GiB: a busy host only ever makes a figure
    worse, so on shared machines the best of N is the steadier estimate)."""
    keys = set(samples[0]).intersection(*samples[1:])
    if not best:
        return {k: statistics.median(s[k] for s in samples) for k in keys}
    pick = {k: (min if k.startswith("cpu/") else max) for k in keys}
    return {k: pick[k](s[k] for s in samples) for k in keys}


# ---------------------------------------------------------------------------------------------
# vmm's keys


def vmm_try_key(a: argparse.Namespace, key: str) -> tuple[bool, str]:
    """Boots vmm once (probe.test=boot, 20 s at most) with `key` added to --disk: whether it
    accepted it, and what it printed on stderr."""
    argv = benchlib.vmm_argv(a.vmm, a.kernel, "probe.test=boot", MEM_MIB,
                             ["--disk", f"path={a.image},cache={a.cache},{key}"])
    p = benchlib.spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    try:
        out, err = p.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        return False, f"{key}: vmm did not power off within 20 s"
    text = err.decode(errors="replace").strip()
    booted = b"PROBE-DONE" in out
    return p.returncode == 0 and booted, text


def detect_vmm(a: argparse.Namespace) -> dict[str, Any]:
    """Which of the keys this benchmark uses vmm takes (see the module doc)."""
    caps: dict[str, Any] = {}
    caps["mq"], caps["mq_err"] = vmm_try_key(a, "num-queues=4")
    a.vmm_aio_key = None
    aio_note = "vmm has no aio= key: its own engine (request threads)"
    if a.vmm_aio != "off":
        want = "io_uring" if a.vmm_aio == "auto" else a.vmm_aio
        ok, err = vmm_try_key(a, f"aio={want}")
        if ok:
            a.vmm_aio_key = f"aio={want}"
            aio_note = f"vmm aio={want}" + (f" (vmm said: {err})" if err else "")
        elif a.vmm_aio != "auto":
            raise SystemExit(f"vmm refuses aio={want}: {err}")
    else:
        aio_note = "vmm: aio= not passed (its default engine)"
    caps["aio_note"] = aio_note
    caps["throttle_iops"], _ = vmm_try_key(a, "throttling.iops-total=100000")
    caps["throttle_bps"], _ = vmm_try_key(a, "throttling.bps-total=1000000000")
    return caps


# ---------------------------------------------------------------------------------------------
# Output


def fmt(v: float | None) -> str:
    """A figure, or "-" when missing."""
    if v is None:
        return "-"
    return f"{v:.2f}" if v < 100 else f"{v:.0f}"


def print_matrix(q: int, res: dict[str, dict[str, float]], rows: Sequence[tuple[str, str, str]],
                 configs: Sequence[str]) -> None:
    """One table for `q` queues: a row per figure, a column per configuration, then the
    ratios of vmm to each QEMU configuration."""
    cols = [LABELS[c] for c in configs]
    ratio_cols = [f"vmm/{c}" for c in ("qemu", "qemu-best") if c in configs and "vmm" in configs]
    print(f"\nqueues={q} ({q} vCPU{'s' if q > 1 else ''})")
    print(f"{'':34}" + "".join(f"{c:>14}" for c in cols) + "".join(f"{c:>15}" for c in ratio_cols))
    for label, key, better in rows:
        vals = [res.get(c, {}).get(key) for c in configs]
        line = f"{label:34}"
        for c, v in zip(configs, vals):
            mark = ""
            qd = res.get(c, {}).get(f"{key}/qd")
            asked = key.rsplit("/", 1)[-1]
            if qd is not None and asked.isdigit() and qd < int(asked):
                mark = f" (qd{qd:.0f})"
            line += f"{fmt(v) + mark:>14}"
        v = res.get("vmm", {}).get(key)
        for c in ("qemu", "qemu-best"):
            if f"vmm/{c}" in ratio_cols:
                o = res.get(c, {}).get(key)
                line += f"{benchlib.ratio(v, o) if v is not None and o else '-':>15}"
        print(line + f"   {better}")


def rows_for(workloads: Sequence[str], depths: Sequence[int]) -> list[tuple[str, str, str]]:
    """The table's rows: (label, figure key, which is better)."""
    rows = []
    for w in workloads:
        test = WORKLOADS[w]
        if test in SEQUENTIAL:
            rows.append((f"{test} MiB/s (qd {SEQ_QD})", f"{test}/{SEQ_QD}", "higher"))
        else:
            rows += [(f"{test} 4k IOPS qd {d}", f"{test}/{d}", "higher") for d in depths]
    for group, name in (("seq", "sequential"), ("rand", "4k")):
        rows.append((f"CPU s/GiB {name}, all threads", f"cpu/{group}/all", "lower"))
        rows.append((f"CPU s/GiB {name}, VMM threads", f"cpu/{group}/own", "lower"))
    return rows


def goals(all_res: dict[int, dict[str, dict[str, float]]], rows: Sequence[tuple[str, str, str]]
          ) -> None:
    """The issue's goals against QEMU's best, each marked met / not met."""
    print(f"\ngoals against QEMU's best (aio=io_uring + iothread):")
    items = []
    for q, res in sorted(all_res.items()):
        vmm, best = res.get("vmm"), res.get("qemu-best")
        if not vmm or not best:
            continue
        for label, key, _ in rows:
            v, b = vmm.get(key), best.get(key)
            if v is None or not b:
                continue
            test, _, rest = key.partition("/")
            if key.startswith("cpu/"):
                if key.endswith("/own"):
                    items.append((f"q{q} VMM CPU/GiB {key.split('/')[1]} <= {GOAL_CPU}x",
                                  v / b, v / b <= GOAL_CPU))
            elif test in SEQUENTIAL:
                items.append((f"q{q} {test} MiB/s >= {GOAL_SEQ}x", v / b, v / b >= GOAL_SEQ))
            elif int(rest) >= GOAL_IOPS_DEPTH:
                items.append((f"q{q} {test} IOPS qd{rest} >= {GOAL_IOPS}x", v / b,
                              v / b >= GOAL_IOPS))
    if not items:
        print("  (no figures: vmm and QEMU best must both run)")
        return
    for label, r, ok in items:
        print(f"  {label:40} {r:6.2f}   {'met' if ok else 'not met'}")
    met = sum(ok for _, _, ok in items)
    print(f"  {met} of {len(items)} met")


# ---------------------------------------------------------------------------------------------
# Throttling


def throttle_rows(a: argparse.Namespace, caps: dict[str, Any]) -> None:
    """Configured versus measured IOPS (4 KiB random reads, depth 32) and MiB/s (sequential
    reads) over --throttle-secs, vmm and (for reference) QEMU's default configuration."""
    tests = []
    if caps["throttle_iops"]:
        tests.append(("IOPS", f"throttling.iops-total={a.throttle_iops}", "randr", "32",
                      a.throttle_iops, "rand-read/32", "iops"))
    if caps["throttle_bps"]:
        tests.append(("MiB/s", f"throttling.bps-total={a.throttle_mib << 20}", "seqr", "1",
                      a.throttle_mib, f"seq-read/{SEQ_QD}", "mib_s"))
    if not tests:
        print("\nthrottling: vmm takes no throttling.iops-total= / throttling.bps-total= yet")
        return
    print(f"\nthrottling accuracy over {a.throttle_secs} s (configured vs measured; not judged)")
    print(f"{'':24}{'configured':>12}{'vmm':>12}{'error':>9}{'QEMU':>12}{'error':>9}")
    for name, key, work, depth, want, _, field in tests:
        cmd = bench_cmdline(work, depth, 1, a.throttle_secs)
        timeout = a.throttle_secs + 60
        got = {}
        for cfg, argv in (("vmm", vmm_argv(a, cmd, 1, [key])),
                          ("qemu", qemu_argv(a, cmd, 1, False, [key]))):
            if cfg not in a.configs:
                continue
            run = check(run_vm(argv, timeout), f"{cfg} throttled")
            got[cfg] = float(run["phases"][0][field])
        cells = ""
        for cfg in ("vmm", "qemu"):
            if cfg in got:
                cells += f"{got[cfg]:12.1f}{(got[cfg] - want) / want * 100:+8.1f}%"
            else:
                cells += f"{'-':>12}{'':9}"
        print(f"{name + ' (' + work + ')':24}{want:12}{cells}")


# ---------------------------------------------------------------------------------------------


def prepare_image(path: str, mib: int) -> None:
    """Makes `path` a fully allocated raw image of `mib` MiB (zeros written once), so that
    reads reach storage and writes do not allocate: a sparse file would flatter both."""
    size = mib << 20
    try:
        st = os.stat(path)
        if st.st_size == size and st.st_blocks * 512 >= size:
            return
    except FileNotFoundError:
        pass
    print(f"writing {mib} MiB of zeros to {path} ...", file=sys.stderr)
    zero = bytes(1 << 20)
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(zero)
        f.flush()
        os.fsync(f.fileno())


def csv(kind: type, text: str) -> list:
    """A comma-separated argument."""
    return [kind(x) for x in text.split(",") if x]


def main() -> None:
    """Parses the arguments, detects vmm's keys, runs the matrix and prints it."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vmm", required=True)
    ap.add_argument("--kernel", required=True, help="the probe guest's bzImage")
    ap.add_argument("--image", required=True)
    ap.add_argument("--image-mib", type=int, default=1024)
    ap.add_argument("--secs", type=int, default=2, help="seconds per phase")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--cache", choices=sorted(QEMU_CACHE), default="none")
    ap.add_argument("--workloads", default="seqw,seqr,randr,randw,mix")
    ap.add_argument("--depths", default="1,8,32,128")
    ap.add_argument("--queues", default="1,4")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--vmm-aio", choices=("auto", "io_uring", "threads", "off"), default="auto",
                    help="aio= for vmm's --disk (auto: io_uring if vmm takes the key)")
    ap.add_argument("--vmm-mq-keys", default="",
                    help="more --disk keys for vmm's multi-queue runs (e.g. io-threads=1)")
    ap.add_argument("--no-throttle", action="store_true")
    ap.add_argument("--throttle-iops", type=int, default=2000)
    ap.add_argument("--throttle-mib", type=int, default=64)
    ap.add_argument("--throttle-secs", type=int, default=10)
    ap.add_argument("--ram", action="store_true", help="the image in /dev/shm")
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--best", action="store_true",
                    help="the best round per figure instead of the median")
    a = ap.parse_args()
    workloads = csv(str, a.workloads)
    depths = csv(int, a.depths)
    queue_counts = csv(int, a.queues)
    a.configs = csv(str, a.configs)
    for w in workloads:
        if w not in WORKLOADS:
            ap.error(f"unknown workload {w!r} (known: {', '.join(WORKLOADS)})")
    for c in a.configs:
        if c not in CONFIGS:
            ap.error(f"unknown configuration {c!r} (known: {', '.join(CONFIGS)})")
    if not workloads or not depths or not queue_counts or not a.configs:
        ap.error("empty --workloads, --depths, --queues or --configs")

    if a.ram:
        a.image = f"/dev/shm/vmm-bench-blk-{os.getpid()}.raw"
        atexit.register(lambda: os.path.exists(a.image) and os.unlink(a.image))
    prepare_image(a.image, a.image_mib)
    caps = detect_vmm(a) if "vmm" in a.configs else {"mq": False, "aio_note": "",
                                                     "throttle_iops": False,
                                                     "throttle_bps": False}
    seq = [w for w in workloads if WORKLOADS[w] in SEQUENTIAL]
    phases = len(seq) + (len(workloads) - len(seq)) * len(depths)
    print(f"probe blk-bench: {a.secs} s per phase, {phases} phases per VM, cache={a.cache}, "
          f"image {a.image_mib} MiB (allocated) {'in /dev/shm' if a.ram else 'at ' + a.image}, "
          f"{'best' if a.best else 'median'} of {a.rounds} alternating round(s)"
          + (f" after {a.warmup} warm-up(s)" if a.warmup else ""))
    print("QEMU default: aio=threads; QEMU best: aio=io_uring with an iothread")
    if "vmm" in a.configs:
        print(caps["aio_note"])
        if not caps["mq"] and any(q > 1 for q in queue_counts):
            why = re.search(r"[Uu]nknown[^(]*", caps["mq_err"] or "")
            print(f"vmm: no MQ yet ({why.group(0).strip() if why else 'num-queues= refused'}); "
                  "vmm sits out the multi-queue runs")

    rows = rows_for(workloads, depths)
    all_res: dict[int, dict[str, dict[str, float]]] = {}
    setups: dict[int, dict[str, dict[str, str]]] = {}
    timeout = phases * (a.secs + 2) + 60
    for q in queue_counts:
        cmd = bench_cmdline(",".join(workloads), ",".join(map(str, depths)), q, a.secs)
        argvs = {}
        for c in a.configs:
            if c == "vmm":
                if q > 1 and not caps["mq"]:
                    continue
                argvs[c] = vmm_argv(a, cmd, q)
            else:
                argvs[c] = qemu_argv(a, cmd, q, c == "qemu-best")
        setups[q] = {}

        def runner(c: str, argv: list[str]):
            def one() -> dict[str, float]:
                run = check(run_vm(argv, timeout), f"{c}, {q} queue(s)")
                setups[q][c] = run["setup"]
                if c == "vmm" and run["stderr"].strip():
                    setups[q]["vmm-stderr"] = {"text": run["stderr"].strip()}
                return figures(run)
            return one

        samples = benchlib.collect({c: runner(c, argv) for c, argv in argvs.items()},
                                   a.rounds, alternate=True, warmup=a.warmup)
        all_res[q] = {c: combine(s, a.best) for c, s in samples.items()}
        ran = [c for c in a.configs if c in all_res[q]]
        print_matrix(q, all_res[q], rows, ran)
        for c in ran:
            s = setups[q].get(c) or {}
            if s and int(s.get("queues", q)) != q:
                print(f"  {LABELS[c]} ran {s['queues']} queue(s) (limit={s.get('limit')})")
        said = setups[q].get("vmm-stderr", {}).get("text", "")
        if said and said not in caps.get("aio_note", ""):
            print(f"  vmm said: {said.splitlines()[0]}")
    print("\nCPU s/GiB: host CPU seconds per GiB moved; all threads count the vCPUs (the guest's "
          "own work),\nVMM threads leave them out: what the VMM spends on the I/O path. "
          "(qdN): the depth that ran.")
    goals(all_res, rows)
    if not a.no_throttle and "vmm" in a.configs:
        throttle_rows(a, caps)


if __name__ == "__main__":
    main()
