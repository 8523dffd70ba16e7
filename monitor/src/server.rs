// SPDX-License-Identifier: Apache-2.0
//! The monitor thread: accepts clients, reads and checks their requests, negotiates
//! capabilities, runs out-of-band commands itself, hands in-band commands to the main loop in
//! order, and writes replies and events.
//!
//! In-band flow: in-band commands go to the main loop in arrival order and come back through
//! [`MonitorHandle::respond`], so a client gets its in-band replies in the order it sent the
//! requests. At most [`MAX_INFLIGHT`] in-band items per session are with the main loop; past
//! that the monitor stops reading that client until one completes, as QEMU does. What the
//! monitor can answer itself (malformed input, unknown commands, and everything before
//! negotiation, `qmp_capabilities` included) is written at once when the session has nothing
//! in flight, and otherwise travels through the main loop behind the earlier items to keep its
//! place. Negotiation therefore never waits for the main loop, and a session enters command
//! mode in the same step in which its `qmp_capabilities` reply is queued: no event reaches it
//! first. Out-of-band commands (`exec-oob` of an `allow-oob` command) are answered by the
//! monitor thread at once and may overtake in-band replies. An `allow-oob` command sent in
//! band by a session with nothing in flight is also answered by the monitor thread: no earlier
//! reply of that session can be pending, so its order is kept.
//!
//! The thread is one [`event_manager`] subscriber: the wake-up eventfd, the listeners and
//! every client socket are registered with it; sessions are found by their socket's fd.

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{
    EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberId, SubscriberOps,
};
use qapi::commands::{command_info, dispatch_oob, resolve_handle, QmpOobCommands};
use qapi::events::{Event, SIGNALS};
use qapi::rt::{parse_canonical_handle, ErrorClass, QmpError, Timestamp};
use qapi::types::BlockErrorAction;
use serde_json::{json, Value};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use crate::dispatch::{
    already_negotiated, negotiate, not_negotiated, reply, response, Inband, OFFERED,
};
use crate::json_stream::Item;
use crate::listener::{ListenError, Listener, Stream};
use crate::request::{parse_message, Connect, Disconnect, Malformed, Message, Mode, Request};
use crate::session::{ReadOutcome, Session, READ_CHUNK};
use crate::signals::{Connection, RateLimiter};
use crate::spec::SocketSpec;
use crate::wire::encode;

/// In-band items a session may have with the main loop before the monitor stops reading it.
pub const MAX_INFLIGHT: usize = 8;
/// A client whose unread output exceeds this is disconnected, so a stalled client cannot
/// make the VMM buffer events without bound.
pub const MAX_OUTPUT: usize = 16 << 20;

/// Bounds on what clients can make the monitor hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most clients connected at once, over all sockets; one more is refused with an error
    /// message instead of the greeting.
    pub max_clients: usize,
    /// Most bytes of partly read requests and unsent output over all clients together. The
    /// client whose large message or unread output passes it is disconnected (with an error
    /// message), so a few clients cannot exhaust the VMM's memory with 64 MiB messages.
    pub max_buffered: usize,
    /// The process's descriptors the clients may not use (`None`: no such check; accept
    /// still rests when descriptors run out).
    pub descriptors: Option<FdBudget>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_clients: usize::from(DEFAULT_MAX_CLIENTS),
            max_buffered: 256 << 20,
            descriptors: None,
        }
    }
}

/// The process's open-file limit and the descriptors under it that the VMM keeps for its own
/// needs (opening images, a device's eventfds and io_uring, ...), so that no number of clients
/// can make those fail.
///
/// The kernel gives every new descriptor the lowest free number, so a client accepted on
/// descriptor `n` means that `0..n` are all in use. A client is refused when its descriptor
/// is one of the top `reserve` under `limit`: clients then never hold one of those, and the
/// VMM always finds at least `reserve` descriptors that no client took (minus one refused
/// client's for the moment its error line is written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdBudget {
    /// The soft `RLIMIT_NOFILE`: descriptors are numbered below it.
    pub limit: u64,
    /// How many of the highest-numbered descriptors clients may not take.
    pub reserve: u64,
}

impl FdBudget {
    /// Whether a client accepted on descriptor `fd` may stay.
    pub fn admits(&self, fd: RawFd) -> bool {
        u64::try_from(fd).is_ok_and(|fd| fd < self.limit.saturating_sub(self.reserve))
    }
}

/// The default of [`Limits::max_clients`] (and of `--qmp-max-clients`).
pub const DEFAULT_MAX_CLIENTS: u16 = 64;
/// Identifies a client connection.
pub type SessionId = u64;

/// What the monitor tells the main loop.
#[derive(Debug, Clone, PartialEq)]
pub enum ToMain {
    /// An in-band item of `session`.
    Request {
        /// The client connection.
        session: SessionId,
        /// The item.
        item: Inband,
    },
    /// A client connected to a socket declared with `wait=on`.
    WaitedClientConnected,
    /// A session ended after the main loop answered all of it: its named descriptors
    /// ([`crate::fds::FdTable`]) are closed.
    SessionClosed(SessionId),
}

