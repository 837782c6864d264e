//! One conformance suite for both store backends (the embedded redb store and etcd, a real
//! 3-member cluster on loopback): compare-and-swap, lists at a revision, watches from a
//! revision, `Gone` once the history is gone, concurrent read-modify-write, blobs. Then what
//! only etcd does: several API servers' stores on one etcd, and a member lost under writes.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use shoal_control::store::admission::Lister;
use shoal_control::store::{
    revision_of, Admission, AdmittedCreate, Error, EtcdOptions, EtcdStore, EventType, Guard,
    GuardScope, Guarded, NotCreated, ObjectKey, Page, PageRequest, ReadAt, RedbStore, Store,
};
use shoal_tests::etcd::{etcd_available, EtcdCluster};

/// resourceVersions per etcd revision (`store::etcd::versions`).
const SLOTS: u64 = shoal_control::store::etcd::versions::SLOTS;

fn config_map(namespace: &str, name: &str, value: u64) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"value": value.to_string()},
    })
}

fn key(namespace: &str, name: &str) -> ObjectKey {
    ObjectKey::new("configmaps", namespace, name)
}

/// Compare-and-swap on create, update and delete, with the errors the API maps to 409/404.
async fn compare_and_swap(store: &dyn Store) {
    let created = store
        .create(key("a", "cas"), config_map("a", "cas", 1))
        .await
        .unwrap();
    let first = revision_of(&created).expect("a created object has a resourceVersion");
    assert!(matches!(
        store
            .create(key("a", "cas"), config_map("a", "cas", 1))
            .await,
        Err(Error::AlreadyExists(_))
    ));
    assert_eq!(store.get(&key("a", "cas")).unwrap().unwrap(), created);
    assert_eq!(
        *store.get_shared(&key("a", "cas")).unwrap().unwrap(),
        created
    );
    let updated = store
        .update(key("a", "cas"), config_map("a", "cas", 2), Some(first))
        .await
        .unwrap();
    let second = revision_of(&updated).unwrap();
    assert!(second > first);
    // A stale precondition: 409 naming the current revision.
    match store
        .update(key("a", "cas"), config_map("a", "cas", 3), Some(first))
        .await
    {
        Err(Error::Conflict {
            expected, current, ..
        }) => assert_eq!((expected, current), (first, second)),
        other => panic!("a stale update: {other:?}"),
    }
    assert!(matches!(
        store
            .update(key("a", "missing"), config_map("a", "missing", 1), None)
            .await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        store.delete(key("a", "cas"), Some(first)).await,
        Err(Error::Conflict { .. })
    ));
    let deleted = store.delete(key("a", "cas"), Some(second)).await.unwrap();
    assert_eq!(
        deleted["data"]["value"], "2",
        "a delete returns the last state"
    );
    assert!(revision_of(&deleted).unwrap() > second);
    assert!(store.get(&key("a", "cas")).unwrap().is_none());
    assert!(store.get_shared(&key("a", "cas")).unwrap().is_none());
    assert!(matches!(
        store.delete(key("a", "cas"), None).await,
        Err(Error::NotFound(_))
    ));
}

/// A list holds exactly a namespace's (or every) object, at a revision no older than the
/// last write; a watch from that revision gets what follows, in order, and nothing before.
async fn lists_and_watches_at_revisions(store: &dyn Store) {
    for (namespace, name) in [("b", "one"), ("b", "two"), ("c", "three")] {
        store
            .create(key(namespace, name), config_map(namespace, name, 0))
            .await
            .unwrap();
    }
    let listing = store.list("configmaps", Some("b")).unwrap();
    let names: Vec<&str> = listing
        .objects
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["one", "two"]);
    assert_eq!(
        listing.revision,
        store.revision(),
        "a list is at the last revision"
    );
    let all = store.list("configmaps", None).unwrap();
    assert!(all.objects.len() >= 3);

    let mut watch = store
        .watch("configmaps", Some("b"), listing.revision)
        .unwrap();
    let three = store
        .update(key("c", "three"), config_map("c", "three", 1), None)
        .await
        .unwrap();
    let one = store
        .update(key("b", "one"), config_map("b", "one", 1), None)
        .await
        .unwrap();
    store.delete(key("b", "two"), None).await.unwrap();
    let first = next(&mut watch).await;
    assert_eq!(first.event_type, EventType::Modified);
    assert_eq!(first.key, key("b", "one"));
    assert_eq!(Some(first.revision), revision_of(&one));
    assert!(first.revision > revision_of(&three).unwrap());
    let second = next(&mut watch).await;
    assert_eq!(
        (second.event_type, second.key),
        (EventType::Deleted, key("b", "two"))
    );
    assert_eq!(
        revision_of(&second.object),
        Some(second.revision),
        "a deleted object is stamped with the deletion revision"
    );

    // A watch from an older revision replays the history after it.
    let mut replay = store
        .watch("configmaps", Some("b"), listing.revision)
        .unwrap();
    assert_eq!(next(&mut replay).await.revision, first.revision);
    assert_eq!(next(&mut replay).await.revision, second.revision);
}

