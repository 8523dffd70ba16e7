//! `probe.test=blk-bench`: throughput and IOPS of disk `probe.dev`.
//!
//! The phases are `probe.bench` (workloads, default `seqw,seqr,randr`) times
//! `probe.qd` (depths of the random workloads, default `1,32`), each running
//! `probe.secs`: sequential writes / reads of 1 MiB requests (fewer bytes if
//! SIZE_MAX x SEG_MAX is smaller) at depth 4, and 4 KiB requests at 4 KiB-aligned
//! random offsets: reads, writes, or a 70/30 mix of reads and writes. Every
//! depth is per queue and capped by what the queue holds (256 descriptors at
//! most; one per request with indirect descriptors, else header + data + status).
//!
//! With `probe.queues=N` and a device offering VIRTIO_BLK_F_MQ, N queues are set
//! up and driven at once by N CPUs: queue 0 by the boot CPU, queue k by worker
//! CPU k (`workers`), each with its own requests in flight; sequential phases
//! give each queue its own 1/N of the disk. Results are summed (IOPS and MiB/s
//! as the sum of each queue's rate). Fewer queues than asked run when the
//! device offers fewer (or no MQ), there are fewer CPUs, or workers fail to start.
//! Overwrites the disk (write phases are skipped on read-only disks).
//!
//! Output (one line each, in this order; keys are stable, parsed by scripts/bench/blk.py):
//!
//! ```text
//! PROBE blk-bench dev=N setup queues=Q wanted=W limit=none|no-mq|device|cpus|workers
//!       device_queues=D cpus=C indirect=yes|no queue_size=S seq_bs=B seq_qd=4 secs=T irq=on|off
//! PROBE blk-bench dev=N test=T qd=ASKED limit=DEPTH              (a depth the queue cannot hold)
//! PROBE blk-bench dev=N test=T status=skipped-ro                  (a write phase on a read-only disk)
//! PROBE blk-bench-queue dev=N queue=K test=T qd=D ios=.. errors=.. ms=.. iops=..   (Q > 1, per queue)
//! PROBE blk-bench dev=N test=T bs=B qd=D ios=I errors=E ms=M mib_s=X.Y iops=K queues=Q
//!       reads=R writes=W asked_qd=A
//! PROBE blk-bench dev=N test=T status=timeout|fault queue=K ...   (then the benchmark stops)
//! PROBE blk-bench dev=N done phases=P errors=E queues=Q irq=on|off tsc_khz=.. tsc_src=..
//! ```
//!
//! T is seq-write, seq-read, rand-read, rand-write or rand-mix; qd is the depth
//! per queue that ran, asked_qd the one asked; ms is the longest queue's time.

use super::{disk_error, smp, workers, Ctx};
use crate::guest::arch::{self, MAX_APS};
use crate::guest::blk::{wake, BlkQueue, Outcome, ReqType, MAX_INFLIGHT, MAX_QUEUES};
use crate::guest::timer::{self, now_ns};
use crate::out;
use probe_guest::cmdline::Workload;

const SEQ_BYTES: usize = 1 << 20;
const SEQ_QD: usize = 4;
const RAND_BYTES: usize = 4096;
/// Data buffers of one queue: SEQ_QD sequential or MAX_INFLIGHT random requests.
const QUEUE_DATA: usize = if SEQ_BYTES * SEQ_QD > RAND_BYTES * MAX_INFLIGHT {
    SEQ_BYTES * SEQ_QD
} else {
    RAND_BYTES * MAX_INFLIGHT
};
/// Longest wait for one completion before a phase gives up (`status=timeout`).
const WAIT_NS: u64 = 30_000_000_000;
/// Longest wait for a worker's result beyond the phase's own length.
const WORKER_GRACE_NS: u64 = 40_000_000_000;

/// One phase on one queue.
#[derive(Clone, Copy, Debug)]
pub struct PhaseCfg {
    /// The workload.
    pub work: Workload,
    /// Bytes per request.
    pub bytes: usize,
    /// Requests kept in flight.
    pub qd: usize,
    /// Duration.
    pub secs: u64,
    /// Sequential workloads: first sector and length of the region they cycle over.
    pub region: (u64, u64),
    /// Disk capacity in sectors (random offsets fall anywhere in it).
    pub capacity: u64,
    /// Random seed (non-zero).
    pub seed: u64,
    /// Data buffers: slot s at `buf + s * bytes`.
    pub buf: u64,
}

