#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Writes the seed corpus of every fuzz target into tests/fuzz/corpus/<target>/, and the
libFuzzer dictionaries (the words of each input language) into tests/fuzz/dict/.

The seeds are real inputs: QMP messages of tests/qmp/ (and QEMU's malformed-input cases
there), the project's QAPI schema files, the `--disk`/`--qmp` strings of the README, the probe
guest's kernels (reduced to their headers plus a little payload, as the corpus must stay
small), a probe guest's migration stream and snapshot (and postcopy streams built from them),
hand-built virtqueues and register sequences that a Linux driver would produce, and the
return-path lines a postcopy destination sends.
Run it again after changing a seed list; the fuzzer's own finds are merged into the corpus
with `scripts/fuzz.sh --merge`. Usage: make-corpus.py [PROBE_GUEST_DIR]
"""

import re
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CORPUS = HERE / "corpus"


def put(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (d / name).write_bytes(data)


# QMP streams, from tests/qmp/ (test_raw.py, test_signals.py, test_throttle.py, ...).
QMP = {
    "negotiate": b"{ 'execute': 'qmp_capabilities', 'arguments': { 'enable': [ 'oob' ] } }\n",
    "negotiate-handles": b'{"execute": "qmp_capabilities", "arguments": {"enable": ["explicit-handles", "oob"]}, "id": "neg"}',
    "no-such-cmd": b"{ 'execute': 'no-such-cmd' }\n",
    "several": b"{'execute':'query-status','id':'single'}{'execute':'query-name','id':'x'}\n"
               b"{'execute':\n'query-kvm',\n'id':\n'split'}",
    "unicode-id": b'{"execute": "query-name", "id": "\\u00e9\\ud83d\\ude00\\u0001"}',
    "utf8-id": '{"execute": "query-name", "id": "é😀"}\n'.encode(),
    "control": b'{"execute": "query-name", "id": 3, "control": {"run-oob": true}}',
    "truncated": b'{"execute": }',
    "oob": b'{"exec-oob": "query-status", "id": 1}{"execute": "query-name", "exec-oob": "query-name", "id": 6}',
    "garbage": b"{\xff\x01]]]}}}" + b"[" * 50 + b"\x00garbage\xfe" * 4 + b"{'execute':",
    "stray": b"{'execute': 'nonexistent', 'id':'\n{ 'execute': 'no-such-cmd' }",
    "deep": b'{"execute": "query-name", "id": ' + b"[" * 40 + b"]" * 40 + b"}",
    "connect": b'{"connect": "BLOCK_IO_ERROR", "owner": {"__handle__": "Blockdev", "data": "drive0"}, "user_data": [1], "id": 3}\n'
               b'{"disconnect": 4, "owner": {"__handle__": "Blockdev", "data": "drive0"}}',
    "inject": b'{"execute": "blockdev-inject-error", "arguments": {"device": "drive0", "operation": "write", "errno": "eio", "once": true}, "id": 1}',
    "inject-remove": b'{"execute": "blockdev-inject-error-remove", "arguments": {"device": "drive0", "id": 1}}\n'
                     b'{"execute": "query-blockdev-inject-errors", "arguments": {"device": "drive0"}}',
    "throttle": b'{"execute": "block_set_io_throttle", "arguments": {"device": "vblk0", "bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 1000, "iops_rd": 0, "iops_wr": 0, "iops_max": 2000, "iops_max_length": 30, "group": "g1"}}',
    "hmp": b'{"execute": "human-monitor-command", "arguments": {"command-line": "info status", "cpu-index": 0}}'
           b'{"execute": "human-monitor-command", "arguments": {"command-line": 5}}',
    "lifecycle": b'{"execute": "stop"}{"execute": "query-status"}{"execute": "cont"}{"execute": "system_reset"}'
                 b'{"execute": "system_powerdown"}{"execute": "quit"}',
    "queries": b'{"execute": "query-version"}{"execute": "query-commands"}{"execute": "query-cpus-fast"}'
               b'{"execute": "query-block"}{"execute": "query-blockstats", "arguments": {"query-nodes": true}}'
               b'{"execute": "query-named-block-nodes", "arguments": {"flat": false}}{"execute": "query-kvm"}',
    "yank": b'{"exec-oob": "yank", "arguments": {"instances": [{"type": "block-node", "node-name": "drive0"}]}, "id": "y"}'
            b'{"exec-oob": "query-yank"}',
    "blockdev": b'{"execute": "blockdev-add", "arguments": {"driver": "raw", "node-name": "n1", "file": {"driver": "file", "filename": "/tmp/x.raw"}}}'
                b'{"execute": "blockdev-del", "arguments": {"node-name": "n1"}}',
    "handle": b'{"execute": "query-blockdev-inject-errors", "arguments": {"device": {"__handle__": "Blockdev", "data": "drive0"}}}',
    "schema": b'{"execute": "query-qmp-schema", "id": "s"}\n{"execute": "query-name", "id": "n"}',
    "numbers": b'{"execute": "query-name", "id": [1, -2, 3.5e10, 18446744073709551615, -9223372036854775808, 1e-300]}',
}
for name, data in QMP.items():
    put("qmp_stream", name, data)
    put("qmp_dispatch", name, data)

# The project's schema files, and the test schema of the generated code.
for f in sorted((ROOT / "resources/qapi").glob("*.json")):
    put("qapi_schema", f.name, f.read_bytes())
put("qapi_schema", "qapi-test.json",
    (ROOT / "qapi/tests/schema/qapi-test.json").read_text().replace("'sub/types.json'", "'yank.json'"))
for f in sorted((ROOT / "qapi/gen/tests/bad").glob("*.json"))[::8]:
    put("qapi_schema", "bad-" + f.name, f.read_bytes())

# Option strings from the README.
OPTIONS = [
    "img.raw",
    "path=data.raw,id=data0,readonly=on,cache=none",
    "path=img.raw,throttling.iops-total=500,throttling.iops-total-max=2000,throttling.iops-total-max-length=30",
    "path=img.raw,werror=stop,inject.0.operation=write,inject.0.errno=eio,inject.0.once=on",
    "path=a,,b.raw,aio=io_uring,num-queues=4,serial=S1,rerror=report,locking=off,node-name=n0",
    "path=img.raw,bps=1048576,iops_rd=100,group=g0,inject.3.operation=read,inject.3.sector=8,inject.3.count=2,inject.3.delay-ms=10",
    "unix:/tmp/qmp.sock",
    "unix:/tmp/qmp,,1.sock,server=on,wait=off",
    "tcp:127.0.0.1:4444,server,wait=no",
    "tcp:[::1]:4444",
    '{"driver": "file", "filename": "disk.img", "node-name": "f0", "cache": {"direct": true}}',
    '{"driver": "virtio-blk-device", "drive": "d0", "num-queues": 2, "list": [1, "x"]}',
    "driver=qcow2,file.driver=file,file.filename=a.img,server",
    "64M",
    "0x1000",
    # libvirt's -blockdev, -device and -chardev (tests/qmp/test_qemu_cli.py).
    "driver=file,node-name=f0,filename=/var/lib/libvirt/images/d.raw,cache.direct=on,aio=native",
    '{"driver":"raw","node-name":"fmt0","file":"f0"}',
    '{"driver":"file","filename":"/i.raw","node-name":"libvirt-1-storage","auto-read-only":true,"discard":"unmap","cache":{"direct":true,"no-flush":false}}',
    '{"node-name":"libvirt-1-format","read-only":false,"driver":"raw","file":"libvirt-1-storage"}',
    "virtio-blk-device,drive=libvirt-1-format,id=virtio-disk0,bootindex=1,write-cache=on,werror=stop,rerror=report",
    "pty,id=charserial0,logfile=/dev/fdset/3,logappend=on",
]
for i, s in enumerate(OPTIONS):
    put("options", f"readme-{i:02}", s)

# virtio-blk: [config] [heads] heads... table... data (see the target).
DATA = 0x1000


def desc(addr, length, flags, nxt):
    return struct.pack("<QIHH", addr, length, flags, nxt)


NEXT, WRITE, INDIRECT = 1, 2, 4


def blk_seed(size_log2, config_bits, heads, table, data):
    size = 1 << size_log2
    table = b"".join(table).ljust(16 * size, b"\0")
    return bytes([size_log2 | config_bits, len(heads)]) + b"".join(struct.pack("<H", h) for h in heads) + table + data


def header(t, sector):
    return struct.pack("<IIQ", t, 0, sector)


# A read of 2 sectors, a write of 1 sector split over two descriptors, a flush, a GET_ID.
data = bytearray(0x3000)
data[0:16] = header(0, 4)          # IN at 0x1000
data[16:32] = header(1, 8)         # OUT at 0x1010
data[32:48] = header(4, 0)         # FLUSH at 0x1020
data[48:64] = header(8, 0)         # GET_ID at 0x1030
data[64:80] = header(11, 0)        # DISCARD at 0x1040
data[80:96] = struct.pack("<QII", 2, 4, 0)  # one discard segment at 0x1050
data[96:112] = header(13, 0)       # WRITE_ZEROES
data[112:128] = struct.pack("<QII", 6, 2, 1)
table = [
    desc(DATA + 0x000, 16, NEXT, 1), desc(DATA + 0x400, 1024, NEXT | WRITE, 2), desc(DATA + 0x3f0, 1, WRITE, 0),
    desc(DATA + 0x010, 16, NEXT, 4), desc(DATA + 0x800, 256, NEXT, 5), desc(0x5000, 256, NEXT, 6), desc(DATA + 0x3f1, 1, WRITE, 0),
    desc(DATA + 0x020, 16, NEXT, 8), desc(DATA + 0x3f2, 1, WRITE, 0),
    desc(DATA + 0x030, 16, NEXT, 10), desc(DATA + 0xc00, 20, NEXT | WRITE, 11), desc(DATA + 0x3f3, 1, WRITE, 0),
    desc(DATA + 0x040, 32, NEXT, 13), desc(DATA + 0x3f4, 1, WRITE, 0),
    desc(DATA + 0x060, 32, NEXT, 15), desc(DATA + 0x3f5, 1, WRITE, 0),
]
put("virtio_blk_request", "mixed", blk_seed(4, 0x18, [0, 3, 7, 9, 12, 14], table, bytes(data)))
put("virtio_blk_request", "mixed-ro", blk_seed(4, 0x20, [0, 3, 7, 9], table, bytes(data)))
# An indirect table at 0x1100 describing a read of one sector.
ind = desc(DATA + 0x000, 16, NEXT, 1) + desc(DATA + 0x400, 512, NEXT | WRITE, 2) + desc(DATA + 0x3f0, 1, WRITE, 0)
data2 = bytearray(data)
data2[0x100:0x100 + len(ind)] = ind
put("virtio_blk_request", "indirect", blk_seed(2, 0, [0], [desc(DATA + 0x100, len(ind), INDIRECT, 0)], bytes(data2)))
# A descriptor loop and a header past the end of RAM.
put("virtio_blk_request", "loop", blk_seed(1, 0, [0], [desc(DATA, 16, NEXT, 1), desc(DATA + 16, 1, NEXT | WRITE, 0)], bytes(data[:64])))
put("virtio_blk_request", "outside", blk_seed(1, 0, [0], [desc(0x8ff8, 16, NEXT, 1), desc(0x3fff, 1, WRITE, 0)], b""))

# virtio-mmio: [device config] then accesses (see the target): what Linux's virtio_mmio
# driver does to bring a device up, then a reset.
REG = 0x10
def w32(reg, v):
    return bytes([REG | 1 | (3 << 1), reg // 4]) + struct.pack("<I", v)
def r32(reg):
    return bytes([REG | (3 << 1), reg // 4])
def rcfg(off, width_code):
    return bytes([width_code << 1]) + struct.pack("<H", 0x100 + off)


bringup = b"".join([
    r32(0x000), r32(0x004), r32(0x008), r32(0x00c),
    w32(0x070, 0), w32(0x070, 1), w32(0x070, 3),
    w32(0x014, 0), r32(0x010), w32(0x014, 1), r32(0x010),
    w32(0x024, 0), w32(0x020, 0b1011), w32(0x024, 1), w32(0x020, 1),
    w32(0x070, 11), r32(0x070),
    w32(0x030, 0), r32(0x044), r32(0x034), w32(0x038, 16),
    w32(0x080, 0x1000), w32(0x084, 0), w32(0x090, 0x2000), w32(0x094, 0), w32(0x0a0, 0x3000), w32(0x0a4, 0),
    w32(0x044, 1),
    w32(0x030, 1), w32(0x038, 8),
    w32(0x080, 0x4000), w32(0x090, 0x5000), w32(0x0a0, 0x6000), w32(0x044, 1),
    w32(0x070, 15), r32(0x070), rcfg(0, 3), rcfg(4, 0), rcfg(8, 4),
    w32(0x050, 0), r32(0x060), w32(0x064, 1), r32(0x0fc),
])
put("virtio_mmio", "linux-bringup", b"\x00" + bringup + w32(0x070, 0) + bringup)
put("virtio_mmio", "activate-fails", b"\x01" + bringup + w32(0x070, 0x80) + r32(0x070))
put("virtio_mmio", "odd-widths", b"\x00" + bytes([0x00, 0x70, 0x00, 0x03, 0x72, 0x00, 0x01, 0x09, 0x01, 0x05, 0x0b, 0x10, 0x01, 0x01, 0x02, 3, 4]))

# Kernels: the probe guest's bzImage and ELF, reduced. Input: [flags] [initrd KiB] [cmdline
# length] cmdline kernel.
probe = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "target/probe-guest"


def boot_seed(flags, initrd_kib, cmdline, kernel):
    return bytes([flags, initrd_kib, len(cmdline)]) + cmdline + kernel


bz = probe / "bzImage"
if bz.exists():
    img = bz.read_bytes()
    setup = (img[0x1f1] + 1) * 512
    # The real setup header and the first 512 bytes of the kernel proper: the loader copies
    # what the file holds.
    small = img[:setup + 512]
    put("boot_loader", "bzimage", boot_seed(0, 0, b"console=ttyS0 probe.test=boot", small))
    put("boot_loader", "bzimage-initrd-big-ram", boot_seed(7, 3, b"", small))
    put("boot_loader", "bzimage-header", boot_seed(1, 0, b"quiet", img[:0x400]))
elf = probe / "probe.elf"
if elf.exists():
    img = elf.read_bytes()
    e_phoff, = struct.unpack_from("<Q", img, 0x20)
    e_phentsize, e_phnum = struct.unpack_from("<HH", img, 0x36)
    # Keep the ELF and program headers, one page of the first segment, and the note moved to
    # just after the headers; drop the section headers.
    out = bytearray(img[:0x1000] + img[0x1000:0x2000])
    struct.pack_into("<QHHH", out, 0x28, 0, 64, 0, 0)  # e_shoff, e_ehsize, e_shentsize, e_shnum
    struct.pack_into("<H", out, 0x3e, 0)                 # e_shstrndx
    for i in range(e_phnum):
        ph = e_phoff + i * e_phentsize
        p_type, = struct.unpack_from("<I", out, ph)
        if p_type == 1:  # PT_LOAD: one page from file offset 0x1000
            struct.pack_into("<QQ", out, ph + 32, 0x1000, 0x2000)
        elif p_type == 4:  # PT_NOTE
            off, = struct.unpack_from("<Q", out, ph + 8)
            size, = struct.unpack_from("<Q", out, ph + 32)
            note = img[off:off + size]
            at = e_phoff + e_phnum * e_phentsize
            out[at:at + size] = note
            struct.pack_into("<Q", out, ph + 8, at)
    put("boot_loader", "pvh-elf", boot_seed(0, 0, b"console=ttyS0", bytes(out)))
    put("boot_loader", "pvh-elf-initrd", boot_seed(4, 16, b"probe.test=boot", bytes(out)))
    put("boot_loader", "elf-header", boot_seed(3, 0, b"", img[:0x200]))

# Migration: a real stream and snapshot of a 32 MiB probe guest (what the target's VM is), from
# target/migration-seed/ (vmm --kernel target/probe-guest/bzImage --cmdline probe.test=idle
# --memory 32 --seccomp off --qmp unix:SOCK, then QMP `migrate {"uri": "exec:cat >
# target/migration-seed/stream"}` and, after `stop`, `migrate {"uri": "file:target/migration-seed/snapshot"}`),
# reduced: every PAGES run to its first page, the snapshot to its header and setup, its first
# data pages and its state; then cut and corrupted copies. Without those files the committed
# seeds are kept. Inputs: [mode] then 0: the stream; 1: the file as segments
# [u32 gap][u32 length][bytes]; 2: one JSON record.
MIG = ROOT / "target/migration-seed"
MIG_STREAM, MIG_SNAP = MIG / "stream", MIG / "snapshot"


def stream_records(b):
    """The records of a stream: (tag, header bytes, body bytes)."""
    i, out = 12, []
    while i < len(b):
        t = b[i]
        if t in (1, 4):
            n, = struct.unpack_from("<I", b, i + 1)
            out.append((t, b[i:i + 5], b[i + 5:i + 5 + n]))
            i += 5 + n
        elif t == 2:
            gpa, n = struct.unpack_from("<QI", b, i + 1)
            out.append((t, b[i:i + 13], b[i + 13:i + 13 + n * 4096]))
            i += 13 + n * 4096
        elif t == 3:
            out.append((t, b[i:i + 13], b""))
            i += 13
        else:
            out.append((t, b[i:i + 1], b""))
            i += 1
    return b[:12], out


def segments(parts):
    """A mode-1 input: (gap, bytes) pairs."""
    return b"\x01" + b"".join(struct.pack("<II", gap, len(d)) + d for gap, d in parts)


if MIG_STREAM.exists() and MIG_SNAP.exists():
    head, recs = stream_records(MIG_STREAM.read_bytes())
    small = bytearray(head)
    for t, h, body in recs:
        if t == 2:
            gpa, _ = struct.unpack_from("<QI", h, 1)
            small += bytes([2]) + struct.pack("<QI", gpa, 1) + body[:4096]
        else:
            small += h + body
        if t == 1:
            put("migration_stream", "setup.json", b"\x02" + body)
        if t == 4:
            put("migration_stream", "state.json", b"\x02" + body)
            state_at = len(small) - len(body) // 2
    small = bytes(small)
    put("migration_stream", "stream", b"\x00" + small)
    put("migration_stream", "stream-cut-mid-state", b"\x00" + small[:state_at])
    put("migration_stream", "stream-cut-mid-pages", b"\x00" + small[:len(head) + 1000])
    put("migration_stream", "stream-bad-magic", b"\x00X" + small[1:])
    put("migration_stream", "stream-zeros", b"\x00" + head + recs[0][1] + recs[0][2]
        + bytes([3]) + struct.pack("<QI", 0x1000, 4) + bytes([2]) + struct.pack("<QI", 0x1000, 1)
        + b"\xab" * 4096 + bytes([3]) + struct.pack("<QI", 0x1ff_f000, 2) + bytes([5]))
    snap = MIG_SNAP.read_bytes()
    (magic, version, _, ram_off, ram_len, st_off, st_len, setup_len) = struct.unpack_from("<8sIIQQQQI", snap)
    pages = [i for i in range(ram_off, ram_off + ram_len, 4096) if any(snap[i:i + 4096])][:4]
    parts, end = [(0, snap[:ram_off])], ram_off
    for p in pages:
        parts.append((p - end, snap[p:p + 4096]))
        end = p + 4096
    parts.append((st_off - end, snap[st_off:st_off + st_len]))
    put("migration_stream", "snapshot", segments(parts))
    put("migration_stream", "snapshot-cut-mid-ram", segments(parts[:2]))
    put("migration_stream", "snapshot-cut-mid-state", segments(parts[:-1] + [(parts[-1][0], parts[-1][1][:st_len // 2])]))
    put("migration_stream", "snapshot-bad-magic", segments([(0, b"VMMSNAQ" + snap[7:ram_off])] + parts[1:]))
else:
    print(f"make-corpus.py: no {MIG_STREAM} and {MIG_SNAP}: the migration_stream seeds are kept", file=sys.stderr)

# Postcopy streams (records 6 DISCARD, 7 POSTCOPY, 8 RESUME), built from the stream seed (the
# real one just written, or the committed one): its setup, pages and state around the new
# records, as a source sends them when postcopy cuts its first pass (the pages still to send
# discarded, POSTCOPY, the state; then the missing pages and END, which the destination reads
# in postcopy, not in its loading), and their corrupt and misplaced variants.
DISCARD, POSTCOPY, RESUME, END = 6, 7, 8, 5
MAX_DISCARD = 1 << 20
STREAM_SEED = CORPUS / "migration_stream" / "stream"


def discard(gpa, count):
    return bytes([DISCARD]) + struct.pack("<QI", gpa, count)


if STREAM_SEED.exists():
    head, recs = stream_records(STREAM_SEED.read_bytes()[1:])
    setup = next(h + body for t, h, body in recs if t == 1)
    pages = [h + body for t, h, body in recs if t == 2]
    state = [h + body for t, h, body in recs if t == 4][-1]
    # The real state where the loading reaches it, an empty one where a record before it
    # is refused (the corpus stays small).
    empty = bytes([4]) + struct.pack("<I", 2) + b"{}"
    first = head + setup + b"".join(pages[:2])
    rest = b"".join(pages[-2:])
    rest_at, = struct.unpack_from("<Q", rest, 1)
    cut = discard(0x7000, 1) + discard(rest_at, (0x200_0000 - rest_at) // 4096)
    for name, tail in {
        "postcopy": cut + bytes([POSTCOPY]) + state + rest + bytes([END]),
        "postcopy-no-discard": bytes([POSTCOPY]) + empty + bytes([END]),
        "postcopy-no-state": cut + bytes([POSTCOPY]) + rest + empty + bytes([END]),
        "postcopy-cut-mid-state": cut + bytes([POSTCOPY]) + state[:len(state) // 2],
        "discard-all-then-end": discard(0, 0x2000) + state + bytes([END]),
        "discard-then-pages": discard(0, 0x2000) + rest + state + bytes([END]),
        "discard-past-ram": discard(0x1ffe000, 3) + empty + bytes([END]),
        "discard-max": discard(0, MAX_DISCARD) + empty + bytes([END]),
        "discard-too-many": discard(0, MAX_DISCARD + 1) + empty + bytes([END]),
        "discard-none": discard(0x1000, 0) + empty + bytes([END]),
        "discard-unaligned": discard(0x1800, 1) + empty + bytes([END]),
        "resume-inside": bytes([RESUME]) + empty + bytes([END]),
    }.items():
        put("migration_stream", "stream-" + name, b"\x00" + first + tail)
    # A resumed stream (what a source sends after migrate-recover): a new stream refuses it.
    put("migration_stream", "stream-resume", b"\x00" + head + bytes([RESUME]) + rest + bytes([END]))
else:
    print(f"make-corpus.py: no {STREAM_SEED}: no postcopy seeds for migration_stream", file=sys.stderr)

# postcopy_requests: [max][run][n][n chunk lengths] then what a destination sends on the
# return path (vmm/src/migration/incoming.rs, faults.rs): RUN, its vCPUs' REQ lines, OK; after
# migrate-recover its PENDING lines (PageSet::runs) and READY; and broken lines.


def return_path(name, text, max_run=0, run=15, lengths=()):
    """`text` in reads of `lengths` + 1 bytes in turn, or, as a list, one read per item."""
    if isinstance(text, list):
        lengths = [len(r) - 1 for r in text]
        text = "".join(text)
    if isinstance(text, str):
        text = text.encode()
    put("postcopy_requests", name, bytes([max_run, run, len(lengths), *lengths]) + text)


HIGH = 1 << 32
return_path("serve", f"RUN\nREQ 0x7000 1\nREQ 0x{HIGH:x} 1\nREQ 0x7000 1\nREQ 0x3ff000 1\n", lengths=[3])
return_path("serve-all", f"RUN\nREQ 0x0 1024\nREQ 0x{HIGH:x} 67\nREQ 0x1000 1\nREQ 0x2000 1\nOK\n", lengths=[15])
return_path("background-then-ok", "RUN\n" + "REQ 0x5000 1\n" * 80 + "OK\n", run=31, lengths=[12])
return_path("refused", "ERR The source's VM does not match this one: the source has 64 MiB of RAM, this VM 32 MiB\n")
return_path("split-bytes", f"RUN\nREQ 0x3000 16\nREQ 0x{HIGH + 0x2000:x} 1\n", lengths=[0])
# What follows a line that breaks the stream (or READY) in the same read is lost with the
# connection (the read loop): these reads end where a new connection (loop) starts.
return_path("resume", ["RUN\nREQ 0x5000 2\nREQ 0x400000 1\n",
                       f"PENDING 0x0 5\nPENDING 0x7000 1017\nPENDING 0x{HIGH:x} 67\nREADY\n",
                       f"REQ 0x5000 1\nREQ 0x6000 4\nREQ 0x{HIGH + 0x42000:x} 1\n"], max_run=200)
return_path("resume-twice", ["RUN\nHELLO\n", "PENDING 0x3000 2\nREQ 0x3000 1\n",
                             "PENDING 0x1000 1\nPENDING 0x3000 2\nREADY\n", "REQ 0x3000 2\n"], max_run=1)
return_path("resume-then-ok", ["RUN\nBAD\n", f"PENDING 0x2000 3\nPENDING 0x{HIGH:x} 1\nREADY\n",
                               "REQ 0x2000 3\n", "REQ 0x1000 1\n", "OK\n"], run=0)
return_path("bad-lines", "RUN\nREQ 0x1001 1\nREQ 0x1000 0\nREQ 1000 1\nREQ 0xfffffffffffff000 2\n"
            "PENDING 0x0 1\nRUN now\n" + "ERR " + "x" * 300 + "\n", lengths=[0])
return_path("not-utf8", b"RUN\nREQ 0x1000 1\xff\nREQ 0x2000 1\n")
return_path("overlong", "RUN\nREQ 0x" + "0" * 300, lengths=[99])

# Dictionaries (libFuzzer's -dict): the words of each input language, so that short runs reach
# past the first checks.

DICT = HERE / "dict"
DICT.mkdir(exist_ok=True)


def write_dict(target, words):
    lines = []
    for w in sorted({w.encode() if isinstance(w, str) else w for w in words}):
        esc = "".join(chr(b) if 0x20 <= b < 0x7f and b not in b'"\\' else "\\x%02x" % b for b in w)
        lines.append('"%s"' % esc)
    (DICT / f"{target}.dict").write_text("\n".join(lines) + "\n")


schema_text = "".join(f.read_text() for f in sorted((ROOT / "resources/qapi").glob("*.json")))
names = set(re.findall(r"'([A-Za-z0-9_.-]+)'", schema_text))
qmp_words = names | {"execute", "exec-oob", "arguments", "id", "connect", "disconnect", "owner",
                     "user_data", "__handle__", "data", "true", "false", "null", '":', '{"',
                     '"}', "\\u0000", b"\xc0\x80", "\\'", "1e400", "-0", "18446744073709551616"}
write_dict("qmp_stream", qmp_words)
write_dict("qmp_dispatch", {'"%s"' % n for n in names} | qmp_words)
write_dict("qapi_schema", names | {"'", "##", "# @", "#", "\n# ", "Since:", "Returns:", "Errors:",
                                   "Features:", "# = ", "# == ", "@deprecated", "@unstable",
                                   "'*", "['", "{'", "': ", "true", "false"})
disk_src = (ROOT / "vmm/src/disk.rs").read_text() + (ROOT / "vmm/src/qmp_socket.rs").read_text()
option_words = set(re.findall(r'"([a-z][a-z0-9_.-]*)"', disk_src))
option_words |= {"throttling.bps-total", "throttling.iops-read-max-length", "inject.0.", "inject.1.",
                 "=", ",", ",,", "=on", "=off", "unix:", "tcp:", "[::1]", ":4444", '{"', '":',
                 "path=", "1K", "0x", "true", "null"}
write_dict("options", option_words)
write_dict("boot_loader", [b"HdrS", b"\x55\xaa", b"\x7fELF", b"Xen\x00", b"\x12\x00\x00\x00",
                           b"\x0f\x02", b"\x00\x00\x10\x00", b"\x01\x00\x00\x00"])
write_dict("migration_stream", [b"VMMMIGR\x00", b"VMMSNAP\x00", b"\x01\x00\x00\x00", b"\x00\x10\x00\x00",
                                b"\x00\x01\x00\x00", "ram", "cpus", "cpu_features", "leaf", "subleaf",
                                "reg", "bits", "disks", "id", "size", "read_only", "queues", "vcpus",
                                "irqchips", "pit", "clock", "devices", "version", '":', '{"', "[[0,33554432]]",
                                # DISCARD counts: all of this VM's RAM, MAX_DISCARD, one more.
                                b"\x00\x20\x00\x00", b"\x00\x00\x10\x00", b"\x01\x00\x10\x00"])
write_dict("postcopy_requests", ["RUN", "ERR", "REQ", "PENDING", "READY", "OK", "0x", " ", "\n", " 1\n",
                                 "0x100000000", "0x3ff000", "1024", "67", "1048576"])
