# SPDX-License-Identifier: Apache-2.0
"""Event benchmark (run by scripts/bench-events.sh): BLOCK_IO_ERROR delivery under vmm and
QEMU's microvm, both running the probe guest on a disk whose writes all fail.

The failing writes come from vmm's `--disk ...,werror=report,rerror=report,
inject.0.operation=write,inject.0.errno=eio` and from QEMU's blkdebug driver under a raw format
node (`[inject-error] event = "pwritev" iotype = "write" errno = "5"`, virtio-blk-device with
werror=report,rerror=report). Every failed request emits one BLOCK_IO_ERROR.

The guest runs TESTS: it idles until the power button (system_powerdown from the first
client), runs one batch, idles again, and so on:
- paced batches (probe.test=io-loop probe.count=1 probe.loops=ERRORS): ERRORS failing
  one-sector writes; no flush or read follows a failed write, and each failure prints one line
  on the serial port (a file), which paces the errors at ~150/s on PVM hosts (two port exits
  per character), so the clients are never behind: the latency is the delivery path alone;
- flood batches (probe.test=blk-bench probe.secs=FLOOD_SECS): the seq-write phase keeps four
  failing 1 MiB writes in flight for FLOOD_SECS seconds with no output per error (tens of
  thousands of errors per second); the read phases after it succeed. This is the sustained
  rate and what happens when a VMM, or its client, falls behind.

Order: paced and flood with one client, then the CLIENTS-1 others connect (a connected client
that does not read would still cost its VMM), paced and flood with CLIENTS clients.

Clients: vmm's use an explicit connection (disconnect-default-signals, qmp_capabilities with
explicit-handles, `{"connect": "BLOCK_IO_ERROR", "owner": {"__handle__": "Blockdev", "data":
"drive0"}}`), because vmm rate-limits the QEMU-shaped broadcast (1/s per device, as QEMU
9.2+); QEMU 7.2's clients get the broadcast event, which it does not rate-limit. Each client
has its own socket (QEMU serves one client per -qmp socket) and all are read by one selectors
thread, as fast as it can. The first client also sends the commands (query-blockstats,
system_powerdown), so the 1-client batches have exactly one receiver.

Figures per batch:
- latency of each event = the client's time.time() right after the recv() that returned its
  line, minus the event's own `timestamp` (both VMMs take it on the thread that raises the
  error, from the host's realtime clock); p50/p99 over every delivery;
- events/s = events received by all clients / (last receive - first event's timestamp); the
  source rate = emissions / the span of their timestamps;
- lost = emissions (the batch's delta of failed requests in query-blockstats) minus the
  events a client received, summed over the clients. A batch ends when every client has all
  the guest's errors (its own count, from the serial file), or when nothing arrives for
  QUIET_S seconds after the guest is idle again.

Usage: events.py VMM KERNEL IMAGE ERRORS CLIENTS
"""

from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence

import benchlib

MEM_MIB = 256
DEVICE = "drive0"
QUIET_S = 3.0
FLOOD_SECS = 1
# idle until each power button; io-loop = a paced batch, blk-bench = a flood (its seq-write
# phase fails; the read phases after it succeed).
TESTS = "idle,io-loop,idle,blk-bench,idle,io-loop,idle,blk-bench,idle"
CONNECT = (b'{"connect": "BLOCK_IO_ERROR", "owner": {"__handle__": "Blockdev", "data": "'
           + DEVICE.encode() + b'"}, "id": 1}\n')
VMM_NEGOTIATION = (
    b'{"execute": "disconnect-default-signals"}\n',
    b'{"execute": "qmp_capabilities", "arguments": {"enable": ["explicit-handles"]}}\n',
    CONNECT,
)
# iotype: without it, the rule (active from the first pwritev on) fails reads as well.
BLKDEBUG_RULES = '[inject-error]\nevent = "pwritev"\niotype = "write"\nerrno = "5"\n'
SECONDS = re.compile(rb'"seconds": *(\d+)')
MICROSECONDS = re.compile(rb'"microseconds": *(\d+)')


def paced_rows(clients: int) -> list[tuple[str, str, str]]:
    """Rows (label, key, better) of the paced table, `clients` clients in the second batch."""
    return [
        ("latency p50, 1 client (us)", "paced1.p50_us", "lower"),
        ("latency p99, 1 client (us)", "paced1.p99_us", "lower"),
        (f"latency p50, {clients} clients (us)", "pacedN.p50_us", "lower"),
        (f"latency p99, {clients} clients (us)", "pacedN.p99_us", "lower"),
        ("events/s, 1 client", "paced1.eps", "higher"),
        ("source: guest's failed writes/s", "paced1.source_eps", "(source)"),
        ("lost, 1 client", "paced1.lost", "lower"),
        (f"lost, {clients} clients (sum)", "pacedN.lost", "lower"),
    ]


