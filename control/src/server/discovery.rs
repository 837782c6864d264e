//! Discovery: `/version`, aggregated (`apidiscovery.k8s.io/v2`) and legacy discovery
//! (kubectl-wire.md §1), derived from [`RESOURCES`] and the served custom kinds (a CRD's
//! group lists its served versions, the preferred first, by Kubernetes' version priority).
//! The OpenAPI documents are `openapi`'s.

use axum::response::{IntoResponse, Response};
use http::header::{ACCEPT, CONTENT_TYPE};
use http::HeaderMap;
use serde_json::{json, Value};

use super::custom::CustomResources;
use crate::api::resources::{ResourceInfo, RESOURCES};
use crate::api::{request_metrics, usage};

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

/// Every served kind: the built-in table, then the custom kinds.
fn all_rows<'a>(
    custom: &'a [&'static ResourceInfo],
) -> impl Iterator<Item = &'static ResourceInfo> + 'a {
    RESOURCES.iter().chain(custom.iter().copied())
}

/// The groups served, in order, core first, each with its versions, preferred first.
fn groups(custom: &[&'static ResourceInfo]) -> Vec<(&'static str, Vec<&'static str>)> {
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for r in all_rows(custom) {
        match groups.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, versions)) if !versions.contains(&r.version) => versions.push(r.version),
            Some(_) => {}
            None => groups.push((r.group, vec![r.version])),
        }
    }
    for (_, versions) in &mut groups {
        versions.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
    }
    // Served by `metrics_api` and `custom_metrics`, not from the table: nothing of them is
    // stored.
    groups.push((usage::GROUP, vec![usage::VERSION]));
    groups.push((request_metrics::GROUP, vec![request_metrics::VERSION]));
    groups
}

/// The resources of a group-version served outside the table, in aggregated discovery's form.
fn unstored_resources(group: &str, version: &str) -> Vec<Value> {
    if (group, version) == (request_metrics::GROUP, request_metrics::VERSION) {
        // Each metric is a subresource of what it measures (`pods/requests_per_second`), as
        // the aggregator shows prometheus-adapter's list.
        return ["pods", "services"]
            .iter()
            .map(|resource| {
                let metrics: Vec<Value> = (request_metrics::METRICS.iter())
                    .map(|metric| json!({"subresource": metric, "responseKind": {"group": group, "version": version, "kind": "MetricValueList"}, "verbs": ["get"]}))
                    .collect();
                json!({
                    "resource": resource,
                    "responseKind": {"group": group, "version": version, "kind": "MetricValueList"},
                    "scope": "Namespaced",
                    "singularResource": "",
                    "verbs": [],
                    "subresources": metrics,
                })
            })
            .collect();
    }
    if (group, version) != (usage::GROUP, usage::VERSION) {
        return Vec::new();
    }
    let list = usage::resource_list();
    (list["resources"].as_array().into_iter().flatten())
        .map(|r| {
            json!({
                "resource": r["name"],
                "responseKind": {"group": group, "version": version, "kind": r["kind"]},
                "scope": if r["namespaced"] == true { "Namespaced" } else { "Cluster" },
                "singularResource": "",
                "verbs": r["verbs"],
            })
        })
        .collect()
}

/// Kubernetes' version priority: GA before beta before alpha, higher numbers first
/// (`v2` > `v1` > `v1beta2` > `v1beta1` > `v1alpha1`); other names last.
fn version_priority(version: &str) -> (u8, u64, u64) {
    let Some(rest) = version.strip_prefix('v') else {
        return (0, 0, 0);
    };
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    let Ok(major) = rest[..digits].parse::<u64>() else {
        return (0, 0, 0);
    };
    match &rest[digits..] {
        "" => (3, major, 0),
        tail => {
            let (stage, minor) = match (tail.strip_prefix("beta"), tail.strip_prefix("alpha")) {
                (Some(minor), _) => (2, minor),
                (_, Some(minor)) => (1, minor),
                _ => return (0, 0, 0),
            };
            match minor.parse::<u64>() {
                Ok(minor) => (stage, major, minor),
                Err(_) => (0, 0, 0),
            }
        }
    }
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

/// `GET /api` (`core = true`) or `GET /apis`, with `custom` the served custom kinds.
pub fn root(custom: &[&'static ResourceInfo], headers: &HeaderMap, core: bool) -> Response {
    let groups: Vec<(&str, Vec<&str>)> = groups(custom)
        .into_iter()
        .filter(|(g, _)| g.is_empty() == core)
        .collect();
    if wants_aggregated(headers) {
        let items: Vec<Value> = groups
            .iter()
            .map(|(group, versions)| {
                let versions: Vec<Value> = versions
                    .iter()
                    .map(|version| {
                        let mut resources: Vec<Value> = all_rows(custom)
                            .filter(|r| r.group == *group && r.version == *version)
                            .map(aggregated_resource)
                            .collect();
                        resources.extend(unstored_resources(group, version));
                        json!({"version": version, "freshness": "Current", "resources": resources})
                    })
                    .collect();
                json!({"metadata": {"name": group}, "versions": versions})
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
        .map(|(group, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|version| json!({"groupVersion": format!("{group}/{version}"), "version": version}))
                .collect();
            json!({"name": group, "versions": versions, "preferredVersion": versions[0]})
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
pub fn resource_list(custom: &CustomResources, group: &str, version: &str) -> Option<Value> {
    let custom = custom.rows();
    let served: Vec<&ResourceInfo> = all_rows(&custom)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_as_kubernetes_prefers_them() {
        let mut versions = vec!["v1alpha1", "v1beta1", "v2", "v1", "foo", "v1beta2", "v10"];
        versions.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
        assert_eq!(
            versions,
            ["v10", "v2", "v1", "v1beta2", "v1beta1", "v1alpha1", "foo"]
        );
    }
}
