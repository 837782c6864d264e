//! Field ownership (`metadata.managedFields`) and server-side apply, as Kubernetes' structured
//! merge does it, over [`fieldset::FieldSet`]s:
//! - every write records which fields its manager (`?fieldManager=`, else the User-Agent's
//!   program name) set or changed, as an `Update` entry (per subresource); other managers
//!   lose what it changed;
//! - an apply (`application/apply-patch+yaml`) makes its manager's `Apply` entry exactly the
//!   fields of its configuration; a field another manager owns with a different value is a
//!   409 conflict naming the manager and the fields, unless `force=true` takes it over; and a
//!   field the manager applied before, left out now and owned by no one else, is removed.
//!
//! The merge itself is the strategic merge patch (`api::patch`): keyed lists merge by key.
//! What Kubernetes also does and this does not yet: conversion of field sets between API
//! versions (Shoal serves one version per kind), and reset of `status` fields on the main
//! resource by an apply.

mod fieldset;
mod schema;

use serde_json::{json, Value};

use self::fieldset::{FieldSet, Path, Scope};
use self::schema::{ListType, Node};
use super::error::{ApiError, Result};
use super::request::Request;
use crate::api::object;
use crate::api::resources::ResourceInfo;

/// Identity and bookkeeping: no manager owns these.
const NOT_OWNED: &[&[&str]] = &[
    &["apiVersion"],
    &["kind"],
    &["metadata", "name"],
    &["metadata", "namespace"],
    &["metadata", "uid"],
    &["metadata", "resourceVersion"],
    &["metadata", "generation"],
    &["metadata", "creationTimestamp"],
    &["metadata", "deletionTimestamp"],
    &["metadata", "deletionGracePeriodSeconds"],
    &["metadata", "managedFields"],
    &["metadata", "selfLink"],
];

/// The longest manager name Kubernetes accepts.
const MAX_MANAGER: usize = 128;

#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    subresource: String,
    time: String,
    fields: FieldSet,
}

impl Entry {
    fn to_json(&self) -> Value {
        let mut entry = json!({
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": self.fields.to_fields_v1(),
        });
        if !self.subresource.is_empty() {
            entry["subresource"] = json!(self.subresource);
        }
        entry
    }
}

fn entries(object: &Value) -> Vec<Entry> {
    let text = |entry: &Value, field: &str| entry[field].as_str().unwrap_or_default().to_string();
    object
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|entry| Entry {
            manager: text(entry, "manager"),
            operation: text(entry, "operation"),
            api_version: text(entry, "apiVersion"),
            subresource: text(entry, "subresource"),
            time: text(entry, "time"),
            fields: FieldSet::from_fields_v1(&entry["fieldsV1"]),
        })
        .collect()
}

fn write_entries(object: &mut Value, entries: Vec<Entry>) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(Entry::to_json)
        .collect();
    let meta = object::metadata_mut(object);
    if list.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".into(), Value::Array(list));
    }
}

/// The manager a request writes as: `?fieldManager=`, else (not for an apply, which must name
/// one) the User-Agent's program name, as kube-apiserver derives it.
pub fn manager(request: &Request, apply: bool) -> Result<String> {
    if let Some(name) = request.query.get("fieldManager").filter(|m| !m.is_empty()) {
        if name.len() > MAX_MANAGER || name.chars().any(char::is_control) {
            return Err(ApiError::BadRequest(format!(
                "fieldManager must be at most {MAX_MANAGER} printable characters"
            )));
        }
        return Ok(name.to_string());
    }
    if apply {
        return Err(ApiError::BadRequest(
            "PATCH requests of type application/apply-patch+yaml require a field manager: set the fieldManager query parameter".into(),
        ));
    }
    let agent = request
        .headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let program = agent.split('/').next().unwrap_or_default();
    Ok(if program.is_empty() {
        "unknown".to_string()
    } else {
        program.chars().take(MAX_MANAGER).collect()
    })
}

fn schema_of(resource: &ResourceInfo) -> Node {
    if let Some(custom) = resource.custom {
        return Node::schema(&custom.merge_schema);
    }
    match super::openapi::definition_of(resource.group, resource.version, resource.kind) {
        Some(name) => Node::definition(name),
        None => Node::unknown(),
    }
}

