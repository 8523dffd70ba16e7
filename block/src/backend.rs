// SPDX-License-Identifier: Apache-2.0
//! The backend a device sees: request validation, accounting and the error policy.

use std::cell::RefCell;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::buf::{gather, scatter, AlignedBuf};
use crate::file::{FileNode, HostFile, OpenError};
use crate::inject::{FaultNode, FaultRule, InjectError};
use crate::lock::Locking;
use crate::node::{Aio, BlockNode, CacheMode, IoBuf, IoKind};
use crate::policy::{ErrorAction, ErrorPolicy, IoErrorInfo, IoStatus, IoStatusCell, ReportPolicy};
use crate::registry::generate_node_name;
use crate::signal::{IoErrorEvent, IoErrorSlot, IoStatusSlot, SlotId, Slots, StatsSlot};
use crate::stats::BlockStats;
use crate::throttle::Throttle;
use crate::yank::Ticket;

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
    /// The engine of its host I/O.
    pub aio: Aio,
    /// Image locking (QEMU's `locking`).
    pub locking: Locking,
    /// Open the image inactive, for an incoming migration ([`FileNode::open_inactive`]): no
    /// locks and no writes until the node is activated.
    pub inactive: bool,
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
            aio: Aio::default(),
            locking: Locking::default(),
            inactive: false,
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
    /// submit it again once [`Backend::resume_epoch`] differs from `epoch` (the retry event
    /// fires on each [`Backend::resume`]).
    Stopped {
        /// The host error.
        error: io::Error,
        /// [`Backend::resume_epoch`] when the request stopped: the resume that releases it is
        /// the next one.
        epoch: u64,
    },
}

impl Completion {
    /// Whether the guest should see success.
    pub fn is_success(&self) -> bool {
        matches!(self, Completion::Ok | Completion::Ignored(_))
    }
}

/// The block backend a device uses: an id, a root node (under the implicit fault-injection
/// filter), stats, error policy, I/O status and the I/O-error signal.
///
/// Failures reach the statistics and the I/O status only through the signal: [`Backend::new`]
/// connects a [`StatsSlot`] and an [`IoStatusSlot`] before any other slot, so every slot
/// connected later sees both already updated.
///
/// Shared (`Arc`) between the VMM (QMP queries, policy changes) and the device's I/O thread;
/// every method takes `&self` and no method blocks on anything but the node's own I/O (and
/// an injected delay).
#[derive(Debug)]
pub struct Backend {
    id: String,
    serial: Option<String>,
    aio: Aio,
    top: Arc<FaultNode>,
    policy: RwLock<Arc<dyn ErrorPolicy>>,
    stats: Arc<BlockStats>,
    io_status: Arc<IoStatusCell>,
    resume_epoch: AtomicU64,
    slots: Slots,
    /// The devices' I/O threads waiting on this backend's resumes and yanks.
    watchers: Mutex<Vec<Arc<Watcher>>>,
    /// Admitted requests, for [`Backend::drain`] and [`Backend::yank`].
    flight: Mutex<Flight>,
    /// Notified when the last running request is released or abandoned.
    idle: Condvar,
    /// The I/O limits its device applies before starting a request.
    throttle: Throttle,
}

/// What one of a device's I/O threads (one per queue) waits on for its backend: the retry
/// event, signalled by every [`Backend::resume`], and the yank event, signalled by every
/// [`Backend::yank`] and whenever a syscall a yank abandoned returns. Each thread has its own
/// ([`Backend::watch`]), so that none misses a wake-up another consumed.
#[derive(Debug)]
pub struct Watcher {
    retry: EventFd,
    yank: EventFd,
}

impl Watcher {
    /// Signalled on resume: retry the parked requests.
    pub fn retry_event(&self) -> &EventFd {
        &self.retry
    }

    /// Signalled on yank and when an abandoned syscall returns.
    pub fn yank_event(&self) -> &EventFd {
        &self.yank
    }
}

/// What [`Backend::admit`] decided.
#[derive(Debug)]
pub enum Admission {
    /// Run it.
    Run(Admitted),
    /// Fenced by a yank: complete it with this (`EIO` through the error policy).
    Done(Completion),
    /// Wait: a write a yank abandoned over the same bytes has not returned yet.
    Wait,
}

/// A request admitted on a backend ([`Backend::admit`]); dropping it releases it.
#[derive(Debug)]
pub struct Admitted {
    backend: Arc<Backend>,
    ticket: Arc<Ticket>,
}

impl Admitted {
    /// The request's ticket.
    pub fn ticket(&self) -> &Arc<Ticket> {
        &self.ticket
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.backend.release(&self.ticket);
    }
}

/// The requests admitted on a backend (see [`crate::yank`]).
#[derive(Debug, Default)]
struct Flight {
    /// Admitted, not released, not abandoned: what a drain waits for.
    running: Vec<Arc<Ticket>>,
    /// Abandoned by a yank, their syscalls not returned yet.
    abandoned: Vec<Arc<Ticket>>,
    /// Yanked since the last resume: new requests fail while any syscall is abandoned.
    fenced: bool,
}

/// The error a yanked request completes with.
fn yank_error() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

thread_local! {
    /// The bounce buffer of this thread's requests ([`Backend::run`]), [`BOUNCE_CHUNK`] bytes.
    static BOUNCE: RefCell<Option<AlignedBuf>> = const { RefCell::new(None) };
}

/// Most bytes one bounce of a read or write carries.
const BOUNCE_CHUNK: usize = 1 << 20;

