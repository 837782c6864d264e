//! The store: the one source of truth for every API object.
//!
//! [`Store`] is the contract the API server writes through (DESIGN.md §3.4): objects keyed by
//! resource, namespace and name; one global, increasing revision that is every object's
//! `resourceVersion`; compare-and-swap updates; and an event log from which a watch resumes at
//! a given revision. The store knows nothing of Kubernetes semantics beyond
//! `metadata.resourceVersion`: defaulting, validation and selectors live in `api` and `server`.

pub mod admission;
pub mod encryption;
pub mod etcd;
mod feeds;
pub mod paging;
mod redb_store;

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use serde_json::Value;

pub use admission::{Admission, AdmittedCreate, GuardScope, Guarded, NotCreated};
pub use etcd::{EtcdOptions, EtcdStore};
pub use paging::{Page, PageRequest, ReadAt};
pub use redb_store::{RedbStore, Released, DEFAULT_EVENT_LOG_LEN};

/// Where an object lives: `resource` is the plural name plus the group for non-core groups
/// (`pods`, `leases.coordination.k8s.io`); `namespace` is empty for cluster-scoped objects.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectKey {
    pub resource: String,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(resource: &str, namespace: &str, name: &str) -> Self {
        Self {
            resource: resource.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The key's encoding in the store. Names and namespaces cannot contain `/`, so the
    /// encoding is unambiguous and sorts objects of one resource and namespace together.
    pub fn encode(&self) -> String {
        format!("{}/{}/{}", self.resource, self.namespace, self.name)
    }

    /// Whether the key is one of `resource` (in `namespace`, if given): what
    /// [`key_prefix`] selects, compared without building the encoding.
    pub fn in_scope(&self, resource: &str, namespace: Option<&str>) -> bool {
        self.resource == resource && namespace.is_none_or(|ns| self.namespace == ns)
    }

    pub fn decode(encoded: &str) -> Option<Self> {
        let mut parts = encoded.splitn(3, '/');
        Some(Self::new(parts.next()?, parts.next()?, parts.next()?))
    }
}

/// The encoded-key prefix shared by every object of `resource` (in `namespace`, if given).
pub fn key_prefix(resource: &str, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("{resource}/{ns}/"),
        None => format!("{resource}/"),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum EventType {
    Added,
    Modified,
    Deleted,
    /// Nothing of the watched resource changed up to this revision (no object: the key
    /// names only the resource).
    Bookmark,
}

/// One committed change, as recorded in the event log and streamed to watchers.
#[derive(Clone, Debug)]
pub struct WatchEvent {
    pub event_type: EventType,
    pub key: ObjectKey,
    pub revision: u64,
    /// The object after the change (for `Deleted`, its last state at the deletion revision).
    pub object: Arc<Value>,
    /// The object as JSON, made by the first watcher that sends it and shared by the clones
    /// the live feed hands every other watcher: a thousand-address Endpoints watched by ten
    /// clients is encoded once, not ten times ([`WatchEvent::object_json`]).
    object_json: Arc<std::sync::OnceLock<bytes::Bytes>>,
}

impl WatchEvent {
    pub fn new(event_type: EventType, key: ObjectKey, revision: u64, object: Arc<Value>) -> Self {
        Self {
            event_type,
            key,
            revision,
            object,
            object_json: Arc::default(),
        }
    }

    /// [`WatchEvent::object`] as JSON, encoded once for all the watchers this event is sent to.
    pub fn object_json(&self) -> bytes::Bytes {
        let encode = || {
            bytes::Bytes::from(serde_json::to_vec(&*self.object).expect("JSON always serializes"))
        };
        self.object_json.get_or_init(encode).clone()
    }
}

pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{} {:?} not found", .0.resource, .0.name)]
    NotFound(ObjectKey),
    #[error("{} {:?} already exists", .0.resource, .0.name)]
    AlreadyExists(ObjectKey),
    #[error("the object has been modified; please apply your changes to the latest version and try again (expected resourceVersion {expected}, current {current})")]
    Conflict {
        key: ObjectKey,
        expected: u64,
        current: u64,
    },
    #[error("too old resource version: {requested} ({oldest})")]
    Gone { requested: u64, oldest: u64 },
    /// A read asked for a revision the store has not reached (and did not within a short
    /// wait): the client may retry.
    #[error("too large resource version: {requested}, current: {current}")]
    TooLarge { requested: u64, current: u64 },
    #[error("store backend: {0}")]
    Backend(String),
    /// The backend cannot answer now (etcd unreachable or without quorum): the request may
    /// be retried; a write that got this may or may not have been applied.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An update that a [`Store::create_guarded`] commit depends on: `object` replaces the one
/// under `key` only if that one is still at `precondition`.
#[derive(Clone, Debug)]
pub struct Guard {
    pub key: ObjectKey,
    pub object: Value,
    pub precondition: u64,
}

/// A list result: the objects and the revision the list is consistent at.
pub struct Listing {
    pub objects: Vec<Value>,
    pub revision: u64,
}

#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates `object` under `key`; fails with `AlreadyExists` if the key is taken.
    /// Returns the object as stored, with its new `resourceVersion`.
    async fn create(&self, key: ObjectKey, object: Value) -> Result<Value>;
    /// Replaces the object under `key`. With `precondition`, only if its current
    /// `resourceVersion` equals it (compare-and-swap), else `Conflict`.
    async fn update(
        &self,
        key: ObjectKey,
        object: Value,
        precondition: Option<u64>,
    ) -> Result<Value>;
    /// Removes the object under `key` (with the same precondition rule as `update`) and
    /// returns its last state, stamped with the deletion revision.
    async fn delete(&self, key: ObjectKey, precondition: Option<u64>) -> Result<Value>;
    /// Creates `creates` together with `guards`, updates that must all hold: if one's
    /// precondition fails, nothing is written and its error is returned; otherwise each
    /// create succeeds or fails on its own. ResourceQuota admission writes a quota's charge
    /// and the objects charged to it so, in one commit where the backend can (redb); this
    /// default writes the guards first, then the creates (etcd, for now).
    async fn create_guarded(
        &self,
        guards: Vec<Guard>,
        creates: Vec<(ObjectKey, Value)>,
    ) -> Result<Vec<Result<Value>>> {
        for guard in guards {
            self.update(guard.key, guard.object, Some(guard.precondition))
                .await?;
        }
        let creates = creates
            .into_iter()
            .map(|(key, object)| self.create(key, object));
        Ok(futures::future::join_all(creates).await)
    }
    /// Creates each of `creates` that its admission admits, judged in order against the
    /// objects of `scope` as they stand when it commits (with the charges of the creates
    /// before it), and writes the guards an admission changed in the same commit
    /// ([`admission`]). Each create succeeds or fails on its own. This default judges
    /// outside the commit and writes under compare-and-swap, retrying when a guard moved.
    async fn create_admitted(
        &self,
        scope: &GuardScope,
        creates: Vec<AdmittedCreate>,
    ) -> Result<Vec<Result<Value, NotCreated>>> {
        admission::create_admitted_optimistically(self, scope, creates).await
    }
    /// Whether [`Store::create_admitted`] judges inside the backend's serial commits, so
    /// concurrent calls never conflict and callers gain nothing by batching them (redb);
    /// otherwise concurrent calls race on the guards' revisions, and callers should batch.
    fn admits_in_commit(&self) -> bool {
        false
    }
    fn get(&self, key: &ObjectKey) -> Result<Option<Value>>;
    /// [`Store::get`] without a copy where the backend holds its objects shared (etcd's
    /// watch cache): for a request that only looks at an object (its namespace, on every
    /// create).
    fn get_shared(&self, key: &ObjectKey) -> Result<Option<std::sync::Arc<Value>>> {
        Ok(self.get(key)?.map(std::sync::Arc::new))
    }
    /// Every object of `resource` (in `namespace`, if given) as this server has them now.
    fn list(&self, resource: &str, namespace: Option<&str>) -> Result<Listing>;
    /// Whether there is any object of `resource` (in `namespace`, if given): what admission
    /// asks of every create (are there quotas here?), so backends answer it without
    /// decoding objects where they can.
    fn any(&self, resource: &str, namespace: Option<&str>) -> Result<bool> {
        Ok(!self.list(resource, namespace)?.objects.is_empty())
    }
    /// One page of a list at the revision `request.at` asks for ([`paging`]): `Gone` when
    /// that revision is no longer readable, `TooLarge` when it has not been reached.
    async fn list_page(&self, request: PageRequest<'_>) -> Result<Page>;
    /// Streams every change to `resource` (in `namespace`, if given) with a revision greater
    /// than `since`: first from the event log, then live. `Gone` if `since` was compacted.
    fn watch(&self, resource: &str, namespace: Option<&str>, since: u64) -> Result<WatchStream>;
    /// The revision of the last commit.
    fn revision(&self) -> u64;
    /// Keeps a module pushed into the cluster (`shoal push`) under its sha256 digest (hex),
    /// durably. Blobs are content-addressed, so writing one twice is harmless.
    async fn put_blob(&self, digest: &str, bytes: Vec<u8>) -> Result<()>;
    async fn get_blob(&self, digest: &str) -> Result<Option<Vec<u8>>>;
}

/// Sets `metadata.resourceVersion` of a JSON object.
pub(crate) fn stamp_revision(object: &mut Value, revision: u64) {
    if let Some(map) = object.as_object_mut() {
        let meta = map
            .entry("metadata")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(meta) = meta.as_object_mut() {
            meta.insert(
                "resourceVersion".into(),
                Value::String(revision.to_string()),
            );
        }
    }
}

/// Reads `metadata.resourceVersion` of a JSON object as a revision.
pub fn revision_of(object: &Value) -> Option<u64> {
    object
        .pointer("/metadata/resourceVersion")?
        .as_str()?
        .parse()
        .ok()
}
