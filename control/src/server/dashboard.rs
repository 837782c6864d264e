//! The web dashboard's server side: its static assets at `/ui/` (embedded in the binary from
//! `control/ui/`, served to anyone: they hold no cluster data), and dashboard sessions,
//! `POST /shoal/v1/dashboard/token?ttl=SECONDS`, which give the authenticated caller a
//! short-lived bearer token standing for the same user and groups (what `shoal dashboard`
//! opens the browser with). Everything the page shows or does is an API request with that
//! token, so authentication and RBAC decide as for any client.
//!
//! A session cannot mint another session (it ends when it expires), and neither can a
//! bootstrap token (it is for joining nodes only). The assets forbid the page to talk to any
//! other origin (`Content-Security-Policy`), so the token goes only where it came from.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use http::header;
use serde_json::json;

use super::error::{ApiError, Result};
use super::ApiServer;
use crate::auth::policy::BOOTSTRAPPERS_GROUP;
use crate::auth::tokens::{DEFAULT_SESSION_TTL, MAX_SESSION_TTL};
use crate::auth::UserInfo;

/// The page, its script and its style: one file each, no build step.
const INDEX: &str = include_str!("../../ui/index.html");
const SCRIPT: &str = include_str!("../../ui/app.js");
const STYLE: &str = include_str!("../../ui/app.css");

/// The page may load only its own script and style, and talk only to its own origin.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The routes of the dashboard's assets (outside authentication).
pub fn assets() -> Router<Arc<ApiServer>> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route(
            "/ui/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

#[derive(serde::Deserialize)]
pub struct SessionParams {
    /// Seconds; [`DEFAULT_SESSION_TTL`] when absent, at most [`MAX_SESSION_TTL`].
    ttl: Option<u64>,
}

/// `POST /shoal/v1/dashboard/token`: a session token for the caller.
pub async fn session(
    State(server): State<Arc<ApiServer>>,
    Extension(user): Extension<Arc<UserInfo>>,
    Query(params): Query<SessionParams>,
) -> Response {
    match issue(&server, &user, params.ttl) {
        Ok(answer) => (http::StatusCode::CREATED, Json(answer)).into_response(),
        Err(e) => e.into_response(),
    }
}

fn issue(server: &ApiServer, user: &UserInfo, ttl: Option<u64>) -> Result<serde_json::Value> {
    if user.is_anonymous() {
        return Err(ApiError::Unauthorized);
    }
    if crate::auth::authn::is_session(user) {
        return Err(ApiError::Forbidden(
            "a dashboard session cannot start another one: log in again with your own credentials"
                .into(),
        ));
    }
    if user.groups.iter().any(|g| g == BOOTSTRAPPERS_GROUP) {
        return Err(ApiError::Forbidden(
            "bootstrap tokens are for joining nodes, not for the dashboard".into(),
        ));
    }
    let ttl = match ttl {
        None => DEFAULT_SESSION_TTL,
        Some(0) => {
            return Err(ApiError::BadRequest(
                "ttl must be a positive number of seconds".into(),
            ))
        }
        Some(seconds) if Duration::from_secs(seconds) > MAX_SESSION_TTL => {
            return Err(ApiError::BadRequest(format!(
                "ttl {seconds} is longer than the longest session, {} seconds",
                MAX_SESSION_TTL.as_secs()
            )))
        }
        Some(seconds) => Duration::from_secs(seconds),
    };
    let groups: Vec<String> = (user.groups.iter())
        .filter(|g| g.as_str() != crate::auth::AUTHENTICATED_GROUP)
        .cloned()
        .collect();
    let (token, expires) = server
        .authenticator
        .tokens()
        .issue_session(&user.username, &groups, ttl)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(json!({
        "token": token,
        "user": user.username,
        "groups": groups,
        "expirationTimestamp": chrono::DateTime::<chrono::Utc>::from(expires)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }))
}
