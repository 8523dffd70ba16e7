//! virtio-blk driver: up to `MAX_QUEUES` request queues (VIRTIO_BLK_F_MQ),
//! each with up to `MAX_INFLIGHT` requests in flight, completions by polling
//! or by interrupt (`probe.irq`).
//!
//! A device has one interrupt line for all its queues (virtio-mmio), routed
//! to the boot CPU. Queue 0 is the boot CPU's; blk-bench lends the others to
//! worker CPUs (`wake`), which sleep until the boot CPU, servicing the
//! interrupt, sees completions on their queue and sends them a wake-up IPI.

use super::apic::Apic;
use super::arch;
use super::mem::{Allocator, DmaBuf};
use super::platform::VirtioSlot;
use super::timer::now_ns;
use super::virtio::{InitError, Mmio, Queue, Segment, DESC_NEXT, DESC_WRITE, F_INDIRECT_DESC};
use probe_guest::resource::Irq;

/// virtio-blk feature bits the probe negotiates.
pub mod feature {
    /// VIRTIO_BLK_F_SIZE_MAX.
    pub const SIZE_MAX: u64 = 1 << 1;
    /// VIRTIO_BLK_F_SEG_MAX.
    pub const SEG_MAX: u64 = 1 << 2;
    /// VIRTIO_BLK_F_RO.
    pub const RO: u64 = 1 << 5;
    /// VIRTIO_BLK_F_BLK_SIZE.
    pub const BLK_SIZE: u64 = 1 << 6;
    /// VIRTIO_BLK_F_FLUSH.
    pub const FLUSH: u64 = 1 << 9;
    /// VIRTIO_BLK_F_MQ (config `num_queues`).
    pub const MQ: u64 = 1 << 12;
}

/// Config space offsets (virtio 1.2 section 5.2.4).
mod config {
    pub const CAPACITY: u64 = 0;
    pub const SIZE_MAX: u64 = 8;
    pub const SEG_MAX: u64 = 12;
    pub const BLK_SIZE: u64 = 20;
    pub const NUM_QUEUES: u64 = 34;
}

/// Request types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ReqType {
    /// Read.
    In = 0,
    /// Write.
    Out = 1,
    /// Flush.
    Flush = 4,
    /// Device id string.
    GetId = 8,
}

/// Result of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// VIRTIO_BLK_S_OK.
    Ok,
    /// VIRTIO_BLK_S_IOERR.
    IoErr,
    /// VIRTIO_BLK_S_UNSUPP.
    Unsupp,
    /// Any other status byte the device wrote.
    Other(u8),
    /// No completion before the deadline.
    Timeout,
}

impl Outcome {
    fn from_status(s: u8) -> Self {
        match s {
            0 => Outcome::Ok,
            1 => Outcome::IoErr,
            2 => Outcome::Unsupp,
            x => Outcome::Other(x),
        }
    }

    /// Name printed in `status=`.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::IoErr => "ioerr",
            Outcome::Unsupp => "unsupp",
            Outcome::Other(_) => "bad-status",
            Outcome::Timeout => "timeout",
        }
    }
}

/// Most requests in flight per queue.
pub const MAX_INFLIGHT: usize = 128;
/// Most queues per device.
pub const MAX_QUEUES: usize = 8;
/// Entries of a request's indirect descriptor table (header, data, status).
const INDIRECT_ENTRIES: usize = 16;
/// Per request slot: 16-byte header at +0, status byte at +16, indirect table at +256.
const SLOT_BYTES: usize = 512;
const STATUS_OFF: usize = 16;
const TABLE_OFF: usize = 256;
const NO_SLOT: u8 = 0xff;
const STATUS_UNSET: u8 = 0xee;

#[derive(Clone, Copy)]
struct IrqState {
    vector: u8,
    line: Irq,
    /// For a level-triggered line: I/O APIC base and pin to unmask.
    level_pin: Option<(u64, u32)>,
    handled: u64,
}

