//! `mem-walk`: fills `probe.mib` MiB with checksummed pages
//! (`probe_guest::memwalk`), then rewrites them one at a time, each with its
//! generation bumped, in a scattered order (at the CPU's speed, or
//! `probe.rate` MiB/s), until the power button; then it verifies every page
//! against the generation it last wrote there. A migration that loses a dirty
//! page, copies one to the wrong place or tears one shows up as `bad=`.
//!
//! With `probe.cpus=N` the pages are split into N contiguous shares: the boot
//! CPU walks the first and worker CPUs 1..N-1 (`workers.rs`) one each, until
//! the boot CPU, which alone watches the power button and prints, tells them
//! to stop; each walker publishes its figures in its slot of `STATS`.
//!
//! Every walker watches its clock between two looks at it (one page rewrite
//! apart, or one LAPIC tick, ~16 ms, while a rate limit makes it wait): the
//! longest gap is `max_stall_ms` (a pause, a migration's downtime where the
//! VMM lets the guest's TSC run on), every gap of 100 ms or more on the boot
//! CPU is a `stall` line, and the clock going backwards is counted
//! (`backwards=`) and fails the test.
//!
//! With `probe.touch=US` every rewrite is timed too (the page's fill and its
//! generation's store, where a migration's missing page is first touched):
//! those of US microseconds or more go into the walker's histogram
//! (`probe_guest::memwalk::touch_bucket`), and after each progress line the
//! boot CPU prints and clears the walkers' counts as one `touches` line
//! (nothing when there were none).

use super::{smp, workers, Ctx};
use crate::guest::arch::{self, MAX_APS};
use crate::guest::timer::now_ns;
use crate::out;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use probe_guest::memwalk::{
    check, fill, touch_bucket, touch_floor, Bad, Walk, PAGE_BYTES, TOUCH_BUCKETS, WORDS,
};

/// Gaps at least this long are printed as `stall` lines and left out of the rate's clock.
const STALL_NS: u64 = 100_000_000;
/// Bad pages described one per line; the rest are only counted.
const MAX_BAD_LINES: u64 = 8;
/// How long the boot CPU waits for the workers to stop.
const STOP_NS: u64 = 5_000_000_000;

/// One walker's share of the pages.
#[derive(Clone, Copy)]
pub struct Part {
    /// All pages (the share starts at `first`).
    mem: *mut [u64; WORDS],
    /// Every page's last generation, indexed like `mem`.
    gens: *mut u32,
    first: u64,
    count: u64,
    /// Rewrites per second, `None`: no limit.
    rate: Option<u64>,
    /// Rewrites taking this many ns or more are slow touches (`probe.touch`), `None`: untimed.
    touch_ns: Option<u64>,
}

/// What a walker publishes as it goes (written by it alone, read by the boot CPU).
struct Stats {
    rewrites: AtomicU64,
    sweeps: AtomicU64,
    max_stall: AtomicU64,
    backwards: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: Stats = Stats {
    rewrites: AtomicU64::new(0),
    sweeps: AtomicU64::new(0),
    max_stall: AtomicU64::new(0),
    backwards: AtomicU64::new(0),
};

static STATS: [Stats; MAX_APS + 1] = [ZERO; MAX_APS + 1];

#[allow(clippy::declare_interior_mutable_const)]
const NONE: AtomicU32 = AtomicU32::new(0);
#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: [AtomicU32; TOUCH_BUCKETS] = [NONE; TOUCH_BUCKETS];
/// Each walker's slow touches per latency bucket since the boot CPU last printed them (the
/// walker adds, the boot CPU takes them away).
static TOUCHES: [[AtomicU32; TOUCH_BUCKETS]; MAX_APS + 1] = [EMPTY; MAX_APS + 1];
/// Set by the boot CPU on the power button: the workers return.
static STOP: AtomicBool = AtomicBool::new(false);

/// `t=` seconds with milliseconds.
struct Secs(u64);

impl core::fmt::Display for Secs {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let ms = self.0 / 1_000_000;
        write!(f, "{}.{:03}", ms / 1000, ms % 1000)
    }
}

/// An optional figure: the number or `none`/`max`.
struct Opt(Option<u64>, &'static str);

impl core::fmt::Display for Opt {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            None => f.write_str(self.1),
            Some(r) => write!(f, "{}", r),
        }
    }
}

/// The clock as a walker sees it between two looks.
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

    /// Forgets the time since the last look (spent printing, not stalled), unless it was
    /// a stall: a pause can land while the walker prints, and is one all the same (returned,
    /// as by [`Clock::tick`]).
    fn skip(&mut self) -> Option<u64> {
        let now = now_ns();
        if now >= self.last && now - self.last >= STALL_NS {
            return self.tick();
        }
        if now >= self.last {
            let d = now - self.last;
            self.elapsed += d;
            self.busy += d;
        }
        self.last = now;
        None
    }
}

