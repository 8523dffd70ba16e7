// SPDX-License-Identifier: Apache-2.0
//! Live migration and snapshots, driven by QEMU's QMP (`migrate`, `migrate-incoming`,
//! `query-migrate`, `migrate_cancel`, the parameters and the `events` capability).
//!
//! A migration runs on a `migration` thread of its own (the source's [`outgoing`], the
//! destination's [`incoming`], which loads RAM through [`receive`]); it reads or writes guest RAM and the dirty log without the
//! big lock, and asks the main loop (through [`Link`]) for what needs the machine: stopping
//! the guest, its state, loading a state. The main loop's side is [`Migrations`], owned by
//! the machine. The byte format is in [`stream`]; what is checked and carried besides RAM in
//! [`state`].

pub mod control;
pub mod faults;
pub mod incoming;
pub mod outgoing;
pub mod postcopy;
pub mod receive;
pub mod state;
pub mod stream;
pub mod uri;

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use qapi::types::{MigrationInfo, MigrationParameters, MigrationStats, MigrationStatus};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use self::stream::{StreamError, PAGE};
use self::uri::UriError;

/// QEMU's default `max-bandwidth`: 32 MiB/s.
pub const DEFAULT_MAX_BANDWIDTH: u64 = 32 << 20;
/// QEMU's default `downtime-limit`: 300 ms.
pub const DEFAULT_DOWNTIME_LIMIT: u64 = 300;
/// QEMU's largest `downtime-limit`.
pub const MAX_DOWNTIME_LIMIT: u64 = 2_000_000;
/// How long the switch waits for the disks' last requests to complete.
pub const QUIESCE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Errors of a migration (reported in `query-migrate`'s `error-desc`, or by a destination
/// on exit).
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// The URI could not be opened.
    #[error(transparent)]
    Uri(#[from] UriError),
    /// A file could not be created or sized.
    #[error("Cannot {0} '{1}'")]
    Io(&'static str, String, #[source] std::io::Error),
    /// Writing the stream failed (the destination went away, the disk is full).
    #[error("Cannot send the migration stream")]
    Send(#[source] std::io::Error),
    /// Reading the stream failed.
    #[error("Cannot receive the migration stream")]
    Receive(#[source] std::io::Error),
    /// The destination did not answer.
    #[error("The destination did not confirm the migration")]
    Reply(#[source] std::io::Error),
    /// The destination refused.
    #[error("The destination refused the migration: {0}")]
    Refused(String),
    /// The stream is corrupt or truncated.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// What the source sent cannot be loaded (corrupt, truncated, another VM).
    #[error(transparent)]
    Load(#[from] receive::LoadError),
    /// A page outside guest RAM.
    #[error("Corrupt migration stream: a page at {0:#x} is outside guest RAM")]
    Memory(u64),
    /// The dirty log failed.
    #[error(transparent)]
    DirtyLog(#[from] crate::memory::MemoryError),
    /// Saving or loading the state failed.
    #[error("{0}")]
    State(String),
    /// `migrate_cancel`.
    #[error("The migration was cancelled")]
    Cancelled,
    /// The return path broke its protocol.
    #[error(transparent)]
    Protocol(#[from] postcopy::ProtocolError),
    /// userfaultfd failed.
    #[error(transparent)]
    Uffd(#[from] crate::uffd::UffdError),
    /// Filling a missing page failed.
    #[error("Cannot fill guest RAM's missing pages")]
    Fill(#[source] std::io::Error),
    /// The main loop went away (vmm is exiting).
    #[error("vmm is exiting")]
    MainLoop,
}

/// The parameters (`migrate-set-parameters`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// Bytes per second.
    pub max_bandwidth: u64,
    /// Milliseconds.
    pub downtime_limit: u64,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            max_bandwidth: DEFAULT_MAX_BANDWIDTH,
            downtime_limit: DEFAULT_DOWNTIME_LIMIT,
        }
    }
}

/// The counters `query-migrate` reports.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Status.
    pub status: MigrationStatus,
    /// When `migrate` (or the incoming migration) started.
    pub started: Instant,
    /// Milliseconds of setup.
    pub setup_ms: Option<i64>,
    /// Milliseconds from start to end, once ended.
    pub total_ms: Option<i64>,
    /// Milliseconds the guest was stopped.
    pub downtime_ms: Option<i64>,
    /// The estimate of the switch.
    pub expected_downtime_ms: i64,
    /// Why it failed.
    pub error: Option<String>,
    /// Bytes sent or received.
    pub transferred: u64,
    /// Bytes still to send.
    pub remaining: u64,
    /// Bytes of RAM.
    pub total: u64,
    /// Zero pages.
    pub duplicate: u64,
    /// Pages sent with their bytes.
    pub normal: u64,
    /// Pages written per second in the last pass.
    pub dirty_pages_rate: i64,
    /// Megabits per second of the last pass.
    pub mbps: f64,
    /// Bytes per second of the last pass.
    pub bandwidth: f64,
    /// Dirty-log reads.
    pub dirty_syncs: i64,
    /// Pages per second of the last pass.
    pub pages_per_second: u64,
    /// Bytes sent while the guest ran.
    pub precopy_bytes: u64,
    /// Bytes sent while it was stopped.
    pub downtime_bytes: u64,
    /// Pages the destination asked for (postcopy).
    pub postcopy_requests: u64,
    /// Bytes of pages sent after the switch to postcopy.
    pub postcopy_bytes: u64,
}

impl Progress {
    fn new() -> Self {
        Self {
            // `begin`'s caller announces `setup` right away.
            status: MigrationStatus::None,
            started: Instant::now(),
            setup_ms: None,
            total_ms: None,
            downtime_ms: None,
            expected_downtime_ms: 0,
            error: None,
            transferred: 0,
            remaining: 0,
            total: 0,
            duplicate: 0,
            normal: 0,
            dirty_pages_rate: 0,
            mbps: 0.0,
            bandwidth: 0.0,
            dirty_syncs: 0,
            pages_per_second: 0,
            precopy_bytes: 0,
            downtime_bytes: 0,
            postcopy_requests: 0,
            postcopy_bytes: 0,
        }
    }

    /// `query-migrate`'s answer.
    pub fn info(&self) -> MigrationInfo {
        self.info_as(self.status, self.error.clone())
    }

    /// `query-migrate`'s answer with `status` and `error`, the ones published for the
    /// monitor thread (which may lag the main loop's: see [`Published`]).
    fn info_as(&self, status: MigrationStatus, error: Option<String>) -> MigrationInfo {
        let ended = matches!(
            status,
            MigrationStatus::Completed | MigrationStatus::Failed | MigrationStatus::Cancelled
        );
        let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        MigrationInfo {
            status: Some(status),
            ram: Some(MigrationStats {
                transferred: i(self.transferred),
                remaining: i(self.remaining),
                total: i(self.total),
                duplicate: i(self.duplicate),
                skipped: 0,
                normal: i(self.normal),
                normal_bytes: i(self.normal * PAGE as u64),
                dirty_pages_rate: self.dirty_pages_rate,
                mbps: self.mbps,
                dirty_sync_count: self.dirty_syncs,
                postcopy_requests: i(self.postcopy_requests),
                page_size: PAGE as i64,
                multifd_bytes: 0,
                pages_per_second: self.pages_per_second,
                precopy_bytes: self.precopy_bytes,
                downtime_bytes: self.downtime_bytes,
                postcopy_bytes: self.postcopy_bytes,
                dirty_sync_missed_zero_copy: 0,
            }),
            total_time: Some(
                self.total_ms
                    .unwrap_or_else(|| self.started.elapsed().as_millis() as i64),
            ),
            expected_downtime: (status == MigrationStatus::Active)
                .then_some(self.expected_downtime_ms),
            downtime: self.downtime_ms.filter(|_| ended),
            setup_time: self.setup_ms,
            error_desc: error,
        }
    }
}

/// What a migration thread and the main loop share.
#[derive(Debug)]
pub struct Shared {
    progress: Mutex<Progress>,
    params: Mutex<Params>,
    /// Set by `migrate_cancel` (and when vmm exits).
    pub cancel: AtomicBool,
    /// Set by `migrate-start-postcopy`.
    pub postcopy: AtomicBool,
    /// Whether this is the destination's side.
    pub incoming: bool,
    /// Where a paused postcopy continues (`migrate-recover`, `migrate` with `resume`).
    resume: Mutex<Option<Resume>>,
    resume_set: Condvar,
    /// A duplicate of the channel's socket, shut down to cancel a blocked read or write
    /// (a duplicate, so that its number is never one the thread closed and the process
    /// reused); dropped when the migration ends.
    socket: Mutex<Option<OwnedFd>>,
}

/// Where a paused postcopy continues.
pub enum Resume {
    /// The destination listens there (`migrate-recover`).
    Listen(uri::MigrationUri),
    /// The source connects there (`migrate` with `resume`), or uses this channel (`fd:`).
    Connect(uri::MigrationUri, Option<uri::Channel>),
}

impl std::fmt::Debug for Resume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resume::Listen(u) => write!(f, "Listen({u:?})"),
            Resume::Connect(u, _) => write!(f, "Connect({u:?})"),
        }
    }
}

impl Shared {
    fn new(params: Params, incoming: bool) -> Self {
        Self {
            progress: Mutex::new(Progress::new()),
            params: Mutex::new(params),
            cancel: AtomicBool::new(false),
            postcopy: AtomicBool::new(false),
            incoming,
            resume: Mutex::new(None),
            resume_set: Condvar::new(),
            socket: Mutex::new(None),
        }
    }

    /// Hands a paused postcopy where to continue; `false` if one is handed already.
    pub fn set_resume(&self, r: Resume) -> bool {
        let mut slot = self.resume.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            return false;
        }
        *slot = Some(r);
        self.resume_set.notify_all();
        true
    }

    /// Waits (on the `migration` thread) for where a paused postcopy continues; `None` once
    /// vmm exits.
    pub fn wait_resume(&self) -> Option<Resume> {
        let mut slot = self.resume.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if self.cancel.load(Ordering::Acquire) {
                return None;
            }
            if let Some(r) = slot.take() {
                return Some(r);
            }
            slot = self
                .resume_set
                .wait_timeout(slot, Duration::from_millis(200))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Changes the counters.
    pub fn update(&self, f: impl FnOnce(&mut Progress)) {
        f(&mut self.progress.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Reads the counters.
    pub fn get<T>(&self, f: impl FnOnce(&Progress) -> T) -> T {
        f(&self.progress.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The parameters now.
    pub fn params(&self) -> Params {
        *self.params.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes the channel's descriptor: a socket is kept (duplicated) for
    /// [`interrupt`](Self::interrupt); a pipe or file has nothing to shut down (its thread
    /// sees the flag at its next chunk).
    pub fn set_fd(&self, fd: RawFd) {
        // SAFETY: the caller's descriptor is open for the duration of this call.
        let dup = uri::socket_dup(unsafe { BorrowedFd::borrow_raw(fd) });
        *self.socket.lock().unwrap_or_else(|e| e.into_inner()) = dup;
    }

    /// Wakes a thread blocked on the channel's socket: shuts it down (`migrate-pause`,
    /// `migrate_cancel`).
    pub fn interrupt(&self) {
        if let Some(s) = self
            .socket
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            // SAFETY: shutdown on our own duplicate of the socket.
            unsafe { libc::shutdown(s.as_raw_fd(), libc::SHUT_RDWR) };
        }
    }

    /// Lets the socket's duplicate go (the migration ended).
    fn release(&self) {
        self.socket.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// What a migration thread asks of the main loop.
pub enum Request {
    /// The status changed (a MIGRATION event).
    Status(MigrationStatus),
    /// A pass started (a MIGRATION_PASS event).
    Pass(u64),
    /// Stop the guest for the switch; answer when every vCPU is parked.
    Pause(Sender<()>),
    /// The disks are drained: quiesce the devices, give the state (JSON) and let go of the
    /// images (flushed, unlocked).
    SaveState(Sender<Result<Vec<u8>, String>>),
    /// The outgoing migration ended: done, failed (why), or cancelled (`Err(None)`).
    Finished(Result<(), Option<String>>),
    /// Load this state (JSON) and take the images; answer with the verdict. With `true`
    /// (postcopy) the guest runs at once, before the rest of its RAM has come.
    Restore(Vec<u8>, bool, Sender<Result<(), String>>),
    /// The incoming migration ended.
    IncomingFinished(Result<(), String>),
}

/// A migration thread's way to the main loop: a channel and the eventfd that wakes it.
#[derive(Clone)]
pub struct Link {
    tx: Sender<Request>,
    wake: Arc<EventFd>,
}

impl Link {
    /// Sends `r` and wakes the main loop.
    pub fn send(&self, r: Request) {
        if self.tx.send(r).is_ok() {
            let _ = self.wake.write(1);
        }
    }
}

/// A migration's body, run on the `migration` thread.
pub type Job = Box<dyn FnOnce() + Send>;

/// The main loop's side of migrations: the parameters, the last migration's counters, and
/// the `migration` thread. The thread exists from start-up, waiting for a job: created before
/// the main thread confines itself, it takes the migration filter alone (sockets, files, the
/// dirty log), which the main thread's own filter then need not allow.
pub struct Migrations {
    params: Params,
    shared: Option<Arc<Shared>>,
    /// The current migration's counters, for the monitor thread's out-of-band commands.
    published: Arc<Published>,
    /// The `uffd` thread's jobs (a destination's fault server).
    uffd_jobs: Option<Sender<Job>>,
    uffd_thread: Option<std::thread::JoinHandle<()>>,
    /// The postcopy capability (`postcopy-ram`).
    pub postcopy_ram: bool,
    rx: Mutex<Receiver<Request>>,
    link: Link,
    jobs: Option<Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// A job runs (from `spawn` until the main loop handles its end).
    running: bool,
    /// The guest ran when the switch stopped it (it runs again if the migration fails).
    pub was_running: bool,
    /// An incoming migration runs or waits (`-incoming`).
    pub incoming: bool,
}

impl std::fmt::Debug for Migrations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Migrations")
            .field("params", &self.params)
            .field("running", &self.running)
            .finish()
    }
}

impl Migrations {
    /// No migration yet; the `migration` thread starts (and confines itself) now.
    ///
    /// # Errors
    /// The eventfd or the thread could not be created.
    pub fn new() -> std::io::Result<Self> {
        let (tx, rx) = channel();
        let (jobs, thread) = job_thread("migration", crate::seccomp::ThreadKind::Migration)?;
        let (uffd_jobs, uffd_thread) = job_thread("uffd", crate::seccomp::ThreadKind::Uffd)?;
        Ok(Self {
            params: Params::default(),
            shared: None,
            published: Arc::new(Published::default()),
            uffd_jobs: Some(uffd_jobs),
            uffd_thread: Some(uffd_thread),
            postcopy_ram: false,
            rx: Mutex::new(rx),
            link: Link {
                tx,
                wake: Arc::new(EventFd::new(EFD_NONBLOCK)?),
            },
            jobs: Some(jobs),
            thread: Some(thread),
            running: false,
            was_running: false,
            incoming: false,
        })
    }

    /// The eventfd the main loop watches.
    pub fn wake(&self) -> &EventFd {
        &self.link.wake
    }

    /// The next request of the thread, if any (the eventfd is cleared first).
    pub fn next_request(&mut self) -> Option<Request> {
        let _ = self.link.wake.read();
        self.rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_recv()
            .ok()
    }

    /// Whether a migration runs.
    pub fn active(&self) -> bool {
        self.running
    }

    /// The parameters.
    pub fn params(&self) -> Params {
        self.params
    }

    /// Changes the parameters (a running migration takes them at once).
    pub fn set_params(&mut self, p: Params) {
        self.params = p;
        if let Some(s) = &self.shared {
            *s.params.lock().unwrap_or_else(|e| e.into_inner()) = p;
        }
    }

    /// `query-migrate`.
    pub fn info(&self) -> MigrationInfo {
        info_of(self.shared.as_deref())
    }

    /// The counters of the migration that starts now (`incoming` on the destination),
    /// and the link for its thread.
    pub fn begin(&mut self, incoming: bool) -> (Arc<Shared>, Link) {
        let shared = Arc::new(Shared::new(self.params, incoming));
        self.shared = Some(shared.clone());
        (shared, self.link.clone())
    }

    /// What publishes the current migration and its status now for the monitor thread; the
    /// main loop runs it in order with its events (see [`Published`]).
    pub fn publication(&self) -> Box<dyn FnOnce() + Send> {
        let published = self.published.clone();
        let shown = self.shared.as_ref().map(|s| {
            let (status, error) = s.get(|p| (p.status, p.error.clone()));
            Shown {
                shared: s.clone(),
                status,
                error,
            }
        });
        Box::new(move || *published.0.lock().unwrap_or_else(|e| e.into_inner()) = shown)
    }

    /// The current migration's shared side, if any.
    pub fn shared(&self) -> Option<&Arc<Shared>> {
        self.shared.as_ref()
    }

    /// What the monitor thread reads.
    pub fn published(&self) -> &Arc<Published> {
        &self.published
    }

    /// A sender of jobs for the `uffd` thread.
    pub fn uffd_jobs(&self) -> Option<Sender<Job>> {
        self.uffd_jobs.clone()
    }

    /// Runs `body` on the `migration` thread.
    ///
    /// # Errors
    /// The thread has ended (it could not confine itself).
    pub fn spawn(&mut self, body: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
        let sent = self.jobs.as_ref().map(|j| j.send(Box::new(body)));
        if !matches!(sent, Some(Ok(()))) {
            return Err(std::io::Error::other("the migration thread has ended"));
        }
        self.running = true;
        Ok(())
    }

    /// Records the new status; `true` when it changed.
    pub fn set_status(&mut self, status: MigrationStatus) -> bool {
        let Some(s) = &self.shared else {
            return false;
        };
        let mut changed = false;
        s.update(|p| {
            changed = p.status != status;
            p.status = status;
        });
        changed
    }

    /// The migration ended: the thread is joined, the counters frozen.
    pub fn end(&mut self, status: MigrationStatus, error: Option<String>) {
        // The job's last act was to report its end: the thread waits for the next one.
        self.running = false;
        if let Some(s) = &self.shared {
            s.release();
            s.update(|p| {
                p.status = status;
                p.total_ms = Some(p.started.elapsed().as_millis() as i64);
                p.error = error;
            });
        }
    }

    /// `migrate_cancel`: the thread stops at its next chunk or blocked call; `false` when no
    /// migration runs. The caller records `cancelling` (and announces it).
    pub fn cancel(&mut self) -> bool {
        match (&self.shared, self.running) {
            (Some(s), true) => {
                s.cancel.store(true, Ordering::Release);
                s.interrupt();
                true
            }
            _ => false,
        }
    }

    /// The current status (`none` before any migration).
    pub fn status(&self) -> MigrationStatus {
        self.shared
            .as_ref()
            .map_or(MigrationStatus::None, |s| s.get(|p| p.status))
    }
}

impl Drop for Migrations {
    fn drop(&mut self) {
        // A running job is told to stop; the thread ends once it has (a job blocked on
        // storage or a peer ends with the process instead: it is not waited for).
        if let Some(s) = &self.shared {
            s.cancel.store(true, Ordering::Release);
            s.interrupt();
        }
        self.jobs = None;
        if !self.running {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
        // A fault server ends with its migration (which stops it), or with the process.
        self.uffd_jobs = None;
        drop(self.uffd_thread.take());
    }
}

/// A thread that confines itself as `kind` and runs the jobs it is sent.
fn job_thread(
    name: &str,
    kind: crate::seccomp::ThreadKind,
) -> std::io::Result<(Sender<Job>, std::thread::JoinHandle<()>)> {
    let (jobs, queue) = channel::<Job>();
    let thread = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if let Err(e) = crate::seccomp::confine(kind) {
                eprintln!("vmm: {}", crate::error::chain(&e));
                return;
            }
            for job in queue {
                job();
            }
        })?;
    Ok((jobs, thread))
}

/// The current migration, published for the monitor thread (`query-migrate`,
/// `migrate-pause` and `migrate-recover` out of band), with its status and error as of the
/// main loop's last publication. The main loop publishes in order with its events and run
/// states (through the monitor), so whoever sees a status sees the events and the run state
/// that came before it: a failed outgoing migration's `failed` never shows before the guest
/// is `running` again. The counters are read live. The lock is held only to clone.
#[derive(Debug, Default)]
pub struct Published(Mutex<Option<Shown>>);

/// A published migration.
#[derive(Debug, Clone)]
struct Shown {
    shared: Arc<Shared>,
    status: MigrationStatus,
    error: Option<String>,
}

impl Published {
    /// The current migration, if any.
    pub fn get(&self) -> Option<Arc<Shared>> {
        self.shown().map(|s| s.shared)
    }

    /// `query-migrate`'s answer on the monitor thread.
    pub fn info(&self) -> MigrationInfo {
        match self.shown() {
            Some(s) => s.shared.get(|p| p.info_as(s.status, s.error)),
            None => info_of(None),
        }
    }

    fn shown(&self) -> Option<Shown> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// `query-migrate`'s answer for `shared` (none: no migration yet).
pub fn info_of(shared: Option<&Shared>) -> MigrationInfo {
    match shared {
        Some(s) => s.get(Progress::info),
        None => MigrationInfo {
            status: None,
            ram: None,
            total_time: None,
            expected_downtime: None,
            downtime: None,
            setup_time: None,
            error_desc: None,
        },
    }
}

/// Whether `status` is one of postcopy's (the guest's newest state may be on the
/// destination).
pub fn in_postcopy(status: MigrationStatus) -> bool {
    matches!(
        status,
        MigrationStatus::PostcopyActive
            | MigrationStatus::PostcopyPaused
            | MigrationStatus::PostcopyRecover
    )
}

/// The parameters as `query-migrate-parameters` reports them.
pub fn parameters(p: Params) -> MigrationParameters {
    MigrationParameters {
        max_bandwidth: Some(p.max_bandwidth),
        downtime_limit: Some(p.downtime_limit),
    }
}
