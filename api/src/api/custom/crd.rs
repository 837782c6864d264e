//! CustomResourceDefinitions themselves (Kubernetes' CRD strategy): defaults (singular and
//! list kind, the `None` conversion strategy), validation in kube-apiserver's words (names,
//! group, scope, versions with exactly one storage version, structural schemas, subresources,
//! printer columns), what an update may not change, and the status the API server keeps
//! (accepted names, stored versions, `NamesAccepted` and `Established` conditions).
//!
//! Conversion webhooks are not supported: a CRD asking for one is refused with a message
//! saying so, rather than served with a conversion that never happens.

use serde_json::{json, Value};

use super::schema::Schema;
use crate::api::object::{self, str_at};
use crate::api::validation::{dns1123_label, dns1123_subdomain, Cause};

/// The finalizer that holds a deleted CRD until its custom resources are gone.
pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

/// The annotation a CRD in a Kubernetes-owned group (`*.k8s.io`, `*.kubernetes.io`) needs.
const APPROVAL: &str = "api-approved.kubernetes.io";

/// Defaults of a CRD's own fields (Kubernetes' `SetDefaults_CustomResourceDefinition`).
pub fn defaults(crd: &mut Value) {
    let kind = str_at(crd, "/spec/names/kind").to_string();
    if kind.is_empty() {
        return;
    }
    let names =
        ["singular", "listKind"].map(|f| str_at(crd, &format!("/spec/names/{f}")).is_empty());
    if names[0] {
        object::set_at(
            crd,
            "/spec/names/singular",
            json!(kind.to_ascii_lowercase()),
        );
    }
    if names[1] {
        object::set_at(crd, "/spec/names/listKind", json!(format!("{kind}List")));
    }
    if crd.pointer("/spec/conversion/strategy").is_none() {
        object::set_at(crd, "/spec/conversion/strategy", json!("None"));
    }
}

/// A new CRD holds the cleanup finalizer: deleting it deletes its custom resources first.
pub fn prepare_create(crd: &mut Value) {
    let meta = object::metadata_mut(crd);
    let finalizers = meta.entry("finalizers").or_insert_with(|| json!([]));
    if let Some(list) = finalizers.as_array_mut() {
        if !list.iter().any(|f| f == CLEANUP_FINALIZER) {
            list.push(json!(CLEANUP_FINALIZER));
        }
    }
}

/// The groups the API server serves itself; no CRD may take them.
pub fn validate_with_builtin_groups(crd: &Value, builtin: &[&str], causes: &mut Vec<Cause>) {
    validate(crd, causes);
    let group = str_at(crd, "/spec/group");
    if builtin.contains(&group) {
        causes.push(Cause::invalid(
            "spec.group",
            group,
            "is served by the API server itself",
        ));
    }
}

