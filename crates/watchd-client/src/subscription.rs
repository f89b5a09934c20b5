//! [`Subscription`] (the pipe plus its D-Bus object), [`SubscriptionControl`], and the
//! options of `AddWatch`: [`WatchOptions`] and [`Filter`].

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use watchd_proto::RecordType;
use zbus::{ObjectPath, OwnedVariant, Variant};

use crate::dbus::{Options, SubscriptionProxy};
use crate::{Error, EventStream, Result};

/// One subscription: the read end of its pipe and the D-Bus object that controls it.
///
/// The daemon ends the subscription when every copy of the pipe's read end is closed, so
/// dropping this (without [`Subscription::into_pipe`] or [`Subscription::into_events`]) ends
/// it. Add watches, then read events with [`Subscription::into_events`]; use
/// [`Subscription::split`] to keep control (e.g. to [`resync`](SubscriptionControl::resync)
/// after a loss) while reading.
#[derive(Debug)]
pub struct Subscription {
    control: SubscriptionControl,
    pipe: OwnedFd,
}

/// Calls on a subscription's D-Bus object; cheap to clone.
///
/// Does not keep the subscription alive: that is the pipe's job.
#[derive(Clone, Debug)]
pub struct SubscriptionControl {
    proxy: SubscriptionProxy<'static>,
}

impl Subscription {
    pub(crate) fn new(proxy: SubscriptionProxy<'static>, pipe: OwnedFd) -> Self {
        Subscription {
            control: SubscriptionControl { proxy },
            pipe,
        }
    }

    /// The subscription's object path, `/org/watchd/Watchd1/subscription/<N>`.
    pub fn path(&self) -> &ObjectPath<'static> {
        self.control.path()
    }

    /// Sets a watch of `kind` (one of the daemon's `Sources`), tagged `tag` in its records.
    pub async fn add_watch(&self, tag: u64, kind: &str, options: &WatchOptions) -> Result<()> {
        self.control.add_watch(tag, kind, options).await
    }

    /// Removes the watch tagged `tag`.
    pub async fn remove_watch(&self, tag: u64) -> Result<()> {
        self.control.remove_watch(tag).await
    }

    /// Asks for the watch's current state again: SNAPSHOT records, then a SYNC record.
    pub async fn resync(&self, tag: u64) -> Result<()> {
        self.control.resync(tag).await
    }

    /// The pipe's capacity in packets.
    pub async fn depth(&self) -> Result<u32> {
        self.control.depth().await
    }

    /// The uid that owns the subscription.
    pub async fn owner(&self) -> Result<u32> {
        self.control.owner().await
    }

    /// The pipe's read end, to `poll()` or hand on without giving it up.
    pub fn pipe(&self) -> BorrowedFd<'_> {
        self.pipe.as_fd()
    }

    /// Gives up control and returns the pipe's read end, untouched (still blocking), e.g. to
    /// pass it to another process. The subscription lives as long as it stays open.
    pub fn into_pipe(self) -> OwnedFd {
        self.pipe
    }

    /// Reads events from the pipe. The subscription's object stays reachable by path, but
    /// this value is consumed; see [`Subscription::split`] to keep a handle.
    pub fn into_events(self) -> EventStream {
        EventStream::new(self.pipe)
    }

    /// Both halves: a control handle and the event stream.
    pub fn split(self) -> (SubscriptionControl, EventStream) {
        (self.control, EventStream::new(self.pipe))
    }
}

impl AsFd for Subscription {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.pipe.as_fd()
    }
}

impl SubscriptionControl {
    /// The subscription's object path.
    pub fn path(&self) -> &ObjectPath<'static> {
        self.proxy.inner().path()
    }

    /// See [`Subscription::add_watch`].
    pub async fn add_watch(&self, tag: u64, kind: &str, options: &WatchOptions) -> Result<()> {
        let wire = options.to_dbus()?;
        let call = if options.interactive {
            self.proxy.add_watch_interactive(tag, kind, &wire).await
        } else {
            self.proxy.add_watch(tag, kind, &wire).await
        };
        Ok(call?)
    }

    /// See [`Subscription::remove_watch`].
    pub async fn remove_watch(&self, tag: u64) -> Result<()> {
        Ok(self.proxy.remove_watch(tag).await?)
    }

    /// See [`Subscription::resync`].
    pub async fn resync(&self, tag: u64) -> Result<()> {
        Ok(self.proxy.resync(tag).await?)
    }

    /// See [`Subscription::depth`].
    pub async fn depth(&self) -> Result<u32> {
        Ok(self.proxy.depth().await?)
    }

    /// See [`Subscription::owner`].
    pub async fn owner(&self) -> Result<u32> {
        Ok(self.proxy.owner().await?)
    }
}

/// One entry of the `filters` option: records of `record_type` pass when their subtype's bit
/// is set in `subtypes` and `(flags & flags_mask) == flags_value`. With any filter set, records
/// of types not listed do not pass; META records always do. On the wire: `(utuu)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Filter {
    pub record_type: u32,
    /// Bit n selects subtype n.
    pub subtypes: u64,
    pub flags_mask: u32,
    pub flags_value: u32,
}

impl Filter {
    /// Every subtype of `record_type`, whatever the flags.
    pub fn new(record_type: RecordType) -> Self {
        Filter {
            record_type: record_type as u32,
            subtypes: u64::MAX,
            flags_mask: 0,
            flags_value: 0,
        }
    }

    /// Only these subtypes. The contract's mask has 64 bits, so subtypes from 64 up cannot be
    /// selected and are left out.
    pub fn subtypes(mut self, subtypes: impl IntoIterator<Item = u8>) -> Self {
        self.subtypes = subtypes
            .into_iter()
            .filter_map(|s| 1u64.checked_shl(u32::from(s)))
            .fold(0, |a, b| a | b);
        self
    }

