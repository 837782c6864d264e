//! CertificateSigningRequests, from request to certificate (Kubernetes' csrapproving,
//! csrsigning and csrcleaner controllers in one reconcile):
//!
//! - **Approve** a node's client certificate request (`kubernetes.io/kube-apiserver-client-kubelet`)
//!   on its own: the request names `system:node:<name>` in `system:nodes`, asks for client
//!   usages only and no alternative names, and its requester may `create`
//!   `certificatesigningrequests/nodeclient` (a bootstrap token's group is bound to it) or,
//!   renewing its own certificate, `certificatesigningrequests/selfnodeclient` (asked with a
//!   SubjectAccessReview, as Kubernetes does).
//! - **Sign** approved requests for the client signers (`kube-apiserver-client-kubelet` and
//!   `kube-apiserver-client`) with the cluster CA, for the shorter of `spec.expirationSeconds`
//!   and the cluster's signing duration; a request that cannot be signed gets `Failed`.
//! - **Clean up**: issued or denied requests go after an hour, pending ones after a day.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use serde_json::{json, Value};

use super::runtime::{Action, Reconciler};
use super::Error;
use crate::auth::pki::{CsrInfo, Pki};
use crate::client::{Client, DeleteParams};

pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client";
/// Kubernetes' `--cluster-signing-duration` default: a year.
pub const DEFAULT_SIGNING_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long an issued, denied or failed request stays.
const KEEP_FINISHED: Duration = Duration::from_secs(3600);
/// How long a request nobody approves stays.
const KEEP_PENDING: Duration = Duration::from_secs(24 * 3600);

/// The usages a node's client certificate may carry ("client auth" required).
const NODE_CLIENT_USAGES: &[&str] = &["digital signature", "key encipherment", "client auth"];

pub async fn run(client: Client, pki: Arc<Pki>, signing_duration: Duration) {
    Reconciler::<CertificateSigningRequest>::new("certificatesigningrequest", &client)
        .run(move |csr| reconcile(client.clone(), pki.clone(), signing_duration, csr))
        .await
}

fn has_condition(csr: &CertificateSigningRequest, kind: &str) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == kind && c.status == "True"))
}

async fn reconcile(
    client: Client,
    pki: Arc<Pki>,
    signing_duration: Duration,
    csr: Arc<CertificateSigningRequest>,
) -> Result<Action, Error> {
    let name = csr.metadata.name.clone().unwrap_or_default();
    let api = client.api::<CertificateSigningRequest>(None);
    let issued = csr
        .status
        .as_ref()
        .and_then(|s| s.certificate.as_ref())
        .is_some_and(|c| !c.0.is_empty());
    let finished = issued || has_condition(&csr, "Denied") || has_condition(&csr, "Failed");
    let age = csr
        .metadata
        .creation_timestamp
        .as_ref()
        .and_then(|t| std::time::SystemTime::from(t.0).elapsed().ok())
        .unwrap_or_default();
    let keep = if finished {
        KEEP_FINISHED
    } else {
        KEEP_PENDING
    };
    if age >= keep {
        match api.delete(&name, &DeleteParams::default()).await {
            Err(e) if !e.is_not_found() => return Err(e.into()),
            _ => return Ok(Action::AwaitChange),
        }
    }
    let clean_up_later = Action::RequeueAfter(keep - age);
    if finished {
        return Ok(clean_up_later);
    }
    let pem = String::from_utf8_lossy(&csr.spec.request.0).to_string();
    let request = match CsrInfo::parse(&pem) {
        Ok(request) => request,
        Err(why) => {
            fail(&api, &name, &why).await?;
            return Ok(clean_up_later);
        }
    };
    let signer = csr.spec.signer_name.as_str();
    if !has_condition(&csr, "Approved") {
        if signer == KUBELET_CLIENT_SIGNER
            && node_client_problem(&csr, &request).is_none()
            && may_request(&client, &csr, &request).await?
        {
            let approval = json!({"status": {"conditions": [{
                "type": "Approved", "status": "True", "reason": "AutoApproved",
                "message": "Auto approving node client certificate after SubjectAccessReview.",
                "lastUpdateTime": crate::api::object::now_rfc3339(),
            }]}});
            api.patch_subresource("approval", &name, &approval).await?;
        }
        // Approved or not, the change (if any) wakes this again.
        return Ok(clean_up_later);
    }
    if signer != KUBELET_CLIENT_SIGNER && signer != CLIENT_SIGNER {
        // Another signer's: not ours to sign.
        return Ok(clean_up_later);
    }
    if signer == KUBELET_CLIENT_SIGNER {
        if let Some(problem) = node_client_problem(&csr, &request) {
            fail(&api, &name, &problem).await?;
            return Ok(clean_up_later);
        }
    }
    let lifetime = csr
        .spec
        .expiration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(signing_duration, |s| {
            Duration::from_secs(s).min(signing_duration)
        });
    match pki.sign_client_request(
        &pem,
        csr.spec.usages.as_deref().unwrap_or_default(),
        lifetime,
    ) {
        Ok(certificate) => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(certificate);
            let mut status = serde_json::to_value(csr.status.clone().unwrap_or_default())?;
            status["certificate"] = Value::String(encoded);
            api.patch_subresource("status", &name, &json!({ "status": status }))
                .await?;
        }
        Err(why) => fail(&api, &name, &why.to_string()).await?,
    }
    Ok(clean_up_later)
}

