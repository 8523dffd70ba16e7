// SPDX-License-Identifier: Apache-2.0
//! One parser for every QEMU-style option value: vmm's `--disk` and `--qmp`, and every option of
//! QEMU's command line ([`crate::qemu_cli`]: `-blockdev`, `-device`, `-chardev`, `-machine`, ...).
//!
//! The text form is QEMU's QemuOpts/keyval list: `key=value` items separated by commas, where
//! a comma inside a value is doubled (`path=a,,b` is the path `a,b`). The first item may be a
//! bare value for an *implied* key (QEMU's `implied_opt_name`: `--disk img.raw` is
//! `path=img.raw`); any other item without `=` is a bare key, which [`OptionList::take_flag`]
//! reads as `on` (`server` means `server=on`). [`OptionList::parse_with_head`] is for QEMU's
//! legacy forms whose first item is a positional value such as an address. Where QEMU also takes JSON (`-blockdev`,
//! `-device`), [`OptionList::parse_any`] reads an input starting with `{` as a JSON object and
//! flattens it to the same dotted keys as QEMU's keyval:
//! `{"driver": "file", "file": {"filename": "x"}}` is `driver=file,file.filename=x`.
//!
//! An option's type then takes each key it knows with a typed getter and calls
//! [`OptionList::finish`], which refuses whatever nobody took, so each option checks its keys in
//! one place. Keys may appear once.

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// Errors in an option list. Each renders as one line that reads after the option's name
/// (`--disk option 'id' is given twice`).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum OptionError {
    /// An empty item: `a=1,,` is fine (`,,` is a comma), `a=1,` or `,a=1` is not.
    #[error("list has an empty item (a comma inside a value is written ',,')")]
    EmptyItem,
    /// An item such as `=x`.
    #[error("item '{0}' has no key before '='")]
    NoKey(String),
    /// A key given twice.
    #[error("option '{0}' is given twice")]
    Repeated(String),
    /// A key no one took.
    #[error("option '{0}' is not known")]
    Unknown(String),
    /// A bare key where a value is needed.
    #[error("option '{0}' needs a value")]
    NoValue(String),
    /// Not one of QEMU's toggles.
    #[error("option '{key}' takes on or off, not '{value}'")]
    BadBool {
        /// The key.
        key: String,
        /// What it was given.
        value: String,
    },
    /// Not an unsigned integer.
    #[error("option '{key}' takes a number, not '{value}'")]
    BadNumber {
        /// The key.
        key: String,
        /// What it was given.
        value: String,
    },
    /// Not a size.
    #[error("option '{key}' takes a size in bytes with an optional K, M, G, T, P or E suffix, not '{value}'")]
    BadSize {
        /// The key.
        key: String,
        /// What it was given.
        value: String,
    },
    /// The JSON form does not parse (serde_json's message, with its line and column).
    #[error("JSON is malformed: {0}")]
    Json(String),
    /// A JSON object with an empty key, which has no text form.
    #[error("JSON has an empty key")]
    JsonEmptyKey,
    /// The JSON form is not an object.
    #[error("JSON must be an object, as in {{\"driver\": ...}}")]
    JsonNotObject,
    /// A JSON null, which has no text form.
    #[error("option '{0}' is null; leave it out instead")]
    JsonNull(String),
}

/// The toggles QEMU accepts for a boolean option.
///
/// # Errors
/// [`OptionError::BadBool`] for anything but on/off, yes/no, true/false.
pub fn parse_bool(key: &str, value: &str) -> Result<bool, OptionError> {
    match value {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => Err(OptionError::BadBool {
            key: key.into(),
            value: value.into(),
        }),
    }
}

/// An unsigned number, decimal or `0x` hexadecimal (QEMU also reads a leading `0` as octal;
/// we do not, as `010` meaning 8 surprises more than it helps).
///
/// # Errors
/// [`OptionError::BadNumber`] for anything else, or a value beyond `u64`.
pub fn parse_u64(key: &str, value: &str) -> Result<u64, OptionError> {
    let parsed = match value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    // from_str_radix and parse accept a leading '+'; QEMU's numbers do not.
    match parsed {
        Ok(n) if !value.contains('+') => Ok(n),
        _ => Err(OptionError::BadNumber {
            key: key.into(),
            value: value.into(),
        }),
    }
}

