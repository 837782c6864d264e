//! The etcd store: what a cluster of several API servers shares (`shoal server
//! --etcd-servers`), behind the same [`Store`] contract as the embedded redb store.
//!
//! Objects are JSON values at Kubernetes' keys ([`layout`]); an object's `resourceVersion`
//! is its etcd `mod_revision` scaled, plus its key's slot ([`versions`]), since one etcd
//! revision may hold many writes. Writes are etcd transactions, many writes to one
//! ([`batch`], a group commit): a create compares `create_revision == 0`, an update or
//! delete with a precondition compares `mod_revision` (else `Conflict`), one without
//! compares that the key exists (else `NotFound`). Reads and
//! watches are served by this server's [`mirror`] (its watch cache), which one etcd watch
//! keeps current; a write returns once the mirror has it. Every five minutes (by default,
//! as kube-apiserver) the history before the revision seen at the previous pass is
//! compacted. Module blobs are stored in chunks under their own prefix.

mod batch;
mod layout;
mod mirror;
pub mod versions;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Certificate, Client, ConnectOptions, EventType as EtcdEvent, GetOptions, Identity, KeyValue,
    TlsOptions, WatchOptions,
};
use serde_json::Value;

use batch::{GroupCommit, Refusal, Write};
pub use layout::Layout;
use mirror::{Change, Entry, Mirror};

use super::paging::{Page, PageRequest, ReadAt};
use super::{Error, Listing, ObjectKey, Result, Store, WatchStream, DEFAULT_EVENT_LOG_LEN};

/// How long a write waits for this server's watch cache to show it before returning anyway
/// (it is durable in etcd either way).
const MIRROR_WAIT: Duration = Duration::from_secs(10);
/// How long a read waits for the watch cache to reach the revision it needs (kube-apiserver
/// waits 3 s too) before reading etcd itself, or, for a revision etcd has not reached either,
/// answering 504.
const FRESH_WAIT: Duration = Duration::from_secs(3);
/// The most keys one etcd range read of a paged list returns.
const RANGE_BATCH: usize = 1000;
/// The largest chunk of a blob in one etcd value (etcd's default request limit is 1.5 MiB).
const BLOB_CHUNK: usize = 1024 * 1024;

/// How to reach etcd, as kube-apiserver's `--etcd-*` flags say.
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// Client URLs (`http://127.0.0.1:2379`, `https://…`).
    pub endpoints: Vec<String>,
    /// Where objects live (`--etcd-prefix`, `/registry` by default).
    pub prefix: String,
    /// The CA that signed etcd's serving certificates (PEM).
    pub ca_file: Option<PathBuf>,
    /// A client certificate and key (PEM) to present to etcd.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// How often history is compacted (`--etcd-compaction-interval`; zero: never).
    pub compaction_interval: Duration,
    /// How long to keep trying an unreachable etcd at start before giving up.
    pub connect_timeout: Duration,
    /// Events the watch cache keeps for watches to resume from.
    pub event_log_len: usize,
}

impl EtcdOptions {
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            prefix: "/registry".into(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            compaction_interval: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(60),
            event_log_len: DEFAULT_EVENT_LOG_LEN as usize,
        }
    }
}

pub struct EtcdStore {
    client: Client,
    layout: Layout,
    mirror: Arc<Mirror>,
    writes: GroupCommit,
    /// The follower and the compactor, stopped when the store is dropped.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn unavailable(e: etcd_client::Error) -> Error {
    Error::Unavailable(format!("etcd: {e}"))
}

fn read_pem(path: &PathBuf, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Backend(format!("{what} {}: {e}", path.display())))
}

