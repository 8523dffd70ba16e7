# SPDX-License-Identifier: Apache-2.0
"""Self-tests of hangfs.py (real hung storage) and two first uses of it.

* Passthrough: what goes through the mount lands in the backing directory and back.
* Hanging: a child process whose open, stat, read, write, fsync or close runs into a hung
  callback sits inside that syscall (blocked() counts it, /proc says it sleeps in a syscall)
  until release(), then completes with the right bytes; partial release; teardown with a
  caller still blocked.
* vmm: a second vmm whose disk is on hung storage is stuck in its setup, the first one's QMP
  still answers, and after the release the second one boots.
* QEMU 7.2 (documents the behaviour we compare against): while its main loop is blocked in
  open() for blockdev-add, does an `exec-oob` on a second, oob-negotiated QMP connection
  still get its answer?
"""

import os
import shutil
import subprocess
import sys
import time

import pytest

from conftest import HANG, RawQmp, listening, wait_until
from hangfs import OPS, HangFs, mount_entry

CONTENT = b"hung storage test data\n" * 100


def proc_state(pid) -> str:
    """The one-letter state of process `pid` (R, S, D, Z, ...) from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def proc_syscall(pid) -> str:
    """/proc/PID/syscall: 'NR args...' while blocked in a syscall, 'running' otherwise."""
    with open(f"/proc/{pid}/syscall") as f:
        return f.read().strip()


@pytest.fixture
def spawn(hangfs):
    """Starts child processes (python -c CODE, stdout piped); teardown releases the hangfs
    first, then reaps or kills them, bounded."""
    children = []

    def start(code):
        p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        children.append(p)
        return p
    yield start
    hangfs.release()
    for p in children:
        try:
            p.communicate(timeout=HANG)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate(timeout=HANG)


def finish(p) -> bytes:
    """Waits (bounded) for child `p` to exit 0 and returns its stdout."""
    out, err = p.communicate(timeout=HANG)
    assert p.returncode == 0, err.decode(errors="replace")
    return out


def test_passthrough(hangfs):
    """Files written in the backing directory read back through the mount and vice versa;
    stat, listing, truncate, fsync, fallocate and statfs pass through."""
    (hangfs.backing / "in.raw").write_bytes(CONTENT)
    mnt = hangfs.path
    assert sorted(os.listdir(mnt)) == ["in.raw"]
    assert (mnt / "in.raw").read_bytes() == CONTENT
    assert os.stat(mnt / "in.raw").st_size == len(CONTENT)

    fd = os.open(mnt / "out.raw", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        assert os.pwrite(fd, b"abcdef", 4096) == 6
        os.fdatasync(fd)
        os.fsync(fd)
        assert os.pread(fd, 6, 4096) == b"abcdef"
        os.ftruncate(fd, 1 << 20)
        os.posix_fallocate(fd, 0, 1 << 20)
        assert os.fstat(fd).st_size == 1 << 20
    finally:
        os.close(fd)
    back = (hangfs.backing / "out.raw").read_bytes()
    assert len(back) == 1 << 20 and back[4096:4102] == b"abcdef" and back[:4096] == bytes(4096)
    os.truncate(mnt / "out.raw", 10)
    assert os.path.getsize(hangfs.backing / "out.raw") == 10
    assert os.statvfs(mnt).f_bsize == os.statvfs(hangfs.backing).f_bsize
    os.unlink(mnt / "out.raw")
    assert not (hangfs.backing / "out.raw").exists()
    calls = hangfs.calls()
    for op in ("getattr", "readdir", "open", "create", "read", "write", "truncate", "flush",
               "fsync", "fallocate", "statfs", "unlink"):
        assert calls[op] > 0, (op, calls)
    assert hangfs.blocked() == 0 and hangfs.hung() == set()


# (case, op that hangs, child code, expected stdout, expected backing file after)
# The child prints its result; "f" is the file inside the mount, created in the backing
# directory beforehand with CONTENT.
CASES = [
    ("open", "open", "fd = os.open(f, os.O_RDONLY); out(os.read(fd, 1 << 20))", CONTENT, CONTENT),
    ("stat", "getattr", "out(str(os.stat(f).st_size).encode())", str(len(CONTENT)).encode(),
     CONTENT),
    ("read", "read", "fd = os.open(f, os.O_RDONLY); out(os.pread(fd, 1 << 20, 0))", CONTENT,
     CONTENT),
    ("write", "write", "fd = os.open(f, os.O_WRONLY); out(str(os.pwrite(fd, b'NEW', 5)).encode())",
     b"3", CONTENT[:5] + b"NEW" + CONTENT[8:]),
    ("fsync", "fsync", "fd = os.open(f, os.O_RDWR); os.pwrite(fd, b'SYNC', 0); os.fsync(fd); "
     "out(b'synced')", b"synced", b"SYNC" + CONTENT[4:]),
    ("fdatasync", "fsync", "fd = os.open(f, os.O_RDWR); os.pwrite(fd, b'DATA', 0); "
     "os.fdatasync(fd); out(b'synced')", b"synced", b"DATA" + CONTENT[4:]),
    ("close", "flush", "fd = os.open(f, os.O_RDWR); os.pwrite(fd, b'X', 0); os.close(fd); "
     "out(b'closed')", b"closed", b"X" + CONTENT[1:]),
]


@pytest.mark.parametrize("case,op,code,stdout,after", CASES, ids=[c[0] for c in CASES])
def test_syscall_blocks_until_release(hangfs, spawn, case, op, code, stdout, after):
    """With only `op` hung, a child's syscall sits in the kernel (asleep, in the syscall,
    counted by blocked()) and completes with the right bytes once released."""
    (hangfs.backing / "f.raw").write_bytes(CONTENT)
    hangfs.hang(op)
    assert hangfs.hung() == {op}
    p = spawn(f"import os, sys\nf = {str(hangfs.path / 'f.raw')!r}\n"
              f"out = sys.stdout.buffer.write\n{code}\n")
    waiters = hangfs.wait_blocked(1, op, pid=p.pid)
    assert waiters[0]["path"] == "/f.raw", waiters
    assert hangfs.blocked() == 1 and hangfs.blocked(op) == 1
    assert p.poll() is None
    # The daemon can read the request before its sender has been scheduled out: asleep
    # within moments, and inside the syscall.
    wait_until(lambda: proc_state(p.pid) in ("S", "D"), what="the child asleep")
    assert proc_syscall(p.pid) != "running"
    hangfs.release()
    assert finish(p) == stdout
    assert (hangfs.backing / "f.raw").read_bytes() == after
    assert hangfs.blocked() == 0


def test_hang_everything_and_count_several(hangfs, spawn):
    """hang() with no ops hangs every callback. Three children each open a file, say so,
    then wait for a line on stdin and read the file: all three reads are held at once
    (blocked() == 3); release() lets them finish. (Lookups are not used for the count: the
    kernel serialises lookups in one directory, see hangfs.py.)"""
    children = []
    for i in range(3):
        (hangfs.backing / f"f{i}.raw").write_bytes(CONTENT[:i + 1])
        p = subprocess.Popen(
            [sys.executable, "-c", f"import os, sys; fd = os.open({str(hangfs.path / f'f{i}.raw')!r},"
             " os.O_RDONLY); print('open', flush=True); sys.stdin.readline();"
             " print(len(os.pread(fd, 4096, 0)))"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        children.append(p)
    try:
        for p in children:
            assert p.stdout.readline() == b"open\n"
        hangfs.hang()
        assert hangfs.hung() == set(OPS)
        for p in children:
            p.stdin.write(b"go\n")
            p.stdin.flush()
        waiters = hangfs.wait_blocked(3, "read")
        assert sorted(w["path"] for w in waiters) == ["/f0.raw", "/f1.raw", "/f2.raw"]
        assert hangfs.blocked() == 3
        assert all(p.poll() is None for p in children)
        hangfs.release()
        assert [p.communicate(timeout=HANG)[0] for p in children] == [b"1\n", b"2\n", b"3\n"]
    finally:
        hangfs.release()
        for p in children:
            if p.poll() is None:
                p.kill()
            p.wait(HANG)


def test_partial_release(hangfs, spawn):
    """Hang write and fsync; releasing write lets the writer finish while the syncer stays
    blocked; releasing fsync frees it. (Two files: a write in flight holds the inode's lock,
    so an fsync of the same file would wait in the kernel, not in the callback.)"""
    for name in ("w.raw", "s.raw"):
        (hangfs.backing / name).write_bytes(CONTENT)
    w, s = str(hangfs.path / "w.raw"), str(hangfs.path / "s.raw")
    hangfs.hang(["write", "fsync"])
    writer = spawn(f"import os; fd = os.open({w!r}, os.O_WRONLY); print(os.pwrite(fd, b'W', 0))")
    syncer = spawn(f"import os; fd = os.open({s!r}, os.O_WRONLY); os.fsync(fd); print('ok')")
    hangfs.wait_blocked(1, "write", pid=writer.pid)
    hangfs.wait_blocked(1, "fsync", pid=syncer.pid)
    assert hangfs.blocked() == 2
    hangfs.release("write")
    assert hangfs.hung() == {"fsync"}
    assert finish(writer) == b"1\n"
    assert hangfs.blocked() == 1 and hangfs.blocked("fsync") == 1 and syncer.poll() is None
    hangfs.release("fsync")
    assert finish(syncer) == b"ok\n"


def test_unknown_op_is_refused(hangfs):
    """Op names are checked on the test's side."""
    with pytest.raises(ValueError, match="unknown hangfs ops"):
        hangfs.hang("lookup")
    assert hangfs.hung() == set()


