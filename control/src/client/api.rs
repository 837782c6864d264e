//! `Api<K>`: typed CRUD, list and watch for one kind, with URLs derived from k8s-openapi's
//! `Resource` metadata.

use std::marker::PhantomData;

use futures::{Stream, StreamExt};
use http::{Method, Request};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{Metadata, NamespaceResourceScope, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::{Client, Error, Result};

/// Selectors for lists and watches.
#[derive(Clone, Debug, Default)]
pub struct ListParams {
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
}

impl ListParams {
    pub fn labels(mut self, selector: &str) -> Self {
        self.label_selector = Some(selector.into());
        self
    }

    pub fn fields(mut self, selector: &str) -> Self {
        self.field_selector = Some(selector.into());
        self
    }

    fn query(&self) -> String {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        if let Some(s) = &self.label_selector {
            query.append_pair("labelSelector", s);
        }
        if let Some(s) = &self.field_selector {
            query.append_pair("fieldSelector", s);
        }
        query.finish()
    }
}

#[derive(Clone, Debug, Default)]
pub struct DeleteParams {
    pub grace_period_seconds: Option<i64>,
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
}

pub struct ObjectList<K> {
    pub items: Vec<K>,
    pub resource_version: String,
}

#[derive(Debug)]
pub enum WatchEvent<K> {
    Added(K),
    Modified(K),
    Deleted(K),
    /// The server ended the watch with a Status (410 Gone: re-list).
    Error(Value),
}

pub struct Api<K> {
    client: Client,
    namespace: Option<String>,
    _kind: PhantomData<fn() -> K>,
}

impl<K> Clone for Api<K> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            namespace: self.namespace.clone(),
            _kind: PhantomData,
        }
    }
}

impl<K> Api<K> {
    pub(super) fn new(client: Client, namespace: Option<&str>) -> Self {
        Self {
            client,
            namespace: namespace.map(str::to_string),
            _kind: PhantomData,
        }
    }
}

