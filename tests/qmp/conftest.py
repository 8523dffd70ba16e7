# SPDX-License-Identifier: Apache-2.0
"""Fixtures for the real-client QMP tests: each test starts its own vmm running the probe
guest, with QMP sockets in a private temporary directory, and kills it on teardown.

Run: scripts/qmp-venv.sh && target/qmp-venv/bin/python -m pytest -q tests/qmp
The vmm binary is $VMM_BIN when that is set (used as it is); otherwise the session runs
`cargo build -p vmm` (quick when nothing changed, so a stale binary is never tested) and uses
the executable cargo reports, wherever CARGO_TARGET_DIR puts it. The probe guest comes from
scripts/probe-guest.sh.

Timeouts here are hang guards only; no test asserts on timing.
"""

import sys

sys.dont_write_bytecode = True  # keep __pycache__ out of the source tree

import asyncio  # noqa: E402
import functools
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KERNEL = ROOT / "target" / "probe-guest" / "bzImage"
HANG = 20.0  # seconds: generous guard against hangs


def build_vmm() -> Path:
    """Runs `cargo build -q -p vmm` (a no-op when it is up to date) and returns the path of the
    vmm executable from cargo's JSON messages, so CARGO_TARGET_DIR and the like are honoured.
    Compiler diagnostics go to stderr as cargo renders them."""
    r = subprocess.run(["cargo", "build", "-q", "-p", "vmm",
                        "--message-format=json-render-diagnostics"],
                       cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if r.returncode != 0:
        pytest.exit(f"cargo build -p vmm failed (exit {r.returncode})", returncode=2)
    exe = None
    for line in r.stdout.splitlines():
        msg = json.loads(line)
        target = msg.get("target", {})
        if (msg.get("reason") == "compiler-artifact" and target.get("name") == "vmm"
                and "bin" in target.get("kind", ()) and msg.get("executable")):
            exe = Path(msg["executable"])
    if exe is None:
        pytest.exit("cargo build -p vmm reported no vmm executable", returncode=2)
    return exe


@functools.cache
def vmm_bin() -> Path:
    """The vmm under test: $VMM_BIN if set, else the one `build_vmm` builds (once a session)."""
    env = os.environ.get("VMM_BIN")
    return Path(env) if env else build_vmm()


@pytest.fixture(scope="session", autouse=True)
def artifacts():
    """Builds what the tests need, once per session: vmm (unless $VMM_BIN names one) and the
    probe guest."""
    vmm = vmm_bin()
    if not vmm.exists():
        pytest.exit(f"VMM_BIN={vmm} does not exist", returncode=2)
    subprocess.run(["bash", str(ROOT / "scripts" / "probe-guest.sh")], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    assert KERNEL.exists(), KERNEL
    return vmm


def wait_until(pred, timeout=HANG, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(addr) -> bool:
    if isinstance(addr, str):
        with open("/proc/net/unix") as f:
            next(f)
            for line in f:
                parts = line.split()
                # Num RefCount Protocol Flags Type St Inode Path; __SO_ACCEPTCON = 0x10000
                if len(parts) >= 8 and parts[7] == addr and int(parts[3], 16) & 0x10000:
                    return True
        return False
    host, port = addr
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                        return True
        except FileNotFoundError:
            pass
    return False


class Vmm:
    """One vmm process. `qmp` is a list of --qmp values; `sock` the first Unix socket path;
    `nofile` (soft, hard) the open-file limit vmm starts with; `pass_fds` descriptors it inherits
    (same numbers); `memory` its RAM in MiB."""

    def __init__(self, tmp: Path, *, qmp=None, cpus=1, cmdline="probe.test=idle", name=None,
                 paused=False, no_reboot=False, extra=(), wait_socket=True, kernel=None,
                 nofile=None, memory=64, pass_fds=()):
        self.tmp = tmp
        self.serial_path = tmp / f"serial-{id(self)}.txt"
        self.stderr_path = tmp / f"stderr-{id(self)}.txt"
        if qmp is None:
            qmp = [f"unix:{tmp / 'qmp.sock'}"]
        self.qmp = list(qmp)
        self.argv = [str(vmm_bin()), "--kernel", str(kernel or KERNEL), "--cmdline", cmdline,
                     "--memory", str(memory), "--cpus", str(cpus),
                     "--serial", f"file:{self.serial_path}"]
        if name is not None:
            self.argv += ["--name", name]
        if paused:
            self.argv.append("-S")
        if no_reboot:
            self.argv.append("--no-reboot")
        for q in self.qmp:
            self.argv += ["--qmp", q]
        self.argv += list(extra)
        limit = None
        if nofile is not None:
            import resource

            def limit():
                resource.setrlimit(resource.RLIMIT_NOFILE, nofile)
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL,
                                     stderr=open(self.stderr_path, "wb"), preexec_fn=limit,
                                     pass_fds=tuple(pass_fds))
        self.pid = self.proc.pid
        if wait_socket:
            for q in self.qmp:
                self.wait_listening(q)

    @property
    def sock(self) -> str:
        return next(q[5:].split(",")[0] for q in self.qmp if q.startswith("unix:"))

    def address(self, i=0):
        """The i-th --qmp socket as qemu.qmp wants it: a path or a (host, port) tuple."""
        spec = self.qmp[i].split(",")[0]
        if spec.startswith("unix:"):
            return spec[5:]
        host, port = spec[4:].rsplit(":", 1)
        return (host or "127.0.0.1", int(port))

    def wait_listening(self, spec):
        """Waits until vmm listens on the socket, without connecting to it (a connection
        would release a server=on,wait=on guest): /proc/net/unix and /proc/net/tcp list
        listening sockets. A pre-existing (stale) socket file does not count."""
        addr = self.address(self.qmp.index(spec))

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"vmm exited {self.proc.returncode}: {self.stderr()}")
            return listening(addr)
        wait_until(ready, what=f"QMP socket {spec}")

    def serial(self) -> str:
        try:
            return self.serial_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_serial(self, text, count=1, timeout=HANG):
        wait_until(lambda: self.serial().count(text) >= count, timeout,
                   f"{count}x {text!r} on serial (got {self.serial()!r})")

    def wait_exit(self, timeout=HANG) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("vmm did not exit") from None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def vmm_factory(tmp_path):
    """Starts vmm processes for one test; all are killed at teardown."""
    started = []

    def start(**kw):
        v = Vmm(tmp_path, **kw)
        started.append(v)
        return v
    yield start
    for v in started:
        v.kill()


@pytest.fixture
def hangfs(tmp_path, vmm_factory):
    """A mounted hangfs (hangfs.py): a FUSE passthrough whose calls hang on demand. Yields the
    HangFs (`.path` mountpoint, `.backing` directory, `.hang()`, `.release()`, `.blocked()`).
    Teardown releases everything, unmounts (lazily when busy) and stops the daemon, bounded.
    It requests vmm_factory so that it is torn down first: vmm processes are killed only after
    the release, since a process killed inside a FUSE request that the daemon holds waits for
    the answer uninterruptibly."""
    from hangfs import HangFs
    fs = HangFs(tmp_path)
    try:
        yield fs
    finally:
        fs.close()


@pytest.fixture
def vm(vmm_factory):
    """A running probe guest (idle) with one QMP Unix socket and --name test-vm."""
    v = vmm_factory(name="test-vm")
    v.wait_serial("PROBE idle")
    return v


def arun(coro, timeout=HANG * 2):
    """Runs an async test body with a hang guard."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


class RawQmp:
    """A raw-socket QMP client: bytes in, one JSON message per line out."""

    def __init__(self, addr, timeout=HANG, greeting=True):
        if isinstance(addr, tuple):
            self.sock = socket.create_connection(addr, timeout=timeout)
        else:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(str(addr))
        self.buf = b""
        self.events = []
        self.greeting = self.recv() if greeting else None

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        elif isinstance(data, dict):
            data = json.dumps(data).encode() + b"\n"
        self.sock.sendall(data)

    def recv_line(self, timeout=None) -> bytes:
        if timeout is not None:
            self.sock.settimeout(timeout)
        try:
            while b"\n" not in self.buf:
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    raise EOFError(f"server closed the connection (pending {self.buf!r})")
                self.buf += chunk
        finally:
            if timeout is not None:
                self.sock.settimeout(HANG)
        line, self.buf = self.buf.split(b"\n", 1)
        return line + b"\n"

    def recv(self, timeout=None):
        line = self.recv_line(timeout)
        assert line.endswith(b"\r\n"), f"message not CRLF-terminated: {line!r}"
        return json.loads(line)

    def quiet(self, wait=0.3) -> bool:
        """True when nothing arrives within `wait` seconds (a bounded negative check)."""
        if self.buf:
            return False
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(1 << 16)
        except (socket.timeout, BlockingIOError):
            return True
        finally:
            self.sock.settimeout(HANG)
        self.buf += data
        return False

    def reply(self):
        """The next non-event message; events seen meanwhile go to self.events."""
        while True:
            m = self.recv()
            if "event" in m:
                self.events.append(m)
            else:
                return m

    def cmd(self, name, args=None, id=None, oob=False):
        msg = {"exec-oob" if oob else "execute": name}
        if args is not None:
            msg["arguments"] = args
        if id is not None:
            msg["id"] = id
        self.send(msg)
        return self.reply()

    def negotiate(self, oob=False):
        r = self.cmd("qmp_capabilities", {"enable": ["oob"]} if oob else None)
        assert r == {"return": {}}, r
        return self

    def event(self, name):
        """Waits for the named event (already received ones count first)."""
        for i, e in enumerate(self.events):
            if e["event"] == name:
                return self.events.pop(i)
        while True:
            m = self.recv()
            if m.get("event") == name:
                return m
            if "event" in m:
                self.events.append(m)
            else:
                raise AssertionError(f"unexpected message while waiting for {name}: {m}")


@pytest.fixture
def raw_factory():
    clients = []

    def connect(addr, **kw):
        c = RawQmp(addr, **kw)
        clients.append(c)
        return c
    yield connect
    for c in clients:
        c.close()


def check_event_shape(ev, name, data=None):
    assert ev["event"] == name, ev
    ts = ev["timestamp"]
    assert set(ts) == {"seconds", "microseconds"}, ev
    assert isinstance(ts["seconds"], int) and isinstance(ts["microseconds"], int)
    assert 0 <= ts["microseconds"] < 1_000_000
    # Host realtime: within a day of now (not a monotonic clock or zero).
    assert abs(ts["seconds"] - time.time()) < 86400, ev
    if data is None:
        assert "data" not in ev, f"event without members must omit data: {ev}"
    else:
        assert ev["data"] == data, ev
