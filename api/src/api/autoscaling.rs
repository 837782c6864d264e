//! HorizontalPodAutoscaler: `autoscaling/v2` (stored) and `autoscaling/v1` (a view of it,
//! what `kubectl autoscale` may send): defaults, validation, the v1 <-> v2 conversion and the
//! TARGETS cell of `kubectl get hpa`, as Kubernetes' autoscaling API group has them.
//!
//! Two choices differ from Kubernetes on purpose:
//! - `minReplicas: 0` is valid (Kubernetes keeps it behind the `HPAScaleToZero` alpha gate):
//!   Wasm pods start in milliseconds, so scaling to zero is a first-class feature here.
//! - What v1 cannot say (metrics other than CPU utilization, `behavior`, conditions, current
//!   metrics) travels in the same annotations Kubernetes uses
//!   (`autoscaling.alpha.kubernetes.io/*`), holding the v2 JSON of those fields, so an object
//!   read and written back through v1 loses nothing.

use serde_json::{json, Map, Value};

use super::object::str_at;
use super::quantity::Quantity;
use super::validation::Cause;

/// The CPU utilization an HPA without metrics aims at (Kubernetes' `DefaultCPUUtilization`).
pub const DEFAULT_CPU_UTILIZATION: i64 = 80;
/// The longest stabilization window a rule may have (one hour, as Kubernetes).
pub const MAX_STABILIZATION_WINDOW_SECONDS: i64 = 3600;
/// The longest period a scaling policy may have (30 minutes, as Kubernetes).
pub const MAX_PERIOD_SECONDS: i64 = 1800;

/// When a node's proxy last woke this HPA's target from zero (RFC 3339): the controller keeps
/// at least one replica for the scale-down stabilization window after it.
pub const WOKEN_AT_ANNOTATION: &str = "autoscaling.shoal.dev/woken-at";

const METRICS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/metrics";
const BEHAVIOR_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/behavior";
const CONDITIONS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/conditions";
const CURRENT_METRICS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/current-metrics";

/// The metric source types, and the field of a metric spec each one fills.
const SOURCES: &[(&str, &str)] = &[
    ("Object", "object"),
    ("Pods", "pods"),
    ("Resource", "resource"),
    ("ContainerResource", "containerResource"),
    ("External", "external"),
];

/// The default scale-up rules: no stabilization; add 4 pods or double, whichever is more,
/// every 15 s (Kubernetes' `GenerateHPAScaleUpRules`).
pub fn default_scale_up() -> Value {
    json!({
        "stabilizationWindowSeconds": 0,
        "selectPolicy": "Max",
        "policies": [
            {"type": "Pods", "value": 4, "periodSeconds": 15},
            {"type": "Percent", "value": 100, "periodSeconds": 15},
        ],
    })
}

/// The default scale-down rules: the highest recommendation of the last 5 minutes; any
/// number of pods may go at once (Kubernetes' `GenerateHPAScaleDownRules`).
pub fn default_scale_down() -> Value {
    json!({
        "stabilizationWindowSeconds": 300,
        "selectPolicy": "Max",
        "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}],
    })
}

/// Fills each field of `rules` the user left out from `default`.
fn fill_rules(rules: &mut Value, default: Value) {
    let Value::Object(default) = default else {
        return;
    };
    if !rules.is_object() {
        *rules = json!({});
    }
    for (field, value) in default {
        if rules.get(&field).is_none_or(Value::is_null) {
            rules[field] = value;
        }
    }
}

/// v2 defaults: `minReplicas` 1, CPU at 80% of requests when no metric is named, and, when
/// `behavior` is given, each rule it leaves out (Kubernetes' `SetDefaults_HorizontalPodAutoscaler`).
pub fn defaults(hpa: &mut Value) {
    let Some(spec) = hpa.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    if spec.get("minReplicas").is_none_or(Value::is_null) {
        spec.insert("minReplicas".into(), json!(1));
    }
    if spec
        .get("metrics")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        spec.insert(
            "metrics".into(),
            json!([cpu_utilization_metric(DEFAULT_CPU_UTILIZATION)]),
        );
    }
    if let Some(behavior) = spec.get_mut("behavior").filter(|b| b.is_object()) {
        fill_rules(&mut behavior["scaleUp"], default_scale_up());
        fill_rules(&mut behavior["scaleDown"], default_scale_down());
    }
}

