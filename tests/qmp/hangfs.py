# SPDX-License-Identifier: Apache-2.0
"""hangfs: a FUSE passthrough filesystem whose calls can be made to hang, like a dead NFS server.

A test mounts it over a backing directory, creates images in the backing directory directly
(never through FUSE), points vmm (or QEMU) at the mountpoint and then calls `hang()`: from then
on every chosen FUSE callback (all of them by default, or a subset such as only `open` or only
`write`) blocks inside the callback until `release()`. The caller really sits inside its
syscall: the kernel waits for the FUSE answer in `request_wait_answer` (state S; D after a
signal, since a request already handed to the daemon can only be waited out), exactly as on
dead storage. `blocked()` / `waiters()` tell which callbacks are stuck, so a test waits for
"vmm is stuck" by polling instead of sleeping.

The filesystem runs in its own process (this file run as a script, with mfusepy over Debian's
libfuse3), so the test process never blocks on its own filesystem. Test and daemon talk over a
socketpair, one JSON object per line; nothing goes through files inside the mount. If the test
process dies, the daemon sees EOF on the control socket, releases everything, lazily unmounts
and exits.

Semantics worth knowing when choosing ops to hang:
  * a path lookup (open, stat) is `getattr` on each component (attribute and entry caching are
    off, so every lookup reaches the daemon); `open` is the open callback after the lookup;
  * lookups in one directory are serialised by the kernel (this libfuse 3.14 setup does not
    get parallel directory operations: the INIT reply lacks FUSE_PARALLEL_DIROPS), so while a
    lookup hangs, other lookups in that directory wait in the kernel (fuse_lock_inode) before
    reaching the daemon: they are stuck too but not counted by blocked(). Reads and writes of
    open files are not serialised that way;
  * files are opened with direct_io, so every read()/pread() and write()/pwrite() reaches the
    daemon (no page cache); `flush` is sent synchronously by close(), `release` afterwards and
    asynchronously (a hung release does not block close());
  * fsync and fdatasync are `fsync`; fallocate is passed through (FALLOC_FL_PUNCH_HOLE works
    when the backing filesystem supports it, else EOPNOTSUPP);
  * locks (fcntl/OFD, flock) are not implemented, so the kernel handles them locally.

Use: `with HangFs(tmp_path) as fs: ...` or the `hangfs` fixture in conftest.py. Run as a
script (`python hangfs.py serve ...`) only by `HangFs`.
"""

import ctypes
import functools
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

# Every operation the filesystem implements; hang(None) hangs all of them.
OPS = ("getattr", "readdir", "open", "create", "read", "write", "truncate", "flush", "fsync",
       "release", "statfs", "fallocate", "unlink", "utimens", "chmod")

START_TIMEOUT = 10.0  # seconds for the daemon to mount and answer INIT
CALL_TIMEOUT = 10.0   # seconds for one control request (the control thread never blocks)
STOP_TIMEOUT = 5.0    # seconds for each teardown step
MNT_DETACH = 2
MAX_THREADS = 64      # FUSE worker threads: at most this many callbacks block at once


