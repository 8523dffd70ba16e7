// SPDX-License-Identifier: Apache-2.0
//! A streaming splitter for QMP input, with QEMU's lexical rules and limits.
//!
//! Bytes arrive in arbitrary pieces: several requests in one read, one request over several.
//! The splitter tracks strings and brace/bracket depth and hands out each complete top-level
//! value as normalized JSON (QEMU also accepts single-quoted strings, which are rewritten to
//! double quotes here so that a standard JSON parser can read the result). Lexical errors
//! (a byte that cannot appear where it is, a raw control character in a string) and limit
//! violations produce an error item and reset the splitter, so the next request is read
//! normally: this is how a client resynchronizes after garbage.

use serde_json::Value;

/// Deepest nesting of braces and brackets QEMU accepts.
pub const MAX_NESTING: usize = 1024;
/// Largest message, in bytes.
pub const MAX_TOKEN_SIZE: usize = 64 << 20;
/// Most tokens in one message.
pub const MAX_TOKEN_COUNT: usize = 2 << 20;
/// Buffer capacity kept between messages.
const KEEP_CAPACITY: usize = 64 << 10;

/// One item of the stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A complete, well-formed JSON value.
    Value(Value),
    /// A message that could not be read; the text is QEMU's error description.
    Error(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between tokens.
    Between,
    /// Inside a number or keyword.
    Scalar,
    /// Inside a string opened with this quote.
    Str(u8),
    /// After a backslash in a string opened with this quote.
    Escape(u8),
    /// After a 0xC0 byte in a string opened with this quote (0xC0 0x80 is QEMU's encoding
    /// of U+0000, "modified UTF-8").
    AfterC0(u8),
    /// The rest of an interpolation token (`%p`), already reported.
    Interpolation,
}

/// The splitter; one per client connection.
#[derive(Debug)]
pub struct JsonStream {
    buf: Vec<u8>,
    state: State,
    depth: usize,
    tokens: usize,
    /// The current message is being skipped: it is lexed (to find its end) but not kept, and
    /// this error is its item.
    skipping: Option<String>,
}

impl Default for JsonStream {
    fn default() -> Self {
        Self::new()
    }
}

/// Renders a byte for a "stray" error the way QEMU does: printable ASCII as itself, anything
/// else as a JSON-style escape, invalid UTF-8 as U+FFFD.
fn stray(byte: u8) -> String {
    let shown = match byte {
        0x20..=0x7e => (byte as char).to_string(),
        0x00..=0x1f | 0x7f => format!("\\u{byte:04X}"),
        _ => "\\uFFFD".to_string(),
    };
    format!("JSON parse error, stray '{shown}'")
}

/// The start of the error raised for a repeated object key.
const DUPLICATE_KEY: &str = "duplicate key";

/// A JSON value read like `serde_json::Value`, except that an object with a repeated key is
/// an error, as in QEMU (serde_json would keep the last one).
struct StrictValue(Value);

impl<'de> serde::Deserialize<'de> for StrictValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut v = Vec::new();
        while let Some(StrictValue(e)) = seq.next_element()? {
            v.push(e);
        }
        Ok(Value::Array(v))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut m = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let StrictValue(value) = map.next_value()?;
            if m.insert(key, value).is_some() {
                return Err(serde::de::Error::custom(DUPLICATE_KEY));
            }
        }
        Ok(Value::Object(m))
    }
}

/// Maps a serde_json syntax error to QEMU's wording.
fn parse_error(e: &serde_json::Error, text: &[u8]) -> String {
    let msg = e.to_string();
    let what = if msg.starts_with("key must be a string") {
        // QEMU reads a value where the key should be: punctuation is not a value at all.
        match byte_at(text, e.line(), e.column()) {
            Some(b'}' | b']' | b',' | b':') | None => "expecting value",
            Some(_) => "key is not a string in object",
        }
    } else if msg.starts_with("expected `:`") {
        "missing : in object pair"
    } else if msg.starts_with("expected `,` or `}`") {
        "expected separator in dict"
    } else if msg.starts_with("expected `,` or `]`") {
        "expected separator in list"
    } else if msg.starts_with(DUPLICATE_KEY) {
        "duplicate key"
    } else if msg.starts_with("invalid unicode code point") {
        "invalid UTF-8 sequence in string"
    } else if msg.starts_with("invalid escape")
        || msg.starts_with("lone leading surrogate")
        || msg.starts_with("unexpected end of hex escape")
    {
        "invalid escape sequence in string"
    } else if msg.starts_with("expected ident") {
        "invalid keyword"
    } else if msg.starts_with("invalid number") || msg.starts_with("number out of range") {
        "invalid number"
    } else {
        "expecting value"
    };
    format!("JSON parse error, {what}")
}

