//! `probe.test=virtq-chaos`: hostile rings on virtio-blk device `probe.dev`,
//! brought up properly (FEATURES_OK with INDIRECT_DESC if offered,
//! DRIVER_OK). Each case resets the device, brings it up with fresh rings,
//! makes its chains available, notifies and reports what the device did:
//!
//! `PROBE virtq-chaos case=NAME outcome=needs-reset|completed|completed-then-needs-reset|ignored
//! status=ok|ioerr|unsupp|unset|0xNN used_len=N isr=0xN irq=yes|no|n/a ro=ok|bad canary=ok|bad`
//!
//! `status` is the byte in the chain's status descriptor (`unset`: not
//! written), `isr` the InterruptStatus register, `irq` whether the device's
//! interrupt arrived. `ro=bad` means the device wrote the descriptor table,
//! the available ring, a header or an indirect table; `canary=bad` that it
//! wrote a data or status byte it was not given as device-writable by a
//! request it completed (for a case the device refuses: any byte at all).
//!
//! Disk layout the cases rely on: sectors 0..1024 are the protected region
//! (every hostile write aims there, reads read it), the valid writes of the
//! `valid-*` cases land at sectors 2048..2057 (sector pattern, `probe.seed`),
//! the final round trip writes and reads back sectors 4096..4104.
//!
//! With more than one CPU, the race cases follow: the boot CPU keeps 32 valid
//! reads of the protected region going for `probe.count` x 10 ms (each made
//! available again once its status byte is written) while the
//! other CPUs store random values into the used ring (`race-used`), the
//! available ring's entries and the used ring (`race-avail`), both rings
//! whole (`race-all`), or the device's registers (`race-registers`):
//! `PROBE virtq-chaos case=race-... cpus=N stores=S submitted=R outcome=needs-reset|survived device_status=.. isr=.. ro=.. canary=..`
//!
//! Then a clean bring-up and a write and read-back of 8 sectors:
//! `PROBE virtq-chaos round-trip status=ok|... match=yes|no` and the summary
//! `PROBE virtq-chaos dev=N cases=C races=R bad=B status=ok|bad`.

use super::{disk_error, smp, workers, Ctx, DiskError};
use crate::guest::arch;
use crate::guest::blk::{Outcome, ReqType};
use crate::guest::mem::DmaBuf;
use crate::guest::platform::spin_ms;
use crate::guest::timer::now_ns;
use crate::guest::virtio::{
    reg, status, Mmio, DESC_INDIRECT, DESC_NEXT, DESC_WRITE, F_INDIRECT_DESC,
};
use crate::out;
use probe_guest::bootinfo::E820_RAM;
use probe_guest::pattern;

/// Largest queue the cases use.
const QSIZE: u16 = 256;
/// Arena layout (offsets).
const DESC: u64 = 0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const HDR: u64 = 0x3000;
const STATUS: u64 = 0x4000;
const TABLE: u64 = 0x5000;
const TABLE_LEN: u64 = 0xb000;
const DATA: u64 = 0x10000;
const DATA_LEN: u64 = 0x40000;
/// Device-readable data the driver writes (part of what must stay as is).
const SRC: u64 = 0x50000;
const SRC_LEN: u64 = 0x10000;
const ARENA: usize = (SRC + SRC_LEN) as usize;
/// Canary bytes.
const DATA_FILL: u8 = 0x5a;
const STATUS_FILL: u8 = 0xee;
/// What a hostile write would put on the disk.
const EVIL: u8 = 0xc3;

/// Sectors every hostile write aims at (and reads read).
const PROTECTED: u64 = 0;
/// First sector of the valid writes.
const VALID_LBA: u64 = 2048;
/// First sector of the final round trip.
const ROUND_TRIP_LBA: u64 = 4096;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;
/// VIRTIO_BLK_F_DISCARD and VIRTIO_BLK_F_WRITE_ZEROES.
const F_DISCARD: u64 = 1 << 13;
const F_WRITE_ZEROES: u64 = 1 << 14;

/// Most byte ranges a case lets the device write.
const MAX_ALLOWED: usize = 40;

/// The device under test and its rings.
struct Raw {
    mmio: Mmio,
    base: u64,
    size: u16,
    avail_idx: u16,
    /// Publishing leaves the available index alone (the case commits it).
    staged: bool,
    /// Byte ranges (arena offsets) the device may write in this case.
    allowed: [(u64, u64); MAX_ALLOWED],
    allowed_count: usize,
}

fn w8(a: u64, v: u8) {
    // SAFETY: `a` is inside the arena this workload allocated.
    unsafe { core::ptr::write_volatile(a as *mut u8, v) }
}

fn r8(a: u64) -> u8 {
    // SAFETY: as for `w8`.
    unsafe { core::ptr::read_volatile(a as *const u8) }
}

fn w16(a: u64, v: u16) {
    // SAFETY: as for `w8`.
    unsafe { core::ptr::write_volatile(a as *mut u16, v) }
}

