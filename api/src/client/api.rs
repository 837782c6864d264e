//! `Api<K>`: typed CRUD, list and watch for one kind. Requests are built by kube-rs
//! (`kube::core::Request`: URLs, query strings, bodies) and sent and decoded by the kube client
//! (error statuses become [`Error::Api`]). What stays here is Shoal's shape of the calls: one
//! constructor for namespaced and cluster-scoped kinds alike, `get_opt`, merge patches by value.

use std::marker::PhantomData;

use futures::{Stream, StreamExt};
use k8s_openapi::{NamespaceResourceScope, Resource};
use kube::api::{GetParams, Patch, PatchParams, PostParams, WatchParams};
use kube::core::Request;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::{Client, Error, Result};

pub use kube::api::{ListParams, ObjectList, WatchEvent};

/// How to delete: Shoal's callers name a uid precondition and a propagation policy by value.
#[derive(Clone, Debug, Default)]
pub struct DeleteParams {
    pub grace_period_seconds: Option<u32>,
    /// Only delete the object with this uid (guards against deleting a namesake).
    pub uid: Option<String>,
    /// `Background`, `Foreground` or `Orphan` (the server's default, Background, if unset).
    pub propagation_policy: Option<&'static str>,
}

impl DeleteParams {
    /// Delete now and let the garbage collector take the dependents.
    pub fn background() -> Self {
        Self {
            propagation_policy: Some("Background"),
            ..Default::default()
        }
    }

    fn to_kube(&self) -> kube::api::DeleteParams {
        use kube::api::PropagationPolicy;
        kube::api::DeleteParams {
            grace_period_seconds: self.grace_period_seconds,
            preconditions: self.uid.clone().map(|uid| kube::api::Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            propagation_policy: self.propagation_policy.and_then(|policy| match policy {
                "Background" => Some(PropagationPolicy::Background),
                "Foreground" => Some(PropagationPolicy::Foreground),
                "Orphan" => Some(PropagationPolicy::Orphan),
                _ => None,
            }),
            dry_run: false,
        }
    }
}

pub struct Api<K> {
    client: Client,
    request: Request,
    _kind: PhantomData<fn() -> K>,
}

impl<K> Clone for Api<K> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            request: Request::new(self.request.url_path.clone()),
            _kind: PhantomData,
        }
    }
}

impl<K: Resource<Scope: 'static>> Api<K> {
    pub(super) fn new(client: Client, namespace: Option<&str>) -> Self {
        let base = if K::GROUP.is_empty() {
            format!("/api/{}", K::VERSION)
        } else {
            format!("/apis/{}/{}", K::GROUP, K::VERSION)
        };
        // Callers name a namespace for any kind; only namespaced kinds live in one.
        let namespaced =
            std::any::TypeId::of::<K::Scope>() == std::any::TypeId::of::<NamespaceResourceScope>();
        let url_path = match namespace {
            Some(ns) if namespaced => format!("{base}/namespaces/{ns}/{}", K::URL_PATH_SEGMENT),
            _ => format!("{base}/{}", K::URL_PATH_SEGMENT),
        };
        Self {
            client,
            request: Request::new(url_path),
            _kind: PhantomData,
        }
    }
}

fn built(
    result: Result<http::Request<Vec<u8>>, kube::core::request::Error>,
) -> Result<http::Request<Vec<u8>>> {
    result.map_err(|e| Error::Transport(Box::new(kube::Error::BuildRequest(e))))
}

impl<K> Api<K>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Send + 'static,
{
    fn body(object: &K) -> Result<Vec<u8>> {
        serde_json::to_vec(object).map_err(|e| Error::Decode(format!("{}: {e}", K::KIND)))
    }

    async fn call<T: DeserializeOwned>(&self, request: http::Request<Vec<u8>>) -> Result<T> {
        Ok(self.client.kube().request::<T>(request).await?)
    }

    pub async fn get(&self, name: &str) -> Result<K> {
        self.call(built(self.request.get(name, &GetParams::default()))?)
            .await
    }

    /// Like `get`, with a missing object as `None`.
    pub async fn get_opt(&self, name: &str) -> Result<Option<K>> {
        match self.get(name).await {
            Ok(object) => Ok(Some(object)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn list(&self, params: &ListParams) -> Result<ObjectList<K>> {
        self.call(built(self.request.list(params))?).await
    }

    pub async fn create(&self, object: &K) -> Result<K> {
        let request = self
            .request
            .create(&PostParams::default(), Self::body(object)?);
        self.call(built(request)?).await
    }

    /// Creates the object without reading back what was created (events, bulk writes).
    pub async fn create_quietly(&self, object: &K) -> Result<()> {
        let request = self
            .request
            .create(&PostParams::default(), Self::body(object)?);
        self.client.send_bytes(built(request)?).await.map(drop)
    }

    /// Replaces the object; with `metadata.resourceVersion` set this is a compare-and-swap.
    pub async fn replace(&self, name: &str, object: &K) -> Result<K> {
        let request = self
            .request
            .replace(name, &PostParams::default(), Self::body(object)?);
        self.call(built(request)?).await
    }

    /// Applies a JSON merge patch.
    pub async fn patch_merge(&self, name: &str, patch: &Value) -> Result<K> {
        let request = self
            .request
            .patch(name, &PatchParams::default(), &Patch::Merge(patch));
        self.call(built(request)?).await
    }

    /// Applies a JSON merge patch to the `/status` subresource.
    pub async fn patch_status(&self, name: &str, patch: &Value) -> Result<K> {
        self.patch_subresource("status", name, patch).await
    }

    /// Applies a strategic merge patch to the `/status` subresource: lists with a merge key
    /// merge element by element (a pod's `conditions` by `type`), so one condition can be
    /// set without dropping the others, as kube-scheduler and the kubelet write them.
    pub async fn patch_status_strategic(&self, name: &str, patch: &Value) -> Result<K> {
        let request = self.request.patch_subresource(
            "status",
            name,
            &PatchParams::default(),
            &Patch::Strategic(patch),
        );
        self.call(built(request)?).await
    }

    /// Applies a JSON merge patch to a subresource (`status`, `approval`, ...).
    pub async fn patch_subresource(
        &self,
        subresource: &str,
        name: &str,
        patch: &Value,
    ) -> Result<K> {
        let request = self.request.patch_subresource(
            subresource,
            name,
            &PatchParams::default(),
            &Patch::Merge(patch),
        );
        self.call(built(request)?).await
    }

    pub async fn delete(&self, name: &str, params: &DeleteParams) -> Result<()> {
        let request = built(self.request.delete(name, &params.to_kube()))?;
        // The answer is the object (graceful or foreground deletion) or a Status: either is
        // success, and neither is needed.
        self.client.send_bytes(request).await.map(drop)
    }

    /// Watches changes after `resource_version` ("0" or "" first replays the current objects
    /// as `Added`). The stream ends when the server closes the watch.
    pub async fn watch(
        &self,
        params: &ListParams,
        resource_version: &str,
    ) -> Result<impl Stream<Item = Result<WatchEvent<K>>> + Send + use<K>> {
        let watch = WatchParams {
            label_selector: params.label_selector.clone(),
            field_selector: params.field_selector.clone(),
            ..Default::default()
        };
        let request = built(self.request.watch(&watch, resource_version))?;
        let events = self.client.kube().request_events::<K>(request).await?;
        Ok(events.map(|event| event.map_err(Error::from)).boxed())
    }
}
