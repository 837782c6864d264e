//! The quota controller: keeps each ResourceQuota's `status` (`hard` and `used`) equal to
//! what its namespace holds. Admission charges new objects (`server/quota.rs`); this recounts
//! when a quota is created or its spec changes (not on the status writes of charges), when
//! something it counts goes away (deleted, or a pod
//! ending or being deleted), and every [`RESYNC`] (kinds it counts through `count/…` that it
//! does not watch). The recount reads the quota first and writes its status with that
//! resourceVersion as a precondition, so a charge made meanwhile is never overwritten: the
//! recount starts over instead. A recount lowers `used` only once the last charge is
//! [`quota::CHARGE_SETTLE`] old (a charged object may not be stored yet; raising is always
//! safe).

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Pod, ReplicationController, ResourceQuota, Secret, Service,
};
use serde_json::json;

use super::runtime::{all_in_namespace, Action, Reconciler};
use super::Error;
use crate::api::quota::{self, Quota};
use crate::api::resources::lookup_name;
use crate::client::Client;

/// How often every quota is recounted (Kubernetes' quota controller resyncs every 5 min).
const RESYNC: Duration = Duration::from_secs(60);

pub async fn run(client: Client) {
    super::first_of::<ResourceQuota>(&client).await;
    let reconciler =
        Reconciler::<ResourceQuota>::new_on_change_of("resourcequota", &client, spec_of);
    let quotas = reconciler.store();
    let in_namespace = move |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        all_in_namespace(&quotas, meta.namespace.as_deref().unwrap_or(""))
    };
    let (a, b, c, d, e, f) = (
        in_namespace.clone(),
        in_namespace.clone(),
        in_namespace.clone(),
        in_namespace.clone(),
        in_namespace.clone(),
        in_namespace,
    );
    reconciler
        .watches_releases::<Pod, _>(pod_released, move |pod| a(&pod.metadata))
        .watches_releases::<Service, _>(never, move |o| b(&o.metadata))
        .watches_releases::<ConfigMap, _>(never, move |o| c(&o.metadata))
        .watches_releases::<Secret, _>(never, move |o| d(&o.metadata))
        .watches_releases::<PersistentVolumeClaim, _>(never, move |o| e(&o.metadata))
        .watches_releases::<ReplicationController, _>(never, move |o| f(&o.metadata))
        .run(move |quota| reconcile(client.clone(), quota))
        .await
}

/// What wakes a quota's recount when it changes: its spec (and identity), not its status,
/// which admission's charges write on every batch of creates.
fn spec_of(quota: &ResourceQuota) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    quota.metadata.uid.hash(&mut hasher);
    serde_json::to_string(&quota.spec).ok()?.hash(&mut hasher);
    Some(hasher.finish())
}

/// A pod gives its share back once it is being deleted or has ended.
fn pod_released(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
        || pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|phase| phase == "Succeeded" || phase == "Failed")
}

/// Only deletions release.
fn never<C>(_: &C) -> bool {
    false
}

async fn reconcile(client: Client, quota: Arc<ResourceQuota>) -> Result<Action, Error> {
    let namespace = quota.metadata.namespace.clone().unwrap_or_default();
    let name = quota.metadata.name.clone().unwrap_or_default();
    let path = format!("/api/v1/namespaces/{namespace}/resourcequotas/{name}");
    // Read first: its resourceVersion guards the status written below.
    let Some(current) = super::read_fresh(&client, &path).await? else {
        return Ok(Action::AwaitChange);
    };
    let counted = Quota { object: &current };
    let mut listings = Vec::new();
    for (group, plural) in counted
        .hard()
        .keys()
        .filter_map(|limit| quota::counted_kind(limit))
    {
        let qualified = if group.is_empty() {
            plural.clone()
        } else {
            format!("{plural}.{group}")
        };
        // Kinds the server does not serve (a custom kind) count nothing.
        let Some(resource) = lookup_name(&qualified) else {
            continue;
        };
        let list = format!(
            "{}/namespaces/{namespace}/{}",
            resource.group_version_path(),
            resource.plural
        );
        let items = match client
            .json(Method::GET, &list, "application/json", None)
            .await
        {
            Ok(listed) => listed["items"].as_array().cloned().unwrap_or_default(),
            Err(e) if e.is_not_found() => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        listings.push(((group, plural), items));
    }
    let used = counted.recount(|group, plural| {
        listings
            .iter()
            .find(|((g, p), _)| g == group && p == plural)
            .map(|(_, items)| items.clone())
            .unwrap_or_default()
    });
    let hard = current.pointer("/spec/hard").cloned().unwrap_or(json!({}));
    let status = json!({"hard": hard, "used": quota::to_json(&used)});
    if current.get("status") == Some(&status) {
        return Ok(Action::RequeueAfter(RESYNC));
    }
    // Lowering `used` right after a charge could miss an object still on its way into the
    // store: wait until the last charge has settled.
    let charged = counted.used();
    let lowers = used
        .iter()
        .any(|(name, amount)| charged.get(name).is_some_and(|c| amount < c));
    if lowers {
        let stamp = crate::api::object::str_at(
            &current,
            &format!(
                "/metadata/annotations/{}",
                quota::CHARGED_AT.replace('/', "~1")
            ),
        );
        if let Ok(at) = chrono::DateTime::parse_from_rfc3339(stamp) {
            let age = (chrono::Utc::now() - at.with_timezone(&chrono::Utc))
                .to_std()
                .unwrap_or_default();
            if age < quota::CHARGE_SETTLE {
                return Ok(Action::RequeueAfter(quota::CHARGE_SETTLE - age));
            }
        }
    }
    // A charge (or another recount) made meanwhile makes this count again.
    super::write_status_if_unchanged(
        &client,
        &path,
        &current,
        status,
        Action::RequeueAfter(RESYNC),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_spec_change_wakes_a_recount() {
        let quota: ResourceQuota = serde_json::from_value(json!({
            "metadata": {"name": "q", "uid": "u1"},
            "spec": {"hard": {"pods": "2"}},
        }))
        .unwrap();
        let mut charged = quota.clone();
        charged.status = serde_json::from_value(json!({"used": {"pods": "1"}})).unwrap();
        assert_eq!(spec_of(&quota), spec_of(&charged), "a charge is no change");
        let mut raised = quota.clone();
        raised.spec = serde_json::from_value(json!({"hard": {"pods": "3"}})).unwrap();
        assert_ne!(spec_of(&quota), spec_of(&raised));
        let mut recreated = quota.clone();
        recreated.metadata.uid = Some("u2".into());
        assert_ne!(spec_of(&quota), spec_of(&recreated));
    }
}
