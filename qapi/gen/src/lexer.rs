// SPDX-License-Identifier: Apache-2.0
//! Tokenizer for the QAPI schema dialect: single-quoted strings, `true`/`false`, the six
//! punctuation characters, `#` comments (skipped) and `##` documentation comments (returned).

use crate::parser::ParseError;
use crate::source::SourceInfo;

/// One token of schema source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// One of `{ } [ ] : ,`.
    Punct(char),
    /// A single-quoted string, unescaped.
    Str(String),
    /// `true` or `false`.
    Bool(bool),
    /// A comment line, including its leading `#` (only returned inside documentation blocks).
    Comment(String),
    /// End of input.
    Eof,
}

/// A cursor over one schema file.
pub struct Lexer<'a> {
    src: &'a [u8],
    file: String,
    /// Byte offset of the next unread character.
    cursor: usize,
    /// Byte offset where the current token starts.
    pos: usize,
    /// Byte offset of the start of the current line.
    line_start: usize,
    line: usize,
}

impl<'a> Lexer<'a> {
    /// A lexer over `src`, which was read from `file`.
    pub fn new(file: &str, src: &'a str) -> Self {
        Lexer {
            src: src.as_bytes(),
            file: file.to_string(),
            cursor: 0,
            pos: 0,
            line_start: 0,
            line: 1,
        }
    }

    /// The location of the current token.
    pub fn info(&self) -> SourceInfo {
        SourceInfo::new(self.file.clone(), self.line)
    }

    /// A syntax error at the current token, with its 1-based column (tab stops every 8).
    pub fn error(&self, msg: impl Into<String>) -> ParseError {
        let mut col = 1;
        for &b in &self.src[self.line_start..self.pos.min(self.src.len())] {
            if b == b'\t' {
                col = ((col - 1) / 8 + 1) * 8 + 1;
            } else {
                col += 1;
            }
        }
        ParseError::Syntax {
            info: self.info(),
            col,
            msg: msg.into(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.src.get(self.cursor).copied()
    }

    /// Reads the next token. Plain comments are skipped unless `keep_comments`; a `##`
    /// comment always comes back as [`Token::Comment`].
    pub fn next_token(&mut self, keep_comments: bool) -> Result<Token, ParseError> {
        loop {
            self.pos = self.cursor;
            let Some(b) = self.peek() else {
                return Ok(Token::Eof);
            };
            self.cursor += 1;
            match b {
                b'#' => {
                    let doc = self.peek() == Some(b'#');
                    let end = self.src[self.cursor..]
                        .iter()
                        .position(|&c| c == b'\n')
                        .map_or(self.src.len(), |p| self.cursor + p);
                    self.cursor = end;
                    if keep_comments || doc {
                        let text = String::from_utf8_lossy(&self.src[self.pos..end]).into_owned();
                        return Ok(Token::Comment(text));
                    }
                }
                b'{' | b'}' | b'[' | b']' | b':' | b',' => return Ok(Token::Punct(b as char)),
                b'\'' => return self.string(),
                b'\n' => {
                    self.line += 1;
                    self.line_start = self.cursor;
                }
                b' ' | b'\t' | b'\r' | b'\x0b' | b'\x0c' => {}
                _ => {
                    let rest = &self.src[self.pos..];
                    if rest.starts_with(b"true") {
                        self.cursor = self.pos + 4;
                        return Ok(Token::Bool(true));
                    }
                    if rest.starts_with(b"false") {
                        self.cursor = self.pos + 5;
                        return Ok(Token::Bool(false));
                    }
                    let len = rest
                        .iter()
                        .position(|c| b"[]{}:,'\"".contains(c) || c.is_ascii_whitespace())
                        .unwrap_or(rest.len())
                        .max(1);
                    let word = String::from_utf8_lossy(&rest[..len]).into_owned();
                    return Err(self.error(format!("stray '{word}'")));
                }
            }
        }
    }

    fn string(&mut self) -> Result<Token, ParseError> {
        let mut s = String::new();
        let mut esc = false;
        loop {
            let Some(c) = self.peek() else {
                return Err(self.error("missing terminating \"'\""));
            };
            self.cursor += 1;
            if c == b'\n' {
                return Err(self.error("missing terminating \"'\""));
            }
            if esc {
                if c != b'\\' {
                    return Err(self.error(format!("unknown escape \\{}", c as char)));
                }
                esc = false;
            } else if c == b'\\' {
                esc = true;
                continue;
            } else if c == b'\'' {
                return Ok(Token::Str(s));
            }
            if !(32..127).contains(&c) {
                return Err(self.error("funny character in string"));
            }
            s.push(c as char);
        }
    }
}
