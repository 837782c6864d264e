//! Protobuf bodies (`application/vnd.kubernetes.protobuf`: kubectl's typed-client calls,
//! among them every `kubectl create <generator>`, and clients that prefer protobuf), for every
//! kind of the stable Kubernetes API groups, without code per kind:
//! - the envelope: `k8s\0`, then a `runtime.Unknown` naming apiVersion and kind around the
//!   object's bytes;
//! - the object: a dynamic message of the type the vendored `.proto` files give that
//!   apiVersion and kind ([`schemas::descriptors`]), converted to and from the JSON the rest of
//!   the server works with by [`to_json`] and [`from_json`], field names and embedded structs
//!   as [`names`] reads them from Kubernetes' OpenAPI definitions.
//!
//! Custom resources have no protobuf form (as on Kubernetes): 415 for a body, JSON for a reply.

mod from_json;
mod names;
mod to_json;

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, StatusCode};
use prost_reflect::{DynamicMessage, MessageDescriptor, Value as Proto};
use serde_json::{json, Value};

use super::error::{ApiError, Result};
use super::schemas;

/// The media type.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

const MAGIC: &[u8] = b"k8s\0";

/// Why a protobuf body cannot be read or an object cannot be written as one.
#[derive(Debug, thiserror::Error)]
pub enum ProtobufError {
    #[error("{0}")]
    Invalid(String),
    #[error("{api_version} {kind} has no protobuf form; send it as application/json")]
    NoMessage { api_version: String, kind: String },
}

impl From<ProtobufError> for ApiError {
    fn from(error: ProtobufError) -> Self {
        match error {
            ProtobufError::Invalid(why) => {
                ApiError::BadRequest(format!("the protobuf body cannot be read: {why}"))
            }
            unsupported @ ProtobufError::NoMessage { .. } => {
                ApiError::UnsupportedMediaType(unsupported.to_string())
            }
        }
    }
}

/// Middleware: a reply to a client whose first choice is protobuf (`Accept:
/// application/vnd.kubernetes.protobuf, application/json`, as kubectl's typed calls send) is
/// converted from the JSON the handlers write, for every kind that has a message. Watches,
/// logs, Tables and custom resources stay JSON, which such clients accept too; so does a reply
/// that cannot be converted (logged: it would be a gap in the conversion).
pub async fn negotiate(request: Request<Body>, next: Next) -> Response {
    let first_choice = request
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .and_then(|accept| accept.split(',').next())
        .map(|choice| choice.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let watch = request.uri().query().is_some_and(|q| {
        q.split('&')
            .any(|pair| pair == "watch=true" || pair == "watch=1")
    }) || request.uri().path().contains("/watch/");
    if !first_choice.starts_with(MEDIA_TYPE) || first_choice.contains("stream=") || watch {
        return next.run(request).await;
    }
    let response = next.run(request).await;
    let is_json = response
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/json");
    if !is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the reply could not be read",
        )
            .into_response();
    };
    let converted = serde_json::from_slice::<Value>(&bytes)
        .map_err(|e| ProtobufError::Invalid(e.to_string()))
        .and_then(|object| encode(&object));
    match converted {
        Ok(protobuf) => {
            parts
                .headers
                .insert(CONTENT_TYPE, HeaderValue::from_static(MEDIA_TYPE));
            parts.headers.remove(CONTENT_LENGTH);
            Response::from_parts(parts, Body::from(protobuf))
        }
        Err(ProtobufError::NoMessage { .. }) => Response::from_parts(parts, Body::from(bytes)),
        Err(error) => {
            tracing::warn!(%error, "a reply has no protobuf form; answering in JSON");
            Response::from_parts(parts, Body::from(bytes))
        }
    }
}

/// The JSON form of a protobuf request body.
pub fn decode(body: &[u8]) -> Result<Value> {
    Ok(decode_envelope(body)?)
}

