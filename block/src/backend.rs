// SPDX-License-Identifier: Apache-2.0
//! The backend a device sees: request validation, accounting and the error policy.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::file::{FileNode, OpenError};
use crate::node::{BlockNode, CacheMode, IoBuf, IoKind};
use crate::policy::{ErrorAction, ErrorPolicy, IoErrorInfo, IoStatus, ReportPolicy};
use crate::registry::generate_node_name;
use crate::stats::BlockStats;

/// How to open a backend on a raw image (what `--disk` describes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// The backend's id (the drive id, e.g. `drive0`).
    pub id: String,
    /// The node-name of the `file` node; generated (`#block123`) when absent.
    pub node_name: Option<String>,
    /// The image.
    pub path: PathBuf,
    /// Open the image read-only and refuse writes.
    pub read_only: bool,
    /// Host cache mode.
    pub cache: CacheMode,
    /// The serial number devices report (virtio-blk GET_ID); the id when absent.
    pub serial: Option<String>,
}

impl BackendConfig {
    /// A read-write, writeback-cached backend `id` on `path` with a generated node-name.
    pub fn new(id: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        Self {
            id: id.into(),
            node_name: None,
            path: path.into(),
            read_only: false,
            cache: CacheMode::default(),
            serial: None,
        }
    }
}

/// One request of a device. Offsets and lengths are in bytes.
#[derive(Debug)]
pub enum Request<'a> {
    /// Read into `bufs`, in order, from `offset`.
    Read {
        /// Start of the range.
        offset: u64,
        /// Destination buffers.
        bufs: &'a [IoBuf<'a>],
    },
    /// Write `bufs`, in order, at `offset`.
    Write {
        /// Start of the range.
        offset: u64,
        /// Source buffers.
        bufs: &'a [IoBuf<'a>],
    },
    /// Make completed writes durable.
    Flush,
    /// Deallocate a range.
    Discard {
        /// Start of the range.
        offset: u64,
        /// Length of the range.
        len: u64,
    },
    /// Zero a range, deallocating it if `may_unmap`.
    WriteZeroes {
        /// Start of the range.
        offset: u64,
        /// Length of the range.
        len: u64,
        /// Deallocation is allowed.
        may_unmap: bool,
    },
}

impl Request<'_> {
    /// The kind of the request.
    pub fn kind(&self) -> IoKind {
        match self {
            Request::Read { .. } => IoKind::Read,
            Request::Write { .. } => IoKind::Write,
            Request::Flush => IoKind::Flush,
            Request::Discard { .. } => IoKind::Discard,
            Request::WriteZeroes { .. } => IoKind::WriteZeroes,
        }
    }

    /// `(offset, length)` of the range the request touches, if any.
    pub fn range(&self) -> Option<(u64, u64)> {
        let total = |bufs: &[IoBuf<'_>]| bufs.iter().map(|b| b.len() as u64).sum();
        match self {
            Request::Read { offset, bufs } | Request::Write { offset, bufs } => {
                Some((*offset, total(bufs)))
            }
            Request::Flush => None,
            Request::Discard { offset, len } | Request::WriteZeroes { offset, len, .. } => {
                Some((*offset, *len))
            }
        }
    }
}

/// Why a request was refused before reaching the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRequest {
    /// A modifying request on a read-only backend.
    #[error("The block device is read-only")]
    ReadOnly,
    /// The range goes past the end of the image.
    #[error("Request {offset:#x}+{len:#x} is beyond the end of the image ({size:#x} bytes)")]
    OutOfRange {
        /// Start of the range.
        offset: u64,
        /// Length of the range.
        len: u64,
        /// The image size.
        size: u64,
    },
}

/// The outcome of [`Backend::submit`].
#[derive(Debug)]
pub enum Completion {
    /// Done.
    Ok,
    /// Refused before reaching the host (counted as an invalid operation).
    Invalid(InvalidRequest),
    /// Failed; the policy says to report the error to the guest.
    Failed(io::Error),
    /// Failed; the policy says to complete the request as if it had succeeded.
    Ignored(io::Error),
    /// Failed; the policy says to stop. The device must keep the request (not complete it) and
    /// submit it again after [`Backend::retry_event`] fires.
    Stopped(io::Error),
}

impl Completion {
    /// Whether the guest should see success.
    pub fn is_success(&self) -> bool {
        matches!(self, Completion::Ok | Completion::Ignored(_))
    }
}

