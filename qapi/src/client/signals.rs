// SPDX-License-Identifier: Apache-2.0
//! Explicit signal connections on the client side: the routing key of a connection, the
//! per-connection queue the reader thread fills, and [`SignalStream`], the handle a caller
//! reads typed signal data from.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{ClientError, Shared, State};
use crate::rt::{parse_canonical_handle, Timestamp};

/// What a signal message must name to belong to a connection.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct SignalKey {
    pub(super) name: String,
    /// The owner as sent in `connect` (canonical form).
    pub(super) owner: Value,
    pub(super) user_data: Option<Value>,
}

impl SignalKey {
    /// Whether a message with these parts belongs to this key. Owners compare by handle
    /// type and value, so a plain owner in the message matches too.
    fn matches(&self, name: &str, owner: Option<&Value>, user_data: Option<&Value>) -> bool {
        let same_owner = match (owner, parse_canonical_handle(&self.owner)) {
            (Some(o), _) if *o == self.owner => true,
            (Some(o), Some((_, data))) => match parse_canonical_handle(o) {
                Some((n, d)) => Some((n, d)) == parse_canonical_handle(&self.owner),
                None => o == data,
            },
            _ => false,
        };
        let ud = |u: Option<&Value>| u.cloned().unwrap_or(Value::Null);
        self.name == name && same_owner && ud(user_data) == ud(self.user_data.as_ref())
    }
}

/// One received signal message, before its data is decoded.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct RawSignal {
    data: Option<Value>,
    user_data: Option<Value>,
    timestamp: Timestamp,
}

/// A registered connection and its queue.
pub(super) struct StreamEntry {
    conn: i64,
    key: SignalKey,
    queue: VecDeque<RawSignal>,
    /// Messages routed here so far (to share out messages among equal keys).
    delivered: u64,
}

impl StreamEntry {
    pub(super) fn new(conn: i64, key: SignalKey) -> Self {
        StreamEntry {
            conn,
            key,
            queue: VecDeque::new(),
            delivered: 0,
        }
    }
}

/// Queues signal message `msg` (named `name`) on the stream it belongs to; `false` when no
/// stream wants it. Among streams with equal keys, the one that received fewest gets it.
pub(super) fn deliver(st: &mut State, name: &str, msg: &Value, timestamp: Timestamp) -> bool {
    let owner = msg.get("owner");
    let user_data = msg.get("user_data");
    let Some(entry) = st
        .streams
        .iter_mut()
        .filter(|e| e.key.matches(name, owner, user_data))
        .min_by_key(|e| e.delivered)
    else {
        return false;
    };
    entry.delivered += 1;
    entry.queue.push_back(RawSignal {
        data: msg.get("data").cloned(),
        user_data: user_data.cloned(),
        timestamp,
    });
    true
}

/// One signal received on a [`SignalStream`].
#[derive(Debug, Clone, PartialEq)]
pub struct Signal<T> {
    /// The signal's data, decoded.
    pub data: T,
    /// The `user_data` given when connecting, echoed by the server.
    pub user_data: Option<Value>,
    /// When it happened.
    pub timestamp: Timestamp,
}

/// The messages of one explicit signal connection (see
/// [`Connection::connect_stream`](super::Connection::connect_stream) and the typed
/// `Client::connect_*` methods). Dropping it stops the routing but leaves the server's
/// connection in place; [`SignalStream::disconnect`] ends both.
pub struct SignalStream<T> {
    shared: Arc<Shared>,
    id: i64,
    name: String,
    owner: Value,
    decode: fn(Option<Value>) -> Result<T, ClientError>,
}

impl<T> std::fmt::Debug for SignalStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalStream")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("owner", &self.owner)
            .finish()
    }
}

impl<T> SignalStream<T> {
    pub(super) fn new(
        shared: Arc<Shared>,
        id: i64,
        name: String,
        owner: Value,
        decode: fn(Option<Value>) -> Result<T, ClientError>,
    ) -> Self {
        SignalStream {
            shared,
            id,
            name,
            owner,
            decode,
        }
    }

