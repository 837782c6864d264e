//! The embedded store: redb, one file, fsync on every commit.
//!
//! All writes go through one writer thread that groups the writes waiting at the moment it
//! opens a transaction into that transaction (group commit): each write is acknowledged only
//! after the commit that contains it is durable, and concurrent writers share one fsync.
//! Reads use redb's MVCC read transactions and never wait for the writer.
//! Committed events are kept in an `events` table (the event log watches resume from) and
//! fanned out live through a broadcast channel per resource.

use std::ops::{Bound, Deref};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::feeds::{self, LiveFeeds};
use super::paging::{self, Page, PageRequest, ReadAt};
use super::{
    key_prefix, revision_of, stamp_revision, Admission, AdmittedCreate, Error, EventType, Guard,
    GuardScope, Guarded, Listing, NotCreated, ObjectKey, Result, Store, WatchEvent, WatchStream,
};

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const BLOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("blobs");
const META_REVISION: &str = "revision";
const META_OLDEST: &str = "oldest_event";

/// The memory redb may cache pages in (its default is 1 GiB). Lists and watches are served
/// from the API server's watch cache, so redb reads only the pages a write compares against
/// and single gets; past this the kernel's page cache serves them. Without the cap the cache
/// grew with the file (+68 MiB at 3,000 pods in `shoal-bench density`, docs/performance.md).
const CACHE_BYTES: usize = 64 << 20;

/// How many events the log keeps; older ones are compacted and a watch from before them
/// gets 410 Gone (the client re-lists).
pub const DEFAULT_EVENT_LOG_LEN: u64 = 100_000;
/// The most writes grouped into one commit.
const MAX_BATCH: usize = 512;

enum Op {
    Create {
        key: ObjectKey,
        object: Value,
    },
    Update {
        key: ObjectKey,
        object: Value,
        precondition: Option<u64>,
    },
    Delete {
        key: ObjectKey,
        precondition: Option<u64>,
    },
}

impl Op {
    fn key(&self) -> &ObjectKey {
        match self {
            Op::Create { key, .. } | Op::Update { key, .. } | Op::Delete { key, .. } => key,
        }
    }
}

enum PendingWrite {
    One {
        op: Op,
        reply: oneshot::Sender<Result<Arc<Value>>>,
    },
    /// [`Store::create_guarded`]: updates that must all hold, then creates that each may
    /// fail alone, in the same transaction.
    Guarded {
        guards: Vec<Op>,
        creates: Vec<Op>,
        reply: oneshot::Sender<Result<Vec<Result<Arc<Value>>>>>,
    },
    /// [`Store::create_admitted`]: creates, each judged by its admission in the commit.
    Admitted {
        scope: GuardScope,
        creates: Vec<(Op, Box<dyn Admission>)>,
        reply: oneshot::Sender<Result<Vec<AdmittedOutcome>>>,
    },
}

/// What one pending write did in a commit, sent once the commit is durable. The objects are
/// the events', shared: the writer is one thread that every write passes through, so the
/// copy a caller keeps is made by the caller.
enum Outcome {
    One(Result<Arc<Value>>),
    /// Each create's outcome, or why the guards did not hold.
    Guarded(Result<Vec<Result<Arc<Value>>>>),
    Admitted(Vec<AdmittedOutcome>),
}

type AdmittedOutcome = Result<Arc<Value>, NotCreated>;

impl PendingWrite {
    /// Sends the write its outcome (`commit` gives each write one of its kind).
    fn answer(self, outcome: Outcome) {
        match (self, outcome) {
            (PendingWrite::One { reply, .. }, Outcome::One(outcome)) => {
                let _ = reply.send(outcome);
            }
            (PendingWrite::Guarded { reply, .. }, Outcome::Guarded(outcome)) => {
                let _ = reply.send(outcome);
            }
            (PendingWrite::Admitted { reply, .. }, Outcome::Admitted(outcome)) => {
                let _ = reply.send(Ok(outcome));
            }
            (pending, _) => pending.fail(Error::Backend("mismatched write outcome".into())),
        }
    }

    fn fail(self, error: Error) {
        match self {
            PendingWrite::One { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            PendingWrite::Guarded { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            PendingWrite::Admitted { reply, .. } => {
                let _ = reply.send(Err(error));
            }
        }
    }
}

pub struct RedbStore {
    db: Arc<OpenDatabase>,
    /// `None` only while the store is being dropped.
    writes: Option<mpsc::UnboundedSender<PendingWrite>>,
    /// Joined on drop: the file is released when the store is gone, not some time after.
    writer: Option<std::thread::JoinHandle<()>>,
    live: Arc<LiveFeeds>,
    revision: Arc<AtomicU64>,
    snapshots: Snapshots,
}

/// How long a paged list's snapshot is kept for its next page: a read transaction held open
/// keeps the pages it sees from being reused, so not for long (an automated client asks for
/// the next page at once; a later one gets 410 and a token to continue at the latest state).
const SNAPSHOT_TTL: std::time::Duration = std::time::Duration::from_secs(60);
/// The most snapshots kept at once.
const SNAPSHOTS: usize = 8;

/// The database with what tells that its file is closed. Fields drop in order: `closed`
/// goes after the database, when the file and its lock are released. Everything that can
/// keep the file open (the writer, watches, paged lists' snapshots) holds this `Arc`.
struct OpenDatabase {
    db: Database,
    closed: ClosedFlag,
}

impl Deref for OpenDatabase {
    type Target = Database;
    fn deref(&self) -> &Database {
        &self.db
    }
}

/// Set when dropped.
struct ClosedFlag(Arc<AtomicBool>);

impl Drop for ClosedFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// The objects table as of one read transaction. A redb table keeps the file open, so it
/// holds the database (dropped after the table, in field order) for [`Released`] to be
/// exact.
struct ObjectsTable {
    table: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    _db: Arc<OpenDatabase>,
}

impl Deref for ObjectsTable {
    type Target = redb::ReadOnlyTable<&'static str, &'static [u8]>;
    fn deref(&self) -> &Self::Target {
        &self.table
    }
}

/// The objects table as of one revision: what the pages of one list are read from.
struct Snapshot {
    revision: u64,
    objects: Arc<ObjectsTable>,
    taken: std::time::Instant,
}

/// Read snapshots of paged lists still being read, newest last.
#[derive(Default)]
struct Snapshots(std::sync::Mutex<std::collections::VecDeque<Snapshot>>);

impl Snapshots {
    fn find(&self, revision: u64) -> Option<Arc<ObjectsTable>> {
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        kept.retain(|s| s.taken.elapsed() < SNAPSHOT_TTL);
        kept.iter()
            .find(|s| s.revision == revision)
            .map(|s| s.objects.clone())
    }

    fn keep(&self, revision: u64, objects: Arc<ObjectsTable>) {
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if kept.iter().any(|s| s.revision == revision) {
            return;
        }
        if kept.len() == SNAPSHOTS {
            kept.pop_front();
        }
        kept.push_back(Snapshot {
            revision,
            objects,
            taken: std::time::Instant::now(),
        });
    }
}

impl RedbStore {
    /// Opens (or creates) the store file at `path` and starts its writer thread, which stops
    /// (and is joined) when the store is dropped.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with_log_len(path, DEFAULT_EVENT_LOG_LEN)
    }

    /// Like [`RedbStore::open`], keeping the last `log_len` events for watches to resume from.
    pub fn open_with_log_len(path: &Path, log_len: u64) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(backend)?;
        }
        let db = Arc::new(OpenDatabase {
            db: Database::builder()
                .set_cache_size(CACHE_BYTES)
                .create(path)
                .map_err(backend)?,
            closed: ClosedFlag(Arc::default()),
        });
        let txn = db.begin_write().map_err(backend)?;
        let revision = {
            txn.open_table(OBJECTS).map_err(backend)?;
            txn.open_table(EVENTS).map_err(backend)?;
            txn.open_table(BLOBS).map_err(backend)?;
            let meta = txn.open_table(META).map_err(backend)?;
            let revision = meta.get(META_REVISION).map_err(backend)?.map(|v| v.value());
            revision.unwrap_or(0)
        };
        txn.commit().map_err(backend)?;

