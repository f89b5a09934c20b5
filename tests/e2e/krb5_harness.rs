//! The Kerberos tests' harness (`watchd_e2e::krb5`) proved against the real MIT tools and
//! the kernel: a throwaway realm's KDC on loopback issues tickets to uid 1000, `kinit`
//! fills `KEYRING:persistent:1000` as DESIGN.md §6 describes it (`_krb`, the
//! `krb_ccache:primary` key naming the primary cache, one keyring per cache), `kswitch`
//! rewrites the primary key in place, `kinit -R` replaces every key of a cache, `kdestroy`
//! unlinks cache keyrings, a `FILE:` cache is a file of the user's and touches no keyring,
//! and a released collection leaves no keyring behind.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use watchd_e2e::krb5::{
    ALICE, ALICE_PASSWORD, BOB, BOB_PASSWORD, Destroy, KEYRING_UID, Kdc, Key, PersistentCollection,
    REALM, principal,
};
use watchd_e2e::{Scratch, Trial};

use crate::trial;

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "krb5_harness::kinit_as_uid_1000_fills_its_persistent_keyring",
            kinit_fills_the_persistent_keyring,
        ),
        trial(
            "krb5_harness::kswitch_rewrites_the_primary_key_in_place",
            kswitch_rewrites_the_primary,
        ),
        trial(
            "krb5_harness::kinit_renew_replaces_every_key_of_the_cache",
            kinit_renew_replaces_every_key,
        ),
        trial(
            "krb5_harness::kdestroy_unlinks_cache_keyrings",
            kdestroy_unlinks_cache_keyrings,
        ),
        trial(
            "krb5_harness::a_file_cache_is_a_file_of_the_user_and_no_key",
            file_cache,
        ),
        trial(
            "krb5_harness::releasing_the_collection_leaves_no_persistent_keyring",
            release_leaves_nothing,
        ),
    ]
}

const UID: u32 = KEYRING_UID;

/// `_krb` in the persistent keyring, which must exist.
fn krb(tree: &Key) -> Result<&Key> {
    tree.child("keyring", "_krb")
        .with_context(|| format!("no _krb keyring in:\n{}", tree.render()))
}

/// The cache keyring `name` in `_krb`, which must exist.
fn cache<'a>(tree: &'a Key, name: &str) -> Result<&'a Key> {
    krb(tree)?
        .child("keyring", name)
        .with_context(|| format!("no cache keyring {name:?} in:\n{}", tree.render()))
}

/// A cache keyring holding a ticket-granting ticket: `__krb5_princ__` and the TGT's key.
fn expect_tgt_cache(cache: &Key) -> Result<()> {
    let tgt = format!("krbtgt/{REALM}@{REALM}");
    for name in ["__krb5_princ__", tgt.as_str()] {
        ensure!(
            cache.child("user", name).is_some(),
            "no {name} in the cache keyring:\n{}",
            cache.render()
        );
    }
    Ok(())
}

async fn kinit_fills_the_persistent_keyring() -> Result<()> {
    let collection = PersistentCollection::claim(UID)?;
    let scratch = Scratch::new("krb5-kinit")?;
    let kdc = Kdc::start(&scratch.path)?;

    kdc.kinit(UID, ALICE, ALICE_PASSWORD, None)?;
    let listed = kdc.klist(UID)?;
    for line in [
        format!("Ticket cache: KEYRING:persistent:{UID}:{UID}"),
        format!("Default principal: {}", principal(ALICE)),
        format!("krbtgt/{REALM}@{REALM}"),
        "renew until".to_owned(),
    ] {
        ensure!(listed.contains(&line), "no {line:?} in klist -A:\n{listed}");
    }
    ensure!(
        kdc.log().contains("AS_REQ") && kdc.log().contains(&principal(ALICE)),
        "the KDC logged no AS_REQ for alice:\n{}",
        kdc.log()
    );

    let tree = collection.tree()?;
    ensure!(
        tree.description == format!("_persistent.{UID}") && tree.uid == UID,
        "not uid {UID}'s persistent keyring:\n{}",
        tree.render()
    );
    let krb = krb(&tree)?;
    ensure!(
        krb.child("user", "krb_ccache:primary").is_some(),
        "no krb_ccache:primary in _krb:\n{}",
        tree.render()
    );
    // The collection's first cache is named after it: the uid.
    let first = cache(&tree, &UID.to_string())?;
    expect_tgt_cache(first)?;
    ensure!(
        first.uid == UID && first.children.iter().all(|k| k.uid == UID),
        "keys not owned by uid {UID}:\n{}",
        tree.render()
    );
    let primary = collection.primary()?.context("no krb_ccache:primary")?;
    ensure!(
        primary.name == UID.to_string(),
        "krb_ccache:primary names {:?}",
        primary.name
    );
    let princ = collection.read_key(
        first
            .child("user", "__krb5_princ__")
            .context("__krb5_princ__")?
            .serial,
    )?;
    ensure!(
        princ.windows(ALICE.len()).any(|w| w == ALICE.as_bytes()),
        "__krb5_princ__ does not name alice: {princ:02x?}"
    );

    // Root gets no bypass: without possession (the runner's own keyrings do not have the
    // persistent keyring linked) it can neither describe nor read uid 1000's keys.
    let plain = Command::new("keyctl")
        .args(["describe", &primary.serial.to_string()])
        .output()?;
    ensure!(
        !plain.status.success() && String::from_utf8_lossy(&plain.stderr).contains("denied"),
        "root described uid {UID}'s key without possessing it: {}",
        String::from_utf8_lossy(&plain.stdout)
    );
    Ok(())
}