fn cpu_utilization_metric(percent: i64) -> Value {
    json!({"type": "Resource", "resource": {"name": "cpu",
        "target": {"type": "Utilization", "averageUtilization": percent}}})
}

/// An integer field: `None` when absent or null, `Err` (with a cause pushed) when not an int32.
fn int32(
    object: &Value,
    pointer: &str,
    field: &str,
    causes: &mut Vec<Cause>,
) -> Result<Option<i64>, ()> {
    match object.pointer(pointer) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => match value.as_i64() {
            Some(n) if i32::try_from(n).is_ok() => Ok(Some(n)),
            _ => {
                causes.push(Cause::invalid(
                    field,
                    &value.to_string(),
                    "must be a 32-bit integer",
                ));
                Err(())
            }
        },
    }
}

/// Validation of a v2 HPA (after defaults), as Kubernetes' `ValidateHorizontalPodAutoscaler`.
pub fn validate(hpa: &Value, causes: &mut Vec<Cause>) {
    let Some(spec) = hpa.get("spec").filter(|s| s.is_object()) else {
        causes.push(Cause::required("spec"));
        return;
    };
    for field in ["kind", "name"] {
        if str_at(spec, &format!("/scaleTargetRef/{field}")).is_empty() {
            causes.push(Cause::required(format!("spec.scaleTargetRef.{field}")));
        }
    }
    let target_name = str_at(spec, "/scaleTargetRef/name");
    if target_name.contains('/') || target_name.contains('%') || [".", ".."].contains(&target_name)
    {
        causes.push(Cause::invalid(
            "spec.scaleTargetRef.name",
            target_name,
            "may not contain '/' or '%' and may not be '.' or '..'",
        ));
    }
    let min = int32(spec, "/minReplicas", "spec.minReplicas", causes);
    let max = int32(spec, "/maxReplicas", "spec.maxReplicas", causes);
    if let Ok(Some(min)) = min {
        if min < 0 {
            causes.push(Cause::invalid(
                "spec.minReplicas",
                &min.to_string(),
                "must be greater than or equal to 0",
            ));
        }
    }
    match max {
        Ok(None) => causes.push(Cause::required("spec.maxReplicas")),
        Ok(Some(max)) if max < 1 => causes.push(Cause::invalid(
            "spec.maxReplicas",
            &max.to_string(),
            "must be greater than or equal to 1",
        )),
        Ok(Some(max)) => {
            if let Ok(Some(min)) = min {
                if max < min {
                    causes.push(Cause::invalid(
                        "spec.maxReplicas",
                        &max.to_string(),
                        "must be greater than or equal to `minReplicas`",
                    ));
                }
            }
        }
        Err(()) => {}
    }
    for (i, metric) in spec
        .get("metrics")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        validate_metric(metric, &format!("spec.metrics[{i}]"), causes);
    }
    for (rules, field) in [
        ("scaleUp", "spec.behavior.scaleUp"),
        ("scaleDown", "spec.behavior.scaleDown"),
    ] {
        if let Some(rules) = spec
            .pointer(&format!("/behavior/{rules}"))
            .filter(|r| !r.is_null())
        {
            validate_rules(rules, field, causes);
        }
    }
}

