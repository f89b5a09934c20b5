//! docs/protocol.md is the contract, so what it shows must be true: its hex dumps are
//! what this crate writes, its tables hold the crate's numbers, and its Python decoder and
//! the watchd-dump output it quotes come from actually running them.

mod common;

use std::collections::BTreeSet;

use watchd_proto::{AttrKind, RecordBuilder, RecordType, attr, device, meta, mount, names, stamp};

fn protocol_md() -> String {
    std::fs::read_to_string(common::workspace_root().join("docs/protocol.md"))
        .expect("read docs/protocol.md")
}

/// The fenced code blocks of a Markdown text, as (info string, body).
fn code_blocks(text: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, String)> = None;
    for line in text.lines() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => open = Some((info.trim().to_owned(), String::new())),
            (Some(_), Some(_)) => blocks.push(open.take().expect("open block")),
            (Some((_, body)), None) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(
        open.is_none(),
        "unterminated code block in docs/protocol.md"
    );
    blocks
}

fn blocks_of(lang: &str) -> Vec<String> {
    code_blocks(&protocol_md())
        .into_iter()
        .filter(|(info, _)| info == lang)
        .map(|(_, body)| body)
        .collect()
}

/// The text block whose lines all start with `prefix`: the output a page section quotes.
fn quoted_output(prefix: &str) -> Vec<String> {
    let found: Vec<String> = blocks_of("text")
        .into_iter()
        .filter(|body| body.lines().next().is_some_and(|l| l.starts_with(prefix)))
        .collect();
    assert_eq!(found.len(), 1, "one text block starting with {prefix:?}");
    found[0].lines().map(str::to_owned).collect()
}

/// Section 17's first record: a mount DETACH.
fn example_detach() -> Vec<u8> {
    let mut b = RecordBuilder::new(
        RecordType::Mount,
        mount::DETACH,
        0,
        1_767_225_600_123_456_789,
    );
    b.put_u64(attr::MOUNT_ID, 312)
        .unwrap()
        .put_u64(attr::PARENT_ID, 29)
        .unwrap()
        .put_u32(attr::MAJOR, 8)
        .unwrap()
        .put_u32(attr::MINOR, 17)
        .unwrap()
        .put_str(attr::ROOT, "/")
        .unwrap()
        .put_str(attr::MOUNT_POINT, "/mnt/usb")
        .unwrap()
        .put_str(attr::FS_TYPE, "vfat")
        .unwrap()
        .put_str(attr::SOURCE, "/dev/sdb1")
        .unwrap()
        .put_str(attr::MOUNT_OPTIONS, "rw,relatime")
        .unwrap()
        .put_str(attr::SUPER_OPTIONS, "rw")
        .unwrap()
        .put_str(attr::PROPAGATION, "")
        .unwrap()
        .put_u64(attr::MNT_NS, 4_026_531_841)
        .unwrap();
    let mut rec = b.finish();
    stamp(&mut rec, 7, 42);
    rec
}

/// Section 17's second record: the LOSS for records 43 to 47.
fn example_loss() -> Vec<u8> {
    let mut b = RecordBuilder::new(RecordType::Meta, meta::LOSS, 0, 1_767_225_600_200_000_000);
    b.put_u64(attr::LOST_COUNT, 5)
        .unwrap()
        .put_u64(attr::FIRST_LOST_SEQ, 43)
        .unwrap()
        .put_u64(attr::LOST_TYPES, RecordType::Mount.bit())
        .unwrap();
    let mut rec = b.finish();
    stamp(&mut rec, 0, 48);
    rec
}

/// Section 17's third record: a device CHANGE with two properties, laid out as the daemon
/// does (fixed attributes, then the properties).
fn example_device() -> Vec<u8> {
    let mut b = RecordBuilder::new(
        RecordType::Device,
        device::CHANGE,
        0,
        1_767_225_600_250_000_000,
    );
    b.put_str(attr::ACTION, "change")
        .unwrap()
        .put_str(attr::SUBSYSTEM, "block")
        .unwrap()
        .put_str(attr::SYSNAME, "loop7")
        .unwrap()
        .put_str(attr::SYSPATH, "/sys/devices/virtual/block/loop7")
        .unwrap()
        .put_u64(attr::SEQNUM, 4321)
        .unwrap()
        .put_str(attr::EVENT_SOURCE, "udev")
        .unwrap()
        .put_str(attr::DEVTYPE, "disk")
        .unwrap()
        .put_str(attr::DEVNODE, "/dev/loop7")
        .unwrap()
        .put_u32(attr::MAJOR, 7)
        .unwrap()
        .put_u32(attr::MINOR, 7)
        .unwrap()
        .put_str(attr::TAGS, "systemd")
        .unwrap()
        .put_str(attr::PROPERTY, "DISKSEQ=12")
        .unwrap()
        .put_str(attr::PROPERTY, "ID_FS_TYPE=ext4")
        .unwrap();
    let mut rec = b.finish();
    stamp(&mut rec, 3, 49);
    rec
}

