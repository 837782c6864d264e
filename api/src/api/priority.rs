//! PriorityClass (scheduling.k8s.io/v1): validation of the classes and the two system classes
//! every cluster has. The API server's priority admission (`server/priority.rs`) gives pods
//! their `spec.priority` from them.

use serde_json::{json, Value};

use super::object::str_at;
use super::validation::Cause;

/// The highest value a user's class may have; higher values are the system classes'.
pub const HIGHEST_USER_PRIORITY: i64 = 1_000_000_000;

/// The classes Kubernetes creates in every cluster: (name, value, description).
pub const SYSTEM_CLASSES: [(&str, i64, &str); 2] = [
    (
        "system-cluster-critical",
        2_000_000_000,
        "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
    ),
    (
        "system-node-critical",
        2_000_001_000,
        "Used for system critical pods that must not be moved from their current node.",
    ),
];

/// A system class as stored.
pub fn system_class(name: &str, value: i64, description: &str) -> Value {
    json!({"metadata": {"name": name}, "value": value, "description": description,
           "globalDefault": false, "preemptionPolicy": "PreemptLowerPriority"})
}

/// Kubernetes' `ValidatePriorityClass`: a value in range (system classes excepted), a known
/// preemption policy, no new names under the reserved `system-` prefix.
pub fn validate_class(class: &Value, causes: &mut Vec<Cause>) {
    let name = str_at(class, "/metadata/name");
    let system = SYSTEM_CLASSES.iter().find(|(n, _, _)| *n == name);
    match class.get("value") {
        None | Some(Value::Null) => causes.push(Cause::required("value")),
        Some(value) => match value.as_i64() {
            Some(v) if i32::try_from(v).is_err() => causes.push(Cause::invalid(
                "value",
                &v.to_string(),
                "must be a 32-bit integer",
            )),
            Some(v) if system.is_some_and(|(_, value, _)| *value != v) => causes.push(
                Cause::forbidden("value", "the value of a system class may not change"),
            ),
            Some(v) if system.is_none() && v > HIGHEST_USER_PRIORITY => {
                causes.push(Cause::forbidden(
                    "value",
                    &format!(
                    "maximum allowed value of a user defined priority is {HIGHEST_USER_PRIORITY}"
                ),
                ))
            }
            Some(_) => {}
            None => causes.push(Cause::invalid(
                "value",
                &value.to_string(),
                "must be an integer",
            )),
        },
    }
    if system.is_none() && name.starts_with("system-") {
        causes.push(Cause::forbidden(
            "metadata.name",
            "priority class names with 'system-' prefix are reserved for system use only",
        ));
    }
    match str_at(class, "/preemptionPolicy") {
        "" | "PreemptLowerPriority" | "Never" => {}
        other => causes.push(Cause::not_supported(
            "preemptionPolicy",
            other,
            &["Never", "PreemptLowerPriority"],
        )),
    }
}

/// What an update may not change: the value and the preemption policy.
pub fn validate_class_update(old: &Value, new: &Value, causes: &mut Vec<Cause>) {
    if old.get("value") != new.get("value") {
        causes.push(Cause::forbidden(
            "value",
            "may not be changed in an update.",
        ));
    }
    if str_at(old, "/preemptionPolicy") != str_at(new, "/preemptionPolicy") {
        causes.push(Cause::forbidden("preemptionPolicy", "field is immutable"));
    }
}

/// The default preemption policy.
pub fn defaults(class: &mut Value) {
    if let Some(map) = class.as_object_mut() {
        map.entry("preemptionPolicy")
            .or_insert_with(|| json!("PreemptLowerPriority"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(class: Value) -> Vec<String> {
        let mut causes = Vec::new();
        validate_class(&class, &mut causes);
        causes.into_iter().map(|c| c.field).collect()
    }

    #[test]
    fn classes_are_checked_as_kubernetes_does() {
        assert!(fields(json!({"metadata": {"name": "high"}, "value": 1000})).is_empty());
        assert_eq!(fields(json!({"metadata": {"name": "high"}})), ["value"]);
        assert_eq!(
            fields(json!({"metadata": {"name": "x"}, "value": 2_000_000_000})),
            ["value"]
        );
        assert_eq!(
            fields(json!({"metadata": {"name": "x"}, "value": 5_000_000_000i64})),
            ["value"]
        );
        assert_eq!(
            fields(json!({"metadata": {"name": "system-mine"}, "value": 1})),
            ["metadata.name"]
        );
        assert_eq!(
            fields(json!({"metadata": {"name": "x"}, "value": 1, "preemptionPolicy": "Always"})),
            ["preemptionPolicy"]
        );
        let (name, value, description) = SYSTEM_CLASSES[0];
        assert!(fields(system_class(name, value, description)).is_empty());
        let mut causes = Vec::new();
        validate_class_update(&json!({"value": 1}), &json!({"value": 2}), &mut causes);
        assert_eq!(causes[0].field, "value");
    }
}
