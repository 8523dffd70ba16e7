// SPDX-License-Identifier: Apache-2.0
//! Guest RAM: its layout around the 32-bit MMIO hole, its allocation and its KVM memory slots.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::layout::{MMIO_HOLE_END, MMIO_HOLE_START};

/// Errors while creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The host refused the anonymous mapping (usually too little memory or address space).
    #[error("Cannot allocate {0} MiB of guest memory")]
    Allocate(u64, #[source] vm_memory::mmap::FromRangesError),
    /// KVM refused a memory slot.
    #[error("Cannot register guest memory slot {0} with KVM")]
    Slot(u32, #[source] kvm_ioctls::Error),
    /// A host address could not be found for a region (should not happen after allocation).
    #[error("Guest memory region at {0:#x} has no host mapping")]
    HostAddress(u64),
}

/// The guest-physical RAM ranges for `size` bytes of RAM: one range below the MMIO hole and,
/// when RAM does not fit there, the rest above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    if size <= MMIO_HOLE_START {
        vec![(GuestAddress(0), size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_HOLE_START),
            (GuestAddress(MMIO_HOLE_END), size - MMIO_HOLE_START),
        ]
    }
}

/// Allocates `size` bytes of guest RAM (anonymous, populated lazily by the host).
///
/// # Errors
/// Fails when the host cannot provide the mapping.
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(size)
        .into_iter()
        .map(|(a, s)| (a, s as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| MemoryError::Allocate(size >> 20, e))
}

/// Registers every region of `mem` as a KVM memory slot, numbered from 0.
///
/// # Errors
/// Fails when KVM rejects a slot.
pub fn register_slots(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let start = region.start_addr();
        let host = mem
            .get_host_address(start)
            .map_err(|_| MemoryError::HostAddress(start.raw_value()))?;
        let region = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: start.raw_value(),
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the host range [userspace_addr, +memory_size) is a live mapping owned by `mem`,
        // which the VM keeps alive for as long as the VM fd exists.
        unsafe { vm.set_user_memory_region(region) }.map_err(|e| MemoryError::Slot(slot, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_ram_is_one_range() {
        assert_eq!(ram_ranges(512 << 20), vec![(GuestAddress(0), 512 << 20)]);
        assert_eq!(ram_ranges(3 << 30), vec![(GuestAddress(0), 3 << 30)]);
    }

    #[test]
    fn large_ram_skips_the_hole() {
        assert_eq!(
            ram_ranges(5 << 30),
            vec![(GuestAddress(0), 3 << 30), (GuestAddress(4 << 30), 2 << 30)]
        );
    }

    #[test]
    fn allocation_matches_layout() {
        let mem = create_guest_memory(64 << 20).unwrap();
        assert_eq!(mem.num_regions(), 1);
        assert_eq!(mem.last_addr(), GuestAddress((64 << 20) - 1));
    }
}