/// Every record section 17 shows, in order.
fn examples() -> [Vec<u8>; 3] {
    [example_detach(), example_loss(), example_device()]
}

/// `hexdump -C` of `bytes`, without the final offset line.
fn hexdump_c(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (i, row) in bytes.chunks(16).enumerate() {
        let mut hex = String::new();
        for (j, b) in row.iter().enumerate() {
            hex.push_str(&format!("{b:02x} "));
            if j == 7 {
                hex.push(' ');
            }
        }
        let ascii: String = row
            .iter()
            .map(|&b| {
                if (0x20..0x7f).contains(&b) {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        out.push_str(&format!("{:08x}  {hex:<50}|{ascii}|\n", i * 16));
    }
    out
}

#[test]
fn hex_dumps_are_what_the_crate_writes() {
    let dumps = blocks_of("hexdump");
    assert_eq!(dumps, examples().map(|rec| hexdump_c(&rec)));
}

/// The rows of the Markdown table whose first cell matches `first`, split into cells.
fn table_rows(first: impl Fn(&str) -> bool) -> Vec<Vec<String>> {
    protocol_md()
        .lines()
        .filter_map(|line| line.strip_prefix('|')?.strip_suffix('|'))
        .map(|row| {
            row.split('|')
                .map(|c| c.trim().trim_matches('`').to_owned())
                .collect::<Vec<_>>()
        })
        .filter(|cells| first(&cells[0]))
        .collect()
}

#[test]
fn attribute_table_matches_the_crate() {
    let documented: BTreeSet<(u16, String, String)> =
        table_rows(|c| c.starts_with("0x00") && c.len() == 6)
            .into_iter()
            .map(|cells| {
                let id = u16::from_str_radix(&cells[0][2..], 16).expect("hex id");
                (id, cells[1].clone(), cells[2].clone())
            })
            .collect();
    let known: BTreeSet<(u16, String, String)> = (0..=u16::MAX)
        .filter_map(|id| {
            let kind = match attr::kind(id)? {
                AttrKind::U32 => "u32",
                AttrKind::U64 => "u64",
                AttrKind::Str => "str",
            };
            Some((id, names::attribute(id)?.to_owned(), kind.to_owned()))
        })
        .collect();
    assert_eq!(documented, known);
}

#[test]
fn type_tables_match_the_crate() {
    let types: BTreeSet<(u32, String)> = table_rows(|c| c.parse::<u32>().is_ok())
        .into_iter()
        .filter(|cells| cells.len() == 3 && cells[2].starts_with("WATCHD_TYPE_"))
        .map(|cells| (cells[0].parse().unwrap(), cells[1].clone()))
        .collect();
    let known: BTreeSet<(u32, String)> = RecordType::ALL
        .into_iter()
        .map(|t| (t as u32, names::record_type(t as u32).unwrap().to_owned()))
        .collect();
    assert_eq!(types, known);

    // Rows like "| 1 `key` | 3 | `unlinked` | `WATCHD_KEY_UNLINKED` |".
    let subtypes: BTreeSet<(u32, u8, String)> = table_rows(|c| c.contains(" `"))
        .into_iter()
        .filter(|cells| cells.len() == 4)
        .map(|cells| {
            let t = cells[0].split(' ').next().unwrap().parse().expect("type");
            (t, cells[1].parse().expect("subtype"), cells[2].clone())
        })
        .collect();
    let known: BTreeSet<(u32, u8, String)> = RecordType::ALL
        .into_iter()
        .flat_map(|t| {
            (0..=u8::MAX)
                .filter_map(move |s| Some((t as u32, s, names::subtype(t as u32, s)?.to_owned())))
        })
        .collect();
    assert_eq!(subtypes, known);
}

#[test]
fn python_decoder_works_on_a_packet_pipe() {
    if !common::have("python3") {
        return;
    }
    let [decoder] = &blocks_of("python")[..] else {
        panic!("docs/protocol.md should hold exactly one python block");
    };
    let dir = common::scratch();
    std::fs::write(dir.join("watchd_decode.py"), decoder).expect("write decoder");
    let records = examples();
    let mut args = vec![dir.to_str().expect("UTF-8 path").to_owned()];
    for (i, rec) in records.iter().enumerate() {
        let path = dir.join(format!("example-{i}.bin"));
        std::fs::write(&path, rec).expect("write record");
        args.push(path.to_str().expect("UTF-8 path").to_owned());
    }
    // Lists the decoder's attribute table, then feeds it the records through a real
    // packet pipe, as a subscription would.
    let harness = r#"
import os, sys
sys.path.insert(0, sys.argv[1])
import watchd_decode as w
for aid, (name, kind) in sorted(w.ATTRS.items()):
    print(f"attr {aid} {name} {kind}")
r, wr = os.pipe2(os.O_DIRECT)
for path in sys.argv[2:]:
    with open(path, "rb") as f:
        os.write(wr, f.read())
os.close(wr)
w.follow(r)
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(harness)
        .args(&args)
        .output()
        .expect("run python3");
    let lines = common::stdout_lines(&out);
    let (table, printed): (Vec<String>, Vec<String>) =
        lines.into_iter().partition(|l| l.starts_with("attr "));

    let known: Vec<String> = (0..=u16::MAX)
        .filter_map(|id| {
            let kind = match attr::kind(id)? {
                AttrKind::U32 => "u32",
                AttrKind::U64 => "u64",
                AttrKind::Str => "str",
            };
            Some(format!("attr {id} {} {kind}", names::attribute(id)?))
        })
        .collect();
    assert_eq!(table, known, "the decoder's ATTRS table");
    assert_eq!(printed, quoted_output("{'type'"));
}

#[test]
fn dump_output_on_the_page_is_real() {
    if !common::have("cc") {
        return;
    }
    let input = examples().concat();
    let out = common::run_on_file(common::watchd_dump(), "examples.bin", &input);
    assert_eq!(common::stdout_lines(&out), quoted_output("seq="));
}

/// The text of the section whose heading starts with `heading`, up to the next `## `.
fn section(heading: &str) -> String {
    let text = protocol_md();
    let start = text
        .find(&format!("\n{heading}"))
        .unwrap_or_else(|| panic!("no section {heading:?}"));
    let rest = &text[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    rest[..end].to_owned()
}

/// Section 10 says which attributes device records carry: every name it lists must be an
/// attribute, and every device attribute (and the shared ones they use) must be listed.
#[test]
fn device_section_lists_the_device_attributes() {
    let text = section("## 10. Device records");
    let table: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("| attribute "))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .collect();
    assert!(!table.is_empty(), "no attribute table in section 10");
    let mut listed = BTreeSet::new();
    for row in table {
        let first = row.split('|').nth(1).expect("a first cell");
        for name in first.split('`').skip(1).step_by(2) {
            assert!(
                (0..=u16::MAX).any(|id| names::attribute(id) == Some(name)),
                "section 10 lists {name:?}, which is not an attribute"
            );
            assert!(listed.insert(name.to_owned()), "{name} listed twice");
        }
    }
    let mut expected: BTreeSet<String> = (attr::ACTION..=attr::EVENT_SOURCE)
        .map(|id| names::attribute(id).expect("a device attribute").to_owned())
        .collect();
    for id in [attr::MAJOR, attr::MINOR, attr::TRUNCATED] {
        expected.insert(names::attribute(id).unwrap().to_owned());
    }
    assert_eq!(listed, expected);

    // The subtype table names each action once, with its number.
    for s in 0..=u8::MAX {
        let Some(name) = names::subtype(RecordType::Device as u32, s) else {
            continue;
        };
        let cell = format!("`{name}` ({s})");
        assert_eq!(text.matches(&cell).count(), 1, "{cell} in section 10");
        assert_eq!(device::from_action(name), Some(s));
    }
}
