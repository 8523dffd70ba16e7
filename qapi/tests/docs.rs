// SPDX-License-Identifier: Apache-2.0
//! The committed `docs/qmp-reference.md` must match the schema, and the build's generated
//! files must equal a fresh generation (determinism).
//!
//! After changing the schema, regenerate the reference with
//! `QAPI_BLESS=1 cargo test -p qapi --test docs`.

use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn committed_reference_is_up_to_date() {
    let path = root().join("docs/qmp-reference.md");
    if std::env::var_os("QAPI_BLESS").is_some() {
        std::fs::write(&path, qapi::QMP_REFERENCE_MD).expect("write docs/qmp-reference.md");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == qapi::QMP_REFERENCE_MD,
        "docs/qmp-reference.md is stale; regenerate it with \
         `QAPI_BLESS=1 cargo test -p qapi --test docs` and commit the result"
    );
}

#[test]
fn build_output_equals_a_fresh_generation() {
    let schema = root().join("resources/qapi/qapi-schema.json");
    let (_, fresh) = qapi_gen::generate(&schema.canonicalize().expect("exists")).expect("valid");
    assert!(fresh.rust == include_str!(concat!(env!("OUT_DIR"), "/qmp.rs")));
    assert!(fresh.introspection == qapi::QMP_SCHEMA_JSON);
    assert!(fresh.markdown == qapi::QMP_REFERENCE_MD);
}
