// SPDX-License-Identifier: Apache-2.0
//! Handles on the wire. A handle travels either as its carrier value (`"drive0"`, what QEMU
//! clients send and see) or, with the `explicit-handles` capability, in canonical form
//! `{"__handle__": "Blockdev", "data": "drive0"}`. This module builds and parses the canonical
//! form, rewrites whole values into it by their descriptor ([`canonicalize_handles`]), and
//! gives the handle newtypes a deserializer that accepts both forms.

use serde::de::{self, Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::validate::TypeDesc;

/// The member naming the handle type in canonical form.
pub const HANDLE_KEY: &str = "__handle__";

/// The canonical form of a handle of type `name` carried by `data`:
/// `{"__handle__": name, "data": data}`.
pub fn canonical_handle(name: &str, data: &Value) -> Value {
    let mut o = Map::new();
    o.insert(HANDLE_KEY.into(), Value::String(name.to_string()));
    o.insert("data".into(), data.clone());
    Value::Object(o)
}

/// The handle type name and carrier value of a canonical handle, or `None` when `value` is not
/// exactly `{"__handle__": "<name>", "data": <value>}`.
pub fn parse_canonical_handle(value: &Value) -> Option<(&str, &Value)> {
    let o = value.as_object()?;
    if o.len() != 2 {
        return None;
    }
    let name = o.get(HANDLE_KEY)?.as_str()?;
    let data = o.get("data")?;
    Some((name, data))
}

/// Rewrites every handle-typed value inside `value` (a value of type `desc`) into canonical
/// form, recursing into arrays, object members (optional ones when present), union branches
/// and alternate branches. Values already in canonical form are kept; parts that do not match
/// `desc` are left alone (this runs on values the server built, not on client input).
pub fn canonicalize_handles(desc: &TypeDesc, value: &mut Value) {
    match desc {
        TypeDesc::Handle { name, .. } => {
            if parse_canonical_handle(value).is_none() {
                *value = canonical_handle(name, value);
            }
        }
        TypeDesc::Array(elem) => {
            if let Value::Array(items) = value {
                for item in items {
                    canonicalize_handles(elem, item);
                }
            }
        }
        TypeDesc::Object { .. } => {
            if let Value::Object(map) = value {
                canonicalize_members(desc, map);
            }
        }
        TypeDesc::Alternate { branches, .. } => {
            if let Some(b) = branches.iter().find(|b| fits(b, value)) {
                canonicalize_handles(b, value);
            }
        }
        TypeDesc::Str
        | TypeDesc::Number
        | TypeDesc::Bool
        | TypeDesc::Null
        | TypeDesc::Any
        | TypeDesc::Int { .. }
        | TypeDesc::Enum { .. } => {}
    }
}

/// The members (base and selected branch) of object type `desc` within `map`.
fn canonicalize_members(desc: &TypeDesc, map: &mut Map<String, Value>) {
    let TypeDesc::Object {
        members, variants, ..
    } = desc
    else {
        return;
    };
    for m in members.iter() {
        if let Some(v) = map.get_mut(m.name) {
            canonicalize_handles(m.ty, v);
        }
    }
    if let Some(variants) = variants {
        let tag = map.get(variants.tag).and_then(Value::as_str).unwrap_or("");
        if let Some((_, branch)) = variants.branches.iter().find(|(case, _)| *case == tag) {
            canonicalize_members(branch, map);
        }
    }
}

/// Whether `v` can be a value of alternate branch `b` (the branch is picked by JSON type; a
/// canonical handle is an object but belongs to a handle branch).
pub(crate) fn fits(b: &TypeDesc, v: &Value) -> bool {
    match b {
        TypeDesc::Str | TypeDesc::Enum { .. } => v.is_string(),
        TypeDesc::Number | TypeDesc::Int { .. } => v.is_number(),
        TypeDesc::Bool => v.is_boolean(),
        TypeDesc::Null => v.is_null(),
        TypeDesc::Object { .. } => v.is_object() && parse_canonical_handle(v).is_none(),
        TypeDesc::Handle { name, data } => match parse_canonical_handle(v) {
            Some((n, _)) => n == *name,
            None => match data {
                TypeDesc::Str => v.is_string(),
                _ => v.is_number(),
            },
        },
        TypeDesc::Any | TypeDesc::Array(_) | TypeDesc::Alternate { .. } => false,
    }
}

/// Deserializes a handle of type `type_name` carried by `T`, in plain form (`"drive0"`) or in
/// canonical form (`{"__handle__": "Blockdev", "data": "drive0"}`). A canonical form naming
/// another handle type is an error. Used by the generated handle newtypes.
pub fn deserialize_handle<'de, D, T>(d: D, type_name: &'static str) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Repr<T> {
        Plain(T),
        Canonical(Canonical<T>),
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Canonical<T> {
        #[serde(rename = "__handle__")]
        handle: String,
        data: T,
    }
    match Repr::<T>::deserialize(d) {
        Ok(Repr::Plain(t)) => Ok(t),
        Ok(Repr::Canonical(c)) if c.handle == type_name => Ok(c.data),
        Ok(Repr::Canonical(c)) => Err(de::Error::custom(format!(
            "expected a {type_name} handle, got a {} handle",
            c.handle
        ))),
        Err(_) => Err(de::Error::custom(format!(
            "expected a {type_name} handle (its value, or {{\"__handle__\": \"{type_name}\", \"data\": ...}})"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rt::{MemberDesc, Variants};
    use serde_json::json;

    static D_STR: TypeDesc = TypeDesc::Str;
    static D_INT: TypeDesc = TypeDesc::Int {
        name: "int64",
        min: i64::MIN as i128,
        max: i64::MAX as i128,
    };
    static D_DEV: TypeDesc = TypeDesc::Handle {
        name: "Blockdev",
        data: &D_STR,
    };
    static D_NUM_H: TypeDesc = TypeDesc::Handle {
        name: "Slot",
        data: &D_INT,
    };
    static D_DEVS: TypeDesc = TypeDesc::Array(&D_DEV);
    static D_INNER: TypeDesc = TypeDesc::Object {
        name: "Inner",
        members: &[
            MemberDesc {
                name: "device",
                ty: &D_DEV,
                optional: false,
            },
            MemberDesc {
                name: "node-name",
                ty: &D_DEV,
                optional: true,
            },
            MemberDesc {
                name: "file",
                ty: &D_STR,
                optional: false,
            },
        ],
        variants: None,
    };
    static D_INNERS: TypeDesc = TypeDesc::Array(&D_INNER);
    static D_ALT: TypeDesc = TypeDesc::Alternate {
        name: "Alt",
        branches: &[&D_INNER, &D_NUM_H],
    };
    static D_BRANCH_A: TypeDesc = TypeDesc::Object {
        name: "BranchA",
        members: &[MemberDesc {
            name: "parents",
            ty: &D_DEVS,
            optional: false,
        }],
        variants: None,
    };
    static D_EMPTY: TypeDesc = TypeDesc::Object {
        name: "q_empty",
        members: &[],
        variants: None,
    };
    static D_UNION: TypeDesc = TypeDesc::Object {
        name: "U",
        members: &[
            MemberDesc {
                name: "kind",
                ty: &D_STR,
                optional: false,
            },
            MemberDesc {
                name: "inners",
                ty: &D_INNERS,
                optional: true,
            },
            MemberDesc {
                name: "alt",
                ty: &D_ALT,
                optional: true,
            },
        ],
        variants: Some(&Variants {
            tag: "kind",
            branches: &[("a", &D_BRANCH_A), ("b", &D_EMPTY)],
        }),
    };

    fn dev(n: &str) -> Value {
        json!({"__handle__": "Blockdev", "data": n})
    }

    #[test]
    fn canonical_form_round_trips() {
        let c = canonical_handle("Machine", &json!("/machine"));
        assert_eq!(c, json!({"__handle__": "Machine", "data": "/machine"}));
        assert_eq!(
            parse_canonical_handle(&c),
            Some(("Machine", &json!("/machine")))
        );
        assert_eq!(parse_canonical_handle(&json!("/machine")), None);
        assert_eq!(
            parse_canonical_handle(&json!({"__handle__": "Machine", "data": 1, "x": 2})),
            None
        );
        assert_eq!(
            parse_canonical_handle(&json!({"__handle__": 3, "data": 1})),
            None
        );
        assert_eq!(parse_canonical_handle(&json!({"data": 1, "y": 1})), None);
    }

    #[test]
    fn handles_anywhere_in_a_value_become_canonical() {
        let mut v = json!({
            "kind": "a",
            "inners": [
                {"device": "drive0", "node-name": "fmt0", "file": "/img"},
                {"device": "", "file": "/img2"}
            ],
            "alt": {"device": "drive1", "file": "f"},
            "parents": ["fmt0", dev("file0")]
        });
        canonicalize_handles(&D_UNION, &mut v);
        assert_eq!(
            v,
            json!({
                "kind": "a",
                "inners": [
                    {"device": dev("drive0"), "node-name": dev("fmt0"), "file": "/img"},
                    {"device": dev(""), "file": "/img2"}
                ],
                "alt": {"device": dev("drive1"), "file": "f"},
                "parents": [dev("fmt0"), dev("file0")]
            })
        );
        // Idempotent.
        let again = v.clone();
        canonicalize_handles(&D_UNION, &mut v);
        assert_eq!(v, again);
    }

    #[test]
    fn other_branches_alternates_and_plain_values() {
        let mut v = json!({"kind": "b", "alt": 4, "parents": ["x"]});
        canonicalize_handles(&D_UNION, &mut v);
        assert_eq!(
            v,
            json!({"kind": "b", "alt": {"__handle__": "Slot", "data": 4}, "parents": ["x"]})
        );
        let mut s = json!("drive0");
        canonicalize_handles(&D_DEV, &mut s);
        assert_eq!(s, dev("drive0"));
        let mut plain = json!("text");
        canonicalize_handles(&D_STR, &mut plain);
        assert_eq!(plain, json!("text"));
        // A value that does not match its descriptor is left alone.
        let mut odd = json!(17);
        canonicalize_handles(&D_INNER, &mut odd);
        assert_eq!(odd, json!(17));
    }

    #[derive(Debug, PartialEq)]
    struct Dev(String);

    impl<'de> Deserialize<'de> for Dev {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            deserialize_handle(d, "Blockdev").map(Dev)
        }
    }

    #[test]
    fn handles_deserialize_in_both_forms() {
        let plain: Dev = serde_json::from_value(json!("drive0")).expect("plain");
        assert_eq!(plain, Dev("drive0".into()));
        let canon: Dev = serde_json::from_value(dev("drive0")).expect("canonical");
        assert_eq!(canon, Dev("drive0".into()));
        let other = serde_json::from_value::<Dev>(json!({"__handle__": "Machine", "data": "x"}))
            .expect_err("wrong type");
        assert!(
            other.to_string().contains("got a Machine handle"),
            "{other}"
        );
        assert!(serde_json::from_value::<Dev>(json!(5)).is_err());
        assert!(serde_json::from_value::<Dev>(
            json!({"__handle__": "Blockdev", "data": "d", "x": 1})
        )
        .is_err());
    }
}