/// A size in bytes as QEMU writes it: a number with an optional suffix `B`, `K`, `M`, `G`, `T`,
/// `P` or `E` (either case; powers of 1024). Fractions (`1.5G`) are not taken.
///
/// # Errors
/// [`OptionError::BadSize`] for anything else, or a size beyond `u64`.
pub fn parse_size(key: &str, value: &str) -> Result<u64, OptionError> {
    let bad = || OptionError::BadSize {
        key: key.into(),
        value: value.into(),
    };
    let (digits, shift) = match value.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'B' => 0,
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                'P' => 50,
                'E' => 60,
                _ => return Err(bad()),
            };
            (&value[..i], shift)
        }
        _ => (value, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(1 << shift).ok_or_else(bad)
}

/// One item of the list.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    key: String,
    /// `None` for a bare key (`server`).
    value: Option<String>,
    taken: bool,
}

/// A parsed option value: ordered keys with their values, taken one by one by the option's
/// type.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OptionList {
    entries: Vec<Entry>,
}

/// Splits on single commas, turning `,,` into a literal comma.
fn split_items(s: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != ',' {
            current.push(c);
        } else if chars.next_if_eq(&',').is_some() {
            current.push(',');
        } else {
            items.push(std::mem::take(&mut current));
        }
    }
    items.push(current);
    items
}

impl OptionList {
    /// Parses a `key=value,...` list. With `implied`, a first item without `=` is the value of
    /// that key (`img.raw` is `path=img.raw`); an empty input is an empty list.
    ///
    /// # Errors
    /// Empty items, items without a key, and repeated keys.
    pub fn parse(s: &str, implied: Option<&str>) -> Result<Self, OptionError> {
        let mut list = Self::default();
        if s.is_empty() {
            return Ok(list);
        }
        for (i, item) in split_items(s).into_iter().enumerate() {
            match (item.split_once('='), implied) {
                _ if item.is_empty() => return Err(OptionError::EmptyItem),
                (Some(("", _)), _) => return Err(OptionError::NoKey(item)),
                (Some((key, value)), _) => list.push(key.into(), Some(value.into()))?,
                (None, Some(key)) if i == 0 => list.push(key.into(), Some(item))?,
                (None, _) => list.push(item, None)?,
            }
        }
        Ok(list)
    }

    /// Parses a list whose first item is a positional value rather than an item, `=` and
    /// all, as in QEMU's legacy `-qmp unix:PATH,server=on`: returns that first value (with
    /// `,,` unescaped) and the list of the items after it.
    ///
    /// # Errors
    /// As [`OptionList::parse`], for the items after the first; a trailing lone comma is an
    /// empty item.
    pub fn parse_with_head(s: &str) -> Result<(String, Self), OptionError> {
        let (head, rest) = split_head(s);
        let list = match rest {
            Some(rest) if rest.is_empty() => return Err(OptionError::EmptyItem),
            Some(rest) => Self::parse(&rest, None)?,
            None => Self::default(),
        };
        Ok((head, list))
    }

    /// Parses a JSON object, flattened to dotted keys as QEMU's keyval does: nested objects
    /// give `outer.inner`, arrays `list.0`, `list.1`; booleans and numbers become their text
    /// (`true`, `42`), which the typed getters read back. Empty objects and arrays give no
    /// keys.
    ///
    /// # Errors
    /// Malformed JSON, a value that is not an object, a null, and duplicate keys (QEMU's JSON
    /// parser refuses them too), including those made by flattening (`{"a.b":1,"a":{"b":2}}`).
    pub fn parse_json(s: &str) -> Result<Self, OptionError> {
        let mut list = Self::default();
        let mut failure = None;
        let mut de = serde_json::Deserializer::from_str(s);
        let seed = Flatten {
            top: true,
            prefix: String::new(),
            list: &mut list,
            failure: &mut failure,
        };
        let parsed = seed.deserialize(&mut de).and_then(|()| de.end());
        match (failure, parsed) {
            (Some(e), _) => Err(e),
            (None, Err(e)) => Err(OptionError::Json(e.to_string())),
            (None, Ok(())) => Ok(list),
        }
    }

    /// The form of options QEMU also takes as JSON (`-blockdev`, `-device`): an input starting
    /// with `{` is [`OptionList::parse_json`], anything else [`OptionList::parse`]. Options QEMU
    /// does not take as JSON (`-drive`, hence `--disk`, and `-qmp`) use `parse`, so that a path
    /// starting with `{` stays a path.
    ///
    /// # Errors
    /// Those of the form used.
    pub fn parse_any(s: &str, implied: Option<&str>) -> Result<Self, OptionError> {
        if s.trim_start().starts_with('{') {
            Self::parse_json(s)
        } else {
            Self::parse(s, implied)
        }
    }