/// The byte at serde's 1-based line and column (the column of the offending byte).
fn byte_at(text: &[u8], line: usize, column: usize) -> Option<u8> {
    let start: usize = text
        .split(|&b| b == b'\n')
        .take(line.saturating_sub(1))
        .map(|l| l.len() + 1)
        .sum();
    text.get(start + column.checked_sub(1)?).copied()
}

impl JsonStream {
    /// Creates an empty splitter.
    pub fn new() -> Self {
        Self {
            buf: Vec::new(),
            state: State::Between,
            depth: 0,
            tokens: 0,
            skipping: None,
        }
    }

    /// Drops what is held of the partly read message and skips the rest of it: it will be
    /// answered with `error` when its end arrives, and the stream stays in sync.
    pub fn skip_current(&mut self, error: String) {
        self.buf = Vec::new();
        self.skipping = Some(error);
    }

    /// True when a message is partly read (the client owes more bytes).
    pub fn is_pending(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Bytes held for the partly read message.
    pub fn pending_len(&self) -> usize {
        self.buf.len()
    }

    fn reset(&mut self) {
        self.skipping = None;
        self.buf.clear();
        // A large message leaves a large buffer; keep only what a usual request needs.
        self.buf.shrink_to(KEEP_CAPACITY);
        self.state = State::Between;
        self.depth = 0;
        self.tokens = 0;
    }

    fn error(&mut self, out: &mut Vec<Item>, msg: String) {
        self.reset();
        out.push(Item::Error(msg));
    }

    fn emit(&mut self, out: &mut Vec<Item>) {
        if let Some(error) = self.skipping.take() {
            self.reset();
            out.push(Item::Error(error));
            return;
        }
        // Depth is bounded by MAX_NESTING above, so serde's own recursion guard (128 levels)
        // can be lifted; the monitor thread's stack holds 1024 levels comfortably.
        let mut de = serde_json::Deserializer::from_slice(&self.buf);
        de.disable_recursion_limit();
        let parsed = serde::Deserialize::deserialize(&mut de)
            .and_then(|v: StrictValue| de.end().map(|()| v.0));
        let item = match parsed {
            Ok(v) => Item::Value(v),
            Err(e) => Item::Error(parse_error(&e, &self.buf)),
        };
        self.reset();
        out.push(item);
    }

    fn count_token(&mut self, out: &mut Vec<Item>) -> bool {
        self.tokens += 1;
        if self.tokens > MAX_TOKEN_COUNT {
            self.error(out, "JSON token count limit exceeded".into());
            return false;
        }
        true
    }

    /// Ends a number or keyword; at top level that ends a message.
    fn end_scalar(&mut self, out: &mut Vec<Item>) {
        self.state = State::Between;
        if self.depth == 0 {
            self.emit(out);
        }
    }

    /// Feeds bytes; returns the items completed by them, in order.
    pub fn feed(&mut self, input: &[u8]) -> Vec<Item> {
        let mut out = Vec::new();
        for &b in input {
            if self.skipping.is_some() && self.buf.len() >= KEEP_CAPACITY {
                // Only the lexer state matters while skipping.
                self.buf.clear();
            }
            if self.buf.len() >= MAX_TOKEN_SIZE {
                self.error(&mut out, "JSON token size limit exceeded".into());
            }
            match self.state {
                State::Str(q) => self.in_string(q, b, &mut out),
                State::Escape(q) => self.in_escape(q, b),
                State::AfterC0(q) => self.after_c0(q, b, &mut out),
                State::Scalar => {
                    if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.') {
                        self.buf.push(b);
                    } else {
                        self.end_scalar(&mut out);
                        self.between(b, &mut out);
                    }
                }
                State::Interpolation if b.is_ascii_alphanumeric() => {}
                State::Interpolation | State::Between => {
                    self.state = State::Between;
                    self.between(b, &mut out);
                }
            }
        }
        out
    }

    fn in_string(&mut self, quote: u8, b: u8, out: &mut Vec<Item>) {
        match b {
            b'\\' => self.state = State::Escape(quote),
            0xc0 => self.state = State::AfterC0(quote),
            _ if b == quote => {
                self.buf.push(b'"');
                self.state = State::Between;
                if self.depth == 0 {
                    self.emit(out);
                }
            }
            b'"' => self.buf.extend_from_slice(b"\\\""),
            // Control characters and bytes that never occur in UTF-8 end the message at once;
            // other invalid UTF-8 is left for the parser, which rejects the whole message.
            0x00..=0x1f | 0xfe | 0xff => self.error(out, stray(b)),
            _ => self.buf.push(b),
        }
    }

