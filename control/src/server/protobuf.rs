//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`, what kubectl's typed
//! calls send): the `k8s\0` envelope (a `runtime.Unknown` naming apiVersion and kind) around
//! the object, decoded with kube-rs' generated messages (`k8s-pb`) into the JSON the rest of
//! the server reads. Decoded so far: the access reviews (`kubectl auth can-i`, `whoami`),
//! TokenRequest (`kubectl create token`) and CertificateSigningRequest (`kubectl certificate
//! approve|deny`);
//! other kinds get a 415 naming the JSON way round.

use k8s_pb::api::authorization::v1 as authorization;
use k8s_pb::apimachinery::pkg::runtime::Unknown;
use prost::Message;
use serde_json::{json, Value};

use super::error::{ApiError, Result};

const MAGIC: &[u8] = b"k8s\0";

/// The JSON form of a protobuf body.
pub fn decode(body: &[u8]) -> Result<Value> {
    let bad =
        |why: String| ApiError::BadRequest(format!("the protobuf body cannot be read: {why}"));
    let raw = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("it does not start with the k8s\\0 envelope".into()))?;
    let unknown = Unknown::decode(raw).map_err(|e| bad(e.to_string()))?;
    let type_meta = unknown.type_meta.unwrap_or_default();
    let api_version = type_meta.api_version.unwrap_or_default();
    let kind = type_meta.kind.unwrap_or_default();
    let object = unknown.raw.unwrap_or_default();
    let object = object.as_slice();
    let mut value = match (api_version.as_str(), kind.as_str()) {
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => {
            let review = authorization::SelfSubjectAccessReview::decode(object).map_err(|e| bad(e.to_string()))?;
            let spec = review.spec.unwrap_or_default();
            access_review_spec(spec.resource_attributes, spec.non_resource_attributes)
        }
        ("authorization.k8s.io/v1", "SelfSubjectRulesReview") => {
            let review = authorization::SelfSubjectRulesReview::decode(object).map_err(|e| bad(e.to_string()))?;
            let namespace = review.spec.and_then(|s| s.namespace).unwrap_or_default();
            json!({"spec": {"namespace": namespace}})
        }
        ("authentication.k8s.io/v1", "SelfSubjectReview") => json!({}),
        ("authentication.k8s.io/v1", "TokenRequest") => {
            let request = k8s_pb::api::authentication::v1::TokenRequest::decode(object)
                .map_err(|e| bad(e.to_string()))?;
            let spec = request.spec.unwrap_or_default();
            let mut value = json!({"spec": {"audiences": spec.audiences}});
            if let Some(seconds) = spec.expiration_seconds {
                value["spec"]["expirationSeconds"] = json!(seconds);
            }
            if let Some(bound) = spec.bound_object_ref {
                value["spec"]["boundObjectRef"] = json!({
                    "kind": bound.kind.unwrap_or_default(),
                    "apiVersion": bound.api_version.unwrap_or_default(),
                    "name": bound.name.unwrap_or_default(),
                    "uid": bound.u_id.unwrap_or_default(),
                });
            }
            value
        }
        ("certificates.k8s.io/v1", "CertificateSigningRequest") => {
            let csr = k8s_pb::api::certificates::v1::CertificateSigningRequest::decode(object)
                .map_err(|e| bad(e.to_string()))?;
            certificate_signing_request(csr)
        }
        _ => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "protobuf request bodies of {api_version} {kind} are not supported; send application/json (for `kubectl create <generator>`, use `--dry-run=client -o yaml | kubectl apply -f -`)"
            )))
        }
    };
    value["apiVersion"] = json!(api_version);
    value["kind"] = json!(kind);
    if !value["metadata"].is_object() {
        value["metadata"] = json!({});
    }
    Ok(value)
}

