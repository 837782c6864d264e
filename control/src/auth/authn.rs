//! Authentication of one request, in the order Kubernetes uses: a verified x509 client
//! certificate (CN = user, O = groups), then a bearer token (a ServiceAccount JWT, checked
//! against the account and pod it is bound to, or a bootstrap token), then anonymous.
//! Credentials that are present but wrong are an error (401), never a fall-back to anonymous.

use std::sync::Arc;

use base64::Engine;
use serde_json::Value;

use super::tokens::{self, ServiceAccountTokens};
use super::UserInfo;
use crate::store::{ObjectKey, Store};

#[derive(Debug, thiserror::Error)]
pub enum AuthnError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("authentication is unavailable: {0}")]
    Unavailable(String),
}

/// What the TLS layer learnt of the client's certificate on this connection.
#[derive(Clone, Debug)]
pub enum ClientCertificate {
    /// Verified against the client CA, with the user it names.
    Verified(UserInfo),
    /// Presented but not trusted (or unreadable): why.
    Rejected(String),
}

/// The authenticators of one API server.
pub struct Authenticator {
    tokens: ServiceAccountTokens,
    store: Arc<dyn Store>,
}

impl Authenticator {
    pub fn new(tokens: ServiceAccountTokens, store: Arc<dyn Store>) -> Self {
        Self { tokens, store }
    }

    pub fn tokens(&self) -> &ServiceAccountTokens {
        &self.tokens
    }

    /// The user behind a request's credentials; `None` when it carries none (anonymous).
    pub fn authenticate(
        &self,
        certificate: Option<&ClientCertificate>,
        authorization: Option<&str>,
    ) -> Result<Option<UserInfo>, AuthnError> {
        if let Some(ClientCertificate::Verified(user)) = certificate {
            return Ok(Some(user.clone()));
        }
        if let Some(header) = authorization {
            let token = bearer(header).ok_or_else(|| {
                AuthnError::Unauthorized("the Authorization header is not a bearer token".into())
            })?;
            return self.authenticate_token(token).map(Some);
        }
        match certificate {
            Some(ClientCertificate::Rejected(why)) => Err(AuthnError::Unauthorized(format!(
                "the client certificate is not trusted: {why}"
            ))),
            _ => Ok(None),
        }
    }

    /// The user a bearer token stands for.
    pub fn authenticate_token(&self, token: &str) -> Result<UserInfo, AuthnError> {
        if let Some(bootstrap) = tokens::parse_bootstrap_token(token) {
            return self.bootstrap_user(&bootstrap);
        }
        if !tokens::looks_like_jwt(token) {
            return Err(AuthnError::Unauthorized(
                "the bearer token is not recognised".into(),
            ));
        }
        let claims = match self.tokens.verify(token) {
            Ok(claims) => claims,
            Err(not_an_account) => {
                return match self.tokens.verify_session(token) {
                    Ok(session) => Ok(session_user(session)),
                    // The ServiceAccount reading's reason: the common kind of token.
                    Err(_) => Err(AuthnError::Unauthorized(not_an_account.to_string())),
                };
            }
        };
        let namespace = &claims.kubernetes.namespace;
        let account = &claims.kubernetes.serviceaccount;
        // A token outlives nothing it is bound to: a deleted (or re-created) account or pod
        // revokes it.
        let current = self.get("serviceaccounts", namespace, &account.name)?;
        if current.as_ref().map(uid) != Some(account.uid.as_str()) {
            return Err(AuthnError::Unauthorized(format!(
                "the ServiceAccount {namespace}/{} of the token no longer exists",
                account.name
            )));
        }
        let mut user =
            UserInfo::authenticated(claims.username(), tokens::service_account_groups(namespace));
        user.uid = account.uid.clone();
        if let Some(pod) = &claims.kubernetes.pod {
            let current = self.get("pods", namespace, &pod.name)?;
            if current.as_ref().map(uid) != Some(pod.uid.as_str()) {
                return Err(AuthnError::Unauthorized(format!(
                    "the pod {namespace}/{} the token is bound to no longer exists",
                    pod.name
                )));
            }
            user.extra.insert(
                "authentication.kubernetes.io/pod-name".into(),
                vec![pod.name.clone()],
            );
            user.extra.insert(
                "authentication.kubernetes.io/pod-uid".into(),
                vec![pod.uid.clone()],
            );
        }
        Ok(user)
    }

    fn bootstrap_user(&self, token: &tokens::BootstrapToken<'_>) -> Result<UserInfo, AuthnError> {
        let refused = || AuthnError::Unauthorized("the bootstrap token is not valid".into());
        let name = tokens::bootstrap_secret_name(token.id);
        let secret = self
            .get("secrets", "kube-system", &name)?
            .ok_or_else(refused)?;
        if secret["type"] != "bootstrap.kubernetes.io/token"
            || secret.pointer("/metadata/deletionTimestamp").is_some()
        {
            return Err(refused());
        }
        let field = |key: &str| -> Option<String> {
            let encoded = secret.pointer(&format!("/data/{key}"))?.as_str()?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()?;
            String::from_utf8(bytes).ok()
        };
        let stored = field("token-secret").ok_or_else(refused)?;
        if !tokens::constant_time_eq(stored.as_bytes(), token.secret.as_bytes())
            || field("usage-bootstrap-authentication").as_deref() != Some("true")
        {
            return Err(refused());
        }
        if let Some(expiration) = field("expiration") {
            let expired = chrono::DateTime::parse_from_rfc3339(&expiration)
                .map(|at| at < chrono::Utc::now())
                .unwrap_or(true);
            if expired {
                return Err(AuthnError::Unauthorized(
                    "the bootstrap token has expired".into(),
                ));
            }
        }
        let mut groups = vec!["system:bootstrappers".to_string()];
        for extra in field("auth-extra-groups").unwrap_or_default().split(',') {
            let extra = extra.trim();
            if extra.starts_with("system:bootstrappers:") {
                groups.push(extra.to_string());
            }
        }
        Ok(UserInfo::authenticated(
            format!("system:bootstrap:{}", token.id),
            groups,
        ))
    }

    fn get(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>, AuthnError> {
        self.store
            .get(&ObjectKey::new(resource, namespace, name))
            .map_err(|e| AuthnError::Unavailable(e.to_string()))
    }
}

fn uid(object: &Value) -> &str {
    object
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Marks a user authenticated by a dashboard session (see [`is_session`]).
const SESSION_EXTRA: &str = "shoal.dev/dashboard-session";

/// The user a dashboard session stands for, marked as such: a session cannot mint another
/// one, so it ends when it expires.
fn session_user(session: tokens::SessionClaims) -> UserInfo {
    let mut user = UserInfo::authenticated(session.registered.sub, session.groups);
    user.extra.insert(SESSION_EXTRA.into(), vec!["true".into()]);
    user
}

/// Whether `user` was authenticated by a dashboard session token.
pub fn is_session(user: &UserInfo) -> bool {
    user.extra.contains_key(SESSION_EXTRA)
}

/// The token of an `Authorization: Bearer <token>` header (the scheme in any case).
fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_headers_are_read_in_any_case() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer(""), None);
    }
}
