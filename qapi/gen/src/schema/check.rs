// SPDX-License-Identifier: Apache-2.0
//! Whole-schema semantic checks: type resolution, base and member clashes, unions,
//! alternates, command/event/signal arguments and returns, handles.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::SemError;
use crate::model::{
    builtin_json_type, Branch, DefKind, Definition, EnumValue, Member, TypeRef, EMPTY_OBJECT,
};
use crate::schema::{Entity, Schema};
use crate::schema_names::c_name;
use crate::source::SourceInfo;

type Res<T> = Result<T, SemError>;

/// A member's description in errors, relative to the definition being checked.
fn describe_member(role: &str, name: &str, defined_in: &str, info: &SourceInfo) -> String {
    let mut role = role.to_string();
    if let Some(rest) = defined_in.strip_prefix("q_obj_") {
        if rest.ends_with("-arg") {
            role = "parameter".into();
        } else if rest.ends_with("-base") {
            role = format!("base {role}");
        }
        return format!("{role} '{name}'");
    }
    if info.defn_name().is_some_and(|d| d != defined_in) {
        return format!("{role} '{name}' of type '{defined_in}'");
    }
    format!("{role} '{name}'")
}

/// Checks every definition once, memoizing struct member lists.
pub(crate) struct Checker<'s> {
    pub(crate) schema: &'s mut Schema,
    pub(crate) returns_exceptions: Vec<String>,
    pub(crate) checked: BTreeSet<String>,
    pub(crate) checking: BTreeSet<String>,
}

