# SPDX-License-Identifier: Apache-2.0
"""Postcopy migration between two vmm processes, driven by qemu.qmp's QMPClient: the probe
guest's mem-walk runs on through the switch and checks every page on the destination; a relay
between the two (relay.py) is frozen mid-postcopy, out-of-band commands answer on both sides,
and migrate-pause / migrate-recover / migrate with resume complete the migration; a
destination killed mid-postcopy leaves the source paused, refusing `cont`, its image
untouched; QEMU's error texts."""

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from qemu.qmp import ExecuteError
from qemu.qmp.events import EventListener

from conftest import HANG, arun, listening, wait_until
from test_migration import (WALK, close, connect, finish_walk, start_walking_pair,
                            wait_for)

RELAY = Path(__file__).with_name("relay.py")


async def postcopy_on(q):
    await q.execute("migrate-set-capabilities",
                    {"capabilities": [{"capability": "postcopy-ram", "state": True}]})


def statuses(listener):
    out = []
    while not listener._queue.empty():
        ev = listener._queue.get_nowait()
        if ev["event"] == "MIGRATION":
            out.append(ev["data"]["status"])
    return out


async def oob(q, cmd, args=None):
    """`exec-oob` through qemu.qmp's raw execute."""
    msg = q.make_execute_msg(cmd, args, oob=True)
    return await q.execute_msg(msg)


def start_relay(tmp_path, target, rate=None):
    listen = tmp_path / "relay.sock"
    argv = [sys.executable, str(RELAY), str(listen), target]
    if rate:
        argv.append(str(rate))
    p = subprocess.Popen(argv)
    wait_until(lambda: listening(str(listen)), what="relay")
    return p, f"unix:{listen}"


def test_postcopy_of_a_memory_walker(vmm_factory, tmp_path):
    uri = f"unix:{tmp_path / 'mig.sock'}"
    src, dst = start_walking_pair(vmm_factory, tmp_path, uri)

    async def body():
        s = await connect(src.sock)
        d = await connect(dst.sock)
        src_events, dst_events = EventListener(), EventListener()
        s.register_listener(src_events)
        d.register_listener(dst_events)
        await postcopy_on(s)
        # A waiting destination takes it too, as QEMU's (it does not need it).
        await postcopy_on(d)
        caps = await s.execute("query-migrate-capabilities")
        assert {"capability": "postcopy-ram", "state": True} in caps
        await s.execute("migrate", {"uri": uri})
        await s.execute("migrate-start-postcopy")
        await wait_for(d, "query-status", "status", ("running",))
        info = await wait_for(s, "query-migrate", "status", ("completed", "failed"))
        assert info["status"] == "completed", info
        dinfo = await wait_for(d, "query-migrate", "status", ("completed", "failed"))
        assert dinfo["status"] == "completed", dinfo
        ram = info["ram"]
        assert ram["postcopy-bytes"] > 0, ram
        assert ram["remaining"] == 0
        # Each page went once and was filled once.
        assert dinfo["ram"]["postcopy-bytes"] == ram["postcopy-bytes"], (dinfo, ram)
        assert (await s.execute("query-status"))["status"] == "postmigrate"
        assert statuses(src_events) == ["setup", "active", "postcopy-active", "completed"]
        assert statuses(dst_events) == ["active", "postcopy-active", "completed"]
        # The source cannot run again: the guest's newest state was the destination's.
        await close(s)
        await close(d)
    arun(body())
    # The walker went on on the destination; every page checks.
    dst.wait_serial("PROBE mem-walk progress", count=3)
    finish_walk(dst)
    src.kill()


