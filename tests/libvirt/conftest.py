# SPDX-License-Identifier: Apache-2.0
"""Fixtures for the libvirt tests: Debian's libvirtd (its QEMU driver, unchanged) runs domains
whose <emulator> is vmm, through scripts/libvirt.sh, which starts virtlogd and libvirtd for the
session in a private mount namespace (state under target/libvirt/) and stops them at the end,
whatever happens. Each test defines its own domain from the domain XML of the README's "Using
vmm under libvirt" (so that the README shows one that works), with the probe guest as its
kernel and a raw image and the serial console's log in the test's temporary directory, and
destroys and undefines it on teardown.

Run: scripts/libvirt.sh install && target/qmp-venv/bin/python -m pytest -q tests/libvirt
(as root: libvirt's system daemon). The vmm binary is $VMM_BIN when set, else the one
`cargo build -p vmm` reports.

Every wait is bounded; timeouts here are hang guards only.
"""

import sys

sys.dont_write_bytecode = True  # keep __pycache__ out of the source tree

import functools  # noqa: E402
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KERNEL = ROOT / "target" / "probe-guest" / "bzImage"
SCRIPT = ROOT / "scripts" / "libvirt.sh"
EMULATOR = ROOT / "target" / "libvirt" / "bin" / "qemu-system-x86_64"
HANG = 30.0  # seconds: generous guard against hangs
IMAGE_SIZE = 16 << 20


def build_vmm() -> Path:
    """`cargo build -q -p vmm` (a no-op when up to date); the executable cargo reports."""
    r = subprocess.run(["cargo", "build", "-q", "-p", "vmm",
                        "--message-format=json-render-diagnostics"],
                       cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if r.returncode != 0:
        pytest.exit(f"cargo build -p vmm failed (exit {r.returncode})", returncode=2)
    for line in reversed(r.stdout.splitlines()):
        msg = json.loads(line)
        target = msg.get("target", {})
        if (msg.get("reason") == "compiler-artifact" and target.get("name") == "vmm"
                and "bin" in target.get("kind", ()) and msg.get("executable")):
            return Path(msg["executable"])
    pytest.exit("cargo build -p vmm reported no vmm executable", returncode=2)


@functools.cache
def vmm_bin() -> Path:
    env = os.environ.get("VMM_BIN")
    return Path(env) if env else build_vmm()


def wait_until(pred, timeout=HANG, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def script(*args, timeout=120):
    r = subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError(f"scripts/libvirt.sh {' '.join(args)} failed: {r.stderr}")
    return r.stdout


class Virsh:
    """virsh on the session's libvirtd."""

    def __init__(self, uri: str):
        self.uri = uri

    def argv(self, *args):
        return ["virsh", "-q", "-c", self.uri, *args]

    def run(self, *args, timeout=HANG) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*args), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, timeout=timeout)

    def __call__(self, *args, timeout=HANG) -> str:
        r = self.run(*args, timeout=timeout)
        if r.returncode != 0:
            raise AssertionError(f"virsh {' '.join(args)} failed: {r.stderr.strip()}")
        return r.stdout.strip()

    def qmp(self, domain, command, **arguments):
        msg = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        reply = json.loads(self("qemu-monitor-command", domain, json.dumps(msg)))
        if "error" in reply:
            raise AssertionError(f"{command}: {reply['error']}")
        return reply["return"]


@pytest.fixture(scope="session")
def virsh():
    """The session's libvirtd, started by scripts/libvirt.sh and always stopped."""
    if os.geteuid() != 0:
        pytest.skip("libvirt's system daemon (qemu:///system) needs root")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("no usable /dev/kvm")
    vmm = vmm_bin()
    subprocess.run(["bash", str(ROOT / "scripts" / "probe-guest.sh")], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    assert KERNEL.exists(), KERNEL
    # Leftovers of an interrupted run go first.
    script("stop")
    script("start", str(vmm))
    try:
        yield Virsh(script("uri").strip())
    finally:
        script("stop")


def restart_libvirtd():
    script("restart-libvirtd")


def readme_domain_xml() -> str:
    """The domain XML of the README's "Using vmm under libvirt"."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Using vmm under libvirt", 1)[1]
    return section.split("```xml\n", 1)[1].split("```", 1)[0]


def domain_xml(name, kernel, cmdline, image, serial_log, serial=None) -> str:
    """The README's XML with this test's name, kernel, command line, image and log, and
    `serial` (XML) instead of its pty console when given."""
    xml = readme_domain_xml()
    for old, new in [("<name>vm1</name>", f"<name>{name}</name>"),
                     ("/var/lib/vmm/bzImage", str(kernel)),
                     ("<cmdline>console=ttyS0</cmdline>", f"<cmdline>{cmdline}</cmdline>"),
                     ("/usr/local/lib/vmm/qemu-system-x86_64", str(EMULATOR)),
                     ("/var/lib/vmm/disk.raw", str(image)),
                     ("/var/log/vmm/vm1-serial.log", str(serial_log))]:
        assert xml.count(old) == 1, f"the README's domain XML no longer has {old!r} once"
        xml = xml.replace(old, new)
    if serial is not None:
        start, end = xml.index("    <serial type='pty'>"), xml.index("<console type='pty'/>")
        xml = xml[:start] + serial + xml[end + len("<console type='pty'/>"):]
    return xml


class Domain:
    """A domain defined from the README's XML, running the probe guest."""

    def __init__(self, virsh: Virsh, tmp: Path, name: str, cmdline: str, serial=None):
        self.virsh = virsh
        self.name = name
        self.image = tmp / "disk.raw"
        self.serial_log = tmp / "serial.log"
        with open(self.image, "wb") as f:
            f.truncate(IMAGE_SIZE)
        self.xml = tmp / "domain.xml"
        self.xml.write_text(domain_xml(name, KERNEL, f"console=ttyS0 {cmdline}", self.image,
                                       self.serial_log, serial))
        virsh("define", str(self.xml))

    def start(self, *flags):
        self.virsh("start", self.name, *flags)

    def state(self) -> str:
        return self.virsh("domstate", "--reason", self.name)

    def wait_state(self, state, timeout=HANG):
        wait_until(lambda: self.state() == state, timeout,
                   f"{self.name} to be {state!r} (is {self.state()!r})")

    def serial(self) -> str:
        try:
            return self.serial_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_serial(self, text, count=1, timeout=HANG):
        wait_until(lambda: self.serial().count(text) >= count, timeout,
                   f"{count}x {text!r} on {self.name}'s console (got {self.serial()!r})")

    def pid(self) -> int:
        return int((ROOT / "target" / "libvirt" / "run" / "qemu" / f"{self.name}.pid")
                   .read_text())

    def log(self) -> str:
        """The emulator's log: libvirt's argv and vmm's stderr."""
        path = ROOT / "target" / "libvirt" / "log" / "qemu" / f"{self.name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def remove(self):
        self.virsh.run("destroy", self.name)
        self.virsh.run("undefine", self.name)
        # vmm's own stderr is in the log: a confinement violation would be there.
        assert "forbidden system call" not in self.log(), self.log()


@pytest.fixture
def domain(virsh, tmp_path, request):
    """A factory: domain(cmdline[, serial]) defines a domain named after the test."""
    made = []

    def make(cmdline, serial=None):
        d = Domain(virsh, tmp_path, "vmm-" + request.node.name.replace("_", "-")[:40], cmdline,
                   serial)
        made.append(d)
        return d
    yield make
    for d in made:
        d.remove()
