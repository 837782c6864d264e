//! What the API server adds to `certificates.k8s.io/v1` CertificateSigningRequests, as
//! kube-apiserver does: on create, the request must parse (its self-signature verified) and
//! the requester's identity is recorded in `spec.username/uid/groups/extra` from the
//! authenticated user, whatever the body said; approving (`/approval`) needs `approve` and
//! writing a certificate (`/status`) needs `sign` on the `signers` resource named by the
//! request's signer (or `<domain>/*`).

use base64::Engine;
use serde_json::{json, Value};

use super::error::{ApiError, Result};
use super::request::Request;
use super::ApiServer;
use crate::api::validation::Cause;
use crate::auth::pki::CsrInfo;
use crate::auth::rbac::Decision;
use crate::auth::request_info::RequestInfo;

pub const GROUP: &str = "certificates.k8s.io";

/// Checks the request and records who asked.
pub(super) fn prepare_create(request: &Request, object: &mut Value) -> Result<()> {
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let pem = object
        .pointer("/spec/request")
        .and_then(Value::as_str)
        .and_then(|encoded| {
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()
        })
        .and_then(|bytes| String::from_utf8(bytes).ok());
    // A missing or undecodable request is named by validation; one that decodes must parse.
    if let Some(pem) = pem.filter(|p| p.contains("-----BEGIN CERTIFICATE REQUEST-----")) {
        if let Err(why) = CsrInfo::parse(&pem) {
            return Err(ApiError::Invalid {
                kind: "CertificateSigningRequest".into(),
                name,
                causes: vec![Cause::invalid("spec.request", "<request>", &why)],
            });
        }
    }
    let user = &request.user;
    let spec = object
        .as_object_mut()
        .map(|o| o.entry("spec").or_insert_with(|| json!({})));
    if let Some(Value::Object(spec)) = spec {
        spec.insert("username".into(), json!(user.username));
        spec.insert("groups".into(), json!(user.groups));
        if user.uid.is_empty() {
            spec.remove("uid");
        } else {
            spec.insert("uid".into(), json!(user.uid));
        }
        if user.extra.is_empty() {
            spec.remove("extra");
        } else {
            spec.insert("extra".into(), json!(user.extra));
        }
    }
    if let Some(map) = object.as_object_mut() {
        map.remove("status");
    }
    Ok(())
}

/// On `/approval` and `/status`: whether the user may approve (or sign for) the request's
/// signer.
pub(super) fn check_signer(server: &ApiServer, request: &Request, object: &Value) -> Result<()> {
    if request.resource().builtin_kind() != "CertificateSigningRequest" {
        return Ok(());
    }
    let verb = match request.path.subresource.as_deref() {
        Some("approval") => "approve",
        Some("status") => "sign",
        _ => return Ok(()),
    };
    if request.user.is_superuser() {
        return Ok(());
    }
    let signer = object
        .pointer("/spec/signerName")
        .and_then(Value::as_str)
        .unwrap_or("");
    let domain_wildcard = format!("{}/*", signer.split('/').next().unwrap_or(""));
    let policy = server.policy.read();
    let allowed = [signer, domain_wildcard.as_str()].iter().any(|name| {
        let info = RequestInfo {
            resource_request: true,
            verb: verb.into(),
            api_group: GROUP.into(),
            resource: "signers".into(),
            name: (*name).into(),
            ..RequestInfo::default()
        };
        policy.authorize(&request.user, &info) == Decision::Allow
    });
    if allowed {
        return Ok(());
    }
    Err(ApiError::Forbidden(format!(
        "certificatesigningrequests.certificates.k8s.io \"{}\" is forbidden: user not permitted to {verb} requests with signerName \"{signer}\"",
        request.name()
    )))
}
