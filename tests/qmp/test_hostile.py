# SPDX-License-Identifier: Apache-2.0
"""What hostile or careless clients did to the monitor, each as a regression test: sessions
whose socket fails are closed, accept backs off when descriptors run out, memory held for
clients is released and bounded, the client count is bounded, nothing runs after quit, and a
reset does not read the kernel file again."""

import os
import shutil
import socket
import struct
import subprocess
import time

from conftest import KERNEL, RawQmp, wait_until


def fd_count(pid) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_mib(pid) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def monitor_ticks(pid) -> int:
    """CPU time (clock ticks) the qmp-monitor thread has used."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            if f.read().strip() == "qmp-monitor":
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                return int(fields[11]) + int(fields[12])
    raise AssertionError("no qmp-monitor thread")


def test_failed_sockets_close_their_sessions(vmm_factory, tmp_path):
    """Liveness probes (connect, close before the greeting), clients that hang up with a
    command in flight, and TCP resets with output pending all leave no session behind."""
    port = None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    vm = vmm_factory(qmp=[f"unix:{tmp_path / 'qmp.sock'}", f"tcp:127.0.0.1:{port}"])
    vm.wait_serial("PROBE idle")
    with RawQmp(vm.sock) as c:
        c.negotiate()
    baseline = fd_count(vm.pid)
    for _ in range(300):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(vm.sock)
        s.close()
    for _ in range(20):
        c = RawQmp(vm.sock)
        c.send(b'{"execute": "qmp_capabilities"}{"execute": "query-qmp-schema"}')
        c.close()
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b'{"execute": "qmp_capabilities"}{"execute": "query-qmp-schema"}')
        # Close with RST while the schema reply is still pending.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    wait_until(lambda: fd_count(vm.pid) <= baseline,
               what=f"vmm's descriptors back to {baseline} (now {fd_count(vm.pid)})")
    with RawQmp(vm.sock) as c:
        assert c.negotiate().cmd("query-status")["return"]["status"] == "running"
    assert vm.alive()


def test_accept_backs_off_when_descriptors_run_out(vmm_factory):
    """With its descriptor limit reached vmm cannot accept; it must rest, not spin on the
    readable listener, and accept again once descriptors are free."""
    vm = vmm_factory(extra=["--qmp-max-clients", "1000"])
    vm.wait_serial("PROBE idle")
    limit = fd_count(vm.pid) + 8
    subprocess.run(["prlimit", f"--pid={vm.pid}", f"--nofile={limit}:{limit}"], check=True)
    clients = []
    for _ in range(16):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(vm.sock)
        clients.append(s)
    # Let the monitor meet EMFILE, then measure what it burns for a second.
    wait_until(lambda: fd_count(vm.pid) >= limit, what="vmm at its descriptor limit")
    before = monitor_ticks(vm.pid)
    time.sleep(1.0)
    burnt = monitor_ticks(vm.pid) - before
    ticks = os.sysconf("SC_CLK_TCK")
    assert burnt < ticks // 2, f"monitor thread used {burnt}/{ticks} ticks in 1 s: spinning"
    for s in clients:
        s.close()
    with RawQmp(vm.sock) as c:
        assert c.negotiate().cmd("query-status")["return"]["status"] == "running"


def big_request(mib: int) -> bytes:
    return b'{"execute": "query-name", "arguments": {"x": "' + b"a" * (mib << 20) + b'"}}'


def test_memory_of_large_messages_is_released(vm):
    """Clients that each sent one large request (and stay connected, idle) do not keep its
    buffer: vmm's resident memory comes back down."""
    before = rss_mib(vm.pid)
    clients = []
    for _ in range(4):
        c = RawQmp(vm.sock).negotiate()
        c.send(big_request(48))
        r = c.reply()
        assert r["error"]["desc"] == "Parameter 'x' is unexpected", r
        clients.append(c)
    wait_until(lambda: rss_mib(vm.pid) < before + 64,
               what=f"vmm's RSS back near {before:.0f} MiB (now {rss_mib(vm.pid):.0f})")
    for c in clients:
        assert c.cmd("query-status")["return"]["status"] == "running"
        c.close()


