//! ResourceQuota admission: a new object in a namespace with quotas is charged to every quota
//! that tracks it, and the charge and the object are written in one store commit
//! ([`crate::store::Store::create_admitted`]), so two concurrent creates can never both take
//! the last slot, on one API server or several; a request over a limit is refused with 403
//! and Kubernetes' message, and nothing is charged for it.
//!
//! [`QuotaCharge`] is the judgement: it runs inside the commit (redb's writer), against the
//! namespace's quotas as that commit has them, so concurrent creates are judged one after
//! another and a namespace's quotas are written once per commit. On a backend that judges
//! outside its commits (etcd), concurrent creates would race for the quotas' revisions, so
//! they are batched per namespace, as Kubernetes' quota evaluator does: requests queue up
//! while one worker charges and creates the batch before them.
//!
//! A quota not yet counted (just created or changed) is counted in the commit first. What a
//! charged object gives back (deleted, a pod that ended) is returned by the quota
//! controller's recount (`controllers/resourcequota.rs`). Each charge stamps the quota with
//! [`quota::CHARGED_AT`]: a recount must not lower `used` right after a charge, whose object
//! may not be stored yet where the backend writes them apart (etcd, for now).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::error::{ApiError, Result};
use super::ApiServer;
use crate::api::object;
use crate::api::quota::{self, Quota, Usage};
use crate::api::resources::ResourceInfo;
use crate::store::admission::{self, GuardMemo, Lister};
use crate::store::{Admission, AdmittedCreate, GuardScope, Guarded, NotCreated, ObjectKey};

const QUOTAS: &str = "resourcequotas";

/// What one create uses, as the namespace's quotas judge it.
struct QuotaCharge {
    namespace: String,
    usage: Usage,
    /// The plural scopes are matched as (`pods`; empty outside the core group).
    tracked_as: &'static str,
    /// The pod itself, which scoped quotas look into; nothing for other kinds, which scoped
    /// quotas never track.
    pod: Option<Value>,
}

impl QuotaCharge {
    fn new(resource: &ResourceInfo, namespace: &str, object: &Value) -> Self {
        // Scopes only ever match core pods.
        let tracked_as = if resource.group.is_empty() {
            resource.plural
        } else {
            ""
        };
        Self {
            namespace: namespace.to_string(),
            usage: quota::usage_of(resource.group, resource.plural, object),
            tracked_as,
            pod: (tracked_as == "pods").then(|| object.clone()),
        }
    }
}

impl Admission for QuotaCharge {
    /// Admitted by every quota that tracks the create, or refused by the first that does not
    /// (and then charged to none). Each quota is parsed once per commit into its guard's memo
    /// ([`Charged`]), which the creates after charge in turn.
    fn admit(&self, guards: &mut [Guarded], list: &mut Lister<'_>) -> Result<(), String> {
        let object = self.pod.as_ref().unwrap_or(&Value::Null);
        let mut charges = Vec::new();
        for (at, guard) in guards.iter_mut().enumerate() {
            let tally = &mut Charged::of(&mut guard.memo, &mut guard.object).tally;
            if !tally.tracks(self.tracked_as, object) {
                continue;
            }
            let recount = || {
                Quota {
                    object: &guard.object,
                }
                .recount(|group, plural| {
                    let resource = if group.is_empty() {
                        plural.to_string()
                    } else {
                        format!("{plural}.{group}")
                    };
                    list(&resource, &self.namespace)
                })
            };
            if let Some(charged) = tally.charge(&self.usage, recount) {
                charges.push((at, charged?));
            }
        }
        for (at, used) in charges {
            let guard = &mut guards[at];
            let memo = Charged::of(&mut guard.memo, &mut guard.object);
            memo.tally.record(used);
            memo.charged = true;
            guard.changed = true;
        }
        Ok(())
    }
}

/// A quota's memo in its guard: parsed once per commit, charged by each create, and written
/// into the quota when the commit writes it.
struct Charged {
    tally: quota::Tally,
    /// Whether a create was charged (a quota only counted is not written).
    charged: bool,
}

