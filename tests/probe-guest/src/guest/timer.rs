//! Wall-clock time from the TSC. The TSC frequency comes from, in order:
//! the hypervisor timing leaf CPUID 0x40000010 (EAX = TSC kHz), CPUID 0x15
//! (crystal clock x ratio), a 20 ms PIT channel-2 measurement (ports 0x42,
//! 0x43, 0x61), CPUID 0x16 (base MHz), else an assumed 1 GHz.

use super::arch::{cpuid, inb, outb, rdtsc};
use core::sync::atomic::{AtomicU64, Ordering};

static TSC_KHZ: AtomicU64 = AtomicU64::new(1_000_000);
static SOURCE: AtomicU64 = AtomicU64::new(0);

const SOURCES: [&str; 5] = ["assumed", "cpuid-40000010", "cpuid-15", "pit", "cpuid-16"];

fn from_hypervisor_leaf() -> Option<u64> {
    let (_, _, ecx, _) = cpuid(1);
    if ecx & (1 << 31) == 0 {
        return None;
    }
    let (max, ..) = cpuid(0x4000_0000);
    if max < 0x4000_0010 {
        return None;
    }
    let (khz, ..) = cpuid(0x4000_0010);
    (khz != 0).then_some(u64::from(khz))
}

fn from_leaf_15() -> Option<u64> {
    if cpuid(0).0 < 0x15 {
        return None;
    }
    let (den, num, hz, _) = cpuid(0x15);
    (den != 0 && num != 0 && hz != 0).then(|| u64::from(hz) * u64::from(num) / u64::from(den) / 1000)
}

fn from_leaf_16() -> Option<u64> {
    if cpuid(0).0 < 0x16 {
        return None;
    }
    let (mhz, ..) = cpuid(0x16);
    (mhz != 0).then(|| u64::from(mhz & 0xffff) * 1000)
}

/// Counts TSC ticks while PIT channel 2 counts down 20 ms in mode 0.
fn from_pit() -> Option<u64> {
    const PIT_HZ: u64 = 1_193_182;
    const MS: u64 = 20;
    let count = PIT_HZ * MS / 1000;
    let gate = inb(0x61);
    if gate == 0xff {
        return None;
    }
    outb(0x61, (gate & !0x02) | 0x01);
    outb(0x43, 0xb0);
    outb(0x42, count as u8);
    outb(0x42, (count >> 8) as u8);
    if inb(0x61) & 0x20 != 0 {
        outb(0x61, gate);
        return None;
    }
    let t0 = rdtsc();
    let mut t1 = t0;
    let mut done = false;
    // Give up after ~5e10 cycles (far beyond 20 ms at any real frequency).
    while t1 - t0 < 50_000_000_000 {
        t1 = rdtsc();
        if inb(0x61) & 0x20 != 0 {
            done = true;
            break;
        }
    }
    outb(0x61, gate);
    let khz = (t1 - t0) / MS;
    (done && khz > 100_000).then_some(khz)
}

/// Determines the TSC frequency (see the module doc).
pub fn calibrate() {
    let found = [
        (1, from_hypervisor_leaf as fn() -> Option<u64>),
        (2, from_leaf_15),
        (3, from_pit),
        (4, from_leaf_16),
    ]
    .iter()
    .find_map(|&(src, f)| f().map(|k| (src, k)));
    if let Some((src, khz)) = found {
        TSC_KHZ.store(khz, Ordering::Relaxed);
        SOURCE.store(src, Ordering::Relaxed);
    }
}

/// TSC frequency in kHz.
pub fn tsc_khz() -> u64 {
    TSC_KHZ.load(Ordering::Relaxed)
}

/// Where the frequency came from.
pub fn source() -> &'static str {
    SOURCES[SOURCE.load(Ordering::Relaxed) as usize]
}

/// Nanoseconds since an arbitrary origin.
pub fn now_ns() -> u64 {
    (u128::from(rdtsc()) * 1_000_000 / u128::from(tsc_khz())) as u64
}
