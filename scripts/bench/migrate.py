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

Then a postcopy phase (skipped with `--no-postcopy`, alone with `--postcopy-only`), at
`--postcopy-mib` MiB (default 256), the same QMP on both: `migrate-set-capabilities`
[postcopy-ram, events] on the destination and the source (QEMU needs it on both), `migrate` and
right away `migrate-start-postcopy` on the source:

- the idle and the mem-walk guest, straight over the unix socket. Per run: the time from
  `migrate` to the destination's RESUME event (its timestamp against the host's clock when
  `migrate` was sent: both VMMs stamp events with the host's realtime clock) and to the
  guest's first serial line there; total-time, downtime, postcopy-requests, postcopy-bytes
  and the bytes sent, as the source reports them in query-migrate; the guest's longest stall;
  and page-touch latencies as the guest sees them: the mem-walk guest runs with
  `probe.touch=US` (`--touch-us`, default 20), which times every page rewrite (the fill of a
  page and the store of its generation, where a page the destination lacks is first touched)
  and prints a histogram of those that took US microseconds or more after each progress line
  (`PROBE mem-walk touches t=.. slow=N us=FLOOR:COUNT,...`, 12.5%-wide buckets). The slow
  touches the destination printed from `migrate` to its first progress line after its
  MIGRATION completed event are the run's sample. On PVM they fall in two groups: 20-40 us,
  first accesses to pages that are already there (the host maps them), and 150 us and more,
  the touches that waited for their page from the source, as many as postcopy-requests; so
  the table shows how many took `--touch-us` or more, how many `--wait-us` (default 100) or
  more, and the p50 and p99 (bucket floors) of the latter: the page-request latency as the
  guest sees it. Neither VMM reports such a latency (vmm's query-migrate has no latency
  field, QEMU 7.2 only a blocktime capability), so the guest's clock measures both alike. The
  host's noise (timer ticks, preemption) is there too: the same guest's rate of touches of
  `--wait-us` or more with no migration (on the source, before `migrate`) is shown alongside.
- out of band during a frozen stream: `tests/qmp/relay.py` between source and destination,
  capped at `--relay-rate` bytes/s (default 1 MiB/s); once the destination's query-migrate
  says postcopy-active the relay gets SIGSTOP, so the destination's vCPU waits on a page that
  never comes; then `--oob-requests` (default 1000) `exec-oob` round trips, one at a time, on
  a second QMP socket of the destination negotiated with the oob capability: vmm
  `query-status`, QEMU 7.2 `query-yank` (its query-status is not allow-oob). The baseline is
  the same number on the source before the migration (a VM with no migration going on).
  Then the recovery, timed from the first command to the source's completion:
  `exec-oob migrate-pause` on the destination and on the source (the source's stream goes to
  the frozen relay, so nothing would end it otherwise), both waited in postcopy-paused,
  destination `exec-oob migrate-recover {"uri": NEW}`, source
  `migrate {"uri": NEW, "resume": true}`, straight to the destination this time.
Every run ends with `system_powerdown` on the destination and bad=0.

Until vmm implements migration, the vmm half ends the benchmark with one line,
"vmm does not support migrate yet: <QMP error>"; `--only qemu` measures QEMU alone.

