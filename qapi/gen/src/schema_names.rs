// SPDX-License-Identifier: Apache-2.0
//! The rules for schema names of definitions, members, values and features (QEMU's
//! `check_name_*`), and `c_name`, which decides when two names clash.

use crate::error::SemError;
use crate::source::SourceInfo;

type Res<T> = Result<T, SemError>;

/// Name syntax: optional `__RFQDN_` prefix, optional `x-`, then a letter and `[a-zA-Z0-9_-]*`.
/// Returns the stem after the prefixes.
pub(crate) fn check_name_str<'a>(name: &'a str, info: &SourceInfo, source: &str) -> Res<&'a str> {
    let invalid = || SemError::new(info, format!("{source} has an invalid name"));
    let mut rest = name;
    if let Some(r) = rest.strip_prefix("__") {
        let end = r.find('_').ok_or_else(invalid)?;
        let rfqdn = &r[..end];
        if rfqdn.is_empty()
            || !rfqdn
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            return Err(invalid());
        }
        rest = &r[end + 1..];
    }
    if rest.len() > 2 && rest[..2].eq_ignore_ascii_case("x-") {
        rest = &rest[2..];
    }
    let mut chars = rest.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !ok || c_name(name).starts_with("q_") {
        return Err(invalid());
    }
    Ok(rest)
}

/// QEMU's `c_name`: every character that is not alphanumeric becomes `_`.
pub fn c_name(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

pub(crate) fn check_name_upper(name: &str, info: &SourceInfo, source: &str) -> Res<()> {
    let stem = check_name_str(name, info, source)?;
    if stem.chars().any(|c| c.is_ascii_lowercase() || c == '-') {
        return Err(SemError::new(
            info,
            format!("name of {source} must not use lowercase or '-'"),
        ));
    }
    Ok(())
}

pub(crate) fn check_name_lower(
    name: &str,
    info: &SourceInfo,
    source: &str,
    permit_upper: bool,
    permit_underscore: bool,
) -> Res<()> {
    let stem = check_name_str(name, info, source)?;
    if (!permit_upper && stem.chars().any(|c| c.is_ascii_uppercase()))
        || (!permit_underscore && stem.contains('_'))
    {
        return Err(SemError::new(
            info,
            format!("name of {source} must not use uppercase or '_'"),
        ));
    }
    Ok(())
}

pub(crate) fn check_name_camel(name: &str, info: &SourceInfo, source: &str) -> Res<()> {
    let stem = check_name_str(name, info, source)?;
    let b = stem.as_bytes();
    let camel = b.first().is_some_and(|c| c.is_ascii_uppercase())
        && b.iter().all(|c| c.is_ascii_alphanumeric())
        && b[1..].iter().any(|c| c.is_ascii_lowercase());
    if !camel {
        return Err(SemError::new(
            info,
            format!("name of {source} must use CamelCase"),
        ));
    }
    Ok(())
}
