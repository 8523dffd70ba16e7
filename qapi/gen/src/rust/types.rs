// SPDX-License-Identifier: Apache-2.0
//! Rust data types (serde, wire names preserved) and validation descriptors for every type.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::ident::{camel, snake, type_name, Namespace, NamingError};
use super::{def_doc_text, doc_comment, member_doc, owner_doc, sanitize, Cx};
use crate::model::{builtin_json_type, DefKind, Definition, Member, TypeRef, BUILTINS};

pub(super) fn generate(cx: &Cx<'_>) -> Result<String, NamingError> {
    let mut out = String::new();
    out.push_str(
        "/// Data types of the schema: enums, structs, unions, alternates, handles, and the\n\
         /// implicit argument types of commands, events and signals.\n\
         pub mod types {\n",
    );
    let mut ns = Namespace::new("type");
    for def in cx.defs() {
        if !def.is_type() {
            continue;
        }
        let name = type_name(&def.name);
        ns.claim(&def.name, &name)?;
        match &def.kind {
            DefKind::Enum { values } => gen_enum(&mut out, def, values, &mut ns)?,
            DefKind::Struct { .. } => gen_struct(cx, &mut out, def)?,
            DefKind::Union { .. } => {
                ns.claim(&def.name, &format!("{name}Branch"))?;
                gen_union(cx, &mut out, def)?
            }
            DefKind::Alternate { branches } => {
                let _ = writeln!(out);
                doc_comment(
                    &mut out,
                    "    ",
                    &def_doc_text(def.doc.as_ref()),
                    &format!("Alternate `{}`.", def.name),
                );
                out.push_str(
                    "    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]\n\
                     \x20   #[serde(untagged)]\n",
                );
                let _ = writeln!(out, "    pub enum {name} {{");
                let mut vns = Namespace::new("variant");
                for b in branches {
                    let v = camel(&b.name);
                    vns.claim(&b.name, &v)?;
                    doc_comment(
                        &mut out,
                        "        ",
                        &member_doc(def.doc.as_ref(), &b.name),
                        &format!("Branch `{}`.", b.name),
                    );
                    let t = cx.rust_type_in(&TypeRef::Named(b.ty.clone()), &def.name);
                    let _ = writeln!(out, "        {v}({t}),");
                }
                out.push_str("    }\n");
            }
            DefKind::Handle { data } => {
                let _ = writeln!(out);
                doc_comment(
                    &mut out,
                    "    ",
                    &def_doc_text(def.doc.as_ref()),
                    &format!("Handle `{}`.", def.name),
                );
                let t = cx.rust_type(&TypeRef::Named(data.clone()));
                let _ = write!(
                    out,
                    "    #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]\n\
                     \x20   #[serde(transparent)]\n\
                     \x20   pub struct {name}(pub {t});\n\n\
                     \x20   impl {name} {{\n\
                     \x20       /// The handle type's schema name (the `__handle__` value in canonical form).\n\
                     \x20       pub const TYPE_NAME: &'static str = \"{}\";\n\n\
                     \x20       /// The canonical form `{{\"__handle__\": ..., \"data\": ...}}`.\n\
                     \x20       pub fn canonical(&self) -> serde_json::Value {{\n\
                     \x20           serde_json::json!({{\"__handle__\": Self::TYPE_NAME, \"data\": self.0}})\n\
                     \x20       }}\n\
                     \x20   }}\n\n\
                     \x20   impl std::fmt::Display for {name} {{\n\
                     \x20       fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {{\n\
                     \x20           write!(f, \"{{}}\", self.0)\n\
                     \x20       }}\n\
                     \x20   }}\n",
                    def.name
                );
            }
            _ => {}
        }
    }
    out.push_str("}\n\n");
    out.push_str(&descriptors(cx));
    Ok(out)
}

