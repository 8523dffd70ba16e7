// SPDX-License-Identifier: Apache-2.0
//! Loading the guest kernel, initrd and command line, and describing the machine to the kernel
//! through the Linux zero page (bzImage) or the PVH start info (ELF vmlinux with a PVH note).
//!
//! The images stay open for the VM's lifetime so that a reset reloads them from the files the
//! VM was started with, without keeping a copy in the VMM's memory.

pub mod e820;
mod linux;
mod pvh;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use devices::GuestMemoryMmap;
use linux_loader::bootparam::setup_header;
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{Address, Bytes, GuestAddress};

use crate::arch::regs::BootEntry;
use crate::layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, HIGH_MEMORY_START, MMIO_HOLE_START, PVH_INFO_START,
    ZERO_PAGE_START,
};

/// Errors while opening or loading the boot images.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel or initrd file cannot be opened or read.
    #[error("Cannot read {what} '{path}'")]
    Open {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The path given.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The path names a directory or another non-regular file.
    #[error("{what} '{path}' is not a regular file")]
    NotAFile {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The path given.
        path: PathBuf,
    },
    /// The kernel is neither a bzImage nor an ELF.
    #[error("Kernel '{0}' is neither a Linux bzImage nor an ELF vmlinux")]
    UnknownKernelFormat(PathBuf),
    /// The bzImage's boot protocol is too old for a 64-bit direct boot.
    #[error("Kernel '{path}' uses boot protocol {major}.{minor:02}; vmm needs 2.12 or newer")]
    OldBootProtocol {
        /// The path given.
        path: PathBuf,
        /// Protocol major version.
        major: u16,
        /// Protocol minor version.
        minor: u16,
    },
    /// The image is a zImage (loaded low), not a bzImage.
    #[error("Kernel '{0}' is a zImage, not a bzImage (LOADED_HIGH is clear)")]
    NotLoadedHigh(PathBuf),
    /// The bzImage has no 64-bit entry point.
    #[error("Kernel '{0}' has no 64-bit entry point (XLF_KERNEL_64 is not set)")]
    No64BitEntry(PathBuf),
    /// The ELF has no PVH note.
    #[error("ELF kernel '{0}' has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); use its bzImage")]
    NoPvhNote(PathBuf),
    /// linux-loader rejected the image.
    #[error("Cannot load kernel '{path}' into guest memory")]
    Load {
        /// The path given.
        path: PathBuf,
        /// The loader's error.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// The kernel does not fit in guest RAM below the MMIO hole.
    #[error("Kernel needs {need_mib} MiB of RAM below 3 GiB to boot; raise --memory")]
    KernelTooBig {
        /// RAM needed, in MiB.
        need_mib: u64,
    },
    /// An ELF segment lies outside guest RAM.
    #[error("Kernel '{0}' has segments outside guest RAM; raise --memory")]
    ElfOutsideRam(PathBuf),
    /// The command line is too long.
    #[error("Kernel command line is {len} bytes; this kernel accepts at most {max}")]
    CmdlineTooLong {
        /// Length given.
        len: usize,
        /// Longest accepted.
        max: usize,
    },
    /// The command line contains a byte the boot protocol cannot carry.
    #[error("Kernel command line must be printable ASCII without NUL bytes")]
    CmdlineInvalid,
    /// The initrd does not fit between the kernel and the highest address it may be loaded at.
    #[error("Initrd '{path}' ({size_mib} MiB) does not fit in guest RAM below {limit_mib} MiB above the kernel; raise --memory")]
    InitrdTooBig {
        /// The path given.
        path: PathBuf,
        /// Its size in MiB.
        size_mib: u64,
        /// The highest address it may end at, in MiB.
        limit_mib: u64,
    },
    /// Reading an image into guest memory failed.
    #[error("Cannot copy {0} into guest memory")]
    GuestMemory(&'static str, #[source] vm_memory::GuestMemoryError),
}

/// The kernel image formats we boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    /// A Linux bzImage, entered at its 64-bit entry point.
    BzImage,
    /// An ELF vmlinux, entered through its PVH note.
    PvhElf,
}

/// The boot images of a VM, copied at start for (re)loading.
#[derive(Debug)]
pub struct BootImages {
    kernel_path: PathBuf,
    kernel: File,
    format: KernelFormat,
    initrd: Option<(PathBuf, File, u64)>,
    cmdline: String,
}

/// Offset of the boot sector signature 0xaa55 in a bzImage.
const BOOT_FLAG_OFFSET: usize = 0x1fe;
/// Offset of the "HdrS" magic in a bzImage.
const HEADER_MAGIC_OFFSET: usize = 0x202;
/// Offset of the boot protocol version.
const VERSION_OFFSET: usize = 0x206;
/// Offset of loadflags.
const LOADFLAGS_OFFSET: usize = 0x211;
/// loadflags bit 0: the protected-mode kernel is loaded at 1 MiB.
const LOADED_HIGH: u8 = 1;
/// Offset of xloadflags.
const XLOADFLAGS_OFFSET: usize = 0x236;
/// xloadflags bit 0: the kernel has the 64-bit entry point at +0x200.
const XLF_KERNEL_64: u16 = 1;
/// The 64-bit entry point's offset from the protected-mode kernel's load address.
const ENTRY_64_OFFSET: u64 = 0x200;
/// Default initrd_addr_max for kernels whose header leaves it zero.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

/// Opens a boot image and copies it into a sealed memory file: what is loaded at start is
/// what every reset loads again (as QEMU keeps its ROM blobs), whatever happens to the file
/// afterwards (replaced, truncated, overwritten in place).
fn open_regular(what: &'static str, path: &Path) -> Result<(File, u64), BootError> {
    let error = |source| BootError::Open {
        what,
        path: path.to_owned(),
        source,
    };
    let not_a_file = || BootError::NotAFile {
        what,
        path: path.to_owned(),
    };
    // Look before opening: opening a FIFO blocks until a writer appears.
    if !std::fs::metadata(path).map_err(error)?.is_file() {
        return Err(not_a_file());
    }
    let mut file = File::open(path).map_err(error)?;
    // The path may have been replaced in between.
    if !file.metadata().map_err(error)?.is_file() {
        return Err(not_a_file());
    }
    let mut copy = memfd(what).map_err(error)?;
    let size = std::io::copy(&mut file, &mut copy).map_err(error)?;
    seal(&copy).map_err(error)?;
    copy.seek(SeekFrom::Start(0)).map_err(error)?;
    Ok((copy, size))
}

/// An anonymous memory file (closed on exec) that can be sealed.
fn memfd(what: &str) -> std::io::Result<File> {
    let name = std::ffi::CString::new(format!("vmm-{what}")).unwrap_or_default();
    // SAFETY: memfd_create reads a NUL-terminated name that outlives the call; the returned
    // descriptor is checked and then owned by the File.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor that nothing else owns.
    Ok(unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Forbids any further change to the copy's size or contents.
fn seal(file: &File) -> std::io::Result<()> {
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
    // SAFETY: F_ADD_SEALS on a descriptor we own, with an integer argument.
    let ret = unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(file),
            libc::F_ADD_SEALS,
            seals,
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn u16_at(buf: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([buf[off], buf[off + 1]])
}

/// Identifies `head` (the first bytes of a kernel file) as a bzImage or an ELF, checking what
/// a 64-bit direct boot needs.
fn identify(path: &Path, head: &[u8]) -> Result<KernelFormat, BootError> {
    if head.starts_with(b"\x7fELF") {
        return Ok(KernelFormat::PvhElf);
    }
    if head.len() < XLOADFLAGS_OFFSET + 2
        || u16_at(head, BOOT_FLAG_OFFSET) != 0xaa55
        || &head[HEADER_MAGIC_OFFSET..HEADER_MAGIC_OFFSET + 4] != b"HdrS"
    {
        return Err(BootError::UnknownKernelFormat(path.to_owned()));
    }
    let version = u16_at(head, VERSION_OFFSET);
    if version < 0x020c {
        return Err(BootError::OldBootProtocol {
            path: path.to_owned(),
            major: version >> 8,
            minor: version & 0xff,
        });
    }
    if head[LOADFLAGS_OFFSET] & LOADED_HIGH == 0 {
        return Err(BootError::NotLoadedHigh(path.to_owned()));
    }
    if u16_at(head, XLOADFLAGS_OFFSET) & XLF_KERNEL_64 == 0 {
        return Err(BootError::No64BitEntry(path.to_owned()));
    }
    Ok(KernelFormat::BzImage)
}

/// Checks that `cmdline` can be passed to the kernel, returning the boot protocol object.
fn make_cmdline(cmdline: &str, max: usize) -> Result<Cmdline, BootError> {
    if cmdline.len() >= max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max: max - 1,
        });
    }
    if !cmdline.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(BootError::CmdlineInvalid);
    }
    let mut c = Cmdline::new(max).map_err(|_| BootError::CmdlineInvalid)?;
    if !cmdline.is_empty() {
        c.insert_str(cmdline)
            .map_err(|_| BootError::CmdlineInvalid)?;
    }
    Ok(c)
}