def flood_rows(clients: int) -> list[tuple[str, str, str]]:
    """Rows (label, key, better) of the flood table."""
    return [
        ("events/s, 1 client", "flood1.eps", "higher"),
        (f"events/s, {clients} clients (sum)", "floodN.eps", "higher"),
        ("source: failed writes/s, 1 client", "flood1.source_eps", "(source)"),
        (f"source: failed writes/s, {clients} clients", "floodN.source_eps", "(source)"),
        ("latency p50, 1 client (us)", "flood1.p50_us", "lower"),
        ("latency p99, 1 client (us)", "flood1.p99_us", "lower"),
        (f"latency p99, {clients} clients (us)", "floodN.p99_us", "lower"),
        ("lost, 1 client", "flood1.lost", "lower"),
        (f"lost, {clients} clients (sum)", "floodN.lost", "lower"),
    ]


class Receiver(benchlib.QmpClient):
    """A negotiated QMP client that counts BLOCK_IO_ERROR lines (broadcast events or signals)
    as they arrive, with each one's latency, and keeps command replies for `execute`."""

    def __init__(self, path: str, negotiation: Sequence[bytes]) -> None:
        super().__init__(path, negotiation)
        self.replies: list[bytes] = []
        self.gone = False
        self.reset()

    def reset(self) -> None:
        """Starts a batch: no events, no latencies."""
        self.events = 0
        self.latencies_us: list[float] = []
        self.first_ts = float("inf")   # earliest event timestamp
        self.last_ts = 0.0             # latest event timestamp
        self.last_recv = 0.0           # receive time of the latest event

    def feed(self, data: bytes, now: float) -> None:
        """Takes bytes from the socket, read at `now` (time.time()), and handles each line."""
        self.buf += data
        if b"\n" not in self.buf:
            return
        *lines, self.buf = self.buf.split(b"\n")
        for line in lines:
            if b'"BLOCK_IO_ERROR"' in line:
                ts = int(SECONDS.search(line)[1]) + int(MICROSECONDS.search(line)[1]) / 1e6
                self.events += 1
                self.latencies_us.append((now - ts) * 1e6)
                self.first_ts = min(self.first_ts, ts)
                self.last_ts = max(self.last_ts, ts)
                self.last_recv = now
            elif b'"return"' in line or b'"error"' in line:
                self.replies.append(line)
            # other events (POWERDOWN, SHUTDOWN) are ignored

    def pump(self) -> None:
        """One recv() (blocking), fed with the time right after it returns."""
        data = self.s.recv(1 << 16)
        now = time.time()
        if not data:
            raise EOFError
        self.feed(data, now)

    def execute(self, command: str, **arguments: object) -> dict:
        """Runs one command and returns its reply; events read meanwhile are counted."""
        msg = {"execute": command, **({"arguments": arguments} if arguments else {})}
        self.s.sendall(json.dumps(msg).encode() + b"\n")
        self.feed(b"", time.time())
        while not self.replies:
            self.pump()
        reply = json.loads(self.replies.pop(0))
        if "return" not in reply:
            raise SystemExit(f"{command}: {reply}")
        return reply


def failed_requests(c: Receiver) -> int:
    """The disk's failed requests from query-blockstats: failed_wr_operations, plus the failed
    reads and flushes (0 here, counted in case a rule matches more than it should), each of
    which emitted one BLOCK_IO_ERROR. The device is a plain name, or a canonical handle
    {"__handle__": "Blockdev", "data": NAME} with explicit handles."""
    for entry in c.execute("query-blockstats")["return"]:
        device = entry.get("device")
        if isinstance(device, dict):
            device = device.get("data")
        if device == DEVICE:
            st = entry["stats"]
            return sum(int(st[k]) for k in ("failed_wr_operations", "failed_rd_operations",
                                            "failed_flush_operations"))
    raise SystemExit(f"query-blockstats has no {DEVICE}")


