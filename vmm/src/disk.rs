// SPDX-License-Identifier: Apache-2.0
//! The `--disk` option: `PATH`, or `path=PATH[,id=ID][,node-name=NAME][,readonly=on|off]
//! [,cache=writeback|none|unsafe][,serial=STR]`. As in QEMU's option syntax, a comma inside a
//! value is written as `,,`. Parsed by [`OptionList`].

use std::path::PathBuf;

use block::CacheMode;

use crate::options::{self, OptionError, OptionList};

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
    /// A malformed option list (an empty item, an item without a key).
    #[error("--disk {0}")]
    Syntax(OptionError),
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

impl From<OptionError> for DiskSpecError {
    fn from(e: OptionError) -> Self {
        match e {
            OptionError::Unknown(key) => Self::UnknownKey(key),
            OptionError::Repeated(key) => Self::Repeated(key),
            OptionError::NoValue(key) => Self::NoValue(key),
            OptionError::BadBool { key, value } => Self::BadBool(key, value),
            e => Self::Syntax(e),
        }
    }
}

/// Takes a value that must not be empty (`id=` is refused, as a bare `id` is).
fn take_value(opts: &mut OptionList, key: &str) -> Result<Option<String>, DiskSpecError> {
    match opts.take_str(key)? {
        Some(v) if v.is_empty() => Err(DiskSpecError::NoValue(key.into())),
        v => Ok(v),
    }
}

impl std::str::FromStr for DiskSpec {
    type Err = DiskSpecError;

    fn from_str(s: &str) -> Result<Self, DiskSpecError> {
        let mut opts = OptionList::parse(s, Some("path"))?;
        // readonly is QEMU's -drive spelling, read-only its -blockdev one; the later wins.
        let read_only_key = opts
            .keys()
            .filter(|k| matches!(*k, "readonly" | "read-only"))
            .last()
            .map(str::to_owned);
        let mut read_only = false;
        for key in ["readonly", "read-only"] {
            if let Some(v) = take_value(&mut opts, key)? {
                let on = options::parse_bool(key, &v)?;
                if read_only_key.as_deref() == Some(key) {
                    read_only = on;
                }
            }
        }
        let path = take_value(&mut opts, "path")?;
        let id = take_value(&mut opts, "id")?;
        let node_name = take_value(&mut opts, "node-name")?;
        let cache = match take_value(&mut opts, "cache")?.as_deref() {
            None | Some("writeback") => CacheMode::Writeback,
            Some("none") => CacheMode::None,
            Some("unsafe") => CacheMode::Unsafe,
            Some(other) => return Err(DiskSpecError::BadCache(other.into())),
        };
        let serial = take_value(&mut opts, "serial")?;
        opts.finish()?;
        Ok(DiskSpec {
            path: path.map(PathBuf::from).ok_or(DiskSpecError::NoPath)?,
            id,
            node_name,
            read_only,
            cache,
            serial,
        })
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

    #[test]
    fn toggles_aliases_and_escapes() {
        for (v, ro) in [("yes", true), ("true", true), ("no", false), ("off", false)] {
            assert_eq!(p(&format!("img,readonly={v}")).unwrap().read_only, ro);
        }
        assert!(p("img,read-only=on").unwrap().read_only);
        // Both spellings: the later wins, as before the shared parser.
        assert!(!p("img,readonly=on,read-only=off").unwrap().read_only);
        assert!(p("img,read-only=off,readonly=on").unwrap().read_only);
        let d = p("path=a,,b,serial=S,,N,id=x,,y").unwrap();
        assert_eq!(d.path, PathBuf::from("a,b"));
        assert_eq!(d.serial.as_deref(), Some("S,N"));
        assert_eq!(d.id.as_deref(), Some("x,y"));
    }

    #[test]
    fn malformed_lists_and_messages() {
        assert_eq!(
            p("img,"),
            Err(DiskSpecError::Syntax(OptionError::EmptyItem))
        );
        assert_eq!(
            p("img,=x"),
            Err(DiskSpecError::Syntax(OptionError::NoKey("=x".into())))
        );
        assert_eq!(
            p("img,bogus"),
            Err(DiskSpecError::UnknownKey("bogus".into()))
        );
        assert_eq!(p("img,cache="), Err(DiskSpecError::NoValue("cache".into())));
        assert_eq!(p("path="), Err(DiskSpecError::NoValue("path".into())));
        let m = |s: &str| p(s).unwrap_err().to_string();
        assert_eq!(
            m("img,format=raw"),
            "Unknown --disk option 'format' (known: path, id, node-name, readonly, cache, serial)"
        );
        assert_eq!(m("img,id=a,id=b"), "--disk option 'id' is given twice");
        assert_eq!(m("img,id="), "--disk option 'id' needs a value");
        assert_eq!(
            m("img,readonly=maybe"),
            "--disk option 'readonly' takes on or off, not 'maybe'"
        );
        assert_eq!(
            m("img,"),
            "--disk list has an empty item (a comma inside a value is written ',,')"
        );
    }
}