impl BootImages {
    /// Opens and checks the kernel (and initrd), and checks the command line.
    ///
    /// # Errors
    /// Missing or unreadable files, a kernel in an unsupported format, a bad command line.
    pub fn open(kernel: &Path, initrd: Option<&Path>, cmdline: &str) -> Result<Self, BootError> {
        let (mut file, _) = open_regular("kernel", kernel)?;
        let mut head = vec![0u8; 0x400];
        let mut got = 0;
        while got < head.len() {
            match file.read(&mut head[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(BootError::Open {
                        what: "kernel",
                        path: kernel.to_owned(),
                        source,
                    })
                }
            }
        }
        head.truncate(got);
        let format = identify(kernel, &head)?;
        make_cmdline(cmdline, CMDLINE_MAX_SIZE)?;
        let initrd = match initrd {
            Some(p) => {
                let (f, size) = open_regular("initrd", p)?;
                Some((p.to_owned(), f, size))
            }
            None => None,
        };
        Ok(Self {
            kernel_path: kernel.to_owned(),
            kernel: file,
            format,
            initrd,
            cmdline: cmdline.to_owned(),
        })
    }

    /// Loads everything into `mem` (a guest with `ram_size` bytes of RAM whose RSDP is at
    /// `rsdp`) and returns how the boot vCPU enters the kernel. Called at start and on reset.
    ///
    /// # Errors
    /// The kernel or initrd does not fit, or a file can no longer be read.
    pub fn load(
        &mut self,
        mem: &GuestMemoryMmap,
        ram_size: u64,
        rsdp: GuestAddress,
    ) -> Result<BootEntry, BootError> {
        let low_ram_end = ram_size.min(MMIO_HOLE_START);
        self.kernel
            .seek(SeekFrom::Start(0))
            .map_err(|source| self.read_error(source))?;
        match self.format {
            KernelFormat::BzImage => self.load_bzimage(mem, ram_size, low_ram_end, rsdp),
            KernelFormat::PvhElf => self.load_pvh(mem, ram_size, low_ram_end, rsdp),
        }
    }

