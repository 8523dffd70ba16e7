//! `probe.test=mmio-chaos`: `probe.count` hostile accesses (seeded by
//! `probe.seed`) to the registers of virtio-blk device `probe.dev`, then a
//! reset and a clean bring-up to check that the device survived.
//!
//! Hostile means: random widths (1/2/4/8 bytes) and unaligned offsets, writes
//! to read-only registers, reads of write-only ones, random status values
//! (including going backwards), random feature words, queue sizes of 0 or
//! huge, notifies before the queue is ready or for queues that do not
//! exist, config-space writes and accesses up to the end of the window.
//! Queue addresses are random but always above 1 TiB (the high word is
//! written first), so a device that uses them cannot scribble over the
//! probe's own RAM.

use super::{disk_error, Ctx};
use crate::guest::blk::{Outcome, ReqType};
use crate::guest::virtio::{reg, status, Mmio};
use crate::out;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const REGS: [u64; 24] = [
    reg::MAGIC,
    reg::VERSION,
    reg::DEVICE_ID,
    reg::VENDOR_ID,
    reg::DEVICE_FEATURES,
    reg::DEVICE_FEATURES_SEL,
    reg::DRIVER_FEATURES,
    reg::DRIVER_FEATURES_SEL,
    reg::QUEUE_SEL,
    reg::QUEUE_NUM_MAX,
    reg::QUEUE_NUM,
    reg::QUEUE_READY,
    reg::QUEUE_NOTIFY,
    reg::INTERRUPT_STATUS,
    reg::INTERRUPT_ACK,
    reg::STATUS,
    reg::QUEUE_DESC_LOW,
    reg::QUEUE_DESC_HIGH,
    reg::QUEUE_DRIVER_LOW,
    reg::QUEUE_DRIVER_HIGH,
    reg::QUEUE_DEVICE_LOW,
    reg::QUEUE_DEVICE_HIGH,
    reg::CONFIG_GENERATION,
    reg::CONFIG,
];

const HIGH_REGS: [u64; 3] = [
    reg::QUEUE_DESC_HIGH,
    reg::QUEUE_DRIVER_HIGH,
    reg::QUEUE_DEVICE_HIGH,
];

fn access(base: u64, off: u64, width: u64, write: Option<u64>) {
    let a = base + off;
    // SAFETY: `a` lies inside the device's MMIO window (checked by the
    // caller), which is mapped uncached; MMIO has no effect on guest memory
    // except through DMA, which the queue-address rule keeps out of RAM.
    unsafe {
        match (width, write) {
            (1, Some(v)) => core::ptr::write_volatile(a as *mut u8, v as u8),
            (2, Some(v)) => core::ptr::write_volatile(a as *mut u16, v as u16),
            (4, Some(v)) => core::ptr::write_volatile(a as *mut u32, v as u32),
            (_, Some(v)) => core::ptr::write_volatile(a as *mut u64, v),
            (1, None) => drop(core::ptr::read_volatile(a as *const u8)),
            (2, None) => drop(core::ptr::read_volatile(a as *const u16)),
            (4, None) => drop(core::ptr::read_volatile(a as *const u32)),
            (_, None) => drop(core::ptr::read_volatile(a as *const u64)),
        }
    }
}

/// A value that is never a RAM address when used as a queue address high word.
fn bad_high(rng: &mut Rng) -> u64 {
    0x100 | rng.next()
}