def test_close_with_a_caller_still_blocked(tmp_path):
    """Closing a HangFs while a child is blocked in it releases the child, unmounts and stops
    the daemon within bounded time; the mountpoint is left an empty directory."""
    fs = HangFs(tmp_path, name="closing")
    try:
        (fs.backing / "f.raw").write_bytes(CONTENT)
        fs.hang("read")
        p = subprocess.Popen([sys.executable, "-c",
                              f"print(len(open({str(fs.path / 'f.raw')!r}, 'rb').read()))"],
                             stdout=subprocess.PIPE)
        fs.wait_blocked(1, "read", pid=p.pid)
        daemon = fs.proc
        t0 = time.monotonic()
        fs.close()
        assert time.monotonic() - t0 < HANG
        assert p.communicate(timeout=HANG)[0] == f"{len(CONTENT)}\n".encode()
        assert daemon.poll() is not None
        assert mount_entry(fs.path) is None and os.listdir(fs.path) == []
    finally:
        fs.close()


def test_vmm_stuck_in_setup_on_hung_disk(hangfs, vmm_factory, tmp_path):
    """A vmm with its disk on hangfs boots; with everything hung, its QMP still answers (an
    idle guest does no I/O). A second vmm whose disk is on the hung mount is stuck inside a
    syscall in its setup (hangfs holds a callback of its main thread, /proc/PID/syscall shows
    a syscall, no serial output); after the release it boots."""
    for name in ("disk.raw", "other.raw"):
        with open(hangfs.backing / name, "wb") as f:
            f.truncate(1 << 20)
    first = vmm_factory(extra=["--disk", f"path={hangfs.path / 'disk.raw'}"])
    first.wait_serial("PROBE idle")

    hangfs.hang()
    with RawQmp(first.sock) as c:
        c.negotiate()
        assert c.cmd("query-status")["return"]["status"] == "running"

    d2 = tmp_path / "second"
    d2.mkdir()
    second = vmm_factory(qmp=[f"unix:{d2 / 'qmp.sock'}"], wait_socket=False,
                         extra=["--disk", f"path={hangfs.path / 'other.raw'}"])
    waiters = hangfs.wait_blocked(1, pid=second.pid)
    assert any(w["tid"] == second.pid for w in waiters), waiters  # its main thread
    wait_until(lambda: proc_state(second.pid) in ("S", "D"), what="its main thread asleep")
    syscall = proc_syscall(second.pid)
    assert syscall != "running", syscall
    assert second.alive() and second.serial() == ""
    print(f"second vmm blocked in {waiters}, /proc/PID/syscall: {syscall}")

    hangfs.release()
    second.wait_serial("PROBE idle")
    wait_until(lambda: listening(str(d2 / "qmp.sock")), what="second vmm's QMP socket")
    with RawQmp(str(d2 / "qmp.sock")) as c:
        c.negotiate()
        assert c.cmd("query-status")["return"]["status"] == "running"


