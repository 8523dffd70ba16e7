// SPDX-License-Identifier: Apache-2.0
//! The monitor thread: accepts clients, reads and checks their requests, negotiates
//! capabilities, runs out-of-band commands itself, hands in-band commands to the main loop in
//! order, and writes replies and events.
//!
//! In-band flow: every in-band item of a session, including requests the monitor rejects
//! itself (malformed input, commands before negotiation), goes to the main loop in arrival
//! order and comes back through [`MonitorHandle::respond`], so a client gets its in-band
//! replies in the order it sent the requests. At most [`MAX_INFLIGHT`] in-band items per
//! session are with the main loop; past that the monitor stops reading that client until one
//! completes, as QEMU does. Out-of-band commands (`exec-oob` of an `allow-oob` command) are
//! answered by the monitor thread at once and may overtake in-band replies. An `allow-oob`
//! command sent in band by a session with nothing in flight is also answered by the monitor
//! thread: no earlier reply of that session can be pending, so its order is kept.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use qapi::commands::{command_info, dispatch_oob, QmpOobCommands};
use qapi::rt::{ErrorClass, QmpError};
use serde_json::{json, Map, Value};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::json_stream::{Item, JsonStream};
use crate::listener::{ListenError, Listener, Stream};
use crate::request::{parse_request, Malformed, Mode};
use crate::spec::SocketSpec;
use crate::wire::encode;

/// In-band items a session may have with the main loop before the monitor stops reading it.
pub const MAX_INFLIGHT: usize = 8;
/// A client whose unread output exceeds this is disconnected, so a stalled client cannot
/// make the VMM buffer events without bound.
pub const MAX_OUTPUT: usize = 64 << 20;
/// The capabilities offered in the greeting.
pub const CAPABILITIES: [&str; 1] = ["oob"];

/// Identifies a client connection.
pub type SessionId = u64;

/// An in-band item for the main loop.
#[derive(Debug, Clone, PartialEq)]
pub enum Inband {
    /// Run `command` under the big lock and answer with [`reply`].
    Execute {
        /// The command name.
        command: String,
        /// Its arguments.
        arguments: Option<Value>,
        /// The id to echo.
        id: Option<Value>,
    },
    /// A reply the monitor already knows (an error, or the negotiation result); the main
    /// loop only passes it back so that it keeps its place in the session's order.
    Reply(Value),
}

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
}

