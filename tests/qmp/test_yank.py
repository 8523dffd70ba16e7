# SPDX-License-Identifier: Apache-2.0
"""Yanking a disk whose storage stopped answering (a hangfs FUSE mount, like a dead NFS server):
`yank` out of band completes the guest's hung requests at once with EIO through the error
policy, ends a pending `stop`'s drain, fences new requests until `cont` or until the storage
answers, and never lets a late write land after the guest's newer one."""

from conftest import RawQmp, wait_until

SECTORS = 8  # the guest's io-loop writes, flushes, reads back and verifies these sectors


def hung_disk(vmm_factory, hangfs, werror):
    """A guest looping on write-flush-read-verify over a disk on hangfs whose writes hang now;
    returns the VM and a negotiated session (oob) once the guest's write is stuck."""
    img = hangfs.backing / "disk.raw"
    with open(img, "wb") as f:
        f.truncate(1 << 20)
    vm = vmm_factory(cmdline=f"probe.test=io-loop probe.count={SECTORS}",
                     extra=["--disk", f"path={hangfs.path / 'disk.raw'},node-name=disk0,"
                            f"werror={werror}"])
    c = RawQmp(vm.sock).negotiate(oob=True)
    vm.wait_serial("PROBE io-loop iters=")
    hangfs.hang("write")
    hangfs.wait_blocked(ops="write", pid=vm.pid)
    return vm, c


def stats(c):
    return c.cmd("query-blockstats")["return"][0]["stats"]


def test_query_yank_lists_file_nodes(vmm_factory, tmp_path):
    img = tmp_path / "a.raw"
    img.write_bytes(bytes(1 << 20))
    vm = vmm_factory(extra=["--disk", f"path={img},node-name=disk0"])
    c = RawQmp(vm.sock).negotiate(oob=True)
    want = [{"type": "block-node", "node-name": "disk0"}]
    assert c.cmd("query-yank", oob=True) == {"return": want}
    assert c.cmd("query-yank") == {"return": want}
    # blockdev-add'ed file nodes are instances too (format nodes are not), until deleted.
    other = tmp_path / "b.raw"
    other.write_bytes(bytes(1 << 20))
    assert c.cmd("blockdev-add", {"driver": "file", "node-name": "f1",
                                  "filename": str(other)}) == {"return": {}}
    assert c.cmd("blockdev-add", {"driver": "raw", "node-name": "r1", "file": "f1"}) == \
        {"return": {}}
    assert c.cmd("query-yank", oob=True)["return"] == \
        want + [{"type": "block-node", "node-name": "f1"}]
    assert c.cmd("yank", {"instances": [{"type": "block-node", "node-name": "f1"}]},
                 oob=True) == {"return": {}}
    # QEMU's errors: an unknown instance yanks nothing; the union is checked by the schema.
    r = c.cmd("yank", {"instances": [{"type": "block-node", "node-name": "disk0"},
                                     {"type": "block-node", "node-name": "r1"}]}, oob=True)
    assert r["error"] == {"class": "DeviceNotFound", "desc": "Instance not found"}, r
    r = c.cmd("yank", {"instances": [{"type": "chardev", "id": "x"}]}, oob=True)
    assert r["error"]["class"] == "GenericError", r
    assert c.cmd("blockdev-del", {"node-name": "r1"}) == {"return": {}}
    assert c.cmd("blockdev-del", {"node-name": "f1"}) == {"return": {}}
    assert c.cmd("query-yank", oob=True) == {"return": want}
    vm.wait_serial("PROBE idle")


def test_yank_reports_eio_and_the_disk_recovers(vmm_factory, hangfs):
    """werror=report: the hung write fails in the guest with EIO at once; new requests fail
    fast while the storage hangs (none reaches it); when it answers, the guest's loop
    verifies its data again."""
    vm, c = hung_disk(vmm_factory, hangfs, "report")
    assert c.cmd("query-status", oob=True)["return"]["status"] == "running"
    failed = stats(c)["failed_wr_operations"]
    assert c.cmd("yank", {"instances": [{"type": "block-node", "node-name": "disk0"}]},
                 oob=True) == {"return": {}}
    ev = c.event("BLOCK_IO_ERROR")
    assert ev["data"]["action"] == "report" and ev["data"]["operation"] == "write", ev
    assert ev["data"]["node-name"] == "disk0", ev
    vm.wait_serial("op=write lba=0 status=ioerr")
    assert stats(c)["failed_wr_operations"] > failed
    # Fenced: the guest keeps failing, the storage sees only the one write still hanging.
    assert hangfs.blocked("write") == 1
    writes = hangfs.calls().get("write", 0)
    wait_until(lambda: stats(c)["failed_wr_operations"] > failed + 3,
               what="more fenced writes")
    assert hangfs.calls().get("write", 0) == writes
    # The storage answers: the abandoned write returns (its result dropped) and the loop
    # completes verified iterations again.
    hangfs.release()
    errors_before = vm.serial().count("PROBE io-error")
    wait_until(lambda: hangfs.calls().get("write", 0) > writes + 1, what="writes again")
    ok = stats(c)["wr_operations"]
    wait_until(lambda: stats(c)["wr_operations"] > ok + 5, what="successful writes")
    assert "op=verify" not in vm.serial(), vm.serial()
    assert c.cmd("query-status")["return"]["status"] == "running"
    assert vm.serial().count("PROBE io-error") >= errors_before


