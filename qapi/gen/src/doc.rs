// SPDX-License-Identifier: Apache-2.0
//! Documentation comment blocks: `##`, a `# @symbol:` line, prose, `# @member:` descriptions,
//! `# Features:` with `# @feature:` lines, and tagged sections (`Returns:`, `Since:`, ...).

use crate::parser::ParseError;
use crate::source::SourceInfo;

/// Renders schema prose for a document format: `@name` references become code spans, and
/// each character in `escaped` gets a backslash (rustdoc needs brackets and angle brackets
/// escaped; Markdown output needs nothing).
pub(crate) fn render_prose(text: &str, escaped: &[char]) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '@' && chars.peek().is_some_and(|c| c.is_ascii_alphanumeric()) {
            out.push('`');
            while let Some(&c) = chars.peek() {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    out.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            out.push('`');
        } else {
            if escaped.contains(&c) {
                out.push('\\');
            }
            out.push(c);
        }
    }
    out
}

/// Tags that start a section of their own.
const TAGS: &[&str] = &[
    "Returns", "Since", "Note", "Notes", "Example", "Examples", "TODO", "Errors",
];

/// A parsed documentation block.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Doc {
    /// Where the block starts.
    pub info: SourceInfo,
    /// The definition it documents (`None` for free-form prose and headings).
    pub symbol: Option<String>,
    /// The prose right after the symbol line (or the whole free-form block).
    pub body: String,
    /// Member / argument / branch / value descriptions, in order.
    pub args: Vec<(String, String)>,
    /// Feature descriptions, in order.
    pub features: Vec<(String, String)>,
    /// Tagged sections (`Returns`, `Since`, ...) and untagged trailing prose (empty tag).
    pub sections: Vec<(String, String)>,
}

impl Default for SourceInfo {
    fn default() -> Self {
        SourceInfo::new("", 0)
    }
}

enum Cur {
    Body,
    Arg(usize),
    Feature(usize),
    Section(usize),
}

impl Doc {
    /// The description of member `name`, if documented.
    pub fn arg(&self, name: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.as_str())
    }

    /// The text of the first section tagged `tag`.
    pub fn section(&self, tag: &str) -> Option<&str> {
        self.sections
            .iter()
            .find(|(t, _)| t == tag)
            .map(|(_, t)| t.as_str())
    }

    /// Parses the comment lines between the opening and closing `##`.
    pub fn parse(start: &SourceInfo, lines: &[(SourceInfo, String)]) -> Result<Doc, ParseError> {
        let mut doc = Doc {
            info: start.clone(),
            ..Doc::default()
        };
        let mut cur = Cur::Body;
        let mut in_features = false;
        let mut blank_before = false;
        for (i, (info, raw)) in lines.iter().enumerate() {
            let line = if raw == "#" {
                ""
            } else if let Some(rest) = raw.strip_prefix("# ") {
                rest
            } else {
                return Err(ParseError::invalid(info, "missing space after #"));
            };
            if i == 0 {
                if let Some(sym) = line.strip_prefix('@') {
                    let Some(sym) = sym.strip_suffix(':') else {
                        return Err(ParseError::invalid(info, "line should end with ':'"));
                    };
                    if sym.is_empty() {
                        return Err(ParseError::invalid(info, "name required after '@'"));
                    }
                    doc.symbol = Some(sym.to_string());
                    continue;
                }
            }
            let trimmed = line.trim_start();
            if doc.symbol.is_some() {
                if let Some(rest) = line.strip_prefix('@') {
                    let Some((name, text)) = rest.split_once(':') else {
                        return Err(ParseError::invalid(info, "line should end with ':'"));
                    };
                    if name.is_empty() {
                        return Err(ParseError::invalid(info, "name required after '@'"));
                    }
                    let list = if in_features {
                        &mut doc.features
                    } else {
                        &mut doc.args
                    };
                    if list.iter().any(|(n, _)| n == name) {
                        let what = if in_features { "feature" } else { "parameter" };
                        return Err(ParseError::invalid(
                            info,
                            format!("'{name}' {what} name duplicated"),
                        ));
                    }
                    list.push((name.to_string(), text.trim().to_string()));
                    cur = if in_features {
                        Cur::Feature(list.len() - 1)
                    } else {
                        Cur::Arg(list.len() - 1)
                    };
                    blank_before = false;
                    continue;
                }
                if line == "Features:" {
                    if !doc.features.is_empty() || in_features {
                        return Err(ParseError::invalid(info, "duplicated 'Features:' line"));
                    }
                    in_features = true;
                    cur = Cur::Body;
                    continue;
                }
                if let Some((tag, text)) = line.split_once(':') {
                    if TAGS.contains(&tag) {
                        if matches!(tag, "Returns" | "Since")
                            && doc.sections.iter().any(|(t, _)| t == tag)
                        {
                            return Err(ParseError::invalid(
                                info,
                                format!("duplicated '{tag}' section"),
                            ));
                        }
                        doc.sections
                            .push((tag.to_string(), text.trim().to_string()));
                        cur = Cur::Section(doc.sections.len() - 1);
                        in_features = false;
                        blank_before = false;
                        continue;
                    }
                }
            }
            // Unindented prose after a blank line ends a member description.
            if blank_before
                && !line.is_empty()
                && !line.starts_with(' ')
                && matches!(cur, Cur::Arg(_) | Cur::Feature(_))
            {
                doc.sections.push((String::new(), String::new()));
                cur = Cur::Section(doc.sections.len() - 1);
            }
            blank_before = line.is_empty();
            let target = match cur {
                Cur::Body => &mut doc.body,
                Cur::Arg(i) => &mut doc.args[i].1,
                Cur::Feature(i) => &mut doc.features[i].1,
                Cur::Section(i) => &mut doc.sections[i].1,
            };
            let text = if matches!(cur, Cur::Arg(_) | Cur::Feature(_)) {
                trimmed
            } else {
                line
            };
            append_line(target, text);
        }
        for text in std::iter::once(&mut doc.body)
            .chain(doc.args.iter_mut().map(|(_, t)| t))
            .chain(doc.features.iter_mut().map(|(_, t)| t))
            .chain(doc.sections.iter_mut().map(|(_, t)| t))
        {
            *text = text.trim().to_string();
        }
        Ok(doc)
    }
}

fn append_line(target: &mut String, line: &str) {
    if !target.is_empty() || !line.is_empty() {
        if !target.is_empty() {
            target.push('\n');
        }
        target.push_str(line);
    }
}
