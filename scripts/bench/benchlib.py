# SPDX-License-Identifier: Apache-2.0
"""Shared helpers of the side-by-side benchmarks (scripts/bench/*.py, run by scripts/bench-*.sh).

Each benchmark runs vmm and Debian's QEMU (-M microvm) on the same probe guest and prints both
figures and the vmm/QEMU ratios. What they have in common lives here:

- command lines: `vmm_argv` and `qemu_argv` boot the probe guest's kernel with a command line
  and an amount of RAM, plus whatever the benchmark adds (disks, QMP sockets, serial);
- processes: `spawn` starts a child and registers it, so that every child still running is
  killed when the benchmark exits (normally, on an exception, on Ctrl-C or on SIGTERM);
  `stop` ends one politely;
- waiting: `wait_for_line` (a line on a pipe), `wait_until` (a condition, with the process
  watched), `wait_for_paths` (QMP socket files), `file_count` (lines of a serial file);
- QMP: `start_with_sockets` (a VMM with fresh QMP socket files, waited for) and `QmpClient`
  (a raw, negotiated connection reading lines);
- accounting from /proc: `vm_rss_kib`, `guest_ram_rss_kib`, `thread_ticks`,
  `cpu_seconds` (vCPU threads versus the VMM's own);
- statistics: `percentile`, `medians`, and `collect` (rounds of samples, alternating between
  the VMMs or one VMM after the other, with optional warm-up runs);
- output: `print_columns` (one row per VMM, one column per figure, then the ratio row) and
  `print_rows` (one row per figure, the VMMs and their ratio as columns); `ratio` formats
  one vmm/QEMU ratio ("-" when QEMU's figure is 0).

Standard library only.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO, Any, TypeVar

T = TypeVar("T")

QEMU = "qemu-system-x86_64"
# QEMU's smallest machine, set up like vmm's: no option ROMs, COM1 on the ISA bus, no RTC, KVM,
# the host CPU (without arch-capabilities, which PVM hosts reject), no default devices.
QEMU_MICROVM = ["-M", "microvm,x-option-roms=off,isa-serial=on,rtc=off", "-enable-kvm",
                "-cpu", "host,-arch-capabilities"]

# ---------------------------------------------------------------------------------------------
# Command lines


def vmm_argv(vmm: str, kernel: str, cmdline: str, mem_mib: int | str,
             extra: Sequence[str] = ()) -> list[str]:
    """vmm booting `kernel` with `cmdline` and `mem_mib` MiB of RAM, then `extra` options."""
    return [vmm, "--kernel", kernel, "--cmdline", cmdline, "--memory", str(mem_mib), *extra]


def qemu_argv(kernel: str, cmdline: str, mem_mib: int | str, *, serial: str = "stdio",
              display: Sequence[str] = ("-display", "none"),
              extra: Sequence[str] = ()) -> list[str]:
    """QEMU's microvm booting `kernel` with `cmdline` and `mem_mib` MiB of RAM, without
    defaults or user configuration; the serial port goes to `serial`, `display` picks the
    display options and `extra` comes before -kernel (devices, drives, names)."""
    return [QEMU, *QEMU_MICROVM, "-m", str(mem_mib), "-nodefaults", "-no-user-config",
            *display, "-serial", serial, *extra, "-kernel", kernel, "-append", cmdline]


# ---------------------------------------------------------------------------------------------
# Child processes

_children: list[subprocess.Popen] = []


def _kill_children() -> None:
    """Kills and reaps every child `spawn` started that is still running."""
    for p in _children:
        if p.poll() is None:
            p.kill()
            p.wait()
    _children.clear()


def _on_sigterm(signum: int, _frame: Any) -> None:
    """SIGTERM exits through SystemExit, so that finally blocks and atexit run."""
    raise SystemExit(128 + signum)


atexit.register(_kill_children)
signal.signal(signal.SIGTERM, _on_sigterm)


def spawn(argv: Sequence[str], **popen: Any) -> subprocess.Popen:
    """Starts `argv` (subprocess.Popen keywords in `popen`) and registers it for clean-up at
    exit: Ctrl-C (KeyboardInterrupt), SIGTERM, an error or the normal end of the benchmark all
    kill what is left running."""
    # Reap what has already ended, so the list does not grow with the number of runs.
    _children[:] = [p for p in _children if p.poll() is None]
    p = subprocess.Popen(list(argv), **popen)
    _children.append(p)
    return p


def stop(proc: subprocess.Popen, timeout: float = 10) -> None:
    """Ends `proc` with SIGTERM, or SIGKILL when it has not exited after `timeout` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------------------------
# Waiting


