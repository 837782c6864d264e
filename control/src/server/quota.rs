//! ResourceQuota admission: a new object in a namespace with quotas is charged to every quota
//! that tracks it before it is stored. A charge is a compare-and-swap of the quota's
//! `status.used` (the store's precondition on its resourceVersion), so two concurrent creates
//! can never both take the last slot, on one API server or several; a request over a limit is
//! refused with 403 and Kubernetes' message, and nothing is charged for it.
//!
//! Charges are batched per namespace, as Kubernetes' quota evaluator does: requests queue up
//! while one worker charges the batch before them, and the next batch is checked one request
//! after another against the running total and written in one update per quota. Without
//! this, every concurrent create in a namespace would race for the same object and most
//! would lose and retry.
//!
//! A quota not yet counted (just created or changed) is counted here from the store first.
//! What a charged object gives back (deleted, a pod that ended) is returned by the quota
//! controller's recount (`controllers/resourcequota.rs`), which also corrects a charge whose
//! write then failed. Each charge stamps the quota with [`quota::CHARGED_AT`]: a recount must
//! not lower `used` right after a charge, whose object may not be stored yet.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::error::{ApiError, Result};
use super::ApiServer;
use crate::api::object;
use crate::api::quota::{self, Quota, Usage};
use crate::api::resources::ResourceInfo;
use crate::store::{self, revision_of, ObjectKey};

const QUOTAS: &str = "resourcequotas";

/// How often a batch is retried on one quota when another write moved it first.
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
    object: Value,
    /// Refusals name the object so.
    qualified: String,
    dry_run: bool,
    answer: oneshot::Sender<Result<()>>,
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
    /// Charges `object`, about to be created in `namespace`, to the quotas there; with
    /// `dry_run` only checks.
    pub(super) async fn charge_quotas(
        self: &Arc<Self>,
        resource: &ResourceInfo,
        namespace: &str,
        object: &Value,
        dry_run: bool,
    ) -> Result<()> {
        if namespace.is_empty() || resource.is_review() {
            return Ok(());
        }
        let quotas = self
            .store
            .list(QUOTAS, Some(namespace))
            .map_err(|e| ApiError::from_store(e, QUOTAS, ""))?;
        if quotas.objects.is_empty() {
            return Ok(());
        }
        let (answer, answered) = oneshot::channel();
        let charge = Charge {
            usage: quota::usage_of(resource.group, resource.plural, object),
            // Scopes only ever match core pods.
            tracked_as: if resource.group.is_empty() {
                resource.plural
            } else {
                ""
            },
            object: object.clone(),
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

    /// Charges the namespace's queued creates, batch after batch, until none is left.
    async fn charge_queue(&self, namespace: &str) {
        let _charging = Charging {
            queues: &self.quota_queues,
            namespace,
        };
        loop {
            let batch = {
                let mut queues = self.quota_queues.lock();
                let Some(queue) = queues.get_mut(namespace) else {
                    return;
                };
                if queue.pending.is_empty() {
                    queues.remove(namespace);
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
    /// new total once. A create refused by any quota is refused.
    async fn charge_batch(&self, namespace: &str, batch: &[Charge]) -> Vec<Result<()>> {
        let mut outcomes: Vec<Result<()>> = batch.iter().map(|_| Ok(())).collect();
        let quotas = match self.store.list(QUOTAS, Some(namespace)) {
            Ok(quotas) => quotas.objects,
            Err(e) => {
                let why = ApiError::from_store(e, QUOTAS, "").to_string();
                return batch
                    .iter()
                    .map(|_| Err(ApiError::Internal(why.clone())))
                    .collect();
            }
        };
        for listed in &quotas {
            let key = ObjectKey::new(QUOTAS, namespace, object::name(listed));
            let mut attempt = 0;
            loop {
                attempt += 1;
                let Some(current) = self.store.get(&key).ok().flatten() else {
                    break;
                };
                let quota = Quota { object: &current };
                let mut used = if quota.counted() {
                    quota.used()
                } else {
                    self.recount(namespace, &quota)
                };
                // This attempt's refusals; kept only if its write lands.
                let mut refused: Vec<Option<String>> = vec![None; batch.len()];
                let mut charged = false;
                for (i, charge) in batch.iter().enumerate() {
                    if outcomes[i].is_err() || !quota.tracks(charge.tracked_as, &charge.object) {
                        continue;
                    }
                    let requested = quota.limited(&charge.usage);
                    if requested.is_empty() {
                        continue;
                    }
                    match quota.admit(&used, &requested) {
                        Ok(next) if !charge.dry_run => {
                            used = next;
                            charged = true;
                        }
                        Ok(_) => {}
                        Err(why) => refused[i] = Some(why),
                    }
                }
                let written = if charged {
                    self.write_charge(key.clone(), &current, &used).await
                } else {
                    Ok(true)
                };
                match written {
                    Ok(true) => {
                        for (i, why) in refused.into_iter().enumerate() {
                            if let Some(why) = why {
                                let charge = &batch[i];
                                outcomes[i] = Err(ApiError::Forbidden(format!(
                                    "{} {:?} is forbidden: {why}",
                                    charge.qualified,
                                    object::name(&charge.object)
                                )));
                            }
                        }
                        break;
                    }
                    Ok(false) if attempt < ATTEMPTS => continue,
                    Ok(false) => {
                        return fail_all(
                            batch,
                            outcomes,
                            "too many concurrent writes to the namespace's quotas; try again",
                        )
                    }
                    Err(e) => return fail_all(batch, outcomes, &e.to_string()),
                }
            }
        }
        outcomes
    }

    /// Writes `used` as the quota's new total, stamped with the time of the charge; `false`
    /// when another write moved the quota first.
    async fn write_charge(&self, key: ObjectKey, current: &Value, used: &Usage) -> Result<bool> {
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
        let name = key.name.clone();
        match self.store.update(key, charged, revision_of(current)).await {
            Ok(_) => Ok(true),
            Err(store::Error::Conflict { .. }) => Ok(false),
            // Deleted meanwhile: nothing to charge.
            Err(store::Error::NotFound(_)) => Ok(true),
            Err(e) => Err(ApiError::from_store(e, QUOTAS, &name)),
        }
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

/// Every create of the batch not refused already fails with `why`.
fn fail_all(batch: &[Charge], outcomes: Vec<Result<()>>, why: &str) -> Vec<Result<()>> {
    outcomes
        .into_iter()
        .zip(batch)
        .map(|(outcome, charge)| {
            outcome.and_then(|()| {
                Err(ApiError::Forbidden(format!(
                    "{} {:?} is forbidden: {why}",
                    charge.qualified,
                    object::name(&charge.object)
                )))
            })
        })
        .collect()
}
