# SPDX-License-Identifier: Apache-2.0
"""Live migration and snapshots between two vmm processes, driven by qemu.qmp's QMPClient as
a manager drives QEMU: unix and tcp streams with the probe guest's mem-walk (every page
verified on the destination) and io-loop (every read verified) running, cancel and retry, a
destination that dies, snapshots of a paused and of a running guest, -incoming defer with
migrate-incoming, -S on the destination, the parameters and QEMU's error texts."""

import asyncio
import os
import re
import signal

import pytest
from qemu.qmp import ExecuteError, QMPClient
from qemu.qmp.events import EventListener

from conftest import HANG, arun, free_tcp_port, listening, wait_until

# A guest that keeps rewriting 32 MiB of its 64 MiB at 64 MiB/s and prints a line every 100 ms;
# on the power button it checks every page against the generation it last wrote there.
WALK = "probe.test=mem-walk probe.mib=32 probe.rate=64 probe.interval=100"
FAST = 1 << 30  # max-bandwidth for migrations that should just work


async def connect(addr, events=True):
    q = QMPClient("test-migration")
    await asyncio.wait_for(q.connect(addr), HANG)
    if events:
        await q.execute("migrate-set-capabilities",
                        {"capabilities": [{"capability": "events", "state": True}]})
    return q


async def close(q):
    try:
        await q.disconnect()
    except EOFError:
        pass


async def wait_for(q, cmd, key, wanted, timeout=HANG * 2):
    """Polls `cmd` until its answer's `key` is one of `wanted`; returns the answer."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        got = await q.execute(cmd)
        if got.get(key) in wanted:
            return got
        assert loop.time() < deadline, f"{cmd} stuck: {got}"
        await asyncio.sleep(0.02)


async def wait_status(q, wanted, timeout=HANG * 2):
    """Polls query-migrate until its status is one of `wanted`; returns the info."""
    return await wait_for(q, "query-migrate", "status", wanted, timeout)


async def migrate_fast(q, uri, wanted="completed"):
    """Migrates at FAST to `uri` and waits for the end; the status must be `wanted`. Returns
    query-migrate's last answer."""
    await q.execute("migrate-set-parameters", {"max-bandwidth": FAST})
    await q.execute("migrate", {"uri": uri})
    info = await wait_status(q, ("completed", "failed"))
    assert info["status"] == wanted, info
    return info


def seccomp_of_thread(pid, name):
    """The `Seccomp:` mode of the thread called `name` (2: filtered)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if f.read().strip() != name:
                    continue
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("Seccomp:"):
                        return line.split()[1]
        except (FileNotFoundError, ProcessLookupError):
            continue
    raise AssertionError(f"no thread {name}")


def progress_lines(v):
    return v.serial().count("PROBE mem-walk progress")


def start_pair(vmm_factory, tmp_path, uri, cmdline=WALK, dst_extra=(), src_extra=(),
               dst_paused=False):
    src = vmm_factory(qmp=[f"unix:{tmp_path / 'src.sock'}"], cmdline=cmdline,
                      extra=list(src_extra))
    dst = vmm_factory(qmp=[f"unix:{tmp_path / 'dst.sock'}"], cmdline=cmdline,
                      extra=["--incoming", uri, *dst_extra], paused=dst_paused)
    return src, dst


def wait_incoming(uri):
    if uri.startswith("unix:"):
        wait_until(lambda: listening(uri[5:]), what=f"incoming {uri}")
    elif uri.startswith("tcp:"):
        host, port = uri[4:].rsplit(":", 1)
        wait_until(lambda: listening((host, int(port))), what=f"incoming {uri}")


def start_walking_pair(vmm_factory, tmp_path, uri, **kw):
    """`start_pair` on `uri`, once the destination listens and the source's walker runs."""
    src, dst = start_pair(vmm_factory, tmp_path, uri, **kw)
    wait_incoming(uri)
    src.wait_serial("PROBE mem-walk progress")
    return src, dst


