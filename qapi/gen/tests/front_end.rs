// SPDX-License-Identifier: Apache-2.0
//! The front end on valid input: lexing details, includes, pragmas, documentation blocks.

use std::path::PathBuf;

use qapi_gen::parser::{parse_file, Value};

fn write_tree(name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qapi-gen-{name}-{}", std::process::id()));
    for (path, text) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, text).expect("write");
    }
    dir
}

#[test]
fn lexing_and_includes() {
    let dir = write_tree(
        "inc",
        &[
            (
                "root.json",
                "# a comment { not parsed\n\
                 { 'pragma': { 'doc-required': false } }\n\
                 { 'include': 'sub/a.json' }\n\
                 { 'include': 'sub/a.json' }\n\
                 {'struct':'Foo','data':{'path':'str'}}\t# trailing comment\n",
            ),
            (
                "sub/a.json",
                "{ 'include': 'b.json' }\n\
                 { 'enum': 'Slash', 'data': [ 'back\\\\slash' ] }\n",
            ),
            (
                "sub/b.json",
                "\n\n{ 'command': 'b-cmd', 'allow-oob': true }\n",
            ),
        ],
    );
    let parsed = parse_file(&dir.join("root.json")).expect("parses");
    assert_eq!(parsed.files.len(), 3, "each file read once");
    let names: Vec<(String, usize)> = parsed
        .exprs
        .iter()
        .map(|e| {
            let (_, v) = &e.value[0];
            (v.as_str().expect("name").to_string(), e.info.line)
        })
        .collect();
    assert_eq!(
        names,
        [
            ("b-cmd".to_string(), 3),
            ("Slash".to_string(), 2),
            ("Foo".to_string(), 5)
        ]
    );
    assert!(parsed.exprs[0].info.file.ends_with("sub/b.json"));
    assert_eq!(
        parsed.exprs[0].value[1],
        ("allow-oob".to_string(), Value::Bool(true))
    );
    assert_eq!(
        parsed.exprs[1].value[1].1,
        Value::List(vec![Value::Str("back\\slash".into())])
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn documentation_sections() {
    let dir = write_tree(
        "doc",
        &[(
            "s.json",
            "##\n\
             # = Title\n\
             #\n\
             # Intro text.\n\
             ##\n\
             \n\
             ##\n\
             # @do-it:\n\
             #\n\
             # Does it.\n\
             # Really.\n\
             #\n\
             # @arg: first line\n\
             #     second line\n\
             #\n\
             # Features:\n\
             # @deprecated: do not use\n\
             #\n\
             # Returns: nothing\n\
             #\n\
             # Since: 1.0\n\
             #\n\
             # Example:\n\
             #\n\
             # -> { \"execute\": \"do-it\" }\n\
             ##\n\
             { 'command': 'do-it', 'data': { 'arg': 'int' }, 'features': [ 'deprecated' ] }\n",
        )],
    );
    let schema = qapi_gen::Schema::load(&dir.join("s.json"), &|_| false).expect("valid");
    let def = schema.get("do-it").expect("command");
    let doc = def.doc.as_ref().expect("doc");
    assert_eq!(doc.body, "Does it.\nReally.");
    assert_eq!(doc.arg("arg"), Some("first line\nsecond line"));
    assert_eq!(
        doc.features,
        [("deprecated".to_string(), "do not use".to_string())]
    );
    assert_eq!(doc.section("Returns"), Some("nothing"));
    assert_eq!(doc.section("Since"), Some("1.0"));
    assert_eq!(
        doc.section("Example"),
        Some("-> { \"execute\": \"do-it\" }")
    );
    assert_eq!(schema.free_docs.len(), 1);
    assert_eq!(schema.free_docs[0].1.body, "= Title\n\nIntro text.");
    let (_, generated) = qapi_gen::generate(&dir.join("s.json")).expect("generates");
    assert!(generated.markdown.contains("## Title"));
    assert!(generated.markdown.contains("- `deprecated` — do not use"));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn syntax_errors_report_columns_with_tabs_expanded() {
    let dir = write_tree(
        "col",
        &[("t.json", "{ 'enum': 'Foo',\n\t'data': [ 'a' ] } ?\n")],
    );
    let err = parse_file(&dir.join("t.json")).expect_err("stray");
    assert!(err.to_string().ends_with("t.json:2:27: stray '?'"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_kept_definition_cannot_use_one_left_out_by_its_condition() {
    let dir = write_tree(
        "cond",
        &[(
            "c.json",
            "{ 'struct': 'Opt', 'data': {}, 'if': 'CONFIG_OPT' }\n\
             { 'struct': 'User', 'data': { 'o': 'Opt' } }\n",
        )],
    );
    let path = dir.join("c.json");
    qapi_gen::Schema::load(&path, &|c| c == "CONFIG_OPT").expect("valid when enabled");
    let err = qapi_gen::Schema::load(&path, &|_| false).expect_err("dangling");
    assert!(
        err.to_string().ends_with(
            "c.json:2: struct type 'User' uses type 'Opt', which its own 'if' condition leaves out"
        ),
        "{err}"
    );
    std::fs::remove_dir_all(dir).ok();
}
