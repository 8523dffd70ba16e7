# SPDX-License-Identifier: Apache-2.0
"""Control while the VM is stuck on storage: commands that wait (stop draining a hung request,
blockdev-add) do so off the main loop; the waiting session's later commands queue behind them
in order, other sessions are served, out-of-band commands answer at once, and everything
completes in order when the storage answers again."""

from conftest import RawQmp, wait_until


def image(tmp_path, name="disk.raw", size=1 << 20):
    p = tmp_path / name
    with open(p, "wb") as f:
        f.truncate(size)
    return p


def stats(c):
    s = c.cmd("query-blockstats")["return"][0]["stats"]
    return (s["wr_operations"], s["rd_operations"], s["flush_operations"])


def wait_stuck(c):
    """Waits until the rule holds the guest's write."""
    def held():
        return c.cmd("query-blockdev-inject-errors", {"device": "drive0"})["return"][0]["held"]
    wait_until(lambda: held() == 1, what="the guest's write to be held")


def hung_vm(vmm_factory, tmp_path):
    """A guest looping on write-flush-read whose writes hang (a delay rule, no error)."""
    img = image(tmp_path)
    vm = vmm_factory(cmdline="probe.test=io-loop probe.count=1",
                     extra=["--disk", f"path={img},werror=report"], paused=True)
    ctl = RawQmp(vm.sock).negotiate(oob=True)
    r = ctl.cmd("blockdev-inject-error", {"device": "drive0", "operation": "write",
                                          "delay-ms": 3_600_000})
    assert r == {"return": {"id": 1}}, r
    ctl.cmd("cont")
    wait_stuck(ctl)
    return vm, ctl


def test_stop_drains_a_hung_request_without_holding_the_big_lock(vmm_factory, tmp_path):
    vm, ctl = hung_vm(vmm_factory, tmp_path)
    a = RawQmp(vm.sock).negotiate(oob=True)
    b = RawQmp(vm.sock).negotiate()
    # `stop` pauses the vCPUs and sends STOP, then waits for the hung write to drain; the
    # session's next command queues behind it.
    a.send({"execute": "stop", "id": "stop"})
    a.send({"execute": "query-name", "id": "after"})
    assert a.recv()["event"] == "STOP"
    # Out of band, at once, while `stop` waits.
    a.send({"exec-oob": "query-status", "id": "oob"})
    r = a.recv()
    assert r["id"] == "oob" and r["return"]["status"] == "paused", r
    # Another session's in-band commands are served meanwhile.
    assert b.cmd("query-kvm", id=1) == {"return": {"enabled": True, "present": True}, "id": 1}
    assert b.cmd("query-block", id=2)["id"] == 2
    assert a.quiet(0.5), f"stop returned before the drain: {a.buf!r}"
    # The storage answers again: stop completes, then what queued behind it, in order.
    assert b.cmd("blockdev-inject-error-remove", {"device": "drive0"}) == {"return": {}}
    assert a.recv() == {"return": {}, "id": "stop"}
    assert a.recv()["id"] == "after"
    # Recovery: cont resumes the guest, whose loop goes on without an error.
    assert a.cmd("cont") == {"return": {}}
    before = stats(a)
    wait_until(lambda: stats(a) != before, what="guest I/O after cont")
    assert "PROBE io-error" not in vm.serial(), vm.serial()


def test_flow_control_while_stalled(vmm_factory, tmp_path):
    """At most 8 in-band commands per session are taken while it is stalled; then the socket
    is not read, nothing is dropped, OOB replies overtake, in-band replies keep their order,
    and other sessions are unaffected."""
    vm, ctl = hung_vm(vmm_factory, tmp_path)
    a = RawQmp(vm.sock).negotiate(oob=True)
    a.send({"execute": "stop", "id": 0})
    for i in range(1, 20):
        a.send({"execute": "query-kvm", "id": i})
    assert a.recv()["event"] == "STOP"
    # The monitor stopped reading `a` after its first items: an exec-oob sent now waits in
    # the socket behind the unread in-band requests, so it cannot be answered yet...
    a.send({"exec-oob": "query-status", "id": "oob"})
    assert a.quiet(0.5), a.buf
    # ...while other sessions are served.
    other = RawQmp(vm.sock).negotiate()
    assert other.cmd("query-status")["return"]["status"] == "paused"
    ctl.cmd("blockdev-inject-error-remove", {"device": "drive0"})
    ids = []
    while len(ids) < 21:
        m = a.recv()
        if "event" in m:
            continue
        ids.append(m["id"])
    inband = [i for i in ids if i != "oob"]
    assert inband == list(range(20)), ids
    assert "oob" in ids


