//! Source spans and user-facing diagnostics.
//!
//! In: byte spans into the program text that the user typed. Out: a [`Diagnostic`] that
//! renders the offending line with a caret under the span, in the style of rustc and
//! regex-syntax. Invariants: every error that a user's input can cause carries a span or says
//! why it cannot point at one (a `--wrt` name that occurs nowhere, for example); a rendered
//! diagnostic holds no raw control character (an escape sequence in the program text would
//! recolour the terminal, a carriage return would misalign the caret): they are shown escaped,
//! and the caret counts the escaped width.

use std::fmt;

/// A half-open byte range `[start, end)` into the program text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Span {
        Span { start, end }
    }

    /// The smallest span that covers both.
    pub fn to(self, other: Span) -> Span {
        Span::new(self.start.min(other.start), self.end.max(other.end))
    }
}

/// An error in the user's input, with the place it points at.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    pub message: String,
    pub span: Option<Span>,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(message: impl Into<String>, span: Span) -> Diagnostic {
        Diagnostic {
            message: message.into(),
            span: Some(span),
            help: None,
        }
    }

    pub fn without_span(message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            message: message.into(),
            span: None,
            help: None,
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    /// The message, the source line that holds the span and a caret line under it.
    pub fn render(&self, source: &str) -> String {
        let mut out = format!("error: {}\n", escape_controls(&self.message));
        if let Some(span) = self.span {
            let start = floor_char_boundary(source, span.start.min(source.len()));
            let end = floor_char_boundary(source, span.end.min(source.len())).max(start);
            let line_start = source[..start].rfind('\n').map_or(0, |i| i + 1);
            let line_end = source[start..]
                .find('\n')
                .map_or(source.len(), |i| start + i);
            let line = escape_controls(&source[line_start..line_end]);
            let pad = shown_width(&source[line_start..start]);
            let width = shown_width(&source[start..end.min(line_end)]).max(1);
            out.push_str(&format!(
                "  | {line}\n  | {}{}\n",
                " ".repeat(pad),
                "^".repeat(width)
            ));
        }
        if let Some(help) = &self.help {
            out.push_str(&format!("help: {}\n", escape_controls(help)));
        }
        out
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Diagnostic {}

/// `text` with every control character but the newline shown as its escape (`\u{1b}`, `\r`,
/// `\t`), so that printing it cannot move the cursor or change the terminal's colours.
pub fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\n' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// How many columns `text` takes once [`escape_controls`] has shown it (one per character).
fn shown_width(text: &str) -> usize {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().count()
            } else {
                1
            }
        })
        .sum()
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caret_sits_under_the_span() {
        let d = Diagnostic::new("bad", Span::new(4, 5));
        let text = d.render("x + y * z");
        assert!(text.contains("  | x + y * z\n  |     ^\n"), "{text}");
    }

    #[test]
    fn control_characters_are_shown_escaped_and_the_caret_counts_them() {
        // An ANSI colour sequence and a carriage return before the offending `)`.
        let source = "x\u{1b}[31m +\r)";
        let d = Diagnostic::new("unexpected `)` after \u{1b}[0m", Span::new(9, 10));
        let text = d.render(source);
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert!(
            text.contains("error: unexpected `)` after \\u{1b}[0m\n"),
            "{text}"
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "  | x\\u{1b}[31m +\\r)");
        let caret = lines[2].find('^').unwrap();
        assert_eq!(&lines[1][caret..caret + 1], ")", "{text}");
    }

    #[test]
    fn span_past_the_end_is_clamped() {
        let d = Diagnostic::new("unexpected end", Span::new(9, 10));
        let text = d.render("x + (y * z");
        assert!(text.contains("^"), "{text}");
    }
}