impl EtcdStore {
    /// Connects to etcd (retrying an unreachable one until `connect_timeout`, saying why
    /// each time), loads the watch cache and starts following etcd.
    pub async fn connect(options: EtcdOptions) -> Result<Self> {
        if options.endpoints.is_empty() {
            return Err(Error::Backend("no etcd endpoints given".into()));
        }
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(30))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        if options.ca_file.is_some() || options.cert_file.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &options.ca_file {
                tls = tls.ca_certificate(Certificate::from_pem(read_pem(ca, "--etcd-cafile")?));
            }
            match (&options.cert_file, &options.key_file) {
                (Some(cert), Some(key)) => {
                    tls = tls.identity(Identity::from_pem(
                        read_pem(cert, "--etcd-certfile")?,
                        read_pem(key, "--etcd-keyfile")?,
                    ));
                }
                (None, None) => {}
                _ => {
                    return Err(Error::Backend(
                        "--etcd-certfile and --etcd-keyfile go together".into(),
                    ))
                }
            }
            connect = connect.with_tls(tls);
        }
        let layout = Layout::new(&options.prefix);
        let deadline = Instant::now() + options.connect_timeout;
        let (client, entries, revision) = loop {
            let attempt = async {
                let mut client = Client::connect(&options.endpoints, Some(connect.clone())).await?;
                let (entries, revision) = read_all(&mut client, &layout).await?;
                Ok::<_, etcd_client::Error>((client, entries, revision))
            };
            match attempt.await {
                Ok(connected) => break connected,
                Err(e) if Instant::now() < deadline => {
                    tracing::warn!("etcd at {}: {e}; retrying", options.endpoints.join(","));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => {
                    return Err(Error::Unavailable(format!(
                        "etcd at {} did not answer within {:?}: {e}",
                        options.endpoints.join(","),
                        options.connect_timeout
                    )))
                }
            }
        };
        let mirror = Arc::new(Mirror::new(
            layout.clone(),
            options.event_log_len,
            entries,
            revision,
        ));
        let mut tasks = vec![tokio::spawn(follow(
            client.clone(),
            layout.clone(),
            mirror.clone(),
        ))];
        if !options.compaction_interval.is_zero() {
            tasks.push(tokio::spawn(compact(
                client.clone(),
                options.compaction_interval,
            )));
        }
        Ok(Self {
            writes: GroupCommit::start(client.clone()),
            client,
            layout,
            mirror,
            tasks,
        })
    }

    /// How many objects the watch cache holds.
    pub fn object_count(&self) -> usize {
        self.mirror.object_count()
    }

    /// Compacts etcd's history up to the current revision now (what the periodic compactor
    /// does with an older one); for tests and tools.
    pub async fn compact_now(&self) -> Result<u64> {
        let mut client = self.client.clone();
        let revision = current_revision(&mut client).await.map_err(unavailable)?;
        client
            .compact(revision as i64, None)
            .await
            .map_err(unavailable)?;
        Ok(revision)
    }

    /// A page read from etcd itself at `version` (one the watch cache has moved past, or
    /// has not reached in time): in batches, until the page is full or the range ends.
    async fn page_from_etcd(&self, request: &PageRequest<'_>, version: u64) -> Result<Page> {
        if !versions::ends_revision(version) {
            return self.page_within_revision(request, version).await;
        }
        let at = versions::revision(version);
        let base = self.layout.list_prefix(request.resource, request.namespace);
        let end = range_end(&base);
        let mut start = match request.after {
            Some(after) => format!("{base}{after}\0"),
            None => base.clone(),
        };
        let limit = request.limit.unwrap_or(usize::MAX);
        let mut objects = Vec::new();
        let mut client = self.client.clone();
        loop {
            let batch = limit.saturating_sub(objects.len()).clamp(1, RANGE_BATCH);
            let options = GetOptions::new()
                .with_range(end.clone())
                .with_revision(at as i64)
                .with_limit(batch as i64);
            let response = client
                .get(start.clone(), Some(options))
                .await
                .map_err(|e| read_error(e, version))?;
            // How many keys the range holds from `start` on, this batch included.
            let count = response.count().max(0) as u64;
            for (index, kv) in response.kvs().iter().enumerate() {
                let entry = entry(kv);
                match mirror::decode(&self.layout, &entry, entry.version()) {
                    Ok((_, object)) if (request.filter)(&object) => objects.push(Arc::new(object)),
                    Ok(_) => {}
                    Err(why) => tracing::warn!("etcd: skipping {}: {why}", entry.key),
                }
                if objects.len() == limit {
                    let remaining = count.saturating_sub(index as u64 + 1);
                    let next = (remaining > 0)
                        .then(|| entry.key.strip_prefix(&base).map(str::to_string))
                        .flatten();
                    return Ok(Page {
                        objects,
                        revision: version,
                        next,
                        remaining,
                    });
                }
            }
            match response.kvs().last() {
                Some(last) if response.more() => {
                    start = format!("{}\0", String::from_utf8_lossy(last.key()));
                }
                _ => {
                    return Ok(Page {
                        objects,
                        revision: version,
                        next: None,
                        remaining: 0,
                    })
                }
            }
        }
    }

    /// A page at a version inside an etcd revision (an object's own resourceVersion, read
    /// exactly): the range as it was before that revision, with the revision's changes up to
    /// `version`'s slot, as if the transaction's writes had been made one by one in slot
    /// order. Rare (clients list at a list's version, which ends its revision), so it reads
    /// the whole range twice rather than in batches.
    async fn page_within_revision(&self, request: &PageRequest<'_>, version: u64) -> Result<Page> {
        let (at, slot) = (versions::revision(version), versions::slot_of(version));
        if at == 0 {
            // Before etcd's first revision: nothing to read (a version no write made).
            return Err(Error::Gone {
                requested: version,
                oldest: versions::through(1),
            });
        }
        let base = self.layout.list_prefix(request.resource, request.namespace);
        let range = |revision: u64| {
            let mut client = self.client.clone();
            let options = GetOptions::new()
                .with_range(range_end(&base))
                .with_revision(revision as i64);
            let base = base.clone();
            async move {
                if revision == 0 {
                    return Ok(Vec::new());
                }
                let response = client
                    .get(base, Some(options))
                    .await
                    .map_err(|e| read_error(e, version))?;
                Ok::<_, Error>(response.kvs().iter().map(entry).collect::<Vec<_>>())
            }
        };
        let (before, after) = futures::try_join!(range(at - 1), range(at))?;
        let mut merged: std::collections::BTreeMap<String, Entry> =
            before.into_iter().map(|e| (e.key.clone(), e)).collect();
        let present: std::collections::HashSet<String> =
            after.iter().map(|e| e.key.clone()).collect();
        // Deleted in this revision, at or before `version`: gone.
        merged.retain(|key, _| present.contains(key) || versions::slot(key) > slot);
        for entry in after {
            if entry.mod_revision < at || versions::slot(&entry.key) <= slot {
                merged.insert(entry.key.clone(), entry);
            }
        }
        let after_key = request.after.map(|after| format!("{base}{after}"));
        let entries = merged
            .into_values()
            .filter(|entry| after_key.as_ref().is_none_or(|after| entry.key > *after))
            .filter_map(
                |entry| match mirror::decode(&self.layout, &entry, entry.version()) {
                    Ok((_, object)) => {
                        let name = entry.key.strip_prefix(&base)?.to_string();
                        Some((name, Arc::new(object)))
                    }
                    Err(why) => {
                        tracing::warn!("etcd: skipping {}: {why}", entry.key);
                        None
                    }
                },
            );
        Ok(super::paging::cut(
            entries,
            request.limit,
            request.filter,
            version,
        ))
    }

    /// Returns `object`, written to `etcd_key` at etcd `revision`, stamped with its version
    /// once this server's watch cache has it.
    async fn written(&self, mut object: Value, etcd_key: &str, revision: u64) -> Value {
        let version = versions::of(revision, etcd_key);
        super::stamp_revision(&mut object, version);
        if !self.mirror.wait_for(version, MIRROR_WAIT).await {
            tracing::warn!(
                "etcd: the watch cache has not reached version {version} after {MIRROR_WAIT:?}"
            );
        }
        object
    }

    /// Writes through the group commit; a refusal becomes the store's error for `key`.
    async fn write(
        &self,
        key: &ObjectKey,
        etcd_key: &str,
        write: Write,
        precondition: Option<u64>,
    ) -> Result<batch::Committed> {
        self.writes
            .write(etcd_key.to_string(), write)
            .await
            .map_err(|refusal| match refusal {
                Refusal::Exists => Error::AlreadyExists(key.clone()),
                Refusal::Missing => Error::NotFound(key.clone()),
                Refusal::Moved { current } => match precondition {
                    Some(expected) => Error::Conflict {
                        key: key.clone(),
                        expected,
                        current,
                    },
                    None => Error::NotFound(key.clone()),
                },
                Refusal::Unavailable(why) => Error::Unavailable(why),
            })
    }
}

