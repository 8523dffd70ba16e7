# SPDX-License-Identifier: Apache-2.0
"""vmm run as `qemu-system-x86_64` with QEMU's command line, as libvirt runs it: the probe
(-machine none, -daemonize, -pidfile), a monitor on an inherited listening descriptor,
-no-shutdown, a pty console, refusals in QEMU's format; and the QMP that describes the machine
(query-target, query-machines, query-chardev, qom-*, device-list-properties, migration
capabilities, query-jobs, query-command-line-options)."""

import os
import re
import select
import socket
import subprocess
import time

import pytest

from conftest import HANG, KERNEL, RawQmp, listening, vmm_bin, wait_until


@pytest.fixture
def qemu(tmp_path):
    """A link named qemu-system-x86_64 to vmm, as a libvirt domain's <emulator>."""
    link = tmp_path / "bin" / "qemu-system-x86_64"
    link.parent.mkdir()
    link.symlink_to(vmm_bin())
    return link


class Proc:
    def __init__(self, argv, tmp, **kw):
        self.stderr_path = tmp / f"stderr-{id(self)}.txt"
        self.proc = subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL,
                                     stderr=open(self.stderr_path, "wb"), **kw)

    def stderr(self):
        return self.stderr_path.read_text(errors="replace")

    def wait(self, timeout=HANG):
        return self.proc.wait(timeout)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def procs():
    started = []

    def start(argv, tmp, **kw):
        p = Proc(argv, tmp, **kw)
        started.append(p)
        return p
    yield start
    for p in started:
        p.kill()


def test_libvirts_probe(qemu, tmp_path, procs):
    """libvirt's capability probe: the parent exits 0 only once the monitor listens, the
    pid file names the running child, and QMP is answered until quit."""
    sock, pidfile = tmp_path / "qmp.monitor", tmp_path / "qmp.pid"
    p = procs([qemu, "-S", "-no-user-config", "-nodefaults", "-nographic",
               "-machine", "none,accel=kvm:tcg", "-qmp", f"unix:{sock},server=on,wait=off",
               "-pidfile", pidfile, "-daemonize"], tmp_path)
    assert p.wait() == 0, p.stderr()
    assert listening(str(sock)), "the parent exited before the monitor listened"
    pid = int(pidfile.read_text())
    assert pid != p.proc.pid and os.path.exists(f"/proc/{pid}")
    try:
        with RawQmp(sock) as q:
            q.negotiate()
            assert q.cmd("query-target") == {"return": {"arch": "x86_64"}}
            assert q.cmd("query-kvm") == {"return": {"enabled": True, "present": True}}
            assert q.cmd("query-status")["return"]["status"] == "prelaunch"
            assert q.cmd("query-cpus-fast") == {"return": []}
            assert q.cmd("query-block") == {"return": []}
            types = {t["name"] for t in q.cmd("qom-list-types")["return"]}
            assert {"virtio-mmio", "virtio-blk-device", "isa-serial"} <= types
            assert q.cmd("qom-list-properties", {"typename": "none-machine"}) == {"return": []}
            cmds = {c["name"] for c in q.cmd("query-commands")["return"]}
            assert "query-cpu-definitions" not in cmds
            assert q.cmd("quit") == {"return": {}}
        wait_until(lambda: not os.path.exists(f"/proc/{pid}") or
                   open(f"/proc/{pid}/stat").read().split()[2] == "Z", what="the probe to exit")
        wait_until(lambda: not pidfile.exists(), what="the pid file to be removed")
    finally:
        if os.path.exists(f"/proc/{pid}"):
            os.kill(pid, 9)


def test_daemonize_failure_is_the_parents_exit_code(qemu, tmp_path, procs):
    p = procs([qemu, "-machine", "none", "-qmp", "unix:/nonexistent/dir/q.sock,server=on,wait=off",
               "-daemonize"], tmp_path)
    assert p.wait() == 1
    assert "Cannot listen on QMP socket '/nonexistent/dir/q.sock'" in p.stderr()


