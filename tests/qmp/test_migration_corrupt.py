# SPDX-License-Identifier: Apache-2.0
"""A destination (`--incoming`) refuses corrupt, truncated or mismatched input with one line,
`vmm: load of migration failed: <reason>`, and exits 1 (QEMU's destination prints "load of
migration failed: ..." and exits 1); a source whose destination refused keeps running. (A
destination with other RAM than its source's is test_migration.py's
test_a_destination_that_does_not_fit_refuses_and_the_source_runs_on.)

Real snapshots and streams of the probe guest are taken from a source vmm (a snapshot through
`migrate file:`, a stream through a Unix socket this test listens on, answering `ERR` so that
the source goes on), then cut or corrupted and fed to destinations: snapshot files through
`--incoming file:`, streams through `--incoming unix:` sockets this test connects to and
through `--incoming exec:cat FILE`.
"""

import socket
import struct

from conftest import HANG, RawQmp, listening, wait_until

PREFIX = "vmm: load of migration failed: "
TRUNCATED = "The migration stream ended early: it stops before its end record"


def migrate(q, uri):
    """Starts a migration and waits for its end; returns query-migrate's answer."""
    assert q.cmd("migrate", {"uri": uri}) == {"return": {}}

    def ended():
        r = q.cmd("query-migrate")["return"]
        return r if r.get("status") in ("completed", "failed", "cancelled") else None
    return wait_until(ended, what="the migration's end")


def refused(dest, reason):
    """The destination exits 1 with exactly one line naming `reason`."""
    assert dest.wait_exit() == 1, dest.stderr()
    assert dest.stderr() == PREFIX + reason + "\n"


def source(vmm_factory, tmp_path, memory=64):
    src = vmm_factory(memory=memory, qmp=[f"unix:{tmp_path / 'src.sock'}"])
    src.wait_serial("PROBE idle")
    return src


def destination(vmm_factory, tmp_path, incoming, memory=64, name="dst", extra=()):
    """A destination vmm; for a socket, once it listens for the source."""
    dest = vmm_factory(memory=memory, qmp=[f"unix:{tmp_path / (name + '.sock')}"],
                       extra=("--incoming", incoming, *extra), wait_socket=False)
    if incoming.startswith("unix:"):
        wait_until(lambda: listening(incoming[5:]) or not dest.alive(),
                   what="the destination's migration socket")
    return dest


def header(path):
    """A snapshot's header: (RAM offset, RAM length, state offset, state length)."""
    with open(path, "rb") as f:
        h = f.read(64)
    magic, version, _, ram_off, ram_len, st_off, st_len, _ = struct.unpack_from("<8sIIQQQQI", h)
    assert magic == b"VMMSNAP\0" and version == 1, h
    return ram_off, ram_len, st_off, st_len


def test_corrupt_and_truncated_snapshots_are_refused(vmm_factory, tmp_path):
    src = source(vmm_factory, tmp_path)
    snap = tmp_path / "snap"
    with RawQmp(src.sock) as q:
        q.negotiate()
        assert q.cmd("stop") == {"return": {}}
        assert migrate(q, f"file:{snap}")["status"] == "completed"
    src.kill()
    ram_off, ram_len, st_off, st_len = header(snap)

    # (a) Not a snapshot: its magic changed.
    with open(snap, "r+b") as f:
        f.write(b"VMMSNAX\0")
    refused(destination(vmm_factory, tmp_path, f"file:{snap}", name="a"),
            "Not a complete vmm snapshot (bad magic: not one, or cut short)")
    with open(snap, "r+b") as f:
        f.write(b"VMMSNAP\0")

    # (b) Cut inside the state, then inside RAM (the header is intact: the file was cut
    # after it was written).
    cut = st_off + st_len // 2
    with open(snap, "r+b") as f:
        f.truncate(cut)
    refused(destination(vmm_factory, tmp_path, f"file:{snap}", name="b1"),
            f"Corrupt snapshot: cut short (its state ends at byte {st_off + st_len}, "
            f"the file has {cut})")
    cut = ram_off + ram_len // 2
    with open(snap, "r+b") as f:
        f.truncate(cut)
    refused(destination(vmm_factory, tmp_path, f"file:{snap}", name="b2"),
            f"Corrupt snapshot: cut short (its RAM ends at byte {ram_off + ram_len}, "
            f"the file has {cut})")

    # Shorter than a header, and empty.
    for size in (10, 0):
        with open(snap, "r+b") as f:
            f.truncate(size)
        refused(destination(vmm_factory, tmp_path, f"file:{snap}", name=f"c{size}"),
                "Not a complete vmm snapshot (bad magic: not one, or cut short)")


