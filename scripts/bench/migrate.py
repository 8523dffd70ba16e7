# SPDX-License-Identifier: Apache-2.0
"""Migration benchmark (run by scripts/bench-migrate.sh): vmm and QEMU's microvm side by side,
each migrating the probe guest to a second process of itself over a unix socket, driven by the
same QMP commands (QEMU's: `migrate-set-capabilities` events, `migrate-set-parameters`
max-bandwidth and downtime-limit, `migrate {"uri": "unix:..."}` on the source, `query-migrate`
polled until it completes; the destination started with `--incoming unix:...` (vmm) or
`-incoming unix:...` (QEMU)).

Two guests, each at two sizes of RAM (256 MiB and 2 GiB by default):

- idle: `probe.test=mem-walk probe.rate=0` over 16 MiB: the probe fills 16 MiB once and then
  only halts between LAPIC ticks, printing a progress line every INTERVAL ms; the rest of RAM
  is never touched;
- mem-walk: `probe.test=mem-walk` over all but 32 MiB of RAM, rewriting pages at
  `--rate` MiB/s (default 512; `max` is the CPU's speed, several GB/s, which no migration over
  one socket converges on), so that every iteration finds pages dirty again.

Per run: total-time, downtime and setup-time as the source VMM reports them in query-migrate,
the bytes it sent, and the wall time from the `migrate` command to the destination guest's
first serial line (a progress line comes every INTERVAL ms, so that line marks the guest
running on the destination within that much). After each run the destination gets
`system_powerdown`, the guest verifies every page and the run fails unless it says `bad=0`;
its longest stall (`max_stall_ms`: the guest's own view of the downtime, as its TSC shows it)
is shown too, and the rate at which it managed to rewrite pages while it was being migrated
(from its last progress line on the source to its first on the destination, on its own clock:
dirty logging makes every first write to a page after a sync a fault, so this is well below
`--rate` on hosts where faults are slow, such as PVM).
A migration that has not completed after `--timeout` seconds is cancelled and counted as not
converged. Medians of RUNS runs per VMM, alternating, and the vmm/QEMU ratios.

Both VMMs get the same max-bandwidth (default 10 GiB/s: QEMU 7.2's default is 32 MiB/s, which
would make the comparison one of throttles) and the same downtime-limit (default 300 ms,
QEMU's default).

Then a snapshot phase at each size: the mem-walk guest is paused (`stop`), migrated to a file
(vmm: `migrate {"uri": "file:PATH"}`; QEMU 7.2 has no file: URI, so `exec:cat > PATH`), the
file's size on disk (du: it may be sparse) and apparent size are reported, and the snapshot is
restored in a new process (`--incoming file:PATH`; QEMU `-incoming "exec:cat PATH"`): the
restore-to-running time runs from process start to the guest's first serial line, including a
`cont` once the destination has loaded the state and waits paused (the state of the source).
Firecracker's published figures are printed alongside.

Until vmm implements migration, the vmm half ends the benchmark with one line,
"vmm does not support migrate yet: <QMP error>"; `--only qemu` measures QEMU alone.

Usage: migrate.py VMM KERNEL RUNS [--sizes 256,2048] [--rate MIB_S|max] [--max-bandwidth B]
                  [--downtime-limit MS] [--timeout S] [--settle S] [--cpus N]
                  [--only vmm|qemu] [--no-snapshot]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import benchlib

INTERVAL_MS = 50
IDLE_MIB = 16
HEADROOM_MIB = 32
GUARD = 120.0

# Firecracker's published snapshot figures, from its snapshotting documentation
# (https://github.com/firecracker-microvm/firecracker/blob/main/docs/snapshotting/snapshot-support.md,
# "Performance"): "the baseline for snapshot resume latency target is under 8ms with 5ms p90
# for a microvm with this specs: 2vCPU/512MB/1 block/1 net device", measured in its CI on AWS
# m5d.metal. That is the LoadSnapshot API call of an already started process, with the memory
# file mapped MAP_PRIVATE and faulted in on demand; a full snapshot's memory file is the whole
# guest RAM (512 MiB there) plus a small microVM state file.
FIRECRACKER = [
    "Firecracker (published, docs/snapshotting/snapshot-support.md): snapshot resume latency",
    "  under 8 ms, p90 5 ms, for 2 vCPUs / 512 MiB / 1 block / 1 net on m5d.metal (the",
    "  LoadSnapshot call alone, memory mapped on demand); memory file = all of guest RAM.",
]


class Unsupported(Exception):
    """The VMM refused a migration command (vmm before its migration lands)."""


class Failed(Exception):
    """A run went wrong (guest error, VMM exit, migration failure)."""


# ---------------------------------------------------------------------------------------------
# Processes with a timestamped serial console and a QMP connection


class Serial:
    """Reads a process's stdout (its serial console) on a thread, timestamping every line."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines: list[tuple[float, str]] = []
        self.cond = threading.Condition()
        self.closed = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            t = time.monotonic()
            with self.cond:
                self.lines.append((t, raw.decode(errors="replace").rstrip("\r\n")))
                self.cond.notify_all()
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def wait(self, prefix: str, after: float = 0.0, timeout: float = GUARD) -> tuple[float, str]:
        """The first line starting with `prefix` that arrived at or after `after` (monotonic
        time); fails on a guest error line, on the end of the output or after `timeout`."""
        deadline = time.monotonic() + timeout
        with self.cond:
            i = 0
            while True:
                while i < len(self.lines):
                    t, line = self.lines[i]
                    i += 1
                    if t < after:
                        continue
                    if line.startswith(prefix):
                        return t, line
                    if line.startswith(("PROBE error", "PROBE fault", "PROBE mem-walk bad",
                                        "PROBE mem-walk status=")):
                        raise Failed(f"guest: {line}")
                left = deadline - time.monotonic()
                if self.closed or left <= 0:
                    tail = "\n".join(line for _, line in self.lines[-10:])
                    raise Failed(f"no line {prefix!r} ({'output ended' if self.closed else 'timeout'})"
                                 f"; last lines:\n{tail}")
                self.cond.wait(left)


