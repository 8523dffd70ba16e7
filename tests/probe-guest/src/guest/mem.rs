//! Physical memory as the guest sees it (identity-mapped first 4 GiB) and a
//! bump allocator for DMA buffers in usable RAM above the image.

use probe_guest::bootinfo::{BootInfo, E820_RAM};
use probe_guest::physmem::PhysMem;

/// Highest address the page tables map.
const MAPPED_END: u64 = 1 << 32;
/// RAM above this is not used for buffers (the 3-4 GiB hole is MMIO).
const RAM_LIMIT: u64 = 0xC000_0000;

extern "C" {
    static _image_end: u8;
}

/// The identity map as [`PhysMem`].
pub struct Identity;

impl PhysMem for Identity {
    fn read(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let end = addr.checked_add(len as u64)?;
        if addr == 0 || end > MAPPED_END {
            return None;
        }
        // SAFETY: the range is inside the identity map set up in entry.S,
        // and nothing in the guest writes memory that is read this way
        // (firmware tables, boot information) while the slice lives.
        Some(unsafe { core::slice::from_raw_parts(addr as *const u8, len) })
    }
}

/// A physically contiguous, zeroed buffer owned by the guest forever.
pub struct DmaBuf {
    /// Physical (= virtual) address.
    pub addr: u64,
    /// Length in bytes.
    pub len: usize,
}

impl DmaBuf {
    /// The buffer's bytes.
    pub fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the allocator hands out disjoint ranges of usable RAM that
        // nothing else uses, and `&mut self` makes this the only view.
        unsafe { core::slice::from_raw_parts_mut(self.addr as *mut u8, self.len) }
    }
}

/// Bump allocator over the largest usable RAM range above the image.
pub struct Allocator {
    next: u64,
    end: u64,
}

impl Allocator {
    /// Picks the largest usable range above the image end, below 3 GiB.
    pub fn new(info: &BootInfo) -> Self {
        // Only the address of the linker symbol is taken.
        let image_end = core::ptr::addr_of!(_image_end) as u64;
        let mut best = (0, 0);
        for r in info.regions().iter().filter(|r| r.kind == E820_RAM) {
            let start = r.addr.max(image_end);
            let end = r.addr.saturating_add(r.size).min(RAM_LIMIT);
            if end > start && end - start > best.1 - best.0 {
                best = (start, end);
            }
        }
        Self {
            next: (best.0 + 0xfff) & !0xfff,
            end: best.1,
        }
    }

    /// A zeroed buffer of `len` bytes aligned to 4 KiB, if RAM allows.
    pub fn alloc(&mut self, len: usize) -> Option<DmaBuf> {
        let mut b = self.alloc_uninit(len)?;
        b.bytes().fill(0);
        Some(b)
    }

    /// A buffer of `len` bytes aligned to 4 KiB holding whatever RAM held (for
    /// callers that write all of it first, such as mem-walk's pages).
    pub fn alloc_uninit(&mut self, len: usize) -> Option<DmaBuf> {
        let addr = self.next;
        let end = addr.checked_add(len as u64)?;
        if end > self.end {
            return None;
        }
        self.next = (end + 0xfff) & !0xfff;
        Some(DmaBuf { addr, len })
    }

    /// Bytes still free.
    pub fn available(&self) -> u64 {
        self.end.saturating_sub(self.next)
    }
}