/// `object` (with its apiVersion and kind) as a protobuf body.
pub fn encode(object: &Value) -> std::result::Result<Vec<u8>, ProtobufError> {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default();
    let descriptor = message_type(api_version, kind).ok_or_else(|| ProtobufError::NoMessage {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
    })?;
    let message = from_json::message(&descriptor, object, kind)?;
    let unknown = unknown_type();
    let mut envelope = DynamicMessage::new(unknown.clone());
    let mut type_meta = DynamicMessage::new(
        schemas::descriptors()
            .get_message_by_name("apimachinery.pkg.runtime.TypeMeta")
            .expect("runtime.TypeMeta is in the vendored protos"),
    );
    type_meta.set_field_by_name("apiVersion", Proto::String(api_version.to_string()));
    type_meta.set_field_by_name("kind", Proto::String(kind.to_string()));
    envelope.set_field_by_name("typeMeta", Proto::Message(type_meta));
    envelope.set_field_by_name(
        "raw",
        Proto::Bytes(prost::Message::encode_to_vec(&message).into()),
    );
    envelope.set_field_by_name("contentEncoding", Proto::String(String::new()));
    envelope.set_field_by_name("contentType", Proto::String(String::new()));
    Ok([MAGIC, &prost::Message::encode_to_vec(&envelope)].concat())
}

fn unknown_type() -> MessageDescriptor {
    schemas::descriptors()
        .get_message_by_name("apimachinery.pkg.runtime.Unknown")
        .expect("runtime.Unknown is in the vendored protos")
}

/// Reads an enveloped object (a body, or an object embedded in a `RawExtension`).
fn decode_envelope(body: &[u8]) -> std::result::Result<Value, ProtobufError> {
    let raw = body.strip_prefix(MAGIC).ok_or_else(|| {
        ProtobufError::Invalid("it does not start with the k8s\\0 envelope".into())
    })?;
    let unknown = DynamicMessage::decode(unknown_type(), raw)
        .map_err(|e| ProtobufError::Invalid(format!("the envelope: {e}")))?;
    let text = |message: &DynamicMessage, name: &str| {
        message
            .get_field_by_name(name)
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    };
    let type_meta = match unknown.get_field_by_name("typeMeta").as_deref() {
        Some(Proto::Message(meta)) => meta.clone(),
        _ => return Err(ProtobufError::Invalid("the envelope names no type".into())),
    };
    let api_version = text(&type_meta, "apiVersion");
    let kind = text(&type_meta, "kind");
    if kind.is_empty() {
        return Err(ProtobufError::Invalid("the envelope names no kind".into()));
    }
    let encoding = text(&unknown, "contentEncoding");
    if !encoding.is_empty() {
        return Err(ProtobufError::Invalid(format!(
            "content encoding {encoding:?} is not supported"
        )));
    }
    let object = unknown
        .get_field_by_name("raw")
        .and_then(|v| v.as_bytes().cloned())
        .unwrap_or_default();
    let descriptor = message_type(&api_version, &kind).ok_or_else(|| ProtobufError::NoMessage {
        api_version: api_version.clone(),
        kind: kind.clone(),
    })?;
    let message = DynamicMessage::decode(descriptor, object)
        .map_err(|e| ProtobufError::Invalid(format!("{api_version} {kind}: {e}")))?;
    let mut value = to_json::message(&message)?;
    if !value.is_object() {
        return Err(ProtobufError::Invalid(format!(
            "{api_version} {kind} is not an object"
        )));
    }
    value["apiVersion"] = json!(api_version);
    value["kind"] = json!(kind);
    if !value["metadata"].is_object() {
        value["metadata"] = json!({});
    }
    Ok(value)
}

/// The protobuf message of an apiVersion and kind: `api.<group's first label>.<version>`
/// for the API groups, meta/v1 for the kinds every group shares (Status, DeleteOptions, Table).
pub fn message_type(api_version: &str, kind: &str) -> Option<MessageDescriptor> {
    if kind.is_empty() || !kind.chars().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    if version.is_empty() || !version.chars().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    let package = match group {
        "" => "api.core".to_string(),
        "meta.k8s.io" => "apimachinery.pkg.apis.meta".to_string(),
        "apiextensions.k8s.io" => "apiextensions_apiserver.pkg.apis.apiextensions".to_string(),
        "apiregistration.k8s.io" => "kube_aggregator.pkg.apis.apiregistration".to_string(),
        "internal.apiserver.k8s.io" => "api.apiserverinternal".to_string(),
        group => format!("api.{}", group.split('.').next().unwrap_or(group)),
    };
    let pool = schemas::descriptors();
    pool.get_message_by_name(&format!("{package}.{version}.{kind}"))
        .or_else(|| pool.get_message_by_name(&format!("apimachinery.pkg.apis.meta.v1.{kind}")))
}

