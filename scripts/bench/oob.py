# SPDX-License-Identifier: Apache-2.0
"""Out-of-band benchmark (run by scripts/bench-oob.sh): vmm and QEMU's microvm side by side,
both running the probe guest (probe.test=idle). One client, on a connection negotiated with the
`oob` capability, sends REQUESTS `exec-oob` requests one at a time (query-yank on both: it is
QEMU 7.2's one allow-oob query, its query-status is not allow-oob) and the round
trips are measured in two states, alternating over 5 rounds of REQUESTS/5 each (so that the
host's drift hits both alike):

- idle: nothing else going on;
- stalled: another connection has sent a `blockdev-add` of a file on a hung FUSE mount
  (tests/qmp/hangfs.py, every callback hanging). The stall is checked before and after the
  measurement: the add has not been answered, hangfs has a caller from the VMM's process
  blocked in it and that thread sits in a syscall (/proc/PID/task/TID/syscall). QEMU blocks its
  main loop in openat() there; vmm opens on a worker thread.

During the first stall a third connection is opened: does the VMM send its greeting, and does it
answer its qmp_capabilities (with oob) while the stall lasts? Where it does, that late
connection's OOB round trips are measured too. Then the hang is released and the blockdev-add
(and a late negotiation still pending) must complete; each round adds a new node over its own
image (both VMMs lock an image against a second writer). Every wait is bounded; the hang is
released and the mount removed on every exit (HangFs.close), children are killed (benchlib).

Needs mfusepy (run with target/qmp-venv/bin/python, see scripts/qmp-venv.sh) and Debian's fuse3.

Usage: oob.py VMM KERNEL REQUESTS
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import benchlib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "qmp"))
from hangfs import HangFs  # noqa: E402  (needs mfusepy)

MEM_MIB = 256
CMDLINE = "probe.test=idle"
WARMUP = 500
ROUNDS = 5               # idle and stalled batches alternate, so host drift hits both
LATE_REQUESTS = 1000     # OOB round trips on the connection opened during the stall
QUIET = 1.0              # seconds a command must stay unanswered to count as held
TIMEOUT = 10.0           # seconds for any one reply
GOAL_US = 1000.0
NOISE = 1.10             # "no worse than idle": stalled p99 within 10% of idle p99
NEGOTIATE_OOB = (b'{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}\n',)
QUERY = {"vmm": "query-yank", "qemu": "query-yank"}
SYSCALLS = {0: "read", 2: "open", 4: "stat", 6: "lstat", 257: "openat", 262: "newfstatat",
            332: "statx", 437: "openat2"}
COLUMNS = [("idle_p50", "idle p50 us", 13), ("idle_p99", "idle p99 us", 13),
           ("stall_p50", "stalled p50 us", 16), ("stall_p99", "stalled p99 us", 16),
           ("stall_idle", "stalled/idle p99", 18)]


def socket_paths(tmp: str, name: str) -> list[str]:
    """One VMM's QMP sockets: the stalling client, the OOB client, the late client (QEMU
    serves one client per -qmp socket)."""
    return [os.path.join(tmp, f"{name}-{role}.sock") for role in ("stall", "oob", "late")]


def argv(name: str, vmm: str, kernel: str, serial: str, paths: list[str]) -> list[str]:
    """The command line of `name` with its serial port in the file `serial` and QMP sockets."""
    if name == "vmm":
        a = benchlib.vmm_argv(vmm, kernel, CMDLINE, MEM_MIB, ["--serial", f"file:{serial}"])
        for p in paths:
            a += ["--qmp", f"unix:{p}"]
        return a
    extra: list[str] = []
    for p in paths:
        extra += ["-qmp", f"unix:{p},server=on,wait=off"]
    return benchlib.qemu_argv(kernel, CMDLINE, MEM_MIB, serial=f"file:{serial}", extra=extra)


def reply(c: benchlib.QmpClient, what: str) -> dict:
    """The next message (events skipped), within TIMEOUT seconds."""
    while True:
        if not c.readable(TIMEOUT):
            raise SystemExit(f"no reply to {what} within {TIMEOUT:.0f} s")
        msg = json.loads(c.line())
        if "event" not in msg and "signal" not in msg:
            return msg


def round_trips(c: benchlib.QmpClient, query: str, n: int, first_id: int) -> list[int]:
    """`n` exec-oob round trips of `query` (`QmpClient.oob_round_trips`), in ns."""
    try:
        return c.oob_round_trips(query, n, first_id, TIMEOUT)
    except RuntimeError as e:
        raise SystemExit(str(e)) from None


def stalled_thread(fs: HangFs, pid: int) -> str:
    """Checks that the stall is real: hangfs has a caller from process `pid` blocked in it and
    that thread is inside a syscall. Returns "thread (op path) in syscall"."""
    waiters = fs.wait_blocked(pid=pid)
    w = waiters[0]
    with open(f"/proc/{pid}/task/{w['tid']}/syscall") as f:
        sc = f.read().split()
    if not sc or sc[0] == "running":
        raise SystemExit(f"hangfs reports {w} but thread {w['tid']} is not in a syscall")
    with open(f"/proc/{pid}/task/{w['tid']}/comm") as f:
        comm = f.read().strip()
    main = " (the main thread)" if w["tid"] == pid else ""
    call = SYSCALLS.get(int(sc[0]), f"syscall {sc[0]}")
    return f"thread {comm!r}{main} in {call}() ({w['op']} {w['path']})"


def late_connection(name: str, path: str, query: str, requests: int,
                    notes: dict) -> benchlib.QmpClient:
    """Opens a connection during the stall: its greeting, then qmp_capabilities with oob; if
    that is answered within QUIET seconds, measures OOB round trips on it. Records the
    outcome in `notes` and returns the connection."""
    late = benchlib.QmpClient(path, negotiation=(), timeout=TIMEOUT)
    notes["late_greeting"] = "oob" in late.greeting["QMP"]["capabilities"]
    late.s.sendall(NEGOTIATE_OOB[0])
    t_neg = time.perf_counter()
    notes["late_negotiated"] = late.readable(QUIET)
    if notes["late_negotiated"]:
        neg = json.loads(late.line())
        if "return" not in neg:
            raise SystemExit(f"{name}: late qmp_capabilities: {neg}")
        notes["late_neg_ms"] = (time.perf_counter() - t_neg) * 1e3
        notes["late"] = round_trips(late, query, min(requests, LATE_REQUESTS), 1)
    return late


def measure(name: str, vmm: str, kernel: str, requests: int, tmp: str) -> tuple[dict, dict]:
    """Both measurements of one VMM: (figures by COLUMNS key, notes for the text below)."""
    query = QUERY[name]
    notes: dict = {}
    paths = socket_paths(tmp, name)
    serial = os.path.join(tmp, f"{name}-serial.txt")
    with HangFs(tmp, name=f"{name}-hangfs") as fs:
        for rnd in range(ROUNDS):
            with open(fs.backing / f"x{rnd}.raw", "wb") as f:
                f.truncate(1 << 20)
        proc = benchlib.start_with_sockets(argv(name, vmm, kernel, serial, paths), paths)
        try:
            booted = benchlib.wait_until(lambda: benchlib.file_count(serial, "PROBE idle"), 10,
                                         proc, interval=0.02)
            notes["guest"] = "running the probe guest (probe.test=idle)" if booted else \
                "the probe guest did NOT reach 'PROBE idle' within 10 s"
            stall = benchlib.QmpClient(paths[0], timeout=TIMEOUT)
            oob = benchlib.QmpClient(paths[1], NEGOTIATE_OOB, timeout=TIMEOUT)
            round_trips(oob, query, WARMUP, 1)
            idle: list[int] = []
            stalled: list[int] = []
            per = max(1, requests // ROUNDS)
            notes["stall_s"] = 0.0
            for rnd in range(ROUNDS):
                base = (rnd + 1) * 10_000_000
                idle += round_trips(oob, query, per, base)
                fs.hang()
                stall.s.sendall(json.dumps(
                    {"execute": "blockdev-add", "id": f"add{rnd}",
                     "arguments": {"driver": "file", "node-name": f"n{rnd}",
                                   "filename": str(fs.path / f"x{rnd}.raw")}}).encode() + b"\n")
                t_stall = time.monotonic()
                where = stalled_thread(fs, proc.pid)
                notes.setdefault("stall", where)
                if stall.readable(0):
                    raise SystemExit(f"{name}: blockdev-add answered on hung storage: "
                                     f"{stall.buf!r}")

                stalled += round_trips(oob, query, per, base + 5_000_000)

                if rnd == 0:
                    late = late_connection(name, paths[2], query, requests, notes)

                # Still stalled after all that?
                if stall.readable(0):
                    raise SystemExit(f"{name}: blockdev-add answered before the release")
                again = stalled_thread(fs, proc.pid)
                if again != where:
                    raise SystemExit(f"{name}: the stall moved: {where} -> {again}")
                notes["stall_s"] = max(notes["stall_s"], time.monotonic() - t_stall)

                fs.release()
                r = reply(stall, "blockdev-add after the release")
                if r != {"return": {}, "id": f"add{rnd}"}:
                    raise SystemExit(f"{name}: blockdev-add after the release: {r}")
                if rnd == 0 and not notes["late_negotiated"]:
                    neg = reply(late, "the late qmp_capabilities after the release")
                    if "return" not in neg:
                        raise SystemExit(f"{name}: late qmp_capabilities after the release: "
                                         f"{neg}")
                    round_trips(late, query, 10, 1)  # and now it works
            if proc.poll() is not None:
                raise SystemExit(f"{name} died during the benchmark")
            for c in (stall, oob, late):
                c.s.close()
        finally:
            fs.release()
            benchlib.stop(proc)
    us = 1e-3
    figures = {"idle_p50": benchlib.percentile(idle, 0.5) * us,
               "idle_p99": benchlib.percentile(idle, 0.99) * us,
               "stall_p50": benchlib.percentile(stalled, 0.5) * us,
               "stall_p99": benchlib.percentile(stalled, 0.99) * us}
    figures["stall_idle"] = figures["stall_p99"] / figures["idle_p99"]
    return figures, notes


def main() -> None:
    """Parses the arguments, measures both VMMs and prints the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("vmm")
    ap.add_argument("kernel")
    ap.add_argument("requests", type=int)
    a = ap.parse_args()

    results, notes = {}, {}
    tmp = tempfile.mkdtemp(prefix="bench-oob-")
    try:
        for name in ("vmm", "qemu"):
            results[name], notes[name] = measure(name, a.vmm, a.kernel, a.requests, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"OOB benchmark: exec-oob round trips, idle and while another connection's "
          f"blockdev-add is stalled on hung storage ({a.requests} requests each; unix sockets; "
          f"1 vCPU, {MEM_MIB} MiB; query-yank on both)")
    for name in ("vmm", "qemu"):
        n = notes[name]
        print(f"  {name}: {n['guest']}; stall: {n['stall']}, held up to "
              f"{n['stall_s'] * 1e3:.0f} ms, answered after each release")
    benchlib.print_columns(results, COLUMNS, label_width=10, ratio_label="vmm/QEMU",
                           value_format=".1f")
    print(f"goal: p99 <= {GOAL_US / 1000:.0f} ms and no worse than idle (stalled p99 within "
          f"{(NOISE - 1) * 100:.0f}% of idle p99)")
    for name in ("vmm", "qemu"):
        r = results[name]
        ok = r["stall_p99"] <= GOAL_US and r["idle_p99"] <= GOAL_US and r["stall_idle"] <= NOISE
        print(f"  {name}: {'met' if ok else 'NOT met'}")
    print("connection opened during the stall:")
    for name in ("vmm", "qemu"):
        n = notes[name]
        greet = "greeting sent" if n["late_greeting"] else "no greeting"
        if n["late_negotiated"]:
            late = n["late"]
            print(f"  {name}: {greet}; qmp_capabilities answered in {n['late_neg_ms']:.2f} ms; "
                  f"{len(late)} exec-oob p50 {benchlib.percentile(late, 0.5) / 1000:.1f} us, "
                  f"p99 {benchlib.percentile(late, 0.99) / 1000:.1f} us")
        else:
            print(f"  {name}: {greet}; qmp_capabilities not answered within {QUIET:.0f} s "
                  f"(answered after the release), so no OOB on it during the stall")


if __name__ == "__main__":
    main()
