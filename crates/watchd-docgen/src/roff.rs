//! Text into roff: the few escapes the pages need.

/// `text` as one line of running text: backslashes escaped, characters past ASCII named
/// (`\[u2192]`: groff reads its input as Latin-1 unless preconv runs first), and a `.` or `'`
/// that would start the line (a request to groff) made literal.
pub fn line(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => escaped.push_str("\\e"),
            c if c.is_ascii() => escaped.push(c),
            c => escaped.push_str(&format!("\\[u{:04X}]", u32::from(c))),
        }
    }
    let text = escaped;
    if text.starts_with(['.', '\'']) {
        format!("\\&{text}")
    } else {
        text
    }
}

/// Paragraphs (split at blank lines, each joined into one line) as roff, separated by `.PP`.
pub fn paragraphs(text: &str) -> String {
    let mut out = Vec::new();
    for paragraph in text.split("\n\n") {
        let joined = paragraph.split_whitespace().collect::<Vec<_>>().join(" ");
        if !joined.is_empty() {
            out.push(line(&joined));
        }
    }
    out.join("\n.PP\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_backslashes_are_made_literal() {
        assert_eq!(line(".ci/run"), "\\&.ci/run");
        assert_eq!(line("'quoted'"), "\\&'quoted'");
        assert_eq!(line("a\\b"), "a\\eb");
        assert_eq!(line("yes → allow"), "yes \\[u2192] allow");
        assert_eq!(paragraphs(" one\n two \n\nthree\n"), "one two\n.PP\nthree");
    }
}
