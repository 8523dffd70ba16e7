// SPDX-License-Identifier: Apache-2.0
//! `query-qmp-schema`: valid SchemaInfo, every command/event/signal present, names masked,
//! references resolvable, and it decodes into (and re-encodes from) our own SchemaInfo type.

use std::collections::BTreeSet;
use std::path::Path;

use qapi_gen::model::DefKind;
use serde_json::Value;

const TEST_SCHEMA_JSON: &str = include_str!(concat!(env!("OUT_DIR"), "/test-qmp-schema.json"));

fn check_valid(json: &str) -> Vec<Value> {
    let entries: Vec<Value> = serde_json::from_str(json).expect("a JSON array");
    let mut names = BTreeSet::new();
    for e in &entries {
        let name = e["name"].as_str().expect("name");
        assert!(names.insert(name.to_string()), "duplicate entry {name}");
    }
    let known = |n: &str| names.contains(n);
    for e in &entries {
        let name = e["name"].as_str().expect("name");
        let meta = e["meta-type"].as_str().expect("meta-type");
        let refs: Vec<&str> = match meta {
            "builtin" => {
                let jt = e["json-type"].as_str().expect("json-type");
                assert!(["string", "number", "int", "boolean", "null", "value"].contains(&jt));
                vec![]
            }
            "enum" => {
                let values: Vec<&str> = e["values"]
                    .as_array()
                    .expect("values")
                    .iter()
                    .map(|v| v.as_str().expect("str"))
                    .collect();
                let members: Vec<&str> = e["members"]
                    .as_array()
                    .expect("members")
                    .iter()
                    .map(|m| m["name"].as_str().expect("name"))
                    .collect();
                assert_eq!(values, members);
                vec![]
            }
            "array" => {
                let elem = e["element-type"].as_str().expect("element-type");
                assert_eq!(name, format!("[{elem}]"));
                vec![elem]
            }
            "object" => {
                let mut r: Vec<&str> = e["members"]
                    .as_array()
                    .expect("members")
                    .iter()
                    .map(|m| {
                        if let Some(d) = m.get("default") {
                            assert!(d.is_null(), "default must be null");
                        }
                        m["type"].as_str().expect("type")
                    })
                    .collect();
                if let Some(vs) = e.get("variants") {
                    let tag = e["tag"].as_str().expect("tag with variants");
                    assert!(e["members"]
                        .as_array()
                        .expect("m")
                        .iter()
                        .any(|m| m["name"] == tag));
                    r.extend(
                        vs.as_array()
                            .expect("variants")
                            .iter()
                            .map(|v| v["type"].as_str().expect("type")),
                    );
                }
                r
            }
            "alternate" => e["members"]
                .as_array()
                .expect("members")
                .iter()
                .map(|m| m["type"].as_str().expect("type"))
                .collect(),
            "command" => {
                if let Some(oob) = e.get("allow-oob") {
                    assert_eq!(oob, &Value::Bool(true));
                }
                vec![
                    e["arg-type"].as_str().expect("arg"),
                    e["ret-type"].as_str().expect("ret"),
                ]
            }
            "event" => vec![e["arg-type"].as_str().expect("arg")],
            other => panic!("bad meta-type {other}"),
        };
        for r in refs {
            assert!(known(r), "{name} refers to missing type {r}");
        }
        if ["enum", "object", "alternate"].contains(&meta) {
            assert!(
                name.parse::<u32>().is_ok(),
                "type name {name} is not masked"
            );
        }
    }
    entries
}

fn entry_names(entries: &[Value], meta: &str) -> BTreeSet<String> {
    entries
        .iter()
        .filter(|e| e["meta-type"] == meta)
        .map(|e| e["name"].as_str().expect("name").to_string())
        .collect()
}