def finish_walk(dst):
    """The power button on the destination: every page verifies, vmm exits 0."""
    async def press():
        q = await connect(dst.sock, events=False)
        await q.execute("system_powerdown")
        await close(q)
    arun(press())
    assert dst.wait_exit() == 0, dst.stderr()
    final = [ln for ln in dst.serial().splitlines() if ln.startswith("PROBE mem-walk pages=")]
    assert len(final) == 1, dst.serial()
    assert " pages=8192 bad=0 " in final[0], final
    assert "backwards=0" in final[0], final
    assert "PROBE-DONE rc=0" in dst.serial()
    assert "PROBE mem-walk start" not in dst.serial(), "the destination booted on its own"


def test_unix_migration_of_a_memory_walker(vmm_factory, tmp_path):
    uri = f"unix:{tmp_path / 'mig.sock'}"
    src, dst = start_walking_pair(vmm_factory, tmp_path, uri)

    async def body():
        s = await connect(src.sock)
        d = await connect(dst.sock)
        assert (await d.execute("query-status"))["status"] == "inmigrate"
        src_events = EventListener()
        s.register_listener(src_events)
        dst_events = EventListener()
        d.register_listener(dst_events)
        info = await migrate_fast(s, uri)
        ram = info["ram"]
        assert ram["total"] == 64 << 20
        # The walker's 32 MiB went at least once; untouched RAM did not.
        assert 32 << 20 <= ram["normal-bytes"] < 64 << 20, ram
        assert ram["transferred"] >= ram["normal-bytes"]
        assert ram["remaining"] == 0 and ram["page-size"] == 4096
        assert ram["dirty-sync-count"] >= 2
        assert info["downtime"] >= 0 and info["total-time"] >= info["downtime"]
        assert (await s.execute("query-status"))["status"] == "postmigrate"
        await wait_until_async(lambda: d.execute("query-status"), "running")
        kinds = [(e["event"], e.get("data")) for e in src_events.clear()]
        statuses = [d["status"] for ev, d in kinds if ev == "MIGRATION"]
        assert statuses[0] == "setup" and statuses[-1] == "completed", kinds
        assert "active" in statuses and "device" in statuses, kinds
        passes = [d["pass"] for ev, d in kinds if ev == "MIGRATION_PASS"]
        assert passes[:1] == [1] and passes == sorted(passes), kinds
        assert ("STOP", None) in kinds, kinds
        dst_kinds = [e["event"] for e in dst_events.clear()]
        assert "RESUME" in dst_kinds, dst_kinds
        await close(s)
        await close(d)
    arun(body())
    # The guest goes on on the destination.
    n = progress_lines(dst)
    wait_until(lambda: progress_lines(dst) > n + 2, what="progress on the destination")
    assert progress_lines(src) > 0
    finish_walk(dst)
    assert src.alive(), "the source stays (postmigrate) until a manager quits it"


async def wait_until_async(query, status, timeout=HANG):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (await query())["status"] != status:
        assert loop.time() < deadline, f"not {status}"
        await asyncio.sleep(0.02)


