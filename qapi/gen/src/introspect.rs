// SPDX-License-Identifier: Apache-2.0
//! The `query-qmp-schema` value in QEMU's SchemaInfo format: commands and events (signals
//! appear as events) in schema order, then every type they use, with non-builtin type names
//! masked as numbers in order of first use.

use std::collections::BTreeMap;
use std::convert::Infallible;

use serde_json::{json, Map, Value};

use crate::model::{
    builtin_json_type, Branch, DefKind, Definition, EnumValue, TypeRef, EMPTY_OBJECT,
};
use crate::schema::{CommandFlags, Schema, Visitor};

/// Generates the introspection value as compact JSON text.
pub fn generate(schema: &Schema) -> String {
    let mut g = IntrospectionGen {
        schema,
        names: BTreeMap::new(),
        used: Vec::new(),
        entries: Vec::new(),
    };
    let Ok(()) = schema.visit(&mut g);
    serde_json::to_string(&Value::Array(g.entries)).expect("JSON values serialize")
}

impl<'s> Visitor<'s> for IntrospectionGen<'s> {
    fn visit_command(
        &mut self,
        def: &'s Definition,
        data: Option<&'s str>,
        returns: Option<&'s TypeRef>,
        flags: CommandFlags,
    ) -> Result<(), Infallible> {
        let arg = self.use_type(&TypeRef::Named(data.unwrap_or(EMPTY_OBJECT).into()));
        let ret = self.use_type(
            &returns
                .cloned()
                .unwrap_or_else(|| TypeRef::Named(EMPTY_OBJECT.into())),
        );
        let mut o = obj(&def.name, "command", features_json(&def.features));
        o.insert("arg-type".into(), json!(arg));
        o.insert("ret-type".into(), json!(ret));
        if flags.allow_oob {
            o.insert("allow-oob".into(), json!(true));
        }
        self.entries.push(Value::Object(o));
        Ok(())
    }

    fn visit_event(
        &mut self,
        def: &'s Definition,
        data: Option<&'s str>,
        _boxed: bool,
    ) -> Result<(), Infallible> {
        self.event(def, data);
        Ok(())
    }

    /// Signals appear as the events they are broadcast as.
    fn visit_signal(
        &mut self,
        def: &'s Definition,
        _owner: &'s str,
        data: Option<&'s str>,
        _boxed: bool,
    ) -> Result<(), Infallible> {
        self.event(def, data);
        Ok(())
    }

    /// After the commands and events, every type they use (and the types those use).
    fn visit_end(&mut self) -> Result<(), Infallible> {
        let mut i = 0;
        while i < self.used.len() {
            let ty = self.used[i].clone();
            let entry = self.type_entry(&ty);
            self.entries.push(entry);
            i += 1;
        }
        Ok(())
    }
}

/// A SchemaInfo object with `name`, `meta-type` and, if any, `features`.
fn obj(name: &str, meta: &str, features: Option<Value>) -> Map<String, Value> {
    let mut o = Map::new();
    o.insert("name".into(), json!(name));
    o.insert("meta-type".into(), json!(meta));
    if let Some(f) = features {
        o.insert("features".into(), f);
    }
    o
}

/// The `features` value, `None` when there are none.
fn features_json(features: &[crate::model::Feature]) -> Option<Value> {
    if features.is_empty() {
        None
    } else {
        Some(Value::Array(
            features.iter().map(|f| json!(f.name)).collect(),
        ))
    }
}

/// The introspection backend, a schema visitor: commands and events become entries as they
/// are visited, the types they use are appended at the end.
struct IntrospectionGen<'s> {
    schema: &'s Schema,
    /// Masked name of each non-builtin type, by order of first use.
    names: BTreeMap<String, String>,
    /// Types used so far, in order of first use.
    used: Vec<TypeRef>,
    /// The SchemaInfo entries so far.
    entries: Vec<Value>,
}