def _unescape_mountinfo(field: str) -> str:
    """Undoes /proc/*/mountinfo's octal escapes (\\040 for a space and the like)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit() and i + 4 <= len(field):
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_entry(path) -> dict | None:
    """The /proc/self/mountinfo entry mounted at `path` (the last one, i.e. the visible one),
    as {"dev": "major:minor", "fstype": ...}, or None. Reading mountinfo never touches the
    filesystem, so this is safe while it hangs."""
    path = os.path.abspath(path)
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if _unescape_mountinfo(fields[4]) == path:
                sep = fields.index("-")
                found = {"dev": fields[2], "fstype": fields[sep + 1]}
    return found


def unmount(path, lazy=False) -> bool:
    """Unmounts `path` (MNT_DETACH when `lazy`); True on success. As root this is umount2(2)
    itself (no lookup beyond the mountpoint, nothing that could hang); otherwise fusermount3."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.umount2(os.fsencode(path), MNT_DETACH if lazy else 0) == 0
    argv = ["fusermount3", "-u", "-q"] + (["-z"] if lazy else []) + [str(path)]
    try:
        return subprocess.run(argv, timeout=STOP_TIMEOUT, stdin=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def tgid(tid: int) -> int | None:
    """The process (thread group) of thread `tid`, from /proc/TID/status; None when it is
    gone. FUSE reports the calling thread, so this maps a waiter to its process."""
    try:
        with open(f"/proc/{tid}/status") as f:
            for line in f:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class HangFs:
    """A mounted hangfs: `.path` is the mountpoint, `.backing` the backing directory (create
    images there, not through the mount). Control methods talk to the daemon process; every
    wait is bounded. Closing (or leaving the `with` block) releases everything, unmounts
    (lazily if the mount is busy) and stops the daemon."""

    def __init__(self, base, name="hangfs"):
        """Mounts a new hangfs: backing directory `base/<name>-backing`, mountpoint
        `base/<name>-mnt`, daemon log `base/<name>.log`. Raises when it does not come up
        within START_TIMEOUT."""
        base = Path(base)
        self.backing = base / f"{name}-backing"
        self.path = base / f"{name}-mnt"
        self.log_path = base / f"{name}.log"
        self.backing.mkdir(parents=True, exist_ok=True)
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._buf = b""
        self.proc = None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock = ours
        try:
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-B", os.path.abspath(__file__), "serve",
                     str(self.backing), str(self.path), str(theirs.fileno())],
                    pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                    stdout=log, stderr=log)
            theirs.close()
            hello = self._recv(START_TIMEOUT)
            if not hello.get("ready"):
                raise RuntimeError(f"hangfs did not start: {hello}")
            self.daemon_pid = hello["pid"]
            self.mount = mount_entry(self.path)
            if not self.mount or not self.mount["fstype"].startswith("fuse"):
                raise RuntimeError(f"hangfs: {self.path} is not a FUSE mount: {self.mount}")
        except BaseException as e:
            theirs.close()
            self.close()
            raise RuntimeError(f"hangfs did not start ({e!r}); log: {self.log()}") from e

    def log(self) -> str:
        """The daemon's stderr (errors, tracebacks)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _recv(self, timeout) -> dict:
        """One JSON line from the daemon, within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("hangfs daemon did not answer")
            self._sock.settimeout(left)
            chunk = self._sock.recv(65536)
            if not chunk:
                raise EOFError(f"hangfs daemon exited; log: {self.log()}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def _call(self, cmd, **args) -> dict:
        """Sends one control request and returns the daemon's answer."""
        with self._lock:
            self._sock.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
            reply = self._recv(CALL_TIMEOUT)
        if "error" in reply:
            raise RuntimeError(f"hangfs {cmd}: {reply['error']}")
        return reply

    @staticmethod
    def _ops(ops) -> list:
        """Normalises an ops argument: None is every op, a string is one op."""
        if ops is None:
            return list(OPS)
        ops = [ops] if isinstance(ops, str) else list(ops)
        unknown = [o for o in ops if o not in OPS]
        if unknown:
            raise ValueError(f"unknown hangfs ops {unknown} (known: {', '.join(OPS)})")
        return ops

    def hang(self, ops=None):
        """From now on the given callbacks (None: all of OPS; a name or a list of names) block
        until released. Adds to what already hangs."""
        self._call("hang", ops=self._ops(ops))

    def release(self, ops=None):
        """Stops hanging the given callbacks (None: all) and wakes the ones blocked in them."""
        self._call("release", ops=self._ops(ops))

    def fail(self, ops=None, errno=5):
        """From now on the given callbacks fail with `errno` (default EIO), as a failing disk
        under the host filesystem would; a hung callback still hangs first."""
        self._call("fail", ops=self._ops(ops), errno=errno)

    def heal(self, ops=None):
        """Stops failing the given callbacks (None: all)."""
        self._call("heal", ops=self._ops(ops))

    def hung(self) -> set:
        """The callbacks that currently hang."""
        return set(self._call("status")["hung"])

    def waiters(self) -> list:
        """The callbacks blocked right now: [{"op", "path", "tid"}] where tid is the calling
        thread (its process: `tgid(tid)`)."""
        return self._call("status")["waiters"]

    def blocked(self, ops=None) -> int:
        """How many callbacks are blocked right now (only those in `ops` when given)."""
        want = set(self._ops(ops))
        return sum(1 for w in self.waiters() if w["op"] in want)

    def calls(self) -> dict:
        """How many times each callback has been entered since the mount ({op: count})."""
        return self._call("status")["calls"]

    def wait_blocked(self, n=1, ops=None, pid=None, timeout=CALL_TIMEOUT * 2) -> list:
        """Waits until at least `n` callbacks (in `ops`, from process `pid` when given) are
        blocked; returns those waiters. Raises AssertionError after `timeout` seconds."""
        want = set(self._ops(ops))
        deadline = time.monotonic() + timeout
        while True:
            got = [w for w in self.waiters() if w["op"] in want and
                   (pid is None or tgid(w["tid"]) == pid)]
            if len(got) >= n:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"hangfs: wanted {n} blocked in {sorted(want)}"
                                     f"{f' from pid {pid}' if pid else ''}, have {got}")
            time.sleep(0.01)

    def close(self):
        """Releases everything, unmounts (lazily when busy) and stops the daemon, each step
        bounded; idempotent. After it the mountpoint is an empty directory, so removing the
        temporary directory does not traverse the filesystem."""
        if self.proc is None:
            return
        try:
            self._call("release", ops=list(OPS))
            # The woken callbacks answer the kernel before the daemon is told to go: one
            # still inside when the daemon exits would fail its caller (ECONNABORTED). A
            # callback returns just before libfuse sends its reply, hence the short grace.
            deadline = time.monotonic() + STOP_TIMEOUT
            while self._call("status")["active"] and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.05)
        except (OSError, EOFError, TimeoutError, RuntimeError, ValueError):
            pass
        if mount_entry(self.path) and not unmount(self.path):
            unmount(self.path, lazy=True)
        self._sock.close()  # the daemon exits on EOF too, unmounting lazily on its own
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            # Killing the daemon closes /dev/fuse: the kernel aborts the connection and every
            # request still pending fails (ENOTCONN) instead of waiting forever.
            self.proc.kill()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        if mount_entry(self.path):
            unmount(self.path, lazy=True)
        self.proc = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---- the daemon (this file run as `python hangfs.py serve BACKING MOUNTPOINT FD`) ----------