fn error_reply(class: ErrorClass, desc: impl Into<String>, id: Option<Value>) -> Value {
    reply(Err(QmpError::new(class, desc)), id)
}

/// Errors starting the monitor.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// A listening socket could not be created.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// The wake-up eventfd or the back-off timer could not be created.
    #[error("Cannot create the monitor's eventfd or timerfd")]
    EventFd(#[source] io::Error),
    /// The monitor's epoll could not be set up.
    #[error("Cannot set up the monitor's event loop: {0}")]
    EventLoop(event_manager::Error),
    /// The thread could not be started.
    #[error("Cannot start the monitor thread")]
    Spawn(#[source] io::Error),
}

enum ToMonitor {
    Response(SessionId, Option<Value>),
    Event(Event, Timestamp, Option<Box<dyn FnOnce() + Send>>),
    Run(Box<dyn FnOnce() + Send>),
    Stop,
}

struct Shared {
    inbox: Mutex<Vec<ToMonitor>>,
    wake: EventFd,
}

/// A cheap handle for sending replies and events to the monitor thread, from any thread.
/// Never blocks on a client.
#[derive(Clone)]
pub struct MonitorHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MonitorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MonitorHandle")
    }
}

impl MonitorHandle {
    fn push(&self, m: ToMonitor) {
        self.shared
            .inbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(m);
        // A failed wake write means the counter is saturated: the thread is awake anyway.
        let _ = self.shared.wake.write(1);
    }

    /// Completes one in-band item of `session`, sending `message` (None: a command with
    /// `success-response: false` that succeeded).
    pub fn respond(&self, session: SessionId, message: Option<Value>) {
        self.push(ToMonitor::Response(session, message));
    }

    /// Emits `event` (a signal of its owner) to every negotiated session connected to it,
    /// and runs `then` on the monitor thread in the same step, right after the event is queued
    /// to every client: what `then` publishes (a run state for out-of-band readers) becomes
    /// visible exactly when the event does.
    pub fn emit_then(
        &self,
        event: Event,
        timestamp: Timestamp,
        then: Option<Box<dyn FnOnce() + Send>>,
    ) {
        self.push(ToMonitor::Event(event, timestamp, then));
    }

    /// Runs `f` on the monitor thread after everything sent to it before (replies, events).
    /// The VMM publishes state that out-of-band commands read this way, so that a client
    /// never sees a state before the event announcing it.
    pub fn run_in_order(&self, f: Box<dyn FnOnce() + Send>) {
        self.push(ToMonitor::Run(f));
    }
}

/// Emission from any thread (the block I/O threads emit `BLOCK_IO_ERROR` this way): queued to
/// the monitor thread, never blocking on a client.
impl qapi::events::EventSink for MonitorHandle {
    fn emit(&self, event: Event, timestamp: Timestamp) {
        self.push(ToMonitor::Event(event, timestamp, None));
    }
}

/// The running monitor. Dropping it stops the thread, closes the clients and removes the
/// Unix socket files.
pub struct Monitor {
    handle: MonitorHandle,
    thread: Option<JoinHandle<()>>,
    tcp_ports: Vec<Option<u16>>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("tcp_ports", &self.tcp_ports)
            .finish()
    }
}

/// What the monitor needs to know about the VMM.
pub struct MonitorConfig {
    /// Listening sockets.
    pub sockets: Vec<SocketSpec>,
    /// The greeting's `version` object (the `query-version` value).
    pub version: Value,
    /// The out-of-band command implementation, run on the monitor thread.
    pub oob: Arc<dyn QmpOobCommands>,
    /// Where in-band items go.
    pub to_main: Sender<ToMain>,
    /// Written after each message to the main loop, to wake its epoll.
    pub main_wake: EventFd,
    /// Bounds on clients and their buffers.
    pub limits: Limits,
    /// Runs first on the monitor thread, before it reads any client (the VMM confines the
    /// thread there); an error ends the thread with the reason on stderr.
    pub thread_hook: Arc<dyn Fn() -> std::io::Result<()> + Send + Sync>,
}

