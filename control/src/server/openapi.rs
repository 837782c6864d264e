//! The OpenAPI documents (kubectl-wire.md §2), built from Kubernetes' own schemas
//! ([`schemas::definitions`]), never written by hand:
//! - `/openapi/v3`: the index of per-group-version documents, each URL with a `?hash=` of its
//!   content so kubectl may cache it;
//! - `/openapi/v3/{api/v1 | apis/group/version}`: for each kind served, a PATCH (and PUT)
//!   operation with the `fieldValidation` parameter and the GVK, so kubectl validates on the
//!   server, and `components.schemas` with every schema the kinds reach: descriptions
//!   (`kubectl explain`, `--recursive`), types, and the patch strategies and merge keys
//!   kubectl's strategic merge reads;
//! - `/openapi/v2`: an empty protobuf document (kubectl reads v2 only for kinds v3 lacks).
//!
//! The v2 definitions become v3 schemas as Kubernetes converts them: references move to
//! `#/components/schemas/`, and a reference with siblings (a description, a default) is
//! wrapped in `allOf`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::LazyLock;

use axum::response::{IntoResponse, Response};
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::schemas;
use crate::api::resources::{ResourceInfo, RESOURCES};

const V2_PREFIX: &str = "#/definitions/";
const V3_PREFIX: &str = "#/components/schemas/";

/// Every group-version document, serialized once: its key (`apis/apps/v1`) to (hash, bytes).
static DOCUMENTS: LazyLock<BTreeMap<String, (String, Vec<u8>)>> =
    LazyLock::new(|| documents(RESOURCES.iter(), group_version_document));