/// One request queue and its requests in flight. Used by one CPU at a time.
pub struct BlkQueue {
    queue: Queue,
    slots: DmaBuf,
    free: [u8; MAX_INFLIGHT],
    free_count: usize,
    head_slot: [u8; 256],
    indirect: bool,
    seg_len: usize,
    max_segs: usize,
    unkicked: bool,
}

impl BlkQueue {
    fn new(
        mmio: Mmio,
        index: u32,
        alloc: &mut Allocator,
        indirect: bool,
        seg_len: usize,
        seg_max: Option<u32>,
    ) -> Result<Self, InitError> {
        let queue = Queue::setup(mmio, index, alloc)?;
        let slots = alloc
            .alloc(SLOT_BYTES * MAX_INFLIGHT)
            .ok_or(InitError::NoMemory)?;
        let by_queue = usize::from(queue.size()).saturating_sub(2).max(1);
        let max_segs = seg_max.map_or(by_queue, |v| (v as usize).min(by_queue));
        let mut q = BlkQueue {
            queue,
            slots,
            free: [0; MAX_INFLIGHT],
            free_count: MAX_INFLIGHT,
            head_slot: [NO_SLOT; 256],
            indirect,
            seg_len,
            max_segs,
            unkicked: false,
        };
        for (i, f) in q.free.iter_mut().enumerate() {
            *f = (MAX_INFLIGHT - 1 - i) as u8;
        }
        Ok(q)
    }

    /// Requests of `bytes` each that fit in the queue at once (at most
    /// `MAX_INFLIGHT`): one descriptor each with indirect tables, else
    /// header + data segments + status.
    pub fn max_depth(&self, bytes: usize) -> usize {
        let segs = bytes.div_ceil(self.seg_len).max(1) + 2;
        let per_request = if self.indirect && segs <= INDIRECT_ENTRIES {
            1
        } else {
            segs
        };
        (usize::from(self.queue.size()) / per_request).clamp(1, MAX_INFLIGHT)
    }

    /// Queues a request without notifying the device: its data is `len`
    /// bytes at `base + slot * stride` (`slot` being the request's slot).
    /// Returns the slot, or `None` if no slot or descriptors are free or
    /// the request needs more segments than the device takes.
    pub fn push(
        &mut self,
        kind: ReqType,
        sector: u64,
        base: u64,
        stride: usize,
        len: usize,
    ) -> Option<usize> {
        let slot = usize::from(*self.free[..self.free_count].last()?);
        let data_segs = len.div_ceil(self.seg_len);
        if data_segs > self.max_segs {
            return None;
        }
        let buf = base + (slot * stride) as u64;
        let at = self.slots.addr + (slot * SLOT_BYTES) as u64;
        {
            let b = &mut self.slots.bytes()[slot * SLOT_BYTES..(slot + 1) * SLOT_BYTES];
            b[0..4].copy_from_slice(&(kind as u32).to_le_bytes());
            b[4..8].fill(0);
            b[8..16].copy_from_slice(&sector.to_le_bytes());
            b[STATUS_OFF] = STATUS_UNSET;
        }
        let device_writes = matches!(kind, ReqType::In | ReqType::GetId);
        let seg_len = self.seg_len;
        let n = data_segs + 2;
        let seg = |k: usize| -> Segment {
            if k == 0 {
                (at, 16, false)
            } else if k == n - 1 {
                (at + STATUS_OFF as u64, 1, true)
            } else {
                let off = (k - 1) * seg_len;
                (
                    buf + off as u64,
                    seg_len.min(len - off) as u32,
                    device_writes,
                )
            }
        };
        let head = if self.indirect && n <= INDIRECT_ENTRIES {
            let table = at + TABLE_OFF as u64;
            for k in 0..n {
                let (addr, l, write) = seg(k);
                let mut flags = if k + 1 < n { DESC_NEXT } else { 0 };
                if write {
                    flags |= DESC_WRITE;
                }
                let d = table + 16 * k as u64;
                // SAFETY: entry k < INDIRECT_ENTRIES of this slot's table, in
                // memory this queue allocated and the device does not own yet.
                unsafe {
                    core::ptr::write_volatile(d as *mut u64, addr);
                    core::ptr::write_volatile((d + 8) as *mut u32, l);
                    core::ptr::write_volatile((d + 12) as *mut u16, flags);
                    core::ptr::write_volatile((d + 14) as *mut u16, (k + 1) as u16);
                }
            }
            self.queue.push_indirect(table, n as u32)?
        } else {
            self.queue.push(n, seg)?
        };
        self.head_slot[usize::from(head)] = slot as u8;
        self.free_count -= 1;
        self.unkicked = true;
        Some(slot)
    }