def test_a_frozen_relay_pauses_then_recovers(vmm_factory, tmp_path):
    mig = tmp_path / "mig.sock"
    uri = f"unix:{mig}"
    src, dst = start_walking_pair(vmm_factory, tmp_path, uri)
    relay, relay_uri = start_relay(tmp_path, str(mig), rate=2 << 20)
    recover = f"unix:{tmp_path / 'recover.sock'}"

    async def body():
        s = await connect(src.sock)
        d = await connect(dst.sock)
        await postcopy_on(s)
        await s.execute("migrate-set-parameters", {"max-bandwidth": 1 << 30})
        await s.execute("migrate", {"uri": relay_uri})
        await s.execute("migrate-start-postcopy")
        await wait_for(d, "query-migrate", "status", ("postcopy-active",))
        await wait_for(s, "query-migrate", "status", ("postcopy-active",))
        relay.send_signal(signal.SIGSTOP)
        await asyncio.sleep(0.5)
        # Out of band on both sides while the stream hangs.
        for q in (s, d):
            st = await oob(q, "query-status")
            assert st["status"] in ("running", "finish-migrate"), st
            assert (await oob(q, "query-migrate"))["status"] == "postcopy-active"
            await oob(q, "query-block")
            await oob(q, "query-yank")
        assert (await oob(d, "query-status"))["status"] == "running"
        # In band too: the destination's main loop waits for no page. Its vCPU waits on a
        # missing one, so `stop` does not wait for it to park (it parks when the page
        # comes, before it runs guest code again); a reset would write RAM that has not
        # arrived and is refused.
        await d.execute("stop")
        assert (await d.execute("query-status"))["status"] == "paused"
        await d.execute("cont")
        assert (await d.execute("query-status"))["status"] == "running"
        try:
            await d.execute("system_reset")
            raise AssertionError("reset during postcopy")
        except ExecuteError as e:
            assert "postcopy" in str(e), e
        # Break the hung stream on purpose; both pause.
        await oob(d, "migrate-pause")
        await oob(s, "migrate-pause")
        await wait_for(d, "query-migrate", "status", ("postcopy-paused",))
        info = await wait_for(s, "query-migrate", "status", ("postcopy-paused",))
        assert "destination" in info.get("error-desc", ""), info
        try:
            await oob(d, "migrate-pause")
            raise AssertionError("migrate-pause while paused")
        except ExecuteError as e:
            assert str(e) == ("migrate-pause is currently only supported during "
                              "postcopy-active state")
        # A resume to where nobody listens pauses again, saying why.
        await s.execute("migrate", {"uri": f"unix:{tmp_path / 'nowhere.sock'}",
                                    "resume": True})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HANG
        while "nowhere.sock" not in (await s.execute("query-migrate")).get("error-desc", ""):
            assert loop.time() < deadline, await s.execute("query-migrate")
            await asyncio.sleep(0.02)
        await wait_for(s, "query-migrate", "status", ("postcopy-paused",))
        await oob(d, "migrate-recover", {"uri": recover})
        wait_until(lambda: listening(recover[5:]), what="recover socket")
        await s.execute("migrate", {"uri": recover, "resume": True})
        info = await wait_for(s, "query-migrate", "status", ("completed", "failed"))
        assert info["status"] == "completed", info
        dinfo = await wait_for(d, "query-migrate", "status", ("completed",))
        # Pages lost in the frozen relay went again; none was filled twice.
        assert 0 < dinfo["ram"]["postcopy-bytes"] <= info["ram"]["postcopy-bytes"]
        assert dinfo["ram"]["postcopy-requests"] > 0, dinfo
        await close(s)
        await close(d)
    try:
        arun(body(), timeout=HANG * 4)
    finally:
        relay.kill()
        relay.wait()
    dst.wait_serial("PROBE mem-walk progress", count=3)
    finish_walk(dst)


def test_a_destination_killed_mid_postcopy_leaves_the_source_paused(vmm_factory, tmp_path):
    disk = tmp_path / "disk.raw"
    disk.write_bytes(os.urandom(1 << 20))
    mig = tmp_path / "mig.sock"
    uri = f"unix:{mig}"
    extra = ["--disk", f"path={disk}"]
    src, dst = start_walking_pair(vmm_factory, tmp_path, uri, src_extra=extra, dst_extra=extra)
    relay, relay_uri = start_relay(tmp_path, str(mig), rate=1 << 20)

    async def body():
        s = await connect(src.sock)
        d = await connect(dst.sock)
        await postcopy_on(s)
        await s.execute("migrate", {"uri": relay_uri})
        await s.execute("migrate-start-postcopy")
        await wait_for(d, "query-migrate", "status", ("postcopy-active",))
        await close(d)
        dst.kill()
        info = await wait_for(s, "query-migrate", "status", ("postcopy-paused",))
        assert "the guest runs on the destination" in info["error-desc"], info
        before = hashlib.sha256(disk.read_bytes()).hexdigest()
        try:
            await s.execute("cont")
            raise AssertionError("cont on a paused postcopy source")
        except ExecuteError as e:
            assert "postcopy destination" in str(e), e
        try:
            await s.execute("migrate_cancel")
            raise AssertionError("migrate_cancel in postcopy")
        except ExecuteError as e:
            assert "cannot be cancelled" in str(e), e
        assert (await s.execute("query-status"))["status"] == "finish-migrate"
        await asyncio.sleep(0.5)
        assert (await s.execute("query-migrate"))["status"] == "postcopy-paused"
        assert hashlib.sha256(disk.read_bytes()).hexdigest() == before
        await s.execute("quit")
    try:
        arun(body())
    finally:
        relay.kill()
        relay.wait()
    assert src.wait_exit() == 0, src.stderr()