fn gen_enum(
    out: &mut String,
    def: &Definition,
    values: &[crate::model::EnumValue],
    _ns: &mut Namespace,
) -> Result<(), NamingError> {
    let name = type_name(&def.name);
    let _ = writeln!(out);
    doc_comment(
        out,
        "    ",
        &def_doc_text(def.doc.as_ref()),
        &format!("Enum `{}`.", def.name),
    );
    out.push_str(
        "    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]\n",
    );
    let _ = writeln!(out, "    pub enum {name} {{");
    let mut vns = Namespace::new("variant");
    let mut arms = String::new();
    let mut all = String::new();
    for v in values {
        let var = camel(&v.name);
        vns.claim(&v.name, &var)?;
        doc_comment(
            out,
            "        ",
            &member_doc(def.doc.as_ref(), &v.name),
            &format!("`{}`", v.name),
        );
        let _ = writeln!(
            out,
            "        #[serde(rename = \"{}\")]\n        {var},",
            v.name
        );
        let _ = writeln!(arms, "                {name}::{var} => \"{}\",", v.name);
        let _ = write!(all, "{name}::{var}, ");
    }
    let _ = write!(
        out,
        "    }}\n\n\
         \x20   impl {name} {{\n\
         \x20       /// Every value, in schema order.\n\
         \x20       pub const ALL: &'static [{name}] = &[{all}];\n\n\
         \x20       /// The wire string.\n\
         \x20       pub fn as_str(self) -> &'static str {{\n\
         \x20           match self {{\n{arms}\
         \x20           }}\n\
         \x20       }}\n\
         \x20   }}\n"
    );
    Ok(())
}

fn gen_fields(
    cx: &Cx<'_>,
    out: &mut String,
    def: &Definition,
    members: &[Member],
) -> Result<(), NamingError> {
    let doc = owner_doc(cx.schema, def);
    let mut fns = Namespace::new("field");
    for m in members {
        let f = snake(&m.name);
        fns.claim(&m.name, &f)?;
        doc_comment(
            out,
            "        ",
            &member_doc(doc, &m.name),
            &format!("Member `{}`.", m.name),
        );
        let t = cx.rust_type_in(&m.ty, &def.name);
        if m.optional {
            // An optional member whose type admits null (`any`, `null`, alternates) may be
            // present with the value null (as introspection's `"default": null`); keep that
            // distinct from absent.
            let keeps_null = match &m.ty {
                TypeRef::Named(n) if n == "any" || n == "null" => true,
                TypeRef::Named(n) => cx
                    .schema
                    .get(n)
                    .is_some_and(|d| matches!(d.kind, DefKind::Alternate { .. })),
                TypeRef::Array(_) => false,
            };
            let present = if keeps_null {
                ", deserialize_with = \"crate::rt::deserialize_present\""
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "        #[serde(rename = \"{}\", default, skip_serializing_if = \"Option::is_none\"{present})]\n        pub {f}: Option<{t}>,",
                m.name
            );
        } else {
            let _ = writeln!(
                out,
                "        #[serde(rename = \"{}\")]\n        pub {f}: {t},",
                m.name
            );
        }
    }
    Ok(())
}

fn gen_struct(cx: &Cx<'_>, out: &mut String, def: &Definition) -> Result<(), NamingError> {
    let name = type_name(&def.name);
    let _ = writeln!(out);
    let fallback = if def.implicit {
        format!("Implicit type `{}`.", def.name)
    } else {
        format!("Struct `{}`.", def.name)
    };
    let text = if def.implicit {
        match owner_of(cx, def) {
            Some(o) => format!("Arguments of `{o}`."),
            None => String::new(),
        }
    } else {
        def_doc_text(def.doc.as_ref())
    };
    doc_comment(out, "    ", &text, &fallback);
    out.push_str("    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]\n");
    let _ = writeln!(out, "    pub struct {name} {{");
    gen_fields(cx, out, def, &cx.schema.object_members(&def.name))?;
    out.push_str("    }\n");
    Ok(())
}

fn owner_of(cx: &Cx<'_>, def: &Definition) -> Option<String> {
    cx.defs().find_map(|d| match &d.kind {
        DefKind::Command { data, .. }
        | DefKind::Event { data, .. }
        | DefKind::Signal { data, .. }
            if data.as_deref() == Some(def.name.as_str()) =>
        {
            Some(d.name.clone())
        }
        DefKind::Union { base, .. } if *base == def.name => Some(d.name.clone()),
        _ => None,
    })
}

