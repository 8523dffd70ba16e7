// SPDX-License-Identifier: Apache-2.0
//! The untyped half of our libqmp: a QMP connection with a reader thread that routes replies
//! to waiters by `id`, queues events, and routes the signal messages of explicit connections
//! (`{"connect": SIGNAL, "owner": HANDLE}`) to their [`SignalStream`]. Works blocking
//! (`Reply::wait`) and async (`Reply` and `EventWait` are `Future`s that need no particular
//! executor). The typed methods are generated into [`Client`].

mod oneshot;
mod signals;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub use crate::qmp::client::Client;
use crate::rt::{ErrorClass, QmpError, Timestamp};
pub use oneshot::Reply;
use oneshot::Slot;
pub use signals::{decode_no_data, decode_signal_data, Signal, SignalStream};
use signals::{SignalKey, StreamEntry};

/// Errors seen by a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// Reading from or writing to the socket failed.
    #[error("I/O error on the QMP connection: {0}")]
    Io(String),
    /// The server broke the protocol (bad greeting, non-JSON line, error without id).
    #[error("QMP protocol error: {0}")]
    Protocol(String),
    /// The command returned an error.
    #[error("QMP command failed: {0}")]
    Command(QmpError),
    /// The connection is closed (the server hung up or the client was dropped).
    #[error("The QMP connection is closed")]
    Closed,
    /// A reply or event did not have the shape the schema says.
    #[error("Cannot decode the server's message: {0}")]
    Decode(String),
    /// No reply or event within the time asked for.
    #[error("Timed out waiting for the QMP server")]
    Timeout,
}

/// An event or signal as received, before typed decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct RawEvent {
    /// Event (or signal) name.
    pub name: String,
    /// Its data, if any.
    pub data: Option<Value>,
    /// For signal messages, the owner in canonical handle form.
    pub owner: Option<Value>,
    /// When it happened.
    pub timestamp: Timestamp,
}

/// The server's greeting.
#[derive(Debug, Clone, PartialEq)]
pub struct Greeting {
    /// `QMP.version` (same shape as `query-version`).
    pub version: Value,
    /// `QMP.capabilities`.
    pub capabilities: Vec<String>,
}

#[derive(Default)]
struct State {
    pending: HashMap<String, Arc<Slot>>,
    /// `connect` requests in flight (by request id): the stream is registered by the reader
    /// thread when the reply arrives, before any later message is routed.
    pending_connects: HashMap<String, SignalKey>,
    /// The explicit connections with a [`SignalStream`].
    streams: Vec<StreamEntry>,
    events: VecDeque<RawEvent>,
    event_wakers: Vec<Waker>,
    closed: bool,
    next_id: u64,
}

struct Shared {
    state: Mutex<State>,
    /// Notified on every event, signal and close.
    events_cv: Condvar,
    writer: Mutex<Box<dyn Write + Send>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for the next event, signal or close, until `deadline` if any; `None` when the
    /// deadline passed.
    fn wait_event<'a>(
        &self,
        st: MutexGuard<'a, State>,
        deadline: Option<Instant>,
    ) -> Option<MutexGuard<'a, State>> {
        match deadline {
            None => Some(self.events_cv.wait(st).unwrap_or_else(|e| e.into_inner())),
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return None;
                }
                let (st, _) = self
                    .events_cv
                    .wait_timeout(st, d - now)
                    .unwrap_or_else(|e| e.into_inner());
                Some(st)
            }
        }
    }

    /// Sends one message with a fresh `id` and returns its pending reply, decoded with
    /// `decode`. `connect` registers a signal stream when the reply is a connection id.
    fn send<T>(
        &self,
        mut msg: serde_json::Map<String, Value>,
        decode: fn(Value) -> Result<T, ClientError>,
        connect: Option<SignalKey>,
    ) -> Reply<T> {
        let slot = Arc::new(Slot::default());
        let id = {
            let mut st = self.lock();
            if st.closed {
                slot.fill(Err(ClientError::Closed));
                return Reply::new(slot, decode);
            }
            st.next_id += 1;
            let id = format!("__qmp#{:05}", st.next_id);
            st.pending.insert(id.clone(), Arc::clone(&slot));
            if let Some(key) = connect {
                st.pending_connects.insert(id.clone(), key);
            }
            id
        };
        msg.insert("id".into(), json!(id));
        let mut line = Value::Object(msg).to_string();
        line.push('\n');
        let res = {
            let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            w.write_all(line.as_bytes()).and_then(|()| w.flush())
        };
        if let Err(e) = res {
            let mut st = self.lock();
            st.pending.remove(&id);
            st.pending_connects.remove(&id);
            slot.fill(Err(ClientError::Io(e.to_string())));
        }
        Reply::new(slot, decode)
    }
}

