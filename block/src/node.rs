// SPDX-License-Identifier: Apache-2.0
//! The node interface of the block graph, the cache modes and the I/O kinds.

use std::fmt;
use std::io;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use vm_memory::VolatileSlice;

/// The unit of addressing of the devices on top of the block layer (bytes).
pub const SECTOR_SIZE: u64 = 512;

/// A buffer of an I/O request: usually a piece of guest memory.
pub type IoBuf<'a> = VolatileSlice<'a, ()>;

/// The kinds of I/O a node performs; statistics and error policies are kept per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoKind {
    /// Read into buffers.
    Read,
    /// Write from buffers.
    Write,
    /// Make previous writes durable.
    Flush,
    /// Deallocate a range (QMP calls it "unmap").
    Discard,
    /// Make a range read back as zeroes.
    WriteZeroes,
}

impl IoKind {
    /// Whether the operation modifies the image (the `write` operation of `BLOCK_IO_ERROR`).
    pub fn is_write(self) -> bool {
        !matches!(self, IoKind::Read)
    }

    /// A name for messages: `read`, `write`, `flush`, `discard`, `write-zeroes`.
    pub fn as_str(self) -> &'static str {
        match self {
            IoKind::Read => "read",
            IoKind::Write => "write",
            IoKind::Flush => "flush",
            IoKind::Discard => "discard",
            IoKind::WriteZeroes => "write-zeroes",
        }
    }

    /// The `operation` of QMP's `BLOCK_IO_ERROR`: `read` or `write`.
    pub fn qmp_operation(self) -> &'static str {
        if self.is_write() {
            "write"
        } else {
            "read"
        }
    }
}

/// How the host page cache is used (QEMU's `cache=` shorthand).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// Through the host page cache; flushes reach the disk with `fdatasync`.
    #[default]
    Writeback,
    /// `O_DIRECT`: bypass the host page cache; flushes still `fdatasync`.
    None,
    /// Through the host page cache, and flushes are ignored (data may be lost on a host crash).
    Unsafe,
}

impl CacheMode {
    /// QMP's `cache.writeback`: the guest sees a volatile write cache (always true here).
    pub fn writeback(self) -> bool {
        true
    }

    /// QMP's `cache.direct`: the host page cache is bypassed.
    pub fn direct(self) -> bool {
        self == CacheMode::None
    }

    /// QMP's `cache.no-flush`: flushes are ignored.
    pub fn no_flush(self) -> bool {
        self == CacheMode::Unsafe
    }

    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheMode::Writeback => "writeback",
            CacheMode::None => "none",
            CacheMode::Unsafe => "unsafe",
        }
    }
}

impl fmt::Display for CacheMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown `cache=` value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("Invalid cache mode '{0}' (expected writeback, none or unsafe)")]
pub struct ParseCacheModeError(pub String);

impl FromStr for CacheMode {
    type Err = ParseCacheModeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "writeback" => Ok(CacheMode::Writeback),
            "none" => Ok(CacheMode::None),
            "unsafe" => Ok(CacheMode::Unsafe),
            other => Err(ParseCacheModeError(other.to_string())),
        }
    }
}

/// The engine that runs a disk's host I/O (QEMU's `aio` option of the `file` driver).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Aio {
    /// Blocking syscalls on the device's request threads (QEMU's `threads`).
    Threads,
    /// io_uring on the device's I/O thread: requests of one notification submitted together,
    /// completions reaped in batches (QEMU's `io_uring`; `native` is taken as this too).
    #[default]
    IoUring,
}

impl Aio {
    /// The value as QEMU spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Aio::Threads => "threads",
            Aio::IoUring => "io_uring",
        }
    }
}

impl fmt::Display for Aio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An `aio` value that is not one of `threads`, `io_uring`, `native`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Parameter 'aio' does not accept value '{0}'")]
pub struct ParseAioError(pub String);

impl FromStr for Aio {
    type Err = ParseAioError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "threads" => Ok(Aio::Threads),
            "io_uring" | "native" => Ok(Aio::IoUring),
            other => Err(ParseAioError(other.to_owned())),
        }
    }
}

/// Whether this host lets the process use io_uring (probed once: a ring is created and
/// dropped). The error says why not (e.g. `kernel.io_uring_disabled`, a seccomp filter).
///
/// # Errors
/// Creating a ring failed.
pub fn io_uring_available() -> Result<(), io::Error> {
    static PROBE: std::sync::OnceLock<Result<(), (io::ErrorKind, String)>> =
        std::sync::OnceLock::new();
    PROBE
        .get_or_init(|| {
            io_uring::IoUring::new(2)
                .map(drop)
                .map_err(|e| (e.kind(), e.to_string()))
        })
        .clone()
        .map_err(|(kind, msg)| io::Error::new(kind, msg))
}

fn no_child() -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, "block node has no child")
}

/// A node of the block graph.
///
/// Protocol nodes (such as [`crate::FileNode`]) implement every method. Filter nodes return
/// their child from [`BlockNode::child`] and override only what they intercept: the provided
/// methods forward to the child. Offsets and lengths are in bytes and have been validated
/// against [`BlockNode::size`] by the backend; nodes must still never touch bytes outside it.
/// Methods take `&self`: a node may be used by several threads and does its own locking.
pub trait BlockNode: Send + Sync + fmt::Debug {
    /// The node's `node-name`, unique in the graph.
    fn node_name(&self) -> &str;

    /// The driver name, as QMP reports it (`file`, `blkdebug`, ...).
    fn driver(&self) -> &str;

    /// The node this one filters, if it is a filter.
    fn child(&self) -> Option<Arc<dyn BlockNode>> {
        None
    }

