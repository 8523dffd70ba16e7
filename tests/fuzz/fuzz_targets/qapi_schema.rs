// SPDX-License-Identifier: Apache-2.0
//! The QAPI schema front end (`qapi_gen`: lexer, parser with includes, pragmas and doc
//! blocks, per-expression and whole-schema checks) and, on schemas it accepts, the three
//! generators (Rust, introspection, Markdown), on arbitrary schema text.
//!
//! The input is the root schema file; it sits in a directory holding the project's schema
//! files (`resources/qapi/*.json`), so its `include`s of them work. (Includes that leave that
//! directory, absolute or with `..`, are not tried: they would read arbitrary host files.)
//!
//! Asserts, beyond not panicking:
//! - every parse or semantic error names `file:line` of a file that was read, with a line that
//!   exists in it;
//! - the parser's expressions, printed back in the schema dialect, parse to the same
//!   expressions;
//! - on an accepted schema, the introspection is a JSON array of entries with distinct names
//!   and a `meta-type`, every type an entry names is an entry, and a union's tag is one of
//!   its members; the Rust generator either succeeds or names two clashing names.

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use qapi_gen::parser::{parse_file, Value};
use qapi_gen::{introspect, markdown, rust, Error, Schema};

/// The directory of the fuzzed schema, with the project's schema files beside it.
fn dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vmm-fuzz-qapi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let resources = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../resources/qapi");
        for e in std::fs::read_dir(&resources).expect("resources/qapi") {
            let p = e.expect("entry").path();
            std::fs::copy(&p, dir.join(p.file_name().expect("name"))).expect("copy");
        }
        dir
    })
}

/// Whether some `include` of `text` could leave the directory.
fn escapes(text: &str) -> bool {
    text.match_indices("'include'").any(|(i, m)| {
        let rest = text[i + m.len()..].trim_start();
        let Some(rest) = rest.strip_prefix(':') else {
            return false;
        };
        let Some(rest) = rest.trim_start().strip_prefix('\'') else {
            return false;
        };
        let name = rest.split('\'').next().unwrap_or("");
        name.starts_with('/') || name.contains("..")
    })
}

/// Prints a value in the schema dialect.
fn print(v: &Value, out: &mut String) {
    match v {
        Value::Str(s) => {
            out.push('\'');
            out.push_str(&s.replace('\\', "\\\\"));
            out.push('\'');
        }
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::List(l) => {
            out.push('[');
            for (i, v) in l.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                print(v, out);
            }
            out.push(']');
        }
        Value::Dict(d) => {
            out.push('{');
            for (i, (k, v)) in d.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                print(&Value::Str(k.clone()), out);
                out.push_str(": ");
                print(v, out);
            }
            out.push('}');
        }
    }
}

/// Asserts that `err` names `file:line` of a file that was read.
fn check_location(err: &Error, files: &[(String, usize)]) {
    let text = err.to_string();
    let named = text.lines().any(|l| {
        files.iter().any(|(f, lines)| {
            let Some(rest) = l.strip_prefix(f.as_str()).and_then(|r| r.strip_prefix(':')) else {
                return false;
            };
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits
                .parse::<usize>()
                .is_ok_and(|n| n >= 1 && n <= lines + 1)
        })
    });
    assert!(named, "error without file:line: {text}");
}

/// Every file the root can read (itself and the resources), with its line count.
fn files(root: &Path, text: &str) -> Vec<(String, usize)> {
    static RESOURCES: OnceLock<Vec<(String, usize)>> = OnceLock::new();
    let resources = RESOURCES.get_or_init(|| {
        std::fs::read_dir(dir())
            .expect("dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .map(|p| {
                let n = std::fs::read_to_string(&p).map_or(0, |t| t.lines().count());
                (p.display().to_string(), n)
            })
            .collect()
    });
    let mut v = vec![(root.display().to_string(), text.lines().count())];
    v.extend(resources.iter().cloned());
    v
}

/// Checks the `query-qmp-schema` value: entries with distinct names and a meta-type, and
/// every type an entry refers to is an entry; a union's tag is one of its members.
fn check_introspection(text: &str) {
    use serde_json::Value as J;
    let intro: J = serde_json::from_str(text).expect("introspection is JSON");
    let entries = intro.as_array().expect("introspection is an array");
    let mut names = std::collections::BTreeSet::new();
    for e in entries {
        let name = e["name"].as_str().unwrap_or_else(|| panic!("no name: {e}"));
        assert!(e["meta-type"].is_string(), "no meta-type: {e}");
        assert!(names.insert(name), "two entries named {name}");
    }
    let known = |t: &J, e: &J| {
        let t = t
            .as_str()
            .unwrap_or_else(|| panic!("a type that is not a name in {e}"));
        assert!(names.contains(t), "{t} is not an entry (in {e})");
    };
    for e in entries {
        for key in ["arg-type", "ret-type", "element-type"] {
            if let Some(t) = e.get(key) {
                known(t, e);
            }
        }
        for list in ["members", "variants"] {
            for m in e.get(list).and_then(J::as_array).into_iter().flatten() {
                if let Some(t) = m.get("type") {
                    known(t, e);
                }
            }
        }
        if let Some(tag) = e.get("tag") {
            let members = e["members"].as_array().expect("members");
            assert!(
                members.iter().any(|m| m["name"] == *tag),
                "tag {tag} not a member of {e}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if escapes(text) {
        return;
    }
    let root = dir().join("fuzz.schema");
    std::fs::write(&root, text).expect("write schema");
    let parsed = match parse_file(&root) {
        Ok(p) => p,
        Err(e) => {
            let e = Error::from(e);
            check_location(&e, &files(&root, text));
            return;
        }
    };

    // The expressions survive printing and parsing again.
    let mut printed = String::new();
    for e in &parsed.exprs {
        print(&Value::Dict(e.value.clone()), &mut printed);
        printed.push('\n');
    }
    let again_path = dir().join("printed.json.out");
    std::fs::write(&again_path, &printed).expect("write printed");
    let again = parse_file(&again_path).expect("printed expressions parse");
    let values = |p: &qapi_gen::parser::Parsed| -> Vec<Vec<(String, Value)>> {
        p.exprs.iter().map(|e| e.value.clone()).collect()
    };
    assert_eq!(
        values(&again),
        values(&parsed),
        "printing changed the expressions"
    );

    // Conditions are all off, or (for inputs of odd length) all on.
    let all_on = data.len() % 2 == 1;
    let schema = match Schema::from_parsed(parsed, &|_| all_on) {
        Ok(s) => s,
        Err(e) => {
            check_location(&Error::from(e), &files(&root, text));
            return;
        }
    };
    check_introspection(&introspect::generate(&schema));
    let _ = markdown::generate(&schema);
    if let Err(e) = rust::generate(&schema) {
        assert!(e.first != e.second, "a name clashes with itself: {e}");
    }
});
