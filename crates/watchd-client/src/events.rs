//! [`EventStream`]: reading the pipe, one packet = one [`Event`].

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use tokio::net::unix::pipe;
use watchd_proto::{DecodeError, FLAG_SNAPSHOT, Header, MAX_RECORD_LEN, Record};

use crate::{Error, Result};

/// One record read from the pipe; owns its bytes, which are known to parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    bytes: Vec<u8>,
    header: Header,
}

impl Event {
    /// Checks that `bytes` hold exactly one record this version can read.
    pub fn from_bytes(bytes: Vec<u8>) -> std::result::Result<Event, DecodeError> {
        let header = Record::parse(&bytes)?.header;
        Ok(Event { bytes, header })
    }

    /// The fixed header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The decoded record, to read attributes from.
    pub fn record(&self) -> Record<'_> {
        Record::parse(&self.bytes).expect("checked by Event::from_bytes")
    }

    /// Part of the initial state (or of a resync), not a live change.
    pub fn is_snapshot(&self) -> bool {
        self.header.flags & FLAG_SNAPSHOT != 0
    }

    /// The packet as read.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

enum State {
    /// Not yet registered with the runtime (done on the first read, inside the runtime).
    Idle(OwnedFd),
    Ready(pipe::Receiver),
    /// Registering failed, which closed the fd; the stream has ended.
    Closed,
}

/// The events of one pipe, in order. Ends (`None`) when the pipe reports end of file: the
/// daemon went away or ended the subscription.
///
/// Reads with Tokio's reactor (`tokio::net::unix::pipe::Receiver`, which sets the read end
/// `O_NONBLOCK`, as `AsyncFd` would without the `unsafe` its registration now needs).
pub struct EventStream {
    state: State,
    buf: Box<[u8]>,
    ended: bool,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fd = match &self.state {
            State::Idle(fd) => Some(fd.as_raw_fd()),
            State::Ready(rx) => Some(rx.as_raw_fd()),
            State::Closed => None,
        };
        f.debug_struct("EventStream")
            .field("fd", &fd)
            .field("ended", &self.ended)
            .finish()
    }
}

impl EventStream {
    /// Reads records from `pipe`, the read end of a watchd packet pipe (e.g. one that another
    /// process passed on). On the first read, from within a Tokio runtime, the fd is checked
    /// to be a pipe's read end, switched to non-blocking mode and registered.
    pub fn new(pipe: OwnedFd) -> Self {
        EventStream {
            state: State::Idle(pipe),
            buf: vec![0; MAX_RECORD_LEN].into(),
            ended: false,
        }
    }

    fn ready(&mut self) -> io::Result<&pipe::Receiver> {
        if let State::Idle(_) = self.state {
            let State::Idle(fd) = std::mem::replace(&mut self.state, State::Closed) else {
                unreachable!("checked above")
            };
            self.state = State::Ready(pipe::Receiver::from_owned_fd(fd)?);
        }
        match &self.state {
            State::Ready(rx) => Ok(rx),
            _ => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the pipe could not be registered",
            )),
        }
    }

    /// The next event; `None` once the pipe has ended. A packet that does not decode is
    /// returned as [`Error::Decode`] and the stream goes on with the next one. If the fd
    /// cannot be used at all (not a pipe's read end, no Tokio reactor to register with) the
    /// first call says so and the stream ends.
    ///
    /// Cancel-safe: dropping the future before it completes loses no packet, so it can be
    /// used in `tokio::select!`.
    pub async fn next(&mut self) -> Option<Result<Event>> {
        if self.ended {
            return None;
        }
        if let Err(e) = self.ready() {
            self.ended = true;
            return Some(Err(Error::Io(e)));
        }
        let n = match self.read_packet().await {
            Ok(n) => n,
            Err(e) => return Some(Err(Error::Io(e))),
        };
        if n == 0 {
            self.ended = true;
            return None;
        }
        Some(Event::from_bytes(self.buf[..n].to_vec()).map_err(Error::from))
    }

    /// One `read()`: one packet, or 0 at end of file.
    async fn read_packet(&mut self) -> io::Result<usize> {
        self.ready()?;
        let State::Ready(rx) = &self.state else {
            unreachable!("ready() succeeded")
        };
        loop {
            rx.readable().await?;
            match rx.try_read(&mut self.buf) {
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                result => return result,
            }
        }
    }

    /// The pipe has reported end of file.
    pub fn is_ended(&self) -> bool {
        self.ended
    }
}