fn validate_metric(metric: &Value, at: &str, causes: &mut Vec<Cause>) {
    let kind = str_at(metric, "/type");
    let supported: Vec<&str> = SOURCES.iter().map(|(t, _)| *t).collect();
    let Some((_, field)) = SOURCES.iter().find(|(t, _)| *t == kind) else {
        if kind.is_empty() {
            causes.push(Cause::required(format!("{at}.type")));
        } else {
            causes.push(Cause::not_supported(format!("{at}.type"), kind, &supported));
        }
        return;
    };
    for (_, other) in SOURCES.iter().filter(|(_, f)| f != field) {
        if metric.get(*other).is_some_and(|v| !v.is_null()) {
            causes.push(Cause::forbidden(
                format!("{at}.{other}"),
                "must populate the given metric source only",
            ));
        }
    }
    let Some(source) = metric.get(*field).filter(|s| s.is_object()) else {
        causes.push(Cause::required(format!("{at}.{field}")));
        return;
    };
    let at = format!("{at}.{field}");
    match kind {
        "Resource" | "ContainerResource" => {
            if str_at(source, "/name").is_empty() {
                causes.push(Cause::required(format!("{at}.name")));
            }
            if kind == "ContainerResource" && str_at(source, "/container").is_empty() {
                causes.push(Cause::required(format!("{at}.container")));
            }
            validate_target(source, &at, &["Utilization", "AverageValue"], causes);
        }
        "Pods" => {
            validate_metric_name(source, &at, causes);
            validate_target(source, &at, &["AverageValue"], causes);
        }
        "Object" => {
            validate_metric_name(source, &at, causes);
            for field in ["kind", "name"] {
                if str_at(source, &format!("/describedObject/{field}")).is_empty() {
                    causes.push(Cause::required(format!("{at}.describedObject.{field}")));
                }
            }
            validate_target(source, &at, &["Value", "AverageValue"], causes);
        }
        _ => {
            validate_metric_name(source, &at, causes);
            validate_target(source, &at, &["Value", "AverageValue"], causes);
        }
    }
}

fn validate_metric_name(source: &Value, at: &str, causes: &mut Vec<Cause>) {
    if str_at(source, "/metric/name").is_empty() {
        causes.push(Cause::required(format!("{at}.metric.name")));
    }
}

/// A metric target: its type among `allowed`, and the field that type names, positive.
fn validate_target(source: &Value, at: &str, allowed: &[&str], causes: &mut Vec<Cause>) {
    let at = format!("{at}.target");
    let kind = str_at(source, "/target/type");
    if kind.is_empty() {
        causes.push(Cause::required(format!("{at}.type")));
        return;
    }
    if !allowed.contains(&kind) {
        causes.push(Cause::not_supported(format!("{at}.type"), kind, allowed));
        return;
    }
    let field = match kind {
        "Utilization" => "averageUtilization",
        "AverageValue" => "averageValue",
        _ => "value",
    };
    let Some(value) = source
        .pointer(&format!("/target/{field}"))
        .filter(|v| !v.is_null())
    else {
        causes.push(Cause::required(format!("{at}.{field}")));
        return;
    };
    let positive = match value {
        Value::Number(n) => n
            .as_i64()
            .is_some_and(|n| n > 0 && i32::try_from(n).is_ok()),
        Value::String(s) => Quantity::parse(s).is_ok_and(|q| q.millis() > 0),
        _ => false,
    };
    if !positive {
        causes.push(Cause::invalid(
            format!("{at}.{field}"),
            value.to_string().trim_matches('"'),
            "must be positive",
        ));
    }
}