async fn kswitch_rewrites_the_primary() -> Result<()> {
    let collection = PersistentCollection::claim(UID)?;
    let scratch = Scratch::new("krb5-kswitch")?;
    let kdc = Kdc::start(&scratch.path)?;

    kdc.kinit(UID, ALICE, ALICE_PASSWORD, None)?;
    let before = collection.primary()?.context("no primary after kinit")?;
    // A second principal into the default collection: kinit makes a new cache for it and
    // switches the primary to it (its first cache has another principal).
    kdc.kinit(UID, BOB, BOB_PASSWORD, None)?;
    let caches = kdc.collection(UID)?;
    ensure!(caches.len() == 2, "klist -l: {caches:?}");
    let bob_cache = caches
        .iter()
        .find(|c| c.principal == principal(BOB))
        .with_context(|| format!("no cache of bob in {caches:?}"))?;
    let bob_name = bob_cache
        .cache
        .strip_prefix(&format!("KEYRING:persistent:{UID}:"))
        .with_context(|| format!("bob's cache is {}", bob_cache.cache))?;
    ensure!(
        bob_name.starts_with("krb_ccache_"),
        "bob's cache is {bob_name:?}"
    );
    ensure!(
        caches[0].principal == principal(BOB),
        "bob's cache is not the primary (listed first): {caches:?}"
    );
    let tree = collection.tree()?;
    expect_tgt_cache(cache(&tree, bob_name)?)?;
    let switched = collection.primary()?.context("no primary")?;
    ensure!(
        switched.serial == before.serial && switched.name == bob_name,
        "after kinit bob: {switched:?}, before: {before:?}"
    );

    kdc.kswitch(UID, ALICE)?;
    let back = collection.primary()?.context("no primary after kswitch")?;
    ensure!(
        back.serial == before.serial && back.name == UID.to_string(),
        "kswitch -p alice: {back:?}, before: {before:?} (same serial, alice's cache's name)"
    );
    let caches = kdc.collection(UID)?;
    ensure!(
        caches[0].principal == principal(ALICE),
        "alice's cache is not the primary after kswitch: {caches:?}"
    );
    // kswitch touched nothing else: both cache keyrings are as they were.
    let after = collection.tree()?;
    ensure!(
        krb(&after)?.serials() == krb(&tree)?.serials(),
        "kswitch changed _krb's keys:\n{}\nthen:\n{}",
        tree.render(),
        after.render()
    );
    Ok(())
}

async fn kinit_renew_replaces_every_key() -> Result<()> {
    let collection = PersistentCollection::claim(UID)?;
    let scratch = Scratch::new("krb5-renew")?;
    let kdc = Kdc::start(&scratch.path)?;

    kdc.kinit(UID, ALICE, ALICE_PASSWORD, None)?;
    let name = UID.to_string();
    let before = collection.tree()?;
    let old = cache(&before, &name)?.clone();
    expect_tgt_cache(&old)?;

    kdc.kinit_renew(UID, None)?;
    let after = collection.tree()?;
    let new = cache(&after, &name)?;
    expect_tgt_cache(new)?;
    ensure!(
        new.serial == old.serial,
        "the cache keyring itself was replaced: {} then {}",
        old.serial,
        new.serial
    );
    let kept: HashSet<i32> = old
        .serials()
        .intersection(&new.serials())
        .copied()
        .collect();
    ensure!(
        kept.is_empty(),
        "kinit -R kept keys {kept:?}:\n{}\nthen:\n{}",
        old.render(),
        new.render()
    );
    ensure!(
        krb(&after)?
            .child("user", "krb_ccache:primary")
            .map(|k| k.serial)
            == krb(&before)?
                .child("user", "krb_ccache:primary")
                .map(|k| k.serial),
        "kinit -R replaced krb_ccache:primary"
    );
    let listed = kdc.klist(UID)?;
    ensure!(
        listed.contains(&format!("Default principal: {}", principal(ALICE))),
        "klist after kinit -R:\n{listed}"
    );
    Ok(())
}