impl Backend {
    /// Opens the raw image of `config` with the `file` driver.
    ///
    /// # Errors
    /// The checks of [`FileNode::open`].
    pub fn open(config: BackendConfig) -> Result<Self, OpenError> {
        let node_name = config.node_name.unwrap_or_else(generate_node_name);
        let open = if config.inactive {
            FileNode::open_inactive
        } else {
            FileNode::open_with
        };
        let node = open(
            node_name,
            &config.path,
            config.read_only,
            config.cache,
            config.locking,
        )?;
        let backend = Self::new(config.id, Arc::new(node))
            .map_err(|e| OpenError::Io(config.path.clone(), e))?;
        Ok(backend.with_serial(config.serial).with_aio(config.aio))
    }

    /// A backend `id` on `root`, with the default `report` policy and its own two slots on
    /// the I/O-error signal: a [`StatsSlot`], then an [`IoStatusSlot`].
    ///
    /// # Errors
    /// Creating the retry eventfd failed.
    pub fn new(id: impl Into<String>, root: Arc<dyn BlockNode>) -> io::Result<Self> {
        let id = id.into();
        let stats = Arc::new(BlockStats::default());
        let io_status = Arc::new(IoStatusCell::default());
        let slots = Slots::default();
        slots.connect(Arc::new(StatsSlot::new(stats.clone())));
        slots.connect(Arc::new(IoStatusSlot::new(io_status.clone())));
        Ok(Self {
            top: Arc::new(FaultNode::new(format!("#inject-{id}"), root)),
            id,
            serial: None,
            aio: Aio::default(),
            policy: RwLock::new(Arc::new(ReportPolicy)),
            stats,
            io_status,
            resume_epoch: AtomicU64::new(0),
            slots,
            watchers: Mutex::new(Vec::new()),
            flight: Mutex::new(Flight::default()),
            idle: Condvar::new(),
            throttle: Throttle::new(),
        })
    }

    /// The backend's I/O limits (QEMU's `throttling.*`, `block_set_io_throttle`): each I/O
    /// thread of its device takes a [`Throttle::queue`] and asks it before it starts a
    /// request.
    pub fn throttle(&self) -> &Throttle {
        &self.throttle
    }

    fn flight(&self) -> MutexGuard<'_, Flight> {
        self.flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Requests running now (on the host, or held by an injected delay), yanked ones not
    /// counted.
    pub fn in_flight(&self) -> usize {
        self.flight().running.len()
    }

    /// Requests whose syscalls a yank abandoned and that have not returned yet.
    pub fn abandoned(&self) -> usize {
        self.flight().abandoned.len()
    }

    /// Waits until no request is running (QEMU's drain); a yank ends the wait for the
    /// requests it abandons once their device has completed them ([`Backend::fail_yanked`]). It blocks for as long as the storage does not answer: call it
    /// off the main loop.
    pub fn drain(&self) {
        let mut f = self.flight();
        while !f.running.is_empty() || f.abandoned.iter().any(|t| !t.is_answered()) {
            f = self.idle.wait(f).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Admits a request of `kind` over `ranges` (byte `(offset, length)` pairs): the device
    /// then runs its host operations with [`Backend::run`]; dropping the [`Admitted`] (when
    /// the thread that ran it is done with it, abandoned or not) releases it.
    ///
    /// While the backend is fenced by a yank the request fails with `EIO` at once, through
    /// the error policy ([`Admission::Done`]: the completion to give the guest, or to park on
    /// `Stopped`). Otherwise, while a write a yank abandoned over the same bytes has not
    /// returned, the request must wait ([`Admission::Wait`]; [`Backend::yank_event`] fires
    /// when such a write returns): it could otherwise land before the late write does.
    pub fn admit(self: &Arc<Self>, kind: IoKind, ranges: Vec<(u64, u64)>) -> Admission {
        match self.admit_ticket(kind, ranges) {
            Ok(ticket) => Admission::Run(Admitted {
                ticket,
                backend: self.clone(),
            }),
            Err(Some(c)) => Admission::Done(c),
            Err(None) => Admission::Wait,
        }
    }

    /// [`Backend::admit`]'s decision: the ticket, or the completion (`Some`) or a wait
    /// (`None`).
    fn admit_ticket(
        &self,
        kind: IoKind,
        ranges: Vec<(u64, u64)>,
    ) -> Result<Arc<Ticket>, Option<Completion>> {
        let mut f = self.flight();
        if f.fenced {
            if f.abandoned.is_empty() {
                f.fenced = false;
            } else {
                drop(f);
                let (offset, len) = ranges.first().copied().unwrap_or((0, 0));
                return Err(Some(self.fail(
                    kind,
                    offset,
                    len,
                    Instant::now(),
                    yank_error(),
                )));
            }
        }
        if f.abandoned.iter().any(|t| t.writes_over(&ranges)) {
            return Err(None);
        }
        let ticket = Arc::new(Ticket::new(kind, ranges));
        f.running.push(ticket.clone());
        Ok(ticket)
    }

    /// Ends an admitted request: its thread will not touch it again. For an abandoned one
    /// this is the moment its syscall returned ([`Backend::yank_event`] fires).
    fn release(&self, ticket: &Arc<Ticket>) {
        let mut f = self.flight();
        if let Some(i) = f.running.iter().position(|t| Arc::ptr_eq(t, ticket)) {
            f.running.swap_remove(i);
            if f.running.is_empty() {
                self.idle.notify_all();
            }
        } else if let Some(i) = f.abandoned.iter().position(|t| Arc::ptr_eq(t, ticket)) {
            f.abandoned.swap_remove(i);
            drop(f);
            // Wakes a synchronous submit waiting for it.
            self.idle.notify_all();
            self.notify(|w| &w.yank);
        }
    }

    /// Yanks the backend (QMP `yank` of its node): abandons every running request, fences
    /// new ones (see [`crate::yank`]) and signals [`Backend::yank_event`] so the device
    /// completes the abandoned ones. Returns how many it abandoned. Never blocks on I/O.
    pub fn yank(&self) -> usize {
        let mut f = self.flight();
        f.fenced = true;
        let mut abandoned = 0;
        for t in std::mem::take(&mut f.running) {
            if t.abandon() {
                f.abandoned.push(t);
                abandoned += 1;
            } else {
                f.running.push(t);
            }
        }
        if f.running.is_empty() {
            self.idle.notify_all();
        }
        drop(f);
        self.notify(|w| &w.yank);
        abandoned
    }

    /// A new [`Watcher`] of this backend, for one I/O thread; [`Backend::unwatch`] it when
    /// the thread ends.
    ///
    /// # Errors
    /// Creating its eventfds failed.
    pub fn watch(&self) -> io::Result<Arc<Watcher>> {
        let w = Arc::new(Watcher {
            retry: EventFd::new(EFD_NONBLOCK)?,
            yank: EventFd::new(EFD_NONBLOCK)?,
        });
        self.watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(w.clone());
        Ok(w)
    }

    /// Stops signalling `watcher`.
    pub fn unwatch(&self, watcher: &Arc<Watcher>) {
        self.watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|w| !Arc::ptr_eq(w, watcher));
    }

    /// Signals one eventfd of every watcher. A failed write means its counter is saturated:
    /// that thread wakes anyway.
    fn notify(&self, which: impl Fn(&Watcher) -> &EventFd) {
        for w in self
            .watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = which(w).write(1);
        }
    }