fn validate_rules(rules: &Value, at: &str, causes: &mut Vec<Cause>) {
    if let Ok(Some(window)) = int32(
        rules,
        "/stabilizationWindowSeconds",
        &format!("{at}.stabilizationWindowSeconds"),
        causes,
    ) {
        if !(0..=MAX_STABILIZATION_WINDOW_SECONDS).contains(&window) {
            causes.push(Cause::invalid(
                format!("{at}.stabilizationWindowSeconds"),
                &window.to_string(),
                &format!("must be between 0 and {MAX_STABILIZATION_WINDOW_SECONDS} seconds"),
            ));
        }
    }
    let select = str_at(rules, "/selectPolicy");
    if !select.is_empty() && !["Max", "Min", "Disabled"].contains(&select) {
        causes.push(Cause::not_supported(
            format!("{at}.selectPolicy"),
            select,
            &["Disabled", "Max", "Min"],
        ));
    }
    let policies = rules.get("policies").and_then(Value::as_array);
    if policies.is_none_or(Vec::is_empty) {
        causes.push(Cause::required(format!("{at}.policies")));
    }
    for (i, policy) in policies.into_iter().flatten().enumerate() {
        let at = format!("{at}.policies[{i}]");
        let kind = str_at(policy, "/type");
        if !["Pods", "Percent"].contains(&kind) {
            causes.push(Cause::not_supported(
                format!("{at}.type"),
                kind,
                &["Percent", "Pods"],
            ));
        }
        match int32(policy, "/value", &format!("{at}.value"), causes) {
            Ok(Some(v)) if v > 0 => {}
            Ok(Some(v)) => causes.push(Cause::invalid(
                format!("{at}.value"),
                &v.to_string(),
                "must be greater than zero",
            )),
            Ok(None) => causes.push(Cause::required(format!("{at}.value"))),
            Err(()) => {}
        }
        match int32(
            policy,
            "/periodSeconds",
            &format!("{at}.periodSeconds"),
            causes,
        ) {
            Ok(Some(p)) if (1..=MAX_PERIOD_SECONDS).contains(&p) => {}
            Ok(Some(p)) => causes.push(Cause::invalid(
                format!("{at}.periodSeconds"),
                &p.to_string(),
                &format!(
                    "must be greater than zero and less than or equal to {MAX_PERIOD_SECONDS}"
                ),
            )),
            Ok(None) => causes.push(Cause::required(format!("{at}.periodSeconds"))),
            Err(()) => {}
        }
    }
}

/// Whether a v2 metric is the CPU utilization v1's `targetCPUUtilizationPercentage` says.
fn is_cpu_utilization(metric: &Value) -> bool {
    str_at(metric, "/type") == "Resource"
        && str_at(metric, "/resource/name") == "cpu"
        && str_at(metric, "/resource/target/type") == "Utilization"
}

/// Moves `annotation` (v2 JSON) out of `metadata.annotations` into `to`, if present.
fn take_annotation(metadata: &mut Map<String, Value>, annotation: &str) -> Option<Value> {
    let annotations = metadata.get_mut("annotations")?.as_object_mut()?;
    let text = annotations.remove(annotation)?;
    if annotations.is_empty() {
        metadata.remove("annotations");
    }
    serde_json::from_str(text.as_str()?).ok()
}

fn put_annotation(object: &mut Value, annotation: &str, value: &Value) {
    let metadata = super::object::metadata_mut(object);
    let annotations = metadata.entry("annotations").or_insert_with(|| json!({}));
    if let Some(annotations) = annotations.as_object_mut() {
        annotations.insert(annotation.into(), json!(value.to_string()));
    }
}