def wait_for_line(stream: IO[bytes], prefix: str) -> bool:
    """Reads `stream` line by line until one starts with `prefix` (True) or it ends (False)."""
    for raw in stream:
        if raw.decode(errors="replace").startswith(prefix):
            return True
    return False


def wait_until(pred: Callable[[], T], timeout: float, proc: subprocess.Popen | None = None,
               interval: float = 0.01) -> T | None:
    """Polls `pred` every `interval` seconds until it returns something true (returned), the
    `timeout` passes or `proc` exits (None)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
            return None
        time.sleep(interval)


def wait_for_paths(proc: subprocess.Popen, paths: Iterable[str], timeout: float = 30) -> None:
    """Waits until every path in `paths` exists (a VMM's QMP sockets); ends the benchmark if
    `proc` exits first (with its stderr, when that is a pipe) or the time runs out."""
    paths = list(paths)
    deadline = time.monotonic() + timeout
    while not all(os.path.exists(p) for p in paths):
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise SystemExit(f"{proc.args[0]} exited: {err}")
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"{proc.args[0]}: QMP sockets never appeared")
        time.sleep(0.01)


def file_count(path: str, text: str) -> int:
    """How many times `text` occurs in the file at `path` (0 while it does not exist): a
    guest's serial output written to a file."""
    try:
        with open(path, errors="replace") as f:
            return f.read().count(text)
    except FileNotFoundError:
        return 0


# ---------------------------------------------------------------------------------------------
# QMP


def start_with_sockets(argv: Sequence[str], paths: Sequence[str]) -> subprocess.Popen:
    """Starts a VMM whose QMP sockets are `paths` (removing stale socket files first, stdout
    discarded, stderr on a pipe for `wait_for_paths`) and waits for the sockets."""
    for p in paths:
        if os.path.exists(p):
            os.unlink(p)
    proc = spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                 stderr=subprocess.PIPE)
    wait_for_paths(proc, paths)
    return proc


NEGOTIATE = (b'{"execute": "qmp_capabilities"}\n',)


class QmpClient:
    """A raw QMP connection over a unix socket: the greeting is read, then each line of
    `negotiation` is sent and must be answered with a "return" (by default plain
    qmp_capabilities; a vmm client may first disconnect the default signals, enable
    explicit handles and connect signals). `line` reads the next line."""

    def __init__(self, path: str, negotiation: Sequence[bytes] = NEGOTIATE,
                 timeout: float = 30) -> None:
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        # The socket file appears at bind(), a moment before listen(): refused until then.
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.s.connect(path)
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.002)
        self.buf = b""
        self.greeting = json.loads(self.line())
        for request in negotiation:
            self.s.sendall(request)
            reply = json.loads(self.line())
            if "return" not in reply:
                raise SystemExit(f"{path}: {request!r} got {reply}")

    def line(self) -> bytes:
        """The next line from the server, without its newline."""
        while b"\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def readable(self, wait: float) -> bool:
        """Whether a line from the server is (or within `wait` seconds becomes) available."""
        deadline = time.monotonic() + wait
        while b"\n" not in self.buf:
            left = max(0.0, deadline - time.monotonic())
            if not select.select([self.s], [], [], left)[0]:
                return False
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError("the VMM closed the QMP connection")
            self.buf += chunk
        return True

    def oob_round_trips(self, query: str, n: int, first_id: int, timeout: float) -> list[int]:
        """`n` exec-oob round trips of `query`, one at a time, in ns; each reply must carry
        its id and a return (events in between are skipped). RuntimeError otherwise, or
        when no reply comes within `timeout` seconds."""
        samples = []
        clock = time.perf_counter_ns
        for i in range(first_id, first_id + n):
            req = b'{"exec-oob": "%s", "id": %d}\n' % (query.encode(), i)
            t0 = clock()
            self.s.sendall(req)
            while True:
                if not self.readable(timeout):
                    raise RuntimeError(f"no reply to exec-oob {query} (id {i}) within "
                                       f"{timeout:.0f} s")
                line = self.line()
                if b'"event"' not in line:
                    break
            samples.append(clock() - t0)
            msg = json.loads(line)
            if msg.get("id") != i or "return" not in msg:
                raise RuntimeError(f"exec-oob {query} id {i}: unexpected reply {line!r}")
        return samples


# ---------------------------------------------------------------------------------------------
# Accounting from /proc