fn r16(a: u64) -> u16 {
    // SAFETY: as for `w8`.
    unsafe { core::ptr::read_volatile(a as *const u16) }
}

fn r32(a: u64) -> u32 {
    // SAFETY: as for `w8`.
    unsafe { core::ptr::read_volatile(a as *const u32) }
}

fn w32(a: u64, v: u32) {
    // SAFETY: as for `w8`.
    unsafe { core::ptr::write_volatile(a as *mut u32, v) }
}

fn w64(a: u64, v: u64) {
    // SAFETY: as for `w8`.
    unsafe { core::ptr::write_volatile(a as *mut u64, v) }
}

fn fill(a: u64, len: u64, v: u8) {
    for i in 0..len {
        w8(a + i, v);
    }
}

/// FNV-1a of `len` bytes at `a`.
fn hash(a: u64, len: u64) -> u64 {
    probe_guest::bytes::fnv1a((0..len).map(|i| r8(a + i)))
}

/// Writes descriptor `i` of the table at `table`.
fn desc_at(table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
    let d = table + 16 * u64::from(i);
    w64(d, addr);
    w32(d + 8, len);
    w16(d + 12, flags);
    w16(d + 14, next);
}

impl Raw {
    fn a(&self, off: u64) -> u64 {
        self.base + off
    }

    /// Resets the device and brings it up with fresh rings and canaries.
    fn bring_up(&mut self) -> Result<u64, &'static str> {
        let features = self
            .mmio
            .negotiate(F_INDIRECT_DESC | F_DISCARD | F_WRITE_ZEROES)
            .map_err(|_| "negotiate")?;
        fill(self.a(0), DATA, 0);
        fill(self.a(SRC), SRC_LEN, 0);
        fill(self.a(STATUS), 0x1000, STATUS_FILL);
        fill(self.a(DATA), DATA_LEN, DATA_FILL);
        self.mmio.write(reg::QUEUE_SEL, 0);
        let max = self.mmio.read(reg::QUEUE_NUM_MAX);
        if max == 0 || self.mmio.read(reg::QUEUE_READY) != 0 {
            return Err("queue");
        }
        self.size = (max as u16).min(QSIZE);
        self.mmio.write(reg::QUEUE_NUM, u32::from(self.size));
        for (lo, off) in [
            (reg::QUEUE_DESC_LOW, DESC),
            (reg::QUEUE_DRIVER_LOW, AVAIL),
            (reg::QUEUE_DEVICE_LOW, USED),
        ] {
            let a = self.a(off);
            self.mmio.write(lo, a as u32);
            self.mmio.write(lo + 4, (a >> 32) as u32);
        }
        self.mmio.write(reg::QUEUE_READY, 1);
        self.mmio.driver_ok();
        self.avail_idx = 0;
        self.staged = false;
        self.allowed_count = 0;
        if self.mmio.read(reg::STATUS) & status::DRIVER_OK == 0 {
            return Err("driver-ok");
        }
        Ok(features)
    }

    fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        desc_at(self.a(DESC), i, addr, len, flags, next);
    }

    /// A header for `kind` at `sector` in header slot `n`; returns its address.
    fn header(&self, n: u64, kind: u32, sector: u64) -> u64 {
        let h = self.a(HDR + 16 * n);
        w32(h, kind);
        w32(h + 4, 0);
        w64(h + 8, sector);
        h
    }

    fn status_at(&self, n: u64) -> u64 {
        self.a(STATUS + n)
    }

    fn data(&self, off: u64) -> u64 {
        self.a(DATA + off)
    }

    fn src(&self, off: u64) -> u64 {
        self.a(SRC + off)
    }

    fn table(&self) -> u64 {
        self.a(TABLE)
    }

    /// Lets the device write `len` bytes at `addr` (a completed request's
    /// device-writable buffers).
    fn allow(&mut self, addr: u64, len: u64) {
        if self.allowed_count < self.allowed.len() {
            self.allowed[self.allowed_count] = (addr, len);
            self.allowed_count += 1;
        }
    }

    fn publish(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        w16(self.a(AVAIL + 4 + 2 * slot), head);
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        if !self.staged {
            self.commit();
        }
    }

    fn set_avail_idx(&mut self, idx: u16) {
        self.avail_idx = idx;
        if !self.staged {
            self.commit();
        }
    }

    /// Makes what was published available (writes the available index).
    fn commit(&mut self) {
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        self.staged = false;
        w16(self.a(AVAIL + 2), self.avail_idx);
    }

    fn notify(&self) {
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        self.mmio.write(reg::QUEUE_NOTIFY, 0);
    }

    fn used_idx(&self) -> u16 {
        r16(self.a(USED + 2))
    }

    fn needs_reset(&self) -> bool {
        self.mmio.read(reg::STATUS) & status::NEEDS_RESET != 0
    }

    /// What the device must never write: the descriptor table, the
    /// available ring (but its index, which the case writes last), the
    /// headers, the indirect tables, the data it reads.
    fn ro_hash(&self) -> u64 {
        hash(self.a(DESC), AVAIL + 2)
            ^ hash(self.a(AVAIL + 4), USED - AVAIL - 4).rotate_left(4)
            ^ hash(self.a(HDR), 0x1000).rotate_left(1)
            ^ hash(self.a(TABLE), TABLE_LEN).rotate_left(2)
            ^ hash(self.a(SRC), SRC_LEN).rotate_left(3)
    }

    /// Whether every data and status byte outside the allowed ranges still
    /// holds its canary.
    fn canaries_intact(&self) -> bool {
        let allowed = |a: u64| {
            self.allowed[..self.allowed_count]
                .iter()
                .any(|&(s, l)| a >= s && a < s + l)
        };
        let area = |off: u64, len: u64, v: u8| {
            (0..len).all(|i| {
                let a = self.a(off + i);
                allowed(a) || r8(a) == v
            })
        };
        area(STATUS, 0x1000, STATUS_FILL) && area(DATA, DATA_LEN, DATA_FILL)
    }
}