    /// Notifies the device if requests were pushed since the last kick.
    pub fn kick(&mut self) {
        if self.unkicked {
            self.unkicked = false;
            self.queue.notify();
        }
    }

    /// `push` + `kick`.
    pub fn submit(&mut self, kind: ReqType, sector: u64, buf: u64, len: usize) -> Option<usize> {
        let slot = self.push(kind, sector, buf, 0, len)?;
        self.kick();
        Some(slot)
    }

    /// Takes one completion, if any: (slot, outcome). A head the driver did
    /// not publish gives slot `usize::MAX`.
    pub fn poll(&mut self) -> Option<(usize, Outcome)> {
        let (head, _) = self.queue.pop_used()?;
        let slot = self.head_slot[usize::from(head)];
        if slot == NO_SLOT {
            return Some((usize::MAX, Outcome::Other(0xff)));
        }
        self.head_slot[usize::from(head)] = NO_SLOT;
        self.free[self.free_count] = slot;
        self.free_count += 1;
        let st = self.slots.bytes()[usize::from(slot) * SLOT_BYTES + STATUS_OFF];
        Some((usize::from(slot), Outcome::from_status(st)))
    }

    /// Whether the device completed requests not yet polled.
    pub fn has_used(&self) -> bool {
        self.queue.has_used()
    }

    /// Requests in flight.
    pub fn inflight(&self) -> usize {
        MAX_INFLIGHT - self.free_count
    }

    /// Where the used index is, and the index polled up to (see `wake`).
    pub fn used_state(&self) -> (u64, u16) {
        (self.queue.used_idx_addr(), self.queue.last_used())
    }
}

/// A virtio-blk device.
pub struct Blk {
    /// Register window.
    pub mmio: Mmio,
    /// Negotiated features.
    pub features: u64,
    /// Capacity in 512-byte sectors.
    pub capacity: u64,
    /// Largest data segment (SIZE_MAX), if limited.
    pub size_max: Option<u32>,
    /// Most data segments per request (SEG_MAX), if limited.
    pub seg_max: Option<u32>,
    /// Logical block size (BLK_SIZE), if offered.
    pub blk_size: Option<u32>,
    /// Queues the device has (`num_queues` with MQ negotiated, else 1).
    pub device_queues: u32,
    /// The device's queue size (queue 0's QueueNumMax, at most 256).
    pub queue_size: u16,
    irq: Option<IrqState>,
    /// The queues, each in memory of its own (so that a worker CPU using one
    /// does not alias the `&mut Blk` of the boot CPU).
    queues: [*mut BlkQueue; MAX_QUEUES],
    nq: usize,
}

