# SPDX-License-Identifier: Apache-2.0
"""QMP benchmark (run by scripts/bench-qmp.sh): vmm and QEMU's microvm side by side, both
running the probe guest (probe.test=idle), driven by the same raw-socket client:

- latency: query-status round trips from one client, one request at a time (p50/p99/mean),
  and the same for query-kvm (vmm answers query-status, an allow-oob command, on its monitor
  thread; query-kvm goes through the main loop, like most commands);
- throughput with 8 pipelined requests in flight on one connection;
- throughput with 16 clients, each on its own socket (QEMU serves one client per -qmp socket,
  so both VMMs get 16 extra sockets), one request in flight per client;
- another client's query-status round trips while one client streams a 60 MiB request (how
  much one client's large message stalls the others: p99 and the worst round trip).

The client is one Python thread (selectors); it may be the bottleneck of the throughput
figures, identically for both VMMs. A VMM whose guest does not reach "PROBE idle" (checked once
with a serial file) is measured paused (-S) instead, and the header says so.

Usage: qmp.py VMM KERNEL REQUESTS
"""

from __future__ import annotations

import argparse
import os
import selectors
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence

import benchlib

MEM_MIB = 256
CLIENTS = 16
CMDLINE = "probe.test=idle"
QUERY = b'{"execute": "query-status"}\n'
KVM = b'{"execute": "query-kvm"}\n'
ROWS = [
    ("latency p50 (us)", "p50_us", "lower"),
    ("latency p99 (us)", "p99_us", "lower"),
    ("latency mean (us)", "mean_us", "lower"),
    ("query-kvm latency p50 (us)", "kvm_p50_us", "lower"),
    ("query-kvm latency p99 (us)", "kvm_p99_us", "lower"),
    ("throughput, 8 pipelined (req/s)", "pipelined_rps", "higher"),
    (f"throughput, {CLIENTS} clients (req/s)", "clients_rps", "higher"),
    ("query-kvm, 8 pipelined (req/s)", "kvm_pipelined_rps", "higher"),
    (f"query-kvm, {CLIENTS} clients (req/s)", "kvm_clients_rps", "higher"),
    ("during a 60 MiB request: p99 (us)", "big_p99_us", "lower"),
    ("during a 60 MiB request: worst (ms)", "big_max_ms", "lower"),
]
BIG_MIB = 60

# A VMM's command line from (serial, paused); see `commands`.
ArgvFn = Callable[[str, bool], list[str]]


def socket_paths(tmp: str, name: str) -> list[str]:
    """The QMP socket paths of one VMM: one for the single-client figures, CLIENTS more."""
    return [os.path.join(tmp, f"{name}-{i}.sock") for i in range(CLIENTS + 1)]


def commands(vmm: str, kernel: str, tmp: str) -> dict[str, ArgvFn]:
    """Per VMM, a function (serial, paused) -> its command line with every QMP socket."""
    def vmm_argv(serial: str, paused: bool) -> list[str]:
        argv = benchlib.vmm_argv(vmm, kernel, CMDLINE, MEM_MIB, ["--serial", serial])
        if paused:
            argv.append("-S")
        for s in socket_paths(tmp, "vmm"):
            argv += ["--qmp", f"unix:{s}"]
        return argv

    def qemu_argv(serial: str, paused: bool) -> list[str]:
        argv = benchlib.qemu_argv(kernel, CMDLINE, MEM_MIB, serial=serial)
        if paused:
            argv.append("-S")
        for s in socket_paths(tmp, "qemu"):
            argv += ["-qmp", f"unix:{s},server=on,wait=off"]
        return argv

    return {"vmm": vmm_argv, "qemu": qemu_argv}


def boots(argv_fn: ArgvFn, tmp: str, name: str) -> bool:
    """Whether the guest reaches 'PROBE idle' within 10 s (checked once with a serial file)."""
    serial = os.path.join(tmp, f"{name}-serial.txt")
    proc = benchlib.start_with_sockets(argv_fn(f"file:{serial}", False), socket_paths(tmp, name))
    ok = bool(benchlib.wait_until(lambda: benchlib.file_count(serial, "PROBE idle"), 10, proc,
                                  interval=0.02))
    benchlib.stop(proc)
    return ok


def latency(path: str, n: int, query: bytes = QUERY) -> dict[str, float]:
    """Round-trip times of `n` requests sent one at a time (after 500 warm-up ones), in µs."""
    c = benchlib.QmpClient(path)
    for _ in range(500):  # warm-up
        c.s.sendall(query)
        c.line()
    samples = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        c.s.sendall(query)
        line = c.line()
        samples.append(clock() - t0)
        if b'"return"' not in line:
            raise SystemExit(f"unexpected reply {line!r}")
    c.s.close()
    return {"p50_us": benchlib.percentile(samples, 0.5) / 1000,
            "p99_us": benchlib.percentile(samples, 0.99) / 1000,
            "mean_us": statistics.fmean(samples) / 1000}