def vm_rss_kib(pid: int) -> int:
    """The process's resident set size (VmRSS), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def guest_ram_rss_kib(pid: int, mem_mib: int) -> int:
    """Rss of the mapping that holds guest RAM: the largest Rss among the mappings at least
    `mem_mib` MiB in size (guest RAM is one anonymous mapping of exactly that size), in KiB."""
    size_kib = mem_mib * 1024
    best = 0
    with open(f"/proc/{pid}/smaps") as f:
        cur_size = None
        for line in f:
            if line.startswith("Size:"):
                cur_size = int(line.split()[1])
            elif line.startswith("Rss:") and cur_size is not None and cur_size >= size_kib:
                best = max(best, int(line.split()[1]))
    return best


def thread_ticks(pid: int) -> dict[tuple[str, str], int]:
    """CPU ticks (user + system) of each thread of a running process, keyed by (tid, name)."""
    ticks = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        ticks[(tid, name)] = int(fields[11]) + int(fields[12])
    return ticks


def is_vcpu_thread(name: str) -> bool:
    """Whether a thread runs a vCPU: "vcpuN" in vmm, "CPU N/KVM" in QEMU (debug-threads=on)."""
    return name.startswith("vcpu") or name.startswith("CPU ")


def cpu_seconds(ticks: Mapping[tuple[str, str], int]) -> tuple[float, float]:
    """(vCPU threads, all other threads) CPU seconds from `thread_ticks` figures."""
    hz = os.sysconf("SC_CLK_TCK")
    vcpu = sum(t for (_, n), t in ticks.items() if is_vcpu_thread(n))
    own = sum(t for (_, n), t in ticks.items() if not is_vcpu_thread(n))
    return vcpu / hz, own / hz


# ---------------------------------------------------------------------------------------------
# Statistics


def percentile(values: Iterable[float], q: float) -> float:
    """The q-quantile (0 <= q <= 1) of `values` by the lower nearest rank: the sorted value at
    index floor(q * (n - 1))."""
    s = sorted(values)
    return s[int(q * (len(s) - 1))]


def medians(samples: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per key, the median over `samples` (dicts with the keys of the first one)."""
    return {k: statistics.median(s[k] for s in samples) for k in samples[0]}


def collect(runners: Mapping[str, Callable[[], T]], rounds: int, *, alternate: bool,
            warmup: int = 0) -> dict[str, list[T]]:
    """Runs each of `runners` (name -> one measurement) `rounds` times and returns the samples
    per name. With `alternate`, round i runs every VMM once (vmm, QEMU, vmm, QEMU, ...), which
    spreads slow phases of a noisy host over both; otherwise each VMM runs all its rounds in
    turn. `warmup` runs per VMM come first and are dropped (page cache, module loading)."""
    samples: dict[str, list[T]] = {name: [] for name in runners}
    if alternate:
        for name, fn in runners.items():
            for _ in range(warmup):
                fn()
        for _ in range(rounds):
            for name, fn in runners.items():
                samples[name].append(fn())
    else:
        for name, fn in runners.items():
            for _ in range(warmup):
                fn()
            samples[name] = [fn() for _ in range(rounds)]
    return samples


# ---------------------------------------------------------------------------------------------
# Output


def print_columns(results: Mapping[str, Mapping[str, float]],
                  columns: Sequence[tuple[str, str, int]], *, label_width: int,
                  ratio_label: str, value_format: str = ".2f", names: Sequence[str] = ("vmm", "qemu"),
                  file: IO[str] | None = None) -> None:
    """A side-by-side table with one row per VMM and one column per figure: `columns` holds
    (key in results[name], header, width); then a row `ratio_label` of vmm/QEMU ratios (.2f).
    `names` are the rows, the first two give the ratio."""
    out = file or sys.stdout
    print(f"{'':{label_width}}" + "".join(f"{h:>{w}}" for _, h, w in columns), file=out)
    for name in names:
        print(f"{name:{label_width}}"
              + "".join(f"{results[name][k]:{w}{value_format}}" for k, _, w in columns), file=out)
    a, b = results[names[0]], results[names[1]]
    print(f"{ratio_label:{label_width}}"
          + "".join(f"{ratio(a[k], b[k]):>{w}}" for k, _, w in columns), file=out)


def ratio(a: float, b: float) -> str:
    """a/b with two decimals; "-" when b is 0 (e.g. nothing lost on either side)."""
    return f"{a / b:.2f}" if b else "-"


def print_rows(vmm: Mapping[str, float], qemu: Mapping[str, float],
               rows: Sequence[tuple[str, str, str]], *, label_width: int = 34,
               file: IO[str] | None = None) -> None:
    """A side-by-side table with one row per figure: `rows` holds (label, key, which is better:
    "lower" or "higher"); the columns are vmm, QEMU, their ratio and that word."""
    out = file or sys.stdout
    print(f"{'':{label_width}}{'vmm':>12}{'QEMU':>12}{'vmm/QEMU':>10}   better", file=out)
    for label, key, better in rows:
        print(f"{label:{label_width}}{vmm[key]:12.1f}{qemu[key]:12.1f}"
              f"{ratio(vmm[key], qemu[key]):>10}   {better}", file=out)
