// SPDX-License-Identifier: Apache-2.0
//! The `types` module: Rust data types (serde, wire names preserved) for every schema type.

use super::ident::{camel, snake, type_name, Namespace, NamingError};
use super::{def_doc_text, member_doc, owner_doc, Cx};
use crate::emit::CodeWriter;
use crate::model::{Branch, DefKind, Definition, EnumValue, Member, TypeRef};
use crate::schema::{Schema, Visitor};

/// The `types` module as a schema visitor: one Rust type per schema type, in schema order.
pub(super) struct TypesGen<'a, 's> {
    cx: &'a Cx<'s>,
    w: &'a mut CodeWriter,
    /// The Rust type names claimed so far.
    ns: Namespace,
}

impl<'a, 's> TypesGen<'a, 's> {
    /// A visitor writing to `w`.
    pub(super) fn new(cx: &'a Cx<'s>, w: &'a mut CodeWriter) -> Self {
        TypesGen {
            cx,
            w,
            ns: Namespace::new("type"),
        }
    }

    /// Claims the Rust name of `def` and starts its item.
    fn start(&mut self, def: &Definition) -> Result<String, NamingError> {
        let name = type_name(&def.name);
        self.ns.claim(&def.name, &name)?;
        self.w.blank();
        Ok(name)
    }
}

impl<'s> Visitor<'s, NamingError> for TypesGen<'_, 's> {
    fn visit_begin(&mut self, _schema: &'s Schema) -> Result<(), NamingError> {
        self.w.line(
            "/// Data types of the schema: enums, structs, unions, alternates, handles, and the",
        );
        self.w
            .line("/// implicit argument types of commands, events and signals.");
        self.w.line("pub mod types {");
        self.w.indent();
        Ok(())
    }

    fn visit_end(&mut self) -> Result<(), NamingError> {
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
        self.start(def)?;
        gen_enum(self.w, def, values)
    }

    fn visit_object(
        &mut self,
        def: &'s Definition,
        _base: Option<&'s str>,
        _members: &'s [Member],
    ) -> Result<(), NamingError> {
        self.start(def)?;
        gen_struct(self.cx, self.w, def)
    }

    fn visit_union(
        &mut self,
        def: &'s Definition,
        base: &'s str,
        discriminator: &'s str,
        branches: &'s [Branch],
    ) -> Result<(), NamingError> {
        let name = self.start(def)?;
        self.ns.claim(&def.name, &format!("{name}Branch"))?;
        let union = Union {
            def,
            base,
            discriminator,
            branches,
        };
        gen_union(self.cx, self.w, &union)
    }

    fn visit_alternate(
        &mut self,
        def: &'s Definition,
        branches: &'s [Branch],
    ) -> Result<(), NamingError> {
        self.start(def)?;
        gen_alternate(self.cx, self.w, def, branches)
    }

    fn visit_handle(&mut self, def: &'s Definition, data: &'s str) -> Result<(), NamingError> {
        self.start(def)?;
        gen_handle(self.cx, self.w, def, data);
        Ok(())
    }
}

/// A union as [`Visitor::visit_union`] shows it.
struct Union<'s> {
    def: &'s Definition,
    base: &'s str,
    discriminator: &'s str,
    branches: &'s [Branch],
}

/// An alternate: an untagged enum with one variant per branch.
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

/// A handle: a transparent newtype over its carrier, its schema name and `Display`.
fn gen_handle(cx: &Cx<'_>, w: &mut CodeWriter, def: &Definition, data: &str) {
    w.doc(
        &def_doc_text(def.doc.as_ref()),
        &format!("Handle `{}`.", def.name),
    );
    let name = type_name(&def.name);
    let t = cx.rust_type(&TypeRef::Named(data.to_string()));
    w.code(&format!(
        r#"
        ///
        /// Serializes as its plain value; deserializes from the plain value or the canonical
        /// form.
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
        #[serde(transparent)]
        pub struct {name}(pub {t});

        impl<'de> serde::Deserialize<'de> for {name} {{
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {{
                crate::rt::deserialize_handle(d, Self::TYPE_NAME).map({name})
            }}
        }}

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

        impl From<{t}> for {name} {{
            fn from(v: {t}) -> Self {{
                {name}(v)
            }}
        }}
        "#,
        schema_name = def.name
    ));
    if data == "str" {
        w.code(&format!(
            r#"
            impl From<&str> for {name} {{
                fn from(v: &str) -> Self {{
                    {name}(v.to_string())
                }}
            }}

            /// The name the handle carries.
            impl std::ops::Deref for {name} {{
                type Target = str;

                fn deref(&self) -> &str {{
                    &self.0
                }}
            }}
            "#
        ));
    }
}

/// An enum with its wire names, `ALL` and `as_str`.
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

/// The fields of a struct or union, documented from `def`'s owner.
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

/// A struct, including the implicit argument and base types.
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

/// The command, event, signal or union whose implicit type `def` is.
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

/// A union: a struct of the base members (less the discriminator) with the branch flattened
/// in, and the branch enum.
fn gen_union(cx: &Cx<'_>, w: &mut CodeWriter, u: &Union<'_>) -> Result<(), NamingError> {
    let Union {
        def,
        base,
        discriminator,
        ..
    } = *u;
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
    gen_branches(cx, w, u)
}

/// The `…Branch` enum of a union, tagged by its discriminator.
fn gen_branches(cx: &Cx<'_>, w: &mut CodeWriter, u: &Union<'_>) -> Result<(), NamingError> {
    let (def, discriminator) = (u.def, u.discriminator);
    w.line(format!(
        "/// The branches of union `{}`, tagged by `{discriminator}`.",
        def.name
    ));
    w.line("#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]");
    w.line(format!("#[serde(tag = \"{discriminator}\")]"));
    w.block(
        format!("pub enum {}Branch {{", type_name(&def.name)),
        "}",
        |w| {
            let mut vns = Namespace::new("variant");
            for b in u.branches {
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
        },
    )
}