        let (writes, queue) = mpsc::unbounded_channel();
        let live = Arc::new(LiveFeeds::default());
        let revision = Arc::new(AtomicU64::new(revision));
        let writer = Writer {
            log_len,
            db: db.clone(),
            live: live.clone(),
            revision: revision.clone(),
        };
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(queue))
            .map_err(backend)?;
        Ok(Self {
            db,
            writes: Some(writes),
            writer: Some(writer),
            live,
            revision,
            snapshots: Snapshots::default(),
        })
    }

    /// The objects table and the revision it is at, as of now.
    fn read_now(&self) -> Result<(u64, Arc<ObjectsTable>)> {
        let txn = self.db.begin_read().map_err(backend)?;
        let meta = txn.open_table(META).map_err(backend)?;
        let revision = meta
            .get(META_REVISION)
            .map_err(backend)?
            .map(|v| v.value())
            .unwrap_or(0);
        Ok((
            revision,
            Arc::new(ObjectsTable {
                table: txn.open_table(OBJECTS).map_err(backend)?,
                _db: self.db.clone(),
            }),
        ))
    }

    /// The objects table at the revision `at` asks for: the current one, or a kept snapshot
    /// (redb keeps no history beyond those).
    fn read_at(&self, at: ReadAt) -> Result<(u64, Arc<ObjectsTable>)> {
        if let ReadAt::Exact(wanted) = at {
            if let Some(objects) = self.snapshots.find(wanted) {
                return Ok((wanted, objects));
            }
        }
        let (revision, objects) = self.read_now()?;
        match at {
            ReadAt::Exact(wanted) | ReadAt::NotOlderThan(wanted) if wanted > revision => {
                Err(Error::TooLarge {
                    requested: wanted,
                    current: revision,
                })
            }
            ReadAt::Exact(wanted) if wanted != revision => Err(Error::Gone {
                requested: wanted,
                oldest: revision,
            }),
            _ => Ok((revision, objects)),
        }
    }

    /// Every object, with its key (`shoal migrate` copies them into etcd).
    pub fn all_objects(&self) -> Result<Vec<(ObjectKey, Value)>> {
        let txn = self.db.begin_read().map_err(backend)?;
        let objects = txn.open_table(OBJECTS).map_err(backend)?;
        let mut all = Vec::new();
        for entry in objects.iter().map_err(backend)? {
            let (key, bytes) = entry.map_err(backend)?;
            let decoded = ObjectKey::decode(key.value())
                .ok_or_else(|| Error::Backend(format!("bad key {:?}", key.value())))?;
            let object = serde_json::from_slice(bytes.value())
                .map_err(|e| Error::Backend(format!("{}: {e}", key.value())))?;
            all.push((decoded, object));
        }
        Ok(all)
    }

    /// The digest of every blob.
    pub fn blob_digests(&self) -> Result<Vec<String>> {
        let txn = self.db.begin_read().map_err(backend)?;
        let blobs = txn.open_table(BLOBS).map_err(backend)?;
        let mut digests = Vec::new();
        for entry in blobs.iter().map_err(backend)? {
            let (digest, _) = entry.map_err(backend)?;
            digests.push(digest.value().to_string());
        }
        Ok(digests)
    }

    /// Tells when the store's file is released: every handle on the database (the store, its
    /// writer, its watches, paged lists' snapshots) gone and the file closed.
    pub fn released(&self) -> Released {
        Released(self.db.closed.0.clone())
    }

    async fn submit(&self, op: Op) -> Result<Value> {
        let (reply, answer) = oneshot::channel();
        self.send(PendingWrite::One { op, reply })?;
        let written = answer
            .await
            .map_err(|_| Error::Backend("the store writer has stopped".into()))??;
        Ok(Arc::unwrap_or_clone(written))
    }

    /// Sends the write `write` makes around its reply channel, and answers with each
    /// create's outcome: the caller's copy of each stored object.
    async fn submit_creates<E>(
        &self,
        write: impl FnOnce(oneshot::Sender<Result<Vec<Result<Arc<Value>, E>>>>) -> PendingWrite,
    ) -> Result<Vec<Result<Value, E>>> {
        let (reply, answer) = oneshot::channel();
        self.send(write(reply))?;
        let written = answer
            .await
            .map_err(|_| Error::Backend("the store writer has stopped".into()))??;
        Ok(written
            .into_iter()
            .map(|create| create.map(Arc::unwrap_or_clone))
            .collect())
    }

    fn send(&self, write: PendingWrite) -> Result<()> {
        self.writes
            .as_ref()
            .ok_or_else(|| Error::Backend("the store is closing".into()))?
            .send(write)
            .map_err(|_| Error::Backend("the store writer has stopped".into()))
    }
}

