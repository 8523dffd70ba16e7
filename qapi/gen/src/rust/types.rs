// SPDX-License-Identifier: Apache-2.0
//! Rust data types (serde, wire names preserved) and validation descriptors for every type.

use std::collections::BTreeSet;

use super::ident::{camel, snake, type_name, Namespace, NamingError};
use super::{def_doc_text, member_doc, owner_doc, sanitize, Cx};
use crate::emit::CodeWriter;
use crate::model::{
    builtin_json_type, Branch, DefKind, Definition, EnumValue, Member, TypeRef, BUILTINS,
};

pub(super) fn generate(cx: &Cx<'_>, w: &mut CodeWriter) -> Result<(), NamingError> {
    w.line("/// Data types of the schema: enums, structs, unions, alternates, handles, and the");
    w.line("/// implicit argument types of commands, events and signals.");
    w.block("pub mod types {", "}", |w| {
        let mut ns = Namespace::new("type");
        for def in cx.defs().filter(|d| d.is_type()) {
            let name = type_name(&def.name);
            ns.claim(&def.name, &name)?;
            w.blank();
            match &def.kind {
                DefKind::Enum { values } => gen_enum(w, def, values)?,
                DefKind::Struct { .. } => gen_struct(cx, w, def)?,
                DefKind::Union { .. } => {
                    ns.claim(&def.name, &format!("{name}Branch"))?;
                    gen_union(cx, w, def)?
                }
                DefKind::Alternate { branches } => gen_alternate(cx, w, def, branches)?,
                DefKind::Handle { data } => gen_handle(cx, w, def, data),
                _ => {}
            }
        }
        Ok(())
    })?;
    w.blank();
    descriptors(cx, w);
    Ok(())
}

fn gen_alternate(
    cx: &Cx<'_>,
    w: &mut CodeWriter,
    def: &Definition,
    branches: &[Branch],
) -> Result<(), NamingError> {
    w.doc(
        &def_doc_text(def.doc.as_ref()),
        &format!("Alternate `{}`.", def.name),
    );
    w.line("#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]");
    w.line("#[serde(untagged)]");
    w.block(format!("pub enum {} {{", type_name(&def.name)), "}", |w| {
        let mut vns = Namespace::new("variant");
        for b in branches {
            let v = camel(&b.name);
            vns.claim(&b.name, &v)?;
            w.doc(
                &member_doc(def.doc.as_ref(), &b.name),
                &format!("Branch `{}`.", b.name),
            );
            let t = cx.rust_type_in(&TypeRef::Named(b.ty.clone()), &def.name);
            w.line(format!("{v}({t}),"));
        }
        Ok(())
    })
}

fn gen_handle(cx: &Cx<'_>, w: &mut CodeWriter, def: &Definition, data: &str) {
    w.doc(
        &def_doc_text(def.doc.as_ref()),
        &format!("Handle `{}`.", def.name),
    );
    let name = type_name(&def.name);
    let t = cx.rust_type(&TypeRef::Named(data.to_string()));
    w.code(&format!(
        r#"
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct {name}(pub {t});

        impl {name} {{
            /// The handle type's schema name (the `__handle__` value in canonical form).
            pub const TYPE_NAME: &'static str = "{schema_name}";

            /// The canonical form `{{"__handle__": ..., "data": ...}}`.
            pub fn canonical(&self) -> serde_json::Value {{
                serde_json::json!({{"__handle__": Self::TYPE_NAME, "data": self.0}})
            }}
        }}

        impl std::fmt::Display for {name} {{
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {{
                write!(f, "{{}}", self.0)
            }}
        }}
        "#,
        schema_name = def.name
    ));
}

fn gen_enum(w: &mut CodeWriter, def: &Definition, values: &[EnumValue]) -> Result<(), NamingError> {
    let name = type_name(&def.name);
    w.doc(
        &def_doc_text(def.doc.as_ref()),
        &format!("Enum `{}`.", def.name),
    );
    w.line("#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]");
    let mut vns = Namespace::new("variant");
    let mut vars = Vec::new();
    w.block(format!("pub enum {name} {{"), "}", |w| {
        for v in values {
            let var = camel(&v.name);
            vns.claim(&v.name, &var)?;
            w.doc(
                &member_doc(def.doc.as_ref(), &v.name),
                &format!("`{}`", v.name),
            );
            w.line(format!("#[serde(rename = \"{}\")]", v.name));
            w.line(format!("{var},"));
            vars.push((var, v.name.as_str()));
        }
        Ok(())
    })?;
    w.blank();
    let all: String = vars
        .iter()
        .map(|(var, _)| format!("{name}::{var}, "))
        .collect();
    w.block(format!("impl {name} {{"), "}", |w| {
        w.line("/// Every value, in schema order.");
        w.line(format!("pub const ALL: &'static [{name}] = &[{all}];"));
        w.blank();
        w.line("/// The wire string.");
        w.block("pub fn as_str(self) -> &'static str {", "}", |w| {
            w.block("match self {", "}", |w| {
                for (var, wire) in &vars {
                    w.line(format!("{name}::{var} => \"{wire}\","));
                }
            })
        })
    });
    Ok(())
}