def capture_stream(q, path):
    """A real stream: this test listens at `path` as the destination, reads the source's
    stream to its END record and answers `ERR`, so the source fails and runs on."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as ls:
        ls.bind(str(path))
        ls.listen(1)
        assert q.cmd("migrate", {"uri": f"unix:{path}"}) == {"return": {}}
        ls.settimeout(HANG)
        conn, _ = ls.accept()
        with conn:
            conn.settimeout(HANG)
            data = b""
            while (end := stream_end(data)) is None:
                chunk = conn.recv(1 << 20)
                assert chunk, f"the source closed after {len(data)} bytes"
                data += chunk
            conn.sendall(b"ERR captured by the test\n")
    path.unlink()
    assert end == len(data)
    return data


def stream_end(b):
    """The offset just after the END record, if `b` holds all of it; also the records."""
    i = 12
    while i < len(b):
        t = b[i]
        if t in (1, 4):
            if i + 5 > len(b):
                return None
            i += 5 + struct.unpack_from("<I", b, i + 1)[0]
        elif t == 2:
            if i + 13 > len(b):
                return None
            i += 13 + struct.unpack_from("<I", b, i + 9)[0] * 4096
        elif t == 3:
            i += 13
        elif t == 5:
            return i + 1
        else:
            raise AssertionError(f"record type {t} at {i}")
    return None


def records(b):
    """(tag, offset) of each record of a complete stream."""
    out, i = [], 12
    while i < len(b):
        t = b[i]
        out.append((t, i))
        if t in (1, 4):
            i += 5 + struct.unpack_from("<I", b, i + 1)[0]
        elif t == 2:
            i += 13 + struct.unpack_from("<I", b, i + 9)[0] * 4096
        elif t == 3:
            i += 13
        else:
            i += 1
    return out


def feed(path, data):
    """Sends `data` to a destination listening at `path` as a source would, then closes the
    sending side; returns the destination's answer line (b"" when it gave none)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(HANG)
        s.connect(str(path))
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""
        try:
            while not answer.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                answer += chunk
        except ConnectionResetError:
            pass
        return answer


def test_truncated_and_corrupt_streams_are_refused(vmm_factory, tmp_path):
    src = source(vmm_factory, tmp_path)
    with RawQmp(src.sock) as q:
        q.negotiate()
        stream = capture_stream(q, tmp_path / "capture.sock")
        r = wait_until(lambda: (lambda m: m if m.get("status") == "failed" else None)(
            q.cmd("query-migrate")["return"]), what="the source's failure")
        assert r["error-desc"] == "The destination refused the migration: captured by the test"
        assert q.cmd("query-status")["return"]["status"] == "running"
    recs = records(stream)
    pages = next(off for t, off in recs if t == 2)
    state = next(off for t, off in recs if t == 4)
    assert recs[0] == (1, 12) and recs[-1] == (5, len(stream) - 1)

    # (d) Cut inside a PAGES run, inside the state, just before the END; then a stream that
    # is not one, and one whose page lies outside the destination's RAM.
    outside = bytearray(stream[:pages + 13 + 4096])
    outside[pages + 1:pages + 9] = struct.pack("<Q", 1 << 40)
    cases = [
        ("pages", stream[:pages + 13 + 100], TRUNCATED),
        ("state", stream[:state + 5 + 10], TRUNCATED),
        ("end", stream[:-1], TRUNCATED),
        ("magic", b"QEVM" + stream[4:], "Not a vmm migration stream (bad magic)"),
        ("outside", bytes(outside),
         "Corrupt migration stream: a page at 0x10000000000 is outside guest RAM"),
    ]
    for name, data, reason in cases:
        mig = tmp_path / f"mig-{name}.sock"
        dest = destination(vmm_factory, tmp_path, f"unix:{mig}", name=name)
        answer = feed(mig, data)
        refused(dest, reason)
        # A destination that read the stream's start answers the source on the socket.
        if name != "magic":
            assert answer == f"ERR {reason}\n".encode(), (name, answer)
    # The same through a pipe: `--incoming exec:cat FILE` (no way back to a source).
    for name, data, reason in cases[:2]:
        path = tmp_path / f"stream-{name}"
        path.write_bytes(data)
        refused(destination(vmm_factory, tmp_path, f"exec:cat {path}", name=f"exec-{name}"),
                reason)
    assert src.alive()
    with RawQmp(src.sock) as q:
        q.negotiate()
        assert q.cmd("query-status")["return"]["status"] == "running"
        # The whole stream loads: the cuts above are what made the destinations refuse.
        mig = tmp_path / "mig-whole.sock"
        dest = destination(vmm_factory, tmp_path, f"unix:{mig}", name="whole")
        assert feed(mig, stream) == b"OK\n"
        with RawQmp(tmp_path / "whole.sock") as d:
            d.negotiate()
            # `completed` comes after the run state (as QEMU orders them).
            wait_until(lambda: d.cmd("query-migrate")["return"]["status"] == "completed",
                       what="the destination's migration completed")
            assert d.cmd("query-status")["return"]["status"] == "running"
