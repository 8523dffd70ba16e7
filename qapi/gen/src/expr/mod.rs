// SPDX-License-Identifier: Apache-2.0
//! Context-free checks of each expression's structure (keys, names, flags, `if`, features) and
//! normalization into [`Definition`]s, creating the implicit argument and base types.
//!
//! Laid out as QEMU's `scripts/qapi/expr.py`: `check_expr` checks what every definition has
//! (the metatype keyword and name, the documentation comment, `if`, `features`) and calls one
//! function per metatype (`check_enum`, `check_struct`, `check_union`, `check_alternate`,
//! `check_command`, `check_event`, and our `check_handle` and `check_signal`) for the rest.

mod common;

use crate::error::SemError;
use crate::model::{Branch, DefKind, Definition, EnumValue, Member, TypeRef};
use crate::parser::{Expr, Pragma, Value};
use crate::schema_names::{c_name, check_name_camel, check_name_lower, check_name_upper};
use crate::source::SourceInfo;
use common::{check_features, check_flags, check_if, check_keys, dict_get};

type Res<T> = Result<T, SemError>;

/// Checks the metatype-specific keys of one definition and builds its shape. Implicit types it
/// creates (inline arguments or base) are pushed onto `defs`.
type CheckFn = fn(&DefnCx<'_>, &mut Vec<Definition>) -> Res<DefKind>;

/// The metatype keywords, in the order they are looked for, with their checks.
const METAS: &[(&str, CheckFn)] = &[
    ("enum", check_enum),
    ("union", check_union),
    ("alternate", check_alternate),
    ("struct", check_struct),
    ("command", check_command),
    ("event", check_event),
    ("handle", check_handle),
    ("signal", check_signal),
];

/// Checks every expression and returns the definitions, implicit types included.
pub fn check_exprs(exprs: &[Expr], pragma: &Pragma) -> Res<Vec<Definition>> {
    let mut defs = Vec::new();
    for expr in exprs {
        check_expr(expr, pragma, &mut defs)?;
    }
    Ok(defs)
}

/// The definition being checked, as the per-metatype checks see it.
struct DefnCx<'a> {
    /// The expression's keys and values.
    d: &'a [(String, Value)],
    /// Its location, marked as inside the definition.
    info: SourceInfo,
    /// The metatype keyword.
    meta: &'static str,
    /// The definition's name.
    name: &'a str,
    /// Member names may use upper case and `_` (pragma `member-name-exceptions`).
    permit_upper: bool,
}

impl DefnCx<'_> {
    /// The value of `key`, if present.
    fn get(&self, key: &str) -> Option<&Value> {
        dict_get(self.d, key)
    }

    /// The value of a key that [`DefnCx::check_keys`] made required.
    fn required(&self, key: &str) -> &Value {
        self.get(key).expect("required key checked")
    }

    /// True for `'boxed': true`.
    fn boxed(&self) -> bool {
        self.get("boxed") == Some(&Value::Bool(true))
    }

    /// A boolean flag's value, `default` when absent.
    fn flag(&self, key: &str, default: bool) -> bool {
        match self.get(key) {
            Some(Value::Bool(b)) => *b,
            _ => default,
        }
    }

    /// Rejects missing required keys and keys outside `required` and `optional`.
    fn check_keys(&self, required: &[&str], optional: &[&str]) -> Res<()> {
        check_keys(self.d, &self.info, self.meta, required, optional)
    }

    /// `data` of a command, event or signal: a type name, or an inline object made implicit.
    fn check_args(&self, defs: &mut Vec<Definition>) -> Res<Option<String>> {
        let boxed = self.boxed();
        let Some(data) = self.get("data") else {
            if boxed {
                return Err(SemError::new(&self.info, "'boxed': true requires 'data'"));
            }
            return Ok(None);
        };
        match check_type(data, &self.info, "'data'", false, !boxed)? {
            TypeExpr::Ref(r) => Ok(Some(r.name().to_string())),
            TypeExpr::Dict(members) => {
                let implicit = implicit_arg_name(self.name);
                let members =
                    check_members(&members, &self.info, "'data'", &implicit, self.permit_upper)?;
                defs.push(implicit_struct(implicit.clone(), &self.info, members));
                Ok(Some(implicit))
            }
        }
    }
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

/// Checks a type expression where `allow_array` and `allow_dict` say what is allowed.
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

/// The type name of a type expression that must be a plain name.
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

/// An implicit struct for inline arguments or an inline base.
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

