// SPDX-License-Identifier: Apache-2.0
//! Argument checking that mirrors QEMU's QObject input visitor: members are visited in schema
//! order (first missing one reported), then leftovers are reported as unexpected; nested names
//! are `parent.member` and `list[3]`. The texts are QEMU's. Handles are accepted as their
//! carrier value or in canonical form (`{"__handle__": "Blockdev", "data": "drive0"}`, which is
//! rewritten to the carrier value), then resolved by the server.

use serde_json::{Map, Value};

use super::error::QmpError;

/// The shape of a type, as far as argument checking needs it.
#[derive(Debug)]
pub enum TypeDesc {
    /// `str`
    Str,
    /// `number`
    Number,
    /// `bool`
    Bool,
    /// `null`
    Null,
    /// `any`
    Any,
    /// An integer type: `name` is QEMU's name in range errors (`int8_t`, `uint64`, ...).
    Int {
        /// QEMU's type name for messages.
        name: &'static str,
        /// Smallest accepted value.
        min: i128,
        /// Largest accepted value.
        max: i128,
    },
    /// An enum.
    Enum {
        /// Schema name.
        name: &'static str,
        /// Accepted strings.
        values: &'static [&'static str],
    },
    /// `['T']`
    Array(&'static TypeDesc),
    /// A struct, or a union when `variants` is set.
    Object {
        /// Schema name.
        name: &'static str,
        /// All (base) members in schema order.
        members: &'static [MemberDesc],
        /// Union branches.
        variants: Option<&'static Variants>,
    },
    /// An alternate: the branch is picked by JSON type.
    Alternate {
        /// Schema name (QEMU names it in type errors).
        name: &'static str,
        /// Branch types.
        branches: &'static [&'static TypeDesc],
    },
    /// A handle: checked as its carrier type, then resolved by the server.
    Handle {
        /// Schema name of the handle type.
        name: &'static str,
        /// The carrier type (`str` or `int`).
        data: &'static TypeDesc,
    },
}

/// One member of an object type.
#[derive(Debug)]
pub struct MemberDesc {
    /// Wire name.
    pub name: &'static str,
    /// Type.
    pub ty: &'static TypeDesc,
    /// Declared with `*`.
    pub optional: bool,
}

/// The branches of a flat union.
#[derive(Debug)]
pub struct Variants {
    /// The discriminator member.
    pub tag: &'static str,
    /// Discriminator value → branch type (a struct, or the empty object).
    pub branches: &'static [(&'static str, &'static TypeDesc)],
}

/// Resolves a handle value: `(handle type name, value) → Ok` if the object exists.
pub type HandleResolver<'a> = dyn Fn(&str, &Value) -> Result<(), QmpError> + 'a;

/// Checks a command's `arguments` (absent means `{}`) against its argument type and returns
/// them as an object value ready to decode.
pub fn check_arguments(
    desc: &TypeDesc,
    arguments: Option<Value>,
    resolve: &HandleResolver<'_>,
) -> Result<Value, QmpError> {
    let mut args = match arguments {
        None => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v,
        Some(_) => {
            return Err(QmpError::generic(
                "QMP input member 'arguments' must be an object",
            ))
        }
    };
    let mut checker = Checker { resolve };
    checker.object_members(desc, &mut args, None)?;
    Ok(args)
}

/// Decodes checked arguments into the generated argument type.
pub fn decode_arguments<T: serde::de::DeserializeOwned>(args: Value) -> Result<T, QmpError> {
    serde_json::from_value(args).map_err(|e| QmpError::generic(format!("Invalid arguments: {e}")))
}

/// Serializes a command's return value; `()` becomes `{}` as QEMU returns for "no data".
pub fn encode_return<T: serde::Serialize>(ret: T) -> Result<Value, QmpError> {
    match serde_json::to_value(ret) {
        Ok(Value::Null) => Ok(Value::Object(Map::new())),
        Ok(v) => Ok(v),
        Err(e) => Err(QmpError::generic(format!(
            "Internal error: cannot serialize the return value: {e}"
        ))),
    }
}

struct Checker<'r, 'a> {
    resolve: &'r HandleResolver<'a>,
}

fn join(parent: Option<&str>, name: &str) -> String {
    match parent {
        Some(p) => format!("{p}.{name}"),
        None => name.to_string(),
    }
}

fn type_error(full: &str, expected: &str) -> QmpError {
    QmpError::generic(format!(
        "Invalid parameter type for '{full}', expected: {expected}"
    ))
}

