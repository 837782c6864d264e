//! Group commit for etcd: the object writes that arrive while earlier ones are in flight go
//! to etcd together, as one transaction, as the redb store's writer thread commits a batch
//! with one fsync.
//!
//! Why: an etcd transaction that compares (every create, and every update or delete with a
//! precondition) costs etcd about twice a plain put, and one per write held Shoal's
//! durable creates to about 55% of raw etcd puts on a 3-member cluster. A transaction of
//! many writes costs etcd little more than one.
//!
//! Each write keeps its own compare, and a transaction holds when all do. When one does
//! not, etcd runs the `else` branch instead, which reads every key (keys only): the writes
//! whose compare failed get their answer from what it read (exists, missing, moved), and
//! those whose compare held are sent again, without them. Every round answers at least one
//! write, so this ends. A transaction never holds two writes of one key, nor two keys of one
//! version slot ([`super::versions`]): such a write waits for the next transaction.
//!
//! At most [`IN_FLIGHT`] (two) transactions are in flight: while they are, writes queue, and the
//! next transaction takes the queue. An idle store sends a write at once, alone.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse,
};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::versions;

/// Transactions in flight at once. Fewer make larger transactions: at 64 clients on a
/// 3-member loopback etcd, 1, 2, 4 and 8 gave 5,623/4,142, 5,110/4,716, 3,029/3,839 and
/// 2,666/2,968 creates/s (`shoal-bench writes --writes 16000`, two rounds); two keep one
/// transaction going while the next forms.
const IN_FLIGHT: usize = 2;
/// The most writes in one transaction (etcd's `--max-txn-ops` defaults to 128).
const MAX_WRITES: usize = 128;
/// The most value bytes in one transaction (etcd's `--max-request-bytes` defaults to
/// 1.5 MiB); a larger single write goes alone.
const MAX_BYTES: usize = 1024 * 1024;

/// One object write.
pub enum Write {
    /// The key must not exist.
    Create { value: Vec<u8> },
    /// The key must exist, at version `precondition` if given.
    Update {
        value: Vec<u8>,
        precondition: Option<u64>,
    },
    /// The key must exist, at version `precondition` if given.
    Delete { precondition: Option<u64> },
}

impl Write {
    fn bytes(&self) -> usize {
        match self {
            Write::Create { value } | Write::Update { value, .. } => value.len(),
            Write::Delete { .. } => 0,
        }
    }

    fn compare(&self, key: &str) -> Compare {
        match self {
            Write::Create { .. } => Compare::create_revision(key, CompareOp::Equal, 0),
            Write::Update { precondition, .. } | Write::Delete { precondition } => {
                match precondition {
                    Some(version) => Compare::mod_revision(
                        key,
                        CompareOp::Equal,
                        versions::expected_mod_revision(*version, key),
                    ),
                    None => Compare::create_revision(key, CompareOp::Greater, 0),
                }
            }
        }
    }

    fn operation(&self, key: &str) -> TxnOp {
        match self {
            Write::Create { value } | Write::Update { value, .. } => {
                TxnOp::put(key, value.clone(), None)
            }
            Write::Delete { .. } => TxnOp::delete(key, Some(DeleteOptions::new().with_prev_key())),
        }
    }

    /// Whether this write's compare holds for the key as `current` is.
    fn judge(&self, key: &str, current: Option<&KeyValue>) -> Option<Refusal> {
        match (self, current) {
            (Write::Create { .. }, None) => None,
            (Write::Create { .. }, Some(_)) => Some(Refusal::Exists),
            (Write::Update { .. } | Write::Delete { .. }, None) => Some(Refusal::Missing),
            (
                Write::Update { precondition, .. } | Write::Delete { precondition },
                Some(current),
            ) => match precondition {
                Some(version)
                    if versions::expected_mod_revision(*version, key) != current.mod_revision() =>
                {
                    Some(Refusal::Moved {
                        current: versions::of(current.mod_revision().max(0) as u64, key),
                    })
                }
                _ => None,
            },
        }
    }
}

/// A write that etcd made.
pub struct Committed {
    /// The etcd revision of the transaction.
    pub revision: u64,
    /// What a delete removed.
    pub previous: Option<Vec<u8>>,
}

/// Why a write was not made.
#[derive(Debug)]
pub enum Refusal {
    /// A create's key exists.
    Exists,
    /// An update's or delete's key does not.
    Missing,
    /// An update's or delete's precondition names another version than the key's, `current`.
    Moved { current: u64 },
    /// etcd did not answer (the whole transaction).
    Unavailable(String),
}

pub type Outcome = std::result::Result<Committed, Refusal>;

