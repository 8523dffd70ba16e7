# SPDX-License-Identifier: Apache-2.0
"""Limits on clients: per socket (`--qmp ...,max-clients=N`) beside the total
(`--qmp-max-clients`), and the open-file limit: vmm raises its soft limit to the hard one and
keeps the top descriptors for itself, so a flood of clients is refused with an error line
before a disk's queue or `blockdev-add` could miss a descriptor."""

import subprocess

from conftest import KERNEL, RawQmp, vmm_bin, wait_until
from procstat import fd_count, open_files_limit, seccomp_mode

# vmm/src/host.rs: FD_RESERVE_BASE + FD_PER_QUEUE per disk queue.
FD_RESERVE_BASE = 64
FD_PER_QUEUE = 32


def error(desc):
    return {"error": {"class": "GenericError", "desc": desc}}


def first_message(addr):
    """Connects and returns the first message, and the client when that was the greeting.
    A refused client gets one error line, then the end of the stream."""
    c = RawQmp(addr, greeting=False)
    m = c.recv()
    if "QMP" in m:
        return m, c
    try:
        rest = c.recv_line()
    except EOFError:
        rest = b""
    c.close()
    assert rest == b"", f"more after the refusal: {rest!r}"
    return m, None


def test_clients_per_socket(vmm_factory, tmp_path):
    """Socket a takes 2 clients, the monitor 4 in all: the third on a is refused with the
    socket's limit, b takes the rest, the fifth client is refused with the total's; a slot of
    a freed is taken again; the clients kept are served."""
    a, b = tmp_path / "a.sock", tmp_path / "b.sock"
    vm = vmm_factory(qmp=[f"unix:{a},max-clients=2", f"unix:{b}"],
                     extra=["--qmp-max-clients", "4"])
    vm.wait_serial("PROBE idle")
    a1, a2 = RawQmp(a).negotiate(), RawQmp(a).negotiate()
    m, _ = first_message(a)
    assert m == error("Too many QMP clients on this socket: at most 2 may be connected to it"), m
    b1, b2 = RawQmp(b).negotiate(), RawQmp(b).negotiate()
    for addr in (a, b):
        m, _ = first_message(addr)
        assert m == error("Too many QMP clients: at most 4 may be connected"), m
    a1.close()

    def greeted():
        m, c = first_message(a)
        if c is not None:
            c.close()
        return c is not None
    wait_until(greeted, what="the slot a1 left on socket a")
    for c in (a2, b1, b2):
        assert c.cmd("query-status")["return"]["status"] == "running"
        c.close()


def test_bad_max_clients(tmp_path):
    """A bad `max-clients` value is one line naming the option, and exit 1."""
    p = tmp_path / "q.sock"
    for value, why in [("0", "Option 'max-clients' takes 1 to 65535 clients, not 0"),
                       ("many", "--qmp option 'max-clients' takes a number, not 'many'")]:
        r = subprocess.run([str(vmm_bin()), "--kernel", str(KERNEL),
                            "--qmp", f"unix:{p},max-clients={value}"],
                           capture_output=True, text=True, timeout=20)
        assert r.returncode == 1, r
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("vmm: "), r.stderr
        assert lines[0].endswith(f"'unix:{p},max-clients={value}' for '--qmp <SOCKET>': {why}"), \
            r.stderr


def test_descriptor_reserve_outlasts_a_flood(vmm_factory, tmp_path):
    """vmm started with 128 of 256 open files raises its limit to 256. A flood of clients
    takes every descriptor below the reserve (64 + 32 for the disk's one queue) and the rest
    are refused with an error line; with the flood connected, the guest's driver still readies
    its queue (eventfds, io_uring) and runs its I/O loop, blockdev-add opens a file and
    blockdev-del closes it. When the flood leaves, vmm is back to its descriptors."""
    img, scratch = tmp_path / "disk.raw", tmp_path / "scratch.raw"
    for p in (img, scratch):
        with open(p, "wb") as f:
            f.truncate(1 << 20)
    vm = vmm_factory(cmdline="probe.test=io-loop probe.count=8", paused=True, nofile=(128, 256),
                     extra=["--disk", f"path={img}", "--qmp-max-clients", "1000"])
    assert open_files_limit(vm.pid) == (256, 256)
    reserve = FD_RESERVE_BASE + FD_PER_QUEUE
    # The main thread confines itself after its last set-up step (its own descriptors).
    wait_until(lambda: seccomp_mode(vm.pid) == 2, what="vmm's main thread confined")
    base = fd_count(vm.pid)
    clients, refusals = [], []
    for _ in range(300):
        m, c = first_message(vm.sock)
        if c is not None:
            clients.append(c)
        else:
            refusals.append(m)
    desc = (f"Too many QMP clients for vmm's open-file limit: the last {reserve} of its 256 "
            f"descriptors are kept for vmm's own use")
    # Every descriptor below the reserve went to a client, but for the few vmm itself opened
    # since `base` was counted (its threads finish setting up while the flood starts).
    room = 256 - reserve - base
    assert room - 8 <= len(clients) <= room, (len(clients), base)
    assert refusals == [error(desc)] * (300 - len(clients))
    assert fd_count(vm.pid) == 256 - reserve
    ctl = clients[0].negotiate()
    assert ctl.cmd("cont") == {"return": {}}
    vm.wait_serial("PROBE io-loop iters=", count=2)
    assert ctl.cmd("blockdev-add", {"driver": "file", "node-name": "f0",
                                    "filename": str(scratch)}) == {"return": {}}
    assert ctl.cmd("blockdev-add", {"driver": "raw", "node-name": "r0", "file": "f0"}) == \
        {"return": {}}
    nodes = [n["node-name"] for n in ctl.cmd("query-named-block-nodes")["return"]]
    assert "f0" in nodes and "r0" in nodes, nodes
    assert ctl.cmd("blockdev-del", {"node-name": "r0"}) == {"return": {}}
    assert ctl.cmd("blockdev-del", {"node-name": "f0"}) == {"return": {}}
    assert first_message(vm.sock)[0] == error(desc)
    for c in clients:
        c.close()
    # The queue's descriptors stay with the running guest.
    wait_until(lambda: fd_count(vm.pid) <= base + FD_PER_QUEUE,
               what=f"vmm's descriptors back near {base} (now {fd_count(vm.pid)})")
    with RawQmp(vm.sock) as c:
        assert c.negotiate().cmd("query-status")["return"]["status"] == "running"
    assert "PROBE io-error" not in vm.serial(), vm.serial()
    assert vm.stderr() == "", vm.stderr()
