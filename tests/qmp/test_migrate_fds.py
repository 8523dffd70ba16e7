# SPDX-License-Identifier: Apache-2.0
"""Migration streams that leave through descriptors and commands, with seccomp on (the
default): `exec:` URIs (run by vmm's launcher process), and `getfd`/`closefd` with a
descriptor passed over the QMP socket (SCM_RIGHTS, qemu.qmp's `send_fd_scm`) for `fd:NAME`.

Each migration ends with `system_powerdown` on the destination: the probe guest, running
there, prints `PROBE power-button` and `PROBE-DONE rc=0`, and vmm exits 0."""

import asyncio
import socket

import pytest

from qemu.qmp import ExecuteError, QMPClient

from conftest import HANG, arun, wait_until

IDLE = "probe.test=idle"


async def connect(addr):
    qmp = QMPClient("pytest")
    await asyncio.wait_for(qmp.connect(addr), HANG)
    return qmp


async def close(qmp):
    try:
        await qmp.disconnect()
    except EOFError:
        pass


async def wait_migration(qmp, timeout=HANG):
    """Polls query-migrate until the migration has ended; returns the last answer."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        info = await qmp.execute("query-migrate")
        if info.get("status") in ("completed", "failed", "cancelled"):
            return info
        assert loop.time() < deadline, f"migration did not end: {info}"
        await asyncio.sleep(0.05)


async def powers_down(dst):
    """The guest runs on the destination: a power-button press ends it cleanly."""
    qmp = await connect(dst.sock)
    try:
        assert (await qmp.execute("query-status"))["status"] == "running"
        await qmp.execute("system_powerdown")
    finally:
        await close(qmp)
    assert dst.wait_exit() == 0, dst.stderr()
    serial = dst.serial()
    assert "PROBE power-button" in serial, serial
    assert "PROBE-DONE rc=0" in serial, serial


def wait_running(dst):
    """Waits until the destination has received the guest and runs it."""
    async def body():
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HANG
        qmp = await connect(dst.sock)
        try:
            while (await qmp.execute("query-status"))["status"] != "running":
                assert dst.alive(), dst.stderr()
                assert loop.time() < deadline, "the destination never ran"
                await asyncio.sleep(0.05)
        finally:
            await close(qmp)
    arun(body())


def test_exec_to_a_file_and_back(vmm_factory, tmp_path):
    src = vmm_factory(cmdline=IDLE)
    src.wait_serial("PROBE idle")
    image = tmp_path / "stream.bin"

    async def migrate():
        qmp = await connect(src.sock)
        try:
            await qmp.execute("migrate", {"uri": f"exec:cat > '{image}'"})
            info = await wait_migration(qmp)
            assert info["status"] == "completed", info
            assert (await qmp.execute("query-status"))["status"] == "postmigrate"
        finally:
            await close(qmp)
    arun(migrate())
    assert image.stat().st_size > 0
    src.kill()

    dst = vmm_factory(cmdline=IDLE, qmp=[f"unix:{tmp_path / 'dst.sock'}"],
                      extra=["--incoming", f"exec:cat '{image}'"])
    wait_running(dst)
    arun(powers_down(dst))
    assert "seccomp" not in dst.stderr(), dst.stderr()


def test_exec_command_that_fails(vm):
    async def body():
        qmp = await connect(vm.sock)
        try:
            await qmp.execute("migrate", {"uri": "exec:cat > /dev/null; exit 3"})
            info = await wait_migration(qmp)
            assert info["status"] == "failed", info
            assert "exit status: 3" in info["error-desc"], info
            assert (await qmp.execute("query-status"))["status"] == "running"
        finally:
            await close(qmp)
    arun(body())
    assert vm.alive()
    vm.wait_serial("PROBE idle")


def test_exec_command_that_cannot_read(vm):
    """A command that exits at once, without reading: the stream breaks, the source goes on."""
    async def body():
        qmp = await connect(vm.sock)
        try:
            await qmp.execute("migrate", {"uri": "exec:exit 0"})
            info = await wait_migration(qmp)
            assert info["status"] == "failed", info
            assert info["error-desc"], info
            assert (await qmp.execute("query-status"))["status"] == "running"
        finally:
            await close(qmp)
    arun(body())
    assert vm.alive()


def test_getfd_and_migrate_fd(vmm_factory, tmp_path):
    ours, theirs = socket.socketpair()
    dst = vmm_factory(cmdline=IDLE, qmp=[f"unix:{tmp_path / 'dst.sock'}"],
                      extra=["--incoming", f"fd:{theirs.fileno()}"],
                      pass_fds=[theirs.fileno()])
    theirs.close()
    src = vmm_factory(cmdline=IDLE)
    src.wait_serial("PROBE idle")

    async def migrate():
        qmp = await connect(src.sock)
        try:
            qmp.send_fd_scm(ours.fileno())
            await qmp.execute("getfd", {"fdname": "mig"})
            ours.close()
            await qmp.execute("migrate", {"uri": "fd:mig"})
            info = await wait_migration(qmp)
            assert info["status"] == "completed", info
            # The migration took the descriptor: the name is gone.
            try:
                await qmp.execute("closefd", {"fdname": "mig"})
                raise AssertionError("closefd of a taken name succeeded")
            except ExecuteError as e:
                assert e.error.error.desc == "File descriptor named 'mig' not found"
        finally:
            await close(qmp)
    arun(migrate())
    wait_running(dst)
    arun(powers_down(dst))


def test_getfd_errors_and_closefd(vm):
    async def body():
        qmp = await connect(vm.sock)
        try:
            try:
                await qmp.execute("getfd", {"fdname": "x"})
                raise AssertionError("getfd without a descriptor succeeded")
            except ExecuteError as e:
                assert e.error.error.class_ == "GenericError"
                assert e.error.error.desc == "No file descriptor supplied via SCM_RIGHTS"
            try:
                await qmp.execute("closefd", {"fdname": "x"})
                raise AssertionError("closefd of an unknown name succeeded")
            except ExecuteError as e:
                assert e.error.error.class_ == "GenericError"
                assert e.error.error.desc == "File descriptor named 'x' not found"
            # Named, closed, then unknown again; names are the connection's own.
            a, b = socket.socketpair()
            qmp.send_fd_scm(a.fileno())
            await qmp.execute("getfd", {"fdname": "x"})
            a.close()
            other = await connect(vm.sock)
            try:
                try:
                    await other.execute("closefd", {"fdname": "x"})
                    raise AssertionError("another connection closed the name")
                except ExecuteError as e:
                    assert e.error.error.desc == "File descriptor named 'x' not found"
            finally:
                await close(other)
            await qmp.execute("closefd", {"fdname": "x"})
            # vmm held the only other end: closing it is end of file here.
            b.settimeout(HANG)
            assert b.recv(1) == b""
            b.close()
            try:
                await qmp.execute("migrate", {"uri": "fd:x"})
                raise AssertionError("migrate to a closed name succeeded")
            except ExecuteError as e:
                assert e.error.error.desc == "File descriptor named 'x' has not been found"
        finally:
            await close(qmp)
    arun(body())
    assert vm.alive()


def children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def comm(pid):
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


def test_the_launcher_is_small_and_dies_with_vmm(vm):
    """One launcher per vmm: one thread, no seccomp filter, no guest RAM mapped, only the
    standard streams and its socket open; killed with vmm."""
    import os
    import signal

    from conftest import wait_until

    launchers = [c for c in children(vm.pid) if comm(c) == "vmm-launcher"]
    assert len(launchers) == 1, [(c, comm(c)) for c in children(vm.pid)]
    pid = launchers[0]
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    assert status["Threads"].strip() == "1"
    assert status["Seccomp"].strip() == "0"
    fds = sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd"))
    assert len(fds) == 4 and fds[:3] == [0, 1, 2], fds
    assert os.readlink(f"/proc/{pid}/fd/{fds[3]}").startswith("socket:")
    with open(f"/proc/{pid}/maps") as f:
        maps = f.read()
    assert "memfd:" not in maps, "guest RAM is not mapped in the launcher"
    with open(f"/proc/{vm.pid}/status") as f:
        assert "Seccomp:\t2" in f.read(), "vmm itself is confined"
    os.kill(vm.pid, signal.SIGKILL)
    vm.proc.wait()
    wait_until(lambda: not os.path.exists(f"/proc/{pid}") or
               open(f"/proc/{pid}/stat").read().split()[2] == "Z",
               what="the launcher's end")


def test_getfd_on_both_sides_with_incoming_defer(vmm_factory, tmp_path):
    """Both ends of a socket pair passed with SCM_RIGHTS: `migrate-incoming fd:NAME` on a
    destination started with `--incoming defer`, `migrate fd:NAME` on the source."""
    ours, theirs = socket.socketpair()
    dst = vmm_factory(cmdline=IDLE, qmp=[f"unix:{tmp_path / 'dst.sock'}"],
                      extra=["--incoming", "defer"])
    src = vmm_factory(cmdline=IDLE)
    src.wait_serial("PROBE idle")

    async def migrate():
        dq = await connect(dst.sock)
        sq = await connect(src.sock)
        try:
            dq.send_fd_scm(theirs.fileno())
            await dq.execute("getfd", {"fdname": "in"})
            theirs.close()
            await dq.execute("migrate-incoming", {"uri": "fd:in"})
            sq.send_fd_scm(ours.fileno())
            await sq.execute("getfd", {"fdname": "out"})
            ours.close()
            await sq.execute("migrate", {"uri": "fd:out"})
            info = await wait_migration(sq)
            assert info["status"] == "completed", info
        finally:
            await close(sq)
            await close(dq)
    arun(migrate())
    wait_running(dst)
    arun(powers_down(dst))


def test_descriptors_close_with_their_session(vm):
    """A descriptor passed and never claimed, and one named and never closed: both are
    closed when the client disconnects (the peers read end of file)."""
    async def body():
        qmp = await connect(vm.sock)
        a, a_peer = socket.socketpair()
        b, b_peer = socket.socketpair()
        try:
            qmp.send_fd_scm(a.fileno())
            await qmp.execute("getfd", {"fdname": "named"})
            qmp.send_fd_scm(b.fileno())
            await qmp.execute("query-status")
        finally:
            await close(qmp)
        a.close()
        b.close()
        for peer in (a_peer, b_peer):
            peer.settimeout(HANG)
            assert peer.recv(1) == b""
            peer.close()
    arun(body())
    assert vm.alive()


@pytest.mark.parametrize("delay", [0.0, 0.3])
def test_cancel_of_a_command_that_does_not_read(vm, delay):
    """`migrate_cancel` while the stream waits on a command that never reads (its pipe
    full): the launcher kills the command's group, the write fails, the source runs on.
    Without a delay the cancel comes while the channel opens (nothing to shut down yet:
    the thread sees the cancel once it has the channel)."""
    import os
    marker = f"600.{os.getpid()}{int(delay * 10)}"

    async def body():
        qmp = await connect(vm.sock)
        try:
            await qmp.execute("migrate", {"uri": f"exec:sleep {marker}; true"})
            await asyncio.sleep(delay)
            await qmp.execute("migrate_cancel")
            info = await wait_migration(qmp)
            assert info["status"] == "cancelled", info
            assert (await qmp.execute("query-status"))["status"] == "running"
        finally:
            await close(qmp)
    arun(body())
    assert vm.alive()
    # The launcher kills the command's group when the stream is dropped; the processes go
    # moments later.
    wait_until(lambda: f"sleep {marker}" not in subprocess_ps(), what="the command's group killed")


def subprocess_ps():
    import subprocess
    return subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
