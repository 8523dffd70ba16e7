// SPDX-License-Identifier: Apache-2.0
//! The `descriptors` module: a validation descriptor (`crate::rt::TypeDesc`) for every
//! built-in type, every array used and every schema type, and `TYPES`, the table of every
//! generated type with a JSON round trip.

use std::collections::BTreeSet;

use super::ident::{type_name, NamingError};
use super::{sanitize, Cx};
use crate::emit::CodeWriter;
use crate::model::{
    builtin_json_type, Branch, DefKind, Definition, EnumValue, Member, TypeRef, BUILTINS,
};
use crate::schema::{Schema, Visitor};

/// The `descriptors` module as a schema visitor.
pub(super) struct DescriptorsGen<'a, 's> {
    cx: &'a Cx<'s>,
    w: &'a mut CodeWriter,
    /// The types visited so far, for `TYPES`.
    types: Vec<&'s Definition>,
}

impl<'a, 's> DescriptorsGen<'a, 's> {
    /// A visitor writing to `w`.
    pub(super) fn new(cx: &'a Cx<'s>, w: &'a mut CodeWriter) -> Self {
        DescriptorsGen {
            cx,
            w,
            types: Vec::new(),
        }
    }

    /// Writes the descriptor static of type `def`.
    fn descriptor(&mut self, def: &'s Definition, body: String) {
        debug_assert!(builtin_json_type(&def.name).is_none());
        self.w.line(format!("/// Descriptor of `{}`.", def.name));
        self.w.line(format!(
            "pub static D_{}: TypeDesc = {body};",
            sanitize(&def.name)
        ));
        self.types.push(def);
    }
}

impl<'s> Visitor<'s, NamingError> for DescriptorsGen<'_, 's> {
    /// Opens the module; writes the built-in and array descriptors.
    fn visit_begin(&mut self, _schema: &'s Schema) -> Result<(), NamingError> {
        let w = &mut *self.w;
        w.line(
            "/// Validation descriptors used by the dispatcher to check arguments as QEMU does.",
        );
        w.line("#[allow(non_upper_case_globals, non_snake_case)]");
        w.line("pub mod descriptors {");
        w.indent();
        w.line("use crate::rt::{MemberDesc, TypeDesc, Variants};");
        w.blank();
        for (name, _) in BUILTINS {
            w.line(format!("/// Built-in type `{name}`."));
            w.line(format!(
                "pub static D_{name}: TypeDesc = {};",
                builtin_desc(name)
            ));
        }
        for e in &used_arrays(self.cx) {
            w.line(format!("/// Array of `{e}`."));
            w.line(format!(
                "pub static D_ARRAY_{}: TypeDesc = TypeDesc::Array(&D_{});",
                sanitize(e),
                sanitize(e)
            ));
        }
        Ok(())
    }

    /// Writes `TYPES` and closes the module.
    fn visit_end(&mut self) -> Result<(), NamingError> {
        self.w.blank();
        type_table(self.w, &self.types);
        self.w.dedent();
        self.w.line("}");
        self.w.blank();
        Ok(())
    }

    fn visit_enum(
        &mut self,
        def: &'s Definition,
        values: &'s [EnumValue],
    ) -> Result<(), NamingError> {
        let values: Vec<String> = values.iter().map(|v| format!("\"{}\"", v.name)).collect();
        let body = format!(
            "TypeDesc::Enum {{ name: \"{}\", values: &[{}] }}",
            def.name,
            values.join(", ")
        );
        self.descriptor(def, body);
        Ok(())
    }

    fn visit_object(
        &mut self,
        def: &'s Definition,
        _base: Option<&'s str>,
        _members: &'s [Member],
    ) -> Result<(), NamingError> {
        let body = format!(
            "TypeDesc::Object {{ name: \"{}\", members: &[{}], variants: None }}",
            def.name,
            member_list(self.cx, &self.cx.schema.object_members(&def.name))
        );
        self.descriptor(def, body);
        Ok(())
    }

    fn visit_union(
        &mut self,
        def: &'s Definition,
        base: &'s str,
        discriminator: &'s str,
        branches: &'s [Branch],
    ) -> Result<(), NamingError> {
        let branches: Vec<String> = branches
            .iter()
            .map(|b| format!("(\"{}\", &D_{})", b.name, sanitize(&b.ty)))
            .collect();
        let body = format!(
            "TypeDesc::Object {{ name: \"{}\", members: &[{}], variants: Some(&Variants {{ tag: \"{discriminator}\", branches: &[{}] }}) }}",
            def.name,
            member_list(self.cx, &self.cx.schema.object_members(base)),
            branches.join(", ")
        );
        self.descriptor(def, body);
        Ok(())
    }

    fn visit_alternate(
        &mut self,
        def: &'s Definition,
        branches: &'s [Branch],
    ) -> Result<(), NamingError> {
        let branches: Vec<String> = branches
            .iter()
            .map(|b| format!("&D_{}", sanitize(&b.ty)))
            .collect();
        let body = format!(
            "TypeDesc::Alternate {{ name: \"{}\", branches: &[{}] }}",
            def.name,
            branches.join(", ")
        );
        self.descriptor(def, body);
        Ok(())
    }

    fn visit_handle(&mut self, def: &'s Definition, data: &'s str) -> Result<(), NamingError> {
        let body = format!(
            "TypeDesc::Handle {{ name: \"{}\", data: &D_{} }}",
            def.name,
            sanitize(data)
        );
        self.descriptor(def, body);
        Ok(())
    }
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

/// The element types of every array used by a member of a type or returned by a command,
/// sorted.
fn used_arrays(cx: &Cx<'_>) -> BTreeSet<String> {
    let mut arrays = BTreeSet::new();
    for def in cx.defs() {
        if def.is_type() {
            for m in cx.schema.object_members(&def.name) {
                if let TypeRef::Array(e) = &m.ty {
                    arrays.insert(e.clone());
                }
            }
        }
        if let DefKind::Command {
            returns: Some(TypeRef::Array(e)),
            ..
        } = &def.kind
        {
            arrays.insert(e.clone());
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

/// `TypeEntry`, the round-trip helper and `TYPES`, the table of every generated type.
fn type_table(w: &mut CodeWriter, types: &[&Definition]) {
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
        for def in types {
            w.line(format!(
                "TypeEntry {{ name: \"{}\", desc: &D_{}, roundtrip: roundtrip::<super::types::{}> }},",
                def.name,
                sanitize(&def.name),
                type_name(&def.name)
            ));
        }
    });
}
