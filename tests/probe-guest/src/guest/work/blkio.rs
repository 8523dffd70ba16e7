//! `blk-write`, `blk-read`, `blk-id` and `io-loop`.

use super::{disk_error, Ctx};
use crate::guest::arch;
use crate::guest::blk::{Outcome, ReqType};
use crate::guest::console::Line;
use crate::guest::mem::DmaBuf;
use crate::guest::timer::now_ns;
use crate::out;
use core::fmt::Write;
use probe_guest::bytes::fnv1a;
use probe_guest::pattern::{self, SECTOR};

/// Sectors per request/buffer chunk.
const CHUNK: u64 = 2048;
/// Per-request timeout.
const TIMEOUT_MS: u64 = 30_000;

/// Writes the pattern to `count` sectors from `lba`; returns (write, flush) outcomes.
fn write_pattern(
    ctx: &mut Ctx,
    dev: u32,
    lba: u64,
    count: u64,
    seed: u64,
) -> Result<(Outcome, Option<Outcome>), u32> {
    let Some(mut buf) = ctx.take_scratch((CHUNK as usize) * SECTOR) else {
        out!("PROBE blk-write dev={} status=nomem", dev);
        return Err(1);
    };
    let addr = buf.addr;
    let result = match ctx.disk(dev) {
        Err(e) => Err(disk_error("blk-write", dev, e)),
        Ok(disk) => {
            let mut outcome = Outcome::Ok;
            let mut done = 0;
            while done < count && outcome == Outcome::Ok {
                let n = CHUNK.min(count - done);
                let bytes = (n as usize) * SECTOR;
                pattern::fill(&mut buf.bytes()[..bytes], lba + done, seed);
                outcome = disk.run(ReqType::Out, lba + done, addr, bytes, TIMEOUT_MS);
                done += n;
            }
            let flush = (outcome == Outcome::Ok && disk.has_flush())
                .then(|| disk.run(ReqType::Flush, 0, 0, 0, TIMEOUT_MS));
            Ok((outcome, flush))
        }
    };
    ctx.put_scratch(buf);
    result
}

/// Reads `count` sectors from `lba` and compares them with the pattern:
/// (outcome, first bad sector, and with `keep` the buffer of a failed read,
/// which the caller then owns: it is not the scratch buffer any more).
fn read_pattern(
    ctx: &mut Ctx,
    dev: u32,
    lba: u64,
    count: u64,
    seed: u64,
    keep: bool,
) -> Result<(Outcome, Option<u64>, Option<DmaBuf>), u32> {
    let Some(mut buf) = ctx.take_scratch((CHUNK as usize) * SECTOR) else {
        out!("PROBE blk-read dev={} status=nomem", dev);
        return Err(1);
    };
    let addr = buf.addr;
    let result = match ctx.disk(dev) {
        Err(e) => Err(disk_error("blk-read", dev, e)),
        Ok(disk) => {
            let mut outcome = Outcome::Ok;
            let mut first_bad = None;
            let mut done = 0;
            while done < count && outcome == Outcome::Ok {
                let n = CHUNK.min(count - done);
                let bytes = (n as usize) * SECTOR;
                buf.bytes()[..bytes].fill(0xa5);
                outcome = disk.run(ReqType::In, lba + done, addr, bytes, TIMEOUT_MS);
                if outcome == Outcome::Ok && first_bad.is_none() {
                    first_bad = pattern::first_mismatch(&buf.bytes()[..bytes], lba + done, seed);
                }
                done += n;
            }
            Ok((outcome, first_bad))
        }
    };
    match result {
        Ok((o, bad)) if keep && o != Outcome::Ok => Ok((o, bad, Some(buf))),
        r => {
            ctx.put_scratch(buf);
            r.map(|(o, bad)| (o, bad, None))
        }
    }
}

/// The buffer of a read that failed in io-loop, set aside: the storage may still answer
/// that read late (a yanked one), and nothing may reach the buffer once the guest was told
/// the read failed (what it held then is undefined: it may hold some or all of the data).
struct HeldRead {
    buf: DmaBuf,
    /// `fnv1a` of the buffer when the failure was seen.
    digest: u64,
    iter: u64,
}

/// `probe.test=blk-write`.
pub fn write(ctx: &mut Ctx) -> u32 {
    let p = ctx.params;
    match write_pattern(ctx, p.dev, p.lba, p.count, p.seed) {
        Err(rc) => rc,
        Ok((w, f)) => {
            let flush = f.map_or("skipped", Outcome::name);
            out!(
                "PROBE blk-write dev={} lba={} count={} status={} flush={}",
                p.dev,
                p.lba,
                p.count,
                w.name(),
                flush
            );
            u32::from(w != Outcome::Ok || f.is_some_and(|f| f != Outcome::Ok))
        }
    }
}

/// `probe.test=blk-read`.
pub fn read(ctx: &mut Ctx) -> u32 {
    let p = ctx.params;
    match read_pattern(ctx, p.dev, p.lba, p.count, p.seed, false) {
        Err(rc) => rc,
        Ok((o, bad, _)) => {
            let mut l = Line::new();
            let _ = write!(
                l,
                "PROBE blk-read dev={} lba={} count={} status={}",
                p.dev,
                p.lba,
                p.count,
                o.name()
            );
            if let Ok(d) = ctx.disk(p.dev) {
                let _ = write!(
                    l,
                    " irq={} irqs={} ticks={}",
                    if d.irq_mode() { "on" } else { "off" },
                    d.irq_count(),
                    arch::irq_count(arch::TIMER_VECTOR)
                );
            }
            if o == Outcome::Ok {
                match bad {
                    None => {
                        let _ = write!(l, " match=yes");
                    }
                    Some(b) => {
                        let _ = write!(l, " match=no first_bad={}", b);
                    }
                }
            }
            l.finish();
            u32::from(o != Outcome::Ok || bad.is_some())
        }
    }
}