impl Monitor {
    /// Binds the sockets and starts the monitor thread.
    ///
    /// # Errors
    /// Fails when a socket cannot be bound or the thread cannot start.
    pub fn start(config: MonitorConfig) -> Result<Self, MonitorError> {
        let mut listeners = Vec::new();
        for spec in &config.sockets {
            listeners.push(Socket {
                listener: Listener::bind(spec)?,
                wait: spec.wait,
                max_clients: spec.max_clients,
                clients: 0,
            });
        }
        let tcp_ports = listeners.iter().map(|s| s.listener.local_port()).collect();
        let wake = EventFd::new(EFD_NONBLOCK).map_err(MonitorError::EventFd)?;
        let shared = Arc::new(Shared {
            inbox: Mutex::new(Vec::new()),
            wake: wake.try_clone().map_err(MonitorError::EventFd)?,
        });
        let offered: Vec<Value> = OFFERED.iter().map(|c| json!(c)).collect();
        let thread = MonitorThread {
            listeners,
            sessions: HashMap::new(),
            by_fd: HashMap::new(),
            next_session: 1,
            greeting: encode(&json!({"QMP": {"version": config.version, "capabilities": offered}})),
            oob: config.oob,
            to_main: config.to_main,
            main_wake: config.main_wake,
            shared: shared.clone(),
            wake,
            limits: config.limits,
            timer: TimerFd::new().map_err(|e| MonitorError::EventFd(e.into()))?,
            accept_paused: false,
            rate: RateLimiter::new(IO_ERROR_RATE_WINDOW),
            rate_timer: TimerFd::new().map_err(|e| MonitorError::EventFd(e.into()))?,
            changes: Vec::new(),
            closed: Vec::new(),
            setup_error: None,
            stopped: false,
        };
        let mut manager = EventManager::new().map_err(MonitorError::EventLoop)?;
        let id = manager.add_subscriber(thread);
        if let Some(e) = manager
            .subscriber_mut(id)
            .map_err(MonitorError::EventLoop)?
            .setup_error
            .take()
        {
            return Err(MonitorError::EventLoop(e));
        }
        let hook = config.thread_hook;
        let handle = std::thread::Builder::new()
            .name("qmp-monitor".into())
            // Deeply nested requests (up to 1024 levels) are parsed recursively.
            .stack_size(8 << 20)
            .spawn(move || {
                if let Err(e) = hook() {
                    eprintln!("vmm: the QMP monitor cannot start: {e}");
                    return;
                }
                MonitorThread::run(manager, id)
            })
            .map_err(MonitorError::Spawn)?;
        Ok(Self {
            handle: MonitorHandle { shared },
            thread: Some(handle),
            tcp_ports,
        })
    }

    /// A handle for replies and events.
    pub fn handle(&self) -> MonitorHandle {
        self.handle.clone()
    }