def test_tcp_migration_with_disk_io_running(vmm_factory, tmp_path):
    img = tmp_path / "disk.raw"
    with open(img, "wb") as f:
        f.truncate(16 << 20)
    port = free_tcp_port()
    uri = f"tcp:127.0.0.1:{port}"
    io = "probe.test=io-loop probe.count=64"
    src, dst = start_pair(vmm_factory, tmp_path, uri, cmdline=io,
                          src_extra=["--disk", f"path={img},id=d0"],
                          dst_extra=["--disk", f"path={img},id=d0"])
    wait_incoming(uri)
    src.wait_serial("PROBE io-loop iters=")

    async def body():
        s = await connect(src.sock)
        await migrate_fast(s, uri)
        await close(s)
    arun(body())
    before = dst.serial().count("PROBE io-loop iters=")
    wait_until(lambda: dst.serial().count("PROBE io-loop iters=") >= before + 2,
               what="io-loop on the destination")

    async def stop():
        d = await connect(dst.sock, events=False)
        stats = await d.execute("query-blockstats")
        assert stats[0]["stats"]["wr_operations"] > 0, "the destination writes to the image"
        await d.execute("system_powerdown")
        await close(d)
    async def source_cont():
        s = await connect(src.sock, events=False)
        # The destination holds the image: the source cannot take it back.
        with pytest.raises(ExecuteError, match='Failed to get "write" lock'):
            await s.execute("cont")
        assert (await s.execute("query-status"))["status"] == "postmigrate"
        await close(s)
    arun(source_cont())
    arun(stop())
    assert dst.wait_exit() == 0, dst.stderr()
    counts = re.findall(r"PROBE io-loop iters=(\d+) errors=(\d+)", dst.serial())
    assert counts and all(e == "0" for _, e in counts), dst.serial()
    assert int(counts[-1][0]) > int(re.findall(r"iters=(\d+)", src.serial())[-1])
    assert "PROBE io-error" not in dst.serial() + src.serial()

    async def source_again():
        # With the destination gone, the source may run again (QEMU's cont after migrate).
        s = await connect(src.sock, events=False)
        await s.execute("cont")
        assert (await s.execute("query-status"))["status"] == "running"
        await close(s)
    arun(source_again())
    n = src.serial().count("PROBE io-loop iters=")
    wait_until(lambda: src.serial().count("PROBE io-loop iters=") > n, what="the source runs")


def test_cancel_then_retry(vmm_factory, tmp_path):
    uri = f"unix:{tmp_path / 'mig.sock'}"
    src, dst = start_walking_pair(vmm_factory, tmp_path, uri)

    async def cancel():
        s = await connect(src.sock)
        # 1 MiB/s: the first pass takes about half a minute.
        await s.execute("migrate-set-parameters", {"max-bandwidth": 1 << 20})
        await s.execute("migrate", {"uri": uri})
        await wait_status(s, ("active",))
        # The migration thread runs confined, as every thread of vmm.
        assert seccomp_of_thread(src.pid, "migration") == "2"
        with pytest.raises(ExecuteError, match="There's a migration process in progress"):
            await s.execute("migrate", {"uri": uri})
        events = EventListener()
        s.register_listener(events)
        await s.execute("migrate_cancel")
        info = await wait_status(s, ("cancelled",))
        assert "error-desc" not in info, info
        statuses = [e["data"]["status"] for e in events.clear() if e["event"] == "MIGRATION"]
        assert statuses == ["cancelling", "cancelled"], statuses
        assert (await s.execute("query-status"))["status"] == "running"
        await close(s)
    arun(cancel())
    # The destination lost its source: it fails as QEMU's does.
    assert dst.wait_exit() == 1
    assert "load of migration failed" in dst.stderr(), dst.stderr()
    n = progress_lines(src)
    wait_until(lambda: progress_lines(src) > n + 2, what="the source's guest goes on")

    uri2 = f"unix:{tmp_path / 'mig2.sock'}"
    dst2 = start_pair_dst(vmm_factory, tmp_path, uri2, "dst2.sock")
    wait_incoming(uri2)

    async def retry():
        s = await connect(src.sock)
        await migrate_fast(s, uri2)
        await close(s)
    arun(retry())
    finish_walk(dst2)


def start_pair_dst(vmm_factory, tmp_path, uri, sock, cmdline=WALK, extra=()):
    return vmm_factory(qmp=[f"unix:{tmp_path / sock}"], cmdline=cmdline,
                       extra=["--incoming", uri, *extra])


def test_destination_that_dies_leaves_the_source_running(vmm_factory, tmp_path):
    uri = f"unix:{tmp_path / 'mig.sock'}"
    src, dst = start_walking_pair(vmm_factory, tmp_path, uri)

    async def body():
        s = await connect(src.sock)
        await s.execute("migrate-set-parameters", {"max-bandwidth": 2 << 20})
        await s.execute("migrate", {"uri": uri})
        await wait_status(s, ("active",))
        os.kill(dst.pid, signal.SIGKILL)
        info = await wait_status(s, ("failed",))
        assert info.get("error-desc"), info
        assert (await s.execute("query-status"))["status"] == "running"
        await close(s)
    arun(body())
    n = progress_lines(src)
    wait_until(lambda: progress_lines(src) > n + 2, what="the source's guest goes on")
    # And it can still go somewhere else.
    uri2 = f"unix:{tmp_path / 'mig2.sock'}"
    dst2 = start_pair_dst(vmm_factory, tmp_path, uri2, "dst2.sock")
    wait_incoming(uri2)

    async def again():
        s = await connect(src.sock)
        await migrate_fast(s, uri2)
        await close(s)
    arun(again())
    finish_walk(dst2)


