// SPDX-License-Identifier: Apache-2.0
//! Test helpers: guest memory and a driver-side view of a split virtqueue, built by hand.

use crate::GuestMemoryMmap;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress};

/// Guest memory of `size` bytes at address 0, made as the VMM makes it (see
/// [`shared_memory`]).
pub(crate) fn guest_memory(size: usize) -> GuestMemoryMmap {
    shared_memory(&[(GuestAddress(0), size)])
}

/// Guest memory of the regions `ranges` as the VMM makes guest RAM: one memfd, mapped
/// shared, the regions back to back in it (so that block reads can go straight to it).
pub(crate) fn shared_memory(ranges: &[(GuestAddress, usize)]) -> GuestMemoryMmap {
    use std::os::fd::FromRawFd;
    // SAFETY: a NUL-terminated name; the result is checked.
    let fd = unsafe { libc::memfd_create(c"test-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just created and is owned by nothing else.
    let file = std::sync::Arc::new(unsafe { std::fs::File::from_raw_fd(fd) });
    file.set_len(ranges.iter().map(|&(_, len)| len as u64).sum())
        .unwrap();
    let mut offset = 0;
    GuestMemoryMmap::from_ranges_with_files(ranges.iter().map(|&(addr, len)| {
        let f = vm_memory::FileOffset::from_arc(file.clone(), offset);
        offset += len as u64;
        (addr, len, Some(f))
    }))
    .unwrap()
}

/// Descriptor flags (the bindings declare them as `u32`; descriptors hold a `u16`).
pub(crate) const F_NEXT: u16 = VRING_DESC_F_NEXT as u16;
pub(crate) const F_WRITE: u16 = VRING_DESC_F_WRITE as u16;
pub(crate) const F_INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

/// The driver's side of a split virtqueue in guest memory.
pub(crate) struct DriverQueue {
    mem: GuestMemoryMmap,
    pub desc: GuestAddress,
    pub avail: GuestAddress,
    pub used: GuestAddress,
    pub size: u16,
    avail_idx: u16,
}

impl DriverQueue {
    /// Lays out the descriptor table at `base`, then the available and used rings.
    pub fn new(mem: &GuestMemoryMmap, base: u64, size: u16) -> Self {
        let desc = GuestAddress(base);
        let avail = GuestAddress(base + 16 * u64::from(size));
        let used_off = (base + 16 * u64::from(size) + 6 + 2 * u64::from(size)).next_multiple_of(4);
        let q = Self {
            mem: mem.clone(),
            desc,
            avail,
            used: GuestAddress(used_off),
            size,
            avail_idx: 0,
        };
        let ring_end = used_off + 6 + 8 * u64::from(size);
        q.mem
            .write_slice(&vec![0u8; (ring_end - base) as usize], desc)
            .unwrap();
        q
    }

    /// Writes descriptor `idx`.
    pub fn set_desc(&self, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.write_desc_at(self.desc, idx, addr, len, flags, next);
    }

    /// Writes entry `idx` of a descriptor table at `table` (e.g. an indirect one).
    pub fn write_desc_at(
        &self,
        table: GuestAddress,
        idx: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let at = table.0 + 16 * u64::from(idx);
        self.mem.write_obj(addr, GuestAddress(at)).unwrap();
        self.mem.write_obj(len, GuestAddress(at + 8)).unwrap();
        self.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
        self.mem.write_obj(next, GuestAddress(at + 14)).unwrap();
    }

    /// Makes the chain at `head` available.
    pub fn push(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        self.mem
            .write_obj(head, GuestAddress(self.avail.0 + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(self.avail.0 + 2))
            .unwrap();
    }

    /// Overwrites the available index (to fake a hostile driver).
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.avail_idx = idx;
        self.mem
            .write_obj(idx, GuestAddress(self.avail.0 + 2))
            .unwrap();
    }

    /// Sets `used_event` (EVENT_IDX).
    pub fn set_used_event(&self, v: u16) {
        self.mem
            .write_obj(v, GuestAddress(self.avail.0 + 4 + 2 * u64::from(self.size)))
            .unwrap();
    }

    /// The used index.
    pub fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(self.used.0 + 2)).unwrap()
    }

    /// Used element `i`: (descriptor id, written length).
    pub fn used_elem(&self, i: u16) -> (u32, u32) {
        let at = self.used.0 + 4 + 8 * u64::from(i % self.size);
        (
            self.mem.read_obj(GuestAddress(at)).unwrap(),
            self.mem.read_obj(GuestAddress(at + 4)).unwrap(),
        )
    }
}
