// SPDX-License-Identifier: Apache-2.0
//! The `query-qmp-schema` value in QEMU's SchemaInfo format: commands and events (signals
//! appear as events) in schema order, then every type they use, with non-builtin type names
//! masked as numbers in order of first use.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::model::{builtin_json_type, DefKind, TypeRef, EMPTY_OBJECT};
use crate::schema::Schema;

/// Generates the introspection value as compact JSON text.
pub fn generate(schema: &Schema) -> String {
    let mut g = Gen {
        schema,
        names: BTreeMap::new(),
        used: Vec::new(),
    };
    let mut entries = Vec::new();
    for def in &schema.defs {
        let features = features_json(&def.features);
        match &def.kind {
            DefKind::Command {
                data,
                returns,
                allow_oob,
                ..
            } => {
                let arg = g.use_type(&TypeRef::Named(
                    data.clone().unwrap_or_else(|| EMPTY_OBJECT.into()),
                ));
                let ret = g.use_type(
                    &returns
                        .clone()
                        .unwrap_or_else(|| TypeRef::Named(EMPTY_OBJECT.into())),
                );
                let mut o = obj(&def.name, "command", features);
                o.insert("arg-type".into(), json!(arg));
                o.insert("ret-type".into(), json!(ret));
                if *allow_oob {
                    o.insert("allow-oob".into(), json!(true));
                }
                entries.push(Value::Object(o));
            }
            DefKind::Event { data, .. } | DefKind::Signal { data, .. } => {
                let arg = g.use_type(&TypeRef::Named(
                    data.clone().unwrap_or_else(|| EMPTY_OBJECT.into()),
                ));
                let mut o = obj(&def.name, "event", features);
                o.insert("arg-type".into(), json!(arg));
                entries.push(Value::Object(o));
            }
            _ => {}
        }
    }
    let mut i = 0;
    while i < g.used.len() {
        let ty = g.used[i].clone();
        let entry = g.type_entry(&ty);
        entries.push(entry);
        i += 1;
    }
    serde_json::to_string(&Value::Array(entries)).expect("JSON values serialize")
}

fn obj(name: &str, meta: &str, features: Option<Value>) -> Map<String, Value> {
    let mut o = Map::new();
    o.insert("name".into(), json!(name));
    o.insert("meta-type".into(), json!(meta));
    if let Some(f) = features {
        o.insert("features".into(), f);
    }
    o
}

fn features_json(features: &[crate::model::Feature]) -> Option<Value> {
    if features.is_empty() {
        None
    } else {
        Some(Value::Array(
            features.iter().map(|f| json!(f.name)).collect(),
        ))
    }
}

struct Gen<'s> {
    schema: &'s Schema,
    names: BTreeMap<String, String>,
    used: Vec<TypeRef>,
}

impl Gen<'_> {
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
        let def = self.schema.get(&name).expect("used types exist").clone();
        let masked = self.masked(&name);
        let features = features_json(&def.features);
        match &def.kind {
            DefKind::Enum { values } => {
                let mut o = obj(&masked, "enum", features);
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
            DefKind::Struct { .. } => {
                let members: Vec<Value> = self
                    .schema
                    .object_members(&name)
                    .iter()
                    .map(|m| self.member_json(m))
                    .collect();
                let mut o = obj(&masked, "object", features);
                o.insert("members".into(), Value::Array(members));
                Value::Object(o)
            }
            DefKind::Union {
                base,
                discriminator,
                branches,
            } => {
                let members: Vec<Value> = self
                    .schema
                    .object_members(base)
                    .iter()
                    .map(|m| self.member_json(m))
                    .collect();
                let variants: Vec<Value> = branches
                    .iter()
                    .map(|b| {
                        json!({"case": b.name, "type": self.use_type(&TypeRef::Named(b.ty.clone()))})
                    })
                    .collect();
                let mut o = obj(&masked, "object", features);
                o.insert("members".into(), Value::Array(members));
                o.insert("tag".into(), json!(discriminator));
                o.insert("variants".into(), Value::Array(variants));
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
}
