//! The bytes of generic netlink, read and written without trust: every length is checked
//! against the buffer before use, nothing panics on any input (pure functions over `&[u8]`,
//! fit for a fuzzer). netlink(7): a datagram holds messages, each a 16-byte `nlmsghdr`
//! (length, type, flags, sequence, port) and a payload, padded to 4 bytes; a generic
//! netlink payload starts with a 4-byte `genlmsghdr` (command, version, reserved) followed by
//! attributes (`nlattr`: 2-byte length, 2-byte type, value, padded to 4). Integers are in
//! the host's byte order.
//!
//! What is read: the controller's answer to `CTRL_CMD_GETFAMILY` ([`parse_family`]), which
//! gives a family's id and its multicast groups, and the quota family's
//! `QUOTA_NL_C_WARNING` ([`parse_warning`]; `include/uapi/linux/quota.h`).
#![forbid(unsafe_code)]

/// `sizeof(struct nlmsghdr)`.
const NLMSG_HDRLEN: usize = 16;
/// `sizeof(struct genlmsghdr)`.
const GENL_HDRLEN: usize = 4;
/// `sizeof(struct nlattr)`.
const NLA_HDRLEN: usize = 4;
/// `nla_type & NLA_TYPE_MASK`: the flag bits (nested, network byte order) are not the type.
const NLA_TYPE_MASK: u16 = 0x3fff;

