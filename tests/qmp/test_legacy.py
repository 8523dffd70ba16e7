# SPDX-License-Identifier: Apache-2.0
"""The synchronous client, qemu.qmp.legacy.QEMUMonitorProtocol (what QEMU's iotests and
python/qemu/machine use): commands, events, raw messages, TCP."""

import os

import pytest
from qemu.qmp import ExecuteError
from qemu.qmp.legacy import QEMUMonitorProtocol

from conftest import HANG, check_event_shape, free_tcp_port


def legacy(addr, negotiate=True):
    qmp = QEMUMonitorProtocol(addr)
    qmp.settimeout(HANG)
    greeting = qmp.connect(negotiate=negotiate)
    return qmp, greeting


def pull(qmp, name):
    ev = qmp.pull_event(wait=float(HANG))
    assert ev is not None and ev["event"] == name, ev
    return ev


def close_after_exit(qmp):
    try:
        qmp.close()
    except EOFError:
        pass


def test_commands_and_events(vm):
    qmp, greeting = legacy(vm.sock)
    try:
        assert greeting["QMP"]["capabilities"] == ["oob", "explicit-handles"]
        assert qmp.cmd("query-status") == {"running": True, "singlestep": False,
                                           "status": "running"}
        assert qmp.cmd("query-name") == {"name": "test-vm"}
        assert qmp.cmd("query-kvm") == {"enabled": True, "present": True}
        assert qmp.cmd("query-version") == greeting["QMP"]["version"]
        assert "query-status" in {c["name"] for c in qmp.cmd("query-commands")}
        assert qmp.cmd("query-block") == [] and qmp.cmd("query-blockstats") == []
        cpus = qmp.cmd("query-cpus-fast")
        assert len(cpus) == 1 and os.path.isdir(f"/proc/{vm.pid}/task/{cpus[0]['thread-id']}")
        # cmd_obj with the client's own ids (iotests style; qemu.qmp wants strings; other
        # JSON types are covered by the raw-socket tests).
        for ident in ("abc", "", "cookie#1", "ünï"):
            r = qmp.cmd_obj({"execute": "query-name", "id": ident})
            assert r == {"return": {"name": "test-vm"}, "id": ident}
        # A reply of over 200 KB on one line (QEMU's schema is that big; ours is smaller).
        big = "x" * 200_000
        assert qmp.cmd_obj({"execute": "query-name", "id": big})["id"] == big
        schema = qmp.cmd("query-qmp-schema")
        assert any(e["name"] == "query-status" for e in schema)
        r = qmp.cmd_raw("no-such-cmd")
        assert r["error"]["class"] == "CommandNotFound"
        with pytest.raises(ExecuteError):
            qmp.cmd("no-such-cmd")
        assert qmp.pull_event() is None
        assert qmp.cmd("stop") == {}
        check_event_shape(pull(qmp, "STOP"), "STOP")
        assert qmp.cmd("query-status")["status"] == "paused"
        assert qmp.cmd("stop") == {}
        assert qmp.get_events() == [], "stop when paused must not emit STOP"
        assert qmp.cmd("cont") == {}
        check_event_shape(pull(qmp, "RESUME"), "RESUME")
        assert qmp.cmd("system_reset") == {}
        check_event_shape(pull(qmp, "RESET"), "RESET",
                          {"guest": False, "reason": "host-qmp-system-reset"})
        vm.wait_serial("PROBE ready", count=2)
        vm.wait_serial("PROBE idle", count=2)
        assert qmp.cmd("system_powerdown") == {}
        check_event_shape(pull(qmp, "POWERDOWN"), "POWERDOWN")
        check_event_shape(pull(qmp, "SHUTDOWN"), "SHUTDOWN",
                          {"guest": True, "reason": "guest-shutdown"})
    finally:
        close_after_exit(qmp)
    assert vm.wait_exit() == 0
    assert "PROBE power-button" in vm.serial()


def test_quit(vm):
    qmp, _ = legacy(vm.sock)
    r = qmp.cmd_obj({"execute": "quit", "id": "bye"})
    assert r == {"return": {}, "id": "bye"}
    # The SHUTDOWN event came before the return, so it is already queued.
    events = qmp.get_events()
    assert [e["event"] for e in events] == ["SHUTDOWN"], events
    check_event_shape(events[0], "SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
    close_after_exit(qmp)
    assert vm.wait_exit() == 0


def test_without_negotiation(vm):
    """connect(negotiate=False): the client negotiates by hand."""
    qmp, greeting = legacy(vm.sock, negotiate=False)
    try:
        r = qmp.cmd_obj({"execute": "query-status", "id": "1"})
        assert r == {"id": "1", "error": {
            "class": "CommandNotFound",
            "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}
        assert qmp.cmd_obj({"execute": "qmp_capabilities", "id": "2"}) == {"return": {}, "id": "2"}
        assert qmp.cmd("query-status")["status"] == "running"
    finally:
        qmp.close()


def test_tcp(vmm_factory):
    port = free_tcp_port()
    v = vmm_factory(qmp=[f"tcp:127.0.0.1:{port},server=on,wait=off"], name="tcp")
    qmp = QEMUMonitorProtocol(QEMUMonitorProtocol.parse_address(f"127.0.0.1:{port}"))
    qmp.settimeout(HANG)
    qmp.connect()
    try:
        assert qmp.cmd("query-name") == {"name": "tcp"}
        qmp.cmd("stop")
        pull(qmp, "STOP")
        qmp.cmd("cont")
        pull(qmp, "RESUME")
    finally:
        qmp.close()
    assert v.alive()