/// The block backend a device uses: an id, a root node, stats, error policy and I/O status.
///
/// Shared (`Arc`) between the VMM (QMP queries, policy changes) and the device's I/O thread;
/// every method takes `&self` and no method blocks on anything but the node's own I/O.
#[derive(Debug)]
pub struct Backend {
    id: String,
    serial: Option<String>,
    root: RwLock<Arc<dyn BlockNode>>,
    policy: RwLock<Arc<dyn ErrorPolicy>>,
    stats: BlockStats,
    io_status: AtomicU8,
    retry: EventFd,
}

impl Backend {
    /// Opens the raw image of `config` with the `file` driver.
    ///
    /// # Errors
    /// The checks of [`FileNode::open`].
    pub fn open(config: BackendConfig) -> Result<Self, OpenError> {
        let node_name = config.node_name.unwrap_or_else(generate_node_name);
        let node = FileNode::open(node_name, &config.path, config.read_only, config.cache)?;
        let backend = Self::new(config.id, Arc::new(node))
            .map_err(|e| OpenError::Io(config.path.clone(), e))?;
        Ok(backend.with_serial(config.serial))
    }

    /// A backend `id` on `root`, with the default `report` policy.
    ///
    /// # Errors
    /// Creating the retry eventfd failed.
    pub fn new(id: impl Into<String>, root: Arc<dyn BlockNode>) -> io::Result<Self> {
        Ok(Self {
            id: id.into(),
            serial: None,
            root: RwLock::new(root),
            policy: RwLock::new(Arc::new(ReportPolicy)),
            stats: BlockStats::default(),
            io_status: AtomicU8::new(IoStatus::Ok.to_u8()),
            retry: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Sets the serial number devices report.
    pub fn with_serial(mut self, serial: Option<String>) -> Self {
        self.serial = serial;
        self
    }

    /// The backend's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The serial number devices report: the configured one, else the id.
    pub fn serial(&self) -> &str {
        self.serial.as_deref().unwrap_or(&self.id)
    }

    /// The root node.
    pub fn root(&self) -> Arc<dyn BlockNode> {
        self.root.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the root node (e.g. to insert a filter above the current one); requests already
    /// running finish on the old root.
    pub fn set_root(&self, node: Arc<dyn BlockNode>) {
        *self.root.write().unwrap_or_else(|e| e.into_inner()) = node;
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.root().size()
    }

    /// Whether modifying requests are refused.
    pub fn read_only(&self) -> bool {
        self.root().read_only()
    }

    /// The live statistics.
    pub fn stats(&self) -> &BlockStats {
        &self.stats
    }

    /// QMP's `io-status`.
    pub fn io_status(&self) -> IoStatus {
        IoStatus::from_u8(self.io_status.load(Ordering::Acquire))
    }

    /// Installs the error policy (`rerror`/`werror`).
    pub fn set_error_policy(&self, policy: Arc<dyn ErrorPolicy>) {
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = policy;
    }

    /// Counts a request the device refused on its own (e.g. misaligned).
    pub fn account_invalid(&self, kind: IoKind) {
        self.stats.account_invalid(kind);
    }

    /// Signalled by [`Backend::resume`]: devices wait on it to retry stopped requests.
    pub fn retry_event(&self) -> &EventFd {
        &self.retry
    }

    /// Clears the I/O status and asks devices to retry the requests they keep (on `cont`).
    ///
    /// # Errors
    /// Writing the retry eventfd failed.
    pub fn resume(&self) -> io::Result<()> {
        self.io_status
            .store(IoStatus::Ok.to_u8(), Ordering::Release);
        self.retry.write(1)
    }

    fn validate(&self, root: &dyn BlockNode, req: &Request<'_>) -> Result<(), InvalidRequest> {
        let kind = req.kind();
        if kind.is_write() && kind != IoKind::Flush && root.read_only() {
            return Err(InvalidRequest::ReadOnly);
        }
        if let Some((offset, len)) = req.range() {
            let size = root.size();
            if offset.checked_add(len).is_none_or(|end| end > size) {
                return Err(InvalidRequest::OutOfRange { offset, len, size });
            }
        }
        Ok(())
    }

    /// Runs one request on the root node, accounts it and applies the error policy.
    pub fn submit(&self, req: Request<'_>) -> Completion {
        let root = self.root();
        let kind = req.kind();
        if let Err(e) = self.validate(root.as_ref(), &req) {
            self.stats.account_invalid(kind);
            return Completion::Invalid(e);
        }
        let (offset, len) = req.range().unwrap_or((0, 0));
        let start = Instant::now();
        let result = match req {
            Request::Read { offset, bufs } => root.read_vectored(offset, bufs),
            Request::Write { offset, bufs } => root.write_vectored(offset, bufs),
            Request::Flush => root.flush(),
            Request::Discard { offset, len } => root.discard(offset, len),
            Request::WriteZeroes {
                offset,
                len,
                may_unmap,
            } => root.write_zeroes(offset, len, may_unmap),
        };
        let error = match result {
            Ok(()) => {
                let end = matches!(kind, IoKind::Write | IoKind::WriteZeroes).then(|| offset + len);
                self.stats.account_done(kind, len, start.elapsed(), end);
                return Completion::Ok;
            }
            Err(e) => e,
        };
        self.stats.account_failed(kind);
        let info = IoErrorInfo {
            device: &self.id,
            node_name: root.node_name(),
            operation: kind,
            error: &error,
        };
        let policy = self
            .policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match policy.on_error(&info) {
            ErrorAction::Report => Completion::Failed(error),
            ErrorAction::Ignore => Completion::Ignored(error),
            ErrorAction::Stop => {
                let status = if info.nospace() {
                    IoStatus::NoSpace
                } else {
                    IoStatus::Failed
                };
                self.io_status.store(status.to_u8(), Ordering::Release);
                Completion::Stopped(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    use vmm_sys_util::tempfile::TempFile;

    use super::*;

    fn image(len: usize) -> TempFile {
        let f = TempFile::new().unwrap();
        std::fs::write(f.as_path(), vec![0x33u8; len]).unwrap();
        f
    }

    fn open(f: &TempFile, read_only: bool) -> Backend {
        Backend::open(BackendConfig {
            read_only,
            ..BackendConfig::new("drive0", f.as_path())
        })
        .unwrap()
    }

    #[test]
    fn open_names_and_serial() {
        let f = image(4096);
        let b = open(&f, false);
        assert_eq!(b.id(), "drive0");
        assert_eq!(b.serial(), "drive0");
        assert!(b.root().node_name().starts_with("#block"));
        assert_eq!(b.size(), 4096);
        // The image is locked while `b` holds it.
        drop(b);
        let b = Backend::open(BackendConfig {
            node_name: Some("disk0".into()),
            serial: Some("SER1".into()),
            ..BackendConfig::new("drive1", f.as_path())
        })
        .unwrap();
        assert_eq!(b.root().node_name(), "disk0");
        assert_eq!(b.serial(), "SER1");
        assert_eq!(b.io_status(), IoStatus::Ok);
    }

    #[test]
    fn submit_accounts_and_validates() {
        let f = image(4096);
        let b = open(&f, false);
        let mut buf = vec![0u8; 1024];
        let bufs = [IoBuf::from(buf.as_mut_slice())];
        assert!(matches!(
            b.submit(Request::Read {
                offset: 512,
                bufs: &bufs
            }),
            Completion::Ok
        ));
        assert!(matches!(
            b.submit(Request::Write {
                offset: 3584,
                bufs: &bufs
            }),
            Completion::Invalid(InvalidRequest::OutOfRange { .. })
        ));
        assert!(matches!(
            b.submit(Request::Read {
                offset: u64::MAX - 10,
                bufs: &bufs
            }),
            Completion::Invalid(InvalidRequest::OutOfRange { .. })
        ));
        assert!(matches!(
            b.submit(Request::Write {
                offset: 3072,
                bufs: &bufs
            }),
            Completion::Ok
        ));
        assert!(b.submit(Request::Flush).is_success());
        assert!(b
            .submit(Request::Discard {
                offset: 0,
                len: 512
            })
            .is_success());
        assert!(b
            .submit(Request::WriteZeroes {
                offset: 512,
                len: 512,
                may_unmap: false
            })
            .is_success());
        let q = b.stats().snapshot().qmp();
        assert_eq!(q.rd_bytes, 1024);
        assert_eq!(q.rd_operations, 1);
        assert_eq!(q.invalid_rd_operations, 1);
        assert_eq!(q.invalid_wr_operations, 1);
        assert_eq!(q.wr_bytes, 1024 + 512);
        assert_eq!(q.wr_highest_offset, 4096);
        assert_eq!(q.flush_operations, 1);
        assert_eq!(q.unmap_operations, 1);
    }

    #[test]
    fn read_only_backend_refuses_modifications() {
        let f = image(4096);
        let b = open(&f, true);
        let mut buf = vec![0u8; 512];
        let bufs = [IoBuf::from(buf.as_mut_slice())];
        assert!(matches!(
            b.submit(Request::Write {
                offset: 0,
                bufs: &bufs
            }),
            Completion::Invalid(InvalidRequest::ReadOnly)
        ));
        assert!(matches!(
            b.submit(Request::Discard {
                offset: 0,
                len: 512
            }),
            Completion::Invalid(InvalidRequest::ReadOnly)
        ));
        assert!(b.submit(Request::Flush).is_success());
        assert!(b
            .submit(Request::Read {
                offset: 0,
                bufs: &bufs
            })
            .is_success());
        assert!(std::fs::read(f.as_path())
            .unwrap()
            .iter()
            .all(|&x| x == 0x33));
    }

    /// A filter failing every write with a chosen errno, as fault injection will.
    #[derive(Debug)]
    struct FailWrites {
        child: Arc<dyn BlockNode>,
        errno: i32,
    }

    impl BlockNode for FailWrites {
        fn node_name(&self) -> &str {
            "fault0"
        }
        fn driver(&self) -> &str {
            "blkdebug"
        }
        fn child(&self) -> Option<Arc<dyn BlockNode>> {
            Some(self.child.clone())
        }
        fn write_vectored(&self, _offset: u64, _bufs: &[IoBuf<'_>]) -> io::Result<()> {
            Err(io::Error::from_raw_os_error(self.errno))
        }
    }

    #[derive(Debug)]
    struct Recording {
        action: ErrorAction,
        calls: AtomicUsize,
        last: Mutex<Option<(String, String, IoKind, bool)>>,
    }

    impl ErrorPolicy for Recording {
        fn on_error(&self, info: &IoErrorInfo<'_>) -> ErrorAction {
            self.calls.fetch_add(1, Ordering::SeqCst);
            *self.last.lock().unwrap() = Some((
                info.device.to_string(),
                info.node_name.to_string(),
                info.operation,
                info.nospace(),
            ));
            self.action
        }
    }

    #[test]
    fn filters_and_policies_shape_errors() {
        let f = image(4096);
        let b = open(&f, false);
        let file = b.root();
        b.set_root(Arc::new(FailWrites {
            child: file.clone(),
            errno: libc::EIO,
        }));
        assert_eq!(b.size(), 4096);
        assert_eq!(b.root().driver(), "blkdebug");
        let mut buf = vec![0u8; 512];
        let bufs = [IoBuf::from(buf.as_mut_slice())];
        let write = || Request::Write {
            offset: 0,
            bufs: &bufs,
        };
        // Default: report.
        assert!(matches!(b.submit(write()), Completion::Failed(_)));
        assert_eq!(b.io_status(), IoStatus::Ok);
        // Reads pass through the filter.
        assert!(b
            .submit(Request::Read {
                offset: 0,
                bufs: &bufs
            })
            .is_success());

        let policy = Arc::new(Recording {
            action: ErrorAction::Ignore,
            calls: AtomicUsize::new(0),
            last: Mutex::new(None),
        });
        b.set_error_policy(policy.clone());
        let c = b.submit(write());
        assert!(matches!(c, Completion::Ignored(_)) && c.is_success());
        assert_eq!(
            policy.last.lock().unwrap().clone(),
            Some(("drive0".into(), "fault0".into(), IoKind::Write, false))
        );

        b.set_error_policy(Arc::new(Recording {
            action: ErrorAction::Stop,
            calls: AtomicUsize::new(0),
            last: Mutex::new(None),
        }));
        assert!(matches!(b.submit(write()), Completion::Stopped(_)));
        assert_eq!(b.io_status(), IoStatus::Failed);
        b.set_root(Arc::new(FailWrites {
            child: file,
            errno: libc::ENOSPC,
        }));
        assert!(matches!(b.submit(write()), Completion::Stopped(_)));
        assert_eq!(b.io_status(), IoStatus::NoSpace);
        b.resume().unwrap();
        assert_eq!(b.io_status(), IoStatus::Ok);
        assert_eq!(b.retry_event().read().unwrap(), 1);
        assert_eq!(b.stats().snapshot().qmp().failed_wr_operations, 4);
    }
}
