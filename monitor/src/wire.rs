// SPDX-License-Identifier: Apache-2.0
//! Writing QMP messages as QEMU does: one line per message ending in CRLF, `": "` and `", "`
//! separators, and pure ASCII output (anything else as `\uXXXX`).

use std::io::{self, Write};

use serde::Serialize;
use serde_json::ser::{CharEscape, Formatter};
use serde_json::Value;

/// serde_json formatter producing QEMU's spacing and ASCII-only strings.
struct QmpFormatter;

impl Formatter for QmpFormatter {
    fn begin_array_value<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        if fragment.is_ascii() {
            return w.write_all(fragment.as_bytes());
        }
        let mut units = [0u16; 2];
        for c in fragment.chars() {
            if c.is_ascii() {
                w.write_all(&[c as u8])?;
            } else {
                for unit in c.encode_utf16(&mut units) {
                    write!(w, "\\u{unit:04X}")?;
                }
            }
        }
        Ok(())
    }

    fn write_char_escape<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        escape: CharEscape,
    ) -> io::Result<()> {
        let s: &[u8] = match escape {
            CharEscape::Quote => b"\\\"",
            CharEscape::ReverseSolidus => b"\\\\",
            CharEscape::Solidus => b"\\/",
            CharEscape::Backspace => b"\\b",
            CharEscape::FormFeed => b"\\f",
            CharEscape::LineFeed => b"\\n",
            CharEscape::CarriageReturn => b"\\r",
            CharEscape::Tab => b"\\t",
            CharEscape::AsciiControl(b) => return write!(w, "\\u{b:04X}"),
        };
        w.write_all(s)
    }
}

/// Serializes `msg` as one QMP line, CRLF included.
pub fn encode(msg: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, QmpFormatter);
    // Serializing a Value into a Vec cannot fail.
    let _ = msg.serialize(&mut ser);
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn qemu_spacing_and_crlf() {
        let v = json!({"return": {"a": [1, "b"]}});
        let s = String::from_utf8(encode(&v)).unwrap();
        assert_eq!(s, "{\"return\": {\"a\": [1, \"b\"]}}\r\n");
    }

    #[test]
    fn non_ascii_is_escaped() {
        let v = json!({"desc": "é\u{1F600}\n\"\u{1}"});
        let s = String::from_utf8(encode(&v)).unwrap();
        assert_eq!(s, "{\"desc\": \"\\u00E9\\uD83D\\uDE00\\n\\\"\\u0001\"}\r\n");
        assert!(s.is_ascii());
        let back: Value = serde_json::from_str(s.trim_end()).unwrap();
        assert_eq!(back, v);
    }
}