QEMU = shutil.which("qemu-system-x86_64")


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is missing (scripts/deps.sh "
                    "installs Debian's qemu-system-x86)")
def test_qemu_answers_oob_while_its_main_loop_is_blocked_in_open(hangfs, tmp_path):
    """Documents what QEMU (Debian's 7.2) does on hung storage, the behaviour vmm is compared
    with. `blockdev-add` of a file on the hung mount blocks QEMU's main loop inside openat().
    Meanwhile, on a second QMP connection negotiated with oob (before the hang):
      * `exec-oob` query-yank (allow-oob in 7.2) is answered at once, from the monitor's
        I/O thread (measured here: well under a millisecond a round trip);
      * an in-band command is not answered until the release;
    and a third connection made during the hang gets its greeting (the I/O thread sends it)
    but not the answer to qmp_capabilities (an in-band command), so a client that connects
    only once QEMU is stuck cannot use OOB at all. After the release everything completes.
    The measurements are printed (pytest -s)."""
    (hangfs.backing / "x.raw").write_bytes(bytes(1 << 20))
    socks = [str(tmp_path / f"q{i}.sock") for i in range(3)]
    argv = [QEMU, "-M", "none", "-S", "-display", "none", "-nodefaults"]
    for s in socks:
        argv += ["-qmp", f"unix:{s},server=on,wait=off"]
    qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "qemu.err", "wb"))
    clients = []
    try:
        wait_until(lambda: qemu.poll() is None and all(listening(s) for s in socks),
                   what="QEMU's QMP sockets")
        main = RawQmp(socks[0]).negotiate()
        oob = RawQmp(socks[1]).negotiate(oob=True)
        clients += [main, oob]
        schema = main.cmd("query-qmp-schema")["return"]
        yank = [e for e in schema if e.get("meta-type") == "command" and e["name"] == "query-yank"]
        assert yank and yank[0].get("allow-oob") is True, yank

        def oob_round_trips(n, first_id):
            times = []
            for i in range(n):
                t = time.monotonic()
                oob.send({"exec-oob": "query-yank", "id": first_id + i})
                r = oob.recv()
                times.append(time.monotonic() - t)
                assert r["id"] == first_id + i and isinstance(r["return"], list), r
            return sorted(times)

        idle = oob_round_trips(20, 100)

        hangfs.hang()
        t_add = time.monotonic()
        main.send({"execute": "blockdev-add", "id": "add",
                   "arguments": {"driver": "file", "node-name": "n0",
                                 "filename": str(hangfs.path / "x.raw")}})
        waiters = hangfs.wait_blocked(1, pid=qemu.pid)
        assert any(w["tid"] == qemu.pid for w in waiters), waiters  # the main thread
        wait_until(lambda: proc_state(qemu.pid) in ("S", "D"), what="QEMU's main thread asleep")
        syscall = proc_syscall(qemu.pid)
        assert syscall.split()[0] == "257", syscall  # openat

        hung = oob_round_trips(20, 200)
        assert hung[-1] < HANG
        oob.send({"execute": "query-status", "id": "inband"})
        assert oob.quiet(0.5), "in-band command answered while the main loop is blocked"
        late = RawQmp(socks[2])  # the greeting does come, from the I/O thread
        clients.append(late)
        assert "oob" in late.greeting["QMP"]["capabilities"]
        late.send({"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}, "id": "neg"})
        assert late.quiet(0.5), "qmp_capabilities answered while the main loop is blocked"
        assert main.quiet(0.1) and hangfs.blocked() >= 1 and proc_syscall(qemu.pid) == syscall

        hangfs.release()
        assert main.reply() == {"return": {}, "id": "add"}
        blocked_for = time.monotonic() - t_add
        assert oob.reply()["id"] == "inband"
        assert late.reply() == {"return": {}, "id": "neg"}
        late_yank = late.cmd("query-yank", id="late", oob=True)
        assert late_yank["id"] == "late", late_yank
        print(f"\nQEMU 7.2 on hung storage: main thread in {syscall.split()[:4]} "
              f"({waiters[0]['op']} {waiters[0]['path']}); blockdev-add answered "
              f"{blocked_for:.2f} s later, after the release\n"
              f"  exec-oob query-yank round trip, idle:    median {idle[10] * 1e3:.3f} ms, "
              f"max {idle[-1] * 1e3:.3f} ms\n"
              f"  exec-oob query-yank round trip, blocked: median {hung[10] * 1e3:.3f} ms, "
              f"max {hung[-1] * 1e3:.3f} ms\n"
              f"  in-band on the oob connection, and qmp_capabilities on a connection made "
              f"during the hang (its greeting does come): held until the release")
    finally:
        hangfs.release()
        for c in clients:
            c.close()
        qemu.kill()
        qemu.wait(HANG)
