# SPDX-License-Identifier: Apache-2.0
"""libvirt 9.0's QEMU driver runs vmm as a domain's emulator, checked with virsh: capabilities,
start with the probe guest's lines on the console (its log and its pty), suspend/resume and
their reasons, block statistics that match the guest's I/O, block info, I/O limits, shutdown
through the power button, libvirt's reboot, destroy, a libvirtd restart that reconnects, and a
write error that pauses the domain until it is gone."""

import os
import re
import select
import socket
import struct
import subprocess
import time

from conftest import EMULATOR, HANG, IMAGE_SIZE, restart_libvirtd, wait_until

SECTOR = 512


def pattern_ok(image, lba, count, seed):
    """The probe's sector pattern: sector X holds the u64 X ^ (seed << 40), 64 times."""
    with open(image, "rb") as f:
        f.seek(lba * SECTOR)
        data = f.read(count * SECTOR)
    for i in range(count):
        x = lba + i
        want = struct.pack("<Q", x ^ (seed << 40)) * 64
        if data[i * SECTOR:(i + 1) * SECTOR] != want:
            return False
    return True


def stats(virsh, name):
    out = virsh("domblkstat", name, "vda")
    return {k: int(v) for _, k, v in (line.split() for line in out.splitlines())}


def test_capabilities_of_the_emulator(virsh):
    caps = virsh("domcapabilities", "--emulatorbin", str(EMULATOR), "--machine", "microvm",
                 "--virttype", "kvm")
    assert "<machine>microvm</machine>" in caps
    assert "<vcpu max='64'/>" in caps


def test_start_console_stats_suspend_resume_shutdown(virsh, domain):
    d = domain("probe.test=boot,blk-write,blk-read,idle probe.count=64 probe.seed=5")
    d.start()
    d.wait_serial("PROBE idle")
    console = d.serial()
    assert "PROBE ready entry=bzimage64 cpus=1" in console
    assert "PROBE blk-write dev=0 lba=0 count=64 status=ok flush=ok" in console
    assert re.search(r"PROBE blk-read dev=0 lba=0 count=64 status=ok .* match=yes", console)
    assert d.state() == "running (booted)"
    # The console's pty, as query-chardev reported it to libvirt.
    tty = virsh("ttyconsole", d.name)
    assert re.fullmatch(r"/dev/pts/\d+", tty), tty
    # The guest wrote and read 64 sectors, then flushed once.
    s = stats(virsh, d.name)
    assert (s["wr_bytes"], s["rd_bytes"]) == (64 * 512, 64 * 512), s
    assert s["wr_req"] >= 1 and s["rd_req"] >= 1 and s["flush_operations"] == 1, s
    info = dict(line.split(":", 1) for line in virsh("domblkinfo", d.name, "vda").splitlines())
    assert int(info["Capacity"]) == IMAGE_SIZE
    assert int(info["Physical"]) == IMAGE_SIZE
    virsh("suspend", d.name)
    assert d.state() == "paused (user)"
    virsh("resume", d.name)
    assert d.state() == "running (unpaused)"
    # Shutdown is the ACPI power button: the probe leaves idle and powers off.
    virsh("shutdown", d.name)
    d.wait_state("shut off (shutdown)")
    d.wait_serial("PROBE-DONE rc=0")
    assert d.serial().rstrip().endswith("PROBE power-button\nPROBE-DONE rc=0"), d.serial()