/// An autoscaling/v1 HPA as the stored v2 object.
pub fn to_v2(mut v1: Value) -> Value {
    if !v1.is_object() {
        return v1;
    }
    let metadata = super::object::metadata_mut(&mut v1);
    let other_metrics = take_annotation(metadata, METRICS_ANNOTATION);
    let behavior = take_annotation(metadata, BEHAVIOR_ANNOTATION);
    let conditions = take_annotation(metadata, CONDITIONS_ANNOTATION);
    let current_metrics = take_annotation(metadata, CURRENT_METRICS_ANNOTATION);
    let mut v2 = json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": v1.get("metadata").cloned().unwrap_or(json!({})),
    });
    if let Some(spec) = v1.get("spec").filter(|s| s.is_object()) {
        let mut metrics: Vec<Value> = Vec::new();
        if let Some(percent) = spec
            .get("targetCPUUtilizationPercentage")
            .filter(|v| !v.is_null())
        {
            metrics.push(json!({"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": percent}}}));
        }
        metrics.extend(
            other_metrics
                .and_then(|m| m.as_array().cloned())
                .into_iter()
                .flatten(),
        );
        let mut v2_spec =
            json!({"scaleTargetRef": spec.get("scaleTargetRef").cloned().unwrap_or(json!({}))});
        for field in ["minReplicas", "maxReplicas"] {
            if let Some(value) = spec.get(field) {
                v2_spec[field] = value.clone();
            }
        }
        if !metrics.is_empty() {
            v2_spec["metrics"] = json!(metrics);
        }
        if let Some(behavior) = behavior {
            v2_spec["behavior"] = behavior;
        }
        v2["spec"] = v2_spec;
    }
    if let Some(status) = v1.get("status").filter(|s| s.is_object()) {
        let mut v2_status = json!({});
        for field in [
            "observedGeneration",
            "lastScaleTime",
            "currentReplicas",
            "desiredReplicas",
        ] {
            if let Some(value) = status.get(field) {
                v2_status[field] = value.clone();
            }
        }
        let mut current: Vec<Value> = Vec::new();
        if let Some(percent) = status
            .get("currentCPUUtilizationPercentage")
            .filter(|v| !v.is_null())
        {
            current.push(json!({"type": "Resource", "resource": {"name": "cpu",
                "current": {"averageUtilization": percent}}}));
        }
        current.extend(
            current_metrics
                .and_then(|m| m.as_array().cloned())
                .into_iter()
                .flatten(),
        );
        if !current.is_empty() {
            v2_status["currentMetrics"] = json!(current);
        }
        if let Some(conditions) = conditions {
            v2_status["conditions"] = conditions;
        }
        v2["status"] = v2_status;
    }
    v2
}

/// The stored v2 HPA as autoscaling/v1 shows it.
pub fn to_v1(v2: &Value) -> Value {
    let mut v1 = json!({
        "apiVersion": "autoscaling/v1",
        "kind": "HorizontalPodAutoscaler",
        "metadata": v2.get("metadata").cloned().unwrap_or(json!({})),
    });
    let spec = v2.get("spec").cloned().unwrap_or(json!({}));
    let metrics: Vec<Value> = spec
        .get("metrics")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let cpu = metrics.iter().position(is_cpu_utilization);
    let mut v1_spec =
        json!({"scaleTargetRef": spec.get("scaleTargetRef").cloned().unwrap_or(json!({}))});
    for field in ["minReplicas", "maxReplicas"] {
        if let Some(value) = spec.get(field) {
            v1_spec[field] = value.clone();
        }
    }
    if let Some(i) = cpu {
        v1_spec["targetCPUUtilizationPercentage"] =
            metrics[i]["resource"]["target"]["averageUtilization"].clone();
    }
    let others: Vec<&Value> = (metrics.iter().enumerate())
        .filter(|(i, _)| Some(*i) != cpu)
        .map(|(_, m)| m)
        .collect();
    if !others.is_empty() {
        put_annotation(&mut v1, METRICS_ANNOTATION, &json!(others));
    }
    if let Some(behavior) = spec.get("behavior").filter(|b| !b.is_null()) {
        put_annotation(&mut v1, BEHAVIOR_ANNOTATION, behavior);
    }
    v1["spec"] = v1_spec;
    let status = v2.get("status").cloned().unwrap_or(json!({}));
    let mut v1_status = json!({});
    for field in [
        "observedGeneration",
        "lastScaleTime",
        "currentReplicas",
        "desiredReplicas",
    ] {
        if let Some(value) = status.get(field) {
            v1_status[field] = value.clone();
        }
    }
    if v1_status.get("currentReplicas").is_none() {
        v1_status["currentReplicas"] = json!(0);
    }
    if v1_status.get("desiredReplicas").is_none() {
        v1_status["desiredReplicas"] = json!(0);
    }
    let current: Vec<Value> = status
        .get("currentMetrics")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let current_cpu = current.iter().position(|m| {
        str_at(m, "/type") == "Resource"
            && str_at(m, "/resource/name") == "cpu"
            && m.pointer("/resource/current/averageUtilization").is_some()
    });
    if let (Some(i), Some(_)) = (current_cpu, cpu) {
        v1_status["currentCPUUtilizationPercentage"] =
            current[i]["resource"]["current"]["averageUtilization"].clone();
    }
    let other_current: Vec<&Value> = (current.iter().enumerate())
        .filter(|(i, _)| cpu.is_none() || Some(*i) != current_cpu)
        .map(|(_, m)| m)
        .collect();
    if !other_current.is_empty() {
        put_annotation(&mut v1, CURRENT_METRICS_ANNOTATION, &json!(other_current));
    }
    if let Some(conditions) = status.get("conditions").filter(|c| !c.is_null()) {
        put_annotation(&mut v1, CONDITIONS_ANNOTATION, conditions);
    }
    v1["status"] = v1_status;
    v1
}

