// SPDX-License-Identifier: Apache-2.0
//! Generates the QMP interface from `resources/qapi/qapi-schema.json` into `OUT_DIR`:
//! `qmp.rs` (Rust), `qmp-schema.json` (introspection) and `qmp-reference.md` (docs). The test
//! schema `tests/schema/qapi-test.json` is generated the same way for the tests.

use std::path::{Path, PathBuf};

fn generate(schema: &Path, out_dir: &Path, prefix: &str) {
    let (parsed, generated) = match qapi_gen::generate(schema) {
        Ok(g) => g,
        Err(e) => panic!("invalid QAPI schema:\n{e}"),
    };
    for f in &parsed.files {
        println!("cargo::rerun-if-changed={}", f.display());
    }
    let write = |name: &str, text: &str| {
        let path = out_dir.join(format!("{prefix}{name}"));
        std::fs::write(&path, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    };
    write("qmp.rs", &generated.rust);
    write("qmp-schema.json", &generated.introspection);
    write("qmp-reference.md", &generated.markdown);
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    let root = manifest
        .join("..")
        .canonicalize()
        .expect("workspace root exists");
    let schema = root.join("resources/qapi/qapi-schema.json");
    println!("cargo::rerun-if-changed={}", schema.display());
    generate(&schema, &out_dir, "");
    let test_schema = manifest.join("tests/schema/qapi-test.json");
    println!("cargo::rerun-if-changed={}", test_schema.display());
    generate(&test_schema, &out_dir, "test-");
}