/// `NLMSG_ERROR`: an error (or, with error 0, an acknowledgement).
pub const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`: the end of a multi-part answer.
pub const NLMSG_DONE: u16 = 3;
/// `NLM_F_REQUEST`.
const NLM_F_REQUEST: u16 = 1;

/// `GENL_ID_CTRL`: the controller family, which names the others.
pub const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_NEWFAMILY: u8 = 1;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const CTRL_ATTR_MCAST_GROUPS: u16 = 7;
const CTRL_ATTR_MCAST_GRP_NAME: u16 = 1;
const CTRL_ATTR_MCAST_GRP_ID: u16 = 2;

/// The quota family's name and its one multicast group.
pub const QUOTA_FAMILY: &str = "VFS_DQUOT";
pub const QUOTA_GROUP: &str = "events";
/// `QUOTA_NL_C_WARNING`.
pub const QUOTA_NL_C_WARNING: u8 = 1;
const QUOTA_NL_A_QTYPE: u16 = 1;
const QUOTA_NL_A_EXCESS_ID: u16 = 2;
const QUOTA_NL_A_WARNING: u16 = 3;
const QUOTA_NL_A_DEV_MAJOR: u16 = 4;
const QUOTA_NL_A_DEV_MINOR: u16 = 5;
const QUOTA_NL_A_CAUSED_ID: u16 = 6;

/// Why bytes are not the message expected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("{what} needs {need} bytes, {have} are left")]
    Short {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("{what} says it is {len} bytes long, less than its own header")]
    BadLength { what: &'static str, len: usize },
    #[error("attribute {attr} is {len} bytes, expected {expected}")]
    AttrSize {
        attr: u16,
        len: usize,
        expected: usize,
    },
    #[error("attribute {0} is missing")]
    Missing(&'static str),
    #[error("generic netlink command {0}, not the one expected")]
    Command(u8),
    #[error("the kernel answered with error {0}")]
    Errno(i32),
    #[error("an error message carries {0}, which is no errno")]
    NotErrno(i32),
}

type Result<T> = std::result::Result<T, ParseError>;

fn short(what: &'static str, need: usize, have: usize) -> ParseError {
    ParseError::Short { what, need, have }
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// One netlink message of a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    /// What follows the header, padding excluded.
    pub payload: &'a [u8],
}

/// The messages of a datagram, in order; after an error nothing more is read from it.
pub fn messages(datagram: &[u8]) -> impl Iterator<Item = Result<Message<'_>>> {
    walk(datagram, message)
}

/// Splits one item (a message, an attribute) off the front of its bytes: it, and the rest.
type Split<'a, T> = fn(&'a [u8]) -> Result<(T, &'a [u8])>;

/// The items `first` splits off `bytes` one after the other (a message, or an attribute,
/// and what follows it); a malformed one is an error, and ends the walk.
fn walk<'a, T: 'a>(bytes: &'a [u8], first: Split<'a, T>) -> impl Iterator<Item = Result<T>> + 'a {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let parsed = first(rest);
        rest = match &parsed {
            Ok((_, next)) => next,
            Err(_) => &[],
        };
        Some(parsed.map(|(item, _)| item))
    })
}

/// The first message of `bytes`, and what follows it.
fn message(bytes: &[u8]) -> Result<(Message<'_>, &[u8])> {
    if bytes.len() < NLMSG_HDRLEN {
        return Err(short("a netlink header", NLMSG_HDRLEN, bytes.len()));
    }
    let len = u32_at(bytes, 0).unwrap_or(0) as usize;
    if len < NLMSG_HDRLEN {
        return Err(ParseError::BadLength {
            what: "a netlink message",
            len,
        });
    }
    if len > bytes.len() {
        return Err(short("a netlink message", len, bytes.len()));
    }
    let message = Message {
        kind: u16_at(bytes, 4).unwrap_or(0),
        flags: u16_at(bytes, 6).unwrap_or(0),
        seq: u32_at(bytes, 8).unwrap_or(0),
        payload: &bytes[NLMSG_HDRLEN..len],
    };
    // The last message of a datagram may come without its padding.
    let next = bytes.get(len.next_multiple_of(4)..).unwrap_or(&[]);
    Ok((message, next))
}

/// One attribute: its type (flags masked off) and value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Attr<'a> {
    kind: u16,
    value: &'a [u8],
}

/// The attributes of `bytes`; a malformed one is an error, and ends the walk.
fn attrs(bytes: &[u8]) -> impl Iterator<Item = Result<Attr<'_>>> {
    walk(bytes, attr)
}

fn attr(bytes: &[u8]) -> Result<(Attr<'_>, &[u8])> {
    if bytes.len() < NLA_HDRLEN {
        return Err(short("an attribute header", NLA_HDRLEN, bytes.len()));
    }
    let len = usize::from(u16_at(bytes, 0).unwrap_or(0));
    if len < NLA_HDRLEN {
        return Err(ParseError::BadLength {
            what: "an attribute",
            len,
        });
    }
    if len > bytes.len() {
        return Err(short("an attribute", len, bytes.len()));
    }
    let attr = Attr {
        kind: u16_at(bytes, 2).unwrap_or(0) & NLA_TYPE_MASK,
        value: &bytes[NLA_HDRLEN..len],
    };
    Ok((attr, bytes.get(len.next_multiple_of(4)..).unwrap_or(&[])))
}

impl Attr<'_> {
    fn sized<const N: usize>(&self) -> Result<[u8; N]> {
        self.value.try_into().map_err(|_| ParseError::AttrSize {
            attr: self.kind,
            len: self.value.len(),
            expected: N,
        })
    }

    fn u16(&self) -> Result<u16> {
        self.sized().map(u16::from_ne_bytes)
    }

    fn u32(&self) -> Result<u32> {
        self.sized().map(u32::from_ne_bytes)
    }

    fn u64(&self) -> Result<u64> {
        self.sized().map(u64::from_ne_bytes)
    }

    /// A NUL-terminated string attribute, without its NUL (and anything after it).
    fn string(&self) -> String {
        let text = self.value.split(|&b| b == 0).next().unwrap_or(&[]);
        String::from_utf8_lossy(text).into_owned()
    }
}

/// A generic netlink payload: its command and attributes. An `NLMSG_ERROR` message is the
/// kernel's error number instead.
fn genl<'a>(message: &Message<'a>) -> Result<(u8, &'a [u8])> {
    if message.kind == NLMSG_ERROR {
        let error = u32_at(message.payload, 0)
            .ok_or_else(|| short("an error message", 4, message.payload.len()))?
            as i32;
        // The kernel sends a negative errno; i32::MIN has no positive one.
        return Err(error
            .checked_neg()
            .map_or(ParseError::NotErrno(error), ParseError::Errno));
    }
    if message.payload.len() < GENL_HDRLEN {
        return Err(short(
            "a generic netlink header",
            GENL_HDRLEN,
            message.payload.len(),
        ));
    }
    Ok((message.payload[0], &message.payload[GENL_HDRLEN..]))
}

/// `CTRL_CMD_GETFAMILY` for `name`, as sequence number `seq`.
pub fn family_request(name: &str, seq: u32) -> Vec<u8> {
    let value_len = name.len() + 1;
    let attr_len = NLA_HDRLEN + value_len;
    let len = NLMSG_HDRLEN + GENL_HDRLEN + attr_len.next_multiple_of(4);
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&GENL_ID_CTRL.to_ne_bytes());
    out.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&[CTRL_CMD_GETFAMILY, 1, 0, 0]);
    out.extend_from_slice(&(attr_len as u16).to_ne_bytes());
    out.extend_from_slice(&CTRL_ATTR_FAMILY_NAME.to_ne_bytes());
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    out.resize(len, 0);
    out
}

/// A generic netlink family, as the controller describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Family {
    pub id: u16,
    pub name: String,
    /// Its multicast groups: name and group number.
    pub groups: Vec<(String, u32)>,
}

impl Family {
    pub fn group(&self, name: &str) -> Option<u32> {
        self.groups
            .iter()
            .find(|(n, _)| n == name)
            .map(|&(_, id)| id)
    }
}

/// The controller's answer to [`family_request`]: one message (`CTRL_CMD_NEWFAMILY`), or
/// an error (`ENOENT` when no such family is registered).
pub fn parse_family(message: &Message<'_>) -> Result<Family> {
    let (command, body) = genl(message)?;
    if command != CTRL_CMD_NEWFAMILY {
        return Err(ParseError::Command(command));
    }
    let (mut id, mut name, mut groups) = (None, None, Vec::new());
    for attr in attrs(body) {
        let attr = attr?;
        match attr.kind {
            CTRL_ATTR_FAMILY_ID => id = Some(attr.u16()?),
            CTRL_ATTR_FAMILY_NAME => name = Some(attr.string()),
            CTRL_ATTR_MCAST_GROUPS => {
                // An array: each element a nested set of name and id.
                for element in attrs(attr.value) {
                    let (mut group_name, mut group_id) = (None, None);
                    for field in attrs(element?.value) {
                        let field = field?;
                        match field.kind {
                            CTRL_ATTR_MCAST_GRP_NAME => group_name = Some(field.string()),
                            CTRL_ATTR_MCAST_GRP_ID => group_id = Some(field.u32()?),
                            _ => {}
                        }
                    }
                    if let (Some(n), Some(i)) = (group_name, group_id) {
                        groups.push((n, i));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(Family {
        id: id.ok_or(ParseError::Missing("CTRL_ATTR_FAMILY_ID"))?,
        name: name.ok_or(ParseError::Missing("CTRL_ATTR_FAMILY_NAME"))?,
        groups,
    })
}

/// One quota warning, as the kernel sent it (`quota_send_warning` in fs/quota/netlink.c).
/// Ids are in the initial user namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Warning {
    /// `USRQUOTA` 0, `GRPQUOTA` 1, `PRJQUOTA` 2.
    pub quota_type: u32,
    /// The user, group or project whose quota it is.
    pub id: u64,
    /// `QUOTA_NL_IHARDWARN` (1) … `QUOTA_NL_BSOFTBELOW` (10).
    pub warning: u32,
    pub major: u32,
    pub minor: u32,
    /// The uid of the process whose action caused it, when the kernel says.
    pub caused_by: Option<u64>,
}

/// A whole netlink message (header included) as the quota family multicasts it. The
/// message's type (the family's id, which the kernel assigns at boot) is the caller's to
/// check; unknown attributes (`QUOTA_NL_A_PAD` on some architectures) are skipped.
pub fn parse_warning(bytes: &[u8]) -> Result<Warning> {
    let (message, _) = message(bytes)?;
    warning(&message)
}

/// [`parse_warning`] of a message already split from its datagram.
pub fn warning(message: &Message<'_>) -> Result<Warning> {
    let (command, body) = genl(message)?;
    if command != QUOTA_NL_C_WARNING {
        return Err(ParseError::Command(command));
    }
    let (mut quota_type, mut id, mut warning, mut major, mut minor, mut caused_by) =
        (None, None, None, None, None, None);
    for attr in attrs(body) {
        let attr = attr?;
        match attr.kind {
            QUOTA_NL_A_QTYPE => quota_type = Some(attr.u32()?),
            QUOTA_NL_A_EXCESS_ID => id = Some(attr.u64()?),
            QUOTA_NL_A_WARNING => warning = Some(attr.u32()?),
            QUOTA_NL_A_DEV_MAJOR => major = Some(attr.u32()?),
            QUOTA_NL_A_DEV_MINOR => minor = Some(attr.u32()?),
            QUOTA_NL_A_CAUSED_ID => caused_by = Some(attr.u64()?),
            _ => {}
        }
    }
    Ok(Warning {
        quota_type: quota_type.ok_or(ParseError::Missing("QUOTA_NL_A_QTYPE"))?,
        id: id.ok_or(ParseError::Missing("QUOTA_NL_A_EXCESS_ID"))?,
        warning: warning.ok_or(ParseError::Missing("QUOTA_NL_A_WARNING"))?,
        major: major.ok_or(ParseError::Missing("QUOTA_NL_A_DEV_MAJOR"))?,
        minor: minor.ok_or(ParseError::Missing("QUOTA_NL_A_DEV_MINOR"))?,
        caused_by,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every prefix and every single-byte change of `bytes` parses or fails, never panics.
    fn survives_mangling(bytes: &[u8], parse: impl Fn(&[u8])) {
        for end in 0..bytes.len() {
            parse(&bytes[..end]);
        }
        for at in 0..bytes.len() {
            for value in [0x00, 0x01, 0x03, 0x04, 0x7f, 0xff] {
                let mut mangled = bytes.to_vec();
                mangled[at] = value;
                parse(&mangled);
            }
        }
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Linux 6.18's answer (x86_64) to `family_request("VFS_DQUOT", 1)`, as received.
    const FAMILY_ANSWER: &str = concat!(
        "600000001000000001000000e66b0000010200000e0002005646535f4451554f54000000",
        "06000100110000000800030001000000080004000000000008000500070000001c00070018000100080002",
        "00110000000b0001006576656e74730000",
    );
    /// Its answer to a family that does not exist: `NLMSG_ERROR`, `-ENOENT`.
    const NO_FAMILY_ANSWER: &str = concat!(
        "380000000200000002000000e66b0000feffffff240000001000010002000000",
        "0000000003010000100002004e4f5f535543485f46414d00",
    );

    #[test]
    fn the_kernels_family_answer_names_the_id_and_the_events_group() {
        let bytes = hex(FAMILY_ANSWER);
        let all: Vec<_> = messages(&bytes).collect::<Result<_>>().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].kind, all[0].seq), (GENL_ID_CTRL, 1));
        let family = parse_family(&all[0]).unwrap();
        assert_eq!(family.name, QUOTA_FAMILY);
        assert_eq!(family.id, 0x11);
        assert_eq!(family.group(QUOTA_GROUP), Some(0x11));
        assert_eq!(family.group("other"), None);
        let missing = hex(NO_FAMILY_ANSWER);
        let message = messages(&missing).next().unwrap().unwrap();
        assert_eq!(parse_family(&message), Err(ParseError::Errno(libc::ENOENT)));
        survives_mangling(&bytes, |b| {
            for m in messages(b).flatten() {
                let _ = parse_family(&m);
            }
        });
    }

    /// Warnings as Linux 6.1 (x86_64, the VM of tests/e2e/quota.rs) multicast them, captured
    /// by `watchd-vm-probe --quota`: uid 1000 (gid 3000) writing past group 3000's soft
    /// limit, then its own hard limit, on loop0.
    const GROUP_SOFT_EXCEEDED: &str = concat!(
        "4c0000001100000001000000000000000101000008000100010000000c000200b80b0000000000000800",
        "030006000000080004000700000008000500000000000c000600e803000000000000",
    );
    const USER_HARD_EXCEEDED: &str = concat!(
        "4c0000001100000003000000000000000101000008000100000000000c000200e8030000000000000800",
        "030004000000080004000700000008000500000000000c000600e803000000000000",
    );

    #[test]
    fn the_kernels_warnings_parse_to_what_happened() {
        let bytes = hex(GROUP_SOFT_EXCEEDED);
        let message = messages(&bytes).next().unwrap().unwrap();
        assert_eq!(message.kind, 0x11, "the family's id");
        assert_eq!(
            parse_warning(&bytes),
            Ok(Warning {
                quota_type: 1,
                id: 3000,
                warning: 6,
                major: 7,
                minor: 0,
                caused_by: Some(1000),
            })
        );
        let bytes = hex(USER_HARD_EXCEEDED);
        assert_eq!(
            parse_warning(&bytes),
            Ok(Warning {
                quota_type: 0,
                id: 1000,
                warning: 4,
                major: 7,
                minor: 0,
                caused_by: Some(1000),
            })
        );
        // A controller message is no warning (its command number is the same, 1: only the
        // message type, the family's id, tells them apart, which the reader checks first).
        assert!(matches!(
            parse_warning(&hex(FAMILY_ANSWER)),
            Err(ParseError::AttrSize { attr: 2, .. })
        ));
        // Without a required attribute: cut after the quota type (and the length fixed).
        let mut cut = bytes[..28].to_vec();
        cut[..4].copy_from_slice(&28u32.to_ne_bytes());
        assert_eq!(
            parse_warning(&cut),
            Err(ParseError::Missing("QUOTA_NL_A_EXCESS_ID"))
        );
        // A u64 attribute of the wrong size.
        let mut wrong = bytes.clone();
        wrong[28] = 8;
        assert!(matches!(
            parse_warning(&wrong),
            Err(ParseError::AttrSize { .. }) | Err(ParseError::Short { .. })
        ));
        survives_mangling(&bytes, |b| {
            let _ = parse_warning(b);
        });
    }

    #[test]
    fn the_family_request_is_what_the_controller_expects() {
        let request = family_request(QUOTA_FAMILY, 7);
        assert_eq!(request.len(), 16 + 4 + 16);
        let (m, rest) = message(&request).unwrap();
        assert!(rest.is_empty());
        assert_eq!((m.kind, m.flags, m.seq), (GENL_ID_CTRL, NLM_F_REQUEST, 7));
        let (command, body) = genl(&m).unwrap();
        assert_eq!(command, CTRL_CMD_GETFAMILY);
        let attrs: Vec<_> = attrs(body).collect::<Result<_>>().unwrap();
        assert_eq!(attrs.len(), 1);
        assert_eq!(attrs[0].kind, CTRL_ATTR_FAMILY_NAME);
        assert_eq!(attrs[0].value, b"VFS_DQUOT\0");
    }

    #[test]
    fn an_error_message_with_i32_min_is_refused_not_negated() {
        // Found by the fuzzer (fuzz/regressions/quota/error-errno-i32-min): negating it
        // overflowed.
        let mut bytes = hex(NO_FAMILY_ANSWER);
        bytes[16..20].copy_from_slice(&i32::MIN.to_ne_bytes());
        let message = messages(&bytes).next().unwrap().unwrap();
        assert_eq!(parse_family(&message), Err(ParseError::NotErrno(i32::MIN)));
    }

    #[test]
    fn an_error_answer_is_the_kernels_errno() {
        // NLMSG_ERROR, error -ENOENT, then the request's header echoed.
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&36u32.to_ne_bytes());
        bytes.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        bytes.extend_from_slice(&0u16.to_ne_bytes());
        bytes.extend_from_slice(&1u32.to_ne_bytes());
        bytes.extend_from_slice(&99u32.to_ne_bytes());
        bytes.extend_from_slice(&(-libc::ENOENT).to_ne_bytes());
        bytes.extend_from_slice(&family_request("NOPE", 1)[..16]);
        let m = messages(&bytes).next().unwrap().unwrap();
        assert_eq!(parse_family(&m), Err(ParseError::Errno(libc::ENOENT)));
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        assert!(matches!(parse_warning(&[]), Err(ParseError::Short { .. })));
        // A length shorter than the header, and one longer than the buffer.
        let mut bytes = vec![0u8; 20];
        bytes[0] = 8;
        assert!(matches!(
            parse_warning(&bytes),
            Err(ParseError::BadLength { .. })
        ));
        bytes[0] = 200;
        assert!(matches!(
            parse_warning(&bytes),
            Err(ParseError::Short { .. })
        ));
        // A datagram's messages stop at the first bad one.
        let mut two = family_request("A", 1);
        two.extend_from_slice(&[1, 2, 3]);
        let parsed: Vec<_> = messages(&two).collect();
        assert_eq!(parsed.len(), 2);
        assert!(parsed[0].is_ok() && parsed[1].is_err());
    }
}
