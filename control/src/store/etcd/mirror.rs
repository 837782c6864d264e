//! The watch cache: this API server's in-memory copy of every object in etcd, kept current by
//! one etcd watch over the whole object range.
//!
//! Gets, lists and every client watch are served from here, so a thousand watchers cost one
//! etcd watch, and a list is consistent at the revision the mirror has applied. The mirror
//! keeps the last events (a ring) for watches to resume from; a watch from before them gets
//! `Gone` and relists. A write through this server returns only once the mirror has applied
//! it, so this server reads its own writes. When etcd compacts past what the mirror has seen
//! (it was cut off for long), the mirror reloads and ends every watch, whose clients resume
//! or relist.
//!
//! Versions, not revisions: the mirror stamps every object and event with its
//! [`versions`] version, and applies one etcd revision's changes (a group commit's
//! transaction) together, under one lock. Its own position is the end of the last revision
//! it applied ([`versions::through`]).

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

use super::layout::Layout;
use super::versions;
use crate::store::feeds::{self, LiveFeeds};
use crate::store::paging::{self, Page, PageRequest};
use crate::store::{
    key_prefix, stamp_revision, Error, EventType, Listing, ObjectKey, Result, WatchEvent,
    WatchStream,
};

/// One key-value pair as etcd holds it (what the follower hands the mirror).
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: u64,
}

impl Entry {
    /// The version of the object as this entry holds it.
    pub fn version(&self) -> u64 {
        versions::of(self.mod_revision, &self.key)
    }
}

/// A change made ready to apply.
enum Prepared {
    Event(WatchEvent),
    /// The etcd key deleted.
    Delete(String),
}

/// A change etcd reported.
pub enum Change {
    /// A put: created when `created` (its create revision is its mod revision).
    Put { entry: Entry, created: bool },
    /// A delete of etcd key `key` at `revision`. The mirror holds what it removes: the watch
    /// asks etcd for no previous values, which would cost etcd a read for every put.
    Delete { key: String, revision: u64 },
}

struct State {
    /// Objects by their encoded [`ObjectKey`] (sorted, so a list is a range), stamped with
    /// their revision.
    objects: BTreeMap<String, Arc<Value>>,
    /// The last events, oldest first.
    events: VecDeque<WatchEvent>,
    /// A watch may resume from any revision at or above this one.
    floor: u64,
    /// The last revision applied.
    revision: u64,
}

pub struct Mirror {
    layout: Layout,
    capacity: usize,
    state: RwLock<State>,
    /// Replaced on a reload, which closes every live watch.
    live: RwLock<Arc<LiveFeeds>>,
    applied: watch::Sender<u64>,
}

