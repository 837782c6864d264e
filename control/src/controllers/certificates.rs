//! CertificateSigningRequests, from request to certificate (Kubernetes' csrapproving,
//! csrsigning and csrcleaner controllers in one reconcile):
//!
//! - **Approve** a node's client certificate request (`kubernetes.io/kube-apiserver-client-kubelet`)
//!   on its own: the request names `system:node:<name>` in `system:nodes`, asks for client
//!   usages only and no alternative names, and its requester may `create`
//!   `certificatesigningrequests/nodeclient` (a bootstrap token's group is bound to it) or,
//!   renewing its own certificate, `certificatesigningrequests/selfnodeclient` (asked with a
//!   SubjectAccessReview, as Kubernetes does).
//! - **Approve or deny** a node gateway's serving certificate request
//!   (`kubernetes.io/kubelet-serving`) asked by that node itself (or by the control plane, in
//!   `system:masters`, for its in-process agents): `system:node:<name>` in `system:nodes`,
//!   `server auth` usages, and alternative names that are only the node's own: its name, the
//!   host names and IP addresses its Node publishes, and no address another node publishes
//!   (loopback excepted: nodes on one machine share it). Kubernetes leaves these requests to
//!   an administrator or an add-on approver; Shoal approves them itself, because its agents
//!   need them to serve at all, and denies a bad one with the reason, so the agent can say it.
//! - **Sign** approved requests for the client signers (`kube-apiserver-client-kubelet` and
//!   `kube-apiserver-client`) and the serving one with the cluster CA, for the shorter of
//!   `spec.expirationSeconds` and the cluster's signing duration; a request that cannot be
//!   signed gets `Failed`.
//! - **Clean up**: issued or denied requests go after an hour, pending ones after a day.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::Node;
use serde_json::{json, Value};

use super::runtime::{Action, Reconciler};
use super::Error;
use crate::auth::pki::{AltName, CsrInfo, Pki};
use crate::client::{Client, DeleteParams};

pub use crate::client::certificates::{
    issued_certificate, CLIENT_SIGNER, KUBELET_CLIENT_SIGNER, KUBELET_SERVING_SIGNER,
};
/// Kubernetes' `--cluster-signing-duration` default: a year.
pub const DEFAULT_SIGNING_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long an issued, denied or failed request stays.
const KEEP_FINISHED: Duration = Duration::from_secs(3600);
/// How long a request nobody approves stays.
const KEEP_PENDING: Duration = Duration::from_secs(24 * 3600);

/// The usages a node's client certificate may carry ("client auth" required).
const NODE_CLIENT_USAGES: &[&str] = &["digital signature", "key encipherment", "client auth"];
/// The usages a node's serving certificate may carry ("server auth" required).
const NODE_SERVING_USAGES: &[&str] = &["digital signature", "key encipherment", "server auth"];
/// The group whose members may have anything approved (the control plane, cluster admins).
const SUPERUSERS: &str = "system:masters";

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
    if !has_condition(&csr, "Approved") && signer == KUBELET_SERVING_SIGNER {
        decide_serving(&client, &api, &csr, &request).await?;
        return Ok(clean_up_later);
    }
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
    let problem = match signer {
        // rcgen keeps one attribute per type of the request's subject: a second O would be
        // dropped from the certificate without a word, and with it a group.
        _ if request.organizations.len() > 1 => Some(format!(
            "the subject names {} organizations (groups); this signer writes one per certificate",
            request.organizations.len()
        )),
        KUBELET_CLIENT_SIGNER => node_client_problem(&csr, &request),
        // Checked again: an administrator may have approved what Shoal would not.
        KUBELET_SERVING_SIGNER => node_serving_problem(&csr, &request),
        CLIENT_SIGNER => None,
        // Another signer's: not ours to sign.
        _ => return Ok(clean_up_later),
    };
    if let Some(problem) = problem {
        fail(&api, &name, &problem).await?;
        return Ok(clean_up_later);
    }
    let lifetime = csr
        .spec
        .expiration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(signing_duration, |s| {
            Duration::from_secs(s).min(signing_duration)
        });
    match pki.sign_request(
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
    if let Some(problem) = node_subject_problem(request) {
        return Some(problem);
    }
    if !request.names.is_empty() {
        return Some("a node's client certificate carries no alternative names".into());
    }
    usages_problem(csr, "client auth", NODE_CLIENT_USAGES)
}