async fn kdestroy_unlinks_cache_keyrings() -> Result<()> {
    let collection = PersistentCollection::claim(UID)?;
    let scratch = Scratch::new("krb5-kdestroy")?;
    let kdc = Kdc::start(&scratch.path)?;

    kdc.kinit(UID, ALICE, ALICE_PASSWORD, None)?;
    kdc.kinit(UID, BOB, BOB_PASSWORD, None)?;
    let tree = collection.tree()?;
    ensure!(
        krb(&tree)?.keyrings().count() == 2,
        "two caches expected:\n{}",
        tree.render()
    );

    // Plain kdestroy: the primary (bob's, the newer) only.
    kdc.kdestroy(UID, Destroy::Primary)?;
    let tree = collection.tree()?;
    let left: Vec<&str> = krb(&tree)?
        .keyrings()
        .map(|k| k.description.as_str())
        .collect();
    ensure!(
        left == [UID.to_string()],
        "after kdestroy, cache keyrings {left:?}:\n{}",
        tree.render()
    );
    let caches = kdc.collection(UID)?;
    ensure!(
        caches.len() == 1 && caches[0].principal == principal(ALICE),
        "klist -l after kdestroy: {caches:?}"
    );

    kdc.kinit(UID, BOB, BOB_PASSWORD, None)?;
    kdc.kdestroy(UID, Destroy::All)?;
    let tree = collection.tree()?;
    let krb = krb(&tree)?;
    ensure!(
        krb.names() == ["krb_ccache:primary"],
        "after kdestroy -A, _krb holds:\n{}",
        tree.render()
    );
    ensure!(
        kdc.collection(UID)?.is_empty(),
        "klist -l after kdestroy -A: {:?}",
        kdc.collection(UID)?
    );
    Ok(())
}

async fn file_cache() -> Result<()> {
    // Claimed so that the keyring can be shown untouched by a FILE: cache.
    let collection = PersistentCollection::claim(UID)?;
    let scratch = Scratch::new("krb5-file")?;
    let kdc = Kdc::start(&scratch.path)?;
    let before = collection.tree()?;

    let ccache = kdc.file_ccache(UID, "alice")?;
    let path = Path::new(ccache.strip_prefix("FILE:").context("FILE:")?).to_path_buf();
    kdc.kinit(UID, ALICE, ALICE_PASSWORD, Some(&ccache))?;
    let meta = std::fs::metadata(&path).with_context(|| path.display().to_string())?;
    ensure!(
        meta.uid() == UID && meta.gid() == UID && meta.mode() & 0o777 == 0o600,
        "{}: uid {} gid {} mode {:o}",
        path.display(),
        meta.uid(),
        meta.gid(),
        meta.mode()
    );
    let listed = kdc.klist_cache(UID, &ccache)?;
    ensure!(
        listed.contains(&format!("Ticket cache: {ccache}"))
            && listed.contains(&format!("Default principal: {}", principal(ALICE))),
        "klist -c {ccache}:\n{listed}"
    );

    // kinit -R rewrites a FILE: cache into a temporary file renamed over it: a new inode.
    kdc.kinit_renew(UID, Some(&ccache))?;
    let renewed = std::fs::metadata(&path)?;
    ensure!(
        renewed.ino() != meta.ino() && renewed.uid() == UID,
        "kinit -R: inode {} then {}",
        meta.ino(),
        renewed.ino()
    );

    kdc.kdestroy(UID, Destroy::Cache(&ccache))?;
    if path.exists() {
        bail!("kdestroy -c {ccache} left the file");
    }
    let after = collection.tree()?;
    ensure!(
        after == before,
        "a FILE: cache changed the persistent keyring:\n{}\nthen:\n{}",
        before.render(),
        after.render()
    );
    Ok(())
}

async fn release_leaves_nothing() -> Result<()> {
    let scratch = Scratch::new("krb5-release")?;
    let kdc = Kdc::start(&scratch.path)?;
    let first = {
        let collection = PersistentCollection::claim(UID)?;
        kdc.kinit(UID, ALICE, ALICE_PASSWORD, None)?;
        collection.tree()?.serial
    };
    // Released: kdestroy -A and the persistent keyring invalidated. Claiming it again
    // creates a new one (a new serial: KEYCTL_GET_PERSISTENT returns the existing keyring
    // while there is one), holding only what claim's `klist -l` makes krb5 create: `_krb`
    // with `krb_ccache:primary`. This claim's release removes that in turn.
    let collection = PersistentCollection::claim(UID)?;
    let tree = collection.tree()?;
    let bookkeeping_only = tree
        .children
        .iter()
        .all(|k| k.is_keyring("_krb") && k.names().iter().all(|n| *n == "krb_ccache:primary"));
    ensure!(
        tree.serial != first && bookkeeping_only,
        "after release, the persistent keyring ({first} before):\n{}",
        tree.render()
    );
    Ok(())
}
