// SPDX-License-Identifier: Apache-2.0
//! Context-free checks of each expression's structure (keys, names, flags, `if`, features) and
//! normalization into [`Definition`]s, creating the implicit argument and base types.

use crate::attrs::{check_features, check_flags, check_if, check_keys, dict_get};
use crate::error::SemError;
use crate::model::{Branch, DefKind, Definition, EnumValue, Member, TypeRef};
use crate::names::{c_name, check_name_camel, check_name_lower, check_name_upper};
use crate::parser::{Expr, Pragma, Value};
use crate::source::SourceInfo;

type Res<T> = Result<T, SemError>;

/// The metatype keywords, in the order they are looked for.
const METAS: &[&str] = &[
    "enum",
    "union",
    "alternate",
    "struct",
    "command",
    "event",
    "handle",
    "signal",
];

/// Checks every expression and returns the definitions, implicit types included.
pub fn check_exprs(exprs: &[Expr], pragma: &Pragma) -> Res<Vec<Definition>> {
    let mut defs = Vec::new();
    for expr in exprs {
        check_expr(expr, pragma, &mut defs)?;
    }
    Ok(defs)
}

/// A member value normalized to a dict with `type` (and maybe `if`, `features`).
fn normalize(v: &Value) -> Vec<(String, Value)> {
    match v {
        Value::Dict(d) => d.clone(),
        other => vec![("type".to_string(), other.clone())],
    }
}

/// `check_type`: a type name, an array of one type name, or (if allowed) an inline object.
enum TypeExpr {
    Ref(TypeRef),
    Dict(Vec<(String, Value)>),
}

fn check_type(
    v: &Value,
    info: &SourceInfo,
    source: &str,
    allow_array: bool,
    allow_dict: bool,
) -> Res<TypeExpr> {
    match v {
        Value::List(items) => {
            if !allow_array {
                return Err(SemError::new(info, format!("{source} cannot be an array")));
            }
            match items.as_slice() {
                [Value::Str(s)] => Ok(TypeExpr::Ref(TypeRef::Array(s.clone()))),
                _ => Err(SemError::new(
                    info,
                    format!("{source}: array type must contain single type name"),
                )),
            }
        }
        Value::Str(s) => Ok(TypeExpr::Ref(TypeRef::Named(s.clone()))),
        Value::Dict(d) if allow_dict => Ok(TypeExpr::Dict(d.clone())),
        Value::Dict(_) => Err(SemError::new(
            info,
            format!("{source} should be a type name"),
        )),
        Value::Bool(_) if allow_dict => Err(SemError::new(
            info,
            format!("{source} should be an object or type name"),
        )),
        Value::Bool(_) => Err(SemError::new(
            info,
            format!("{source} should be a type name"),
        )),
    }
}

fn named(t: TypeExpr, info: &SourceInfo, source: &str) -> Res<String> {
    match t {
        TypeExpr::Ref(TypeRef::Named(n)) => Ok(n),
        TypeExpr::Ref(TypeRef::Array(_)) => {
            Err(SemError::new(info, format!("{source} cannot be an array")))
        }
        TypeExpr::Dict(_) => Err(SemError::new(
            info,
            format!("{source} should be a type name"),
        )),
    }
}

