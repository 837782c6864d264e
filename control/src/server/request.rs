//! A decoded request on a resource URL: method, parsed path, query, body and what the client
//! accepts. Every handler of the server takes one.

use axum::body::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderMap, Method, Uri};
use serde_json::Value;

use super::custom::CustomResources;
use super::error::{ApiError, Result};
use super::path::{self, ResourcePath};
use super::query::Query;
use std::sync::Arc;

use crate::api::resources::ResourceInfo;
use crate::auth::UserInfo;
use crate::store::ObjectKey;

/// A decoded request on a resource URL.
pub struct Request {
    pub method: Method,
    pub path: ResourcePath,
    pub query: Query,
    pub body: Bytes,
    pub content_type: String,
    pub wants_table: bool,
    pub headers: HeaderMap,
    pub raw_query: Option<String>,
    /// Who is asking (authenticated and authorized by the guard).
    pub user: Arc<UserInfo>,
    /// The client's connection, once upgraded (a WebSocket for exec or port-forward).
    pub upgrade: Option<hyper::upgrade::OnUpgrade>,
}

impl Request {
    pub fn new(
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: Bytes,
        user: Arc<UserInfo>,
        custom: &CustomResources,
    ) -> Result<Self> {
        let path = path::parse(uri.path(), custom).map_err(|_| ApiError::NoRoute)?;
        let header = |name| {
            headers
                .get(name)
                .and_then(|v: &http::HeaderValue| v.to_str().ok())
                .unwrap_or("")
        };
        Ok(Self {
            method: method.clone(),
            path,
            query: Query::parse(uri.query()),
            body,
            content_type: header(CONTENT_TYPE).to_ascii_lowercase(),
            wants_table: header(ACCEPT).contains("as=Table"),
            headers: headers.clone(),
            raw_query: uri.query().map(str::to_string),
            user,
            upgrade: None,
        })
    }

    /// The request with the client's connection to upgrade.
    pub fn with_upgrade(mut self, upgrade: Option<hyper::upgrade::OnUpgrade>) -> Self {
        self.upgrade = upgrade;
        self
    }

    pub fn resource(&self) -> &'static ResourceInfo {
        self.path.resource
    }

    /// The object name from the URL; handlers for item URLs call this.
    pub fn name(&self) -> &str {
        self.path.name.as_deref().unwrap_or("")
    }

    /// The namespace an item lives in: the URL's, or empty for cluster-scoped resources.
    pub fn namespace(&self) -> &str {
        self.path.namespace.as_deref().unwrap_or("")
    }

    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(&self.resource().store_name(), self.namespace(), self.name())
    }

    /// Decodes the body as a JSON (or YAML) object.
    pub fn decode_body(&self) -> Result<Value> {
        if self.content_type.contains("protobuf") {
            return super::protobuf::decode(&self.body);
        }
        let value: Value = if self.content_type.contains("yaml") {
            serde_yaml::from_slice(&self.body).map_err(|e| {
                ApiError::BadRequest(format!("the request body is not valid YAML: {e}"))
            })?
        } else {
            serde_json::from_slice(&self.body).map_err(|e| {
                ApiError::BadRequest(format!("the request body is not valid JSON: {e}"))
            })?
        };
        if !value.is_object() {
            return Err(ApiError::BadRequest(
                "the request body must be a JSON object".into(),
            ));
        }
        Ok(value)
    }

    /// The same request without its query (for a write derived from it).
    pub fn duplicate(&self) -> Request {
        Request {
            method: self.method.clone(),
            path: ResourcePath {
                resource: self.path.resource,
                namespace: self.path.namespace.clone(),
                name: self.path.name.clone(),
                subresource: self.path.subresource.clone(),
                rest: self.path.rest.clone(),
            },
            headers: self.headers.clone(),
            raw_query: None,
            query: Query::parse(None),
            body: self.body.clone(),
            content_type: self.content_type.clone(),
            wants_table: self.wants_table,
            user: self.user.clone(),
            upgrade: None,
        }
    }
}