    fn read_error(&self, source: std::io::Error) -> BootError {
        BootError::Open {
            what: "kernel",
            path: self.kernel_path.clone(),
            source,
        }
    }

    fn load_error(&self, source: linux_loader::loader::Error) -> BootError {
        BootError::Load {
            path: self.kernel_path.clone(),
            source,
        }
    }

    fn load_bzimage(
        &mut self,
        mem: &GuestMemoryMmap,
        ram_size: u64,
        low_ram_end: u64,
        rsdp: GuestAddress,
    ) -> Result<BootEntry, BootError> {
        // The loader reads the setup header itself; check the footprint first so that a guest
        // too small for the kernel gets a clear message instead of a failed copy.
        let mut hdr_bytes = [0u8; std::mem::size_of::<setup_header>()];
        self.kernel
            .seek(SeekFrom::Start(0x1f1))
            .and_then(|_| self.kernel.read_exact(&mut hdr_bytes))
            .map_err(|source| self.read_error(source))?;
        let init_size = u64::from(u32::from_le_bytes([
            hdr_bytes[0x260 - 0x1f1],
            hdr_bytes[0x261 - 0x1f1],
            hdr_bytes[0x262 - 0x1f1],
            hdr_bytes[0x263 - 0x1f1],
        ]));
        let file_len = self
            .kernel
            .metadata()
            .map_err(|source| self.read_error(source))?
            .len();
        let need = HIGH_MEMORY_START + init_size.max(file_len);
        if need > low_ram_end {
            return Err(BootError::KernelTooBig {
                need_mib: need.div_ceil(1 << 20),
            });
        }
        let result = BzImage::load(
            mem,
            None,
            &mut self.kernel,
            Some(GuestAddress(HIGH_MEMORY_START)),
        )
        .map_err(|e| self.load_error(e))?;
        let Some(hdr) = result.setup_header else {
            return Err(self.load_error(linux_loader::loader::Error::InvalidKernelStartAddress));
        };
        // The header's `code32_start` chooses the load address: the kernel (its init size,
        // and at least its 64-bit entry) must be in low RAM, or the guest would start
        // outside it (an empty payload "loads" anywhere).
        let load = result.kernel_load.raw_value();
        let footprint = init_size
            .max(result.kernel_end.saturating_sub(load))
            .max(ENTRY_64_OFFSET + 1);
        if load < HIGH_MEMORY_START
            || load
                .checked_add(footprint)
                .is_none_or(|end| end > low_ram_end)
        {
            return Err(self.load_error(linux_loader::loader::Error::InvalidKernelStartAddress));
        }
        let cmdline_max = (hdr.cmdline_size as usize + 1).clamp(256, CMDLINE_MAX_SIZE);
        self.write_cmdline(mem, cmdline_max)?;
        let kernel_end = result
            .kernel_end
            .max(result.kernel_load.raw_value() + init_size);
        let initrd_max = match u64::from(hdr.initrd_addr_max) {
            0 => DEFAULT_INITRD_ADDR_MAX,
            m => m,
        };
        let initrd = self.load_initrd(mem, kernel_end, low_ram_end.min(initrd_max + 1))?;
        linux::write_zero_page(mem, hdr, ram_size, initrd, rsdp, self.cmdline.len())?;
        Ok(BootEntry::Linux64 {
            entry: result.kernel_load.unchecked_add(ENTRY_64_OFFSET),
            zero_page: GuestAddress(ZERO_PAGE_START),
        })
    }