Usage: migrate.py VMM KERNEL RUNS [--sizes 256,2048] [--rate MIB_S|max] [--max-bandwidth B]
                  [--downtime-limit MS] [--timeout S] [--settle S] [--cpus N]
                  [--only vmm|qemu] [--no-snapshot] [--no-postcopy | --postcopy-only]
                  [--postcopy-mib MIB] [--touch-us US] [--relay-rate B_S] [--oob-requests N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import benchlib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RELAY = os.path.join(ROOT, "tests", "qmp", "relay.py")
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

    def event(self, pred: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        """The first event, kept or still to come, for which `pred` holds (no command may be
        outstanding); Failed after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for e in self.events[seen:]:
                if pred(e):
                    return e
            seen = len(self.events)
            left = deadline - time.monotonic()
            if left <= 0 or not self.c.readable(left):
                names = [e["event"] + (f" {e['data'].get('status')}" if "data" in e else "")
                         for e in self.events]
                raise Failed(f"no such event within {timeout:.0f} s; events so far: {names}")
            msg = json.loads(self.c.line())
            if "event" not in msg:
                raise Failed(f"unexpected reply {msg}")
            self.events.append(msg)


def event_time(e: dict[str, Any]) -> float:
    """An event's timestamp (host realtime, seconds)."""
    ts = e["timestamp"]
    return ts["seconds"] + ts["microseconds"] / 1e6


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

    def walking(self, settle: float = 0.0) -> None:
        """Waits until the mem-walk guest has started and printed progress, then `settle`
        seconds more."""
        t, _ = self.serial.wait("PROBE mem-walk start")
        self.serial.wait("PROBE mem-walk progress", after=t)
        time.sleep(settle)

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


def settled(q: Qmp, info: dict[str, Any]) -> dict[str, Any]:
    """query-migrate once a completed migration's figures are in: QEMU 7.2 says "completed"
    a moment before it computes total-time and downtime (0 until then), so a poll that lands
    in between is asked again (for up to 2 s)."""
    deadline = time.monotonic() + 2
    while (info.get("status") == "completed" and not info.get("total-time")
           and time.monotonic() < deadline):
        time.sleep(0.005)
        info = q.ok("query-migrate")
    return info


def wait_migration(q: Qmp, timeout: float) -> dict[str, Any]:
    """Polls query-migrate until the migration ends; cancels it after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        info = q.ok("query-migrate")
        status = info.get("status")
        if status in ("completed", "failed", "cancelled"):
            return settled(q, info)
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
        src.walking(a.settle)
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
        src.walking()
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


RESTORE_MODES = ("map", "uffd", "copy")


def restore_modes_once(argv: ArgvFn, tmp: str, mem: int,
                       a: argparse.Namespace) -> dict[str, float]:
    """vmm alone: one snapshot of the paused mem-walk guest, restored three ways: `map`
    (`--incoming file:PATH`, the snapshot's RAM mapped privately), `uffd` (`file:PATH,
    restore=uffd`: served through userfaultfd into the VM's own RAM, the rest read in the
    background) and `copy` (`-incoming defer` + `migrate-incoming file:PATH`: all of RAM read
    first). Process start to the guest's first line, and to the restore's `completed`."""
    line = cmdline("mem-walk", mem, a.rate, a.cpus)
    src_qmp = os.path.join(tmp, "modes-src.qmp")
    path = os.path.join(tmp, "modes-snapshot")
    src = Vm(argv(line, mem, src_qmp, None), src_qmp)
    out: dict[str, float] = {}
    try:
        src.walking()
        src.qmp.ok("stop")
        src.qmp.ok("migrate-set-parameters", {"max-bandwidth": a.max_bandwidth})
        src.qmp.ok("migrate", {"uri": f"file:{path}"})
        info = wait_migration(src.qmp, a.timeout)
        if info["status"] != "completed":
            raise Failed(f"snapshot {info['status']}: {info.get('error-desc', info)}")
        src.qmp.ok("quit")
        src.wait_exit()
    finally:
        src.kill()
    try:
        for mode in RESTORE_MODES:
            dst_qmp = os.path.join(tmp, f"modes-{mode}.qmp")
            incoming = {"map": f"file:{path}", "uffd": f"file:{path},restore=uffd",
                        "copy": "defer"}[mode]
            dst = Vm(argv(line, mem, dst_qmp, incoming), dst_qmp)
            try:
                if mode == "copy":
                    dst.qmp.ok("migrate-incoming", {"uri": f"file:{path}"})
                t_run, _ = dst.serial.wait("PROBE mem-walk", after=dst.started)
                info = wait_migration(dst.qmp, a.timeout)
                if info["status"] != "completed":
                    raise Failed(f"restore {mode} {info['status']}: {info.get('error-desc')}")
                done = time.monotonic()
                out[f"{mode}_run_ms"] = (t_run - dst.started) * 1000
                out[f"{mode}_done_ms"] = (done - dst.started) * 1000
                power_down(dst, t_run)
            finally:
                dst.kill()
    finally:
        if os.path.exists(path):
            os.unlink(path)
    return out


RESTORE_MODE_ROWS = [
    (f"{mode}: {what} (ms)", f"{mode}_{key}", "lower")
    for mode in RESTORE_MODES
    for what, key in (("start to guest running", "run_ms"), ("start to completed", "done_ms"))
]


# ---------------------------------------------------------------------------------------------
# Postcopy

NEGOTIATE_OOB = (b'{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}\n',)
# The out-of-band query: QEMU 7.2's query-status is not allow-oob, query-yank is.
OOB_QUERY = {"vmm": "query-status", "qemu": "query-yank"}
OOB_TIMEOUT = 10.0
POSTCOPY_CAPS = [{"capability": "postcopy-ram", "state": True},
                 {"capability": "events", "state": True}]
# What a destination answered to POSTCOPY_CAPS when it refused them, per VMM (printed at the end).
REFUSED: dict[str, str] = {}
# Runs whose query-migrate said downtime > total-time (QEMU 7.2's sub-millisecond postcopy
# downtime), counted as 0 ms.
BOGUS_DOWNTIME: dict[str, int] = {}


def postcopy_caps(name: str, src: Vm, dst: Vm) -> None:
    """migrate-set-capabilities [postcopy-ram, events] on the destination, then the source.
    vmm's destination refuses it while `--incoming unix:...` listens ("There's a migration
    process in progress"; QEMU 7.2 takes it), and does not need it: then events alone there,
    the refusal kept for the report."""
    reply = dst.qmp.cmd("migrate-set-capabilities", {"capabilities": POSTCOPY_CAPS})
    if "error" in reply:
        if name != "vmm":
            raise Unsupported(f"migrate-set-capabilities on the destination: {reply['error']}")
        REFUSED[name] = reply["error"].get("desc", str(reply["error"]))
        dst.qmp.ok("migrate-set-capabilities", {"capabilities": POSTCOPY_CAPS[1:]})
    src.qmp.ok("migrate-set-capabilities", {"capabilities": POSTCOPY_CAPS})


def pc_cmdline(case: str, mem: int, a: argparse.Namespace) -> str:
    """The postcopy guests: the mem-walk one times its page touches (probe.touch)."""
    line = cmdline(case, mem, a.rate, a.cpus)
    return line + (f" probe.touch={a.touch_us}" if case == "mem-walk" else "")


def oob_socket(name: str, path: str) -> list[str]:
    """The options that give the VMM a second QMP socket at `path`."""
    if name == "vmm":
        return ["--qmp", f"unix:{path}"]
    return ["-qmp", f"unix:{path},server=on,wait=off"]


def touch_samples(serial: Serial, start: float, end: float) -> list[int]:
    """The slow touches (bucket floors in us, one entry per touch) of the `touches` lines that
    arrived between `start` and `end` (monotonic time)."""
    out: list[int] = []
    with serial.cond:
        lines = [line for t, line in serial.lines
                 if start <= t < end and line.startswith("PROBE mem-walk touches")]
    for line in lines:
        n = 0
        for word in line.split():
            if word.startswith("us="):
                for item in word[3:].split(","):
                    us, count = item.split(":")
                    out += [int(us)] * int(count)
                    n += int(count)
        if n != field(line, "slow"):
            raise Failed(f"touches line does not add up: {line!r}")
    return sorted(out)


def wait_status(q: Qmp, wanted: Sequence[str], timeout: float, what: str,
                source: bool = False) -> dict[str, Any]:
    """Polls query-migrate on `q` until its status is one of `wanted` (on a `source`, until
    a completed migration's figures are in)."""
    deadline = time.monotonic() + timeout
    while True:
        info = q.ok("query-migrate")
        if info.get("status") in wanted:
            return settled(q, info) if source else info
        if info.get("status") in ("failed", "cancelled") or time.monotonic() > deadline:
            raise Failed(f"{what}: query-migrate says {info.get('status')} "
                         f"(waiting for {'/'.join(wanted)}): {info}")
        time.sleep(0.005)


def postcopy_once(argv: ArgvFn, tmp: str, name: str, case: str, mem: int,
                  a: argparse.Namespace) -> dict[str, float]:
    line = pc_cmdline(case, mem, a)
    src_qmp = os.path.join(tmp, f"{name}-src.qmp")
    dst_qmp = os.path.join(tmp, f"{name}-dst.qmp")
    mig = os.path.join(tmp, f"{name}-mig.sock")
    src = Vm(argv(line, mem, src_qmp, None), src_qmp)
    dst = None
    try:
        src.walking(a.settle)
        dst = Vm(argv(line, mem, dst_qmp, f"unix:{mig}"), dst_qmp, [mig])
        postcopy_caps(name, src, dst)
        src.qmp.ok("migrate-set-parameters",
                   {"max-bandwidth": a.max_bandwidth, "downtime-limit": a.downtime_limit})
        # Host realtime (what the events carry) and monotonic time (the serial's) of `migrate`.
        w0, t0 = time.time(), time.monotonic()
        src.qmp.ok("migrate", {"uri": f"unix:{mig}"})
        src.qmp.ok("migrate-start-postcopy")
        resume = dst.qmp.event(lambda e: e["event"] == "RESUME", a.timeout)
        info = wait_status(src.qmp, ("completed",), a.timeout, f"{name} source", source=True)
        done = dst.qmp.event(lambda e: e["event"] == "MIGRATION"
                             and e["data"]["status"] in ("completed", "failed"), a.timeout)
        if done["data"]["status"] != "completed":
            raise Failed(f"{name} destination: migration {done['data']['status']}")
        done_mono = event_time(done) - w0 + t0
        t_run, _ = dst.serial.wait("PROBE mem-walk", after=t0)
        # The touches of the interval in which the migration completed come with the first
        # progress line after it.
        t_last, _ = dst.serial.wait("PROBE mem-walk progress", after=done_mono)
        t_next, _ = dst.serial.wait("PROBE mem-walk progress", after=t_last + 0.001)
        touches = touch_samples(dst.serial, t0, t_next)
        # The same guest's slow touches with no migration: on the source, from its first
        # progress line to `migrate`.
        t_first, _ = src.serial.wait("PROBE mem-walk progress")
        quiet = touch_samples(src.serial, t_first + 0.001, t0)
        src.qmp.ok("quit")
        src.wait_exit()
        verdict = power_down(dst, t_run)
        ram = info.get("ram", {})
        total, downtime = float(info.get("total-time", 0)), float(info.get("downtime", 0))
        if downtime > total:
            # QEMU 7.2 reports a postcopy downtime that rounds to 0 ms as the host's uptime
            # (its completion takes 0 for "not set yet, precopy" and subtracts a precopy start
            # that postcopy never set).
            BOGUS_DOWNTIME[name] = BOGUS_DOWNTIME.get(name, 0) + 1
            downtime = 0.0
        r = {
            "resume_ms": (event_time(resume) - w0) * 1000,
            "wall_ms": (t_run - t0) * 1000,
            "total_ms": total,
            "downtime_ms": downtime,
            "requests": float(ram.get("postcopy-requests", 0)),
            "postcopy_kib": ram.get("postcopy-bytes", 0) / 1024,
            "transferred_mib": ram.get("transferred", 0) / 2**20,
            "guest_stall_ms": float(field(verdict, "max_stall_ms")),
        }
        if case == "mem-walk":
            waits = [us for us in touches if us >= a.wait_us]
            r["touches"] = float(len(touches))
            r["waits"] = float(len(waits))
            r["wait_p50"] = float(benchlib.percentile(waits, 0.5)) if waits else 0.0
            r["wait_p99"] = float(benchlib.percentile(waits, 0.99)) if waits else 0.0
            r["quiet_waits_s"] = (sum(1 for us in quiet if us >= a.wait_us)
                                  / max(t0 - t_first, 0.001))
        return r
    finally:
        src.kill()
        if dst is not None:
            dst.kill()


def oob_round_trips(c: benchlib.QmpClient, query: str, n: int, first_id: int,
                    what: str) -> list[float]:
    """`n` exec-oob round trips of `query` (`QmpClient.oob_round_trips`), in microseconds."""
    try:
        return [ns / 1000 for ns in c.oob_round_trips(query, n, first_id, OOB_TIMEOUT)]
    except RuntimeError as e:
        raise Failed(f"{what}: {e}") from None


def oob_cmd(c: benchlib.QmpClient, cmd: str, args: dict[str, Any] | None, what: str) -> Any:
    """One exec-oob command; its "return" (Failed on an error or no reply)."""
    req: dict[str, Any] = {"exec-oob": cmd, "id": cmd}
    if args is not None:
        req["arguments"] = args
    c.s.sendall(json.dumps(req).encode() + b"\n")
    while True:
        if not c.readable(OOB_TIMEOUT):
            raise Failed(f"{what}: no reply to exec-oob {cmd} within {OOB_TIMEOUT:.0f} s")
        msg = json.loads(c.line())
        if "event" in msg:
            continue
        if "return" not in msg:
            raise Failed(f"{what}: exec-oob {cmd}: {msg}")
        return msg["return"]


def listening(path: str) -> bool:
    """Whether a unix socket listens at `path` (/proc/net/unix; connecting to a relay would use
    up its one connection)."""
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            parts = line.split()
            # Num RefCount Protocol Flags Type St Inode Path; __SO_ACCEPTCON = 0x10000
            if len(parts) >= 8 and parts[7] == path and int(parts[3], 16) & 0x10000:
                return True
    return False


def wait_listening(path: str, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not listening(path):
        if time.monotonic() > deadline:
            raise Failed(f"{what}: nothing listens at {path} after {timeout:.0f} s")
        time.sleep(0.002)


def oob_stall_once(argv: ArgvFn, tmp: str, name: str, mem: int,
                   a: argparse.Namespace) -> dict[str, float]:
    line = pc_cmdline("mem-walk", mem, a)
    src_qmp = os.path.join(tmp, f"{name}-src.qmp")
    src_oob = os.path.join(tmp, f"{name}-src-oob.qmp")
    dst_qmp = os.path.join(tmp, f"{name}-dst.qmp")
    dst_oob = os.path.join(tmp, f"{name}-dst-oob.qmp")
    mig = os.path.join(tmp, f"{name}-mig.sock")
    via = os.path.join(tmp, f"{name}-relay.sock")
    recover = os.path.join(tmp, f"{name}-recover.sock")
    for p in (via, recover):
        if os.path.exists(p):
            os.unlink(p)
    query = OOB_QUERY[name]
    src = Vm(argv(line, mem, src_qmp, None) + oob_socket(name, src_oob), src_qmp, [src_oob])
    dst = relay = None
    try:
        src.walking(a.settle)
        # The baseline: the same guest, no migration.
        so = benchlib.QmpClient(src_oob, negotiation=NEGOTIATE_OOB, timeout=OOB_TIMEOUT)
        oob_round_trips(so, query, a.oob_requests // 10, 0, f"{name} idle source")
        idle = oob_round_trips(so, query, a.oob_requests, 100000, f"{name} idle source")
        dst = Vm(argv(line, mem, dst_qmp, f"unix:{mig}") + oob_socket(name, dst_oob), dst_qmp,
                 [mig, dst_oob])
        do = benchlib.QmpClient(dst_oob, negotiation=NEGOTIATE_OOB, timeout=OOB_TIMEOUT)
        relay = benchlib.spawn([sys.executable, RELAY, via, mig, str(a.relay_rate)])
        wait_listening(via, "relay")
        postcopy_caps(name, src, dst)
        src.qmp.ok("migrate-set-parameters",
                   {"max-bandwidth": a.max_bandwidth, "downtime-limit": a.downtime_limit})
        src.qmp.ok("migrate", {"uri": f"unix:{via}"})
        src.qmp.ok("migrate-start-postcopy")
        wait_status(dst.qmp, ("postcopy-active",), a.timeout, f"{name} destination")
        relay.send_signal(signal.SIGSTOP)
        time.sleep(0.3)
        frozen = time.monotonic()
        stall = oob_round_trips(do, query, a.oob_requests, 200000, f"{name} stalled destination")
        # Still stalled: postcopy-active, and the guest printed nothing meanwhile.
        st = dst.qmp.ok("query-migrate")["status"]
        if st != "postcopy-active":
            raise Failed(f"{name}: the destination left postcopy-active ({st}) with the relay "
                         f"stopped")
        with dst.serial.cond:
            printed = sum(1 for when, _ in dst.serial.lines if when >= frozen)
        # Recovery: pause both ends, a new channel, resume.
        t_r = time.monotonic()
        oob_cmd(do, "migrate-pause", None, f"{name} destination")
        pause_ms = (time.monotonic() - t_r) * 1000
        oob_cmd(so, "migrate-pause", None, f"{name} source")
        wait_status(dst.qmp, ("postcopy-paused",), a.timeout, f"{name} destination")
        wait_status(src.qmp, ("postcopy-paused",), a.timeout, f"{name} source")
        oob_cmd(do, "migrate-recover", {"uri": f"unix:{recover}"}, f"{name} destination")
        wait_listening(recover, f"{name} migrate-recover")
        src.qmp.ok("migrate", {"uri": f"unix:{recover}", "resume": True})
        wait_status(src.qmp, ("completed",), a.timeout, f"{name} source after resume")
        recovery_ms = (time.monotonic() - t_r) * 1000
        relay.kill()
        relay.wait()
        wait_status(dst.qmp, ("completed",), a.timeout, f"{name} destination after resume")
        t_run, _ = dst.serial.wait("PROBE mem-walk progress", after=t_r)
        so.s.close()
        do.s.close()
        src.qmp.ok("quit")
        src.wait_exit()
        power_down(dst, t_run)
        return {
            "idle_p50": benchlib.percentile(idle, 0.5),
            "idle_p99": benchlib.percentile(idle, 0.99),
            "stall_p50": benchlib.percentile(stall, 0.5),
            "stall_p99": benchlib.percentile(stall, 0.99),
            "printed": float(printed),
            "pause_ms": pause_ms,
            "recovery_ms": recovery_ms,
        }
    finally:
        if relay is not None and relay.poll() is None:
            relay.kill()
            relay.wait()
        src.kill()
        if dst is not None:
            dst.kill()


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
POSTCOPY_ROWS = [
    ("migrate to RESUME on dst (ms)", "resume_ms", "lower"),
    ("migrate to guest line on dst (ms)", "wall_ms", "lower"),
    ("total-time (ms)", "total_ms", "lower"),
    ("downtime (ms)", "downtime_ms", "lower"),
    ("postcopy-requests", "requests", "lower"),
    ("postcopy-bytes (KiB)", "postcopy_kib", "lower"),
    ("sent (MiB)", "transferred_mib", "lower"),
    ("guest's longest stall (ms)", "guest_stall_ms", "lower"),
]


def touch_rows(a: argparse.Namespace) -> list[tuple[str, str, str]]:
    """The mem-walk guest's page-touch rows (their thresholds are options)."""
    return [
        (f"touches >= {a.touch_us} us on dst (count)", "touches", "-"),
        (f"touches >= {a.wait_us} us on dst (count)", "waits", "-"),
        ("  their latency p50 (us)", "wait_p50", "lower"),
        ("  their latency p99 (us)", "wait_p99", "lower"),
        (f"no migration: >= {a.wait_us} us per s", "quiet_waits_s", "-"),
    ]


OOB_ROWS = [
    ("exec-oob, no migration p50 (us)", "idle_p50", "lower"),
    ("exec-oob, no migration p99 (us)", "idle_p99", "lower"),
    ("exec-oob, frozen stream p50 (us)", "stall_p50", "lower"),
    ("exec-oob, frozen stream p99 (us)", "stall_p99", "lower"),
    ("guest lines while frozen", "printed", "-"),
    ("dst migrate-pause reply (ms)", "pause_ms", "lower"),
    ("recovery: pause to completed (ms)", "recovery_ms", "lower"),
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
    ap.add_argument("--no-postcopy", action="store_true", help="skip the postcopy phase")
    ap.add_argument("--postcopy-only", action="store_true",
                    help="the postcopy phase alone (no precopy, no snapshot)")
    ap.add_argument("--postcopy-mib", type=int, default=256, help="guest RAM of the postcopy phase")
    ap.add_argument("--touch-us", type=int, default=20,
                    help="us from which the guest counts a page touch as slow (probe.touch)")
    ap.add_argument("--wait-us", type=int, default=100,
                    help="us from which a slow touch counts as one that waited for its page")
    ap.add_argument("--relay-rate", type=int, default=1 << 20,
                    help="bytes/s the relay of the frozen-stream runs passes")
    ap.add_argument("--oob-requests", type=int, default=1000,
                    help="exec-oob round trips per state and run")
    a = ap.parse_args()
    if a.no_postcopy and a.postcopy_only:
        ap.error("--no-postcopy and --postcopy-only exclude each other")
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
        for mem in sizes if not a.postcopy_only else []:
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
        if not a.no_snapshot and not a.postcopy_only:
            for mem in sizes:
                runners = {n: (lambda n=n: snapshot_once(argvs[n], tmp, n, mem, a)) for n in names}
                samples = benchlib.collect(runners, a.runs, alternate=True)
                results = {n: benchlib.medians(samples[n]) for n in names}
                show(f"snapshot of the paused mem-walk guest, {mem} MiB (vmm: file:, QEMU 7.2: "
                     f"exec:cat)", results, SNAPSHOT_ROWS, names)
            for line in FIRECRACKER:
                print(line)
            print()
            if "vmm" in names:
                for mem in sizes:
                    samples = benchlib.collect(
                        {"vmm": lambda: restore_modes_once(argvs["vmm"], tmp, mem, a)}, a.runs,
                        alternate=False)
                    show(f"vmm's restore modes, paused mem-walk guest, {mem} MiB (map: the "
                         f"snapshot mapped privately; uffd: served through userfaultfd; copy: "
                         f"read in first)", {"vmm": benchlib.medians(samples["vmm"])},
                         RESTORE_MODE_ROWS, ["vmm"])
        if not a.no_postcopy:
            mem = a.postcopy_mib
            for text in (
                f"postcopy, {mem} MiB: migrate-set-capabilities [postcopy-ram, events] on both "
                f"sides, migrate then migrate-start-postcopy at once.",
                f"Touches: page rewrites the mem-walk guest timed itself (probe.touch="
                f"{a.touch_us}) on the destination, from migrate to its first progress line "
                f"after completion; 12.5%-wide buckets, their floors. {a.touch_us}-{a.wait_us} "
                f"us: mostly first accesses to pages already there; >= {a.wait_us} us: waits for "
                f"a page from the source (their count follows postcopy-requests), plus the "
                f"host's noise (the no-migration rate, from the source before migrate).",
            ):
                print(text)
            print()
            for case in ("idle", "mem-walk"):
                runners = {n: (lambda n=n: postcopy_once(argvs[n], tmp, n, case, mem, a))
                           for n in names}
                samples = benchlib.collect(runners, a.runs, alternate=True)
                results = {n: benchlib.medians(samples[n]) for n in names}
                rows = POSTCOPY_ROWS + (touch_rows(a) if case == "mem-walk" else [])
                show(f"postcopy, {case}, {mem} MiB (guest: {pc_cmdline(case, mem, a)})", results,
                     rows, names)
            runners = {n: (lambda n=n: oob_stall_once(argvs[n], tmp, n, mem, a)) for n in names}
            samples = benchlib.collect(runners, a.runs, alternate=True)
            results = {n: benchlib.medians(samples[n]) for n in names}
            show(f"out of band, {mem} MiB mem-walk guest, {a.oob_requests} round trips per state "
                 f"(vmm: exec-oob query-status, QEMU 7.2: exec-oob query-yank); frozen stream: "
                 f"postcopy through a relay at {a.relay_rate} B/s, SIGSTOPped once the "
                 f"destination is postcopy-active; recovery: migrate-pause on both, "
                 f"migrate-recover, migrate resume", results, OOB_ROWS, names)
            for n, count in BOGUS_DOWNTIME.items():
                print(f"{n}: {count} postcopy run(s) reported a downtime above total-time (QEMU "
                      f"7.2 gives a postcopy downtime under 1 ms as the host's uptime in ms), "
                      f"counted as 0 ms.")
            for n, desc in REFUSED.items():
                print(f"{n}'s destination (--incoming unix:PATH, before the source connects) "
                      f"refused migrate-set-capabilities [postcopy-ram, events]: {desc!r}; "
                      f"QEMU 7.2 takes it there. {n} got [events] there and postcopy-ram on the "
                      f"source only, which its destination does not need.")
    except (Failed, Unsupported) as e:
        raise SystemExit(f"bench-migrate: {e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
