//! The token cleaner (kube-controller-manager's `tokencleaner`): a bootstrap token Secret
//! (`type: bootstrap.kubernetes.io/token` in `kube-system`) is deleted once its `expiration`
//! has passed. Authentication refuses an expired token either way; this keeps the Secrets
//! from piling up.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;

use super::runtime::{Action, Reconciler};
use super::Error;
use crate::client::{Client, DeleteParams};

const TOKEN_TYPE: &str = "bootstrap.kubernetes.io/token";

pub async fn run(client: Client) {
    Reconciler::<Secret>::new("tokencleaner", &client)
        .run(move |secret| reconcile(client.clone(), secret))
        .await
}

/// When the token expires, if the Secret is a bootstrap token with a readable expiration.
fn expiration(secret: &Secret) -> Option<jiff::Timestamp> {
    if secret.type_.as_deref() != Some(TOKEN_TYPE)
        || secret.metadata.namespace.as_deref() != Some("kube-system")
    {
        return None;
    }
    let bytes = &secret.data.as_ref()?.get("expiration")?.0;
    std::str::from_utf8(bytes).ok()?.trim().parse().ok()
}

async fn reconcile(client: Client, secret: Arc<Secret>) -> Result<Action, Error> {
    let Some(expires) = expiration(&secret) else {
        return Ok(Action::AwaitChange);
    };
    let left = expires.duration_since(jiff::Timestamp::now());
    if left.is_positive() {
        let left = Duration::try_from(left).unwrap_or(Duration::from_secs(3600));
        return Ok(Action::RequeueAfter(left + Duration::from_secs(1)));
    }
    let name = secret.metadata.name.as_deref().unwrap_or_default();
    tracing::info!("deleting expired bootstrap token Secret kube-system/{name}");
    match client
        .api::<Secret>(Some("kube-system"))
        .delete(name, &DeleteParams::default())
        .await
    {
        Ok(()) => Ok(Action::AwaitChange),
        Err(e) if e.is_not_found() => Ok(Action::AwaitChange),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn token(namespace: &str, type_: &str, expiration: &str) -> Secret {
        Secret {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                namespace: Some(namespace.into()),
                ..Default::default()
            },
            type_: Some(type_.into()),
            data: Some(
                [(
                    "expiration".to_string(),
                    ByteString(expiration.as_bytes().to_vec()),
                )]
                .into(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn only_bootstrap_tokens_in_kube_system_with_a_valid_expiration_expire() {
        let at = "2026-12-05T10:00:00Z";
        assert_eq!(
            expiration(&token("kube-system", TOKEN_TYPE, at)),
            Some(at.parse().unwrap())
        );
        assert_eq!(expiration(&token("default", TOKEN_TYPE, at)), None);
        assert_eq!(expiration(&token("kube-system", "Opaque", at)), None);
        assert_eq!(expiration(&token("kube-system", TOKEN_TYPE, "soon")), None);
    }
}