    /// The TCP port each socket listens on (None for Unix sockets), in `--qmp` order.
    pub fn tcp_ports(&self) -> &[Option<u16>] {
        &self.tcp_ports
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.handle.push(ToMonitor::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What an event on the monitor's epoll is about: the `data` of its registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    /// Another thread queued something in the inbox.
    Wake,
    /// The accept back-off is over.
    Timer,
    /// A window of the broadcast rate limit ends.
    RateTimer,
    /// A client is connecting to listener N.
    Listener(usize),
    /// A client socket is ready (the session is found by its fd).
    Session,
}

impl Token {
    const WAKE: u32 = 0;
    const TIMER: u32 = 1;
    const RATE_TIMER: u32 = 2;
    const FIRST_LISTENER: u32 = 3;
    const SESSION: u32 = u32::MAX;

    fn data(self) -> u32 {
        match self {
            Token::Wake => Self::WAKE,
            Token::Timer => Self::TIMER,
            Token::RateTimer => Self::RATE_TIMER,
            // Listener indexes are small: one per --qmp option.
            Token::Listener(i) => Self::FIRST_LISTENER + i as u32,
            Token::Session => Self::SESSION,
        }
    }

    fn from_data(data: u32) -> Self {
        match data {
            Self::WAKE => Token::Wake,
            Self::TIMER => Token::Timer,
            Self::RATE_TIMER => Token::RateTimer,
            Self::SESSION => Token::Session,
            n => Token::Listener((n - Self::FIRST_LISTENER) as usize),
        }
    }
}

/// A change to the epoll interest set, applied after the current event is handled (the
/// handlers deep in the session logic have no [`EventOps`] at hand).
#[derive(Debug)]
enum Change {
    Add(RawFd, Token, EventSet),
    Modify(RawFd, Token, EventSet),
    Remove(RawFd),
}

/// How long the listeners rest after `accept` failed for lack of descriptors or memory.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// The window of the broadcast rate limit of `BLOCK_IO_ERROR` (newer QEMU's, per qom-path).
const IO_ERROR_RATE_WINDOW: Duration = Duration::from_secs(1);

/// A listening socket and its clients.
struct Socket {
    listener: Listener,
    /// Declared with `wait=on`: the main loop hears of each client.
    wait: bool,
    /// The socket's own client limit.
    max_clients: Option<usize>,
    /// Sessions of this socket, closed ones not yet counted out included.
    clients: usize,
}

struct MonitorThread {
    listeners: Vec<Socket>,
    sessions: HashMap<SessionId, Session>,
    by_fd: HashMap<RawFd, SessionId>,
    next_session: SessionId,
    greeting: Vec<u8>,
    oob: Arc<dyn QmpOobCommands>,
    to_main: Sender<ToMain>,
    main_wake: EventFd,
    shared: Arc<Shared>,
    wake: EventFd,
    limits: Limits,
    /// Re-arms the listeners after an accept back-off.
    timer: TimerFd,
    /// The listeners are out of the epoll interest until the timer fires.
    accept_paused: bool,
    /// The broadcast rate limit of `BLOCK_IO_ERROR`, keyed by the device's qom-path.
    rate: RateLimiter<String, (Event, Timestamp)>,
    /// Fires when the rate limit's next window ends.
    rate_timer: TimerFd,
    /// Interest changes not yet applied.
    changes: Vec<Change>,
    /// Sessions closed since the last [`apply`](Self::apply): their sockets stay open until
    /// they are out of the epoll set.
    closed: Vec<Session>,
    /// The registration error of [`init`](MutEventSubscriber::init), for `start` to report.
    setup_error: Option<event_manager::Error>,
    /// Told to stop: the thread closes every session and exits.
    stopped: bool,
}

/// What to do after handling one item.
enum Flow {
    Continue,
    /// The session reached its in-band limit: leave the rest in the backlog.
    Full,
}

impl MutEventSubscriber for MonitorThread {
    fn init(&mut self, ops: &mut EventOps) {
        let mut fixed = vec![
            Events::with_data(&self.wake, Token::Wake.data(), EventSet::IN),
            Events::with_data(&self.timer, Token::Timer.data(), EventSet::IN),
            Events::with_data(&self.rate_timer, Token::RateTimer.data(), EventSet::IN),
        ];
        for (i, socket) in self.listeners.iter().enumerate() {
            fixed.push(Events::with_data(
                &socket.listener,
                Token::Listener(i).data(),
                EventSet::IN,
            ));
        }
        for events in fixed {
            if let Err(e) = ops.add(events) {
                self.setup_error = Some(e);
                return;
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match Token::from_data(events.data()) {
            Token::Wake => {
                if !self.drain_inbox() {
                    self.stopped = true;
                }
            }
            Token::Timer => {
                let _ = self.timer.wait();
                self.resume_accepting();
            }
            Token::RateTimer => {
                let _ = self.rate_timer.wait();
                for (event, timestamp) in self.rate.expire(Instant::now()) {
                    self.broadcast(&event, timestamp);
                }
                self.arm_rate_timer();
            }
            Token::Listener(index) => self.accept(index),
            Token::Session => {
                if let Some(id) = self.by_fd.get(&events.fd()).copied() {
                    self.service(id, events.event_set());
                }
            }
        }
        self.apply(ops);
    }
}

impl MonitorThread {
    fn run(mut manager: EventManager<MonitorThread>, id: SubscriberId) {
        loop {
            match manager.subscriber_mut(id) {
                Ok(thread) if !thread.stopped => {}
                _ => break,
            }
            // The epoll descriptor is ours; failing here means the process is in trouble.
            if manager.run().is_err() {
                break;
            }
        }
        if let Ok(thread) = manager.subscriber_mut(id) {
            thread.close_all();
        }
    }

    /// Applies the queued interest changes, then lets go of closed sessions' sockets.
    fn apply(&mut self, ops: &mut EventOps) {
        for change in self.changes.drain(..) {
            // A failure leaves the fd as it was: at worst a socket is not polled until its
            // next change; the fds themselves are valid while queued here.
            let _ = match change {
                Change::Add(fd, token, set) => {
                    ops.add(Events::with_data_raw(fd, token.data(), set))
                }
                Change::Modify(fd, token, set) => {
                    ops.modify(Events::with_data_raw(fd, token.data(), set))
                }
                Change::Remove(fd) => ops.remove(Events::empty_raw(fd)),
            };
        }
        self.closed.clear();
    }

    fn close_all(&mut self) {
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in ids {
            // Best effort: the last replies (such as quit's) and events are small enough for
            // the socket buffer of a client that is still reading.
            self.flush(id);
            self.close(id);
        }
        self.changes.clear();
        self.closed.clear();
    }

    /// Handles messages from other threads; false means stop.
    fn drain_inbox(&mut self) -> bool {
        let _ = self.wake.read();
        let items =
            std::mem::take(&mut *self.shared.inbox.lock().unwrap_or_else(|e| e.into_inner()));
        for item in items {
            match item {
                ToMonitor::Stop => return false,
                ToMonitor::Run(f) => f(),
                ToMonitor::Event(event, timestamp, then) => {
                    self.deliver(event, timestamp);
                    if let Some(f) = then {
                        f();
                    }
                }
                ToMonitor::Response(id, msg) => {
                    let Some(s) = self.sessions.get_mut(&id) else {
                        // The session was closed; the command still ran.
                        continue;
                    };
                    s.inflight = s.inflight.saturating_sub(1);
                    if let Some(msg) = msg {
                        let bytes = encode(&msg);
                        self.queue_output(id, &bytes);
                    }
                    self.process_backlog(id);
                }
            }
        }
        true
    }

    /// Delivers one emission: the legacy broadcast to sessions with their default
    /// connections (rate-limited for `BLOCK_IO_ERROR`, except when it stops the VM), and the
    /// signal form to every explicit connection of its signal and owner.
    fn deliver(&mut self, event: Event, timestamp: Timestamp) {
        let broadcasts = match &event {
            Event::BlockIoError { data, .. } => {
                let urgent = data.action == BlockErrorAction::Stop;
                let key = data.qom_path.clone();
                let out = self
                    .rate
                    .offer(key, (event.clone(), timestamp), urgent, Instant::now());
                self.arm_rate_timer();
                out
            }
            _ => vec![(event.clone(), timestamp)],
        };
        for (e, ts) in &broadcasts {
            self.broadcast(e, *ts);
        }
        self.signal(&event, timestamp);
    }

    /// Queues the QEMU-shaped broadcast of `event` to every session with default connections.
    fn broadcast(&mut self, event: &Event, timestamp: Timestamp) {
        let bytes = encode(&event.to_json(timestamp));
        let ids: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.negotiated && s.default_connections)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.queue_output(id, &bytes);
        }
    }

    /// Queues the signal form of `event` to every explicit connection of its owner.
    fn signal(&mut self, event: &Event, timestamp: Timestamp) {
        let (owner_type, owner_data) = event.owner_handle();
        let owner = qapi::rt::canonical_handle(owner_type, &owner_data);
        let data_desc = event.signal_info().and_then(|i| i.data);
        let mut out = Vec::new();
        for (id, s) in &self.sessions {
            for c in s.connections.matching(event.name(), &owner) {
                // Connections exist only in explicit-handles sessions: handles in the data
                // travel in canonical form too.
                let mut msg = event.to_signal_json(c.user_data.as_ref(), timestamp);
                if let (Some(desc), Some(data)) = (data_desc, msg.get_mut("data")) {
                    qapi::rt::canonicalize_handles(desc, data);
                }
                out.push((*id, encode(&msg)));
            }
        }
        for (id, bytes) in out {
            self.queue_output(id, &bytes);
        }
    }

    fn arm_rate_timer(&mut self) {
        if let Some(deadline) = self.rate.next_deadline() {
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            let _ = self.rate_timer.reset(wait, None);
        }
    }

    fn accept(&mut self, index: usize) {
        loop {
            let Some(socket) = self.listeners.get(index) else {
                return;
            };
            let waited = socket.wait;
            let stream = match socket.listener.accept() {
                Ok(Some(s)) => s,
                Ok(None) => return,
                Err(e) => {
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    ) {
                        // The pending connection stays queued and the listener readable:
                        // rest instead of spinning until descriptors are freed.
                        self.pause_accepting();
                    }
                    return;
                }
            };
            if let Some(reason) = self.refusal(index, stream.as_raw_fd()) {
                refuse(stream, reason);
                continue;
            }
            let id = self.next_session;
            self.next_session += 1;
            let fd = stream.as_raw_fd();
            self.changes
                .push(Change::Add(fd, Token::Session, EventSet::IN));
            self.by_fd.insert(fd, id);
            let mut session = Session::new(stream, index);
            // Descriptors the client passes obey the same budget as its connection.
            session.fd_budget = self.limits.descriptors;
            self.sessions.insert(id, session);
            if let Some(socket) = self.listeners.get_mut(index) {
                socket.clients += 1;
            }
            let greeting = self.greeting.clone();
            self.queue_output(id, &greeting);
            self.reap(id);
            if waited {
                self.send_main(ToMain::WaitedClientConnected);
            }
        }
    }

    /// Why a client just accepted on socket `index` (on descriptor `fd`) may not stay, if it
    /// may not: the descriptors kept for the VMM, the total client limit, the socket's own.
    fn refusal(&self, index: usize, fd: RawFd) -> Option<String> {
        if let Some(budget) = self.limits.descriptors.filter(|b| !b.admits(fd)) {
            return Some(format!(
                "Too many QMP clients for vmm's open-file limit: the last {} of its {} descriptors are kept for vmm's own use",
                budget.reserve, budget.limit
            ));
        }
        if self.sessions.len() >= self.limits.max_clients {
            return Some(format!(
                "Too many QMP clients: at most {} may be connected",
                self.limits.max_clients
            ));
        }
        let socket = self.listeners.get(index)?;
        match socket.max_clients {
            Some(max) if socket.clients >= max => Some(format!(
                "Too many QMP clients on this socket: at most {max} may be connected to it"
            )),
            _ => None,
        }
    }

    fn pause_accepting(&mut self) {
        if self.accept_paused || self.timer.reset(ACCEPT_BACKOFF, None).is_err() {
            return;
        }
        self.accept_paused = true;
        for (i, socket) in self.listeners.iter().enumerate() {
            self.changes.push(Change::Modify(
                socket.listener.as_raw_fd(),
                Token::Listener(i),
                EventSet::empty(),
            ));
        }
    }

    fn resume_accepting(&mut self) {
        if !self.accept_paused {
            return;
        }
        self.accept_paused = false;
        for (i, socket) in self.listeners.iter().enumerate() {
            self.changes.push(Change::Modify(
                socket.listener.as_raw_fd(),
                Token::Listener(i),
                EventSet::IN,
            ));
        }
    }

    fn send_main(&self, msg: ToMain) {
        if self.to_main.send(msg).is_ok() {
            let _ = self.main_wake.write(1);
        }
    }

    fn service(&mut self, id: SessionId, flags: EventSet) {
        if flags.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            self.hang_up(id);
            return;
        }
        if flags.contains(EventSet::OUT) {
            self.flush(id);
        }
        if flags.contains(EventSet::IN) {
            self.read(id);
        }
        self.reap(id);
    }