    /// Only records whose header flags, masked with `mask`, equal `value` (e.g.
    /// `flags(FLAG_SNAPSHOT, 0)` for live changes only).
    pub fn flags(mut self, mask: u8, value: u8) -> Self {
        self.flags_mask = u32::from(mask);
        self.flags_value = u32::from(value);
        self
    }

    fn to_tuple(self) -> (u32, u64, u32, u32) {
        (
            self.record_type,
            self.subtypes,
            self.flags_mask,
            self.flags_value,
        )
    }
}

/// The options of `AddWatch`. Only what is set is sent: `initial` when true, `filters` when
/// not empty, and each extra set with [`WatchOptions::option`].
#[derive(Debug, Default)]
pub struct WatchOptions {
    /// Send the current state first (SNAPSHOT records, then a SYNC record).
    pub initial: bool,
    /// Type/subtype/flags filters; empty means everything passes.
    pub filters: Vec<Filter>,
    /// Send `AddWatch` with ALLOW_INTERACTIVE_AUTHORIZATION, so polkit may ask the user to
    /// authenticate (through their authentication agent) instead of refusing.
    pub interactive: bool,
    extra: BTreeMap<String, OwnedVariant>,
    /// The first option whose value could not be kept; reported by `add_watch`.
    invalid: Option<(String, zbus::Error)>,
}

impl WatchOptions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `initial`.
    pub fn initial(mut self, initial: bool) -> Self {
        self.initial = initial;
        self
    }

    /// Sets `interactive`.
    pub fn interactive(mut self, interactive: bool) -> Self {
        self.interactive = interactive;
        self
    }

    /// Adds a filter.
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filters.push(filter);
        self
    }

    /// Sets a kind-specific option, e.g. `.option("path", "/mnt")`. Anything that converts
    /// into a [`Variant`](enum@Variant) will do (numbers, `bool`, `&str`, `String`, `OwnedVariant`,
    /// vectors and tuples of those…). Setting `initial` or `filters` here is overridden by
    /// the fields of the same name when those are set.
    pub fn option<'v>(mut self, key: impl Into<String>, value: impl Into<Variant<'v>>) -> Self {
        let key = key.into();
        match value.into().try_into_owned() {
            Ok(value) => {
                self.extra.insert(key, value);
            }
            Err(e) => {
                if self.invalid.is_none() {
                    self.invalid = Some((key, e));
                }
            }
        }
        self
    }

    /// `mounts`: only mounts at or under this absolute path.
    pub fn path(self, path: impl Into<String>) -> Self {
        self.option("path", path.into())
    }

    /// The extras set with [`WatchOptions::option`].
    pub fn extra(&self) -> impl Iterator<Item = (&str, &OwnedVariant)> {
        self.extra.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub(crate) fn to_dbus(&self) -> Result<Options<'_>> {
        if let Some((key, source)) = &self.invalid {
            return Err(Error::InvalidOption {
                key: key.clone(),
                source: source.clone(),
            });
        }
        let mut options = Options::new();
        for (key, value) in &self.extra {
            let value = Variant::try_from(value).map_err(|source| Error::InvalidOption {
                key: key.clone(),
                source,
            })?;
            options.insert(key.as_str(), value);
        }
        if self.initial {
            options.insert("initial", Variant::from(true));
        }
        if !self.filters.is_empty() {
            let filters: Vec<_> = self.filters.iter().map(|f| f.to_tuple()).collect();
            options.insert("filters", Variant::from(filters));
        }
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use watchd_proto::{FLAG_SNAPSHOT, mount};
    use zbus::Type;

    #[test]
    fn nothing_set_sends_nothing() {
        assert!(WatchOptions::new().to_dbus().unwrap().is_empty());
    }

    #[test]
    fn options_have_the_contract_signatures() {
        let options = WatchOptions::new()
            .initial(true)
            .path("/mnt")
            .option("depth_hint", 7u32)
            .filter(Filter::new(RecordType::Mount).subtypes([mount::ATTACH, mount::DETACH]))
            .filter(Filter::new(RecordType::Key).flags(FLAG_SNAPSHOT, 0));
        let sent = options.to_dbus().unwrap();
        assert_eq!(sent.len(), 4);
        assert_eq!(sent["initial"], Variant::from(true));
        assert_eq!(sent["path"], Variant::from("/mnt"));
        assert_eq!(sent["depth_hint"], Variant::from(7u32));
        let filters = &sent["filters"];
        assert_eq!(filters.value_signature().to_string(), "a(utuu)");
        let filters: Vec<(u32, u64, u32, u32)> = filters.try_clone().unwrap().try_into().unwrap();
        assert_eq!(filters, vec![(2, 0b11, 0, 0), (1, u64::MAX, 1, 0)]);
        assert_eq!(Options::SIGNATURE.to_string(), "a{sv}");
    }

    #[test]
    fn typed_fields_override_extras() {
        let options = WatchOptions::new().option("initial", "yes").initial(true);
        assert_eq!(options.to_dbus().unwrap()["initial"], Variant::from(true));
        // Unset, the extra goes through as given.
        let options = WatchOptions::new().option("initial", "yes");
        assert_eq!(options.to_dbus().unwrap()["initial"], Variant::from("yes"));
    }

    #[test]
    fn subtypes_beyond_the_mask_are_left_out() {
        assert_eq!(
            Filter::new(RecordType::Mount)
                .subtypes([0, 63, 64, 200])
                .subtypes,
            1 | 1 << 63
        );
        assert_eq!(Filter::new(RecordType::Mount).subtypes([]).subtypes, 0);
    }
}
