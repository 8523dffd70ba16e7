// SPDX-License-Identifier: Apache-2.0
//! The memory manager: guest RAM's layout around the 32-bit MMIO hole, its allocation (one
//! memfd, mapped shared: the VMM, KVM and later a postcopy server all see the same pages), its
//! KVM memory slots, and dirty-page tracking for migration (KVM's dirty log for what vCPUs
//! write, the mapping's own bitmap for what devices write).

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;

use devices::GuestMemoryMmap;
use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::VmFd;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{Address, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::layout::{MMIO_HOLE_END, MMIO_HOLE_START};

/// Errors while creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The host refused the mapping (usually too little memory or address space).
    #[error("Cannot allocate {0} MiB of guest memory")]
    Allocate(u64, #[source] vm_memory::mmap::FromRangesError),
    /// The memory file could not be created or sized.
    #[error("Cannot create the {0} MiB guest memory file")]
    MemFd(u64, #[source] std::io::Error),
    /// The pages written over a mapped snapshot could not be dropped.
    #[error("Cannot drop the pages written over the snapshot")]
    Revert(#[source] std::io::Error),
    /// KVM refused to report or change dirty-page logging.
    #[error("Cannot {0} the dirty log of guest memory slot {1}")]
    DirtyLog(&'static str, u32, #[source] kvm_ioctls::Error),
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

/// Allocates `size` bytes of guest RAM: one memfd (sealed against shrinking), populated
/// lazily by the host, mapped shared, each region at its own offset in the file (regions are
/// laid out in the file in guest-physical order, without the hole).
///
/// # Errors
/// Fails when the host cannot provide the file or the mapping.
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let mib = size >> 20;
    // SAFETY: the name is a NUL-terminated string; the flags are valid; the result is checked.
    let fd = unsafe {
        libc::memfd_create(
            c"vmm-guest-ram".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(MemoryError::MemFd(mib, std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).map_err(|e| MemoryError::MemFd(mib, e))?;
    // SAFETY: `fd` is the memfd owned by `file`; F_ADD_SEALS takes an integer.
    if unsafe {
        libc::fcntl(
            fd,
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
        )
    } != 0
    {
        return Err(MemoryError::MemFd(mib, std::io::Error::last_os_error()));
    }
    map_ram(size, Arc::new(file), 0, libc::MAP_SHARED)
}

/// Maps `size` bytes of guest RAM from `file`, its regions back to back from `offset` in
/// guest-physical order (the hole left out), with `flags` (`MAP_SHARED` or `MAP_PRIVATE`;
/// `MAP_NORESERVE` always: the host populates RAM as it is touched).
fn map_ram(
    size: u64,
    file: Arc<File>,
    mut offset: u64,
    flags: i32,
) -> Result<GuestMemoryMmap, MemoryError> {
    let fail = |e: vm_memory::mmap::FromRangesError| MemoryError::Allocate(size >> 20, e);
    let mut regions = Vec::new();
    for (addr, len) in ram_ranges(size) {
        let region = vm_memory::mmap::MmapRegionBuilder::new_with_bitmap(
            len as usize,
            <AtomicBitmap as vm_memory::bitmap::NewBitmap>::with_len(len as usize),
        )
        .with_file_offset(FileOffset::from_arc(file.clone(), offset))
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(flags | libc::MAP_NORESERVE)
        .build()
        .map_err(|e| fail(e.into()))?;
        let region = vm_memory::GuestRegionMmap::new(region, addr)
            .ok_or(vm_memory::mmap::FromRangesError::InvalidGuestRegion)
            .map_err(fail)?;
        regions.push(region);
        offset += len;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| fail(e.into()))
}

/// Guest RAM mapped privately from a snapshot file's RAM section at `ram_offset` (its
/// regions back to back, as [`create_guest_memory`] lays them out in the memfd): pages come
/// from the file when the guest first touches them and are the guest's own once written
/// (copy on write), so a restore loads nothing up front (Firecracker's snapshot restore).
/// The file must not change while the VM runs.
///
/// # Errors
/// The file cannot be mapped.
pub fn map_snapshot_memory(
    size: u64,
    file: &File,
    ram_offset: u64,
) -> Result<GuestMemoryMmap, MemoryError> {
    let file = file
        .try_clone()
        .map_err(|e| MemoryError::MemFd(size >> 20, e))?;
    map_ram(size, Arc::new(file), ram_offset, libc::MAP_PRIVATE)
}

/// Drops every page the VMM or the guest wrote into a snapshot mapped privately
/// ([`map_snapshot_memory`]), so that all of RAM reads as the snapshot again (what building
/// the VM wrote there, boot images and tables, goes).
///
/// # Errors
/// `madvise` refused.
pub fn revert_to_snapshot(mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for region in mem.iter() {
        let start = region.start_addr();
        let host = mem
            .get_host_address(start)
            .map_err(|_| MemoryError::HostAddress(start.raw_value()))?;
        // SAFETY: [host, host + len) is a private file mapping owned by `mem`: MADV_DONTNEED
        // drops its private copies, and the pages read from the file again.
        let ret = unsafe { libc::madvise(host.cast(), region.len() as usize, libc::MADV_DONTNEED) };
        if ret != 0 {
            return Err(MemoryError::Revert(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Whether guest RAM is the VMM's own memory file (not a snapshot mapped privately): only
/// then do the file's holes say which pages were never written, and may it be punched.
pub fn is_own_memory(mem: &GuestMemoryMmap) -> bool {
    mem.iter().all(|r| {
        r.file_offset().is_some_and(|f| {
            // SAFETY: F_GET_SEALS on a descriptor the mapping owns; a regular file fails.
            unsafe { libc::fcntl(f.file().as_raw_fd(), libc::F_GET_SEALS) >= 0 }
        })
    })
}

/// Registers every region of `mem` as a KVM memory slot, numbered from 0.
///
/// # Errors
/// Fails when KVM rejects a slot.
pub fn register_slots(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    set_slots(vm, mem, 0)
}

/// (Re-)registers every region of `mem` as KVM memory slot 0, 1, ... with `flags`.
fn set_slots(vm: &VmFd, mem: &GuestMemoryMmap, flags: u32) -> Result<(), MemoryError> {
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
            flags,
        };
        // SAFETY: the host range [userspace_addr, +memory_size) is a live mapping owned by `mem`,
        // which the VM keeps alive for as long as the VM fd exists.
        unsafe { vm.set_user_memory_region(region) }.map_err(|e| MemoryError::Slot(slot, e))?;
    }
    Ok(())
}

/// The pages written since the last look, per region of guest memory, one bit per 4 KiB
/// page (bit `i % 64` of word `i / 64` is the region's page `i`).
#[derive(Debug, Default)]
pub struct DirtyPages {
    /// (region start, region length, bitmap).
    pub regions: Vec<(GuestAddress, u64, Vec<u64>)>,
}

impl DirtyPages {
    /// How many pages are marked.
    pub fn count(&self) -> u64 {
        self.regions
            .iter()
            .flat_map(|(_, _, b)| b.iter())
            .map(|w| u64::from(w.count_ones()))
            .sum()
    }

    /// The guest-physical address of every marked page, in ascending order.
    pub fn pages(&self) -> impl Iterator<Item = GuestAddress> + '_ {
        self.regions.iter().flat_map(|(start, _, bits)| {
            bits.iter().enumerate().flat_map(move |(w, &word)| {
                (0..64)
                    .filter(move |b| word & (1 << b) != 0)
                    .map(move |b| start.unchecked_add((w as u64 * 64 + b) * PAGE_SIZE))
            })
        })
    }
}

/// The page size of dirty tracking and of the migration stream.
pub const PAGE_SIZE: u64 = 4096;

/// Dirty-page tracking of guest RAM while a migration runs: KVM logs what vCPUs write (the
/// slots are re-registered with `KVM_MEM_LOG_DIRTY_PAGES`), the mapping's bitmap what the
/// VMM's devices write. Usable from any thread (the migration thread): KVM's slot ioctls
/// and `KVM_GET_DIRTY_LOG` are VM-wide.
#[derive(Debug)]
pub struct DirtyLog {
    vm: Arc<VmFd>,
    mem: GuestMemoryMmap,
}

impl DirtyLog {
    /// Starts tracking: from now on every write is logged. The devices' bitmap is cleared
    /// (the first pass sends everything anyway).
    ///
    /// # Errors
    /// KVM refused to log a slot.
    pub fn start(vm: Arc<VmFd>, mem: GuestMemoryMmap) -> Result<Self, MemoryError> {
        for r in mem.iter() {
            region_bitmap(r).reset();
        }
        set_slots(&vm, &mem, KVM_MEM_LOG_DIRTY_PAGES)?;
        Ok(Self { vm, mem })
    }

    /// The pages written since [`start`](Self::start) or the last call, and clears the logs.
    ///
    /// # Errors
    /// KVM refused to report a slot's log.
    pub fn sync(&self) -> Result<DirtyPages, MemoryError> {
        let mut regions = Vec::new();
        for (slot, r) in self.mem.iter().enumerate() {
            let slot = slot as u32;
            let mut bits = self
                .vm
                .get_dirty_log(slot, r.len() as usize)
                .map_err(|e| MemoryError::DirtyLog("read", slot, e))?;
            let devices: Vec<u64> = region_bitmap(r).get_and_reset();
            for (w, d) in bits.iter_mut().zip(devices) {
                *w |= d;
            }
            regions.push((r.start_addr(), r.len(), bits));
        }
        Ok(DirtyPages { regions })
    }
}

impl Drop for DirtyLog {
    /// Stops tracking (KVM stops logging; the slots keep their memory).
    fn drop(&mut self) {
        let _ = set_slots(&self.vm, &self.mem, 0);
    }
}

/// The devices' dirty bitmap of a region (the mapping's, not the trait's slice of it).
fn region_bitmap(r: &vm_memory::GuestRegionMmap<AtomicBitmap>) -> &AtomicBitmap {
    vm_memory::mmap::MmapRegion::bitmap(r)
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
