# SPDX-License-Identifier: Apache-2.0
"""Control while the VM is stuck on storage: commands that wait (stop draining a hung request,
blockdev-add) do so off the main loop; the waiting session's later commands queue behind them
in order, other sessions are served, out-of-band commands answer at once, and everything
completes in order when the storage answers again."""

import time

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
    """Waits until the guest's I/O stops advancing (its request is held by the rule)."""
    last = None

    def stuck():
        nonlocal last
        now = stats(c)
        same = now == last
        last = now
        if not same:
            time.sleep(0.3)
        return same
    wait_until(stuck, what="the guest's I/O to hang")


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