/// Checks the members of an inline object (`check_type` with a dict).
fn check_members(
    d: &[(String, Value)],
    info: &SourceInfo,
    source: &str,
    defined_in: &str,
    permit_upper: bool,
) -> Res<Vec<Member>> {
    let mut out = Vec::new();
    for (key, arg) in d {
        let key_source = format!("{source} member '{key}'");
        let (name, optional) = match key.strip_prefix('*') {
            Some(n) => (n, true),
            None => (key.as_str(), false),
        };
        check_name_lower(name, info, &key_source, permit_upper, permit_upper)?;
        let cn = c_name(name);
        if cn == "u" || cn.starts_with("has_") {
            return Err(SemError::new(
                info,
                format!("{key_source} uses reserved name"),
            ));
        }
        let arg = normalize(arg);
        check_keys(&arg, info, &key_source, &["type"], &["if", "features"])?;
        let ifcond = check_if(dict_get(&arg, "if"), info, &key_source)?;
        let features = check_features(dict_get(&arg, "features"), info)?;
        let ty = match check_type(
            dict_get(&arg, "type").expect("checked"),
            info,
            &key_source,
            true,
            false,
        )? {
            TypeExpr::Ref(r) => r,
            TypeExpr::Dict(_) => unreachable!("dicts not allowed here"),
        };
        out.push(Member {
            name: name.to_string(),
            ty,
            optional,
            ifcond,
            features,
            defined_in: defined_in.to_string(),
        });
    }
    Ok(out)
}

/// Checks the branches of a union or alternate (`'data': {name: type or {type, if}}`);
/// alternate branch names must also be lower-case member names.
fn check_branches(d: &[(String, Value)], info: &SourceInfo, check_names: bool) -> Res<Vec<Branch>> {
    let mut branches = Vec::new();
    for (key, value) in d {
        let source = format!("'data' member '{key}'");
        if check_names {
            check_name_lower(key, info, &source, false, false)?;
        }
        let value = normalize(value);
        check_keys(&value, info, &source, &["type"], &["if"])?;
        let ifcond = check_if(dict_get(&value, "if"), info, &source)?;
        let ty = check_type(
            dict_get(&value, "type").expect("checked"),
            info,
            &source,
            false,
            false,
        )?;
        branches.push(Branch {
            name: key.clone(),
            ty: named(ty, info, &source)?,
            ifcond,
        });
    }
    Ok(branches)
}

/// The name of the implicit type holding a command's, event's or signal's inline arguments.
pub fn implicit_arg_name(name: &str) -> String {
    format!("q_obj_{name}-arg")
}

/// The name of the implicit type holding a union's inline base.
pub fn implicit_base_name(name: &str) -> String {
    format!("q_obj_{name}-base")
}

fn implicit_struct(name: String, info: &SourceInfo, members: Vec<Member>) -> Definition {
    Definition {
        name,
        meta: "struct",
        info: info.clone(),
        doc: None,
        ifcond: None,
        features: Vec::new(),
        kind: DefKind::Struct {
            base: None,
            members,
        },
        implicit: true,
    }
}

/// `data` of a command, event or signal: a type name or an inline object made implicit.
fn check_args(
    d: &[(String, Value)],
    info: &SourceInfo,
    name: &str,
    boxed: bool,
    permit_upper: bool,
    defs: &mut Vec<Definition>,
) -> Res<Option<String>> {
    let Some(data) = dict_get(d, "data") else {
        if boxed {
            return Err(SemError::new(info, "'boxed': true requires 'data'"));
        }
        return Ok(None);
    };
    match check_type(data, info, "'data'", false, !boxed)? {
        TypeExpr::Ref(r) => Ok(Some(r.name().to_string())),
        TypeExpr::Dict(members) => {
            let implicit = implicit_arg_name(name);
            let members = check_members(&members, info, "'data'", &implicit, permit_upper)?;
            defs.push(implicit_struct(implicit.clone(), info, members));
            Ok(Some(implicit))
        }
    }
}

