//! The one way plugin-supplied text (trap messages and backtraces, deny reasons,
//! escalation ids, integration errors, log lines, payloads shown to people) becomes
//! host text: escaped onto a single line, so it can never start a new line, move
//! the cursor, reorder what follows it, or pass for a line the host wrote.

/// True for characters that must never reach a terminal, log or stored record
/// verbatim from a plugin: C0/C1 controls (newline, CR, ESC, NUL, NEL, …), the
/// Unicode line and paragraph separators, bidi embeddings, overrides, isolates and
/// marks, zero-width joiners / spaces and the byte-order mark.
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' // line / paragraph separator
                | '\u{202A}'..='\u{202E}' // bidi embeddings and overrides
                | '\u{2066}'..='\u{2069}' // bidi isolates
                | '\u{200B}'..='\u{200F}' // zero-width space / joiners, LRM, RLM
                | '\u{061C}' // Arabic letter mark
                | '\u{FEFF}' // byte-order mark / zero-width no-break space
        )
}

/// Escapes `s` onto one safe line of at most `max_chars` characters: `\` becomes
/// `\\`, newline / CR / tab become `\n` / `\r` / `\t`, every other unsafe character
/// becomes `\u{XXXX}`. Text that does not fit ends in `…`.
pub fn sanitize(s: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max_chars.saturating_mul(4)));
    let mut len = 0usize;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        let piece: std::borrow::Cow<'static, str> = match c {
            '\\' => "\\\\".into(),
            '\n' => "\\n".into(),
            '\r' => "\\r".into(),
            '\t' => "\\t".into(),
            c if is_unsafe_char(c) => format!("\\u{{{:04X}}}", c as u32).into(),
            c => String::from(c).into(),
        };
        let n = piece.chars().count();
        // Keep one place for the ellipsis unless this piece ends the text.
        let room = if chars.peek().is_some() { max_chars.saturating_sub(1) } else { max_chars };
        if len.saturating_add(n) > room {
            if max_chars > 0 {
                out.push('…');
            }
            return out;
        }
        out.push_str(&piece);
        len += n;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{is_unsafe_char, sanitize};

    #[test]
    fn forged_lines_stay_on_one_escaped_line() {
        let forged = "oops\nnorth-gate     in  card          r-0001     GRANT 5000ms  [plugin:resident-policy]";
        let s = sanitize(forged, 500);
        assert!(!s.contains('\n'));
        assert!(s.starts_with("oops\\nnorth-gate"), "{s}");
        for bad in ["a\rb", "a\u{2028}b", "a\u{2029}b", "a\u{202E}b", "a\u{2066}b", "a\u{1b}[2Jb", "a\0b", "a\u{85}b", "a\u{200F}b"] {
            let s = sanitize(bad, 100);
            assert!(!s.chars().any(is_unsafe_char), "{bad:?} -> {s:?}");
            assert!(s.starts_with('a') && s.ends_with('b') && s.len() > 2, "{bad:?} -> {s:?}");
        }
        assert_eq!(sanitize("a\u{202E}b", 100), "a\\u{202E}b");
        // The escape character itself is escaped, so an escape sequence cannot be faked.
        assert_eq!(sanitize("a\\nb", 100), "a\\\\nb");
        assert_eq!(sanitize("visitor pass expired", 100), "visitor pass expired");
    }

    #[test]
    fn long_text_is_cut_with_an_ellipsis() {
        let s = sanitize(&"x".repeat(500), 120);
        assert_eq!(s.chars().count(), 120);
        assert!(s.ends_with('…'));
        assert_eq!(sanitize(&"x".repeat(120), 120), "x".repeat(120));
        // An escape is never cut in half.
        let s = sanitize(&"\n".repeat(100), 9);
        assert_eq!(s, "\\n\\n\\n\\n…");
        assert_eq!(sanitize("abc", 0), "");
    }
}
