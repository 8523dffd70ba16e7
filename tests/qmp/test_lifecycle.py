# SPDX-License-Identifier: Apache-2.0
"""The monitor's sockets and the VM's lifecycle as seen by a QMP client: signals, guest
reset with --no-reboot, server=on (wait), stale/live/foreign socket paths, permissions,
cleanup, TCP."""

import os
import signal
import socket
import stat
import subprocess
import time

import pytest

from conftest import KERNEL, RawQmp, check_event_shape, free_tcp_port, vmm_bin


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_gives_shutdown_host_signal(vm, raw_factory, sig):
    c = raw_factory(vm.sock).negotiate()
    other = raw_factory(vm.sock).negotiate()
    os.kill(vm.pid, sig)
    for client in (c, other):
        check_event_shape(client.event("SHUTDOWN"), "SHUTDOWN",
                          {"guest": False, "reason": "host-signal"})
        with pytest.raises(EOFError):
            client.recv()
    assert vm.wait_exit() == 0
    assert not os.path.exists(vm.sock), "socket file left behind"


def test_guest_reset_with_no_reboot(vmm_factory, raw_factory):
    v = vmm_factory(paused=True, no_reboot=True, cmdline="probe.test=reboot")
    c = raw_factory(v.sock).negotiate()
    assert c.cmd("cont") == {"return": {}}
    check_event_shape(c.event("SHUTDOWN"), "SHUTDOWN", {"guest": True, "reason": "guest-reset"})
    assert [e["event"] for e in c.events] == ["RESUME"], c.events
    assert v.wait_exit() == 0
    assert v.serial().count("PROBE ready") == 1
    assert not os.path.exists(v.sock)


def test_server_wait_holds_guest(vmm_factory, tmp_path):
    """server=on (wait=on implied): the guest does not run until the first client connects."""
    path = tmp_path / "wait.sock"
    v = vmm_factory(qmp=[f"unix:{path},server=on"])
    # Bounded negative check: a guest that wrongly runs prints its first line within
    # milliseconds of starting.
    time.sleep(0.5)
    assert v.serial() == "", f"guest ran before a client connected: {v.serial()!r}"
    assert v.alive()
    with RawQmp(str(path)) as c:
        # The connection releases the guest.
        v.wait_serial("PROBE ready")
        v.wait_serial("PROBE idle")
        c.negotiate()
        assert c.cmd("query-status")["return"]["status"] == "running"
        # No RESUME before negotiation.
        assert c.events == []


def test_server_wait_before_connect(vmm_factory, tmp_path):
    """Without any client, the guest stays held (checked for half a second) and prelaunch."""
    path = tmp_path / "wait.sock"
    other = tmp_path / "other.sock"
    # A second, non-waiting socket lets us look without releasing the guest.
    v = vmm_factory(qmp=[f"unix:{path},server=on,wait=on", f"unix:{other}"])
    with RawQmp(str(other)) as c:
        c.negotiate()
        time.sleep(0.5)
        assert v.serial() == ""
        assert c.cmd("query-status")["return"] == {
            "running": False, "singlestep": False, "status": "prelaunch"}
        with RawQmp(str(path)):
            v.wait_serial("PROBE ready")
        assert c.cmd("query-status")["return"]["status"] == "running"


def test_wait_off_runs_at_once(vmm_factory, tmp_path):
    path = tmp_path / "nowait.sock"
    v = vmm_factory(qmp=[f"unix:{path},server=on,wait=off"])
    v.wait_serial("PROBE idle")


def test_socket_mode_and_cleanup(vm, raw_factory):
    st = os.stat(vm.sock)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    c = raw_factory(vm.sock).negotiate()
    c.cmd("quit")
    assert vm.wait_exit() == 0
    assert not os.path.exists(vm.sock)


def test_stale_socket_replaced(vmm_factory, tmp_path):
    path = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # the file stays; nobody listens: a crashed VMM's leftover
    assert path.exists()
    v = vmm_factory(qmp=[f"unix:{path}"])
    with RawQmp(str(path)) as c:
        c.negotiate()
        assert c.cmd("query-status")["return"]["status"] in ("running", "prelaunch")
    assert v.alive()


def run_vmm_expect_error(argv):
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=20)
    err = p.stderr.decode(errors="replace")
    assert p.returncode == 1, (p.returncode, err)
    lines = err.strip().split("\n")
    assert len(lines) == 1 and lines[0].startswith("vmm: "), err
    return lines[0]


