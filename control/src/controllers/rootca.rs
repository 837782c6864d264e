//! The root CA publisher (kube-controller-manager's `root-ca-cert-publisher`): every namespace
//! that is not being deleted holds the ConfigMap `kube-root-ca.crt` whose `ca.crt` is the CA
//! that signs the API's serving certificate, so that a pod can verify the API it reaches at
//! `https://kubernetes.default.svc`. A copy that is deleted or edited is put back.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::ObjectRef;

use super::runtime::{Action, Reconciler};
use super::Error;
use crate::client::Client;

pub const NAME: &str = "kube-root-ca.crt";
const KEY: &str = "ca.crt";

/// A namespace's changes, and any change to its `kube-root-ca.crt`, reconcile the namespace.
pub async fn run(client: Client, ca_pem: Arc<str>) {
    Reconciler::<Namespace>::new("root-ca-cert-publisher", &client)
        .watches::<ConfigMap, _>(|config_map: ConfigMap| {
            let namespace = config_map.metadata.namespace.clone().unwrap_or_default();
            (config_map.metadata.name.as_deref() == Some(NAME))
                .then(|| ObjectRef::<Namespace>::new(&namespace))
        })
        .run(move |namespace| reconcile(client.clone(), ca_pem.clone(), namespace))
        .await
}

fn wanted(namespace: &str, ca_pem: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(NAME.into()),
            namespace: Some(namespace.into()),
            annotations: Some(BTreeMap::from([(
                "kubernetes.io/description".to_string(),
                "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.".to_string(),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(KEY.to_string(), ca_pem.to_string())])),
        ..ConfigMap::default()
    }
}

async fn reconcile(
    client: Client,
    ca_pem: Arc<str>,
    namespace: Arc<Namespace>,
) -> Result<Action, Error> {
    let terminating = namespace.metadata.deletion_timestamp.is_some()
        || namespace.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
    if terminating {
        return Ok(Action::AwaitChange);
    }
    let name = namespace.metadata.name.as_deref().unwrap_or_default();
    let config_maps = client.api::<ConfigMap>(Some(name));
    let mut published = wanted(name, &ca_pem);
    let result = match config_maps.get_opt(NAME).await? {
        Some(current) if current.data == published.data => return Ok(Action::AwaitChange),
        Some(current) => {
            published.metadata.resource_version = current.metadata.resource_version;
            config_maps.replace(NAME, &published).await.map(drop)
        }
        None => config_maps.create(&published).await.map(drop),
    };
    match result {
        Ok(()) => Ok(Action::AwaitChange),
        // A racing write (this controller's watch will bring it round again).
        Err(e) if e.is_conflict() => Ok(Action::AwaitChange),
        // The namespace started terminating in between: nothing to do.
        Err(e) if e.code() == Some(403) => Ok(Action::AwaitChange),
        Err(e) => Err(e.into()),
    }
}