    fn push(&mut self, key: String, value: Option<String>) -> Result<(), OptionError> {
        if self.entries.iter().any(|e| e.key == key) {
            return Err(OptionError::Repeated(key));
        }
        self.entries.push(Entry {
            key,
            value,
            taken: false,
        });
        Ok(())
    }

    /// Marks `key` taken and returns its value: `None` when absent, `Some(None)` when bare.
    fn take(&mut self, key: &str) -> Option<Option<String>> {
        let entry = self.entries.iter_mut().find(|e| e.key == key && !e.taken)?;
        entry.taken = true;
        Some(entry.value.take())
    }

    /// The keys in input order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.key.as_str())
    }

    /// Takes a string value (possibly empty).
    ///
    /// # Errors
    /// [`OptionError::NoValue`] for a bare key.
    pub fn take_str(&mut self, key: &str) -> Result<Option<String>, OptionError> {
        match self.take(key) {
            None => Ok(None),
            Some(None) => Err(OptionError::NoValue(key.into())),
            Some(Some(v)) => Ok(Some(v)),
        }
    }

    /// Takes a boolean written as one of QEMU's toggles (see [`parse_bool`]).
    ///
    /// # Errors
    /// [`OptionError::NoValue`] for a bare key, [`OptionError::BadBool`] for other words.
    pub fn take_bool(&mut self, key: &str) -> Result<Option<bool>, OptionError> {
        self.take_str(key)?.map(|v| parse_bool(key, &v)).transpose()
    }

    /// Takes a boolean that may also be written as the bare key, meaning on (QEMU's `server`
    /// for `server=on`). QEMU's deprecated `noKEY` for off is not taken.
    ///
    /// # Errors
    /// [`OptionError::BadBool`] for a value other than a toggle.
    pub fn take_flag(&mut self, key: &str) -> Result<Option<bool>, OptionError> {
        match self.take(key) {
            None => Ok(None),
            Some(None) => Ok(Some(true)),
            Some(Some(v)) => parse_bool(key, &v).map(Some),
        }
    }

    /// Takes an unsigned number (see [`parse_u64`]).
    ///
    /// # Errors
    /// [`OptionError::NoValue`] for a bare key, [`OptionError::BadNumber`] for others.
    pub fn take_u64(&mut self, key: &str) -> Result<Option<u64>, OptionError> {
        self.take_str(key)?.map(|v| parse_u64(key, &v)).transpose()
    }

    /// The entries no one took, in input order, values `None` for bare keys: for an option
    /// whose keys a QAPI type describes (`-blockdev`), which `qapi::rt::from_keyval` reads.
    pub fn into_entries(self) -> Vec<(String, Option<String>)> {
        self.entries
            .into_iter()
            .filter(|e| !e.taken)
            .map(|e| (e.key, e.value))
            .collect()
    }

    /// Ends the parse: every key must have been taken.
    ///
    /// # Errors
    /// [`OptionError::Unknown`] naming the first key no one took.
    pub fn finish(self) -> Result<(), OptionError> {
        match self.entries.into_iter().find(|e| !e.taken) {
            Some(e) => Err(OptionError::Unknown(e.key)),
            None => Ok(()),
        }
    }
}

/// Splits `s` at its first single comma (not part of `,,`): the first item unescaped, and the
/// rest still escaped, or `None` when there is no such comma.
fn split_head(s: &str) -> (String, Option<String>) {
    let mut first = String::new();
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c != ',' {
            first.push(c);
        } else if chars.next_if(|&(_, c)| c == ',').is_some() {
            first.push(',');
        } else {
            return (first, Some(s[i + 1..].to_owned()));
        }
    }
    (first, None)
}

/// Flattens one JSON value under `prefix` into the list; a failure of ours (rather than of
/// the JSON syntax) is left in `failure` so it keeps its type.
struct Flatten<'a> {
    /// The whole input, which must be an object, rather than a value inside it.
    top: bool,
    prefix: String,
    list: &'a mut OptionList,
    failure: &'a mut Option<OptionError>,
}

