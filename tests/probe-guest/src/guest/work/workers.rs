//! The worker CPUs of blk-bench and mem-walk. An application processor started as worker k
//! (`smp::start_workers`, entry.S `ap_worker`) runs `probe_ap_main(k)` in
//! ring 3 with interrupts on: it sets up its local APIC, says it is ready
//! and then runs every job the boot CPU posts in its mailbox (one benchmark
//! phase on the queue lent to it, or a mem-walk share of pages walked until
//! the boot CPU says stop), sleeping in between. The boot CPU posts a
//! job and sends the wake IPI; the worker writes its result and the job's
//! number back. A worker never prints (the boot CPU reports for it); a fault
//! stops it in ring 0 and is recorded in its per-CPU area (`arch::cpu_fault`).

use super::bench::{self, PhaseCfg, PhaseResult};
use super::memwalk;
use crate::guest::apic::Apic;
use crate::guest::arch::{self, MAX_APS, WAKE_VECTOR};
use crate::guest::blk::{wake, BlkQueue};
use crate::guest::timer::now_ns;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// A job.
#[derive(Clone, Copy)]
pub enum Job {
    /// blk-bench: one phase on a queue the boot CPU lends for its duration.
    Phase {
        /// The queue (the worker is its only user until the result is back).
        queue: *mut BlkQueue,
        /// The phase.
        cfg: PhaseCfg,
    },
    /// mem-walk: rewrite a share of the pages until the boot CPU says stop.
    Walk(memwalk::Part),
    /// virtq-chaos: hostile writes to a virtqueue's rings until a deadline.
    Scribble(Scribble),
}

/// Random 2-, 4- and 8-byte stores into `regions` (address, length) until
/// `until_ns`; the result's `ios` counts them.
#[derive(Clone, Copy)]
pub struct Scribble {
    /// Where to write (a length of 0 leaves a region out).
    pub regions: [(u64, u64); 2],
    /// When to stop (`timer::now_ns`).
    pub until_ns: u64,
    /// Random seed (non-zero).
    pub seed: u64,
}

impl Scribble {
    fn run(&self) -> PhaseResult {
        let mut x = self.seed | 1;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut stores = 0u64;
        let regions = self.regions.iter().filter(|r| r.1 >= 8).count() as u64;
        while regions > 0 && now_ns() < self.until_ns {
            for _ in 0..64 {
                let r = next();
                let (base, len) = self
                    .regions
                    .iter()
                    .filter(|r| r.1 >= 8)
                    .nth((r % regions) as usize)
                    .copied()
                    .unwrap_or((0, 0));
                let width = 2u64 << ((r >> 8) % 3);
                let at = base + (((r >> 16) % (len - width + 1)) & !(width - 1));
                let v = next();
                // SAFETY: `at..at + width` lies in a region the boot CPU gave
                // this job (rings it owns and lets be scribbled on).
                unsafe {
                    match width {
                        2 => core::ptr::write_volatile(at as *mut u16, v as u16),
                        4 => core::ptr::write_volatile(at as *mut u32, v as u32),
                        _ => core::ptr::write_volatile(at as *mut u64, v),
                    }
                }
                stores += 1;
            }
        }
        PhaseResult {
            ios: stores,
            ..PhaseResult::ZERO
        }
    }
}

struct Mailbox {
    /// Set by the worker once its loop runs.
    ready: AtomicBool,
    /// Number of the last job posted.
    posted: AtomicU32,
    /// Number of the last job finished.
    done: AtomicU32,
    /// LAPIC registers, and interrupt-driven waits or polling: set before the start.
    lapic: AtomicU64,
    irq: AtomicBool,
    /// Written by the boot CPU before `posted` is raised.
    job: UnsafeCell<Job>,
    /// Written by the worker before `done` is raised.
    result: UnsafeCell<PhaseResult>,
}

// SAFETY: `job` is written only by the boot CPU while the worker is idle (the
// previous job done), and read by the worker after it saw `posted` (acquire);
// `result` is written by the worker before `done` (release) and read by the
// boot CPU after it saw `done` (acquire).
unsafe impl Sync for Mailbox {}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Mailbox = Mailbox {
    ready: AtomicBool::new(false),
    posted: AtomicU32::new(0),
    done: AtomicU32::new(0),
    lapic: AtomicU64::new(0),
    irq: AtomicBool::new(false),
    job: UnsafeCell::new(Job::Phase {
        queue: core::ptr::null_mut(),
        cfg: PhaseCfg::EMPTY,
    }),
    result: UnsafeCell::new(PhaseResult::ZERO),
};