def base_argv(tmp_path):
    return [str(vmm_bin()), "--kernel", str(KERNEL), "--cmdline", "probe.test=idle",
            "--memory", "64", "--serial", f"file:{tmp_path / 'refused-serial.txt'}"]


def test_live_socket_refused(vm, tmp_path):
    line = run_vmm_expect_error(base_argv(tmp_path) + ["--qmp", f"unix:{vm.sock}"])
    assert vm.sock in line, line
    # The running VM's socket still works.
    with RawQmp(vm.sock) as c:
        c.negotiate()
        assert c.cmd("query-name")["return"] == {"name": "test-vm"}


def test_live_socket_of_other_process_refused(tmp_path):
    path = tmp_path / "foreign.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.listen(1)
    try:
        line = run_vmm_expect_error(base_argv(tmp_path) + ["--qmp", f"unix:{path}"])
        assert str(path) in line
        assert path.exists(), "vmm removed a live socket"
    finally:
        s.close()


def test_non_socket_path_refused(tmp_path):
    path = tmp_path / "regular-file"
    path.write_text("keep me")
    line = run_vmm_expect_error(base_argv(tmp_path) + ["--qmp", f"unix:{path}"])
    assert str(path) in line
    assert path.read_text() == "keep me"


def test_tcp_port_in_use_refused(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    port = s.getsockname()[1]
    try:
        run_vmm_expect_error(base_argv(tmp_path) + ["--qmp", f"tcp:127.0.0.1:{port}"])
    finally:
        s.close()


@pytest.mark.parametrize("spec", ["stdio", "unix:", "tcp:localhost", "unix:/x,server=off",
                                  "unix:/x,nowait", "unix:/x,wait=maybe"])
def test_bad_qmp_spec(tmp_path, spec):
    run_vmm_expect_error(base_argv(tmp_path) + ["--qmp", spec])


def test_several_sockets(vmm_factory, tmp_path):
    port = free_tcp_port()
    a, b = tmp_path / "a.sock", tmp_path / "b.sock"
    v = vmm_factory(qmp=[f"unix:{a}", f"unix:{b}", f"tcp:127.0.0.1:{port}"], name="multi")
    clients = [RawQmp(str(a)), RawQmp(str(b)), RawQmp(("127.0.0.1", port))]
    try:
        for c in clients:
            c.negotiate()
        clients[0].cmd("stop")
        for c in clients:
            assert c.event("STOP")
        clients[2].cmd("quit")
        for c in clients:
            assert c.event("SHUTDOWN")["data"]["reason"] == "host-qmp-quit"
    finally:
        for c in clients:
            c.close()
    assert v.wait_exit() == 0
    assert not a.exists() and not b.exists()


def test_reset_in_prelaunch_stays_prelaunch(vmm_factory, raw_factory):
    v = vmm_factory(paused=True, cpus=2)
    c = raw_factory(v.sock).negotiate()
    for cpu in c.cmd("query-cpus-fast")["return"]:
        assert os.path.isdir(f"/proc/{v.pid}/task/{cpu['thread-id']}"), cpu
    assert c.cmd("system_reset") == {"return": {}}
    check_event_shape(c.event("RESET"), "RESET",
                      {"guest": False, "reason": "host-qmp-system-reset"})
    assert c.cmd("query-status")["return"]["status"] == "prelaunch"
    assert v.serial() == ""
    c.cmd("cont")
    v.wait_serial("PROBE idle")
    assert v.serial().count("PROBE ready") == 1


def test_powerdown_while_paused(vm, raw_factory):
    """The button pressed while paused is seen by the guest once it continues."""
    c = raw_factory(vm.sock).negotiate()
    c.cmd("stop")
    assert c.cmd("system_powerdown") == {"return": {}}
    check_event_shape(c.event("POWERDOWN"), "POWERDOWN")
    assert c.cmd("query-status")["return"]["status"] == "paused"
    assert "power-button" not in vm.serial()
    c.cmd("cont")
    check_event_shape(c.event("SHUTDOWN"), "SHUTDOWN", {"guest": True, "reason": "guest-shutdown"})
    assert vm.wait_exit() == 0
    assert "PROBE power-button" in vm.serial()


def test_signal_while_paused(vm, raw_factory):
    c = raw_factory(vm.sock).negotiate()
    c.cmd("stop")
    os.kill(vm.pid, signal.SIGTERM)
    check_event_shape(c.event("SHUTDOWN"), "SHUTDOWN", {"guest": False, "reason": "host-signal"})
    assert vm.wait_exit() == 0
