// SPDX-License-Identifier: Apache-2.0
//! Test support: a tiny QMP server loop over a Unix socket pair, a fake VM implementing the
//! main schema's command traits, a server speaking the explicit-handles and signal-connection
//! protocol over it, and a minimal executor for the async client API.

#![allow(dead_code)]

pub mod signals;
pub mod vm;

use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use qapi::rt::{ErrorClass, QmpError};
use serde_json::{json, Value};

/// Events emitted while a command runs, written before its reply (as QEMU does for STOP).
pub type EventQueue = Arc<Mutex<Vec<Value>>>;

/// Runs a command: (name, arguments, out-of-band?) → result.
pub type Handler = Box<dyn FnMut(&str, Option<Value>, bool) -> Result<Value, QmpError> + Send>;

/// Starts a QMP server thread on one end of a socket pair and returns the other end.
/// The server speaks the protocol's outer layer (greeting, negotiation, ids, events first).
pub fn spawn_server(mut handler: Handler, events: EventQueue) -> UnixStream {
    let (client, server) = UnixStream::pair().expect("socketpair");
    std::thread::spawn(move || {
        let mut writer = server.try_clone().expect("clone");
        let reader = BufReader::new(server);
        let greeting = json!({"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7},
            "package": "vmm test"}, "capabilities": ["oob"]}});
        if writeln!(writer, "{greeting}\r").is_err() {
            return;
        }
        let mut negotiated = false;
        let mut oob_enabled = false;
        for line in reader.lines() {
            let Ok(line) = line else { break };
            let req: Value = match serde_json::from_str(&line) {
                Ok(v) => v,
                Err(_) => continue,
            };
            let id = req.get("id").cloned();
            let (name, oob) = match (req.get("execute"), req.get("exec-oob")) {
                (Some(Value::String(n)), None) => (n.clone(), false),
                (None, Some(Value::String(n))) if oob_enabled => (n.clone(), true),
                (None, Some(_)) => {
                    reply(
                        &mut writer,
                        id,
                        Err(QmpError::generic(
                            "QMP input member 'exec-oob' is unexpected",
                        )),
                    );
                    continue;
                }
                _ => {
                    reply(
                        &mut writer,
                        id,
                        Err(QmpError::generic("QMP input lacks member 'execute'")),
                    );
                    continue;
                }
            };
            let args = req.get("arguments").cloned();
            let result = if name == "qmp_capabilities" {
                if negotiated {
                    Err(QmpError::new(
                        ErrorClass::CommandNotFound,
                        "Capabilities negotiation is already complete, command ignored",
                    ))
                } else {
                    negotiated = true;
                    oob_enabled = args
                        .as_ref()
                        .and_then(|a| a.get("enable"))
                        .is_some_and(|e| e.to_string().contains("oob"));
                    Ok(json!({}))
                }
            } else if !negotiated {
                Err(QmpError::new(
                    ErrorClass::CommandNotFound,
                    "Expecting capabilities negotiation with 'qmp_capabilities'",
                ))
            } else {
                handler(&name, args, oob)
            };
            let pending: Vec<Value> = std::mem::take(&mut *events.lock().expect("lock"));
            for e in pending {
                if writeln!(writer, "{e}\r").is_err() {
                    return;
                }
            }
            reply(&mut writer, id, result);
        }
    });
    client
}

fn reply(w: &mut UnixStream, id: Option<Value>, result: Result<Value, QmpError>) {
    let mut msg = match result {
        Ok(v) => json!({"return": v}),
        Err(e) => json!({"error": e.to_json()}),
    };
    if let Some(id) = id {
        msg["id"] = id;
    }
    let _ = writeln!(w, "{msg}\r");
}

struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs a future to completion on the current thread (any executor works; this is the
/// smallest one).
pub fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}
