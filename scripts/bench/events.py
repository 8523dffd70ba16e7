# SPDX-License-Identifier: Apache-2.0
"""Event benchmark (run by scripts/bench-events.sh): BLOCK_IO_ERROR delivery under vmm and
QEMU's microvm, both running the probe guest's io-loop on a disk whose writes all fail.

The guest (probe.test=idle,io-loop,idle,io-loop,idle probe.count=1 probe.loops=ERRORS) idles
until the power button, then writes one sector ERRORS times (each write fails, so no flush or
read follows; each failure prints one line on the serial port, which goes to a file), then
idles again; a second power button runs a second batch. The failing writes come from vmm's
`--disk ...,werror=report,rerror=report,inject.0.operation=write,inject.0.errno=eio` and from
QEMU's blkdebug driver (`[inject-error] event = "pwritev" errno = "5"` under a raw format node,
virtio-blk-device with werror=report,rerror=report). Every failure emits one BLOCK_IO_ERROR.

Clients: vmm's use an explicit connection (disconnect-default-signals, qmp_capabilities with
explicit-handles, `{"connect": "BLOCK_IO_ERROR", "owner": {"__handle__": "Blockdev", "data":
"drive0"}}`), because vmm rate-limits the QEMU-shaped broadcast (1/s per device, as QEMU
9.2+); QEMU 7.2's clients get the broadcast event, which it does not rate-limit. Each client
has its own socket (QEMU serves one client per -qmp socket). The first client also sends the
commands (query-blockstats, system_powerdown), so the 1-client batch has exactly one receiver.

- batch 1, one client reading as fast as it can: latency of each event = the client's
  time.time() right after the recv() that returned its line, minus the event's own
  `timestamp` (both VMMs take it on the thread that raises the error, from the host's realtime
  clock); p50/p99; and events/s delivered;
- batch 2, CLIENTS clients connected and reading (one selectors thread): events/s delivered
  to all of them together, and the latency p99 over every delivery;
- lost = emissions (the guest's failed writes: the query-blockstats failed_wr_operations delta
  of the batch) minus the events a client received, per client; printed as the sum over the
  clients of the batch. A batch ends when every client has ERRORS events, or when nothing
  arrives for QUIET_S seconds after the guest has finished the batch.

The guest paces the errors (its serial line per failure costs two port exits per character),
so events/s is bounded by the source rate, which is printed too: a VMM that keeps up delivers
at the source rate, times the number of clients.

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
CONNECT = (b'{"connect": "BLOCK_IO_ERROR", "owner": {"__handle__": "Blockdev", "data": "'
           + DEVICE.encode() + b'"}, "id": 1}\n')
VMM_NEGOTIATION = (
    b'{"execute": "disconnect-default-signals"}\n',
    b'{"execute": "qmp_capabilities", "arguments": {"enable": ["explicit-handles"]}}\n',
    CONNECT,
)
BLKDEBUG_RULES = '[inject-error]\nevent = "pwritev"\nerrno = "5"\n'
SECONDS = re.compile(rb'"seconds": *(\d+)')
MICROSECONDS = re.compile(rb'"microseconds": *(\d+)')


def rows(clients: int) -> list[tuple[str, str, str]]:
    """The table's rows (label, key, better) for `clients` clients in batch 2."""
    return [
        ("latency p50, 1 client (us)", "p50_us", "lower"),
        ("latency p99, 1 client (us)", "p99_us", "lower"),
        (f"latency p50, {clients} clients (us)", "many_p50_us", "lower"),
        (f"latency p99, {clients} clients (us)", "many_p99_us", "lower"),
        ("events/s, 1 client", "one_eps", "higher"),
        (f"events/s, {clients} clients (sum)", "many_eps", "higher"),
        ("guest's failed writes/s (source)", "source_eps", "same"),
        ("lost, 1 client", "one_lost", "lower"),
        (f"lost, {clients} clients (sum)", "many_lost", "lower"),
    ]


class Receiver(benchlib.QmpClient):
    """A negotiated QMP client that counts BLOCK_IO_ERROR lines (broadcast events or signals)
    as they arrive, with each one's latency, and keeps command replies for `execute`."""

    def __init__(self, path: str, negotiation: Sequence[bytes]) -> None:
        super().__init__(path, negotiation)
        self.replies: list[bytes] = []
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


def failed_writes(c: Receiver) -> int:
    """The disk's failed_wr_operations from query-blockstats (the device is a plain name, or
    a canonical handle {"__handle__": "Blockdev", "data": NAME} with explicit handles)."""
    for entry in c.execute("query-blockstats")["return"]:
        device = entry.get("device")
        if isinstance(device, dict):
            device = device.get("data")
        if device == DEVICE:
            return int(entry["stats"]["failed_wr_operations"])
    raise SystemExit(f"query-blockstats has no {DEVICE}")


def commands(vmm: str, kernel: str, image: str, errors: int, tmp: str
             ) -> dict[str, Callable[[str, Sequence[str]], list[str]]]:
    """Per VMM, a function (serial file, QMP socket paths) -> its command line."""
    cmdline = (f"probe.test=idle,io-loop,idle,io-loop,idle probe.count=1 "
               f"probe.loops={errors}")
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


