// SPDX-License-Identifier: Apache-2.0
//! Error types shared by the front end stages and the top-level error of the crate.

use crate::source::SourceInfo;

/// A semantic error in a syntactically valid schema (QEMU's `QAPISemError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{info}: {msg}")]
pub struct SemError {
    /// Where, including the definition being checked.
    pub info: SourceInfo,
    /// What is wrong.
    pub msg: String,
}

impl SemError {
    /// An error at `info`.
    pub fn new(info: &SourceInfo, msg: impl Into<String>) -> Self {
        SemError {
            info: info.clone(),
            msg: msg.into(),
        }
    }
}

/// Any error from reading, checking or generating a schema.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The schema source could not be read or parsed.
    #[error(transparent)]
    Parse(#[from] crate::parser::ParseError),
    /// The schema is well-formed but invalid.
    #[error(transparent)]
    Semantic(#[from] SemError),
    /// The schema is valid QAPI but cannot be mapped to Rust.
    #[error(transparent)]
    Generate(#[from] crate::rust::ident::NamingError),
}