    /// Whether this is an implicit filter (QEMU's `bs->implicit`): inserted by the VMM, not
    /// the user, and skipped by queries and error events.
    fn implicit(&self) -> bool {
        false
    }

    /// Size in bytes the guest sees.
    fn size(&self) -> u64 {
        self.child().map_or(0, |c| c.size())
    }

    /// Whether writes are refused.
    fn read_only(&self) -> bool {
        self.child().is_none_or(|c| c.read_only())
    }

    /// The cache mode of the protocol node underneath.
    fn cache(&self) -> CacheMode {
        self.child().map_or(CacheMode::default(), |c| c.cache())
    }

    /// The image file underneath, when there is one.
    fn filename(&self) -> Option<&Path> {
        None
    }

    /// Host bytes allocated to the image (QMP's `actual-size`), when known.
    fn actual_size(&self) -> Option<u64> {
        self.child().and_then(|c| c.actual_size())
    }

    /// The host file this node reads and writes with every request unchanged, if any: the
    /// `file` driver's own, forwarded by nodes that change nothing (`raw`, the fault filter
    /// without rules). An engine that submits host syscalls itself (io_uring) may then
    /// bypass the node chain; `None` (the default, for any filter that acts on requests)
    /// means requests must go through [`BlockNode::read_vectored`] and the others.
    fn host_file(&self) -> Option<crate::file::HostFile> {
        None
    }

    /// Whether the node is active: it holds its image's locks and writes (QEMU's nodes
    /// without `BDRV_O_INACTIVE`). Filters answer for their child; a node without an image
    /// is always active.
    fn is_active(&self) -> bool {
        self.child().is_none_or(|c| c.is_active())
    }

    /// Hands the image over to another process (the end of an outgoing migration): flushes
    /// what was written and releases the image's locks, keeping it open; writes are refused
    /// until [`BlockNode::activate`]. Filters forward to their child.
    ///
    /// # Errors
    /// The flush or the unlock failed; the node stays active.
    fn inactivate(&self) -> Result<(), crate::file::HandOverError> {
        self.child().map_or(Ok(()), |c| c.inactivate())
    }

    /// Takes the image over (an incoming migration's switchover, or the source's when a
    /// migration fails): takes its locks, checking that nobody else holds them, and accepts
    /// writes again. Filters forward to their child.
    ///
    /// # Errors
    /// Another user holds a lock in the way; the node stays inactive.
    fn activate(&self) -> Result<(), crate::file::HandOverError> {
        self.child().map_or(Ok(()), |c| c.activate())
    }

    /// Reads `offset..offset + total length of bufs` into `bufs`, in order.
    ///
    /// # Errors
    /// The host error of the read.
    fn read_vectored(&self, offset: u64, bufs: &[IoBuf<'_>]) -> io::Result<()> {
        self.child()
            .ok_or_else(no_child)?
            .read_vectored(offset, bufs)
    }

    /// Writes `bufs`, in order, at `offset`.
    ///
    /// # Errors
    /// The host error of the write.
    fn write_vectored(&self, offset: u64, bufs: &[IoBuf<'_>]) -> io::Result<()> {
        self.child()
            .ok_or_else(no_child)?
            .write_vectored(offset, bufs)
    }

    /// Makes every completed write durable.
    ///
    /// # Errors
    /// The host error of the flush.
    fn flush(&self) -> io::Result<()> {
        self.child().ok_or_else(no_child)?.flush()
    }

    /// Deallocates `offset..offset + len`; the contents become unspecified. Advisory: a node
    /// that cannot deallocate succeeds without doing anything.
    ///
    /// # Errors
    /// The host error of the deallocation.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.child().ok_or_else(no_child)?.discard(offset, len)
    }

    /// Makes `offset..offset + len` read back as zeroes; `may_unmap` allows deallocating it.
    ///
    /// # Errors
    /// The host error of the operation.
    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> io::Result<()> {
        self.child()
            .ok_or_else(no_child)?
            .write_zeroes(offset, len, may_unmap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_modes_parse_and_describe() {
        assert_eq!("writeback".parse(), Ok(CacheMode::Writeback));
        assert_eq!("none".parse(), Ok(CacheMode::None));
        assert_eq!("unsafe".parse(), Ok(CacheMode::Unsafe));
        assert_eq!(
            "directsync".parse::<CacheMode>(),
            Err(ParseCacheModeError("directsync".into()))
        );
        assert!(CacheMode::None.direct() && !CacheMode::None.no_flush());
        assert!(CacheMode::Unsafe.no_flush() && !CacheMode::Unsafe.direct());
        assert_eq!(CacheMode::default().to_string(), "writeback");
    }

    #[test]
    fn io_kinds_map_to_qmp_operations() {
        assert_eq!(IoKind::Read.qmp_operation(), "read");
        for kind in [
            IoKind::Write,
            IoKind::Flush,
            IoKind::Discard,
            IoKind::WriteZeroes,
        ] {
            assert_eq!(kind.qmp_operation(), "write");
        }
    }

    #[derive(Debug)]
    struct Orphan;

    impl BlockNode for Orphan {
        fn node_name(&self) -> &str {
            "orphan"
        }
        fn driver(&self) -> &str {
            "test"
        }
    }

    #[test]
    fn filter_defaults_without_child_fail_cleanly() {
        let n = Orphan;
        assert_eq!(n.size(), 0);
        assert!(n.read_only());
        assert_eq!(n.flush().unwrap_err().kind(), io::ErrorKind::Unsupported);
        assert!(n.read_vectored(0, &[]).is_err());
        assert!(n.discard(0, 512).is_err());
    }
}
