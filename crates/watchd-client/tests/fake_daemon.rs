//! The client against a fake watchd that follows the D-Bus contract, on a private
//! dbus-daemon. Skipped (with a note) where `dbus-daemon` is not installed.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::fcntl::OFlag;
use watchd_client::proto::{self, RecordBuilder, RecordType, attr, meta, mount};
use watchd_client::{Client, DaemonError, Error, Filter, SubscribeOptions, WatchOptions};
use zbus::object_server::ObjectServer;
use zbus::{OwnedObjectPath, OwnedVariant};

struct Bus {
    child: Child,
    dir: PathBuf,
    address: String,
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private bus, or `None` when dbus-daemon is not installed.
fn private_bus(name: &str) -> Option<Bus> {
    let dir = std::env::temp_dir().join(format!("watchd-client-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("bus.conf");
    std::fs::write(
        &config,
        format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}/bus</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
            dir.display()
        ),
    )
    .unwrap();
    let child = Command::new("dbus-daemon")
        .arg(format!("--config-file={}", config.display()))
        .args(["--nofork", "--print-address=1", "--nopidfile"])
        .stdout(Stdio::piped())
        .stderr(File::create(dir.join("stderr")).unwrap())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("skipped: dbus-daemon is not installed");
            return None;
        }
        Err(e) => panic!("dbus-daemon: {e}"),
    };
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let address = line.trim().to_owned();
    if address.is_empty() {
        let stderr = std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
        panic!("dbus-daemon printed no address: {stderr}");
    }
    Some(Bus {
        child,
        dir,
        address,
    })
}

#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.watchd.Watchd1.Error")]
enum FakeError {
    #[zbus(error)]
    ZBus(zbus::Error),
    InvalidArgument(String),
    DuplicateTag(String),
    NoSuchWatch(String),
}

/// A watch as set: its kind, and its options as `signature=value` text by key.
type Watch = (String, BTreeMap<String, String>);

#[derive(Default)]
struct State {
    next_id: u32,
    /// Write ends, by subscription id.
    writers: HashMap<u32, File>,
    depths: HashMap<u32, u32>,
    /// Watches by subscription id, then tag: (kind, option keys and values as text).
    watches: HashMap<u32, BTreeMap<u64, Watch>>,
    seq: u64,
}

type Shared = Arc<Mutex<State>>;

struct FakeManager(Shared);

#[zbus::interface(name = "org.watchd.Watchd1.Manager")]
impl FakeManager {
    async fn subscribe(
        &self,
        #[zbus(object_server)] server: &ObjectServer,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<(zbus::OwnedFd, OwnedObjectPath), FakeError> {
        let mut depth = 16;
        for (key, value) in &options {
            match key.as_str() {
                "depth" => {
                    depth = u32::try_from(value)
                        .map_err(|_| FakeError::InvalidArgument("depth must be a u".into()))?
                }
                other => {
                    return Err(FakeError::InvalidArgument(format!(
                        "unknown option {other}"
                    )));
                }
            }
        }
        let (read, write) = nix::unistd::pipe2(OFlag::O_DIRECT | OFlag::O_CLOEXEC).unwrap();
        let id = {
            let mut state = self.0.lock().unwrap();
            state.next_id += 1;
            let id = state.next_id;
            state.writers.insert(id, File::from(write));
            state.depths.insert(id, depth);
            state.watches.insert(id, BTreeMap::new());
            id
        };
        let path = OwnedObjectPath::try_from(format!("/org/watchd/Watchd1/subscription/{id}"))?;
        server
            .at(
                &path,
                FakeSubscription {
                    id,
                    state: self.0.clone(),
                },
            )
            .await?;
        Ok((zbus::OwnedFd::from(read), path))
    }

    #[zbus(property)]
    fn version(&self) -> String {
        "0.0-fake".into()
    }

    #[zbus(property)]
    fn sources(&self) -> Vec<String> {
        vec!["mounts".into()]
    }

    #[zbus(property)]
    fn subscriptions(&self) -> u32 {
        self.0.lock().unwrap().writers.len() as u32
    }

    #[zbus(property)]
    fn authorization(&self) -> String {
        "fallback".into()
    }

    #[zbus(property)]
    fn source_details(&self) -> std::collections::HashMap<String, String> {
        [("mounts".to_owned(), "fake".to_owned())].into()
    }