impl Blk {
    /// Brings up the device in `slot` with up to `queues` request queues
    /// (more than one only if the device offers VIRTIO_BLK_F_MQ); with
    /// `irq`, routes its interrupt.
    pub fn init(
        slot: &VirtioSlot,
        alloc: &mut Allocator,
        apic: &Apic,
        irq: bool,
        queues: usize,
    ) -> Result<Self, InitError> {
        let mmio = Mmio { base: slot.base };
        match mmio.probe()? {
            0 => return Err(InitError::Empty),
            2 => {}
            _ => return Err(InitError::NotVirtio),
        }
        let mut wanted = feature::SIZE_MAX
            | feature::SEG_MAX
            | feature::RO
            | feature::BLK_SIZE
            | feature::FLUSH
            | F_INDIRECT_DESC;
        if queues > 1 {
            wanted |= feature::MQ;
        }
        let features = mmio.negotiate(wanted)?;
        let has = |f: u64| features & f != 0;
        let size_max = has(feature::SIZE_MAX)
            .then(|| mmio.config32(config::SIZE_MAX))
            .filter(|&v| v >= 512);
        let seg_max = has(feature::SEG_MAX)
            .then(|| mmio.config32(config::SEG_MAX))
            .filter(|&v| v >= 1);
        let device_queues = if has(feature::MQ) {
            u32::from(mmio.config16(config::NUM_QUEUES)).max(1)
        } else {
            1
        };
        let seg_len = size_max.map_or(4 << 20, |v| v as usize) & !511;
        let indirect = has(F_INDIRECT_DESC);
        let mut blk = Blk {
            mmio,
            features,
            capacity: mmio.config64(config::CAPACITY),
            size_max,
            seg_max,
            blk_size: has(feature::BLK_SIZE).then(|| mmio.config32(config::BLK_SIZE)),
            device_queues,
            queue_size: 0,
            irq: None,
            queues: [core::ptr::null_mut(); MAX_QUEUES],
            nq: 0,
        };
        let want = queues.clamp(1, MAX_QUEUES).min(device_queues as usize);
        for k in 0..want {
            let q = match BlkQueue::new(mmio, k as u32, alloc, indirect, seg_len, seg_max) {
                Ok(q) => q,
                // Queue 0 is required; fewer extra queues than asked is not an error.
                Err(e) if k == 0 => return Err(e),
                Err(_) => break,
            };
            if k == 0 {
                blk.queue_size = q.queue.size();
            }
            let mem = alloc
                .alloc(core::mem::size_of::<BlkQueue>())
                .ok_or(InitError::NoMemory)?;
            let ptr = mem.addr as *mut BlkQueue;
            // SAFETY: fresh memory from the allocator, 4 KiB aligned, large
            // enough, used for nothing else.
            unsafe { ptr.write(q) };
            blk.queues[k] = ptr;
            blk.nq = k + 1;
        }
        if irq {
            if let Some(line) = slot.irq {
                if let Some(vector) = apic.route(line) {
                    let level_pin = if line.edge {
                        None
                    } else {
                        apic.pin_of(line.gsi)
                    };
                    blk.irq = Some(IrqState {
                        vector,
                        line,
                        level_pin,
                        handled: arch::irq_count(vector),
                    });
                }
            }
        }
        mmio.driver_ok();
        Ok(blk)
    }

    /// Queues set up.
    pub fn queues(&self) -> usize {
        self.nq
    }

    /// Queue `k` (< `queues()`), for the boot CPU. Must not be used while the
    /// queue is lent to a worker CPU (`queue_ptr`).
    pub fn queue(&mut self, k: usize) -> &mut BlkQueue {
        assert!(k < self.nq);
        // SAFETY: set up in `init`; the boot CPU only uses queues not lent.
        unsafe { &mut *self.queues[k] }
    }

    /// Queue `k` to lend to a worker CPU, which then is its only user until
    /// it hands it back.
    pub fn queue_ptr(&self, k: usize) -> *mut BlkQueue {
        assert!(k < self.nq);
        self.queues[k]
    }

    /// Whether requests take one descriptor each (VIRTIO_F_INDIRECT_DESC).
    pub fn indirect(&self) -> bool {
        self.features & F_INDIRECT_DESC != 0
    }

    /// Whether completions are interrupt-driven.
    pub fn irq_mode(&self) -> bool {
        self.irq.is_some()
    }

    /// Interrupts taken on the device's vector so far (0 when polling).
    pub fn irq_count(&self) -> u64 {
        self.irq.map_or(0, |i| arch::irq_count(i.vector))
    }

    /// Whether the device is read-only.
    pub fn read_only(&self) -> bool {
        self.features & feature::RO != 0
    }

    /// Whether FLUSH was negotiated.
    pub fn has_flush(&self) -> bool {
        self.features & feature::FLUSH != 0
    }

