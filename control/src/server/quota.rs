//! ResourceQuota admission: a new object in a namespace with quotas is charged to every quota
//! that tracks it, and the charge and the object are written together
//! ([`crate::store::Store::create_guarded`]: one commit on redb). A charge is a
//! compare-and-swap of the quota's `status.used` (the store's precondition on its
//! resourceVersion), so two concurrent creates can never both take the last slot, on one API
//! server or several; a request over a limit is refused with 403 and Kubernetes' message, and
//! nothing is charged for it.
//!
//! Charges are batched per namespace, as Kubernetes' quota evaluator does: requests queue up
//! while one worker charges and creates the batch before them, and the next batch is checked
//! one request after another against the running totals (admitted by every quota that tracks
//! it, or charged to none) and written in one commit with one update per quota. Without
//! this, every concurrent create in a namespace would race for the same object and most
//! would lose and retry; and with the charge and the create in separate commits, each create
//! waited for two fsyncs (`shoal-bench quota-writes` measured 58% fewer creates/s).
//!
//! A quota not yet counted (just created or changed) is counted here from the store first.
//! What a charged object gives back (deleted, a pod that ended) is returned by the quota
//! controller's recount (`controllers/resourcequota.rs`), which also corrects a charge whose
//! create then failed. Each charge stamps the quota with [`quota::CHARGED_AT`]: a recount must
//! not lower `used` right after a charge, whose object may not be stored yet where the
//! backend writes them apart (etcd, for now).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::error::{ApiError, Result};
use super::ApiServer;
use crate::api::object;
use crate::api::quota::{self, Quota, Usage};
use crate::api::resources::ResourceInfo;
use crate::store::{self, Guard, ObjectKey};

const QUOTAS: &str = "resourcequotas";

/// How often a batch is checked and written again when another write moved one of its
/// quotas first.
const ATTEMPTS: usize = 32;

/// The charges waiting in each namespace, and whether a worker is charging there.
#[derive(Default)]
pub struct QuotaQueues(Mutex<HashMap<String, Queue>>);

#[derive(Default)]
struct Queue {
    charging: bool,
    pending: Vec<Charge>,
    /// Woken when a create is queued, so the worker can start its batch while others are
    /// still being written.
    arrived: Arc<tokio::sync::Notify>,
}

/// How many batches of a namespace may be written at once, where the store applies guarded
/// writes in order ([`crate::store::Store::orders_guarded_writes`]); one elsewhere.
const PIPELINE: usize = 2;

/// A quota as the batches checked so far leave it.
struct QuotaState {
    key: ObjectKey,
    /// The quota as read (its spec decides what it tracks and allows).
    object: Value,
    used: Usage,
    /// `status.used` as stored, or as the last batch charged to it will store it.
    used_json: Value,
}

/// A batch being written.
struct InFlight {
    batch: Vec<Charge>,
    taken: Vec<bool>,
    refused: Vec<Option<String>>,
    /// Whether it writes anything (a batch of refusals and dry runs does not, and is only
    /// right if the batches before it are).
    wrote: bool,
    write: tokio::task::JoinHandle<store::Result<Vec<store::Result<Value>>>>,
}

impl InFlight {
    /// A batch answered before writing.
    fn answered(batch: Vec<Charge>, taken: Vec<bool>, answers: Vec<Result<Value>>) -> Self {
        for (charge, answer) in batch.into_iter().zip(answers) {
            let _ = charge.answer.send(answer);
        }
        InFlight {
            batch: Vec::new(),
            refused: vec![None; taken.len()],
            taken,
            wrote: false,
            write: tokio::spawn(async { Ok(Vec::new()) }),
        }
    }

    /// Answers each create of the batch from the write's outcome.
    fn answer(self, written: store::Result<Vec<store::Result<Value>>>) {
        let mut created = match written {
            Ok(created) => created.into_iter(),
            Err(e) => {
                let why = ApiError::from_store(e, QUOTAS, "").to_string();
                let answers = fail_all(&self.batch, &self.taken, &why);
                for (charge, answer) in self.batch.into_iter().zip(answers) {
                    let _ = charge.answer.send(answer);
                }
                return;
            }
        };
        for (i, charge) in self.batch.into_iter().enumerate() {
            let outcome = if self.taken[i] {
                Err(charge.already_exists())
            } else if let Some(why) = &self.refused[i] {
                Err(charge.forbidden(why))
            } else if charge.dry_run {
                Ok(charge.object.clone())
            } else {
                match created.next() {
                    Some(Ok(stored)) => Ok(stored),
                    Some(Err(e)) => Err(charge.store_error(e)),
                    None => Err(ApiError::Internal("the store lost a create".into())),
                }
            };
            let _ = charge.answer.send(outcome);
        }
    }
}

