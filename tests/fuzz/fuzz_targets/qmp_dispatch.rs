// SPDX-License-Identifier: Apache-2.0
//! The generated dispatcher (`qapi::commands::dispatch` and `dispatch_oob`, through the
//! monitor's `Inband::run` and `negotiate`) on arbitrary QMP messages, against the fake VM of
//! the qapi tests (`qapi/tests/common/vm.rs`, included as is so that it follows the schema).
//!
//! The input is a QMP stream, split by the monitor's own splitter and checked by its request
//! checker; every request then runs in band (and out of band when it asks so), alternately
//! with and without explicit handles. Asserts, beyond not panicking:
//! - every reply is a JSON object with exactly one of `return` and `error`, and the request's
//!   id when (and only when) it had one; an error has a known class and a description;
//! - only a successful command declared `'success-response': false` sends no reply;
//! - the argument checker and the generated types agree: no command fails with "Invalid
//!   arguments" (decoding refused what the checker accepted), "Invalid handle" or "Internal
//!   error";
//! - unknown commands, and commands the monitor implements itself, are `CommandNotFound`;
//! - an `allow-oob` command answers the same in band and out of band;
//! - every successful return value passes the checker for the command's declared return type.

#![no_main]

use std::sync::{Arc, Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use monitor::dispatch::{negotiate, Inband};
use monitor::json_stream::{Item, JsonStream};
use monitor::request::{parse_message, Message, Mode, Request};
use qapi::commands::{command_info, dispatch, dispatch_oob};
use qapi::rt::{check_arguments, MemberDesc, TypeDesc};
use serde_json::{json, Value};

/// The event queue `vm.rs` emits into (it names it `super::EventQueue`).
pub type EventQueue = Arc<Mutex<Vec<Value>>>;

#[allow(dead_code, unreachable_pub)]
#[path = "../../../qapi/tests/common/vm.rs"]
mod vm;

const CLASSES: [&str; 5] = [
    "GenericError",
    "CommandNotFound",
    "DeviceNotActive",
    "DeviceNotFound",
    "KVMMissingCap",
];

/// Checks the shape of a reply to a request with `id`; returns its error, if any.
fn check_reply(reply: &Value, id: Option<&Value>) -> Option<(String, String)> {
    let obj = reply.as_object().expect("a reply is an object");
    assert_eq!(obj.get("id"), id, "id not echoed: {reply}");
    let keys = obj.len() - usize::from(id.is_some());
    assert_eq!(keys, 1, "a reply has one of return and error: {reply}");
    if obj.contains_key("return") {
        return None;
    }
    let err = obj.get("error").expect("return or error");
    let class = err["class"].as_str().expect("error class");
    let desc = err["desc"].as_str().expect("error desc");
    assert!(CLASSES.contains(&class), "unknown class {class}");
    assert_eq!(err.as_object().map(|o| o.len()), Some(2), "{err}");
    for bad in ["Invalid arguments", "Invalid handle", "Internal error"] {
        assert!(
            !desc.starts_with(bad),
            "checker and generated types disagree: {desc}"
        );
    }
    Some((class.to_owned(), desc.to_owned()))
}

/// The checker's view of `desc` as the one member of an object, so that any type (not only
/// objects) can be checked with `check_arguments`. Built once per type.
fn wrapped(desc: &'static TypeDesc) -> &'static TypeDesc {
    static CACHE: OnceLock<Mutex<Vec<(usize, &'static TypeDesc)>>> = OnceLock::new();
    let key = desc as *const TypeDesc as usize;
    let mut cache = CACHE.get_or_init(Default::default).lock().expect("lock");
    if let Some((_, w)) = cache.iter().find(|(k, _)| *k == key) {
        return w;
    }
    let members: &'static [MemberDesc] = Box::leak(Box::new([MemberDesc {
        name: "return",
        ty: desc,
        optional: false,
    }]));
    let w: &'static TypeDesc = Box::leak(Box::new(TypeDesc::Object {
        name: "reply",
        members,
        variants: None,
    }));
    cache.push((key, w));
    w
}

/// Asserts that a successful return value of `command` is what its schema declares.
fn check_return(command: &str, ret: &Value) {
    let Some(desc) = command_info(command).and_then(|c| c.returns) else {
        assert_eq!(ret, &json!({}), "{command} returns nothing but gave {ret}");
        return;
    };
    let r = check_arguments(
        wrapped(desc),
        Some(json!({ "return": ret })),
        &|_, _| Ok(()),
    );
    assert!(
        r.is_ok(),
        "{command} returned {ret}, against its type: {r:?}"
    );
}

fn run(vm: &mut vm::FakeVm, req: Request, explicit_handles: bool) {
    let Request {
        mode,
        command,
        arguments,
        id,
    } = req;
    let info = command_info(&command);
    if command == "qmp_capabilities" {
        // The monitor's own command: checked and decoded with the generated descriptor.
        let _ = negotiate(arguments.clone());
    }
    let arguments = arguments.map(Value::Object);
    if mode == Mode::OutOfBand {
        let oob = dispatch_oob(&*vm, &command, arguments.clone());
        let reply = monitor::dispatch::reply(oob.clone(), id.clone());
        let err = check_reply(&reply, id.as_ref());
        match info {
            Some(i) if i.allow_oob => {
                let inband = dispatch(vm, &command, arguments.clone());
                assert_eq!(oob, inband, "{command} differs in and out of band");
            }
            Some(_) => assert_eq!(
                err.map(|e| e.1),
                Some(format!("The command {command} does not support OOB"))
            ),
            None => assert_eq!(err.map(|e| e.0).as_deref(), Some("CommandNotFound")),
        }
        return;
    }
    let direct = dispatch(vm, &command, arguments.clone());
    if let Ok(ret) = &direct {
        check_return(&command, ret);
    }
    let item = Inband::Execute {
        command: command.clone(),
        arguments,
        id: id.clone(),
        explicit_handles,
        fd: None,
    };
    match item.run(vm) {
        None => {
            let i = info.expect("a known command ran");
            assert!(!i.success_response, "{command} sent no reply");
        }
        Some(reply) => {
            let err = check_reply(&reply, id.as_ref());
            if info.is_none_or(|i| !i.generated) {
                assert_eq!(
                    err.map(|e| e.0).as_deref(),
                    Some("CommandNotFound"),
                    "{command} is not the dispatcher's"
                );
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let events = EventQueue::default();
    let mut vm = vm::FakeVm::new(events.clone());
    let mut stream = JsonStream::new();
    let mut items = stream.feed(data);
    // End a trailing top-level scalar, as a client's next byte would.
    items.extend(stream.feed(b"\n"));
    for (n, item) in items.into_iter().enumerate() {
        let Item::Value(v) = item else { continue };
        if let Ok(Message::Command(req)) = parse_message(v, true) {
            run(&mut vm, req, n % 2 == 1);
        }
        for e in events.lock().expect("lock").drain(..) {
            assert!(e.get("event").is_some_and(Value::is_string), "{e}");
            assert!(e.get("timestamp").is_some(), "{e}");
        }
    }
});
