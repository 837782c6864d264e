//! API errors and their wire form: every failure answers with a Kubernetes `Status` carrying
//! the right code and reason (kubectl-wire.md §6). Internal details are logged, not leaked.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{json, Value};

use crate::api::validation::Cause;
use crate::store;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{resource} {name:?} not found")]
    NotFound { resource: String, name: String },
    #[error("{resource} {name:?} already exists")]
    AlreadyExists { resource: String, name: String },
    #[error("Operation cannot be fulfilled on {resource} {name:?}: {why}")]
    Conflict {
        resource: String,
        name: String,
        why: String,
    },
    /// Server-side apply met fields other managers own (the message lists them).
    #[error("{why}")]
    ApplyConflict {
        resource: String,
        name: String,
        why: String,
    },
    #[error("{kind} {name:?} is invalid: {}", summarize(.causes))]
    Invalid {
        kind: String,
        name: String,
        causes: Vec<Cause>,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("Unauthorized")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("the server does not allow this method on the requested resource: {0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("the server could not find the requested resource")]
    NoRoute,
    #[error("{0}")]
    Gone(String),
    /// A continued list whose revision is gone: the token continues at the latest state.
    #[error("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.")]
    ContinueExpired { continue_token: String },
    /// kube-apiserver's words, which client-go's reflector recognises.
    #[error("Too large resource version: {requested}, current: {current}")]
    TooLargeResourceVersion { requested: u64, current: u64 },
    #[error("{0}")]
    ServiceUnavailable(String),
    /// The request may succeed later (an eviction a disruption budget holds back); kubectl
    /// drain retries these.
    #[error("{0}")]
    TooManyRequests(String),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

fn summarize(causes: &[Cause]) -> String {
    let parts: Vec<String> = causes
        .iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect();
    match parts.len() {
        1 => parts[0].clone(),
        _ => format!("[{}]", parts.join(", ")),
    }
}

impl ApiError {
    pub fn code(&self) -> StatusCode {
        match self {
            Self::NotFound { .. } | Self::NoRoute => StatusCode::NOT_FOUND,
            Self::AlreadyExists { .. } | Self::Conflict { .. } | Self::ApplyConflict { .. } => {
                StatusCode::CONFLICT
            }
            Self::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Gone(_) | Self::ContinueExpired { .. } => StatusCode::GONE,
            Self::TooLargeResourceVersion { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::ServiceUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Self::NotFound { .. } | Self::NoRoute => "NotFound",
            Self::AlreadyExists { .. } => "AlreadyExists",
            Self::Conflict { .. } | Self::ApplyConflict { .. } => "Conflict",
            Self::Invalid { .. } => "Invalid",
            Self::BadRequest(_) => "BadRequest",
            Self::Unauthorized => "Unauthorized",
            Self::Forbidden(_) => "Forbidden",
            Self::MethodNotAllowed(_) => "MethodNotAllowed",
            Self::UnsupportedMediaType(_) => "UnsupportedMediaType",
            Self::Gone(_) | Self::ContinueExpired { .. } => "Expired",
            Self::TooLargeResourceVersion { .. } => "Timeout",
            Self::ServiceUnavailable(_) => "ServiceUnavailable",
            Self::TooManyRequests(_) => "TooManyRequests",
            Self::Internal(_) => "InternalError",
        }
    }

    /// The `Status` object for this error.
    pub fn status(&self) -> Value {
        let mut details = json!({});
        let mut metadata = json!({});
        match self {
            Self::NotFound { resource, name }
            | Self::AlreadyExists { resource, name }
            | Self::Conflict { resource, name, .. }
            | Self::ApplyConflict { resource, name, .. } => {
                let (kind, group) = resource.split_once('.').unwrap_or((resource, ""));
                details = json!({"name": name, "group": group, "kind": kind});
            }
            Self::Invalid { kind, name, causes } => {
                details = json!({"name": name, "kind": kind, "causes": causes});
            }
            Self::ContinueExpired { continue_token } => {
                metadata = json!({"continue": continue_token});
            }
            Self::TooLargeResourceVersion { .. } => {
                details = json!({
                    "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                    "retryAfterSeconds": 1,
                });
            }
            _ => {}
        }
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": metadata,
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "details": details,
            "code": self.code().as_u16(),
        })
    }

    /// Maps a store error for an object of `resource` named `name`.
    pub fn from_store(error: store::Error, resource: &str, name: &str) -> Self {
        let (resource, name) = (resource.to_string(), name.to_string());
        match error {
            store::Error::NotFound(_) => Self::NotFound { resource, name },
            store::Error::AlreadyExists(_) => Self::AlreadyExists { resource, name },
            store::Error::Conflict { .. } => Self::Conflict {
                resource,
                name,
                why: "the object has been modified; please apply your changes to the latest version and try again".into(),
            },
            store::Error::Gone { requested, oldest } => {
                Self::Gone(format!("too old resource version: {requested} ({oldest})"))
            }
            store::Error::TooLarge { requested, current } => {
                Self::TooLargeResourceVersion { requested, current }
            }
            store::Error::Unavailable(e) => {
                tracing::warn!("store unavailable for {resource}/{name}: {e}");
                Self::ServiceUnavailable(format!("the store is unavailable: {e}"))
            }
            store::Error::Backend(e) => {
                tracing::error!("store failure on {resource}/{name}: {e}");
                Self::Internal("the store failed to complete the request".into())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Internal(msg) = &self {
            tracing::warn!("internal error: {msg}");
        }
        let body = serde_json::to_vec(&self.status()).expect("a Status always serializes");
        (
            self.code(),
            [(http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}