fn gen_union(cx: &Cx<'_>, out: &mut String, def: &Definition) -> Result<(), NamingError> {
    let DefKind::Union {
        base,
        discriminator,
        branches,
    } = &def.kind
    else {
        unreachable!()
    };
    let name = type_name(&def.name);
    let _ = writeln!(out);
    doc_comment(
        out,
        "    ",
        &def_doc_text(def.doc.as_ref()),
        &format!("Union `{}`.", def.name),
    );
    out.push_str("    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]\n");
    let _ = writeln!(out, "    pub struct {name} {{");
    let members: Vec<Member> = cx
        .schema
        .object_members(base)
        .into_iter()
        .filter(|m| m.name != *discriminator)
        .collect();
    let base_def = cx.schema.get(base).expect("checked");
    let doc_def = if base_def.implicit { def } else { base_def };
    let mut doc_only = doc_def.clone();
    doc_only.implicit = false;
    gen_fields(cx, out, &doc_only, &members)?;
    let _ = writeln!(
        out,
        "        /// The branch selected by `{discriminator}`, with its members.\n\
         \x20       #[serde(flatten)]\n\
         \x20       pub branch: {name}Branch,\n\
         \x20   }}\n\n\
         \x20   /// The branches of union `{}`, tagged by `{discriminator}`.\n\
         \x20   #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]\n\
         \x20   #[serde(tag = \"{discriminator}\")]\n\
         \x20   pub enum {name}Branch {{",
        def.name
    );
    let mut vns = Namespace::new("variant");
    for b in branches {
        let v = camel(&b.name);
        vns.claim(&b.name, &v)?;
        let _ = writeln!(out, "        /// `{discriminator}` is `{}`.", b.name);
        let _ = writeln!(out, "        #[serde(rename = \"{}\")]", b.name);
        if b.ty == crate::model::EMPTY_OBJECT {
            let _ = writeln!(out, "        {v},");
        } else {
            let t = cx.rust_type_in(&TypeRef::Named(b.ty.clone()), &def.name);
            let _ = writeln!(out, "        {v}({t}),");
        }
    }
    out.push_str("    }\n");
    Ok(())
}