#[cfg(test)]
mod tests {
    //! Bodies are written with kube-rs' generated messages (`k8s-pb`), an encoder independent
    //! of the dynamic one under test.
    use super::*;
    use k8s_pb::api::apps::v1 as apps;
    use k8s_pb::api::core::v1 as core;
    use k8s_pb::apimachinery::pkg::api::resource::Quantity;
    use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
    use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
    use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
    use prost::Message;

    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let unknown = Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        [MAGIC, &unknown.encode_to_vec()].concat()
    }

    fn strings(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The metadata Go writes for a new object: every non-pointer field, empty or zero (the
    /// zero time as an empty message).
    fn new_metadata(name: &str, labels: &[(&str, &str)]) -> meta::ObjectMeta {
        meta::ObjectMeta {
            name: Some(name.into()),
            generate_name: Some(String::new()),
            namespace: Some(String::new()),
            uid: Some(String::new()),
            resource_version: Some(String::new()),
            generation: Some(0),
            creation_timestamp: Some(meta::Time {
                seconds: None,
                nanos: None,
            }),
            labels: strings(labels),
            ..Default::default()
        }
    }

    #[test]
    fn a_deployment_as_kubectl_create_sends_it_decodes_to_its_json() {
        let labels = [("app", "web")];
        let deployment = apps::Deployment {
            metadata: Some(new_metadata("web", &labels)),
            spec: Some(apps::DeploymentSpec {
                replicas: Some(0),
                selector: Some(meta::LabelSelector {
                    match_labels: strings(&labels),
                    match_expressions: vec![],
                }),
                template: Some(core::PodTemplateSpec {
                    metadata: Some(meta::ObjectMeta {
                        labels: strings(&labels),
                        ..Default::default()
                    }),
                    spec: Some(core::PodSpec {
                        containers: vec![core::Container {
                            name: Some("app".into()),
                            image: Some("registry.example/app:1".into()),
                            args: vec![String::new(), "--port=8080".into()],
                            ports: vec![core::ContainerPort {
                                container_port: Some(8080),
                                protocol: Some("TCP".into()),
                                ..Default::default()
                            }],
                            resources: Some(core::ResourceRequirements {
                                limits: [(
                                    "cpu".to_string(),
                                    Quantity {
                                        string: Some("500m".into()),
                                    },
                                )]
                                .into(),
                                ..Default::default()
                            }),
                            readiness_probe: Some(core::Probe {
                                handler: Some(core::ProbeHandler {
                                    http_get: Some(core::HttpGetAction {
                                        path: Some("/healthz".into()),
                                        port: Some(IntOrString {
                                            r#type: Some(1),
                                            int_val: Some(0),
                                            str_val: Some("http".into()),
                                        }),
                                        ..Default::default()
                                    }),
                                    ..Default::default()
                                }),
                                period_seconds: Some(5),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }],
                        automount_service_account_token: Some(false),
                        ..Default::default()
                    }),
                }),
                strategy: Some(apps::DeploymentStrategy {
                    r#type: Some("RollingUpdate".into()),
                    rolling_update: Some(apps::RollingUpdateDeployment {
                        max_surge: Some(IntOrString {
                            r#type: Some(1),
                            int_val: Some(0),
                            str_val: Some("25%".into()),
                        }),
                        max_unavailable: Some(IntOrString {
                            r#type: Some(0),
                            int_val: Some(1),
                            str_val: Some(String::new()),
                        }),
                    }),
                }),
                ..Default::default()
            }),
            status: Some(Default::default()),
        };
        let value = decode(&envelope(
            "apps/v1",
            "Deployment",
            deployment.encode_to_vec(),
        ))
        .unwrap();
        assert_eq!(
            value,
            json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {
                    "name": "web",
                    "generation": 0,
                    "labels": {"app": "web"},
                },
                "spec": {
                    "replicas": 0,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {
                            "containers": [{
                                "name": "app",
                                "image": "registry.example/app:1",
                                "args": ["", "--port=8080"],
                                "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                                "resources": {"limits": {"cpu": "500m"}},
                                "readinessProbe": {
                                    "httpGet": {"path": "/healthz", "port": "http"},
                                    "periodSeconds": 5,
                                },
                            }],
                            "automountServiceAccountToken": false,
                        },
                    },
                    "strategy": {
                        "type": "RollingUpdate",
                        "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1},
                    },
                },
                "status": {},
            })
        );
    }

    #[test]
    fn secrets_keep_bytes_as_base64_and_empty_values() {
        let secret = core::Secret {
            metadata: Some(new_metadata("s", &[])),
            data: [
                ("key".to_string(), b"\x00\xffvalue".to_vec()),
                ("empty".to_string(), Vec::new()),
            ]
            .into(),
            r#type: Some("Opaque".into()),
            ..Default::default()
        };
        let value = decode(&envelope("v1", "Secret", secret.encode_to_vec())).unwrap();
        assert_eq!(value["data"], json!({"key": "AP92YWx1ZQ==", "empty": ""}));
        assert_eq!(value["type"], "Opaque");
    }

    #[test]
    fn embedded_structs_and_renamed_fields_decode() {
        let pod = core::Pod {
            metadata: Some(new_metadata("p", &[])),
            spec: Some(core::PodSpec {
                volumes: vec![core::Volume {
                    name: Some("config".into()),
                    volume_source: Some(core::VolumeSource {
                        config_map: Some(core::ConfigMapVolumeSource {
                            local_object_reference: Some(core::LocalObjectReference {
                                name: Some("settings".into()),
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                }],
                ..Default::default()
            }),
            status: None,
        };
        let value = decode(&envelope("v1", "Pod", pod.encode_to_vec())).unwrap();
        assert_eq!(
            value["spec"]["volumes"],
            json!([{"name": "config", "configMap": {"name": "settings"}}])
        );
        let request = k8s_pb::api::authentication::v1::TokenRequest {
            metadata: None,
            spec: Some(k8s_pb::api::authentication::v1::TokenRequestSpec {
                audiences: vec!["https://kubernetes.default.svc".into()],
                expiration_seconds: Some(600),
                bound_object_ref: Some(k8s_pb::api::authentication::v1::BoundObjectReference {
                    kind: Some("Pod".into()),
                    api_version: Some("v1".into()),
                    name: Some("p".into()),
                    u_id: Some("1234".into()),
                }),
            }),
            status: None,
        };
        let value = decode(&envelope(
            "authentication.k8s.io/v1",
            "TokenRequest",
            request.encode_to_vec(),
        ))
        .unwrap();
        assert_eq!(value["spec"]["boundObjectRef"]["uid"], "1234");
        assert_eq!(value["spec"]["expirationSeconds"], 600);
        assert_eq!(value["metadata"], json!({}));
    }

    #[test]
    fn objects_encode_and_decode_back_to_the_same_json() {
        let objects = [
            json!({
                "apiVersion": "batch/v1", "kind": "CronJob",
                "metadata": {"name": "tick", "namespace": "a", "resourceVersion": "7",
                             "creationTimestamp": "2026-12-05T17:00:00Z",
                             "annotations": {"x": ""}},
                "spec": {"schedule": "*/1 * * * *", "suspend": false,
                         "jobTemplate": {"metadata": {}, "spec": {"backoffLimit": 0, "template": {
                             "metadata": {},
                             "spec": {"restartPolicy": "Never",
                                      "containers": [{"name": "t", "image": "tick.wasm"}]}}}}},
                "status": {"lastScheduleTime": "2026-12-05T17:01:00Z"},
            }),
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": "reader", "namespace": "a"},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"],
                           "nonResourceURLs": ["/healthz"]}],
            }),
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web", "namespace": "a"},
                "spec": {"type": "NodePort", "selector": {"app": "web"},
                         "ports": [{"name": "http", "port": 80, "targetPort": 8080,
                                    "protocol": "TCP", "nodePort": 30080}]},
                "status": {"loadBalancer": {}},
            }),
            json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "n1", "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 40,
                         "renewTime": "2026-12-05T17:00:00.123456Z"},
            }),
            json!({
                "apiVersion": "v1", "kind": "ConfigMapList",
                "metadata": {"resourceVersion": "9", "continue": "abc", "remainingItemCount": 3},
                "items": [{"metadata": {"name": "c", "namespace": "a"}, "data": {"k": "v"},
                           "binaryData": {"b": "AAE="}}],
            }),
            json!({
                "apiVersion": "v1", "kind": "Status",
                "metadata": {}, "status": "Failure", "code": 404, "reason": "NotFound",
                "message": "pods \"x\" not found",
                "details": {"name": "x", "kind": "pods"},
            }),
            json!({
                "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                "metadata": {"name": "widgets.example.com"},
                "spec": {"group": "example.com", "scope": "Namespaced",
                         "names": {"plural": "widgets", "kind": "Widget"},
                         "versions": [{"name": "v1", "served": true, "storage": true,
                             "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                                 "spec": {"type": "object",
                                          "x-kubernetes-preserve-unknown-fields": true,
                                          "additionalProperties": false,
                                          "default": {"size": 1},
                                          "required": ["size"],
                                          "properties": {"size": {"type": "integer", "minimum": 1.0}}},
                                 "tags": {"type": "array", "items": {"type": "string"}}}}}}]},
            }),
        ];
        for object in objects {
            let body = encode(&object).unwrap();
            assert_eq!(decode(&body).unwrap(), object, "round trip of {object}");
        }
    }

    #[test]
    fn encoded_objects_are_what_kubernetes_reads() {
        let object = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "a", "labels": {"app": "web"}},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                     "strategy": {"rollingUpdate": {"maxSurge": "50%"}},
                     "template": {"metadata": {}, "spec": {"containers": [{"name": "c", "image": "i"}]}}},
            "shoalOnly": {"dropped": true},
        });
        let body = encode(&object).unwrap();
        let unknown = Unknown::decode(&body[MAGIC.len()..]).unwrap();
        assert_eq!(
            unknown.type_meta.unwrap().kind.as_deref(),
            Some("Deployment")
        );
        let deployment = apps::Deployment::decode(unknown.raw.unwrap().as_slice()).unwrap();
        let spec = deployment.spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        let surge = spec
            .strategy
            .unwrap()
            .rolling_update
            .unwrap()
            .max_surge
            .unwrap();
        assert_eq!(
            (surge.r#type, surge.str_val.as_deref()),
            (Some(1), Some("50%"))
        );
        assert_eq!(
            deployment
                .metadata
                .unwrap()
                .labels
                .get("app")
                .map(String::as_str),
            Some("web")
        );
    }

    #[test]
    fn bad_bodies_are_clear_errors() {
        let bad_request = |body: &[u8], says: &str| match decode(body) {
            Err(ApiError::BadRequest(message)) => {
                assert!(message.contains(says), "{message:?} should say {says:?}")
            }
            other => panic!("{other:?} for {body:?}"),
        };
        bad_request(b"{}", "envelope");
        bad_request(b"k8s\0\xff\xff\xff", "envelope");
        bad_request(
            &envelope("v1", "ConfigMap", vec![0x0a, 0x05, 0x01]),
            "v1 ConfigMap",
        );
        // A field of the wrong wire type: metadata (1) as a varint.
        bad_request(
            &envelope("v1", "ConfigMap", vec![0x08, 0x01]),
            "v1 ConfigMap",
        );
        let mut gzipped = Unknown::decode(&envelope("v1", "ConfigMap", vec![])[4..]).unwrap();
        gzipped.content_encoding = Some("gzip".into());
        bad_request(&[MAGIC, &gzipped.encode_to_vec()].concat(), "gzip");
        bad_request(b"k8s\0", "names no kind");
        for (api_version, kind) in [("example.com/v1", "Widget"), ("v1", "../x"), ("", "Pod")] {
            assert!(matches!(
                decode(&envelope(api_version, kind, vec![])),
                Err(ApiError::UnsupportedMediaType(_))
            ));
        }
        assert!(matches!(
            encode(&json!({"apiVersion": "example.com/v1", "kind": "Widget"})),
            Err(ProtobufError::NoMessage { .. })
        ));
        assert!(matches!(
            encode(&json!({"apiVersion": "v1", "kind": "ConfigMap", "data": ["not", "a map"]})),
            Err(ProtobufError::Invalid(_))
        ));
    }
}
