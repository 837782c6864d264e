//! The namespace controller: a namespace being deleted is emptied through the API (every
//! namespaced kind; pods gracefully, through their agents; owners' dependents by the garbage
//! collector), then its `kubernetes` finalizer is removed through
//! `namespaces/{name}/finalize`, and the API server deletes it once no finalizer is left
//! (others' finalizers hold it until their owners remove them, as on Kubernetes).
//!
//! Level-triggered like every controller: a restarted control plane picks up namespaces that
//! were terminating. While content remains it looks again shortly (pods end on their agents'
//! schedule, which no watch here follows).

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use k8s_openapi::api::core::v1::Namespace;
use serde_json::{json, Value};

use super::runtime::Action;
use super::Error;
use crate::api::resources::RESOURCES;
use crate::client::Client;

/// The finalizer this controller owns.
pub const FINALIZER: &str = "kubernetes";

/// How soon a namespace whose content is still going is looked at again.
const RECHECK: Duration = Duration::from_millis(250);

/// Runs on kube-runtime's `Controller` ([`super::runtime`]): the namespace comes from its cache.
pub async fn run(client: Client) {
    super::runtime::Reconciler::<Namespace>::new("namespace", &client)
        .run(move |namespace| reconcile(client.clone(), namespace))
        .await
}

async fn reconcile(client: Client, namespace: Arc<Namespace>) -> Result<Action, Error> {
    if namespace.metadata.deletion_timestamp.is_none() {
        return Ok(Action::AwaitChange);
    }
    let name = namespace.metadata.name.as_deref().unwrap_or_default();
    let mut remaining = 0;
    for resource in RESOURCES.iter().filter(|r| r.namespaced && !r.is_review()) {
        let collection = format!(
            "{}/namespaces/{name}/{}",
            resource.group_version_path(),
            resource.plural
        );
        remaining += empty_collection(&client, &collection).await?;
    }
    for custom in super::customresources::served(&client).await? {
        if custom.namespaced {
            remaining += empty_collection(&client, &custom.collection(Some(name))).await?;
        }
    }
    if remaining > 0 {
        return Ok(Action::RequeueAfter(RECHECK));
    }
    let mut finalizers: Vec<String> = namespace
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.clone())
        .unwrap_or_default();
    let ours = finalizers.len();
    finalizers.retain(|f| f != FINALIZER);
    if finalizers.len() == ours && ours > 0 {
        // Ours is gone already: the rest belong to others.
        return Ok(Action::AwaitChange);
    }
    let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name},
        "spec": {"finalizers": finalizers}});
    match client
        .json(
            Method::PUT,
            &format!("/api/v1/namespaces/{name}/finalize"),
            "application/json",
            Some(&body),
        )
        .await
    {
        Ok(_) => Ok(Action::AwaitChange),
        Err(e) if e.is_not_found() => Ok(Action::AwaitChange),
        Err(e) => Err(e.into()),
    }
}

/// Deletes every object of `collection` (a list URL) not already being deleted, and returns
/// how many were there: they are gone once a later call finds none.
pub(super) async fn empty_collection(client: &Client, collection: &str) -> Result<usize, Error> {
    let list = match client
        .json(Method::GET, collection, "application/json", None)
        .await
    {
        Ok(list) => list,
        // A custom kind whose CRD has just gone.
        Err(e) if e.is_not_found() => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let mut remaining = 0;
    for item in list["items"].as_array().into_iter().flatten() {
        remaining += 1;
        if item.pointer("/metadata/deletionTimestamp").is_some() {
            continue;
        }
        let item_name = item
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let options = json!({"propagationPolicy": "Background"});
        match client
            .json(
                Method::DELETE,
                &format!("{collection}/{item_name}"),
                "application/json",
                Some(&options),
            )
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(remaining)
}
