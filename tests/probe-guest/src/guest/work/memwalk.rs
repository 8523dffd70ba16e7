//! `mem-walk`: fills `probe.mib` MiB with checksummed pages
//! (`probe_guest::memwalk`), then rewrites them one at a time, each with its
//! generation bumped, in a scattered order (at the CPU's speed, or
//! `probe.rate` MiB/s), until the power button; then it verifies every page
//! against the generation it last wrote there. A migration that loses a dirty
//! page, copies one to the wrong place or tears one shows up as `bad=`.
//!
//! It also watches the clock between two looks at it (one page rewrite apart,
//! or one LAPIC tick, ~16 ms, while a rate limit makes it wait): the longest
//! gap is `max_stall_ms` (a pause, a migration's downtime where the VMM lets
//! the guest's TSC run on), every gap of 100 ms or more is a `stall` line, and
//! the clock going backwards is counted (`backwards=`) and fails the test.

use super::Ctx;
use crate::guest::arch;
use crate::guest::timer::now_ns;
use crate::out;
use probe_guest::memwalk::{check, fill, Bad, Walk, PAGE_BYTES, WORDS};

/// Gaps at least this long are printed as `stall` lines and left out of the rate's clock.
const STALL_NS: u64 = 100_000_000;
/// Bad pages described one per line; the rest are only counted.
const MAX_BAD_LINES: u64 = 8;

/// `t=` seconds with milliseconds.
struct Secs(u64);

impl core::fmt::Display for Secs {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let ms = self.0 / 1_000_000;
        write!(f, "{}.{:03}", ms / 1000, ms % 1000)
    }
}

/// The rate in `start`: `max` or MiB/s.
struct Rate(Option<u64>);

impl core::fmt::Display for Rate {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            None => f.write_str("max"),
            Some(r) => write!(f, "{}", r),
        }
    }
}

/// The clock as the walker sees it between two looks.
struct Clock {
    last: u64,
    /// Time since the start, without backward steps.
    elapsed: u64,
    /// `elapsed` without the stalls: the clock a rate limit runs on.
    busy: u64,
    max_stall: u64,
    backwards: u64,
}

impl Clock {
    fn new() -> Self {
        Self {
            last: now_ns(),
            elapsed: 0,
            busy: 0,
            max_stall: 0,
            backwards: 0,
        }
    }

    /// Looks at the clock; returns the gap since the last look if it was a stall.
    fn tick(&mut self) -> Option<u64> {
        let now = now_ns();
        let last = core::mem::replace(&mut self.last, now);
        if now < last {
            self.backwards += 1;
            return None;
        }
        let gap = now - last;
        self.elapsed += gap;
        self.max_stall = self.max_stall.max(gap);
        if gap >= STALL_NS {
            return Some(gap);
        }
        self.busy += gap;
        None
    }

    /// Forgets the time since the last look (spent printing, not stalled).
    fn skip(&mut self) {
        let now = now_ns();
        if now >= self.last {
            let d = now - self.last;
            self.elapsed += d;
            self.busy += d;
        }
        self.last = now;
    }
}