def test_monitor_on_an_inherited_listening_socket(qemu, tmp_path, procs):
    """libvirt binds the monitor socket itself and passes it as fd=N: vmm accepts on it and
    leaves the path alone, also when it exits."""
    path = tmp_path / "monitor.sock"
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(str(path))
    lsock.listen(1)
    fd = lsock.fileno()
    os.set_inheritable(fd, True)
    p = procs([qemu, "-machine", "microvm", "-m", "64", "-kernel", KERNEL,
               "-append", "probe.test=idle", "-nodefaults",
               "-chardev", f"socket,id=charmonitor,fd={fd},server=on,wait=off",
               "-mon", "chardev=charmonitor,id=monitor,mode=control", "-S"],
              tmp_path, pass_fds=[fd])
    lsock.close()
    with RawQmp(path) as q:
        q.negotiate()
        assert q.cmd("query-status")["return"]["status"] == "prelaunch"
        chardevs = q.cmd("query-chardev")["return"]
        assert chardevs == [{"label": "charmonitor", "filename": f"unix:{path},server=on",
                             "frontend-open": True}]
        assert q.cmd("quit") == {"return": {}}
    assert p.wait() == 0, p.stderr()
    assert path.exists(), "the inherited socket's path was removed"


def start_with_monitor(qemu, tmp_path, procs, extra, append):
    sock = tmp_path / "m.sock"
    p = procs([qemu, "-machine", "microvm", "-m", "64", "-kernel", KERNEL, "-append", append,
               "-nodefaults", "-qmp", f"unix:{sock},server=on,wait=off", *extra], tmp_path)
    wait_until(lambda: listening(str(sock)) or p.proc.poll() is not None, what="the monitor")
    assert p.proc.poll() is None, p.stderr()
    return p, RawQmp(sock).negotiate()


def test_no_shutdown_keeps_the_vm_for_a_reset(qemu, tmp_path, procs):
    """-no-shutdown: the guest's power-off is SHUTDOWN then STOP, the VM waits in `shutdown`;
    system_reset + cont (libvirt's reboot) boots it again; a signal still ends it."""
    log = tmp_path / "serial.log"
    # -S, then cont once negotiated (as libvirt starts a guest): the power-off cannot come
    # before this client listens for its events.
    p, q = start_with_monitor(qemu, tmp_path, procs,
                              ["-S", "-no-shutdown", "-serial", f"file:{log}"], "probe.test=boot")
    try:
        assert q.cmd("cont") == {"return": {}}
        ev = q.event("SHUTDOWN")
        assert ev["data"] == {"guest": True, "reason": "guest-shutdown"}
        q.event("STOP")
        assert q.cmd("query-status")["return"] == {"running": False, "singlestep": False,
                                                   "status": "shutdown"}
        assert q.cmd("cont")["error"]["desc"] == "Resetting the Virtual Machine is required"
        assert p.proc.poll() is None
        assert q.cmd("system_reset") == {"return": {}}
        assert q.event("RESET")["data"] == {"guest": False, "reason": "host-qmp-system-reset"}
        assert q.cmd("query-status")["return"]["status"] == "prelaunch"
        assert q.cmd("cont") == {"return": {}}
        q.event("RESUME")
        wait_until(lambda: log.read_text().count("PROBE-DONE rc=0") == 2, what="a second boot")
        q.event("SHUTDOWN")
        p.proc.terminate()
        assert q.event("SHUTDOWN")["data"] == {"guest": False, "reason": "host-signal"}
        assert p.wait() == 0
    finally:
        q.close()


