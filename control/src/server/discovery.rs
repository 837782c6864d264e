//! Discovery and schema documents: `/version`, aggregated (`apidiscovery.k8s.io/v2`) and
//! legacy discovery, and the OpenAPI v3 documents kubectl's default validation looks for
//! (kubectl-wire.md §1-2). All are derived from [`RESOURCES`].

use std::collections::BTreeMap;

use axum::response::{IntoResponse, Response};
use http::header::{ACCEPT, CONTENT_TYPE};
use http::HeaderMap;
use serde_json::{json, Value};

use crate::api::resources::{ResourceInfo, RESOURCES};

const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": crate::api::KUBERNETES_MINOR.to_string(),
        "gitVersion": format!("{}+shoal-{}", crate::api::kubernetes_version(), env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    })
}

/// The groups served, in order, core first: (group, version).
fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut seen = Vec::new();
    for r in RESOURCES {
        if !seen.contains(&(r.group, r.version)) {
            seen.push((r.group, r.version));
        }
    }
    seen
}

fn wants_aggregated(headers: &HeaderMap) -> bool {
    headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=APIGroupDiscoveryList"))
}

fn json_response(content_type: &'static str, body: Value) -> Response {
    ([(CONTENT_TYPE, content_type)], body.to_string()).into_response()
}

/// `GET /api` (`core = true`) or `GET /apis`.
pub fn root(headers: &HeaderMap, core: bool) -> Response {
    let groups: Vec<(&str, &str)> = group_versions()
        .into_iter()
        .filter(|(g, _)| g.is_empty() == core)
        .collect();
    if wants_aggregated(headers) {
        let items: Vec<Value> = groups
            .iter()
            .map(|(group, version)| {
                let resources: Vec<Value> =
                    RESOURCES.iter().filter(|r| r.group == *group && r.version == *version).map(aggregated_resource).collect();
                json!({
                    "metadata": {"name": group},
                    "versions": [{"version": version, "freshness": "Current", "resources": resources}],
                })
            })
            .collect();
        let body = json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items});
        return json_response(AGGREGATED, body);
    }
    if core {
        return json_response(
            "application/json",
            json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]}),
        );
    }
    let groups: Vec<Value> = groups
        .iter()
        .map(|(group, version)| {
            let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
            json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    json_response(
        "application/json",
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
    )
}

fn aggregated_resource(r: &ResourceInfo) -> Value {
    let subresources: Vec<Value> = r
        .subresources
        .iter()
        .map(|(name, kind, verbs)| {
            let (group, version) = match *kind {
                "Binding" => ("", "v1"),
                "Scale" => ("autoscaling", "v1"),
                "Eviction" => ("policy", "v1"),
                "TokenRequest" => ("authentication.k8s.io", "v1"),
                _ => (r.group, r.version),
            };
            json!({"subresource": name, "responseKind": {"group": group, "version": version, "kind": kind}, "verbs": verbs})
        })
        .collect();
    json!({
        "resource": r.plural,
        "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": r.singular,
        "verbs": r.verbs,
        "shortNames": r.short_names,
        "categories": r.categories,
        "subresources": subresources,
    })
}

/// `GET /api/v1` or `GET /apis/{group}/{version}`: an `APIResourceList`, or `None` if the
/// group-version is not served.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let served: Vec<&ResourceInfo> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if served.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for r in &served {
        resources.push(json!({
            "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind,
            "verbs": r.verbs, "shortNames": r.short_names, "categories": r.categories,
        }));
        // pods/eviction is listed below with its policy/v1 group-version.
        for (sub, kind, verbs) in r
            .subresources
            .iter()
            .filter(|(sub, _, _)| *sub != "eviction")
        {
            resources.push(json!({"name": format!("{}/{sub}", r.plural), "singularName": "", "namespaced": r.namespaced, "kind": kind, "verbs": verbs}));
        }
    }
    // `kubectl drain` looks for pods/eviction here to decide between evicting and deleting.
    if group.is_empty() {
        resources.push(json!({"name": "pods/eviction", "singularName": "", "namespaced": true, "group": "policy", "version": "v1", "kind": "Eviction", "verbs": ["create"]}));
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
    )
}

/// `GET /openapi/v3`: the index of per-group-version documents.
pub fn openapi_root() -> Value {
    let mut paths = BTreeMap::new();
    for (group, version) in group_versions() {
        let key = if group.is_empty() {
            format!("api/{version}")
        } else {
            format!("apis/{group}/{version}")
        };
        paths.insert(
            key.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{key}")}),
        );
    }
    json!({"paths": paths})
}

/// `GET /openapi/v3/{api/v1 | apis/group/version}`: a PATCH operation with the
/// `fieldValidation` parameter and the GVK per kind (so kubectl validates on the server), and
/// a small schema per kind for `kubectl explain`.
pub fn openapi_group_version(path: &str) -> Option<Value> {
    let (group, version) = match path
        .trim_matches('/')
        .split('/')
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["api", version] => ("", *version),
        ["apis", group, version] => (*group, *version),
        _ => return None,
    };
    let served: Vec<&ResourceInfo> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if served.is_empty() {
        return None;
    }
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    for r in served {
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let item = if r.namespaced {
            format!(
                "{}/namespaces/{{namespace}}/{}/{{name}}",
                r.group_version_path(),
                r.plural
            )
        } else {
            format!("{}/{}/{{name}}", r.group_version_path(), r.plural)
        };
        let patch = json!({"parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}], "x-kubernetes-group-version-kind": gvk});
        paths.insert(
            item,
            json!({"patch": patch, "put": patch, "get": {"x-kubernetes-group-version-kind": gvk}}),
        );
        let schema_name = if r.group.is_empty() {
            format!("io.k8s.api.core.{}.{}", r.version, r.kind)
        } else {
            format!(
                "io.k8s.api.{}.{}.{}",
                r.group.split('.').next().unwrap_or(r.group),
                r.version,
                r.kind
            )
        };
        schemas.insert(
            schema_name,
            json!({
                "description": format!("{} is a Kubernetes {} served by Shoal; containers name Wasm modules or components as their image.", r.kind, r.kind),
                "type": "object",
                "properties": {
                    "apiVersion": {"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."},
                    "kind": {"type": "string", "description": "Kind is a string value representing the REST resource this object represents."},
                    "metadata": {"type": "object", "description": "Standard object's metadata."},
                    "spec": {"type": "object", "description": format!("Spec defines the desired state of the {}.", r.kind)},
                    "status": {"type": "object", "description": format!("Status is the most recently observed state of the {}.", r.kind)},
                },
                "x-kubernetes-group-version-kind": [gvk],
            }),
        );
    }
    Some(
        json!({"openapi": "3.0.0", "info": {"title": "Shoal", "version": crate::api::kubernetes_version()}, "paths": paths, "components": {"schemas": schemas}}),
    )
}

/// `GET /openapi/v2`: kubectl reads v2 only as protobuf, and only when v3 lacks a kind (an
/// unknown kind in a manifest). An empty Swagger 2.0 document (field 1, `swagger: "2.0"`)
/// lets kubectl go on to report the unknown kind itself instead of "failed to download openapi".
pub fn openapi_v2() -> Response {
    const DOCUMENT: &[u8] = b"\x0a\x032.0";
    (
        [(
            CONTENT_TYPE,
            "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
        )],
        DOCUMENT,
    )
        .into_response()
}
