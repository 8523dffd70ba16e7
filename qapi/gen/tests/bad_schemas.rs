// SPDX-License-Identifier: Apache-2.0
//! The bad-schema corpus: every `tests/bad/NAME.json` must be rejected with exactly the text in
//! `tests/bad/NAME.err` (which names file:line). Regenerate the `.err` files after a deliberate
//! change of messages with `QAPI_BLESS=1 cargo test -p qapi-gen --test bad_schemas`, and review
//! the diff.

use std::path::{Path, PathBuf};

fn corpus() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir("tests/bad")
        .expect("tests/bad exists")
        .map(|e| e.expect("readable dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_bad_schema_is_rejected_with_the_expected_message() {
    let bless = std::env::var_os("QAPI_BLESS").is_some();
    let mut failures = Vec::new();
    let files = corpus();
    assert!(files.len() >= 80, "corpus shrank to {}", files.len());
    for json in &files {
        let rel = Path::new("tests/bad").join(json.file_name().expect("file name"));
        let actual = match qapi_gen::Schema::load(&rel, &|_| false) {
            Ok(_) => format!("(accepted: {} should be rejected)", rel.display()),
            Err(e) => e.to_string(),
        };
        let err_path = json.with_extension("err");
        if bless {
            std::fs::write(&err_path, format!("{actual}\n")).expect("write .err");
            continue;
        }
        let expected = std::fs::read_to_string(&err_path).unwrap_or_default();
        if expected.trim_end() != actual {
            failures.push(format!(
                "{}:\n  expected: {}\n  actual:   {actual}",
                rel.display(),
                expected.trim_end()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} bad schema(s) gave unexpected errors (QAPI_BLESS=1 to regenerate):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_error_names_file_and_line() {
    for json in corpus() {
        let rel = Path::new("tests/bad").join(json.file_name().expect("file name"));
        let err = qapi_gen::Schema::load(&rel, &|_| false).expect_err("bad schema");
        let text = err.to_string();
        let prefix = format!("{}:", rel.display());
        assert!(
            text.lines().any(|l| l.starts_with(&prefix)
                && l[prefix.len()..].starts_with(|c: char| c.is_ascii_digit())),
            "{text}"
        );
    }
}
