// SPDX-License-Identifier: Apache-2.0
//! Rust identifiers for schema names (`camel`, `snake`, `type_name`), with clash detection.

use std::collections::BTreeMap;

/// A schema that is valid QAPI but whose names cannot be mapped to distinct Rust identifiers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Schema names '{first}' and '{second}' both map to the Rust {what} '{ident}'; rename one of them")]
pub struct NamingError {
    /// What kind of identifier (type, field, variant, method).
    pub what: &'static str,
    /// The Rust identifier.
    pub ident: String,
    /// The first schema name.
    pub first: String,
    /// The second schema name.
    pub second: String,
}

const KEYWORDS: &[&str] = &[
    "as", "break", "const", "continue", "crate", "else", "enum", "extern", "false", "fn", "for",
    "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref", "return",
    "self", "Self", "static", "struct", "super", "trait", "true", "type", "unsafe", "use", "where",
    "while", "async", "await", "dyn", "abstract", "become", "box", "do", "final", "macro",
    "override", "priv", "typeof", "unsized", "virtual", "yield", "try", "gen",
];

/// Upper camel case: `query-block` → `QueryBlock`, `BLOCK_IO_ERROR` → `BlockIoError`,
/// `QMPCapability` → `QMPCapability`.
pub fn camel(name: &str) -> String {
    let all_upper = !name.chars().any(|c| c.is_ascii_lowercase());
    let mut out = String::new();
    for part in name.split(['-', '_', '.']).filter(|p| !p.is_empty()) {
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            out.push(first.to_ascii_uppercase());
            if all_upper {
                out.extend(chars.map(|c| c.to_ascii_lowercase()));
            } else {
                out.extend(chars);
            }
        }
    }
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, 'V');
    }
    out
}

/// Snake case for fields, parameters and methods: `node-name` → `node_name`, `type` → `r#type`.
pub fn snake(name: &str) -> String {
    let mut out = String::new();
    let mut prev_lower = false;
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            if prev_lower {
                out.push('_');
            }
            prev_lower = false;
            out.push(c.to_ascii_lowercase());
            continue;
        }
        prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else {
            out.push('_');
        }
    }
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    if KEYWORDS.contains(&out.as_str()) {
        if matches!(out.as_str(), "self" | "Self" | "super" | "crate") {
            out.push('_');
        } else {
            out.insert_str(0, "r#");
        }
    }
    out
}

/// The Rust type name for a schema type name, including implicit types.
pub fn type_name(name: &str) -> String {
    if name == crate::model::EMPTY_OBJECT {
        return "Empty".to_string();
    }
    if let Some(rest) = name.strip_prefix("q_obj_") {
        if let Some(owner) = rest.strip_suffix("-arg") {
            return format!("{}Arg", camel(owner));
        }
        if let Some(owner) = rest.strip_suffix("-base") {
            return format!("{}Base", camel(owner));
        }
    }
    camel(name)
}

/// Records schema-name → identifier mappings and reports the first clash.
#[derive(Debug, Default)]
pub struct Namespace {
    what: &'static str,
    seen: BTreeMap<String, String>,
}

impl Namespace {
    /// A namespace for identifiers of the given kind.
    pub fn new(what: &'static str) -> Self {
        Namespace {
            what,
            seen: BTreeMap::new(),
        }
    }

    /// Claims `ident` for `schema_name`.
    pub fn claim(&mut self, schema_name: &str, ident: &str) -> Result<(), NamingError> {
        if let Some(prev) = self.seen.get(ident) {
            if prev != schema_name {
                return Err(NamingError {
                    what: self.what,
                    ident: ident.to_string(),
                    first: prev.clone(),
                    second: schema_name.to_string(),
                });
            }
        }
        self.seen.insert(ident.to_string(), schema_name.to_string());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_rust_identifiers() {
        assert_eq!(camel("query-block"), "QueryBlock");
        assert_eq!(camel("BLOCK_IO_ERROR"), "BlockIoError");
        assert_eq!(camel("QMPCapability"), "QMPCapability");
        assert_eq!(camel("x86_64"), "X8664");
        assert_eq!(camel("1"), "V1");
        assert_eq!(snake("node-name"), "node_name");
        assert_eq!(snake("type"), "r#type");
        assert_eq!(snake("self"), "self_");
        assert_eq!(snake("BLOCK_IO_ERROR"), "block_io_error");
        assert_eq!(snake("QMPCapability"), "qmpcapability");
        assert_eq!(snake("Blockdev"), "blockdev");
        assert_eq!(snake("BlockDev"), "block_dev");
        assert_eq!(
            type_name("q_obj_query-blockstats-arg"),
            "QueryBlockstatsArg"
        );
        assert_eq!(type_name("q_obj_Shape-base"), "ShapeBase");
        assert_eq!(type_name("q_empty"), "Empty");
    }

    #[test]
    fn clashes_are_reported() {
        let mut ns = Namespace::new("type");
        ns.claim("Foo-bar", "FooBar").expect("first");
        ns.claim("Foo-bar", "FooBar").expect("same name again");
        let err = ns.claim("FooBar", "FooBar").expect_err("clash");
        assert_eq!(
            err.to_string(),
            "Schema names 'Foo-bar' and 'FooBar' both map to the Rust type 'FooBar'; rename one of them"
        );
    }
}