/// See [`RedbStore::released`].
pub struct Released(Arc<AtomicBool>);

impl Released {
    pub fn is_released(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl Drop for RedbStore {
    /// Closes the write queue and waits for the writer to commit what it holds and exit.
    fn drop(&mut self) {
        self.writes.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// Reads the logged events under `prefix` with a revision above `since`.
fn read_log(db: &Database, prefix: &str, since: u64) -> Result<Vec<WatchEvent>> {
    {
        let txn = db.begin_read().map_err(backend)?;
        let meta = txn.open_table(META).map_err(backend)?;
        let oldest = meta
            .get(META_OLDEST)
            .map_err(backend)?
            .map(|v| v.value())
            .unwrap_or(0);
        if since + 1 < oldest {
            return Err(Error::Gone {
                requested: since,
                oldest,
            });
        }
        let events = txn.open_table(EVENTS).map_err(backend)?;
        let mut found = Vec::new();
        for entry in events.range(since + 1..).map_err(backend)? {
            let (revision, bytes) = entry.map_err(backend)?;
            // The log holds every resource's events: look at the key before building the
            // object, which costs many times more (a lagging watcher reads thousands).
            if event_key(bytes.value())?.starts_with(prefix) {
                found.push(decode_event(revision.value(), bytes.value())?);
            }
        }
        Ok(found)
    }
}

#[async_trait::async_trait]
impl Store for RedbStore {
    async fn create(&self, key: ObjectKey, object: Value) -> Result<Value> {
        self.submit(Op::Create { key, object }).await
    }

    async fn update(
        &self,
        key: ObjectKey,
        object: Value,
        precondition: Option<u64>,
    ) -> Result<Value> {
        self.submit(Op::Update {
            key,
            object,
            precondition,
        })
        .await
    }

    async fn delete(&self, key: ObjectKey, precondition: Option<u64>) -> Result<Value> {
        self.submit(Op::Delete { key, precondition }).await
    }

    async fn create_guarded(
        &self,
        guards: Vec<Guard>,
        creates: Vec<(ObjectKey, Value)>,
    ) -> Result<Vec<Result<Value>>> {
        let guards = guards
            .into_iter()
            .map(|guard| Op::Update {
                key: guard.key,
                object: guard.object,
                precondition: Some(guard.precondition),
            })
            .collect();
        let creates = creates
            .into_iter()
            .map(|(key, object)| Op::Create { key, object })
            .collect();
        self.submit_creates(|reply| PendingWrite::Guarded {
            guards,
            creates,
            reply,
        })
        .await
    }

    async fn create_admitted(
        &self,
        scope: &GuardScope,
        creates: Vec<AdmittedCreate>,
    ) -> Result<Vec<Result<Value, NotCreated>>> {
        let creates = creates
            .into_iter()
            .map(|create| {
                let op = Op::Create {
                    key: create.key,
                    object: create.object,
                };
                (op, create.admission)
            })
            .collect();
        self.submit_creates(|reply| PendingWrite::Admitted {
            scope: scope.clone(),
            creates,
            reply,
        })
        .await
    }

    fn admits_in_commit(&self) -> bool {
        true
    }

    fn get(&self, key: &ObjectKey) -> Result<Option<Value>> {
        let txn = self.db.begin_read().map_err(backend)?;
        let objects = txn.open_table(OBJECTS).map_err(backend)?;
        let found = objects.get(key.encode().as_str()).map_err(backend)?;
        found
            .map(|bytes| serde_json::from_slice(bytes.value()).map_err(backend))
            .transpose()
    }

    fn list(&self, resource: &str, namespace: Option<&str>) -> Result<Listing> {
        let prefix = key_prefix(resource, namespace);
        let txn = self.db.begin_read().map_err(backend)?;
        let meta = txn.open_table(META).map_err(backend)?;
        let revision = meta
            .get(META_REVISION)
            .map_err(backend)?
            .map(|v| v.value())
            .unwrap_or(0);
        let objects = txn.open_table(OBJECTS).map_err(backend)?;
        Ok(Listing {
            objects: decode_under(&objects, &prefix)?,
            revision,
        })
    }

    fn any(&self, resource: &str, namespace: Option<&str>) -> Result<bool> {
        let prefix = key_prefix(resource, namespace);
        let txn = self.db.begin_read().map_err(backend)?;
        let objects = txn.open_table(OBJECTS).map_err(backend)?;
        let first = objects.range(prefix.as_str()..).map_err(backend)?.next();
        match first {
            Some(entry) => Ok(entry.map_err(backend)?.0.value().starts_with(&prefix)),
            None => Ok(false),
        }
    }

    async fn list_page(&self, request: PageRequest<'_>) -> Result<Page> {
        let (revision, objects) = self.read_at(request.at)?;
        let prefix = key_prefix(request.resource, request.namespace);
        let start = match request.after {
            Some(after) => Bound::Excluded(format!("{prefix}{after}")),
            None => Bound::Included(prefix.clone()),
        };
        let range = objects
            .range::<&str>((start.as_ref().map(String::as_str), Bound::Unbounded))
            .map_err(backend)?;
        // A read error ends the page and fails the request (after the iterator is consumed).
        let failure = std::cell::RefCell::new(None);
        let entries = range
            .map_while(|entry| {
                entry
                    .map_err(|e| *failure.borrow_mut() = Some(backend(e)))
                    .ok()
            })
            .map_while(|(key, bytes)| {
                let relative = key.value().strip_prefix(&prefix)?.to_string();
                Some((relative, bytes))
            })
            .filter_map(
                |(relative, bytes)| match serde_json::from_slice::<Value>(bytes.value()) {
                    Ok(object) => Some((relative, Arc::new(object))),
                    Err(e) => {
                        tracing::warn!("store: skipping {prefix}{relative}: {e}");
                        None
                    }
                },
            );
        let page = paging::cut(entries, request.limit, request.filter, revision);
        if let Some(e) = failure.into_inner() {
            return Err(e);
        }
        if page.next.is_some() {
            self.snapshots.keep(revision, objects);
        }
        Ok(page)
    }

    fn watch(&self, resource: &str, namespace: Option<&str>, since: u64) -> Result<WatchStream> {
        let prefix = key_prefix(resource, namespace);
        // Subscribe before reading the log, so nothing committed in between is missed;
        // revisions already sent from the log are skipped when they come round live.
        let live = self.live.subscribe(resource);
        let backlog = read_log(&self.db, &prefix, since)?;
        let db = self.db.clone();
        Ok(feeds::follow(
            live,
            backlog,
            since,
            move |last| read_log(&db, &prefix, last),
            resource,
            namespace,
            self.live.published(),
            feeds::BOOKMARK_INTERVAL,
        ))
    }

    async fn put_blob(&self, digest: &str, bytes: Vec<u8>) -> Result<()> {
        let (db, digest) = (self.db.clone(), digest.to_string());
        // A write transaction of its own: it waits for the writer thread's, and blobs are rare.
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_write().map_err(backend)?;
            txn.open_table(BLOBS)
                .map_err(backend)?
                .insert(digest.as_str(), bytes.as_slice())
                .map_err(backend)?;
            txn.commit().map_err(backend)
        })
        .await
        .map_err(backend)?
    }

    async fn get_blob(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read().map_err(backend)?;
        let blobs = txn.open_table(BLOBS).map_err(backend)?;
        let found = blobs.get(digest).map_err(backend)?;
        Ok(found.map(|b| b.value().to_vec()))
    }

    fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }
}

struct Writer {
    log_len: u64,
    db: Arc<OpenDatabase>,
    live: Arc<LiveFeeds>,
    revision: Arc<AtomicU64>,
}

impl Writer {
    fn run(self, mut queue: mpsc::UnboundedReceiver<PendingWrite>) {
        let mut commits = 0u64;
        while let Some(first) = queue.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            commits += 1;
            let compact = commits.is_multiple_of(64);
            match self.commit(&mut batch, compact) {
                Ok((outcomes, events)) => {
                    // Every event is published, in revision order, before any write is
                    // answered: a client that reads after its answer watches from there.
                    events.iter().for_each(|event| self.live.publish(event));
                    for (pending, outcome) in batch.into_iter().zip(outcomes) {
                        pending.answer(outcome);
                    }
                }
                Err(e) => {
                    tracing::error!("store commit failed: {e}");
                    for pending in batch {
                        pending.fail(Error::Backend(format!("commit failed: {e}")));
                    }
                }
            }
        }
    }