#[test]
fn main_schema_introspection_is_complete() {
    let entries = check_valid(qapi::QMP_SCHEMA_JSON);
    let schema = qapi_gen::Schema::load(
        Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../resources/qapi/qapi-schema.json"
        )),
        &|_| false,
    )
    .expect("valid");
    let mut commands = BTreeSet::new();
    let mut events = BTreeSet::new();
    for d in &schema.defs {
        match d.kind {
            DefKind::Command { .. } => {
                commands.insert(d.name.clone());
            }
            DefKind::Event { .. } | DefKind::Signal { .. } => {
                events.insert(d.name.clone());
            }
            _ => {}
        }
    }
    assert_eq!(entry_names(&entries, "command"), commands);
    assert_eq!(entry_names(&entries, "event"), events);
    assert!(
        events.contains("BLOCK_IO_ERROR"),
        "the signal appears as an event"
    );
    let hmp = entries
        .iter()
        .find(|e| e["name"] == "human-monitor-command")
        .expect("hmp");
    assert_eq!(hmp["ret-type"], "str");
    let status = entries
        .iter()
        .find(|e| e["name"] == "query-status")
        .expect("query-status");
    let ret = entries
        .iter()
        .find(|e| e["name"] == status["ret-type"])
        .expect("ret type");
    let members: Vec<(&str, &str)> = ret["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            (
                m["name"].as_str().expect("n"),
                m["type"].as_str().expect("t"),
            )
        })
        .collect();
    assert_eq!(members[0], ("running", "bool"));
    assert_eq!(members[1], ("singlestep", "bool"));
    assert_eq!(members[2].0, "status");
    // Sized integers show as int; the handle as its carrier type.
    assert!(!entries.iter().any(|e| e["name"] == "uint32"));
}

#[test]
fn introspection_decodes_into_schema_info_and_back() {
    let decoded = qapi::schema_info();
    let back = serde_json::to_value(decoded).expect("encodes");
    let orig: Value = serde_json::from_str(qapi::QMP_SCHEMA_JSON).expect("json");
    assert_eq!(back, orig);
}

#[test]
fn test_schema_introspection() {
    let entries = check_valid(TEST_SCHEMA_JSON);
    let ping = entries.iter().find(|e| e["name"] == "ping").expect("ping");
    assert_eq!(ping["allow-oob"], true);
    let tree = entries.iter().find(|e| e["name"] == "tree").expect("tree");
    assert_eq!(tree["features"], serde_json::json!(["unstable"]));
    assert!(!entries.iter().any(|e| e["name"] == "only-if-enabled"));
    let events = entry_names(&entries, "event");
    assert_eq!(
        events,
        ["TICK", "TOCK", "WIDGET_BROKE", "WIDGET_GONE"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    let shape_cmd = entries
        .iter()
        .find(|e| e["name"] == "make-shape")
        .expect("make-shape");
    let shape = entries
        .iter()
        .find(|e| e["name"] == shape_cmd["arg-type"])
        .expect("Shape");
    assert_eq!(shape["tag"], "kind");
    assert_eq!(shape["variants"].as_array().expect("variants").len(), 3);
    let poke = entries.iter().find(|e| e["name"] == "poke").expect("poke");
    let args = entries
        .iter()
        .find(|e| e["name"] == poke["arg-type"])
        .expect("args");
    let target = args["members"]
        .as_array()
        .expect("m")
        .iter()
        .find(|m| m["name"] == "target")
        .expect("target");
    assert_eq!(
        target["type"], "str",
        "handles appear as their carrier type"
    );
    let count = args["members"]
        .as_array()
        .expect("m")
        .iter()
        .find(|m| m["name"] == "count")
        .expect("count");
    assert_eq!(count["type"], "int");
    assert_eq!(count["default"], Value::Null);
}

/// The members of the object type returned (as an array) by `command`, as (name, type).
fn returned_members(entries: &[Value], command: &str) -> Vec<(String, String)> {
    let cmd = entries
        .iter()
        .find(|e| e["name"] == command)
        .expect("command");
    let array = entries
        .iter()
        .find(|e| e["name"] == cmd["ret-type"])
        .expect("array type");
    let elem = entries
        .iter()
        .find(|e| e["name"] == array["element-type"])
        .expect("element type");
    elem["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            (
                m["name"].as_str().expect("n").to_string(),
                m["type"].as_str().expect("t").to_string(),
            )
        })
        .collect()
}

#[test]
fn handle_typed_reply_members_introspect_as_str_as_in_qemu() {
    let entries = check_valid(qapi::QMP_SCHEMA_JSON);
    let ty = |members: &[(String, String)], name: &str| {
        members
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.clone())
            .expect("member")
    };
    let block = returned_members(&entries, "query-block");
    assert_eq!(ty(&block, "device"), "str");
    let stats = returned_members(&entries, "query-blockstats");
    assert_eq!(ty(&stats, "device"), "str");
    assert_eq!(ty(&stats, "node-name"), "str");
    // Neither handle type has an entry of its own.
    let names: Vec<&str> = entries.iter().filter_map(|e| e["name"].as_str()).collect();
    assert!(!names.contains(&"Blockdev") && !names.contains(&"Machine"));
    // The capabilities-mode commands are introspected like qmp_capabilities.
    for c in [
        "qmp_capabilities",
        "set-explicit-handles",
        "disconnect-default-signals",
    ] {
        assert!(names.contains(&c), "{c}");
    }
}