async fn next(watch: &mut shoal_control::store::WatchStream) -> shoal_control::store::WatchEvent {
    tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("a watch event within 10 s")
        .expect("the watch is open")
        .expect("no watch error")
}

/// Sixteen writers each add to one counter by read-modify-write with the revision as the
/// precondition, retrying on conflict: no increment is lost.
async fn concurrent_read_modify_write(store: Arc<dyn Store>) {
    store
        .create(key("d", "counter"), config_map("d", "counter", 0))
        .await
        .unwrap();
    let mut writers = Vec::new();
    for _ in 0..16 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let mut conflicts = 0;
            for _ in 0..10 {
                loop {
                    let current = store.get(&key("d", "counter")).unwrap().unwrap();
                    let value: u64 = current["data"]["value"].as_str().unwrap().parse().unwrap();
                    let next = config_map("d", "counter", value + 1);
                    match store
                        .update(key("d", "counter"), next, revision_of(&current))
                        .await
                    {
                        Ok(_) => break,
                        Err(Error::Conflict { .. }) => conflicts += 1,
                        Err(e) => panic!("an update failed: {e}"),
                    }
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for writer in writers {
        conflicts += writer.await.unwrap();
    }
    let counter = store.get(&key("d", "counter")).unwrap().unwrap();
    assert_eq!(
        counter["data"]["value"], "160",
        "after {conflicts} conflicts"
    );
}

/// A watch from before the history the store keeps gets `Gone` (the API's 410).
async fn gone_once_history_is_compacted(store: &dyn Store, writes: usize) {
    let start = store.revision();
    for i in 0..writes {
        let name = format!("g{i}");
        store
            .create(key("e", &name), config_map("e", &name, 0))
            .await
            .unwrap();
    }
    assert!(matches!(
        store.watch("configmaps", Some("e"), start),
        Err(Error::Gone { .. })
    ));
    // The present is still watchable.
    assert!(store
        .watch("configmaps", Some("e"), store.revision())
        .is_ok());
}

/// A module blob larger than etcd's request limit goes in and comes back whole.
async fn blobs_round_trip(store: &dyn Store) {
    let bytes: Vec<u8> = (0..2_500_000u32).map(|i| (i % 251) as u8).collect();
    store.put_blob("feedface", bytes.clone()).await.unwrap();
    assert_eq!(store.get_blob("feedface").await.unwrap(), Some(bytes));
    assert_eq!(store.get_blob("absent").await.unwrap(), None);
}

async fn page(
    store: &dyn Store,
    namespace: &str,
    at: ReadAt,
    after: Option<&str>,
    limit: usize,
) -> Result<Page, Error> {
    let everything = |_: &Value| true;
    store
        .list_page(PageRequest {
            resource: "configmaps",
            namespace: Some(namespace),
            at,
            after,
            limit: Some(limit),
            filter: &everything,
        })
        .await
}

fn names(page: &Page) -> Vec<String> {
    page.objects
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

/// Pages of a list are read at the first page's revision while writers change the objects
/// (deletes, creates, updates on both sides of the page boundary), and together are exactly
/// the list at that revision; a filter counts only what it accepts; a revision not reached
/// is `TooLarge`. Returns the revision the pages were read at.
async fn paging_with_concurrent_writes(store: Arc<dyn Store>) -> u64 {
    for i in 0..25 {
        let name = format!("p{i:02}");
        store
            .create(key("p", &name), config_map("p", &name, i))
            .await
            .unwrap();
    }
    let first = page(store.as_ref(), "p", ReadAt::Consistent, None, 10)
        .await
        .unwrap();
    assert_eq!(names(&first).len(), 10);
    assert_eq!((first.next.as_deref(), first.remaining), (Some("p09"), 15));
    let at = first.revision;
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            store.delete(key("p", "p15"), None).await.unwrap();
            store.delete(key("p", "p02"), None).await.unwrap();
            store
                .update(key("p", "p20"), config_map("p", "p20", 1000), None)
                .await
                .unwrap();
            store
                .create(key("p", "p30"), config_map("p", "p30", 30))
                .await
                .unwrap();
        })
    };
    writer.await.unwrap();
    let mut listed = names(&first);
    let mut after = first.next.clone();
    while let Some(key) = after {
        let next = page(store.as_ref(), "p", ReadAt::Exact(at), Some(&key), 10)
            .await
            .unwrap();
        assert_eq!(next.revision, at);
        if let Some(p20) = next.objects.iter().find(|o| o["metadata"]["name"] == "p20") {
            assert_eq!(p20["data"]["value"], "20", "p20 as it was at the revision");
        }
        listed.extend(names(&next));
        after = next.next;
    }
    let expected: Vec<String> = (0..25).map(|i| format!("p{i:02}")).collect();
    assert_eq!(listed, expected, "the pages are the list at revision {at}");
    // The present: p02 and p15 gone, p30 there.
    let now = page(store.as_ref(), "p", ReadAt::Consistent, None, 100)
        .await
        .unwrap();
    assert!(now.revision > at);
    assert_eq!(now.objects.len(), 24);
    assert!(now.next.is_none());
    // A filter: pages of objects whose value is even, counted after filtering.
    let even = |o: &Value| {
        o["data"]["value"]
            .as_str()
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|v| v % 2 == 0)
    };
    let filtered = store
        .list_page(PageRequest {
            resource: "configmaps",
            namespace: Some("p"),
            at: ReadAt::Any,
            after: Some("p03"),
            limit: Some(3),
            filter: &even,
        })
        .await
        .unwrap();
    assert_eq!(names(&filtered), ["p04", "p06", "p08"]);
    assert_eq!(filtered.next.as_deref(), Some("p08"));
    let ahead = store.revision() + 1000;
    assert!(matches!(
        page(store.as_ref(), "p", ReadAt::NotOlderThan(ahead), None, 10).await,
        Err(Error::TooLarge { .. })
    ));
    at
}

