// SPDX-License-Identifier: Apache-2.0
//! Generation over the real and the test schema: determinism, conditions, documentation.

use std::convert::Infallible;
use std::path::Path;

use qapi_gen::doc::Doc;
use qapi_gen::model::{Branch, DefKind, Definition, EnumValue, Member, TypeRef};
use qapi_gen::schema::{CommandFlags, Visitor};
use qapi_gen::Schema;

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
            "set-explicit-handles",
            "disconnect-default-signals",
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
            "query-target",
            "query-machines",
            "query-block",
            "block_set_io_throttle",
            "query-blockstats",
            "blockdev-inject-error",
            "blockdev-inject-error-remove",
            "query-blockdev-inject-errors",
            "query-named-block-nodes",
            "blockdev-add",
            "blockdev-del",
            "yank",
            "query-yank",
            "query-chardev",
            "qom-list",
            "qom-list-types",
            "device-list-properties",
            "qom-list-properties",
            "query-migrate-capabilities",
            "migrate-set-capabilities",
            "query-migrate",
            "migrate-set-parameters",
            "query-migrate-parameters",
            "migrate",
            "migrate-incoming",
            "migrate_cancel",
            "migrate-start-postcopy",
            "migrate-pause",
            "migrate-recover",
            "query-jobs",
            "human-monitor-command",
            "getfd",
            "closefd",
            "query-command-line-options",
        ]
    );
    let events = names(|k| matches!(k, DefKind::Event { .. }));
    assert_eq!(
        events,
        [
            "SHUTDOWN",
            "POWERDOWN",
            "RESET",
            "STOP",
            "RESUME",
            "MIGRATION",
            "MIGRATION_PASS"
        ]
    );
    let signals = names(|k| matches!(k, DefKind::Signal { .. }));
    assert_eq!(signals, ["BLOCK_IO_ERROR"]);
    let sig = schema.get("BLOCK_IO_ERROR").expect("signal");
    assert!(matches!(&sig.kind, DefKind::Signal { owner, .. } if owner == "Blockdev"));
    let handles = names(|k| matches!(k, DefKind::Handle { .. }));
    assert_eq!(handles, ["Machine", "Blockdev"]);
    let owner = schema.event_owner.as_ref().expect("pragma event-owner");
    assert_eq!(
        (owner.handle.as_str(), owner.data.as_str()),
        ("Machine", "/machine")
    );
    // A member's feature, documented in its struct's Features section as QEMU does.
    let throttle = schema.get("BlockIOThrottle").expect("BlockIOThrottle");
    let DefKind::Struct { members, .. } = &throttle.kind else {
        panic!("BlockIOThrottle is not a struct");
    };
    let features: Vec<(&str, Vec<&str>)> = members
        .iter()
        .filter(|m| !m.features.is_empty())
        .map(|m| {
            let f = m.features.iter().map(|f| f.name.as_str()).collect();
            (m.name.as_str(), f)
        })
        .collect();
    assert_eq!(features, [("device", vec!["deprecated"])]);
    assert!(throttle.features.is_empty());
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
            // A boxed command's arguments are documented with their type.
            DefKind::Command { boxed: true, .. } => Vec::new(),
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

/// Records which visitor method saw which definition.
#[derive(Default)]
struct Recorder {
    seen: Vec<String>,
    free_docs: usize,
    begun: bool,
    ended: bool,
}

impl Recorder {
    fn saw(&mut self, what: &str, def: &Definition) -> Result<(), Infallible> {
        assert!(self.begun && !self.ended, "{} outside begin/end", def.name);
        self.seen.push(format!("{what} {}", def.name));
        Ok(())
    }
}

impl<'s> Visitor<'s> for Recorder {
    fn visit_begin(&mut self, _schema: &'s Schema) -> Result<(), Infallible> {
        self.begun = true;
        Ok(())
    }

    fn visit_end(&mut self) -> Result<(), Infallible> {
        self.ended = true;
        Ok(())
    }

    fn visit_free_doc(&mut self, _doc: &'s Doc) -> Result<(), Infallible> {
        self.free_docs += 1;
        Ok(())
    }

    fn visit_enum(&mut self, def: &'s Definition, _: &'s [EnumValue]) -> Result<(), Infallible> {
        self.saw("enum", def)
    }

    fn visit_object(
        &mut self,
        def: &'s Definition,
        _: Option<&'s str>,
        _: &'s [Member],
    ) -> Result<(), Infallible> {
        self.saw("struct", def)
    }

    fn visit_union(
        &mut self,
        def: &'s Definition,
        _: &'s str,
        _: &'s str,
        _: &'s [Branch],
    ) -> Result<(), Infallible> {
        self.saw("union", def)
    }

    fn visit_alternate(&mut self, def: &'s Definition, _: &'s [Branch]) -> Result<(), Infallible> {
        self.saw("alternate", def)
    }

    fn visit_command(
        &mut self,
        def: &'s Definition,
        _: Option<&'s str>,
        _: Option<&'s TypeRef>,
        _: CommandFlags,
    ) -> Result<(), Infallible> {
        self.saw("command", def)
    }

    fn visit_event(
        &mut self,
        def: &'s Definition,
        _: Option<&'s str>,
        _: bool,
    ) -> Result<(), Infallible> {
        self.saw("event", def)
    }

    fn visit_handle(&mut self, def: &'s Definition, _: &'s str) -> Result<(), Infallible> {
        self.saw("handle", def)
    }

    fn visit_signal(
        &mut self,
        def: &'s Definition,
        _: &'s str,
        _: Option<&'s str>,
        _: bool,
    ) -> Result<(), Infallible> {
        self.saw("signal", def)
    }
}

#[test]
fn the_visitor_walks_every_definition_once_in_order() {
    for path in [MAIN, TEST] {
        let schema = Schema::load(Path::new(path), &|_| false).expect("valid");
        let mut rec = Recorder::default();
        let Ok(()) = schema.visit(&mut rec);
        assert!(rec.begun && rec.ended, "{path}");
        let expected: Vec<String> = schema
            .defs
            .iter()
            .map(|d| format!("{} {}", d.meta, d.name))
            .collect();
        assert_eq!(rec.seen, expected, "{path}");
        assert_eq!(rec.free_docs, schema.free_docs.len(), "{path}");
    }
}
