// SPDX-License-Identifier: Apache-2.0
//! A fake QMP server speaking the explicit-handles protocol over the fake VM, routed the way
//! the monitor routes: capabilities-mode `set-explicit-handles` and
//! `disconnect-default-signals`, `explicit-handles` in `qmp_capabilities`, `connect` /
//! `disconnect` messages, every event delivered by `Event::owner_handle` to the connections
//! of its owner, and handle-typed values canonicalized in replies and signal data.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use qapi::commands::QmpHandles;
use qapi::events::{Event, EventSink};
use qapi::rt::{canonical_handle, canonicalize_handles, parse_canonical_handle};
use qapi::rt::{ErrorClass, QmpError, Timestamp};
use serde_json::{json, Value};

use super::vm::FakeVm;

/// Collects typed events.
#[derive(Default)]
pub struct TypedSink(pub Mutex<Vec<(Event, Timestamp)>>);

impl EventSink for TypedSink {
    fn emit(&self, event: Event, timestamp: Timestamp) {
        self.0.lock().expect("lock").push((event, timestamp));
    }
}

struct Conn {
    id: i64,
    signal: String,
    owner: Value,
    user_data: Option<Value>,
}

#[derive(Default)]
struct Session {
    negotiated: bool,
    explicit: bool,
    defaults: bool,
    conns: Vec<Conn>,
    next_conn: i64,
}

/// Starts the server on one end of a socket pair around a fresh fake VM; returns the other end.
pub fn spawn_signal_server() -> UnixStream {
    let sink = Arc::new(TypedSink::default());
    let mut vm = FakeVm::with_sink(sink.clone());
    let (client, server) = UnixStream::pair().expect("socketpair");
    std::thread::spawn(move || {
        let mut w = server.try_clone().expect("clone");
        let reader = BufReader::new(server);
        let greeting = json!({"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7},
            "package": "vmm test"}, "capabilities": ["oob", "explicit-handles"]}});
        if writeln!(w, "{greeting}\r").is_err() {
            return;
        }
        let mut s = Session {
            defaults: true,
            next_conn: 1,
            ..Session::default()
        };
        for line in reader.lines() {
            let Ok(line) = line else { break };
            let Ok(req) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let id = req.get("id").cloned();
            let result = handle(&mut s, &mut vm, &req);
            let events: Vec<_> = std::mem::take(&mut *sink.0.lock().expect("lock"));
            for (ev, ts) in events {
                for msg in route(&s, &ev, ts) {
                    if writeln!(w, "{msg}\r").is_err() {
                        return;
                    }
                }
            }
            super::reply(&mut w, id, result);
        }
    });
    client
}

/// The reply to one request.
fn handle(s: &mut Session, vm: &mut FakeVm, req: &Value) -> Result<Value, QmpError> {
    if let Some(signal) = req.get("connect") {
        return connect(s, vm, signal, req);
    }
    if let Some(conn) = req.get("disconnect") {
        let owner = req.get("owner").unwrap_or(&Value::Null);
        let before = s.conns.len();
        s.conns
            .retain(|c| !(Some(c.id) == conn.as_i64() && c.owner == *owner));
        return if s.conns.len() < before {
            Ok(json!({}))
        } else {
            Err(QmpError::generic(format!(
                "No connection {conn} of {owner}"
            )))
        };
    }
    let Some(name) = req.get("execute").and_then(Value::as_str) else {
        return Err(QmpError::generic("QMP input lacks member 'execute'"));
    };
    let args = req.get("arguments").cloned();
    let not_found = |desc: &str| Err(QmpError::new(ErrorClass::CommandNotFound, desc));
    match (name, s.negotiated) {
        ("qmp_capabilities", false) => {
            let enable = args
                .as_ref()
                .and_then(|a| a.get("enable"))
                .cloned()
                .unwrap_or(json!([]));
            s.explicit |= enable
                .as_array()
                .is_some_and(|e| e.contains(&json!("explicit-handles")));
            s.negotiated = true;
            Ok(json!({}))
        }
        ("set-explicit-handles", false) => {
            s.explicit = true;
            Ok(json!({}))
        }
        ("disconnect-default-signals", false) => {
            s.defaults = false;
            Ok(json!({}))
        }
        (_, false) => not_found("Expecting capabilities negotiation with 'qmp_capabilities'"),
        ("qmp_capabilities" | "set-explicit-handles" | "disconnect-default-signals", true) => {
            not_found("Capabilities negotiation is already complete, command ignored")
        }
        (_, true) => {
            let mut ret = qapi::commands::dispatch(vm, name, args)?;
            if s.explicit {
                if let Some(desc) = qapi::commands::command_info(name).and_then(|i| i.returns) {
                    canonicalize_handles(desc, &mut ret);
                }
            }
            Ok(ret)
        }
    }
}

fn connect(s: &mut Session, vm: &FakeVm, signal: &Value, req: &Value) -> Result<Value, QmpError> {
    let name = signal.as_str().unwrap_or_default();
    let info = qapi::events::signal_info(name)
        .ok_or_else(|| QmpError::generic(format!("Unknown signal '{name}'")))?;
    let owner = req.get("owner").cloned().unwrap_or(Value::Null);
    let Some((ty, data)) = parse_canonical_handle(&owner) else {
        return Err(QmpError::generic(
            "'owner' must be a handle in canonical form",
        ));
    };
    if ty != info.owner {
        return Err(QmpError::generic(format!(
            "Signal '{name}' is owned by a {}, not a {ty}",
            info.owner
        )));
    }
    match info.fixed_owner {
        Some(fixed) if data != fixed => return Err(QmpError::device_not_found(&data.to_string())),
        Some(_) => {}
        None => vm.resolve_blockdev(
            &serde_json::from_value(data.clone()).map_err(|e| QmpError::generic(e.to_string()))?,
        )?,
    }
    let id = s.next_conn;
    s.next_conn += 1;
    s.conns.push(Conn {
        id,
        signal: name.to_string(),
        owner,
        user_data: req.get("user_data").cloned(),
    });
    Ok(json!(id))
}

/// The messages event `ev` gives this session: the broadcast form on the default
/// connection, and the signal form on each explicit connection to its owner.
fn route(s: &Session, ev: &Event, ts: Timestamp) -> Vec<Value> {
    let canon = |mut msg: Value| {
        if s.explicit {
            if let (Some(desc), Some(data)) =
                (ev.signal_info().and_then(|i| i.data), msg.get_mut("data"))
            {
                canonicalize_handles(desc, data);
            }
        }
        msg
    };
    let (ty, value) = ev.owner_handle();
    let owner = canonical_handle(ty, &value);
    let mut out = Vec::new();
    if s.defaults {
        out.push(canon(ev.to_json(ts)));
    }
    for c in s
        .conns
        .iter()
        .filter(|c| c.signal == ev.name() && c.owner == owner)
    {
        out.push(canon(ev.to_signal_json(c.user_data.as_ref(), ts)));
    }
    out
}
