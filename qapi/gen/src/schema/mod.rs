// SPDX-License-Identifier: Apache-2.0
//! Semantic checks over all definitions (type resolution, clashes, unions, alternates, commands,
//! events, handles, signals, documentation) and the resulting [`Schema`], which backends walk
//! with a [`Visitor`].

mod check;
pub mod visit;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::doc::Doc;
use crate::error::{Error, SemError};
use crate::expr::check_exprs;
use crate::model::{builtin_json_type, DefKind, Definition, Member, TypeRef, EMPTY_OBJECT};
use crate::parser::{parse_file, EventOwner, Parsed};
use crate::source::SourceInfo;
use check::Checker;
pub use visit::{CommandFlags, Visitor};

type Res<T> = Result<T, SemError>;

/// A checked schema, with conditional parts already resolved.
#[derive(Debug, Clone)]
pub struct Schema {
    /// All definitions (implicit ones included), in definition order.
    pub defs: Vec<Definition>,
    /// Free-form documentation blocks and the index in `defs` of the definition after them.
    pub free_docs: Vec<(usize, Doc)>,
    /// Every schema file read.
    pub files: Vec<PathBuf>,
    /// The owner of plain events (pragma `event-owner`): a `str` handle type and its value.
    pub event_owner: Option<EventOwner>,
    pub(crate) index: BTreeMap<String, usize>,
}

/// What a type name refers to.
#[derive(Debug, Clone, Copy)]
pub enum Entity<'a> {
    /// A built-in type, with its JSON type.
    Builtin(&'a str, &'static str),
    /// A definition.
    Def(&'a Definition),
}

impl<'a> Entity<'a> {
    pub(crate) fn describe(&self) -> String {
        match self {
            Entity::Builtin(n, _) => format!("built-in type '{n}'"),
            Entity::Def(d) => d.describe(),
        }
    }
}

impl Schema {
    /// Reads, checks and resolves the schema rooted at `path`. Conditions (`if`) are evaluated
    /// with `enabled`, which says whether a configuration name is on.
    pub fn load(path: &Path, enabled: &dyn Fn(&str) -> bool) -> Result<Schema, Error> {
        let parsed = parse_file(path)?;
        Ok(Schema::from_parsed(parsed, enabled)?)
    }

    /// Checks parsed expressions; see [`Schema::load`].
    pub fn from_parsed(parsed: Parsed, enabled: &dyn Fn(&str) -> bool) -> Res<Schema> {
        let mut defs = vec![Definition {
            name: EMPTY_OBJECT.to_string(),
            meta: "struct",
            info: SourceInfo::default(),
            doc: None,
            ifcond: None,
            features: Vec::new(),
            kind: DefKind::Struct {
                base: None,
                members: Vec::new(),
            },
            implicit: true,
        }];
        defs.extend(check_exprs(&parsed.exprs, &parsed.pragma)?);
        // Map indices of free docs (which count parsed expressions) to definition indices.
        let mut expr_to_def = Vec::new();
        for (i, d) in defs.iter().enumerate() {
            if !d.implicit {
                expr_to_def.push(i);
            }
        }
        let free_docs = parsed
            .free_docs
            .into_iter()
            .map(|(i, d)| (expr_to_def.get(i).copied().unwrap_or(defs.len()), d))
            .collect();
        let mut schema = Schema {
            defs,
            free_docs,
            files: parsed.files,
            event_owner: parsed.pragma.event_owner.clone(),
            index: BTreeMap::new(),
        };
        schema.build_index()?;
        let mut checker = Checker {
            schema: &mut schema,
            returns_exceptions: parsed.pragma.command_returns_exceptions.clone(),
            checked: BTreeSet::new(),
            checking: BTreeSet::new(),
        };
        checker.check_all()?;
        schema.check_event_owner()?;
        schema.check_docs()?;
        schema.apply_conditions(enabled);
        schema.check_conditional_references()?;
        Ok(schema)
    }