/// A CertificateSigningRequest (`kubectl certificate approve|deny` sends one to `/approval`):
/// name, resourceVersion, spec and status conditions. The requester's identity in the spec
/// is the server's to fill in, so it is not read.
fn certificate_signing_request(
    csr: k8s_pb::api::certificates::v1::CertificateSigningRequest,
) -> Value {
    use base64::Engine;
    let meta = csr.metadata.unwrap_or_default();
    let spec = csr.spec.unwrap_or_default();
    let time = |t: Option<k8s_pb::apimachinery::pkg::apis::meta::v1::Time>| {
        t.and_then(|t| t.seconds)
            .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
    };
    let conditions: Vec<Value> = csr
        .status
        .unwrap_or_default()
        .conditions
        .into_iter()
        .map(|c| {
            let mut condition = json!({
                "type": c.r#type.unwrap_or_default(),
                "status": c.status.unwrap_or_default(),
                "reason": c.reason.unwrap_or_default(),
                "message": c.message.unwrap_or_default(),
            });
            if let Some(at) = time(c.last_update_time) {
                condition["lastUpdateTime"] = json!(at);
            }
            if let Some(at) = time(c.last_transition_time) {
                condition["lastTransitionTime"] = json!(at);
            }
            condition
        })
        .collect();
    let mut metadata = json!({"name": meta.name.unwrap_or_default()});
    if let Some(version) = meta.resource_version.filter(|v| !v.is_empty()) {
        metadata["resourceVersion"] = json!(version);
    }
    let mut value = json!({
        "metadata": metadata,
        "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(spec.request.unwrap_or_default()),
            "signerName": spec.signer_name.unwrap_or_default(),
            "usages": spec.usages,
        },
        "status": {"conditions": conditions},
    });
    if let Some(seconds) = spec.expiration_seconds {
        value["spec"]["expirationSeconds"] = json!(seconds);
    }
    value
}

fn access_review_spec(
    resource: Option<authorization::ResourceAttributes>,
    non_resource: Option<authorization::NonResourceAttributes>,
) -> Value {
    let mut spec = json!({});
    if let Some(r) = resource {
        spec["resourceAttributes"] = json!({
            "namespace": r.namespace.unwrap_or_default(),
            "verb": r.verb.unwrap_or_default(),
            "group": r.group.unwrap_or_default(),
            "version": r.version.unwrap_or_default(),
            "resource": r.resource.unwrap_or_default(),
            "subresource": r.subresource.unwrap_or_default(),
            "name": r.name.unwrap_or_default(),
        });
    }
    if let Some(n) = non_resource {
        spec["nonResourceAttributes"] = json!({
            "path": n.path.unwrap_or_default(),
            "verb": n.verb.unwrap_or_default(),
        });
    }
    json!({"spec": spec})
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_pb::apimachinery::pkg::runtime::TypeMeta;

    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let unknown = Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: None,
            content_type: None,
        };
        [MAGIC, &unknown.encode_to_vec()].concat()
    }

    #[test]
    fn access_reviews_decode_to_their_json() {
        let review = authorization::SelfSubjectAccessReview {
            metadata: None,
            spec: Some(authorization::SelfSubjectAccessReviewSpec {
                resource_attributes: Some(authorization::ResourceAttributes {
                    namespace: Some("a".into()),
                    verb: Some("list".into()),
                    resource: Some("pods".into()),
                    ..Default::default()
                }),
                non_resource_attributes: None,
            }),
            status: None,
        };
        let body = envelope(
            "authorization.k8s.io/v1",
            "SelfSubjectAccessReview",
            review.encode_to_vec(),
        );
        let value = decode(&body).unwrap();
        assert_eq!(value["kind"], "SelfSubjectAccessReview");
        assert_eq!(value["spec"]["resourceAttributes"]["verb"], "list");
        assert_eq!(value["spec"]["resourceAttributes"]["namespace"], "a");
    }

    #[test]
    fn other_bodies_are_clear_errors() {
        assert!(matches!(decode(b"{}"), Err(ApiError::BadRequest(_))));
        assert!(matches!(
            decode(b"k8s\0\xff\xff\xff"),
            Err(ApiError::BadRequest(_))
        ));
        let configmap = envelope("v1", "ConfigMap", vec![]);
        assert!(matches!(
            decode(&configmap),
            Err(ApiError::UnsupportedMediaType(_))
        ));
    }
}
