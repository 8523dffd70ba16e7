# SPDX-License-Identifier: Apache-2.0
"""The soak test (scripts/soak.sh MINUTES): the probe guest's io-loop (write, flush, read back
and verify, forever) on a disk with werror=rerror=report, while 8 QMP clients issue random
commands (queries in band and out of band, stop then cont, signal connect/disconnect, injected
faults and their removal, yank, blockdev-add/del of a scratch image), reconnecting every few
dozen requests, and one more client churns connections (greeting read or not, negotiated or
not). At the end the faults are gone, the guest's loop must run clean, the image must hold the
pattern of the guest's last iteration, every error the guest saw must be a failure the host
counted (never a verify mismatch, a timeout or a bad status), vmm's descriptors and threads
must be back to the baseline and its RSS within RSS_SLACK_KIB of it, and nothing may be on its
stderr; then the guest is powered off and vmm must exit 0. Prints a short report; exits 1 on a
failed check.
"""

import argparse
import ctypes
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "qmp"))
from procstat import Usage, thread_names  # noqa: E402

HANG = 30.0  # seconds any single wait may take before the soak fails as hung
SECTORS = 64  # the io-loop's sectors (32 KiB), from LBA 0
SEED = 1
# What vmm's resident memory may grow by over the soak, beyond the warmed-up baseline:
# allocator caches kept by the threads that came and went (qmp-job workers, request threads).
RSS_SLACK_KIB = 16 << 10
CLIENTS = 8
DISK = "drive0"
NODE = "disk0"
BLOCKDEV = {"__handle__": "Blockdev", "data": DISK}
MACHINE = {"__handle__": "Machine", "data": "/machine"}
# Request threads of the disk's queue (devices/src/virtio/block/worker.rs): started on demand
# (an injection rule moves requests off the io_uring) and kept until the device is reset, at
# most MAX_REQUEST_THREADS working ones plus MAX_STUCK_THREADS more started while others were
# in syscalls a yank abandoned; the other threads must be back to the baseline.
POOL_THREAD = re.compile(r"^blk-.*-r\d+$")
MAX_POOL_THREADS = 4 + 16
# The only stderr line a healthy run may print: a host without io_uring.
ALLOWED_STDERR = re.compile(r"^vmm: io_uring is not available here .*")


class SoakFailure(Exception):
    pass


class Client:
    """A QMP client over a Unix socket: requests with ids, timed replies, events skipped."""

    def __init__(self, path, stats, oob=False, explicit=False):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(HANG)
        self.sock.connect(path)
        self.buf = b""
        self.stats = stats
        self.oob = oob
        self.explicit = explicit
        self.next_id = 0
        greeting = self.recv()
        if "QMP" not in greeting:
            raise SoakFailure(f"no greeting: {greeting}")
        caps = [c for c, on in (("oob", oob), ("explicit-handles", explicit)) if on]
        r = self.request({"execute": "qmp_capabilities", "arguments": {"enable": caps}})
        if r.get("return") != {}:
            raise SoakFailure(f"negotiation failed: {r}")

    def close(self):
        self.sock.close()

    def recv(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise SoakFailure(f"vmm closed the connection (pending {self.buf[:200]!r})")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def request(self, msg, oob=False):
        """Sends `msg` (an execute, exec-oob, connect or disconnect) with a fresh id and
        returns its reply; the round trip is recorded."""
        self.next_id += 1
        rid = self.next_id
        msg = dict(msg, id=rid)
        t = time.monotonic()
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            m = self.recv()
            if "event" in m or "signal" in m:
                self.stats.add("events", 1)
                continue
            break
        self.stats.reply_time(time.monotonic() - t, oob)
        if m.get("id") != rid:
            raise SoakFailure(f"reply {m} for request {msg}")
        return m

    def execute(self, command, arguments=None, oob=False, expect_error=None):
        """Runs a command; an error reply fails the soak unless its desc starts with
        `expect_error`."""
        msg = {"exec-oob" if oob else "execute": command}
        if arguments is not None:
            msg["arguments"] = arguments
        r = self.request(msg, oob)
        if "error" in r:
            if expect_error is not None and r["error"]["desc"].startswith(expect_error):
                return None
            self.stats.unexpected(f"{command} {arguments}: {r['error']}")
            return None
        return r.get("return")


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}
        self.inband = []
        self.oob = []
        self.errors = []

    def add(self, key, n=1):
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + n

    def get(self, key):
        with self.lock:
            return self.counts.get(key, 0)

    def reply_time(self, seconds, oob):
        with self.lock:
            (self.oob if oob else self.inband).append(seconds)

    def unexpected(self, what):
        with self.lock:
            self.errors.append(what)