static MAILBOXES: [Mailbox; MAX_APS + 1] = [EMPTY; MAX_APS + 1];

/// Boot CPU, before starting worker `k`: a fresh mailbox.
pub fn prepare(k: usize, lapic: u64, irq: bool) {
    let m = &MAILBOXES[k];
    m.ready.store(false, Ordering::SeqCst);
    m.posted.store(0, Ordering::SeqCst);
    m.done.store(0, Ordering::SeqCst);
    m.lapic.store(lapic, Ordering::SeqCst);
    m.irq.store(irq, Ordering::SeqCst);
}

/// Boot CPU: waits up to `ns` for worker `k` to be ready.
pub fn wait_ready(k: usize, ns: u64) -> bool {
    let deadline = now_ns() + ns;
    while !MAILBOXES[k].ready.load(Ordering::Acquire) {
        if now_ns() >= deadline || arch::cpu_fault(k).is_some() {
            return false;
        }
        arch::pause();
    }
    true
}

/// Boot CPU: gives worker `k` (APIC id `apic_id`) its next job and wakes it.
pub fn post(k: usize, apic_id: u32, job: Job) {
    let m = &MAILBOXES[k];
    // SAFETY: the worker is idle (its previous job is done), see `Mailbox`.
    unsafe { *m.job.get() = job };
    m.posted.fetch_add(1, Ordering::Release);
    Apic::ipi(
        m.lapic.load(Ordering::Relaxed),
        apic_id,
        0x4000 | u32::from(WAKE_VECTOR),
    );
}

/// Boot CPU: the result of worker `k`'s job, once it is done (for a walk job, only that it
/// is done: its figures are in `memwalk`'s per-walker statistics).
pub fn finished(k: usize) -> Option<PhaseResult> {
    let m = &MAILBOXES[k];
    let done = m.done.load(Ordering::Acquire);
    // SAFETY: written by the worker before `done` was raised, see `Mailbox`.
    (done == m.posted.load(Ordering::Relaxed)).then(|| unsafe { *m.result.get() })
}

/// Ring-3 entry of worker CPU `k` (entry.S `ap_user_entry`).
#[no_mangle]
pub extern "C" fn probe_ap_main(k: u64) -> ! {
    let k = (k as usize).min(MAX_APS);
    let m = &MAILBOXES[k];
    let irq = m.irq.load(Ordering::Acquire);
    let apic = Apic::init_local(m.lapic.load(Ordering::Acquire));
    if irq {
        // Wakes the waits below now and then, so that their deadlines are
        // noticed even if the wake IPI never comes.
        apic.start_tick();
    }
    let mut seen_job = m.posted.load(Ordering::Acquire);
    m.ready.store(true, Ordering::Release);
    loop {
        let seen = arch::irq_total();
        let posted = m.posted.load(Ordering::Acquire);
        if posted != seen_job {
            seen_job = posted;
            // SAFETY: see `Mailbox`.
            let job = unsafe { *m.job.get() };
            match job {
                Job::Phase { queue, cfg } => {
                    // SAFETY: the boot CPU lends the queue for the job's duration and
                    // does not touch it meanwhile.
                    let q = unsafe { &mut *queue };
                    let r = bench::run_phase(q, &cfg, &mut |q, deadline| {
                        wake::wait(k, q, deadline, irq)
                    });
                    // SAFETY: see `Mailbox`.
                    unsafe { *m.result.get() = r };
                }
                Job::Walk(part) => memwalk::run_part(k, &part),
                Job::Scribble(sc) => {
                    let r = sc.run();
                    // SAFETY: see `Mailbox`.
                    unsafe { *m.result.get() = r };
                }
            }
            m.done.store(posted, Ordering::Release);
            continue;
        }
        if irq {
            arch::wait_for_interrupt(seen);
        } else {
            arch::pause();
        }
    }
}
