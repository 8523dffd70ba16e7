// SPDX-License-Identifier: Apache-2.0
//! userfaultfd(2) for guest RAM: the descriptor, registering RAM's mappings for missing-page
//! faults, reading the faults, and filling pages (`UFFDIO_COPY`, `UFFDIO_ZEROPAGE`,
//! `UFFDIO_WAKE`).
//!
//! The ABI is six ioctls and one message layout (`linux/userfaultfd.h`), written here over
//! libc: the `userfaultfd` crate generates its bindings with bindgen, which needs libclang on
//! every build machine for these few definitions.
//!
//! KVM needs a descriptor that also reports faults taken in the kernel (the vCPU's accesses
//! go through `get_user_pages` and `copy_from_user`): it is created without
//! `UFFD_USER_MODE_ONLY`, which needs `CAP_SYS_PTRACE` (root here).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const UFFD_API: u64 = 0xaa;
/// `_IOWR(0xAA, 0x3F, struct uffdio_api)`.
const UFFDIO_API: u64 = 0xc018_aa3f;
/// `_IOWR(0xAA, 0x00, struct uffdio_register)`.
const UFFDIO_REGISTER: u64 = 0xc020_aa00;
/// `_IOR(0xAA, 0x01, struct uffdio_range)`.
const UFFDIO_UNREGISTER: u64 = 0x8010_aa01;
/// `_IOR(0xAA, 0x02, struct uffdio_range)`.
const UFFDIO_WAKE: u64 = 0x8010_aa02;
/// `_IOWR(0xAA, 0x03, struct uffdio_copy)`.
const UFFDIO_COPY: u64 = 0xc028_aa03;
/// `_IOWR(0xAA, 0x04, struct uffdio_zeropage)`.
const UFFDIO_ZEROPAGE: u64 = 0xc020_aa04;

/// Faults on shared memory (guest RAM is a memfd mapped shared).
const FEATURE_MISSING_SHMEM: u64 = 1 << 5;
/// Messages carry the faulting thread's id.
const FEATURE_THREAD_ID: u64 = 1 << 8;
const REGISTER_MODE_MISSING: u64 = 1;
const EVENT_PAGEFAULT: u8 = 0x12;
const PAGEFAULT_FLAG_WRITE: u64 = 1;
/// `_UFFDIO_COPY` and `_UFFDIO_ZEROPAGE` bits of a registered range's ioctls.
const RANGE_IOCTLS: u64 = (1 << 0x03) | (1 << 0x04);