/// Approves a node's serving certificate request asked by the node itself (or a superuser)
/// when everything it names is the node's own, and denies it with the reason otherwise; a
/// request from anyone else is left for an administrator.
async fn decide_serving(
    client: &Client,
    api: &crate::client::Api<CertificateSigningRequest>,
    csr: &CertificateSigningRequest,
    request: &CsrInfo,
) -> Result<(), Error> {
    let requester = csr.spec.username.as_deref().unwrap_or_default();
    let superuser = csr
        .spec
        .groups
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|g| g == SUPERUSERS);
    if requester != request.common_name && !superuser {
        return Ok(());
    }
    let mut problem = node_serving_problem(csr, request);
    if problem.is_none() {
        let nodes = client.api::<Node>(None).list(&Default::default()).await?;
        problem = names_not_owned(&request.common_name, &request.names, &nodes.items);
    }
    let name = csr.metadata.name.clone().unwrap_or_default();
    let (kind, reason, message) = match &problem {
        None => (
            "Approved",
            "AutoApproved",
            "Auto approving the node's serving certificate: it names only the node's own addresses.".to_string(),
        ),
        Some(why) => ("Denied", "NotTheNodesOwn", why.clone()),
    };
    if let Some(why) = &problem {
        tracing::warn!("denying serving certificate request {name}: {why}");
    }
    let decision = json!({"status": {"conditions": [{
        "type": kind, "status": "True", "reason": reason, "message": message,
        "lastUpdateTime": crate::api::object::now_rfc3339(),
    }]}});
    api.patch_subresource("approval", &name, &decision).await?;
    Ok(())
}

/// Why a request is not a node's serving certificate request, if it is not one.
fn node_serving_problem(csr: &CertificateSigningRequest, request: &CsrInfo) -> Option<String> {
    if let Some(problem) = node_subject_problem(request) {
        return Some(problem);
    }
    if request.names.is_empty() {
        return Some("a serving certificate must name the node's addresses".into());
    }
    if let Some(other) = request
        .names
        .iter()
        .find(|n| matches!(n, AltName::Other(_)))
    {
        return Some(format!(
            "a node's serving certificate names only DNS names and IP addresses, not {other}"
        ));
    }
    usages_problem(csr, "server auth", NODE_SERVING_USAGES)
}

/// Which of `names` node `common_name` (`system:node:<node>`) does not own, if any: a name is
/// its own when its Node publishes it (the node name, its host names, its IP addresses) and no
/// other Node publishes it too (loopback addresses excepted).
fn names_not_owned(common_name: &str, names: &[AltName], nodes: &[Node]) -> Option<String> {
    let node_name = common_name.strip_prefix("system:node:").unwrap_or_default();
    let Some(node) = nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(node_name))
    else {
        return Some(format!("node {node_name} is not registered"));
    };
    let addresses = |node: &Node| -> Vec<String> {
        node.status
            .as_ref()
            .and_then(|s| s.addresses.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|a| a.address)
            .collect()
    };
    let own = addresses(node);
    for name in names {
        let (text, shared_host) = match name {
            AltName::Dns(dns) => (dns.clone(), false),
            // Loopback and unspecified addresses name no one machine: nodes on one host
            // share them.
            AltName::Ip(ip) => (ip.to_string(), ip.is_loopback() || ip.is_unspecified()),
            AltName::Other(text) => return Some(format!("{text} is not an address")),
        };
        let published = text == node_name || own.iter().any(|a| addresses_equal(a, &text));
        if !published {
            return Some(format!(
                "{name} is not an address node {node_name} publishes in its status"
            ));
        }
        if shared_host {
            continue;
        }
        let claimed_by = nodes.iter().find(|other| {
            other.metadata.name.as_deref() != Some(node_name)
                && (other.metadata.name.as_deref() == Some(text.as_str())
                    || addresses(other).iter().any(|a| addresses_equal(a, &text)))
        });
        if let Some(other) = claimed_by {
            return Some(format!(
                "{name} is also node {}'s address",
                other.metadata.name.as_deref().unwrap_or_default()
            ));
        }
    }
    None
}

/// Whether two addresses as text are the same (IP addresses compared as addresses, host
/// names without case).
fn addresses_equal(a: &str, b: &str) -> bool {
    match (a.parse::<std::net::IpAddr>(), b.parse::<std::net::IpAddr>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a.eq_ignore_ascii_case(b),
    }
}

/// Why a request's subject is not a node's (`system:node:<name>` in `system:nodes`, no CA).
fn node_subject_problem(request: &CsrInfo) -> Option<String> {
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
    if request.is_ca {
        return Some("a node's certificate is no CA".into());
    }
    None
}