    /// Reads one chunk (see [`READ_CHUNK`]) of the session's input and handles what it
    /// completes.
    fn read(&mut self, id: SessionId) {
        let mut buf = vec![0u8; READ_CHUNK];
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        if s.eof {
            return;
        }
        match s.read_chunk(&mut buf) {
            ReadOutcome::Data(_) => {
                if s.reader.pending_len() > READ_CHUNK && self.over_budget() {
                    let desc = format!(
                        "QMP memory limit exceeded: the monitor holds at most {} MiB of partly read requests and unsent replies for all its clients; this request was dropped",
                        self.limits.max_buffered >> 20
                    );
                    if let Some(s) = self.sessions.get_mut(&id) {
                        s.reader.skip_current(desc);
                    }
                }
            }
            ReadOutcome::Empty => {}
            // Half-closed: what was sent is still answered.
            ReadOutcome::Closed => s.eof = true,
            ReadOutcome::Failed => return self.hang_up(id),
        }
        self.process_backlog(id);
    }

    /// The client hung up or its socket failed: read what it sent before (its commands still
    /// run, as in QEMU), take the socket out of the epoll set (a hung-up socket is always
    /// ready) and keep the session only until the main loop has answered it.
    fn hang_up(&mut self, id: SessionId) {
        let mut buf = vec![0u8; READ_CHUNK];
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        // A socket buffer's worth at most: the peer can send no more.
        while !s.eof && matches!(s.read_chunk(&mut buf), ReadOutcome::Data(_)) {}
        s.mark_gone();
        if s.registered {
            s.registered = false;
            self.changes.push(Change::Remove(s.stream.as_raw_fd()));
        }
        self.process_backlog(id);
    }

