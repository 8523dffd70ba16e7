# SPDX-License-Identifier: Apache-2.0
"""human-monitor-command: the HMP commands vmm implements, their output and errors, and
that they have the same effects (events) as the QMP commands."""

import re

import pytest
from qemu.qmp import ExecuteError
from qemu.qmp.legacy import QEMUMonitorProtocol

from conftest import HANG


@pytest.fixture
def hmp_vm(vmm_factory):
    v = vmm_factory(cpus=2, paused=True, name="hmp")
    qmp = QEMUMonitorProtocol(v.sock)
    qmp.settimeout(HANG)
    qmp.connect()
    yield v, qmp
    try:
        qmp.close()
    except EOFError:
        pass


def hmp(qmp, line, **kw):
    return qmp.cmd("human-monitor-command", **{"command-line": line, **kw})


def pull(qmp, name):
    ev = qmp.pull_event(wait=float(HANG))
    assert ev is not None and ev["event"] == name, ev
    return ev


def test_info_and_help(hmp_vm):
    v, qmp = hmp_vm
    assert hmp(qmp, "info status") == "VM status: paused (prelaunch)\r\n"
    version = qmp.cmd("query-version")
    q = version["qemu"]
    assert hmp(qmp, "info version") == \
        f"{q['major']}.{q['minor']}.{q['micro']} ({version['package']})\r\n"
    assert hmp(qmp, "info block") == ""  # no disks yet
    # A command that prints nothing returns "".
    assert hmp(qmp, "") == ""
    help_text = hmp(qmp, "help")
    assert help_text.endswith("\r\n") and "\n" not in help_text.replace("\r\n", "")
    listed = {line.split()[0] for line in help_text.split("\r\n") if line}
    assert {"cont", "stop", "system_reset", "system_powerdown", "quit", "help",
            "info"} <= listed, listed
    info = hmp(qmp, "info")
    subs = {line.split()[1] for line in info.split("\r\n") if line}
    assert {"status", "version", "block"} <= subs, info
    assert hmp(qmp, "?") == help_text
    # Unknown commands are HMP output, not QMP errors (as in QEMU).
    assert hmp(qmp, "no_such_command") == "unknown command: 'no_such_command'\r\n"
    assert hmp(qmp, "info no_such_thing") == "unknown command: 'info no_such_thing'\r\n"
    assert re.match(r"^stop: .+\r\n$", hmp(qmp, "stop now")), "extra argument accepted"
    assert qmp.cmd("query-status")["status"] == "prelaunch"


def test_cpu_index(hmp_vm):
    _, qmp = hmp_vm
    assert hmp(qmp, "info status", **{"cpu-index": 0}).startswith("VM status:")
    assert hmp(qmp, "info status", **{"cpu-index": 1}).startswith("VM status:")
    for bad in (2, -1, 1000):
        with pytest.raises(ExecuteError) as e:
            hmp(qmp, "info status", **{"cpu-index": bad})
        assert e.value.error_class == "GenericError"
        assert str(e.value) == "Parameter 'cpu-index' expects a CPU number"
    with pytest.raises(ExecuteError) as e:
        hmp(qmp, "info status", **{"cpu-index": "0"})
    assert str(e.value) == "Invalid parameter type for 'cpu-index', expected: integer"


def test_lifecycle_commands(hmp_vm):
    v, qmp = hmp_vm
    assert hmp(qmp, "cont") == ""
    pull(qmp, "RESUME")
    v.wait_serial("PROBE idle")
    assert hmp(qmp, "info status") == "VM status: running\r\n"
    assert hmp(qmp, "stop") == ""
    pull(qmp, "STOP")
    assert hmp(qmp, "info status") == "VM status: paused\r\n"
    assert hmp(qmp, "stop") == ""
    assert qmp.get_events() == []
    assert hmp(qmp, "cont") == ""
    pull(qmp, "RESUME")
    assert hmp(qmp, "system_reset") == ""
    ev = pull(qmp, "RESET")
    assert ev["data"] == {"guest": False, "reason": "host-qmp-system-reset"}
    v.wait_serial("PROBE idle", count=2)
    assert hmp(qmp, "system_powerdown") == ""
    pull(qmp, "POWERDOWN")
    ev = pull(qmp, "SHUTDOWN")
    assert ev["data"] == {"guest": True, "reason": "guest-shutdown"}
    assert v.wait_exit() == 0
    assert "PROBE power-button" in v.serial()


def test_quit(hmp_vm):
    v, qmp = hmp_vm
    assert hmp(qmp, "quit") == ""
    ev = pull(qmp, "SHUTDOWN")
    assert ev["data"] == {"guest": False, "reason": "host-qmp-quit"}
    assert v.wait_exit() == 0
