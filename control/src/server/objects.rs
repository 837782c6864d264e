//! The server's own reads and removals of stored objects, with store errors turned into API
//! errors: what the generic verbs and the kinds' handlers share.

use axum::response::Response;
use http::StatusCode;
use serde_json::Value;

use super::error::{ApiError, Result};
use super::request::Request;
use super::{json_response, ApiServer};
use crate::api::resources::ResourceInfo;
use crate::store::ObjectKey;

impl ApiServer {
    pub(super) fn get_object(&self, key: &ObjectKey) -> Result<Value> {
        let resource = resource_for_store_name(&key.resource);
        match self.store.get(key) {
            Ok(Some(object)) => Ok(object),
            Ok(None) => Err(ApiError::NotFound {
                resource,
                name: key.name.clone(),
            }),
            Err(e) => Err(ApiError::from_store(e, &resource, &key.name)),
        }
    }

    /// Waits until what this server keeps from the store (the RBAC policy, the served custom
    /// kinds) has a write it just made, so the client's next request sees its effect.
    pub(super) async fn settle(&self, request: &Request, stored: &Value) {
        super::escalation::settle(self, request, stored).await;
        if request.resource().builtin_kind() == "CustomResourceDefinition" {
            if let Some(revision) = crate::store::revision_of(stored) {
                self.custom.wait_for(revision).await;
            }
        }
    }

    /// Refuses new objects of a custom kind whose CRD is being deleted (its objects are being
    /// removed), as kube-apiserver does.
    pub(super) fn check_crd_not_terminating(&self, resource: &ResourceInfo) -> Result<()> {
        let key = ObjectKey::new(
            super::custom::CRDS,
            "",
            &format!("{}.{}", resource.plural, resource.group),
        );
        let terminating = self
            .store
            .get(&key)
            .ok()
            .flatten()
            .is_some_and(|crd| crd.pointer("/metadata/deletionTimestamp").is_some());
        if terminating {
            return Err(ApiError::MethodNotAllowed(format!(
                "create not allowed while custom resource definition is terminating: {}",
                resource.qualified_plural()
            )));
        }
        Ok(())
    }

    /// Removes an object from the store at once and answers with its last state.
    pub(super) async fn delete_now(
        &self,
        request: &Request,
        precondition: Option<u64>,
    ) -> Result<Response> {
        let deleted = self
            .store
            .delete(request.key(), precondition)
            .await
            .map_err(|e| {
                ApiError::from_store(e, &request.resource().qualified_plural(), request.name())
            })?;
        self.settle(request, &deleted).await;
        Ok(json_response(
            StatusCode::OK,
            &request.resource().present(&deleted),
        ))
    }
}

/// The qualified resource name (for messages) of a store resource name.
fn resource_for_store_name(store_name: &str) -> String {
    store_name.to_string()
}