/// Where the probe owns RAM the device must not touch: the last 256 bytes
/// below the top of the RAM range the allocator uses (canary 0x5a).
fn ram_top(ctx: &Ctx) -> u64 {
    ctx.p
        .info
        .regions()
        .iter()
        .filter(|r| r.kind == E820_RAM && r.addr + r.size <= 0xc000_0000)
        .map(|r| r.addr + r.size)
        .max()
        .unwrap_or(0)
}

/// A hostile case: builds its chains (head published, no notify) and the
/// ranges the device may write if it completes it.
type Build = fn(&mut Raw, &mut CaseEnv);

/// What a case may need besides the rings.
struct CaseEnv {
    indirect: bool,
    /// DISCARD and WRITE_ZEROES negotiated (a writable disk).
    discard: bool,
    capacity: u64,
    ram_top: u64,
    seed: u64,
}

/// A read of 512 bytes: header, data, status at descriptors `d..d+3`.
fn read_chain(q: &mut Raw, d: u16, n: u64, sector: u64, data: u64) {
    let h = q.header(n, T_IN, sector);
    q.desc(d, h, 16, DESC_NEXT, d + 1);
    q.desc(d + 1, data, 512, DESC_NEXT | DESC_WRITE, d + 2);
    q.desc(d + 2, q.status_at(n), 1, DESC_WRITE, 0);
}

/// A write of `len` bytes of EVIL at `sector` with descriptors 0 (header)
/// and 1 (data); the caller writes the status descriptor 2.
fn evil_write(q: &mut Raw, sector: u64, len: u32) {
    let h = q.header(0, T_OUT, sector);
    fill(q.src(0), u64::from(len), EVIL);
    q.desc(0, h, 16, DESC_NEXT, 1);
    q.desc(1, q.src(0), len, DESC_NEXT, 2);
}

/// A discard or write-zeroes request of `segs` (sector, sectors, flags).
fn ranges(q: &mut Raw, kind: u32, segs: &[(u64, u32, u32)]) {
    let h = q.header(0, kind, 0);
    for (i, &(sector, num, flags)) in segs.iter().enumerate() {
        let at = q.src(0x100 + 16 * i as u64);
        w64(at, sector);
        w32(at + 8, num);
        w32(at + 12, flags);
    }
    q.desc(0, h, 16, DESC_NEXT, 1);
    q.desc(1, q.src(0x100), 16 * segs.len() as u32, DESC_NEXT, 2);
    q.desc(2, q.status_at(0), 1, DESC_WRITE, 0);
    q.allow(q.status_at(0), 1);
    q.publish(0);
}

