//! PodDisruptionBudget (policy/v1): validation, the status the disruption controller keeps
//! ([`status_of`]: healthy pods, how many must stay healthy, how many may go), and the
//! eviction decision ([`decide`]) the API server takes on `pods/eviction`, as Kubernetes'
//! disruption controller and eviction REST handler do.

use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{json, Value};

use super::intstr;
use super::object::str_at;
use super::selector::{query_of, LabelSelector};
use super::validation::Cause;

/// The budget's selector; `None` when it has none or it cannot be read (it then selects
/// nothing, as Kubernetes' nil selector).
pub fn selector_of(pdb: &Value) -> Option<LabelSelector> {
    let typed: PodDisruptionBudget = serde_json::from_value(pdb.clone()).ok()?;
    let selector = typed.spec?.selector?;
    LabelSelector::parse(&query_of(&selector)).ok()
}

/// Whether a pod is healthy for a budget: Ready and not being deleted.
pub fn healthy(pod: &Value) -> bool {
    pod.pointer("/metadata/deletionTimestamp").is_none()
        && pod
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn int_or_string(value: &Value) -> Option<IntOrString> {
    serde_json::from_value(value.clone()).ok()
}

/// The budget's status from the pods it selects (not terminal) and `expected`, the number of
/// pods their controllers want (the selected pods' count for pods without one).
pub fn status_of(pdb: &Value, pods: &[&Value], expected: i32) -> Value {
    let current = pods.iter().filter(|p| healthy(p)).count() as i32;
    let desired = if let Some(min) = pdb.pointer("/spec/minAvailable") {
        int_or_string(min)
            .and_then(|m| intstr::scaled(&m, expected, true))
            .unwrap_or(expected)
    } else if let Some(max) = pdb.pointer("/spec/maxUnavailable") {
        let unavailable = int_or_string(max)
            .and_then(|m| intstr::scaled(&m, expected, true))
            .unwrap_or(0);
        (expected - unavailable).max(0)
    } else {
        expected
    };
    let allowed = (current - desired).max(0);
    let generation = pdb
        .pointer("/metadata/generation")
        .cloned()
        .unwrap_or(json!(1));
    let reason = if allowed > 0 {
        ("True", "SufficientPods", "")
    } else {
        ("False", "InsufficientPods", "")
    };
    let since = pdb
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "DisruptionAllowed" && c["status"] == reason.0)
        .map(|c| c["lastTransitionTime"].clone())
        .unwrap_or_else(|| json!(super::object::now_rfc3339()));
    json!({
        "observedGeneration": generation,
        "currentHealthy": current,
        "desiredHealthy": desired,
        "expectedPods": expected,
        "disruptionsAllowed": allowed,
        "conditions": [{"type": "DisruptionAllowed", "status": reason.0, "reason": reason.1,
                        "message": reason.2, "observedGeneration": generation,
                        "lastTransitionTime": since}],
    })
}

/// What the eviction of `pod` does to a budget that selects it.
#[derive(Debug, PartialEq, Eq)]
pub enum Eviction {
    /// Evict, taking one of the allowed disruptions.
    Take,
    /// Evict without taking one (an unhealthy pod the policy lets go).
    Free,
    /// Refuse with 429, saying why.
    Refuse(String),
}

/// Kubernetes' eviction rule for one budget.
pub fn decide(pdb: &Value, pod: &Value) -> Eviction {
    let status = |field: &str| {
        pdb.pointer(&format!("/status/{field}"))
            .and_then(Value::as_i64)
    };
    let generation = pdb
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    if status("observedGeneration").is_none_or(|observed| observed < generation) {
        return Eviction::Refuse(format!(
            "Cannot evict pod as it would violate the pod's disruption budget. The disruption budget {} is still being processed by the server.",
            str_at(pdb, "/metadata/name")
        ));
    }
    let (current, desired) = (
        status("currentHealthy").unwrap_or(0),
        status("desiredHealthy").unwrap_or(0),
    );
    if !healthy(pod) {
        let policy = str_at(pdb, "/spec/unhealthyPodEvictionPolicy");
        if policy == "AlwaysAllow" || current >= desired {
            return Eviction::Free;
        }
    }
    if status("disruptionsAllowed").unwrap_or(0) <= 0 {
        return Eviction::Refuse(format!(
            "Cannot evict pod as it would violate the pod's disruption budget. The disruption budget {} needs {desired} healthy pods and has {current} currently",
            str_at(pdb, "/metadata/name")
        ));
    }
    Eviction::Take
}