def test_total_buffered_input_is_bounded(vm):
    """Partly sent large messages from several clients together cannot exceed the monitor's
    budget: the request that passes it is dropped with an error reply (the stream stays in
    sync and the client connected); the others go on."""
    holders = [RawQmp(vm.sock).negotiate() for _ in range(4)]
    for h in holders:
        h.send(big_request(60)[:-10])
    latecomer = RawQmp(vm.sock).negotiate()
    latecomer.send(big_request(40))
    m = latecomer.reply()
    assert m["error"]["desc"].startswith("QMP memory limit exceeded"), m
    assert latecomer.cmd("query-status", id=2)["id"] == 2
    for h in holders:
        h.send(big_request(60)[-10:])
        assert h.reply()["error"]["desc"] == "Parameter 'x' is unexpected"
        h.close()


def test_large_message_does_not_stall_others(vm, raw_factory):
    """Another session's reply arrives while a large message is still being read."""
    big = raw_factory(vm.sock).negotiate()
    other = raw_factory(vm.sock).negotiate()
    msg = big_request(40)
    big.send(msg[: len(msg) // 2])
    assert other.cmd("query-kvm", id=1) == {"return": {"enabled": True, "present": True}, "id": 1}
    big.send(msg[len(msg) // 2:])
    assert big.reply()["error"]["desc"] == "Parameter 'x' is unexpected"


def test_client_count_is_bounded(vmm_factory):
    vm = vmm_factory(extra=["--qmp-max-clients", "2"])
    vm.wait_serial("PROBE idle")
    a = RawQmp(vm.sock).negotiate()
    b = RawQmp(vm.sock).negotiate()
    c = RawQmp(vm.sock, greeting=False)
    m = c.recv()
    assert m == {"error": {"class": "GenericError",
                           "desc": "Too many QMP clients: at most 2 may be connected"}}, m
    try:
        rest = c.recv_line()
    except EOFError:
        rest = b""
    assert rest == b""
    a.close()
    wait_until(lambda: _greeted(vm.sock), what="a client slot freed")
    assert b.cmd("query-status")["return"]["status"] == "running"


def _greeted(path) -> bool:
    with RawQmp(path, greeting=False) as c:
        return "QMP" in c.recv()


def test_nothing_runs_after_quit(vm, raw_factory):
    """Commands queued behind quit never run: no RESET or POWERDOWN follows SHUTDOWN."""
    observer = raw_factory(vm.sock).negotiate()
    actor = raw_factory(vm.sock).negotiate()
    actor.send(b'{"execute": "quit", "id": "q"}{"execute": "system_reset"}'
               b'{"execute": "system_powerdown"}{"execute": "system_reset"}')
    assert vm.wait_exit() == 0
    events = []
    while True:
        try:
            m = observer.recv()
        except EOFError:
            break
        events.append(m["event"])
    assert events == ["SHUTDOWN"], events


def test_reset_does_not_read_the_kernel_again(vmm_factory, tmp_path, raw_factory):
    """A reset boots what was loaded at start, whatever happened to the file since."""
    kernel = tmp_path / "bzImage"
    shutil.copy(KERNEL, kernel)
    vm = vmm_factory(kernel=kernel)
    vm.wait_serial("PROBE idle")
    with open(kernel, "r+b") as f:
        f.truncate(0)
    c = raw_factory(vm.sock).negotiate()
    assert c.cmd("system_reset") == {"return": {}}
    vm.wait_serial("PROBE idle", count=2)
    assert c.cmd("query-status")["return"]["status"] == "running"
    kernel.write_bytes(b"garbage" * 1000)
    assert c.cmd("system_reset") == {"return": {}}
    vm.wait_serial("PROBE idle", count=3)