@pytest.mark.parametrize("paused", [True, False], ids=["paused", "running"])
def test_snapshot_and_restore(vmm_factory, tmp_path, paused):
    snap = tmp_path / "snap.bin"
    src = vmm_factory(qmp=[f"unix:{tmp_path / 'src.sock'}"], cmdline=WALK)
    src.wait_serial("PROBE mem-walk progress")

    async def save():
        s = await connect(src.sock)
        if paused:
            await s.execute("stop")
        await migrate_fast(s, f"file:{snap}")
        assert (await s.execute("query-status"))["status"] == "postmigrate"
        await s.execute("quit")
        await close(s)
    arun(save())
    assert src.wait_exit() == 0
    st = os.stat(snap)
    assert st.st_size > 64 << 20, "RAM sits at its offsets"
    assert st.st_blocks * 512 < 48 << 20, "zero pages are holes"
    dst = start_pair_dst(vmm_factory, tmp_path, f"file:{snap}", "dst.sock")
    dst.wait_serial("PROBE mem-walk progress")
    n = progress_lines(dst)
    wait_until(lambda: progress_lines(dst) > n + 2, what="the restored guest goes on")
    finish_walk(dst)


def test_incoming_defer_and_paused_destination(vmm_factory, tmp_path):
    uri = f"unix:{tmp_path / 'mig.sock'}"
    src, dst = start_pair(vmm_factory, tmp_path, "defer", dst_paused=True)
    src.wait_serial("PROBE mem-walk progress")

    async def body():
        s = await connect(src.sock)
        d = await connect(dst.sock)
        assert (await d.execute("query-status"))["status"] == "inmigrate"
        assert (await d.execute("query-migrate")) == {}
        with pytest.raises(ExecuteError, match="unknown migration protocol: nope:x"):
            await d.execute("migrate-incoming", {"uri": "nope:x"})
        await d.execute("migrate-incoming", {"uri": uri})
        with pytest.raises(ExecuteError,
                           match="The incoming migration has already been started"):
            await d.execute("migrate-incoming", {"uri": uri})
        with pytest.raises(ExecuteError, match="For use with '-incoming defer'"):
            await s.execute("migrate-incoming", {"uri": uri})
        with pytest.raises(ExecuteError, match="Guest is waiting for an incoming migration"):
            await d.execute("migrate", {"uri": "unix:/nonexistent"})
        await migrate_fast(s, uri)
        assert (await wait_status(d, ("completed", "failed")))["status"] == "completed"
        # -S: the destination waits for cont.
        await wait_until_async(lambda: d.execute("query-status"), "paused")
        n = progress_lines(dst)
        await asyncio.sleep(0.5)
        assert progress_lines(dst) == n, "a paused destination ran"
        await d.execute("cont")
        await wait_until_async(lambda: d.execute("query-status"), "running")
        await close(s)
        await close(d)
    arun(body())
    n = progress_lines(dst)
    wait_until(lambda: progress_lines(dst) > n + 2, what="progress after cont")
    finish_walk(dst)