def batch(clients: Sequence[Receiver], errors: int, proc: subprocess.Popen, serial: str,
          idles: int) -> dict[str, float]:
    """Presses the power button (the guest leaves its idle test and writes `errors` failing
    sectors), receives on every client until each has `errors` events or the VMM has been
    quiet for QUIET_S seconds after the guest's idle line number `idles`, and returns the
    batch's figures: emissions, events per client, latencies, rates."""
    control = clients[0]
    before = failed_writes(control)
    for c in clients:
        c.reset()
    control.execute("system_powerdown")
    sel = selectors.DefaultSelector()
    for c in clients:
        sel.register(c.s, selectors.EVENT_READ, c)
    last_data = time.monotonic()
    deadline = time.monotonic() + 60 + errors * 0.05
    try:
        while not all(c.events >= errors for c in clients):
            ready = sel.select(0.2)
            for key, _ in ready:
                key.data.pump()
            now = time.monotonic()
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
    emissions = failed_writes(control) - before
    got = [c for c in clients if c.events]
    latencies = [v for c in clients for v in c.latencies_us]
    if not got:
        raise SystemExit(f"{proc.args[0]}: no BLOCK_IO_ERROR received ({emissions} emitted)")
    first = min(c.first_ts for c in got)
    span = max(c.last_recv for c in got) - first
    source_span = max(c.last_ts for c in got) - first
    return {
        "emissions": emissions,
        "lost": sum(emissions - c.events for c in clients),
        "lost_each": [emissions - c.events for c in clients],
        "p50_us": benchlib.percentile(latencies, 0.5),
        "p99_us": benchlib.percentile(latencies, 0.99),
        "max_us": max(latencies),
        "eps": sum(c.events for c in clients) / span if span > 0 else float("nan"),
        "source_eps": (emissions - 1) / source_span if source_span > 0 else float("nan"),
    }


def measure(name: str, argv_fn: Callable[[str, Sequence[str]], list[str]], tmp: str,
            errors: int, nclients: int) -> tuple[dict[str, float], dict, dict]:
    """Both batches on one VMM: (the figures by key of `rows`, batch 1, batch 2)."""
    serial = os.path.join(tmp, f"{name}-serial.txt")
    socks = [os.path.join(tmp, f"{name}-{i}.sock") for i in range(nclients)]
    proc = benchlib.start_with_sockets(argv_fn(serial, socks), socks)
    negotiation = VMM_NEGOTIATION if name == "vmm" else benchlib.NEGOTIATE
    clients: list[Receiver] = []
    try:
        if not benchlib.wait_until(lambda: benchlib.file_count(serial, "PROBE idle"), 30, proc):
            raise SystemExit(f"{name}: the guest did not reach 'PROBE idle'")
        clients.append(Receiver(socks[0], negotiation))
        one = batch(clients, errors, proc, serial, 2)
        clients += [Receiver(s, negotiation) for s in socks[1:]]
        many = batch(clients, errors, proc, serial, 3)
    finally:
        for c in clients:
            c.s.close()
        benchlib.stop(proc)
    for b in (one, many):
        if b["emissions"] != errors:
            print(f"  note: {name} emitted {b['emissions']} errors in a batch, not {errors}")
    figures = {
        "p50_us": one["p50_us"], "p99_us": one["p99_us"],
        "many_p50_us": many["p50_us"], "many_p99_us": many["p99_us"],
        "one_eps": one["eps"], "many_eps": many["eps"], "source_eps": one["source_eps"],
        "one_lost": one["lost"], "many_lost": many["lost"],
    }
    return figures, one, many


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

    results, batches = {}, {}
    tmp = tempfile.mkdtemp(prefix="bench-events-")
    try:
        for name, argv_fn in commands(a.vmm, a.kernel, a.image, a.errors, tmp).items():
            results[name], *batches[name] = measure(name, argv_fn, tmp, a.errors, a.clients)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"BLOCK_IO_ERROR benchmark: {a.errors} failing guest writes per batch, 1 client, "
          f"then {a.clients} clients (unix sockets; 1 vCPU, {MEM_MIB} MiB)")
    print("  vmm: explicit connections (disconnect-default-signals, connect BLOCK_IO_ERROR "
          f"on {DEVICE}); --disk inject.0 write EIO")
    print("  qemu: broadcast events (7.2 does not rate-limit them); blkdebug pwritev EIO")
    for name in ("vmm", "qemu"):
        one, many = batches[name]
        print(f"  {name}: emitted {one['emissions']:.0f} + {many['emissions']:.0f}; "
              f"latency max {one['max_us']:.0f} us (1 client), {many['max_us']:.0f} us "
              f"({a.clients}); lost per client {one['lost_each']} / {many['lost_each']}")
    benchlib.print_rows(results["vmm"], results["qemu"], rows(a.clients), label_width=36)
    print("latency = client receive time (time.time() after recv) - the event's timestamp; "
          "ratio = vmm/QEMU")
    print("goal: p99 <= 1 ms (1000 us), zero lost")


if __name__ == "__main__":
    main()
