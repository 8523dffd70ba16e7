// SPDX-License-Identifier: Apache-2.0
//! Guest RAM: its layout around the 32-bit MMIO hole, its allocation and its KVM memory slots.

use devices::GuestMemoryMmap;
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

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
    /// The host refused to leave guest RAM out of core dumps.
    #[error("Cannot leave guest memory out of core dumps")]
    DontDump(#[source] std::io::Error),
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

/// Leaves guest RAM out of core dumps of the VMM (QEMU's `dump-guest-core=off`): a crash
/// dump then holds the VMM's own state, not the guest's data.
///
/// # Errors
/// `madvise` refused a region.
pub fn exclude_from_core_dumps(mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for region in mem.iter() {
        let start = region.start_addr();
        let host = mem
            .get_host_address(start)
            .map_err(|_| MemoryError::HostAddress(start.raw_value()))?;
        // SAFETY: [host, host + len) is a live anonymous mapping owned by `mem`; MADV_DONTDUMP
        // only changes what a core dump includes.
        let ret = unsafe { libc::madvise(host.cast(), region.len() as usize, libc::MADV_DONTDUMP) };
        if ret != 0 {
            return Err(MemoryError::DontDump(std::io::Error::last_os_error()));
        }
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
    fn guest_ram_can_leave_core_dumps() {
        let mem = create_guest_memory(2 << 20).unwrap();
        exclude_from_core_dumps(&mem).unwrap();
        let host = mem.get_host_address(GuestAddress(0)).unwrap() as usize;
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut in_region = false;
        let mut flags = None;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((a, _)) = range.split_once('-') {
                    if let Ok(a) = usize::from_str_radix(a, 16) {
                        in_region = a == host;
                        continue;
                    }
                }
            }
            if in_region {
                if let Some(f) = line.strip_prefix("VmFlags:") {
                    flags = Some(f.to_owned());
                }
            }
        }
        let flags = flags.expect("the region is in smaps");
        assert!(flags.split_whitespace().any(|f| f == "dd"), "{flags}");
    }

    #[test]
    fn allocation_matches_layout() {
        let mem = create_guest_memory(64 << 20).unwrap();
        assert_eq!(mem.num_regions(), 1);
        assert_eq!(mem.last_addr(), GuestAddress((64 << 20) - 1));
    }
}