const CASES: [(&str, Build); 36] = [
    // Valid writes (land on the disk: the test checks them).
    ("valid-write", |q, e| {
        let h = q.header(0, T_OUT, VALID_LBA);
        let buf = q.src(0);
        // SAFETY: 4 KiB of the arena's source area.
        let bytes = unsafe { core::slice::from_raw_parts_mut(buf as *mut u8, 4096) };
        pattern::fill(bytes, VALID_LBA, e.seed);
        q.desc(0, h, 16, DESC_NEXT, 1);
        q.desc(1, buf, 4096, DESC_NEXT, 2);
        q.desc(2, q.status_at(0), 1, DESC_WRITE, 0);
        q.allow(q.status_at(0), 1);
        q.publish(0);
    }),
    ("valid-write-zero-length-middle", |q, e| {
        let h = q.header(0, T_OUT, VALID_LBA + 8);
        let buf = q.src(0);
        // SAFETY: 512 bytes of the arena's source area.
        let bytes = unsafe { core::slice::from_raw_parts_mut(buf as *mut u8, 512) };
        pattern::fill(bytes, VALID_LBA + 8, e.seed);
        q.desc(0, h, 16, DESC_NEXT, 1);
        q.desc(1, q.src(0x1000), 0, DESC_NEXT, 2);
        q.desc(2, buf, 512, DESC_NEXT, 3);
        q.desc(3, q.status_at(0), 1, DESC_WRITE, 0);
        q.allow(q.status_at(0), 1);
        q.publish(0);
    }),
    // Loops and chains longer than the queue.
    ("loop-self", |q, _| {
        // A header and a 255-byte buffer that names itself: a queue's worth
        // of descriptors would read as 127 sectors and a status byte.
        let h = q.header(0, T_IN, PROTECTED);
        q.desc(0, h, 16, DESC_NEXT, 1);
        q.desc(1, q.data(0), 255, DESC_NEXT | DESC_WRITE, 1);
        q.publish(0);
    }),
    ("loop-back", |q, _| {
        evil_write(q, PROTECTED, 512);
        q.desc(2, q.status_at(0), 1, DESC_NEXT | DESC_WRITE, 1);
        q.publish(0);
    }),
    ("chain-past-queue-size", |q, _| {
        // Every descriptor of the queue, the last leading back to the head.
        let n = q.size;
        let h = q.header(0, T_IN, PROTECTED);
        q.desc(0, h, 16, DESC_NEXT, 1);
        for i in 1..n - 1 {
            q.desc(
                i,
                q.data(u64::from(i - 1) * 512),
                512,
                DESC_NEXT | DESC_WRITE,
                i + 1,
            );
        }
        q.desc(n - 1, q.status_at(0), 1, DESC_NEXT | DESC_WRITE, 0);
        q.publish(0);
    }),
    ("next-beyond-queue", |q, _| {
        evil_write(q, PROTECTED + 1, 512);
        let n = q.size;
        q.desc(2, q.status_at(0), 1, DESC_NEXT | DESC_WRITE, n + 3);
        q.publish(0);
    }),
    // Indirect tables.
    ("indirect-loop", |q, e| {
        if !e.indirect {
            return;
        }
        let t = q.table();
        let h = q.header(0, T_OUT, PROTECTED + 2);
        fill(q.src(0), 512, EVIL);
        desc_at(t, 0, h, 16, DESC_NEXT, 1);
        desc_at(t, 1, q.src(0), 512, DESC_NEXT, 2);
        desc_at(t, 2, q.status_at(0), 1, DESC_NEXT | DESC_WRITE, 0);
        q.desc(0, t, 48, DESC_INDIRECT, 0);
        q.publish(0);
    }),
    ("indirect-nested", |q, e| {
        if !e.indirect {
            return;
        }
        let t = q.table();
        let h = q.header(0, T_OUT, PROTECTED + 3);
        fill(q.src(0), 512, EVIL);
        desc_at(t, 0, h, 16, DESC_NEXT, 1);
        desc_at(t, 1, q.src(0), 512, DESC_NEXT, 2);
        desc_at(t, 2, q.status_at(0), 1, DESC_NEXT | DESC_WRITE, 3);
        desc_at(t, 3, t + 0x1000, 48, DESC_INDIRECT, 0);
        q.desc(0, t, 64, DESC_INDIRECT, 0);
        q.publish(0);
    }),
    ("indirect-next-beyond-table", |q, e| {
        if !e.indirect {
            return;
        }
        let t = q.table();
        let h = q.header(0, T_OUT, PROTECTED + 4);
        fill(q.src(0), 512, EVIL);
        desc_at(t, 0, h, 16, DESC_NEXT, 1);
        desc_at(t, 1, q.src(0), 512, DESC_NEXT, 2);
        desc_at(t, 2, q.status_at(0), 1, DESC_NEXT | DESC_WRITE, 3);
        q.desc(0, t, 48, DESC_INDIRECT, 0);
        q.publish(0);
    }),
    ("indirect-too-many-descriptors", |q, e| {
        if !e.indirect {
            return;
        }
        // 2048 entries in a well-formed chain: more than any queue holds.
        let t = q.table();
        let n = 2048u16;
        let h = q.header(0, T_IN, PROTECTED);
        desc_at(t, 0, h, 16, DESC_NEXT, 1);
        for i in 1..n - 1 {
            desc_at(t, i, q.data(0), 512, DESC_NEXT | DESC_WRITE, i + 1);
        }
        desc_at(t, n - 1, q.status_at(0), 1, DESC_WRITE, 0);
        q.desc(0, t, 16 * u32::from(n), DESC_INDIRECT, 0);
        q.publish(0);
    }),
    ("indirect-bad-length", |q, e| {
        if !e.indirect {
            return;
        }
        let t = q.table();
        let h = q.header(0, T_IN, PROTECTED);
        desc_at(t, 0, h, 16, DESC_NEXT, 1);
        desc_at(t, 1, q.data(0), 512, DESC_NEXT | DESC_WRITE, 2);
        desc_at(t, 2, q.status_at(0), 1, DESC_WRITE, 0);
        q.desc(0, t, 40, DESC_INDIRECT, 0);
        q.publish(0);
    }),
    ("indirect-huge", |q, e| {
        if !e.indirect {
            return;
        }
        // 65536 entries: more than a table index can name.
        q.desc(0, q.table(), 0x10_0000, DESC_INDIRECT, 0);
        q.publish(0);
    }),
    ("indirect-outside-ram", |q, e| {
        if !e.indirect {
            return;
        }
        q.desc(0, 0x100_0000_0000, 48, DESC_INDIRECT, 0);
        q.publish(0);
    }),
    // Addresses and lengths outside RAM: the request fails with a status.
    ("data-across-ram-end", |q, e| {
        let h = q.header(0, T_IN, PROTECTED);
        q.desc(0, h, 16, DESC_NEXT, 1);
        q.desc(1, e.ram_top - 256, 512, DESC_NEXT | DESC_WRITE, 2);
        q.desc(2, q.status_at(0), 1, DESC_WRITE, 0);
        q.allow(q.status_at(0), 1);
        q.publish(0);
    }),
    ("data-in-mmio-hole", |q, _| {
        // The device's own register window.
        let h = q.header(0, T_IN, PROTECTED);
        q.desc(0, h, 16, DESC_NEXT, 1);
        q.desc(1, q.mmio.base, 512, DESC_NEXT | DESC_WRITE, 2);
        q.desc(2, q.status_at(0), 1, DESC_WRITE, 0);
        q.allow(q.status_at(0), 1);
        q.publish(0);
    }),
    ("data-wraps-2^64", |q, _| {
        evil_write(q, PROTECTED + 5, 512);
        q.desc(1, 0xffff_ffff_ffff_ff00, 512, DESC_NEXT, 2);
        q.desc(2, q.status_at(0), 1, DESC_WRITE, 0);
        q.allow(q.status_at(0), 1);
        q.publish(0);
    }),
    ("data-length-past-ram", |q, _| {
        let h = q.header(0, T_IN, PROTECTED);
        q.desc(0, h, 16, DESC_NEXT, 1);
        q.desc(1, q.data(0), 0x8000_0000, DESC_NEXT | DESC_WRITE, 2);
        q.desc(2, q.status_at(0), 1, DESC_WRITE, 0);
        q.allow(q.status_at(0), 1);
        q.publish(0);
    }),
    ("header-outside-ram", |q, _| {
        q.desc(0, 0x10_0000_0000, 16, DESC_NEXT, 1);
        q.desc(1, q.data(0), 512, DESC_NEXT | DESC_WRITE, 2);
        q.desc(2, q.status_at(0), 1, DESC_WRITE, 0);
        q.publish(0);
    }),
    ("status-outside-ram", |q, _| {
        evil_write(q, PROTECTED + 6, 512);
        q.desc(2, 0xffff_0000_0000, 1, DESC_WRITE, 0);
        q.publish(0);
    }),
    // Wrong directions and empty descriptors.
    ("header-write-only", |q, _| {
        let h = q.header(0, T_OUT, PROTECTED + 7);
        fill(q.src(0), 512, EVIL);
        q.desc(0, h, 16, DESC_NEXT | DESC_WRITE, 1);
        q.desc(1, q.src(0), 512, DESC_NEXT, 2);
        q.desc(2, q.status_at(0), 1, DESC_WRITE, 0);
        q.publish(0);
    }),
    ("status-read-only", |q, _| {
        evil_write(q, PROTECTED + 8, 512);
        q.desc(2, q.status_at(0), 1, 0, 0);
        q.publish(0);
    }),
    ("status-zero-length", |q, _| {
        let h = q.header(0, T_IN, PROTECTED);
        q.desc(0, h, 16, DESC_NEXT, 1);
        q.desc(1, q.data(0), 513, DESC_NEXT | DESC_WRITE, 2);
        q.desc(2, q.status_at(0), 0, DESC_WRITE, 0);
        q.publish(0);
    }),
    ("only-zero-length", |q, _| {
        q.desc(0, q.data(0), 0, DESC_WRITE, 0);
        q.publish(0);
    }),
    ("write-from-writable-data", |q, _| {
        evil_write(q, PROTECTED + 9, 512);
        fill(q.data(0x8000), 512, DATA_FILL);
        q.desc(1, q.data(0x8000), 512, DESC_NEXT | DESC_WRITE, 2);
        q.desc(2, q.status_at(0), 1, DESC_WRITE, 0);
        q.allow(q.status_at(0), 1);
        q.publish(0);
    }),
    ("write-past-capacity", |q, e| {
        evil_write(q, e.capacity - 1, 1024);
        q.desc(2, q.status_at(0), 1, DESC_WRITE, 0);
        q.allow(q.status_at(0), 1);
        q.publish(0);
    }),
    ("unknown-type", |q, _| {
        let h = q.header(0, 0xdead, PROTECTED);
        q.desc(0, h, 16, DESC_NEXT, 1);
        q.desc(1, q.data(0), 512, DESC_NEXT | DESC_WRITE, 2);
        q.desc(2, q.status_at(0), 1, DESC_WRITE, 0);
        q.allow(q.status_at(0), 1);
        q.publish(0);
    }),
    ("get-id-into-readable-data", |q, _| {
        let h = q.header(0, T_GET_ID, 0);
        q.desc(0, h, 16, DESC_NEXT, 1);
        q.desc(1, q.src(0), 20, DESC_NEXT, 2);
        q.desc(2, q.status_at(0), 1, DESC_WRITE, 0);
        q.allow(q.status_at(0), 1);
        q.publish(0);
    }),
    // Discard and write zeroes: every range is checked before any runs.
    ("write-zeroes-then-beyond-disk", |q, e| {
        if e.discard {
            ranges(
                q,
                T_WRITE_ZEROES,
                &[(PROTECTED + 100, 8, 0), (e.capacity - 4, 8, 0)],
            );
        }
    }),
    ("discard-then-beyond-disk", |q, e| {
        if e.discard {
            ranges(
                q,
                T_DISCARD,
                &[(PROTECTED + 100, 8, 0), (e.capacity - 4, 8, 0)],
            );
        }
    }),
    ("write-zeroes-offset-overflow", |q, e| {
        if e.discard {
            ranges(q, T_WRITE_ZEROES, &[(u64::MAX >> 9, 8, 0)]);
        }
    }),
    ("write-zeroes-too-many-sectors", |q, e| {
        if e.discard {
            ranges(q, T_WRITE_ZEROES, &[(PROTECTED, 0x40_0000, 0)]);
        }
    }),
    ("write-zeroes-unknown-flags", |q, e| {
        if e.discard {
            ranges(q, T_WRITE_ZEROES, &[(PROTECTED + 100, 8, 2)]);
        }
    }),
    ("discard-unmap-flag", |q, e| {
        if e.discard {
            ranges(q, T_DISCARD, &[(PROTECTED + 100, 8, 1)]);
        }
    }),
    ("discard-too-many-segments", |q, e| {
        if e.discard {
            ranges(q, T_DISCARD, &[(PROTECTED + 100, 1, 0); 33]);
        }
    }),
    // The available ring.
    ("avail-idx-jump", |q, _| {
        read_chain(q, 0, 0, PROTECTED, q.data(0));
        q.publish(0);
        let jump = q.avail_idx.wrapping_add(q.size + 7);
        q.set_avail_idx(jump);
    }),
    ("avail-head-beyond-queue", |q, _| {
        read_chain(q, 0, 0, PROTECTED, q.data(0));
        let n = q.size;
        q.publish(n + 5);
    }),
];