class Gate:
    """Decides which callbacks hang and keeps track of the ones blocked; shared by the FUSE
    worker threads and the control thread."""

    def __init__(self, caller=lambda: 0):
        """`caller()` returns the calling thread's id inside a FUSE callback."""
        self.caller = caller
        self.cond = threading.Condition()
        self.hung = set()
        self.failing = {}  # op -> errno
        self.waiters = {}  # id -> {"op", "path", "tid"}
        self.calls = dict.fromkeys(OPS, 0)
        self.next_id = 0
        self.active = 0  # callbacks between begin() and end(): entered, not yet returned

    def begin(self):
        """Called first in every callback (before `enter`)."""
        with self.cond:
            self.active += 1

    def end(self):
        """Called when a callback returns or raises."""
        with self.cond:
            self.active -= 1
            self.cond.notify_all()

    def idle(self, timeout) -> bool:
        """Waits until no callback is inside (at most `timeout` seconds)."""
        with self.cond:
            return self.cond.wait_for(lambda: self.active == 0, timeout)

    def enter(self, op, path):
        """Called at the top of every callback: blocks while `op` hangs, then raises the
        errno `op` fails with, if any."""
        with self.cond:
            self.calls[op] += 1
            if op in self.hung:
                self.next_id += 1
                key = self.next_id
                self.waiters[key] = {"op": op, "path": path, "tid": self.caller()}
                try:
                    while op in self.hung:
                        self.cond.wait()
                finally:
                    del self.waiters[key]
            errno = self.failing.get(op)
        if errno is not None:
            raise OSError(errno, os.strerror(errno))

    def fail(self, ops, errno):
        """Makes `ops` fail with `errno` from now on."""
        with self.cond:
            for op in ops:
                self.failing[op] = errno

    def heal(self, ops):
        """Stops failing `ops`."""
        with self.cond:
            for op in ops:
                self.failing.pop(op, None)

    def hang(self, ops):
        """Makes `ops` hang from now on."""
        with self.cond:
            self.hung.update(ops)

    def release(self, ops):
        """Stops hanging `ops` and wakes the callbacks blocked in them."""
        with self.cond:
            self.hung.difference_update(ops)
            self.cond.notify_all()

    def status(self) -> dict:
        """What hangs, who is blocked, and the call counts (for the control socket)."""
        with self.cond:
            return {"hung": sorted(self.hung), "waiters": list(self.waiters.values()),
                    "calls": dict(self.calls), "active": self.active}


