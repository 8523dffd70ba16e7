# SPDX-License-Identifier: Apache-2.0
"""qmp-shell (and its HMP mode, qmp-shell -H) in a pseudo-terminal, as a person uses it."""

import json
import os
import sys
from pathlib import Path

import pexpect

from conftest import HANG

SHELL = str(Path(sys.executable).with_name("qmp-shell"))
PROMPT = r"\(QEMU\) "


def spawn(tmp_path, *args):
    env = dict(os.environ, HOME=str(tmp_path), TERM="dumb")
    child = pexpect.spawn(SHELL, list(args), env=env, timeout=HANG, encoding="utf-8",
                          echo=False, dimensions=(50, 500))
    return child


def reply(child):
    """Runs until the next prompt and returns the JSON line printed before it."""
    child.expect(PROMPT)
    lines = [l for l in child.before.replace("\r", "").split("\n") if l.strip()]
    return json.loads(lines[-1])


def test_qmp_shell(vm, tmp_path):
    child = spawn(tmp_path, vm.sock)
    try:
        child.expect("Welcome to the QMP low-level shell!")
        child.expect(r"Connected to QEMU (\d+)\.(\d+)\.(\d+)")
        child.expect(PROMPT)
        child.sendline("query-status")
        assert reply(child) == {"return": {"running": True, "singlestep": False,
                                           "status": "running"}}
        child.sendline("query-name")
        assert reply(child) == {"return": {"name": "test-vm"}}
        child.sendline("stop")
        assert reply(child) == {"return": {}}
        # An empty line prints the pending events.
        child.sendline("")
        child.expect(PROMPT)
        assert "'event': 'STOP'" in child.before, child.before
        child.sendline("query-status")
        assert reply(child)["return"]["status"] == "paused"
        # qmp-shell cannot quote a space; a one-word HMP command line.
        child.sendline("human-monitor-command command-line=help")
        assert "cont" in reply(child)["return"]
        child.sendline("cont")
        assert reply(child) == {"return": {}}
        child.sendline("no-such-cmd")
        r = reply(child)
        assert r["error"]["class"] == "CommandNotFound", r
        child.sendline("query-blockstats query-nodes=true")
        assert reply(child) == {"return": []}
        child.sendline("quit")
        assert reply(child) == {"return": {}}
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert vm.wait_exit() == 0


def test_hmp_shell(vm, tmp_path):
    child = spawn(tmp_path, "-H", vm.sock)
    try:
        child.expect("Welcome to the HMP shell!")
        child.expect(PROMPT)
        child.sendline("info status")
        child.expect(PROMPT)
        assert "VM status: running" in child.before
        child.sendline("stop")
        child.expect(PROMPT)
        child.sendline("info status")
        child.expect(PROMPT)
        assert "VM status: paused" in child.before
        child.sendline("info version")
        child.expect(PROMPT)
        assert "7.2.0" in child.before, child.before
        child.sendline("cpu 0")
        child.expect(PROMPT)
        assert "bad CPU index" not in child.before
        child.sendline("cpu 5")
        child.expect(PROMPT)
        assert "bad CPU index" in child.before, child.before
        child.sendline("frobnicate")
        child.expect(PROMPT)
        assert "unknown command: 'frobnicate'" in child.before
        child.sendline("cont")
        child.expect(PROMPT)
        child.sendline("system_powerdown")
        child.expect(PROMPT)
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert vm.wait_exit() == 0
    assert "PROBE power-button" in vm.serial()