/// Kubernetes' `ValidateCustomResourceDefinition`, less what only conversion webhooks need.
pub fn validate(crd: &Value, causes: &mut Vec<Cause>) {
    let spec = &crd["spec"];
    let group = str_at(spec, "/group");
    let plural = str_at(spec, "/names/plural");
    let name = object::name(crd);
    if !plural.is_empty() && !group.is_empty() && name != format!("{plural}.{group}") {
        causes.push(Cause::invalid(
            "metadata.name",
            name,
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    if group.is_empty() {
        causes.push(Cause::required("spec.group"));
    } else if dns1123_subdomain(group).is_err() || !group.contains('.') {
        causes.push(Cause::invalid(
            "spec.group",
            group,
            "should be a domain with at least one dot",
        ));
    } else if (group.ends_with(".k8s.io") || group.ends_with(".kubernetes.io") || group == "k8s.io")
        && crd
            .pointer(&format!(
                "/metadata/annotations/{}",
                APPROVAL.replace('/', "~1")
            ))
            .is_none()
    {
        causes.push(Cause {
            reason: "FieldValueRequired",
            message: format!("Required value: protected groups must have approval annotation {APPROVAL:?}, see https://github.com/kubernetes/enhancements/pull/1111"),
            field: format!("metadata.annotations[{APPROVAL}]"),
        });
    }
    let scope = str_at(spec, "/scope");
    if scope != "Namespaced" && scope != "Cluster" {
        causes.push(Cause::not_supported(
            "spec.scope",
            scope,
            &["Cluster", "Namespaced"],
        ));
    }
    validate_names(&spec["names"], causes);
    match str_at(spec, "/conversion/strategy") {
        "" | "None" => {}
        other => causes.push(Cause::not_supported(
            "spec.conversion.strategy",
            other,
            &["None"],
        )),
    }
    validate_versions(spec, causes);
}

fn validate_names(names: &Value, causes: &mut Vec<Cause>) {
    let label = |field: &str, value: &str, causes: &mut Vec<Cause>| {
        if let Err(e) = dns1123_label(value) {
            causes.push(Cause::invalid(
                format!("spec.names.{field}"),
                value,
                &e.to_string(),
            ));
        }
    };
    for field in ["plural", "kind"] {
        if str_at(names, &format!("/{field}")).is_empty() {
            causes.push(Cause::required(format!("spec.names.{field}")));
        }
    }
    let plural = str_at(names, "/plural");
    if !plural.is_empty() {
        label("plural", plural, causes);
    }
    let singular = str_at(names, "/singular");
    if !singular.is_empty() {
        label("singular", singular, causes);
    }
    let kind = str_at(names, "/kind");
    if !kind.is_empty() {
        let lower = kind.to_ascii_lowercase();
        if dns1123_label(&lower).is_err() || !kind.starts_with(|c: char| c.is_ascii_alphabetic()) {
            causes.push(Cause::invalid(
                "spec.names.kind",
                kind,
                "may have mixed case, but should otherwise match: [a-z]([-a-z0-9]*[a-z0-9])?",
            ));
        }
        if str_at(names, "/listKind") == kind {
            causes.push(Cause::invalid(
                "spec.names.listKind",
                kind,
                "kind and listKind may not be the same",
            ));
        }
    }
    for (i, short) in names["shortNames"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let short = short.as_str().unwrap_or("");
        if let Err(e) = dns1123_label(short) {
            causes.push(Cause::invalid(
                format!("spec.names.shortNames[{i}]"),
                short,
                &e.to_string(),
            ));
        }
    }
}

fn validate_versions(spec: &Value, causes: &mut Vec<Cause>) {
    let Some(versions) = spec["versions"].as_array().filter(|v| !v.is_empty()) else {
        causes.push(Cause {
            reason: "FieldValueInvalid",
            message: "Invalid value: []: must have exactly one version marked as storage version"
                .into(),
            field: "spec.versions".into(),
        });
        return;
    };
    let storage = versions.iter().filter(|v| v["storage"] == true).count();
    if storage != 1 {
        causes.push(Cause {
            reason: "FieldValueInvalid",
            message: format!(
                "Invalid value: {storage}: must have exactly one version marked as storage version"
            ),
            field: "spec.versions".into(),
        });
    }
    let mut seen = Vec::new();
    for (i, version) in versions.iter().enumerate() {
        let at = format!("spec.versions[{i}]");
        let name = str_at(version, "/name");
        if name.is_empty() {
            causes.push(Cause::required(format!("{at}.name")));
        } else if let Err(e) = dns1123_label(name) {
            causes.push(Cause::invalid(format!("{at}.name"), name, &e.to_string()));
        } else if seen.contains(&name) {
            causes.push(Cause {
                reason: "FieldValueDuplicate",
                message: format!("Duplicate value: {name:?}"),
                field: format!("{at}.name"),
            });
        }
        seen.push(name);
        match version.pointer("/schema/openAPIV3Schema") {
            Some(schema) => {
                Schema::parse(schema, &format!("{at}.schema.openAPIV3Schema"), causes);
            }
            None => causes.push(Cause {
                reason: "FieldValueRequired",
                message: "Required value: schemas are required".into(),
                field: format!("{at}.schema.openAPIV3Schema"),
            }),
        }
        if let Some(scale) = version.pointer("/subresources/scale") {
            let path_under =
                |field: &str, prefixes: &[&str], required: bool, causes: &mut Vec<Cause>| {
                    let path = str_at(scale, &format!("/{field}"));
                    let at = format!("{at}.subresources.scale.{field}");
                    if path.is_empty() {
                        if required {
                            causes.push(Cause::required(at));
                        }
                    } else if !prefixes.iter().any(|p| path.starts_with(&format!("{p}."))) {
                        let under = prefixes.join(" or ");
                        causes.push(Cause::invalid(
                            at,
                            path,
                            &format!("should be a json path under {under}"),
                        ));
                    }
                };
            path_under("specReplicasPath", &[".spec"], true, causes);
            path_under("statusReplicasPath", &[".status"], true, causes);
            path_under("labelSelectorPath", &[".spec", ".status"], false, causes);
        }
        for (j, column) in version["additionalPrinterColumns"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let at = format!("{at}.additionalPrinterColumns[{j}]");
            if str_at(column, "/name").is_empty() {
                causes.push(Cause::required(format!("{at}.name")));
            }
            if str_at(column, "/jsonPath").is_empty() {
                causes.push(Cause::required(format!("{at}.jsonPath")));
            }
            let kind = str_at(column, "/type");
            if !["integer", "number", "string", "boolean", "date"].contains(&kind) {
                causes.push(Cause::not_supported(
                    format!("{at}.type"),
                    kind,
                    &["boolean", "date", "integer", "number", "string"],
                ));
            }
        }
    }
}

/// What an update of a CRD may not change, on top of [`validate`].
pub fn validate_update(old: &Value, new: &Value, causes: &mut Vec<Cause>) {
    let stored: Vec<&str> = old
        .pointer("/status/storedVersions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !stored.is_empty() && str_at(old, "/spec/scope") != str_at(new, "/spec/scope") {
        causes.push(Cause::invalid(
            "spec.scope",
            str_at(new, "/spec/scope"),
            "field is immutable",
        ));
    }
    let versions: Vec<&str> = new
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|v| str_at(v, "/name"))
        .collect();
    for (i, version) in stored.iter().enumerate() {
        if !versions.contains(version) {
            causes.push(Cause::invalid(
                format!("status.storedVersions[{i}]"),
                version,
                "must appear in spec.versions",
            ));
        }
    }
}

/// Sets the status kube-apiserver's CRD controllers keep: the accepted names (the spec's),
/// the versions ever stored (the current storage version added), and the `NamesAccepted`
/// and `Established` conditions. `old` is the stored CRD on an update.
pub fn set_status(old: Option<&Value>, crd: &mut Value) {
    let mut stored: Vec<Value> = old
        .and_then(|o| o.pointer("/status/storedVersions"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let storage = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|v| v["storage"] == true)
        .map(|v| v["name"].clone());
    if let Some(storage) = storage {
        if !stored.contains(&storage) {
            stored.push(storage);
        }
    }
    let now = object::now_rfc3339();
    let since = |kind: &str| -> Value {
        old.and_then(|o| o.pointer("/status/conditions"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|c| c["type"] == kind && c["status"] == "True")
            .map_or_else(|| json!(now), |c| c["lastTransitionTime"].clone())
    };
    let terminating = crd.pointer("/metadata/deletionTimestamp").is_some();
    let mut conditions = vec![
        json!({"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
               "message": "no conflicts found", "lastTransitionTime": since("NamesAccepted")}),
        json!({"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
               "message": "the initial names have been accepted", "lastTransitionTime": since("Established")}),
    ];
    if terminating {
        conditions.push(json!({"type": "Terminating", "status": "True", "reason": "InstanceDeletionInProgress",
            "message": "CustomResource deletion is in progress", "lastTransitionTime": since("Terminating")}));
    }
    let names = crd.pointer("/spec/names").cloned().unwrap_or(json!({}));
    object::set_at(
        crd,
        "/status",
        json!({"acceptedNames": names, "storedVersions": stored, "conditions": conditions}),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd() -> Value {
        json!({
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget"},
                "versions": [{"name": "v1", "served": true, "storage": true,
                              "schema": {"openAPIV3Schema": {"type": "object"}}}],
            },
        })
    }

    fn fields(crd: &Value) -> Vec<String> {
        let mut causes = Vec::new();
        validate_with_builtin_groups(crd, &["apps", "rbac.authorization.k8s.io"], &mut causes);
        causes.into_iter().map(|c| c.field).collect()
    }

    #[test]
    fn a_good_crd_passes_and_gets_its_defaults_and_status() {
        let mut crd = crd();
        defaults(&mut crd);
        prepare_create(&mut crd);
        set_status(None, &mut crd);
        assert!(fields(&crd).is_empty(), "{:?}", fields(&crd));
        assert_eq!(crd["spec"]["names"]["singular"], "widget");
        assert_eq!(crd["spec"]["names"]["listKind"], "WidgetList");
        assert_eq!(crd["metadata"]["finalizers"], json!([CLEANUP_FINALIZER]));
        assert_eq!(crd["status"]["storedVersions"], json!(["v1"]));
        assert_eq!(crd["status"]["conditions"][1]["type"], "Established");
    }

    #[test]
    fn bad_crds_name_the_field() {
        let cases: Vec<(&str, Value, &str)> = vec![
            (
                "/metadata/name",
                json!("widgets.other.com"),
                "metadata.name",
            ),
            ("/spec/group", json!("example"), "spec.group"),
            (
                "/spec/group",
                json!("rbac.authorization.k8s.io"),
                "spec.group",
            ),
            (
                "/spec/group",
                json!("things.k8s.io"),
                "metadata.annotations[api-approved.kubernetes.io]",
            ),
            ("/spec/scope", json!("Global"), "spec.scope"),
            ("/spec/names/kind", json!(""), "spec.names.kind"),
            ("/spec/versions/0/storage", json!(false), "spec.versions"),
            (
                "/spec/versions/0/name",
                json!("V1"),
                "spec.versions[0].name",
            ),
            (
                "/spec/versions/0/schema",
                json!({}),
                "spec.versions[0].schema.openAPIV3Schema",
            ),
            (
                "/spec/versions/0/schema/openAPIV3Schema/properties",
                json!({"spec": {"type": "object", "additionalProperties": false}}),
                "spec.versions[0].schema.openAPIV3Schema.properties[spec].additionalProperties",
            ),
            (
                "/spec/versions/0/subresources",
                json!({"scale": {"specReplicasPath": ".replicas", "statusReplicasPath": ".status.r"}}),
                "spec.versions[0].subresources.scale.specReplicasPath",
            ),
            (
                "/spec/versions/0/additionalPrinterColumns",
                json!([{"name": "X", "type": "float", "jsonPath": ".spec.x"}]),
                "spec.versions[0].additionalPrinterColumns[0].type",
            ),
            (
                "/spec/conversion",
                json!({"strategy": "Webhook"}),
                "spec.conversion.strategy",
            ),
        ];
        for (pointer, value, field) in cases {
            let mut bad = crd();
            if pointer == "/spec/group" {
                let name = format!("widgets.{}", value.as_str().unwrap());
                object::set_at(&mut bad, "/metadata/name", json!(name));
            }
            // A parent's own pointer, then the last key set in it (object or array item).
            let (parent, key) = pointer.rsplit_once('/').unwrap();
            match bad.pointer_mut(parent).unwrap() {
                Value::Object(map) => {
                    map.insert(key.to_string(), value);
                }
                Value::Array(items) => items[key.parse::<usize>().unwrap()] = value,
                _ => unreachable!(),
            }
            let found = fields(&bad);
            assert!(
                found.iter().any(|f| f == field),
                "{pointer}: {field} not in {found:?}"
            );
        }
    }

    #[test]
    fn updates_keep_the_scope_and_the_stored_versions() {
        let mut old = crd();
        set_status(None, &mut old);
        let mut new = old.clone();
        object::set_at(&mut new, "/spec/scope", json!("Cluster"));
        object::set_at(&mut new, "/spec/versions/0/name", json!("v2"));
        let mut causes = Vec::new();
        validate_update(&old, &new, &mut causes);
        let found: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(found, ["spec.scope", "status.storedVersions[0]"]);
    }
}
