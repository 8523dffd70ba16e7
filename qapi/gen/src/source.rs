// SPDX-License-Identifier: Apache-2.0
//! Source locations attached to every expression, so errors can name `file:line`.

use std::fmt;

/// Where something was read from: a schema file, a line, and the definition being checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceInfo {
    /// The schema file name as it was given (root) or joined from its `include`.
    pub file: String,
    /// 1-based line number.
    pub line: usize,
    /// The definition (`meta`, `name`) this location belongs to, once known.
    pub defn: Option<(String, String)>,
}

impl SourceInfo {
    /// A location at `line` of `file`, outside any definition.
    pub fn new(file: impl Into<String>, line: usize) -> Self {
        SourceInfo {
            file: file.into(),
            line,
            defn: None,
        }
    }

    /// The same location, marked as belonging to definition `name` of kind `meta`.
    pub fn in_defn(&self, meta: &str, name: &str) -> Self {
        SourceInfo {
            defn: Some((meta.to_string(), name.to_string())),
            ..self.clone()
        }
    }

    /// The name of the definition this location belongs to, if any.
    pub fn defn_name(&self) -> Option<&str> {
        self.defn.as_ref().map(|(_, n)| n.as_str())
    }
}

impl fmt::Display for SourceInfo {
    /// Formats as QEMU does: an `In <meta> '<name>':` context line when inside a definition,
    /// then `file:line`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((meta, name)) = &self.defn {
            writeln!(f, "{}: In {} '{}':", self.file, meta, name)?;
        }
        write!(f, "{}:{}", self.file, self.line)
    }
}