/// The JSON to store: the object without `resourceVersion` (etcd's revision is the truth),
/// which is taken out of `object` (the caller stamps the new one) rather than out of a copy.
fn encode(object: &mut Value) -> Result<Vec<u8>> {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    serde_json::to_vec(&*object).map_err(|e| Error::Backend(format!("encoding: {e}")))
}

/// The end of the range of keys starting with `prefix` (which ends in `/`: the next byte).
fn range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// A range read's failure: `Gone` when etcd has compacted the revision, `TooLarge` when it
/// has not reached it, else unavailable.
fn read_error(e: etcd_client::Error, revision: u64) -> Error {
    let message = e.to_string();
    if message.contains("required revision has been compacted") {
        Error::Gone {
            requested: revision,
            oldest: revision + 1,
        }
    } else if message.contains("required revision is a future revision") {
        Error::TooLarge {
            requested: revision,
            current: 0,
        }
    } else {
        unavailable(e)
    }
}

fn entry(kv: &KeyValue) -> Entry {
    Entry {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        mod_revision: kv.mod_revision().max(0) as u64,
    }
}

/// Every object's entry, and the revision they were read at.
async fn read_all(
    client: &mut Client,
    layout: &Layout,
) -> std::result::Result<(Vec<Entry>, u64), etcd_client::Error> {
    let response = client
        .get(layout.objects(), Some(GetOptions::new().with_prefix()))
        .await?;
    let revision = response.header().map_or(0, |h| h.revision().max(0) as u64);
    Ok((response.kvs().iter().map(entry).collect(), revision))
}