/// Builds the reply message for a command result.
pub fn reply(result: Result<Value, QmpError>, id: Option<Value>) -> Value {
    let mut msg = Map::new();
    match result {
        Ok(v) => msg.insert("return".into(), v),
        Err(e) => msg.insert("error".into(), e.to_json()),
    };
    if let Some(id) = id {
        msg.insert("id".into(), id);
    }
    Value::Object(msg)
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
    /// epoll or eventfd setup failed.
    #[error("Cannot set up the monitor's event loop")]
    Setup(#[source] io::Error),
    /// The thread could not be started.
    #[error("Cannot start the monitor thread")]
    Spawn(#[source] io::Error),
}

enum ToMonitor {
    Response(SessionId, Option<Value>),
    Event(Value, Option<Box<dyn FnOnce() + Send>>),
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

    /// Broadcasts an event message to every session that has negotiated capabilities.
    pub fn broadcast(&self, event: Value) {
        self.push(ToMonitor::Event(event, None));
    }

    /// Broadcasts `event` and runs `then` on the monitor thread in the same step, right
    /// after the event is queued to every client: what `then` publishes (a run state for
    /// out-of-band readers) becomes visible exactly when the event does.
    pub fn broadcast_then(&self, event: Value, then: Option<Box<dyn FnOnce() + Send>>) {
        self.push(ToMonitor::Event(event, then));
    }

    /// Runs `f` on the monitor thread after everything sent to it before (replies, events).
    /// The VMM publishes state that out-of-band commands read this way, so that a client
    /// never sees a state before the event announcing it.
    pub fn run_in_order(&self, f: Box<dyn FnOnce() + Send>) {
        self.push(ToMonitor::Run(f));
    }
}

/// Events reach every negotiated session as QEMU-shaped broadcast messages.
impl qapi::events::EventSink for MonitorHandle {
    fn emit(&self, event: qapi::events::Event, timestamp: qapi::rt::Timestamp) {
        self.broadcast(event.to_json(timestamp));
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
}

impl Monitor {
    /// Binds the sockets and starts the monitor thread.
    ///
    /// # Errors
    /// Fails when a socket cannot be bound or the thread cannot start.
    pub fn start(config: MonitorConfig) -> Result<Self, MonitorError> {
        let mut listeners = Vec::new();
        for spec in &config.sockets {
            listeners.push((Listener::bind(spec)?, spec.wait));
        }
        let tcp_ports = listeners.iter().map(|(l, _)| l.local_port()).collect();
        let wake = EventFd::new(EFD_NONBLOCK).map_err(MonitorError::Setup)?;
        let shared = Arc::new(Shared {
            inbox: Mutex::new(Vec::new()),
            wake: wake.try_clone().map_err(MonitorError::Setup)?,
        });
        let epoll_fd = epoll::create(true).map_err(MonitorError::Setup)?;
        let mut thread = MonitorThread {
            epoll_fd,
            listeners,
            sessions: HashMap::new(),
            next_session: 1,
            greeting: encode(
                &json!({"QMP": {"version": config.version, "capabilities": CAPABILITIES}}),
            ),
            oob: config.oob,
            to_main: config.to_main,
            main_wake: config.main_wake,
            shared: shared.clone(),
            wake,
        };
        thread.register_fixed().map_err(MonitorError::Setup)?;
        let handle = std::thread::Builder::new()
            .name("qmp-monitor".into())
            // Deeply nested requests (up to 1024 levels) are parsed recursively.
            .stack_size(8 << 20)
            .spawn(move || thread.run())
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

const TOKEN_WAKE: u64 = 0;
const TOKEN_LISTENER_BASE: u64 = 1;
const TOKEN_SESSION_BASE: u64 = 1 << 32;

struct Session {
    stream: Stream,
    reader: JsonStream,
    backlog: VecDeque<Item>,
    inflight: usize,
    negotiated: bool,
    oob: bool,
    out: Vec<u8>,
    /// The epoll interest currently registered.
    interest: epoll::Events,
    /// Read side finished (EOF); close once the main loop has answered everything.
    eof: bool,
}

struct MonitorThread {
    epoll_fd: RawFd,
    listeners: Vec<(Listener, bool)>,
    sessions: HashMap<SessionId, Session>,
    next_session: SessionId,
    greeting: Vec<u8>,
    oob: Arc<dyn QmpOobCommands>,
    to_main: Sender<ToMain>,
    main_wake: EventFd,
    shared: Arc<Shared>,
    wake: EventFd,
}

/// What to do after handling one item.
enum Flow {
    Continue,
    /// The session reached its in-band limit: leave the rest in the backlog.
    Full,
}

impl MonitorThread {
    fn ctl(
        &self,
        op: epoll::ControlOptions,
        fd: RawFd,
        events: epoll::Events,
        token: u64,
    ) -> io::Result<()> {
        epoll::ctl(self.epoll_fd, op, fd, epoll::Event::new(events, token))
    }

    fn register_fixed(&mut self) -> io::Result<()> {
        self.ctl(
            epoll::ControlOptions::EPOLL_CTL_ADD,
            self.wake.as_raw_fd(),
            epoll::Events::EPOLLIN,
            TOKEN_WAKE,
        )?;
        for (i, (l, _)) in self.listeners.iter().enumerate() {
            self.ctl(
                epoll::ControlOptions::EPOLL_CTL_ADD,
                l.as_raw_fd(),
                epoll::Events::EPOLLIN,
                TOKEN_LISTENER_BASE + i as u64,
            )?;
        }
        Ok(())
    }

    fn run(mut self) {
        let mut events = vec![epoll::Event::new(epoll::Events::empty(), 0); 64];
        loop {
            let n = match epoll::wait(self.epoll_fd, -1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            for ev in &events[..n] {
                let token = ev.data;
                if token == TOKEN_WAKE {
                    if !self.drain_inbox() {
                        self.close_all();
                        return;
                    }
                } else if token < TOKEN_SESSION_BASE {
                    self.accept((token - TOKEN_LISTENER_BASE) as usize);
                } else {
                    let id = token - TOKEN_SESSION_BASE;
                    let flags = epoll::Events::from_bits_truncate(ev.events);
                    self.service(id, flags);
                }
            }
        }
        self.close_all();
    }

    fn close_all(&mut self) {
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in ids {
            // Best effort: the last replies (such as quit's) and events are small enough for
            // the socket buffer of a client that is still reading.
            self.flush(id);
            self.close(id);
        }
        // SAFETY: the epoll fd is ours and not used after this.
        unsafe { libc::close(self.epoll_fd) };
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
                ToMonitor::Event(ev, then) => {
                    let bytes = encode(&ev);
                    let ids: Vec<SessionId> = self
                        .sessions
                        .iter()
                        .filter(|(_, s)| s.negotiated)
                        .map(|(id, _)| *id)
                        .collect();
                    for id in ids {
                        self.queue_output(id, &bytes);
                    }
                    if let Some(f) = then {
                        f();
                    }
                }
                ToMonitor::Response(id, msg) => {
                    let Some(s) = self.sessions.get_mut(&id) else {
                        // The client left; the command still ran, its reply has nowhere to go.
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

    fn accept(&mut self, index: usize) {
        loop {
            let (stream, waited) = match self.listeners.get(index) {
                Some((l, wait)) => match l.accept() {
                    Ok(Some(s)) => (s, *wait),
                    Ok(None) | Err(_) => return,
                },
                None => return,
            };
            let id = self.next_session;
            self.next_session += 1;
            let fd = stream.as_raw_fd();
            let session = Session {
                stream,
                reader: JsonStream::new(),
                backlog: VecDeque::new(),
                inflight: 0,
                negotiated: false,
                oob: false,
                out: Vec::new(),
                interest: epoll::Events::EPOLLIN,
                eof: false,
            };
            if self
                .ctl(
                    epoll::ControlOptions::EPOLL_CTL_ADD,
                    fd,
                    epoll::Events::EPOLLIN,
                    TOKEN_SESSION_BASE + id,
                )
                .is_err()
            {
                continue;
            }
            self.sessions.insert(id, session);
            let greeting = self.greeting.clone();
            self.queue_output(id, &greeting);
            if waited {
                self.send_main(ToMain::WaitedClientConnected);
            }
        }
    }

    fn send_main(&self, msg: ToMain) {
        if self.to_main.send(msg).is_ok() {
            let _ = self.main_wake.write(1);
        }
    }

    fn service(&mut self, id: SessionId, flags: epoll::Events) {
        if flags.contains(epoll::Events::EPOLLOUT) {
            self.flush(id);
        }
        if flags
            .intersects(epoll::Events::EPOLLIN | epoll::Events::EPOLLHUP | epoll::Events::EPOLLERR)
        {
            self.read(id);
        }
        self.update_interest(id);
    }

    fn read(&mut self, id: SessionId) {
        let mut buf = [0u8; 65536];
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        if s.eof {
            return;
        }
        match s.stream.read(&mut buf) {
            Ok(0) => {
                s.eof = true;
            }
            Ok(n) => {
                let items = s.reader.feed(&buf[..n]);
                s.backlog.extend(items);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => s.eof = true,
        }
        self.process_backlog(id);
        if let Some(s) = self.sessions.get(&id) {
            if s.eof && s.inflight == 0 {
                // Nothing more will be read; everything sent to the main loop is answered.
                // The client is gone (or half-closed): close without waiting for the output.
                self.flush(id);
                self.close(id);
            }
        }
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
        let close = self
            .sessions
            .get(&id)
            .is_some_and(|s| s.eof && s.inflight == 0 && s.backlog.is_empty());
        if close {
            self.flush(id);
            self.close(id);
        } else {
            self.update_interest(id);
        }
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

    fn handle_item(&mut self, id: SessionId, item: Item) -> Flow {
        let (negotiated, oob) = match self.sessions.get(&id) {
            Some(s) => (s.negotiated, s.oob),
            None => return Flow::Continue,
        };
        let msg = match item {
            Item::Error(desc) => {
                return self.inband(
                    id,
                    Inband::Reply(error_reply(ErrorClass::GenericError, desc, None)),
                )
            }
            Item::Value(v) => v,
        };
        let req = match parse_request(msg, oob) {
            Ok(r) => r,
            Err(Malformed { desc, id: req_id }) => {
                return self.inband(
                    id,
                    Inband::Reply(error_reply(ErrorClass::GenericError, desc, req_id)),
                )
            }
        };
        if !negotiated {
            let answer = if req.command == "qmp_capabilities" {
                match negotiate(req.arguments.as_ref()) {
                    Ok(enable_oob) => {
                        if let Some(s) = self.sessions.get_mut(&id) {
                            s.negotiated = true;
                            s.oob = enable_oob;
                        }
                        reply(Ok(json!({})), req.id)
                    }
                    Err(e) => reply(Err(e), req.id),
                }
            } else {
                error_reply(
                    ErrorClass::CommandNotFound,
                    "Expecting capabilities negotiation with 'qmp_capabilities'",
                    req.id,
                )
            };
            return self.inband(id, Inband::Reply(answer));
        }
        if req.command == "qmp_capabilities" && req.mode == Mode::InBand {
            return self.inband(
                id,
                Inband::Reply(error_reply(
                    ErrorClass::CommandNotFound,
                    "Capabilities negotiation is already complete, command ignored",
                    req.id,
                )),
            );
        }
        match req.mode {
            Mode::OutOfBand => {
                self.run_here(id, req);
                Flow::Continue
            }
            Mode::InBand => {
                let Some(info) = command_info(&req.command) else {
                    let e = QmpError::command_not_found(&req.command);
                    return self.inband(id, Inband::Reply(reply(Err(e), req.id)));
                };
                let idle = self.sessions.get(&id).is_some_and(|s| s.inflight == 0);
                if info.allow_oob && idle {
                    // Nothing of this session is queued before it, so answering here keeps
                    // the session's order; an allow-oob command needs no big lock. This
                    // saves the round trip through the main loop for status polling.
                    self.run_here(id, req);
                    return Flow::Continue;
                }
                self.inband(
                    id,
                    Inband::Execute {
                        command: req.command,
                        arguments: req.arguments.map(Value::Object),
                        id: req.id,
                    },
                )
            }
        }
    }

    /// Runs a command on the monitor thread through the out-of-band dispatcher (which refuses
    /// commands that are not `allow-oob`) and queues its reply.
    fn run_here(&mut self, id: SessionId, req: crate::request::Request) {
        let result = dispatch_oob(&*self.oob, &req.command, req.arguments.map(Value::Object));
        let success_response = command_info(&req.command).is_none_or(|c| c.success_response);
        if result.is_err() || success_response {
            let bytes = encode(&reply(result, req.id));
            self.queue_output(id, &bytes);
        }
    }

    fn queue_output(&mut self, id: SessionId, bytes: &[u8]) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        if s.out.len() + bytes.len() > MAX_OUTPUT {
            self.close(id);
            return;
        }
        s.out.extend_from_slice(bytes);
        self.flush(id);
        self.update_interest(id);
    }

    fn flush(&mut self, id: SessionId) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        while !s.out.is_empty() {
            match s.stream.write(&s.out) {
                Ok(0) => break,
                Ok(n) => {
                    s.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    // The peer is gone; drop what it will never read.
                    s.out.clear();
                    s.eof = true;
                    break;
                }
            }
        }
    }

    fn update_interest(&mut self, id: SessionId) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let mut want = epoll::Events::empty();
        if !s.eof && s.inflight < MAX_INFLIGHT && s.backlog.is_empty() {
            want |= epoll::Events::EPOLLIN;
        }
        if !s.out.is_empty() {
            want |= epoll::Events::EPOLLOUT;
        }
        if want != s.interest {
            s.interest = want;
            let fd = s.stream.as_raw_fd();
            let _ = self.ctl(
                epoll::ControlOptions::EPOLL_CTL_MOD,
                fd,
                want,
                TOKEN_SESSION_BASE + id,
            );
        }
    }

    fn close(&mut self, id: SessionId) {
        if let Some(s) = self.sessions.remove(&id) {
            let _ = self.ctl(
                epoll::ControlOptions::EPOLL_CTL_DEL,
                s.stream.as_raw_fd(),
                epoll::Events::empty(),
                0,
            );
        }
    }
}

/// Checks `qmp_capabilities` arguments; returns whether `oob` was enabled.
fn negotiate(arguments: Option<&Map<String, Value>>) -> Result<bool, QmpError> {
    let Some(args) = arguments else {
        return Ok(false);
    };
    if let Some(key) = args.keys().find(|k| k.as_str() != "enable") {
        return Err(QmpError::generic(format!(
            "Parameter '{key}' is unexpected"
        )));
    }
    let Some(enable) = args.get("enable") else {
        return Ok(false);
    };
    let Value::Array(caps) = enable else {
        return Err(QmpError::generic(
            "Invalid parameter type for 'enable', expected: array",
        ));
    };
    let mut oob = false;
    for (i, cap) in caps.iter().enumerate() {
        match cap.as_str() {
            Some("oob") => oob = true,
            Some(other) => {
                return Err(QmpError::generic(format!(
                    "Parameter 'enable[{i}]' does not accept value '{other}'"
                )))
            }
            None => {
                return Err(QmpError::generic(format!(
                    "Invalid parameter type for 'enable[{i}]', expected: string"
                )))
            }
        }
    }
    Ok(oob)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_arguments() {
        assert_eq!(negotiate(None), Ok(false));
        let args = |v: Value| v.as_object().cloned().unwrap();
        assert_eq!(negotiate(Some(&args(json!({"enable": ["oob"]})))), Ok(true));
        assert_eq!(negotiate(Some(&args(json!({"enable": []})))), Ok(false));
        assert_eq!(
            negotiate(Some(&args(json!({"enable": ["cap-does-not-exist"]}))))
                .unwrap_err()
                .desc,
            "Parameter 'enable[0]' does not accept value 'cap-does-not-exist'"
        );
        assert_eq!(
            negotiate(Some(&args(json!({"other": 1}))))
                .unwrap_err()
                .desc,
            "Parameter 'other' is unexpected"
        );
    }

    #[test]
    fn reply_shapes() {
        assert_eq!(
            reply(Ok(json!({})), Some(json!(1))),
            json!({"return": {}, "id": 1})
        );
        assert_eq!(reply(Ok(json!("s")), None), json!({"return": "s"}));
        assert_eq!(
            reply(Err(QmpError::command_not_found("x")), Some(json!(null))),
            json!({"error": {"class": "CommandNotFound", "desc": "The command x has not been found"}, "id": null})
        );
    }
}
