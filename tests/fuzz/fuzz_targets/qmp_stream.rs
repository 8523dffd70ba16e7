// SPDX-License-Identifier: Apache-2.0
//! The QMP stream splitter (`monitor::json_stream`) and the request checker
//! (`monitor::request`) on arbitrary client bytes.
//!
//! Asserts, beyond not panicking:
//! - the items do not depend on how the bytes arrive: the input fed whole and fed in pieces
//!   (cut where the input's own bytes say) gives the same items, and the same pending state;
//! - every value re-serialized as JSON and fed to a fresh splitter comes back as itself, alone,
//!   and all of them concatenated come back as the same sequence (the splitter loses and
//!   invents nothing);
//! - where the input is standard JSON (objects and arrays separated by JSON whitespace, no
//!   duplicate keys, within the nesting limit), the splitter agrees with serde_json's own
//!   stream reader;
//! - the request checker echoes the id whenever the message has one, and an accepted command
//!   or signal (dis)connection rebuilds exactly the message it came from.

#![no_main]

use libfuzzer_sys::fuzz_target;
use monitor::json_stream::{Item, JsonStream, MAX_NESTING};
use monitor::request::{parse_message, Message, Mode};
use serde_json::{Map, Value};

fn feed_whole(data: &[u8]) -> (Vec<Item>, bool) {
    let mut s = JsonStream::new();
    let items = s.feed(data);
    (items, s.is_pending())
}

/// Feeds `data` in pieces whose lengths come from the data itself (1 to 16 bytes).
fn feed_pieces(data: &[u8]) -> (Vec<Item>, bool) {
    let mut s = JsonStream::new();
    let mut items = Vec::new();
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = (usize::from(data[i % data.len()]) % 16 + 1).min(rest.len());
        items.extend(s.feed(&rest[..n]));
        rest = &rest[n..];
        i += 1;
    }
    (items, s.is_pending())
}

fn values(items: &[Item]) -> Vec<&Value> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Value(v) => Some(v),
            Item::Error(_) => None,
        })
        .collect()
}

/// The deepest nesting of brackets in `data`, outside double-quoted strings.
fn lexical_depth(data: &[u8]) -> usize {
    let (mut depth, mut max, mut in_str, mut esc) = (0usize, 0usize, false, false);
    for &b in data {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Whether `text` repeats a key in some object: serde_json keeps the last one, QMP refuses it.
/// Checked by reading the text with a visitor that keeps every key.
fn has_duplicate_key(text: &[u8]) -> bool {
    struct Dup(bool);
    impl<'de> serde::de::DeserializeSeed<'de> for &mut Dup {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> serde::de::Visitor<'de> for &mut Dup {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element_seed(&mut *self)?.is_some() {}
            Ok(())
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut keys = std::collections::BTreeSet::new();
            while let Some(k) = map.next_key::<String>()? {
                if !keys.insert(k) {
                    self.0 = true;
                }
                map.next_value_seed(&mut *self)?;
            }
            Ok(())
        }
    }
    let mut dup = Dup(false);
    let mut de = serde_json::Deserializer::from_slice(text);
    de.disable_recursion_limit();
    // Reads value after value until the end (or an error) stops it.
    while serde::de::DeserializeSeed::deserialize(&mut dup, &mut de).is_ok() {}
    dup.0
}

/// serde_json's reading of `data` as a stream of objects and arrays separated by JSON
/// whitespace, when it reads it all. (Top-level scalars are left out: `1 2` is two numbers to
/// both readers, but `truefalse` is one bad keyword to QEMU and two to serde_json.)
fn serde_stream(data: &[u8]) -> Option<Vec<Value>> {
    let mut out = Vec::new();
    let mut rest = data;
    loop {
        rest = &rest[ws_len(rest)..];
        match rest.first() {
            None => return Some(out),
            Some(b'{' | b'[') => {}
            Some(_) => return None,
        }
        let mut de = serde_json::Deserializer::from_slice(rest);
        de.disable_recursion_limit();
        let mut one = de.into_iter::<Value>();
        out.push(one.next()?.ok()?);
        rest = &rest[one.byte_offset()..];
    }
}

/// Length of the JSON whitespace (space, tab, LF, CR) at the start of `b`.
fn ws_len(b: &[u8]) -> usize {
    b.iter()
        .take_while(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
        .count()
}

/// The message an accepted request came from, rebuilt from what the checker kept.
fn rebuild(m: &Message) -> Value {
    let mut o = Map::new();
    let id = match m {
        Message::Command(r) => {
            let verb = match r.mode {
                Mode::InBand => "execute",
                Mode::OutOfBand => "exec-oob",
            };
            o.insert(verb.into(), Value::String(r.command.clone()));
            if let Some(a) = &r.arguments {
                o.insert("arguments".into(), Value::Object(a.clone()));
            }
            &r.id
        }
        Message::Connect(c) => {
            o.insert("connect".into(), Value::String(c.signal.clone()));
            o.insert("owner".into(), c.owner.clone());
            if let Some(u) = &c.user_data {
                o.insert("user_data".into(), u.clone());
            }
            &c.id
        }
        Message::Disconnect(d) => {
            o.insert("disconnect".into(), d.connection.clone());
            o.insert("owner".into(), d.owner.clone());
            &d.id
        }
    };
    if let Some(id) = id {
        o.insert("id".into(), id.clone());
    }
    Value::Object(o)
}

fn check_request(v: &Value) {
    for oob in [false, true] {
        match parse_message(v.clone(), oob) {
            Ok(m) => {
                assert_eq!(&rebuild(&m), v, "accepted message rebuilt differently");
                if let Message::Command(r) = &m {
                    assert!(oob || r.mode == Mode::InBand, "exec-oob without oob: {v}");
                }
            }
            Err(e) => {
                assert_eq!(e.id.as_ref(), v.get("id"), "id not echoed for {v}");
                assert!(
                    e.desc.starts_with("QMP input "),
                    "unexpected text {}",
                    e.desc
                );
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (whole, pending) = feed_whole(data);
    let (pieces, pending_pieces) = feed_pieces(data);
    assert_eq!(whole, pieces, "items depend on how the input was cut");
    assert_eq!(pending, pending_pieces);

    // Values survive a round trip through their serialization, alone and together (each
    // followed by a newline, which ends a top-level number or keyword).
    let vals = values(&whole);
    let mut all = Vec::new();
    for v in &vals {
        let mut text = serde_json::to_vec(v).expect("serializable");
        text.push(b'\n');
        let (again, pending) = feed_whole(&text);
        assert!(!pending, "a serialized value left bytes pending: {v}");
        assert_eq!(
            again,
            [Item::Value((*v).clone())],
            "{v} changed by its round trip"
        );
        all.extend_from_slice(&text);
    }
    let (again, _) = feed_whole(&all);
    let expected: Vec<Item> = vals.iter().map(|v| Item::Value((*v).clone())).collect();
    assert_eq!(again, expected, "the concatenation split differently");

    // Standard JSON reads as serde_json reads it.
    // (Both readers recurse: deeper input, which the splitter refuses, is not compared.)
    let comparable = lexical_depth(data) <= MAX_NESTING;
    if let Some(expected) = comparable.then(|| serde_stream(data)).flatten() {
        if !has_duplicate_key(data) {
            let got: Vec<Value> = whole
                .iter()
                .map(|i| match i {
                    Item::Value(v) => v.clone(),
                    Item::Error(e) => panic!("standard JSON refused: {e}"),
                })
                .collect();
            assert_eq!(got, expected, "differs from serde_json's reading");
        }
    }

    for v in vals {
        check_request(v);
    }
});
