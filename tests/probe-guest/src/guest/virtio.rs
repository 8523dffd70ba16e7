//! virtio-mmio (version 2, "modern") transport and split virtqueues.

use super::arch::{mmio_read16, mmio_read32, mmio_write32};
use super::mem::{Allocator, DmaBuf};
use core::sync::atomic::{fence, Ordering};

/// virtio-mmio register offsets.
pub mod reg {
    /// "virt".
    pub const MAGIC: u64 = 0x000;
    /// 2 for modern devices.
    pub const VERSION: u64 = 0x004;
    /// Device type (2 = block, 0 = empty slot).
    pub const DEVICE_ID: u64 = 0x008;
    /// Vendor id.
    pub const VENDOR_ID: u64 = 0x00c;
    /// Device features (window selected by DEVICE_FEATURES_SEL).
    pub const DEVICE_FEATURES: u64 = 0x010;
    /// Device features window select.
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    /// Driver features.
    pub const DRIVER_FEATURES: u64 = 0x020;
    /// Driver features window select.
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    /// Queue select.
    pub const QUEUE_SEL: u64 = 0x030;
    /// Maximum queue size.
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    /// Queue size.
    pub const QUEUE_NUM: u64 = 0x038;
    /// Queue ready.
    pub const QUEUE_READY: u64 = 0x044;
    /// Queue notify.
    pub const QUEUE_NOTIFY: u64 = 0x050;
    /// Interrupt status.
    pub const INTERRUPT_STATUS: u64 = 0x060;
    /// Interrupt acknowledge.
    pub const INTERRUPT_ACK: u64 = 0x064;
    /// Device status.
    pub const STATUS: u64 = 0x070;
    /// Descriptor table address, low.
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    /// Descriptor table address, high.
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    /// Available ring address, low.
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    /// Available ring address, high.
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    /// Used ring address, low.
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    /// Used ring address, high.
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    /// Configuration generation.
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    /// Device configuration space.
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits.
pub mod status {
    /// ACKNOWLEDGE.
    pub const ACK: u32 = 1;
    /// DRIVER.
    pub const DRIVER: u32 = 2;
    /// DRIVER_OK.
    pub const DRIVER_OK: u32 = 4;
    /// FEATURES_OK.
    pub const FEATURES_OK: u32 = 8;
    /// DEVICE_NEEDS_RESET.
    pub const NEEDS_RESET: u32 = 64;
    /// FAILED.
    pub const FAILED: u32 = 128;
}

/// VIRTIO_F_VERSION_1.
pub const F_VERSION_1: u64 = 1 << 32;
/// VIRTIO_F_INDIRECT_DESC (a descriptor may point at a table of descriptors).
pub const F_INDIRECT_DESC: u64 = 1 << 28;
const MAGIC_VALUE: u32 = 0x7472_6976;

/// Why a device could not be brought up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitError {
    /// Wrong magic value.
    NotVirtio,
    /// Version 1 (legacy) or unknown.
    Version(u32),
    /// Empty slot (device id 0).
    Empty,
    /// The device refused FEATURES_OK.
    FeaturesRejected,
    /// The device does not offer VIRTIO_F_VERSION_1.
    NoVersion1,
    /// Queue 0 missing or already live.
    BadQueue,
    /// Out of guest memory for the rings.
    NoMemory,
}

/// A virtio-mmio register window.
#[derive(Clone, Copy, Debug)]
pub struct Mmio {
    /// Base address.
    pub base: u64,
}

impl Mmio {
    /// Reads a 32-bit register.
    pub fn read(&self, off: u64) -> u32 {
        mmio_read32(self.base + off)
    }

    /// Writes a 32-bit register.
    pub fn write(&self, off: u64, v: u32) {
        mmio_write32(self.base + off, v)
    }

    /// Checks magic and version; returns the device id.
    pub fn probe(&self) -> Result<u32, InitError> {
        if self.read(reg::MAGIC) != MAGIC_VALUE {
            return Err(InitError::NotVirtio);
        }
        let v = self.read(reg::VERSION);
        if v != 2 {
            return Err(InitError::Version(v));
        }
        Ok(self.read(reg::DEVICE_ID))
    }

    /// The 64-bit device feature set.
    pub fn device_features(&self) -> u64 {
        self.write(reg::DEVICE_FEATURES_SEL, 0);
        let lo = self.read(reg::DEVICE_FEATURES);
        self.write(reg::DEVICE_FEATURES_SEL, 1);
        let hi = self.read(reg::DEVICE_FEATURES);
        (u64::from(hi) << 32) | u64::from(lo)
    }