def make_ops(backing: str, gate: Gate, on_init):
    """The mfusepy Operations for a passthrough over `backing`; each callback first passes
    `gate`. File handles are descriptors of the backing files."""
    import mfusepy

    def gated(op):
        """Decorates a callback so that it first passes the gate as `op`."""
        def wrap(fn):
            @functools.wraps(fn)  # mfusepy inspects create's signature
            def inner(self, path, *args):
                gate.begin()
                try:
                    gate.enter(op, path)
                    return fn(self, path, *args)
                finally:
                    gate.end()
            return inner
        return wrap

    def real(path):
        """The backing path of FUSE path `path` ("/a" is backing/a)."""
        return os.path.join(backing, path.lstrip("/"))

    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]

    class Passthrough(mfusepy.Operations):
        """Each method is the FUSE callback of that name, done on the backing file with the
        matching os call (errors propagate as OSError, which mfusepy turns into -errno)."""
        use_ns = True  # times in nanoseconds

        def init(self, path):
            """FUSE INIT: the mount is live; tell the test."""
            on_init()

        @gated("getattr")
        def getattr(self, path, fh=None):
            st = os.fstat(fh) if fh is not None else os.lstat(real(path))
            d = {k: getattr(st, k) for k in ("st_mode", "st_nlink", "st_uid", "st_gid",
                                              "st_size", "st_ino", "st_blocks", "st_blksize")}
            d.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
            return d

        @gated("readdir")
        def readdir(self, path, fh):
            return [".", ".."] + os.listdir(real(path))

        @gated("open")
        def open(self, path, flags):
            return os.open(real(path), flags & ~os.O_CREAT)

        @gated("create")
        def create(self, path, mode, flags=os.O_RDWR):
            return os.open(real(path), flags | os.O_CREAT, mode)

        @gated("read")
        def read(self, path, size, offset, fh):
            return os.pread(fh, size, offset)

        @gated("write")
        def write(self, path, data, offset, fh):
            return os.pwrite(fh, data, offset)

        @gated("truncate")
        def truncate(self, path, length, fh=None):
            if fh is not None:
                os.ftruncate(fh, length)
            else:
                os.truncate(real(path), length)
            return 0

        @gated("flush")
        def flush(self, path, fh):
            return 0

        @gated("fsync")
        def fsync(self, path, datasync, fh):
            (os.fdatasync if datasync else os.fsync)(fh)
            return 0

        @gated("release")
        def release(self, path, fh):
            os.close(fh)
            return 0

        @gated("statfs")
        def statfs(self, path):
            sv = os.statvfs(real(path))
            return {k: getattr(sv, k) for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree",
                                                 "f_bavail", "f_files", "f_ffree", "f_favail",
                                                 "f_flag", "f_namemax")}

        @gated("fallocate")
        def fallocate(self, path, mode, offset, size, fh):
            if libc.fallocate(fh, mode, offset, size) != 0:
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
            return 0

        @gated("unlink")
        def unlink(self, path):
            os.unlink(real(path))
            return 0

        @gated("utimens")
        def utimens(self, path, times=None):
            if times is None:
                os.utime(real(path))
            else:
                os.utime(real(path), ns=tuple(times))
            return 0

        @gated("chmod")
        def chmod(self, path, mode):
            os.chmod(real(path), mode)
            return 0

    return Passthrough()