def commands(vmm: str, kernel: str, image: str, errors: int, tmp: str
             ) -> dict[str, Callable[[str, Sequence[str]], list[str]]]:
    """Per VMM, a function (serial file, QMP socket paths) -> its command line."""
    cmdline = (f"probe.test={TESTS} probe.count=1 probe.loops={errors} "
               f"probe.secs={FLOOD_SECS}")
    rules = os.path.join(tmp, "blkdebug.conf")
    with open(rules, "w") as f:
        f.write(BLKDEBUG_RULES)

    def vmm_argv(serial: str, socks: Sequence[str]) -> list[str]:
        disk = (f"path={image},id={DEVICE},werror=report,rerror=report,"
                "inject.0.operation=write,inject.0.errno=eio")
        argv = benchlib.vmm_argv(vmm, kernel, cmdline, MEM_MIB,
                                 ["--serial", f"file:{serial}", "--disk", disk])
        for s in socks:
            argv += ["--qmp", f"unix:{s}"]
        return argv

    def qemu_argv(serial: str, socks: Sequence[str]) -> list[str]:
        extra = ["-name", "events,debug-threads=on", "-global", "virtio-mmio.force-legacy=false",
                 "-drive", f"if=none,id={DEVICE},driver=raw,file.driver=blkdebug,"
                 f"file.config={rules},file.image.filename={image}",
                 "-device", f"virtio-blk-device,drive={DEVICE},werror=report,rerror=report"]
        for s in socks:
            extra += ["-qmp", f"unix:{s},server=on,wait=off"]
        return benchlib.qemu_argv(kernel, cmdline, MEM_MIB, serial=f"file:{serial}", extra=extra)

    return {"vmm": vmm_argv, "qemu": qemu_argv}


def guest_count(serial: str, pattern: str, k: int) -> int | None:
    """The `k`-th (1-based) integer captured by `pattern` in the serial file, or None while
    the guest has not printed it."""
    try:
        with open(serial, errors="replace") as f:
            found = re.findall(pattern, f.read())
    except FileNotFoundError:
        return None
    return int(found[k - 1]) if len(found) >= k else None


def batch(clients: Sequence[Receiver], proc: subprocess.Popen, serial: str,
          target: Callable[[], int | None], idles: int) -> dict:
    """Presses the power button (the guest leaves its idle test and runs the next one), then
    receives on every client until each has `target()` events (the guest's error count, None
    while unknown) or nothing has arrived for QUIET_S seconds after the guest's idle line
    number `idles`. Returns the batch's figures: emissions (query-blockstats delta), lost
    (sum over clients) and per client, latencies, delivered and source rates."""
    control = clients[0]
    before = failed_requests(control)
    for c in clients:
        c.reset()
    control.execute("system_powerdown")
    sel = selectors.DefaultSelector()
    for c in clients:
        sel.register(c.s, selectors.EVENT_READ, c)
    last_data = last_check = time.monotonic()
    deadline = last_data + 600
    want = target()
    try:
        while want is None or not all(c.gone or c.events >= want for c in clients):
            ready = sel.select(0.2)
            for key, _ in ready:
                c = key.data
                try:
                    c.pump()
                except (EOFError, ConnectionError):
                    c.gone = True  # the VMM disconnected it (e.g. it fell too far behind)
                    sel.unregister(c.s)
            now = time.monotonic()
            if want is None and now - last_check > 0.2:
                want, last_check = target(), now
            if ready:
                last_data = now
            elif now - last_data > QUIET_S and benchlib.file_count(serial, "PROBE idle") >= idles:
                break
            if now > deadline or proc.poll() is not None:
                raise SystemExit(f"{proc.args[0]}: batch did not finish "
                                 f"({[c.events for c in clients]} events)")
    finally:
        sel.close()
    if not benchlib.wait_until(lambda: benchlib.file_count(serial, "PROBE idle") >= idles,
                               30, proc):
        raise SystemExit(f"{proc.args[0]}: the guest did not finish the batch")
    emissions = failed_requests(control) - before if not control.gone else target()
    got = [c for c in clients if c.events]
    latencies = [v for c in clients for v in c.latencies_us]
    if not got:
        raise SystemExit(f"{proc.args[0]}: no BLOCK_IO_ERROR received ({emissions} emitted)")
    first = min(c.first_ts for c in got)
    span = max(c.last_recv for c in got) - first
    source_span = max(c.last_ts for c in got) - first
    return {
        "emissions": emissions,
        "guest": target(),
        "lost": sum(emissions - c.events for c in clients),
        "lost_each": [emissions - c.events for c in clients],
        "gone": sum(c.gone for c in clients),
        "p50_us": benchlib.percentile(latencies, 0.5),
        "p99_us": benchlib.percentile(latencies, 0.99),
        "max_us": max(latencies),
        "eps": sum(c.events for c in clients) / span if span > 0 else float("nan"),
        "source_eps": (emissions - 1) / source_span if source_span > 0 else float("nan"),
    }