def test_parameters_and_errors(vm):
    async def body():
        q = await connect(vm.sock, events=False)
        assert await q.execute("query-migrate") == {}
        assert await q.execute("query-migrate-parameters") == {
            "max-bandwidth": 32 << 20, "downtime-limit": 300}
        await q.execute("migrate-set-parameters", {"downtime-limit": 50})
        await q.execute("migrate-set-parameters", {"max-bandwidth": 1 << 30})
        assert await q.execute("query-migrate-parameters") == {
            "max-bandwidth": 1 << 30, "downtime-limit": 50}
        with pytest.raises(ExecuteError, match="Parameter 'downtime_limit' expects"):
            await q.execute("migrate-set-parameters", {"downtime-limit": 2000001})
        with pytest.raises(ExecuteError, match="Parameter 'foo' is unexpected"):
            await q.execute("migrate-set-parameters", {"foo": 1})
        with pytest.raises(ExecuteError, match="unknown migration protocol: rdma:1:2"):
            await q.execute("migrate", {"uri": "rdma:1:2"})
        with pytest.raises(ExecuteError, match="images are shared"):
            await q.execute("migrate", {"uri": "unix:/x", "blk": True})
        with pytest.raises(ExecuteError, match="Cannot resume if there is no paused migration"):
            await q.execute("migrate", {"uri": "unix:/x", "resume": True})
        # Nobody listens: the migration starts, then fails; the guest keeps running.
        await q.execute("migrate", {"uri": "unix:/nonexistent/socket"})
        info = await wait_status(q, ("failed",))
        assert "/nonexistent/socket" in info["error-desc"], info
        assert (await q.execute("query-status"))["status"] == "running"
        await q.execute("migrate_cancel")  # nothing runs: nothing happens
        assert (await q.execute("query-migrate"))["status"] == "failed"
        await close(q)
    arun(body())


def test_a_destination_that_does_not_fit_refuses_and_the_source_runs_on(vmm_factory,
                                                                          tmp_path):
    uri = f"unix:{tmp_path / 'mig.sock'}"
    src = vmm_factory(qmp=[f"unix:{tmp_path / 'src.sock'}"], cmdline=WALK)
    dst = vmm_factory(qmp=[f"unix:{tmp_path / 'dst.sock'}"], cmdline=WALK, memory=128,
                      extra=["--incoming", uri])
    wait_incoming(uri)
    src.wait_serial("PROBE mem-walk progress")

    async def body():
        s = await connect(src.sock)
        info = await migrate_fast(s, uri, "failed")
        assert info["error-desc"] == (
            "The destination refused the migration: The source's VM does not match this "
            "one: the source has 64 MiB of RAM, this VM 128 MiB"), info
        assert (await s.execute("query-status"))["status"] == "running"
        await close(s)
    arun(body())
    assert dst.wait_exit() == 1
    assert dst.stderr().strip() == (
        "vmm: load of migration failed: The source's VM does not match this one: the source "
        "has 64 MiB of RAM, this VM 128 MiB"), dst.stderr()
    n = progress_lines(src)
    wait_until(lambda: progress_lines(src) > n + 2, what="the source's guest goes on")


def test_migrate_incoming_of_a_snapshot_copies_its_ram(vmm_factory, tmp_path):
    """-incoming defer then migrate-incoming file:: the VM was built with RAM of its own, so
    the snapshot's data ranges are copied in (not mapped)."""
    snap = tmp_path / "snap.bin"
    src = vmm_factory(qmp=[f"unix:{tmp_path / 'src.sock'}"], cmdline=WALK)
    src.wait_serial("PROBE mem-walk progress")

    async def save():
        s = await connect(src.sock)
        await s.execute("stop")
        await migrate_fast(s, f"file:{snap}")
        await s.execute("quit")
        await close(s)
    arun(save())
    assert src.wait_exit() == 0
    dst = start_pair_dst(vmm_factory, tmp_path, "defer", "dst.sock")

    async def restore():
        d = await connect(dst.sock)
        await d.execute("migrate-incoming", {"uri": f"file:{snap}"})
        info = await wait_status(d, ("completed", "failed"))
        assert info["status"] == "completed", info
        # The walker's pages were read from the file.
        assert info["ram"]["transferred"] >= 32 << 20, info
        await close(d)
    arun(restore())
    n = progress_lines(dst)
    wait_until(lambda: progress_lines(dst) > n + 2, what="the restored guest goes on")
    finish_walk(dst)