/// A QMP connection: greeting read, reader thread running.
pub struct Connection {
    shared: Arc<Shared>,
    greeting: Greeting,
    shutdown: Option<Box<dyn Fn() + Send + Sync>>,
}

impl Connection {
    /// Reads the greeting from `reader`, then starts the reader thread (named
    /// `qmp-client-reader`), which runs until `reader` reaches end of file or fails. Call
    /// [`Connection::negotiate`] next. Prefer [`Connection::from_unix_stream`] for sockets: it
    /// also shuts the socket down when the connection is dropped.
    pub fn new<R, W>(reader: R, writer: W) -> Result<Connection, ClientError>
    where
        R: Read + Send + 'static,
        W: Write + Send + 'static,
    {
        let mut reader = BufReader::new(reader);
        let mut line = String::new();
        let n = reader
            .read_line(&mut line)
            .map_err(|e| ClientError::Io(e.to_string()))?;
        if n == 0 {
            return Err(ClientError::Closed);
        }
        let greeting = parse_greeting(&line)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            events_cv: Condvar::new(),
            writer: Mutex::new(Box::new(writer)),
        });
        let s = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("qmp-client-reader".into())
            .spawn(move || reader_loop(reader, &s))
            .map_err(|e| ClientError::Io(e.to_string()))?;
        Ok(Connection {
            shared,
            greeting,
            shutdown: None,
        })
    }

    /// Connects to a Unix socket and reads the greeting.
    pub fn connect_unix(path: impl AsRef<std::path::Path>) -> Result<Connection, ClientError> {
        let stream = std::os::unix::net::UnixStream::connect(path)
            .map_err(|e| ClientError::Io(e.to_string()))?;
        Connection::from_unix_stream(stream)
    }

    /// Uses a connected Unix stream (e.g. one end of a socketpair) and reads the greeting.
    /// Dropping the connection shuts the stream down, which ends the reader thread.
    pub fn from_unix_stream(
        stream: std::os::unix::net::UnixStream,
    ) -> Result<Connection, ClientError> {
        let reader = stream
            .try_clone()
            .map_err(|e| ClientError::Io(e.to_string()))?;
        let closer = stream
            .try_clone()
            .map_err(|e| ClientError::Io(e.to_string()))?;
        let mut conn = Connection::new(reader, stream)?;
        conn.shutdown = Some(Box::new(move || {
            let _ = closer.shutdown(std::net::Shutdown::Both);
        }));
        Ok(conn)
    }

    /// The greeting the server sent.
    pub fn greeting(&self) -> &Greeting {
        &self.greeting
    }

    /// Leaves capabilities negotiation (`qmp_capabilities`), enabling `oob` when asked for
    /// and offered.
    pub fn negotiate(&self, enable_oob: bool) -> Result<(), ClientError> {
        let offered = self.greeting.capabilities.iter().any(|c| c == "oob");
        let enable: &[&str] = if enable_oob && offered { &["oob"] } else { &[] };
        self.negotiate_with(enable)
    }

    /// Leaves capabilities negotiation (`qmp_capabilities`) enabling exactly `capabilities`
    /// (e.g. `["oob", "explicit-handles"]`; none sends no `arguments`). A capability the
    /// greeting did not offer is refused here, before anything is sent.
    pub fn negotiate_with(&self, capabilities: &[&str]) -> Result<(), ClientError> {
        if let Some(c) = capabilities
            .iter()
            .find(|c| !self.greeting.capabilities.iter().any(|o| o == *c))
        {
            return Err(ClientError::Protocol(format!(
                "the server does not offer capability '{c}'"
            )));
        }
        let args = (!capabilities.is_empty()).then(|| json!({ "enable": capabilities }));
        self.request("qmp_capabilities", args, false, decode_unit)
            .wait()
    }

    /// Sends a command (`execute`, or `exec-oob` when `oob`) and returns its pending reply,
    /// decoded with `decode`. Send errors are reported through the reply.
    pub fn request<T>(
        &self,
        name: &str,
        arguments: Option<Value>,
        oob: bool,
        decode: fn(Value) -> Result<T, ClientError>,
    ) -> Reply<T> {
        let mut msg = serde_json::Map::new();
        msg.insert(if oob { "exec-oob" } else { "execute" }.into(), json!(name));
        if let Some(a) = arguments {
            msg.insert("arguments".into(), a);
        }
        self.shared.send(msg, decode, None)
    }

    /// Connects to signal `name` of `owner` (a handle in canonical form, e.g.
    /// `{"__handle__": "Machine", "data": "/machine"}`): sends `{"connect": name, "owner":
    /// owner, "user_data": user_data}` and returns the connection id. Its messages arrive
    /// through [`Connection::next_event`]; use [`Connection::connect_stream`] to get them on
    /// a queue of their own.
    pub fn connect_signal(
        &self,
        name: &str,
        owner: Value,
        user_data: Option<Value>,
    ) -> Result<i64, ClientError> {
        self.shared
            .send(
                connect_message(name, owner, user_data),
                decode_connection_id,
                None,
            )
            .wait()
    }

    /// Disconnects connection `conn` of `owner` (canonical form): sends `{"disconnect": conn,
    /// "owner": owner}`.
    pub fn disconnect_signal(&self, conn: i64, owner: Value) -> Result<(), ClientError> {
        disconnect(&self.shared, conn, owner)
    }

    /// Like [`Connection::connect_signal`], but the connection's messages (those naming
    /// `name`, `owner` and `user_data`) go to the returned stream, their data decoded with
    /// `decode`. Messages that match no stream still arrive through
    /// [`Connection::next_event`]. Connections with equal name, owner and user data cannot
    /// be told apart on the wire: their messages are shared out evenly among them.
    pub fn connect_stream<T>(
        &self,
        name: &str,
        owner: Value,
        user_data: Option<Value>,
        decode: fn(Option<Value>) -> Result<T, ClientError>,
    ) -> Result<SignalStream<T>, ClientError> {
        let key = SignalKey {
            name: name.to_string(),
            owner: owner.clone(),
            user_data: user_data.clone(),
        };
        let id = self
            .shared
            .send(
                connect_message(name, owner.clone(), user_data),
                decode_connection_id,
                Some(key),
            )
            .wait()?;
        Ok(SignalStream::new(
            Arc::clone(&self.shared),
            id,
            name.to_string(),
            owner,
            decode,
        ))
    }

    /// Runs a command and waits for its raw return value.
    pub fn execute(&self, name: &str, arguments: Option<Value>) -> Result<Value, ClientError> {
        self.request(name, arguments, false, Ok).wait()
    }

    /// Runs a command out-of-band (`exec-oob`) and waits for its raw return value.
    pub fn execute_oob(&self, name: &str, arguments: Option<Value>) -> Result<Value, ClientError> {
        self.request(name, arguments, true, Ok).wait()
    }

    /// Waits for the next event, up to `timeout` (`None`: forever). `Ok(None)` on timeout.
    pub fn next_event(&self, timeout: Option<Duration>) -> Result<Option<RawEvent>, ClientError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = self.shared.lock();
        loop {
            if let Some(e) = st.events.pop_front() {
                return Ok(Some(e));
            }
            if st.closed {
                return Err(ClientError::Closed);
            }
            st = match self.shared.wait_event(st, deadline) {
                Some(st) => st,
                None => return Ok(None),
            };
        }
    }

    /// A future for the next event, decoded with `decode`.
    pub fn event_async<T>(&self, decode: fn(RawEvent) -> Result<T, ClientError>) -> EventWait<T> {
        EventWait {
            shared: Arc::clone(&self.shared),
            decode,
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(shutdown) = &self.shutdown {
            shutdown();
        }
    }
}