impl Checker<'_, '_> {
    /// Checks the members (and variants) of `desc` in `value`, which must be an object, then
    /// rejects leftovers. `path` is the object's own full name (`None` at top level).
    fn object_members(
        &mut self,
        desc: &TypeDesc,
        value: &mut Value,
        path: Option<&str>,
    ) -> Result<(), QmpError> {
        let Value::Object(map) = value else {
            return Err(type_error(path.unwrap_or("<anonymous>"), "object"));
        };
        let mut visited: Vec<&'static str> = Vec::new();
        self.visit_members(desc, map, path, &mut visited)?;
        if let Some(extra) = map.keys().find(|k| !visited.contains(&k.as_str())) {
            return Err(QmpError::generic(format!(
                "Parameter '{}' is unexpected",
                join(path, extra)
            )));
        }
        Ok(())
    }

    fn visit_members(
        &mut self,
        desc: &TypeDesc,
        map: &mut Map<String, Value>,
        path: Option<&str>,
        visited: &mut Vec<&'static str>,
    ) -> Result<(), QmpError> {
        let TypeDesc::Object {
            members, variants, ..
        } = desc
        else {
            return Ok(());
        };
        for m in members.iter() {
            let full = join(path, m.name);
            match map.get_mut(m.name) {
                Some(v) => {
                    visited.push(m.name);
                    self.value(m.ty, v, &full, m.name)?;
                }
                None if m.optional => {}
                None => {
                    return Err(QmpError::generic(format!("Parameter '{full}' is missing")));
                }
            }
        }
        if let Some(variants) = variants {
            let tag = map
                .get(variants.tag)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if let Some((_, branch)) = variants.branches.iter().find(|(case, _)| *case == tag) {
                self.visit_members(branch, map, path, visited)?;
            }
        }
        Ok(())
    }

    /// Checks one value. `full` is its full name, `name` its local name (QEMU uses the local
    /// name in a few messages: enum values, integer ranges, alternates).
    fn value(
        &mut self,
        desc: &TypeDesc,
        v: &mut Value,
        full: &str,
        name: &str,
    ) -> Result<(), QmpError> {
        match desc {
            TypeDesc::Any => Ok(()),
            TypeDesc::Str => v
                .is_string()
                .then_some(())
                .ok_or_else(|| type_error(full, "string")),
            TypeDesc::Bool => v
                .is_boolean()
                .then_some(())
                .ok_or_else(|| type_error(full, "boolean")),
            TypeDesc::Null => v
                .is_null()
                .then_some(())
                .ok_or_else(|| type_error(full, "null")),
            TypeDesc::Number => v
                .is_number()
                .then_some(())
                .ok_or_else(|| type_error(full, "number")),
            TypeDesc::Int {
                name: tname,
                min,
                max,
            } => {
                let unsigned = *min == 0;
                let n: Option<i128> = v
                    .as_i64()
                    .map(i128::from)
                    .or_else(|| v.as_u64().map(i128::from));
                let Some(n) = n else {
                    return Err(if unsigned {
                        QmpError::generic(format!("Parameter '{full}' expects uint64"))
                    } else {
                        type_error(full, "integer")
                    });
                };
                if !unsigned && n > i128::from(i64::MAX) {
                    return Err(type_error(full, "integer"));
                }
                if n < *min || n > *max {
                    // QEMU reports the 64-bit check with the full name and the narrowing
                    // check with the local name.
                    let shown = if tname.ends_with("64") { full } else { name };
                    return Err(QmpError::generic(format!(
                        "Parameter '{shown}' expects {tname}"
                    )));
                }
                Ok(())
            }
            TypeDesc::Enum { values, .. } => {
                let Some(s) = v.as_str() else {
                    return Err(type_error(full, "string"));
                };
                if values.contains(&s) {
                    Ok(())
                } else {
                    Err(QmpError::generic(format!(
                        "Parameter '{name}' does not accept value '{s}'"
                    )))
                }
            }
            TypeDesc::Array(elem) => {
                let Some(items) = v.as_array_mut() else {
                    return Err(type_error(full, "array"));
                };
                for (i, item) in items.iter_mut().enumerate() {
                    // QEMU visits list elements without a name: messages that use the
                    // local name say 'null'.
                    let f = format!("{full}[{i}]");
                    self.value(elem, item, &f, "null")?;
                }
                Ok(())
            }
            TypeDesc::Object { .. } => self.object_members(desc, v, Some(full)),
            TypeDesc::Alternate {
                name: aname,
                branches,
            } => match branches.iter().find(|b| super::handles::fits(b, v)) {
                Some(b) => self.value(b, v, full, name),
                None => Err(type_error(name, aname)),
            },
            TypeDesc::Handle { name: hname, data } => {
                // Canonical form (explicit handles): {"__handle__": "Type", "data": value}.
                if let Value::Object(o) = v {
                    if o.get("__handle__").and_then(Value::as_str) != Some(*hname)
                        || o.len() != 2
                        || !o.contains_key("data")
                    {
                        return Err(type_error(full, &format!("{hname} handle")));
                    }
                    let inner = o.remove("data").unwrap_or(Value::Null);
                    *v = inner;
                }
                self.value(data, v, full, name)?;
                (self.resolve)(hname, v)
            }
        }
    }
}