async fn current_revision(client: &mut Client) -> std::result::Result<u64, etcd_client::Error> {
    let response = client
        .get("\0", Some(GetOptions::new().with_count_only()))
        .await?;
    Ok(response.header().map_or(0, |h| h.revision().max(0) as u64))
}

/// Keeps the mirror current: one watch over every object from the mirror's revision; on a
/// broken stream it resumes from there, and when etcd has compacted past it, reloads.
async fn follow(mut client: Client, layout: Layout, mirror: Arc<Mirror>) {
    loop {
        let from = versions::revision(mirror.revision()) + 1;
        let options = WatchOptions::new()
            .with_prefix()
            .with_progress_notify()
            .with_start_revision(from as i64);
        let compacted = match client.watch(layout.objects(), Some(options)).await {
            Ok(mut stream) => loop {
                match stream.message().await {
                    Ok(Some(response)) => {
                        if response.canceled() {
                            let compacted = response.compact_revision() > 0;
                            if !compacted {
                                tracing::warn!(
                                    "etcd: the watch was canceled: {}",
                                    response.cancel_reason()
                                );
                            }
                            break compacted;
                        }
                        // etcd sends a revision's events together, in one response.
                        for (revision, changes) in by_revision(response.events()) {
                            mirror.apply_revision(revision, changes);
                        }
                        // A progress notification (no events, and not the answer that
                        // the watch was created, whose header is etcd's revision then, with
                        // the events up to it still to come): nothing changed up to it.
                        if response.events().is_empty() && !response.created() {
                            if let Some(header) = response.header() {
                                mirror.advance(header.revision().max(0) as u64);
                            }
                        }
                    }
                    Ok(None) => break false,
                    Err(e) => {
                        tracing::warn!("etcd: the watch broke: {e}; resuming");
                        break false;
                    }
                }
            },
            Err(e) => {
                tracing::warn!("etcd: cannot watch: {e}; retrying");
                false
            }
        };
        if compacted {
            match read_all(&mut client, &layout).await {
                Ok((entries, revision)) => {
                    tracing::warn!(
                        "etcd compacted past the watch cache (revision {from}): reloaded at {revision}, watches restart"
                    );
                    mirror.reload(entries, revision);
                    continue;
                }
                Err(e) => tracing::warn!("etcd: reloading the watch cache: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A watch response's changes, by etcd revision (a transaction's changes share one).
fn by_revision(events: &[etcd_client::Event]) -> Vec<(u64, Vec<Change>)> {
    let mut revisions: Vec<(u64, Vec<Change>)> = Vec::new();
    for (revision, change) in events.iter().filter_map(change) {
        match revisions.last_mut() {
            Some((last, changes)) if *last == revision => changes.push(change),
            _ => revisions.push((revision, vec![change])),
        }
    }
    revisions
}

/// An event's change and the etcd revision it was made at.
fn change(event: &etcd_client::Event) -> Option<(u64, Change)> {
    let kv = event.kv()?;
    let revision = kv.mod_revision().max(0) as u64;
    let change = match event.event_type() {
        EtcdEvent::Put => Change::Put {
            entry: entry(kv),
            created: kv.create_revision() == kv.mod_revision(),
        },
        EtcdEvent::Delete => Change::Delete {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            revision,
        },
    };
    Some((revision, change))
}

/// Compacts history every `interval` up to the revision seen one interval before, so a
/// watch always has at least one interval of history to resume from (kube-apiserver's rule).
async fn compact(mut client: Client, interval: Duration) {
    let mut previous = None;
    loop {
        tokio::time::sleep(interval).await;
        if let Some(revision) = previous {
            match client.compact(revision as i64, None).await {
                Ok(_) => tracing::debug!("etcd: compacted to revision {revision}"),
                // Another API server compacted first (or further): nothing to do.
                Err(e) if e.to_string().contains("compacted") => {}
                Err(e) => tracing::warn!("etcd: compacting to {revision}: {e}"),
            }
        }
        previous = current_revision(&mut client).await.ok();
    }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn create(&self, key: ObjectKey, mut object: Value) -> Result<Value> {
        let etcd_key = self.layout.key(&key);
        let value = encode(&mut object)?;
        let committed = self
            .write(&key, &etcd_key, Write::Create { value }, None)
            .await?;
        Ok(self.written(object, &etcd_key, committed.revision).await)
    }

    async fn update(
        &self,
        key: ObjectKey,
        mut object: Value,
        precondition: Option<u64>,
    ) -> Result<Value> {
        let etcd_key = self.layout.key(&key);
        let value = encode(&mut object)?;
        let write = Write::Update {
            value,
            precondition,
        };
        let committed = self.write(&key, &etcd_key, write, precondition).await?;
        Ok(self.written(object, &etcd_key, committed.revision).await)
    }

    async fn delete(&self, key: ObjectKey, precondition: Option<u64>) -> Result<Value> {
        let etcd_key = self.layout.key(&key);
        let write = Write::Delete { precondition };
        let committed = self.write(&key, &etcd_key, write, precondition).await?;
        let object = committed
            .previous
            .and_then(|value| serde_json::from_slice::<Value>(&value).ok())
            .ok_or_else(|| Error::Backend(format!("etcd: {etcd_key} had no readable value")))?;
        Ok(self.written(object, &etcd_key, committed.revision).await)
    }

    fn get(&self, key: &ObjectKey) -> Result<Option<Value>> {
        Ok(self.mirror.get(key).map(|object| (*object).clone()))
    }

    fn get_shared(&self, key: &ObjectKey) -> Result<Option<Arc<Value>>> {
        Ok(self.mirror.get(key))
    }

    fn list(&self, resource: &str, namespace: Option<&str>) -> Result<Listing> {
        Ok(self.mirror.list(resource, namespace))
    }

    async fn list_page(&self, request: PageRequest<'_>) -> Result<Page> {
        let too_large = |requested| Error::TooLarge {
            requested,
            current: self.mirror.revision(),
        };
        let exact = match request.at {
            ReadAt::Any => None,
            ReadAt::Consistent => {
                // What etcd has committed now (a linearizable read), which the watch cache
                // must reach before it answers: then this read sees every write acknowledged
                // before it, whichever server made it.
                let latest = current_revision(&mut self.client.clone())
                    .await
                    .map_err(unavailable)?;
                let latest = versions::through(latest);
                if !self.mirror.wait_for(latest, FRESH_WAIT).await {
                    return self.page_from_etcd(&request, latest).await;
                }
                None
            }
            ReadAt::NotOlderThan(wanted) => {
                if !self.mirror.wait_for(wanted, FRESH_WAIT).await {
                    return Err(too_large(wanted));
                }
                None
            }
            ReadAt::Exact(wanted) => {
                if !self.mirror.wait_for(wanted, FRESH_WAIT).await {
                    return Err(too_large(wanted));
                }
                Some(wanted)
            }
        };
        if let Some(page) = self.mirror.page(&request, exact) {
            return Ok(page);
        }
        // Only an exact revision the watch cache has moved past gets here.
        let wanted = exact.unwrap_or_else(|| self.mirror.revision());
        self.page_from_etcd(&request, wanted).await
    }

    fn watch(&self, resource: &str, namespace: Option<&str>, since: u64) -> Result<WatchStream> {
        self.mirror.watch(resource, namespace, since)
    }

    fn revision(&self) -> u64 {
        self.mirror.revision()
    }

    async fn put_blob(&self, digest: &str, bytes: Vec<u8>) -> Result<()> {
        let mut client = self.client.clone();
        let chunks: Vec<&[u8]> = if bytes.is_empty() {
            vec![&[]]
        } else {
            bytes.chunks(BLOB_CHUNK).collect()
        };
        for (index, chunk) in chunks.iter().enumerate() {
            client
                .put(self.layout.blob_chunk(digest, index), chunk.to_vec(), None)
                .await
                .map_err(unavailable)?;
        }
        // The manifest last: a reader sees a blob only once all of it is there.
        let manifest = serde_json::json!({"chunks": chunks.len(), "size": bytes.len()});
        client
            .put(self.layout.blob(digest), manifest.to_string(), None)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn get_blob(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        let mut client = self.client.clone();
        let manifest = client
            .get(self.layout.blob(digest), None)
            .await
            .map_err(unavailable)?;
        let Some(manifest) = manifest.kvs().first() else {
            return Ok(None);
        };
        let manifest: Value = serde_json::from_slice(manifest.value())
            .map_err(|e| Error::Backend(format!("blob {digest}: bad manifest: {e}")))?;
        let (Some(count), Some(size)) = (manifest["chunks"].as_u64(), manifest["size"].as_u64())
        else {
            return Err(Error::Backend(format!("blob {digest}: bad manifest")));
        };
        let chunks = client
            .get(
                format!("{}/", self.layout.blob(digest)),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .map_err(unavailable)?;
        let mut bytes = Vec::with_capacity(size.min(1 << 30) as usize);
        for kv in chunks.kvs().iter().take(count as usize) {
            bytes.extend_from_slice(kv.value());
        }
        if chunks.kvs().len() as u64 != count || bytes.len() as u64 != size {
            return Err(Error::Backend(format!(
                "blob {digest}: {} chunks ({} bytes) where the manifest says {count} ({size})",
                chunks.kvs().len(),
                bytes.len()
            )));
        }
        Ok(Some(bytes))
    }
}
