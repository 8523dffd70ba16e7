// SPDX-License-Identifier: Apache-2.0
//! The generated dispatcher: argument checking with QEMU's error texts, handle resolution,
//! OOB routing, metadata — over the test schema (every construct) and the main schema.

mod common;

mod rt {
    pub use qapi::rt::*;
}
mod client {
    pub use qapi::client::*;
}
#[allow(clippy::too_many_arguments, dead_code)]
mod test_schema {
    include!(concat!(env!("OUT_DIR"), "/test-qmp.rs"));
}

use qapi::rt::{ErrorClass, QmpError};
use serde_json::{json, Value};
use test_schema::commands::{self, QmpCommands, QmpHandles, QmpOobCommands};
use test_schema::types::*;

struct Server {
    widgets: Vec<String>,
    calls: std::sync::Mutex<Vec<String>>,
}

impl Server {
    fn new() -> Self {
        Server {
            widgets: vec!["w1".into()],
            calls: std::sync::Mutex::new(Vec::new()),
        }
    }
    fn log(&self, s: String) {
        self.calls.lock().expect("lock").push(s);
    }
}

impl QmpHandles for Server {
    fn resolve_widget(&self, handle: &Widget) -> Result<(), QmpError> {
        if self.widgets.contains(&handle.0) {
            Ok(())
        } else {
            Err(QmpError::device_not_found(&handle.0))
        }
    }
}

impl QmpOobCommands for Server {
    fn ping(&self) -> Result<(), QmpError> {
        self.log("ping".into());
        Ok(())
    }
    fn ping_args(&self, word: String) -> Result<PokeResult, QmpError> {
        Ok(PokeResult {
            id: word,
            done: true,
            color: None,
            inners: vec![],
        })
    }
}

impl QmpCommands for Server {
    fn poke(
        &mut self,
        target: Widget,
        count: Option<u8>,
        color: Option<Color>,
        inner: Option<Inner>,
        tags: Option<Vec<String>>,
    ) -> Result<PokeResult, QmpError> {
        self.log(format!("poke {target} {count:?} {color:?} {tags:?}"));
        Ok(PokeResult {
            id: target.0,
            done: true,
            color,
            inners: inner.into_iter().collect(),
        })
    }
    fn echo_int(
        &mut self,
        i: i64,
        _i8: Option<i8>,
        _u64: Option<u64>,
        _n: Option<f64>,
        _b: Option<bool>,
        _any: Option<Value>,
        _nul: Option<()>,
        _size: Option<u64>,
    ) -> Result<i64, QmpError> {
        Ok(i)
    }
    fn make_shape(&mut self, arguments: Shape) -> Result<Shape, QmpError> {
        Ok(arguments)
    }
    fn take_value(&mut self, v: Value_, _list: Option<Vec<Inner>>) -> Result<(), QmpError> {
        self.log(format!("take {v:?}"));
        Ok(())
    }
    fn tree(&mut self) -> Result<Tree, QmpError> {
        Ok(Tree {
            value: 1,
            left: Some(Box::new(Tree {
                value: 2,
                left: None,
                right: None,
                kids: vec![],
            })),
            right: None,
            kids: vec![],
        })
    }
    fn silent(&mut self) -> Result<(), QmpError> {
        Err(QmpError::generic("failed on purpose"))
    }
}

use test_schema::types::Value as Value_;

fn run(name: &str, args: Value) -> Result<Value, QmpError> {
    commands::dispatch(&mut Server::new(), name, Some(args))
}

fn err(name: &str, args: Value) -> String {
    let e = run(name, args).expect_err("should fail");
    assert_eq!(e.class, ErrorClass::GenericError, "{e}");
    e.desc
}

#[test]
fn valid_call_reaches_the_method_and_serializes_the_return() {
    let r = run(
        "poke",
        json!({"target": "w1", "count": 3, "color": "green", "inner": {"x": 1}, "tags": ["a"]}),
    )
    .expect("ok");
    assert_eq!(
        r,
        json!({"id": "w1", "done": true, "color": "green", "inners": [{"x": 1}]})
    );
}