fn gen_fields(
    cx: &Cx<'_>,
    w: &mut CodeWriter,
    def: &Definition,
    members: &[Member],
) -> Result<(), NamingError> {
    let doc = owner_doc(cx.schema, def);
    let mut fns = Namespace::new("field");
    for m in members {
        let f = snake(&m.name);
        fns.claim(&m.name, &f)?;
        w.doc(&member_doc(doc, &m.name), &format!("Member `{}`.", m.name));
        let t = cx.rust_type_in(&m.ty, &def.name);
        if m.optional {
            let present = if keeps_null(cx, &m.ty) {
                ", deserialize_with = \"crate::rt::deserialize_present\""
            } else {
                ""
            };
            w.line(format!(
                "#[serde(rename = \"{}\", default, skip_serializing_if = \"Option::is_none\"{present})]",
                m.name
            ));
            w.line(format!("pub {f}: Option<{t}>,"));
        } else {
            w.line(format!("#[serde(rename = \"{}\")]", m.name));
            w.line(format!("pub {f}: {t},"));
        }
    }
    Ok(())
}

/// An optional member whose type admits null (`any`, `null`, alternates) may be present with
/// the value null (as introspection's `"default": null`); that stays distinct from absent.
fn keeps_null(cx: &Cx<'_>, ty: &TypeRef) -> bool {
    match ty {
        TypeRef::Named(n) if n == "any" || n == "null" => true,
        TypeRef::Named(n) => cx
            .schema
            .get(n)
            .is_some_and(|d| matches!(d.kind, DefKind::Alternate { .. })),
        TypeRef::Array(_) => false,
    }
}