    /// Pragma `event-owner` names a handle type carried as `str`; a schema with plain events
    /// must have it (every event is a signal of some object).
    fn check_event_owner(&self) -> Res<()> {
        match &self.event_owner {
            Some(o) => {
                let ok = self
                    .get(&o.handle)
                    .is_some_and(|d| matches!(&d.kind, DefKind::Handle { data } if data == "str"));
                if ok {
                    Ok(())
                } else {
                    Err(SemError::new(
                        &o.info,
                        format!(
                            "pragma 'event-owner' must name a handle type carried as 'str', '{}' isn't one",
                            o.handle
                        ),
                    ))
                }
            }
            None => match self
                .defs
                .iter()
                .find(|d| matches!(d.kind, DefKind::Event { .. }))
            {
                Some(ev) => Err(SemError::new(
                    &ev.info,
                    "events need an owner: add pragma 'event-owner'",
                )),
                None => Ok(()),
            },
        }
    }

    fn build_index(&mut self) -> Res<()> {
        for (i, def) in self.defs.iter().enumerate() {
            if builtin_json_type(&def.name).is_some() {
                return Err(SemError::new(
                    &def.info,
                    format!("built-in type '{}' is already defined", def.name),
                ));
            }
            if let Some(&prev) = self.index.get(&def.name) {
                let p = &self.defs[prev].info;
                return Err(SemError::new(
                    &def.info,
                    format!(
                        "'{}' is already defined\n{}:{}: previous definition",
                        def.name, p.file, p.line
                    ),
                ));
            }
            self.index.insert(def.name.clone(), i);
        }
        Ok(())
    }

    /// Drops every definition, member, value, branch and feature whose condition is false.
    fn apply_conditions(&mut self, enabled: &dyn Fn(&str) -> bool) {
        let on = |c: &Option<crate::model::Cond>| c.as_ref().is_none_or(|c| c.eval(enabled));
        let mut kept = Vec::new();
        let mut kept_orig = Vec::new();
        for (i, mut def) in std::mem::take(&mut self.defs).into_iter().enumerate() {
            if !on(&def.ifcond) {
                continue;
            }
            def.features.retain(|f| on(&f.ifcond));
            match &mut def.kind {
                DefKind::Enum { values } => values.retain(|v| on(&v.ifcond)),
                DefKind::Struct { members, .. } => {
                    members.retain(|m| on(&m.ifcond));
                    for m in members.iter_mut() {
                        m.features.retain(|f| on(&f.ifcond));
                    }
                }
                DefKind::Union { branches, .. } | DefKind::Alternate { branches } => {
                    branches.retain(|b| on(&b.ifcond))
                }
                _ => {}
            }
            kept_orig.push(i);
            kept.push(def);
        }
        self.defs = kept;
        for (idx, _) in self.free_docs.iter_mut() {
            *idx = kept_orig.iter().filter(|&&o| o < *idx).count();
        }
        self.index.clear();
        for (i, def) in self.defs.iter().enumerate() {
            self.index.insert(def.name.clone(), i);
        }
    }