def pool_threads(pid) -> int:
    return sum(1 for n in thread_names(pid) if POOL_THREAD.match(n))


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))]


KINDS = ["status", "status-oob", "block", "blockstats", "kvm", "cpus", "misc", "yank-query",
         "stop-cont", "fault", "yank", "blockdev", "signal"]
WEIGHTS = [10, 5, 3, 3, 2, 2, 2, 2, 2, 2, 1, 1, 2]


class Worker(threading.Thread):
    """One of the soak's clients: random commands, a new connection every 20-200 requests."""

    def __init__(self, index, path, scratch, stats, stop, rng):
        super().__init__(name=f"soak-client-{index}", daemon=True)
        self.index = index
        self.path = path
        self.scratch = scratch
        self.stats = stats
        self.stop = stop
        self.rng = rng
        self.failure = None

    def run(self):
        try:
            while not self.stop.is_set():
                self.session()
        except Exception as e:  # reported by the main thread
            self.failure = e

    def session(self):
        rng = self.rng
        explicit = rng.random() < 0.5
        c = Client(self.path, self.stats, oob=rng.random() < 0.8, explicit=explicit)
        self.stats.add("reconnects")
        connections = []
        try:
            for _ in range(rng.randint(20, 200)):
                if self.stop.is_set():
                    break
                self.step(c, connections)
            if rng.random() < 0.2:
                # Hang up with a request in flight: vmm runs it and drops the reply.
                c.sock.sendall(b'{"execute": "query-block"}\n')
                self.stats.add("hung up with a request in flight")
        finally:
            c.close()

    def step(self, c, connections, choice=None):
        """One random command (or sequence: stop then cont, a fault then its removal), or
        the one of kind `choice`."""
        rng = self.rng
        if choice is None:
            choice = rng.choices(KINDS, weights=WEIGHTS)[0]
        s = self.stats
        if choice == "status":
            c.execute("query-status")
        elif choice == "status-oob":
            c.execute("query-status", oob=c.oob)
        elif choice == "block":
            c.execute("query-block")
        elif choice == "blockstats":
            c.execute("query-blockstats")
        elif choice == "kvm":
            c.execute("query-kvm")
        elif choice == "cpus":
            c.execute("query-cpus-fast")
        elif choice == "misc":
            rng.choice([lambda: c.execute("query-name"), lambda: c.execute("query-version"),
                        lambda: c.execute("query-blockdev-inject-errors", {"device": DISK}),
                        lambda: c.execute("human-monitor-command",
                                          {"command-line": "info status"})])()
        elif choice == "yank-query":
            c.execute("query-yank", oob=c.oob)
        elif choice == "stop-cont":
            c.execute("stop")
            time.sleep(rng.uniform(0, 0.1))
            c.execute("cont")
            s.add("stops")
        elif choice == "fault":
            once = rng.random() < 0.5
            args = {"device": DISK, "operation": rng.choice(["write", "read", "flush"]),
                    "errno": "eio"}
            if once:
                args["once"] = True
            r = c.execute("blockdev-inject-error", args)
            if r is not None:
                s.add("faults")
                time.sleep(rng.uniform(0, 0.2))
                # A once rule that fired is gone already.
                c.execute("blockdev-inject-error-remove", {"device": DISK, "id": r["id"]},
                          expect_error="No injection rule" if once else None)
        elif choice == "yank":
            c.execute("yank", {"instances": [{"type": "block-node", "node-name": NODE}]},
                      oob=c.oob)
            s.add("yanks")
        elif choice == "blockdev":
            f, r = f"scratch{self.index}f", f"scratch{self.index}r"
            c.execute("blockdev-add", {"driver": "file", "node-name": f,
                                       "filename": str(self.scratch)})
            c.execute("blockdev-add", {"driver": "raw", "node-name": r, "file": f})
            c.execute("blockdev-del", {"node-name": r})
            c.execute("blockdev-del", {"node-name": f})
            s.add("blockdev add/del")
        elif choice == "signal" and c.explicit:
            if connections and rng.random() < 0.5:
                conn, owner = connections.pop(rng.randrange(len(connections)))
                r = c.request({"disconnect": conn, "owner": owner})
                if r.get("return") != {}:
                    s.unexpected(f"disconnect {conn}: {r}")
                s.add("signal disconnects")
            else:
                signal_name, owner = rng.choice([("BLOCK_IO_ERROR", BLOCKDEV),
                                                 ("STOP", MACHINE), ("RESUME", MACHINE)])
                r = c.request({"connect": signal_name, "owner": owner, "user_data": "soak"})
                if not isinstance(r.get("return"), int):
                    s.unexpected(f"connect {signal_name}: {r}")
                else:
                    connections.append((r["return"], owner))
                s.add("signal connects")
        s.add("commands")