struct Pending {
    key: String,
    write: Write,
    answer: oneshot::Sender<Outcome>,
}

/// The queue of writes and the task that commits them.
pub struct GroupCommit {
    queue: mpsc::UnboundedSender<Pending>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GroupCommit {
    pub fn start(client: Client) -> Self {
        let (queue, writes) = mpsc::unbounded_channel();
        Self {
            queue,
            task: tokio::spawn(dispatch(client, writes)),
        }
    }

    /// Writes `write` to etcd `key` in the next transaction.
    pub async fn write(&self, key: String, write: Write) -> Outcome {
        let (answer, answered) = oneshot::channel();
        if self.queue.send(Pending { key, write, answer }).is_err() {
            return Err(Refusal::Unavailable("the etcd store is closed".into()));
        }
        answered
            .await
            .unwrap_or_else(|_| Err(Refusal::Unavailable("the etcd store is closed".into())))
    }
}

/// Takes the queue into transactions, at most [`IN_FLIGHT`] at once.
async fn dispatch(client: Client, mut writes: mpsc::UnboundedReceiver<Pending>) {
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    // Writes that could not join the last transaction (a key or slot it had), oldest first.
    let mut waiting: VecDeque<Pending> = VecDeque::new();
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let first = match waiting.pop_front() {
            Some(first) => first,
            None => match writes.recv().await {
                Some(first) => first,
                None => return,
            },
        };
        let mut bytes = first.write.bytes();
        let mut keys = HashSet::from([first.key.clone()]);
        let mut slots = HashSet::from([versions::slot(&first.key)]);
        let mut batch = vec![first];
        let mut deferred = Vec::new();
        while batch.len() < MAX_WRITES {
            let Some(next) = waiting.pop_front().or_else(|| writes.try_recv().ok()) else {
                break;
            };
            let slot = versions::slot(&next.key);
            if bytes + next.write.bytes() > MAX_BYTES {
                waiting.push_front(next);
                break;
            }
            if keys.contains(&next.key) || slots.contains(&slot) {
                deferred.push(next);
                continue;
            }
            bytes += next.write.bytes();
            keys.insert(next.key.clone());
            slots.insert(slot);
            batch.push(next);
        }
        for pending in deferred.into_iter().rev() {
            waiting.push_front(pending);
        }
        let client = client.clone();
        tokio::spawn(async move {
            commit(client, batch).await;
            drop(permit);
        });
    }
}

/// Commits `batch` in one transaction, answering each write; writes refused by their own
/// compare are answered so, and the rest sent again.
async fn commit(mut client: Client, mut batch: Vec<Pending>) {
    while !batch.is_empty() {
        let txn = Txn::new()
            .when(
                batch
                    .iter()
                    .map(|p| p.write.compare(&p.key))
                    .collect::<Vec<_>>(),
            )
            .and_then(
                batch
                    .iter()
                    .map(|p| p.write.operation(&p.key))
                    .collect::<Vec<_>>(),
            )
            .or_else(
                batch
                    .iter()
                    .map(|p| TxnOp::get(p.key.as_str(), Some(GetOptions::new().with_keys_only())))
                    .collect::<Vec<_>>(),
            );
        let response = match client.txn(txn).await {
            Ok(response) => response,
            Err(e) => {
                let why = format!("etcd: {e}");
                for pending in batch {
                    let _ = pending.answer.send(Err(Refusal::Unavailable(why.clone())));
                }
                return;
            }
        };
        let revision = response.header().map_or(0, |h| h.revision().max(0) as u64);
        let responses = response.op_responses();
        if response.succeeded() {
            for (pending, op) in batch.into_iter().zip(responses.iter()) {
                let previous = match op {
                    TxnOpResponse::Delete(delete) => {
                        delete.prev_kvs().first().map(|kv| kv.value().to_vec())
                    }
                    _ => None,
                };
                let _ = pending.answer.send(Ok(Committed { revision, previous }));
            }
            return;
        }
        let before = batch.len();
        let mut again = Vec::with_capacity(before);
        for (pending, op) in batch.into_iter().zip(responses.iter()) {
            let current = match op {
                TxnOpResponse::Get(get) => get.kvs().first(),
                _ => None,
            };
            match pending.write.judge(&pending.key, current) {
                Some(refusal) => {
                    let _ = pending.answer.send(Err(refusal));
                }
                None => again.push(pending),
            }
        }
        if again.len() == before {
            // etcd refused a transaction whose every compare held by its own reading:
            // answer rather than loop.
            for pending in again {
                let _ = pending.answer.send(Err(Refusal::Unavailable(
                    "etcd refused a transaction whose compares held".into(),
                )));
            }
            return;
        }
        batch = again;
    }
}