    #[zbus(property)]
    fn watches(&self) -> u32 {
        self.0
            .lock()
            .unwrap()
            .watches
            .values()
            .map(|w| w.len() as u32)
            .sum()
    }
}

struct FakeSubscription {
    id: u32,
    state: Shared,
}

fn write_record(state: &mut State, id: u32, tag: u64, builder: RecordBuilder) {
    let mut record = builder.finish();
    state.seq += 1;
    proto::stamp(&mut record, tag, state.seq);
    state
        .writers
        .get_mut(&id)
        .unwrap()
        .write_all(&record)
        .unwrap();
}

#[zbus::interface(name = "org.watchd.Watchd1.Subscription")]
impl FakeSubscription {
    async fn add_watch(
        &self,
        tag: u64,
        kind: String,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<(), FakeError> {
        let mut state = self.state.lock().unwrap();
        if kind != "mounts" {
            return Err(FakeError::InvalidArgument(format!("no kind {kind}")));
        }
        if state.watches[&self.id].contains_key(&tag) {
            return Err(FakeError::DuplicateTag(format!("tag {tag} is in use")));
        }
        let shown = options
            .iter()
            .map(|(k, v)| (k.clone(), format!("{}={}", v.value_signature(), &**v)))
            .collect();
        let initial = options
            .get("initial")
            .and_then(|v| bool::try_from(v).ok())
            .unwrap_or(false);
        state
            .watches
            .get_mut(&self.id)
            .unwrap()
            .insert(tag, (kind, shown));
        if initial {
            let mut b =
                RecordBuilder::new(RecordType::Mount, mount::ATTACH, proto::FLAG_SNAPSHOT, 7);
            b.put_u64(attr::MOUNT_ID, 21).unwrap();
            b.put_str(attr::MOUNT_POINT, "/mnt/x").unwrap();
            write_record(&mut state, self.id, tag, b);
            write_record(
                &mut state,
                self.id,
                tag,
                RecordBuilder::new(RecordType::Meta, meta::SYNC, 0, 8),
            );
        }
        Ok(())
    }

    async fn remove_watch(&self, tag: u64) -> Result<(), FakeError> {
        let mut state = self.state.lock().unwrap();
        match state.watches.get_mut(&self.id).unwrap().remove(&tag) {
            Some(_) => Ok(()),
            None => Err(FakeError::NoSuchWatch(format!("no watch tagged {tag}"))),
        }
    }

    async fn resync(&self, tag: u64) -> Result<(), FakeError> {
        let mut state = self.state.lock().unwrap();
        if !state.watches[&self.id].contains_key(&tag) {
            return Err(FakeError::NoSuchWatch(format!("no watch tagged {tag}")));
        }
        write_record(
            &mut state,
            self.id,
            tag,
            RecordBuilder::new(RecordType::Meta, meta::SYNC, 0, 9),
        );
        Ok(())
    }

    #[zbus(property)]
    fn depth(&self) -> u32 {
        self.state.lock().unwrap().depths[&self.id]
    }

    #[zbus(property)]
    fn owner(&self) -> u32 {
        nix::unistd::getuid().as_raw()
    }
}

async fn serve(bus: &Bus) -> (zbus::Connection, Shared) {
    let state = Shared::default();
    let conn = zbus::connection::Builder::address(bus.address.as_str())
        .serve_at("/org/watchd/Watchd1", FakeManager(state.clone()))
        .name("org.watchd.Watchd1")
        .build()
        .await
        .unwrap();
    (conn, state)
}

async fn next(
    events: &mut watchd_client::EventStream,
) -> Option<watchd_client::Result<watchd_client::Event>> {
    tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("no event in 10 s")
}

#[tokio::test]
async fn subscribe_watch_and_read() {
    let Some(bus) = private_bus("main") else {
        return;
    };
    let (_daemon, state) = serve(&bus).await;
    let client = Client::connect(Some(&bus.address)).await.unwrap();

    let status = client.status().await.unwrap();
    assert_eq!(status.version, "0.0-fake");
    assert_eq!(status.sources, ["mounts"]);
    assert_eq!((status.subscriptions, status.watches), (0, 0));

    let sub = client
        .subscribe(SubscribeOptions { depth: Some(64) })
        .await
        .unwrap();
    assert_eq!(sub.path().as_str(), "/org/watchd/Watchd1/subscription/1");
    assert_eq!(sub.depth().await.unwrap(), 64);
    assert_eq!(sub.owner().await.unwrap(), nix::unistd::getuid().as_raw());

    let options = WatchOptions::new()
        .initial(true)
        .path("/mnt")
        .filter(Filter::new(RecordType::Mount).subtypes([mount::ATTACH]));
    sub.add_watch(5, "mounts", &options).await.unwrap();
    {
        let state = state.lock().unwrap();
        let (kind, sent) = &state.watches[&1][&5];
        assert_eq!(kind, "mounts");
        let sent: Vec<_> = sent.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        assert_eq!(
            sent,
            [
                "filters: a(utuu)=[(uint32 2, uint64 1, uint32 0, uint32 0)]",
                "initial: b=true",
                "path: s=\"/mnt\"",
            ]
        );
    }
    let status = client.status().await.unwrap();
    assert_eq!((status.subscriptions, status.watches), (1, 1));

    // Daemon errors keep their name and message.
    let err = sub
        .add_watch(5, "mounts", &WatchOptions::new())
        .await
        .unwrap_err();
    assert_eq!(err.daemon_error(), Some(DaemonError::DuplicateTag));
    assert_eq!(
        err.to_string(),
        "tag 5 is in use (org.watchd.Watchd1.Error.DuplicateTag)"
    );
    let err = sub.remove_watch(6).await.unwrap_err();
    assert_eq!(err.daemon_error(), Some(DaemonError::NoSuchWatch));

    let (control, mut events) = sub.split();
    let first = next(&mut events).await.unwrap().unwrap();
    assert!(first.is_snapshot());
    assert_eq!((first.header().tag, first.header().seq), (5, 1));
    assert!(first.header().is(RecordType::Mount, mount::ATTACH));
    assert_eq!(
        first.record().get_str(attr::MOUNT_POINT).as_deref(),
        Some("/mnt/x")
    );
    assert_eq!(first.record().get_u64(attr::MOUNT_ID), Some(21));
    let sync = next(&mut events).await.unwrap().unwrap();
    assert!(sync.header().is(RecordType::Meta, meta::SYNC));
    assert!(!sync.is_snapshot());

    control.resync(5).await.unwrap();
    let sync = next(&mut events).await.unwrap().unwrap();
    assert!(sync.header().is(RecordType::Meta, meta::SYNC));
    assert_eq!(sync.header().seq, 3);

    // A packet that is not a record is an error, and the stream goes on.
    state
        .lock()
        .unwrap()
        .writers
        .get_mut(&1)
        .unwrap()
        .write_all(&[1, 2, 3])
        .unwrap();
    let err = next(&mut events).await.unwrap().unwrap_err();
    assert!(matches!(err, Error::Decode(_)), "{err:?}");
    control.resync(5).await.unwrap();
    assert!(next(&mut events).await.unwrap().is_ok());

    control.remove_watch(5).await.unwrap();
    // The daemon closing its write end ends the stream.
    state.lock().unwrap().writers.remove(&1);
    assert!(next(&mut events).await.is_none());
    assert!(events.is_ended());
    assert!(events.next().await.is_none());
}

#[tokio::test]
async fn absent_daemon_then_raw_pipe() {
    let Some(bus) = private_bus("errors") else {
        return;
    };
    let client = Client::connect(Some(&bus.address)).await.unwrap();
    let err = client.status().await.unwrap_err();
    assert!(err.is_daemon_absent(), "{err:?}");

    let (_daemon, _state) = serve(&bus).await;
    // The pipe handed out is a packet pipe's read end, usable without the library.
    let sub = client.subscribe(SubscribeOptions::default()).await.unwrap();
    assert_eq!(sub.depth().await.unwrap(), 16);
    let pipe: OwnedFd = sub.into_pipe();
    let flags = nix::fcntl::fcntl(&pipe, nix::fcntl::FcntlArg::F_GETFL).unwrap();
    assert_eq!(
        OFlag::from_bits_retain(flags) & OFlag::O_NONBLOCK,
        OFlag::empty()
    );
    assert!(pipe.as_raw_fd() >= 0);
}

#[tokio::test]
async fn connect_failure_names_the_address() {
    let err = Client::connect(Some("unix:path=/nonexistent/watchd-test-bus"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with("can't connect to the bus at unix:path=/nonexistent/watchd-test-bus: "),
        "{text}"
    );
}