impl PhaseCfg {
    /// A placeholder (mailboxes before their first job).
    pub const EMPTY: PhaseCfg = PhaseCfg {
        work: Workload::SeqRead,
        bytes: 0,
        qd: 0,
        secs: 0,
        region: (0, 0),
        capacity: 0,
        seed: 1,
        buf: 0,
    };
}

/// What one phase did on one queue.
#[derive(Clone, Copy, Debug)]
pub struct PhaseResult {
    /// Requests completed with VIRTIO_BLK_S_OK.
    pub ios: u64,
    /// Of which reads.
    pub reads: u64,
    /// Of which writes.
    pub writes: u64,
    /// Bytes they moved.
    pub bytes: u64,
    /// Time from the first submission to the last completion.
    pub ns: u64,
    /// Requests that failed (any other status, or still in flight at a timeout).
    pub errors: u64,
    /// A completion did not come within `WAIT_NS`: the queue is unusable.
    pub timed_out: bool,
}

impl PhaseResult {
    /// Nothing done.
    pub const ZERO: PhaseResult = PhaseResult {
        ios: 0,
        reads: 0,
        writes: 0,
        bytes: 0,
        ns: 1,
        errors: 0,
        timed_out: false,
    };

    fn iops(&self) -> u64 {
        (u128::from(self.ios) * 1_000_000_000 / u128::from(self.ns.max(1))) as u64
    }

    fn mib_s10(&self) -> u64 {
        (u128::from(self.bytes) * 10 * 1_000_000_000 / u128::from(self.ns.max(1)) / (1 << 20))
            as u64
    }
}

/// xorshift64.
fn next(rng: &mut u64) -> u64 {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    *rng
}

/// Keeps `cfg.qd` requests in flight on `q` for `cfg.secs`, then lets the
/// last ones complete. `wait(q, deadline)` returns once `q` has a completion
/// (true) or the deadline passed (false). Runs on whichever CPU uses `q`.
pub fn run_phase(
    q: &mut BlkQueue,
    cfg: &PhaseCfg,
    wait: &mut dyn FnMut(&BlkQueue, u64) -> bool,
) -> PhaseResult {
    let start = now_ns();
    let end = start + cfg.secs * 1_000_000_000;
    let mut r = PhaseResult::ZERO;
    let mut kinds = [ReqType::In; MAX_INFLIGHT];
    let mut rng = cfg.seed | 1;
    let seq_sectors = (cfg.bytes / 512).max(1) as u64;
    let span = (cfg.region.1 / seq_sectors).max(1);
    let blocks = (cfg.capacity / 8).max(1);
    let mut issued = 0u64;
    let mut stop = false;
    loop {
        if !stop {
            while q.inflight() < cfg.qd {
                let (kind, lba) = match cfg.work {
                    Workload::SeqWrite | Workload::SeqRead => {
                        let kind = if cfg.work == Workload::SeqWrite {
                            ReqType::Out
                        } else {
                            ReqType::In
                        };
                        (kind, cfg.region.0 + (issued % span) * seq_sectors)
                    }
                    Workload::RandRead => (ReqType::In, (next(&mut rng) % blocks) * 8),
                    Workload::RandWrite => (ReqType::Out, (next(&mut rng) % blocks) * 8),
                    Workload::Mix => {
                        let lba = (next(&mut rng) % blocks) * 8;
                        let kind = if next(&mut rng) % 10 < 7 {
                            ReqType::In
                        } else {
                            ReqType::Out
                        };
                        (kind, lba)
                    }
                };
                let Some(slot) = q.push(kind, lba, cfg.buf, cfg.bytes, cfg.bytes) else {
                    break;
                };
                kinds[slot] = kind;
                issued += 1;
            }
            q.kick();
        }
        if q.inflight() == 0 {
            break;
        }
        if !wait(q, now_ns() + WAIT_NS) {
            r.errors += q.inflight() as u64;
            r.timed_out = true;
            break;
        }
        while let Some((slot, outcome)) = q.poll() {
            match (outcome, kinds.get(slot)) {
                (Outcome::Ok, Some(&kind)) => {
                    r.ios += 1;
                    r.bytes += cfg.bytes as u64;
                    if kind == ReqType::Out {
                        r.writes += 1;
                    } else {
                        r.reads += 1;
                    }
                }
                _ => r.errors += 1,
            }
        }
        if now_ns() >= end {
            stop = true;
        }
    }
    r.ns = (now_ns() - start).max(1);
    r
}

