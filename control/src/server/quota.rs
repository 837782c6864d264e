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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::error::{ApiError, Result};
use super::ApiServer;
use crate::api::object;
use crate::api::quota::{self, Quota, Usage};
use crate::api::resources::ResourceInfo;
use crate::store::{self, revision_of, Guard, ObjectKey};

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

/// Clears a namespace's `charging` flag if its worker ends abnormally (a panic, or its task
/// cancelled), so the namespace never waits for a worker that is gone. A worker that ends
/// normally removes the namespace's queue itself, under the lock, and sets `finished`: by the
/// time this drops, a new request may have made a new queue with a new worker, whose charges
/// this must not drop (it did, answering them "interrupted").
struct Charging<'a> {
    queues: &'a QuotaQueues,
    namespace: &'a str,
    finished: bool,
}

impl Drop for Charging<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
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
        };
        let start_worker = {
            let mut queues = self.quota_queues.lock();
            let queue = queues.entry(namespace.to_string()).or_default();
            queue.pending.push(charge);
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
    /// left.
    async fn charge_queue(&self, namespace: &str) {
        let mut charging = Charging {
            queues: &self.quota_queues,
            namespace,
            finished: false,
        };
        loop {
            let batch = {
                let mut queues = self.quota_queues.lock();
                let Some(queue) = queues.get_mut(namespace) else {
                    charging.finished = true;
                    return;
                };
                if queue.pending.is_empty() {
                    queues.remove(namespace);
                    charging.finished = true;
                    return;
                }
                std::mem::take(&mut queue.pending)
            };
            let outcomes = self.charge_batch(namespace, &batch).await;
            for (charge, outcome) in batch.into_iter().zip(outcomes) {
                let _ = charge.answer.send(outcome);
            }
        }
    }

    /// Checks each create of `batch` in order against each quota, then writes each quota's
    /// new total and the admitted objects in one commit, its guards the quotas as they were
    /// read: when another write moved one first, the batch is checked again. A create
    /// refused by any quota is refused.
    async fn charge_batch(&self, namespace: &str, batch: &[Charge]) -> Vec<Result<Value>> {
        // A name already taken (or taken twice in the batch) fails now, before it is charged:
        // a charge whose create then failed would hold its slot until the next recount.
        let mut seen = std::collections::HashSet::new();
        let taken: Vec<bool> = batch
            .iter()
            .map(|charge| {
                let twice = !charge.dry_run && !seen.insert(&charge.key);
                twice || matches!(self.store.get(&charge.key), Ok(Some(_)))
            })
            .collect();
        for _attempt in 0..ATTEMPTS {
            let quotas = match self.store.list(QUOTAS, Some(namespace)) {
                Ok(quotas) => quotas.objects,
                Err(e) => {
                    let why = ApiError::from_store(e, QUOTAS, "").to_string();
                    return fail_all(batch, &taken, &why);
                }
            };
            // Each quota as read: its key, the object, the running total, whether charged.
            let mut states: Vec<(ObjectKey, Value, Usage, bool)> = Vec::new();
            for current in quotas {
                let key = ObjectKey::new(QUOTAS, namespace, object::name(&current));
                let quota = Quota { object: &current };
                let used = if quota.counted() {
                    quota.used()
                } else {
                    self.recount(namespace, &quota)
                };
                states.push((key, current, used, false));
            }
            // Each create in order: admitted by every quota tracking it, or refused by the
            // first that does not (and then charged to none).
            let mut refused: Vec<Option<String>> = vec![None; batch.len()];
            for (i, charge) in batch.iter().enumerate() {
                if taken[i] {
                    continue;
                }
                let mut next_totals = Vec::new();
                for (q, (_, current, used, _)) in states.iter().enumerate() {
                    let quota = Quota { object: current };
                    if !quota.tracks(charge.tracked_as, &charge.object) {
                        continue;
                    }
                    let requested = quota.limited(&charge.usage);
                    if requested.is_empty() {
                        continue;
                    }
                    match quota.admit(used, &requested) {
                        Ok(next) => next_totals.push((q, next)),
                        Err(why) => {
                            refused[i] = Some(why);
                            break;
                        }
                    }
                }
                if refused[i].is_none() && !charge.dry_run {
                    for (q, next) in next_totals {
                        states[q].2 = next;
                        states[q].3 = true;
                    }
                }
            }
            let guards: Vec<Guard> = states
                .iter()
                .filter(|(_, _, _, charged)| *charged)
                .filter_map(|(key, current, used, _)| {
                    Some(Guard {
                        key: key.clone(),
                        object: charged_quota(current, used),
                        precondition: revision_of(current)?,
                    })
                })
                .collect();
            let creates: Vec<(ObjectKey, Value)> = (0..batch.len())
                .filter(|&i| !taken[i] && refused[i].is_none() && !batch[i].dry_run)
                .map(|i| (batch[i].key.clone(), batch[i].object.clone()))
                .collect();
            let written = if creates.is_empty() && guards.is_empty() {
                Ok(Vec::new())
            } else {
                self.store.create_guarded(guards, creates).await
            };
            let mut created = match written {
                Ok(created) => created.into_iter(),
                Err(store::Error::Conflict { .. }) => continue,
                Err(e) => {
                    let why = ApiError::from_store(e, QUOTAS, "").to_string();
                    return fail_all(batch, &taken, &why);
                }
            };
            let mut outcomes = Vec::with_capacity(batch.len());
            for (i, charge) in batch.iter().enumerate() {
                outcomes.push(if taken[i] {
                    Err(charge.already_exists())
                } else if let Some(why) = &refused[i] {
                    Err(charge.forbidden(why))
                } else if charge.dry_run {
                    Ok(charge.object.clone())
                } else {
                    match created.next() {
                        Some(Ok(stored)) => Ok(stored),
                        Some(Err(e)) => Err(charge.store_error(e)),
                        None => Err(ApiError::Internal("the store lost a create".into())),
                    }
                });
            }
            return outcomes;
        }
        fail_all(
            batch,
            &taken,
            "too many concurrent writes to the namespace's quotas; try again",
        )
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

/// `current` with `used` as its new total, stamped with the time of the charge.
fn charged_quota(current: &Value, used: &Usage) -> Value {
    let mut charged = current.clone();
    let annotations = object::metadata_mut(&mut charged)
        .entry("annotations")
        .or_insert_with(|| json!({}));
    if let Some(annotations) = annotations.as_object_mut() {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        annotations.insert(quota::CHARGED_AT.into(), Value::String(now));
    }
    let hard = current.pointer("/spec/hard").cloned().unwrap_or_default();
    object::set_at(&mut charged, "/status/hard", hard);
    object::set_at(&mut charged, "/status/used", quota::to_json(used));
    charged
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