/// A future for the next event (see [`Connection::event_async`]).
pub struct EventWait<T> {
    shared: Arc<Shared>,
    decode: fn(RawEvent) -> Result<T, ClientError>,
}

impl<T> Future for EventWait<T> {
    type Output = Result<T, ClientError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut st = self.shared.lock();
        if let Some(e) = st.events.pop_front() {
            return Poll::Ready((self.decode)(e));
        }
        if st.closed {
            return Poll::Ready(Err(ClientError::Closed));
        }
        if !st.event_wakers.iter().any(|w| w.will_wake(cx.waker())) {
            st.event_wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// `{"connect": name, "owner": owner, "user_data": user_data}` (no `user_data` when `None`).
fn connect_message(
    name: &str,
    owner: Value,
    user_data: Option<Value>,
) -> serde_json::Map<String, Value> {
    let mut msg = serde_json::Map::new();
    msg.insert("connect".into(), json!(name));
    msg.insert("owner".into(), owner);
    if let Some(u) = user_data {
        msg.insert("user_data".into(), u);
    }
    msg
}

/// Sends `{"disconnect": conn, "owner": owner}` and waits for `{}`.
fn disconnect(shared: &Shared, conn: i64, owner: Value) -> Result<(), ClientError> {
    let mut msg = serde_json::Map::new();
    msg.insert("disconnect".into(), json!(conn));
    msg.insert("owner".into(), owner);
    shared.send(msg, decode_unit, None).wait()
}

/// Decodes the reply of `connect`: the connection id, an integer.
fn decode_connection_id(v: Value) -> Result<i64, ClientError> {
    v.as_i64()
        .ok_or_else(|| ClientError::Decode(format!("expected a connection id, got {v}")))
}

/// Decodes a command's return value as `T`.
pub fn decode<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, ClientError> {
    serde_json::from_value(v).map_err(|e| ClientError::Decode(e.to_string()))
}

/// Decodes the return value of a command that returns nothing (`{}`).
pub fn decode_unit(v: Value) -> Result<(), ClientError> {
    match v {
        Value::Object(o) if o.is_empty() => Ok(()),
        other => Err(ClientError::Decode(format!("expected {{}}, got {other}"))),
    }
}

fn parse_greeting(line: &str) -> Result<Greeting, ClientError> {
    let v: Value = serde_json::from_str(line)
        .map_err(|e| ClientError::Protocol(format!("greeting is not JSON: {e}")))?;
    let qmp = v
        .get("QMP")
        .ok_or_else(|| ClientError::Protocol(format!("expected a greeting, got {v}")))?;
    let version = qmp
        .get("version")
        .filter(|v| v.is_object())
        .cloned()
        .ok_or_else(|| ClientError::Protocol("greeting lacks QMP.version".into()))?;
    let capabilities = qmp
        .get("capabilities")
        .and_then(Value::as_array)
        .ok_or_else(|| ClientError::Protocol("greeting lacks QMP.capabilities".into()))?
        .iter()
        .filter_map(|c| c.as_str().map(str::to_string))
        .collect();
    Ok(Greeting {
        version,
        capabilities,
    })
}

fn reader_loop<R: BufRead>(mut reader: R, shared: &Shared) {
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if line.trim().is_empty() {
            continue;
        }
        let msg: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                fail_pending(
                    shared,
                    ClientError::Protocol(format!("invalid JSON from server: {e}")),
                );
                continue;
            }
        };
        route(shared, msg);
    }
    let mut st = shared.lock();
    st.closed = true;
    st.pending_connects.clear();
    for (_, slot) in st.pending.drain() {
        slot.fill(Err(ClientError::Closed));
    }
    for w in st.event_wakers.drain(..) {
        w.wake();
    }
    shared.events_cv.notify_all();
}