def measure(name: str, argv_fn: Callable[[str, Sequence[str]], list[str]], tmp: str,
            errors: int, nclients: int) -> dict[str, dict]:
    """The four batches on one VMM, by name: "paced1" and "pacedN" (io-loop, ERRORS errors,
    to 1 and to every client), "flood1" and "floodN" (blk-bench's failing seq-write phase)."""
    serial = os.path.join(tmp, f"{name}-serial.txt")
    socks = [os.path.join(tmp, f"{name}-{i}.sock") for i in range(nclients)]
    proc = benchlib.start_with_sockets(argv_fn(serial, socks), socks)
    negotiation = VMM_NEGOTIATION if name == "vmm" else benchlib.NEGOTIATE
    clients: list[Receiver] = []
    flood = r"test=seq-write bs=\d+ qd=\d+ ios=\d+ errors=(\d+)"
    out = {}
    try:
        if not benchlib.wait_until(lambda: benchlib.file_count(serial, "PROBE idle"), 30, proc):
            raise SystemExit(f"{name}: the guest did not reach 'PROBE idle'")
        clients.append(Receiver(socks[0], negotiation))
        # Batches with one client come before the others connect: a connected client that
        # does not read would still cost its VMM (and fill its buffers).
        out["paced1"] = batch(clients, proc, serial, lambda: errors, 2)
        out["flood1"] = batch(clients, proc, serial, lambda: guest_count(serial, flood, 1), 3)
        clients += [Receiver(s, negotiation) for s in socks[1:]]
        out["pacedN"] = batch(clients, proc, serial, lambda: errors, 4)
        out["floodN"] = batch(clients, proc, serial, lambda: guest_count(serial, flood, 2), 5)
    finally:
        for c in clients:
            c.s.close()
        benchlib.stop(proc)
    for key, b in out.items():
        if b["emissions"] != b["guest"]:
            print(f"  note: {name} {key}: {b['emissions']} failed requests in query-blockstats, "
                  f"the guest counted {b['guest']}")
    return out


def main() -> None:
    """Parses the arguments, measures both VMMs and prints the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("vmm")
    ap.add_argument("kernel")
    ap.add_argument("image")
    ap.add_argument("errors", type=int)
    ap.add_argument("clients", type=int)
    a = ap.parse_args()
    if a.errors < 2 or not 1 <= a.clients <= 64:
        raise SystemExit("ERRORS must be at least 2 and CLIENTS 1..64")

    batches = {}
    tmp = tempfile.mkdtemp(prefix="bench-events-")
    try:
        for name, argv_fn in commands(a.vmm, a.kernel, a.image, a.errors, tmp).items():
            batches[name] = measure(name, argv_fn, tmp, a.errors, a.clients)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    flat = {name: {f"{b}.{k}": v for b, fig in bs.items() for k, v in fig.items()
                   if isinstance(v, (int, float))} for name, bs in batches.items()}

    print(f"BLOCK_IO_ERROR benchmark: failing guest writes to 1 client, then {a.clients} "
          f"clients (unix sockets; 1 vCPU, {MEM_MIB} MiB)")
    print("  vmm: explicit connections (disconnect-default-signals, connect BLOCK_IO_ERROR "
          f"on {DEVICE}); --disk inject.0 write EIO")
    print("  qemu: broadcast events (7.2 does not rate-limit them); blkdebug pwritev EIO")
    for name, bs in batches.items():
        print(f"  {name}: emitted " + ", ".join(f"{b} {f['emissions']}" for b, f in bs.items())
              + "; lost per client " + ", ".join(
                  f"{b} {'all 0' if not any(f['lost_each']) else f['lost_each']}"
                  + (f" ({f['gone']} disconnected)" if f["gone"] else "")
                  for b, f in bs.items()))
    print(f"paced: probe io-loop, {a.errors} failing writes per batch, one serial line each")
    benchlib.print_rows(flat["vmm"], flat["qemu"], paced_rows(a.clients), label_width=40)
    print(f"flood: probe blk-bench seq-write, 1 MiB writes at depth 4 failing for {FLOOD_SECS} s")
    benchlib.print_rows(flat["vmm"], flat["qemu"], flood_rows(a.clients), label_width=40)
    print("latency = client receive time (time.time() after recv) - the event's timestamp; "
          "ratio = vmm/QEMU")
    print("goal: p99 <= 1 ms (1000 us), zero lost")


if __name__ == "__main__":
    main()