    fn process_backlog(&mut self, id: SessionId) {
        loop {
            let Some(s) = self.sessions.get_mut(&id) else {
                return;
            };
            if s.inflight >= MAX_INFLIGHT {
                break;
            }
            let Some(item) = s.backlog.pop_front() else {
                break;
            };
            if let Flow::Full = self.handle_item(id, item) {
                break;
            }
        }
        self.reap(id);
    }

    /// Closes a session that is done with (see [`Session::finished`]), after writing what it
    /// still can; otherwise brings its epoll interest up to date.
    fn reap(&mut self, id: SessionId) {
        let Some(s) = self.sessions.get(&id) else {
            return;
        };
        if s.finished() {
            self.flush(id);
            self.close(id);
        } else {
            self.update_interest(id);
        }
    }

    /// Whether the sessions together hold more than [`Limits::max_buffered`] of input and
    /// output.
    fn over_budget(&self) -> bool {
        let total: usize = self.sessions.values().map(Session::buffered).sum();
        total > self.limits.max_buffered
    }

    fn inband(&mut self, id: SessionId, item: Inband) -> Flow {
        let Some(s) = self.sessions.get_mut(&id) else {
            return Flow::Continue;
        };
        s.inflight += 1;
        let full = s.inflight >= MAX_INFLIGHT;
        self.send_main(ToMain::Request { session: id, item });
        if full {
            Flow::Full
        } else {
            Flow::Continue
        }
    }

    /// Answers with a reply the monitor knows without running anything (an error). With
    /// nothing of the session in flight it is written at once; otherwise it travels through
    /// the main loop behind the session's earlier items, to keep their order.
    fn answer(&mut self, id: SessionId, message: Value) -> Flow {
        let idle = self.sessions.get(&id).is_some_and(|s| s.inflight == 0);
        if idle {
            let bytes = encode(&message);
            self.queue_output(id, &bytes);
            Flow::Continue
        } else {
            self.inband(id, Inband::Reply(message))
        }
    }