/// A status byte as printed.
struct St(u8);

impl core::fmt::Display for St {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            0 => f.write_str("ok"),
            1 => f.write_str("ioerr"),
            2 => f.write_str("unsupp"),
            STATUS_FILL => f.write_str("unset"),
            x => write!(f, "{x:#04x}"),
        }
    }
}

/// Runs case `build`, prints its line; returns whether the device kept to
/// its buffers (ro and canaries intact).
fn run_case(q: &mut Raw, name: &str, build: Build, env: &mut CaseEnv, vector: Option<u8>) -> bool {
    if q.bring_up().is_err() {
        out!("PROBE virtq-chaos case={} outcome=bring-up-failed", name);
        return false;
    }
    let top_canary = env.ram_top - 256;
    fill(top_canary, 256, DATA_FILL);
    // Before the chains are available: the device may serve them without a
    // notify (its I/O thread looks at the ring once when it starts).
    let irqs = vector.map(arch::irq_count);
    q.staged = true;
    build(q, env);
    if q.avail_idx == 0 {
        // Not applicable here (INDIRECT_DESC or DISCARD not offered).
        out!("PROBE virtq-chaos case={} outcome=skipped", name);
        return true;
    }
    let ro = q.ro_hash();
    q.commit();
    q.notify();
    // Generous: the host may be loaded; only a case the device ignores waits
    // this long.
    let deadline = now_ns() + 10_000_000_000;
    while q.used_idx() == 0 && !q.needs_reset() && now_ns() < deadline {
        arch::pause();
    }
    // Let a late reaction show.
    spin_ms(10);
    let used = q.used_idx();
    let needs_reset = q.needs_reset();
    let isr = q.mmio.read(reg::INTERRUPT_STATUS);
    // The interrupt may take a while on a loaded host (KVM injects an irqfd's
    // from a worker thread).
    if let (Some(v), Some(before), true) = (vector, irqs, isr != 0) {
        let end = now_ns() + 5_000_000_000;
        while arch::irq_count(v) == before && now_ns() < end {
            arch::pause();
        }
    }
    let irq = match (vector, irqs) {
        (Some(v), Some(before)) => {
            if arch::irq_count(v) != before {
                "yes"
            } else {
                "no"
            }
        }
        _ => "n/a",
    };
    let outcome = match (used != 0, needs_reset) {
        (false, true) => "needs-reset",
        (true, false) => "completed",
        (true, true) => "completed-then-needs-reset",
        (false, false) => "ignored",
    };
    let st = St(r8(q.status_at(0)));
    let used_len = if used != 0 { r32(q.a(USED + 8)) } else { 0 };
    let ro_ok = q.ro_hash() == ro;
    let canary_ok = q.canaries_intact() && (0..256).all(|i| r8(top_canary + i) == DATA_FILL);
    out!(
        "PROBE virtq-chaos case={} outcome={} status={} used_len={} isr={:#x} irq={} ro={} canary={}",
        name,
        outcome,
        st,
        used_len,
        isr,
        irq,
        if ro_ok { "ok" } else { "bad" },
        if canary_ok { "ok" } else { "bad" }
    );
    q.mmio.write(reg::STATUS, 0);
    ro_ok && canary_ok
}

