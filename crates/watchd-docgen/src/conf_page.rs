//! watchd.toml(5) from `data/watchd.toml`, the shipped file: its comments document each key
//! and its values are the defaults (a unit test of the daemon holds them equal to the
//! built-in ones). Here the keys it names must be exactly those `--check-config` prints.

use anyhow::{Context, ensure};

use crate::roff;

const SHIPPED: &str = include_str!("../../../data/watchd.toml");

/// A key as the file shows it: its default value and the comment lines above it.
#[derive(Debug, PartialEq)]
struct Key {
    name: String,
    value: String,
    doc: Vec<String>,
}

#[derive(Debug, PartialEq)]
struct Section {
    name: String,
    keys: Vec<Key>,
}

/// The file's leading comment, and its sections. Only the shapes the file uses: `# comment`,
/// `[section]`, `key = value`, blank lines.
fn parse(text: &str) -> anyhow::Result<(Vec<String>, Vec<Section>)> {
    let mut header = Vec::new();
    let mut sections: Vec<Section> = Vec::new();
    let mut comment = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(text) = line.strip_prefix('#') {
            comment.push(text.strip_prefix(' ').unwrap_or(text).to_owned());
        } else if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            if sections.is_empty() {
                header = std::mem::take(&mut comment);
            }
            comment.clear();
            sections.push(Section {
                name: name.to_owned(),
                keys: Vec::new(),
            });
        } else if let Some((name, value)) = line.split_once('=') {
            let section = sections
                .last_mut()
                .with_context(|| format!("line {}: a key before any section", n + 1))?;
            section.keys.push(Key {
                name: name.trim().to_owned(),
                value: value.trim().to_owned(),
                doc: std::mem::take(&mut comment),
            });
        } else if line.is_empty() && sections.is_empty() {
            comment.push(String::new());
        } else {
            ensure!(line.is_empty(), "line {}: cannot read {raw:?}", n + 1);
        }
    }
    Ok((header, sections))
}

/// `section.key` for every key.
fn key_names(sections: &[Section]) -> Vec<String> {
    let mut names: Vec<String> = sections
        .iter()
        .flat_map(|s| s.keys.iter().map(move |k| format!("{}.{}", s.name, k.name)))
        .collect();
    names.sort();
    names
}

/// A key's comment: lines that start with a quoted value (`"auto": ...`) begin a line of
/// their own, the others run on.
fn key_doc(lines: &[String]) -> String {
    let mut out = String::new();
    for line in lines {
        if !out.is_empty() {
            out.push_str(if line.starts_with('"') {
                "\n.br\n"
            } else {
                " "
            });
        }
        out.push_str(&roff::line(line));
    }
    out
}

pub fn render() -> anyhow::Result<String> {
    let (header, sections) = parse(SHIPPED).context("data/watchd.toml")?;
    let built_in = watchd::conf::Config::default()
        .to_toml()
        .context("the built-in configuration as TOML")?;
    let (_, built_in) = parse(&built_in).context("the built-in configuration")?;
    ensure!(
        key_names(&sections) == key_names(&built_in),
        "data/watchd.toml names {:?} but the daemon reads {:?}",
        key_names(&sections),
        key_names(&built_in)
    );
    let mut page = format!(
        r#".TH WATCHD.TOML 5 "{date}" "{source}" "File Formats"
.SH NAME
watchd.toml \- configuration of watchd
.SH SYNOPSIS
{path}
.SH DESCRIPTION
The configuration of \fBwatchd\fR(8), in TOML. The file is optional; so is every section and key in it, and the value shown with each key below is its default. An unknown section or key, or a value out of range, makes the whole file an error.
.PP
{header}
.SH KEYS
"#,
        source = crate::SOURCE,
        date = crate::date(),
        path = watchd::conf::DEFAULT_PATH,
        header = roff::paragraphs(&header.join("\n")),
    );
    for section in &sections {
        page.push_str(&format!(".SS [{}]\n", section.name));
        for key in &section.keys {
            page.push_str(&format!(
                ".TP\n\\fB{}\\fR = {}\n{}\n",
                key.name,
                roff::line(&key.value),
                key_doc(&key.doc)
            ));
        }
    }
    page.push_str(&format!(
        r#".SH FILES
.TP
{path}
The configuration \fBwatchd\fR reads at start and on SIGHUP (\fBsystemctl reload watchd\fR).
.SH SEE ALSO
\fBwatchd\fR(8), \fBwatchctl\fR(1)
"#,
        path = watchd::conf::DEFAULT_PATH
    ));
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_key_has_a_comment() {
        let (header, sections) = parse(SHIPPED).unwrap();
        assert!(!header.is_empty());
        for section in &sections {
            for key in &section.keys {
                assert!(
                    !key.doc.is_empty(),
                    "{}.{} has no comment",
                    section.name,
                    key.name
                );
            }
        }
        render().unwrap();
    }

    #[test]
    fn comments_go_with_the_key_below_them() {
        let (header, sections) =
            parse("# head\n\n# more\n[a]\n# one\n# two\nk = 1\n\n[b]\nj = \"x\"\n").unwrap();
        assert_eq!(header, ["head", "", "more"]);
        assert_eq!(
            sections,
            [
                Section {
                    name: "a".into(),
                    keys: vec![Key {
                        name: "k".into(),
                        value: "1".into(),
                        doc: vec!["one".into(), "two".into()]
                    }]
                },
                Section {
                    name: "b".into(),
                    keys: vec![Key {
                        name: "j".into(),
                        value: "\"x\"".into(),
                        doc: vec![]
                    }]
                }
            ]
        );
    }
}