    /// Applies a batch in one durable transaction. Each write succeeds or fails on its own
    /// (a conflict fails that write only; a guarded write's guards fail it whole); the whole
    /// batch is acknowledged after the commit. Returns each write's outcome and the events
    /// of the commit in revision order.
    fn commit(
        &self,
        batch: &mut [PendingWrite],
        compact: bool,
    ) -> Result<(Vec<Outcome>, Vec<WatchEvent>)> {
        let txn = self.db.begin_write().map_err(backend)?;
        let mut outcomes = Vec::with_capacity(batch.len());
        let events = {
            let mut meta = txn.open_table(META).map_err(backend)?;
            let revision = meta
                .get(META_REVISION)
                .map_err(backend)?
                .map(|v| v.value())
                .unwrap_or(0);
            let mut commit = Commit {
                objects: txn.open_table(OBJECTS).map_err(backend)?,
                log: txn.open_table(EVENTS).map_err(backend)?,
                revision,
                events: Vec::with_capacity(batch.len()),
                guards: Vec::new(),
            };
            for pending in batch.iter_mut() {
                outcomes.push(commit.write(pending)?);
            }
            let (revision, events) = commit.finish()?;
            meta.insert(META_REVISION, revision).map_err(backend)?;
            if compact && revision > self.log_len {
                let floor = revision - self.log_len;
                let mut log = txn.open_table(EVENTS).map_err(backend)?;
                log.retain_in(..floor, |_, _| false).map_err(backend)?;
                meta.insert(META_OLDEST, floor).map_err(backend)?;
            }
            self.revision.store(revision, Ordering::Release);
            events
        };
        txn.commit().map_err(backend)?;
        Ok((outcomes, events))
    }
}

/// One commit being written: its tables, the revision reached, its events in order, and the
/// guard scopes its admitted creates have read ([`Commit::admit`]).
struct Commit<'t> {
    objects: ObjectTable<'t>,
    log: redb::Table<'t, u64, &'static [u8]>,
    revision: u64,
    events: Vec<WatchEvent>,
    /// Each scope's objects as read in this commit and charged since. They are written
    /// before any other write touches the scope (which then sees them as stored, and the
    /// next admission reads them again), else at the end: a namespace's quotas are written
    /// once per commit, not once per create.
    guards: Vec<(GuardScope, Vec<Guarded>)>,
}

