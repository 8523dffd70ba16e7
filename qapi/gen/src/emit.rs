// SPDX-License-Identifier: Apache-2.0
//! An indenting emitter for generated code, in the spirit of QEMU's `indent` and `mcgen` in
//! `scripts/qapi/common.py`: the generators write lines and blocks, and the writer supplies
//! the indentation (four spaces a level), so templates need no escaped leading spaces.

/// One level of indentation.
const UNIT: &str = "    ";

/// Accumulates generated text line by line at a current indentation level.
#[derive(Debug, Default)]
pub(crate) struct CodeWriter {
    out: String,
    level: usize,
}

impl CodeWriter {
    /// An empty writer at indentation level zero.
    pub(crate) fn new() -> Self {
        CodeWriter::default()
    }

    /// Writes `text` as one line at the current indentation; an empty `text` gives an empty
    /// line (no trailing spaces).
    pub(crate) fn line(&mut self, text: impl AsRef<str>) {
        let text = text.as_ref();
        if !text.is_empty() {
            for _ in 0..self.level {
                self.out.push_str(UNIT);
            }
            self.out.push_str(text);
        }
        self.out.push('\n');
    }

    /// Writes an empty line.
    pub(crate) fn blank(&mut self) {
        self.out.push('\n');
    }

    /// Writes a multi-line template: a leading newline and a last line of only spaces are
    /// dropped, the common leading whitespace of the non-empty lines is removed, and each line
    /// is written at the current indentation plus its own relative indentation.
    pub(crate) fn code(&mut self, text: &str) {
        let text = text.strip_prefix('\n').unwrap_or(text);
        let mut lines: Vec<&str> = text.split('\n').collect();
        if lines.last().is_some_and(|l| l.trim().is_empty()) {
            lines.pop();
        }
        let margin = lines
            .iter()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.len() - l.trim_start_matches(' ').len())
            .min()
            .unwrap_or(0);
        for l in lines {
            self.line(l.get(margin..).unwrap_or("").trim_end());
        }
    }

    /// Increases the indentation by one level.
    pub(crate) fn indent(&mut self) {
        self.level += 1;
    }

    /// Decreases the indentation by one level.
    pub(crate) fn dedent(&mut self) {
        self.level = self.level.saturating_sub(1);
    }

    /// Writes `open`, then `body` one level deeper, then `close`; returns what `body` returns.
    pub(crate) fn block<R>(
        &mut self,
        open: impl AsRef<str>,
        close: &str,
        body: impl FnOnce(&mut Self) -> R,
    ) -> R {
        self.line(open);
        self.indent();
        let r = body(self);
        self.dedent();
        self.line(close);
        r
    }

    /// Writes `text` as `///` doc comment lines (`fallback` if `text` is blank), with
    /// `@name` references as code spans and stray brackets escaped for rustdoc.
    pub(crate) fn doc(&mut self, text: &str, fallback: &str) {
        let text = if text.trim().is_empty() {
            fallback
        } else {
            text
        };
        for line in text.lines() {
            let line = line.trim_end();
            if line.is_empty() {
                self.line("///");
            } else {
                self.line(format!(
                    "/// {}",
                    crate::doc::render_prose(line, &['[', ']', '<', '>'])
                ));
            }
        }
    }

    /// The text written so far.
    pub(crate) fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_and_templates_are_indented() {
        let mut w = CodeWriter::new();
        w.block("mod m {", "}", |w| {
            w.line("fn f() {}");
            w.blank();
            w.code(
                "
                impl X {
                    fn g() {}

                }
                ",
            );
        });
        assert_eq!(
            w.finish(),
            "mod m {\n    fn f() {}\n\n    impl X {\n        fn g() {}\n\n    }\n}\n"
        );
    }

    #[test]
    fn doc_comments_fall_back_and_keep_paragraphs() {
        let mut w = CodeWriter::new();
        w.indent();
        w.doc("", "Fallback.");
        w.doc("One [x].\n\nTwo @a.", "");
        assert_eq!(
            w.finish(),
            "    /// Fallback.\n    /// One \\[x\\].\n    ///\n    /// Two `a`.\n"
        );
    }
}
