//! Text that came from the guest, made safe to print on the host.
//!
//! The agent's error messages and its hello's `name` and `problem` end up on the host's stderr.
//! A hostile guest could put terminal escape sequences, NULs, new lines (a forged second line)
//! or bidirectional-text controls in them, or a megabyte of text; [`printable`] escapes the
//! first and cuts the last.

use std::fmt::Write;

/// The longest guest text kept in an error, in characters.
pub const MAX_GUEST_TEXT: usize = 512;

/// `s` on one line, every control or bidirectional-formatting character written as `\u{..}`
/// (new lines, carriage returns and tabs as `\n`, `\r`, `\t`), cut to `max` characters and a `…`.
pub fn printable(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max + 4));
    let mut count = 0;
    let mut piece = String::new();
    for c in s.chars() {
        piece.clear();
        match c {
            '\n' => piece.push_str("\\n"),
            '\r' => piece.push_str("\\r"),
            '\t' => piece.push_str("\\t"),
            c if c.is_control() || is_bidi_control(c) => {
                let _ = write!(piece, "\\u{{{:x}}}", c as u32);
            }
            c => piece.push(c),
        }
        let n = piece.chars().count();
        if count + n > max {
            out.push('…');
            break;
        }
        out.push_str(&piece);
        count += n;
    }
    out
}

/// The characters that reorder the text around them on a terminal (Unicode's explicit
/// directional formatting characters, and the marks).
fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_nuls_are_written_out() {
        let s = printable("a\u{1b}[2Jb\0c\nerror: forged\u{202e}d\u{9b}e", 100);
        assert_eq!(s, "a\\u{1b}[2Jb\\u{0}c\\nerror: forged\\u{202e}d\\u{9b}e");
        assert!(!s.chars().any(|c| c.is_control()));
    }

    #[test]
    fn long_text_is_cut() {
        let s = printable(&"é".repeat(10_000), 5);
        assert_eq!(s, "ééééé…");
        assert_eq!(printable("abc", 3), "abc");
    }
}