def during_large_message(big_path: str, path: str) -> dict[str, float]:
    """query-status round trips on `path` while another client sends one BIG_MIB request on
    `big_path` (in 64 KiB writes, as fast as the server reads); in µs and ms."""
    import threading

    big = benchlib.QmpClient(big_path)
    c = benchlib.QmpClient(path)
    msg = (b'{"execute": "query-name", "arguments": {"x": "' + b"a" * (BIG_MIB << 20)
           + b'"}}\n')
    done = threading.Event()

    def send():
        view = memoryview(msg)
        for i in range(0, len(view), 65536):
            big.s.sendall(view[i:i + 65536])
        done.set()

    sender = threading.Thread(target=send, daemon=True)
    clock = time.perf_counter_ns
    samples = []
    sender.start()
    # Round trips for as long as the message is being sent, then until its reply is written.
    while not done.is_set() or not samples:
        t0 = clock()
        c.s.sendall(QUERY)
        c.line()
        samples.append(clock() - t0)
    sender.join()
    big.line()  # its error reply: the extra member is refused
    t0 = clock()
    c.s.sendall(QUERY)
    c.line()
    samples.append(clock() - t0)
    big.s.close()
    c.s.close()
    return {"big_p99_us": benchlib.percentile(samples, 0.99) / 1000,
            "big_max_ms": max(samples) / 1e6}


def pipelined(path: str, n: int, depth: int = 8, query: bytes = QUERY) -> float:
    """Requests per second over one connection with `depth` requests in flight."""
    c = benchlib.QmpClient(path)
    c.s.settimeout(None)
    c.s.sendall(query * depth)
    sent, got = depth, 0
    buf = c.buf
    t0 = time.perf_counter()
    while got < n:
        chunk = c.s.recv(1 << 20)
        if not chunk:
            raise EOFError
        buf += chunk
        k = buf.count(b"\n")
        if k:
            buf = buf[buf.rfind(b"\n") + 1:]
            got += k
            more = min(k, n - sent)
            if more > 0:
                c.s.sendall(query * more)
                sent += more
    dt = time.perf_counter() - t0
    c.s.close()
    return n / dt


def many_clients(paths: Sequence[str], n: int, query: bytes = QUERY) -> float:
    """Requests per second from one client per path, each with one request in flight."""
    clients = [benchlib.QmpClient(p) for p in paths]
    sel = selectors.DefaultSelector()
    for c in clients:
        c.s.setblocking(False)
        sel.register(c.s, selectors.EVENT_READ, c)
    per = n // len(clients)
    left = {id(c): per for c in clients}
    done = 0
    t0 = time.perf_counter()
    for c in clients:
        c.s.send(query)
    while done < per * len(clients):
        for key, _ in sel.select():
            c = key.data
            chunk = c.s.recv(65536)
            if not chunk:
                raise EOFError
            c.buf += chunk
            k = c.buf.count(b"\n")
            if k:
                c.buf = c.buf[c.buf.rfind(b"\n") + 1:]
                done += k
                left[id(c)] -= k
                if left[id(c)] > 0:
                    c.s.send(query)
    dt = time.perf_counter() - t0
    for c in clients:
        c.s.close()
    return per * len(clients) / dt


def measure(name: str, argv_fn: ArgvFn, tmp: str, requests: int) -> tuple[str, dict[str, float]]:
    """Every figure of one VMM: (how the guest ran, the figures by key of ROWS)."""
    paused = not boots(argv_fn, tmp, name)
    mode = "paused (-S): the probe guest did not boot" if paused else \
        "running the probe guest (probe.test=idle)"
    paths = socket_paths(tmp, name)
    proc = benchlib.start_with_sockets(argv_fn("none" if name == "vmm" else "null", paused), paths)
    try:
        many = max(requests, 20000)
        kvm = latency(paths[0], requests, KVM)
        figures = {
            **latency(paths[0], requests),
            "kvm_p50_us": kvm["p50_us"], "kvm_p99_us": kvm["p99_us"],
            "pipelined_rps": pipelined(paths[0], many),
            "clients_rps": many_clients(paths[1:], many),
            "kvm_pipelined_rps": pipelined(paths[0], many, query=KVM),
            "kvm_clients_rps": many_clients(paths[1:], many, query=KVM),
            **during_large_message(paths[1], paths[2]),
        }
        if proc.poll() is not None:
            raise SystemExit(f"{name} died during the benchmark")
    finally:
        benchlib.stop(proc)
    return mode, figures


def main() -> None:
    """Parses the arguments, measures both VMMs and prints the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("vmm")
    ap.add_argument("kernel")
    ap.add_argument("requests", type=int)
    a = ap.parse_args()

    results, modes = {}, {}
    tmp = tempfile.mkdtemp(prefix="bench-qmp-")
    try:
        for name, argv_fn in commands(a.vmm, a.kernel, tmp).items():
            modes[name], results[name] = measure(name, argv_fn, tmp, a.requests)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"QMP benchmark, query-status unless marked query-kvm ({a.requests} latency samples; "
          f"unix sockets; 1 vCPU, {MEM_MIB} MiB)")
    for name in ("vmm", "qemu"):
        print(f"  {name}: {modes[name]}")
    benchlib.print_rows(results["vmm"], results["qemu"], ROWS)
    print("ratio = vmm/QEMU: below 1 means vmm is faster for latency; above 1 means vmm has "
          "more throughput")


if __name__ == "__main__":
    main()