    /// Reset, ACKNOWLEDGE, DRIVER, feature negotiation (keeping `wanted`
    /// and VERSION_1), FEATURES_OK. Returns the negotiated features.
    pub fn negotiate(&self, wanted: u64) -> Result<u64, InitError> {
        self.write(reg::STATUS, 0);
        for _ in 0..1000 {
            if self.read(reg::STATUS) == 0 {
                break;
            }
        }
        self.write(reg::STATUS, status::ACK);
        self.write(reg::STATUS, status::ACK | status::DRIVER);
        let offered = self.device_features();
        if offered & F_VERSION_1 == 0 {
            self.write(reg::STATUS, status::FAILED);
            return Err(InitError::NoVersion1);
        }
        let features = offered & (wanted | F_VERSION_1);
        self.write(reg::DRIVER_FEATURES_SEL, 0);
        self.write(reg::DRIVER_FEATURES, features as u32);
        self.write(reg::DRIVER_FEATURES_SEL, 1);
        self.write(reg::DRIVER_FEATURES, (features >> 32) as u32);
        self.write(
            reg::STATUS,
            status::ACK | status::DRIVER | status::FEATURES_OK,
        );
        if self.read(reg::STATUS) & status::FEATURES_OK == 0 {
            self.write(reg::STATUS, status::FAILED);
            return Err(InitError::FeaturesRejected);
        }
        Ok(features)
    }

    /// Sets DRIVER_OK.
    pub fn driver_ok(&self) {
        self.write(
            reg::STATUS,
            status::ACK | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
    }

    /// Reads a 32-bit config field at `off` in the device config space.
    pub fn config32(&self, off: u64) -> u32 {
        self.read(reg::CONFIG + off)
    }

    /// Reads a 16-bit config field at `off` (16-bit access, as the spec asks).
    pub fn config16(&self, off: u64) -> u16 {
        mmio_read16(self.base + reg::CONFIG + off)
    }

    /// Reads a 64-bit config field consistently (config generation check;
    /// after 1000 changing generations, a device that never settles, the last read).
    pub fn config64(&self, off: u64) -> u64 {
        let mut value = 0;
        for _ in 0..1000 {
            let gen = self.read(reg::CONFIG_GENERATION);
            let lo = self.config32(off);
            let hi = self.config32(off + 4);
            value = (u64::from(hi) << 32) | u64::from(lo);
            if self.read(reg::CONFIG_GENERATION) == gen {
                break;
            }
        }
        value
    }

    /// Acknowledges all pending interrupt causes; returns them.
    pub fn ack_interrupt(&self) -> u32 {
        let isr = self.read(reg::INTERRUPT_STATUS);
        if isr != 0 {
            self.write(reg::INTERRUPT_ACK, isr);
        }
        isr
    }
}

/// Descriptor flag: buffer continues in `next`.
pub const DESC_NEXT: u16 = 1;
/// Descriptor flag: device writes this buffer.
pub const DESC_WRITE: u16 = 2;
/// Descriptor flag: the buffer is a table of descriptors (VIRTIO_F_INDIRECT_DESC).
pub const DESC_INDIRECT: u16 = 4;

/// A split virtqueue in guest memory.
pub struct Queue {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    free: [u16; 256],
    free_count: usize,
    avail_idx: u16,
    last_used: u16,
    mmio: Mmio,
    index: u32,
}

/// A chain element: (address, length, device-writable).
pub type Segment = (u64, u32, bool);

impl Queue {
    /// Allocates the rings for queue `index` (size `min(max, 256)`), hands
    /// them to the device and marks the queue ready.
    pub fn setup(mmio: Mmio, index: u32, alloc: &mut Allocator) -> Result<Self, InitError> {
        mmio.write(reg::QUEUE_SEL, index);
        if mmio.read(reg::QUEUE_READY) != 0 {
            return Err(InitError::BadQueue);
        }
        let max = mmio.read(reg::QUEUE_NUM_MAX);
        if max == 0 {
            return Err(InitError::BadQueue);
        }
        let size = max.min(256) as u16;
        let n = usize::from(size);
        let desc = alloc.alloc(16 * n).ok_or(InitError::NoMemory)?;
        let avail: DmaBuf = alloc.alloc(6 + 2 * n).ok_or(InitError::NoMemory)?;
        let used = alloc.alloc(6 + 8 * n).ok_or(InitError::NoMemory)?;
        mmio.write(reg::QUEUE_NUM, u32::from(size));
        let set = |lo: u64, hi: u64, a: u64| {
            mmio.write(lo, a as u32);
            mmio.write(hi, (a >> 32) as u32);
        };
        set(reg::QUEUE_DESC_LOW, reg::QUEUE_DESC_HIGH, desc.addr);
        set(reg::QUEUE_DRIVER_LOW, reg::QUEUE_DRIVER_HIGH, avail.addr);
        set(reg::QUEUE_DEVICE_LOW, reg::QUEUE_DEVICE_HIGH, used.addr);
        mmio.write(reg::QUEUE_READY, 1);
        let mut q = Queue {
            size,
            desc: desc.addr,
            avail: avail.addr,
            used: used.addr,
            free: [0; 256],
            free_count: n,
            avail_idx: 0,
            last_used: 0,
            mmio,
            index,
        };
        for i in 0..n {
            q.free[i] = (n - 1 - i) as u16;
        }
        Ok(q)
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    fn w16(addr: u64, v: u16) {
        // SAFETY: `addr` is inside a ring this queue allocated.
        unsafe { core::ptr::write_volatile(addr as *mut u16, v) }
    }

    fn r16(addr: u64) -> u16 {
        // SAFETY: `addr` is inside a ring this queue allocated.
        unsafe { core::ptr::read_volatile(addr as *const u16) }
    }

    fn r32(addr: u64) -> u32 {
        // SAFETY: `addr` is inside a ring this queue allocated.
        unsafe { core::ptr::read_volatile(addr as *const u32) }
    }

    fn write_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = self.desc + 16 * u64::from(i);
        // SAFETY: descriptor `i` (< size) lies in this queue's table.
        unsafe {
            core::ptr::write_volatile(d as *mut u64, addr);
            core::ptr::write_volatile((d + 8) as *mut u32, len);
        }
        Self::w16(d + 12, flags);
        Self::w16(d + 14, next);
    }