/// The race cases: scribbling CPUs against 32 reads kept in flight.
fn run_races(q: &mut Raw, ctx: &Ctx, rounds: u64) -> (u32, u32) {
    let cpus = ctx.p.cpus() as usize;
    if cpus < 2 {
        return (0, 0);
    }
    let (ids, workers_n) = smp::start_workers(
        ctx,
        (cpus - 1).min(arch::MAX_APS),
        true,
        "virtq-chaos-worker",
    );
    if workers_n == 0 {
        out!("PROBE virtq-chaos case=race status=no-workers");
        return (0, 1);
    }
    let mut bad = 0;
    let mut races = 0;
    let names = ["race-used", "race-avail", "race-all", "race-registers"];
    for (r, name) in names.iter().enumerate() {
        if q.bring_up().is_err() {
            out!("PROBE virtq-chaos case={} outcome=bring-up-failed", name);
            bad += 1;
            continue;
        }
        const K: u16 = 32;
        for k in 0..K {
            read_chain(
                q,
                3 * k,
                u64::from(k),
                PROTECTED + u64::from(k) * 8,
                q.data(u64::from(k) * 4096),
            );
        }
        for k in 0..K {
            q.allow(q.data(u64::from(k) * 4096), 512);
        }
        q.allow(q.a(STATUS), u64::from(K));
        let ro_before = hash(q.a(DESC), 0x1000) ^ hash(q.a(HDR), 0x1000).rotate_left(1);
        let size = u64::from(q.size);
        let used_ring = (q.a(USED), 6 + 8 * size);
        let regions = match r {
            0 => [used_ring, (0, 0)],
            1 => [(q.a(AVAIL + 4), 2 * size), used_ring],
            2 => [(q.a(AVAIL), 6 + 2 * size), used_ring],
            // The device's registers (not its config space), from other vCPUs at once.
            _ => [(q.mmio.base, reg::CONFIG), (0, 0)],
        };
        // Requests in flight before the first store.
        for k in 0..K {
            w8(q.status_at(u64::from(k)), STATUS_FILL);
            q.publish(3 * k);
        }
        q.notify();
        let until = now_ns() + rounds.max(1) * 10_000_000;
        for (k, &id) in ids.iter().enumerate().take(workers_n) {
            workers::post(
                k + 1,
                id,
                workers::Job::Scribble(workers::Scribble {
                    regions,
                    until_ns: until,
                    seed: ctx.params.seed ^ ((k as u64 + 1) << 32) ^ r as u64,
                }),
            );
        }
        // A chain is made available again once its status byte was written:
        // the used ring is scribbled on, the status bytes are not. So at most
        // 2 x K chains are ever outstanding, well within the queue (more would
        // be the driver's fault, which the device may answer with a reset).
        let mut submitted = u64::from(K);
        let mut pending = [true; K as usize];
        while now_ns() < until {
            let mut published = false;
            for k in 0..K {
                let st = q.status_at(u64::from(k));
                if !pending[usize::from(k)] || r8(st) != STATUS_FILL {
                    w8(st, STATUS_FILL);
                    q.publish(3 * k);
                    pending[usize::from(k)] = true;
                    published = true;
                    submitted += 1;
                }
            }
            if published {
                q.notify();
            }
            let wait_end = now_ns() + 200_000;
            while now_ns() < wait_end
                && (0..K).all(|k| r8(q.status_at(u64::from(k))) == STATUS_FILL)
            {
                arch::pause();
            }
        }
        let mut stores = 0;
        let finish_by = now_ns() + 5_000_000_000;
        for k in 1..=workers_n {
            loop {
                if let Some(res) = workers::finished(k) {
                    stores += res.ios;
                    break;
                }
                if now_ns() > finish_by {
                    out!(
                        "PROBE virtq-chaos case={} worker={} status=timeout",
                        name,
                        k
                    );
                    bad += 1;
                    break;
                }
                arch::pause();
            }
        }
        spin_ms(10);
        let device_status = q.mmio.read(reg::STATUS);
        let needs_reset = device_status & status::NEEDS_RESET != 0;
        let isr = q.mmio.read(reg::INTERRUPT_STATUS);
        let ro_ok = hash(q.a(DESC), 0x1000) ^ hash(q.a(HDR), 0x1000).rotate_left(1) == ro_before;
        // The data buffers' sectors beyond the 512 bytes read and everything
        // else of the data area keep their canary.
        let canary_ok = q.canaries_intact();
        out!(
            "PROBE virtq-chaos case={} cpus={} stores={} submitted={} outcome={} device_status={:#x} isr={:#x} ro={} canary={}",
            name,
            workers_n + 1,
            stores,
            submitted,
            if needs_reset { "needs-reset" } else { "survived" },
            device_status,
            isr,
            if ro_ok { "ok" } else { "bad" },
            if canary_ok { "ok" } else { "bad" }
        );
        q.mmio.write(reg::STATUS, 0);
        races += 1;
        if !(ro_ok && canary_ok) {
            bad += 1;
        }
    }
    (races, bad)
}