#[repr(C)]
#[derive(Default)]
struct Api {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct Range {
    start: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct Register {
    range: Range,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct Copy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
#[derive(Default)]
struct ZeroPage {
    range: Range,
    mode: u64,
    zeropage: i64,
}

/// `struct uffd_msg` (32 bytes), for a page fault.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct Msg {
    event: u8,
    reserved1: u8,
    reserved2: u16,
    reserved3: u32,
    flags: u64,
    address: u64,
    ptid: u32,
    pad: u32,
}

/// A missing-page fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The faulting host address.
    pub address: u64,
    /// A write access.
    pub write: bool,
    /// The faulting thread's Linux id.
    pub thread: i32,
}

/// Errors of userfaultfd.
#[derive(Debug, thiserror::Error)]
pub enum UffdError {
    /// The descriptor could not be created or set up.
    #[error("Cannot create a userfaultfd (needs CONFIG_USERFAULTFD and CAP_SYS_PTRACE)")]
    Create(#[source] io::Error),
    /// The kernel lacks a feature.
    #[error("This kernel's userfaultfd cannot serve shared memory faults with thread ids")]
    Features,
    /// Registering guest RAM failed.
    #[error("Cannot register guest RAM with userfaultfd")]
    Register(#[source] io::Error),
    /// The registered range does not offer copy and zero-page.
    #[error("userfaultfd cannot fill pages of guest RAM's mapping")]
    RangeIoctls,
}

/// The outcome of filling a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filled {
    /// The page was missing and is now there (its waiters woken).
    Done,
    /// The page was already there (nothing written).
    Present,
}

/// A userfaultfd descriptor.
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
}

impl Uffd {
    /// A non-blocking, close-on-exec descriptor that reports kernel faults too, with the
    /// shared-memory and thread-id features.
    ///
    /// # Errors
    /// The call fails (no userfaultfd, not permitted) or a feature is missing.
    pub fn new() -> Result<Self, UffdError> {
        // SAFETY: userfaultfd(2) with flags only; the descriptor is owned at once.
        let raw =
            unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
        if raw < 0 {
            return Err(UffdError::Create(io::Error::last_os_error()));
        }
        // SAFETY: a descriptor this call just created, owned nowhere else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw as RawFd) };
        let mut api = Api {
            api: UFFD_API,
            features: FEATURE_MISSING_SHMEM | FEATURE_THREAD_ID,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API with a valid `uffdio_api` the kernel fills in.
        if unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API, &mut api) } < 0 {
            let e = io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::EINVAL) {
                UffdError::Features
            } else {
                UffdError::Create(e)
            });
        }
        Ok(Self { fd })
    }

    /// Registers `len` bytes at host address `start` (a mapping of guest RAM) for
    /// missing-page faults.
    ///
    /// # Errors
    /// The kernel refuses the range, or it cannot be filled with copy and zero-page.
    pub fn register(&self, start: u64, len: u64) -> Result<(), UffdError> {
        let mut r = Register {
            range: Range { start, len },
            mode: REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER with a valid `uffdio_register`; the range is a mapping
        // of this process that stays mapped while the descriptor lives.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_REGISTER, &mut r) } < 0 {
            return Err(UffdError::Register(io::Error::last_os_error()));
        }
        if r.ioctls & RANGE_IOCTLS != RANGE_IOCTLS {
            return Err(UffdError::RangeIoctls);
        }
        Ok(())
    }

    /// Ends the registration of a range (faults there are ordinary again).
    ///
    /// # Errors
    /// The kernel refuses.
    pub fn unregister(&self, start: u64, len: u64) -> io::Result<()> {
        let mut r = Range { start, len };
        // SAFETY: UFFDIO_UNREGISTER with a valid `uffdio_range`.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_UNREGISTER, &mut r) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Copies `data` (whole pages) into the missing pages at host address `dst`, waking the
    /// threads that wait on them.
    ///
    /// # Errors
    /// The kernel refuses (the range is not registered, out of memory).
    pub fn copy(&self, dst: u64, data: &[u8]) -> io::Result<Filled> {
        let mut done = 0usize;
        while done < data.len() {
            let mut c = Copy {
                dst: dst + done as u64,
                src: data[done..].as_ptr() as u64,
                len: (data.len() - done) as u64,
                mode: 0,
                copy: 0,
            };
            // SAFETY: UFFDIO_COPY reads `len` bytes from `src` (inside `data`, borrowed for
            // the call) into registered guest RAM; it writes nothing of this process but
            // the struct and the missing pages it fills.
            let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_COPY, &mut c) };
            if r < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EEXIST) if data.len() <= PAGE => {
                        self.wake(dst, data.len() as u64)?;
                        return Ok(Filled::Present);
                    }
                    Some(libc::EEXIST) => {
                        // A page of the run was there already: the rest page by page.
                        return self.copy_pages(dst, data, done + c.copy.max(0) as usize);
                    }
                    Some(libc::EAGAIN) if c.copy > 0 => done += c.copy as usize,
                    Some(libc::EAGAIN) | Some(libc::EINTR) => {}
                    _ => return Err(e),
                }
                continue;
            }
            done += c.copy.max(0) as usize;
            if c.copy <= 0 {
                break;
            }
        }
        Ok(Filled::Done)
    }

    fn copy_pages(&self, dst: u64, data: &[u8], from: usize) -> io::Result<Filled> {
        for off in (from - from % PAGE..data.len()).step_by(PAGE) {
            let end = (off + PAGE).min(data.len());
            self.copy(dst + off as u64, &data[off..end])?;
        }
        Ok(Filled::Done)
    }

    /// Makes the missing pages of `len` bytes at host address `dst` zeros, waking their
    /// waiters.
    ///
    /// # Errors
    /// The kernel refuses.
    pub fn zero(&self, dst: u64, len: u64) -> io::Result<Filled> {
        loop {
            let mut z = ZeroPage {
                range: Range { start: dst, len },
                mode: 0,
                zeropage: 0,
            };
            // SAFETY: UFFDIO_ZEROPAGE on registered guest RAM with a valid struct.
            let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_ZEROPAGE, &mut z) };
            if r >= 0 {
                return Ok(Filled::Done);
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EEXIST) if len > PAGE as u64 => {
                    // Some are there: one page at a time.
                    for off in (0..len).step_by(PAGE) {
                        self.zero(dst + off, PAGE as u64)?;
                    }
                    return Ok(Filled::Done);
                }
                Some(libc::EEXIST) => {
                    self.wake(dst, len)?;
                    return Ok(Filled::Present);
                }
                Some(libc::EAGAIN) | Some(libc::EINTR) => continue,
                _ => return Err(e),
            }
        }
    }

    /// Wakes the threads waiting on `len` bytes at `start` (the pages are there).
    ///
    /// # Errors
    /// The kernel refuses.
    pub fn wake(&self, start: u64, len: u64) -> io::Result<()> {
        let mut r = Range { start, len };
        // SAFETY: UFFDIO_WAKE with a valid `uffdio_range`.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_WAKE, &mut r) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads the pending faults (none when there are none: the descriptor is
    /// non-blocking); other events are skipped.
    ///
    /// # Errors
    /// The read fails.
    pub fn read_faults(&self, out: &mut Vec<Fault>) -> io::Result<()> {
        let mut msgs = [Msg::default(); 32];
        let size = std::mem::size_of_val(&msgs);
        // SAFETY: reads at most `size` bytes into `msgs`, plain-old-data messages.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), msgs.as_mut_ptr().cast(), size) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(()),
                _ => Err(e),
            };
        }
        let count = n as usize / std::mem::size_of::<Msg>();
        out.extend(
            msgs[..count]
                .iter()
                .filter(|m| m.event == EVENT_PAGEFAULT)
                .map(|m| Fault {
                    address: m.address,
                    write: m.flags & PAGEFAULT_FLAG_WRITE != 0,
                    thread: m.ptid as i32,
                }),
        );
        Ok(())
    }
}

