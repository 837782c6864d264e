//! The gate every request passes before a handler: authentication (who), then the Node
//! authorizer and RBAC (may they), then the user rides along as a request extension for handlers that need it
//! (reviews, escalation checks). In-process requests (no [`Connection`]) are the control
//! plane's own parts; the insecure loopback address acts as a superuser, as kube-apiserver's
//! old insecure port did.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::ApiServer;
use crate::auth::authn::AuthnError;
use crate::auth::node::{self, NodeDecision};
use crate::auth::rbac::Decision;
use crate::auth::request_info::{self, RequestInfo};
use crate::auth::tls::Connection;
use crate::auth::{UserInfo, SUPERUSER_GROUP};

/// Paths an anonymous request may reach (then RBAC decides, as for everyone).
const PUBLIC_PATHS: &[&str] = &["/healthz", "/livez", "/readyz", "/version", "/version/"];

pub(super) async fn guard(
    State(server): State<Arc<ApiServer>>,
    mut request: Request,
    next: Next,
) -> Response {
    let user = match request.extensions().get::<Connection>() {
        None => UserInfo::in_process(),
        Some(Connection::Insecure { .. }) => {
            UserInfo::authenticated("system:unsecured", vec![SUPERUSER_GROUP.to_string()])
        }
        Some(Connection::Tls { certificate, .. }) => {
            let authorization = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            match server
                .authenticator
                .authenticate(certificate.as_ref(), authorization)
            {
                Ok(Some(user)) => user,
                Ok(None)
                    if server.security.anonymous_auth
                        && PUBLIC_PATHS.contains(&request.uri().path()) =>
                {
                    UserInfo::anonymous()
                }
                Ok(None) => return ApiError::Unauthorized.into_response(),
                Err(AuthnError::Unauthorized(why)) => {
                    // The reason is for the server's log only (never the credential itself).
                    tracing::info!(
                        "401 for {} {}: {why}",
                        request.method(),
                        request.uri().path()
                    );
                    return ApiError::Unauthorized.into_response();
                }
                Err(AuthnError::Unavailable(why)) => {
                    return ApiError::ServiceUnavailable(why).into_response()
                }
            }
        }
    };
    // system:masters may do anything: no need to read the request's attributes.
    if !user.is_superuser() {
        let uri = request.uri();
        let info = request_info::parse(request.method(), uri.path(), uri.query());
        // The Node authorizer first, then RBAC, as kube-apiserver's `Node,RBAC`.
        let by_node = match node::node_name(&user) {
            Some(name) => node::authorize(server.store.as_ref(), name, &info),
            None => NodeDecision::NoOpinion,
        };
        match by_node {
            NodeDecision::Allow => {}
            NodeDecision::Deny(why) => {
                let message = format!("{}: {why}", forbidden_message(&user, &info));
                return ApiError::Forbidden(message).into_response();
            }
            NodeDecision::NoOpinion => {
                if server.policy.read().authorize(&user, &info) == Decision::Deny {
                    return ApiError::Forbidden(forbidden_message(&user, &info)).into_response();
                }
            }
        }
    }
    // The credential has done its job: nothing past here (the pod proxy passes headers on
    // to the agent and the pod) may see it, as kube-apiserver's authentication filter
    // drops it once it has authenticated the request.
    request.headers_mut().remove(http::header::AUTHORIZATION);
    request.extensions_mut().insert(Arc::new(user));
    next.run(request).await
}

/// Kubernetes' denial text: `pods "x" is forbidden: User "alice" cannot get resource "pods"
/// in API group "" in the namespace "a"`.
pub fn forbidden_message(user: &UserInfo, info: &RequestInfo) -> String {
    if !info.resource_request {
        return format!(
            "forbidden: User \"{}\" cannot {} path \"{}\"",
            user.username, info.verb, info.path
        );
    }
    let mut qualified = info.resource.clone();
    if !info.api_group.is_empty() {
        qualified = format!("{qualified}.{}", info.api_group);
    }
    let subject = if info.name.is_empty() {
        format!("{qualified} is forbidden")
    } else {
        format!("{qualified} \"{}\" is forbidden", info.name)
    };
    let scope = if info.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace \"{}\"", info.namespace)
    };
    format!(
        "{subject}: User \"{}\" cannot {} resource \"{}\" in API group \"{}\" {scope}",
        user.username,
        info.verb,
        info.resource_and_subresource(),
        info.api_group
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denials_read_as_kubernetes_writes_them() {
        let alice = UserInfo::authenticated("alice", vec![]);
        let list = request_info::parse(&http::Method::GET, "/api/v1/namespaces/b/pods", None);
        assert_eq!(
            forbidden_message(&alice, &list),
            "pods is forbidden: User \"alice\" cannot list resource \"pods\" in API group \"\" in the namespace \"b\""
        );
        let get = request_info::parse(
            &http::Method::GET,
            "/apis/apps/v1/namespaces/a/deployments/d/scale",
            None,
        );
        assert_eq!(
            forbidden_message(&alice, &get),
            "deployments.apps \"d\" is forbidden: User \"alice\" cannot get resource \"deployments/scale\" in API group \"apps\" in the namespace \"a\""
        );
        let nodes = request_info::parse(&http::Method::GET, "/api/v1/nodes", None);
        assert!(forbidden_message(&alice, &nodes).ends_with("at the cluster scope"));
        let path = request_info::parse(&http::Method::GET, "/metrics", None);
        assert_eq!(
            forbidden_message(&alice, &path),
            "forbidden: User \"alice\" cannot get path \"/metrics\""
        );
    }
}