    /// The connection id the server gave.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The signal name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The owner, in canonical handle form.
    pub fn owner(&self) -> &Value {
        &self.owner
    }

    /// Waits for the next signal of this connection, up to `timeout` (`None`: forever).
    /// `Ok(None)` on timeout; [`ClientError::Closed`] once the connection is closed and the
    /// queue is empty.
    pub fn next(&self, timeout: Option<Duration>) -> Result<Option<Signal<T>>, ClientError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = self.shared.lock();
        loop {
            let entry = st.streams.iter_mut().find(|e| e.conn == self.id);
            if let Some(raw) = entry.and_then(|e| e.queue.pop_front()) {
                drop(st);
                return Ok(Some(Signal {
                    data: (self.decode)(raw.data)?,
                    user_data: raw.user_data,
                    timestamp: raw.timestamp,
                }));
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

    /// Disconnects (`{"disconnect": id, "owner": owner}`) and waits for the server's reply.
    pub fn disconnect(self) -> Result<(), ClientError> {
        super::disconnect(&self.shared, self.id, self.owner.clone())
    }
}

impl<T> Drop for SignalStream<T> {
    fn drop(&mut self) {
        let id = self.id;
        self.shared.lock().streams.retain(|e| e.conn != id);
    }
}

/// Decodes a signal's `data` as `T` (absent data decodes as `{}`).
pub fn decode_signal_data<T: serde::de::DeserializeOwned>(
    data: Option<Value>,
) -> Result<T, ClientError> {
    serde_json::from_value(data.unwrap_or_else(|| Value::Object(Default::default())))
        .map_err(|e| ClientError::Decode(e.to_string()))
}

/// The decoder of signals without data (any `data` is ignored).
pub fn decode_no_data(_data: Option<Value>) -> Result<(), ClientError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(user_data: Option<Value>) -> SignalKey {
        SignalKey {
            name: "STOP".into(),
            owner: json!({"__handle__": "Machine", "data": "/machine"}),
            user_data,
        }
    }

    #[test]
    fn keys_match_name_owner_and_user_data() {
        let k = key(Some(json!(1)));
        let owner = json!({"__handle__": "Machine", "data": "/machine"});
        assert!(k.matches("STOP", Some(&owner), Some(&json!(1))));
        assert!(k.matches("STOP", Some(&json!("/machine")), Some(&json!(1))));
        assert!(!k.matches("RESUME", Some(&owner), Some(&json!(1))));
        assert!(!k.matches("STOP", Some(&owner), Some(&json!(2))));
        assert!(!k.matches("STOP", Some(&owner), None));
        assert!(!k.matches("STOP", None, Some(&json!(1))));
        let other = json!({"__handle__": "Blockdev", "data": "/machine"});
        assert!(!k.matches("STOP", Some(&other), Some(&json!(1))));
        // Absent and null user data are the same.
        assert!(key(None).matches("STOP", Some(&owner), Some(&Value::Null)));
    }

    #[test]
    fn equal_keys_share_messages_out() {
        let mut st = State::default();
        st.streams.push(StreamEntry::new(1, key(None)));
        st.streams.push(StreamEntry::new(2, key(None)));
        let msg = json!({"signal": "STOP",
            "owner": {"__handle__": "Machine", "data": "/machine"}});
        let ts = Timestamp {
            seconds: 1,
            microseconds: 0,
        };
        assert!(deliver(&mut st, "STOP", &msg, ts));
        assert!(deliver(&mut st, "STOP", &msg, ts));
        assert_eq!(st.streams[0].queue.len(), 1);
        assert_eq!(st.streams[1].queue.len(), 1);
        assert!(!deliver(&mut st, "RESUME", &msg, ts));
    }

    #[test]
    fn data_decoders() {
        let v: std::collections::BTreeMap<String, i64> =
            decode_signal_data(None).expect("absent is {}");
        assert!(v.is_empty());
        assert!(decode_signal_data::<i64>(Some(json!("x"))).is_err());
        assert_eq!(decode_no_data(Some(json!({"a": 1}))), Ok(()));
    }
}