class Qmp:
    """benchlib's raw QMP client, plus commands whose events are kept aside."""

    def __init__(self, path: str) -> None:
        self.c = benchlib.QmpClient(path, timeout=GUARD)
        self.events: list[dict[str, Any]] = []

    def cmd(self, name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        """Runs `name` and returns its whole reply ("return" or "error")."""
        req: dict[str, Any] = {"execute": name}
        if args is not None:
            req["arguments"] = args
        self.c.s.sendall(json.dumps(req).encode() + b"\n")
        while True:
            msg = json.loads(self.c.line())
            if "event" in msg:
                self.events.append(msg)
                continue
            return msg

    def ok(self, name: str, args: dict[str, Any] | None = None) -> Any:
        """Runs `name`; its "return", or Unsupported with QEMU's error description."""
        reply = self.cmd(name, args)
        if "error" in reply:
            e = reply["error"]
            raise Unsupported(f"{name}: {e.get('class')}: {e.get('desc')}")
        return reply["return"]


class Vm:
    """One VMM process: console on a pipe, one QMP socket."""

    def __init__(self, argv: Sequence[str], qmp_path: str, wait_paths: Sequence[str] = ()) -> None:
        for p in (qmp_path, *wait_paths):
            if os.path.exists(p):
                os.unlink(p)
        self.started = time.monotonic()
        self.proc = benchlib.spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)
        self.serial = Serial(self.proc)
        self._stderr: list[bytes] = []
        threading.Thread(target=self._drain, daemon=True).start()
        try:
            self._wait_paths([qmp_path, *wait_paths])
        except Failed:
            self.kill()
            raise
        self.qmp = Qmp(qmp_path)

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self._stderr.append(raw)

    def stderr(self) -> str:
        return b"".join(self._stderr).decode(errors="replace").strip()

    def _wait_paths(self, paths: Sequence[str]) -> None:
        deadline = time.monotonic() + 30
        while not all(os.path.exists(p) for p in paths):
            if self.proc.poll() is not None:
                time.sleep(0.1)
                raise Failed(f"{self.proc.args[0]} exited {self.proc.returncode}: {self.stderr()}")
            if time.monotonic() > deadline:
                raise Failed(f"{self.proc.args[0]}: {paths} never appeared")
            time.sleep(0.002)

    def wait_exit(self, timeout: float = GUARD) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise Failed(f"{self.proc.args[0]} did not exit within {timeout} s") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# ---------------------------------------------------------------------------------------------
# The two VMMs

# The VMM's command line from (cmdline, mem_mib, qmp socket, incoming URI or None).
ArgvFn = Callable[[str, int, str, "str | None"], list[str]]