/// Guarded creates (quota admission): the guard and the creates go in together; a guard
/// whose object moved writes nothing.
async fn guarded_creates(store: &dyn Store) {
    let quota = ObjectKey::new("resourcequotas", "g", "q");
    let q = json!({"metadata": {"name": "q", "namespace": "g"}, "spec": {"hard": {"configmaps": "10"}}});
    let created = store.create(quota.clone(), q.clone()).await.unwrap();
    let at = revision_of(&created).unwrap();
    let charged = |used: &str| {
        let mut charged = q.clone();
        charged["status"] = json!({"used": {"configmaps": used}});
        charged
    };
    let outcomes = store
        .create_guarded(
            vec![Guard {
                key: quota.clone(),
                object: charged("1"),
                precondition: at,
            }],
            vec![(key("g", "m1"), config_map("g", "m1", 1))],
        )
        .await
        .unwrap();
    assert!(outcomes[0].is_ok());
    assert_eq!(
        store.get(&quota).unwrap().unwrap()["status"]["used"]["configmaps"],
        "1"
    );
    // The same revision again: the quota moved since, nothing is written.
    let stale = store
        .create_guarded(
            vec![Guard {
                key: quota.clone(),
                object: charged("2"),
                precondition: at,
            }],
            vec![(key("g", "m2"), config_map("g", "m2", 2))],
        )
        .await;
    assert!(
        matches!(stale, Err(Error::Conflict { .. })),
        "{:?}",
        stale.err()
    );
    assert!(
        store.get(&key("g", "m2")).unwrap().is_none(),
        "nothing written"
    );
    assert_eq!(
        store.get(&quota).unwrap().unwrap()["status"]["used"]["configmaps"],
        "1"
    );
}

/// A counting admission for the conformance suite: each create takes one slot of every
/// guard's `spec.slots`, counted in `status.taken` (counted from the configmaps listed when a
/// guard has no count yet, as a quota counts itself).
struct OneSlot;

