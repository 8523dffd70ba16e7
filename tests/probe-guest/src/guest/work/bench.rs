//! `probe.test=blk-bench`: sequential write and read with 1 MiB requests,
//! then 4 KiB random reads at queue depth 1 and 32, each for `probe.secs`.
//! Overwrites the disk from sector 0 on.

use super::{disk_error, Ctx};
use crate::guest::blk::{Blk, Outcome, ReqType};
use crate::guest::timer::{self, now_ns};
use crate::out;

const SEQ_BYTES: usize = 1 << 20;
const SEQ_QD: usize = 4;
const RAND_BYTES: usize = 4096;

struct Result {
    ios: u64,
    bytes: u64,
    ns: u64,
    errors: u64,
}

/// Keeps `qd` requests of `bytes` in flight for `secs`; `lba(i)` picks the
/// sector of the i-th request. Buffer for slot s is `buf + s * bytes`.
fn phase(
    disk: &mut Blk,
    kind: ReqType,
    buf: u64,
    bytes: usize,
    qd: usize,
    secs: u64,
    lba: &mut dyn FnMut(u64) -> u64,
) -> Result {
    let start = now_ns();
    let end = start + secs * 1_000_000_000;
    let mut r = Result {
        ios: 0,
        bytes: 0,
        ns: 0,
        errors: 0,
    };
    let mut issued = 0u64;
    let mut stop = false;
    loop {
        while !stop && disk.inflight() < qd {
            let slot = disk.inflight();
            let addr = buf + (slot * bytes) as u64;
            if disk.submit(kind, lba(issued), addr, bytes).is_none() {
                break;
            }
            issued += 1;
        }
        if disk.inflight() == 0 {
            break;
        }
        match disk.wait(now_ns() + 30_000_000_000) {
            Some((_, Outcome::Ok)) => {
                r.ios += 1;
                r.bytes += bytes as u64;
            }
            Some(_) => r.errors += 1,
            None => {
                r.errors += 1;
                break;
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

/// Runs the four phases on `probe.dev`.
pub fn run(ctx: &mut Ctx) -> u32 {
    let p = ctx.params;
    let secs = p.secs.max(1);
    let Some(buf) = ctx.take_scratch(SEQ_BYTES * SEQ_QD) else {
        out!("PROBE blk-bench dev={} status=nomem", p.dev);
        return 1;
    };
    let addr = buf.addr;
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
    let span = (cap / seq_sectors).max(1);
    let mut seq = |i: u64| (i % span) * seq_sectors;
    let mut rng = p.seed | 1;
    let blocks = (cap / 8).max(1);
    let mut rand = move |_: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % blocks) * 8
    };
    let mut rc = 0;
    let mut summary = [0u64; 4];
    let phases: [(&str, ReqType, usize, usize); 4] = [
        ("seq-write", ReqType::Out, seq_bytes, seq_qd),
        ("seq-read", ReqType::In, seq_bytes, seq_qd),
        ("rand-read", ReqType::In, RAND_BYTES, 1),
        (
            "rand-read",
            ReqType::In,
            RAND_BYTES,
            32.min(disk.max_depth(RAND_BYTES)),
        ),
    ];
    for (i, &(name, kind, bytes, qd)) in phases.iter().enumerate() {
        if kind == ReqType::Out && disk.read_only() {
            out!(
                "PROBE blk-bench dev={} test={} status=skipped-ro",
                p.dev,
                name
            );
            continue;
        }
        let r = if bytes == RAND_BYTES {
            phase(disk, kind, addr, bytes, qd, secs, &mut rand)
        } else {
            phase(disk, kind, addr, bytes, qd, secs, &mut seq)
        };
        let mib_s10 =
            (u128::from(r.bytes) * 10 * 1_000_000_000 / u128::from(r.ns) / (1 << 20)) as u64;
        let iops = (u128::from(r.ios) * 1_000_000_000 / u128::from(r.ns)) as u64;
        summary[i] = if bytes == RAND_BYTES { iops } else { mib_s10 };
        out!(
            "PROBE blk-bench dev={} test={} bs={} qd={} ios={} errors={} ms={} mib_s={} iops={}",
            p.dev,
            name,
            bytes,
            qd,
            r.ios,
            r.errors,
            r.ns / 1_000_000,
            Dec(mib_s10),
            iops
        );
        if r.errors != 0 {
            rc = 1;
        }
    }
    out!(
        "PROBE blk-bench dev={} seq_write_mib_s={} seq_read_mib_s={} rand_read_iops_qd1={} rand_read_iops_qd32={} irq={} tsc_khz={} tsc_src={}",
        p.dev,
        Dec(summary[0]),
        Dec(summary[1]),
        summary[2],
        summary[3],
        if disk.irq_mode() { "on" } else { "off" },
        timer::tsc_khz(),
        timer::source()
    );
    ctx.put_scratch(buf);
    rc
}
