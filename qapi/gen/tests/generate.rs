// SPDX-License-Identifier: Apache-2.0
//! Generation over the real and the test schema: determinism, conditions, documentation.

use std::path::Path;

use qapi_gen::model::DefKind;

const MAIN: &str = "../../resources/qapi/qapi-schema.json";
const TEST: &str = "../tests/schema/qapi-test.json";

#[test]
fn generation_is_deterministic() {
    for path in [MAIN, TEST] {
        let (_, a) = qapi_gen::generate(Path::new(path)).expect("valid schema");
        let (_, b) = qapi_gen::generate(Path::new(path)).expect("valid schema");
        assert_eq!(a, b, "{path}");
    }
}

#[test]
fn main_schema_has_the_required_interface() {
    let (schema, _) = qapi_gen::generate(Path::new(MAIN)).expect("valid schema");
    let names = |pred: fn(&DefKind) -> bool| -> Vec<&str> {
        schema
            .defs
            .iter()
            .filter(|d| pred(&d.kind))
            .map(|d| d.name.as_str())
            .collect()
    };
    let commands = names(|k| matches!(k, DefKind::Command { .. }));
    assert_eq!(
        commands,
        [
            "qmp_capabilities",
            "query-version",
            "query-commands",
            "query-qmp-schema",
            "query-status",
            "stop",
            "cont",
            "system_reset",
            "system_powerdown",
            "quit",
            "query-kvm",
            "query-name",
            "query-cpus-fast",
            "query-block",
            "query-blockstats",
            "human-monitor-command",
        ]
    );
    let events = names(|k| matches!(k, DefKind::Event { .. }));
    assert_eq!(events, ["SHUTDOWN", "POWERDOWN", "RESET", "STOP", "RESUME"]);
    let signals = names(|k| matches!(k, DefKind::Signal { .. }));
    assert_eq!(signals, ["BLOCK_IO_ERROR"]);
    let sig = schema.get("BLOCK_IO_ERROR").expect("signal");
    assert!(matches!(&sig.kind, DefKind::Signal { owner, .. } if owner == "Blockdev"));
}

#[test]
fn every_main_schema_definition_and_member_is_documented() {
    let (schema, _) = qapi_gen::generate(Path::new(MAIN)).expect("valid schema");
    for def in schema.defs.iter().filter(|d| !d.implicit) {
        let doc = def
            .doc
            .as_ref()
            .unwrap_or_else(|| panic!("{} undocumented", def.name));
        assert!(!doc.body.is_empty(), "{} has no description", def.name);
        let members: Vec<String> = match &def.kind {
            DefKind::Enum { values } => values.iter().map(|v| v.name.clone()).collect(),
            DefKind::Struct { members, .. } => members.iter().map(|m| m.name.clone()).collect(),
            DefKind::Union { base, .. } => schema
                .object_members(base)
                .into_iter()
                .map(|m| m.name)
                .collect(),
            DefKind::Command { data, .. }
            | DefKind::Event { data, .. }
            | DefKind::Signal { data, .. } => data
                .as_deref()
                .map(|d| schema.object_members(d))
                .unwrap_or_default()
                .into_iter()
                .map(|m| m.name)
                .collect(),
            _ => Vec::new(),
        };
        for m in members {
            assert!(
                doc.arg(&m).is_some(),
                "{}: member {m} undocumented",
                def.name
            );
        }
        if matches!(def.kind, DefKind::Command { .. }) {
            assert!(doc.section("Returns").is_some(), "{}: no Returns", def.name);
        }
        assert!(doc.section("Since").is_some(), "{}: no Since", def.name);
    }
}

#[test]
fn conditions_drop_definitions_members_and_values() {
    let off = qapi_gen::Schema::load(Path::new(TEST), &|_| false).expect("valid");
    assert!(off.get("only-if-enabled").is_none());
    assert!(off
        .object_members("Inner")
        .iter()
        .all(|m| m.name != "hidden"));
    let on = qapi_gen::Schema::load(Path::new(TEST), &|c| c == "CONFIG_NEVER").expect("valid");
    assert!(on.get("only-if-enabled").is_some());
    assert!(on
        .object_members("Inner")
        .iter()
        .any(|m| m.name == "hidden"));
    let DefKind::Enum { values } = &on.get("Color").expect("Color").kind else {
        panic!("Color is an enum")
    };
    assert_eq!(values.len(), 4);
}

#[test]
fn union_branches_cover_every_tag_value() {
    let s = qapi_gen::Schema::load(Path::new(TEST), &|_| false).expect("valid");
    let DefKind::Union { branches, .. } = &s.get("Shape").expect("Shape").kind else {
        panic!("Shape is a union")
    };
    let cases: Vec<(&str, &str)> = branches
        .iter()
        .map(|b| (b.name.as_str(), b.ty.as_str()))
        .collect();
    assert_eq!(
        cases,
        [
            ("circle", "Circle"),
            ("square", "Square"),
            ("point", "q_empty")
        ]
    );
}

#[test]
fn documentation_blocks_are_parsed() {
    let s = qapi_gen::Schema::load(Path::new(MAIN), &|_| false).expect("valid");
    let doc = s
        .get("query-blockstats")
        .and_then(|d| d.doc.as_ref())
        .expect("documented");
    assert_eq!(doc.symbol.as_deref(), Some("query-blockstats"));
    assert_eq!(doc.body, "Report I/O statistics.");
    assert!(doc
        .arg("query-nodes")
        .expect("documented")
        .starts_with("if true, report every named node"));
    assert_eq!(doc.section("Since"), Some("0.14"));
    assert!(doc
        .section("Example")
        .expect("example")
        .contains("query-blockstats"));
    assert!(s
        .free_docs
        .iter()
        .any(|(_, d)| d.body.starts_with("== Block devices")));
}
