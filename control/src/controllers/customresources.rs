//! The CRD cleanup controller (kube-apiserver's `customresourcecleanup` finalizer): a deleted
//! CustomResourceDefinition stays, `Terminating`, while this controller deletes every one of
//! its custom resources through the API (their own finalizers hold them as usual); once none
//! is left it removes the finalizer and the API server deletes the CRD, which stops serving
//! its kind. Level-triggered: a restarted control plane finishes what was under way.
//!
//! [`served`] lists the custom kinds for other controllers that visit every kind (the
//! namespace controller empties a namespace's custom resources too).

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{json, Value};

use super::runtime::Action;
use super::Error;
use crate::api::custom::crd::CLEANUP_FINALIZER;
use crate::api::object::str_at;
use crate::client::Client;

/// How soon a CRD whose resources are still going is looked at again.
const RECHECK: Duration = Duration::from_millis(250);

const CRDS: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";

/// A custom kind as stored: its storage version's URLs.
pub struct CustomCollection {
    group: String,
    version: String,
    plural: String,
    pub namespaced: bool,
}

impl CustomCollection {
    fn of(crd: &Value) -> Option<Self> {
        let storage = crd
            .pointer("/spec/versions")?
            .as_array()?
            .iter()
            .find(|v| v["storage"] == true)?;
        Some(Self {
            group: str_at(crd, "/spec/group").to_string(),
            version: str_at(storage, "/name").to_string(),
            plural: str_at(crd, "/spec/names/plural").to_string(),
            namespaced: str_at(crd, "/spec/scope") != "Cluster",
        })
    }

    /// The list URL, in `namespace` or across all.
    pub fn collection(&self, namespace: Option<&str>) -> String {
        let Self {
            group,
            version,
            plural,
            ..
        } = self;
        match namespace {
            Some(ns) => format!("/apis/{group}/{version}/namespaces/{ns}/{plural}"),
            None => format!("/apis/{group}/{version}/{plural}"),
        }
    }
}

/// The custom kinds the cluster serves now.
pub async fn served(client: &Client) -> Result<Vec<CustomCollection>, Error> {
    let list = client
        .json(Method::GET, CRDS, "application/json", None)
        .await?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(CustomCollection::of)
        .collect())
}

/// Runs on kube-runtime's `Controller` ([`super::runtime`]).
pub async fn run(client: Client) {
    super::runtime::Reconciler::<CustomResourceDefinition>::new("customresourcecleanup", &client)
        .run(move |crd| reconcile(client.clone(), crd))
        .await
}

async fn reconcile(client: Client, crd: Arc<CustomResourceDefinition>) -> Result<Action, Error> {
    let finalizers = crd.metadata.finalizers.clone().unwrap_or_default();
    if crd.metadata.deletion_timestamp.is_none()
        || !finalizers.iter().any(|f| f == CLEANUP_FINALIZER)
    {
        return Ok(Action::AwaitChange);
    }
    let value = serde_json::to_value(crd.as_ref())?;
    let Some(kind) = CustomCollection::of(&value) else {
        return Ok(Action::AwaitChange);
    };
    // Each object is deleted at its own URL (a cluster-wide list names their namespaces).
    let list = match client
        .json(
            Method::GET,
            &kind.collection(None),
            "application/json",
            None,
        )
        .await
    {
        Ok(list) => list,
        Err(e) if e.is_not_found() => json!({"items": []}),
        Err(e) => return Err(e.into()),
    };
    let items: Vec<Value> = list["items"].as_array().cloned().unwrap_or_default();
    let mut remaining = 0;
    for item in &items {
        let namespace = str_at(item, "/metadata/namespace");
        let collection = kind.collection(Some(namespace).filter(|_| kind.namespaced));
        remaining += usize::from(item_present(&client, &collection, item).await?);
    }
    if remaining > 0 {
        return Ok(Action::RequeueAfter(RECHECK));
    }
    let rest: Vec<&String> = finalizers
        .iter()
        .filter(|f| *f != CLEANUP_FINALIZER)
        .collect();
    let name = crd.metadata.name.as_deref().unwrap_or_default();
    let body = json!({"metadata": {"finalizers": rest}});
    match client
        .json(
            Method::PATCH,
            &format!("{CRDS}/{name}"),
            "application/merge-patch+json",
            Some(&body),
        )
        .await
    {
        Ok(_) => Ok(Action::AwaitChange),
        Err(e) if e.is_not_found() => Ok(Action::AwaitChange),
        Err(e) => Err(e.into()),
    }
}

/// Deletes `item` of `collection` unless it is already being deleted; whether it is still
/// there (its deletion may wait for its own finalizers).
async fn item_present(client: &Client, collection: &str, item: &Value) -> Result<bool, Error> {
    if item.pointer("/metadata/deletionTimestamp").is_some() {
        return Ok(true);
    }
    let options = json!({"propagationPolicy": "Background"});
    let path = format!("{collection}/{}", str_at(item, "/metadata/name"));
    match client
        .json(Method::DELETE, &path, "application/json", Some(&options))
        .await
    {
        Ok(deleted) => Ok(deleted.pointer("/metadata/deletionTimestamp").is_some()),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e.into()),
    }
}