#[test]
fn missing_and_unexpected_parameters() {
    assert_eq!(err("poke", json!({})), "Parameter 'target' is missing");
    assert_eq!(
        err("poke", json!({"target": "w1", "bogus": 1})),
        "Parameter 'bogus' is unexpected"
    );
    assert_eq!(err("ping", json!({"x": 1})), "Parameter 'x' is unexpected");
    // Unexpected is checked after members, as QEMU's visitor does.
    assert_eq!(
        err("poke", json!({"bogus": 1})),
        "Parameter 'target' is missing"
    );
}

#[test]
fn type_errors_use_qemu_texts() {
    let t = |args: Value| err("echo-int", args);
    assert_eq!(
        t(json!({"i": "1"})),
        "Invalid parameter type for 'i', expected: integer"
    );
    assert_eq!(
        t(json!({"i": 1.5})),
        "Invalid parameter type for 'i', expected: integer"
    );
    assert_eq!(
        t(json!({"i": 1, "n": "x"})),
        "Invalid parameter type for 'n', expected: number"
    );
    assert_eq!(
        t(json!({"i": 1, "b": 1})),
        "Invalid parameter type for 'b', expected: boolean"
    );
    assert_eq!(
        t(json!({"i": 1, "nul": 0})),
        "Invalid parameter type for 'nul', expected: null"
    );
    assert_eq!(
        t(json!({"i": 1, "i8": 300})),
        "Parameter 'i8' expects int8_t"
    );
    assert_eq!(
        t(json!({"i": 1, "u64": -1})),
        "Parameter 'u64' expects uint64"
    );
    assert_eq!(
        t(json!({"i": 1, "size": "big"})),
        "Parameter 'size' expects uint64"
    );
    assert_eq!(
        err("poke", json!({"target": 5})),
        "Invalid parameter type for 'target', expected: string"
    );
    assert_eq!(
        err("poke", json!({"target": "w1", "tags": "a"})),
        "Invalid parameter type for 'tags', expected: array"
    );
    assert_eq!(
        err("poke", json!({"target": "w1", "inner": []})),
        "Invalid parameter type for 'inner', expected: object"
    );
    assert_eq!(
        err("poke", json!({"target": "w1", "count": 256})),
        "Parameter 'count' expects uint8_t"
    );
    assert_eq!(
        err("poke", json!({"target": "w1", "color": "purple"})),
        "Parameter 'color' does not accept value 'purple'"
    );
    // The conditional value is compiled out.
    assert_eq!(
        err("poke", json!({"target": "w1", "color": "ultraviolet"})),
        "Parameter 'color' does not accept value 'ultraviolet'"
    );
    let ok = run(
        "echo-int",
        json!({"i": 7, "i8": -128, "u64": 18446744073709551615u64,
        "n": 1, "b": true, "any": {"x": [1]}, "nul": null, "size": 0}),
    );
    assert_eq!(ok, Ok(json!(7)));
}

#[test]
fn nested_members_are_named_with_their_path() {
    assert_eq!(
        err("poke", json!({"target": "w1", "inner": {}})),
        "Parameter 'inner.x' is missing"
    );
    assert_eq!(
        err("poke", json!({"target": "w1", "inner": {"x": "1"}})),
        "Invalid parameter type for 'inner.x', expected: integer"
    );
    assert_eq!(
        err("poke", json!({"target": "w1", "inner": {"x": 1, "y": 2}})),
        "Parameter 'inner.y' is unexpected"
    );
    assert_eq!(
        err("poke", json!({"target": "w1", "tags": ["a", 2]})),
        "Invalid parameter type for 'tags[1]', expected: string"
    );
    assert_eq!(
        err(
            "take-value",
            json!({"v": 1, "list": [{"x": 1}, {"x": false}]})
        ),
        "Invalid parameter type for 'list[1].x', expected: integer"
    );
}

