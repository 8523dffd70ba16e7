// SPDX-License-Identifier: Apache-2.0
//! Schema file parser: turns the token stream into JSON-like expressions, follows `include`
//! directives, records `pragma`s and attaches documentation blocks to the definition after them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::doc::Doc;
use crate::lexer::{Lexer, Token};
use crate::source::SourceInfo;

/// Errors found while reading and parsing schema files (before semantic checks).
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Malformed source text.
    #[error("{}:{}:{col}: {msg}", info.file, info.line)]
    Syntax {
        /// Where.
        info: SourceInfo,
        /// 1-based column.
        col: usize,
        /// What is wrong.
        msg: String,
    },
    /// A well-formed but invalid directive or documentation block.
    #[error("{info}: {msg}")]
    Invalid {
        /// Where.
        info: SourceInfo,
        /// What is wrong.
        msg: String,
    },
    /// The root schema file could not be read.
    #[error("Cannot read schema file '{file}': {reason}")]
    Io {
        /// The file that was asked for.
        file: String,
        /// The operating system's reason.
        reason: std::io::Error,
    },
}

impl ParseError {
    /// A non-syntax error at `info`.
    pub fn invalid(info: &SourceInfo, msg: impl Into<String>) -> Self {
        ParseError::Invalid {
            info: info.clone(),
            msg: msg.into(),
        }
    }
}

/// A JSON-like schema value (the dialect has no numbers or null).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `'text'`
    Str(String),
    /// `true` / `false`
    Bool(bool),
    /// `[ ... ]`
    List(Vec<Value>),
    /// `{ ... }`, in source order.
    Dict(Vec<(String, Value)>),
}

impl Value {
    /// The entry `key` of a dict value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(d) => d.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// One top-level definition with its location and documentation.
#[derive(Debug, Clone)]
pub struct Expr {
    /// The definition's members, in source order.
    pub value: Vec<(String, Value)>,
    /// Where the definition starts.
    pub info: SourceInfo,
    /// The documentation block right before it, if any.
    pub doc: Option<Doc>,
}

/// Pragmas in force (collected over all files).
#[derive(Debug, Clone, Default)]
pub struct Pragma {
    /// Every definition must have a documentation block.
    pub doc_required: bool,
    /// Commands allowed to use uppercase or `_` in their name.
    pub command_name_exceptions: Vec<String>,
    /// Commands allowed to return something other than an object or array of objects.
    pub command_returns_exceptions: Vec<String>,
    /// Types allowed to have members with uppercase names.
    pub member_name_exceptions: Vec<String>,
    /// The owner of plain events (our extension, pragma `event-owner`).
    pub event_owner: Option<EventOwner>,
}

/// Pragma `event-owner`: `{ 'handle': 'Machine', 'data': '/machine' }` names the handle type
/// and value that own every plain event, so that every event is a signal of some object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventOwner {
    /// The owning handle type.
    pub handle: String,
    /// The one value of that handle that owns the events (a string carrier).
    pub data: String,
    /// Where the pragma is.
    pub info: SourceInfo,
}

/// The result of parsing a root schema file and everything it includes.
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    /// All definitions, in include order.
    pub exprs: Vec<Expr>,
    /// Free-form documentation blocks (section headings and prose), with the index of the
    /// definition that follows them in `exprs`.
    pub free_docs: Vec<(usize, Doc)>,
    /// Pragmas.
    pub pragma: Pragma,
    /// Every file read, for build scripts' change tracking.
    pub files: Vec<PathBuf>,
}

/// Parses the schema rooted at `path`.
pub fn parse_file(path: &Path) -> Result<Parsed, ParseError> {
    let mut out = Parsed::default();
    let mut seen = BTreeSet::new();
    let src = std::fs::read_to_string(path).map_err(|reason| ParseError::Io {
        file: path.display().to_string(),
        reason,
    })?;
    FileParser::run(path, &src, &mut out, &mut seen, &mut Vec::new())?;
    Ok(out)
}

struct FileParser<'a> {
    lex: Lexer<'a>,
    tok: Token,
    path: PathBuf,
}

impl<'a> FileParser<'a> {
    fn run(
        path: &Path,
        src: &'a str,
        out: &mut Parsed,
        seen: &mut BTreeSet<PathBuf>,
        stack: &mut Vec<PathBuf>,
    ) -> Result<(), ParseError> {
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        seen.insert(abs.clone());
        stack.push(abs);
        out.files.push(path.to_path_buf());
        let mut p = FileParser {
            lex: Lexer::new(&path.display().to_string(), src),
            tok: Token::Eof,
            path: path.to_path_buf(),
        };
        p.accept(false)?;
        p.parse(out, seen, stack)?;
        stack.pop();
        Ok(())
    }