    fn handle_item(&mut self, id: SessionId, item: Item) -> Flow {
        let (negotiated, oob) = match self.sessions.get(&id) {
            Some(s) => (s.negotiated, s.oob),
            None => return Flow::Continue,
        };
        let msg = match item {
            Item::Error(desc) => {
                return self.answer(id, error_reply(ErrorClass::GenericError, desc, None))
            }
            Item::Value(v) => v,
        };
        let req = match parse_message(msg, oob) {
            Ok(Message::Command(r)) => r,
            Ok(Message::Connect(c)) => {
                let req_id = c.id.clone();
                let result = self.connect(id, c);
                return self.answer(id, reply(result, req_id));
            }
            Ok(Message::Disconnect(d)) => {
                let req_id = d.id.clone();
                let result = self.disconnect(id, d);
                return self.answer(id, reply(result, req_id));
            }
            Err(Malformed { desc, id: req_id }) => {
                return self.answer(id, error_reply(ErrorClass::GenericError, desc, req_id))
            }
        };
        if !negotiated {
            return self.negotiate(id, req);
        }
        if CAPABILITIES_MODE_COMMANDS.contains(&req.command.as_str()) && req.mode == Mode::InBand {
            return self.answer(id, reply(Err(already_negotiated()), req.id));
        }
        match req.mode {
            Mode::OutOfBand => {
                self.run_here(id, req);
                Flow::Continue
            }
            Mode::InBand => {
                let Some(info) = command_info(&req.command) else {
                    let e = QmpError::command_not_found(&req.command);
                    return self.answer(id, reply(Err(e), req.id));
                };
                let idle = self.sessions.get(&id).is_some_and(|s| s.inflight == 0);
                if info.allow_oob && idle {
                    // Nothing of this session is queued before it, so answering here keeps
                    // the session's order; an allow-oob command needs no big lock. This
                    // saves the round trip through the main loop for status polling.
                    self.run_here(id, req);
                    return Flow::Continue;
                }
                let explicit_handles = self.sessions.get(&id).is_some_and(|s| s.explicit_handles);
                // The oldest descriptor the client passed goes with its `getfd`.
                let fd = match self.sessions.get_mut(&id) {
                    Some(s) if req.command == "getfd" => Some(s.fds.take()),
                    _ => None,
                };
                self.inband(
                    id,
                    Inband::Execute {
                        command: req.command,
                        arguments: req.arguments.map(Value::Object),
                        id: req.id,
                        explicit_handles,
                        fd,
                    },
                )
            }
        }
    }

    /// A request of a session still in negotiation mode, answered on the monitor thread (the
    /// session has nothing with the main loop before negotiating). The session enters command
    /// mode in the same step in which its `qmp_capabilities` reply is queued, so no event can
    /// reach it before that reply.
    fn negotiate(&mut self, id: SessionId, req: Request) -> Flow {
        let Some(s) = self.sessions.get_mut(&id) else {
            return Flow::Continue;
        };
        let result = match req.command.as_str() {
            "qmp_capabilities" => negotiate(req.arguments).map(|caps| {
                s.negotiated = true;
                s.oob = caps.oob;
                s.explicit_handles |= caps.explicit_handles;
                json!({})
            }),
            "set-explicit-handles" => no_arguments(&req).map(|()| {
                s.explicit_handles = true;
                json!({})
            }),
            "disconnect-default-signals" => no_arguments(&req).map(|()| {
                s.default_connections = false;
                json!({})
            }),
            _ => Err(not_negotiated()),
        };
        self.answer(id, reply(result, req.id))
    }

    /// `{"connect": SIGNAL, "owner": HANDLE}`: checks the signal, that the owner is a
    /// canonical handle of the signal's owner type and names an object that exists, then adds
    /// the connection. Runs on the monitor thread: handles resolve without the big lock.
    fn connect(&mut self, id: SessionId, c: Connect) -> Result<Value, QmpError> {
        let s = self
            .sessions
            .get(&id)
            .ok_or_else(|| QmpError::generic("gone"))?;
        if !s.negotiated {
            return Err(not_negotiated());
        }
        if !s.explicit_handles {
            return Err(QmpError::generic(
                "Signal connections need explicit handles: enable 'explicit-handles' in qmp_capabilities",
            ));
        }
        let Some(info) = SIGNALS.iter().find(|i| i.name == c.signal) else {
            return Err(QmpError::generic(format!(
                "Signal '{}' not found",
                c.signal
            )));
        };
        self.check_owner(info.owner, &c.owner)?;
        let connection = Connection {
            signal: c.signal,
            owner: c.owner,
            user_data: c.user_data,
        };
        let s = self
            .sessions
            .get_mut(&id)
            .ok_or_else(|| QmpError::generic("gone"))?;
        Ok(json!(s.connections.connect(connection)))
    }

