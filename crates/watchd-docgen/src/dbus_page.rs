//! org.watchd.Watchd1(5) from `dbus/org.watchd.Watchd1.xml`, whose elements carry gtk-doc
//! comments as gdbus-codegen reads them: the comment just before an interface, method,
//! signal or property starts with `Name:` (its name), then `@arg: text` lines, then the
//! text. A comment gdbus-codegen would not attach (missing, or naming something else) and an
//! argument without its `@arg` line are errors here, so the XML stays readable by both.

use anyhow::{Context, bail, ensure};
use roxmltree::{Document, Node};

use crate::roff;

const XML: &str = include_str!("../../../dbus/org.watchd.Watchd1.xml");

/// A gtk-doc comment, parsed as gdbus-codegen does (its `handle_comment`).
#[derive(Debug, Default, PartialEq)]
struct Doc {
    symbol: String,
    params: Vec<(String, String)>,
    body: String,
}

fn parse_doc(comment: &str) -> Doc {
    enum State {
        Begin,
        Params,
        Body,
    }
    let mut state = State::Begin;
    let mut doc = Doc::default();
    for raw in comment.lines() {
        let line = raw.trim();
        match state {
            State::Begin if line.is_empty() => {}
            State::Begin => {
                match line.split_once(": ") {
                    Some((symbol, rest)) => {
                        doc.symbol = symbol.to_owned();
                        doc.body.push_str(rest.trim());
                        doc.body.push('\n');
                    }
                    None => doc.symbol = line.trim_end_matches(':').to_owned(),
                }
                state = State::Params;
            }
            State::Params => match line.strip_prefix('@').and_then(|l| l.split_once(": ")) {
                Some((name, text)) => doc.params.push((name.to_owned(), text.to_owned())),
                None => {
                    state = State::Body;
                    doc.body.push_str(line);
                    doc.body.push('\n');
                }
            },
            State::Body => {
                doc.body.push_str(line);
                doc.body.push('\n');
            }
        }
    }
    doc
}

/// The comment right before `node` (whitespace between them aside).
fn comment_before<'a>(node: Node<'a, 'a>) -> Option<&'a str> {
    let mut previous = node.prev_sibling();
    while let Some(n) = previous {
        if n.is_comment() {
            return n.text();
        }
        if !(n.is_text() && n.text().is_some_and(|t| t.trim().is_empty())) {
            return None;
        }
        previous = n.prev_sibling();
    }
    None
}

/// The element's gtk-doc comment, which must name it.
fn doc_of(node: Node, what: &str) -> anyhow::Result<Doc> {
    let name = node
        .attribute("name")
        .context("an element without a name")?;
    let comment = comment_before(node).with_context(|| format!("{what} {name} has no comment"))?;
    let doc = parse_doc(comment);
    ensure!(
        doc.symbol == name,
        "the comment before {what} {name} starts with {:?}, not \"{name}:\" (gdbus-codegen would not attach it)",
        doc.symbol
    );
    Ok(doc)
}

fn param<'a>(doc: &'a Doc, name: &str, member: &str) -> anyhow::Result<&'a str> {
    doc.params
        .iter()
        .find(|(p, _)| p == name)
        .map(|(_, text)| text.as_str())
        .with_context(|| format!("{member} documents no @{name}"))
}

fn children<'a>(node: Node<'a, 'a>, tag: &'a str) -> impl Iterator<Item = Node<'a, 'a>> {
    node.children().filter(move |n| n.has_tag_name(tag))
}

/// A method or signal: its signature line, its text, and its arguments.
fn member(node: Node, what: &str, page: &mut String) -> anyhow::Result<()> {
    let doc = doc_of(node, what)?;
    let name = node.attribute("name").unwrap_or_default();
    let args: Vec<Node> = children(node, "arg").collect();
    let signature: Vec<String> = args
        .iter()
        .map(|arg| {
            let direction = match arg.attribute("direction") {
                Some(direction) => format!("\\fI{direction}\\fR "),
                None => String::new(),
            };
            format!(
                "{direction}{} {}",
                arg.attribute("type").unwrap_or_default(),
                arg.attribute("name").unwrap_or_default()
            )
        })
        .collect();
    page.push_str(&format!(
        ".TP\n\\fB{name}\\fR({})\n{}\n",
        signature.join(", "),
        roff::paragraphs(&doc.body)
    ));
    for arg in &args {
        let arg_name = arg
            .attribute("name")
            .context("an argument without a name")?;
        page.push_str(&format!(
            ".RS\n.TP\n\\fI{arg_name}\\fR\n{}\n.RE\n",
            roff::line(param(&doc, arg_name, name)?)
        ));
    }
    Ok(())
}

