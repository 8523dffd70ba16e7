// SPDX-License-Identifier: Apache-2.0
//! The `file` driver: a raw image file (or host block device) accessed with positional I/O.
//!
//! Reads and writes use `preadv`/`pwritev` straight into the request's buffers, flushes use
//! `fdatasync`, discards punch holes and write-zeroes use `fallocate` (with a plain write of
//! zeroes as the fallback). With [`CacheMode::None`] the file is opened with `O_DIRECT`; requests
//! whose buffers or range are not suitably aligned go through an aligned bounce buffer (with
//! read-modify-write of the partial blocks at either end).

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::buf::{direct_ok, gather, scatter, AlignedBuf, DIRECT_REQ_ALIGN, IOV_MAX};
use crate::lock::{self, LockConflict, LockError, Locking, Perms};
use crate::node::{BlockNode, CacheMode, IoBuf, SECTOR_SIZE};

/// Largest bounce buffer and zero-write chunk.
const CHUNK: u64 = 1 << 20;

/// Errors of [`FileNode::open`]. Each says its cause once: an underlying `io::Error` is the
/// error's source, never part of its text.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The image does not exist.
    #[error("Could not open '{0}': No such file or directory")]
    NotFound(PathBuf),
    /// The path names a directory.
    #[error("'{0}' is a directory, not a disk image")]
    IsDirectory(PathBuf),
    /// The path names something other than a regular file, a block device or a directory.
    #[error("'{path}' is {kind}, not a regular file or block device")]
    NotAnImage {
        /// The path.
        path: PathBuf,
        /// What it is, with its article (`a FIFO`, `a character device`, `a socket`).
        kind: &'static str,
    },
    /// The file cannot be opened for writing.
    #[error("Could not open '{0}' read-write (use read-only=on to open it read-only)")]
    ReadOnlyFile(PathBuf, #[source] io::Error),
    /// The image has no sectors.
    #[error("Disk image '{0}' is empty")]
    Empty(PathBuf),
    /// The image size is not a whole number of 512-byte sectors.
    #[error("Disk image '{path}' has size {size}, which is not a multiple of 512 bytes")]
    NotSectorMultiple {
        /// The image.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
    },
    /// The filesystem refused `O_DIRECT` (cache=none).
    #[error("Could not open '{0}' with cache=none: the filesystem does not support O_DIRECT")]
    DirectUnsupported(PathBuf),
    /// Another user of the image holds or refuses a permission this open needs (QEMU's image
    /// locking; see [`crate::lock`]). QEMU's two lines, folded into one.
    #[error("{conflict}: is another process using the image [{path}]?")]
    Locked {
        /// The image.
        path: PathBuf,
        /// The permission in the way.
        conflict: LockConflict,
    },
    /// The filesystem refused the image's locks.
    #[error("Could not lock '{0}'")]
    LockFailed(PathBuf, #[source] LockError),
    /// Any other failure to open or size the image.
    #[error("Could not open '{0}'")]
    Io(PathBuf, #[source] io::Error),
}

/// Why an image could not be handed over ([`crate::BlockNode::inactivate`],
/// [`crate::BlockNode::activate`]).
#[derive(Debug, thiserror::Error)]
pub enum HandOverError {
    /// The flush before inactivation failed: the image stays active.
    #[error("Cannot flush '{0}' before handing it over")]
    Flush(PathBuf, #[source] io::Error),
    /// Releasing the image's locks failed: the image stays active.
    #[error("Cannot release the locks of '{0}'")]
    Unlock(PathBuf, #[source] LockError),
    /// Taking the image's locks failed (another user still holds them): the image stays
    /// inactive. [`OpenError::Locked`] or [`OpenError::LockFailed`], as at open.
    #[error(transparent)]
    Lock(OpenError),
}

/// Refuses what is neither a regular file nor a block device, naming what it is.
fn check_file_type(path: &Path, ft: std::fs::FileType) -> Result<(), OpenError> {
    let kind = if ft.is_file() || ft.is_block_device() {
        return Ok(());
    } else if ft.is_dir() {
        return Err(OpenError::IsDirectory(path.to_path_buf()));
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else {
        "of an unknown file type"
    };
    Err(OpenError::NotAnImage {
        path: path.to_path_buf(),
        kind,
    })
}

/// Takes the locks of `perms` on `file`, as at open.
fn take_locks(file: &File, path: &Path, perms: Perms) -> Result<(), OpenError> {
    lock::lock(file, perms).map_err(|e| match e {
        LockError::Conflict(conflict) => OpenError::Locked {
            path: path.to_path_buf(),
            conflict,
        },
        e @ LockError::Io(..) => OpenError::LockFailed(path.to_path_buf(), e),
    })
}

/// Refuses an image of no sectors or a partial last sector.
fn check_size(path: &Path, size: u64) -> Result<(), OpenError> {
    if size == 0 {
        return Err(OpenError::Empty(path.to_path_buf()));
    }
    if !size.is_multiple_of(SECTOR_SIZE) {
        return Err(OpenError::NotSectorMultiple {
            path: path.to_path_buf(),
            size,
        });
    }
    Ok(())
}

/// A `file` node: a raw image.
#[derive(Debug)]
pub struct FileNode {
    node_name: String,
    path: PathBuf,
    file: Arc<File>,
    size: u64,
    read_only: bool,
    cache: CacheMode,
    /// Host bytes allocated (QMP's `actual-size`), measured at open and after each flush on
    /// the thread that ran it: queries read it without a syscall, so they never block on the
    /// storage (and may run out of band).
    allocated: Arc<AtomicU64>,
    /// The image is a block device or lies on a filesystem over one (its device number has
    /// a major): with `O_DIRECT`, a device then transfers the data itself (DMA).
    on_device: bool,
    /// The locks this node takes while active (`None` with `locking=off`).
    locks: Option<Perms>,
    /// Active: the node holds its locks and may write. An inactive node (QEMU's
    /// `BDRV_O_INACTIVE`: an incoming migration's image, or the source's after the hand-over)
    /// holds no locks and refuses writes.
    active: Arc<AtomicBool>,
}

/// Host bytes allocated to `file`, if `fstat` answers.
fn allocated_bytes(file: &File) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    file.metadata().ok().map(|m| m.blocks() * 512)
}

impl FileNode {
    /// Opens `path` as node `node_name` and locks it as QEMU locks a virtio-blk disk's image
    /// (see [`crate::lock`]).
    ///
    /// The path's type and (for regular files) size are checked with `stat` before anything
    /// is opened, so a FIFO does not block the open, a character device such as `/dev/kvm` is
    /// never opened read-write, and an empty `/proc` file is refused unopened; the opened file
    /// is checked again with `fstat`, in case the path was swapped in between.
    ///
    /// # Errors
    /// A missing file, a directory or other non-image (FIFO, character device, socket), an
    /// image that is empty or not a multiple of 512 bytes, a read-only file opened read-write,
    /// a filesystem without `O_DIRECT` for cache=none, an image another user has locked.
    pub fn open(
        node_name: impl Into<String>,
        path: impl AsRef<Path>,
        read_only: bool,
        cache: CacheMode,
    ) -> Result<Self, OpenError> {
        Self::open_with(node_name, path, read_only, cache, Locking::Auto)
    }

    /// [`FileNode::open_with`] for an incoming migration: the image is opened (and checked)
    /// but *inactive*, as QEMU opens images with `-incoming` (`BDRV_O_INACTIVE`): it takes no
    /// locks, so the source, which holds them, keeps running, and it refuses writes until
    /// [`BlockNode::activate`] takes the locks at the switchover.
    ///
    /// # Errors
    /// As [`FileNode::open_with`], but never a lock conflict.
    pub fn open_inactive(
        node_name: impl Into<String>,
        path: impl AsRef<Path>,
        read_only: bool,
        cache: CacheMode,
        locking: Locking,
    ) -> Result<Self, OpenError> {
        Self::open_opts(node_name, path, read_only, cache, locking, false)
    }

    /// [`FileNode::open`] with QEMU's `locking` option: `off` takes and checks no locks, so
    /// the image opens whoever else uses it.
    ///
    /// # Errors
    /// As [`FileNode::open`]; with `locking=off`, never a lock conflict.
    pub fn open_with(
        node_name: impl Into<String>,
        path: impl AsRef<Path>,
        read_only: bool,
        cache: CacheMode,
        locking: Locking,
    ) -> Result<Self, OpenError> {
        Self::open_opts(node_name, path, read_only, cache, locking, true)
    }

    fn open_opts(
        node_name: impl Into<String>,
        path: impl AsRef<Path>,
        read_only: bool,
        cache: CacheMode,
        locking: Locking,
        active: bool,
    ) -> Result<Self, OpenError> {
        let path = path.as_ref().to_path_buf();
        let meta = std::fs::metadata(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => OpenError::NotFound(path.clone()),
            _ => OpenError::Io(path.clone(), e),
        })?;
        check_file_type(&path, meta.file_type())?;
        if meta.is_file() {
            check_size(&path, meta.len())?;
        }
        let mut opts = OpenOptions::new();
        opts.read(true).write(!read_only);
        if cache.direct() {
            opts.custom_flags(libc::O_DIRECT);
        }
        let mut file = opts.open(&path).map_err(|e| match e.raw_os_error() {
            Some(libc::EACCES | libc::EROFS | libc::EPERM) if !read_only => {
                OpenError::ReadOnlyFile(path.clone(), e)
            }
            Some(libc::EINVAL) if cache.direct() => OpenError::DirectUnsupported(path.clone()),
            _ => OpenError::Io(path.clone(), e),
        })?;
        let meta = file
            .metadata()
            .map_err(|e| OpenError::Io(path.clone(), e))?;
        check_file_type(&path, meta.file_type())?;
        // Block devices report size 0 in their metadata: ask the file's end instead.
        let size = if meta.file_type().is_block_device() {
            file.seek(SeekFrom::End(0))
                .map_err(|e| OpenError::Io(path.clone(), e))?
        } else {
            meta.len()
        };
        check_size(&path, size)?;
        let locks = locking.enabled().then(|| Perms::virtio_blk(read_only));
        if let (Some(perms), true) = (locks, active) {
            take_locks(&file, &path, perms)?;
        }
        let allocated = Arc::new(AtomicU64::new(allocated_bytes(&file).unwrap_or(0)));
        // tmpfs, FUSE, NFS and other filesystems without a device of their own have an
        // anonymous device number (major 0): their O_DIRECT transfers are copies.
        let on_device = {
            use std::os::unix::fs::MetadataExt;
            meta.file_type().is_block_device() || libc::major(meta.dev()) != 0
        };
        let file = Arc::new(file);
        Ok(Self {
            node_name: node_name.into(),
            path,
            file,
            size,
            read_only,
            cache,
            allocated,
            on_device,
            locks,
            active: Arc::new(AtomicBool::new(active)),
        })
    }

    fn is_active_now(&self) -> bool {
        self.active.load(Ordering::SeqCst)
    }

    /// Writes are refused while the node is inactive (QEMU's `EPERM` for writes to an
    /// inactive image).
    fn check_writable(&self) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        if !self.is_active_now() {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        Ok(())
    }

    /// Measures the allocation again (on the I/O thread, after a request that changes it).
    fn remeasure(&self) {
        if let Some(n) = allocated_bytes(&self.file) {
            self.allocated.store(n, Ordering::Relaxed);
        }
    }

    fn needs_bounce(&self, offset: u64, bufs: &[IoBuf<'_>]) -> bool {
        self.cache.direct()
            && !direct_ok(
                offset,
                bufs.iter()
                    .map(|b| (b.ptr_guard().as_ptr() as usize, b.len())),
            )
    }

    /// Runs `preadv`/`pwritev` until every byte of `bufs` is transferred. A read that meets the
    /// end of the file fills the rest with zeroes.
    fn transfer(&self, offset: u64, bufs: &[IoBuf<'_>], write: bool) -> io::Result<()> {
        let guards: Vec<_> = bufs
            .iter()
            .filter(|b| !b.is_empty())
            .map(|b| b.ptr_guard_mut())
            .collect();
        let mut iov: Vec<libc::iovec> = guards
            .iter()
            .map(|g| libc::iovec {
                iov_base: g.as_ptr().cast(),
                iov_len: g.len(),
            })
            .collect();
        let fd = self.file.as_raw_fd();
        let mut idx = 0;
        let mut pos = offset;
        while idx < iov.len() {
            let cnt = (iov.len() - idx).min(IOV_MAX);
            let off = libc::off_t::try_from(pos)
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            // SAFETY: every iovec points into a buffer kept alive (and mapped) by `guards` for
            // the duration of the call, with its exact length; `cnt` iovecs are in bounds.
            let ret = unsafe {
                if write {
                    libc::pwritev(fd, iov[idx..].as_ptr(), cnt as libc::c_int, off)
                } else {
                    libc::preadv(fd, iov[idx..].as_ptr(), cnt as libc::c_int, off)
                }
            };
            if ret < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            let mut done = ret as usize;
            if done == 0 {
                if write {
                    return Err(io::Error::from(io::ErrorKind::WriteZero));
                }
                // End of file (the image shrank under us): the rest reads as zeroes.
                for v in &iov[idx..] {
                    // SAFETY: the iovec describes live, writable memory of `iov_len` bytes
                    // (see above).
                    unsafe { std::ptr::write_bytes(v.iov_base.cast::<u8>(), 0, v.iov_len) };
                }
                return Ok(());
            }
            pos += done as u64;
            while done > 0 && idx < iov.len() {
                if done >= iov[idx].iov_len {
                    done -= iov[idx].iov_len;
                    idx += 1;
                } else {
                    // SAFETY: `done` is less than the iovec's length, so the new base stays
                    // inside the same buffer.
                    iov[idx].iov_base = unsafe { iov[idx].iov_base.cast::<u8>().add(done) }.cast();
                    iov[idx].iov_len -= done;
                    done = 0;
                }
            }
        }
        Ok(())
    }

    /// Reads or writes through an aligned bounce buffer, `CHUNK` bytes at a time.
    fn bounce(&self, offset: u64, bufs: &[IoBuf<'_>], write: bool) -> io::Result<()> {
        let total: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        let mut done = 0u64;
        while done < total {
            let len = (total - done).min(CHUNK);
            let start = offset + done;
            let a_start = start - start % DIRECT_REQ_ALIGN;
            let a_end = (start + len).div_ceil(DIRECT_REQ_ALIGN) * DIRECT_REQ_ALIGN;
            let mut buf = AlignedBuf::new((a_end - a_start) as usize)?;
            let head = (start - a_start) as usize;
            if !write || head != 0 || a_end != start + len {
                // Reads need the whole window; writes need the partial blocks at either end.
                self.transfer(a_start, &[buf.as_io_buf()], false)?;
            }
            let window = &mut buf.as_mut_slice()[head..head + len as usize];
            if write {
                gather(bufs, done, window);
                self.transfer(a_start, &[buf.as_io_buf()], true)?;
            } else {
                scatter(bufs, done, window);
            }
            done += len;
        }
        Ok(())
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let len =
            libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        loop {
            // SAFETY: fallocate on our own descriptor; it touches no memory of ours.
            let ret = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off, len) };
            if ret == 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    fn write_zero_buffers(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut buf = AlignedBuf::new(len.min(CHUNK) as usize)?;
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK) as usize;
            let slice = buf.as_io_buf().subslice(0, n).map_err(io::Error::other)?;
            self.transfer(offset + done, &[slice], true)?;
            done += n as u64;
        }
        Ok(())
    }
}

fn unsupported(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL)
    )
}

/// The host file under a node chain that forwards every request unchanged (`file`, `raw`,
/// the fault-injection filter without rules): what an engine that submits the syscalls
/// itself (io_uring) needs. It keeps the file open while requests are in flight.
#[derive(Debug, Clone)]
pub struct HostFile {
    file: Arc<File>,
    cache: CacheMode,
    read_only: bool,
    on_device: bool,
    allocated: Arc<AtomicU64>,
}

impl HostFile {
    /// The file descriptor.
    pub fn fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }

    /// Whether the file is open with `O_DIRECT` (buffers, offsets and lengths aligned).
    pub fn direct(&self) -> bool {
        self.cache.direct()
    }

    /// Whether a device transfers the data into the buffers itself (DMA): `O_DIRECT` on a
    /// block device or a filesystem over one (not tmpfs, FUSE, NFS: their `O_DIRECT`
    /// transfers are copies). Such transfers are faster into physically contiguous memory.
    pub fn dma(&self) -> bool {
        self.cache.direct() && self.on_device
    }

    /// Whether flushes are no-ops (`cache=unsafe`, or read-only).
    pub fn no_flush(&self) -> bool {
        self.cache.no_flush() || self.read_only
    }

    /// Measures the allocation again, after a request that changes it (QMP's `actual-size`).
    pub fn remeasure(&self) {
        if let Some(n) = allocated_bytes(&self.file) {
            self.allocated.store(n, Ordering::Relaxed);
        }
    }
}

impl BlockNode for FileNode {
    fn node_name(&self) -> &str {
        &self.node_name
    }

    fn driver(&self) -> &str {
        "file"
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn cache(&self) -> CacheMode {
        self.cache
    }

    fn filename(&self) -> Option<&Path> {
        Some(&self.path)
    }

    fn actual_size(&self) -> Option<u64> {
        Some(self.allocated.load(Ordering::Relaxed))
    }

    fn is_active(&self) -> bool {
        self.is_active_now()
    }

    /// Flushes (`fdatasync`, whatever the cache mode: the other side reads the file next) a
    /// writable image, then releases its locks; the file stays open. Already inactive:
    /// nothing to do.
    fn inactivate(&self) -> Result<(), HandOverError> {
        if !self.is_active_now() {
            return Ok(());
        }
        if !self.read_only {
            self.file
                .sync_data()
                .map_err(|e| HandOverError::Flush(self.path.clone(), e))?;
            self.remeasure();
        }
        // Writes are refused from here on: the locks that kept others out go next.
        self.active.store(false, Ordering::SeqCst);
        if self.locks.is_some() {
            if let Err(e) = lock::unlock(&self.file) {
                self.active.store(true, Ordering::SeqCst);
                return Err(HandOverError::Unlock(self.path.clone(), e));
            }
        }
        Ok(())
    }

    /// Takes the image's locks again, checking for conflicts as at open, and accepts writes.
    /// Already active: nothing to do.
    fn activate(&self) -> Result<(), HandOverError> {
        if self.is_active_now() {
            return Ok(());
        }
        if let Some(perms) = self.locks {
            if let Err(e) = take_locks(&self.file, &self.path, perms) {
                // What was taken before the conflict goes again: inactive means no locks.
                let _ = lock::unlock(&self.file);
                return Err(HandOverError::Lock(e));
            }
        }
        self.active.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn host_file(&self) -> Option<HostFile> {
        // An inactive image's requests go through the node, which refuses writes.
        if !self.is_active_now() {
            return None;
        }
        Some(HostFile {
            file: self.file.clone(),
            cache: self.cache,
            read_only: self.read_only,
            on_device: self.on_device,
            allocated: self.allocated.clone(),
        })
    }

    fn read_vectored(&self, offset: u64, bufs: &[IoBuf<'_>]) -> io::Result<()> {
        if self.needs_bounce(offset, bufs) {
            self.bounce(offset, bufs, false)
        } else {
            self.transfer(offset, bufs, false)
        }
    }

    fn write_vectored(&self, offset: u64, bufs: &[IoBuf<'_>]) -> io::Result<()> {
        self.check_writable()?;
        if self.needs_bounce(offset, bufs) {
            self.bounce(offset, bufs, true)
        } else {
            self.transfer(offset, bufs, true)
        }
    }

    fn flush(&self) -> io::Result<()> {
        // Nothing was written since an inactivation flushed.
        if self.cache.no_flush() || self.read_only || !self.is_active_now() {
            return Ok(());
        }
        self.file.sync_data()?;
        self.remeasure();
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check_writable()?;
        let result = match self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            Err(e) if unsupported(&e) => Ok(()),
            other => other,
        };
        self.remeasure();
        result
    }

    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> io::Result<()> {
        self.check_writable()?;
        if may_unmap {
            let punched = self.fallocate(
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            );
            self.remeasure();
            match punched {
                Err(e) if unsupported(&e) => {}
                other => return other,
            }
        }
        match self.fallocate(
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            Err(e) if unsupported(&e) => self.write_zero_buffers(offset, len),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use vmm_sys_util::tempdir::TempDir;
    use vmm_sys_util::tempfile::TempFile;

    use super::*;

    /// `dma()`: O_DIRECT on a filesystem over a device; tmpfs's O_DIRECT is a copy (and a
    /// page-cache open is never DMA).
    #[test]
    fn dma_only_with_o_direct_on_a_device() {
        let shm = TempFile::new_in(Path::new("/dev/shm")).unwrap();
        shm.as_file().set_len(1 << 20).unwrap();
        let node = FileNode::open("n", shm.as_path(), false, CacheMode::Writeback).unwrap();
        assert!(!node.host_file().unwrap().dma());
        // tmpfs takes O_DIRECT since Linux 6.6.
        if let Ok(node) = FileNode::open("n", shm.as_path(), false, CacheMode::None) {
            let host = node.host_file().unwrap();
            assert!(host.direct() && !host.dma());
        }
        // The build tree: on a disk (ext4, xfs) wherever the tests run from one.
        use std::os::unix::fs::MetadataExt;
        let here = std::env::current_exe().unwrap();
        let dev = std::fs::metadata(&here).unwrap().dev();
        let on_disk = TempFile::new_in(here.parent().unwrap()).unwrap();
        on_disk.as_file().set_len(1 << 20).unwrap();
        let node = FileNode::open("n", on_disk.as_path(), false, CacheMode::None).unwrap();
        assert_eq!(node.host_file().unwrap().dma(), libc::major(dev) != 0);
    }

    fn image(len: usize, fill: impl Fn(usize) -> u8) -> TempFile {
        let f = TempFile::new().unwrap();
        let data: Vec<u8> = (0..len).map(fill).collect();
        std::fs::write(f.as_path(), data).unwrap();
        f
    }

    fn read(node: &FileNode, offset: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        node.read_vectored(offset, &[IoBuf::from(v.as_mut_slice())])
            .unwrap();
        v
    }

    #[test]
    fn open_checks() {
        let dir = TempDir::new().unwrap();
        let missing = dir.as_path().join("nope.img");
        let e = FileNode::open("n", &missing, false, CacheMode::Writeback).unwrap_err();
        assert!(matches!(e, OpenError::NotFound(_)), "{e}");
        assert!(e.to_string().contains("No such file or directory"));

        let e = FileNode::open("n", dir.as_path(), false, CacheMode::Writeback).unwrap_err();
        assert!(matches!(e, OpenError::IsDirectory(_)), "{e}");

        let empty = image(0, |_| 0);
        let e = FileNode::open("n", empty.as_path(), false, CacheMode::Writeback).unwrap_err();
        assert!(matches!(e, OpenError::Empty(_)), "{e}");

        let odd = image(1000, |_| 0);
        let e = FileNode::open("n", odd.as_path(), false, CacheMode::Writeback).unwrap_err();
        assert!(
            matches!(e, OpenError::NotSectorMultiple { size: 1000, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("multiple of 512"));

        let ok = image(4096, |_| 0);
        let node = FileNode::open("n", ok.as_path(), true, CacheMode::Writeback).unwrap();
        assert_eq!(node.size(), 4096);
        assert_eq!(node.driver(), "file");
        assert_eq!(node.filename(), Some(ok.as_path()));
    }

    /// Opens on a thread, so that an open that blocks fails the test instead of hanging it.
    fn open_with_timeout(path: &Path, read_only: bool, cache: CacheMode) -> OpenError {
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.to_path_buf();
        std::thread::spawn(move || {
            let _ = tx.send(FileNode::open("n", &p, read_only, cache).map(|_| ()));
        });
        match rx.recv_timeout(std::time::Duration::from_secs(10)) {
            Ok(r) => r.expect_err("not an image"),
            Err(_) => panic!("opening {} blocked", path.display()),
        }
    }

    #[test]
    fn non_images_are_refused_by_type_before_opening() {
        let dir = TempDir::new().unwrap();
        let fifo = dir.as_path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path, which outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let sock = dir.as_path().join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let cases = [
            (fifo.as_path(), "a FIFO"),
            (Path::new("/dev/null"), "a character device"),
            (sock.as_path(), "a socket"),
        ];
        for (path, kind) in cases {
            for (read_only, cache) in [
                (true, CacheMode::Writeback),
                (false, CacheMode::Writeback),
                // cache=none must not turn this into an O_DIRECT complaint.
                (true, CacheMode::None),
            ] {
                let e = open_with_timeout(path, read_only, cache);
                assert!(matches!(e, OpenError::NotAnImage { .. }), "{e}");
                assert_eq!(
                    e.to_string(),
                    format!(
                        "'{}' is {kind}, not a regular file or block device",
                        path.display()
                    )
                );
            }
        }
        // A directory keeps its own text.
        let e = open_with_timeout(dir.as_path(), true, CacheMode::None);
        assert_eq!(
            e.to_string(),
            format!(
                "'{}' is a directory, not a disk image",
                dir.as_path().display()
            )
        );
        // /proc/self/mem is a regular file of size 0: refused by its size, unopened.
        let e = open_with_timeout(Path::new("/proc/self/mem"), false, CacheMode::Writeback);
        assert_eq!(e.to_string(), "Disk image '/proc/self/mem' is empty");
    }

    #[test]
    fn errors_say_their_cause_once() {
        let path = PathBuf::from("ro.raw");
        let e = OpenError::ReadOnlyFile(path.clone(), io::Error::from_raw_os_error(libc::EROFS));
        let text = e.to_string();
        let cause = std::error::Error::source(&e).unwrap().to_string();
        assert!(!text.contains(&cause), "{text}");
        assert_eq!(
            text,
            "Could not open 'ro.raw' read-write (use read-only=on to open it read-only)"
        );
        let e = OpenError::Io(path, io::Error::from_raw_os_error(libc::EIO));
        let cause = std::error::Error::source(&e).unwrap().to_string();
        assert!(!e.to_string().contains(&cause), "{e}");
    }

    #[test]
    fn images_are_locked_like_qemu_locks_them() {
        let f = image(4096, |_| 0);
        let p = f.as_path();
        let rw = FileNode::open("a", p, false, CacheMode::Writeback).unwrap();
        let e = FileNode::open("b", p, false, CacheMode::Writeback).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "Failed to get \"write\" lock: is another process using the image [{}]?",
                p.display()
            )
        );
        let e = FileNode::open("b", p, true, CacheMode::Writeback).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("Failed to get shared \"write\" lock: is another process"),
            "{e}"
        );
        drop(rw);
        let ro1 = FileNode::open("a", p, true, CacheMode::Writeback).unwrap();
        let ro2 = FileNode::open("b", p, true, CacheMode::Writeback).unwrap();
        assert!(matches!(
            FileNode::open("c", p, false, CacheMode::Writeback),
            Err(OpenError::Locked { .. })
        ));
        drop((ro1, ro2));
        FileNode::open("c", p, false, CacheMode::Writeback).unwrap();
    }

    #[test]
    fn locking_off_neither_takes_nor_checks_locks() {
        let f = image(4096, |_| 0);
        let p = f.as_path();
        let on = |name| FileNode::open_with(name, p, false, CacheMode::Writeback, Locking::On);
        let off = |name| FileNode::open_with(name, p, false, CacheMode::Writeback, Locking::Off);
        let a = on("a").unwrap();
        assert!(matches!(on("b"), Err(OpenError::Locked { .. })));
        // Opens despite the writer's locks...
        let b = off("b").unwrap();
        drop(a);
        // ...and holds none: a locking writer opens beside it.
        let c = on("c").unwrap();
        drop((b, c));
    }

    #[test]
    fn read_only_file_needs_read_only_open() {
        // Root ignores file permissions; the check is only meaningful for other users.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            return;
        }
        let f = image(512, |_| 0);
        std::fs::set_permissions(f.as_path(), std::fs::Permissions::from_mode(0o444)).unwrap();
        let e = FileNode::open("n", f.as_path(), false, CacheMode::Writeback).unwrap_err();
        assert!(matches!(e, OpenError::ReadOnlyFile(..)), "{e}");
        FileNode::open("n", f.as_path(), true, CacheMode::Writeback).unwrap();
    }

    #[test]
    fn vectored_read_write_round_trip() {
        let f = image(8192, |i| (i / 512) as u8);
        let node = FileNode::open("n", f.as_path(), false, CacheMode::Writeback).unwrap();
        let mut a = vec![0u8; 100];
        let mut b = vec![0u8; 924];
        node.read_vectored(
            512,
            &[IoBuf::from(a.as_mut_slice()), IoBuf::from(b.as_mut_slice())],
        )
        .unwrap();
        assert!(a.iter().all(|&x| x == 1));
        assert!(b[..412].iter().all(|&x| x == 1) && b[412..].iter().all(|&x| x == 2));

        let mut w1 = vec![0xaau8; 300];
        let mut w2 = vec![0xbbu8; 212];
        node.write_vectored(
            1024,
            &[
                IoBuf::from(w1.as_mut_slice()),
                IoBuf::from(w2.as_mut_slice()),
            ],
        )
        .unwrap();
        let back = read(&node, 1024, 512);
        assert_eq!(&back[..300], &w1[..]);
        assert_eq!(&back[300..], &w2[..]);
        node.flush().unwrap();
        assert_eq!(std::fs::read(f.as_path()).unwrap()[1024 + 299], 0xaa);
    }

    #[test]
    fn read_past_end_of_file_reads_zeroes() {
        let f = image(1024, |_| 7);
        let node = FileNode::open("n", f.as_path(), false, CacheMode::Writeback).unwrap();
        // The file shrinks behind the node's back.
        f.as_file().set_len(512).unwrap();
        let v = read(&node, 0, 1024);
        assert!(v[..512].iter().all(|&x| x == 7));
        assert!(v[512..].iter().all(|&x| x == 0));
    }

    #[test]
    fn read_only_node_refuses_writes() {
        let f = image(1024, |_| 7);
        let node = FileNode::open("n", f.as_path(), true, CacheMode::Writeback).unwrap();
        let mut w = vec![0u8; 512];
        let e = node
            .write_vectored(0, &[IoBuf::from(w.as_mut_slice())])
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS));
        assert!(node.discard(0, 512).is_err());
        assert!(node.write_zeroes(0, 512, true).is_err());
        assert!(std::fs::read(f.as_path()).unwrap().iter().all(|&x| x == 7));
    }

    fn allocated_bytes(f: &TempFile) -> u64 {
        use std::os::unix::fs::MetadataExt;
        f.as_file().metadata().unwrap().blocks() * 512
    }

    #[test]
    fn discard_and_write_zeroes_keep_size_and_zero() {
        let f = image(1 << 20, |_| 0x5a);
        let node = FileNode::open("n", f.as_path(), false, CacheMode::Writeback).unwrap();
        f.as_file().sync_all().unwrap();
        let before = allocated_bytes(&f);
        node.discard(0, 256 << 10).unwrap();
        assert_eq!(f.as_file().metadata().unwrap().len(), 1 << 20);
        assert!(read(&node, 0, 4096).iter().all(|&x| x == 0));
        assert!(allocated_bytes(&f) < before);
        assert_eq!(node.actual_size(), Some(allocated_bytes(&f)));

        node.write_zeroes(512 << 10, 4096, false).unwrap();
        let v = read(&node, (512 << 10) - 512, 4096 + 1024);
        assert!(v[..512].iter().all(|&x| x == 0x5a));
        assert!(v[512..512 + 4096].iter().all(|&x| x == 0));
        assert!(v[512 + 4096..].iter().all(|&x| x == 0x5a));

        node.write_zeroes(768 << 10, 8192, true).unwrap();
        assert!(read(&node, 768 << 10, 8192).iter().all(|&x| x == 0));
        assert_eq!(f.as_file().metadata().unwrap().len(), 1 << 20);

        node.write_zero_buffers((900 << 10) + 488, 100).unwrap();
        let v = read(&node, 900 << 10, 1024);
        assert!(v[..488].iter().all(|&x| x == 0x5a));
        assert!(v[488..588].iter().all(|&x| x == 0));
        assert!(v[588..].iter().all(|&x| x == 0x5a));
    }

    #[test]
    fn unsafe_cache_ignores_flush() {
        let f = image(512, |_| 0);
        let node = FileNode::open("n", f.as_path(), false, CacheMode::Unsafe).unwrap();
        node.flush().unwrap();
        assert_eq!(node.cache(), CacheMode::Unsafe);
    }

    #[test]
    fn direct_io_bounces_misaligned_requests() {
        let f = image(4 << 20, |i| (i % 251) as u8);
        let node = match FileNode::open("n", f.as_path(), false, CacheMode::None) {
            Ok(n) => n,
            // The temporary directory's filesystem has no O_DIRECT (tmpfs): nothing to test.
            Err(OpenError::DirectUnsupported(_)) => return,
            Err(e) => panic!("{e}"),
        };
        let expect = |off: usize, len: usize| -> Vec<u8> {
            (off..off + len).map(|i| (i % 251) as u8).collect()
        };
        // Misaligned buffer (heap Vec) and misaligned offset/length.
        assert_eq!(read(&node, 100, 1000), expect(100, 1000));
        // Aligned everything through an aligned buffer: no bounce.
        let mut ab = AlignedBuf::new(8192).unwrap();
        assert!(!node.needs_bounce(4096, &[ab.as_io_buf()]));
        node.read_vectored(4096, &[ab.as_io_buf()]).unwrap();
        assert_eq!(ab.as_mut_slice().to_vec(), expect(4096, 8192));
        // Read-modify-write of partial blocks.
        let mut w = vec![0xeeu8; 700];
        node.write_vectored(300, &[IoBuf::from(w.as_mut_slice())])
            .unwrap();
        let v = read(&node, 0, 2048);
        assert_eq!(&v[..300], &expect(0, 300)[..]);
        assert!(v[300..1000].iter().all(|&x| x == 0xee));
        assert_eq!(&v[1000..], &expect(1000, 1048)[..]);
        // A multi-chunk misaligned write.
        let mut big = vec![0x11u8; CHUNK as usize + 1536];
        node.write_vectored(512, &[IoBuf::from(big.as_mut_slice())])
            .unwrap();
        assert!(read(&node, 512, big.len()).iter().all(|&x| x == 0x11));
        node.flush().unwrap();
    }

    fn write(node: &FileNode, offset: u64, byte: u8) -> io::Result<()> {
        let mut v = vec![byte; 512];
        node.write_vectored(offset, &[IoBuf::from(v.as_mut_slice())])
    }

    /// The hand-over of a migration, two opens of one image in one process (OFD locks
    /// conflict within a process as between two).
    #[test]
    fn inactive_open_and_the_hand_over() {
        let f = image(4096, |_| 0);
        let open = |read_only| FileNode::open("src", f.as_path(), read_only, CacheMode::Writeback);
        let inactive = || {
            FileNode::open_inactive(
                "dst",
                f.as_path(),
                false,
                CacheMode::Writeback,
                Locking::Auto,
            )
        };
        let src = open(false).unwrap();
        assert!(src.is_active());
        // With the source active, a second active open fails; an inactive one succeeds.
        let e = open(false).unwrap_err();
        assert!(matches!(e, OpenError::Locked { .. }), "{e}");
        let dst = inactive().unwrap();
        assert!(!dst.is_active());
        assert!(dst.host_file().is_none());
        // The incoming side reads, refuses writes, and cannot take the image yet.
        assert_eq!(read(&dst, 0, 512), vec![0; 512]);
        assert_eq!(
            write(&dst, 0, 1).unwrap_err().raw_os_error(),
            Some(libc::EPERM)
        );
        assert_eq!(
            dst.discard(0, 512).unwrap_err().raw_os_error(),
            Some(libc::EPERM)
        );
        let e = dst.activate().unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "Failed to get \"write\" lock: is another process using the image [{}]?",
                f.as_path().display()
            )
        );
        assert!(
            !dst.is_active(),
            "a failed activation leaves the node inactive"
        );
        // The source writes, then hands the image over: flushed, unlocked, writes refused.
        write(&src, 512, 0xab).unwrap();
        src.inactivate().unwrap();
        assert!(!src.is_active());
        assert_eq!(
            write(&src, 0, 1).unwrap_err().raw_os_error(),
            Some(libc::EPERM)
        );
        src.inactivate().unwrap();
        // The destination takes it over and sees the source's data.
        dst.activate().unwrap();
        assert!(dst.is_active() && dst.host_file().is_some());
        assert_eq!(read(&dst, 512, 512), vec![0xab; 512]);
        write(&dst, 1024, 0xcd).unwrap();
        // Now the source cannot take it back, nor can a third user open it.
        assert!(matches!(
            src.activate(),
            Err(HandOverError::Lock(OpenError::Locked { .. }))
        ));
        assert!(open(false).is_err());
        drop((src, dst));

        // A migration that fails after the hand-over: the source takes its image back.
        let src = open(false).unwrap();
        let dst = inactive().unwrap();
        src.inactivate().unwrap();
        src.activate().unwrap();
        write(&src, 0, 7).unwrap();
        assert!(matches!(dst.activate(), Err(HandOverError::Lock(_))));
        assert!(open(false).is_err(), "the source's locks are back");
        drop(dst);

        // Read-only images and locking=off hand over too.
        drop(src);
        let ro = open(true).unwrap();
        let ro2 = open(true).unwrap();
        ro.inactivate().unwrap();
        ro.activate().unwrap();
        drop((ro, ro2));
        let off = FileNode::open_inactive(
            "off",
            f.as_path(),
            false,
            CacheMode::Writeback,
            Locking::Off,
        )
        .unwrap();
        let src = open(false).unwrap();
        off.activate().unwrap();
        assert!(off.is_active());
        drop(src);
    }
}
