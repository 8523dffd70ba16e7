// SPDX-License-Identifier: Apache-2.0
//! Event timestamps and the wire shapes of events and signals.

use serde_json::{json, Map, Value};

/// Host realtime when an event happened; `-1/-1` when the clock could not be read.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Timestamp {
    /// Seconds since the Unix epoch.
    pub seconds: i64,
    /// Microseconds within the second.
    pub microseconds: i64,
}

impl Timestamp {
    /// The current realtime clock.
    pub fn now() -> Self {
        match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Timestamp {
                seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                microseconds: i64::from(d.subsec_micros()),
            },
            Err(_) => Timestamp {
                seconds: -1,
                microseconds: -1,
            },
        }
    }
}

/// `{"event": name, "data": data, "timestamp": ...}`, without `data` when there is none.
pub fn event_json(name: &str, data: Option<Value>, timestamp: Timestamp) -> Value {
    let mut o = Map::new();
    o.insert("event".into(), json!(name));
    if let Some(d) = data {
        o.insert("data".into(), d);
    }
    o.insert("timestamp".into(), json!(timestamp));
    Value::Object(o)
}

/// `{"signal": name, "owner": owner, "user_data": ..., "data": ..., "timestamp": ...}` for
/// sessions that connected to a signal explicitly (canonical handle form for `owner`).
pub fn signal_json(
    name: &str,
    owner: Value,
    user_data: Option<&Value>,
    data: Option<Value>,
    timestamp: Timestamp,
) -> Value {
    let mut o = Map::new();
    o.insert("signal".into(), json!(name));
    o.insert("owner".into(), owner);
    if let Some(u) = user_data {
        o.insert("user_data".into(), u.clone());
    }
    if let Some(d) = data {
        o.insert("data".into(), d);
    }
    o.insert("timestamp".into(), json!(timestamp));
    Value::Object(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TS: Timestamp = Timestamp {
        seconds: 1795300099,
        microseconds: 219161,
    };

    #[test]
    fn event_without_data_has_no_data_member() {
        assert_eq!(
            event_json("RESUME", None, TS),
            json!({"event": "RESUME", "timestamp": {"seconds": 1795300099, "microseconds": 219161}})
        );
        let e = event_json("RESET", Some(json!({"guest": false})), TS);
        assert_eq!(e["data"], json!({"guest": false}));
    }

    #[test]
    fn signal_message_names_owner_and_user_data() {
        let owner = json!({"__handle__": "Blockdev", "data": "drive0"});
        let s = signal_json("BLOCK_IO_ERROR", owner.clone(), Some(&json!(7)), None, TS);
        assert_eq!(s["signal"], "BLOCK_IO_ERROR");
        assert_eq!(s["owner"], owner);
        assert_eq!(s["user_data"], 7);
        assert!(s.get("data").is_none());
    }

    #[test]
    fn now_is_after_the_epoch() {
        assert!(Timestamp::now().seconds > 1_600_000_000);
    }
}