impl IntrospectionGen<'_> {
    /// The entry of an event or signal.
    fn event(&mut self, def: &Definition, data: Option<&str>) {
        let arg = self.use_type(&TypeRef::Named(data.unwrap_or(EMPTY_OBJECT).into()));
        let mut o = obj(&def.name, "event", features_json(&def.features));
        o.insert("arg-type".into(), json!(arg));
        self.entries.push(Value::Object(o));
    }

    /// Maps sized integers to `int` and handles to their carrier type.
    fn canonical(&self, name: &str) -> String {
        if builtin_json_type(name) == Some("int") {
            return "int".into();
        }
        if let Some(def) = self.schema.get(name) {
            if let DefKind::Handle { data } = &def.kind {
                return self.canonical(data);
            }
        }
        name.to_string()
    }

    /// The introspection name of a type: built-ins keep theirs, others get a number.
    fn masked(&mut self, name: &str) -> String {
        if builtin_json_type(name).is_some() {
            return name.to_string();
        }
        let n = self.names.len();
        self.names
            .entry(name.to_string())
            .or_insert_with(|| n.to_string())
            .clone()
    }

    /// Marks a type as used and returns its (masked) introspection name.
    fn use_type(&mut self, ty: &TypeRef) -> String {
        let ty = match ty {
            TypeRef::Named(n) => TypeRef::Named(self.canonical(n)),
            TypeRef::Array(n) => TypeRef::Array(self.canonical(n)),
        };
        if !self.used.contains(&ty) {
            self.used.push(ty.clone());
        }
        match &ty {
            TypeRef::Named(n) => self.masked(n),
            TypeRef::Array(n) => {
                let elem = self.use_type(&TypeRef::Named(n.clone()));
                format!("[{elem}]")
            }
        }
    }

    /// The SchemaInfo of an object member.
    fn member_json(&mut self, m: &crate::model::Member) -> Value {
        let mut o = Map::new();
        o.insert("name".into(), json!(m.name));
        o.insert("type".into(), json!(self.use_type(&m.ty)));
        if m.optional {
            o.insert("default".into(), Value::Null);
        }
        if let Some(f) = features_json(&m.features) {
            o.insert("features".into(), f);
        }
        Value::Object(o)
    }

    /// The SchemaInfo entry of a used type.
    fn type_entry(&mut self, ty: &TypeRef) -> Value {
        let name = match ty {
            TypeRef::Named(n) => n.clone(),
            TypeRef::Array(_) => String::new(),
        };
        if let TypeRef::Array(e) = ty {
            let elem = self.use_type(&TypeRef::Named(e.clone()));
            let mut o = obj(&format!("[{elem}]"), "array", None);
            o.insert("element-type".into(), json!(elem));
            return Value::Object(o);
        }
        if let Some(json_type) = builtin_json_type(&name) {
            let mut o = obj(&name, "builtin", None);
            o.insert("json-type".into(), json!(json_type));
            return Value::Object(o);
        }
        let schema = self.schema;
        let def = schema.get(&name).expect("used types exist");
        let masked = self.masked(&name);
        let features = features_json(&def.features);
        match &def.kind {
            DefKind::Enum { values } => enum_entry(&masked, features, values),
            DefKind::Struct { .. } => {
                let members = self.members_json(&name);
                let mut o = obj(&masked, "object", features);
                o.insert("members".into(), members);
                Value::Object(o)
            }
            DefKind::Union {
                base,
                discriminator,
                branches,
            } => {
                let members = self.members_json(base);
                let variants = self.variants_json(branches);
                let mut o = obj(&masked, "object", features);
                o.insert("members".into(), members);
                o.insert("tag".into(), json!(discriminator));
                o.insert("variants".into(), variants);
                Value::Object(o)
            }
            DefKind::Alternate { branches } => {
                let members: Vec<Value> = branches
                    .iter()
                    .map(|b| json!({"type": self.use_type(&TypeRef::Named(b.ty.clone()))}))
                    .collect();
                let mut o = obj(&masked, "alternate", features);
                o.insert("members".into(), Value::Array(members));
                Value::Object(o)
            }
            _ => unreachable!("only types are used"),
        }
    }

    /// The `members` of an object type: all members, base members first.
    fn members_json(&mut self, object: &str) -> Value {
        let members = self.schema.object_members(object);
        Value::Array(members.iter().map(|m| self.member_json(m)).collect())
    }

    /// The `variants` of a union.
    fn variants_json(&mut self, branches: &[Branch]) -> Value {
        Value::Array(
            branches
                .iter()
                .map(|b| json!({"case": b.name, "type": self.use_type(&TypeRef::Named(b.ty.clone()))}))
                .collect(),
        )
    }
}

/// The entry of an enum type.
fn enum_entry(masked: &str, features: Option<Value>, values: &[EnumValue]) -> Value {
    let mut o = obj(masked, "enum", features);
    o.insert(
        "values".into(),
        Value::Array(values.iter().map(|v| json!(v.name)).collect()),
    );
    o.insert(
        "members".into(),
        Value::Array(values.iter().map(|v| json!({"name": v.name})).collect()),
    );
    Value::Object(o)
}