fn interface(node: Node, page: &mut String) -> anyhow::Result<()> {
    let doc = doc_of(node, "interface")?;
    let name = node.attribute("name").unwrap_or_default();
    page.push_str(&format!(
        ".SH INTERFACE {name}\n{}\n.PP\n{}\n",
        roff::line(param(&doc, "short_description", name)?),
        roff::paragraphs(&doc.body)
    ));
    for (tag, heading) in [("method", "Methods"), ("signal", "Signals")] {
        let nodes: Vec<Node> = children(node, tag).collect();
        if !nodes.is_empty() {
            page.push_str(&format!(".SS {heading}\n"));
        }
        for node in nodes {
            member(node, tag, page)?;
        }
    }
    let properties: Vec<Node> = children(node, "property").collect();
    if !properties.is_empty() {
        page.push_str(".SS Properties\n");
    }
    for property in properties {
        let doc = doc_of(property, "property")?;
        page.push_str(&format!(
            ".TP\n\\fB{}\\fR ({}, {})\n{}\n",
            property.attribute("name").unwrap_or_default(),
            property.attribute("type").unwrap_or_default(),
            property.attribute("access").unwrap_or_default(),
            roff::paragraphs(&doc.body)
        ));
    }
    Ok(())
}

pub fn render() -> anyhow::Result<String> {
    let xml = Document::parse_with_options(
        XML,
        roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        },
    )
    .context("dbus/org.watchd.Watchd1.xml")?;
    let node = xml.root_element();
    // The file's opening comment, before <node>: what the whole page is about.
    let intro = comment_before(node).context("no comment before <node>")?;
    let mut page = format!(
        r#".TH ORG.WATCHD.WATCHD1 5 "{date}" "{source}" "D-Bus Interfaces"
.SH NAME
org.watchd.Watchd1 \- the D-Bus interfaces of watchd
.SH SYNOPSIS
Bus name \fBorg.watchd.Watchd1\fR on the system bus; its introspection data is installed as /usr/share/dbus-1/interfaces/org.watchd.Watchd1.xml.
.SH DESCRIPTION
{intro}
.PP
Each subscription is a packet pipe: every \fBread\fR(2) of its read end returns exactly one record, at most 4096 bytes. The record format is in /usr/share/doc/watchd/protocol.md.
"#,
        source = crate::SOURCE,
        date = crate::date(),
        intro = roff::paragraphs(intro),
    );
    let interfaces: Vec<Node> = children(node, "interface").collect();
    if interfaces.is_empty() {
        bail!("no interface in dbus/org.watchd.Watchd1.xml");
    }
    for node in interfaces {
        interface(node, &mut page)?;
    }
    page.push_str(
        ".SH SEE ALSO\n\\fBwatchd\\fR(8), \\fBwatchctl\\fR(1), \\fBbusctl\\fR(1), \\fBgdbus-codegen\\fR(1)\n",
    );
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_parse_as_gdbus_codegen_reads_them() {
        let doc = parse_doc("\n  Hello: first\n  @greeting: The greeting\n\n  More.\n");
        assert_eq!(doc.symbol, "Hello");
        assert_eq!(doc.params, [("greeting".into(), "The greeting".into())]);
        assert_eq!(doc.body, "first\n\nMore.\n");
        let doc = parse_doc("Depth:\nText.");
        assert_eq!(
            (doc.symbol.as_str(), doc.body.as_str()),
            ("Depth", "Text.\n")
        );
    }

    #[test]
    fn every_element_of_the_shipped_xml_is_documented() {
        let page = render().unwrap();
        for name in ["Subscribe", "AddWatch", "CredentialsCacheChanged", "Owner"] {
            assert!(page.contains(&format!("\\fB{name}\\fR")), "{name} missing");
        }
    }
}