/// One document per group-version of `resources`, built by `build`: its key (`api/v1`,
/// `apis/apps/v1`) to (hash, bytes).
fn documents<'a>(
    resources: impl Iterator<Item = &'a ResourceInfo>,
    build: fn(&[&ResourceInfo]) -> Value,
) -> BTreeMap<String, (String, Vec<u8>)> {
    let mut served: BTreeMap<(&str, &str), Vec<&ResourceInfo>> = BTreeMap::new();
    for resource in resources {
        served
            .entry((resource.group, resource.version))
            .or_default()
            .push(resource);
    }
    served
        .into_iter()
        .map(|((group, version), resources)| {
            let key = if group.is_empty() {
                format!("api/{version}")
            } else {
                format!("apis/{group}/{version}")
            };
            let bytes =
                serde_json::to_vec(&build(&resources)).expect("a JSON value always serializes");
            let hash = hex(&Sha256::digest(&bytes));
            (key, (hash, bytes))
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// The documents of the custom kinds' group-versions, built when asked for (CRDs change at
/// run time): key to (hash, bytes).
fn custom_documents(custom: &[&'static ResourceInfo]) -> BTreeMap<String, (String, Vec<u8>)> {
    documents(custom.iter().copied(), custom_document)
}

/// `GET /openapi/v3`, with `custom` the served custom kinds.
pub fn root(custom: &[&'static ResourceInfo]) -> Value {
    let custom = custom_documents(custom);
    let paths: Map<String, Value> = DOCUMENTS
        .iter()
        .chain(custom.iter())
        .map(|(key, (hash, _))| {
            (
                key.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={hash}")}),
            )
        })
        .collect();
    json!({"paths": paths})
}

/// `GET /openapi/v3/{path}`, or `None` if no group-version is served there.
pub fn group_version(custom: &[&'static ResourceInfo], path: &str) -> Option<Response> {
    let key = path.trim_matches('/');
    let bytes = match DOCUMENTS.get(key) {
        Some((_, bytes)) => bytes.clone(),
        None => custom_documents(custom).remove(key)?.1,
    };
    Some(
        (
            [
                (CONTENT_TYPE, "application/json"),
                // The URL carries the content's hash.
                (CACHE_CONTROL, "public, immutable"),
            ],
            bytes,
        )
            .into_response(),
    )
}

/// `GET /openapi/v2`: an empty Swagger 2.0 document (field 1, `swagger: "2.0"`), which lets
/// kubectl go on to report an unknown kind itself instead of "failed to download openapi".
pub fn v2() -> Response {
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

/// Definition names by the GVK they declare (`x-kubernetes-group-version-kind`).
static BY_KIND: LazyLock<HashMap<(String, String, String), String>> = LazyLock::new(|| {
    let mut by_kind = HashMap::new();
    for (name, definition) in schemas::definitions() {
        for gvk in definition["x-kubernetes-group-version-kind"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let field = |f: &str| gvk[f].as_str().unwrap_or_default().to_string();
            by_kind
                .entry((field("group"), field("version"), field("kind")))
                .or_insert_with(|| name.clone());
        }
    }
    by_kind
});

/// The definition of a served kind.
pub fn definition_of(group: &str, version: &str, kind: &str) -> Option<&'static str> {
    BY_KIND
        .get(&(group.to_string(), version.to_string(), kind.to_string()))
        .map(String::as_str)
}

fn group_version_document(resources: &[&ResourceInfo]) -> Value {
    let mut paths = Map::new();
    let mut roots = Vec::new();
    for r in resources {
        let definition = definition_of(r.group, r.version, r.kind);
        let (name, item) = operations(r, definition);
        paths.insert(name, item);
        roots.extend(definition);
    }
    document(paths, reachable_schemas(&roots))
}

/// The document of custom kinds: each CRD version's schema as its definition (named as
/// Kubernetes names them, `com.example.v1.Widget`), with `apiVersion`, `kind` and the
/// ObjectMeta `metadata` every object has, so `kubectl explain` and field validation see it.
fn custom_document(resources: &[&ResourceInfo]) -> Value {
    const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";
    let mut paths = Map::new();
    let mut schemas = reachable_schemas(&[OBJECT_META]);
    for r in resources {
        let Some(custom) = r.custom else {
            continue;
        };
        let reversed: Vec<&str> = r.group.split('.').rev().collect();
        let name = format!("{}.{}.{}", reversed.join("."), r.version, r.kind);
        let mut schema = custom.raw_schema.clone();
        if let Some(map) = schema.as_object_mut() {
            let properties = map.entry("properties").or_insert_with(|| json!({}));
            properties["apiVersion"] = json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources"});
            properties["kind"] = json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds"});
            properties["metadata"] = json!({"allOf": [{"$ref": format!("{V3_PREFIX}{OBJECT_META}")}], "description": "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"});
            map.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": r.group, "version": r.version, "kind": r.kind}]),
            );
        }
        schemas.insert(name.clone(), schema);
        let (path, item) = operations(r, Some(&name));
        paths.insert(path, item);
    }
    document(paths, schemas)
}

/// The item path of `r` and its get, put and patch operations, their bodies `definition`.
fn operations(r: &ResourceInfo, definition: Option<&str>) -> (String, Value) {
    let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
    let body = match definition {
        Some(name) => {
            json!({"content": {"application/json": {"schema": {"$ref": format!("{V3_PREFIX}{name}")}}}})
        }
        None => json!({}),
    };
    let parameters = json!([
        {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
    ]);
    let write = |body: Value| json!({"parameters": parameters, "requestBody": body, "responses": {"200": body}, "x-kubernetes-group-version-kind": gvk, "x-kubernetes-action": "patch"});
    let mut put = write(body.clone());
    put["x-kubernetes-action"] = json!("put");
    // Custom resources take no strategic merge patches.
    let patches = if r.custom.is_some() {
        json!({"application/merge-patch+json": {"schema": {"type": "object"}}, "application/json-patch+json": {"schema": {"type": "object"}}, "application/apply-patch+yaml": {"schema": {"type": "object"}}})
    } else {
        json!({"application/merge-patch+json": {"schema": {"type": "object"}}, "application/strategic-merge-patch+json": {"schema": {"type": "object"}}, "application/apply-patch+yaml": {"schema": {"type": "object"}}})
    };
    let item = r.item_path(r.namespaced.then_some("{namespace}"), "{name}");
    let operations = json!({
        "get": {"responses": {"200": body}, "x-kubernetes-group-version-kind": gvk, "x-kubernetes-action": "get"},
        "put": put,
        "patch": write(json!({"content": patches})),
    });
    (item, operations)
}

fn document(paths: Map<String, Value>, schemas: Map<String, Value>) -> Value {
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (Shoal)", "version": crate::api::kubernetes_version()},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

/// The v3 form of `roots` and of every definition they reach.
fn reachable_schemas(roots: &[&str]) -> Map<String, Value> {
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut pending: Vec<String> = roots.iter().map(|r| r.to_string()).collect();
    let mut schemas = Map::new();
    while let Some(name) = pending.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let Some(definition) = schemas::definition(&name) else {
            continue;
        };
        let mut references = Vec::new();
        schemas.insert(name, to_v3(definition, &mut references));
        pending.extend(references);
    }
    schemas
}

/// A v2 schema as v3, collecting the definitions it references.
fn to_v3(schema: &Value, references: &mut Vec<String>) -> Value {
    match schema {
        Value::Object(object) => {
            if let Some(Value::String(reference)) = object.get("$ref") {
                let name = reference.strip_prefix(V2_PREFIX).unwrap_or(reference);
                references.push(name.to_string());
                let reference = json!({"$ref": format!("{V3_PREFIX}{name}")});
                if object.len() == 1 {
                    return reference;
                }
                let mut wrapped: Map<String, Value> = object
                    .iter()
                    .filter(|(key, _)| key.as_str() != "$ref")
                    .map(|(key, value)| (key.clone(), to_v3(value, references)))
                    .collect();
                wrapped.insert("allOf".into(), json!([reference]));
                return Value::Object(wrapped);
            }
            Value::Object(
                object
                    .iter()
                    .map(|(key, value)| (key.clone(), to_v3(value, references)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| to_v3(v, references)).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document(key: &str) -> Value {
        serde_json::from_slice(&DOCUMENTS.get(key).unwrap().1).unwrap()
    }

    #[test]
    fn every_served_kind_has_its_kubernetes_schema() {
        for r in RESOURCES {
            let name = definition_of(r.group, r.version, r.kind)
                .unwrap_or_else(|| panic!("no definition for {}", r.kind));
            let key = if r.group.is_empty() {
                format!("api/{}", r.version)
            } else {
                format!("apis/{}/{}", r.group, r.version)
            };
            let document = document(&key);
            let schema = &document["components"]["schemas"][name];
            assert!(
                schema["description"]
                    .as_str()
                    .is_some_and(|d| !d.is_empty()),
                "{} has no description",
                r.kind
            );
            let path = r.item_path(r.namespaced.then_some("{namespace}"), "{name}");
            let patch = &document["paths"][&path]["patch"];
            assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], r.kind);
            assert!(patch["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation"));
        }
    }

    #[test]
    fn every_reference_resolves_within_its_document() {
        fn references(value: &Value, out: &mut Vec<String>) {
            match value {
                Value::Object(object) => {
                    if let Some(Value::String(r)) = object.get("$ref") {
                        out.push(r.clone());
                    }
                    object.values().for_each(|v| references(v, out));
                }
                Value::Array(items) => items.iter().for_each(|v| references(v, out)),
                _ => {}
            }
        }
        for key in DOCUMENTS.keys() {
            let document = document(key);
            let mut found = Vec::new();
            references(&document, &mut found);
            assert!(!found.is_empty());
            for reference in found {
                let name = reference.strip_prefix(V3_PREFIX).expect("a v3 reference");
                assert!(
                    document["components"]["schemas"].get(name).is_some(),
                    "{key}: {reference} does not resolve"
                );
            }
        }
    }

    #[test]
    fn schemas_keep_descriptions_and_patch_strategies() {
        let apps = document("apis/apps/v1");
        let spec = &apps["components"]["schemas"]["io.k8s.api.apps.v1.DeploymentSpec"];
        let strategy = &spec["properties"]["strategy"];
        assert_eq!(
            strategy["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.api.apps.v1.DeploymentStrategy"
        );
        assert!(strategy["description"]
            .as_str()
            .unwrap()
            .contains("replace existing pods with new ones"));
        let core = document("api/v1");
        let containers = &core["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"]["properties"]
            ["containers"];
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(containers["x-kubernetes-patch-strategy"], "merge");
        let index = root(&[]);
        let url = index["paths"]["apis/apps/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap();
        assert!(url.starts_with("/openapi/v3/apis/apps/v1?hash="), "{url}");
    }
}
