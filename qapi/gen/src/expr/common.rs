// SPDX-License-Identifier: Apache-2.0
//! Checks shared by every kind of definition: allowed keys, flags, `if` conditions and
//! features.

use crate::error::SemError;
use crate::model::{Cond, Feature};
use crate::parser::Value;
use crate::schema_names::check_name_lower;
use crate::source::SourceInfo;

type Res<T> = Result<T, SemError>;

/// The value of `key` in a dict expression.
pub(crate) fn dict_get<'a>(d: &'a [(String, Value)], key: &str) -> Option<&'a Value> {
    d.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// Keys sorted and quoted, as QEMU lists them in messages.
fn pprint(keys: &[&str]) -> String {
    let mut v: Vec<&str> = keys.to_vec();
    v.sort();
    v.iter()
        .map(|k| format!("'{k}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Rejects missing required keys and unknown keys, with QEMU's texts.
pub(crate) fn check_keys(
    d: &[(String, Value)],
    info: &SourceInfo,
    source: &str,
    required: &[&str],
    optional: &[&str],
) -> Res<()> {
    let missing: Vec<&str> = required
        .iter()
        .copied()
        .filter(|r| dict_get(d, r).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(SemError::new(
            info,
            format!(
                "{source} misses key{} {}",
                if missing.len() > 1 { "s" } else { "" },
                pprint(&missing)
            ),
        ));
    }
    let unknown: Vec<&str> = d
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| !required.contains(k) && !optional.contains(k))
        .collect();
    if !unknown.is_empty() {
        let allowed: Vec<&str> = required.iter().chain(optional).copied().collect();
        return Err(SemError::new(
            info,
            format!(
                "{source} has unknown key{} {}\nValid keys are {}.",
                if unknown.len() > 1 { "s" } else { "" },
                pprint(&unknown),
                pprint(&allowed)
            ),
        ));
    }
    Ok(())
}

/// Flags may only be set to their non-default value.
pub(crate) fn check_flags(d: &[(String, Value)], info: &SourceInfo) -> Res<()> {
    for key in ["gen", "success-response"] {
        if let Some(v) = dict_get(d, key) {
            if *v != Value::Bool(false) {
                return Err(SemError::new(
                    info,
                    format!("flag '{key}' may only use false value"),
                ));
            }
        }
    }
    for key in ["boxed", "allow-oob", "allow-preconfig", "coroutine"] {
        if let Some(v) = dict_get(d, key) {
            if *v != Value::Bool(true) {
                return Err(SemError::new(
                    info,
                    format!("flag '{key}' may only use true value"),
                ));
            }
        }
    }
    if dict_get(d, "allow-oob").is_some() && dict_get(d, "coroutine").is_some() {
        return Err(SemError::new(
            info,
            "flags 'allow-oob' and 'coroutine' are incompatible",
        ));
    }
    Ok(())
}

/// Parses an `if` condition: a name, or `all`/`any`/`not` of conditions.
pub(crate) fn check_if(v: Option<&Value>, info: &SourceInfo, source: &str) -> Res<Option<Cond>> {
    fn one(v: &Value, info: &SourceInfo, source: &str) -> Res<Cond> {
        match v {
            Value::Str(s) => {
                let ok = s
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !ok {
                    return Err(SemError::new(
                        info,
                        format!("'if' condition '{s}' of {source} is not a valid identifier"),
                    ));
                }
                Ok(Cond::Name(s.clone()))
            }
            Value::Dict(d) => {
                if d.len() != 1 {
                    return Err(SemError::new(
                        info,
                        format!(
                            "'if' condition of {source} has conflicting keys\n\
                             Valid keys are 'all', 'any', 'not'."
                        ),
                    ));
                }
                let (key, inner) = &d[0];
                match key.as_str() {
                    "not" => Ok(Cond::Not(Box::new(one(inner, info, source)?))),
                    "all" | "any" => {
                        let Value::List(items) = inner else {
                            return Err(SemError::new(
                                info,
                                format!("'{key}' condition of {source} must be an array"),
                            ));
                        };
                        if items.is_empty() {
                            return Err(SemError::new(
                                info,
                                format!("'if' condition [] of {source} is useless"),
                            ));
                        }
                        let conds = items
                            .iter()
                            .map(|i| one(i, info, source))
                            .collect::<Res<Vec<_>>>()?;
                        Ok(if key == "all" {
                            Cond::All(conds)
                        } else {
                            Cond::Any(conds)
                        })
                    }
                    _ => Err(SemError::new(
                        info,
                        format!(
                            "'if' condition of {source} has unknown key '{key}'\n\
                             Valid keys are 'all', 'any', 'not'."
                        ),
                    )),
                }
            }
            _ => Err(SemError::new(
                info,
                format!("'if' condition of {source} must be a string or an object"),
            )),
        }
    }
    v.map(|v| one(v, info, source)).transpose()
}

/// Parses a `features` list.
pub(crate) fn check_features(v: Option<&Value>, info: &SourceInfo) -> Res<Vec<Feature>> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let Value::List(items) = v else {
        return Err(SemError::new(info, "'features' must be an array"));
    };
    let mut out = Vec::new();
    for item in items {
        let source = "'features' member";
        let d = match item {
            Value::Dict(d) => d.clone(),
            other => vec![("name".to_string(), other.clone())],
        };
        check_keys(&d, info, source, &["name"], &["if"])?;
        let Some(Value::Str(name)) = dict_get(&d, "name") else {
            return Err(SemError::new(
                info,
                format!("{source} requires a string name"),
            ));
        };
        let source = format!("{source} '{name}'");
        check_name_lower(name, info, &source, false, false)?;
        let ifcond = check_if(dict_get(&d, "if"), info, &source)?;
        out.push(Feature {
            name: name.clone(),
            ifcond,
        });
    }
    Ok(out)
}