/// Why the request's usages are wrong: `required` missing, or one outside `allowed`.
fn usages_problem(
    csr: &CertificateSigningRequest,
    required: &str,
    allowed: &[&str],
) -> Option<String> {
    let usages = csr.spec.usages.as_deref().unwrap_or_default();
    if !usages.iter().any(|u| u == required)
        || usages.iter().any(|u| !allowed.contains(&u.as_str()))
    {
        return Some(format!(
            "usages {usages:?} must include {required:?} and be among {allowed:?}"
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

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};
    use std::net::IpAddr;

    fn node(name: &str, addresses: &[&str]) -> Node {
        Node {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            status: Some(NodeStatus {
                addresses: Some(
                    addresses
                        .iter()
                        .map(|a| NodeAddress {
                            type_: if a.parse::<IpAddr>().is_ok() {
                                "InternalIP".into()
                            } else {
                                "Hostname".into()
                            },
                            address: a.to_string(),
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn ip(text: &str) -> AltName {
        AltName::Ip(text.parse().unwrap())
    }

    fn dns(text: &str) -> AltName {
        AltName::Dns(text.into())
    }

    #[test]
    fn a_node_owns_its_name_and_the_addresses_only_it_publishes() {
        let nodes = [
            node("alpha", &["10.0.0.1", "alpha.example"]),
            node("beta", &["10.0.0.2", "127.0.0.1"]),
            node("gamma", &["10.0.0.3", "127.0.0.1", "0.0.0.0"]),
            node("delta-host", &["0.0.0.0"]),
        ];
        let owned = |cn: &str, names: &[AltName]| names_not_owned(cn, names, &nodes);
        assert_eq!(
            owned(
                "system:node:alpha",
                &[dns("alpha"), dns("ALPHA.example"), ip("10.0.0.1")]
            ),
            None
        );
        // Nodes on one machine share loopback (and agents bound to every address publish
        // the unspecified one).
        assert_eq!(
            owned("system:node:beta", &[dns("beta"), ip("127.0.0.1")]),
            None
        );
        assert_eq!(owned("system:node:gamma", &[ip("0.0.0.0")]), None);
        assert_eq!(
            owned("system:node:beta", &[ip("10.0.0.1")]).as_deref(),
            Some("IP:10.0.0.1 is not an address node beta publishes in its status")
        );
        assert_eq!(
            owned("system:node:beta", &[dns("alpha")]).as_deref(),
            Some("DNS:alpha is not an address node beta publishes in its status")
        );
        assert_eq!(
            owned("system:node:delta", &[dns("delta")]).as_deref(),
            Some("node delta is not registered")
        );
        assert!(owned("system:node:alpha", &[AltName::Other("email".into())]).is_some());
    }

    #[test]
    fn an_address_two_nodes_publish_belongs_to_neither() {
        let nodes = [node("alpha", &["10.0.0.1"]), node("mallory", &["10.0.0.1"])];
        assert_eq!(
            names_not_owned("system:node:mallory", &[ip("10.0.0.1")], &nodes).as_deref(),
            Some("IP:10.0.0.1 is also node alpha's address")
        );
        // A node named like another's address cannot claim it either.
        let nodes = [node("10.0.0.9", &[]), node("mallory", &["10.0.0.9"])];
        assert!(names_not_owned("system:node:mallory", &[ip("10.0.0.9")], &nodes).is_some());
    }

    fn csr(usages: &[&str]) -> CertificateSigningRequest {
        serde_json::from_value(json!({
            "metadata": {"name": "r"},
            "spec": {"request": "", "signerName": KUBELET_SERVING_SIGNER, "usages": usages},
        }))
        .unwrap()
    }

    fn request(cn: &str, organizations: &[&str], names: Vec<AltName>) -> CsrInfo {
        CsrInfo {
            common_name: cn.into(),
            organizations: organizations.iter().map(|o| o.to_string()).collect(),
            names,
            is_ca: false,
        }
    }

    #[test]
    fn a_serving_request_is_a_nodes_with_server_usages_and_addresses() {
        let good = request("system:node:a", &["system:nodes"], vec![dns("a")]);
        let serving = csr(&["digital signature", "server auth"]);
        assert_eq!(node_serving_problem(&serving, &good), None);
        let client_usages = csr(&["digital signature", "client auth"]);
        assert!(node_serving_problem(&client_usages, &good)
            .unwrap()
            .contains("must include \"server auth\""));
        let no_names = request("system:node:a", &["system:nodes"], vec![]);
        assert!(node_serving_problem(&serving, &no_names).is_some());
        let not_a_node = request("alice", &["system:nodes"], vec![dns("a")]);
        assert!(node_serving_problem(&serving, &not_a_node)
            .unwrap()
            .contains("system:node:<name>"));
        let other_group = request("system:node:a", &["system:masters"], vec![dns("a")]);
        assert!(node_serving_problem(&serving, &other_group).is_some());
        let uri = request(
            "system:node:a",
            &["system:nodes"],
            vec![AltName::Other("URI(x)".into())],
        );
        assert!(node_serving_problem(&serving, &uri)
            .unwrap()
            .contains("only DNS names and IP addresses"));
        // A client request with names is no client request.
        let client = csr(&["digital signature", "client auth"]);
        assert!(node_client_problem(&client, &good).is_some());
        let bare = request("system:node:a", &["system:nodes"], vec![]);
        assert_eq!(node_client_problem(&client, &bare), None);
    }
}