    /// Publishes a chain of `n` descriptors, the k-th being `seg(k)`, without
    /// notifying. Returns the head index, or `None` when fewer than `n`
    /// descriptors are free.
    pub fn push(&mut self, n: usize, seg: impl Fn(usize) -> Segment) -> Option<u16> {
        if n == 0 || n > self.free_count {
            return None;
        }
        let start = self.free_count - n;
        for k in 0..n {
            let id = self.free[start + k];
            let (addr, len, write) = seg(k);
            let last = k + 1 == n;
            let next = if last { 0 } else { self.free[start + k + 1] };
            let mut flags = if last { 0 } else { DESC_NEXT };
            if write {
                flags |= DESC_WRITE;
            }
            self.write_desc(id, addr, len, flags, next);
        }
        let head = self.free[start];
        self.free_count = start;
        self.publish(head);
        Some(head)
    }

    /// Publishes one descriptor pointing at an indirect table of `entries`
    /// descriptors at `table` (VIRTIO_F_INDIRECT_DESC must be negotiated).
    pub fn push_indirect(&mut self, table: u64, entries: u32) -> Option<u16> {
        if self.free_count == 0 {
            return None;
        }
        self.free_count -= 1;
        let id = self.free[self.free_count];
        self.write_desc(id, table, 16 * entries, DESC_INDIRECT, 0);
        self.publish(id);
        Some(id)
    }

    fn publish(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        Self::w16(self.avail + 4 + 2 * slot, head);
        fence(Ordering::SeqCst);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        Self::w16(self.avail + 2, self.avail_idx);
    }

    /// Tells the device about new buffers (unless it asked not to be told).
    pub fn notify(&self) {
        fence(Ordering::SeqCst);
        if Self::r16(self.used) & 1 == 0 {
            self.mmio.write(reg::QUEUE_NOTIFY, self.index);
        }
    }

    /// Takes one completed chain off the used ring: (head, written length).
    /// Its descriptors go back to the free list.
    pub fn pop_used(&mut self) -> Option<(u16, u32)> {
        let used_idx = Self::r16(self.used + 2);
        if used_idx == self.last_used {
            return None;
        }
        fence(Ordering::SeqCst);
        let slot = u64::from(self.last_used % self.size);
        let e = self.used + 4 + 8 * slot;
        let head = Self::r32(e) as u16;
        let len = Self::r32(e + 4);
        self.last_used = self.last_used.wrapping_add(1);
        // Return the chain to the free list.
        let mut id = head % self.size;
        for _ in 0..self.size {
            if self.free_count < usize::from(self.size) {
                self.free[self.free_count] = id;
                self.free_count += 1;
            }
            let d = self.desc + 16 * u64::from(id);
            let flags = Self::r16(d + 12);
            if flags & DESC_NEXT == 0 {
                break;
            }
            id = Self::r16(d + 14) % self.size;
        }
        Some((head, len))
    }

    /// Whether the device has completed chains not yet popped.
    pub fn has_used(&self) -> bool {
        Self::r16(self.used + 2) != self.last_used
    }

    /// Address of the used ring's index (another CPU may read it to see
    /// whether this queue has completions).
    pub fn used_idx_addr(&self) -> u64 {
        self.used + 2
    }

    /// The used index up to which chains were popped.
    pub fn last_used(&self) -> u16 {
        self.last_used
    }
}
