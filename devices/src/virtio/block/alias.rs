// SPDX-License-Identifier: Apache-2.0
//! The I/O alias of guest RAM: a second shared mapping of guest RAM's memory file, through
//! which the io_uring engine reads straight into guest memory, and which a yank can cut off.
//!
//! A read the kernel carries out after a yank abandoned it must not land in guest memory: the
//! guest was told the request failed and may have reused its buffer. The kernel writes a
//! read's data through one of two routes, and cutting a request off closes both:
//!
//! 1. a copy to the buffer's address (buffered reads; io-wq or task work copying after the
//!    storage answers): the request's alias range is made inaccessible (`mprotect`
//!    `PROT_NONE`), so a later copy faults (`EFAULT`) instead of reaching guest RAM; the
//!    guest's own mapping, KVM's, is a different range and stays as it is;
//! 2. pages pinned at submission (`O_DIRECT`, FUSE `direct_io`, NFS), written by a device or
//!    a daemon's reply whenever it comes: the request's pages are punched out of the memory
//!    file, so the pinned pages leave guest RAM (they are freed when the kernel unpins them)
//!    and the guest finds zeroed pages there instead.
//!
//! Both only touch what belongs to the request, because only requests whose buffers are
//! whole 4 KiB pages read through the alias (the rest bounce): their bytes are undefined once
//! the request fails. A cut range stays inaccessible (reads over it bounce) until the
//! abandoned request's completion arrives, then it is mapped again (a page that two
//! abandoned requests' buffers share, once both completions have arrived).
//!
//! The alias exists only where guest RAM is a shared file mapping (not a private snapshot
//! mapping, whose written pages the file does not hold) and where the host cannot back that
//! file with huge pages (`shmem_enabled`): punching 4 KiB out of a huge page zeroes it in
//! place, leaving the pinned page in guest RAM.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, OnceLock};

use crate::GuestMemoryMmap;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

/// The page size: what a cut and a punch work in.
pub const PAGE: usize = 4096;

/// One region of guest RAM and its alias.
#[derive(Debug)]
struct Region {
    /// Start of the region in the VM's mapping (the addresses the guest's buffers come as).
    host: usize,
    /// Start of its alias.
    alias: usize,
    len: usize,
    file: Arc<File>,
    /// Where the region starts in the file.
    offset: u64,
}

/// The alias of every region of guest RAM, and the ranges cut off.
#[derive(Debug)]
pub struct IoAlias {
    regions: Vec<Region>,
    /// Alias ranges `(start, len)` cut off by [`IoAlias::cut`], not yet mapped back.
    dead: Vec<(usize, usize)>,
}

/// Whether the host may back a shared memory file with huge pages (`shmem_enabled` of the
/// transparent huge pages, and of each of their sizes, is `always`, `within_size` or
/// `force`, or a size inherits that). Read once per process; an unreadable top-level setting
/// counts as huge (nothing is assumed), a kernel without THP has none.
pub fn shmem_may_be_huge() -> bool {
    static HUGE: OnceLock<bool> = OnceLock::new();
    *HUGE.get_or_init(|| {
        let dir = std::path::Path::new("/sys/kernel/mm/transparent_hugepage");
        if !dir.exists() {
            return false;
        }
        let active = |path: &std::path::Path| -> Option<String> {
            let text = std::fs::read_to_string(path).ok()?;
            let start = text.find('[')? + 1;
            let end = start + text[start..].find(']')?;
            Some(text[start..end].to_string())
        };
        let huge = |mode: &str| matches!(mode, "always" | "within_size" | "force");
        let Some(top) = active(&dir.join("shmem_enabled")) else {
            return true;
        };
        if huge(&top) {
            return true;
        }
        let Ok(sizes) = std::fs::read_dir(dir) else {
            return false;
        };
        sizes.flatten().any(|size| {
            active(&size.path().join("shmem_enabled"))
                .is_some_and(|m| huge(&m) || (m == "inherit" && huge(&top)))
        })
    })
}

/// Maps `len` bytes of `file` from `offset`, shared, where the kernel picks; the mapping's
/// address.
fn map_file(len: usize, file: &File, offset: u64) -> io::Result<usize> {
    let offset = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a new mapping of a file this process holds open, at an address the kernel
    // picks: nothing is replaced.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_NORESERVE,
            file.as_raw_fd(),
            offset,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(addr as usize)
}

