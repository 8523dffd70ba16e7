// SPDX-License-Identifier: Apache-2.0
//! Signal delivery on the monitor side: each session's explicit connections (made with
//! `{"connect": SIGNAL, "owner": HANDLE}`), and the rate limit of the legacy broadcast.
//!
//! Every event of the schema is a signal with an owner: `BLOCK_IO_ERROR` is owned by its
//! `Blockdev`, every other event by the machine. A session receives an emission once per
//! connection whose signal and owner match, in the signal form, and — unless it dropped its
//! default connections — once more as the QEMU-shaped broadcast event.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::time::{Duration, Instant};

use qapi::rt::QmpError;
use serde_json::Value;

/// One explicit connection of a session.
#[derive(Debug, Clone, PartialEq)]
pub struct Connection {
    /// The signal's name.
    pub signal: String,
    /// The owner in canonical form.
    pub owner: Value,
    /// Echoed in every emission.
    pub user_data: Option<Value>,
}

/// A session's explicit connections, by connection id (1, 2, ... per session).
#[derive(Debug, Default)]
pub struct Connections {
    next: i64,
    by_id: BTreeMap<i64, Connection>,
}

impl Connections {
    /// Adds a connection and returns its id.
    pub fn connect(&mut self, connection: Connection) -> i64 {
        self.next += 1;
        self.by_id.insert(self.next, connection);
        self.next
    }

    /// Ends connection `id`, which must belong to `owner`.
    ///
    /// # Errors
    /// No such connection for that owner.
    pub fn disconnect(&mut self, id: &Value, owner: &Value) -> Result<(), QmpError> {
        let found = id
            .as_i64()
            .filter(|n| self.by_id.get(n).is_some_and(|c| c.owner == *owner));
        match found {
            Some(n) => {
                self.by_id.remove(&n);
                Ok(())
            }
            None => Err(QmpError::generic(format!(
                "No signal connection {id} for owner {owner}"
            ))),
        }
    }

    /// The connections an emission of `signal` by `owner` goes to, in connection order.
    pub fn matching<'a>(
        &'a self,
        signal: &'a str,
        owner: &'a Value,
    ) -> impl Iterator<Item = &'a Connection> + 'a {
        self.by_id
            .values()
            .filter(move |c| c.signal == signal && c.owner == *owner)
    }

    /// Number of connections.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// No connection.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// The rate limit newer QEMU applies to the broadcast of `BLOCK_IO_ERROR`, per key (its
/// `qom-path`): the first emission of a window goes out at once and opens the window; later
/// ones within it replace a single pending one, sent when the window ends (which opens the next
/// window); a window that ends with nothing pending closes. Emissions that must never be
/// delayed (an error whose action stops the VM) go out at once, after the pending one.
#[derive(Debug)]
pub struct RateLimiter<K, T> {
    window: Duration,
    states: HashMap<K, Window<T>>,
}

#[derive(Debug)]
struct Window<T> {
    ends: Instant,
    pending: Option<T>,
}

impl<K: Eq + Hash + Clone, T> RateLimiter<K, T> {
    /// A limiter with windows of `window`.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            states: HashMap::new(),
        }
    }

    /// Offers an emission at `now`; returns what to send now, in order. `urgent` emissions are
    /// never held.
    pub fn offer(&mut self, key: K, item: T, urgent: bool, now: Instant) -> Vec<T> {
        match self.states.get_mut(&key) {
            None => {
                self.states.insert(
                    key,
                    Window {
                        ends: now + self.window,
                        pending: None,
                    },
                );
                vec![item]
            }
            Some(w) if urgent => w.pending.take().into_iter().chain([item]).collect(),
            Some(w) => {
                // Replaces (drops) what was pending: all but the last are dropped.
                w.pending = Some(item);
                Vec::new()
            }
        }
    }

    /// Ends the windows due at `now`; returns the pending emissions to send now.
    pub fn expire(&mut self, now: Instant) -> Vec<T> {
        let mut out = Vec::new();
        let window = self.window;
        self.states.retain(|_, w| {
            if w.ends > now {
                return true;
            }
            match w.pending.take() {
                Some(item) => {
                    out.push(item);
                    w.ends = now + window;
                    true
                }
                None => false,
            }
        });
        out
    }

    /// When the next window ends, if any is open.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.states.values().map(|w| w.ends).min()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn connections_match_signal_and_owner() {
        let d0 = json!({"__handle__": "Blockdev", "data": "drive0"});
        let d1 = json!({"__handle__": "Blockdev", "data": "drive1"});
        let mut c = Connections::default();
        let conn = |owner: &Value, user: i64| Connection {
            signal: "BLOCK_IO_ERROR".into(),
            owner: owner.clone(),
            user_data: Some(json!(user)),
        };
        let a = c.connect(conn(&d0, 1));
        let b = c.connect(conn(&d1, 2));
        let c2 = c.connect(conn(&d0, 3));
        assert_eq!((a, b, c2), (1, 2, 3));
        let users: Vec<_> = c
            .matching("BLOCK_IO_ERROR", &d0)
            .map(|x| x.user_data.clone())
            .collect();
        assert_eq!(users, [Some(json!(1)), Some(json!(3))]);
        assert_eq!(c.matching("STOP", &d0).count(), 0);
        assert!(c.disconnect(&json!(1), &d1).is_err(), "wrong owner");
        assert!(c.disconnect(&json!("1"), &d0).is_err(), "not a number");
        c.disconnect(&json!(1), &d0).unwrap();
        assert!(c.disconnect(&json!(1), &d0).is_err(), "already gone");
        assert_eq!(c.matching("BLOCK_IO_ERROR", &d0).count(), 1);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn rate_limit_sends_first_and_last_of_a_window() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut r = RateLimiter::new(s);
        assert_eq!(r.offer("vda", 1, false, t0), [1]);
        assert!(r.offer("vda", 2, false, t0).is_empty());
        assert!(r.offer("vda", 3, false, t0).is_empty());
        // Another key has its own window.
        assert_eq!(r.offer("vdb", 10, false, t0), [10]);
        assert_eq!(r.next_deadline(), Some(t0 + s));
        assert!(r.expire(t0 + s / 2).is_empty());
        // The last of the window (3) goes at its end; 2 was dropped. vdb's window closes.
        assert_eq!(r.expire(t0 + s), [3]);
        assert_eq!(r.states.len(), 1);
        // A new window opened at t0+1s: nothing pending at its end closes it.
        assert!(r.expire(t0 + 2 * s).is_empty());
        assert_eq!(r.next_deadline(), None);
        assert_eq!(r.offer("vda", 4, false, t0 + 2 * s), [4]);
    }

    #[test]
    fn urgent_emissions_are_never_held() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(Duration::from_secs(1));
        assert_eq!(r.offer("vda", 1, false, t0), [1]);
        assert!(r.offer("vda", 2, false, t0).is_empty());
        // The pending one first, then the urgent one, in order.
        assert_eq!(r.offer("vda", 3, true, t0), [2, 3]);
        assert_eq!(r.offer("vda", 4, true, t0), [4]);
        assert!(r.expire(t0 + Duration::from_secs(1)).is_empty());
    }
}