/// `probe.test=mem-walk`.
pub fn run(ctx: &mut Ctx) -> u32 {
    let p = ctx.params;
    let pages = p.mib * (1 << 20) / PAGE_BYTES as u64;
    let ged = ctx.p.ged_irq.and_then(|i| ctx.apic.route(i));
    // Count from before any line is printed: the host may press the button as soon as it
    // reads one.
    let ged_base = ged.map(arch::irq_count);
    let avail = ctx.alloc.available();
    let table = ctx.alloc.alloc(pages as usize * 4);
    let buf = ctx.alloc.alloc_uninit(pages as usize * PAGE_BYTES);
    let (Some(table), Some(buf)) = (table, buf) else {
        out!(
            "PROBE mem-walk status=no-memory mib={} avail_mib={}",
            p.mib,
            avail >> 20
        );
        return 1;
    };
    // SAFETY: the allocator gave these ranges to mem-walk alone, for good; they are
    // 4 KiB aligned and inside the identity map, and each is viewed only through the
    // one slice made here.
    let (gens, mem) = unsafe {
        (
            core::slice::from_raw_parts_mut(table.addr as *mut u32, pages as usize),
            core::slice::from_raw_parts_mut(buf.addr as *mut [u64; WORDS], pages as usize),
        )
    };
    let t0 = now_ns();
    for (i, page) in mem.iter_mut().enumerate() {
        fill(page, i as u64, 0);
    }
    out!(
        "PROBE mem-walk start pages={} mib={} addr={:#x} fill_ms={} rate={} interval_ms={} ged_gsi={}",
        pages,
        p.mib,
        buf.addr,
        (now_ns() - t0) / 1_000_000,
        Rate(p.rate),
        p.interval_ms,
        GedGsi(ctx.p.ged_irq.filter(|_| ged.is_some()).map(|i| i.gsi))
    );
    // With a rate limit the walker waits for the LAPIC tick between its turns.
    let limited = p.rate.is_some();
    if limited {
        ctx.apic.start_tick();
    }
    let interval = p.interval_ms * 1_000_000;
    let mut walk = Walk::new(pages);
    let mut rewrites = 0u64;
    let mut clock = Clock::new();
    let mut next_report = interval;
    loop {
        let seen = arch::irq_total();
        if let Some(gap) = clock.tick() {
            out!(
                "PROBE mem-walk stall t={} ms={}",
                Secs(clock.elapsed),
                gap / 1_000_000
            );
            clock.skip();
        }
        if matches!((ged, ged_base), (Some(v), Some(b)) if arch::irq_count(v) != b) {
            break;
        }
        if clock.elapsed >= next_report {
            out!(
                "PROBE mem-walk progress t={} generations={} rewrites={} max_stall_ms={}",
                Secs(clock.elapsed),
                walk.sweeps,
                rewrites,
                clock.max_stall / 1_000_000
            );
            clock.skip();
            next_report = next_report.max(clock.elapsed - clock.elapsed % interval) + interval;
        }
        let allowed = match p.rate {
            None => u64::MAX,
            Some(r) => {
                (u128::from(r) * (1 << 20) / PAGE_BYTES as u128 * u128::from(clock.busy)
                    / 1_000_000_000) as u64
            }
        };
        if rewrites < allowed {
            let i = walk.next_page() as usize;
            let g = gens[i].wrapping_add(1);
            fill(&mut mem[i], i as u64, u64::from(g));
            gens[i] = g;
            rewrites += 1;
        } else {
            arch::wait_for_interrupt(seen);
        }
    }
    if limited {
        ctx.apic.stop_tick();
    }
    out!("PROBE power-button");
    let t1 = now_ns();
    let mut bad = 0u64;
    for (i, page) in mem.iter().enumerate() {
        let want = u64::from(gens[i]);
        if let Err(e) = check(page, i as u64, want) {
            bad += 1;
            if bad <= MAX_BAD_LINES {
                out!(
                    "PROBE mem-walk bad page={} addr={:#x} why={} want_gen={}{}",
                    i,
                    buf.addr + (i * PAGE_BYTES) as u64,
                    e.name(),
                    want,
                    Found(e)
                );
            }
        }
    }
    out!(
        "PROBE mem-walk pages={} bad={} generations={} rewrites={} max_stall_ms={} backwards={} t={} verify_ms={}",
        pages,
        bad,
        walk.sweeps,
        rewrites,
        clock.max_stall / 1_000_000,
        clock.backwards,
        Secs(clock.elapsed),
        (now_ns() - t1) / 1_000_000
    );
    u32::from(bad != 0 || clock.backwards != 0)
}

/// `ged_gsi=N` or `none`.
struct GedGsi(Option<u32>);

impl core::fmt::Display for GedGsi {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some(g) => write!(f, "{}", g),
            None => f.write_str("none"),
        }
    }
}

/// What a bad page held instead.
struct Found(Bad);

impl core::fmt::Display for Found {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Bad::Index(i) => write!(f, " found_index={}", i),
            Bad::Generation(g) => write!(f, " found_gen={}", g),
            Bad::Checksum => Ok(()),
            Bad::Pattern(w) => write!(f, " word={}", w),
        }
    }
}