class Churn(threading.Thread):
    """Connections that come and go: closed before the greeting is read, after it, or after
    negotiating and one query."""

    def __init__(self, path, stats, stop, rng):
        super().__init__(name="soak-churn", daemon=True)
        self.path, self.stats, self.stop, self.rng = path, stats, stop, rng
        self.failure = None

    def run(self):
        try:
            while not self.stop.is_set():
                kind = self.rng.randrange(3)
                if kind == 2:
                    c = Client(self.path, self.stats)
                    c.execute("query-status")
                    c.close()
                else:
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s.settimeout(HANG)
                    s.connect(self.path)
                    if kind == 1 and b"QMP" not in s.recv(4096):
                        raise SoakFailure("churn: no greeting")
                    s.close()
                self.stats.add("churn reconnects")
                time.sleep(self.rng.uniform(0, 0.02))
        except Exception as e:
            self.failure = e


def set_pdeathsig():
    """In the child before exec: die with the soak, even if it is killed with SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def wait_until(pred, what, timeout=HANG):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise SoakFailure(f"timed out waiting for {what}")
        time.sleep(0.05)


REPORT = re.compile(r"^PROBE io-loop iters=(\d+) errors=(\d+)$")
IO_ERROR = re.compile(r"^PROBE io-error iter=(\d+) op=(\w+) (.*)$")


def serial_lines(path):
    try:
        return path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []


def reports(lines):
    return [(int(m[1]), int(m[2])) for m in map(REPORT.match, lines) if m]


def check_image(image, iteration):
    """Every sector of the io-loop holds the pattern of `iteration`'s seed."""
    seed = (SEED + iteration) & 0xFF_FFFF
    data = image.read_bytes()
    for x in range(SECTORS):
        words = struct.unpack_from("<64Q", data, 512 * x)
        want = x ^ (seed << 40)
        if any(w != want for w in words):
            got = words[0] ^ x
            raise SoakFailure(f"image sector {x} holds {words[0]:#x} (seed {got >> 40:#x}, low "
                              f"bits {got & ((1 << 40) - 1):#x}), not iteration {iteration}'s "
                              f"seed {seed:#x}")