impl Admission for OneSlot {
    fn admit(&self, guards: &mut [Guarded], list: &mut Lister<'_>) -> Result<(), String> {
        let mut next = Vec::new();
        for guard in guards.iter() {
            let taken = match guard.object["status"]["taken"].as_u64() {
                Some(taken) => taken,
                None => list("configmaps", "adm").len() as u64,
            };
            let slots = guard.object["spec"]["slots"].as_u64().unwrap_or(0);
            if taken >= slots {
                return Err(format!("no slot left: {taken} of {slots} taken"));
            }
            next.push(taken + 1);
        }
        for (guard, taken) in guards.iter_mut().zip(next) {
            guard.object["status"] = json!({"taken": taken});
            guard.changed = true;
        }
        Ok(())
    }
}

fn admitted(name: &str) -> AdmittedCreate {
    AdmittedCreate {
        key: key("adm", name),
        object: config_map("adm", name, 0),
        admission: Box::new(OneSlot),
    }
}

/// Admitted creates (quota admission): a guard not counted yet counts what exists; creates
/// judged together or concurrently never take more slots than there are; a refused create
/// or a taken name changes nothing; the guards end at what was admitted.
async fn admitted_creates(store: Arc<dyn Store>) {
    let scope = GuardScope::new("resourcequotas", "adm");
    let guard = ObjectKey::new("resourcequotas", "adm", "slots");
    store
        .create(key("adm", "before"), config_map("adm", "before", 0))
        .await
        .unwrap();
    store
        .create(
            guard.clone(),
            json!({"metadata": {"name": "slots", "namespace": "adm"}, "spec": {"slots": 6}}),
        )
        .await
        .unwrap();
    // One call: the existing map is counted first, a taken name is refused uncharged.
    let outcomes = store
        .create_admitted(
            &scope,
            vec![admitted("a1"), admitted("before"), admitted("a2")],
        )
        .await
        .unwrap();
    assert!(outcomes[0].is_ok(), "{:?}", outcomes[0]);
    assert!(
        matches!(outcomes[1], Err(NotCreated::Store(Error::AlreadyExists(_)))),
        "{:?}",
        outcomes[1]
    );
    assert!(outcomes[2].is_ok(), "{:?}", outcomes[2]);
    let taken = || store.get(&guard).unwrap().unwrap()["status"]["taken"].clone();
    assert_eq!(taken(), 3, "the existing map and the two admitted");
    // Ten concurrent creates for the three slots left.
    let racing = (0..10).map(|i| {
        let store = store.clone();
        let scope = scope.clone();
        async move {
            let mut outcomes = store
                .create_admitted(&scope, vec![admitted(&format!("r{i}"))])
                .await
                .unwrap();
            outcomes.pop().unwrap()
        }
    });
    let outcomes = futures::future::join_all(racing).await;
    let created = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
    assert_eq!(created, 3, "{outcomes:?}");
    for refused in outcomes.iter().filter_map(|outcome| outcome.as_ref().err()) {
        assert!(
            matches!(refused, NotCreated::Refused(why) if why == "no slot left: 6 of 6 taken"),
            "{refused:?}"
        );
    }
    assert_eq!(taken(), 6);
    assert_eq!(
        store.list("configmaps", Some("adm")).unwrap().objects.len(),
        6
    );
}

async fn conformance(store: Arc<dyn Store>) -> u64 {
    compare_and_swap(store.as_ref()).await;
    guarded_creates(store.as_ref()).await;
    admitted_creates(store.clone()).await;
    lists_and_watches_at_revisions(store.as_ref()).await;
    concurrent_read_modify_write(store.clone()).await;
    blobs_round_trip(store.as_ref()).await;
    paging_with_concurrent_writes(store).await
}