def test_pty_console(qemu, tmp_path, procs):
    log = tmp_path / "console.log"
    img = tmp_path / "disk.raw"
    img.write_bytes(bytes(1 << 20))
    p, q = start_with_monitor(qemu, tmp_path, procs,
                              ["-chardev", f"pty,id=charserial0,logfile={log}",
                               "-device", "isa-serial,chardev=charserial0,id=serial0",
                               "-blockdev", f"driver=file,node-name=f0,filename={img}",
                               "-blockdev", "driver=raw,node-name=fmt0,file=f0",
                               "-device", "virtio-blk-device,drive=fmt0,id=disk0"],
                              "probe.test=io-loop probe.count=8")
    try:
        serial = [c for c in q.cmd("query-chardev")["return"] if c["label"] == "charserial0"]
        assert len(serial) == 1 and serial[0]["frontend-open"], serial
        m = re.fullmatch(r"pty:(/dev/pts/\d+)", serial[0]["filename"])
        assert m, serial
        # The log has everything; the pty has what comes while it is open.
        wait_until(lambda: "PROBE io-loop dev=0" in log.read_text(), what="the console log")
        fd = os.open(m.group(1), os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        got = b""
        try:
            def line():
                nonlocal got
                if select.select([fd], [], [], 0.2)[0]:
                    got += os.read(fd, 4096)
                return b"PROBE io-loop iters=" in got
            wait_until(line, what=f"output on the pty (got {got!r})")
        finally:
            os.close(fd)
        assert b"PROBE ready" not in got, "output from before the reader connected"
        peripheral = {e["name"]: e["type"]
                      for e in q.cmd("qom-list", {"path": "/machine/peripheral"})["return"]}
        assert peripheral == {"type": "string", "disk0": "child<virtio-blk-device>",
                              "serial0": "child<isa-serial>"}
        p.proc.terminate()
        assert p.wait() == 0, p.stderr()
    finally:
        q.close()


def test_socket_console(qemu, tmp_path, procs):
    """A serial console on a listening socket: one client at a time; the next one is served
    once the first leaves."""
    path = tmp_path / "console.sock"
    img = tmp_path / "disk.raw"
    img.write_bytes(bytes(1 << 20))
    p, q = start_with_monitor(qemu, tmp_path, procs, [
        "-chardev", f"socket,id=charserial0,path={path},server=on,wait=off",
        "-device", "isa-serial,chardev=charserial0,id=serial0",
        "-blockdev", f"driver=file,node-name=f0,filename={img}",
        "-blockdev", "driver=raw,node-name=fmt0,file=f0",
        "-device", "virtio-blk-device,drive=fmt0,id=disk0"], "probe.test=io-loop probe.count=8")
    try:
        serial = [c for c in q.cmd("query-chardev")["return"] if c["label"] == "charserial0"]
        assert serial == [{"label": "charserial0", "filename": f"unix:{path},server=on",
                           "frontend-open": True}]
        for _ in range(2):
            with socket.socket(socket.AF_UNIX) as c:
                c.settimeout(HANG)
                c.connect(str(path))
                got = b""
                while b"PROBE io-loop iters=" not in got:
                    chunk = c.recv(4096)
                    assert chunk, f"the console closed (got {got!r})"
                    got += chunk
        # Exit is clean (the socket file is removed by the thread that drops the machine).
        p.proc.terminate()
        assert p.wait() == 0, p.stderr()
        assert not path.exists()
    finally:
        q.close()


@pytest.mark.parametrize("args,message", [
    (["-no-acpi"], "qemu-system-x86_64: -no-acpi: vmm's machine is described by ACPI only and "
                   "cannot run without it; a libvirt domain needs <features><acpi/></features>"),
    (["-foo"], "qemu-system-x86_64: -foo: invalid option"),
    (["-m"], "qemu-system-x86_64: -m: requires an argument"),
    (["-device", "virtio-blk-pci,drive=d"], "qemu-system-x86_64: -device virtio-blk-pci,drive=d: "
     "'virtio-blk-pci' is not a valid device model name: vmm's machine has no PCI (give "
     "libvirt's virtio devices <address type='virtio-mmio'/>)"),
])
def test_refusals_are_one_line_and_exit_1(qemu, tmp_path, procs, args, message):
    p = procs([qemu, "-kernel", KERNEL, *args], tmp_path)
    assert p.wait() == 1
    assert p.stderr() == message + "\n"


def test_msg_timestamp(qemu, tmp_path, procs):
    p = procs([qemu, "-msg", "timestamp=on", "-kernel", tmp_path / "missing"], tmp_path)
    assert p.wait() == 1
    line = p.stderr()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z qemu-system-x86_64: .*missing.*\n",
                        line), line


