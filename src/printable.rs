//! Text read from a file, made safe to print on a terminal: a name or metadata value may hold
//! escape sequences (set the window title, colours, erase a line) or line breaks that would
//! forge the output's lines.

use std::borrow::Cow;

/// `s` with every control character (and every bidirectional-override character, which
/// reorders what a terminal shows) written as Rust's `escape_debug` writes it: `\n`, `\r`,
/// `\t`, `\u{1b}`… Other text, quotes and backslashes included, is left as it is.
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if needs_escape(c) {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// How many characters of a name [`clipped`] keeps.
pub(crate) const CLIP_CHARS: usize = 200;

/// `s` as an error message quotes it: whole when short, else its first 200 characters and
/// `… (N bytes)`. A name read from a file can be as long as its header (64 MiB for GGUF), and
/// a message is one line.
pub(crate) fn clipped(s: &str) -> Cow<'_, str> {
    match s.char_indices().nth(CLIP_CHARS) {
        None => Cow::Borrowed(s),
        Some((end, _)) => Cow::Owned(format!("{}… ({} bytes)", &s[..end], s.len())),
    }
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_clipped_to_200_characters() {
        assert_eq!(clipped("short"), "short");
        let long = "é".repeat(300);
        let c = clipped(&long);
        assert_eq!(c, format!("{}… (600 bytes)", "é".repeat(200)));
        assert_eq!(clipped(&"x".repeat(200)), "x".repeat(200));
    }

    #[test]
    fn controls_are_escaped_and_other_text_kept() {
        assert_eq!(
            escape_controls("evil\x1b]0;x\x07\nSECOND\r\t\u{202e}"),
            "evil\\u{1b}]0;x\\u{7}\\nSECOND\\r\\t\\u{202e}"
        );
        assert!(matches!(
            escape_controls("plain \"é\" \\ text"),
            Cow::Borrowed("plain \"é\" \\ text")
        ));
    }
}