/// Validation descriptors (`crate::rt::TypeDesc`) for every type and every array used.
fn descriptors(cx: &Cx<'_>) -> String {
    let mut out = String::new();
    out.push_str(
        "/// Validation descriptors used by the dispatcher to check arguments as QEMU does.\n\
         #[allow(non_upper_case_globals, non_snake_case)]\n\
         pub mod descriptors {\n\
         \x20   use crate::rt::{MemberDesc, TypeDesc, Variants};\n\n",
    );
    for (name, json) in BUILTINS {
        let body = match (*name, *json) {
            ("str", _) => "TypeDesc::Str".to_string(),
            ("number", _) => "TypeDesc::Number".to_string(),
            ("bool", _) => "TypeDesc::Bool".to_string(),
            ("null", _) => "TypeDesc::Null".to_string(),
            ("any", _) => "TypeDesc::Any".to_string(),
            ("int" | "int64", _) => {
                "TypeDesc::Int { name: \"int64\", min: i64::MIN as i128, max: i64::MAX as i128 }"
                    .to_string()
            }
            ("uint64" | "size", _) => {
                "TypeDesc::Int { name: \"uint64\", min: 0, max: u64::MAX as i128 }".to_string()
            }
            (n, _) => {
                let signed = !n.starts_with('u');
                let bits = n.trim_start_matches(|c: char| c.is_ascii_alphabetic());
                let t = format!("{}{bits}", if signed { "i" } else { "u" });
                format!("TypeDesc::Int {{ name: \"{n}_t\", min: {t}::MIN as i128, max: {t}::MAX as i128 }}")
            }
        };
        let _ = writeln!(
            out,
            "    /// Built-in type `{name}`.\n    pub static D_{name}: TypeDesc = {body};"
        );
    }
    let mut arrays = BTreeSet::new();
    for def in cx.defs() {
        if def.is_type() {
            for m in cx.schema.object_members(&def.name) {
                if let TypeRef::Array(e) = &m.ty {
                    arrays.insert(e.clone());
                }
            }
        }
    }
    for e in &arrays {
        let _ = writeln!(
            out,
            "    /// Array of `{e}`.\n    pub static D_ARRAY_{}: TypeDesc = TypeDesc::Array(&D_{});",
            sanitize(e),
            sanitize(e)
        );
    }
    let member_list = |members: &[Member]| -> String {
        members
            .iter()
            .map(|m| {
                format!(
                    "MemberDesc {{ name: \"{}\", ty: &{}, optional: {} }}",
                    m.name,
                    cx.desc_ident(&m.ty),
                    m.optional
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    for def in cx.defs() {
        let ident = format!("D_{}", sanitize(&def.name));
        let body = match &def.kind {
            DefKind::Enum { values } => format!(
                "TypeDesc::Enum {{ name: \"{}\", values: &[{}] }}",
                def.name,
                values
                    .iter()
                    .map(|v| format!("\"{}\"", v.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            DefKind::Struct { .. } => format!(
                "TypeDesc::Object {{ name: \"{}\", members: &[{}], variants: None }}",
                def.name,
                member_list(&cx.schema.object_members(&def.name))
            ),
            DefKind::Union {
                base,
                discriminator,
                branches,
            } => format!(
                "TypeDesc::Object {{ name: \"{}\", members: &[{}], variants: Some(&Variants {{ tag: \"{discriminator}\", branches: &[{}] }}) }}",
                def.name,
                member_list(&cx.schema.object_members(base)),
                branches
                    .iter()
                    .map(|b| format!("(\"{}\", &D_{})", b.name, sanitize(&b.ty)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            DefKind::Alternate { branches } => format!(
                "TypeDesc::Alternate {{ name: \"{}\", branches: &[{}] }}",
                def.name,
                branches
                    .iter()
                    .map(|b| format!("&D_{}", sanitize(&b.ty)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            DefKind::Handle { data } => format!(
                "TypeDesc::Handle {{ name: \"{}\", data: &D_{} }}",
                def.name,
                sanitize(data)
            ),
            _ => continue,
        };
        debug_assert!(builtin_json_type(&def.name).is_none());
        let _ = writeln!(
            out,
            "    /// Descriptor of `{}`.\n    pub static {ident}: TypeDesc = {body};",
            def.name
        );
    }
    out.push_str(
        "\n    /// One schema type: its name, descriptor, and a JSON → Rust → JSON round trip.\n\
         \x20   pub struct TypeEntry {\n\
         \x20       /// Schema name.\n\
         \x20       pub name: &'static str,\n\
         \x20       /// Validation descriptor.\n\
         \x20       pub desc: &'static TypeDesc,\n\
         \x20       /// Decodes a value into the generated Rust type and encodes it again.\n\
         \x20       pub roundtrip: fn(serde_json::Value) -> Result<serde_json::Value, serde_json::Error>,\n\
         \x20   }\n\n\
         \x20   fn roundtrip<T: serde::Serialize + serde::de::DeserializeOwned>(\n\
         \x20       v: serde_json::Value,\n\
         \x20   ) -> Result<serde_json::Value, serde_json::Error> {\n\
         \x20       serde_json::to_value(serde_json::from_value::<T>(v)?)\n\
         \x20   }\n\n\
         \x20   /// Every generated type (implicit argument types included), in schema order.\n\
         \x20   pub static TYPES: &[TypeEntry] = &[\n",
    );
    for def in cx.defs() {
        if def.is_type() {
            let _ = writeln!(
                out,
                "        TypeEntry {{ name: \"{}\", desc: &D_{}, roundtrip: roundtrip::<super::types::{}> }},",
                def.name,
                sanitize(&def.name),
                type_name(&def.name)
            );
        }
    }
    out.push_str("    ];\n}\n\n");
    out
}