impl Charged {
    /// A guard's memo, made from its object the first time.
    fn of<'m>(memo: &'m mut Option<Box<dyn GuardMemo>>, object: &mut Value) -> &'m mut Charged {
        let ours = memo
            .as_mut()
            .is_some_and(|memo| memo.as_any_mut().is::<Charged>());
        if !ours {
            // Another admission's memo is written into the object before it is parsed.
            if let Some(theirs) = memo.take() {
                theirs.settle(object);
            }
            let tally = quota::Tally::of(&Quota { object });
            *memo = Some(Box::new(Charged {
                tally,
                charged: false,
            }));
        }
        memo.as_mut()
            .and_then(|memo| memo.as_any_mut().downcast_mut::<Charged>())
            .expect("the memo was just made a Charged")
    }
}

impl GuardMemo for Charged {
    /// Sets the quota's new total, stamped with the time of the charge.
    fn settle(self: Box<Self>, quota: &mut Value) {
        let Some(used) = self.tally.used().filter(|_| self.charged) else {
            return;
        };
        if quota.pointer("/status/hard") != quota.pointer("/spec/hard") {
            let hard = quota.pointer("/spec/hard").cloned().unwrap_or_default();
            object::set_at(quota, "/status/hard", hard);
        }
        let annotations = object::metadata_mut(quota)
            .entry("annotations")
            .or_insert_with(|| json!({}));
        if let Some(annotations) = annotations.as_object_mut() {
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            annotations.insert(quota::CHARGED_AT.into(), Value::String(now));
        }
        object::set_at(quota, "/status/used", quota::to_json(used));
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// The charges waiting in each namespace, and whether a worker is charging there (for
/// backends that judge outside their commits).
#[derive(Default)]
pub struct QuotaQueues(Mutex<HashMap<String, Queue>>);

#[derive(Default)]
struct Queue {
    charging: bool,
    pending: Vec<Charge>,
}

/// One create waiting to be charged, and where its outcome goes.
struct Charge {
    create: AdmittedCreate,
    answer: oneshot::Sender<Result<Value, NotCreated>>,
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
        let qualified = resource.qualified_plural();
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
                .map_err(|e| ApiError::from_store(e, &qualified, &name));
        }
        let charge = QuotaCharge::new(resource, namespace, &object);
        let outcome = if dry_run {
            self.judge_dry_run(namespace, &charge).map(|()| object)
        } else {
            let create = AdmittedCreate {
                key,
                object,
                admission: Box::new(charge),
            };
            if self.store.admits_in_commit() {
                let scope = GuardScope::new(QUOTAS, namespace);
                match self.store.create_admitted(&scope, vec![create]).await {
                    Ok(mut outcomes) => {
                        outcomes.pop().unwrap_or_else(|| Err(store_lost_a_create()))
                    }
                    Err(e) => Err(e.into()),
                }
            } else {
                self.create_queued(namespace, create).await
            }
        };
        outcome.map_err(|refused| match refused {
            NotCreated::Refused(why) => {
                ApiError::Forbidden(format!("{qualified} {name:?} is forbidden: {why}"))
            }
            NotCreated::Store(e) => ApiError::from_store(e, &qualified, &name),
        })
    }

    /// Judges a dry-run create against the namespace's quotas as stored, writing nothing.
    fn judge_dry_run(&self, namespace: &str, charge: &QuotaCharge) -> Result<(), NotCreated> {
        let scope = GuardScope::new(QUOTAS, namespace);
        let mut guards = admission::stored_guards(self.store.as_ref(), &scope)?;
        charge
            .admit(
                &mut guards,
                &mut admission::stored_lister(self.store.as_ref()),
            )
            .map_err(NotCreated::Refused)
    }

