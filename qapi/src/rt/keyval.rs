// SPDX-License-Identifier: Apache-2.0
//! Typed values from a flat `key=value` list, as QEMU's keyval input visitor reads a
//! command-line option into a QAPI type (`-blockdev driver=file,filename=x,cache.direct=on`):
//! dotted keys are nested members (`cache.direct`), numeric segments are list indexes
//! (`list.0`, `list.1`), and each string becomes the JSON type its member declares (`on`,
//! `off`, `yes`, `no`, `true`, `false` for booleans; decimal or `0x` integers; numbers).
//!
//! The result is then checked by [`super::check_arguments`] as a QMP command's arguments are,
//! so a command-line option gets the same checks and texts as the command that takes the same
//! type. Keys the type does not have and strings that do not convert are left as they are, for
//! that check to report.

use serde_json::{Map, Value};

use super::error::QmpError;
use super::validate::TypeDesc;

/// A key tree: strings at the leaves.
#[derive(Debug)]
enum Tree {
    Leaf(String),
    Node(Vec<(String, Tree)>),
}

fn insert(tree: &mut Vec<(String, Tree)>, key: &str, value: String) -> Result<(), QmpError> {
    let (head, rest) = match key.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (key, None),
    };
    let conflict = || QmpError::generic(format!("Parameter '{key}' conflicts with another"));
    let pos = tree.iter().position(|(k, _)| k == head);
    match (rest, pos) {
        (None, None) => tree.push((head.to_owned(), Tree::Leaf(value))),
        (None, Some(_)) => return Err(conflict()),
        (Some(rest), None) => {
            let mut child = Vec::new();
            insert(&mut child, rest, value)?;
            tree.push((head.to_owned(), Tree::Node(child)));
        }
        (Some(rest), Some(i)) => match &mut tree[i].1 {
            Tree::Node(child) => insert(child, rest, value)?,
            Tree::Leaf(_) => return Err(conflict()),
        },
    }
    Ok(())
}

fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "on" | "yes" | "true" => Some(true),
        "off" | "no" | "false" => Some(false),
        _ => None,
    }
}

fn parse_int(s: &str) -> Option<Value> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s),
    };
    let magnitude = match digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        Some(hex) => u64::from_str_radix(hex, 16).ok()?,
        None if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
            digits.parse().ok()?
        }
        None => return None,
    };
    if neg {
        let n = i64::try_from(magnitude).ok()?;
        Some(Value::from(-n))
    } else {
        Some(Value::from(magnitude))
    }
}

/// Whether a string could be a value of `desc` (for picking an alternate's branch).
fn scalar_fits(desc: &TypeDesc, s: &str) -> bool {
    match desc {
        TypeDesc::Str | TypeDesc::Any => true,
        TypeDesc::Enum { values, .. } => values.contains(&s),
        TypeDesc::Bool => parse_bool(s).is_some(),
        TypeDesc::Int { .. } => parse_int(s).is_some(),
        TypeDesc::Number => s.parse::<f64>().is_ok(),
        TypeDesc::Handle { data, .. } => scalar_fits(data, s),
        _ => false,
    }
}

fn leaf(desc: &TypeDesc, s: String) -> Value {
    let converted = match desc {
        TypeDesc::Bool => parse_bool(&s).map(Value::Bool),
        TypeDesc::Int { .. } => parse_int(&s),
        TypeDesc::Number => s
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number),
        TypeDesc::Handle { data, .. } => return leaf(data, s),
        TypeDesc::Alternate { branches, .. } => {
            return match branches.iter().find(|b| scalar_fits(b, &s)) {
                Some(b) => leaf(b, s),
                None => Value::String(s),
            }
        }
        _ => None,
    };
    converted.unwrap_or(Value::String(s))
}

/// The members of an object type, its variant's included once the tag is known.
fn members_of<'a>(
    desc: &'a TypeDesc,
    tag_value: Option<&str>,
    out: &mut Vec<(&'a str, &'a TypeDesc)>,
) {
    let TypeDesc::Object {
        members, variants, ..
    } = desc
    else {
        return;
    };
    out.extend(members.iter().map(|m| (m.name, m.ty)));
    if let (Some(v), Some(tag)) = (variants, tag_value) {
        if let Some((_, branch)) = v.branches.iter().find(|(case, _)| *case == tag) {
            members_of(branch, None, out);
        }
    }
}

fn object(desc: &TypeDesc, entries: Vec<(String, Tree)>) -> Value {
    let tag_value = match desc {
        TypeDesc::Object {
            variants: Some(v), ..
        } => entries.iter().find_map(|(k, t)| match t {
            Tree::Leaf(s) if k == v.tag => Some(s.clone()),
            _ => None,
        }),
        _ => None,
    };
    let mut members = Vec::new();
    members_of(desc, tag_value.as_deref(), &mut members);
    let mut map = Map::new();
    for (key, tree) in entries {
        let ty = members
            .iter()
            .find(|(name, _)| *name == key)
            .map(|(_, ty)| *ty);
        map.insert(key, value(ty.unwrap_or(&TypeDesc::Any), tree));
    }
    Value::Object(map)
}