def test_blockdev_add_on_hung_storage_never_holds_the_main_loop(vm, raw_factory, hangfs):
    """blockdev-add of a file whose storage does not answer: the command waits (on a worker),
    the session's next command queues behind it, while other sessions — even one that
    connects and negotiates now — are served, out-of-band commands answer, and the guest keeps
    running. When the storage answers, both complete in order."""
    with open(hangfs.backing / "new.raw", "wb") as f:
        f.truncate(1 << 20)
    a = raw_factory(vm.sock).negotiate(oob=True)
    hangfs.hang()
    a.send({"execute": "blockdev-add", "id": "add",
            "arguments": {"driver": "file", "node-name": "new0",
                          "filename": str(hangfs.path / "new.raw")}})
    a.send({"execute": "query-name", "id": "after"})
    hangfs.wait_blocked(pid=vm.pid)
    # Out of band on the waiting session.
    a.send({"exec-oob": "query-status", "id": "oob"})
    r = a.recv()
    assert r["id"] == "oob" and r["return"]["status"] == "running", r
    # A session that connects during the stall negotiates and is served in band.
    late = raw_factory(vm.sock).negotiate()
    assert late.cmd("query-kvm", id=1)["id"] == 1
    assert late.cmd("query-named-block-nodes")["return"] == []
    # The guest runs: its vCPUs are not held either.
    assert late.cmd("query-status")["return"]["running"] is True
    assert a.quiet(0.5), f"blockdev-add returned while its open hangs: {a.buf!r}"
    hangfs.release()
    assert a.recv() == {"return": {}, "id": "add"}
    assert a.recv()["id"] == "after"
    nodes = a.cmd("query-named-block-nodes")["return"]
    assert [(n["node-name"], n["drv"], n["file"]) for n in nodes] == \
        [("new0", "file", str(hangfs.path / "new.raw"))], nodes
    # A raw format node over it, then deletion in the only order allowed.
    assert a.cmd("blockdev-add", {"driver": "raw", "node-name": "fmt0", "file": "new0"}) == \
        {"return": {}}
    r = a.cmd("blockdev-del", {"node-name": "new0"})
    assert r["error"]["desc"] == "Block device new0 is in use", r
    assert a.cmd("blockdev-del", {"node-name": "fmt0"}) == {"return": {}}
    assert a.cmd("blockdev-del", {"node-name": "new0"}) == {"return": {}}
    assert a.cmd("query-named-block-nodes")["return"] == []


def test_blockdev_add_and_del_errors(vmm_factory, tmp_path, raw_factory):
    img = image(tmp_path)
    vm = vmm_factory(extra=["--disk", f"path={img},node-name=disk0"])
    vm.wait_serial("PROBE idle")
    c = raw_factory(vm.sock).negotiate()
    other = image(tmp_path, "other.raw")

    def err(cmd, args):
        r = c.cmd(cmd, args)
        assert "error" in r, r
        return r["error"]["desc"]

    assert err("blockdev-add", {"driver": "file", "node-name": "disk0",
                                "filename": str(other)}) == \
        "Duplicate nodes with node-name='disk0'"
    assert "Could not open" in err("blockdev-add", {"driver": "file", "node-name": "x",
                                                    "filename": str(tmp_path / "missing")})
    assert err("blockdev-add", {"driver": "raw", "node-name": "x", "file": "nope"}) == \
        "Cannot find device='' nor node-name='nope'"
    assert err("blockdev-add", {"driver": "qcow2", "node-name": "x"}) == \
        "Parameter 'driver' does not accept value 'qcow2'"
    assert err("blockdev-add", {"driver": "file", "node-name": "x"}) == \
        "Parameter 'filename' is missing"
    assert err("blockdev-del", {"node-name": "nope"}) == \
        "Failed to find node with node-name='nope'"
    assert err("blockdev-del", {"node-name": "disk0"}) == \
        "Node disk0 is not owned by the monitor"
    # The image a disk holds is locked against a second writer.
    assert "write" in err("blockdev-add", {"driver": "file", "node-name": "y",
                                           "filename": str(img)})
    assert c.cmd("blockdev-add", {"driver": "file", "node-name": "ro", "read-only": True,
                                  "filename": str(other)}) == {"return": {}}


def test_real_eio_from_failing_storage(vmm_factory, tmp_path, raw_factory, hangfs):
    """A disk whose host storage fails (the filesystem under the image returns EIO): the error
    takes the policy path like an injected one; after the storage heals, cont completes the
    guest's writes and the image holds them."""
    import struct

    with open(hangfs.backing / "disk.raw", "wb") as f:
        f.truncate(1 << 20)
    hangfs.fail(["write"])
    vm = vmm_factory(cmdline="probe.test=blk-write,idle probe.count=8 probe.seed=4",
                     extra=["--disk", f"path={hangfs.path / 'disk.raw'},werror=stop"],
                     paused=True)
    c = raw_factory(vm.sock).negotiate()
    c.cmd("cont")
    while True:
        m = c.recv()
        if m.get("event") == "BLOCK_IO_ERROR":
            break
    d = m["data"]
    assert (d["operation"], d["action"], d["reason"]) == ("write", "stop", "Input/output error")
    assert c.recv()["event"] == "STOP"
    assert c.cmd("query-block")["return"][0]["io-status"] == "failed"
    hangfs.heal()
    c.cmd("cont")
    vm.wait_serial("PROBE idle")
    assert "PROBE blk-write dev=0 lba=0 count=8 status=ok" in vm.serial(), vm.serial()
    data = (hangfs.backing / "disk.raw").read_bytes()
    assert all(struct.unpack_from("<Q", data, 512 * x)[0] == x ^ (4 << 40) for x in range(8))


def test_hmp_stop_drains_too(vmm_factory, tmp_path):
    """HMP's stop is QMP's stop: its (empty) output comes after the held write drained."""
    vm, ctl = hung_vm(vmm_factory, tmp_path)
    a = RawQmp(vm.sock).negotiate()
    a.send({"execute": "human-monitor-command", "arguments": {"command-line": "stop"},
            "id": "hmp"})
    assert a.recv()["event"] == "STOP"
    assert a.quiet(0.5), f"HMP stop returned before the drain: {a.buf!r}"
    ctl.cmd("blockdev-inject-error-remove", {"device": "drive0"})
    assert a.recv() == {"return": "", "id": "hmp"}
    r = a.cmd("human-monitor-command", {"command-line": "stop", "cpu-index": 9})
    assert r["error"]["desc"] == "Parameter 'cpu-index' expects a CPU number", r