impl Commit<'_> {
    fn write(&mut self, pending: &mut PendingWrite) -> Result<Outcome> {
        Ok(match pending {
            PendingWrite::One { op, .. } => Outcome::One(self.apply(op)?),
            PendingWrite::Guarded {
                guards, creates, ..
            } => {
                // A guard charged earlier in this commit is checked as written.
                for guard in guards.iter() {
                    self.settle_guards_of(guard.key())?;
                }
                // Every guard is checked before anything is written, so a guarded write
                // that fails leaves nothing behind.
                let held = guards.iter().try_for_each(|guard| match guard {
                    Op::Update {
                        key, precondition, ..
                    } => check_exists_at(&self.objects, key, *precondition),
                    _ => Ok(()),
                });
                match held {
                    Err(e) => Outcome::Guarded(Err(e)),
                    Ok(()) => {
                        for guard in guards {
                            // Checked above: a failure now is the backend's, and fails the
                            // whole commit rather than half the write.
                            self.apply(guard)??;
                        }
                        let mut applied = Vec::with_capacity(creates.len());
                        for create in creates {
                            applied.push(self.apply(create)?);
                        }
                        Outcome::Guarded(Ok(applied))
                    }
                }
            }
            PendingWrite::Admitted { scope, creates, .. } => {
                let mut admitted = Vec::with_capacity(creates.len());
                for (create, admission) in creates {
                    admitted.push(self.admit(scope, create, admission.as_ref())?);
                }
                Outcome::Admitted(admitted)
            }
        })
    }

    /// Applies one write and logs its event; returns the object as stored.
    fn apply(&mut self, op: &mut Op) -> Result<Result<Arc<Value>>> {
        self.settle_guards_of(op.key())?;
        let (event, bytes) = match apply(&mut self.objects, op, self.revision + 1) {
            Ok(applied) => applied,
            Err(e) => return Ok(Err(e)),
        };
        self.revision = event.revision;
        let logged = match bytes {
            Some(bytes) => encode_event_with(&event, &bytes),
            None => encode_event(&event),
        };
        self.log
            .insert(self.revision, logged.as_slice())
            .map_err(backend)?;
        let stored = event.object.clone();
        self.events.push(event);
        Ok(Ok(stored))
    }

    /// Judges `create` by `admission` against its scope's objects as this commit has them,
    /// and applies it if admitted.
    fn admit(
        &mut self,
        scope: &GuardScope,
        create: &mut Op,
        admission: &dyn Admission,
    ) -> Result<AdmittedOutcome> {
        let key = create.key();
        let taken = self
            .objects
            .get(key.encode().as_str())
            .map_err(backend)?
            .is_some();
        if taken {
            return Ok(Err(Error::AlreadyExists(key.clone()).into()));
        }
        let at = match self.guards.iter().position(|(read, _)| read == scope) {
            Some(at) => at,
            None => {
                let guards = decode_under(
                    &self.objects,
                    &key_prefix(&scope.resource, Some(&scope.namespace)),
                )?
                .into_iter()
                .map(Guarded::new)
                .collect();
                self.guards.push((scope.clone(), guards));
                self.guards.len() - 1
            }
        };
        let mut guards = std::mem::take(&mut self.guards[at].1);
        let objects = &self.objects;
        // A read that fails counts nothing, as a recount over a failed list does.
        let mut list = |resource: &str, namespace: &str| {
            decode_under(objects, &key_prefix(resource, Some(namespace))).unwrap_or_default()
        };
        // The writer is every write's thread: an admission that panics fails this commit
        // (nothing of it is written, its writes are answered with the error) rather than
        // the writer and every write after it.
        let verdict = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            admission.admit(&mut guards, &mut list)
        }))
        .map_err(|_| Error::Backend(format!("the admission of {} panicked", key.encode())))?;
        self.guards[at].1 = guards;
        match verdict {
            Err(why) => Ok(Err(NotCreated::Refused(why))),
            Ok(()) => Ok(self.apply(create)?.map_err(NotCreated::from)),
        }
    }

    /// Writes what admissions changed in the scope holding `key`, if this commit read it, and
    /// forgets the scope.
    fn settle_guards_of(&mut self, key: &ObjectKey) -> Result<()> {
        match self.guards.iter().position(|(scope, _)| scope.holds(key)) {
            Some(at) => {
                let (scope, guards) = self.guards.swap_remove(at);
                self.write_guards(&scope, guards)
            }
            None => Ok(()),
        }
    }

    fn write_guards(&mut self, scope: &GuardScope, guards: Vec<Guarded>) -> Result<()> {
        for guard in guards.into_iter().filter(|guard| guard.changed) {
            let object = guard.into_settled();
            let mut update = Op::Update {
                key: scope.key_of(&object),
                object,
                // Read in this commit, and nothing has written the scope since.
                precondition: None,
            };
            // The guard was read in this transaction: a failure is the backend's.
            self.apply(&mut update)??;
        }
        Ok(())
    }

    /// Writes the guards still held and returns the revision reached and the events.
    fn finish(mut self) -> Result<(u64, Vec<WatchEvent>)> {
        while let Some((scope, guards)) = self.guards.pop() {
            self.write_guards(&scope, guards)?;
        }
        Ok((self.revision, self.events))
    }
}

/// Every object whose key starts with `prefix`, decoded.
fn decode_under(
    objects: &impl ReadableTable<&'static str, &'static [u8]>,
    prefix: &str,
) -> Result<Vec<Value>> {
    let mut found = Vec::new();
    for entry in objects.range(prefix..).map_err(backend)? {
        let (key, bytes) = entry.map_err(backend)?;
        if !key.value().starts_with(prefix) {
            break;
        }
        found.push(serde_json::from_slice(bytes.value()).map_err(backend)?);
    }
    Ok(found)
}

type ObjectTable<'t> = redb::Table<'t, &'static str, &'static [u8]>;

/// Applies one write: the event (with the object as it is now, taken out of `op`), and the
/// object's JSON when it was serialised for the table (the log reuses it).
fn apply(
    objects: &mut ObjectTable<'_>,
    op: &mut Op,
    revision: u64,
) -> Result<(WatchEvent, Option<Vec<u8>>)> {
    let (key, event_type, object, bytes) = match op {
        Op::Create { key, object } => {
            if objects
                .get(key.encode().as_str())
                .map_err(backend)?
                .is_some()
            {
                return Err(Error::AlreadyExists(key.clone()));
            }
            let mut object = std::mem::take(object);
            stamp_revision(&mut object, revision);
            let bytes = serde_json::to_vec(&object).map_err(backend)?;
            objects
                .insert(key.encode().as_str(), bytes.as_slice())
                .map_err(backend)?;
            (key, EventType::Added, object, Some(bytes))
        }
        Op::Update {
            key,
            object,
            precondition,
        } => {
            check_exists_at(objects, key, *precondition)?;
            let mut object = std::mem::take(object);
            stamp_revision(&mut object, revision);
            let bytes = serde_json::to_vec(&object).map_err(backend)?;
            objects
                .insert(key.encode().as_str(), bytes.as_slice())
                .map_err(backend)?;
            (key, EventType::Modified, object, Some(bytes))
        }
        Op::Delete { key, precondition } => {
            let mut object = check_precondition(objects, key, *precondition)?;
            objects.remove(key.encode().as_str()).map_err(backend)?;
            stamp_revision(&mut object, revision);
            (key, EventType::Deleted, object, None)
        }
    };
    let event = WatchEvent::new(event_type, key.clone(), revision, Arc::new(object));
    Ok((event, bytes))
}