def test_blockdev_and_device_make_a_disk(qemu, tmp_path, procs):
    img = tmp_path / "disk.raw"
    img.write_bytes(bytes(1 << 20))
    log = tmp_path / "serial.log"
    p, q = start_with_monitor(qemu, tmp_path, procs, [
        "-serial", f"file:{log}",
        "-blockdev", f"driver=file,node-name=f0,filename={img},cache.direct=on",
        "-blockdev", '{"driver":"raw","node-name":"fmt0","file":"f0"}',
        "-device", "virtio-blk-device,drive=fmt0,id=disk0,serial=SN42,werror=stop",
    ], "probe.test=blk-id,idle")
    try:
        wait_until(lambda: "PROBE idle" in log.read_text(), what="the probe")
        assert "id=SN42" in log.read_text()
        block = q.cmd("query-block")["return"]
        assert [(b["device"], b["qdev"], b["inserted"]["node-name"], b["io-status"])
                for b in block] == [("disk0", "/machine/peripheral/disk0/virtio-backend",
                                     "fmt0", "ok")]
        nodes = {n["node-name"]: n["drv"]
                 for n in q.cmd("query-named-block-nodes", {"flat": True})["return"]}
        assert nodes == {"f0": "file", "fmt0": "raw"}
        assert q.cmd("blockdev-del", {"node-name": "fmt0"})["error"]["desc"] == \
            "Node fmt0 is in use"
        peripheral = [e["name"] for e in q.cmd("qom-list", {"path": "/machine/peripheral"})["return"]]
        assert peripheral == ["type", "disk0"]
        disk = {e["name"] for e in
                q.cmd("qom-list", {"path": "/machine/peripheral/disk0/virtio-backend"})["return"]}
        assert {"drive", "serial", "werror"} <= disk
    finally:
        q.close()


def test_machine_description(vm):
    """vmm's own command line gets the same answers."""
    with RawQmp(vm.sock) as q:
        q.negotiate()
        assert q.cmd("query-target") == {"return": {"arch": "x86_64"}}
        machines = q.cmd("query-machines")["return"]
        assert machines == [{"name": "microvm", "is-default": True, "cpu-max": 64,
                             "hotpluggable-cpus": False, "numa-mem-supported": False,
                             "deprecated": False}]
        assert q.cmd("query-chardev")["return"] == [
            {"label": "compat_monitor0", "filename": f"unix:{vm.sock},server=on",
             "frontend-open": True},
            {"label": "serial0", "filename": f"file:{vm.serial_path}", "frontend-open": True},
        ]
        props = {p["name"]: p for p in
                 q.cmd("device-list-properties", {"typename": "virtio-blk-device"})["return"]}
        assert props["werror"]["type"] == "BlockdevOnError"
        assert props["werror"]["default-value"] == "enospc"
        e = q.cmd("device-list-properties", {"typename": "virtio-net-pci"})["error"]
        assert e == {"class": "DeviceNotFound", "desc": "Device 'virtio-net-pci' not found"}
        e = q.cmd("device-list-properties", {"typename": "device"})["error"]
        assert e == {"class": "GenericError",
                     "desc": "Parameter 'typename' expects non-abstract device type"}
        assert q.cmd("qom-list-properties", {"typename": "memory-backend-file"}) == {"return": []}
        assert q.cmd("qom-list-types", {"implements": "virtio-device"})["return"] == \
            [{"name": "virtio-blk-device", "parent": "virtio-device"}]
        e = q.cmd("qom-list", {"path": "/machine/unattached/device[0]"})["error"]
        assert e["class"] == "DeviceNotFound"
        assert q.cmd("query-jobs") == {"return": []}
        opts = q.cmd("query-command-line-options", {"option": "rtc"})["return"]
        assert opts == [{"option": "rtc", "parameters": [
            {"name": "base", "type": "string"}, {"name": "clock", "type": "string"},
            {"name": "driftfix", "type": "string"}]}]
        # -sandbox is listed (it maps onto vmm's seccomp filters); an unknown option is not.
        opts = q.cmd("query-command-line-options", {"option": "sandbox"})["return"]
        assert [p["name"] for p in opts[0]["parameters"]] == \
            ["enable", "obsolete", "elevateprivileges", "spawn", "resourcecontrol"], opts
        assert q.cmd("query-command-line-options", {"option": "spice"})["error"]["desc"] == \
            "invalid option name: spice"