/// Kubernetes' `ValidatePodDisruptionBudget`.
pub fn validate(pdb: &Value, causes: &mut Vec<Cause>) {
    let min = pdb.pointer("/spec/minAvailable");
    let max = pdb.pointer("/spec/maxUnavailable");
    if min.is_some() && max.is_some() {
        causes.push(Cause::invalid(
            "spec",
            &pdb["spec"].to_string(),
            "minAvailable and maxUnavailable cannot be both set",
        ));
    }
    for (field, value) in [("minAvailable", min), ("maxUnavailable", max)] {
        let Some(value) = value else {
            continue;
        };
        let at = format!("spec.{field}");
        match int_or_string(value) {
            Some(IntOrString::Int(n)) if n < 0 => causes.push(Cause::invalid(
                at,
                &n.to_string(),
                "must be greater than or equal to 0",
            )),
            Some(IntOrString::String(text)) => match intstr::percentage(&text) {
                Some(p) if p > 100 => {
                    causes.push(Cause::invalid(at, &text, "must not be greater than 100%"))
                }
                Some(_) => {}
                None => causes.push(Cause::invalid(
                    at,
                    &text,
                    "a valid percent string must be a numeric string followed by an ending '%'",
                )),
            },
            Some(_) => {}
            None => causes.push(Cause::invalid(
                at,
                &value.to_string(),
                "must be an integer or a percentage",
            )),
        }
    }
    match str_at(pdb, "/spec/unhealthyPodEvictionPolicy") {
        "" | "IfHealthyBudget" | "AlwaysAllow" => {}
        other => causes.push(Cause::not_supported(
            "spec.unhealthyPodEvictionPolicy",
            other,
            &["AlwaysAllow", "IfHealthyBudget"],
        )),
    }
    if let Some(selector) = pdb.pointer("/spec/selector") {
        if serde_json::from_value::<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>(
            selector.clone(),
        )
        .ok()
        .and_then(|s| LabelSelector::parse(&query_of(&s)).ok())
        .is_none()
        {
            causes.push(Cause::invalid(
                "spec.selector",
                &selector.to_string(),
                "must be a valid label selector",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ready: bool) -> Value {
        json!({"metadata": {"name": "p", "labels": {"app": "web"}},
               "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
    }

    fn budget(spec: Value) -> Value {
        json!({"metadata": {"name": "b", "generation": 1}, "spec": spec})
    }

    #[test]
    fn status_counts_healthy_pods_against_the_budget() {
        let (ready, unready) = (pod(true), pod(false));
        let pods = [&ready, &ready, &ready, &unready];
        let min = budget(json!({"minAvailable": 2}));
        let status = status_of(&min, &pods, 4);
        assert_eq!(
            (
                status["currentHealthy"].as_i64(),
                status["desiredHealthy"].as_i64(),
                status["disruptionsAllowed"].as_i64()
            ),
            (Some(3), Some(2), Some(1))
        );
        let max = budget(json!({"maxUnavailable": "50%"}));
        assert_eq!(status_of(&max, &pods, 4)["desiredHealthy"], 2);
        let all = budget(json!({"minAvailable": "100%"}));
        assert_eq!(status_of(&all, &pods, 4)["disruptionsAllowed"], 0);
    }

    #[test]
    fn evictions_take_what_the_budget_allows() {
        let mut b = budget(json!({"minAvailable": 2}));
        b["status"] = json!({"observedGeneration": 1, "currentHealthy": 2, "desiredHealthy": 2, "disruptionsAllowed": 0});
        let refused = decide(&b, &pod(true));
        assert!(
            matches!(&refused, Eviction::Refuse(m) if m.contains("needs 2 healthy pods and has 2 currently")),
            "{refused:?}"
        );
        assert_eq!(
            decide(&b, &pod(false)),
            Eviction::Free,
            "an unhealthy pod with the budget met"
        );
        b["status"]["disruptionsAllowed"] = json!(1);
        assert_eq!(decide(&b, &pod(true)), Eviction::Take);
        b["metadata"]["generation"] = json!(2);
        assert!(
            matches!(decide(&b, &pod(true)), Eviction::Refuse(m) if m.contains("still being processed"))
        );
    }

    #[test]
    fn bad_budgets_name_the_field() {
        let fields = |spec: Value| {
            let mut causes = Vec::new();
            validate(&budget(spec), &mut causes);
            causes.into_iter().map(|c| c.field).collect::<Vec<_>>()
        };
        assert_eq!(
            fields(json!({"minAvailable": 1, "maxUnavailable": 1})),
            ["spec"]
        );
        assert_eq!(fields(json!({"minAvailable": -1})), ["spec.minAvailable"]);
        assert_eq!(
            fields(json!({"maxUnavailable": "150%"})),
            ["spec.maxUnavailable"]
        );
        assert_eq!(
            fields(json!({"maxUnavailable": "lots"})),
            ["spec.maxUnavailable"]
        );
        assert_eq!(
            fields(json!({"minAvailable": 1, "unhealthyPodEvictionPolicy": "Never"})),
            ["spec.unhealthyPodEvictionPolicy"]
        );
        assert!(fields(
            json!({"minAvailable": "50%", "selector": {"matchLabels": {"app": "web"}}})
        )
        .is_empty());
    }
}