    fn load_pvh(
        &mut self,
        mem: &GuestMemoryMmap,
        ram_size: u64,
        low_ram_end: u64,
        rsdp: GuestAddress,
    ) -> Result<BootEntry, BootError> {
        let result = Elf::load(
            mem,
            None,
            &mut self.kernel,
            Some(GuestAddress(HIGH_MEMORY_START)),
        )
        .map_err(|e| match e {
            linux_loader::loader::Error::Elf(linux_loader::loader::elf::Error::ReadKernelImage) => {
                BootError::ElfOutsideRam(self.kernel_path.clone())
            }
            e => self.load_error(e),
        })?;
        let PvhBootCapability::PvhEntryPresent(entry) = result.pvh_boot_cap else {
            return Err(BootError::NoPvhNote(self.kernel_path.clone()));
        };
        self.write_cmdline(mem, CMDLINE_MAX_SIZE)?;
        let initrd = self.load_initrd(mem, result.kernel_end, low_ram_end)?;
        pvh::write_start_info(mem, ram_size, initrd, rsdp)?;
        Ok(BootEntry::Pvh {
            entry,
            start_info: GuestAddress(PVH_INFO_START),
        })
    }

    fn write_cmdline(&self, mem: &GuestMemoryMmap, max: usize) -> Result<(), BootError> {
        let cmdline = make_cmdline(&self.cmdline, max)?;
        linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), &cmdline)
            .map_err(|e| self.load_error(e))
    }

    /// Copies the initrd to the highest page-aligned address below `limit`, above `kernel_end`.
    fn load_initrd(
        &mut self,
        mem: &GuestMemoryMmap,
        kernel_end: u64,
        limit: u64,
    ) -> Result<Option<(GuestAddress, u64)>, BootError> {
        let Some((path, file, size)) = self.initrd.as_mut() else {
            return Ok(None);
        };
        let too_big = || BootError::InitrdTooBig {
            path: path.clone(),
            size_mib: size.div_ceil(1 << 20),
            limit_mib: limit >> 20,
        };
        let start = limit.checked_sub(*size).ok_or_else(too_big)? & !0xfff;
        if start < kernel_end.next_multiple_of(0x1000) {
            return Err(too_big());
        }
        file.seek(SeekFrom::Start(0))
            .map_err(|source| BootError::Open {
                what: "initrd",
                path: path.clone(),
                source,
            })?;
        mem.read_exact_volatile_from(GuestAddress(start), file, *size as usize)
            .map_err(|e| BootError::GuestMemory("the initrd", e))?;
        Ok(Some((GuestAddress(start), *size)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bzimage_head(version: u16, xloadflags: u16) -> Vec<u8> {
        let mut h = vec![0u8; 0x400];
        h[BOOT_FLAG_OFFSET..BOOT_FLAG_OFFSET + 2].copy_from_slice(&0xaa55u16.to_le_bytes());
        h[HEADER_MAGIC_OFFSET..HEADER_MAGIC_OFFSET + 4].copy_from_slice(b"HdrS");
        h[VERSION_OFFSET..VERSION_OFFSET + 2].copy_from_slice(&version.to_le_bytes());
        h[XLOADFLAGS_OFFSET..XLOADFLAGS_OFFSET + 2].copy_from_slice(&xloadflags.to_le_bytes());
        h[LOADFLAGS_OFFSET] = LOADED_HIGH;
        h
    }

    #[test]
    fn identifies_formats() {
        let p = Path::new("k");
        assert_eq!(
            identify(p, &bzimage_head(0x020f, 1)).unwrap(),
            KernelFormat::BzImage
        );
        assert_eq!(
            identify(p, b"\x7fELF\x02\x01").unwrap(),
            KernelFormat::PvhElf
        );
        assert!(matches!(
            identify(p, b"#!/bin/sh\n"),
            Err(BootError::UnknownKernelFormat(_))
        ));
        let old = identify(p, &bzimage_head(0x020a, 1)).unwrap_err();
        assert_eq!(
            old.to_string(),
            "Kernel 'k' uses boot protocol 2.10; vmm needs 2.12 or newer"
        );
        assert!(matches!(
            identify(p, &bzimage_head(0x020f, 0)),
            Err(BootError::No64BitEntry(_))
        ));
    }

    #[test]
    fn a_load_address_outside_ram_is_refused() {
        // A header-only bzImage (no payload) whose code32_start points far above RAM.
        let mut k = bzimage_head(0x020f, 1);
        k[0x1f1] = 1; // setup_sects: the payload would start at 0x400, the end of the file
        k[0x214..0x218].copy_from_slice(&0xf8ff_fdffu32.to_le_bytes());
        let path = std::env::temp_dir().join(format!("vmm-bz-high-{}", std::process::id()));
        std::fs::write(&path, &k).unwrap();
        let mut images = BootImages::open(&path, None, "").unwrap();
        let mem = crate::memory::create_guest_memory(64 << 20).unwrap();
        let e = images.load(&mem, 64 << 20, GuestAddress(0xe0000));
        std::fs::remove_file(&path).unwrap();
        assert!(e.is_err(), "{e:?}");
    }

    #[test]
    fn cmdline_checks() {
        assert!(make_cmdline("console=ttyS0", 2048).is_ok());
        assert!(make_cmdline("", 2048).is_ok());
        assert!(matches!(
            make_cmdline(&"a".repeat(2048), 2048),
            Err(BootError::CmdlineTooLong {
                len: 2048,
                max: 2047
            })
        ));
        assert!(matches!(
            make_cmdline("a\nb", 2048),
            Err(BootError::CmdlineInvalid)
        ));
    }

    #[test]
    fn open_rejects_missing_and_directories() {
        let e = BootImages::open(Path::new("/nonexistent/bzImage"), None, "").unwrap_err();
        assert!(e
            .to_string()
            .starts_with("Cannot read kernel '/nonexistent/bzImage'"));
        let e = BootImages::open(Path::new("/"), None, "").unwrap_err();
        assert_eq!(e.to_string(), "kernel '/' is not a regular file");
    }
}
