// SPDX-License-Identifier: Apache-2.0
//! QAPI schema front end and code generators.
//!
//! The front end reads QEMU's schema dialect (single-quoted JSON with `#` comments, `##`
//! documentation blocks, `include` and `pragma` directives) plus two extensions, `handle` and
//! `signal`, and checks it as strictly as QEMU's `scripts/qapi`. Every error names
//! `file:line`. The backends produce Rust code ([`rust`]), the `query-qmp-schema` value
//! ([`introspect`]) and a Markdown reference ([`markdown`]).
//!
//! Stages: [`lexer`] → [`parser`] (with [`doc`]) → [`expr`] (per-expression checks, one per
//! metatype, with the [`schema_names`] rules) → [`schema`] (whole-schema checks, the
//! [`model`]) → generators. Every generator is a [`schema::Visitor`] driven by
//! [`Schema::visit`]; the Rust ones write through an indenting code writer and take Rust
//! identifiers from [`rust::ident`].

pub mod doc;
mod emit;
pub mod error;
pub mod expr;
pub mod introspect;
pub mod lexer;
pub mod markdown;
pub mod model;
pub mod parser;
pub mod rust;
pub mod schema;
pub mod schema_names;
pub mod source;

use std::path::Path;

pub use error::Error;
pub use schema::Schema;

/// Everything generated from one schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// Rust source (modules `types`, `descriptors`, `commands`, `events`, `client`).
    pub rust: String,
    /// The `query-qmp-schema` value as compact JSON.
    pub introspection: String,
    /// The Markdown reference.
    pub markdown: String,
}

/// Loads the schema rooted at `path` (no `if` condition enabled) and generates everything.
pub fn generate(path: &Path) -> Result<(Schema, Generated), Error> {
    generate_with(path, &|_| false)
}

/// Like [`generate`], with `enabled` deciding which `if` conditions are true.
pub fn generate_with(
    path: &Path,
    enabled: &dyn Fn(&str) -> bool,
) -> Result<(Schema, Generated), Error> {
    let schema = Schema::load(path, enabled)?;
    let rust = rust::generate(&schema)?;
    let generated = Generated {
        rust,
        introspection: introspect::generate(&schema),
        markdown: markdown::generate(&schema),
    };
    Ok((schema, generated))
}