async fn etcd_store(etcd: &EtcdCluster, prefix: &str, event_log_len: usize) -> EtcdStore {
    let mut options = EtcdOptions::new(etcd.endpoints());
    options.prefix = prefix.into();
    options.event_log_len = event_log_len;
    EtcdStore::connect(options).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redb_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RedbStore::open(&dir.path().join("store.redb")).unwrap());
    let paged_at = conformance(store.clone()).await;
    // redb keeps no history: a revision that is neither a paged list's snapshot nor the
    // current one is gone.
    assert!(matches!(
        page(
            store.as_ref(),
            "p",
            ReadAt::Exact(paged_at - 1),
            Some("p09"),
            10
        )
        .await,
        Err(Error::Gone { .. })
    ));
    // redb compacts its event log every 64th commit.
    let small = RedbStore::open_with_log_len(&dir.path().join("small.redb"), 10).unwrap();
    gone_once_history_is_compacted(&small, 130).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_store_conforms() {
    if !etcd_available("the_etcd_store_conforms") {
        return;
    }
    let etcd = EtcdCluster::start(3);
    let store = Arc::new(etcd_store(&etcd, "/conformance", 100_000).await);
    let paged_at = conformance(store.clone()).await;
    // etcd reads any revision it has not compacted, and none it has. An object's own
    // version names a point inside its etcd revision: just before it is the list without it.
    let p24 = revision_of(&store.get(&key("p", "p24")).unwrap().unwrap()).unwrap();
    let before = page(store.as_ref(), "p", ReadAt::Exact(p24 - 1), None, 100)
        .await
        .unwrap();
    assert_eq!(before.objects.len(), 24, "the list before p24 was created");
    // A version before etcd's first revision names nothing: gone, not a panic or a hang.
    assert!(matches!(
        page(store.as_ref(), "p", ReadAt::Exact(5), None, 10).await,
        Err(Error::Gone { .. })
    ));
    store.compact_now().await.unwrap();
    assert!(matches!(
        page(
            store.as_ref(),
            "p",
            ReadAt::Exact(paged_at),
            Some("p09"),
            10
        )
        .await,
        Err(Error::Gone { .. })
    ));
    // Objects are where Kubernetes puts them, and an object's resourceVersion follows from
    // its key and etcd mod_revision: a second store (another API server) reads them back as
    // they are, versions included.
    let reader = etcd_store(&etcd, "/conformance", 100_000).await;
    let counter = reader.get(&key("d", "counter")).unwrap().unwrap();
    assert_eq!(counter, store.get(&key("d", "counter")).unwrap().unwrap());
    // The watch cache keeps 10 events here.
    let small = etcd_store(&etcd, "/small", 10).await;
    gone_once_history_is_compacted(&small, 30).await;
}

/// The group commit: concurrent writes share etcd transactions (so revisions), and still
/// each has its own resourceVersion, the same on every server, and a watch sees each once,
/// in order; an exact read inside a shared revision holds the writes before that version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_made_together_share_a_revision_not_a_version() {
    if !etcd_available("writes_made_together_share_a_revision_not_a_version") {
        return;
    }
    let etcd = EtcdCluster::start(3);
    let store = Arc::new(etcd_store(&etcd, "/group", 1000).await);
    let other = etcd_store(&etcd, "/group", 1000).await;
    let mut watch = other.watch("configmaps", None, other.revision()).unwrap();
    let creates = (0..64).map(|i| {
        let store = store.clone();
        async move {
            let name = format!("g{i:02}");
            store
                .create(key("g", &name), config_map("g", &name, i))
                .await
        }
    });
    let created: Vec<Value> = futures::future::join_all(creates)
        .await
        .into_iter()
        .map(|r| r.expect("every create succeeds"))
        .collect();
    let mut versions: Vec<u64> = created.iter().map(|o| revision_of(o).unwrap()).collect();
    versions.sort();
    let mut distinct = versions.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), 64, "no two writes share a resourceVersion");
    let mut revisions: Vec<u64> = versions.iter().map(|v| v / SLOTS).collect();
    revisions.dedup();
    assert!(
        revisions.len() < 64,
        "64 concurrent creates went to etcd in {} transactions: none were grouped",
        revisions.len()
    );
    // Another server sees each create once, in version order, with the same versions.
    let mut seen = Vec::new();
    while seen.len() < 64 {
        let event = next(&mut watch).await;
        assert_eq!(event.event_type, EventType::Added);
        seen.push(event.revision);
    }
    assert_eq!(seen, versions, "every create once, in order, same versions");
    // A duplicate name in a group fails alone; the rest of its group is written.
    let again = (0..8).map(|i| {
        let store = store.clone();
        async move {
            let name = if i == 3 {
                "g03".to_string()
            } else {
                format!("h{i}")
            };
            store
                .create(key("g", &name), config_map("g", &name, i))
                .await
        }
    });
    let results = futures::future::join_all(again).await;
    for (i, result) in results.iter().enumerate() {
        match i {
            3 => assert!(matches!(result, Err(Error::AlreadyExists(_))), "{result:?}"),
            _ => assert!(result.is_ok(), "h{i}: {result:?}"),
        }
    }
    // Inside a shared revision, an exact read holds the writes up to that version.
    let revision = versions
        .windows(2)
        .find(|pair| pair[0] / SLOTS == pair[1] / SLOTS)
        .map(|pair| pair[1])
        .expect("two creates in one revision");
    let at = page(&other, "g", ReadAt::Exact(revision), None, 1000)
        .await
        .unwrap();
    let expected = versions.iter().filter(|v| **v <= revision).count();
    assert_eq!(
        at.objects.len(),
        expected,
        "the creates up to version {revision}"
    );
}