/// One create waiting to be charged.
struct Charge {
    usage: Usage,
    /// The plural scopes are matched as (`pods`; empty outside the core group).
    tracked_as: &'static str,
    key: ObjectKey,
    object: Value,
    /// Refusals and store errors name the object so.
    qualified: String,
    dry_run: bool,
    /// The object as stored (as it would be, on a dry run).
    answer: oneshot::Sender<Result<Value>>,
    /// How often its batch was checked again after another write moved a quota first.
    attempts: usize,
}

impl Charge {
    fn forbidden(&self, why: &str) -> ApiError {
        ApiError::Forbidden(format!(
            "{} {:?} is forbidden: {why}",
            self.qualified,
            object::name(&self.object)
        ))
    }

    fn already_exists(&self) -> ApiError {
        self.store_error(store::Error::AlreadyExists(self.key.clone()))
    }

    fn store_error(&self, error: store::Error) -> ApiError {
        ApiError::from_store(error, &self.qualified, object::name(&self.object))
    }
}

impl QuotaQueues {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Queue>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Clears a namespace's `charging` flag however its worker ends (even by panic), so the
/// namespace never waits for a worker that is gone.
struct Charging<'a> {
    queues: &'a QuotaQueues,
    namespace: &'a str,
}

impl Drop for Charging<'_> {
    fn drop(&mut self) {
        let mut queues = self.queues.lock();
        if let Some(queue) = queues.get_mut(self.namespace) {
            queue.charging = false;
            // Answers dropped with their senders tell the waiting requests.
            queue.pending.clear();
        }
    }
}

impl ApiServer {
    /// Creates `object` under `key`, charged to the quotas of `namespace` that track it in the
    /// same store commit; with `dry_run` only checks. Returns the object as stored.
    pub(super) async fn create_charged(
        self: &Arc<Self>,
        resource: &ResourceInfo,
        namespace: &str,
        key: ObjectKey,
        object: Value,
        dry_run: bool,
    ) -> Result<Value> {
        let name = object::name(&object).to_string();
        let uncharged = namespace.is_empty()
            || resource.is_review()
            || !self
                .store
                .any(QUOTAS, Some(namespace))
                .map_err(|e| ApiError::from_store(e, QUOTAS, ""))?;
        if uncharged {
            if dry_run {
                return Ok(object);
            }
            return self
                .store
                .create(key, object)
                .await
                .map_err(|e| ApiError::from_store(e, &resource.qualified_plural(), &name));
        }
        let (answer, answered) = oneshot::channel();
        let charge = Charge {
            usage: quota::usage_of(resource.group, resource.plural, &object),
            // Scopes only ever match core pods.
            tracked_as: if resource.group.is_empty() {
                resource.plural
            } else {
                ""
            },
            key,
            object,
            qualified: resource.qualified_plural(),
            dry_run,
            answer,
            attempts: 0,
        };
        let start_worker = {
            let mut queues = self.quota_queues.lock();
            let queue = queues.entry(namespace.to_string()).or_default();
            queue.pending.push(charge);
            queue.arrived.notify_one();
            !std::mem::replace(&mut queue.charging, true)
        };
        if start_worker {
            let server = self.clone();
            let namespace = namespace.to_string();
            tokio::spawn(async move { server.charge_queue(&namespace).await });
        }
        answered.await.unwrap_or_else(|_| {
            Err(ApiError::Internal(
                "the quota charge was interrupted; try again".into(),
            ))
        })
    }