    fn accept(&mut self, keep_comments: bool) -> Result<(), ParseError> {
        self.tok = self.lex.next_token(keep_comments)?;
        Ok(())
    }

    fn parse(
        &mut self,
        out: &mut Parsed,
        seen: &mut BTreeSet<PathBuf>,
        stack: &mut Vec<PathBuf>,
    ) -> Result<(), ParseError> {
        let mut cur_doc: Option<Doc> = None;
        loop {
            let info = self.lex.info();
            match &self.tok {
                Token::Eof => break,
                Token::Comment(_) => {
                    reject_expr_doc(cur_doc.take())?;
                    for doc in self.get_docs(&info)? {
                        if doc.symbol.is_some() {
                            reject_expr_doc(cur_doc.take())?;
                            cur_doc = Some(doc);
                        } else {
                            out.free_docs.push((out.exprs.len(), doc));
                        }
                    }
                    continue;
                }
                _ => {}
            }
            let expr = match self.get_expr()? {
                Value::Dict(d) => d,
                _ => {
                    return Err(ParseError::invalid(
                        &info,
                        "top-level expression must be an object",
                    ))
                }
            };
            let first = expr.first().map(|(k, _)| k.as_str());
            if expr.iter().any(|(k, _)| k == "include") {
                reject_expr_doc(cur_doc.take())?;
                if expr.len() != 1 || first != Some("include") {
                    return Err(ParseError::invalid(&info, "invalid 'include' directive"));
                }
                let Value::Str(name) = &expr[0].1 else {
                    return Err(ParseError::invalid(
                        &info,
                        "value of 'include' must be a string",
                    ));
                };
                self.include(name, &info, out, seen, stack)?;
            } else if expr.iter().any(|(k, _)| k == "pragma") {
                reject_expr_doc(cur_doc.take())?;
                if expr.len() != 1 {
                    return Err(ParseError::invalid(&info, "invalid 'pragma' directive"));
                }
                let Value::Dict(items) = &expr[0].1 else {
                    return Err(ParseError::invalid(
                        &info,
                        "value of 'pragma' must be an object",
                    ));
                };
                for (name, value) in items {
                    set_pragma(&mut out.pragma, name, value, &info)?;
                }
            } else {
                out.exprs.push(Expr {
                    value: expr,
                    info,
                    doc: cur_doc.take(),
                });
            }
        }
        reject_expr_doc(cur_doc)
    }

    fn include(
        &mut self,
        name: &str,
        info: &SourceInfo,
        out: &mut Parsed,
        seen: &mut BTreeSet<PathBuf>,
        stack: &mut Vec<PathBuf>,
    ) -> Result<(), ParseError> {
        let dir = self.path.parent().unwrap_or(Path::new(""));
        let path = dir.join(name);
        let abs = std::path::absolute(&path).unwrap_or_else(|_| path.clone());
        if stack.contains(&abs) {
            return Err(ParseError::invalid(
                info,
                format!("inclusion loop for {name}"),
            ));
        }
        if seen.contains(&abs) {
            return Ok(());
        }
        let src = std::fs::read_to_string(&path).map_err(|e| {
            ParseError::invalid(
                info,
                format!("can't read include file '{}': {e}", path.display()),
            )
        })?;
        FileParser::run(&path, &src, out, seen, stack)
    }

    fn get_docs(&mut self, info: &SourceInfo) -> Result<Vec<Doc>, ParseError> {
        if self.tok != Token::Comment("##".into()) {
            return Err(self
                .lex
                .error("junk after '##' at start of documentation comment"));
        }
        let mut docs = Vec::new();
        let mut lines: Vec<(SourceInfo, String)> = Vec::new();
        let mut start = info.clone();
        self.accept(true)?;
        while let Token::Comment(text) = &self.tok {
            let text = text.clone();
            if text.starts_with("##") {
                if text != "##" {
                    return Err(self
                        .lex
                        .error("junk after '##' at end of documentation comment"));
                }
                docs.push(Doc::parse(&start, &lines)?);
                self.accept(false)?;
                return Ok(docs);
            }
            if text.starts_with("# =") && !lines.is_empty() {
                // A section heading starts a new free-form block.
                let first_is_symbol = lines[0].1.starts_with("# @");
                if first_is_symbol {
                    return Err(self
                        .lex
                        .error("unexpected '=' markup in definition documentation"));
                }
                docs.push(Doc::parse(&start, &lines)?);
                lines.clear();
                start = self.lex.info();
            }
            lines.push((self.lex.info(), text));
            self.accept(true)?;
        }
        Err(self.lex.error("documentation comment must end with '##'"))
    }