impl Flatten<'_> {
    fn leaf<E: de::Error>(self, value: String) -> Result<(), E> {
        if self.top {
            *self.failure = Some(OptionError::JsonNotObject);
        } else if let Err(e) = self.list.push(self.prefix, Some(value)) {
            *self.failure = Some(e);
        }
        match self.failure {
            Some(e) => Err(E::custom(e.to_string())),
            None => Ok(()),
        }
    }

    fn fail<E: de::Error>(self, e: OptionError) -> E {
        let message = e.to_string();
        *self.failure = Some(e);
        E::custom(message)
    }

    fn child(&mut self, key: &str) -> Flatten<'_> {
        let prefix = if self.top {
            key.to_owned()
        } else {
            format!("{}.{key}", self.prefix)
        };
        Flatten {
            top: false,
            prefix,
            list: self.list,
            failure: self.failure,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object of options")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.leaf(v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.leaf(v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.leaf(v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.leaf(v.to_string())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.leaf(v.to_owned())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        let e = if self.top {
            OptionError::JsonNotObject
        } else {
            OptionError::JsonNull(self.prefix.clone())
        };
        Err(self.fail(e))
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        if self.top {
            return Err(self.fail(OptionError::JsonNotObject));
        }
        let mut i = 0usize;
        while seq.next_element_seed(self.child(&i.to_string()))?.is_some() {
            i += 1;
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        let mut seen: Vec<String> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if key.is_empty() {
                return Err(self.fail(OptionError::JsonEmptyKey));
            }
            if seen.contains(&key) {
                let full = self.child(&key).prefix;
                return Err(self.fail(OptionError::Repeated(full)));
            }
            map.next_value_seed(self.child(&key))?;
            seen.push(key);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &OptionList) -> Vec<(&str, Option<&str>)> {
        list.entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_deref()))
            .collect()
    }

    #[test]
    fn keyval_items_in_order() {
        let l = OptionList::parse("a=1,b=two,c", None).unwrap();
        assert_eq!(
            pairs(&l),
            [("a", Some("1")), ("b", Some("two")), ("c", None)]
        );
        assert_eq!(l.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
        // Only the first '=' separates.
        let l = OptionList::parse("cmdline=console=ttyS0", None).unwrap();
        assert_eq!(pairs(&l), [("cmdline", Some("console=ttyS0"))]);
        assert_eq!(OptionList::parse("", None).unwrap(), OptionList::default());
    }

    #[test]
    fn doubled_commas_are_literal() {
        let l = OptionList::parse("path=a,,b,id=x,,,,y", None).unwrap();
        assert_eq!(pairs(&l), [("path", Some("a,b")), ("id", Some("x,,y"))]);
        let l = OptionList::parse("a,,b.raw,id=d", Some("path")).unwrap();
        assert_eq!(pairs(&l), [("path", Some("a,b.raw")), ("id", Some("d"))]);
        // Three commas: a literal comma, then a separator.
        let l = OptionList::parse("a=1,,,b=2", None).unwrap();
        assert_eq!(pairs(&l), [("a", Some("1,")), ("b", Some("2"))]);
    }

    #[test]
    fn implied_key() {
        let l = OptionList::parse("img.raw,readonly=on", Some("path")).unwrap();
        assert_eq!(
            pairs(&l),
            [("path", Some("img.raw")), ("readonly", Some("on"))]
        );
        // A first item with '=' is a key=value as any other.
        let l = OptionList::parse("id=x,path=p", Some("path")).unwrap();
        assert_eq!(pairs(&l), [("id", Some("x")), ("path", Some("p"))]);
        // Only the first item may be implied; later bare items are bare keys.
        let l = OptionList::parse("p,q", Some("path")).unwrap();
        assert_eq!(pairs(&l), [("path", Some("p")), ("q", None)]);
        assert_eq!(
            OptionList::parse("img,path=x", Some("path")),
            Err(OptionError::Repeated("path".into()))
        );
        // Without an implied key, a first bare item is a bare key.
        let l = OptionList::parse("server", None).unwrap();
        assert_eq!(pairs(&l), [("server", None)]);
    }

    #[test]
    fn head_item() {
        let (head, l) = OptionList::parse_with_head("unix:/a=b,,c,server=on").unwrap();
        assert_eq!(head, "unix:/a=b,c");
        assert_eq!(pairs(&l), [("server", Some("on"))]);
        let (head, l) = OptionList::parse_with_head("unix:/x").unwrap();
        assert_eq!((head.as_str(), l), ("unix:/x", OptionList::default()));
        let (head, l) = OptionList::parse_with_head("").unwrap();
        assert_eq!((head.as_str(), l), ("", OptionList::default()));
        let (head, _) = OptionList::parse_with_head("tcp::1,,").unwrap();
        assert_eq!(head, "tcp::1,");
        assert_eq!(
            OptionList::parse_with_head("x,"),
            Err(OptionError::EmptyItem)
        );
        assert_eq!(
            OptionList::parse_with_head("x,a,a"),
            Err(OptionError::Repeated("a".into()))
        );
    }

    #[test]
    fn malformed_lists() {
        for s in ["a=1,", ",a=1", "a=1,,,", "a=1,,,,,"] {
            assert_eq!(
                OptionList::parse(s, None),
                Err(OptionError::EmptyItem),
                "{s}"
            );
        }
        assert_eq!(
            OptionList::parse("a=1,=2", None),
            Err(OptionError::NoKey("=2".into()))
        );
        assert_eq!(
            OptionList::parse("a=1,b=2,a=3", None),
            Err(OptionError::Repeated("a".into()))
        );
        assert_eq!(
            OptionList::parse("a,a=1", None),
            Err(OptionError::Repeated("a".into()))
        );
    }

    #[test]
    fn empty_values_are_values() {
        let mut l = OptionList::parse("serial=,id=x", None).unwrap();
        assert_eq!(l.take_str("serial"), Ok(Some(String::new())));
        assert_eq!(l.take_str("id"), Ok(Some("x".into())));
        l.finish().unwrap();
        let mut l = OptionList::parse("readonly=", None).unwrap();
        assert_eq!(
            l.take_bool("readonly"),
            Err(OptionError::BadBool {
                key: "readonly".into(),
                value: String::new()
            })
        );
    }

    #[test]
    fn typed_getters_and_finish() {
        let mut l = OptionList::parse(
            "name=vm,on=on,y=yes,t=true,off=off,n=no,f=false,bare,num=0x10",
            None,
        )
        .unwrap();
        assert_eq!(l.take_str("name"), Ok(Some("vm".into())));
        for k in ["on", "y", "t"] {
            assert_eq!(l.take_bool(k), Ok(Some(true)), "{k}");
        }
        for k in ["off", "n", "f"] {
            assert_eq!(l.take_bool(k), Ok(Some(false)), "{k}");
        }
        assert_eq!(l.take_flag("bare"), Ok(Some(true)));
        assert_eq!(l.take_u64("num"), Ok(Some(16)));
        // Absent keys, and keys already taken, are None.
        assert_eq!(l.take_str("absent"), Ok(None));
        assert_eq!(l.take_str("name"), Ok(None));
        l.finish().unwrap();

        let mut l = OptionList::parse("a=1,b,c=2", None).unwrap();
        assert_eq!(l.take_str("b"), Err(OptionError::NoValue("b".into())));
        assert_eq!(l.take_str("a"), Ok(Some("1".into())));
        assert_eq!(l.finish(), Err(OptionError::Unknown("c".into())));
    }

    #[test]
    fn toggles() {
        for (v, b) in [
            ("on", true),
            ("yes", true),
            ("true", true),
            ("off", false),
            ("no", false),
            ("false", false),
        ] {
            assert_eq!(parse_bool("k", v), Ok(b));
            let mut l = OptionList::parse(&format!("k={v}"), None).unwrap();
            assert_eq!(l.take_flag("k"), Ok(Some(b)));
        }
        for v in ["ON", "1", "", "maybe"] {
            assert_eq!(
                parse_bool("k", v),
                Err(OptionError::BadBool {
                    key: "k".into(),
                    value: v.into()
                })
            );
        }
        assert_eq!(
            parse_bool("wait", "maybe").unwrap_err().to_string(),
            "option 'wait' takes on or off, not 'maybe'"
        );
    }

    #[test]
    fn numbers_and_sizes() {
        assert_eq!(parse_u64("n", "0"), Ok(0));
        assert_eq!(parse_u64("n", "18446744073709551615"), Ok(u64::MAX));
        assert_eq!(parse_u64("n", "0xfF"), Ok(255));
        for v in [
            "",
            "-1",
            "+1",
            "0x",
            "0x+1",
            "1k",
            "18446744073709551616",
            " 1",
        ] {
            assert!(parse_u64("n", v).is_err(), "{v}");
        }
        assert_eq!(parse_size("s", "512"), Ok(512));
        assert_eq!(parse_size("s", "512b"), Ok(512));
        assert_eq!(parse_size("s", "4k"), Ok(4096));
        assert_eq!(parse_size("s", "64M"), Ok(64 << 20));
        assert_eq!(parse_size("s", "1G"), Ok(1 << 30));
        assert_eq!(parse_size("s", "2T"), Ok(2 << 40));
        assert_eq!(parse_size("s", "15E"), Ok(15 << 60));
        for v in ["", "G", "16E", "1.5G", "1X", "-1", "+1", "1 G", "1GB"] {
            assert_eq!(
                parse_size("s", v),
                Err(OptionError::BadSize {
                    key: "s".into(),
                    value: v.into()
                }),
                "{v}"
            );
        }
    }

    #[test]
    fn json_is_flattened_as_keyval() {
        let l = OptionList::parse_any(
            r#"{"driver": "file", "file": {"filename": "x,y", "aio": {"n": 2}},
                "read-only": true, "size": -3, "ratio": 0.5, "list": ["a", {"b": false}],
                "empty": {}, "none": []}"#,
            Some("driver"),
        )
        .unwrap();
        assert_eq!(
            pairs(&l),
            [
                ("driver", Some("file")),
                ("file.filename", Some("x,y")),
                ("file.aio.n", Some("2")),
                ("read-only", Some("true")),
                ("size", Some("-3")),
                ("ratio", Some("0.5")),
                ("list.0", Some("a")),
                ("list.1.b", Some("false")),
            ]
        );
        let mut l = l;
        assert_eq!(l.take_bool("read-only"), Ok(Some(true)));
        assert_eq!(l.take_bool("list.1.b"), Ok(Some(false)));
        assert_eq!(l.take_u64("file.aio.n"), Ok(Some(2)));
        assert_eq!(OptionList::parse_json("{}").unwrap(), OptionList::default());
        // parse_any without a leading '{' is the keyval form.
        let l = OptionList::parse_any("file,id=x", Some("driver")).unwrap();
        assert_eq!(pairs(&l), [("driver", Some("file")), ("id", Some("x"))]);
    }

    #[test]
    fn malformed_json() {
        let json = |s: &str| OptionList::parse_json(s);
        assert!(
            matches!(json(r#"{"a": 1"#), Err(OptionError::Json(m)) if m.contains("line 1")),
            "{:?}",
            json(r#"{"a": 1"#)
        );
        assert!(matches!(json(r#"{"a": 1} x"#), Err(OptionError::Json(_))));
        assert!(matches!(json(r#"{a: 1}"#), Err(OptionError::Json(_))));
        assert!(matches!(json(""), Err(OptionError::Json(_))));
        for s in ["[1]", "1", "\"s\"", "null", "true"] {
            assert_eq!(json(s), Err(OptionError::JsonNotObject), "{s}");
        }
        assert_eq!(
            json(r#"{"a": {"b": null}}"#),
            Err(OptionError::JsonNull("a.b".into()))
        );
        assert_eq!(json(r#"{"": 1}"#), Err(OptionError::JsonEmptyKey));
        assert_eq!(json(r#"{"a": {"": 1}}"#), Err(OptionError::JsonEmptyKey));
        assert_eq!(
            json(r#"{"a": 1, "a": 2}"#),
            Err(OptionError::Repeated("a".into()))
        );
        assert_eq!(
            json(r#"{"x": {"a": {"p": 1}, "a": {"q": 2}}}"#),
            Err(OptionError::Repeated("x.a".into()))
        );
        assert_eq!(
            json(r#"{"a.b": 1, "a": {"b": 2}}"#),
            Err(OptionError::Repeated("a.b".into()))
        );
        // Deep nesting stops at serde_json's recursion limit instead of overflowing the stack.
        let deep = format!("{}{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000));
        assert!(matches!(json(&deep), Err(OptionError::Json(_))));
    }

    #[test]
    fn messages_are_one_line() {
        let errors = [
            OptionError::EmptyItem,
            OptionError::NoKey("=x".into()),
            OptionError::Repeated("id".into()),
            OptionError::Unknown("format".into()),
            OptionError::NoValue("id".into()),
            OptionError::JsonNotObject,
            OptionError::JsonNull("a".into()),
            OptionList::parse_json("{").unwrap_err(),
        ];
        for e in errors {
            let m = e.to_string();
            assert!(!m.contains('\n') && !m.is_empty(), "{m}");
        }
        assert_eq!(
            OptionError::JsonNotObject.to_string(),
            r#"JSON must be an object, as in {"driver": ...}"#
        );
    }
}