    /// Charges and creates the namespace's queued creates, batch after batch, until none is
    /// left. Up to [`PIPELINE`] batches are written at once (on redb): the next is composed against
    /// the totals the ones before it will leave (their guards expect exactly those), so it
    /// joins the store's next group commit instead of waiting for theirs.
    async fn charge_queue(&self, namespace: &str) {
        let _charging = Charging {
            queues: &self.quota_queues,
            namespace,
        };
        // The quotas as the batches in flight leave them; `None`: read them from the store.
        let mut states: Option<Vec<QuotaState>> = None;
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        let depth = if self.store.orders_guarded_writes() {
            PIPELINE
        } else {
            1
        };
        loop {
            let arrived = {
                let mut queues = self.quota_queues.lock();
                let Some(queue) = queues.get_mut(namespace) else {
                    return;
                };
                if queue.pending.is_empty() && in_flight.is_empty() {
                    queues.remove(namespace);
                    return;
                }
                queue.arrived.clone()
            };
            let notified = arrived.notified();
            if in_flight.len() < depth {
                let batch = {
                    let mut queues = self.quota_queues.lock();
                    (queues.get_mut(namespace))
                        .map(|queue| std::mem::take(&mut queue.pending))
                        .unwrap_or_default()
                };
                if !batch.is_empty() {
                    in_flight.push_back(self.start_batch(namespace, batch, &mut states));
                    continue;
                }
            }
            // The oldest write ending, or (with room in the pipeline) new creates arriving.
            let room = in_flight.len() < depth;
            let Some(oldest) = in_flight.front_mut() else {
                notified.await;
                continue;
            };
            let written = tokio::select! {
                written = &mut oldest.write => written,
                _ = notified, if room => continue,
            };
            let Some(oldest) = in_flight.pop_front() else {
                continue;
            };
            let written = written.unwrap_or_else(|e| {
                Err(store::Error::Backend(format!(
                    "the quota write stopped: {e}"
                )))
            });
            if written.is_ok() {
                oldest.answer(written);
                continue;
            }
            // Another write moved a quota first (or the store failed): the batches composed
            // on this one's totals are checked again, except those that wrote (they did so
            // against the totals they found, and stand).
            states = None;
            let mut again = Vec::new();
            match written {
                Err(store::Error::Conflict { .. }) => again.push(oldest),
                failed => oldest.answer(failed),
            }
            while let Some(mut next) = in_flight.pop_front() {
                let written = (&mut next.write).await.unwrap_or_else(|e| {
                    Err(store::Error::Backend(format!(
                        "the quota write stopped: {e}"
                    )))
                });
                match written {
                    Ok(created) if next.wrote => next.answer(Ok(created)),
                    Ok(_) | Err(store::Error::Conflict { .. }) => again.push(next),
                    failed => next.answer(failed),
                }
            }
            self.retry(namespace, again);
        }
    }

    /// Puts the charges of `batches` back at the head of the queue, in order; those that
    /// were tried too often are refused.
    fn retry(&self, namespace: &str, batches: Vec<InFlight>) {
        let mut charges = Vec::new();
        for batch in batches {
            for mut charge in batch.batch {
                charge.attempts += 1;
                if charge.attempts >= ATTEMPTS {
                    let why = "too many concurrent writes to the namespace's quotas; try again";
                    let refusal = charge.forbidden(why);
                    let _ = charge.answer.send(Err(refusal));
                } else {
                    charges.push(charge);
                }
            }
        }
        let mut queues = self.quota_queues.lock();
        let queue = queues.entry(namespace.to_string()).or_default();
        charges.append(&mut queue.pending);
        queue.pending = charges;
    }

