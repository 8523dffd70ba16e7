// SPDX-License-Identifier: Apache-2.0
//! The `--disk` option: `PATH`, or `path=PATH[,id=ID][,node-name=NAME][,readonly=on|off]
//! [,cache=writeback|none|unsafe][,serial=STR]`. As in QEMU's option syntax, a comma inside a
//! value is written as `,,`.

use std::path::PathBuf;

use block::CacheMode;

/// Errors in a `--disk` value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DiskSpecError {
    /// An option we do not know.
    #[error("Unknown --disk option '{0}' (known: path, id, node-name, readonly, cache, serial)")]
    UnknownKey(String),
    /// No path given.
    #[error("--disk needs a path, as in --disk img.raw or --disk path=img.raw,id=data0")]
    NoPath,
    /// An option given twice.
    #[error("--disk option '{0}' is given twice")]
    Repeated(String),
    /// An option without a value.
    #[error("--disk option '{0}' needs a value")]
    NoValue(String),
    /// A bad on/off value.
    #[error("--disk option '{0}' takes on or off, not '{1}'")]
    BadBool(String, String),
    /// A bad cache mode.
    #[error("--disk cache takes writeback, none or unsafe, not '{0}'")]
    BadCache(String),
}

/// One parsed `--disk`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// The raw image.
    pub path: PathBuf,
    /// The drive id (backend name); `driveN` when absent.
    pub id: Option<String>,
    /// The node-name; generated when absent.
    pub node_name: Option<String>,
    /// Refuse guest writes.
    pub read_only: bool,
    /// Host cache mode.
    pub cache: CacheMode,
    /// The serial number the guest sees (GET_ID); the id when absent.
    pub serial: Option<String>,
}

/// Splits on single commas, turning `,,` into a literal comma.
fn split_options(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' && chars.peek() == Some(&',') {
            chars.next();
            current.push(',');
        } else if c == ',' {
            parts.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    parts.push(current);
    parts
}

fn on_off(key: &str, value: &str) -> Result<bool, DiskSpecError> {
    match value {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => Err(DiskSpecError::BadBool(key.into(), value.into())),
    }
}

impl std::str::FromStr for DiskSpec {
    type Err = DiskSpecError;

    fn from_str(s: &str) -> Result<Self, DiskSpecError> {
        let parts = split_options(s);
        let mut spec = DiskSpec {
            path: PathBuf::new(),
            id: None,
            node_name: None,
            read_only: false,
            cache: CacheMode::Writeback,
            serial: None,
        };
        let mut seen: Vec<String> = Vec::new();
        let mut path = None;
        for (i, part) in parts.iter().enumerate() {
            let Some((key, value)) = part.split_once('=') else {
                if i == 0 && !part.is_empty() {
                    path = Some(PathBuf::from(part));
                    seen.push("path".into());
                    continue;
                }
                return Err(if part.is_empty() {
                    DiskSpecError::NoPath
                } else {
                    DiskSpecError::NoValue(part.clone())
                });
            };
            if seen.iter().any(|k| k == key) {
                return Err(DiskSpecError::Repeated(key.into()));
            }
            seen.push(key.into());
            if value.is_empty() {
                return Err(DiskSpecError::NoValue(key.into()));
            }
            match key {
                "path" => path = Some(PathBuf::from(value)),
                "id" => spec.id = Some(value.into()),
                "node-name" => spec.node_name = Some(value.into()),
                "readonly" | "read-only" => spec.read_only = on_off(key, value)?,
                "cache" => {
                    spec.cache = match value {
                        "writeback" => CacheMode::Writeback,
                        "none" => CacheMode::None,
                        "unsafe" => CacheMode::Unsafe,
                        _ => return Err(DiskSpecError::BadCache(value.into())),
                    }
                }
                "serial" => spec.serial = Some(value.into()),
                _ => return Err(DiskSpecError::UnknownKey(key.into())),
            }
        }
        spec.path = path.ok_or(DiskSpecError::NoPath)?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<DiskSpec, DiskSpecError> {
        s.parse()
    }

    #[test]
    fn plain_path_and_full_form() {
        let d = p("img.raw").unwrap();
        assert_eq!(d.path, PathBuf::from("img.raw"));
        assert_eq!(
            (d.id, d.read_only, d.cache),
            (None, false, CacheMode::Writeback)
        );
        let d = p("path=data.raw,id=data0,node-name=n0,readonly=on,cache=none,serial=SN1").unwrap();
        assert_eq!(d.path, PathBuf::from("data.raw"));
        assert_eq!(d.id.as_deref(), Some("data0"));
        assert_eq!(d.node_name.as_deref(), Some("n0"));
        assert!(d.read_only);
        assert_eq!(d.cache, CacheMode::None);
        assert_eq!(d.serial.as_deref(), Some("SN1"));
        assert_eq!(
            p("a,,b.raw,cache=unsafe").unwrap().path,
            PathBuf::from("a,b.raw")
        );
    }

    #[test]
    fn errors() {
        assert_eq!(p(""), Err(DiskSpecError::NoPath));
        assert_eq!(p("id=x"), Err(DiskSpecError::NoPath));
        assert_eq!(
            p("img,format=raw"),
            Err(DiskSpecError::UnknownKey("format".into()))
        );
        assert_eq!(
            p("img,readonly=maybe"),
            Err(DiskSpecError::BadBool("readonly".into(), "maybe".into()))
        );
        assert_eq!(
            p("img,cache=directsync"),
            Err(DiskSpecError::BadCache("directsync".into()))
        );
        assert_eq!(
            p("img,id=a,id=b"),
            Err(DiskSpecError::Repeated("id".into()))
        );
        assert_eq!(p("img,path=x"), Err(DiskSpecError::Repeated("path".into())));
        assert_eq!(p("img,id="), Err(DiskSpecError::NoValue("id".into())));
        assert_eq!(
            p("img,readonly"),
            Err(DiskSpecError::NoValue("readonly".into()))
        );
    }
}