    /// Queues `create` for the namespace's batch worker (started if none is running) and
    /// waits for its outcome.
    async fn create_queued(
        self: &Arc<Self>,
        namespace: &str,
        create: AdmittedCreate,
    ) -> Result<Value, NotCreated> {
        let (answer, answered) = oneshot::channel();
        let start_worker = {
            let mut queues = self.quota_queues.lock();
            let queue = queues.entry(namespace.to_string()).or_default();
            queue.pending.push(Charge { create, answer });
            !std::mem::replace(&mut queue.charging, true)
        };
        if start_worker {
            let server = self.clone();
            let namespace = namespace.to_string();
            tokio::spawn(async move { server.charge_queue(&namespace).await });
        }
        answered.await.unwrap_or_else(|_| {
            Err(crate::store::Error::Unavailable(
                "the quota charge was interrupted; try again".into(),
            )
            .into())
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
        let scope = GuardScope::new(QUOTAS, namespace);
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
            let (creates, answers): (Vec<_>, Vec<_>) = batch
                .into_iter()
                .map(|charge| (charge.create, charge.answer))
                .unzip();
            match self.store.create_admitted(&scope, creates).await {
                Ok(outcomes) => {
                    for (answer, outcome) in answers.into_iter().zip(outcomes) {
                        let _ = answer.send(outcome);
                    }
                }
                Err(e) => {
                    let why = e.to_string();
                    for answer in answers {
                        let _ =
                            answer.send(Err(crate::store::Error::Unavailable(why.clone()).into()));
                    }
                }
            }
        }
    }
}

fn store_lost_a_create() -> NotCreated {
    crate::store::Error::Backend("the store lost a create".into()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configmap_charge() -> QuotaCharge {
        let resource = crate::api::resources::lookup_name("configmaps").expect("configmaps");
        QuotaCharge::new(resource, "team", &json!({"metadata": {"name": "m"}}))
    }

    /// Creates in one commit charge the quotas' memos; the objects change only when settled,
    /// and a quota that limits nothing of them is neither charged nor stamped.
    #[test]
    fn charges_add_up_in_the_memo_and_are_written_when_settled() {
        let maps = json!({"metadata": {"name": "maps", "resourceVersion": "7"},
            "spec": {"hard": {"configmaps": "2"}},
            "status": {"hard": {"configmaps": "2"}, "used": {"configmaps": "0"}}});
        let pods = json!({"metadata": {"name": "pods"}, "spec": {"hard": {"pods": "1"}}});
        let mut guards = vec![Guarded::new(maps.clone()), Guarded::new(pods.clone())];
        let mut lists = 0;
        let mut list = |_: &str, _: &str| {
            lists += 1;
            Vec::new()
        };
        let charge = configmap_charge();
        charge.admit(&mut guards, &mut list).unwrap();
        charge.admit(&mut guards, &mut list).unwrap();
        let refused = charge.admit(&mut guards, &mut list).unwrap_err();
        assert_eq!(
            refused,
            "exceeded quota: maps, requested: configmaps=1, used: configmaps=2, limited: configmaps=2"
        );
        assert_eq!(lists, 0, "both quotas had counted, or limit nothing here");
        assert_eq!(guards[0].object, maps, "charged in the memo only");
        assert!(guards[0].changed && !guards[1].changed);
        let [charged, untouched]: [Guarded; 2] = guards.try_into().ok().unwrap();
        let charged = charged.into_settled();
        assert_eq!(charged["status"]["used"], json!({"configmaps": "2"}));
        assert!(charged["metadata"]["annotations"][quota::CHARGED_AT].is_string());
        assert_eq!(charged["metadata"]["resourceVersion"], "7");
        assert_eq!(untouched.into_settled(), pods);
    }

    /// A quota that has not counted yet counts once, in the commit, then adds up.
    #[test]
    fn an_uncounted_quota_is_counted_once_per_commit() {
        let fresh = json!({"metadata": {"name": "maps"}, "spec": {"hard": {"configmaps": "5"}}});
        let mut guards = vec![Guarded::new(fresh)];
        let mut lists = 0;
        let mut list = |resource: &str, namespace: &str| {
            assert_eq!((resource, namespace), ("configmaps", "team"));
            lists += 1;
            vec![json!({"metadata": {"name": "old"}})]
        };
        let charge = configmap_charge();
        for _ in 0..3 {
            charge.admit(&mut guards, &mut list).unwrap();
        }
        assert_eq!(lists, 1);
        let [charged]: [Guarded; 1] = guards.try_into().ok().unwrap();
        let charged = charged.into_settled();
        assert_eq!(charged["status"]["used"], json!({"configmaps": "4"}));
        assert_eq!(charged["status"]["hard"], json!({"configmaps": "5"}));
    }
}