/// Two API servers' stores on one etcd: each sees the other's writes through its watch
/// cache, and compare-and-swap holds across them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_one_etcd() {
    if !etcd_available("two_servers_share_one_etcd") {
        return;
    }
    let etcd = EtcdCluster::start(3);
    let first = etcd_store(&etcd, "/shared", 1000).await;
    let second = etcd_store(&etcd, "/shared", 1000).await;
    let mut watch = second.watch("configmaps", None, second.revision()).unwrap();
    let created = first
        .create(key("x", "shared"), config_map("x", "shared", 1))
        .await
        .unwrap();
    let event = next(&mut watch).await;
    assert_eq!(
        (event.event_type, event.key),
        (EventType::Added, key("x", "shared"))
    );
    assert_eq!(event.revision, revision_of(&created).unwrap());
    // The second server updates it; the first, with the old revision, conflicts.
    second
        .update(
            key("x", "shared"),
            config_map("x", "shared", 2),
            revision_of(&created),
        )
        .await
        .unwrap();
    assert!(matches!(
        first
            .update(
                key("x", "shared"),
                config_map("x", "shared", 3),
                revision_of(&created)
            )
            .await,
        Err(Error::Conflict { .. })
    ));
    // History compacted in etcd does not disturb live watch caches.
    first.compact_now().await.unwrap();
    let late = first
        .create(key("x", "late"), config_map("x", "late", 1))
        .await
        .unwrap();
    let event = next(&mut watch).await;
    assert_eq!(event.event_type, EventType::Modified);
    let event = next(&mut watch).await;
    assert_eq!(
        (event.key, Some(event.revision)),
        (key("x", "late"), revision_of(&late))
    );
}

/// A member SIGKILLed under writes: writes go on with the other two; restarted, it catches
/// up (a store talking only to it reads every write).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_on_when_an_etcd_member_dies() {
    if !etcd_available("writes_go_on_when_an_etcd_member_dies") {
        return;
    }
    let mut etcd = EtcdCluster::start(3);
    let store = etcd_store(&etcd, "/faults", 1000).await;
    let mut written = 0;
    for i in 0..60 {
        if i == 20 {
            etcd.kill(0);
        }
        let name = format!("w{i}");
        // The client may have been talking to the killed member: retry on another.
        let mut attempts = 0;
        loop {
            match store
                .create(key("f", &name), config_map("f", &name, i))
                .await
            {
                Ok(_) | Err(Error::AlreadyExists(_)) => break,
                Err(e) => {
                    attempts += 1;
                    assert!(attempts < 50, "write {i} kept failing: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        written += 1;
    }
    etcd.restart(0);
    let mut options = EtcdOptions::new(vec![etcd.endpoints()[0].clone()]);
    options.prefix = "/faults".into();
    let member_zero = EtcdStore::connect(options).await.unwrap();
    let listing = member_zero.list("configmaps", Some("f")).unwrap();
    assert_eq!(
        listing.objects.len(),
        written,
        "the restarted member caught up"
    );
}

/// `shoal server --etcd-servers`: objects live in etcd, not the data dir; a second server
/// with the same PKI on the same etcd serves them; a SIGKILLed server restarted finds them
/// all, and sees what the other wrote meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_on_etcd_share_objects_and_survive_a_restart() {
    if !etcd_available("servers_on_etcd_share_objects_and_survive_a_restart")
        || !shoal_tests::kubectl_available("servers_on_etcd_share_objects_and_survive_a_restart")
    {
        return;
    }
    let etcd = EtcdCluster::start(3);
    let endpoints = etcd.endpoints().join(",");
    let etcd_args = ["--etcd-servers", endpoints.as_str()];
    let first_dir = tempfile::tempdir().unwrap();
    let second_dir = tempfile::tempdir().unwrap();
    let first_addr = shoal_tests::free_addr().to_string();
    let mut first = shoal_tests::start_server_at(first_dir.path(), &first_addr, &etcd_args);
    let first_kubeconfig = shoal_tests::server_kubeconfig(first_dir.path());
    let manifest = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: shared\n  namespace: default\ndata:\n  greeting: hello\n";
    shoal_tests::ok(
        shoal_tests::kubectl_stdin_async(&first_kubeconfig, &["apply", "-f", "-"], manifest).await,
    );
    assert!(
        !first_dir.path().join("server/store.redb").exists(),
        "with --etcd-servers nothing is stored in the data dir"
    );

    // Another API server: the cluster's PKI copied over, as onto another machine.
    shoal_tests::copy_pki(first_dir.path(), second_dir.path());
    let (_second, _) = shoal_tests::start_server(second_dir.path(), &etcd_args);
    let second_kubeconfig = shoal_tests::server_kubeconfig(second_dir.path());
    let read = |kubeconfig: std::path::PathBuf, name: &'static str| async move {
        shoal_tests::kubectl_async(
            &kubeconfig,
            &["get", "configmap", name, "-o", "jsonpath={.data.greeting}"],
        )
        .await
    };
    let output = read(second_kubeconfig.clone(), "shared").await;
    assert_eq!(shoal_tests::ok(output).trim(), "hello");

    // SIGKILL the first; the second takes a write; the first, restarted, has both.
    first.signal(nix::sys::signal::Signal::SIGKILL);
    first.wait(Duration::from_secs(10));
    let later = manifest.replace("shared", "later");
    shoal_tests::ok(
        shoal_tests::kubectl_stdin_async(&second_kubeconfig, &["apply", "-f", "-"], &later).await,
    );
    let _first = shoal_tests::start_server_at(first_dir.path(), &first_addr, &etcd_args);
    for name in ["shared", "later"] {
        let output = read(first_kubeconfig.clone(), name).await;
        assert_eq!(shoal_tests::ok(output).trim(), "hello", "{name}");
    }
}

/// An etcd that does not answer at start: the server says which and that it retries, and
/// keeps trying rather than exiting or serving without a store.
#[test]
fn a_server_retries_an_unreachable_etcd_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = format!("http://{}", shoal_tests::free_addr());
    let mut server = shoal_tests::Process::start(
        &[
            "server",
            "--api-addr",
            &shoal_tests::free_addr().to_string(),
            "--data-dir",
            dir.path().join("server").to_str().unwrap(),
            "--etcd-servers",
            &nowhere,
        ],
        dir.path().join("server.log"),
        "retrying",
    );
    let log = server.output();
    assert!(
        log.contains(&nowhere),
        "the log names the etcd endpoint: {log}"
    );
    assert!(!log.contains("shoal server ready"), "{log}");
    assert!(
        server.wait(Duration::from_secs(2)).is_none(),
        "the server keeps retrying: {}",
        server.output()
    );
}