    fn get_expr(&mut self) -> Result<Value, ParseError> {
        match self.tok.clone() {
            Token::Punct('{') => {
                self.accept(false)?;
                self.get_members()
            }
            Token::Punct('[') => {
                self.accept(false)?;
                self.get_values()
            }
            Token::Str(s) => {
                self.accept(false)?;
                Ok(Value::Str(s))
            }
            Token::Bool(b) => {
                self.accept(false)?;
                Ok(Value::Bool(b))
            }
            _ => Err(self.lex.error("expected '{', '[', string, or boolean")),
        }
    }

    fn get_members(&mut self) -> Result<Value, ParseError> {
        let mut members: Vec<(String, Value)> = Vec::new();
        if self.tok == Token::Punct('}') {
            self.accept(false)?;
            return Ok(Value::Dict(members));
        }
        let Token::Str(mut key) = self.tok.clone() else {
            return Err(self.lex.error("expected string or '}'"));
        };
        loop {
            self.accept(false)?;
            if self.tok != Token::Punct(':') {
                return Err(self.lex.error("expected ':'"));
            }
            self.accept(false)?;
            if members.iter().any(|(k, _)| *k == key) {
                return Err(self.lex.error(format!("duplicate key '{key}'")));
            }
            let value = self.get_expr()?;
            members.push((key, value));
            if self.tok == Token::Punct('}') {
                self.accept(false)?;
                return Ok(Value::Dict(members));
            }
            if self.tok != Token::Punct(',') {
                return Err(self.lex.error("expected ',' or '}'"));
            }
            self.accept(false)?;
            let Token::Str(k) = self.tok.clone() else {
                return Err(self.lex.error("expected string"));
            };
            key = k;
        }
    }

    fn get_values(&mut self) -> Result<Value, ParseError> {
        let mut values = Vec::new();
        if self.tok == Token::Punct(']') {
            self.accept(false)?;
            return Ok(Value::List(values));
        }
        if !matches!(
            self.tok,
            Token::Punct('{') | Token::Punct('[') | Token::Str(_) | Token::Bool(_)
        ) {
            return Err(self.lex.error("expected '{', '[', ']', string, or boolean"));
        }
        loop {
            values.push(self.get_expr()?);
            if self.tok == Token::Punct(']') {
                self.accept(false)?;
                return Ok(Value::List(values));
            }
            if self.tok != Token::Punct(',') {
                return Err(self.lex.error("expected ',' or ']'"));
            }
            self.accept(false)?;
        }
    }
}

fn reject_expr_doc(doc: Option<Doc>) -> Result<(), ParseError> {
    if let Some(doc) = doc {
        if let Some(sym) = &doc.symbol {
            return Err(ParseError::invalid(
                &doc.info,
                format!("documentation for '{sym}' is not followed by the definition"),
            ));
        }
    }
    Ok(())
}

fn set_pragma(
    pragma: &mut Pragma,
    name: &str,
    value: &Value,
    info: &SourceInfo,
) -> Result<(), ParseError> {
    let list = |value: &Value| -> Result<Vec<String>, ParseError> {
        match value {
            Value::List(items) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    ParseError::invalid(info, format!("pragma {name} must be a list of strings"))
                }),
            _ => Err(ParseError::invalid(
                info,
                format!("pragma {name} must be a list of strings"),
            )),
        }
    };
    match name {
        "doc-required" => match value {
            Value::Bool(b) => pragma.doc_required = *b,
            _ => {
                return Err(ParseError::invalid(
                    info,
                    "pragma 'doc-required' must be boolean",
                ))
            }
        },
        "command-name-exceptions" => pragma.command_name_exceptions = list(value)?,
        "command-returns-exceptions" => pragma.command_returns_exceptions = list(value)?,
        "member-name-exceptions" => pragma.member_name_exceptions = list(value)?,
        "event-owner" => {
            let field = |k: &str| value.get(k).and_then(Value::as_str).map(str::to_string);
            let (Value::Dict(d), Some(handle), Some(data)) =
                (value, field("handle"), field("data"))
            else {
                return Err(ParseError::invalid(
                    info,
                    "pragma 'event-owner' must be { 'handle': NAME, 'data': VALUE }",
                ));
            };
            if d.len() != 2 {
                return Err(ParseError::invalid(
                    info,
                    "pragma 'event-owner' must be { 'handle': NAME, 'data': VALUE }",
                ));
            }
            pragma.event_owner = Some(EventOwner {
                handle,
                data,
                info: info.clone(),
            });
        }
        _ => {
            return Err(ParseError::invalid(
                info,
                format!("unknown pragma '{name}'"),
            ))
        }
    }
    Ok(())
}
