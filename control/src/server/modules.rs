//! The cluster's module store: `shoal push` uploads a Wasm binary (`POST /shoal/v1/modules`)
//! and gets back its reference `sha256:<hex>`; agents fetch it by that reference
//! (`GET /shoal/v1/modules/sha256:<hex>`) and verify the digest. Content-addressed, so a
//! reference always names the same bytes.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::header::CONTENT_TYPE;
use http::StatusCode;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::{json_response, ApiServer};

/// The largest module accepted.
pub const MAX_MODULE_BYTES: usize = 256 << 20;

pub async fn push(State(server): State<Arc<ApiServer>>, body: Bytes) -> Response {
    if body.len() < 8 || &body[..4] != b"\0asm" {
        return ApiError::BadRequest(
            "the body is not a WebAssembly module or component (it does not start with \\0asm)"
                .into(),
        )
        .into_response();
    }
    let digest = hex::encode(Sha256::digest(&body));
    if let Err(e) = server.store.put_blob(&digest, body.to_vec()).await {
        return ApiError::from_store(e, "modules", &digest).into_response();
    }
    json_response(
        StatusCode::CREATED,
        &json!({"image": format!("sha256:{digest}"), "size": body.len()}),
    )
}

pub async fn fetch(
    State(server): State<Arc<ApiServer>>,
    Path(reference): Path<String>,
) -> Response {
    let Some(digest) = reference
        .strip_prefix("sha256:")
        .filter(|d| d.len() == 64 && d.chars().all(|c| c.is_ascii_hexdigit()))
    else {
        return ApiError::BadRequest(format!(
            "{reference:?} is not a module reference (sha256:<64 hex digits>)"
        ))
        .into_response();
    };
    match server.store.get_blob(&digest.to_ascii_lowercase()).await {
        Ok(Some(bytes)) => ([(CONTENT_TYPE, "application/wasm")], bytes).into_response(),
        Ok(None) => ApiError::NotFound {
            resource: "modules".into(),
            name: reference.clone(),
        }
        .into_response(),
        Err(e) => ApiError::from_store(e, "modules", digest).into_response(),
    }
}