def fmt_us(s):
    return f"{s * 1e6:.0f} us" if s < 0.01 else f"{s * 1e3:.1f} ms"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vmm", required=True)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--minutes", type=float, required=True)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--workdir")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="vmm-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    image, sock = work / "disk.raw", work / "qmp.sock"
    serial, stderr = work / "serial.txt", work / "stderr.txt"
    for p in [image] + [work / f"scratch{i}.raw" for i in range(CLIENTS)]:
        with open(p, "wb") as f:
            f.truncate(1 << 20)
    argv = [args.vmm, "--kernel", args.kernel, "--memory", "64", "--cpus", "2",
            "--cmdline", f"probe.test=io-loop probe.count={SECTORS} probe.seed={SEED}",
            "--serial", f"file:{serial}",
            "--disk", f"path={image},node-name={NODE},werror=report,rerror=report",
            "--qmp", f"unix:{sock}", "--qmp-max-clients", "32"]
    print(f"soak: {args.minutes:g} min, {CLIENTS} clients + churn, seed {args.seed}, in {work}")
    t0 = time.monotonic()
    vmm = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=open(stderr, "wb"), preexec_fn=set_pdeathsig)
    stop = threading.Event()
    threads = []
    stats = Stats()
    failures = []
    try:
        wait_until(lambda: sock.exists() or vmm.poll() is not None, "the QMP socket")
        if vmm.poll() is not None:
            raise SoakFailure(f"vmm exited {vmm.returncode}: {stderr.read_text()}")
        wait_until(lambda: len(reports(serial_lines(serial))) >= 2, "the guest's io-loop")
        ctl = Client(str(sock), Stats(), oob=True)
        # Warm up: each kind of command once, so that what vmm keeps for good (allocator
        # arenas, the request pool an injection rule brings in) is in the baseline.
        warm = Worker(CLIENTS, str(sock), work / "scratch0.raw", Stats(), stop,
                      random.Random(args.seed))
        wc = Client(str(sock), warm.stats, oob=True, explicit=True)
        connections = []
        for _ in range(3):
            for kind in KINDS:
                warm.step(wc, connections, kind)
        wc.close()
        if warm.stats.errors:
            raise SoakFailure(f"warm-up: {warm.stats.errors}")
        time.sleep(1.0)
        base, base_pool = Usage(vmm.pid), pool_threads(vmm.pid)
        peak = [base.fds, base.threads, base.rss_kib]
        rngs = random.Random(args.seed)
        for i in range(CLIENTS):
            threads.append(Worker(i, str(sock), work / f"scratch{i}.raw", stats, stop,
                                  random.Random(rngs.random())))
        threads.append(Churn(str(sock), stats, stop, random.Random(rngs.random())))
        for t in threads:
            t.start()
        deadline = t0 + args.minutes * 60 - 15  # the rest is the clean tail and the checks
        while time.monotonic() < deadline:
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            if vmm.poll() is not None:
                raise SoakFailure(f"vmm exited {vmm.returncode} during the soak")
            if any(t.failure for t in threads):
                break
            u = Usage(vmm.pid)
            peak = [max(peak[0], u.fds), max(peak[1], u.threads), max(peak[2], u.rss_kib)]
        stop.set()
        for t in threads:
            t.join(HANG)
            if t.is_alive():
                raise SoakFailure(f"{t.name} did not finish")
            if t.failure:
                failures.append(f"{t.name}: {t.failure!r}")
        soak_secs = time.monotonic() - t0
        # The clean tail: no rule, no stop, no scratch node left; the loop must run clean.
        ctl.execute("blockdev-inject-error-remove", {"device": DISK})
        ctl.execute("cont")
        left = ctl.execute("query-blockdev-inject-errors", {"device": DISK})
        nodes = [n["node-name"] for n in ctl.execute("query-named-block-nodes") or []]
        if left or any(n.startswith("scratch") for n in nodes):
            failures.append(f"left behind: rules {left}, nodes {nodes}")
        status = ctl.execute("query-status")
        if not status or status["status"] != "running":
            failures.append(f"not running after the soak: {status}")
        seen = len(reports(serial_lines(serial)))
        wait_until(lambda: len(reports(serial_lines(serial))) >= seen + 2,
                   "the guest's loop after the soak")
        clean_from = reports(serial_lines(serial))[seen + 1][0]
        wait_until(lambda: len(reports(serial_lines(serial))) >= seen + 5, "clean iterations")
        blockstats = ctl.execute("query-blockstats")[0]["stats"]
        ctl.close()
        # Every soak client is gone: vmm is back to its baseline.
        end = [Usage(vmm.pid)]

        pool = [pool_threads(vmm.pid)]

        def settled():
            end[0], pool[0] = Usage(vmm.pid), pool_threads(vmm.pid)
            return (end[0].fds <= base.fds and pool[0] <= MAX_POOL_THREADS
                    and end[0].threads - pool[0] <= base.threads - base_pool
                    and end[0].rss_kib <= base.rss_kib + RSS_SLACK_KIB)
        try:
            wait_until(settled, "vmm's usage back within bounds")
        except SoakFailure:
            failures.append(f"usage at the end {end[0]} ({pool[0]} request threads) not within "
                            f"bounds of the baseline {base} ({base_pool} request threads): "
                            f"{thread_names(vmm.pid)}")
        # Power off: the guest finishes its iteration, reports and powers off; vmm exits 0.
        off = Client(str(sock), Stats())
        off.execute("system_powerdown")
        off.close()
        try:
            code = vmm.wait(HANG)
        except subprocess.TimeoutExpired:
            raise SoakFailure("vmm did not exit after system_powerdown") from None
        if code != 0:
            failures.append(f"vmm exited {code}")
        lines = serial_lines(serial)
        if "PROBE power-button" not in lines:
            failures.append("the guest did not see the power button")
        final_iters, final_errors = reports(lines)[-1]
        errors = [m for m in map(IO_ERROR.match, lines) if m]
        verify = [m[0] for m in errors if m[2] == "verify"]
        odd = [m[0] for m in errors if "status=ioerr" not in m[3].split()]
        late = [m[0] for m in errors if int(m[1]) >= clean_from]
        host_failed = sum(blockstats[k] for k in ("failed_rd_operations",
                                                  "failed_wr_operations",
                                                  "failed_flush_operations"))
        faults = stats.get("faults") + stats.get("yanks")
        if verify:
            failures.append(f"data verify failures (corruption): {verify[:5]}")
        if odd:
            failures.append(f"errors other than EIO: {odd[:5]}")
        if late:
            failures.append(f"errors after the faults were gone (from iteration "
                            f"{clean_from}): {late[:5]}")
        if final_errors > host_failed or (faults == 0 and final_errors):
            failures.append(f"the guest saw {final_errors} failed iterations, the host failed "
                            f"{host_failed} requests for {faults} faults")
        if final_iters <= clean_from:
            failures.append(f"no clean iterations ({final_iters} <= {clean_from})")
        try:
            check_image(image, final_iters - 1)
        except SoakFailure as e:
            failures.append(str(e))
        bad = [line for line in stderr.read_text(errors="replace").splitlines()
               if not ALLOWED_STDERR.match(line)]
        if bad:
            failures.append(f"vmm's stderr: {bad[:10]}")
        failures += stats.errors[:10]
        inband, oob = stats.inband, stats.oob
        both = inband + oob
        print(f"  duration        {soak_secs / 60:.1f} min of load, then a clean tail")
        print(f"  requests served {len(both)} ({len(inband)} in band, {len(oob)} out of band); "
              f"{stats.get('events')} events and signals received")
        print(f"  reconnects      {stats.get('reconnects')} soak clients, "
              f"{stats.get('churn reconnects')} churn; "
              f"{stats.get('hung up with a request in flight')} hung up mid-request")
        print(f"  commands        {stats.get('stops')} stop/cont, {stats.get('faults')} faults "
              f"injected and removed, {stats.get('yanks')} yanks, "
              f"{stats.get('blockdev add/del')} blockdev-add/del, "
              f"{stats.get('signal connects')} signal connects, "
              f"{stats.get('signal disconnects')} disconnects")
        print(f"  reply times     p50 {fmt_us(percentile(both, 50))}, "
              f"p99 {fmt_us(percentile(both, 99))}, max {fmt_us(max(both, default=0))} "
              f"(in band p50 {fmt_us(percentile(inband, 50))} p99 "
              f"{fmt_us(percentile(inband, 99))}; out of band p50 {fmt_us(percentile(oob, 50))}"
              f" p99 {fmt_us(percentile(oob, 99))})")
        print(f"  guest           {final_iters} io-loop iterations, {final_errors} with an "
              f"error ({host_failed} requests failed by the host), {len(verify)} verify "
              f"failures; clean from iteration {clean_from}; image = iteration "
              f"{final_iters - 1}'s pattern" + ("" if not any("image" in f for f in failures)
                                                else " NOT"))
        print(f"  vmm             start {base} ({base_pool} request threads); peak "
              f"fds={peak[0]} threads={peak[1]} rss={peak[2] / 1024:.1f} MiB; end {end[0]} "
              f"({pool[0]} request threads); exit {code}")
    except SoakFailure as e:
        failures.append(str(e))
    finally:
        stop.set()
        if vmm.poll() is None:
            vmm.kill()
            vmm.wait()
    if failures:
        print("soak: FAILED")
        for f in failures:
            print(f"  - {f}")
        print(f"  (files in {work})")
        return 1
    print("soak: passed")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    # SIGTERM ends the soak through its finally (vmm is killed); SIGKILL through PDEATHSIG.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