    /// The completion of a request a yank abandoned: `EIO`, through the error policy and the
    /// I/O-error signal, as if the host had failed it. Call once per abandoned request.
    pub fn fail_yanked(&self, ticket: &Ticket) -> Completion {
        let (offset, len) = ticket.ranges().first().copied().unwrap_or((0, 0));
        let c = self.fail(ticket.kind(), offset, len, ticket.started(), yank_error());
        self.answer(ticket);
        c
    }

    /// Tells a drain not to wait for an abandoned request its device drops without
    /// completing it (the device is being reset).
    pub fn dismiss_yanked(&self, ticket: &Ticket) {
        self.answer(ticket);
    }

    fn answer(&self, ticket: &Ticket) {
        let _f = self.flight();
        ticket.set_answered();
        self.idle.notify_all();
    }

    /// Sets the serial number devices report.
    pub fn with_serial(mut self, serial: Option<String>) -> Self {
        self.serial = serial;
        self
    }

    /// Sets the engine of the backend's host I/O (devices read it when they start).
    pub fn with_aio(mut self, aio: Aio) -> Self {
        self.aio = aio;
        self
    }

    /// The engine of the backend's host I/O.
    pub fn aio(&self) -> Aio {
        self.aio
    }

    /// The backend's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The serial number devices report: the configured one, else the id.
    pub fn serial(&self) -> &str {
        self.serial.as_deref().unwrap_or(&self.id)
    }

    /// The root node as queries show it: the node below the implicit fault-injection filter.
    pub fn root(&self) -> Arc<dyn BlockNode> {
        self.top.current_child()
    }

    /// Replaces the root node (e.g. to insert a filter above the current one), below the
    /// fault-injection filter; requests already running finish on the old root.
    pub fn set_root(&self, node: Arc<dyn BlockNode>) {
        self.top.set_child(node);
    }

    /// The fault-injection filter on top of the root.
    pub fn fault_node(&self) -> &Arc<FaultNode> {
        &self.top
    }

    /// Installs a fault-injection rule; returns its id (1, 2, ... per backend).
    ///
    /// # Errors
    /// The rule is invalid for this backend (see [`InjectError`]).
    pub fn inject(&self, rule: FaultRule) -> Result<u64, InjectError> {
        self.top.inject(rule)
    }

    /// Removes rule `id`, or every rule (`None`); the requests they delay proceed at once.
    ///
    /// # Errors
    /// No rule has this id ("No injection rule with id 7 on 'drive0'").
    pub fn remove_injection(&self, id: Option<u64>) -> Result<(), InjectError> {
        self.top.remove(id, &self.id)
    }

    /// The installed rules with their ids, oldest first.
    pub fn injections(&self) -> Vec<(u64, FaultRule)> {
        self.top.rules()
    }

    /// Wakes every request an injected delay holds (call on reset and shutdown).
    pub fn release_delays(&self) {
        self.top.release_delays();
    }

    /// Connects a slot to the I/O-error signal; slots run in connection order, so after the
    /// backend's own [`StatsSlot`] and [`IoStatusSlot`]. See [`IoErrorSlot`] for what a slot
    /// must not do.
    pub fn connect_io_error(&self, slot: Arc<dyn IoErrorSlot>) -> SlotId {
        self.slots.connect(slot)
    }

    /// The slots connected to the I/O-error signal, in emission order: the backend's own
    /// [`StatsSlot`] and [`IoStatusSlot`] first, then the others as they were connected.
    pub fn io_error_slots(&self) -> Vec<(SlotId, Arc<dyn IoErrorSlot>)> {
        self.slots.list()
    }

    /// Disconnects a slot; returns whether it was connected. An emission already running on
    /// another thread may still call it once.
    pub fn disconnect_io_error(&self, id: SlotId) -> bool {
        self.slots.disconnect(id)
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.root().size()
    }

    /// Whether modifying requests are refused.
    pub fn read_only(&self) -> bool {
        self.root().read_only()
    }