/// One walker: its share, its order, its clock.
struct Walker {
    part: Part,
    walk: Walk,
    clock: Clock,
    rewrites: u64,
    stats: &'static Stats,
    touches: &'static [AtomicU32; TOUCH_BUCKETS],
}

impl Walker {
    fn new(k: usize, part: Part) -> Self {
        let stats = &STATS[k];
        for a in [
            &stats.rewrites,
            &stats.sweeps,
            &stats.max_stall,
            &stats.backwards,
        ] {
            a.store(0, Ordering::Relaxed);
        }
        for c in &TOUCHES[k] {
            c.store(0, Ordering::Relaxed);
        }
        Self {
            part,
            walk: Walk::new(part.count),
            clock: Clock::new(),
            rewrites: 0,
            stats,
            touches: &TOUCHES[k],
        }
    }

    /// Looks at the clock (see `Clock::tick`) and publishes what changed.
    fn look(&mut self) -> Option<u64> {
        let stall = self.clock.tick();
        self.stats
            .max_stall
            .store(self.clock.max_stall, Ordering::Relaxed);
        self.stats
            .backwards
            .store(self.clock.backwards, Ordering::Relaxed);
        stall
    }

    /// Rewrites the next page, or waits for an interrupt (the tick) after `seen` when the
    /// rate limit says it is ahead.
    fn work(&mut self, seen: u64) {
        let allowed = match self.part.rate {
            None => u64::MAX,
            Some(r) => (u128::from(r) * u128::from(self.clock.busy) / 1_000_000_000) as u64,
        };
        if self.rewrites >= allowed {
            arch::wait_for_interrupt(seen);
            return;
        }
        let i = (self.part.first + self.walk.next_page()) as usize;
        // SAFETY: page `i` is in this walker's share, which no other walker touches while
        // the walk runs (see `run`).
        let (page, gen) = unsafe { (&mut *self.part.mem.add(i), &mut *self.part.gens.add(i)) };
        let t = self.part.touch_ns.map(|_| now_ns());
        let g = gen.wrapping_add(1);
        fill(page, i as u64, u64::from(g));
        *gen = g;
        if let (Some(t), Some(slow)) = (t, self.part.touch_ns) {
            let took = now_ns().saturating_sub(t);
            if took >= slow {
                self.touches[touch_bucket(took / 1000)].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.rewrites += 1;
        self.stats.rewrites.store(self.rewrites, Ordering::Relaxed);
        self.stats.sweeps.store(self.walk.sweeps, Ordering::Relaxed);
    }
}

/// Worker CPU `k`: walks `part` until the boot CPU sets `STOP`.
pub fn run_part(k: usize, part: &Part) {
    let mut w = Walker::new(k, *part);
    loop {
        let seen = arch::irq_total();
        w.look();
        if STOP.load(Ordering::Acquire) {
            return;
        }
        w.work(seen);
    }
}

/// The sum of the walkers' rewrites, their fewest sweeps, longest stall and backward steps.
fn totals(n: usize) -> (u64, u64, u64, u64) {
    let s = &STATS[..n];
    (
        s.iter().map(|s| s.rewrites.load(Ordering::Relaxed)).sum(),
        s.iter()
            .map(|s| s.sweeps.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0),
        s.iter()
            .map(|s| s.max_stall.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0),
        s.iter().map(|s| s.backwards.load(Ordering::Relaxed)).sum(),
    )
}

/// The walkers' slow touches since the last call, taken away from their counts.
struct Touches([u32; TOUCH_BUCKETS]);

impl Touches {
    fn take(n: usize) -> Self {
        let mut h = [0u32; TOUCH_BUCKETS];
        for w in &TOUCHES[..n] {
            for (sum, c) in h.iter_mut().zip(w) {
                *sum += c.swap(0, Ordering::Relaxed);
            }
        }
        Self(h)
    }

    fn count(&self) -> u64 {
        self.0.iter().map(|&c| u64::from(c)).sum()
    }
}

/// `us=<bucket's first microsecond>:<touches>,...` over the buckets that have any.
impl core::fmt::Display for Touches {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut sep = "us=";
        for (b, &c) in self.0.iter().enumerate().filter(|(_, &c)| c != 0) {
            write!(f, "{}{}:{}", sep, touch_floor(b), c)?;
            sep = ",";
        }
        Ok(())
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
    let (gens, mem) = (table.addr as *mut u32, buf.addr as *mut [u64; WORDS]);
    let t0 = now_ns();
    for i in 0..pages as usize {
        // SAFETY: the allocator gave both ranges to mem-walk alone, for good; they are 4 KiB
        // aligned, inside the identity map and `pages` entries long. No worker runs yet.
        fill(unsafe { &mut *mem.add(i) }, i as u64, 0);
    }
    let fill_ms = (now_ns() - t0) / 1_000_000;
    // With a rate limit the walkers wait for their LAPIC tick between their turns.
    let limited = p.rate.is_some();
    let mut cpus = (p.cpus as usize).min(MAX_APS + 1).min(pages as usize);
    let mut ids = [0u32; MAX_APS];
    if cpus > 1 {
        let (started, n) = smp::start_workers(ctx, cpus - 1, limited, "mem-walk-worker");
        ids = started;
        cpus = n + 1;
    }
    let rate = p
        .rate
        .map(|r| r * (1 << 20) / PAGE_BYTES as u64 / cpus as u64);
    let share = |k: usize| {
        let first = pages * k as u64 / cpus as u64;
        Part {
            mem,
            gens,
            first,
            count: pages * (k as u64 + 1) / cpus as u64 - first,
            rate,
            touch_ns: p.touch_us.map(|us| us * 1000),
        }
    };
    out!(
        "PROBE mem-walk start pages={} mib={} addr={:#x} fill_ms={} rate={} interval_ms={} cpus={} ged_gsi={}",
        pages,
        p.mib,
        buf.addr,
        fill_ms,
        Opt(p.rate, "max"),
        p.interval_ms,
        cpus,
        Opt(ged.and(ctx.p.ged_irq).map(|i| u64::from(i.gsi)), "none")
    );
    if limited {
        ctx.apic.start_tick();
    }
    STOP.store(false, Ordering::Release);
    // Figures of an earlier mem-walk in this boot are not counted (each walker clears its own
    // slot too, when it starts).
    for s in &STATS[..cpus] {
        for a in [&s.rewrites, &s.sweeps, &s.max_stall, &s.backwards] {
            a.store(0, Ordering::Relaxed);
        }
    }
    let mut w = Walker::new(0, share(0));
    for (k, &id) in ids.iter().enumerate().take(cpus - 1) {
        workers::post(k + 1, id, workers::Job::Walk(share(k + 1)));
    }
    let interval = p.interval_ms * 1_000_000;
    let mut next_report = interval;
    // A stall seen while printing, to report next.
    let mut pending = None;
    loop {
        let seen = arch::irq_total();
        if let Some(gap) = pending.take().or_else(|| w.look()) {
            out!(
                "PROBE mem-walk stall t={} ms={}",
                Secs(w.clock.elapsed),
                gap / 1_000_000
            );
            pending = w.clock.skip();
        }
        if matches!((ged, ged_base), (Some(v), Some(b)) if arch::irq_count(v) != b) {
            break;
        }
        if w.clock.elapsed >= next_report {
            let (rewrites, sweeps, stall, _) = totals(cpus);
            out!(
                "PROBE mem-walk progress t={} generations={} rewrites={} max_stall_ms={}",
                Secs(w.clock.elapsed),
                sweeps,
                rewrites,
                stall / 1_000_000
            );
            if p.touch_us.is_some() {
                let touches = Touches::take(cpus);
                if touches.count() != 0 {
                    out!(
                        "PROBE mem-walk touches t={} slow={} {}",
                        Secs(w.clock.elapsed),
                        touches.count(),
                        touches
                    );
                }
            }
            pending = w.clock.skip();
            let e = w.clock.elapsed;
            next_report = next_report.max(e - e % interval) + interval;
        }
        w.work(seen);
    }
    STOP.store(true, Ordering::Release);
    let mut rc = 0;
    let deadline = now_ns() + STOP_NS;
    for k in 1..cpus {
        while workers::finished(k).is_none() {
            if let Some(f) = arch::cpu_fault(k) {
                out!(
                    "PROBE mem-walk worker={} status=fault vector={} rip={:#x} err={:#x} cr2={:#x}",
                    k,
                    f.vector,
                    f.rip,
                    f.err,
                    f.cr2
                );
                rc = 1;
                break;
            }
            if now_ns() > deadline {
                out!("PROBE mem-walk worker={} status=timeout", k);
                rc = 1;
                break;
            }
            arch::pause();
        }
    }
    if limited {
        ctx.apic.stop_tick();
    }
    out!("PROBE power-button");
    let (rewrites, sweeps, stall, backwards) = totals(cpus);
    let t1 = now_ns();
    let mut bad = 0u64;
    for i in 0..pages as usize {
        // SAFETY: every worker is done (or stopped by a fault) and the ranges are mem-walk's.
        let (page, want) = unsafe { (&*mem.add(i), u64::from(*gens.add(i))) };
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
        "PROBE mem-walk pages={} bad={} generations={} rewrites={} max_stall_ms={} backwards={} cpus={} t={} verify_ms={}",
        pages,
        bad,
        sweeps,
        rewrites,
        stall / 1_000_000,
        backwards,
        cpus,
        Secs(w.clock.elapsed),
        (now_ns() - t1) / 1_000_000
    );
    rc.max(u32::from(bad != 0 || backwards != 0))
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