    /// `{"disconnect": CONNECTION, "owner": HANDLE}`.
    fn disconnect(&mut self, id: SessionId, d: Disconnect) -> Result<Value, QmpError> {
        let s = self
            .sessions
            .get_mut(&id)
            .ok_or_else(|| QmpError::generic("gone"))?;
        if !s.negotiated {
            return Err(not_negotiated());
        }
        s.connections.disconnect(&d.connection, &d.owner)?;
        Ok(json!({}))
    }

    /// A signal owner must be a canonical handle of `owner_type` that resolves: a forged or
    /// stale handle never reaches a connection.
    fn check_owner(&self, owner_type: &str, owner: &Value) -> Result<(), QmpError> {
        let Some((ty, data)) = parse_canonical_handle(owner) else {
            return Err(QmpError::generic(format!(
                "Parameter 'owner' expects a {owner_type} handle in canonical form {{\"__handle__\": \"{owner_type}\", \"data\": ...}}"
            )));
        };
        if ty != owner_type {
            return Err(QmpError::generic(format!(
                "Parameter 'owner' expects a {owner_type} handle, not a {ty} handle"
            )));
        }
        resolve_handle(&*self.oob, ty, data)
    }

    /// Runs a command on the monitor thread through the out-of-band dispatcher (which refuses
    /// commands that are not `allow-oob`) and queues its reply.
    fn run_here(&mut self, id: SessionId, req: Request) {
        let explicit_handles = self.sessions.get(&id).is_some_and(|s| s.explicit_handles);
        let result = dispatch_oob(&*self.oob, &req.command, req.arguments.map(Value::Object));
        if let Some(message) = response(&req.command, result, req.id, explicit_handles) {
            let bytes = encode(&message);
            self.queue_output(id, &bytes);
        }
    }

    fn queue_output(&mut self, id: SessionId, bytes: &[u8]) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        if s.gone {
            return;
        }
        if s.out.len() + bytes.len() > MAX_OUTPUT {
            // A client that does not read: it would make the VMM buffer without bound.
            eprintln!(
                "vmm: QMP client {id} disconnected: it left {} MiB of replies and events unread",
                MAX_OUTPUT >> 20
            );
            self.close(id);
            return;
        }
        s.out.push(bytes);
        self.flush(id);
        let grew = self
            .sessions
            .get(&id)
            .is_some_and(|s| s.out.len() > READ_CHUNK);
        if grew && self.over_budget() {
            // A client that does not read its replies while the monitor's memory is short.
            eprintln!(
                "vmm: QMP client {id} disconnected: its unread output passed the monitor's {} MiB budget",
                self.limits.max_buffered >> 20
            );
            self.close(id);
            return;
        }
        self.update_interest(id);
    }

    fn flush(&mut self, id: SessionId) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        if !s.gone && !s.flush() {
            self.hang_up(id);
        }
    }

    fn update_interest(&mut self, id: SessionId) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        if !s.registered {
            return;
        }
        let want = s.wanted_interest(MAX_INFLIGHT);
        if want != s.interest {
            s.interest = want;
            self.changes
                .push(Change::Modify(s.stream.as_raw_fd(), Token::Session, want));
        }
    }

    fn close(&mut self, id: SessionId) {
        if let Some(s) = self.sessions.remove(&id) {
            if let Some(socket) = self.listeners.get_mut(s.socket) {
                socket.clients = socket.clients.saturating_sub(1);
            }
            let fd = s.stream.as_raw_fd();
            self.by_fd.remove(&fd);
            if s.registered {
                self.changes.push(Change::Remove(fd));
            }
            self.closed.push(s);
            self.send_main(ToMain::SessionClosed(id));
        }
    }
}

/// The commands valid only in capabilities negotiation mode (all `'gen': false`).
const CAPABILITIES_MODE_COMMANDS: [&str; 3] = [
    "qmp_capabilities",
    "set-explicit-handles",
    "disconnect-default-signals",
];

/// Capabilities-mode commands other than `qmp_capabilities` take no arguments.
fn no_arguments(req: &Request) -> Result<(), QmpError> {
    match req.arguments.as_ref().and_then(|a| a.keys().next()) {
        Some(key) => Err(QmpError::generic(format!(
            "Parameter '{key}' is unexpected"
        ))),
        None => Ok(()),
    }
}

/// Turns away a client beyond a limit with a one-line error (best effort: the socket is new
/// and its buffer empty) instead of the greeting, and closes it.
fn refuse(mut stream: Stream, desc: String) {
    let _ = stream.write(&encode(&error_reply(ErrorClass::GenericError, desc, None)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_budget_keeps_the_top_descriptors() {
        let b = FdBudget {
            limit: 256,
            reserve: 76,
        };
        assert!(b.admits(0));
        assert!(b.admits(179));
        assert!(!b.admits(180));
        assert!(!b.admits(255));
        assert!(!b.admits(-1));
        // A reserve as large as the limit admits nobody.
        let none = FdBudget {
            limit: 64,
            reserve: 100,
        };
        assert!(!none.admits(0));
    }
}
