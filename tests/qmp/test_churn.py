# SPDX-License-Identifier: Apache-2.0
"""Client churn against a guest doing I/O: a client that sends one byte per second, 1,000
connect/disconnect cycles, 1,000 connections closed without reading, 100 clients at once. Other
sessions keep getting their replies throughout, the guest's I/O loop goes on without an error,
and afterwards vmm holds no more descriptors or threads than before and at most RSS_SLACK_KIB
more resident memory. Timings are printed (pytest -s), never asserted."""

import socket
import time

from conftest import RawQmp, wait_until
from procstat import Usage

# Resident memory a test may leave behind: allocator caches of the monitor's buffers, pages
# of the guest's I/O buffers touched late. A leak of one buffer per cycle (1,000 cycles of
# 64 KiB reads) would be 64 MiB.
RSS_SLACK_KIB = 8 << 10
CYCLES = 1000
CLIENTS = 100


def io_vm(vmm_factory, tmp_path):
    img = tmp_path / "disk.raw"
    with open(img, "wb") as f:
        f.truncate(1 << 20)
    vm = vmm_factory(cmdline="probe.test=io-loop probe.count=8",
                     extra=["--disk", f"path={img}", "--qmp-max-clients", str(CLIENTS + 8)])
    vm.wait_serial("PROBE io-loop iters=")
    return vm


def baseline(vm) -> Usage:
    """vmm's usage once a session has come and gone, so that what the first one allocates
    for good (the allocator's arenas, the monitor's buffers) is part of it."""
    with RawQmp(vm.sock) as c:
        assert c.negotiate().cmd("query-status")["return"]["status"] == "running"
        first = Usage(vm.pid)
    wait_until(lambda: Usage(vm.pid).fds < first.fds, what="the first session's socket closed")
    return Usage(vm.pid)


def settled(vm, base: Usage, observer: RawQmp):
    """vmm is back within bounds of `base`, answers, and its guest's I/O loop goes on."""
    # Connections are accepted in order: once a new one is greeted, every earlier one was
    # accepted, so the descriptor count below is not taken before they reached vmm.
    with RawQmp(vm.sock) as c:
        assert "QMP" in c.greeting
    last = []

    def within():
        last[:] = [Usage(vm.pid)]
        return last[0].within(base, RSS_SLACK_KIB)
    wait_until(within, what=f"vmm back within bounds of {base} (now {last})")
    print(f"\n  baseline {base}, after {last[0]}")
    assert observer.cmd("query-status", id="end") == \
        {"return": {"status": "running", "singlestep": False, "running": True}, "id": "end"}
    with RawQmp(vm.sock) as c:
        assert c.negotiate().cmd("query-kvm")["return"]["enabled"] is True
    reports = vm.serial().count("PROBE io-loop iters=")
    vm.wait_serial("PROBE io-loop iters=", count=reports + 1)
    assert "PROBE io-error" not in vm.serial(), vm.serial()
    assert vm.alive()


def round_trips(c: RawQmp, n: int, tag: str) -> list:
    """`n` query-status round trips on `c`; returns their times in seconds."""
    times = []
    for i in range(n):
        t = time.monotonic()
        r = c.cmd("query-status", id=f"{tag}-{i}")
        times.append(time.monotonic() - t)
        assert r["id"] == f"{tag}-{i}" and r["return"]["status"] == "running", r
    return times


def summary(times) -> str:
    times = sorted(times)
    return (f"{len(times)} round trips, p50 {times[len(times) // 2] * 1e6:.0f} us, "
            f"max {times[-1] * 1e6:.0f} us")


def test_one_byte_per_second(vmm_factory, tmp_path):
    """A client sends its request one byte per second; after each byte the other sessions
    get every reply of a batch of round trips, and the slow request is answered in the end."""
    vm = io_vm(vmm_factory, tmp_path)
    observer = RawQmp(vm.sock).negotiate()
    base = baseline(vm)
    slow = RawQmp(vm.sock).negotiate()
    others = [RawQmp(vm.sock).negotiate() for _ in range(3)]
    request = b'{"execute":"cont"}'
    times = []
    for i, byte in enumerate(request):
        start = time.monotonic()
        slow.send(bytes([byte]))
        for j, c in enumerate(others):
            times += round_trips(c, 20, f"{i}.{j}")
        time.sleep(max(0.0, 1.0 - (time.monotonic() - start)))
    assert slow.reply() == {"return": {}}
    print(f"\n  others while the slow request trickled in: {summary(times)}")
    for c in [slow, *others]:
        c.close()
    settled(vm, base, observer)


def test_connect_disconnect_cycles(vmm_factory, tmp_path):
    """1,000 clients each read the greeting and hang up (every tenth negotiates and asks
    something first); another session is answered every 100 cycles."""
    vm = io_vm(vmm_factory, tmp_path)
    observer = RawQmp(vm.sock).negotiate()
    base = baseline(vm)
    times = []
    start = time.monotonic()
    for i in range(CYCLES):
        with RawQmp(vm.sock) as c:
            assert "QMP" in c.greeting
            if i % 10 == 0:
                assert c.negotiate().cmd("query-status")["return"]["running"] is True
        if i % 100 == 0:
            times += round_trips(observer, 1, f"o{i}")
    print(f"\n  {CYCLES} cycles in {time.monotonic() - start:.2f} s; observer: {summary(times)}")
    settled(vm, base, observer)


def test_close_without_reading(vmm_factory, tmp_path):
    """1,000 clients connect and close at once, before the greeting is read (vmm writes it
    to a socket whose peer is gone, or finds the hang-up first)."""
    vm = io_vm(vmm_factory, tmp_path)
    observer = RawQmp(vm.sock).negotiate()
    base = baseline(vm)
    times = []
    start = time.monotonic()
    for i in range(CYCLES):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(vm.sock)
        s.close()
        if i % 100 == 0:
            times += round_trips(observer, 1, f"o{i}")
    print(f"\n  {CYCLES} cycles in {time.monotonic() - start:.2f} s; observer: {summary(times)}")
    settled(vm, base, observer)


def test_hundred_clients_at_once(vmm_factory, tmp_path):
    """100 clients connected together: every one is greeted, negotiates and is served (the
    requests of all of them in flight at once), and another session with them."""
    vm = io_vm(vmm_factory, tmp_path)
    observer = RawQmp(vm.sock).negotiate()
    base = baseline(vm)
    start = time.monotonic()
    clients = [RawQmp(vm.sock) for _ in range(CLIENTS)]
    assert all("QMP" in c.greeting for c in clients)
    for c in clients:
        c.send({"execute": "qmp_capabilities"})
    assert all(c.reply() == {"return": {}} for c in clients)
    for i, c in enumerate(clients):
        c.send({"execute": "query-status", "id": i})
    for i, c in enumerate(clients):
        r = c.reply()
        assert r["id"] == i and r["return"]["running"] is True, r
    times = round_trips(observer, 10, "o")
    during = Usage(vm.pid)
    assert during.fds >= base.fds + CLIENTS, during
    for c in clients:
        c.close()
    print(f"\n  {CLIENTS} clients served in {time.monotonic() - start:.2f} s; "
          f"observer: {summary(times)}; with them: {during}")
    settled(vm, base, observer)