impl AsRawFd for Uffd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// The page size userfaultfd fills.
pub const PAGE: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    fn poll_in(fd: RawFd, ms: i32) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, ms) > 0 }
    }

    /// A thread that touches a missing page of a registered memfd mapping waits until it is
    /// filled, and reads what was copied; the fault names the address and the thread.
    #[test]
    fn a_reader_of_a_missing_shared_page_waits_for_the_copy() {
        let uffd = Uffd::new().expect("a userfaultfd (CONFIG_USERFAULTFD, run as root)");
        let mem = crate::memory::create_guest_memory(4 * PAGE as u64).unwrap();
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
        let r = mem.iter().next().unwrap();
        let host = r.as_ptr() as u64;
        uffd.register(host, r.len()).unwrap();
        let reader = std::thread::spawn(move || {
            // SAFETY: reads inside the 4-page mapping, which outlives the thread (joined).
            let v = unsafe { std::ptr::read_volatile((host + PAGE as u64) as *const u8) };
            // SAFETY: gettid has no arguments.
            (v, unsafe { libc::syscall(libc::SYS_gettid) } as i32)
        });
        assert!(poll_in(uffd.as_raw_fd(), 5000));
        let mut faults = Vec::new();
        uffd.read_faults(&mut faults).unwrap();
        assert_eq!(faults.len(), 1);
        assert_eq!(faults[0].address & !(PAGE as u64 - 1), host + PAGE as u64);
        assert!(!faults[0].write);
        assert_eq!(
            uffd.copy(host + PAGE as u64, &[7u8; PAGE]).unwrap(),
            Filled::Done
        );
        let (v, tid) = reader.join().unwrap();
        assert_eq!((v, tid), (7, faults[0].thread));
        // Filled already: nothing is overwritten.
        assert_eq!(
            uffd.copy(host + PAGE as u64, &[9u8; PAGE]).unwrap(),
            Filled::Present
        );
        // A run whose first page is there fills the others and keeps that one.
        assert_eq!(
            uffd.copy(host + PAGE as u64, &[5u8; 2 * PAGE]).unwrap(),
            Filled::Done
        );
        // SAFETY: inside the mapping.
        let c = unsafe { std::ptr::read_volatile((host + 2 * PAGE as u64) as *const u8) };
        assert_eq!(c, 5);
        assert_eq!(uffd.zero(host, 2 * PAGE as u64).unwrap(), Filled::Done);
        // SAFETY: inside the mapping.
        let b = unsafe { std::ptr::read_volatile((host + PAGE as u64) as *const u8) };
        assert_eq!(b, 7);
    }
}
