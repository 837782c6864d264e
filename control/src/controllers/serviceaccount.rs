//! The ServiceAccount controller: every namespace that is not being deleted has a `default`
//! ServiceAccount (re-created if deleted), which pods that name none run as.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::ObjectRef;

use super::runtime::{Action, Reconciler};
use super::Error;
use crate::client::Client;

pub const DEFAULT: &str = "default";

/// A namespace's changes, and a deleted `default` account, reconcile the namespace.
pub async fn run(client: Client) {
    Reconciler::<Namespace>::new("serviceaccount", &client)
        .watches::<ServiceAccount, _>(|account: ServiceAccount| {
            let namespace = account.metadata.namespace.clone().unwrap_or_default();
            (account.metadata.name.as_deref() == Some(DEFAULT))
                .then(|| ObjectRef::<Namespace>::new(&namespace))
        })
        .run(move |namespace| reconcile(client.clone(), namespace))
        .await
}

async fn reconcile(client: Client, namespace: Arc<Namespace>) -> Result<Action, Error> {
    let terminating = namespace.metadata.deletion_timestamp.is_some()
        || namespace.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
    if terminating {
        return Ok(Action::AwaitChange);
    }
    let name = namespace.metadata.name.as_deref().unwrap_or_default();
    let accounts = client.api::<ServiceAccount>(Some(name));
    if accounts.get_opt(DEFAULT).await?.is_some() {
        return Ok(Action::AwaitChange);
    }
    let account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(DEFAULT.into()),
            namespace: Some(name.into()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    match accounts.create(&account).await {
        Ok(_) => Ok(Action::AwaitChange),
        Err(e) if e.is_conflict() => Ok(Action::AwaitChange),
        // The namespace started terminating in between: nothing to do.
        Err(e) if e.code() == Some(403) => Ok(Action::AwaitChange),
        Err(e) => Err(e.into()),
    }
}