def test_migration_capabilities(vm):
    with RawQmp(vm.sock) as q:
        q.negotiate()
        assert q.cmd("query-migrate-capabilities") == \
            {"return": [{"capability": "events", "state": False},
                        {"capability": "postcopy-ram", "state": False}]}
        on = {"capabilities": [{"capability": "events", "state": True}]}
        assert q.cmd("migrate-set-capabilities", on) == {"return": {}}
        assert q.cmd("query-migrate-capabilities") == \
            {"return": [{"capability": "events", "state": True},
                        {"capability": "postcopy-ram", "state": False}]}
        bad = {"capabilities": [{"capability": "xbzrle", "state": True}]}
        assert q.cmd("migrate-set-capabilities", bad)["error"] == {
            "class": "GenericError",
            "desc": "Parameter 'capability' does not accept value 'xbzrle'"}
        # Nothing changed.
        assert q.cmd("query-migrate-capabilities")["return"][0]["state"] is True


def test_exec_migration_with_daemonize_and_incoming_defer(qemu, tmp_path, procs):
    """QEMU's command line both ways, as libvirt saves and restores a domain: `migrate
    exec:cat > FILE`, then a `-daemonize` destination with `-incoming defer` and
    `migrate-incoming exec:cat FILE`. The launcher process is forked after the daemon's fork,
    so the command runs though the daemon's threads are confined."""
    image = tmp_path / "saved.bin"
    src_log, dst_log = tmp_path / "src.log", tmp_path / "dst.log"
    p, q = start_with_monitor(qemu, tmp_path, procs, ["-serial", f"file:{src_log}"],
                              "probe.test=idle")
    try:
        wait_until(lambda: "PROBE idle" in src_log.read_text(), what="the source guest")
        assert q.cmd("migrate", {"uri": f"exec:cat > '{image}'"}) == {"return": {}}
        wait_until(lambda: q.cmd("query-migrate")["return"]["status"] in ("completed", "failed"),
                   what="the migration's end")
        assert q.cmd("query-migrate")["return"]["status"] == "completed"
    finally:
        q.close()
        p.kill()
    sock, pidfile = tmp_path / "dst.sock", tmp_path / "dst.pid"
    d = procs([qemu, "-machine", "microvm", "-m", "64", "-kernel", KERNEL,
               "-append", "probe.test=idle", "-nodefaults", "-serial", f"file:{dst_log}",
               "-qmp", f"unix:{sock},server=on,wait=off", "-incoming", "defer",
               "-pidfile", pidfile, "-daemonize"], tmp_path)
    assert d.wait() == 0, d.stderr()
    pid = int(pidfile.read_text())
    try:
        with RawQmp(sock) as dq:
            dq.negotiate()
            assert dq.cmd("query-status")["return"]["status"] == "inmigrate"
            assert dq.cmd("migrate-incoming", {"uri": f"exec:cat '{image}'"}) == {"return": {}}
            wait_until(lambda: dq.cmd("query-status")["return"]["status"] == "running",
                       what="the destination to run")
            assert dq.cmd("system_powerdown") == {"return": {}}
            wait_until(lambda: "PROBE-DONE rc=0" in dst_log.read_text(), what="the guest's end")
        assert "PROBE power-button" in dst_log.read_text()
        wait_until(lambda: not os.path.exists(f"/proc/{pid}") or
                   open(f"/proc/{pid}/stat").read().split()[2] == "Z", what="vmm to exit")
    finally:
        if os.path.exists(f"/proc/{pid}"):
            os.kill(pid, 9)
