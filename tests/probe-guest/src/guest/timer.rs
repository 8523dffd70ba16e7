//! Wall-clock time from the TSC. The TSC frequency comes from, in order:
//! the hypervisor timing leaf CPUID 0x40000010 (EAX = TSC kHz), CPUID 0x15
//! (crystal clock x ratio), a ~50 ms measurement against PIT channel 0
//! (ports 0x40, 0x43), CPUID 0x16 (base MHz), else an assumed 1 GHz.

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
    (den != 0 && num != 0 && hz != 0)
        .then(|| u64::from(hz) * u64::from(num) / u64::from(den) / 1000)
}

fn from_leaf_16() -> Option<u64> {
    if cpuid(0).0 < 0x16 {
        return None;
    }
    let (mhz, ..) = cpuid(0x16);
    (mhz != 0).then(|| u64::from(mhz & 0xffff) * 1000)
}

/// Reads PIT channel 0's current count (latch command, then low and high byte).
fn pit_count() -> u16 {
    outb(0x43, 0x00);
    let lo = inb(0x40);
    let hi = inb(0x40);
    u16::from_le_bytes([lo, hi])
}

/// Counts TSC ticks over ~50 ms of PIT channel 0 (mode 2, period 65536),
/// sampling its count through the latch command. Needs only ports 0x40 and
/// 0x43 (no speaker port); the PIT's IRQ 0 stays masked.
fn from_pit() -> Option<u64> {
    const PIT_HZ: u64 = 1_193_182;
    const TICKS: u64 = PIT_HZ / 20;
    outb(0x43, 0x34);
    outb(0x40, 0x00);
    outb(0x40, 0x00);
    let (mut prev, mut ticks) = (pit_count(), 0u64);
    let t0 = rdtsc();
    let mut t1 = t0;
    let mut moved = false;
    // Give up after ~5e9 cycles or if the counter never moves.
    while ticks < TICKS && t1 - t0 < 5_000_000_000 {
        let cur = pit_count();
        t1 = rdtsc();
        let delta = u64::from(prev.wrapping_sub(cur));
        moved |= delta != 0;
        ticks += delta;
        prev = cur;
    }
    if !moved || ticks < TICKS {
        return None;
    }
    let khz = u128::from(t1 - t0) * u128::from(PIT_HZ) / u128::from(ticks) / 1000;
    (khz > 100_000).then_some(khz as u64)
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