/// Sets the access of the alias range `start..start + len` (page-aligned): `PROT_NONE` cuts
/// it off (a copy to it or a pin of it fails with `EFAULT`), read-write maps it back onto
/// the file's pages. The mapping itself stays, so a failure cannot leave a hole that another
/// mapping could take.
///
/// # Safety
/// The range must be part of an alias mapping no Rust object points into.
unsafe fn protect(start: usize, len: usize, prot: libc::c_int) -> io::Result<()> {
    // SAFETY: the caller's range of the alias changes access; nothing else is affected.
    if unsafe { libc::mprotect(start as *mut libc::c_void, len, prot) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl IoAlias {
    /// Maps guest RAM a second time; `None` where reads cannot go straight to guest memory
    /// safely (RAM not a shared file mapping, huge shared pages possible) or the mapping
    /// fails. Each region is its own mapping, unmapped when the alias is dropped.
    pub fn new(mem: &GuestMemoryMmap) -> Option<Self> {
        if shmem_may_be_huge() {
            return None;
        }
        let mut alias = Self {
            regions: Vec::new(),
            dead: Vec::new(),
        };
        for region in mem.iter() {
            let file_offset = region.file_offset()?;
            if region.flags() & libc::MAP_SHARED == 0 {
                return None;
            }
            let len = region.len() as usize;
            let addr = map_file(len, file_offset.file(), file_offset.start());
            alias.regions.push(Region {
                host: region.as_ptr() as usize,
                alias: addr.ok()?,
                len,
                file: file_offset.arc().clone(),
                offset: file_offset.start(),
            });
        }
        Some(alias)
    }

    /// The alias address of `len` bytes at `host` (an address in the VM's mapping), if
    /// they lie in one region and outside every cut range.
    pub fn translate(&self, host: usize, len: usize) -> Option<usize> {
        let end = host.checked_add(len)?;
        let r = self
            .regions
            .iter()
            .find(|r| r.host <= host && end <= r.host + r.len)?;
        let at = r.alias + (host - r.host);
        let dead = self.dead.iter().any(|&(s, l)| at < s + l && s < at + len);
        (!dead).then_some(at)
    }

    /// The region holding alias range `start..start + len`.
    fn region_of(&self, start: usize, len: usize) -> Option<&Region> {
        self.regions
            .iter()
            .find(|r| r.alias <= start && start + len <= r.alias + r.len)
    }

    /// Cuts the pages holding alias ranges `ranges` off guest RAM (see the module's
    /// documentation), adding the page ranges cut to `cut`, to [`IoAlias::restore`] once the
    /// kernel is done with them (also after a failure: what was cut stays listed). Every range
    /// must be part of a request's whole-page buffers.
    ///
    /// # Errors
    /// The host refused the change of access or the punch: the request is not cut off, and must
    /// not be completed until its host operation returns.
    pub fn cut(
        &mut self,
        ranges: impl IntoIterator<Item = (usize, usize)>,
        cut: &mut Vec<(usize, usize)>,
    ) -> io::Result<()> {
        for (start, len) in ranges {
            let first = start / PAGE * PAGE;
            let Some(end) = start
                .checked_add(len)
                .and_then(|e| e.checked_next_multiple_of(PAGE))
            else {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            };
            let Some(r) = self.region_of(first, end - first) else {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            };
            let at = r.offset + (first - r.alias) as u64;
            let fd = r.file.as_raw_fd();
            // Listed before the cut: an mprotect that fails leaves the range to bounce all the
            // same (`translate`), and to be restored with the rest.
            self.dead.push((first, end - first));
            cut.push((first, end - first));
            // SAFETY: the range lies inside this alias's own mapping (checked just above),
            // which nothing in this process reads or writes but the kernel on behalf of
            // requests on the ring.
            unsafe { protect(first, end - first, libc::PROT_NONE) }?;
            // SAFETY: `fd` is guest RAM's memory file, open for the VM's life; the range is
            // the request's own pages (whole pages of its buffers).
            let punched = unsafe {
                libc::fallocate(
                    fd,
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    at as i64,
                    (end - first) as i64,
                )
            };
            if punched != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Maps cut ranges back to guest RAM: the kernel is done with the request that held
    /// them. Pages that another cut still holds (two abandoned requests' buffers sharing a
    /// page) stay cut until that one is restored too; a range that cannot be mapped again
    /// stays cut (reads over it bounce).
    pub fn restore(&mut self, ranges: &[(usize, usize)]) {
        for &(start, len) in ranges {
            let Some(i) = self.dead.iter().position(|&d| d == (start, len)) else {
                continue;
            };
            self.dead.swap_remove(i);
            let end = start + len;
            let mut page = start;
            while page < end {
                if self.is_dead(page) {
                    page += PAGE;
                    continue;
                }
                let run = page;
                while page < end && !self.is_dead(page) {
                    page += PAGE;
                }
                if !self.map_back(run, page - run) {
                    self.dead.push((run, page - run));
                }
            }
        }
    }

    /// Whether the page at alias address `page` lies in a cut range.
    fn is_dead(&self, page: usize) -> bool {
        self.dead.iter().any(|&(s, l)| s <= page && page < s + l)
    }

    /// Maps alias range `start..start + len` (cut, and held by no cut any more) back onto
    /// guest RAM's file; false when the host refused.
    fn map_back(&self, start: usize, len: usize) -> bool {
        if self.region_of(start, len).is_none() {
            return false;
        }
        // SAFETY: as in `cut`: the range is this alias's own, cut off by `cut` and held by
        // no abandoned request any more (none is listed over it); reads over it bounced.
        unsafe { protect(start, len, libc::PROT_READ | libc::PROT_WRITE) }.is_ok()
    }

    /// Gives up the alias while the kernel may still write to it (a device going away with
    /// abandoned reads in flight): every region becomes inaccessible and stays mapped for the
    /// process's life, so that a late copy faults instead of landing in guest RAM or in
    /// whatever a later mapping would put at its addresses.
    ///
    /// # Errors
    /// The host refused to cut a region off (it stays mapped, and accessible).
    pub fn retire(mut self) -> io::Result<()> {
        let mut result = Ok(());
        for r in std::mem::take(&mut self.regions) {
            // SAFETY: the region's own alias mapping, which no Rust object points into.
            // Taken out of `self`, it is not unmapped by the drop.
            if let Err(e) = unsafe { protect(r.alias, r.len, libc::PROT_NONE) } {
                result = Err(e);
                continue;
            }
            // Its page-table entries go (the file's pages stay guest RAM's): what is left
            // is the reservation, neither RSS nor page tables.
            // SAFETY: the same range, inaccessible now; MADV_DONTNEED on a shared file
            // mapping only unmaps, the file keeps its pages.
            unsafe { libc::madvise(r.alias as *mut libc::c_void, r.len, libc::MADV_DONTNEED) };
        }
        result
    }
}

impl Drop for IoAlias {
    fn drop(&mut self) {
        for r in &self.regions {
            // SAFETY: the region's alias mapping, made by `new` and unmapped once; the ring
            // that read through it is gone (what it left in the kernel was cut off).
            unsafe {
                libc::munmap(r.alias as *mut libc::c_void, r.len);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::FromRawFd;
    use vm_memory::{Bytes, GuestAddress};

    /// Guest RAM as the VMM makes it (a memfd mapped shared), two regions.
    fn guest_ram() -> GuestMemoryMmap {
        crate::virtio::testing::shared_memory(&[
            (GuestAddress(0), 0x10_0000),
            (GuestAddress(0x4000_0000), 0x10_0000),
        ])
    }

    /// Guest RAM and its alias; `None`, with a message, on a host that may back shared
    /// memory with huge pages, where vmm makes no alias (every read bounces).
    fn alias_of_guest_ram() -> Option<(GuestMemoryMmap, IoAlias)> {
        if shmem_may_be_huge() {
            eprintln!("skipped: this host may back shared memory with huge pages (no alias)");
            return None;
        }
        let mem = guest_ram();
        let alias = IoAlias::new(&mem).expect("the alias of shared guest RAM");
        Some((mem, alias))
    }

    fn host(mem: &GuestMemoryMmap, gpa: u64) -> usize {
        mem.get_host_address(GuestAddress(gpa)).unwrap() as usize
    }

    /// The alias shows guest RAM; ranges across regions or outside RAM have none.
    #[test]
    fn alias_is_guest_ram() {
        let Some((mem, a)) = alias_of_guest_ram() else {
            return;
        };
        mem.write_slice(b"hello", GuestAddress(0x4000_1000))
            .unwrap();
        let at = a.translate(host(&mem, 0x4000_1000), 5).unwrap();
        // SAFETY: `at` is 5 bytes inside the alias mapping, alive while `a` is.
        let seen = unsafe { std::slice::from_raw_parts(at as *const u8, 5) };
        assert_eq!(seen, b"hello");
        assert!(a.translate(host(&mem, 0xf_f000), 0x2000).is_none());
        assert!(a.translate(1, 1).is_none());
    }

    /// A read the kernel finishes after the cut (a pipe read on io_uring, answered late:
    /// the copy of route 1) fails with EFAULT and leaves guest RAM alone; the cut pages read
    /// zero in the guest; after `restore` the alias reaches guest RAM again.
    #[test]
    fn late_copy_after_a_cut_misses_guest_ram() {
        let Some((mem, mut a)) = alias_of_guest_ram() else {
            return;
        };
        let gpa = GuestAddress(0x3000);
        mem.write_slice(&[0x11; PAGE], gpa).unwrap();
        let at = a.translate(host(&mem, 0x3000), PAGE).unwrap();

        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both descriptors were just created and are owned here.
        let (rf, mut wf) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
        let mut ring = io_uring::IoUring::new(4).unwrap();
        let read = io_uring::opcode::Read::new(
            io_uring::types::Fd(rf.as_raw_fd()),
            at as *mut u8,
            PAGE as u32,
        )
        .build();
        // SAFETY: the buffer is the alias page, which stays mapped (cut or not) until `a`
        // is dropped, after the completion is reaped.
        unsafe { ring.submission().push(&read).unwrap() };
        ring.submit().unwrap();
        assert!(
            ring.completion().next().is_none(),
            "the pipe read did not wait"
        );

        let mut cut = Vec::new();
        a.cut([(at + 100, 200)], &mut cut).unwrap();
        assert_eq!(cut, vec![(at, PAGE)]);
        assert!(a.translate(host(&mem, 0x3000), PAGE).is_none());
        let mut page = [0xffu8; PAGE];
        mem.read_slice(&mut page, gpa).unwrap();
        assert!(page.iter().all(|&b| b == 0), "the cut page was not punched");

        wf.write_all(&[0x5a; PAGE]).unwrap();
        ring.submit_and_wait(1).unwrap();
        let res = ring.completion().next().unwrap().result();
        assert_eq!(res, -libc::EFAULT);
        mem.read_slice(&mut page, gpa).unwrap();
        assert!(
            page.iter().all(|&b| b == 0),
            "the late read reached guest RAM"
        );

        a.restore(&cut);
        let at = a.translate(host(&mem, 0x3000), PAGE).unwrap();
        mem.write_slice(&[0x22; 8], gpa).unwrap();
        // SAFETY: 8 bytes inside the alias mapping again.
        let seen = unsafe { std::slice::from_raw_parts(at as *const u8, 8) };
        assert_eq!(seen, &[0x22; 8]);
    }

    /// Whether this process can read `len` bytes at `at` (a pipe write of them: EFAULT
    /// where nothing readable is mapped).
    fn readable(at: usize, len: usize) -> bool {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both descriptors were just created and are owned here.
        let (_rf, wf) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
        // SAFETY: the kernel checks the source range; a fault is an EFAULT, not a signal.
        let n = unsafe { libc::write(wf.as_raw_fd(), at as *const libc::c_void, len) };
        n == len as isize
    }

    /// Two abandoned requests whose buffers share a page: the first one's late completion
    /// maps its own pages back, not the shared one, which the second may still write; after
    /// the second, every page is back.
    #[test]
    fn a_page_two_cuts_share_stays_cut_until_both_are_restored() {
        let Some((mem, mut a)) = alias_of_guest_ram() else {
            return;
        };
        let at = a.translate(host(&mem, 0x8000), 3 * PAGE).unwrap();
        let (mut first, mut second) = (Vec::new(), Vec::new());
        a.cut([(at, 2 * PAGE)], &mut first).unwrap();
        a.cut([(at + PAGE, 2 * PAGE)], &mut second).unwrap();
        assert!((0..3).all(|p| !readable(at + p * PAGE, PAGE)));

        a.restore(&first);
        assert!(
            readable(at, PAGE),
            "the first request's own page stayed cut"
        );
        assert!(
            !readable(at + PAGE, PAGE),
            "the shared page was mapped back"
        );
        assert!(!readable(at + 2 * PAGE, PAGE));
        assert!(a.translate(host(&mem, 0x8000), PAGE).is_some());
        assert!(a.translate(host(&mem, 0x9000), PAGE).is_none());

        a.restore(&second);
        assert!((0..3).all(|p| readable(at + p * PAGE, PAGE)));
        assert_eq!(a.translate(host(&mem, 0x8000), 3 * PAGE), Some(at));
    }

    /// A retired alias keeps its addresses reserved and inaccessible: a read into it faults
    /// and no new mapping can take its place.
    #[test]
    fn retired_alias_stays_reserved_and_inaccessible() {
        let Some((mem, a)) = alias_of_guest_ram() else {
            return;
        };
        let at = a.translate(host(&mem, 0x2000), PAGE).unwrap();
        a.retire().unwrap();
        let f = File::open("/proc/self/stat").unwrap();
        // SAFETY: a read into an address the kernel checks: it fails with EFAULT.
        let n = unsafe { libc::pread(f.as_raw_fd(), at as *mut libc::c_void, 16, 0) };
        assert_eq!(n, -1);
        assert_eq!(
            io::Error::last_os_error().raw_os_error(),
            Some(libc::EFAULT)
        );
        // SAFETY: MAP_FIXED_NOREPLACE never replaces a mapping; it fails where one exists.
        let r = unsafe {
            libc::mmap(
                at as *mut libc::c_void,
                PAGE,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        assert_eq!(r, libc::MAP_FAILED, "the retired range was free again");
    }
}