fn value(desc: &TypeDesc, tree: Tree) -> Value {
    match (desc, tree) {
        (_, Tree::Leaf(s)) => leaf(desc, s),
        (TypeDesc::Array(elem), Tree::Node(entries)) => {
            let mut indexed: Vec<(usize, Tree)> = Vec::new();
            let mut keyed = Vec::new();
            for (k, t) in entries {
                match k.parse::<usize>() {
                    Ok(i) => indexed.push((i, t)),
                    Err(_) => keyed.push((k, t)),
                }
            }
            if !keyed.is_empty() {
                // Not a list after all: leave it for the type check to refuse.
                return object(&TypeDesc::Any, keyed);
            }
            indexed.sort_by_key(|(i, _)| *i);
            Value::Array(indexed.into_iter().map(|(_, t)| value(elem, t)).collect())
        }
        (TypeDesc::Alternate { branches, .. }, Tree::Node(entries)) => {
            let object_branch = branches
                .iter()
                .find(|b| matches!(b, TypeDesc::Object { .. }));
            object(object_branch.copied().unwrap_or(&TypeDesc::Any), entries)
        }
        (_, Tree::Node(entries)) => object(desc, entries),
    }
}

/// Builds the JSON object of type `desc` (an object type) from `key=value` pairs in input
/// order; check it with [`super::check_arguments`] before decoding.
///
/// # Errors
/// A key that is both a value and a prefix of others (`a=1,a.b=2`), or given twice.
pub fn from_keyval(desc: &TypeDesc, pairs: Vec<(String, String)>) -> Result<Value, QmpError> {
    let mut tree = Vec::new();
    for (k, v) in pairs {
        insert(&mut tree, &k, v)?;
    }
    Ok(object(desc, tree))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rt::validate::{MemberDesc, Variants};
    use serde_json::json;

    static CACHE: TypeDesc = TypeDesc::Object {
        name: "Cache",
        members: &[
            MemberDesc {
                name: "direct",
                ty: &TypeDesc::Bool,
                optional: true,
            },
            MemberDesc {
                name: "size",
                ty: &TypeDesc::Int {
                    name: "uint64",
                    min: 0,
                    max: u64::MAX as i128,
                },
                optional: true,
            },
        ],
        variants: None,
    };
    static FILE: TypeDesc = TypeDesc::Object {
        name: "File",
        members: &[MemberDesc {
            name: "filename",
            ty: &TypeDesc::Str,
            optional: false,
        }],
        variants: None,
    };
    static REF: TypeDesc = TypeDesc::Alternate {
        name: "Ref",
        branches: &[&CACHE, &TypeDesc::Str],
    };
    static RAW: TypeDesc = TypeDesc::Object {
        name: "Raw",
        members: &[MemberDesc {
            name: "file",
            ty: &REF,
            optional: false,
        }],
        variants: None,
    };
    static OPTS: TypeDesc = TypeDesc::Object {
        name: "Opts",
        members: &[
            MemberDesc {
                name: "driver",
                ty: &TypeDesc::Enum {
                    name: "Driver",
                    values: &["file", "raw"],
                },
                optional: false,
            },
            MemberDesc {
                name: "cache",
                ty: &CACHE,
                optional: true,
            },
            MemberDesc {
                name: "list",
                ty: &TypeDesc::Array(&TypeDesc::Int {
                    name: "int",
                    min: i64::MIN as i128,
                    max: i64::MAX as i128,
                }),
                optional: true,
            },
        ],
        variants: Some(&Variants {
            tag: "driver",
            branches: &[("file", &FILE), ("raw", &RAW)],
        }),
    };

    fn kv(s: &[(&str, &str)]) -> Vec<(String, String)> {
        s.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn strings_become_the_declared_types() {
        let v = from_keyval(
            &OPTS,
            kv(&[
                ("driver", "file"),
                ("filename", "on"),
                ("cache.direct", "on"),
                ("cache.size", "0x10"),
                ("list.1", "-2"),
                ("list.0", "7"),
            ]),
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"driver": "file", "filename": "on",
                   "cache": {"direct": true, "size": 16}, "list": [7, -2]})
        );
        crate::rt::check_arguments(&OPTS, Some(v), &|_, _| Ok(())).unwrap();
        // An alternate: a string picks the string branch, keys the object one.
        let v = from_keyval(&OPTS, kv(&[("driver", "raw"), ("file", "node1")])).unwrap();
        assert_eq!(v, json!({"driver": "raw", "file": "node1"}));
        let v = from_keyval(&OPTS, kv(&[("driver", "raw"), ("file.direct", "off")])).unwrap();
        assert_eq!(v, json!({"driver": "raw", "file": {"direct": false}}));
    }

    #[test]
    fn what_does_not_convert_is_left_for_the_check() {
        let check = |pairs: &[(&str, &str)]| {
            let v = from_keyval(&OPTS, kv(pairs))?;
            crate::rt::check_arguments(&OPTS, Some(v), &|_, _| Ok(())).map(|_| ())
        };
        let desc = |pairs: &[(&str, &str)]| check(pairs).unwrap_err().desc;
        assert_eq!(
            desc(&[
                ("driver", "file"),
                ("filename", "x"),
                ("cache.direct", "maybe")
            ]),
            "Invalid parameter type for 'cache.direct', expected: boolean"
        );
        assert_eq!(
            desc(&[("driver", "file"), ("filename", "x"), ("colour", "red")]),
            "Parameter 'colour' is unexpected"
        );
        assert_eq!(
            desc(&[("driver", "file")]),
            "Parameter 'filename' is missing"
        );
        assert_eq!(
            desc(&[("driver", "nbd")]),
            "Parameter 'driver' does not accept value 'nbd'"
        );
        assert_eq!(
            desc(&[
                ("driver", "file"),
                ("filename", "x"),
                ("cache", "x"),
                ("cache.direct", "on")
            ]),
            "Parameter 'cache.direct' conflicts with another"
        );
        assert_eq!(
            desc(&[("driver", "file"), ("filename", "x"), ("list.a", "1")]),
            "Invalid parameter type for 'list', expected: array"
        );
    }
}