/// Writes and reads back 8 sectors through the probe's driver.
fn round_trip(ctx: &mut Ctx) -> bool {
    let p = ctx.params;
    let Some(mut buf) = ctx.take_scratch(4096) else {
        return false;
    };
    pattern::fill(&mut buf.bytes()[..4096], ROUND_TRIP_LBA, p.seed);
    let addr = buf.addr;
    let (st, matched) = match ctx.disk(p.dev) {
        Ok(d) => {
            let w = d.run(ReqType::Out, ROUND_TRIP_LBA, addr, 4096, 10_000);
            if w != Outcome::Ok {
                (w, false)
            } else {
                buf.bytes()[..4096].fill(0);
                let r = d.run(ReqType::In, ROUND_TRIP_LBA, addr, 4096, 10_000);
                let m =
                    pattern::first_mismatch(&buf.bytes()[..4096], ROUND_TRIP_LBA, p.seed).is_none();
                (r, m)
            }
        }
        Err(_) => (Outcome::Other(0xfd), false),
    };
    ctx.put_scratch(buf);
    out!(
        "PROBE virtq-chaos round-trip status={} match={}",
        st.name(),
        if matched { "yes" } else { "no" }
    );
    st == Outcome::Ok && matched
}

/// Runs every case, the races and the round trip; returns 0 if the device
/// kept to its buffers throughout and works afterwards.
pub fn run(ctx: &mut Ctx) -> u32 {
    let p = ctx.params;
    let Some(slot) = ctx.disk_slot(p.dev) else {
        return disk_error("virtq-chaos", p.dev, DiskError::NoSuchDisk);
    };
    let vs = ctx.p.virtio()[slot];
    ctx.drop_disk(p.dev);
    let mmio = Mmio { base: vs.base };
    // Edge-triggered lines only: a level one would need acknowledging.
    let vector = vs.irq.filter(|i| i.edge).and_then(|i| ctx.apic.route(i));
    let Some(arena): Option<DmaBuf> = ctx.alloc.alloc(ARENA) else {
        out!("PROBE virtq-chaos dev={} status=no-memory", p.dev);
        return 1;
    };
    let mut q = Raw {
        mmio,
        base: arena.addr,
        size: QSIZE,
        avail_idx: 0,
        staged: false,
        allowed: [(0, 0); MAX_ALLOWED],
        allowed_count: 0,
    };
    let features = match q.bring_up() {
        Ok(f) => f,
        Err(why) => {
            out!(
                "PROBE virtq-chaos dev={} status=init-failed reason={}",
                p.dev,
                why
            );
            return 1;
        }
    };
    let capacity = mmio.config64(0);
    let mut env = CaseEnv {
        indirect: features & F_INDIRECT_DESC != 0,
        discard: features & (F_DISCARD | F_WRITE_ZEROES) == F_DISCARD | F_WRITE_ZEROES,
        capacity,
        ram_top: ram_top(ctx),
        seed: p.seed,
    };
    q.mmio.write(reg::STATUS, 0);
    let mut bad = 0u32;
    let mut cases = 0u32;
    for (name, build) in CASES {
        cases += 1;
        if !run_case(&mut q, name, build, &mut env, vector) {
            bad += 1;
        }
    }
    let (races, race_bad) = run_races(&mut q, ctx, p.count);
    bad += race_bad;
    // The probe's own driver, from scratch.
    q.mmio.write(reg::STATUS, 0);
    if !round_trip(ctx) {
        bad += 1;
    }
    out!(
        "PROBE virtq-chaos dev={} cases={} races={} bad={} status={}",
        p.dev,
        cases,
        races,
        bad,
        if bad == 0 { "ok" } else { "bad" }
    );
    u32::from(bad != 0)
}