/// `probe.test=blk-id`: the GET_ID string.
pub fn id(ctx: &mut Ctx) -> u32 {
    let dev = ctx.params.dev;
    let Some(mut buf) = ctx.take_scratch(SECTOR) else {
        return 1;
    };
    let addr = buf.addr;
    buf.bytes()[..20].fill(0);
    let rc = match ctx.disk(dev) {
        Err(e) => disk_error("blk-id", dev, e),
        Ok(disk) => {
            let o = disk.run(ReqType::GetId, 0, addr, 20, TIMEOUT_MS);
            let capacity = disk.capacity;
            let ro = disk.read_only();
            let blk_size = disk.blk_size.unwrap_or(512);
            let id = &buf.bytes()[..20];
            let len = id.iter().position(|&c| c == 0).unwrap_or(20);
            let mut l = Line::new();
            let _ = write!(
                l,
                "PROBE blk-id dev={} status={} sectors={} blk_size={} ro={} id=",
                dev,
                o.name(),
                capacity,
                blk_size,
                u8::from(ro)
            );
            if o == Outcome::Ok {
                l.push_bytes(&id[..len]);
            }
            l.finish();
            u32::from(o != Outcome::Ok)
        }
    };
    ctx.put_scratch(buf);
    rc
}

/// `probe.test=io-loop`: write, flush, read back and verify `probe.count`
/// sectors from `probe.lba` with seed `probe.seed + iteration`, forever
/// (or `probe.loops` times, or until the power button). Every failure is
/// reported with the status the device returned.
pub fn io_loop(ctx: &mut Ctx) -> u32 {
    let p = ctx.params;
    let count = p.count.clamp(1, CHUNK);
    let ged = ctx.p.ged_irq.and_then(|i| ctx.apic.route(i));
    let ged_base = ged.map(arch::irq_count);
    if let Err(e) = ctx.disk(p.dev) {
        return disk_error("io-loop", p.dev, e);
    }
    out!(
        "PROBE io-loop dev={} lba={} count={} start",
        p.dev,
        p.lba,
        count
    );
    let (mut iters, mut errors) = (0u64, 0u64);
    let mut next_report = now_ns() + 1_000_000_000;
    // The first failed read's buffer, checked once an iteration succeeds again (by then
    // anything the storage still owed that read has come): it must not have changed.
    let mut held: Option<HeldRead> = None;
    // The buffer held last, back from its check: it becomes the scratch buffer when the
    // next one is held, so that holding allocates at most one buffer in the whole loop.
    let mut spare: Option<DmaBuf> = None;
    loop {
        let seed = p.seed.wrapping_add(iters) & 0xff_ffff;
        let mut failed = false;
        match write_pattern(ctx, p.dev, p.lba, count, seed) {
            Err(rc) => return rc,
            Ok((w, f)) => {
                if w != Outcome::Ok {
                    out!(
                        "PROBE io-error iter={} op=write lba={} status={}{}",
                        iters,
                        p.lba,
                        w.name(),
                        other(w)
                    );
                    failed = true;
                } else if let Some(f) = f.filter(|&f| f != Outcome::Ok) {
                    out!(
                        "PROBE io-error iter={} op=flush status={}{}",
                        iters,
                        f.name(),
                        other(f)
                    );
                    failed = true;
                }
            }
        }
        if !failed {
            match read_pattern(ctx, p.dev, p.lba, count, seed, held.is_none()) {
                Err(rc) => return rc,
                Ok((o, bad, kept)) => {
                    if let Some(mut buf) = kept {
                        if let Some(s) = spare.take() {
                            ctx.put_scratch(s);
                        }
                        let digest =
                            fnv1a(buf.bytes()[..(count as usize) * SECTOR].iter().copied());
                        held = Some(HeldRead {
                            buf,
                            digest,
                            iter: iters,
                        });
                    }
                    if o != Outcome::Ok {
                        out!(
                            "PROBE io-error iter={} op=read lba={} status={}{}",
                            iters,
                            p.lba,
                            o.name(),
                            other(o)
                        );
                        failed = true;
                    } else if let Some(b) = bad {
                        out!("PROBE io-error iter={} op=verify first_bad={}", iters, b);
                        failed = true;
                    }
                }
            }
        }
        if !failed {
            if let Some(mut h) = held.take() {
                // Written to after the guest saw the read fail?
                if fnv1a(h.buf.bytes()[..(count as usize) * SECTOR].iter().copied()) != h.digest {
                    out!("PROBE io-late-data iter={} lba={}", h.iter, p.lba);
                    failed = true;
                }
                spare = Some(h.buf);
            }
        }
        errors += u64::from(failed);
        iters += 1;
        let stop_button = matches!((ged, ged_base), (Some(v), Some(b)) if arch::irq_count(v) != b);
        if now_ns() >= next_report || stop_button || (p.loops != 0 && iters >= p.loops) {
            out!("PROBE io-loop iters={} errors={}", iters, errors);
            next_report = now_ns() + 1_000_000_000;
        }
        if stop_button {
            out!("PROBE power-button");
            break;
        }
        if p.loops != 0 && iters >= p.loops {
            break;
        }
    }
    u32::from(errors != 0)
}

/// ` raw=N` for unexpected status bytes.
fn other(o: Outcome) -> OtherStatus {
    OtherStatus(o)
}

struct OtherStatus(Outcome);

impl core::fmt::Display for OtherStatus {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Outcome::Other(x) => write!(f, " raw={}", x),
            _ => Ok(()),
        }
    }
}