    /// The live statistics (failures are counted by the backend's [`StatsSlot`]).
    pub fn stats(&self) -> &BlockStats {
        &self.stats
    }

    /// QMP's `io-status`: `failed` or `nospace` from the first request stopped since the last
    /// [`Backend::resume`] (QEMU's `blk_iostatus_set_err` keeps the first; the backend's
    /// [`IoStatusSlot`] sets it), else `ok`. QMP shows it only when
    /// [`Backend::io_status_enabled`].
    pub fn io_status(&self) -> IoStatus {
        self.io_status.get()
    }

    /// Whether `query-block` shows `io-status`: the policy can stop the VM (QEMU's
    /// `blk_iostatus_is_enabled`).
    pub fn io_status_enabled(&self) -> bool {
        self.policy().can_stop()
    }

    /// Installs the error policy (`rerror`/`werror`, e.g. a [`crate::DevicePolicy`]).
    pub fn set_error_policy(&self, policy: Arc<dyn ErrorPolicy>) {
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = policy;
    }

    /// The error policy.
    pub fn error_policy(&self) -> Arc<dyn ErrorPolicy> {
        self.policy()
    }

    fn policy(&self) -> Arc<dyn ErrorPolicy> {
        self.policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Counts a request the device refused on its own (e.g. misaligned).
    pub fn account_invalid(&self, kind: IoKind) {
        self.stats.account_invalid(kind);
    }

    /// Clears the I/O status and a yank's fence, starts a new resume epoch and asks devices to
    /// retry the requests they keep (on `cont`): [`clear_status`](Self::clear_status), then
    /// [`release_stopped`](Self::release_stopped).
    pub fn resume(&self) {
        self.clear_status();
        self.release_stopped();
    }

    /// The first half of a resume: the I/O status is `ok` again and a yank's fence is lifted
    /// (`cont` does this before its `RESUME`, as QEMU resets the I/O status before the VM
    /// starts).
    pub fn clear_status(&self) {
        self.flight().fenced = false;
        self.io_status.reset();
    }

    /// The second half of a resume: a new resume epoch, and devices retry the requests their
    /// error policy stopped (`cont` does this once the guest runs again).
    pub fn release_stopped(&self) {
        self.resume_epoch.fetch_add(1, Ordering::AcqRel);
        self.notify(|w| &w.retry);
    }

    /// How many times [`Backend::resume`] ran: a stopped request is due for a retry once this
    /// differs from the epoch of its [`Completion::Stopped`].
    pub fn resume_epoch(&self) -> u64 {
        self.resume_epoch.load(Ordering::Acquire)
    }

    fn validate(
        &self,
        root: &dyn BlockNode,
        kind: IoKind,
        range: Option<(u64, u64)>,
    ) -> Result<(), InvalidRequest> {
        if kind.is_write() && kind != IoKind::Flush && root.read_only() {
            return Err(InvalidRequest::ReadOnly);
        }
        if let Some((offset, len)) = range {
            let size = root.size();
            if offset.checked_add(len).is_none_or(|end| end > size) {
                return Err(InvalidRequest::OutOfRange { offset, len, size });
            }
        }
        Ok(())
    }

    /// Starts one host operation of an admitted request, for an engine that submits the
    /// syscall itself (on [`Backend::host_file`]): checks it (read-only, range) and returns
    /// the start time for [`Backend::end_op`].
    ///
    /// # Errors
    /// `Some(completion)`: refused (accounted as invalid; the ticket is committed), the
    /// request's completion. `None`: a yank abandoned the ticket.
    pub fn begin_op(
        &self,
        ticket: &Ticket,
        kind: IoKind,
        range: Option<(u64, u64)>,
    ) -> Result<Instant, Option<Completion>> {
        if let Err(e) = self.validate(self.root().as_ref(), kind, range) {
            if !ticket.commit() {
                return Err(None);
            }
            self.stats.account_invalid(kind);
            return Err(Some(Completion::Invalid(e)));
        }
        if ticket.is_abandoned() {
            return Err(None);
        }
        Ok(Instant::now())
    }

    /// Ends one host operation begun with [`Backend::begin_op`] (or inside
    /// [`Backend::run`]): a failure, or the success of the `last` operation, commits the
    /// ticket; then the success is accounted, or the failure goes through the error policy
    /// and the I/O-error signal. `None` when a yank abandoned the ticket (nothing accounted).
    pub fn end_op(
        &self,
        ticket: &Ticket,
        kind: IoKind,
        range: Option<(u64, u64)>,
        start: Instant,
        result: io::Result<()>,
        last: bool,
    ) -> Option<Completion> {
        let (offset, len) = range.unwrap_or((0, 0));
        match result {
            Ok(()) => {
                let mine = if last {
                    ticket.commit()
                } else {
                    !ticket.is_abandoned()
                };
                if !mine {
                    return None;
                }
                let end = matches!(kind, IoKind::Write | IoKind::WriteZeroes).then(|| offset + len);
                self.stats.account_done(kind, len, start.elapsed(), end);
                Some(Completion::Ok)
            }
            Err(e) => {
                if !ticket.commit() {
                    return None;
                }
                Some(self.fail(kind, offset, len, start, e))
            }
        }
    }

    /// The host file requests may be submitted to directly, bypassing the node chain: only
    /// while every node on the way forwards requests unchanged (no fault-injection rule, no
    /// filter that acts on them).
    pub fn host_file(&self) -> Option<HostFile> {
        self.top.host_file()
    }

    /// Runs one request on the root node (through the fault-injection filter) and accounts a
    /// success or a refusal; on failure, applies the error policy and emits the I/O-error
    /// signal (see [`IoErrorSlot`]) on the calling thread before returning: the backend's own
    /// slots account the failure and set the I/O status, then the connected slots run. The
    /// whole life of one request: [`Backend::admit`], then [`Backend::run`].
    pub fn submit(&self, req: Request<'_>) -> Completion {
        let ranges: Vec<(u64, u64)> = req.range().into_iter().collect();
        let ticket = loop {
            match self.admit_ticket(req.kind(), ranges.clone()) {
                Ok(t) => break t,
                Err(Some(c)) => return c,
                // An abandoned write over these bytes has not returned: wait for it.
                Err(None) => {
                    let f = self.flight();
                    if f.abandoned.iter().any(|t| t.writes_over(&ranges)) {
                        drop(self.idle.wait(f).unwrap_or_else(|e| e.into_inner()));
                    }
                }
            }
        };
        let c = self
            .run(&ticket, req, true)
            .unwrap_or_else(|| self.fail_yanked(&ticket));
        self.release(&ticket);
        c
    }

    /// Runs one host operation of an admitted request, as [`Backend::submit`] describes.
    /// Reads and writes go through this thread's bounce buffer, so guest memory is touched
    /// only while the ticket is not abandoned. A failure, a refusal, or the success of the
    /// `last` operation commits the ticket (the result then stands whatever a yank does).
    ///
    /// Returns `None` when a yank abandoned the ticket: the result is dropped and nothing is
    /// accounted (the device completes the request with [`Backend::fail_yanked`]).
    pub fn run(&self, ticket: &Ticket, req: Request<'_>, last: bool) -> Option<Completion> {
        let kind = req.kind();
        let range = req.range();
        let start = match self.begin_op(ticket, kind, range) {
            Ok(t) => t,
            Err(c) => return c,
        };
        let root = self.root();
        let result = self
            .top
            .check(kind, range)
            .and_then(|()| perform(ticket, root.as_ref(), req));
        self.end_op(ticket, kind, range, start, result, last)
    }

    /// A failed request: asks the policy, emits the I/O-error signal (whose first slots
    /// account the failure and set the I/O status) and returns the completion.
    fn fail(
        &self,
        kind: IoKind,
        offset: u64,
        len: u64,
        start: Instant,
        error: io::Error,
    ) -> Completion {
        let root = self.root();
        let end = matches!(kind, IoKind::Write | IoKind::WriteZeroes).then(|| offset + len);
        let info = IoErrorInfo {
            device: &self.id,
            node_name: root.node_name(),
            operation: kind,
            error: &error,
        };
        let policy = self.policy();
        let action = policy.on_error(&info);
        let can_stop = policy.can_stop();
        let nospace = info.nospace();
        let reason = info.reason();
        // Read before the signal (which asks for the VM stop): a resume that comes after this
        // load releases the request.
        let epoch = self.resume_epoch.load(Ordering::Acquire);
        // One path for every consequence of the failure: the statistics and the I/O status
        // are the first two slots (see `Backend::new`).
        self.slots.emit(&IoErrorEvent {
            device: &self.id,
            node_name: root.node_name(),
            operation: kind,
            action,
            nospace: can_stop.then_some(nospace),
            reason: &reason,
            can_stop,
            error: &error,
            len,
            elapsed: start.elapsed(),
            write_end: end,
            epoch,
        });
        match action {
            ErrorAction::Report => Completion::Failed(error),
            ErrorAction::Ignore => Completion::Ignored(error),
            ErrorAction::Stop => Completion::Stopped { error, epoch },
        }
    }
}

/// The host operation of `req` on `root`; reads and writes through the thread's bounce
/// buffer, [`BOUNCE_CHUNK`] bytes at a time, copying to or from `bufs` only while `ticket` is
/// not abandoned (under its lock, so a yank waits for a copy in progress, never for I/O).
fn perform(ticket: &Ticket, root: &dyn BlockNode, req: Request<'_>) -> io::Result<()> {
    // Not issued at all once abandoned (e.g. after an injected delay): its result would be
    // dropped.
    if ticket.is_abandoned() {
        return Err(yank_error());
    }
    match req {
        Request::Read { offset, bufs } => bounced(ticket, root, offset, bufs, false),
        Request::Write { offset, bufs } => bounced(ticket, root, offset, bufs, true),
        Request::Flush => root.flush(),
        Request::Discard { offset, len } => root.discard(offset, len),
        Request::WriteZeroes {
            offset,
            len,
            may_unmap,
        } => root.write_zeroes(offset, len, may_unmap),
    }
}

fn bounced(
    ticket: &Ticket,
    root: &dyn BlockNode,
    offset: u64,
    bufs: &[IoBuf<'_>],
    write: bool,
) -> io::Result<()> {
    BOUNCE.with(|cell| {
        let mut cell = cell.borrow_mut();
        let buf = match &mut *cell {
            Some(b) => b,
            empty => empty.insert(AlignedBuf::new(BOUNCE_CHUNK)?),
        };
        let total: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        let mut done = 0u64;
        while done < total {
            let n = (total - done).min(BOUNCE_CHUNK as u64) as usize;
            let window = &mut buf.as_mut_slice()[..n];
            if write {
                if !ticket.while_live(|| gather(bufs, done, window)) {
                    return Err(yank_error());
                }
                root.write_vectored(offset + done, &[IoBuf::from(&mut *window)])?;
            } else {
                root.read_vectored(offset + done, &[IoBuf::from(&mut *window)])?;
                if !ticket.while_live(|| scatter(bufs, done, window)) {
                    return Err(yank_error());
                }
            }
            done += n as u64;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    use vmm_sys_util::tempfile::TempFile;

    use super::*;
    use crate::policy::{DevicePolicy, OnError};

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

        fn can_stop(&self) -> bool {
            self.action == ErrorAction::Stop
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
        assert!(matches!(b.submit(write()), Completion::Stopped { .. }));
        assert_eq!(b.io_status(), IoStatus::Failed);
        b.set_root(Arc::new(FailWrites {
            child: file,
            errno: libc::ENOSPC,
        }));
        // The first stop's status stays until resume (QEMU's blk_iostatus_set_err).
        assert!(matches!(b.submit(write()), Completion::Stopped { .. }));
        assert_eq!(b.io_status(), IoStatus::Failed);
        let watcher = b.watch().unwrap();
        b.resume();
        assert_eq!(b.io_status(), IoStatus::Ok);
        assert_eq!(watcher.retry_event().read().unwrap(), 1);
        b.unwatch(&watcher);
        b.resume();
        assert!(watcher.retry_event().read().is_err());
        assert!(matches!(b.submit(write()), Completion::Stopped { .. }));
        assert_eq!(b.io_status(), IoStatus::NoSpace);
        // As QEMU's virtio-blk: only the reported failure counts as failed; the ignored one
        // counts as done; stopped ones count when their retry ends.
        let q = b.stats().snapshot().qmp();
        assert_eq!(q.failed_wr_operations, 1);
        assert_eq!(q.wr_operations, 1);
    }

    /// Records every emission, tagged with its name, into a shared log.
    #[derive(Debug)]
    struct Logger {
        name: &'static str,
        log: Arc<Mutex<Vec<(&'static str, String)>>>,
    }

    impl IoErrorSlot for Logger {
        fn on_io_error(&self, e: &IoErrorEvent<'_>) {
            self.log.lock().unwrap().push((
                self.name,
                format!(
                    "{} {} {} {} {:?} {} {}",
                    e.device,
                    e.node_name,
                    e.operation.qmp_operation(),
                    e.action.as_str(),
                    e.nospace,
                    e.reason,
                    e.can_stop
                ),
            ));
        }
    }

    /// Checks, from inside the signal, that the backend's own steps already ran.
    #[derive(Debug)]
    struct SeesStatus {
        backend: Mutex<Option<Arc<Backend>>>,
        seen: Mutex<Vec<(IoStatus, u64)>>,
    }

    impl IoErrorSlot for SeesStatus {
        fn on_io_error(&self, _e: &IoErrorEvent<'_>) {
            let b = self.backend.lock().unwrap().clone().unwrap();
            let failed = b.stats().snapshot().qmp().failed_wr_operations;
            self.seen.lock().unwrap().push((b.io_status(), failed));
        }
    }

    #[test]
    fn slots_run_in_order_after_the_backend() {
        let f = image(4096);
        let b = Arc::new(
            Backend::open(BackendConfig {
                node_name: Some("disk0".into()),
                ..BackendConfig::new("drive0", f.as_path())
            })
            .unwrap(),
        );
        let log = Arc::new(Mutex::new(Vec::new()));
        let first = b.connect_io_error(Arc::new(Logger {
            name: "first",
            log: log.clone(),
        }));
        let sees = Arc::new(SeesStatus {
            backend: Mutex::new(Some(b.clone())),
            seen: Mutex::new(Vec::new()),
        });
        let sees_id = b.connect_io_error(sees.clone());
        b.connect_io_error(Arc::new(Logger {
            name: "second",
            log: log.clone(),
        }));
        b.inject(FaultRule::new(IoKind::Write, libc::EIO)).unwrap();
        let mut buf = vec![0u8; 512];
        let bufs = [IoBuf::from(buf.as_mut_slice())];
        let write = || Request::Write {
            offset: 0,
            bufs: &bufs,
        };
        // Report policy: no io-status, no nospace.
        assert!(matches!(b.submit(write()), Completion::Failed(_)));
        assert_eq!(
            *log.lock().unwrap(),
            vec![
                (
                    "first",
                    "drive0 disk0 write report None Input/output error false".into()
                ),
                (
                    "second",
                    "drive0 disk0 write report None Input/output error false".into()
                ),
            ]
        );
        b.set_error_policy(Arc::new(DevicePolicy {
            read: OnError::Report,
            write: OnError::Stop,
        }));
        assert!(b.io_status_enabled());
        log.lock().unwrap().clear();
        assert!(matches!(b.submit(write()), Completion::Stopped { .. }));
        assert_eq!(
            *log.lock().unwrap(),
            vec![
                (
                    "first",
                    "drive0 disk0 write stop Some(false) Input/output error true".into()
                ),
                (
                    "second",
                    "drive0 disk0 write stop Some(false) Input/output error true".into()
                ),
            ]
        );
        // The slot saw the reported failure counted and the stop's status set.
        assert_eq!(
            *sees.seen.lock().unwrap(),
            vec![(IoStatus::Ok, 1), (IoStatus::Failed, 1)]
        );
        assert!(b.disconnect_io_error(first));
        assert!(!b.disconnect_io_error(first));
        assert!(b.disconnect_io_error(sees_id));
        *sees.backend.lock().unwrap() = None;
        log.lock().unwrap().clear();
        b.submit(write());
        assert_eq!(log.lock().unwrap().len(), 1);
        assert_eq!(log.lock().unwrap()[0].0, "second");
        // Reads succeed: no emission.
        assert!(b
            .submit(Request::Read {
                offset: 0,
                bufs: &bufs
            })
            .is_success());
        assert_eq!(log.lock().unwrap().len(), 1);
    }

    /// Records, from inside the signal, the statistics and I/O status it sees.
    #[derive(Debug)]
    struct SeesCounters {
        backend: Mutex<Option<Arc<Backend>>>,
        seen: Mutex<Vec<(u64, u64, u64, IoStatus)>>,
    }

    impl IoErrorSlot for SeesCounters {
        fn on_io_error(&self, _e: &IoErrorEvent<'_>) {
            let b = self.backend.lock().unwrap().clone().unwrap();
            let q = b.stats().snapshot().qmp();
            self.seen.lock().unwrap().push((
                q.failed_wr_operations,
                q.wr_operations,
                q.wr_highest_offset,
                b.io_status(),
            ));
        }
    }

    #[test]
    fn stats_and_io_status_are_ordinary_slots() {
        let f = image(4096);
        let b = Arc::new(open(&f, false));
        // The backend's own slots are the first two of the list.
        let own = b.io_error_slots();
        let names: Vec<String> = own.iter().map(|(_, s)| format!("{s:?}")).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names[0].starts_with("StatsSlot"), "{names:?}");
        assert!(names[1].starts_with("IoStatusSlot"), "{names:?}");
        let sees = Arc::new(SeesCounters {
            backend: Mutex::new(Some(b.clone())),
            seen: Mutex::new(Vec::new()),
        });
        let id = b.connect_io_error(sees.clone());
        let ids: Vec<SlotId> = b.io_error_slots().iter().map(|(i, _)| *i).collect();
        assert_eq!(ids, vec![own[0].0, own[1].0, id]);
        assert!(own[0].0 < own[1].0 && own[1].0 < id);

        b.inject(FaultRule::new(IoKind::Write, libc::ENOSPC))
            .unwrap();
        let mut buf = vec![0u8; 512];
        let bufs = [IoBuf::from(buf.as_mut_slice())];
        let write = || Request::Write {
            offset: 1024,
            bufs: &bufs,
        };
        let policy = |write| {
            Arc::new(DevicePolicy {
                read: OnError::Report,
                write,
            })
        };
        // report: counted as failed before the later slot runs.
        assert!(matches!(b.submit(write()), Completion::Failed(_)));
        // ignore: counted as done, with its end offset.
        b.set_error_policy(policy(OnError::Ignore));
        assert!(matches!(b.submit(write()), Completion::Ignored(_)));
        // stop: not counted, but the status is set before the later slot runs.
        b.set_error_policy(policy(OnError::Stop));
        assert!(matches!(b.submit(write()), Completion::Stopped { .. }));
        assert_eq!(
            *sees.seen.lock().unwrap(),
            vec![
                (1, 0, 0, IoStatus::Ok),
                (1, 1, 1536, IoStatus::Ok),
                (1, 1, 1536, IoStatus::NoSpace),
            ]
        );
        // The same slot type counts for whoever connects it: here a second StatsSlot on its own
        // statistics, connected like any other slot.
        let mine = Arc::new(BlockStats::default());
        b.connect_io_error(Arc::new(StatsSlot::new(mine.clone())));
        b.set_error_policy(policy(OnError::Report));
        b.resume();
        assert!(matches!(b.submit(write()), Completion::Failed(_)));
        assert_eq!(mine.snapshot().qmp().failed_wr_operations, 1);
        assert_eq!(b.stats().snapshot().qmp().failed_wr_operations, 2);
        *sees.backend.lock().unwrap() = None;
        b.disconnect_io_error(id);
    }

    /// A slot that connects another slot from inside the signal (no lock is held).
    #[derive(Debug)]
    struct Reenter {
        backend: Arc<Backend>,
        calls: AtomicUsize,
    }

    impl IoErrorSlot for Reenter {
        fn on_io_error(&self, _e: &IoErrorEvent<'_>) {
            if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
                let id = self.backend.connect_io_error(Arc::new(Counter::default()));
                self.backend.disconnect_io_error(id);
            }
        }
    }

    #[derive(Debug, Default)]
    struct Counter(AtomicUsize);

    impl IoErrorSlot for Counter {
        fn on_io_error(&self, _e: &IoErrorEvent<'_>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn slots_may_reenter_the_backend() {
        let f = image(4096);
        let b = Arc::new(open(&f, false));
        let slot = Arc::new(Reenter {
            backend: b.clone(),
            calls: AtomicUsize::new(0),
        });
        b.connect_io_error(slot.clone());
        b.inject(FaultRule::new(IoKind::Flush, libc::EIO)).unwrap();
        assert!(matches!(b.submit(Request::Flush), Completion::Failed(_)));
        assert!(matches!(b.submit(Request::Flush), Completion::Failed(_)));
        assert_eq!(slot.calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn policies_through_submit() {
        let f = image(4096);
        let b = open(&f, false);
        let log = Arc::new(Mutex::new(Vec::new()));
        b.connect_io_error(Arc::new(Logger {
            name: "s",
            log: log.clone(),
        }));
        let mut buf = vec![0u8; 512];
        let bufs = [IoBuf::from(buf.as_mut_slice())];
        let sides = [
            OnError::Report,
            OnError::Ignore,
            OnError::Enospc,
            OnError::Stop,
        ];
        for side in sides {
            for kind in [IoKind::Read, IoKind::Write] {
                for errno in [libc::EIO, libc::ENOSPC] {
                    let policy = if kind == IoKind::Read {
                        DevicePolicy {
                            read: side,
                            write: OnError::Report,
                        }
                    } else {
                        DevicePolicy {
                            read: OnError::Report,
                            write: side,
                        }
                    };
                    b.set_error_policy(Arc::new(policy));
                    b.remove_injection(None).unwrap();
                    b.inject(FaultRule::new(kind, errno)).unwrap();
                    b.resume();
                    log.lock().unwrap().clear();
                    let req = if kind == IoKind::Read {
                        Request::Read {
                            offset: 0,
                            bufs: &bufs,
                        }
                    } else {
                        Request::Write {
                            offset: 0,
                            bufs: &bufs,
                        }
                    };
                    let c = b.submit(req);
                    let nospace = errno == libc::ENOSPC;
                    let want = side.action(nospace);
                    let got = match c {
                        Completion::Failed(_) => ErrorAction::Report,
                        Completion::Ignored(_) => ErrorAction::Ignore,
                        Completion::Stopped { epoch, .. } => {
                            assert_eq!(epoch, b.resume_epoch());
                            ErrorAction::Stop
                        }
                        other => panic!("{other:?}"),
                    };
                    assert_eq!(got, want, "{side} {kind:?} {errno}");
                    let status = match (want, nospace) {
                        (ErrorAction::Stop, true) => IoStatus::NoSpace,
                        (ErrorAction::Stop, false) => IoStatus::Failed,
                        _ => IoStatus::Ok,
                    };
                    assert_eq!(b.io_status(), status, "{side} {kind:?} {errno}");
                    assert_eq!(b.io_status_enabled(), policy.can_stop());
                    let reason = if nospace {
                        "No space left on device"
                    } else {
                        "Input/output error"
                    };
                    let nospace_field = policy.can_stop().then_some(nospace);
                    assert_eq!(
                        log.lock().unwrap().clone(),
                        vec![(
                            "s",
                            format!(
                                "drive0 {} {} {} {nospace_field:?} {reason} {}",
                                b.root().node_name(),
                                kind.qmp_operation(),
                                want.as_str(),
                                policy.can_stop()
                            )
                        )]
                    );
                }
            }
        }
    }

    #[test]
    fn an_error_storm_calls_each_slot_once_per_request() {
        let f = image(4096);
        let b = open(&f, false);
        b.set_error_policy(Arc::new(DevicePolicy {
            read: OnError::Report,
            write: OnError::Ignore,
        }));
        let counters: Vec<Arc<Counter>> = (0..3).map(|_| Arc::new(Counter::default())).collect();
        for c in &counters {
            b.connect_io_error(c.clone());
        }
        b.inject(FaultRule::new(IoKind::Read, libc::EIO)).unwrap();
        b.inject(FaultRule::new(IoKind::Write, libc::ENOSPC))
            .unwrap();
        let mut buf = vec![0u8; 512];
        let bufs = [IoBuf::from(buf.as_mut_slice())];
        const N: usize = 100_000;
        for i in 0..N {
            let offset = (i as u64 % 8) * 512;
            let c = if i % 2 == 0 {
                b.submit(Request::Read {
                    offset,
                    bufs: &bufs,
                })
            } else {
                b.submit(Request::Write {
                    offset,
                    bufs: &bufs,
                })
            };
            assert!(!matches!(c, Completion::Ok | Completion::Stopped { .. }));
        }
        for c in &counters {
            assert_eq!(c.0.load(Ordering::Relaxed), N);
        }
        let q = b.stats().snapshot().qmp();
        assert_eq!(q.failed_rd_operations, N as u64 / 2);
        assert_eq!(q.wr_operations, N as u64 / 2);
        assert_eq!(b.io_status(), IoStatus::Ok);
        // The image was never written.
        assert!(std::fs::read(f.as_path())
            .unwrap()
            .iter()
            .all(|&x| x == 0x33));
    }

    #[test]
    fn the_fault_node_is_transparent() {
        let f = image(4096);
        let b = Backend::open(BackendConfig {
            node_name: Some("disk0".into()),
            ..BackendConfig::new("drive0", f.as_path())
        })
        .unwrap();
        let root = b.root();
        assert_eq!(root.node_name(), "disk0");
        assert_eq!(root.driver(), "file");
        assert_eq!(root.filename(), Some(f.as_path()));
        assert!(root.child().is_none());
        let top = b.fault_node();
        assert!(top.implicit());
        assert_eq!(top.driver(), "blkdebug");
        assert!(Arc::ptr_eq(&top.child().unwrap(), &root));
        assert_eq!(top.size(), 4096);
        let mut registry = crate::Registry::new();
        let b = registry.add_backend(b).unwrap();
        assert_eq!(
            registry.nodes().map(|n| n.node_name()).collect::<Vec<_>>(),
            vec!["disk0"]
        );
        assert!(b.injections().is_empty());
    }

    #[test]
    fn drain_waits_for_a_delayed_request() {
        let f = image(4096);
        let b = Arc::new(open(&f, false));
        b.inject(crate::FaultRule {
            errno: None,
            delay: Some(std::time::Duration::from_secs(3600)),
            ..crate::FaultRule::new(IoKind::Flush, 0)
        })
        .unwrap();
        let worker = {
            let b = b.clone();
            std::thread::spawn(move || b.submit(Request::Flush).is_success())
        };
        while b.in_flight() == 0 {
            std::thread::yield_now();
        }
        let drained = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let drainer = {
            let (b, drained) = (b.clone(), drained.clone());
            std::thread::spawn(move || {
                b.drain();
                drained.store(true, Ordering::Release);
            })
        };
        // The drain cannot finish while the flush is held; removing the rule releases both.
        assert!(!drained.load(Ordering::Acquire));
        b.remove_injection(None).unwrap();
        assert!(worker.join().unwrap());
        drainer.join().unwrap();
        assert!(drained.load(Ordering::Acquire));
        assert_eq!(b.in_flight(), 0);
    }
}