def serve(backing: str, mountpoint: str, fd: int):
    """The daemon: mounts hangfs at `mountpoint` and serves control requests on socket `fd`
    until the filesystem is unmounted or the control socket closes."""
    os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")  # never libfuse 2, if installed
    import mfusepy

    ctl = socket.socket(fileno=fd)
    send_lock = threading.Lock()
    gate = Gate(lambda: mfusepy.fuse_get_context()[2])

    def send(msg):
        with send_lock:
            ctl.sendall(json.dumps(msg).encode() + b"\n")

    def control():
        """Serves requests; on EOF releases everything, unmounts lazily and exits."""
        buf = b""
        try:
            while True:
                chunk = ctl.recv(65536)
                if not chunk:
                    break
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    try:
                        req = json.loads(line)
                        cmd = req["cmd"]
                        if cmd == "hang":
                            gate.hang(req["ops"])
                            send({"ok": True})
                        elif cmd == "release":
                            gate.release(req["ops"])
                            send({"ok": True})
                        elif cmd == "fail":
                            gate.fail(req["ops"], int(req["errno"]))
                            send({"ok": True})
                        elif cmd == "heal":
                            gate.heal(req["ops"])
                            send({"ok": True})
                        elif cmd == "status":
                            send(gate.status())
                        else:
                            send({"error": f"unknown command {cmd!r}"})
                    except (ValueError, KeyError, TypeError) as e:
                        send({"error": repr(e)})
        except OSError:
            pass
        # The test's side is gone: the released callbacks answer first (as in HangFs.close).
        gate.release(OPS)
        gate.idle(STOP_TIMEOUT)
        time.sleep(0.05)
        unmount(mountpoint, lazy=True)
        os._exit(0)

    threading.Thread(target=control, daemon=True).start()
    ops = make_ops(backing, gate, lambda: send({"ready": True, "pid": os.getpid()}))
    # Multithreaded, so a blocked callback blocks only its caller; max_threads: libfuse 3.14
    # otherwise serves at most 10 requests at once, and an 11th caller would wait in the
    # kernel's queue without being counted by blocked(). (libfuse still logs "Ignoring invalid
    # max threads value 4294967295" for its unset default: harmless.) No caching: attribute,
    # entry and negative timeouts 0 and direct_io, so every call reaches the gate.
    try:
        mfusepy.FUSE(ops, mountpoint, foreground=True, nothreads=False, allow_other=True,
                     direct_io=True, attr_timeout=0, entry_timeout=0, negative_timeout=0,
                     max_threads=MAX_THREADS, fsname="hangfs", subtype="hangfs")
    except BaseException as e:
        print(f"hangfs: FUSE exited: {e!r}", file=sys.stderr, flush=True)
        os._exit(1)
    os._exit(0)


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] != "serve":
        sys.exit(f"usage: {sys.argv[0]} serve BACKING MOUNTPOINT CONTROL_FD (run by HangFs)")
    serve(sys.argv[2], sys.argv[3], int(sys.argv[4]))