/// What one metric of `kubectl get hpa`'s TARGETS column shows: `current/target`.
fn target_cell(spec: &Value, status: Option<&Value>) -> String {
    let unknown = || "<unknown>".to_string();
    let text = |value: Option<&Value>| match value {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let at = |pointer: &str| text(status.and_then(|s| s.pointer(pointer)));
    let target = |pointer: &str| text(spec.pointer(pointer)).unwrap_or_else(unknown);
    match str_at(spec, "/type") {
        "Resource" | "ContainerResource" => {
            let field = if str_at(spec, "/type") == "Resource" {
                "resource"
            } else {
                "containerResource"
            };
            let name = str_at(spec, &format!("/{field}/name"));
            if spec
                .pointer(&format!("/{field}/target/averageValue"))
                .is_some()
            {
                let current = at(&format!("/{field}/current/averageValue")).unwrap_or_else(unknown);
                format!(
                    "{name}: {current}/{}",
                    target(&format!("/{field}/target/averageValue"))
                )
            } else {
                let current = at(&format!("/{field}/current/averageUtilization"))
                    .map(|p| format!("{p}%"))
                    .unwrap_or_else(unknown);
                let goal = text(spec.pointer(&format!("/{field}/target/averageUtilization")))
                    .map(|p| format!("{p}%"))
                    .unwrap_or_else(|| "<auto>".into());
                format!("{name}: {current}/{goal}")
            }
        }
        "Pods" => {
            let current = at("/pods/current/averageValue").unwrap_or_else(unknown);
            format!("{current}/{}", target("/pods/target/averageValue"))
        }
        kind @ ("Object" | "External") => {
            let field = if kind == "Object" {
                "object"
            } else {
                "external"
            };
            if spec
                .pointer(&format!("/{field}/target/averageValue"))
                .is_some()
            {
                let current = at(&format!("/{field}/current/averageValue")).unwrap_or_else(unknown);
                format!(
                    "{current}/{} (avg)",
                    target(&format!("/{field}/target/averageValue"))
                )
            } else {
                let current = at(&format!("/{field}/current/value")).unwrap_or_else(unknown);
                format!("{current}/{}", target(&format!("/{field}/target/value")))
            }
        }
        _ => "<unknown type>".into(),
    }
}

/// The TARGETS column: each metric's `current/target`, the first two, then `+ N more...`
/// (Kubernetes' `formatHPAMetrics`).
pub fn targets(hpa: &Value) -> String {
    let specs: Vec<&Value> = hpa
        .pointer("/spec/metrics")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    if specs.is_empty() {
        return "<none>".into();
    }
    let statuses = hpa
        .pointer("/status/currentMetrics")
        .and_then(Value::as_array);
    let cells: Vec<String> = (specs.iter().enumerate())
        .map(|(i, spec)| target_cell(spec, statuses.and_then(|s| s.get(i))))
        .collect();
    const SHOWN: usize = 2;
    if cells.len() > SHOWN {
        format!(
            "{} + {} more...",
            cells[..SHOWN].join(", "),
            cells.len() - SHOWN
        )
    } else {
        cells.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hpa(spec: Value) -> Value {
        json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
               "metadata": {"name": "web", "namespace": "default"}, "spec": spec})
    }

    fn fields(object: &Value) -> Vec<String> {
        let mut causes = Vec::new();
        validate(object, &mut causes);
        causes
            .into_iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    #[test]
    fn defaults_fill_min_replicas_cpu_and_left_out_rules() {
        let mut object = hpa(
            json!({"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                                     "maxReplicas": 5}),
        );
        defaults(&mut object);
        assert_eq!(object["spec"]["minReplicas"], 1);
        assert_eq!(object["spec"]["metrics"][0], cpu_utilization_metric(80));
        assert!(object["spec"].get("behavior").is_none());
        assert!(fields(&object).is_empty(), "{:?}", fields(&object));

        // A behavior given in part gets the rest of Kubernetes' defaults.
        let mut object = hpa(
            json!({"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 5,
            "minReplicas": 0, "behavior": {"scaleDown": {"stabilizationWindowSeconds": 5}}}),
        );
        defaults(&mut object);
        assert_eq!(object["spec"]["minReplicas"], 0);
        assert_eq!(object["spec"]["behavior"]["scaleUp"], default_scale_up());
        let down = &object["spec"]["behavior"]["scaleDown"];
        assert_eq!(down["stabilizationWindowSeconds"], 5);
        assert_eq!(down["policies"], default_scale_down()["policies"]);
        assert!(fields(&object).is_empty(), "{:?}", fields(&object));
    }

    #[test]
    fn validation_names_each_bad_field() {
        let target = json!({"kind": "Deployment", "name": "web"});
        let inverted = hpa(json!({"scaleTargetRef": target, "minReplicas": 5, "maxReplicas": 2}));
        assert_eq!(
            fields(&inverted),
            ["spec.maxReplicas: Invalid value: \"2\": must be greater than or equal to `minReplicas`"]
        );
        let negative = hpa(json!({"scaleTargetRef": target, "minReplicas": -1, "maxReplicas": 0}));
        assert_eq!(
            fields(&negative),
            [
                "spec.minReplicas: Invalid value: \"-1\": must be greater than or equal to 0",
                "spec.maxReplicas: Invalid value: \"0\": must be greater than or equal to 1",
            ]
        );
        let no_target = hpa(json!({"scaleTargetRef": {}, "maxReplicas": 2}));
        assert_eq!(
            fields(&no_target),
            [
                "spec.scaleTargetRef.kind: Required value",
                "spec.scaleTargetRef.name: Required value"
            ]
        );
        let huge = hpa(json!({"scaleTargetRef": target, "maxReplicas": 4_000_000_000u64}));
        assert_eq!(
            fields(&huge),
            ["spec.maxReplicas: Invalid value: \"4000000000\": must be a 32-bit integer"]
        );

        let metrics = hpa(
            json!({"scaleTargetRef": target, "maxReplicas": 3, "metrics": [
                {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 0}}},
                {"type": "Pods", "pods": {"metric": {"name": "requests_per_second"}, "target": {"type": "Value", "value": "10"}}},
                {"type": "Object", "resource": {"name": "cpu"}},
                {"type": "Sideways"},
                {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "64Mi"}}},
            ]}),
        );
        assert_eq!(
            fields(&metrics),
            [
                "spec.metrics[0].resource.target.averageUtilization: Invalid value: \"0\": must be positive",
                "spec.metrics[1].pods.target.type: Unsupported value: \"Value\": supported values: \"AverageValue\"",
                "spec.metrics[2].resource: Forbidden: must populate the given metric source only",
                "spec.metrics[2].object: Required value",
                "spec.metrics[3].type: Unsupported value: \"Sideways\": supported values: \"Object\", \"Pods\", \"Resource\", \"ContainerResource\", \"External\"",
            ]
        );

        let behavior = hpa(
            json!({"scaleTargetRef": target, "maxReplicas": 3, "behavior": {
            "scaleUp": {"stabilizationWindowSeconds": 3601, "selectPolicy": "Most",
                        "policies": [{"type": "Pods", "value": 0, "periodSeconds": 1801}]},
            "scaleDown": {"policies": []}}}),
        );
        assert_eq!(
            fields(&behavior),
            [
                "spec.behavior.scaleUp.stabilizationWindowSeconds: Invalid value: \"3601\": must be between 0 and 3600 seconds",
                "spec.behavior.scaleUp.selectPolicy: Unsupported value: \"Most\": supported values: \"Disabled\", \"Max\", \"Min\"",
                "spec.behavior.scaleUp.policies[0].value: Invalid value: \"0\": must be greater than zero",
                "spec.behavior.scaleUp.policies[0].periodSeconds: Invalid value: \"1801\": must be greater than zero and less than or equal to 1800",
                "spec.behavior.scaleDown.policies: Required value",
            ]
        );
    }

    #[test]
    fn v1_and_v2_convert_both_ways_without_loss() {
        let v1 = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                     "minReplicas": 1, "maxReplicas": 4, "targetCPUUtilizationPercentage": 50}});
        let v2 = to_v2(v1.clone());
        assert_eq!(v2["apiVersion"], "autoscaling/v2");
        assert_eq!(v2["spec"]["metrics"][0], cpu_utilization_metric(50));
        assert_eq!(to_v1(&v2)["spec"], v1["spec"]);

        // A v2 object with more than v1 can say goes through v1 and back unchanged.
        let mut full = hpa(
            json!({"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "minReplicas": 0, "maxReplicas": 9,
            "metrics": [
                {"type": "Pods", "pods": {"metric": {"name": "requests_per_second"}, "target": {"type": "AverageValue", "averageValue": "10"}}},
                cpu_utilization_metric(60),
            ],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 5}}}),
        );
        defaults(&mut full);
        full["status"] = json!({"currentReplicas": 2, "desiredReplicas": 3,
            "currentMetrics": [
                {"type": "Pods", "pods": {"metric": {"name": "requests_per_second"}, "current": {"averageValue": "12"}}},
                {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 75, "averageValue": "75m"}}},
            ],
            "conditions": [{"type": "AbleToScale", "status": "True", "reason": "ReadyForNewScale"}]});
        let v1 = to_v1(&full);
        assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 60);
        assert_eq!(v1["status"]["currentCPUUtilizationPercentage"], 75);
        let back = to_v2(v1);
        assert_eq!(back["spec"]["behavior"], full["spec"]["behavior"]);
        assert_eq!(back["status"]["conditions"], full["status"]["conditions"]);
        assert_eq!(back["metadata"], full["metadata"]);
        // The order of metrics may change (v1's CPU target comes first); their set does not.
        let set = |o: &Value, p: &str| {
            let mut all: Vec<String> = o
                .pointer(p)
                .unwrap()
                .as_array()
                .unwrap()
                .iter()
                .map(Value::to_string)
                .collect();
            all.sort();
            all
        };
        assert_eq!(set(&back, "/spec/metrics"), set(&full, "/spec/metrics"));
        assert_eq!(
            back["status"]["currentMetrics"].as_array().unwrap().len(),
            2
        );
    }

    #[test]
    fn targets_read_as_kubectl_prints_them() {
        let mut object = hpa(json!({"metrics": [
            cpu_utilization_metric(50),
            {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "64Mi"}}},
            {"type": "Pods", "pods": {"metric": {"name": "requests_per_second"}, "target": {"type": "AverageValue", "averageValue": "10"}}},
        ]}));
        assert_eq!(
            targets(&object),
            "cpu: <unknown>/50%, memory: <unknown>/64Mi + 1 more..."
        );
        object["status"] = json!({"currentMetrics": [
            {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 37, "averageValue": "37m"}}},
        ]});
        object["spec"]["metrics"]
            .as_array_mut()
            .unwrap()
            .truncate(1);
        assert_eq!(targets(&object), "cpu: 37%/50%");
        assert_eq!(targets(&hpa(json!({}))), "<none>");
        let object_metric = hpa(json!({"metrics": [{"type": "Object", "object": {
            "describedObject": {"kind": "Service", "name": "web"}, "metric": {"name": "requests_per_second"},
            "target": {"type": "Value", "value": "100"}}}]}));
        assert_eq!(targets(&object_metric), "<unknown>/100");
    }
}