fn fail_pending(shared: &Shared, err: ClientError) {
    let mut st = shared.lock();
    st.pending_connects.clear();
    for (_, slot) in st.pending.drain() {
        slot.fill(Err(err.clone()));
    }
}

fn route(shared: &Shared, msg: Value) {
    let timestamp = msg
        .get("timestamp")
        .and_then(|t| serde_json::from_value(t.clone()).ok())
        .unwrap_or(Timestamp {
            seconds: -1,
            microseconds: -1,
        });
    let name = msg
        .get("event")
        .or_else(|| msg.get("signal"))
        .and_then(Value::as_str);
    if let Some(name) = name {
        if msg.get("signal").is_some()
            && signals::deliver(&mut shared.lock(), name, &msg, timestamp)
        {
            shared.events_cv.notify_all();
            return;
        }
        let ev = RawEvent {
            name: name.to_string(),
            data: msg.get("data").cloned(),
            owner: msg.get("owner").cloned(),
            timestamp,
        };
        let mut st = shared.lock();
        st.events.push_back(ev);
        for w in st.event_wakers.drain(..) {
            w.wake();
        }
        shared.events_cv.notify_all();
        return;
    }
    let result = if let Some(r) = msg.get("return") {
        Ok(r.clone())
    } else if let Some(e) = msg.get("error") {
        let class = e
            .get("class")
            .cloned()
            .and_then(|c| serde_json::from_value::<ErrorClass>(c).ok())
            .unwrap_or(ErrorClass::GenericError);
        let desc = e
            .get("desc")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        Err(ClientError::Command(QmpError::new(class, desc)))
    } else {
        return;
    };
    match msg.get("id").and_then(Value::as_str) {
        Some(id) => {
            let slot = {
                let mut st = shared.lock();
                if let Some(key) = st.pending_connects.remove(id) {
                    if let Ok(Some(conn)) = result.as_ref().map(Value::as_i64) {
                        st.streams.push(StreamEntry::new(conn, key));
                    }
                }
                st.pending.remove(id)
            };
            if let Some(slot) = slot {
                slot.fill(result);
            }
        }
        None => {
            // Like qemu.qmp: an error without an id while commands are pending means the
            // server could not parse something we sent; no reply can be trusted to match.
            let desc = match &result {
                Err(e) => e.to_string(),
                Ok(v) => format!("reply without id: {v}"),
            };
            fail_pending(shared, ClientError::Protocol(desc));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        Shared {
            state: Mutex::new(State::default()),
            events_cv: Condvar::new(),
            writer: Mutex::new(Box::new(std::io::sink())),
        }
    }

    fn pending(s: &Shared, id: &str) -> Reply<Value> {
        let slot = Arc::new(Slot::default());
        s.lock().pending.insert(id.to_string(), Arc::clone(&slot));
        Reply::new(slot, Ok)
    }

    #[test]
    fn greeting_must_have_version_object_and_capabilities_array() {
        let g = parse_greeting(
            r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}"#,
        )
        .expect("valid");
        assert_eq!(g.capabilities, ["oob"]);
        assert_eq!(
            parse_greeting(r#"{"QMP": {"version": {}, "capabilities": {}}}"#),
            Err(ClientError::Protocol(
                "greeting lacks QMP.capabilities".into()
            ))
        );
        assert!(matches!(
            parse_greeting(r#"{"return": {}}"#),
            Err(ClientError::Protocol(_))
        ));
    }

    #[test]
    fn replies_are_routed_by_id_and_events_queued() {
        let s = shared();
        let a = pending(&s, "__qmp#00001");
        let b = pending(&s, "__qmp#00002");
        route(
            &s,
            json!({"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}),
        );
        route(&s, json!({"return": {"x": 2}, "id": "__qmp#00002"}));
        route(
            &s,
            json!({"error": {"class": "DeviceNotFound", "desc": "Device 'd' not found"},
                   "id": "__qmp#00001"}),
        );
        assert_eq!(b.wait(), Ok(json!({"x": 2})));
        assert_eq!(
            a.wait(),
            Err(ClientError::Command(QmpError::new(
                ErrorClass::DeviceNotFound,
                "Device 'd' not found"
            )))
        );
        let ev = s.lock().events.pop_front().expect("queued");
        assert_eq!(ev.name, "STOP");
        assert_eq!(
            ev.timestamp,
            Timestamp {
                seconds: 1,
                microseconds: 2
            }
        );
    }

    #[test]
    fn an_error_without_id_fails_every_pending_command() {
        let s = shared();
        let a = pending(&s, "__qmp#00001");
        route(
            &s,
            json!({"error": {"class": "GenericError", "desc": "JSON parse error, expecting value"}}),
        );
        assert!(
            matches!(a.wait(), Err(ClientError::Protocol(d)) if d.contains("JSON parse error"))
        );
    }

    #[test]
    fn unit_replies_must_be_empty_objects() {
        assert_eq!(decode_unit(json!({})), Ok(()));
        assert!(decode_unit(json!({"a": 1})).is_err());
    }
}