    fn seg_len(&self) -> usize {
        self.size_max.map_or(4 << 20, |v| v as usize) & !511
    }

    fn max_segs(&self) -> usize {
        let by_queue = usize::from(self.queue_size).saturating_sub(2).max(1);
        self.seg_max
            .map_or(by_queue, |v| (v as usize).min(by_queue))
    }

    /// Largest request the device accepts in one chain (sectors).
    pub fn max_request_sectors(&self) -> u64 {
        ((self.seg_len() * self.max_segs()) / 512).min(8192) as u64
    }

    /// Requests of `bytes` each that fit in a queue at once.
    pub fn max_depth(&mut self, bytes: usize) -> usize {
        self.queue(0).max_depth(bytes)
    }

    /// Queues a request on queue 0 (data at physical `buf`, `len` bytes) and
    /// notifies. Returns its slot, or `None` if no slot or descriptors are free.
    pub fn submit(&mut self, kind: ReqType, sector: u64, buf: u64, len: usize) -> Option<usize> {
        self.queue(0).submit(kind, sector, buf, len)
    }

    /// Acknowledges the device interrupt if the stub saw one (and unmasks a
    /// level-triggered pin, which the stub masked, after that); then wakes
    /// the worker CPUs asleep on a queue that has completions.
    pub fn service_irq(&mut self) {
        let Some(irq) = self.irq.as_mut() else { return };
        let count = arch::irq_count(irq.vector);
        if count != irq.handled {
            irq.handled = count;
            self.mmio.ack_interrupt();
            if let Some((base, pin)) = irq.level_pin {
                Apic::unmask_level(irq.vector, irq.line, base, pin);
            }
            wake::forward();
        }
    }

    /// Waits until `q` (a queue of this device the boot CPU uses) has a
    /// completion (true) or `deadline_ns` passes (false), servicing the
    /// interrupt meanwhile.
    pub fn wait_queue(&mut self, q: &BlkQueue, deadline_ns: u64) -> bool {
        loop {
            self.service_irq();
            if q.has_used() {
                return true;
            }
            if now_ns() >= deadline_ns {
                return false;
            }
            self.idle(&|| q.has_used());
        }
    }

    /// Interrupt-driven: services the interrupt and, unless `ready()`, sleeps
    /// until the next interrupt on this CPU (device, tick, IPI). Polling:
    /// spins once. Callers re-check their condition and deadline after it.
    pub fn idle(&mut self, ready: &dyn Fn() -> bool) {
        if self.irq.is_some() {
            let seen = arch::irq_total();
            self.service_irq();
            if ready() {
                return;
            }
            arch::wait_for_interrupt(seen);
        } else {
            arch::pause();
        }
    }

    /// Waits for one completion on queue 0 until `deadline_ns` (timer::now_ns scale).
    pub fn wait(&mut self, deadline_ns: u64) -> Option<(usize, Outcome)> {
        let q: *mut BlkQueue = self.queues[0];
        loop {
            // SAFETY: queue 0 is never lent; `wait_queue` does not touch it.
            if let Some(c) = unsafe { &mut *q }.poll() {
                return Some(c);
            }
            if !self.wait_queue(unsafe { &*q }, deadline_ns) {
                return None;
            }
        }
    }

    /// Runs one request synchronously (split into chunks of at most
    /// `max_request_sectors` for IN/OUT). `timeout_ms` per chunk.
    pub fn run(
        &mut self,
        kind: ReqType,
        sector: u64,
        buf: u64,
        len: usize,
        timeout_ms: u64,
    ) -> Outcome {
        let chunk = match kind {
            ReqType::In | ReqType::Out => (self.max_request_sectors() as usize * 512).max(512),
            _ => len.max(1),
        };
        let mut off = 0;
        loop {
            let l = chunk.min(len - off);
            let Some(slot) = self.submit(kind, sector + (off / 512) as u64, buf + off as u64, l)
            else {
                return Outcome::Other(0xfe);
            };
            let deadline = now_ns() + timeout_ms * 1_000_000;
            let outcome = loop {
                match self.wait(deadline) {
                    Some((s, o)) if s == slot => break o,
                    Some(_) => continue,
                    None => return Outcome::Timeout,
                }
            };
            if outcome != Outcome::Ok {
                return outcome;
            }
            off += l;
            if off >= len {
                return Outcome::Ok;
            }
        }
    }
}