def commands(vmm: str, kernel: str, cpus: int) -> dict[str, ArgvFn]:
    def vmm_argv(cmdline: str, mem: int, qmp: str, incoming: str | None) -> list[str]:
        extra = ["--cpus", str(cpus), "--qmp", f"unix:{qmp}"]
        if incoming:
            extra += ["--incoming", incoming]
        return benchlib.vmm_argv(vmm, kernel, cmdline, mem, extra)

    def qemu_argv(cmdline: str, mem: int, qmp: str, incoming: str | None) -> list[str]:
        extra = ["-smp", str(cpus), "-global", "virtio-mmio.force-legacy=false",
                 "-qmp", f"unix:{qmp},server=on,wait=off"]
        if incoming:
            extra += ["-incoming", incoming]
        argv = benchlib.qemu_argv(kernel, cmdline, mem, extra=extra)
        # The power button (GED) needs ACPI, which microvm has by default ("auto"); say so.
        m = argv.index("-M") + 1
        argv[m] += ",acpi=on"
        return argv

    return {"vmm": vmm_argv, "qemu": qemu_argv}


def cmdline(case: str, mem: int, rate: str, cpus: int = 1) -> str:
    if case == "idle":
        return f"probe.test=mem-walk probe.mib={IDLE_MIB} probe.rate=0 probe.interval={INTERVAL_MS}"
    walkers = f" probe.cpus={cpus}" if cpus > 1 else ""
    return (f"probe.test=mem-walk probe.mib={mem - HEADROOM_MIB} probe.rate={rate} "
            f"probe.interval={INTERVAL_MS}{walkers}")


def field(line: str, key: str) -> int:
    return int(ffield(line, key))


def ffield(line: str, key: str) -> float:
    for word in line.split():
        if word.startswith(key + "="):
            return float(word.split("=", 1)[1])
    raise Failed(f"no {key}= in {line!r}")


def last_progress(serial: Serial, before: float) -> str:
    """The last progress line the guest printed before `before` (monotonic time)."""
    with serial.cond:
        lines = [line for t, line in serial.lines
                 if t < before and line.startswith("PROBE mem-walk progress")]
    if not lines:
        raise Failed("no progress line before the migration")
    return lines[-1]


def dirty_rate(before: str, after: str) -> float:
    """MiB/s the guest rewrote between two progress lines, on its own clock (t=)."""
    dt = ffield(after, "t") - ffield(before, "t")
    pages = field(after, "rewrites") - field(before, "rewrites")
    return pages * 4096 / 2**20 / dt if dt > 0 else 0.0


def check_support(name: str, argv: ArgvFn, tmp: str) -> None:
    """Boots the idle guest paused and asks query-migrate: Unsupported if the VMM refuses."""
    qmp = os.path.join(tmp, f"{name}-probe.qmp")
    vm = Vm(argv(cmdline("idle", 256, "0"), 256, qmp, None) + ["-S"], qmp)
    try:
        vm.qmp.ok("query-migrate")
        vm.qmp.ok("migrate-set-parameters", {"max-bandwidth": 1 << 30})
    finally:
        vm.kill()


# ---------------------------------------------------------------------------------------------
# One migration