#[test]
fn handles_are_resolved_before_the_command_runs() {
    let mut s = Server::new();
    let e =
        commands::dispatch(&mut s, "poke", Some(json!({"target": "nope"}))).expect_err("unknown");
    assert_eq!(
        e,
        QmpError::new(ErrorClass::DeviceNotFound, "Device 'nope' not found")
    );
    assert!(
        s.calls.lock().expect("lock").is_empty(),
        "method must not run"
    );
}

#[test]
fn unions_and_alternates() {
    let circle = json!({"kind": "circle", "name": "c", "radius": 1.5});
    assert_eq!(run("make-shape", circle.clone()), Ok(circle));
    let point = json!({"kind": "point", "name": "p"});
    assert_eq!(run("make-shape", point.clone()), Ok(point));
    assert_eq!(
        err("make-shape", json!({"kind": "square", "name": "s"})),
        "Parameter 'side' is missing"
    );
    assert_eq!(
        err(
            "make-shape",
            json!({"kind": "point", "name": "p", "radius": 1})
        ),
        "Parameter 'radius' is unexpected"
    );
    assert_eq!(
        err("make-shape", json!({"kind": "hexagon", "name": "h"})),
        "Parameter 'kind' does not accept value 'hexagon'"
    );
    for v in [
        json!(1),
        json!({"x": 1}),
        json!("cyan"),
        json!(true),
        json!(null),
    ] {
        assert_eq!(run("take-value", json!({ "v": v })), Ok(json!({})), "{v}");
    }
    assert_eq!(
        err("take-value", json!({"v": [1]})),
        "Invalid parameter type for 'v', expected: Value"
    );
    assert_eq!(
        err("take-value", json!({"v": "yellow"})),
        "Parameter 'v' does not accept value 'yellow'"
    );
}

#[test]
fn arguments_must_be_an_object_and_may_be_absent() {
    assert_eq!(
        commands::dispatch(&mut Server::new(), "ping", Some(json!([1])))
            .expect_err("array")
            .desc,
        "QMP input member 'arguments' must be an object"
    );
    assert_eq!(
        commands::dispatch(&mut Server::new(), "ping", None),
        Ok(json!({}))
    );
    assert_eq!(
        commands::dispatch(&mut Server::new(), "tree", None),
        Ok(json!({"value": 1, "left": {"value": 2, "kids": []}, "kids": []}))
    );
}

#[test]
fn unknown_commands_and_command_errors() {
    let e = run("nonexistent", json!({})).expect_err("unknown");
    assert_eq!(
        e,
        QmpError::new(
            ErrorClass::CommandNotFound,
            "The command nonexistent has not been found"
        )
    );
    assert_eq!(
        run("silent", json!({})),
        Err(QmpError::generic("failed on purpose"))
    );
    // gen: false commands are the monitor's business.
    assert_eq!(
        run("handled-by-monitor", json!({}))
            .expect_err("not generated")
            .class,
        ErrorClass::CommandNotFound
    );
    // Compiled out by its condition.
    assert!(commands::command_info("only-if-enabled").is_none());
}

#[test]
fn oob_routing_and_metadata() {
    let s = Server::new();
    assert_eq!(commands::dispatch_oob(&s, "ping", None), Ok(json!({})));
    assert_eq!(
        commands::dispatch_oob(&s, "ping-args", Some(json!({"word": "hi"}))),
        Ok(json!({"id": "hi", "done": true, "inners": []}))
    );
    assert_eq!(
        commands::dispatch_oob(&s, "poke", None),
        Err(QmpError::generic("The command poke does not support OOB"))
    );
    assert_eq!(
        commands::dispatch_oob(&s, "nope", None)
            .expect_err("unknown")
            .class,
        ErrorClass::CommandNotFound
    );
    // allow-oob commands also run in-band.
    assert_eq!(run("ping", json!({})), Ok(json!({})));
    let info = commands::command_info("ping").expect("ping");
    assert!(info.allow_oob && info.success_response);
    let silent = commands::command_info("silent").expect("silent");
    assert!(!silent.allow_oob && !silent.success_response);
    assert!(
        !commands::command_info("handled-by-monitor")
            .expect("known")
            .generated
    );
    assert_eq!(
        commands::command_info("tree").expect("tree").features,
        &["unstable"]
    );
}

