//! virtio-blk driver: one request queue, up to `MAX_INFLIGHT` requests in
//! flight, completions by polling or by interrupt (`probe.irq`).

use super::apic::Apic;
use super::arch;
use super::mem::{Allocator, DmaBuf};
use super::platform::VirtioSlot;
use super::timer::now_ns;
use super::virtio::{InitError, Mmio, Queue, Segment};
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

/// Most requests in flight.
pub const MAX_INFLIGHT: usize = 32;
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

/// A virtio-blk device.
pub struct Blk {
    /// Register window.
    pub mmio: Mmio,
    queue: Queue,
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
    irq: Option<IrqState>,
    /// Per slot: 16-byte header at `16 * slot`, status byte at `512 + slot`.
    slots: DmaBuf,
    busy: [bool; MAX_INFLIGHT],
    head_slot: [u8; 256],
}

impl Blk {
    /// Brings up the device in `slot`; with `irq`, routes its interrupt.
    pub fn init(
        slot: &VirtioSlot,
        alloc: &mut Allocator,
        apic: &Apic,
        irq: bool,
    ) -> Result<Self, InitError> {
        let mmio = Mmio { base: slot.base };
        match mmio.probe()? {
            0 => return Err(InitError::Empty),
            2 => {}
            _ => return Err(InitError::NotVirtio),
        }
        let wanted =
            feature::SIZE_MAX | feature::SEG_MAX | feature::RO | feature::BLK_SIZE | feature::FLUSH;
        let features = mmio.negotiate(wanted)?;
        let queue = Queue::setup(mmio, 0, alloc)?;
        let slots = alloc.alloc(512 + MAX_INFLIGHT).ok_or(InitError::NoMemory)?;
        let has = |f: u64| features & f != 0;
        let mut blk = Blk {
            mmio,
            queue,
            features,
            capacity: mmio.config64(0),
            size_max: has(feature::SIZE_MAX)
                .then(|| mmio.config32(8))
                .filter(|&v| v >= 512),
            seg_max: has(feature::SEG_MAX)
                .then(|| mmio.config32(12))
                .filter(|&v| v >= 1),
            blk_size: has(feature::BLK_SIZE).then(|| mmio.config32(20)),
            irq: None,
            slots,
            busy: [false; MAX_INFLIGHT],
            head_slot: [NO_SLOT; 256],
        };
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
        let by_queue = usize::from(self.queue.size()).saturating_sub(2).max(1);
        self.seg_max
            .map_or(by_queue, |v| (v as usize).min(by_queue))
    }

    /// Largest request the device accepts in one chain (sectors).
    pub fn max_request_sectors(&self) -> u64 {
        ((self.seg_len() * self.max_segs()) / 512).min(8192) as u64
    }

    /// Requests that fit in the queue at once with `bytes` each.
    pub fn max_depth(&self, bytes: usize) -> usize {
        let segs = bytes.div_ceil(self.seg_len()).max(1) + 2;
        (usize::from(self.queue.size()) / segs).clamp(1, MAX_INFLIGHT)
    }

    /// Queues a request (data at physical `buf`, `len` bytes) and notifies.
    /// Returns its slot, or `None` if no slot or descriptors are free.
    pub fn submit(&mut self, kind: ReqType, sector: u64, buf: u64, len: usize) -> Option<usize> {
        let slot = self.busy.iter().position(|b| !b)?;
        let hdr = self.slots.addr + 16 * slot as u64;
        let st = self.slots.addr + 512 + slot as u64;
        {
            let bytes = self.slots.bytes();
            bytes[16 * slot..16 * slot + 4].copy_from_slice(&(kind as u32).to_le_bytes());
            bytes[16 * slot + 4..16 * slot + 8].fill(0);
            bytes[16 * slot + 8..16 * slot + 16].copy_from_slice(&sector.to_le_bytes());
            bytes[512 + slot] = STATUS_UNSET;
        }
        let mut chain: [Segment; 258] = [(0, 0, false); 258];
        chain[0] = (hdr, 16, false);
        let mut n = 1;
        let device_writes = matches!(kind, ReqType::In | ReqType::GetId);
        let seg = self.seg_len();
        let mut off = 0;
        while off < len {
            let l = seg.min(len - off);
            if n >= chain.len() - 1 {
                return None;
            }
            chain[n] = (buf + off as u64, l as u32, device_writes);
            n += 1;
            off += l;
        }
        chain[n] = (st, 1, true);
        n += 1;
        let head = self.queue.push(&chain[..n])?;
        self.head_slot[usize::from(head)] = slot as u8;
        self.busy[slot] = true;
        self.queue.notify();
        Some(slot)
    }

    /// Takes one completion, if any: (slot, outcome).
    pub fn poll(&mut self) -> Option<(usize, Outcome)> {
        let (head, _) = self.queue.pop_used()?;
        let slot = self.head_slot[usize::from(head)];
        if slot == NO_SLOT {
            return Some((usize::MAX, Outcome::Other(0xff)));
        }
        self.head_slot[usize::from(head)] = NO_SLOT;
        let slot = usize::from(slot);
        self.busy[slot] = false;
        let st = self.slots.bytes()[512 + slot];
        Some((slot, Outcome::from_status(st)))
    }

    /// Acknowledges the device interrupt if the stub saw one (and unmasks
    /// a level-triggered pin, which the stub masked, after that).
    fn service_irq(&mut self) {
        let Some(irq) = self.irq.as_mut() else { return };
        let count = arch::irq_count(irq.vector);
        if count != irq.handled {
            irq.handled = count;
            self.mmio.ack_interrupt();
            if let Some((base, pin)) = irq.level_pin {
                Apic::unmask_level(irq.vector, irq.line, base, pin);
            }
        }
    }

    /// Waits for one completion until `deadline_ns` (timer::now_ns scale).
    pub fn wait(&mut self, deadline_ns: u64) -> Option<(usize, Outcome)> {
        loop {
            if let Some(c) = self.poll() {
                return Some(c);
            }
            if now_ns() >= deadline_ns {
                return None;
            }
            if self.irq.is_some() {
                let seen = arch::irq_total();
                self.service_irq();
                if self.queue.has_used() {
                    continue;
                }
                arch::wait_for_interrupt(seen);
                self.service_irq();
            } else {
                arch::pause();
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

    /// Requests in flight.
    pub fn inflight(&self) -> usize {
        self.busy.iter().filter(|&&b| b).count()
    }
}