def test_yank_stops_and_cont_retries_after_the_abandoned_write(vmm_factory, hangfs):
    """werror=stop: the yanked write stops the VM (BLOCK_IO_ERROR, STOP, io-error); `cont`
    while the storage still hangs retries it, but the retry waits for the abandoned write of
    the same sectors; when the storage answers both land in order and the guest's loop goes
    on with no error at all."""
    vm, c = hung_disk(vmm_factory, hangfs, "stop")
    assert c.cmd("yank", {"instances": [{"type": "block-node", "node-name": "disk0"}]},
                 oob=True) == {"return": {}}
    ev = c.event("BLOCK_IO_ERROR")
    assert ev["data"]["action"] == "stop" and ev["data"]["nospace"] is False, ev
    c.event("STOP")
    st = c.cmd("query-status", oob=True)["return"]
    assert st["status"] == "io-error" and st["running"] is False, st
    blk = c.cmd("query-block", oob=True)["return"][0]
    assert blk["io-status"] == "failed", blk
    # cont: the retry is issued only once the abandoned write returned.
    writes = hangfs.calls().get("write", 0)
    assert c.cmd("cont") == {"return": {}}
    c.event("RESUME")
    assert c.quiet(0.5), c.buf
    assert hangfs.calls().get("write", 0) == writes
    assert hangfs.blocked("write") == 1
    hangfs.release()
    wait_until(lambda: hangfs.calls().get("write", 0) > writes + 2, what="the retry and more")
    done = stats(c)["wr_operations"]
    wait_until(lambda: stats(c)["wr_operations"] > done + 5, what="the guest's loop")
    assert "PROBE io-error" not in vm.serial(), vm.serial()
    assert c.cmd("query-status")["return"]["status"] == "running"
    assert c.cmd("query-block")["return"][0]["io-status"] == "ok"


def test_yank_ends_a_stop_waiting_on_hung_storage(vmm_factory, hangfs):
    """`stop` drains in-flight I/O before it replies; with the storage hung it waits (off the
    main loop); yank out of band completes the hung write with EIO, so the drain and `stop`
    complete, and the session's queued command after it."""
    vm, c = hung_disk(vmm_factory, hangfs, "report")
    a = RawQmp(vm.sock).negotiate(oob=True)
    a.send({"execute": "stop", "id": "stop"})
    a.send({"execute": "query-name", "id": "after"})
    assert a.recv()["event"] == "STOP"
    assert a.quiet(0.5), f"stop returned before the drain: {a.buf!r}"
    assert a.cmd("yank", {"instances": [{"type": "block-node", "node-name": "disk0"}]},
                 id="y", oob=True) == {"return": {}, "id": "y"}
    msgs = [a.recv() for _ in range(2)]
    replies = [m for m in msgs if "event" not in m]
    while len(replies) < 2:
        m = a.recv()
        if "event" not in m:
            replies.append(m)
    assert [r.get("id") for r in replies] == ["stop", "after"], msgs + replies
    assert replies[0] == {"return": {}, "id": "stop"}
    assert c.cmd("query-status")["return"]["status"] == "paused"
    hangfs.release()
    assert c.cmd("cont") == {"return": {}}
    done = stats(c)["wr_operations"]
    wait_until(lambda: stats(c)["wr_operations"] > done + 3, what="the guest's loop")


def test_yanked_read_never_lands_in_guest_memory(vmm_factory, hangfs):
    """A read hung in the storage, yanked, fails in the guest with EIO at once; its buffer (a
    whole page, so the read went straight to guest memory) is set aside by the guest, and
    when the storage answers that read late, the data must not appear there: io-loop checks
    the buffer once an iteration succeeds again and prints io-late-data if it does."""
    img = hangfs.backing / "disk.raw"
    with open(img, "wb") as f:
        f.truncate(1 << 20)
    vm = vmm_factory(cmdline=f"probe.test=io-loop probe.count={SECTORS}",
                     extra=["--disk", f"path={hangfs.path / 'disk.raw'},node-name=disk0,"
                            "rerror=report,werror=report"])
    c = RawQmp(vm.sock).negotiate(oob=True)
    vm.wait_serial("PROBE io-loop iters=")
    hangfs.hang("read")
    hangfs.wait_blocked(ops="read", pid=vm.pid)
    assert c.cmd("yank", {"instances": [{"type": "block-node", "node-name": "disk0"}]},
                 oob=True) == {"return": {}}
    ev = c.event("BLOCK_IO_ERROR")
    assert ev["data"]["operation"] == "read", ev
    vm.wait_serial("op=read lba=0 status=ioerr")
    # The storage answers the abandoned read; the guest's loop verifies its data again.
    hangfs.release()
    ok = stats(c)["rd_operations"]
    wait_until(lambda: stats(c)["rd_operations"] > ok + 5, what="successful reads")
    vm.wait_serial("PROBE io-loop iters=")
    serial = vm.serial()
    assert "io-late-data" not in serial, serial
    assert "op=verify" not in serial, serial