/// Like [`check_precondition`] for a write that replaces the object: only its
/// `metadata.resourceVersion` is read, not the whole stored object.
fn check_exists_at(
    objects: &ObjectTable<'_>,
    key: &ObjectKey,
    precondition: Option<u64>,
) -> Result<()> {
    #[derive(serde::Deserialize)]
    struct Stored {
        #[serde(default)]
        metadata: StoredMeta,
    }
    #[derive(serde::Deserialize, Default)]
    struct StoredMeta {
        #[serde(rename = "resourceVersion")]
        resource_version: Option<String>,
    }
    let current = objects.get(key.encode().as_str()).map_err(backend)?;
    let Some(current) = current else {
        return Err(Error::NotFound(key.clone()));
    };
    if let Some(expected) = precondition {
        let stored: Stored = serde_json::from_slice(current.value()).map_err(backend)?;
        let actual = stored
            .metadata
            .resource_version
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if actual != expected {
            return Err(Error::Conflict {
                key: key.clone(),
                expected,
                current: actual,
            });
        }
    }
    Ok(())
}

/// Returns the current object under `key`, checking the compare-and-swap precondition.
fn check_precondition(
    objects: &ObjectTable<'_>,
    key: &ObjectKey,
    precondition: Option<u64>,
) -> Result<Value> {
    let current = objects.get(key.encode().as_str()).map_err(backend)?;
    let current: Value = match current {
        Some(bytes) => serde_json::from_slice(bytes.value()).map_err(backend)?,
        None => return Err(Error::NotFound(key.clone())),
    };
    if let Some(expected) = precondition {
        let actual = revision_of(&current).unwrap_or(0);
        if actual != expected {
            return Err(Error::Conflict {
                key: key.clone(),
                expected,
                current: actual,
            });
        }
    }
    Ok(current)
}

/// [`encode_event`] with the object already serialised: the same bytes, no second pass.
fn encode_event_with(event: &WatchEvent, object: &[u8]) -> Vec<u8> {
    let key = serde_json::to_string(&event.key.encode()).expect("a string serializes");
    let type_ = serde_json::to_string(&event.event_type).expect("an enum serializes");
    let mut bytes = Vec::with_capacity(object.len() + key.len() + type_.len() + 28);
    bytes.extend_from_slice(b"{\"key\":");
    bytes.extend_from_slice(key.as_bytes());
    bytes.extend_from_slice(b",\"object\":");
    bytes.extend_from_slice(object);
    bytes.extend_from_slice(b",\"type\":");
    bytes.extend_from_slice(type_.as_bytes());
    bytes.push(b'}');
    bytes
}

fn encode_event(event: &WatchEvent) -> Vec<u8> {
    // "key" first (sorted or not): `event_key` reads it without parsing the rest.
    let record = serde_json::json!({"key": event.key.encode(), "object": &*event.object, "type": event.event_type});
    serde_json::to_vec(&record).expect("a JSON value always serializes")
}

/// The encoded key of a logged event, without parsing its object. [`encode_event`] writes a
/// JSON map with sorted keys, so `"key"` comes first; keys hold no quotes or escapes (names
/// are DNS labels), so the key ends at the next quote. Anything else is parsed in full.
fn event_key(bytes: &[u8]) -> Result<std::borrow::Cow<'_, str>> {
    const START: &[u8] = b"{\"key\":\"";
    if let Some(rest) = bytes.strip_prefix(START) {
        if let Some(end) = rest.iter().position(|&b| b == b'"' || b == b'\\') {
            if rest[end] == b'"' {
                if let Ok(key) = std::str::from_utf8(&rest[..end]) {
                    return Ok(std::borrow::Cow::Borrowed(key));
                }
            }
        }
    }
    #[derive(serde::Deserialize)]
    struct KeyOnly {
        key: String,
    }
    let record: KeyOnly = serde_json::from_slice(bytes).map_err(backend)?;
    Ok(std::borrow::Cow::Owned(record.key))
}

fn decode_event(revision: u64, bytes: &[u8]) -> Result<WatchEvent> {
    #[derive(serde::Deserialize)]
    struct Record {
        #[serde(rename = "type")]
        event_type: EventType,
        key: String,
        object: Value,
    }
    let record: Record = serde_json::from_slice(bytes).map_err(backend)?;
    let key = ObjectKey::decode(&record.key)
        .ok_or_else(|| Error::Backend(format!("corrupt event key {:?}", record.key)))?;
    Ok(WatchEvent::new(
        record.event_type,
        key,
        revision,
        Arc::new(record.object),
    ))
}