impl<K> Api<K>
where
    K: Resource + Metadata<Ty = ObjectMeta> + Serialize + DeserializeOwned + Send + 'static,
{
    fn collection_path(&self) -> String {
        let base = if K::GROUP.is_empty() {
            format!("/api/{}", K::VERSION)
        } else {
            format!("/apis/{}/{}", K::GROUP, K::VERSION)
        };
        let namespaced =
            std::any::TypeId::of::<K::Scope>() == std::any::TypeId::of::<NamespaceResourceScope>();
        match (&self.namespace, namespaced) {
            (Some(ns), true) => format!("{base}/namespaces/{ns}/{}", K::URL_PATH_SEGMENT),
            _ => format!("{base}/{}", K::URL_PATH_SEGMENT),
        }
    }

    fn item_path(&self, name: &str) -> String {
        format!("{}/{name}", self.collection_path())
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> Result<K> {
        let value = self.client.json(method, path, content_type, body).await?;
        serde_json::from_value(value).map_err(|e| Error::Decode(format!("{}: {e}", K::KIND)))
    }

    fn to_value(object: &K) -> Result<Value> {
        let mut value = serde_json::to_value(object).map_err(|e| Error::Decode(e.to_string()))?;
        if let Some(map) = value.as_object_mut() {
            map.insert("apiVersion".into(), Value::String(K::API_VERSION.into()));
            map.insert("kind".into(), Value::String(K::KIND.into()));
        }
        Ok(value)
    }

    pub async fn get(&self, name: &str) -> Result<K> {
        self.call(Method::GET, &self.item_path(name), "application/json", None)
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
        let path = format!("{}?{}", self.collection_path(), params.query());
        let value = self
            .client
            .json(Method::GET, &path, "application/json", None)
            .await?;
        let resource_version = value
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("0")
            .to_string();
        let items = value.get("items").cloned().unwrap_or(Value::Array(vec![]));
        let items = serde_json::from_value(items)
            .map_err(|e| Error::Decode(format!("{} list: {e}", K::KIND)))?;
        Ok(ObjectList {
            items,
            resource_version,
        })
    }

    pub async fn create(&self, object: &K) -> Result<K> {
        let body = Self::to_value(object)?;
        self.call(
            Method::POST,
            &self.collection_path(),
            "application/json",
            Some(&body),
        )
        .await
    }

    /// Creates the object without reading back what was created (events, bulk writes).
    pub async fn create_quietly(&self, object: &K) -> Result<()> {
        let body = Self::to_value(object)?;
        self.client
            .json_ok(
                Method::POST,
                &self.collection_path(),
                "application/json",
                Some(&body),
            )
            .await
    }

    /// Replaces the object; with `metadata.resourceVersion` set this is a compare-and-swap.
    pub async fn replace(&self, name: &str, object: &K) -> Result<K> {
        let body = Self::to_value(object)?;
        self.call(
            Method::PUT,
            &self.item_path(name),
            "application/json",
            Some(&body),
        )
        .await
    }

    /// Replaces the object's status through the `/status` subresource.
    pub async fn replace_status(&self, name: &str, object: &K) -> Result<K> {
        let body = Self::to_value(object)?;
        self.call(
            Method::PUT,
            &format!("{}/status", self.item_path(name)),
            "application/json",
            Some(&body),
        )
        .await
    }

    /// Applies a JSON merge patch.
    pub async fn patch_merge(&self, name: &str, patch: &Value) -> Result<K> {
        self.call(
            Method::PATCH,
            &self.item_path(name),
            "application/merge-patch+json",
            Some(patch),
        )
        .await
    }

    /// Applies a JSON merge patch to the `/status` subresource.
    pub async fn patch_status(&self, name: &str, patch: &Value) -> Result<K> {
        let path = format!("{}/status", self.item_path(name));
        self.call(
            Method::PATCH,
            &path,
            "application/merge-patch+json",
            Some(patch),
        )
        .await
    }

    pub async fn delete(&self, name: &str, params: &DeleteParams) -> Result<()> {
        let mut options = serde_json::json!({"kind": "DeleteOptions", "apiVersion": "v1"});
        if let Some(grace) = params.grace_period_seconds {
            options["gracePeriodSeconds"] = grace.into();
        }
        if let Some(uid) = &params.uid {
            options["preconditions"] = serde_json::json!({"uid": uid});
        }
        if let Some(policy) = params.propagation_policy {
            options["propagationPolicy"] = policy.into();
        }
        self.client
            .json(
                Method::DELETE,
                &self.item_path(name),
                "application/json",
                Some(&options),
            )
            .await
            .map(|_| ())
    }

    /// Watches changes after `resource_version` ("0" or "" first replays the current objects
    /// as `Added`). The stream ends when the server closes the watch.
    pub async fn watch(
        &self,
        params: &ListParams,
        resource_version: &str,
    ) -> Result<impl Stream<Item = Result<WatchEvent<K>>> + Send> {
        let path = format!(
            "{}?watch=true&resourceVersion={resource_version}&{}",
            self.collection_path(),
            params.query()
        );
        let request = Request::get(path)
            .body(axum::body::Body::empty())
            .map_err(|e| Error::Transport(e.to_string()))?;
        let body = self.client.send_ok(request).await?;
        let frames = body.into_data_stream();
        let lines = split_lines(frames);
        Ok(lines.map(|line| {
            let line = line?;
            let event: Value = serde_json::from_slice(&line)
                .map_err(|e| Error::Decode(format!("watch event: {e}")))?;
            let object = event.get("object").cloned().unwrap_or(Value::Null);
            let decode = |o: Value| {
                serde_json::from_value::<K>(o)
                    .map_err(|e| Error::Decode(format!("watched {}: {e}", K::KIND)))
            };
            Ok(match event["type"].as_str() {
                Some("ADDED") => WatchEvent::Added(decode(object)?),
                Some("MODIFIED") => WatchEvent::Modified(decode(object)?),
                Some("DELETED") => WatchEvent::Deleted(decode(object)?),
                _ => WatchEvent::Error(object),
            })
        }))
    }
}

/// Turns a stream of body chunks into a stream of newline-terminated lines.
fn split_lines<S>(frames: S) -> impl Stream<Item = Result<Vec<u8>>> + Send
where
    S: Stream<Item = Result<axum::body::Bytes, axum::Error>> + Send + Unpin + 'static,
{
    futures::stream::unfold(
        (frames, Vec::<u8>::new(), false),
        |(mut frames, mut buffer, done)| async move {
            loop {
                if let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buffer.drain(..=end).collect();
                    if line.len() > 1 {
                        return Some((Ok(line), (frames, buffer, done)));
                    }
                    continue;
                }
                if done {
                    return None;
                }
                match frames.next().await {
                    Some(Ok(chunk)) => buffer.extend_from_slice(&chunk),
                    Some(Err(e)) => {
                        return Some((Err(Error::Transport(e.to_string())), (frames, buffer, true)))
                    }
                    None => {
                        if buffer.iter().all(u8::is_ascii_whitespace) {
                            return None;
                        }
                        buffer.push(b'\n');
                        return Some((Ok(std::mem::take(&mut buffer)), (frames, Vec::new(), true)));
                    }
                }
            }
        },
    )
}