def wait_migration(q: Qmp, timeout: float) -> dict[str, Any]:
    """Polls query-migrate until the migration ends; cancels it after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        info = q.ok("query-migrate")
        status = info.get("status")
        if status in ("completed", "failed", "cancelled"):
            return info
        if time.monotonic() > deadline:
            q.ok("migrate_cancel")
            while q.ok("query-migrate").get("status") not in ("cancelled", "failed", "completed"):
                time.sleep(0.05)
            info["status"] = "not-converged"
            return info
        time.sleep(0.02)


def power_down(vm: Vm, after: float) -> str:
    """system_powerdown; the guest's verdict line once it verified every page (bad=0
    required) and the VMM exited."""
    vm.qmp.ok("system_powerdown")
    _, verdict = vm.serial.wait("PROBE mem-walk pages=", after=after)
    if field(verdict, "bad") != 0 or field(verdict, "backwards") != 0:
        raise Failed(f"guest on the destination: {verdict}")
    vm.serial.wait("PROBE-DONE rc=0", after=after)
    vm.wait_exit()
    return verdict


def migrate_once(argv: ArgvFn, tmp: str, name: str, case: str, mem: int,
                 a: argparse.Namespace) -> dict[str, float]:
    line = cmdline(case, mem, a.rate, a.cpus)
    src_qmp = os.path.join(tmp, f"{name}-src.qmp")
    dst_qmp = os.path.join(tmp, f"{name}-dst.qmp")
    mig = os.path.join(tmp, f"{name}-mig.sock")
    src = Vm(argv(line, mem, src_qmp, None), src_qmp)
    dst = None
    try:
        t, _ = src.serial.wait("PROBE mem-walk start")
        src.serial.wait("PROBE mem-walk progress", after=t)
        time.sleep(a.settle)
        dst = Vm(argv(line, mem, dst_qmp, f"unix:{mig}"), dst_qmp, [mig])
        events = [{"capability": "events", "state": True}]
        params = {"max-bandwidth": a.max_bandwidth, "downtime-limit": a.downtime_limit}
        dst.qmp.ok("migrate-set-capabilities", {"capabilities": events})
        src.qmp.ok("migrate-set-capabilities", {"capabilities": events})
        src.qmp.ok("migrate-set-parameters", params)
        t0 = time.monotonic()
        src.qmp.ok("migrate", {"uri": f"unix:{mig}"})
        info = wait_migration(src.qmp, a.timeout)
        status = info["status"]
        if status == "not-converged":
            ram = info.get("ram", {})
            return {"converged": 0.0, "transferred_mib": ram.get("transferred", 0) / 2**20}
        if status != "completed":
            raise Failed(f"migration {status}: {info.get('error-desc', info)}")
        t_run, _ = dst.serial.wait("PROBE mem-walk", after=t0)
        _, resumed = dst.serial.wait("PROBE mem-walk progress", after=t0)
        rate = dirty_rate(last_progress(src.serial, t0), resumed)
        src.qmp.ok("quit")
        src.wait_exit()
        verdict = power_down(dst, t_run)
        ram = info.get("ram", {})
        return {
            "converged": 1.0,
            "total_ms": float(info.get("total-time", 0)),
            "downtime_ms": float(info.get("downtime", 0)),
            "setup_ms": float(info.get("setup-time", 0)),
            "transferred_mib": ram.get("transferred", 0) / 2**20,
            "iterations": float(ram.get("dirty-sync-count", 0)),
            "wall_ms": (t_run - t0) * 1000,
            "guest_stall_ms": float(field(verdict, "max_stall_ms")),
            "guest_mib_s": rate,
        }
    finally:
        src.kill()
        if dst is not None:
            dst.kill()


# ---------------------------------------------------------------------------------------------
# Snapshot to a file and restore


def snapshot_once(argv: ArgvFn, tmp: str, name: str, mem: int,
                  a: argparse.Namespace) -> dict[str, float]:
    line = cmdline("mem-walk", mem, a.rate, a.cpus)
    src_qmp = os.path.join(tmp, f"{name}-src.qmp")
    dst_qmp = os.path.join(tmp, f"{name}-dst.qmp")
    path = os.path.join(tmp, f"{name}-snapshot")
    if os.path.exists(path):
        os.unlink(path)
    save, load = ((f"file:{path}", f"file:{path}") if name == "vmm"
                  else (f"exec:cat > {path}", f"exec:cat {path}"))
    src = Vm(argv(line, mem, src_qmp, None), src_qmp)
    dst = None
    try:
        t, _ = src.serial.wait("PROBE mem-walk start")
        src.serial.wait("PROBE mem-walk progress", after=t)
        src.qmp.ok("stop")
        src.qmp.ok("migrate-set-parameters",
                   {"max-bandwidth": a.max_bandwidth, "downtime-limit": a.downtime_limit})
        t0 = time.monotonic()
        src.qmp.ok("migrate", {"uri": save})
        info = wait_migration(src.qmp, a.timeout)
        if info["status"] != "completed":
            raise Failed(f"snapshot {info['status']}: {info.get('error-desc', info)}")
        save_ms = (time.monotonic() - t0) * 1000
        src.qmp.ok("quit")
        src.wait_exit()
        st = os.stat(path)
        # Restore: process start to the guest's first line, with a cont once the state is in.
        dst = Vm(argv(line, mem, dst_qmp, load), dst_qmp)
        while True:
            status = dst.qmp.ok("query-status")["status"]
            if status not in ("inmigrate", "prelaunch", "restore-vm"):
                break
            time.sleep(0.001)
        loaded = time.monotonic()
        if status != "running":
            dst.qmp.ok("cont")
        t_run, _ = dst.serial.wait("PROBE mem-walk", after=dst.started)
        power_down(dst, t_run)
        return {
            "save_ms": save_ms,
            "disk_mib": st.st_blocks * 512 / 2**20,
            "file_mib": st.st_size / 2**20,
            "load_ms": (loaded - dst.started) * 1000,
            "restore_ms": (t_run - dst.started) * 1000,
        }
    finally:
        src.kill()
        if dst is not None:
            dst.kill()
        if os.path.exists(path):
            os.unlink(path)


# ---------------------------------------------------------------------------------------------
# Output


def show(title: str, results: dict[str, dict[str, float]], rows: Sequence[tuple[str, str, str]],
         names: Sequence[str]) -> None:
    print(title)
    if len(names) == 2:
        benchlib.print_rows(results["vmm"], results["qemu"], rows)
    else:
        (only,) = names
        label = "vmm" if only == "vmm" else "QEMU"
        print(f"{'':34}{label:>12}")
        for text, key, _ in rows:
            print(f"{text:34}{results[only][key]:12.1f}")
    print()


MIGRATION_ROWS = [
    ("total-time (ms)", "total_ms", "lower"),
    ("downtime (ms)", "downtime_ms", "lower"),
    ("setup-time (ms)", "setup_ms", "lower"),
    ("migrate to guest running (ms)", "wall_ms", "lower"),
    ("sent (MiB)", "transferred_mib", "lower"),
    ("dirty syncs", "iterations", "lower"),
    ("guest's longest stall (ms)", "guest_stall_ms", "lower"),
    ("guest rewrites meanwhile (MiB/s)", "guest_mib_s", "higher"),
]
SNAPSHOT_ROWS = [
    ("save a paused VM (ms)", "save_ms", "lower"),
    ("snapshot on disk (MiB, du)", "disk_mib", "lower"),
    ("snapshot file size (MiB)", "file_mib", "lower"),
    ("start to state loaded (ms)", "load_ms", "lower"),
    ("restore to running (ms)", "restore_ms", "lower"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("vmm")
    ap.add_argument("kernel")
    ap.add_argument("runs", type=int)
    ap.add_argument("--sizes", default="256,2048", help="guest RAM sizes in MiB")
    ap.add_argument("--rate", default="512", help="mem-walk's rewrite rate, MiB/s or max")
    ap.add_argument("--max-bandwidth", type=int, default=10 << 30, help="bytes/s, both VMMs")
    ap.add_argument("--downtime-limit", type=int, default=300, help="ms, both VMMs")
    ap.add_argument("--timeout", type=float, default=60, help="s before a migration is cancelled")
    ap.add_argument("--settle", type=float, default=1.0,
                    help="s of guest run time before each migration")
    ap.add_argument("--cpus", type=int, default=1,
                    help="vCPUs; the mem-walk guest walks on all of them (probe.cpus)")
    ap.add_argument("--only", choices=("vmm", "qemu"))
    ap.add_argument("--no-snapshot", action="store_true")
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    tmp = tempfile.mkdtemp(prefix="bench-migrate-")
    try:
        argvs = commands(a.vmm, a.kernel, a.cpus)
        names = [a.only] if a.only else ["vmm", "qemu"]
        if "vmm" in names:
            try:
                check_support("vmm", argvs["vmm"], tmp)
            except Unsupported as e:
                raise SystemExit(f"vmm does not support migrate yet: {e}") from None
        print(f"max-bandwidth {a.max_bandwidth} B/s and downtime-limit {a.downtime_limit} ms on "
              f"both VMMs; {a.cpus} vCPU(s); mem-walk at {a.rate} MiB/s; progress lines every "
              f"{INTERVAL_MS} ms; medians of {a.runs} runs (each figure's own median)")
        print()
        for mem in sizes:
            for case in ("idle", "mem-walk"):
                runners = {n: (lambda n=n: migrate_once(argvs[n], tmp, n, case, mem, a))
                           for n in names}
                samples = benchlib.collect(runners, a.runs, alternate=True)
                results = {}
                for n in names:
                    done = [s for s in samples[n] if s["converged"]]
                    if not done:
                        raise SystemExit(f"{n}: {case} at {mem} MiB never converged within "
                                         f"{a.timeout} s (sent "
                                         f"{samples[n][0]['transferred_mib']:.0f} MiB); "
                                         f"try a lower --rate or a higher --downtime-limit")
                    if len(done) < len(samples[n]):
                        print(f"{n}: {len(samples[n]) - len(done)} of {len(samples[n])} runs did "
                              f"not converge within {a.timeout} s")
                    results[n] = benchlib.medians(done)
                show(f"{case}, {mem} MiB (guest: {cmdline(case, mem, a.rate, a.cpus)})", results,
                     MIGRATION_ROWS, names)
        if not a.no_snapshot:
            for mem in sizes:
                runners = {n: (lambda n=n: snapshot_once(argvs[n], tmp, n, mem, a)) for n in names}
                samples = benchlib.collect(runners, a.runs, alternate=True)
                results = {n: benchlib.medians(samples[n]) for n in names}
                show(f"snapshot of the paused mem-walk guest, {mem} MiB (vmm: file:, QEMU 7.2: "
                     f"exec:cat)", results, SNAPSHOT_ROWS, names)
            for line in FIRECRACKER:
                print(line)
    except (Failed, Unsupported) as e:
        raise SystemExit(f"bench-migrate: {e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