/// Runs the chaos; returns 0 if the device works afterwards.
pub fn run(ctx: &mut Ctx) -> u32 {
    let p = ctx.params;
    let Some(slot) = ctx.disk_slot(p.dev) else {
        return disk_error("mmio-chaos", p.dev, super::DiskError::NoSuchDisk);
    };
    let vs = ctx.p.virtio()[slot];
    if let Some(i) = vs.irq {
        ctx.apic.mask(i.gsi);
    }
    ctx.drop_disk(p.dev);
    let mmio = Mmio { base: vs.base };
    let window = vs.len.clamp(0x100, 0x1000);
    let mut rng = Rng(p.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut accesses = 0u64;
    let mut put = |off: u64, width: u64, v: Option<u64>| {
        if off + width <= window {
            access(vs.base, off, width, v);
            accesses += 1;
        }
    };
    for _ in 0..p.count {
        match rng.below(10) {
            // Any register, any width, read or write, possibly unaligned.
            0..=3 => {
                let off = REGS[rng.below(REGS.len() as u64) as usize]
                    + if rng.below(4) == 0 { rng.below(4) } else { 0 };
                let width = 1 << rng.below(4);
                let v = (rng.below(2) == 0).then(|| rng.next());
                let is_addr = (reg::QUEUE_DESC_LOW..=reg::QUEUE_DEVICE_HIGH).contains(&(off & !3))
                    && off & !3 != reg::QUEUE_NOTIFY;
                if is_addr && v.is_some() {
                    for h in HIGH_REGS {
                        let b = bad_high(&mut rng);
                        put(h, 4, Some(b));
                    }
                    if off & 4 == 0 && width <= 4 {
                        put(off, width, v);
                    }
                } else {
                    put(off, width, v);
                }
            }
            // Status: random, backwards, reset.
            4 => {
                let v = [0, 1, 3, 0xb, 0xf, 0x80, 0x40, rng.next() & 0xff][rng.below(8) as usize];
                put(reg::STATUS, 4, Some(v));
            }
            // Queue made ready with bad addresses and odd sizes.
            5 => {
                let sel = rng.below(4);
                put(reg::QUEUE_SEL, 4, Some(sel));
                let num = [0, 1, 3, 256, 32768, rng.next() & 0xffff][rng.below(6) as usize];
                put(reg::QUEUE_NUM, 4, Some(num));
                for h in HIGH_REGS {
                    let b = bad_high(&mut rng);
                    put(h, 4, Some(b));
                }
                for lo in [
                    reg::QUEUE_DESC_LOW,
                    reg::QUEUE_DRIVER_LOW,
                    reg::QUEUE_DEVICE_LOW,
                ] {
                    let v = rng.next();
                    put(lo, 4, Some(v));
                }
                put(reg::QUEUE_READY, 4, Some(rng.below(3)));
            }
            // Notify, ready or not, for queues that may not exist.
            6 => {
                let q = [0, 1, 7, 0xffff, rng.next() & 0xffff_ffff][rng.below(5) as usize];
                put(reg::QUEUE_NOTIFY, 4, Some(q));
            }
            // Feature words.
            7 => {
                let sel = rng.below(4);
                put(reg::DRIVER_FEATURES_SEL, 4, Some(sel));
                let v = rng.next();
                put(reg::DRIVER_FEATURES, 4, Some(v));
                put(reg::DEVICE_FEATURES_SEL, 4, Some(rng.next()));
                put(reg::DEVICE_FEATURES, 4, None);
            }
            // Config space, up to the end of the window.
            _ => {
                let off = reg::CONFIG + rng.below(window - reg::CONFIG);
                let width = 1 << rng.below(3);
                let v = (rng.below(2) == 0).then(|| rng.next());
                put(off, width, v);
            }
        }
    }
    // What the device thinks of all that, then a reset and a clean bring-up.
    let status_after = mmio.read(reg::STATUS);
    mmio.write(reg::STATUS, 0);
    let alive = mmio.probe().is_ok_and(|id| id == 2);
    let (status, rc) = if !alive {
        ("dead", 1)
    } else {
        let Some(buf) = ctx.take_scratch(4096) else {
            return 1;
        };
        let addr = buf.addr;
        let r = match ctx.disk(p.dev) {
            Ok(d) => match d.run(ReqType::In, 0, addr, 4096, 10_000) {
                Outcome::Ok => ("ok", 0),
                Outcome::Timeout => ("read-timeout", 1),
                _ => ("read-error", 1),
            },
            Err(_) => ("reinit-failed", 1),
        };
        ctx.put_scratch(buf);
        r
    };
    out!(
        "PROBE mmio-chaos dev={} seed={} count={} accesses={} device_status={:#x} needs_reset={} survived={} status={}",
        p.dev,
        p.seed,
        p.count,
        accesses,
        status_after,
        if status_after & status::NEEDS_RESET != 0 { "yes" } else { "no" },
        if rc == 0 { "yes" } else { "no" },
        status
    );
    rc
}