/// etcd loses quorum (two of three members SIGKILLed): a write through the API fails with
/// 503 or 504 and a message naming etcd within the etcd client's timeout, never hangs; a
/// consistent list fails the same way while a `resourceVersion=0` list is served from the
/// watch cache; with the members back, writes succeed and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_quorum_fails_requests_clearly_and_loses_nothing() {
    if !etcd_available("a_lost_quorum_fails_requests_clearly_and_loses_nothing") {
        return;
    }
    let mut etcd = EtcdCluster::start(3);
    let endpoints = etcd.endpoints().join(",");
    let dir = tempfile::tempdir().unwrap();
    let (_server, _) = shoal_tests::start_server(dir.path(), &["--etcd-servers", &endpoints]);
    let http = shoal_tests::Http::from_kubeconfig(&shoal_tests::server_kubeconfig(dir.path()));
    let collection = "/api/v1/namespaces/default/configmaps";
    let config_map = |name: &str| config_map("default", name, 1).to_string();
    let (status, body) = http
        .call(
            "POST",
            collection,
            "application/json",
            &config_map("before"),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    etcd.kill(1);
    etcd.kill(2);
    let started = std::time::Instant::now();
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(45),
        http.call(
            "POST",
            collection,
            "application/json",
            &config_map("during"),
        ),
    )
    .await
    .expect("a write without quorum is answered, not left hanging");
    eprintln!(
        "a write without quorum: {status} after {:?}",
        started.elapsed()
    );
    assert!(matches!(status, 503 | 504), "{status} {body}");
    assert!(
        body["message"].as_str().unwrap_or("").contains("etcd"),
        "the message names etcd: {body}"
    );
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(45),
        http.call("GET", collection, "", ""),
    )
    .await
    .expect("a consistent list without quorum is answered");
    assert!(matches!(status, 503 | 504), "{status} {body}");
    let (status, cached) = http
        .call("GET", &format!("{collection}?resourceVersion=0"), "", "")
        .await;
    assert_eq!(status, 200, "{cached}");
    assert!(cached["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|cm| cm["metadata"]["name"] == "before"));

    etcd.restart(1);
    etcd.restart(2);
    shoal_tests::wait_for(
        "writes to succeed again",
        Duration::from_secs(60),
        async || {
            let (status, _) = http
                .call("POST", collection, "application/json", &config_map("after"))
                .await;
            matches!(status, 201 | 409).then_some(())
        },
    )
    .await;
    for name in ["before", "after"] {
        let (status, _) = http
            .call("GET", &format!("{collection}/{name}"), "", "")
            .await;
        assert_eq!(status, 200, "{name}");
    }
}

/// `shoal migrate`: a cluster grown in a data dir (redb) moves into etcd with its objects'
/// names, uids and owner references; a server on etcd with the same data dir serves them
/// and runs its controllers on them; a second migration into the same prefix is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redb_cluster_migrates_into_etcd() {
    if !etcd_available("a_redb_cluster_migrates_into_etcd")
        || !shoal_tests::kubectl_available("a_redb_cluster_migrates_into_etcd")
    {
        return;
    }
    use shoal_tests::{kubectl_async, kubectl_stdin_async, ok, wait_for};
    let etcd = EtcdCluster::start(3);
    let endpoints = etcd.endpoints().join(",");
    let dir = tempfile::tempdir().unwrap();
    let addr = shoal_tests::free_addr().to_string();
    let mut server = shoal_tests::start_server_at(dir.path(), &addr, &[]);
    let kubeconfig = shoal_tests::server_kubeconfig(dir.path());
    let manifest = "apiVersion: apps/v1
kind: Deployment
metadata: {name: grown, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: grown}}
  template:
    metadata: {labels: {app: grown}}
    spec:
      containers: [{name: app, image: /nonexistent/app.wasm}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: default}