fn backend(e: impl std::fmt::Display) -> Error {
    Error::Backend(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use serde_json::json;

    fn pod(name: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "default"}})
    }

    #[tokio::test]
    async fn create_get_update_delete_with_revisions() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("db")).unwrap();
        let key = ObjectKey::new("pods", "default", "a");
        let created = store.create(key.clone(), pod("a")).await.unwrap();
        assert_eq!(revision_of(&created), Some(1));
        assert!(matches!(
            store.create(key.clone(), pod("a")).await,
            Err(Error::AlreadyExists(_))
        ));
        let stale = store.update(key.clone(), pod("a"), Some(7)).await;
        assert!(matches!(
            stale,
            Err(Error::Conflict {
                expected: 7,
                current: 1,
                ..
            })
        ));
        let updated = store.update(key.clone(), pod("a"), Some(1)).await.unwrap();
        assert_eq!(revision_of(&updated), Some(2));
        assert_eq!(revision_of(&store.get(&key).unwrap().unwrap()), Some(2));
        let deleted = store.delete(key.clone(), None).await.unwrap();
        assert_eq!(revision_of(&deleted), Some(3));
        assert!(store.get(&key).unwrap().is_none());
        assert_eq!(store.revision(), 3);
    }

    /// Counts creates in each guard's `status.count`.
    struct Count;

    impl Admission for Count {
        fn admit(
            &self,
            guards: &mut [Guarded],
            _list: &mut super::super::admission::Lister<'_>,
        ) -> std::result::Result<(), String> {
            for guard in guards.iter_mut() {
                let count = guard.object["status"]["count"].as_u64().unwrap_or(0);
                guard.object["status"] = json!({"count": count + 1});
                guard.changed = true;
            }
            Ok(())
        }
    }

    /// In one commit, admitted creates charge their guards as the commit has them and the
    /// guards are written once, after them; a write to the guards' scope first sees them
    /// written (its stale precondition fails), and the next admission reads them again.
    #[tokio::test]
    async fn a_commit_writes_its_charged_guards_once_and_before_other_writes_to_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("s.redb")).unwrap();
        let scope = GuardScope::new("resourcequotas", "default");
        let quota = ObjectKey::new("resourcequotas", "default", "q");
        let q = json!({"metadata": {"name": "q", "namespace": "default"}});
        store.create(quota.clone(), q.clone()).await.unwrap();
        let admitted = |names: &[&str]| PendingWrite::Admitted {
            scope: scope.clone(),
            creates: names
                .iter()
                .map(|name| {
                    let op = Op::Create {
                        key: ObjectKey::new("pods", "default", name),
                        object: pod(name),
                    };
                    (op, Box::new(Count) as Box<dyn Admission>)
                })
                .collect(),
            reply: oneshot::channel().0,
        };
        let update = |precondition| PendingWrite::One {
            op: Op::Update {
                key: quota.clone(),
                object: q.clone(),
                precondition: Some(precondition),
            },
            reply: oneshot::channel().0,
        };
        let txn = store.db.begin_write().unwrap();
        let mut commit = Commit {
            objects: txn.open_table(OBJECTS).unwrap(),
            log: txn.open_table(EVENTS).unwrap(),
            revision: 1,
            events: Vec::new(),
            guards: Vec::new(),
        };
        let outcome = commit.write(&mut admitted(&["a", "b"])).unwrap();
        assert!(matches!(&outcome, Outcome::Admitted(all) if all.iter().all(Result::is_ok)));
        // The quota as read (revision 1) is stale: the charges were written before this.
        let Outcome::One(Err(Error::Conflict { current, .. })) =
            commit.write(&mut update(1)).unwrap()
        else {
            panic!("a stale update of a charged guard must conflict");
        };
        assert_eq!(current, 4, "the creates at 2 and 3, then the charged quota");
        assert!(matches!(
            commit.write(&mut update(4)).unwrap(),
            Outcome::One(Ok(_))
        ));
        commit.write(&mut admitted(&["c"])).unwrap();
        // A guarded write is checked against the guard as charged, too.
        let mut guarded = PendingWrite::Guarded {
            guards: vec![Op::Update {
                key: quota.clone(),
                object: q.clone(),
                precondition: Some(5),
            }],
            creates: Vec::new(),
            reply: oneshot::channel().0,
        };
        assert!(matches!(
            commit.write(&mut guarded).unwrap(),
            Outcome::Guarded(Err(Error::Conflict { current: 7, .. }))
        ));
        let (revision, events) = commit.finish().unwrap();
        let written: Vec<(u64, &str, u64)> = events
            .iter()
            .map(|event| {
                let count = event.object["status"]["count"].as_u64().unwrap_or(0);
                (event.revision, event.key.name.as_str(), count)
            })
            .collect();
        assert_eq!(
            written,
            [
                (2, "a", 0),
                (3, "b", 0),
                (4, "q", 2),
                (5, "q", 0),
                (6, "c", 0),
                (7, "q", 1)
            ]
        );
        assert_eq!(revision, 7);
    }

    struct Panics;

    impl Admission for Panics {
        fn admit(
            &self,
            _guards: &mut [Guarded],
            _list: &mut super::super::admission::Lister<'_>,
        ) -> std::result::Result<(), String> {
            panic!("a broken admission")
        }
    }

    /// An admission that panics fails its commit, not the writer: later writes go on.
    #[tokio::test]
    async fn an_admission_that_panics_fails_its_commit_not_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("s.redb")).unwrap();
        let scope = GuardScope::new("resourcequotas", "default");
        let create = AdmittedCreate {
            key: ObjectKey::new("pods", "default", "a"),
            object: pod("a"),
            admission: Box::new(Panics),
        };
        let failed = store.create_admitted(&scope, vec![create]).await;
        assert!(
            matches!(&failed, Err(Error::Backend(why)) if why.contains("panicked")),
            "{:?}",
            failed.err()
        );
        assert!(store
            .get(&ObjectKey::new("pods", "default", "a"))
            .unwrap()
            .is_none());
        store
            .create(ObjectKey::new("pods", "default", "b"), pod("b"))
            .await
            .expect("the writer still writes");
    }

    /// A guarded write is one commit: its guards and creates land together with their
    /// events, a create that fails fails alone, and a guard that no longer holds writes
    /// nothing at all.
    #[tokio::test]
    async fn guarded_creates_land_with_their_guard_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("db")).unwrap();
        let quota = ObjectKey::new("resourcequotas", "default", "q");
        store.create(quota.clone(), pod("q")).await.unwrap();
        store
            .create(ObjectKey::new("pods", "default", "taken"), pod("taken"))
            .await
            .unwrap();
        let mut watch = store
            .watch("resourcequotas", None, store.revision())
            .unwrap();
        let charged = json!({"metadata": {"name": "q", "namespace": "default"}, "status": {"used": {"pods": "2"}}});
        let guard = |precondition| Guard {
            key: quota.clone(),
            object: charged.clone(),
            precondition,
        };
        let creates = |names: &[&str]| -> Vec<(ObjectKey, Value)> {
            names
                .iter()
                .map(|n| (ObjectKey::new("pods", "default", n), pod(n)))
                .collect()
        };
        let outcomes = store
            .create_guarded(vec![guard(1)], creates(&["a", "taken"]))
            .await
            .unwrap();
        // One commit: the guard at revision 3, the create at 4, the failed create none.
        assert_eq!(revision_of(outcomes[0].as_ref().unwrap()), Some(4));
        assert!(matches!(outcomes[1], Err(Error::AlreadyExists(_))));
        assert_eq!(
            store.get(&quota).unwrap().unwrap()["status"],
            charged["status"]
        );
        let event = watch.next().await.unwrap().unwrap();
        assert_eq!((event.revision, event.event_type), (3, EventType::Modified));
        // A stale guard: nothing is written.
        let stale = store.create_guarded(vec![guard(1)], creates(&["b"])).await;
        assert!(
            matches!(stale, Err(Error::Conflict { current: 3, .. })),
            "{:?}",
            stale.err()
        );
        assert!(store
            .get(&ObjectKey::new("pods", "default", "b"))
            .unwrap()
            .is_none());
        assert_eq!(store.revision(), 4);
        // `any` looks without decoding, and a namespace's prefix is not another's.
        assert!(store.any("resourcequotas", Some("default")).unwrap());
        assert!(store.any("resourcequotas", None).unwrap());
        assert!(!store.any("resourcequotas", Some("defaul")).unwrap());
        assert!(!store.any("services", None).unwrap());
    }

    /// `released` turns true only once the file is closed, so the same path opens again at
    /// once: a paged list's kept snapshot (a redb table, which keeps the file open) and a
    /// watch hold it past the store itself.
    #[tokio::test]
    async fn released_means_the_file_can_be_opened_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = RedbStore::open(&path).unwrap();
        for name in ["a", "b", "c"] {
            let key = ObjectKey::new("pods", "default", name);
            store.create(key, pod(name)).await.unwrap();
        }
        let all = |_: &Value| true;
        let page = store
            .list_page(PageRequest {
                resource: "pods",
                namespace: Some("default"),
                at: ReadAt::Consistent,
                after: None,
                limit: Some(1),
                filter: &all,
            })
            .await
            .unwrap();
        assert!(page.next.is_some(), "a paged list keeps its snapshot");
        let watch = store.watch("pods", None, store.revision()).unwrap();
        let released = store.released();
        drop(store);
        assert!(!released.is_released(), "a watch still holds the file");
        assert!(RedbStore::open(&path).is_err(), "the file is still locked");
        // The watch's task notices its reader is gone and lets go of the file.
        drop(watch);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !released.is_released() {
            assert!(
                std::time::Instant::now() < deadline,
                "released within 5 s of the watch's end"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let reopened = RedbStore::open(&path).unwrap();
        assert_eq!(reopened.revision(), 3);
    }

    #[test]
    fn logged_event_keys_are_read_without_parsing_the_object() {
        let event = WatchEvent::new(
            EventType::Added,
            ObjectKey::new("pods", "default", "web-1"),
            7,
            Arc::new(serde_json::json!({"metadata": {"name": "web-1"}, "a": "\"quoted\""})),
        );
        let bytes = encode_event(&event);
        let object = serde_json::to_vec(&*event.object).unwrap();
        assert_eq!(
            encode_event_with(&event, &object),
            bytes,
            "one encoding, two ways"
        );
        let key = event_key(&bytes).unwrap();
        assert!(
            matches!(key, std::borrow::Cow::Borrowed(_)),
            "the fast path"
        );
        assert_eq!(key, "pods/default/web-1");
        let decoded = decode_event(7, &bytes).unwrap();
        assert_eq!(decoded.key, event.key);
        assert_eq!(decoded.object, event.object);
        // Another layout still works, parsed in full.
        let other = br#"{"type":"ADDED","key":"pods/default/x","object":{}}"#;
        assert_eq!(event_key(other).unwrap(), "pods/default/x");
    }

    #[tokio::test]
    async fn list_is_scoped_by_resource_and_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("db")).unwrap();
        store
            .create(ObjectKey::new("pods", "default", "a"), pod("a"))
            .await
            .unwrap();
        store
            .create(ObjectKey::new("pods", "other", "b"), pod("b"))
            .await
            .unwrap();
        store
            .create(ObjectKey::new("podsx", "default", "c"), pod("c"))
            .await
            .unwrap();
        assert_eq!(store.list("pods", None).unwrap().objects.len(), 2);
        assert_eq!(
            store.list("pods", Some("default")).unwrap().objects.len(),
            1
        );
        assert_eq!(store.list("pods", Some("default")).unwrap().revision, 3);
    }

    #[tokio::test]
    async fn watch_replays_the_log_then_follows_live() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("db")).unwrap();
        for name in ["a", "b", "c"] {
            store
                .create(ObjectKey::new("pods", "default", name), pod(name))
                .await
                .unwrap();
        }
        let mut watch = store.watch("pods", Some("default"), 1).unwrap();
        store
            .delete(ObjectKey::new("pods", "default", "a"), None)
            .await
            .unwrap();
        let mut seen = Vec::new();
        for _ in 0..3 {
            let event = watch.next().await.unwrap().unwrap();
            seen.push((event.event_type, event.key.name.clone(), event.revision));
        }
        assert_eq!(
            seen,
            vec![
                (EventType::Added, "b".into(), 2),
                (EventType::Added, "c".into(), 3),
                (EventType::Deleted, "a".into(), 4)
            ]
        );
    }

    #[tokio::test]
    async fn watch_from_a_compacted_revision_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open_with_log_len(&dir.path().join("db"), 10).unwrap();
        // Compaction runs every 64th commit; sequential writes are one commit each.
        for i in 0..130 {
            let name = format!("p{i}");
            store
                .create(ObjectKey::new("pods", "default", &name), pod(&name))
                .await
                .unwrap();
        }
        assert!(matches!(
            store.watch("pods", None, 5),
            Err(Error::Gone { requested: 5, .. })
        ));
        let mut recent = store.watch("pods", None, 125).unwrap();
        assert_eq!(recent.next().await.unwrap().unwrap().revision, 126);
    }

    #[tokio::test]
    async fn blobs_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("db")).unwrap();
        assert!(store.get_blob("abc").await.unwrap().is_none());
        store.put_blob("abc", b"\0asm".to_vec()).await.unwrap();
        assert_eq!(store.get_blob("abc").await.unwrap().unwrap(), b"\0asm");
    }

    #[tokio::test]
    async fn data_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let store = RedbStore::open(&path).unwrap();
            store
                .create(ObjectKey::new("pods", "default", "a"), pod("a"))
                .await
                .unwrap();
        }
        // The writer thread holds the database until its queue closes; wait for it.
        let store = loop {
            match RedbStore::open(&path) {
                Ok(store) => break store,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        };
        assert!(store
            .get(&ObjectKey::new("pods", "default", "a"))
            .unwrap()
            .is_some());
        assert_eq!(store.revision(), 1);
        let mut watch = store.watch("pods", None, 0).unwrap();
        assert_eq!(watch.next().await.unwrap().unwrap().key.name, "a");
    }
}
