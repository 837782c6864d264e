//! Discovery: `/version`, aggregated (`apidiscovery.k8s.io/v2`) and legacy discovery
//! (kubectl-wire.md §1), derived from [`RESOURCES`]. The OpenAPI documents are `openapi`'s.

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