/// Checks one expression (QEMU's `check_exprs` loop body): the metatype keyword and name, the
/// documentation comment, then the metatype's own keys, then `if` and `features`.
fn check_expr(expr: &Expr, pragma: &Pragma, defs: &mut Vec<Definition>) -> Res<()> {
    let d = &expr.value;
    let Some(&(meta, check)) = METAS.iter().find(|(m, _)| dict_get(d, m).is_some()) else {
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
    check_defn_name(meta, name, &info, pragma)?;
    check_doc(expr, name, &info, pragma)?;
    let cx = DefnCx {
        d,
        info,
        meta,
        name,
        permit_upper: pragma.member_name_exceptions.iter().any(|n| n == name),
    };
    let kind = check(&cx, defs)?;
    let ifcond = check_if(cx.get("if"), &cx.info, meta)?;
    let features = check_features(cx.get("features"), &cx.info)?;
    for implicit in [implicit_arg_name(name), implicit_base_name(name)] {
        if let Some(def) = defs.iter_mut().find(|d| d.name == implicit) {
            def.ifcond.clone_from(&ifcond);
        }
    }
    defs.push(Definition {
        name: name.to_string(),
        meta,
        info: cx.info,
        doc: expr.doc.clone(),
        ifcond,
        features,
        kind,
        implicit: false,
    });
    Ok(())
}

/// The definition's name: the case rule of its metatype, and no `Kind`/`List` suffix.
fn check_defn_name(meta: &str, name: &str, info: &SourceInfo, pragma: &Pragma) -> Res<()> {
    match meta {
        "event" | "signal" => check_name_upper(name, info, meta)?,
        "command" => check_name_lower(
            name,
            info,
            meta,
            false,
            pragma.command_name_exceptions.iter().any(|n| n == name),
        )?,
        _ => check_name_camel(name, info, meta)?,
    }
    if name.ends_with("Kind") || name.ends_with("List") {
        return Err(SemError::new(
            info,
            format!(
                "{meta} name should not end in '{}'",
                &name[name.len() - 4..]
            ),
        ));
    }
    Ok(())
}

/// The documentation comment, if any, must be for this definition; it is required under
/// pragma `doc-required`.
fn check_doc(expr: &Expr, name: &str, info: &SourceInfo, pragma: &Pragma) -> Res<()> {
    match &expr.doc {
        Some(doc) if doc.symbol.as_deref() != Some(name) => Err(SemError::new(
            info,
            format!(
                "documentation comment is for '{}'",
                doc.symbol.as_deref().unwrap_or("")
            ),
        )),
        None if pragma.doc_required => Err(SemError::new(info, "documentation comment required")),
        _ => Ok(()),
    }
}

/// `enum`: `data` is an array of value names or `{name, if}` dicts; `prefix` is a string.
fn check_enum(cx: &DefnCx<'_>, _defs: &mut Vec<Definition>) -> Res<DefKind> {
    cx.check_keys(&["enum", "data"], &["if", "features", "prefix"])?;
    let Some(Value::List(items)) = cx.get("data") else {
        return Err(SemError::new(&cx.info, "'data' must be an array"));
    };
    if let Some(p) = cx.get("prefix") {
        if p.as_str().is_none() {
            return Err(SemError::new(&cx.info, "'prefix' must be a string"));
        }
    }
    let values = items
        .iter()
        .map(|item| check_enum_value(cx, item))
        .collect::<Res<Vec<_>>>()?;
    Ok(DefKind::Enum { values })
}

/// One enum value; values may start with a digit.
fn check_enum_value(cx: &DefnCx<'_>, item: &Value) -> Res<EnumValue> {
    let m = match item {
        Value::Dict(m) => m.clone(),
        other => vec![("name".to_string(), other.clone())],
    };
    let source = "'data' member";
    check_keys(&m, &cx.info, source, &["name"], &["if"])?;
    let Some(Value::Str(vname)) = dict_get(&m, "name") else {
        return Err(SemError::new(
            &cx.info,
            format!("{source} requires a string name"),
        ));
    };
    let source = format!("{source} '{vname}'");
    let check = if vname.starts_with(|c: char| c.is_ascii_digit()) {
        format!("d{vname}")
    } else {
        vname.clone()
    };
    check_name_lower(&check, &cx.info, &source, cx.permit_upper, cx.permit_upper)?;
    let ifcond = check_if(dict_get(&m, "if"), &cx.info, &source)?;
    Ok(EnumValue {
        name: vname.clone(),
        ifcond,
    })
}

/// `struct`: `data` is an inline object; `base` names a type.
fn check_struct(cx: &DefnCx<'_>, _defs: &mut Vec<Definition>) -> Res<DefKind> {
    cx.check_keys(&["struct", "data"], &["base", "if", "features"])?;
    let members = match check_type(cx.required("data"), &cx.info, "'data'", false, true)? {
        TypeExpr::Dict(m) => check_members(&m, &cx.info, "'data'", cx.name, cx.permit_upper)?,
        TypeExpr::Ref(_) => {
            return Err(SemError::new(&cx.info, "'data' should be an object"));
        }
    };
    let base = cx
        .get("base")
        .map(|b| {
            named(
                check_type(b, &cx.info, "'base'", false, false)?,
                &cx.info,
                "'base'",
            )
        })
        .transpose()?;
    Ok(DefKind::Struct { base, members })
}

/// `union`: a `base` (type name or inline object made implicit), a string `discriminator`,
/// and `data` mapping tag values to branch types.
fn check_union(cx: &DefnCx<'_>, defs: &mut Vec<Definition>) -> Res<DefKind> {
    cx.check_keys(
        &["union", "base", "discriminator", "data"],
        &["if", "features"],
    )?;
    let base = match check_type(cx.required("base"), &cx.info, "'base'", false, true)? {
        TypeExpr::Ref(r) => r.name().to_string(),
        TypeExpr::Dict(m) => {
            let implicit = implicit_base_name(cx.name);
            let members = check_members(&m, &cx.info, "'base'", &implicit, cx.permit_upper)?;
            defs.push(implicit_struct(implicit.clone(), &cx.info, members));
            implicit
        }
    };
    let Some(Value::Str(discriminator)) = cx.get("discriminator") else {
        return Err(SemError::new(
            &cx.info,
            "'discriminator' requires a string name",
        ));
    };
    let Some(Value::Dict(data)) = cx.get("data") else {
        return Err(SemError::new(&cx.info, "'data' must be an object"));
    };
    Ok(DefKind::Union {
        base,
        discriminator: discriminator.clone(),
        branches: check_branches(data, &cx.info, false)?,
    })
}

/// `alternate`: a non-empty `data` object of lower-case branch names.
fn check_alternate(cx: &DefnCx<'_>, _defs: &mut Vec<Definition>) -> Res<DefKind> {
    cx.check_keys(&["alternate", "data"], &["if", "features"])?;
    let Some(Value::Dict(data)) = cx.get("data") else {
        return Err(SemError::new(&cx.info, "'data' must be an object"));
    };
    if data.is_empty() {
        return Err(SemError::new(&cx.info, "'data' must not be empty"));
    }
    Ok(DefKind::Alternate {
        branches: check_branches(data, &cx.info, true)?,
    })
}

/// `command`: arguments, `returns` (a type or an array of one) and the flags.
fn check_command(cx: &DefnCx<'_>, defs: &mut Vec<Definition>) -> Res<DefKind> {
    cx.check_keys(
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
    check_flags(cx.d, &cx.info)?;
    let data = cx.check_args(defs)?;
    let returns = cx
        .get("returns")
        .map(
            |r| match check_type(r, &cx.info, "'returns'", true, false)? {
                TypeExpr::Ref(r) => Ok(r),
                TypeExpr::Dict(_) => unreachable!("dicts not allowed here"),
            },
        )
        .transpose()?;
    Ok(DefKind::Command {
        data,
        returns,
        boxed: cx.boxed(),
        allow_oob: cx.flag("allow-oob", false),
        success_response: cx.flag("success-response", true),
        gen: cx.flag("gen", true),
        allow_preconfig: cx.flag("allow-preconfig", false),
    })
}

/// `event`: optional data, possibly boxed.
fn check_event(cx: &DefnCx<'_>, defs: &mut Vec<Definition>) -> Res<DefKind> {
    cx.check_keys(&["event"], &["data", "boxed", "if", "features"])?;
    check_flags(cx.d, &cx.info)?;
    Ok(DefKind::Event {
        data: cx.check_args(defs)?,
        boxed: cx.boxed(),
    })
}

/// `handle` (our extension): `data` names the type that carries it on the wire.
fn check_handle(cx: &DefnCx<'_>, _defs: &mut Vec<Definition>) -> Res<DefKind> {
    cx.check_keys(&["handle", "data"], &["if", "features"])?;
    let data = check_type(cx.required("data"), &cx.info, "'data'", false, false)?;
    Ok(DefKind::Handle {
        data: named(data, &cx.info, "'data'")?,
    })
}

/// `signal` (our extension): an event with an `owner` handle type.
fn check_signal(cx: &DefnCx<'_>, defs: &mut Vec<Definition>) -> Res<DefKind> {
    cx.check_keys(&["signal", "owner"], &["data", "boxed", "if", "features"])?;
    check_flags(cx.d, &cx.info)?;
    let owner = check_type(cx.required("owner"), &cx.info, "'owner'", false, false)?;
    Ok(DefKind::Signal {
        owner: named(owner, &cx.info, "'owner'")?,
        data: cx.check_args(defs)?,
        boxed: cx.boxed(),
    })
}