def test_console_pty_carries_the_guest(virsh, domain):
    d = domain("probe.test=io-loop probe.count=8")
    d.start()
    d.wait_serial("PROBE io-loop dev=0")
    tty = virsh("ttyconsole", d.name)
    fd = os.open(tty, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        got = b""

        def line():
            nonlocal got
            if select.select([fd], [], [], 0.2)[0]:
                got += os.read(fd, 4096)
            return b"PROBE io-loop iters=" in got
        wait_until(line, what=f"an io-loop line on {tty} (got {got!r})")
    finally:
        os.close(fd)


def test_console_on_a_unix_socket(virsh, domain, tmp_path):
    """<serial type='unix'>: libvirt binds the socket and vmm serves the console on it."""
    path = tmp_path / "console.sock"
    d = domain("probe.test=io-loop probe.count=8",
               serial=f"<serial type='unix'><source mode='bind' path='{path}'/></serial>")
    d.start()
    wait_until(path.exists, what="the console socket")
    with socket.socket(socket.AF_UNIX) as c:
        c.settimeout(HANG)
        c.connect(str(path))
        got = b""
        while b"PROBE io-loop iters=" not in got:
            chunk = c.recv(4096)
            assert chunk, f"the console closed (got {got!r})"
            got += chunk


def test_reboot_is_a_power_cycle_through_libvirt(virsh, domain):
    """virsh reboot: the power button; the guest powers off; with -no-shutdown vmm stops in
    `shutdown`, and libvirt resets and continues it: the guest boots again."""
    d = domain("probe.test=idle")
    d.start()
    d.wait_serial("PROBE idle")
    virsh("reboot", d.name)
    d.wait_serial("PROBE ready", count=2)
    d.wait_serial("PROBE idle", count=2)
    assert d.state().startswith("running")
    assert d.serial().count("PROBE-DONE rc=0") == 1


def test_destroy(virsh, domain):
    d = domain("probe.test=idle")
    d.start()
    d.wait_serial("PROBE idle")
    pid = d.pid()
    virsh("destroy", d.name)
    assert d.state() == "shut off (destroyed)"
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_libvirtd_restart_reconnects(virsh, domain):
    d = domain("probe.test=io-loop probe.count=8")
    d.start()
    d.wait_serial("PROBE io-loop iters=")
    pid = d.pid()
    restart_libvirtd()
    assert d.state() == "running (booted)"
    assert d.pid() == pid
    # The monitor is live again: commands and their events work.
    virsh("suspend", d.name)
    assert d.state() == "paused (user)"
    virsh("resume", d.name)
    assert d.state() == "running (unpaused)"
    assert stats(virsh, d.name)["wr_req"] > 0
    assert "shutting down" not in d.log().split("libvirt")[-1]


class EventWatch:
    """`virsh event --all --loop` on one domain, known to be registered with libvirtd when
    made: it has reported a metadata change this test makes (`virsh desc --live`, repeated
    until it shows; virsh registers its callbacks in event order, metadata-change last), so
    no later event can come before it listens. Use as a context manager."""

    def __init__(self, virsh, name):
        self.proc = subprocess.Popen(virsh.argv("event", "--domain", name, "--all", "--loop",
                                                "--timeout", str(int(HANG))),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out = ""
        def registered():
            virsh("desc", name, "--live", "--title", "--new-desc", "watched")
            return self.read(0.2) and "metadata-change" in self.out
        try:
            self._wait(registered, "virsh event's first report")
        except BaseException:
            self.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def read(self, timeout) -> bool:
        """Takes what virsh printed within `timeout` seconds; false when nothing came."""
        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return False
        self.out += os.read(fd, 1 << 16).decode(errors="replace")
        return True

    def _wait(self, pred, what):
        deadline = time.monotonic() + HANG
        while not pred():
            if self.proc.poll() is not None:
                raise AssertionError(f"virsh event ended ({self.proc.returncode}) before "
                                     f"{what}: {self.proc.stderr.read().decode(errors='replace')}"
                                     f" (printed {self.out!r})")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what} (printed {self.out!r})")

    def wait_for(self, text):
        self._wait(lambda: text in self.out or (self.read(0.2) and text in self.out),
                   repr(text))

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def test_write_error_pauses_until_it_is_gone(virsh, domain):
    d = domain("probe.test=blk-write,blk-read probe.count=64 probe.seed=9")
    d.start("--paused")
    assert d.state() == "paused (start paused)" or d.state().startswith("paused")
    rule = virsh.qmp(d.name, "blockdev-inject-error", device="libvirt-1-format",
                     operation="write", errno="eio")
    with EventWatch(virsh, d.name) as events:
        virsh("resume", d.name)
        d.wait_state("paused (I/O error)")
        events.wait_for(f"event 'io-error' for domain '{d.name}': {d.image} (virtio-disk0) pause")
    assert virsh("domblkerror", d.name) == "vda: unspecified error"
    virsh.qmp(d.name, "blockdev-inject-error-remove", device="libvirt-1-format", id=rule["id"])
    virsh("resume", d.name)
    d.wait_state("shut off (shutdown)")
    d.wait_serial("PROBE-DONE rc=0")
    console = d.serial()
    # The guest never saw the error: vmm kept the write and retried it on resume.
    assert "PROBE blk-write dev=0 lba=0 count=64 status=ok flush=ok" in console, console
    assert re.search(r"PROBE blk-read dev=0 lba=0 count=64 status=ok .* match=yes", console)
    assert "PROBE-DONE rc=0" in console
    assert pattern_ok(d.image, 0, 64, 9)


def test_blkdeviotune(virsh, domain):
    d = domain("probe.test=idle")
    d.start()
    d.wait_serial("PROBE idle")
    tune = virsh("blkdeviotune", d.name, "vda")
    assert "total_bytes_sec: 0" in tune
    virsh("blkdeviotune", d.name, "vda", "--total-bytes-sec", "10485760",
          "--write-iops-sec", "200", "--live")
    tune = virsh("blkdeviotune", d.name, "vda")
    assert "total_bytes_sec: 10485760" in tune, tune
    assert "write_iops_sec : 200" in tune, tune
    block = virsh.qmp(d.name, "query-block")[0]["inserted"]
    assert (block["bps"], block["iops_wr"]) == (10485760, 200), block