fn gen_struct(cx: &Cx<'_>, w: &mut CodeWriter, def: &Definition) -> Result<(), NamingError> {
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
    w.doc(&text, &fallback);
    w.line("#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]");
    w.block(
        format!("pub struct {} {{", type_name(&def.name)),
        "}",
        |w| gen_fields(cx, w, def, &cx.schema.object_members(&def.name)),
    )
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

fn gen_union(cx: &Cx<'_>, w: &mut CodeWriter, def: &Definition) -> Result<(), NamingError> {
    let DefKind::Union {
        base,
        discriminator,
        branches,
    } = &def.kind
    else {
        unreachable!()
    };
    let name = type_name(&def.name);
    w.doc(
        &def_doc_text(def.doc.as_ref()),
        &format!("Union `{}`.", def.name),
    );
    w.line("#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]");
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
    w.block(format!("pub struct {name} {{"), "}", |w| {
        gen_fields(cx, w, &doc_only, &members)?;
        w.line(format!(
            "/// The branch selected by `{discriminator}`, with its members."
        ));
        w.line("#[serde(flatten)]");
        w.line(format!("pub branch: {name}Branch,"));
        Ok::<_, NamingError>(())
    })?;
    w.blank();
    w.line(format!(
        "/// The branches of union `{}`, tagged by `{discriminator}`.",
        def.name
    ));
    w.line("#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]");
    w.line(format!("#[serde(tag = \"{discriminator}\")]"));
    w.block(format!("pub enum {name}Branch {{"), "}", |w| {
        let mut vns = Namespace::new("variant");
        for b in branches {
            let v = camel(&b.name);
            vns.claim(&b.name, &v)?;
            w.line(format!("/// `{discriminator}` is `{}`.", b.name));
            w.line(format!("#[serde(rename = \"{}\")]", b.name));
            if b.ty == crate::model::EMPTY_OBJECT {
                w.line(format!("{v},"));
            } else {
                let t = cx.rust_type_in(&TypeRef::Named(b.ty.clone()), &def.name);
                w.line(format!("{v}({t}),"));
            }
        }
        Ok(())
    })
}

/// Validation descriptors (`crate::rt::TypeDesc`) for every type and every array used.
fn descriptors(cx: &Cx<'_>, w: &mut CodeWriter) {
    w.line("/// Validation descriptors used by the dispatcher to check arguments as QEMU does.");
    w.line("#[allow(non_upper_case_globals, non_snake_case)]");
    w.block("pub mod descriptors {", "}", |w| {
        w.line("use crate::rt::{MemberDesc, TypeDesc, Variants};");
        w.blank();
        for (name, _) in BUILTINS {
            w.line(format!("/// Built-in type `{name}`."));
            w.line(format!(
                "pub static D_{name}: TypeDesc = {};",
                builtin_desc(name)
            ));
        }
        for e in &used_arrays(cx) {
            w.line(format!("/// Array of `{e}`."));
            w.line(format!(
                "pub static D_ARRAY_{}: TypeDesc = TypeDesc::Array(&D_{});",
                sanitize(e),
                sanitize(e)
            ));
        }
        for def in cx.defs() {
            let Some(body) = def_desc(cx, def) else {
                continue;
            };
            debug_assert!(builtin_json_type(&def.name).is_none());
            w.line(format!("/// Descriptor of `{}`.", def.name));
            w.line(format!(
                "pub static D_{}: TypeDesc = {body};",
                sanitize(&def.name)
            ));
        }
        w.blank();
        type_table(cx, w);
    });
    w.blank();
}

/// The descriptor expression of a built-in type.
fn builtin_desc(name: &str) -> String {
    match name {
        "str" => "TypeDesc::Str".to_string(),
        "number" => "TypeDesc::Number".to_string(),
        "bool" => "TypeDesc::Bool".to_string(),
        "null" => "TypeDesc::Null".to_string(),
        "any" => "TypeDesc::Any".to_string(),
        "int" | "int64" => {
            "TypeDesc::Int { name: \"int64\", min: i64::MIN as i128, max: i64::MAX as i128 }"
                .to_string()
        }
        "uint64" | "size" => {
            "TypeDesc::Int { name: \"uint64\", min: 0, max: u64::MAX as i128 }".to_string()
        }
        n => {
            let signed = !n.starts_with('u');
            let bits = n.trim_start_matches(|c: char| c.is_ascii_alphabetic());
            let t = format!("{}{bits}", if signed { "i" } else { "u" });
            format!(
                "TypeDesc::Int {{ name: \"{n}_t\", min: {t}::MIN as i128, max: {t}::MAX as i128 }}"
            )
        }
    }
}

/// The element types of every array used by a member of a type, sorted.
fn used_arrays(cx: &Cx<'_>) -> BTreeSet<String> {
    let mut arrays = BTreeSet::new();
    for def in cx.defs().filter(|d| d.is_type()) {
        for m in cx.schema.object_members(&def.name) {
            if let TypeRef::Array(e) = &m.ty {
                arrays.insert(e.clone());
            }
        }
    }
    arrays
}

/// The `MemberDesc` list of an object's members.
fn member_list(cx: &Cx<'_>, members: &[Member]) -> String {
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
}

/// The descriptor expression of a type definition (`None` for commands and events).
fn def_desc(cx: &Cx<'_>, def: &Definition) -> Option<String> {
    let join = |items: Vec<String>| items.join(", ");
    Some(match &def.kind {
        DefKind::Enum { values } => format!(
            "TypeDesc::Enum {{ name: \"{}\", values: &[{}] }}",
            def.name,
            join(values.iter().map(|v| format!("\"{}\"", v.name)).collect())
        ),
        DefKind::Struct { .. } => format!(
            "TypeDesc::Object {{ name: \"{}\", members: &[{}], variants: None }}",
            def.name,
            member_list(cx, &cx.schema.object_members(&def.name))
        ),
        DefKind::Union {
            base,
            discriminator,
            branches,
        } => format!(
            "TypeDesc::Object {{ name: \"{}\", members: &[{}], variants: Some(&Variants {{ tag: \"{discriminator}\", branches: &[{}] }}) }}",
            def.name,
            member_list(cx, &cx.schema.object_members(base)),
            join(
                branches
                    .iter()
                    .map(|b| format!("(\"{}\", &D_{})", b.name, sanitize(&b.ty)))
                    .collect()
            )
        ),
        DefKind::Alternate { branches } => format!(
            "TypeDesc::Alternate {{ name: \"{}\", branches: &[{}] }}",
            def.name,
            join(
                branches
                    .iter()
                    .map(|b| format!("&D_{}", sanitize(&b.ty)))
                    .collect()
            )
        ),
        DefKind::Handle { data } => format!(
            "TypeDesc::Handle {{ name: \"{}\", data: &D_{} }}",
            def.name,
            sanitize(data)
        ),
        _ => return None,
    })
}

/// `TypeEntry`, the round-trip helper and `TYPES`, the table of every generated type.
fn type_table(cx: &Cx<'_>, w: &mut CodeWriter) {
    w.code(
        "
        /// One schema type: its name, descriptor, and a JSON → Rust → JSON round trip.
        pub struct TypeEntry {
            /// Schema name.
            pub name: &'static str,
            /// Validation descriptor.
            pub desc: &'static TypeDesc,
            /// Decodes a value into the generated Rust type and encodes it again.
            pub roundtrip: fn(serde_json::Value) -> Result<serde_json::Value, serde_json::Error>,
        }

        fn roundtrip<T: serde::Serialize + serde::de::DeserializeOwned>(
            v: serde_json::Value,
        ) -> Result<serde_json::Value, serde_json::Error> {
            serde_json::to_value(serde_json::from_value::<T>(v)?)
        }

        /// Every generated type (implicit argument types included), in schema order.
        ",
    );
    w.block("pub static TYPES: &[TypeEntry] = &[", "];", |w| {
        for def in cx.defs().filter(|d| d.is_type()) {
            w.line(format!(
                "TypeEntry {{ name: \"{}\", desc: &D_{}, roundtrip: roundtrip::<super::types::{}> }},",
                def.name,
                sanitize(&def.name),
                type_name(&def.name)
            ));
        }
    });
}