    /// After conditions are applied, every reference must still resolve: a definition that
    /// is kept must not use one that its condition left out.
    fn check_conditional_references(&self) -> Res<()> {
        for def in &self.defs {
            let mut refs: Vec<&str> = Vec::new();
            match &def.kind {
                DefKind::Enum { .. } => {}
                DefKind::Struct { base, members } => {
                    refs.extend(base.as_deref());
                    refs.extend(members.iter().map(|m| m.ty.name()));
                }
                DefKind::Union { base, branches, .. } => {
                    refs.push(base);
                    refs.extend(branches.iter().map(|b| b.ty.as_str()));
                }
                DefKind::Alternate { branches } => {
                    refs.extend(branches.iter().map(|b| b.ty.as_str()))
                }
                DefKind::Command { data, returns, .. } => {
                    refs.extend(data.as_deref());
                    refs.extend(returns.as_ref().map(TypeRef::name));
                }
                DefKind::Event { data, .. } => refs.extend(data.as_deref()),
                DefKind::Handle { data } => refs.push(data),
                DefKind::Signal { owner, data, .. } => {
                    refs.push(owner);
                    refs.extend(data.as_deref());
                }
            }
            for r in refs {
                if self.lookup(r).is_none() {
                    return Err(SemError::new(
                        &def.info,
                        format!(
                            "{} uses type '{r}', which its own 'if' condition leaves out",
                            def.describe()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The definition named `name`.
    pub fn get(&self, name: &str) -> Option<&Definition> {
        self.index.get(name).map(|&i| &self.defs[i])
    }

    /// What `name` refers to.
    pub fn lookup(&self, name: &str) -> Option<Entity<'_>> {
        if let Some((n, j)) = crate::model::BUILTINS.iter().find(|(n, _)| *n == name) {
            return Some(Entity::Builtin(n, j));
        }
        self.get(name).filter(|d| d.is_type()).map(Entity::Def)
    }

    /// All members of a struct (base members first) or union (base members only).
    pub fn object_members(&self, name: &str) -> Vec<Member> {
        let Some(def) = self.get(name) else {
            return Vec::new();
        };
        match &def.kind {
            DefKind::Struct { base, members } => {
                let mut out = base
                    .as_deref()
                    .map(|b| self.object_members(b))
                    .unwrap_or_default();
                out.extend(members.iter().cloned());
                out
            }
            DefKind::Union { base, .. } => self.object_members(base),
            _ => Vec::new(),
        }
    }

    /// The JSON type of a type reference (`string`, `int`, `number`, `boolean`, `null`,
    /// `object`, `array`, or `value` for `any` and alternates).
    pub fn json_type(&self, ty: &TypeRef) -> &'static str {
        match ty {
            TypeRef::Array(_) => "array",
            TypeRef::Named(n) => match self.lookup(n) {
                Some(Entity::Builtin(_, j)) => j,
                Some(Entity::Def(d)) => match &d.kind {
                    DefKind::Enum { .. } => "string",
                    DefKind::Struct { .. } | DefKind::Union { .. } => "object",
                    DefKind::Alternate { .. } => "value",
                    DefKind::Handle { data } => builtin_json_type(data).unwrap_or("value"),
                    _ => "value",
                },
                None => "value",
            },
        }
    }

    fn check_docs(&self) -> Res<()> {
        for def in &self.defs {
            let Some(doc) = &def.doc else { continue };
            let documentable: Vec<String> = match &def.kind {
                DefKind::Enum { values } => values.iter().map(|v| v.name.clone()).collect(),
                DefKind::Struct { members, .. } => members.iter().map(|m| m.name.clone()).collect(),
                DefKind::Union { base, .. } => {
                    if self.get(base).is_some_and(|b| b.implicit) {
                        self.object_members(base)
                            .into_iter()
                            .map(|m| m.name)
                            .collect()
                    } else {
                        Vec::new()
                    }
                }
                DefKind::Alternate { branches } => {
                    branches.iter().map(|b| b.name.clone()).collect()
                }
                DefKind::Command { data, boxed, .. }
                | DefKind::Event { data, boxed }
                | DefKind::Signal { data, boxed, .. } => match data {
                    Some(d) if !*boxed && self.get(d).is_some_and(|t| t.implicit) => {
                        self.object_members(d).into_iter().map(|m| m.name).collect()
                    }
                    _ => Vec::new(),
                },
                DefKind::Handle { .. } => Vec::new(),
            };
            for (name, _) in &doc.args {
                if !documentable.contains(name) {
                    return Err(SemError::new(
                        &doc.info,
                        format!("documented member '{name}' does not exist"),
                    ));
                }
            }
            // As in QEMU, the features of a struct's own members are documented with the
            // struct's.
            let member_features: Vec<&str> = match &def.kind {
                DefKind::Struct { members, .. } => members
                    .iter()
                    .flat_map(|m| m.features.iter().map(|f| f.name.as_str()))
                    .collect(),
                _ => Vec::new(),
            };
            for (name, _) in &doc.features {
                if !def.features.iter().any(|f| &f.name == name)
                    && !member_features.contains(&name.as_str())
                {
                    return Err(SemError::new(
                        &doc.info,
                        format!("documented feature '{name}' does not exist"),
                    ));
                }
            }
            if doc.section("Returns").is_some() && !matches!(def.kind, DefKind::Command { .. }) {
                return Err(SemError::new(
                    &doc.info,
                    format!(
                        "'Returns:' is only valid for commands, not for {}",
                        def.describe()
                    ),
                ));
            }
        }
        Ok(())
    }
}