    fn after_c0(&mut self, quote: u8, b: u8, out: &mut Vec<Item>) {
        self.state = State::Str(quote);
        if b == 0x80 {
            self.buf.extend_from_slice(b"\\u0000");
        } else {
            self.buf.push(0xc0);
            self.in_string(quote, b, out);
        }
    }

    fn in_escape(&mut self, quote: u8, b: u8) {
        match b {
            // \' is QEMU's escape for a single quote; JSON has no such escape.
            b'\'' => self.buf.push(b'\''),
            _ => {
                self.buf.push(b'\\');
                self.buf.push(b);
            }
        }
        self.state = State::Str(quote);
    }

    fn between(&mut self, b: u8, out: &mut Vec<Item>) {
        match b {
            b' ' | b'\t' | b'\n' | b'\r' => {
                if self.depth > 0 {
                    self.buf.push(b);
                }
            }
            b'{' | b'[' => {
                if !self.count_token(out) {
                    return;
                }
                self.depth += 1;
                if self.depth > MAX_NESTING {
                    self.error(out, "JSON nesting depth limit exceeded".into());
                    return;
                }
                self.buf.push(b);
            }
            b'}' | b']' => {
                if !self.count_token(out) {
                    return;
                }
                self.buf.push(b);
                if self.depth == 0 {
                    // A closer with nothing open: QEMU parses it alone and fails.
                    self.emit(out);
                    return;
                }
                self.depth -= 1;
                if self.depth == 0 {
                    self.emit(out);
                }
            }
            b',' | b':' => {
                if self.count_token(out) {
                    self.buf.push(b);
                    if self.depth == 0 {
                        self.emit(out);
                    }
                }
            }
            b'"' | b'\'' => {
                if self.count_token(out) {
                    self.buf.push(b'"');
                    self.state = State::Str(b);
                }
            }
            b'-' | b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z' => {
                if self.count_token(out) {
                    self.buf.push(b);
                    self.state = State::Scalar;
                }
            }
            b'%' => {
                // QEMU's lexer reads `%p`-style interpolations as one token, invalid in QMP.
                self.error(out, stray(b));
                self.state = State::Interpolation;
            }
            _ => self.error(out, stray(b)),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn values(items: &[Item]) -> Vec<Value> {
        items
            .iter()
            .map(|i| match i {
                Item::Value(v) => v.clone(),
                Item::Error(e) => panic!("unexpected error {e}"),
            })
            .collect()
    }

    #[test]
    fn several_requests_in_one_read_and_one_split_across_reads() {
        let mut s = JsonStream::new();
        let items = s.feed(b"{\"execute\":\"a\"}{\"execute\":\"b\"}\r\n{\"exec");
        assert_eq!(
            values(&items),
            vec![json!({"execute":"a"}), json!({"execute":"b"})]
        );
        assert!(s.is_pending());
        let items = s.feed(b"ute\": \"c\", \"arguments\": {\"x\": [1, {\"y\": \"}\"}]}}");
        assert_eq!(
            values(&items),
            vec![json!({"execute":"c","arguments":{"x":[1,{"y":"}"}]}})]
        );
        assert!(!s.is_pending());
    }

    #[test]
    fn single_quotes_are_accepted() {
        let mut s = JsonStream::new();
        let items = s.feed(br#"{'execute':'query-status','id':'it\'s "x"'}"#);
        assert_eq!(
            values(&items),
            vec![json!({"execute":"query-status","id":"it's \"x\""})]
        );
    }

    #[test]
    fn top_level_scalars_are_messages() {
        let mut s = JsonStream::new();
        let items = s.feed(b"null\n\"str\" 42 ");
        assert_eq!(values(&items), vec![json!(null), json!("str"), json!(42)]);
    }

    #[test]
    fn syntax_error_then_recovery() {
        let mut s = JsonStream::new();
        let items = s.feed(b"{]\n{\"execute\": }{'execute':'x'}");
        assert!(matches!(&items[0], Item::Error(e) if e.starts_with("JSON parse error")));
        assert_eq!(
            items[1],
            Item::Error("JSON parse error, expecting value".into())
        );
        assert_eq!(items[2], Item::Value(json!({"execute":"x"})));
    }

    #[test]
    fn lexical_errors_reset() {
        for bad in [
            &b"{\xff"[..],
            b"{\x01",
            b"{'bad \xff",
            b"{'execute': 'nonexistent', 'id':'\n",
            b"%p",
        ] {
            let mut s = JsonStream::new();
            let mut items = s.feed(bad);
            items.extend(s.feed(b"{ 'execute': 'no-such-cmd' }"));
            assert_eq!(items.len(), 2, "{bad:?}: {items:?}");
            assert!(
                matches!(&items[0], Item::Error(e) if e.starts_with("JSON parse error, stray")),
                "{items:?}"
            );
            assert_eq!(items[1], Item::Value(json!({"execute":"no-such-cmd"})));
        }
        let mut s = JsonStream::new();
        assert_eq!(
            s.feed(b"\x01"),
            vec![Item::Error("JSON parse error, stray '\\u0001'".into())]
        );
        assert_eq!(
            s.feed(b"\xff"),
            vec![Item::Error("JSON parse error, stray '\\uFFFD'".into())]
        );
    }

    #[test]
    fn nesting_limit_then_one_error_per_stray_closer() {
        let mut s = JsonStream::new();
        let deep = "[".repeat(MAX_NESTING + 1) + &"]".repeat(MAX_NESTING + 1);
        let items = s.feed(deep.as_bytes());
        assert_eq!(
            items[0],
            Item::Error("JSON nesting depth limit exceeded".into())
        );
        // The limit hit at the 1025th '[': the rest of that token run is discarded... the
        // closers each produce a parse error, as QEMU does.
        assert_eq!(items.len(), 1 + MAX_NESTING + 1);
        assert!(items[1..]
            .iter()
            .all(|i| *i == Item::Error("JSON parse error, expecting value".into())));
        let ok = "[".repeat(MAX_NESTING) + &"]".repeat(MAX_NESTING);
        assert_eq!(s.feed(ok.as_bytes()).len(), 1);
        assert!(matches!(s.feed(ok.as_bytes())[0], Item::Value(_)));
    }

    #[test]
    fn a_missing_key_reads_as_a_missing_value() {
        let mut s = JsonStream::new();
        let items = s.feed(b"{]{,}{1:2}\n{'a':\n 1, 2:3}");
        let texts: Vec<&str> = items
            .iter()
            .map(|i| match i {
                Item::Error(e) => e.as_str(),
                Item::Value(_) => "value",
            })
            .collect();
        assert_eq!(
            texts,
            vec![
                "JSON parse error, expecting value",
                "JSON parse error, expecting value",
                "JSON parse error, key is not a string in object",
                "JSON parse error, key is not a string in object",
            ]
        );
    }

    #[test]
    fn incomplete_message_waits() {
        let mut s = JsonStream::new();
        assert!(s.feed(b"{\"execute\":\"query-status\"").is_empty());
        assert!(s.is_pending());
        assert_eq!(s.feed(b"}").len(), 1);
    }

    #[test]
    fn invalid_utf8_in_a_string_fails_that_message_only() {
        for bad in [
            &b"\xc1\x80"[..],
            b"\xf5\x80\x80\x80",
            b"\xc3\x28",
            b"\xed\xa0\x80",
        ] {
            let mut s = JsonStream::new();
            let mut msg = b"{'execute':'x','id':'".to_vec();
            msg.extend_from_slice(bad);
            msg.extend_from_slice(b"'}{'execute':'next'}");
            let items = s.feed(&msg);
            assert_eq!(
                items,
                vec![
                    Item::Error("JSON parse error, invalid UTF-8 sequence in string".into()),
                    Item::Value(json!({"execute": "next"}))
                ],
                "{bad:?}"
            );
        }
        // QEMU reads C0 80 as U+0000.
        let mut s = JsonStream::new();
        let items = s.feed(b"{'id':'a\xc0\x80b'}");
        assert_eq!(values(&items), vec![json!({"id": "a\u{0}b"})]);
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        let mut s = JsonStream::new();
        let items = s.feed(b"{'execute':'a','execute':'b'}{'x':{'y':1,'y':2}}{'a':1,'b':1}");
        assert_eq!(
            items[0],
            Item::Error("JSON parse error, duplicate key".into())
        );
        assert_eq!(
            items[1],
            Item::Error("JSON parse error, duplicate key".into())
        );
        assert_eq!(items[2], Item::Value(json!({"a": 1, "b": 1})));
    }

    /// Found by the `qmp_stream` fuzz target: a float a client sends back as serde_json (or
    /// Python) printed it must read as the same number, as QEMU's `strtod` reads it.
    #[test]
    fn floats_read_exactly() {
        for text in [
            "1.1111111111111111e21",
            "1111111111111111111112",
            "2.2250738585072014e-308",
        ] {
            let exact: f64 = text.parse().unwrap();
            let mut s = JsonStream::new();
            let items = s.feed(format!("[{text}]").as_bytes());
            assert_eq!(values(&items), vec![json!([exact])], "{text}");
        }
    }

    #[test]
    fn unicode_in_strings() {
        let mut s = JsonStream::new();
        let items = s.feed("{'id':'héllo \\u00e9'}".as_bytes());
        assert_eq!(values(&items), vec![json!({"id":"héllo é"})]);
    }
}