#[test]
fn main_schema_dispatch() {
    use qapi::commands::{command_info, dispatch, dispatch_oob, COMMANDS};
    let events = common::EventQueue::default();
    let mut vm = common::vm::FakeVm::new(events.clone());
    assert_eq!(
        dispatch(&mut vm, "query-status", None),
        Ok(json!({"running": true, "singlestep": false, "status": "running"}))
    );
    assert_eq!(dispatch(&mut vm, "stop", Some(json!({}))), Ok(json!({})));
    assert_eq!(events.lock().expect("lock")[0]["event"], "STOP");
    assert_eq!(
        dispatch(
            &mut vm,
            "query-blockstats",
            Some(json!({"query-nodes": "yes"}))
        ),
        Err(QmpError::generic(
            "Invalid parameter type for 'query-nodes', expected: boolean"
        ))
    );
    assert_eq!(
        dispatch(&mut vm, "human-monitor-command", Some(json!({}))),
        Err(QmpError::generic("Parameter 'command-line' is missing"))
    );
    assert_eq!(
        dispatch(
            &mut vm,
            "human-monitor-command",
            Some(json!({"command-line": "info status"}))
        ),
        Ok(json!("VM status: paused\r\n"))
    );
    assert_eq!(dispatch(&mut vm, "query-name", None), Ok(json!({})));
    // query-status and query-name allow out-of-band execution (a deliberate extension over
    // QEMU); other commands do not.
    assert_eq!(
        dispatch_oob(&vm, "query-status", None).map(|v| v["status"].clone()),
        Ok(json!("paused"))
    );
    assert_eq!(
        dispatch_oob(&vm, "stop", None),
        Err(QmpError::generic("The command stop does not support OOB"))
    );
    let oob: Vec<&str> = COMMANDS
        .iter()
        .filter(|c| c.allow_oob)
        .map(|c| c.name)
        .collect();
    assert_eq!(
        oob,
        vec![
            "query-status",
            "query-name",
            "query-block",
            "yank",
            "query-yank",
            "query-migrate",
            "migrate-pause",
            "migrate-recover"
        ]
    );
    assert!(
        command_info("qmp_capabilities")
            .expect("known")
            .allow_preconfig
    );
}

#[test]
fn handles_in_canonical_form() {
    let r = run(
        "poke",
        json!({"target": {"__handle__": "Widget", "data": "w1"}}),
    )
    .expect("canonical form accepted");
    assert_eq!(r["id"], "w1");
    assert_eq!(
        err(
            "poke",
            json!({"target": {"__handle__": "Gadget", "data": "w1"}})
        ),
        "Invalid parameter type for 'target', expected: Widget handle"
    );
    let e = run(
        "poke",
        json!({"target": {"__handle__": "Widget", "data": "w9"}}),
    )
    .expect_err("unknown");
    assert_eq!(e.class, ErrorClass::DeviceNotFound);
}

#[test]
fn list_elements_have_no_local_name_like_qemu() {
    assert_eq!(
        err("take-value", json!({"v": 1, "list": [{"x": 1}, 5]})),
        "Invalid parameter type for 'list[1]', expected: object"
    );
    // qmp_capabilities is 'gen': false (the monitor negotiates), but its arguments are checked
    // with the generated descriptor, as any command's.
    assert_eq!(
        qapi::rt::check_arguments(
            &qapi::descriptors::D_q_obj_qmp_capabilities_arg,
            Some(json!({"enable": ["foo"]})),
            &|_, _| Ok(())
        ),
        Err(QmpError::generic(
            "Parameter 'null' does not accept value 'foo'"
        ))
    );
}