/// Why a request is not a node's client certificate request, if it is not one.
fn node_client_problem(csr: &CertificateSigningRequest, request: &CsrInfo) -> Option<String> {
    if !request.common_name.starts_with("system:node:")
        || request.common_name.len() == "system:node:".len()
    {
        return Some(format!(
            "the subject's common name {:?} is not system:node:<name>",
            request.common_name
        ));
    }
    if request.organizations != ["system:nodes"] {
        return Some(format!(
            "the subject's organizations {:?} are not [\"system:nodes\"]",
            request.organizations
        ));
    }
    if !request.names.is_empty() || request.is_ca {
        return Some(
            "a node's client certificate carries no alternative names and is no CA".into(),
        );
    }
    let usages = csr.spec.usages.as_deref().unwrap_or_default();
    if !usages.iter().any(|u| u == "client auth")
        || usages
            .iter()
            .any(|u| !NODE_CLIENT_USAGES.contains(&u.as_str()))
    {
        return Some(format!(
            "usages {usages:?} must include \"client auth\" and be among {NODE_CLIENT_USAGES:?}"
        ));
    }
    None
}

/// Whether the requester may have this node client certificate approved: a node renewing
/// its own (`selfnodeclient`), or anyone bound to `nodeclient` (bootstrap tokens).
async fn may_request(
    client: &Client,
    csr: &CertificateSigningRequest,
    request: &CsrInfo,
) -> Result<bool, Error> {
    let username = csr.spec.username.clone().unwrap_or_default();
    let subresources: &[&str] = if username == request.common_name {
        &["selfnodeclient", "nodeclient"]
    } else {
        &["nodeclient"]
    };
    for subresource in subresources {
        let review = json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": username,
                "uid": csr.spec.uid,
                "groups": csr.spec.groups,
                "extra": csr.spec.extra,
                "resourceAttributes": {
                    "group": "certificates.k8s.io",
                    "resource": "certificatesigningrequests",
                    "subresource": subresource,
                    "verb": "create",
                },
            },
        });
        let answer = client
            .json(
                http::Method::POST,
                "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                "application/json",
                Some(&review),
            )
            .await?;
        if answer.pointer("/status/allowed") == Some(&Value::Bool(true)) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Marks the request Failed with `why`.
async fn fail(
    api: &crate::client::Api<CertificateSigningRequest>,
    name: &str,
    why: &str,
) -> Result<(), Error> {
    tracing::warn!("certificate signing request {name} failed: {why}");
    let mut conditions = api
        .get(name)
        .await?
        .status
        .and_then(|s| s.conditions)
        .map(serde_json::to_value)
        .transpose()?
        .unwrap_or(json!([]));
    if let Some(list) = conditions.as_array_mut() {
        list.push(json!({
            "type": "Failed", "status": "True", "reason": "SignerValidationFailure",
            "message": why, "lastUpdateTime": crate::api::object::now_rfc3339(),
        }));
    }
    api.patch_subresource(
        "status",
        name,
        &json!({"status": {"conditions": conditions}}),
    )
    .await?;
    Ok(())
}

/// The certificate an issued request carries, as PEM text.
pub fn issued_certificate(csr: &CertificateSigningRequest) -> Option<String> {
    let bytes = &csr.status.as_ref()?.certificate.as_ref()?.0;
    (!bytes.is_empty()).then(|| String::from_utf8_lossy(bytes).to_string())
}