/// Waking worker CPUs that sleep on a lent queue. A worker announces, before
/// it sleeps, the used index it has polled up to; the boot CPU, after each
/// device interrupt it acknowledged, sends the wake IPI to every sleeper
/// whose queue's used index moved past it. Either the worker sees the
/// completion before sleeping, or the boot CPU sees the announcement after
/// the completion's interrupt: no wake-up is lost.
pub mod wake {
    use super::{BlkQueue, MAX_QUEUES};
    use crate::guest::apic::Apic;
    use crate::guest::arch::{self, WAKE_VECTOR};
    use crate::guest::timer::now_ns;
    use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

    const ASLEEP: u32 = 1 << 16;
    const ICR_FIXED: u32 = 0x4000;

    struct Sleeper {
        /// ASLEEP | polled-up-to used index, or 0 while awake.
        state: AtomicU32,
        /// APIC id + 1 of the worker using the queue (0: not lent).
        apic: AtomicU32,
        /// Address of the queue's used index.
        used_idx: AtomicU64,
    }

    #[allow(clippy::declare_interior_mutable_const)]
    const IDLE: Sleeper = Sleeper {
        state: AtomicU32::new(0),
        apic: AtomicU32::new(0),
        used_idx: AtomicU64::new(0),
    };
    static SLEEPERS: [Sleeper; MAX_QUEUES] = [IDLE; MAX_QUEUES];
    static LAPIC: AtomicU64 = AtomicU64::new(0);

    /// Queue `k` (whose used index is at `used_idx`) is used by the CPU with
    /// APIC id `apic_id`, whose LAPIC registers are at `lapic`.
    pub fn lend(k: usize, apic_id: u32, used_idx: u64, lapic: u64) {
        LAPIC.store(lapic, Ordering::Relaxed);
        let s = &SLEEPERS[k];
        s.state.store(0, Ordering::SeqCst);
        s.used_idx.store(used_idx, Ordering::SeqCst);
        s.apic.store(apic_id + 1, Ordering::SeqCst);
    }

    /// Boot CPU: wakes every sleeper whose queue has completions.
    pub fn forward() {
        for s in SLEEPERS.iter().skip(1) {
            let apic = s.apic.load(Ordering::Relaxed);
            if apic == 0 {
                continue;
            }
            let w = s.state.load(Ordering::SeqCst);
            if w & ASLEEP == 0 {
                continue;
            }
            let addr = s.used_idx.load(Ordering::Relaxed);
            // SAFETY: the used index of a queue set up by `Blk::init`.
            let used = unsafe { core::ptr::read_volatile(addr as *const u16) };
            if used != w as u16
                && s.state
                    .compare_exchange(w, 0, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            {
                Apic::ipi(
                    LAPIC.load(Ordering::Relaxed),
                    apic - 1,
                    ICR_FIXED | u32::from(WAKE_VECTOR),
                );
            }
        }
    }

    /// Worker CPU using queue `k`: waits until `q` has a completion (true) or
    /// `deadline_ns` passes (false); sleeps between wake-ups with `irq`,
    /// else spins.
    pub fn wait(k: usize, q: &BlkQueue, deadline_ns: u64, irq: bool) -> bool {
        let s = &SLEEPERS[k];
        loop {
            if q.has_used() {
                return true;
            }
            if now_ns() >= deadline_ns {
                return false;
            }
            if !irq {
                arch::pause();
                continue;
            }
            let seen = arch::irq_total();
            s.state
                .store(ASLEEP | u32::from(q.used_state().1), Ordering::SeqCst);
            if q.has_used() {
                s.state.store(0, Ordering::SeqCst);
                return true;
            }
            arch::wait_for_interrupt(seen);
            s.state.store(0, Ordering::SeqCst);
        }
    }
}