fn check_expr(expr: &Expr, pragma: &Pragma, defs: &mut Vec<Definition>) -> Res<()> {
    let d = &expr.value;
    let Some(meta) = METAS.iter().copied().find(|m| dict_get(d, m).is_some()) else {
        return Err(SemError::new(&expr.info, "expression is missing metatype"));
    };
    let Some(Value::Str(name)) = dict_get(d, meta) else {
        return Err(SemError::new(
            &expr.info,
            format!("'{meta}' requires a string name"),
        ));
    };
    let name = name.as_str();
    let info = expr.info.in_defn(meta, name);
    match meta {
        "event" | "signal" => check_name_upper(name, &info, meta)?,
        "command" => check_name_lower(
            name,
            &info,
            meta,
            false,
            pragma.command_name_exceptions.iter().any(|n| n == name),
        )?,
        _ => check_name_camel(name, &info, meta)?,
    }
    if name.ends_with("Kind") || name.ends_with("List") {
        return Err(SemError::new(
            &info,
            format!(
                "{meta} name should not end in '{}'",
                &name[name.len() - 4..]
            ),
        ));
    }
    if let Some(doc) = &expr.doc {
        if doc.symbol.as_deref() != Some(name) {
            return Err(SemError::new(
                &info,
                format!(
                    "documentation comment is for '{}'",
                    doc.symbol.as_deref().unwrap_or("")
                ),
            ));
        }
    } else if pragma.doc_required {
        return Err(SemError::new(&info, "documentation comment required"));
    }
    let permit_upper = pragma.member_name_exceptions.iter().any(|n| n == name);
    let boxed = dict_get(d, "boxed") == Some(&Value::Bool(true));
    let flag = |key: &str, default: bool| match dict_get(d, key) {
        Some(Value::Bool(b)) => *b,
        _ => default,
    };
    let kind = match meta {
        "enum" => {
            check_keys(
                d,
                &info,
                meta,
                &["enum", "data"],
                &["if", "features", "prefix"],
            )?;
            let Some(Value::List(items)) = dict_get(d, "data") else {
                return Err(SemError::new(&info, "'data' must be an array"));
            };
            if let Some(p) = dict_get(d, "prefix") {
                if p.as_str().is_none() {
                    return Err(SemError::new(&info, "'prefix' must be a string"));
                }
            }
            let mut values = Vec::new();
            for item in items {
                let m = match item {
                    Value::Dict(m) => m.clone(),
                    other => vec![("name".to_string(), other.clone())],
                };
                let source = "'data' member";
                check_keys(&m, &info, source, &["name"], &["if"])?;
                let Some(Value::Str(vname)) = dict_get(&m, "name") else {
                    return Err(SemError::new(
                        &info,
                        format!("{source} requires a string name"),
                    ));
                };
                let source = format!("{source} '{vname}'");
                // Enum values may start with a digit.
                let check = if vname.starts_with(|c: char| c.is_ascii_digit()) {
                    format!("d{vname}")
                } else {
                    vname.clone()
                };
                check_name_lower(&check, &info, &source, permit_upper, permit_upper)?;
                let ifcond = check_if(dict_get(&m, "if"), &info, &source)?;
                values.push(EnumValue {
                    name: vname.clone(),
                    ifcond,
                });
            }
            DefKind::Enum { values }
        }
        "struct" => {
            check_keys(
                d,
                &info,
                meta,
                &["struct", "data"],
                &["base", "if", "features"],
            )?;
            let data = dict_get(d, "data").expect("checked");
            let members = match check_type(data, &info, "'data'", false, true)? {
                TypeExpr::Dict(m) => check_members(&m, &info, "'data'", name, permit_upper)?,
                TypeExpr::Ref(_) => {
                    return Err(SemError::new(&info, "'data' should be an object"));
                }
            };
            let base = dict_get(d, "base")
                .map(|b| {
                    named(
                        check_type(b, &info, "'base'", false, false)?,
                        &info,
                        "'base'",
                    )
                })
                .transpose()?;
            DefKind::Struct { base, members }
        }
        "union" => {
            check_keys(
                d,
                &info,
                meta,
                &["union", "base", "discriminator", "data"],
                &["if", "features"],
            )?;
            let base = match check_type(
                dict_get(d, "base").expect("checked"),
                &info,
                "'base'",
                false,
                true,
            )? {
                TypeExpr::Ref(r) => r.name().to_string(),
                TypeExpr::Dict(m) => {
                    let implicit = implicit_base_name(name);
                    let members = check_members(&m, &info, "'base'", &implicit, permit_upper)?;
                    defs.push(implicit_struct(implicit.clone(), &info, members));
                    implicit
                }
            };
            let Some(Value::Str(discriminator)) = dict_get(d, "discriminator") else {
                return Err(SemError::new(
                    &info,
                    "'discriminator' requires a string name",
                ));
            };
            let Some(Value::Dict(data)) = dict_get(d, "data") else {
                return Err(SemError::new(&info, "'data' must be an object"));
            };
            let branches = check_branches(data, &info, false)?;
            DefKind::Union {
                base,
                discriminator: discriminator.clone(),
                branches,
            }
        }
        "alternate" => {
            check_keys(d, &info, meta, &["alternate", "data"], &["if", "features"])?;
            let Some(Value::Dict(data)) = dict_get(d, "data") else {
                return Err(SemError::new(&info, "'data' must be an object"));
            };
            if data.is_empty() {
                return Err(SemError::new(&info, "'data' must not be empty"));
            }
            let branches = check_branches(data, &info, true)?;
            DefKind::Alternate { branches }
        }
        "command" => {
            check_keys(
                d,
                &info,
                meta,
                &["command"],
                &[
                    "data",
                    "returns",
                    "boxed",
                    "if",
                    "features",
                    "gen",
                    "success-response",
                    "allow-oob",
                    "allow-preconfig",
                    "coroutine",
                ],
            )?;
            check_flags(d, &info)?;
            let data = check_args(d, &info, name, boxed, permit_upper, defs)?;
            let returns = dict_get(d, "returns")
                .map(|r| match check_type(r, &info, "'returns'", true, false)? {
                    TypeExpr::Ref(r) => Ok(r),
                    TypeExpr::Dict(_) => unreachable!("dicts not allowed here"),
                })
                .transpose()?;
            DefKind::Command {
                data,
                returns,
                boxed,
                allow_oob: flag("allow-oob", false),
                success_response: flag("success-response", true),
                gen: flag("gen", true),
                allow_preconfig: flag("allow-preconfig", false),
            }
        }
        "event" => {
            check_keys(
                d,
                &info,
                meta,
                &["event"],
                &["data", "boxed", "if", "features"],
            )?;
            check_flags(d, &info)?;
            DefKind::Event {
                data: check_args(d, &info, name, boxed, permit_upper, defs)?,
                boxed,
            }
        }
        "handle" => {
            check_keys(d, &info, meta, &["handle", "data"], &["if", "features"])?;
            let data = check_type(
                dict_get(d, "data").expect("checked"),
                &info,
                "'data'",
                false,
                false,
            )?;
            DefKind::Handle {
                data: named(data, &info, "'data'")?,
            }
        }
        "signal" => {
            check_keys(
                d,
                &info,
                meta,
                &["signal", "owner"],
                &["data", "boxed", "if", "features"],
            )?;
            check_flags(d, &info)?;
            let owner = check_type(
                dict_get(d, "owner").expect("checked"),
                &info,
                "'owner'",
                false,
                false,
            )?;
            DefKind::Signal {
                owner: named(owner, &info, "'owner'")?,
                data: check_args(d, &info, name, boxed, permit_upper, defs)?,
                boxed,
            }
        }
        _ => unreachable!("meta from METAS"),
    };
    let ifcond = check_if(dict_get(d, "if"), &info, meta)?;
    let features = check_features(dict_get(d, "features"), &info)?;
    for implicit in [implicit_arg_name(name), implicit_base_name(name)] {
        if let Some(def) = defs.iter_mut().find(|d| d.name == implicit) {
            def.ifcond.clone_from(&ifcond);
        }
    }
    defs.push(Definition {
        name: name.to_string(),
        meta,
        info,
        doc: expr.doc.clone(),
        ifcond,
        features,
        kind,
        implicit: false,
    });
    Ok(())
}
