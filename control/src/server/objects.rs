//! The server's own reads and removals of stored objects, with store errors turned into API
//! errors: what the generic verbs and the kinds' handlers share.

use axum::response::Response;
use http::StatusCode;
use serde_json::Value;

use super::error::{ApiError, Result};
use super::request::Request;
use super::{json_response, ApiServer};
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
        super::escalation::settle(self, request, &deleted).await;
        Ok(json_response(StatusCode::OK, &deleted))
    }
}

/// The qualified resource name (for messages) of a store resource name.
fn resource_for_store_name(store_name: &str) -> String {
    store_name.to_string()
}