impl Checker<'_> {
    /// Checks all definitions in order.
    pub(crate) fn check_all(&mut self) -> Res<()> {
        for i in 0..self.schema.defs.len() {
            let def = self.schema.defs[i].clone();
            self.check_def(&def)?;
        }
        Ok(())
    }

    fn resolve(&self, name: &str, info: &SourceInfo, what: &str) -> Res<Entity<'_>> {
        self.schema
            .lookup(name)
            .ok_or_else(|| SemError::new(info, format!("{what} uses unknown type '{name}'")))
    }

    fn resolve_ref(&self, ty: &TypeRef, info: &SourceInfo, what: &str) -> Res<()> {
        self.resolve(ty.name(), info, what)?;
        Ok(())
    }

    fn check_features(&self, def: &Definition) -> Res<()> {
        let mut seen = BTreeMap::new();
        for f in &def.features {
            if let Some(prev) = seen.insert(c_name(&f.name), f.name.clone()) {
                return Err(SemError::new(
                    &def.info,
                    format!("feature '{}' collides with feature '{prev}'", f.name),
                ));
            }
        }
        Ok(())
    }

    /// Checks a struct (memoized) and returns its flattened members.
    fn check_struct(&mut self, name: &str) -> Res<Vec<Member>> {
        let def = self.schema.get(name).cloned().expect("resolved before");
        if self.checking.contains(name) {
            return Err(SemError::new(
                &def.info,
                format!("object {name} contains itself"),
            ));
        }
        if self.checked.contains(name) {
            return Ok(self.schema.object_members(name));
        }
        self.checking.insert(name.to_string());
        let DefKind::Struct { base, members } = &def.kind else {
            unreachable!("check_struct on a struct");
        };
        let mut seen: Vec<(String, Member)> = Vec::new();
        if let Some(base) = base {
            let ent = self.resolve(base, &def.info, "'base'")?;
            let is_struct =
                matches!(ent, Entity::Def(d) if matches!(d.kind, DefKind::Struct { .. }));
            if !is_struct {
                return Err(SemError::new(
                    &def.info,
                    format!("'base' requires a struct type, {} isn't", ent.describe()),
                ));
            }
            for m in self.check_struct(base)? {
                check_clash(&def.info, &mut seen, m)?;
            }
        }
        for m in members {
            let what = describe_member("member", &m.name, &m.defined_in, &def.info);
            self.resolve_ref(&m.ty, &def.info, &what)?;
            check_clash(&def.info, &mut seen, m.clone())?;
        }
        self.checking.remove(name);
        self.checked.insert(name.to_string());
        Ok(seen.into_iter().map(|(_, m)| m).collect())
    }

    /// Checks one definition: its features, then what its metatype requires.
    fn check_def(&mut self, def: &Definition) -> Res<()> {
        self.check_features(def)?;
        match &def.kind {
            DefKind::Enum { values } => check_enum(def, values),
            DefKind::Struct { .. } => self.check_struct(&def.name).map(drop),
            DefKind::Union {
                base,
                discriminator,
                branches,
            } => self.check_union(def, base, discriminator, branches),
            DefKind::Alternate { branches } => self.check_alternate(def, branches),
            DefKind::Command {
                data,
                returns,
                boxed,
                ..
            } => {
                self.check_args(def, data.as_deref(), *boxed)?;
                self.check_returns(def, returns.as_ref())
            }
            DefKind::Event { data, boxed } => self.check_args(def, data.as_deref(), *boxed),
            DefKind::Handle { data } => self.check_handle(def, data),
            DefKind::Signal { owner, data, boxed } => {
                self.check_signal_owner(def, owner)?;
                self.check_args(def, data.as_deref(), *boxed)
            }
        }
    }

    /// A command's `returns` must be an object type, unless the command is a pragma
    /// `command-returns-exceptions` entry.
    fn check_returns(&self, def: &Definition, returns: Option<&TypeRef>) -> Res<()> {
        let Some(ret) = returns else { return Ok(()) };
        let ent = self.resolve(ret.name(), &def.info, "command's 'returns'")?;
        if self.returns_exceptions.contains(&def.name) {
            return Ok(());
        }
        let ok = matches!(ent, Entity::Def(d)
            if matches!(d.kind, DefKind::Struct { .. } | DefKind::Union { .. }));
        if ok {
            return Ok(());
        }
        let desc = match ret {
            TypeRef::Array(n) => format!("array type ['{n}']"),
            TypeRef::Named(_) => ent.describe(),
        };
        Err(SemError::new(
            &def.info,
            format!("command's 'returns' cannot take {desc}"),
        ))
    }

    /// A handle is carried as `str` or `int`.
    fn check_handle(&self, def: &Definition, data: &str) -> Res<()> {
        let ent = self.resolve(data, &def.info, "handle's 'data'")?;
        if matches!(data, "str" | "int") {
            return Ok(());
        }
        Err(SemError::new(
            &def.info,
            format!(
                "handle's 'data' must be built-in type 'str' or 'int', not {}",
                ent.describe()
            ),
        ))
    }

    /// A signal's owner is a handle type.
    fn check_signal_owner(&self, def: &Definition, owner: &str) -> Res<()> {
        let ent = self.resolve(owner, &def.info, "signal's 'owner'")?;
        if matches!(ent, Entity::Def(d) if matches!(d.kind, DefKind::Handle { .. })) {
            return Ok(());
        }
        Err(SemError::new(
            &def.info,
            format!(
                "signal's 'owner' must be a handle type, {} isn't",
                ent.describe()
            ),
        ))
    }

    fn check_args(&mut self, def: &Definition, data: Option<&str>, boxed: bool) -> Res<()> {
        let Some(data) = data else { return Ok(()) };
        let what = format!("{}'s 'data'", def.meta);
        let ent = self.resolve(data, &def.info, &what)?;
        match ent {
            Entity::Def(d) if matches!(d.kind, DefKind::Struct { .. }) => {
                self.check_struct(data)?;
                Ok(())
            }
            Entity::Def(d) if matches!(d.kind, DefKind::Union { .. }) => {
                if !boxed {
                    return Err(SemError::new(
                        &def.info,
                        format!("{what} can take {} only with 'boxed': true", ent.describe()),
                    ));
                }
                Ok(())
            }
            _ => Err(SemError::new(
                &def.info,
                format!("{what} cannot take {}", ent.describe()),
            )),
        }
    }

    fn check_union(
        &mut self,
        def: &Definition,
        base: &str,
        discriminator: &str,
        branches: &[Branch],
    ) -> Res<()> {
        let info = &def.info;
        let ent = self.resolve(base, info, "'base'")?;
        let base_def = match ent {
            Entity::Def(d) if matches!(d.kind, DefKind::Struct { .. }) => d.clone(),
            _ => {
                return Err(SemError::new(
                    info,
                    format!("'base' requires a struct type, {} isn't", ent.describe()),
                ))
            }
        };
        let base_members = self.check_struct(base)?;
        let Some(tag) = base_members.iter().find(|m| m.name == discriminator) else {
            return Err(SemError::new(
                info,
                format!("discriminator '{discriminator}' is not a member of 'base'"),
            ));
        };
        let where_ = if base_def.implicit {
            "'base'".to_string()
        } else {
            format!("base type '{}'", tag.defined_in)
        };
        let tag_enum = match &tag.ty {
            TypeRef::Named(n) => self
                .schema
                .get(n)
                .filter(|d| matches!(d.kind, DefKind::Enum { .. }))
                .cloned(),
            TypeRef::Array(_) => None,
        };
        let Some(tag_enum) = tag_enum else {
            return Err(SemError::new(
                info,
                format!("discriminator member '{discriminator}' of {where_} must be of enum type"),
            ));
        };
        if tag.optional {
            return Err(SemError::new(
                info,
                format!("discriminator member '{discriminator}' of {where_} must not be optional"),
            ));
        }
        if tag.ifcond.is_some() {
            return Err(SemError::new(
                info,
                format!(
                    "discriminator member '{discriminator}' of {where_} must not be conditional"
                ),
            ));
        }
        let DefKind::Enum { values } = &tag_enum.kind else {
            unreachable!("filtered to enums")
        };
        for b in branches {
            if !values.iter().any(|v| v.name == b.name) {
                return Err(SemError::new(
                    info,
                    format!(
                        "branch '{}' is not a value of {}",
                        b.name,
                        tag_enum.describe()
                    ),
                ));
            }
            let what = describe_member("branch", &b.name, &def.name, info);
            let ent = self.resolve(&b.ty, info, &what)?;
            if !matches!(ent, Entity::Def(d) if matches!(d.kind, DefKind::Struct { .. })) {
                return Err(SemError::new(
                    info,
                    format!("{what} cannot use {}", ent.describe()),
                ));
            }
            let mut seen: Vec<(String, Member)> = base_members
                .iter()
                .map(|m| (c_name(&m.name), m.clone()))
                .collect();
            for m in self.check_struct(&b.ty)? {
                check_clash(info, &mut seen, m)?;
            }
        }
        // Values without an explicit branch get the empty object.
        let mut full: Vec<Branch> = Vec::new();
        for v in values {
            match branches.iter().find(|b| b.name == v.name) {
                Some(b) => full.push(b.clone()),
                None => full.push(Branch {
                    name: v.name.clone(),
                    ty: EMPTY_OBJECT.to_string(),
                    ifcond: v.ifcond.clone(),
                }),
            }
        }
        let idx = self.schema.index[&def.name];
        if let DefKind::Union { branches, .. } = &mut self.schema.defs[idx].kind {
            *branches = full;
        }
        Ok(())
    }

    fn check_alternate(&mut self, def: &Definition, branches: &[Branch]) -> Res<()> {
        let info = &def.info;
        let mut names: BTreeMap<String, String> = BTreeMap::new();
        let mut types_seen: BTreeMap<&'static str, String> = BTreeMap::new();
        for b in branches {
            if let Some(prev) = names.insert(c_name(&b.name), b.name.clone()) {
                return Err(SemError::new(
                    info,
                    format!("branch '{}' collides with branch '{prev}'", b.name),
                ));
            }
            let what = format!("branch '{}'", b.name);
            let ent = self.resolve(&b.ty, info, &what)?;
            let json = match ent {
                Entity::Builtin(_, j) => j,
                Entity::Def(d) => match &d.kind {
                    DefKind::Enum { .. } => "string",
                    DefKind::Struct { .. } | DefKind::Union { .. } => "object",
                    DefKind::Handle { data } => builtin_json_type(data).unwrap_or("value"),
                    _ => "value",
                },
            };
            let qtype = match json {
                "null" => "null",
                "string" => "string",
                "number" | "int" => "number",
                "boolean" => "boolean",
                "object" => "object",
                _ => {
                    return Err(SemError::new(
                        info,
                        format!("{what} cannot use {}", ent.describe()),
                    ))
                }
            };
            let mut conflicting = vec![qtype];
            if qtype == "string" {
                match ent {
                    Entity::Def(Definition {
                        kind: DefKind::Enum { values },
                        ..
                    }) => {
                        for v in values {
                            if v.name == "on" || v.name == "off" {
                                conflicting.push("boolean");
                            }
                            if v.name.starts_with(|c: char| "-+0123456789.".contains(c)) {
                                conflicting.push("number");
                            }
                        }
                    }
                    _ => {
                        conflicting.push("number");
                        conflicting.push("boolean");
                    }
                }
            }
            conflicting.sort_unstable();
            conflicting.dedup();
            for qt in conflicting {
                if let Some(prev) = types_seen.get(qt) {
                    return Err(SemError::new(
                        info,
                        format!("{what} can't be distinguished from '{prev}'"),
                    ));
                }
                types_seen.insert(qt, b.name.clone());
            }
            if qtype == "object" {
                if let Entity::Def(d) = ent {
                    if matches!(d.kind, DefKind::Struct { .. }) {
                        let n = d.name.clone();
                        self.check_struct(&n)?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn check_clash(info: &SourceInfo, seen: &mut Vec<(String, Member)>, m: Member) -> Res<()> {
    let cn = c_name(&m.name);
    if let Some((_, prev)) = seen.iter().find(|(c, _)| *c == cn) {
        return Err(SemError::new(
            info,
            format!(
                "{} collides with {}",
                describe_member("member", &m.name, &m.defined_in, info),
                describe_member("member", &prev.name, &prev.defined_in, info)
            ),
        ));
    }
    seen.push((cn, m));
    Ok(())
}

/// Enum values must not collide once mapped to C names.
fn check_enum(def: &Definition, values: &[EnumValue]) -> Res<()> {
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for v in values {
        if let Some(prev) = seen.insert(c_name(&v.name), v.name.clone()) {
            return Err(SemError::new(
                &def.info,
                format!("value '{}' collides with value '{prev}'", v.name),
            ));
        }
    }
    Ok(())
}