/// The fields of `object` a write to `subresource` (`""` for the main resource) can own.
fn owned_fields(resource: &ResourceInfo, object: &Value, subresource: &str) -> FieldSet {
    let mut set = FieldSet::of(object, schema_of(resource), NOT_OWNED);
    let status = |path: &Path| path.first().is_some_and(|f| f == "f:status");
    if subresource == "status" {
        set.0.retain(status);
    } else if resource.has_subresource("status") {
        set.0.retain(|path| !status(path));
    }
    set
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Records an `Update` by `manager` that turned `old` (none on create) into `new`.
pub fn record_update(
    resource: &ResourceInfo,
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    subresource: &str,
) {
    record(resource, old, new, manager, subresource, "Update");
}

/// Records the creation of `new` by an apply.
pub fn record_apply_create(resource: &ResourceInfo, new: &mut Value, manager: &str) {
    record(resource, None, new, manager, "", "Apply");
}

fn record(
    resource: &ResourceInfo,
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    subresource: &str,
    operation: &str,
) {
    let scope = if subresource == "status" {
        Scope::OnlyStatus
    } else if resource.has_subresource("status") {
        Scope::AllButStatus
    } else {
        Scope::Everything
    };
    let (changed, removed) = fieldset::diff(old, new, schema_of(resource), NOT_OWNED, scope);
    if changed.is_empty() && removed.is_empty() {
        // Nothing changed hands: the entries stay as they were (no parsing, no new time).
        let kept = old
            .and_then(|o| o.pointer("/metadata/managedFields"))
            .cloned();
        let meta = object::metadata_mut(new);
        match kept {
            Some(entries) => meta.insert("managedFields".into(), entries),
            None => meta.remove("managedFields"),
        };
        return;
    }
    let mut all = old.map(entries).unwrap_or_default();
    // Nobody owns what is gone; other managers of this subresource lose what changed.
    for entry in &mut all {
        entry
            .fields
            .0
            .retain(|path| !removed.0.iter().any(|gone| path.starts_with(gone)));
        if entry.subresource == subresource && entry.manager != manager {
            entry.fields = entry.fields.difference(&changed);
        }
    }
    let mine = all
        .iter_mut()
        .find(|e| e.manager == manager && e.operation == operation && e.subresource == subresource);
    match mine {
        Some(entry) if !changed.is_empty() => {
            entry.fields = entry.fields.union(&changed);
            entry.time = now();
            entry.api_version = resource.api_version();
        }
        Some(_) => {}
        None if !changed.is_empty() => all.push(Entry {
            manager: manager.to_string(),
            operation: operation.to_string(),
            api_version: resource.api_version(),
            subresource: subresource.to_string(),
            time: now(),
            fields: changed,
        }),
        None => {}
    }
    write_entries(new, all);
}

/// Applies `config` by `manager` to `current`: the merged object, with its managed fields, or
/// a 409 naming each field another manager holds with another value (unless `force`).
pub fn apply(
    resource: &ResourceInfo,
    current: &Value,
    config: &Value,
    manager: &str,
    force: bool,
) -> Result<Value> {
    let applied = owned_fields(resource, config, "");
    let mut all = entries(current);
    let mut conflicts: Vec<(String, Vec<String>)> = Vec::new();
    for entry in all
        .iter_mut()
        .filter(|e| e.manager != manager && e.subresource.is_empty())
    {
        let contested: Vec<Path> = entry
            .fields
            .intersection(&applied)
            .0
            .into_iter()
            .filter(|path| path.last().is_some_and(|last| last != "."))
            .filter(|path| fieldset::value_at(current, path) != fieldset::value_at(config, path))
            .collect();
        if contested.is_empty() {
            continue;
        }
        if force {
            for path in &contested {
                entry.fields.0.remove(path);
            }
        } else {
            conflicts.push((
                format!("\"{}\" using {}", entry.manager, entry.api_version),
                contested.iter().map(|p| display(p)).collect(),
            ));
        }
    }
    if !conflicts.is_empty() {
        return Err(conflict(resource, current, &conflicts));
    }
    let mut merged = current.clone();
    if resource.custom.is_some() {
        // A CRD's lists merge as its schema says (no strategic merge keys for custom kinds).
        merge_by_schema(&mut merged, config, schema_of(resource));
    } else {
        crate::api::patch::strategic_merge_patch(&mut merged, config);
    }
    // What this manager applied before and now leaves out goes, unless someone else owns it.
    let previous = all
        .iter()
        .find(|e| e.manager == manager && e.operation == "Apply" && e.subresource.is_empty())
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let others = all
        .iter()
        .filter(|e| !(e.manager == manager && e.operation == "Apply"))
        .fold(FieldSet::default(), |set, e| set.union(&e.fields));
    let dropped = previous.difference(&applied).difference(&others);
    for path in dropped.0.iter().rev() {
        fieldset::remove_at(&mut merged, path);
    }
    all.retain(|e| !(e.manager == manager && e.operation == "Apply" && e.subresource.is_empty()));
    all.push(Entry {
        manager: manager.to_string(),
        operation: "Apply".into(),
        api_version: resource.api_version(),
        subresource: String::new(),
        time: now(),
        fields: applied,
    });
    write_entries(&mut merged, all);
    Ok(merged)
}

/// Merges an applied configuration into `target` as structured merge does: objects field by
/// field, `map` lists item by key (new items appended), `set` lists by value, everything else
/// replaced.
fn merge_by_schema(target: &mut Value, config: &Value, schema: Node) {
    match (target, config) {
        (Value::Object(target), Value::Object(config)) => {
            for (key, value) in config {
                match target.get_mut(key) {
                    Some(existing) if !value.is_null() => {
                        merge_by_schema(existing, value, schema.field(key))
                    }
                    _ => {
                        target.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (Value::Array(target), Value::Array(config)) => match schema.list_type() {
            ListType::Map(keys) => {
                let key_of = |item: &Value| -> Vec<Value> {
                    keys.iter()
                        .map(|k| item.get(k).cloned().unwrap_or(Value::Null))
                        .collect()
                };
                for item in config {
                    let key = key_of(item);
                    match target.iter_mut().find(|existing| key_of(existing) == key) {
                        Some(existing) => merge_by_schema(existing, item, schema.items()),
                        None => target.push(item.clone()),
                    }
                }
            }
            ListType::Set => {
                for item in config {
                    if !target.contains(item) {
                        target.push(item.clone());
                    }
                }
            }
            ListType::Atomic => *target = config.clone(),
        },
        (target, config) => *target = config.clone(),
    }
}

/// `.spec.containers[name="c"].image`, as Kubernetes prints a field path in a conflict.
fn display(path: &[String]) -> String {
    let mut out = String::new();
    for element in path {
        if let Some(name) = element.strip_prefix("f:") {
            out.push('.');
            out.push_str(name);
        } else if let Some(key) = element.strip_prefix("k:") {
            let key: serde_json::Map<String, Value> = serde_json::from_str(key).unwrap_or_default();
            let parts: Vec<String> = key.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(value) = element.strip_prefix("v:") {
            out.push_str(&format!("[={value}]"));
        }
    }
    out
}

fn conflict(
    resource: &ResourceInfo,
    current: &Value,
    conflicts: &[(String, Vec<String>)],
) -> ApiError {
    let count: usize = conflicts.iter().map(|(_, fields)| fields.len()).sum();
    let mut why = format!(
        "Apply failed with {count} conflict{}: ",
        if count == 1 { "" } else { "s" }
    );
    let lines: Vec<String> = conflicts
        .iter()
        .map(|(manager, fields)| {
            if fields.len() == 1 {
                format!("conflict with {manager}: {}", fields[0])
            } else {
                format!("conflicts with {manager}:\n- {}", fields.join("\n- "))
            }
        })
        .collect();
    why.push_str(&lines.join("\n"));
    ApiError::ApplyConflict {
        resource: resource.qualified_plural(),
        name: object::name(current).to_string(),
        why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resources::RESOURCES;

    fn configmaps() -> &'static ResourceInfo {
        RESOURCES.iter().find(|r| r.kind == "ConfigMap").unwrap()
    }

    fn deployments() -> &'static ResourceInfo {
        RESOURCES.iter().find(|r| r.kind == "Deployment").unwrap()
    }

    fn managers(object: &Value) -> Vec<(String, String)> {
        entries(object)
            .into_iter()
            .map(|e| (e.manager, e.operation))
            .collect()
    }

    #[test]
    fn custom_resources_merge_lists_as_their_crd_says() {
        let crd = json!({"metadata": {"name": "widgets.example.com"}, "spec": {
        "group": "example.com", "scope": "Namespaced", "names": {"plural": "widgets", "kind": "Widget"},
        "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
            "type": "object", "properties": {"spec": {"type": "object", "properties": {
                "ports": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                          "items": {"type": "object", "properties": {"name": {"type": "string"}, "port": {"type": "integer"}}}},
                "tags": {"type": "array", "items": {"type": "string"}},
            }}}}}}]}});
        let kind = crate::api::custom::CustomKind::all_of(&crd).pop().unwrap();
        let r = ResourceInfo::of_custom(kind);
        let mut object = json!({"metadata": {"name": "w"}, "spec": {"ports": [{"name": "a", "port": 1}], "tags": ["x"]}});
        record_apply_create(r, &mut object, "alice");
        // bob adds his own port: a map list keeps alice's item and adds his.
        let both = apply(
            r,
            &object,
            &json!({"spec": {"ports": [{"name": "b", "port": 2}]}}),
            "bob",
            false,
        )
        .unwrap();
        assert_eq!(
            both["spec"]["ports"],
            json!([{"name": "a", "port": 1}, {"name": "b", "port": 2}])
        );
        // An atomic list is one value: bob setting it conflicts with alice.
        let err = apply(r, &both, &json!({"spec": {"tags": ["y"]}}), "bob", false).unwrap_err();
        assert!(err.to_string().contains(".spec.tags"), "{err}");
    }

    #[test]
    fn two_appliers_of_one_field_conflict_unless_forced() {
        let r = configmaps();
        let mut object = json!({"metadata": {"name": "c"}, "data": {"a": "1"}});
        record_apply_create(r, &mut object, "alice");
        let same = apply(
            r,
            &object,
            &json!({"data": {"a": "1", "b": "2"}}),
            "bob",
            false,
        )
        .unwrap();
        assert_eq!(
            same["data"],
            json!({"a": "1", "b": "2"}),
            "the same value is shared"
        );
        let err = apply(r, &same, &json!({"data": {"a": "9"}}), "bob", false).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains(
                "Apply failed with 1 conflict: conflict with \"alice\" using v1: .data.a"
            ),
            "{message}"
        );
        let forced = apply(r, &same, &json!({"data": {"a": "9"}}), "bob", true).unwrap();
        assert_eq!(forced["data"]["a"], "9");
        let alice = entries(&forced).into_iter().find(|e| e.manager == "alice");
        assert!(alice.is_none(), "alice lost her only field: {forced}");
    }

    #[test]
    fn a_field_dropped_from_the_configuration_is_removed_unless_shared() {
        let r = configmaps();
        let mut object = json!({"metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}});
        record_apply_create(r, &mut object, "alice");
        let mut edited = object.clone();
        edited["data"]["c"] = json!("3");
        record_update(r, Some(&object), &mut edited, "kubectl-edit", "");
        let next = apply(r, &edited, &json!({"data": {"a": "1"}}), "alice", false).unwrap();
        assert_eq!(
            next["data"],
            json!({"a": "1", "c": "3"}),
            "b was alice's alone"
        );
        assert_eq!(
            managers(&next),
            [
                ("kubectl-edit".into(), "Update".into()),
                ("alice".into(), "Apply".into())
            ]
        );
    }

    #[test]
    fn updates_take_over_what_they_change() {
        let r = deployments();
        let mut object = json!({"metadata": {"name": "web"}, "spec": {"replicas": 2,
            "template": {"spec": {"containers": [{"name": "c", "image": "v1"}]}}}});
        record_apply_create(r, &mut object, "ci");
        let mut scaled = object.clone();
        scaled["spec"]["replicas"] = json!(5);
        record_update(r, Some(&object), &mut scaled, "kubectl-scale", "");
        // Re-applying the old replica count now conflicts with the scaler, not the image.
        let err = apply(
            r,
            &scaled,
            &json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "c", "image": "v2"}]}}}}),
            "ci",
            false,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("conflict with \"kubectl-scale\" using apps/v1: .spec.replicas"),
            "{err}"
        );
        let without_replicas = apply(
            r,
            &scaled,
            &json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "v2"}]}}}}),
            "ci",
            false,
        )
        .unwrap();
        assert_eq!(without_replicas["spec"]["replicas"], 5);
        assert_eq!(
            without_replicas["spec"]["template"]["spec"]["containers"][0]["image"],
            "v2"
        );
        let fields = &without_replicas["metadata"]["managedFields"];
        let ci = fields
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["manager"] == "ci")
            .unwrap();
        assert_eq!(
            ci["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"c\"}"]
                ["f:image"],
            json!({})
        );
    }

    #[test]
    fn status_writes_are_owned_apart_from_the_spec() {
        let r = deployments();
        let mut object = json!({"metadata": {"name": "web"}, "spec": {"replicas": 1}});
        record_update(r, None, &mut object, "kubectl-create", "");
        let mut with_status = object.clone();
        with_status["status"] = json!({"replicas": 1});
        record_update(
            r,
            Some(&object),
            &mut with_status,
            "deployment-controller",
            "status",
        );
        let all = entries(&with_status);
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].subresource, "status");
        assert!(all[1].fields.0.iter().all(|p| p[0] == "f:status"));
        assert!(all[0].fields.0.iter().all(|p| p[0] != "f:status"));
    }
}