/// Value with one decimal as "int.frac".
struct Dec(u64);

impl core::fmt::Display for Dec {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}.{}", self.0 / 10, self.0 % 10)
    }
}

/// Why a phase stopped the benchmark.
enum Abort {
    Timeout(usize),
    Fault(usize, arch::CpuFault),
    NoResult(usize),
}

/// Runs the phases on `probe.dev`.
pub fn run(ctx: &mut Ctx) -> u32 {
    let p = ctx.params;
    let secs = p.secs.max(1);
    let wanted = p.queues as usize;
    let cpus = ctx.p.cpus().max(1) as usize;
    let (device_queues, mut nq, irq) = match ctx.disk_queues(p.dev, wanted) {
        Ok(d) => (d.device_queues as usize, d.queues(), d.irq_mode()),
        Err(e) => return disk_error("blk-bench", p.dev, e),
    };
    let mut limit = if nq >= wanted {
        "none"
    } else if device_queues <= 1 {
        "no-mq"
    } else {
        "device"
    };
    if nq > cpus {
        nq = cpus;
        limit = "cpus";
    }
    let mut worker_ids = [0u32; MAX_APS];
    if nq > 1 {
        let (ids, started) = smp::start_workers(ctx, nq - 1, irq);
        worker_ids = ids;
        if started < nq - 1 {
            nq = started + 1;
            limit = "workers";
        }
    }
    let nq = nq.min(MAX_QUEUES);
    let Some(buf) = ctx.take_scratch(QUEUE_DATA * nq) else {
        out!("PROBE blk-bench dev={} status=nomem", p.dev);
        return 1;
    };
    let lapic = ctx.apic.base();
    let disk = match ctx.disk(p.dev) {
        Ok(d) => d,
        Err(e) => {
            ctx.put_scratch(buf);
            return disk_error("blk-bench", p.dev, e);
        }
    };
    let cap = disk.capacity;
    let seq_sectors = ((SEQ_BYTES / 512) as u64)
        .min(disk.max_request_sectors())
        .min(cap.max(1));
    let seq_bytes = (seq_sectors * 512) as usize;
    let seq_qd = SEQ_QD.min(disk.max_depth(seq_bytes));
    out!(
        "PROBE blk-bench dev={} setup queues={} wanted={} limit={} device_queues={} cpus={} indirect={} queue_size={} seq_bs={} seq_qd={} secs={} irq={}",
        p.dev,
        nq,
        wanted,
        limit,
        device_queues,
        cpus,
        if disk.indirect() { "yes" } else { "no" },
        disk.queue_size,
        seq_bytes,
        seq_qd,
        secs,
        if irq { "on" } else { "off" }
    );
    for (k, &id) in worker_ids.iter().enumerate().take(nq - 1) {
        let (used_idx, _) = disk.queue(k + 1).used_state();
        wake::lend(k + 1, id, used_idx, lapic);
    }
    // Sequential regions: 1/nq of the disk each (the whole disk if that is
    // less than one request).
    let share = cap / nq as u64;
    let region = |k: usize| {
        if share >= seq_sectors {
            (share * k as u64, share)
        } else {
            (0, cap)
        }
    };
    let (mut rc, mut phases, mut errors) = (0, 0u32, 0u64);
    let mut abort = None;
    for ph in p.phases() {
        let name = ph.work.name();
        let (bytes, asked, qd) = match ph.qd {
            None => (seq_bytes, SEQ_QD, seq_qd),
            Some(d) => {
                let d = d as usize;
                (RAND_BYTES, d, d.min(disk.max_depth(RAND_BYTES)))
            }
        };
        if ph.work.writes() && disk.read_only() {
            out!(
                "PROBE blk-bench dev={} test={} status=skipped-ro",
                p.dev,
                name
            );
            continue;
        }
        if qd < asked {
            out!(
                "PROBE blk-bench dev={} test={} qd={} limit={}",
                p.dev,
                name,
                asked,
                qd
            );
        }
        let cfg = |k: usize| PhaseCfg {
            work: ph.work,
            bytes,
            qd,
            secs,
            region: region(k),
            capacity: cap,
            seed: p.seed ^ (k as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            buf: buf.addr + (k * QUEUE_DATA) as u64,
        };
        for (k, &id) in worker_ids.iter().enumerate().take(nq - 1) {
            workers::post(
                k + 1,
                id,
                workers::Job {
                    queue: disk.queue_ptr(k + 1),
                    cfg: cfg(k + 1),
                    scribble: None,
                },
            );
        }
        let q0: *mut BlkQueue = disk.queue_ptr(0);
        let mut results = [None; MAX_QUEUES];
        // SAFETY: queue 0 is never lent; `wait_queue` does not touch it.
        results[0] = Some(run_phase(
            unsafe { &mut *q0 },
            &cfg(0),
            &mut |q, deadline| disk.wait_queue(q, deadline),
        ));
        // The workers' results; the interrupt is serviced (and their wake-ups
        // forwarded) meanwhile.
        let deadline = now_ns() + secs * 1_000_000_000 + WORKER_GRACE_NS;
        loop {
            for (k, slot) in results.iter_mut().enumerate().take(nq).skip(1) {
                if slot.is_none() {
                    if let Some(f) = arch::cpu_fault(k) {
                        abort = Some(Abort::Fault(k, f));
                    }
                    *slot = workers::finished(k);
                }
            }
            if abort.is_some() || results[..nq].iter().all(|r| r.is_some()) {
                break;
            }
            if now_ns() >= deadline {
                let k = (1..nq).find(|&k| results[k].is_none()).unwrap_or(1);
                abort = Some(Abort::NoResult(k));
                break;
            }
            disk.idle(&|| (1..nq).all(|k| workers::finished(k).is_some()));
        }
        if abort.is_none() {
            if let Some(k) = (0..nq).find(|&k| results[k].is_some_and(|r| r.timed_out)) {
                abort = Some(Abort::Timeout(k));
            }
        }
        let (mut ios, mut reads, mut writes, mut errs, mut ns, mut iops, mut mib10) =
            (0, 0, 0, 0, 1, 0, 0);
        for (k, r) in results[..nq].iter().enumerate() {
            let Some(r) = r else { continue };
            if nq > 1 {
                out!(
                    "PROBE blk-bench-queue dev={} queue={} test={} qd={} ios={} errors={} ms={} iops={}",
                    p.dev,
                    k,
                    name,
                    qd,
                    r.ios,
                    r.errors,
                    r.ns / 1_000_000,
                    r.iops()
                );
            }
            ios += r.ios;
            reads += r.reads;
            writes += r.writes;
            errs += r.errors;
            ns = ns.max(r.ns);
            iops += r.iops();
            mib10 += r.mib_s10();
        }
        out!(
            "PROBE blk-bench dev={} test={} bs={} qd={} ios={} errors={} ms={} mib_s={} iops={} queues={} reads={} writes={} asked_qd={}",
            p.dev,
            name,
            bytes,
            qd,
            ios,
            errs,
            ns / 1_000_000,
            Dec(mib10),
            iops,
            nq,
            reads,
            writes,
            asked
        );
        phases += 1;
        errors += errs;
        if errs != 0 {
            rc = 1;
        }
        match abort {
            None => continue,
            Some(Abort::Timeout(k)) => out!(
                "PROBE blk-bench dev={} test={} status=timeout queue={}",
                p.dev,
                name,
                k
            ),
            Some(Abort::NoResult(k)) => out!(
                "PROBE blk-bench dev={} test={} status=timeout queue={} worker=no-result",
                p.dev,
                name,
                k
            ),
            Some(Abort::Fault(k, f)) => out!(
                "PROBE blk-bench dev={} test={} status=fault queue={} vector={} rip={:#x} err={:#x} cr2={:#x}",
                p.dev,
                name,
                k,
                f.vector,
                f.rip,
                f.err,
                f.cr2
            ),
        }
        rc = 1;
        break;
    }
    out!(
        "PROBE blk-bench dev={} done phases={} errors={} queues={} irq={} tsc_khz={} tsc_src={}",
        p.dev,
        phases,
        errors,
        nq,
        if irq { "on" } else { "off" },
        timer::tsc_khz(),
        timer::source()
    );
    // A queue that timed out or whose worker is gone stays unusable; the
    // scratch buffer may still be written by the device then, so keep it.
    if abort.is_none() {
        ctx.put_scratch(buf);
    }
    rc
}