    /// Checks each create of `batch` in order against each quota's projected total (admitted
    /// by every quota that tracks it, or charged to none) and starts writing the quotas'
    /// new totals and the admitted objects in one commit, each quota guarded by the spec and
    /// total the batch was checked against.
    fn start_batch(
        &self,
        namespace: &str,
        batch: Vec<Charge>,
        states: &mut Option<Vec<QuotaState>>,
    ) -> InFlight {
        // A name already taken (or taken twice in the batch) fails now, before it is charged:
        // a charge whose create then failed would hold its slot until the next recount.
        let mut seen = std::collections::HashSet::new();
        let taken: Vec<bool> = batch
            .iter()
            .map(|charge| {
                let twice = !charge.dry_run && !seen.insert(charge.key.clone());
                twice || matches!(self.store.get(&charge.key), Ok(Some(_)))
            })
            .collect();
        if states.is_none() {
            match self.read_states(namespace) {
                Ok(read) => *states = Some(read),
                Err(why) => {
                    let answers = fail_all(&batch, &taken, &why);
                    return InFlight::answered(batch, taken, answers);
                }
            }
        }
        let states = states.get_or_insert_with(Vec::new);
        let before: Vec<Value> = states.iter().map(|s| s.used_json.clone()).collect();
        let mut charged = vec![false; states.len()];
        let mut refused: Vec<Option<String>> = vec![None; batch.len()];
        for (i, charge) in batch.iter().enumerate() {
            if taken[i] {
                continue;
            }
            let mut next_totals = Vec::new();
            for (q, state) in states.iter().enumerate() {
                let quota = Quota {
                    object: &state.object,
                };
                if !quota.tracks(charge.tracked_as, &charge.object) {
                    continue;
                }
                let requested = quota.limited(&charge.usage);
                if requested.is_empty() {
                    continue;
                }
                match quota.admit(&state.used, &requested) {
                    Ok(next) => next_totals.push((q, next)),
                    Err(why) => {
                        refused[i] = Some(why);
                        break;
                    }
                }
            }
            if refused[i].is_none() && !charge.dry_run {
                for (q, next) in next_totals {
                    states[q].used = next;
                    charged[q] = true;
                }
            }
        }
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let charged_at = format!(
            "/metadata/annotations/{}",
            quota::CHARGED_AT.replace('/', "~1")
        );
        let mut guards = Vec::new();
        for (q, state) in states.iter_mut().enumerate().filter(|(q, _)| charged[*q]) {
            state.used_json = quota::to_json(&state.used);
            let spec = state.object.get("spec").cloned().unwrap_or(Value::Null);
            let hard = spec.get("hard").cloned().unwrap_or_else(|| json!({}));
            guards.push(Guard {
                key: state.key.clone(),
                expect: vec![
                    ("/spec".into(), spec),
                    ("/status/used".into(), before[q].clone()),
                ],
                set: vec![
                    ("/status/used".into(), state.used_json.clone()),
                    ("/status/hard".into(), hard),
                    (charged_at.clone(), Value::String(now.clone())),
                ],
            });
        }
        let creates: Vec<(ObjectKey, Value)> = (0..batch.len())
            .filter(|&i| !taken[i] && refused[i].is_none() && !batch[i].dry_run)
            .map(|i| (batch[i].key.clone(), batch[i].object.clone()))
            .collect();
        let wrote = !(creates.is_empty() && guards.is_empty());
        let write = if wrote {
            let store = self.store.clone();
            let mut write = Box::pin(async move { store.create_guarded(guards, creates).await });
            // Polled once here, the write reaches the store's writer now, in the order the
            // batches start (the next one expects what this one writes); its task then waits.
            let mut first = std::task::Context::from_waker(futures::task::noop_waker_ref());
            match write.as_mut().poll(&mut first) {
                std::task::Poll::Ready(written) => tokio::spawn(async move { written }),
                std::task::Poll::Pending => tokio::spawn(write),
            }
        } else {
            tokio::spawn(async { Ok(Vec::new()) })
        };
        InFlight {
            batch,
            taken,
            refused,
            wrote,
            write,
        }
    }

    /// The namespace's quotas as stored, each counted (from the store, if it was not yet).
    fn read_states(&self, namespace: &str) -> std::result::Result<Vec<QuotaState>, String> {
        let quotas = self
            .store
            .list(QUOTAS, Some(namespace))
            .map_err(|e| ApiError::from_store(e, QUOTAS, "").to_string())?;
        Ok(quotas
            .objects
            .into_iter()
            .map(|current| {
                let quota = Quota { object: &current };
                let used = if quota.counted() {
                    quota.used()
                } else {
                    self.recount(namespace, &quota)
                };
                QuotaState {
                    key: ObjectKey::new(QUOTAS, namespace, object::name(&current)),
                    used_json: current
                        .pointer("/status/used")
                        .cloned()
                        .unwrap_or(Value::Null),
                    used,
                    object: current,
                }
            })
            .collect())
    }

    /// What `quota` limits, counted from the objects of `namespace` in the store.
    fn recount(&self, namespace: &str, quota: &Quota) -> Usage {
        quota.recount(|group, plural| {
            let store_name = if group.is_empty() {
                plural.to_string()
            } else {
                format!("{plural}.{group}")
            };
            self.store
                .list(&store_name, Some(namespace))
                .map(|listing| listing.objects)
                .unwrap_or_default()
        })
    }
}

/// Every create of the batch fails: a name already taken says so, the others say `why`.
fn fail_all(batch: &[Charge], taken: &[bool], why: &str) -> Vec<Result<Value>> {
    batch
        .iter()
        .zip(taken)
        .map(|(charge, &taken)| {
            Err(if taken {
                charge.already_exists()
            } else {
                charge.forbidden(why)
            })
        })
        .collect()
}
