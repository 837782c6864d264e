//! ResourceQuota admission: a new object in a namespace with quotas is charged to every quota
//! that tracks it before it is stored. Each charge is a compare-and-swap of the quota's
//! `status.used` (the store's precondition on its resourceVersion), so two concurrent creates
//! can never both take the last slot, on one API server or several; a request over a limit is
//! refused with 403 and Kubernetes' message, and nothing is charged for it. A quota not yet
//! counted (just created or changed) is counted here from the store first. What a charged
//! object gives back (deleted, a pod that ended) is returned by the quota controller's
//! recount (`controllers/resourcequota.rs`), which also corrects a charge whose write then
//! failed. Each charge stamps the quota with [`quota::CHARGED_AT`]: a recount must not lower
//! `used` right after a charge, whose object may not be stored yet.

use serde_json::Value;

use super::error::{ApiError, Result};
use super::ApiServer;
use crate::api::object;
use crate::api::quota::{self, Quota};
use crate::api::resources::ResourceInfo;
use crate::store::{self, revision_of, ObjectKey};

const QUOTAS: &str = "resourcequotas";

/// How often a charge is retried when another write moved the quota first.
const ATTEMPTS: usize = 32;

impl ApiServer {
    /// Charges `object`, about to be created in `namespace`, to the quotas there; with
    /// `dry_run` only checks.
    pub(super) async fn charge_quotas(
        &self,
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
        let usage = quota::usage_of(resource.group, resource.plural, object);
        // Scopes only ever match core pods.
        let tracked_as = if resource.group.is_empty() {
            resource.plural
        } else {
            ""
        };
        let refuse = |why: String| {
            ApiError::Forbidden(format!(
                "{} {:?} is forbidden: {why}",
                resource.qualified_plural(),
                object::name(object)
            ))
        };
        for listed in &quotas.objects {
            let key = ObjectKey::new(QUOTAS, namespace, object::name(listed));
            for attempt in 0.. {
                if attempt == ATTEMPTS {
                    return Err(refuse(
                        "too many concurrent writes to the namespace's quotas; try again".into(),
                    ));
                }
                let Some(current) = self.store.get(&key).ok().flatten() else {
                    break;
                };
                let quota = Quota { object: &current };
                let requested = quota.limited(&usage);
                if requested.is_empty() || !quota.tracks(tracked_as, object) {
                    break;
                }
                let used = if quota.counted() {
                    quota.used()
                } else {
                    self.recount(namespace, &quota)
                };
                let next = quota.admit(&used, &requested).map_err(refuse)?;
                if dry_run {
                    break;
                }
                let mut charged = current.clone();
                object::metadata_mut(&mut charged)
                    .entry("annotations")
                    .or_insert_with(|| serde_json::json!({}))
                    .as_object_mut()
                    .map(|annotations| {
                        annotations.insert(
                            quota::CHARGED_AT.into(),
                            Value::String(
                                chrono::Utc::now()
                                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                            ),
                        )
                    });
                let hard = current.pointer("/spec/hard").cloned().unwrap_or_default();
                object::set_at(&mut charged, "/status/hard", hard);
                object::set_at(&mut charged, "/status/used", quota::to_json(&next));
                match self
                    .store
                    .update(key.clone(), charged, revision_of(&current))
                    .await
                {
                    Ok(_) => break,
                    Err(store::Error::Conflict { .. }) => continue,
                    Err(store::Error::NotFound(_)) => break,
                    Err(e) => return Err(ApiError::from_store(e, QUOTAS, quota.name())),
                }
            }
        }
        Ok(())
    }

    /// What `quota` limits, counted from the objects of `namespace` in the store.
    fn recount(&self, namespace: &str, quota: &Quota) -> quota::Usage {
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