def test_postcopy_errors_are_qemus(vmm_factory, tmp_path):
    src = vmm_factory(qmp=[f"unix:{tmp_path / 'src.sock'}"], cmdline=WALK)
    src.wait_serial("PROBE mem-walk progress")

    async def body():
        s = await connect(src.sock)

        async def err(cmd, args=None, oob_=False):
            try:
                if oob_:
                    await oob(s, cmd, args)
                else:
                    await s.execute(cmd, args)
            except ExecuteError as e:
                return str(e)
            raise AssertionError(f"{cmd} succeeded")
        assert await err("migrate-start-postcopy") == (
            "Postcopy must be started after migration has been started")
        assert await err("migrate-pause", oob_=True) == (
            "migrate-pause is currently only supported during postcopy-active state")
        assert await err("migrate-recover", {"uri": "unix:/tmp/x"}, oob_=True) == (
            "Migrate recover can only be run when postcopy is paused.")
        assert await err("migrate", {"uri": "unix:/tmp/x", "resume": True}) == (
            "Cannot resume if there is no paused migration")
        await postcopy_on(s)
        assert "two-way channel" in await err("migrate", {"uri": f"file:{tmp_path}/snap"})
        # A migration that never connects: the capability is fixed while it runs.
        await s.execute("migrate-set-capabilities",
                        {"capabilities": [{"capability": "postcopy-ram", "state": False}]})
        await s.execute("migrate-set-parameters", {"max-bandwidth": 1 << 20})
        dst = vmm_factory(qmp=[f"unix:{tmp_path / 'dst.sock'}"], cmdline=WALK,
                          extra=["--incoming", f"unix:{tmp_path / 'm.sock'}"])
        wait_until(lambda: listening(str(tmp_path / "m.sock")), what="incoming")
        await s.execute("migrate", {"uri": f"unix:{tmp_path / 'm.sock'}"})
        assert await err("migrate-start-postcopy") == (
            "Enable postcopy with migrate_set_capability before the start of migration")
        assert await err("migrate-set-capabilities", {"capabilities": [
            {"capability": "postcopy-ram", "state": True}]}) == (
            "There's a migration process in progress")
        await s.execute("migrate_cancel")
        await wait_for(s, "query-migrate", "status", ("cancelled",))
        await close(s)
        dst.kill()
    arun(body())


def test_a_snapshot_restored_through_userfaultfd(vmm_factory, tmp_path):
    """`--incoming file:PATH,restore=uffd`: RAM of the VM's own, every page of the snapshot
    missing; the guest runs at once (postcopy-active) while the uffd thread reads what it
    touches and the migration thread the rest; then completed, every page verified."""
    from test_migration import migrate_fast, progress_lines, seccomp_of_thread
    snap = tmp_path / "snap.bin"
    src = vmm_factory(qmp=[f"unix:{tmp_path / 'src.sock'}"], cmdline=WALK)
    src.wait_serial("PROBE mem-walk progress")

    async def save():
        s = await connect(src.sock)
        await migrate_fast(s, f"file:{snap}")
        await s.execute("quit")
        await close(s)
    arun(save())
    assert src.wait_exit() == 0
    dst = vmm_factory(qmp=[f"unix:{tmp_path / 'dst.sock'}"], cmdline=WALK,
                      extra=["--incoming", f"file:{snap},restore=uffd"])

    async def restore():
        d = await connect(dst.sock, events=False)
        info = await wait_for(d, "query-migrate", "status", ("completed", "failed"))
        assert info["status"] == "completed", info
        ram = info["ram"]
        # The walker's 32 MiB came from the file, each page once.
        assert 32 << 20 <= ram["transferred"] < 40 << 20, ram
        assert ram["transferred"] == ram["normal-bytes"], ram
        assert (await d.execute("query-status"))["status"] == "running"
        await close(d)
    arun(restore())
    assert seccomp_of_thread(dst.pid, "uffd") == "2"
    n = progress_lines(dst)
    wait_until(lambda: progress_lines(dst) > n + 2, what="the restored guest goes on")
    finish_walk(dst)


def test_restore_modes_are_checked(vmm_factory, tmp_path):
    v = vmm_factory(qmp=[f"unix:{tmp_path / 'v.sock'}"], cmdline=WALK,
                    extra=["--incoming", f"file:{tmp_path}/s,restore=later"], wait_socket=False)
    assert v.wait_exit() != 0
    assert "Invalid restore mode 'later' of a file: URI (map or uffd)" in v.stderr(), v.stderr()


def test_a_stale_socket_file_is_replaced(vmm_factory, tmp_path):
    """As QEMU's: `--incoming unix:PATH` listens where an earlier listener's socket file was
    left behind."""
    import socket
    path = tmp_path / "mig.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    vmm_factory(qmp=[f"unix:{tmp_path / 'dst.sock'}"], cmdline=WALK,
                extra=["--incoming", f"unix:{path}"])
    wait_until(lambda: listening(str(path)), what="the destination listens")