data: {mode: grown-up}
";
    ok(kubectl_stdin_async(&kubeconfig, &["apply", "-f", "-"], manifest).await);
    let uid_of = async |kind: &str, name: &str| {
        ok(kubectl_async(
            &kubeconfig,
            &["get", kind, name, "-o", "jsonpath={.metadata.uid}"],
        )
        .await)
    };
    let replica_set = wait_for("the ReplicaSet", Duration::from_secs(30), async || {
        let output = kubectl_async(
            &kubeconfig,
            &[
                "get",
                "rs",
                "-l",
                "app=grown",
                "-o",
                "jsonpath={.items[0].metadata.name}",
            ],
        )
        .await;
        let name = String::from_utf8_lossy(&output.stdout).trim().to_string();
        (!name.is_empty()).then_some(name)
    })
    .await;
    let deployment_uid = uid_of("deployment", "grown").await;
    let config_map_uid = uid_of("configmap", "settings").await;
    server.signal(nix::sys::signal::Signal::SIGTERM);
    server.wait(Duration::from_secs(20));

    let data = dir.path().join("server");
    let migrate = |prefix: &str| {
        std::process::Command::new(shoal_tests::shoal_bin())
            .args(["migrate", "--from", data.to_str().unwrap()])
            .args(["--to-etcd", &endpoints, "--etcd-prefix", prefix])
            .output()
            .unwrap()
    };
    let copied = ok(migrate("/registry"));
    assert!(copied.starts_with("copied "), "{copied}");
    let again = migrate("/registry");
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already holds"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    let _server = shoal_tests::start_server_at(dir.path(), &addr, &["--etcd-servers", &endpoints]);
    assert_eq!(uid_of("deployment", "grown").await, deployment_uid);
    assert_eq!(uid_of("configmap", "settings").await, config_map_uid);
    let owner = ok(kubectl_async(
        &kubeconfig,
        &[
            "get",
            "rs",
            &replica_set,
            "-o",
            "jsonpath={.metadata.ownerReferences[0].uid}",
        ],
    )
    .await);
    assert_eq!(owner, deployment_uid);
    // The controllers take it from there: scaled on etcd, the Deployment gets its pods.
    ok(kubectl_async(&kubeconfig, &["scale", "deployment/grown", "--replicas=3"]).await);
    wait_for("3 pods", Duration::from_secs(30), async || {
        let output = kubectl_async(
            &kubeconfig,
            &[
                "get",
                "pods",
                "-l",
                "app=grown",
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ],
        )
        .await;
        (String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .count()
            == 3)
            .then_some(())
    })
    .await;
}