impl Mirror {
    /// A mirror of `entries`, read at etcd `revision`, keeping `capacity` events.
    pub fn new(layout: Layout, capacity: usize, entries: Vec<Entry>, revision: u64) -> Self {
        let objects = load(&layout, entries);
        let revision = versions::through(revision);
        Self {
            layout,
            capacity: capacity.max(1),
            state: RwLock::new(State {
                objects,
                events: VecDeque::new(),
                floor: revision,
                revision,
            }),
            live: RwLock::new(Arc::new(LiveFeeds::default())),
            applied: watch::channel(revision).0,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn feeds(&self) -> Arc<LiveFeeds> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn object_count(&self) -> usize {
        self.read().objects.len()
    }

    /// The version the mirror is at: the end of the last etcd revision applied.
    pub fn revision(&self) -> u64 {
        self.read().revision
    }

    /// Waits until the mirror has applied `version` (a write this server made), at most
    /// `timeout`; `false` if it has not by then.
    pub async fn wait_for(&self, version: u64, timeout: Duration) -> bool {
        let mut applied = self.applied.subscribe();
        tokio::time::timeout(timeout, applied.wait_for(|&v| v >= version))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Applies the changes etcd reported at `revision`, all at once: a list never sees part
    /// of a transaction. Each change takes its key's version ([`versions`]), and they are
    /// published in version order. A value that does not decode is logged with its key and
    /// skipped: the revision still counts.
    pub fn apply_revision(&self, revision: u64, changes: Vec<Change>) {
        // Puts are decoded before the lock is taken; deletes find their object under it.
        let mut prepared: Vec<(u64, Prepared)> = changes
            .into_iter()
            .filter_map(|change| match change {
                Change::Put { entry, created } => {
                    let version = entry.version();
                    match decode(&self.layout, &entry, version) {
                        Ok((key, object)) => Some((
                            version,
                            Prepared::Event(WatchEvent::new(
                                if created {
                                    EventType::Added
                                } else {
                                    EventType::Modified
                                },
                                key,
                                version,
                                Arc::new(object),
                            )),
                        )),
                        Err(why) => {
                            tracing::warn!(
                                "etcd: skipping {} at version {version}: {why}",
                                entry.key
                            );
                            None
                        }
                    }
                }
                Change::Delete { key, revision } => {
                    Some((versions::of(revision, &key), Prepared::Delete(key)))
                }
            })
            .collect();
        prepared.sort_by_key(|(version, _)| *version);
        let through = versions::through(revision);
        {
            let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
            if through <= state.revision {
                return;
            }
            let feeds = self.feeds();
            for (version, change) in prepared {
                let event = match change {
                    Prepared::Event(event) => {
                        state
                            .objects
                            .insert(event.key.encode(), event.object.clone());
                        event
                    }
                    Prepared::Delete(etcd_key) => {
                        let held = self
                            .layout
                            .candidates(&etcd_key)
                            .into_iter()
                            .find_map(|key| {
                                let object = state.objects.remove(&key.encode())?;
                                Some((key, object))
                            });
                        let Some((key, object)) = held else {
                            // A value that never decoded: nothing to remove.
                            tracing::debug!("etcd: {etcd_key} deleted, which the mirror lacks");
                            continue;
                        };
                        // A deleted object carries the version of its deletion.
                        let mut object = (*object).clone();
                        stamp_revision(&mut object, version);
                        WatchEvent::new(EventType::Deleted, key, version, Arc::new(object))
                    }
                };
                if state.events.len() == self.capacity {
                    if let Some(dropped) = state.events.pop_front() {
                        state.floor = dropped.revision;
                    }
                }
                // Published under the lock: a watch subscribing while it reads the ring sees
                // each event once, from one or the other.
                feeds.publish(&event);
                state.events.push_back(event);
            }
            state.revision = through;
            feeds.note(through);
        }
        self.applied.send_replace(through);
    }

    /// Moves the mirror to the end of etcd `revision` with no change to objects (a progress
    /// notification).
    pub fn advance(&self, revision: u64) {
        let revision = versions::through(revision);
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        if revision > state.revision {
            state.revision = revision;
            // Under the lock, as events are published: watches may bookmark this revision.
            self.feeds().note(revision);
            drop(state);
            self.applied.send_replace(revision);
        }
    }

    /// Replaces everything with `entries` read at etcd `revision` (after etcd compacted past
    /// the mirror): the event ring starts over and every live watch ends.
    pub fn reload(&self, entries: Vec<Entry>, revision: u64) {
        let objects = load(&self.layout, entries);
        let revision = versions::through(revision);
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        state.objects = objects;
        state.events.clear();
        state.floor = revision;
        state.revision = revision;
        *self.live.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(LiveFeeds::default());
        drop(state);
        self.applied.send_replace(revision);
    }

    pub fn get(&self, key: &ObjectKey) -> Option<Arc<Value>> {
        self.read().objects.get(&key.encode()).cloned()
    }

    pub fn list(&self, resource: &str, namespace: Option<&str>) -> Listing {
        let prefix = key_prefix(resource, namespace);
        let state = self.read();
        let objects = state
            .objects
            .range(prefix.clone()..)
            .take_while(|(key, _)| key.starts_with(&prefix))
            .map(|(_, object)| (**object).clone())
            .collect();
        Listing {
            objects,
            revision: state.revision,
        }
    }

    /// A page of `request`'s objects as the mirror has them, if it is at `revision` (at
    /// whatever revision it is when `None`).
    pub fn page(&self, request: &PageRequest<'_>, revision: Option<u64>) -> Option<Page> {
        let prefix = key_prefix(request.resource, request.namespace);
        let state = self.read();
        if revision.is_some_and(|wanted| wanted != state.revision) {
            return None;
        }
        let start = match request.after {
            Some(after) => Bound::Excluded(format!("{prefix}{after}")),
            None => Bound::Included(prefix.clone()),
        };
        let entries = state
            .objects
            .range::<String, _>((start, Bound::Unbounded))
            .map_while(|(key, object)| Some((key.strip_prefix(&prefix)?, object.clone())));
        Some(paging::cut(
            entries,
            request.limit,
            request.filter,
            state.revision,
        ))
    }

    pub fn watch(
        self: &Arc<Self>,
        resource: &str,
        namespace: Option<&str>,
        since: u64,
    ) -> Result<WatchStream> {
        let (live, backlog) = {
            let state = self.read();
            let live = self.feeds().subscribe(resource);
            (live, events_after(&state, resource, namespace, since)?)
        };
        let mirror = self.clone();
        let (owned_resource, owned_namespace) =
            (resource.to_string(), namespace.map(str::to_string));
        Ok(feeds::follow(
            live,
            backlog,
            since,
            move |last| {
                events_after(
                    &mirror.read(),
                    &owned_resource,
                    owned_namespace.as_deref(),
                    last,
                )
            },
            resource,
            namespace,
            self.feeds().published(),
            feeds::BOOKMARK_INTERVAL,
        ))
    }
}

/// The ring's events of `resource` (in `namespace`) after `since`; `Gone` when the ring no
/// longer reaches back to it.
fn events_after(
    state: &State,
    resource: &str,
    namespace: Option<&str>,
    since: u64,
) -> Result<Vec<WatchEvent>> {
    if since < state.floor {
        return Err(Error::Gone {
            requested: since,
            oldest: state.floor,
        });
    }
    let start = state
        .events
        .partition_point(|event| event.revision <= since);
    Ok(state
        .events
        .range(start..)
        .filter(|event| event.key.in_scope(resource, namespace))
        .cloned()
        .collect())
}

/// Objects of `entries` by their encoded key; those that do not decode are logged and left out.
fn load(layout: &Layout, entries: Vec<Entry>) -> BTreeMap<String, Arc<Value>> {
    let mut objects = BTreeMap::new();
    for entry in entries {
        match decode(layout, &entry, entry.version()) {
            Ok((key, object)) => {
                objects.insert(key.encode(), Arc::new(object));
            }
            Err(why) => tracing::warn!("etcd: skipping {}: {why}", entry.key),
        }
    }
    objects
}

/// The object an entry holds, stamped with `version`, and its key.
pub(super) fn decode(
    layout: &Layout,
    entry: &Entry,
    version: u64,
) -> std::result::Result<(ObjectKey, Value), String> {
    let mut object: Value = serde_json::from_slice(&entry.value)
        .map_err(|e| format!("the value is not a JSON object: {e}"))?;
    let key = layout
        .object_key(&entry.key, &object)
        .ok_or("the key does not match the object's name and namespace")?;
    stamp_revision(&mut object, version);
    Ok((key, object))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use serde_json::json;

    fn entry(namespace: &str, name: &str, revision: u64) -> Entry {
        Entry {
            key: format!("/registry/pods/{namespace}/{name}"),
            value: json!({"metadata": {"name": name, "namespace": namespace}})
                .to_string()
                .into_bytes(),
            mod_revision: revision,
        }
    }

    fn put(namespace: &str, name: &str, revision: u64) -> Change {
        Change::Put {
            entry: entry(namespace, name, revision),
            created: true,
        }
    }

    fn version(namespace: &str, name: &str, revision: u64) -> u64 {
        entry(namespace, name, revision).version()
    }

    #[tokio::test]
    async fn applies_changes_serves_lists_and_watches_and_forgets_the_oldest() {
        let mirror = Arc::new(Mirror::new(
            Layout::new("/registry"),
            2,
            vec![entry("a", "one", 3)],
            5,
        ));
        assert_eq!(mirror.list("pods", Some("a")).objects.len(), 1);
        assert_eq!(mirror.revision(), versions::through(5));
        let mut watch = mirror.watch("pods", Some("a"), mirror.revision()).unwrap();
        mirror.apply_revision(6, vec![put("a", "two", 6)]);
        // Another namespace: not this watch's.
        mirror.apply_revision(7, vec![put("b", "three", 7)]);
        mirror.apply_revision(
            8,
            vec![Change::Delete {
                key: "/registry/pods/a/one".into(),
                revision: 8,
            }],
        );
        let first = watch.next().await.unwrap().unwrap();
        assert_eq!(
            (first.event_type, first.revision),
            (EventType::Added, version("a", "two", 6))
        );
        let second = watch.next().await.unwrap().unwrap();
        let deleted = version("a", "one", 8);
        assert_eq!(
            (second.event_type, second.revision),
            (EventType::Deleted, deleted)
        );
        assert_eq!(
            second.object["metadata"]["resourceVersion"],
            deleted.to_string()
        );
        let listing = mirror.list("pods", None);
        assert_eq!(
            (listing.objects.len(), listing.revision),
            (2, versions::through(8))
        );
        assert!(mirror.wait_for(deleted, Duration::from_millis(10)).await);
        assert!(
            !mirror
                .wait_for(versions::through(8) + 1, Duration::from_millis(10))
                .await
        );
        // The ring holds two events: revisions 7 and 8; a watch from 6 resumes, from 5 not.
        assert!(mirror.watch("pods", None, versions::through(6)).is_ok());
        assert!(matches!(
            mirror.watch("pods", None, versions::through(5)),
            Err(Error::Gone { .. })
        ));
    }

    #[tokio::test]
    async fn a_transactions_changes_are_applied_together_each_with_its_own_version() {
        let mirror = Arc::new(Mirror::new(Layout::new("/registry"), 100, vec![], 1));
        let mut watch = mirror.watch("pods", None, mirror.revision()).unwrap();
        // One etcd revision, three keys: etcd reports them in the transaction's order.
        let names = ["x", "y", "z"];
        mirror.apply_revision(2, names.iter().map(|n| put("a", n, 2)).collect());
        let mut versions_seen = Vec::new();
        for _ in names {
            let event = watch.next().await.unwrap().unwrap();
            assert_eq!(
                event.object["metadata"]["resourceVersion"],
                event.revision.to_string()
            );
            versions_seen.push(event.revision);
        }
        let mut expected: Vec<u64> = names.iter().map(|n| version("a", n, 2)).collect();
        expected.sort();
        assert_eq!(versions_seen, expected, "in version order, none twice");
        assert!(versions_seen.iter().all(|v| versions::revision(*v) == 2));
        // A watch resuming after the first of them gets exactly the other two.
        let mut resumed = mirror.watch("pods", None, versions_seen[0]).unwrap();
        mirror.apply_revision(3, vec![put("a", "w", 3)]);
        let mut rest = Vec::new();
        for _ in 0..3 {
            rest.push(resumed.next().await.unwrap().unwrap().revision);
        }
        assert_eq!(rest[..2], versions_seen[1..]);
        assert_eq!(rest[2], version("a", "w", 3));
        // A revision seen again (a resumed etcd watch) changes nothing.
        mirror.apply_revision(2, vec![put("a", "late", 2)]);
        assert_eq!(mirror.list("pods", None).objects.len(), 4);
    }

    #[tokio::test]
    async fn a_value_that_does_not_decode_is_skipped_and_a_reload_ends_watches() {
        let mirror = Arc::new(Mirror::new(Layout::new("/registry"), 10, vec![], 1));
        let mut watch = mirror.watch("pods", None, mirror.revision()).unwrap();
        mirror.apply_revision(
            2,
            vec![Change::Put {
                entry: Entry {
                    key: "/registry/pods/a/broken".into(),
                    value: b"not json".to_vec(),
                    mod_revision: 2,
                },
                created: true,
            }],
        );
        assert_eq!(mirror.revision(), versions::through(2));
        assert!(mirror.list("pods", None).objects.is_empty());
        mirror.reload(vec![entry("a", "one", 9)], 10);
        assert!(watch.next().await.is_none(), "the watch ends at a reload");
        assert_eq!(mirror.list("pods", None).objects.len(), 1);
        assert!(matches!(
            mirror.watch("pods", None, versions::through(2)),
            Err(Error::Gone { .. })
        ));
    }
}
