//! Validation: every rule a kind's objects must satisfy, reported as one [`Cause`] per bad
//! field with the field's path, the way Kubernetes answers 422 Invalid.

use std::collections::HashSet;

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::Value;

use super::object;

/// One problem with one field.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Cause {
    /// `FieldValueRequired`, `FieldValueInvalid`, `FieldValueDuplicate`, `FieldValueNotSupported`,
    /// `FieldValueForbidden`.
    pub reason: &'static str,
    /// Human message, such as `Required value` or `Invalid value: "x": must be ...`.
    pub message: String,
    pub field: String,
}

impl Cause {
    pub fn required(field: impl Into<String>) -> Self {
        Self {
            reason: "FieldValueRequired",
            message: "Required value".into(),
            field: field.into(),
        }
    }

    pub fn invalid(field: impl Into<String>, value: &str, why: &str) -> Self {
        Self {
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {value:?}: {why}"),
            field: field.into(),
        }
    }

    pub fn forbidden(field: impl Into<String>, why: &str) -> Self {
        Self {
            reason: "FieldValueForbidden",
            message: format!("Forbidden: {why}"),
            field: field.into(),
        }
    }

    fn duplicate(field: impl Into<String>, value: &str) -> Self {
        Self {
            reason: "FieldValueDuplicate",
            message: format!("Duplicate value: {value:?}"),
            field: field.into(),
        }
    }

    pub fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> Self {
        let quoted: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        Self {
            reason: "FieldValueNotSupported",
            message: format!(
                "Unsupported value: {value:?}: supported values: {}",
                quoted.join(", ")
            ),
            field: field.into(),
        }
    }
}

/// The object metadata every kind shares (Kubernetes' `ValidateObjectMeta`): a name that
/// passes the kind's name rule, and labels that are label values.
pub fn object_meta(
    object: &Value,
    name_rule: fn(&str) -> Result<(), NameError>,
    causes: &mut Vec<Cause>,
) {
    let name = object::name(object);
    if name.is_empty() {
        causes.push(Cause::required("metadata.name"));
    } else if let Err(why) = name_rule(name) {
        causes.push(Cause::invalid("metadata.name", name, &why.to_string()));
    }
    validate_labels(object, causes);
}

/// A ReplicationController is validated as the ReplicaSet it is, its selector map as
/// matchLabels.
pub fn replication_controller(object: &Value, causes: &mut Vec<Cause>) {
    let mut as_set = object.clone();
    if let Some(selector) = object.pointer("/spec/selector").cloned() {
        object::set_at(
            &mut as_set,
            "/spec/selector",
            serde_json::json!({"matchLabels": selector}),
        );
    }
    replica_set(&as_set, causes)
}

/// A Service: a known type and affinity, ports in range, unique by port and protocol, named
/// (uniquely) when there are several, and target ports that are numbers in range or port
/// names.
pub fn service(object: &Value, causes: &mut Vec<Cause>) {
    let spec = object.get("spec").cloned().unwrap_or(Value::Null);
    let text = |pointer: &str| spec.pointer(pointer).and_then(Value::as_str);
    let type_ = text("/type").unwrap_or("ClusterIP");
    let types = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
    if !types.contains(&type_) {
        causes.push(Cause::not_supported("spec.type", type_, &types));
    }
    let affinity = text("/sessionAffinity").unwrap_or("None");
    if !["None", "ClientIP"].contains(&affinity) {
        causes.push(Cause::not_supported(
            "spec.sessionAffinity",
            affinity,
            &["ClientIP", "None"],
        ));
    }
    let ports = spec
        .get("ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let headless = text("/clusterIP") == Some("None");
    if ports.is_empty() && !headless && type_ != "ExternalName" {
        causes.push(Cause::required("spec.ports"));
    }
    let mut seen = HashSet::new();
    let mut names = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        let number = port.get("port").and_then(Value::as_i64);
        match number {
            None => causes.push(Cause::required(format!("{field}.port"))),
            Some(n) if !(1..=65535).contains(&n) => causes.push(Cause::invalid(
                format!("{field}.port"),
                &n.to_string(),
                "must be between 1 and 65535, inclusive",
            )),
            Some(_) => {}
        }
        let protocol = port
            .get("protocol")
            .and_then(Value::as_str)
            .unwrap_or("TCP");
        if !["TCP", "UDP", "SCTP"].contains(&protocol) {
            causes.push(Cause::not_supported(
                format!("{field}.protocol"),
                protocol,
                &["SCTP", "TCP", "UDP"],
            ));
        }
        if let Some(n) = number {
            if !seen.insert((n, protocol.to_string())) {
                causes.push(Cause::duplicate(field.clone(), &format!("{n}/{protocol}")));
            }
        }
        let name = port.get("name").and_then(Value::as_str).unwrap_or("");
        if ports.len() > 1 && name.is_empty() {
            causes.push(Cause::required(format!("{field}.name")));
        } else if !name.is_empty() && !names.insert(name.to_string()) {
            causes.push(Cause::duplicate(format!("{field}.name"), name));
        }
        match port.get("targetPort") {
            Some(Value::Number(n)) if !n.as_i64().is_some_and(|n| (1..=65535).contains(&n)) => {
                causes.push(Cause::invalid(
                    format!("{field}.targetPort"),
                    &n.to_string(),
                    "must be between 1 and 65535, inclusive",
                ))
            }
            Some(Value::String(target)) if !is_port_name(target) => causes.push(Cause::invalid(
                format!("{field}.targetPort"),
                target,
                "must be a port number or an IANA_SVC_NAME (at most 15 lowercase letters, digits and '-', with a letter)",
            )),
            _ => {}
        }
    }
}

/// An Ingress routes to Service backends by host and path: every path is absolute with a
/// known pathType, and every backend names a Service and one of its ports.
pub fn ingress(object: &Value, causes: &mut Vec<Cause>) {
    let spec = object.get("spec").cloned().unwrap_or(Value::Null);
    let backend = |backend: Option<&Value>, field: &str, causes: &mut Vec<Cause>| {
        let Some(service) = backend.and_then(|b| b.get("service")) else {
            causes.push(Cause::required(format!("{field}.service")));
            return;
        };
        if service
            .get("name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            causes.push(Cause::required(format!("{field}.service.name")));
        }
        let port = service.get("port");
        let number = port.and_then(|p| p.get("number")).and_then(Value::as_i64);
        let name = port.and_then(|p| p.get("name")).and_then(Value::as_str);
        match (number, name) {
            (Some(n), None) if !(1..=65535).contains(&n) => causes.push(Cause::invalid(
                format!("{field}.service.port.number"),
                &n.to_string(),
                "must be between 1 and 65535, inclusive",
            )),
            (Some(_), None) | (None, Some(_)) => {}
            _ => causes.push(Cause::required(format!(
                "{field}.service.port: exactly one of number and name"
            ))),
        }
    };
    if let Some(default) = spec.get("defaultBackend") {
        backend(Some(default), "spec.defaultBackend", causes);
    }
    let rules = spec
        .get("rules")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, rule) in rules.iter().enumerate() {
        let paths = rule
            .pointer("/http/paths")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (j, path) in paths.iter().enumerate() {
            let field = format!("spec.rules[{i}].http.paths[{j}]");
            let text = path.get("path").and_then(Value::as_str).unwrap_or("");
            let kind = path.get("pathType").and_then(Value::as_str);
            let kinds = ["Exact", "ImplementationSpecific", "Prefix"];
            match kind {
                None => causes.push(Cause::required(format!("{field}.pathType"))),
                Some(k) if !kinds.contains(&k) => {
                    causes.push(Cause::not_supported(format!("{field}.pathType"), k, &kinds))
                }
                Some(_) if !text.starts_with('/') => causes.push(Cause::invalid(
                    format!("{field}.path"),
                    text,
                    "must be an absolute path",
                )),
                Some(_) => {}
            }
            backend(path.get("backend"), &format!("{field}.backend"), causes);
        }
    }
}

/// An IANA service name, as container port names and named target ports must be.
pub fn is_port_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.chars().any(|c| c.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

/// A CronJob: a schedule Kubernetes' cron parser takes, a known time zone, sane counts, and a
/// valid Job template.
pub fn cron_job(object: &Value, causes: &mut Vec<Cause>) {
    let schedule = object
        .pointer("/spec/schedule")
        .and_then(Value::as_str)
        .unwrap_or("");
    let time_zone = object.pointer("/spec/timeZone").and_then(Value::as_str);
    if schedule.is_empty() {
        causes.push(Cause::required("spec.schedule"));
    } else if let Err(why) = super::cron::Schedule::parse(schedule, None) {
        causes.push(Cause::invalid("spec.schedule", schedule, &why.to_string()));
    }
    if let Some(zone) = time_zone {
        if let Err(why) = super::cron::check_time_zone(zone) {
            causes.push(Cause::invalid("spec.timeZone", zone, &why.to_string()));
        }
    }
    for field in [
        "startingDeadlineSeconds",
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
    ] {
        non_negative(object, "/spec", field, causes);
    }
    if let Some(policy) = object
        .pointer("/spec/concurrencyPolicy")
        .and_then(Value::as_str)
    {
        let supported = ["Allow", "Forbid", "Replace"];
        if !supported.contains(&policy) {
            causes.push(Cause::not_supported(
                "spec.concurrencyPolicy",
                policy,
                &supported,
            ));
        }
    }
    if let Some(template) = object.pointer("/spec/jobTemplate") {
        let mut job_causes = Vec::new();
        job(template, &mut job_causes);
        for mut cause in job_causes {
            cause.field = format!("spec.jobTemplate.{}", cause.field);
            causes.push(cause);
        }
    }
}

/// A container's `resources`: every request and limit a valid, non-negative quantity, and no
/// request above its limit (Kubernetes' messages).
fn resources(container: &Value, path: &str, causes: &mut Vec<Cause>) {
    use super::quantity::Quantity;
    let mut parsed = |section: &str| -> Vec<(String, String, Option<Quantity>)> {
        let map = container
            .pointer(&format!("/resources/{section}"))
            .and_then(Value::as_object);
        let mut out = Vec::new();
        for (name, value) in map.into_iter().flatten() {
            let field = format!("{path}resources.{section}[{name}]");
            let text = match value {
                Value::String(text) => text.clone(),
                Value::Number(n) => n.to_string(),
                other => {
                    causes.push(Cause::invalid(
                        field,
                        &other.to_string(),
                        "must be a quantity",
                    ));
                    continue;
                }
            };
            match Quantity::parse(&text) {
                Ok(q) if q.is_negative() => {
                    causes.push(Cause::invalid(
                        field,
                        &text,
                        "must be greater than or equal to 0",
                    ));
                }
                Ok(q) => out.push((name.clone(), text, Some(q))),
                Err(e) => causes.push(Cause::invalid(field, &text, &e.to_string())),
            }
        }
        out
    };
    let limits = parsed("limits");
    let requests = parsed("requests");
    for (name, request_text, request) in &requests {
        let limit = limits.iter().find(|(n, _, _)| n == name);
        if let (Some(request), Some((_, limit_text, Some(limit)))) = (request, limit) {
            if request > limit {
                causes.push(Cause::invalid(
                    format!("{path}resources.requests[{name}]"),
                    request_text,
                    &format!("must be less than or equal to {name} limit of {limit_text}"),
                ));
            }
        }
    }
}

/// `maxSurge` / `maxUnavailable` style fields: a non-negative integer or a percentage.
fn int_or_percent(
    object: &Value,
    pointer: &str,
    field: &str,
    causes: &mut Vec<Cause>,
) -> Option<i64> {
    let value = object.pointer(&format!("{pointer}/{field}"))?;
    let path = format!("{}{field}", dotted(pointer));
    match value {
        Value::Null => None,
        Value::Number(n) => match n.as_i64().filter(|v| i32::try_from(*v).is_ok()) {
            Some(v) if v < 0 => {
                causes.push(Cause::invalid(
                    path,
                    &v.to_string(),
                    "must be greater than or equal to 0",
                ));
                None
            }
            Some(v) => Some(v),
            None => {
                causes.push(Cause::invalid(
                    path,
                    &n.to_string(),
                    "must be an int32 or a percentage",
                ));
                None
            }
        },
        Value::String(text) => match super::intstr::percentage(text) {
            Some(p) => Some(p),
            None => {
                causes.push(Cause::invalid(path, text, "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')"));
                None
            }
        },
        other => {
            causes.push(Cause::invalid(
                path,
                &other.to_string(),
                "must be an integer or a percentage",
            ));
            None
        }
    }
}

/// `pointer/field`, if set, must be an integer >= 0 (Kubernetes' `ValidateNonnegativeField`).
fn non_negative(object: &Value, pointer: &str, field: &str, causes: &mut Vec<Cause>) {
    int_in_range(object, pointer, field, 0, i64::MAX, causes);
}

/// `pointer/field`, if set, must be an integer in `low..=high`. The message is Kubernetes'.
fn int_in_range(
    object: &Value,
    pointer: &str,
    field: &str,
    low: i64,
    high: i64,
    causes: &mut Vec<Cause>,
) {
    let Some(value) = object.pointer(&format!("{pointer}/{field}")) else {
        return;
    };
    if value.is_null() {
        return;
    }
    let path = format!("{}{field}", dotted(pointer));
    match value.as_i64() {
        Some(v) if v >= low && v <= high => {}
        Some(v) if low == 0 && (v < 0 || high == i64::MAX) => causes.push(Cause::invalid(
            path,
            &v.to_string(),
            "must be greater than or equal to 0",
        )),
        Some(v) if high == i64::MAX => causes.push(Cause::invalid(
            path,
            &v.to_string(),
            &format!("must be greater than or equal to {low}"),
        )),
        Some(v) => causes.push(Cause::invalid(
            path,
            &v.to_string(),
            &format!("must be between {low} and {high}, inclusive"),
        )),
        None => causes.push(Cause::invalid(
            path,
            &value.to_string(),
            "must be an integer",
        )),
    }
}

/// `/spec/containers/0/livenessProbe` -> `spec.containers[0].livenessProbe.`
fn dotted(pointer: &str) -> String {
    let mut path = String::new();
    for segment in pointer.split('/').filter(|s| !s.is_empty()) {
        if segment.bytes().all(|b| b.is_ascii_digit()) {
            path.pop();
            path.push_str(&format!("[{segment}]."));
        } else {
            path.push_str(segment);
            path.push('.');
        }
    }
    path
}

/// A Job's pods must end: its template's restartPolicy is Never or OnFailure.
pub fn job(object: &Value, causes: &mut Vec<Cause>) {
    let policy = object
        .pointer("/spec/template/spec/restartPolicy")
        .and_then(Value::as_str)
        .unwrap_or("Always");
    if !matches!(policy, "Never" | "OnFailure") {
        causes.push(Cause::not_supported(
            "spec.template.spec.restartPolicy",
            policy,
            &["OnFailure", "Never"],
        ));
    }
    let int32 = i64::from(i32::MAX);
    for field in [
        "completions",
        "parallelism",
        "backoffLimit",
        "ttlSecondsAfterFinished",
    ] {
        int_in_range(object, "/spec", field, 0, int32, causes);
    }
    non_negative(object, "/spec", "activeDeadlineSeconds", causes);
    // The pod template: validated as a pod, reported under spec.template.
    if let Some(spec) = object.pointer("/spec/template/spec") {
        let as_pod = serde_json::json!({"metadata": {"name": "template"}, "spec": spec});
        let mut pod_causes = Vec::new();
        pod(&as_pod, &mut pod_causes);
        for mut cause in pod_causes {
            // Containers are checked below, once.
            if cause.field == "spec.containers" {
                continue;
            }
            cause.field = format!("spec.template.{}", cause.field);
            causes.push(cause);
        }
    }
    if object
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .is_none_or(|c| c.is_empty())
    {
        causes.push(Cause::required("spec.template.spec.containers"));
    }
}

/// A ReplicaSet needs a selector that its pod template's labels match, and a valid template.
pub fn replica_set(object: &Value, causes: &mut Vec<Cause>) {
    let int32 = i64::from(i32::MAX);
    for field in ["replicas", "minReadySeconds", "revisionHistoryLimit"] {
        int_in_range(object, "/spec", field, 0, int32, causes);
    }
    int_in_range(object, "/spec", "progressDeadlineSeconds", 1, int32, causes);
    let min_ready = object
        .pointer("/spec/minReadySeconds")
        .and_then(Value::as_i64);
    if let (Some(deadline), Some(min_ready)) = (
        object
            .pointer("/spec/progressDeadlineSeconds")
            .and_then(Value::as_i64),
        min_ready,
    ) {
        if deadline <= min_ready {
            causes.push(Cause::invalid(
                "spec.progressDeadlineSeconds",
                &deadline.to_string(),
                "must be greater than minReadySeconds",
            ));
        }
    }
    // Deployments' strategy, DaemonSets' and StatefulSets' updateStrategy.
    for strategy in [
        "/spec/strategy/rollingUpdate",
        "/spec/updateStrategy/rollingUpdate",
    ] {
        let surge = int_or_percent(object, strategy, "maxSurge", causes);
        let unavailable = int_or_percent(object, strategy, "maxUnavailable", causes);
        let is_percent = object
            .pointer(&format!("{strategy}/maxUnavailable"))
            .is_some_and(Value::is_string);
        if is_percent && unavailable.is_some_and(|p| p > 100) {
            causes.push(Cause::invalid(
                format!("{}maxUnavailable", dotted(strategy)),
                &format!("{}%", unavailable.unwrap_or_default()),
                "must not be greater than 100%",
            ));
        }
        if surge == Some(0) && unavailable == Some(0) {
            causes.push(Cause::invalid(
                format!("{}maxUnavailable", dotted(strategy)),
                "0",
                "may not be 0 when `maxSurge` is 0",
            ));
        }
        int_in_range(object, strategy, "partition", 0, int32, causes);
    }
    let selector = object
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object);
    let expressions = object
        .pointer("/spec/selector/matchExpressions")
        .and_then(Value::as_array);
    if selector.is_none_or(|s| s.is_empty()) && expressions.is_none_or(|e| e.is_empty()) {
        causes.push(Cause::required("spec.selector"));
        return;
    }
    let labels = object
        .pointer("/spec/template/metadata/labels")
        .and_then(Value::as_object);
    let matches = selector
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v));
    if !matches {
        causes.push(Cause::invalid(
            "spec.template.metadata.labels",
            &labels
                .map(|l| Value::Object(l.clone()).to_string())
                .unwrap_or_default(),
            "`selector` does not match template `labels`",
        ));
    }
    // The template is a pod: validate it as one, reporting fields under spec.template.
    let template = object
        .pointer("/spec/template")
        .cloned()
        .unwrap_or(Value::Null);
    let mut pod_causes = Vec::new();
    let mut as_pod = serde_json::json!({"metadata": {"name": "template"}, "spec": template.get("spec").cloned().unwrap_or(Value::Null)});
    if as_pod["spec"].is_null() {
        as_pod.as_object_mut().map(|m| m.remove("spec"));
    }
    // A StatefulSet's claim templates are volumes of its pods.
    let claim_volumes = object
        .pointer("/spec/volumeClaimTemplates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t.pointer("/metadata/name").and_then(Value::as_str))
        .map(
            |name| serde_json::json!({"name": name, "persistentVolumeClaim": {"claimName": name}}),
        );
    if let Some(spec) = as_pod.get_mut("spec").and_then(Value::as_object_mut) {
        let volumes = spec
            .entry("volumes")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Some(volumes) = volumes.as_array_mut() {
            volumes.extend(claim_volumes);
        }
    }
    pod(&as_pod, &mut pod_causes);
    for mut cause in pod_causes {
        cause.field = format!("spec.template.{}", cause.field);
        causes.push(cause);
    }
}

/// A pod's spec is immutable apart from images, so a bound pod stays on its node.
pub fn pod_update(old: &Value, new: &Value, causes: &mut Vec<Cause>) {
    let strip_images = |spec: Option<&Value>| {
        let mut spec = spec.cloned().unwrap_or(Value::Null);
        if let Some(spec) = spec.as_object_mut() {
            // Changed only through their subresource, and checked below.
            spec.remove("ephemeralContainers");
            // Defaulted since pods are stored with it: an older pod without it is the same.
            spec.entry("securityContext")
                .or_insert_with(|| serde_json::json!({}));
        }
        for list in ["containers", "initContainers"] {
            if let Some(items) = spec.get_mut(list).and_then(Value::as_array_mut) {
                for c in items.iter_mut().filter_map(Value::as_object_mut) {
                    c.remove("image");
                }
            }
        }
        spec
    };
    if strip_images(old.get("spec")) != strip_images(new.get("spec")) {
        causes.push(Cause::forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image` and `spec.initContainers[*].image`",
        ));
    }
    ephemeral_containers_update(old, new, causes);
}

/// Ephemeral containers (`kubectl debug`) are only ever added: the existing ones stay as
/// they are; a new one has a unique name and an image, and none of what a container that is
/// never restarted or served cannot have (ports, probes, lifecycle, resources).
fn ephemeral_containers_update(old: &Value, new: &Value, causes: &mut Vec<Cause>) {
    let list = |pod: &Value| -> Vec<Value> {
        pod.pointer("/spec/ephemeralContainers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let (before, after) = (list(old), list(new));
    let name_of = |c: &Value| {
        c.get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    for existing in &before {
        let name = name_of(existing);
        match after.iter().find(|c| name_of(c) == name) {
            None => causes.push(Cause::forbidden(
                "spec.ephemeralContainers",
                &format!("existing ephemeral containers \"{name}\" may not be removed"),
            )),
            Some(now) if now != existing => causes.push(Cause::forbidden(
                "spec.ephemeralContainers",
                &format!("existing ephemeral containers \"{name}\" may not be changed"),
            )),
            Some(_) => {}
        }
    }
    let mut taken: Vec<String> = ["containers", "initContainers"]
        .iter()
        .flat_map(|l| {
            new.pointer(&format!("/spec/{l}"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .map(|c| name_of(&c))
        .collect();
    for (index, container) in after.iter().enumerate() {
        let path = format!("spec.ephemeralContainers[{index}]");
        let name = name_of(container);
        if before.iter().any(|c| name_of(c) == name) {
            taken.push(name);
            continue;
        }
        if dns1123_label(&name).is_err() {
            causes.push(Cause::invalid(format!("{path}.name"), &name, LABEL_RULE));
        } else if taken.contains(&name) {
            causes.push(Cause::duplicate(format!("{path}.name"), &name));
        }
        if container
            .get("image")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            causes.push(Cause::required(format!("{path}.image")));
        }
        for field in [
            "ports",
            "livenessProbe",
            "readinessProbe",
            "startupProbe",
            "lifecycle",
            "resources",
        ] {
            // kubectl sends `resources: {}`: only what sets something is refused.
            let set = container.get(field).is_some_and(|v| match v {
                Value::Null => false,
                Value::Object(map) => !map.is_empty(),
                Value::Array(items) => !items.is_empty(),
                _ => true,
            });
            if set {
                causes.push(Cause::forbidden(
                    format!("{path}.{field}"),
                    "cannot be set for an Ephemeral Container",
                ));
            }
        }
        taken.push(name);
    }
}

fn validate_labels(object: &Value, causes: &mut Vec<Cause>) {
    let Some(labels) = object.pointer("/metadata/labels") else {
        return;
    };
    let Some(labels) = labels.as_object() else {
        causes.push(Cause::invalid(
            "metadata.labels",
            &labels.to_string(),
            "must be a map of strings",
        ));
        return;
    };
    for (key, value) in labels {
        let field = format!("metadata.labels[{key}]");
        match value.as_str() {
            Some(v) if v.len() > 63 => causes.push(Cause::invalid(field, v, "must be no more than 63 characters")),
            Some(v) if !v.is_empty() && !is_label_value(v) => causes.push(Cause::invalid(
                field,
                v,
                "a valid label must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            )),
            Some(_) => {}
            None => causes.push(Cause::invalid(field, &value.to_string(), "must be a string")),
        }
    }
}

fn is_label_value(v: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    v.starts_with(alnum)
        && v.ends_with(alnum)
        && v.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
}

pub fn pod(object: &Value, causes: &mut Vec<Cause>) {
    // Numbers first, on the JSON: a value too large for its type would otherwise only fail
    // the decode below, with a message that does not name the field.
    int_in_range(
        object,
        "/spec",
        "activeDeadlineSeconds",
        1,
        i64::from(i32::MAX),
        causes,
    );
    non_negative(object, "/spec", "terminationGracePeriodSeconds", causes);
    for list in ["initContainers", "containers"] {
        let containers = object
            .pointer(&format!("/spec/{list}"))
            .and_then(Value::as_array);
        for (i, container) in containers.into_iter().flatten().enumerate() {
            let path = format!("/spec/{list}/{i}");
            for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                let probe_path = format!("{path}/{probe}");
                for field in [
                    "initialDelaySeconds",
                    "timeoutSeconds",
                    "periodSeconds",
                    "successThreshold",
                    "failureThreshold",
                ] {
                    int_in_range(object, &probe_path, field, 0, i64::from(i32::MAX), causes);
                }
                non_negative(object, &probe_path, "terminationGracePeriodSeconds", causes);
            }
            resources(container, &dotted(&path), causes);
        }
    }
    if causes.iter().any(|c| c.field.starts_with("spec.")) {
        return;
    }
    let pod: Pod = match serde_json::from_value(object.clone()) {
        Ok(pod) => pod,
        Err(e) => {
            causes.push(Cause::invalid(
                "spec",
                "",
                &format!("cannot be decoded as a Pod: {e}"),
            ));
            return;
        }
    };
    let Some(spec) = pod.spec.as_ref() else {
        causes.push(Cause::required("spec"));
        return;
    };
    if spec.containers.is_empty() {
        causes.push(Cause::required("spec.containers"));
    }
    let mut names = HashSet::new();
    let groups = [
        (
            "spec.initContainers",
            spec.init_containers.as_deref().unwrap_or_default(),
        ),
        ("spec.containers", &spec.containers[..]),
    ];
    let volumes: HashSet<&str> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    for (list, containers) in groups {
        for (i, container) in containers.iter().enumerate() {
            let path = format!("{list}[{i}]");
            if !names.insert(container.name.as_str()) {
                causes.push(Cause::duplicate(format!("{path}.name"), &container.name));
            }
            container_rules(&path, container, &volumes, causes);
            restart_rules(&path, list == "spec.initContainers", container, causes);
        }
    }
    if let Some(policy) = spec.restart_policy.as_deref() {
        let supported = ["Always", "OnFailure", "Never"];
        if !supported.contains(&policy) {
            causes.push(Cause::not_supported(
                "spec.restartPolicy",
                policy,
                &supported,
            ));
        }
    }
    let mut volume_names = HashSet::new();
    for (i, volume) in spec.volumes.iter().flatten().enumerate() {
        if !volume_names.insert(volume.name.as_str()) {
            causes.push(Cause::duplicate(
                format!("spec.volumes[{i}].name"),
                &volume.name,
            ));
        }
        if let Err(why) = dns1123_label(&volume.name) {
            causes.push(Cause::invalid(
                format!("spec.volumes[{i}].name"),
                &volume.name,
                &why.to_string(),
            ));
        }
    }
}

/// A container's own `restartPolicy`, as Kubernetes 1.33: only an init container may set
/// it, and only to `Always` (a native sidecar); an init container that must finish has no
/// probes.
fn restart_rules(path: &str, init: bool, container: &Container, causes: &mut Vec<Cause>) {
    let policy = container.restart_policy.as_deref();
    if !init {
        if policy.is_some() {
            causes.push(Cause::forbidden(
                format!("{path}.restartPolicy"),
                "may not be set for non-init containers",
            ));
        }
        return;
    }
    match policy {
        Some("Always") => {}
        Some(other) => causes.push(Cause::not_supported(
            format!("{path}.restartPolicy"),
            other,
            &["Always"],
        )),
        None => {
            let probes = [
                ("livenessProbe", container.liveness_probe.is_some()),
                ("readinessProbe", container.readiness_probe.is_some()),
                ("startupProbe", container.startup_probe.is_some()),
            ];
            for (field, _) in probes.iter().filter(|(_, set)| *set) {
                causes.push(Cause::forbidden(
                    format!("{path}.{field}"),
                    "may not be set for init containers without restartPolicy=Always",
                ));
            }
        }
    }
}

fn container_rules(
    path: &str,
    container: &Container,
    volumes: &HashSet<&str>,
    causes: &mut Vec<Cause>,
) {
    if container.name.is_empty() {
        causes.push(Cause::required(format!("{path}.name")));
    } else if let Err(why) = dns1123_label(&container.name) {
        causes.push(Cause::invalid(
            format!("{path}.name"),
            &container.name,
            &why.to_string(),
        ));
    }
    if container.image.as_deref().unwrap_or("").trim().is_empty() {
        causes.push(Cause::required(format!("{path}.image")));
    }
    for (j, port) in container.ports.iter().flatten().enumerate() {
        if !(1..=65535).contains(&port.container_port) {
            causes.push(Cause::invalid(
                format!("{path}.ports[{j}].containerPort"),
                &port.container_port.to_string(),
                "must be between 1 and 65535, inclusive",
            ));
        }
    }
    for (j, mount) in container.volume_mounts.iter().flatten().enumerate() {
        if !volumes.contains(mount.name.as_str()) {
            causes.push(Cause {
                reason: "FieldValueNotFound",
                message: format!("Not found: {:?}", mount.name),
                field: format!("{path}.volumeMounts[{j}].name"),
            });
        }
        if !mount.mount_path.starts_with('/') {
            causes.push(Cause::invalid(
                format!("{path}.volumeMounts[{j}].mountPath"),
                &mount.mount_path,
                "must be an absolute path",
            ));
        }
    }
    let probes = [
        ("livenessProbe", &container.liveness_probe),
        ("readinessProbe", &container.readiness_probe),
        ("startupProbe", &container.startup_probe),
    ];
    for (probe_name, probe) in probes {
        let Some(probe) = probe else { continue };
        let field = format!("{path}.{probe_name}");
        if probe.exec.is_some() {
            causes.push(Cause::forbidden(
                format!("{field}.exec"),
                "a Wasm module has no processes to exec into; use an httpGet probe",
            ));
        }
        if probe.tcp_socket.is_some() {
            causes.push(Cause::forbidden(
                format!("{field}.tcpSocket"),
                "pods have an HTTP loopback, not raw TCP; use an httpGet probe",
            ));
        }
        if probe.grpc.is_some() {
            causes.push(Cause::forbidden(
                format!("{field}.grpc"),
                "gRPC probes are not supported; use an httpGet probe",
            ));
        }
    }
}

const LABEL_RULE: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const SUBDOMAIN_RULE: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

/// Why a name is not a DNS-1123 label or subdomain (Kubernetes' messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must be no more than {0} characters")]
    TooLong(usize),
    #[error("{}", LABEL_RULE)]
    NotALabel,
    #[error("{}", SUBDOMAIN_RULE)]
    NotASubdomain,
    #[error("may not be '.' or '..' and may not contain '/' or '%'")]
    NotAPathSegment,
}

pub fn dns1123_label(name: &str) -> Result<(), NameError> {
    if name.len() > 63 {
        return Err(NameError::TooLong(63));
    }
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let valid = name.starts_with(ok_char)
        && name.ends_with(ok_char)
        && name.chars().all(|c| ok_char(c) || c == '-');
    if valid {
        Ok(())
    } else {
        Err(NameError::NotALabel)
    }
}

pub fn dns1123_subdomain(name: &str) -> Result<(), NameError> {
    if name.len() > 253 {
        return Err(NameError::TooLong(253));
    }
    if name.split('.').all(|part| dns1123_label(part).is_ok()) {
        Ok(())
    } else {
        Err(NameError::NotASubdomain)
    }
}

/// The verbs an RBAC rule may name: the API's, RBAC's own, and `*`.
pub const RBAC_VERBS: &[&str] = &[
    "*",
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
    "bind",
    "escalate",
    "impersonate",
    "approve",
    "sign",
    "use",
    "proxy",
    "post",
    "put",
    "head",
];

/// Names of RBAC objects may hold `:` (`system:node`): any path segment, as Kubernetes'
/// `ValidateRBACName`.
pub fn rbac_name(name: &str) -> Result<(), NameError> {
    if name.len() > 253 {
        return Err(NameError::TooLong(253));
    }
    if name == "." || name == ".." || name.contains(['/', '%']) {
        return Err(NameError::NotAPathSegment);
    }
    Ok(())
}

fn policy_rules(object: &Value, namespaced: bool, causes: &mut Vec<Cause>) {
    let Some(rules) = object.get("rules") else {
        return;
    };
    let Some(rules) = rules.as_array() else {
        if !rules.is_null() {
            causes.push(Cause::invalid(
                "rules",
                &rules.to_string(),
                "must be a list of rules",
            ));
        }
        return;
    };
    for (i, rule) in rules.iter().enumerate() {
        let field = |name: &str| format!("rules[{i}].{name}");
        let list = |name: &str| -> Vec<String> {
            rule[name]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| v.as_str().unwrap_or("").to_string())
                .collect()
        };
        let verbs = list("verbs");
        if verbs.is_empty() {
            causes.push(Cause::required(field("verbs")));
        }
        for (j, verb) in verbs.iter().enumerate() {
            if !RBAC_VERBS.contains(&verb.as_str()) {
                causes.push(Cause::not_supported(
                    format!("rules[{i}].verbs[{j}]"),
                    verb,
                    RBAC_VERBS,
                ));
            }
        }
        let urls = list("nonResourceURLs");
        if !urls.is_empty() {
            if namespaced {
                causes.push(Cause::invalid(
                    field("nonResourceURLs"),
                    &urls.join(","),
                    "namespaced rules cannot apply to non-resource URLs",
                ));
            }
            if !list("apiGroups").is_empty() || !list("resources").is_empty() {
                causes.push(Cause::invalid(
                    field("nonResourceURLs"),
                    &urls.join(","),
                    "rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            for url in &urls {
                if !url.starts_with('/') && url != "*" {
                    causes.push(Cause::invalid(
                        field("nonResourceURLs"),
                        url,
                        "must start with / or be *",
                    ));
                }
            }
            continue;
        }
        if list("apiGroups").is_empty() {
            causes.push(Cause::invalid(
                field("apiGroups"),
                "",
                "resource rules must supply at least one api group (\"\" is the core group)",
            ));
        }
        if list("resources").is_empty() {
            causes.push(Cause::required(field("resources")));
        }
    }
}

pub fn role(object: &Value, causes: &mut Vec<Cause>) {
    policy_rules(object, true, causes);
}

pub fn cluster_role(object: &Value, causes: &mut Vec<Cause>) {
    policy_rules(object, false, causes);
}

fn binding(object: &Value, namespaced: bool, causes: &mut Vec<Cause>) {
    let kind = object
        .pointer("/roleRef/kind")
        .and_then(Value::as_str)
        .unwrap_or("");
    let allowed: &[&str] = if namespaced {
        &["Role", "ClusterRole"]
    } else {
        &["ClusterRole"]
    };
    if !allowed.contains(&kind) {
        causes.push(Cause::not_supported("roleRef.kind", kind, allowed));
    }
    if object
        .pointer("/roleRef/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .is_empty()
    {
        causes.push(Cause::required("roleRef.name"));
    }
    let group = object
        .pointer("/roleRef/apiGroup")
        .and_then(Value::as_str)
        .unwrap_or("");
    if group != "rbac.authorization.k8s.io" {
        causes.push(Cause::not_supported(
            "roleRef.apiGroup",
            group,
            &["rbac.authorization.k8s.io"],
        ));
    }
    for (i, subject) in object["subjects"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let field = |name: &str| format!("subjects[{i}].{name}");
        if subject["name"].as_str().unwrap_or("").is_empty() {
            causes.push(Cause::required(field("name")));
        }
        match subject["kind"].as_str().unwrap_or("") {
            "User" | "Group" => {}
            "ServiceAccount" => {
                if !namespaced && subject["namespace"].as_str().unwrap_or("").is_empty() {
                    causes.push(Cause::required(field("namespace")));
                }
            }
            other => causes.push(Cause::not_supported(
                field("kind"),
                other,
                &["ServiceAccount", "User", "Group"],
            )),
        }
    }
}

pub fn role_binding(object: &Value, causes: &mut Vec<Cause>) {
    binding(object, true, causes);
}

pub fn cluster_role_binding(object: &Value, causes: &mut Vec<Cause>) {
    binding(object, false, causes);
}

/// A binding's role cannot change (Kubernetes: delete and re-create it).
pub fn role_binding_update(old: &Value, new: &Value, causes: &mut Vec<Cause>) {
    if old.get("roleRef") != new.get("roleRef") {
        causes.push(Cause::invalid(
            "roleRef",
            &new["roleRef"].to_string(),
            "cannot change roleRef",
        ));
    }
}

/// Whether `text` is an IPv4 or IPv6 CIDR (`10.0.0.0/8`, `::/0`).
fn is_cidr(text: &str) -> bool {
    let Some((address, prefix)) = text.split_once('/') else {
        return false;
    };
    let Ok(address) = address.parse::<std::net::IpAddr>() else {
        return false;
    };
    let max = if address.is_ipv4() { 32 } else { 128 };
    prefix.parse::<u8>().is_ok_and(|p| p <= max)
}

/// A NetworkPolicy: a pod selector, policy types among Ingress and Egress, peers that name
/// pods, namespaces or a valid IP block (not more than one kind of peer with an IP block),
/// and ports that are numbers 1-65535 (or names) with a protocol Kubernetes knows.
pub fn network_policy(object: &Value, causes: &mut Vec<Cause>) {
    if object.pointer("/spec/podSelector").is_none() {
        causes.push(Cause::required("spec.podSelector"));
    }
    for (i, kind) in object
        .pointer("/spec/policyTypes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let text = kind.as_str().unwrap_or("");
        if !matches!(text, "Ingress" | "Egress") {
            causes.push(Cause::not_supported(
                format!("spec.policyTypes[{i}]"),
                text,
                &["Ingress", "Egress"],
            ));
        }
    }
    for (direction, peers_key) in [("ingress", "from"), ("egress", "to")] {
        let rules = object
            .pointer(&format!("/spec/{direction}"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (r, rule) in rules.iter().enumerate() {
            let at = format!("spec.{direction}[{r}]");
            for (p, peer) in rule[peers_key].as_array().into_iter().flatten().enumerate() {
                let field = format!("{at}.{peers_key}[{p}]");
                let has = |key: &str| peer.get(key).is_some_and(|v| !v.is_null());
                if let Some(block) = peer.get("ipBlock").filter(|b| !b.is_null()) {
                    if has("podSelector") || has("namespaceSelector") {
                        causes.push(Cause::forbidden(
                            field.clone(),
                            "may not specify more than 1 peer type when ipBlock is given",
                        ));
                    }
                    let cidr = block["cidr"].as_str().unwrap_or("");
                    if !is_cidr(cidr) {
                        causes.push(Cause::invalid(
                            format!("{field}.ipBlock.cidr"),
                            cidr,
                            "must be a valid CIDR",
                        ));
                    }
                    for (e, except) in block["except"].as_array().into_iter().flatten().enumerate()
                    {
                        let text = except.as_str().unwrap_or("");
                        if !is_cidr(text) {
                            causes.push(Cause::invalid(
                                format!("{field}.ipBlock.except[{e}]"),
                                text,
                                "must be a valid CIDR",
                            ));
                        }
                    }
                } else if !has("podSelector") && !has("namespaceSelector") {
                    causes.push(Cause::required(format!(
                        "{field}: must specify a peer (podSelector, namespaceSelector or ipBlock)"
                    )));
                }
            }
            for (p, port) in rule["ports"].as_array().into_iter().flatten().enumerate() {
                let field = format!("{at}.ports[{p}]");
                let protocol = port["protocol"].as_str().unwrap_or("TCP");
                if !matches!(protocol, "TCP" | "UDP" | "SCTP") {
                    causes.push(Cause::not_supported(
                        format!("{field}.protocol"),
                        protocol,
                        &["TCP", "UDP", "SCTP"],
                    ));
                }
                let number = port["port"].as_i64();
                if let Some(n) = number {
                    if !(1..=65535).contains(&n) {
                        causes.push(Cause::invalid(
                            format!("{field}.port"),
                            &n.to_string(),
                            "must be between 1 and 65535, inclusive",
                        ));
                    }
                }
                if let Some(end) = port["endPort"].as_i64() {
                    if number.is_none_or(|n| end < n) || end > 65535 {
                        causes.push(Cause::invalid(
                            format!("{field}.endPort"),
                            &end.to_string(),
                            "must be a number at least port and at most 65535, with a numeric port",
                        ));
                    }
                }
            }
        }
    }
}

/// The key usages a CertificateSigningRequest may ask for (Kubernetes' `KeyUsage` values).
pub const KEY_USAGES: &[&str] = &[
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
];

/// The shortest certificate a CertificateSigningRequest may ask for (`expirationSeconds`).
pub const MIN_CSR_EXPIRATION_SECONDS: i64 = 600;

/// A CertificateSigningRequest: a PEM `CERTIFICATE REQUEST` (base64 in JSON), a signer, known
/// usages, a lifetime of at least ten minutes, and conditions that do not contradict. The
/// request's signature and subject are checked by the API server, which can parse it.
pub fn certificate_signing_request(object: &Value, causes: &mut Vec<Cause>) {
    use base64::Engine;
    match object.pointer("/spec/request").and_then(Value::as_str) {
        None | Some("") => causes.push(Cause::required("spec.request")),
        Some(encoded) => {
            let pem = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok());
            if !pem.is_some_and(|pem| pem.contains("-----BEGIN CERTIFICATE REQUEST-----")) {
                causes.push(Cause::invalid(
                    "spec.request",
                    "<request>",
                    "must be a base64-encoded PEM block of type CERTIFICATE REQUEST",
                ));
            }
        }
    }
    let signer = object
        .pointer("/spec/signerName")
        .and_then(Value::as_str)
        .unwrap_or("");
    if signer.is_empty() {
        causes.push(Cause::required("spec.signerName"));
    } else if !signer.contains('/') || signer.starts_with('/') || signer.ends_with('/') {
        causes.push(Cause::invalid(
            "spec.signerName",
            signer,
            "must be a fully qualified domain and path of the form 'example.com/signer-name'",
        ));
    }
    let usages = object.pointer("/spec/usages").and_then(Value::as_array);
    match usages {
        None => causes.push(Cause::required("spec.usages")),
        Some(usages) if usages.is_empty() => causes.push(Cause::required("spec.usages")),
        Some(usages) => {
            let mut seen = Vec::new();
            for (i, usage) in usages.iter().enumerate() {
                let text = usage.as_str().unwrap_or("");
                if !KEY_USAGES.contains(&text) {
                    causes.push(Cause::not_supported(
                        format!("spec.usages[{i}]"),
                        text,
                        KEY_USAGES,
                    ));
                } else if seen.contains(&text) {
                    causes.push(Cause::duplicate(format!("spec.usages[{i}]"), text));
                }
                seen.push(text);
            }
        }
    }
    if let Some(seconds) = object.pointer("/spec/expirationSeconds") {
        match seconds.as_i64() {
            Some(s) if (MIN_CSR_EXPIRATION_SECONDS..=i64::from(i32::MAX)).contains(&s) => {}
            _ => causes.push(Cause::invalid(
                "spec.expirationSeconds",
                &seconds.to_string(),
                "may not specify a duration less than 600 seconds (10 minutes)",
            )),
        }
    }
    let conditions = object
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut types = Vec::new();
    for (i, condition) in conditions.iter().enumerate() {
        let kind = condition["type"].as_str().unwrap_or("");
        let field = format!("status.conditions[{i}].type");
        if !matches!(kind, "Approved" | "Denied" | "Failed") {
            causes.push(Cause::not_supported(
                field,
                kind,
                &["Approved", "Denied", "Failed"],
            ));
        } else if types.contains(&kind) {
            causes.push(Cause::duplicate(field, kind));
        }
        types.push(kind);
    }
    if types.contains(&"Approved") && types.contains(&"Denied") {
        causes.push(Cause::invalid(
            "status.conditions",
            "Approved,Denied",
            "Approved and Denied conditions are mutually exclusive",
        ));
    }
}

/// A CertificateSigningRequest's spec never changes; an approval or denial is never taken
/// back, and an issued certificate never replaced.
pub fn certificate_signing_request_update(old: &Value, new: &Value, causes: &mut Vec<Cause>) {
    if old.get("spec") != new.get("spec") {
        causes.push(Cause::forbidden("spec", "field is immutable"));
    }
    let has = |object: &Value, kind: &str| {
        object
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| cs.iter().any(|c| c["type"] == kind))
    };
    for kind in ["Approved", "Denied"] {
        if has(old, kind) && !has(new, kind) {
            causes.push(Cause::forbidden(
                "status.conditions",
                &format!("updates may not remove a condition of type {kind:?}"),
            ));
        }
    }
    let certificate = |object: &Value| {
        object
            .pointer("/status/certificate")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    if !certificate(old).is_empty() && certificate(old) != certificate(new) {
        causes.push(Cause::forbidden(
            "status.certificate",
            "updates may not modify existing certificate content",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Validation as the API server runs it, through the kinds table.
    fn validate(kind: &str, object: &Value) -> Vec<Cause> {
        crate::api::resources::lookup_name(kind)
            .expect("a served kind")
            .validate(object)
    }

    fn validate_update(kind: &str, old: &Value, new: &Value) -> Vec<Cause> {
        crate::api::resources::lookup_name(kind)
            .expect("a served kind")
            .validate_update(old, new)
    }

    fn fields(kind: &str, object: Value) -> Vec<String> {
        validate(kind, &object)
            .into_iter()
            .map(|c| format!("{}: {}", c.field, c.reason))
            .collect()
    }

    #[test]
    fn names() {
        assert!(dns1123_label("web-1").is_ok());
        assert!(dns1123_label("Web").is_err());
        assert!(dns1123_label("-web").is_err());
        assert!(dns1123_subdomain("a.b-c").is_ok());
        assert!(dns1123_subdomain("a..b").is_err());
        assert_eq!(
            fields("Namespace", json!({"metadata": {"name": "a.b"}})),
            ["metadata.name: FieldValueInvalid"]
        );
    }

    #[test]
    fn pod_rules() {
        assert_eq!(
            fields(
                "Pod",
                json!({"metadata": {"name": "p"}, "spec": {"containers": []}})
            ),
            ["spec.containers: FieldValueRequired"]
        );
        let bad = json!({"metadata": {"name": "Bad_Name"}, "spec": {
        "restartPolicy": "Sometimes",
        "containers": [
            {"name": "a", "image": "x.wasm", "ports": [{"containerPort": 70000}]},
            {"name": "a", "image": "", "livenessProbe": {"exec": {"command": ["true"]}}, "volumeMounts": [{"name": "nope", "mountPath": "/d"}]}
        ]}});
        assert_eq!(
            fields("Pod", bad),
            [
                "metadata.name: FieldValueInvalid",
                "spec.containers[0].ports[0].containerPort: FieldValueInvalid",
                "spec.containers[1].name: FieldValueDuplicate",
                "spec.containers[1].image: FieldValueRequired",
                "spec.containers[1].volumeMounts[0].name: FieldValueNotFound",
                "spec.containers[1].livenessProbe.exec: FieldValueForbidden",
                "spec.restartPolicy: FieldValueNotSupported",
            ]
        );
        let good = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "h.wasm"}]}});
        assert!(fields("Pod", good).is_empty());
    }

    #[test]
    fn only_init_containers_restart_on_their_own_and_only_sidecars_have_probes() {
        let probe = json!({"httpGet": {"path": "/", "port": 8080}});
        let pod = json!({"metadata": {"name": "p"}, "spec": {
            "initContainers": [
                {"name": "sidecar", "image": "w.wasm", "restartPolicy": "Always", "readinessProbe": probe, "startupProbe": probe},
                {"name": "once", "image": "h.wasm", "livenessProbe": probe},
                {"name": "odd", "image": "h.wasm", "restartPolicy": "OnFailure"}
            ],
            "containers": [{"name": "app", "image": "h.wasm", "restartPolicy": "Always"}]
        }});
        let causes = validate("Pod", &pod);
        let described: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        assert_eq!(
            described,
            [
                "spec.initContainers[1].livenessProbe: Forbidden: may not be set for init containers without restartPolicy=Always",
                "spec.initContainers[2].restartPolicy: Unsupported value: \"OnFailure\": supported values: \"Always\"",
                "spec.containers[0].restartPolicy: Forbidden: may not be set for non-init containers",
            ]
        );
    }

    #[test]
    fn pod_spec_is_immutable_but_for_images() {
        let old = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "a.wasm"}]}});
        let mut new = old.clone();
        new["spec"]["containers"][0]["image"] = json!("b.wasm");
        assert!(validate_update("Pod", &old, &new).is_empty());
        new["spec"]["restartPolicy"] = json!("Never");
        assert_eq!(validate_update("Pod", &old, &new)[0].field, "spec");
    }

    fn messages(kind: &str, object: Value) -> Vec<String> {
        validate(kind, &object)
            .into_iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    fn pod_with(spec: Value) -> Value {
        let mut spec = spec;
        if spec.get("containers").is_none() {
            spec["containers"] = json!([{"name": "c", "image": "h.wasm"}]);
        }
        json!({"metadata": {"name": "p"}, "spec": spec})
    }

    /// Values that used to overflow a controller, the scheduler or the agent: each is refused
    /// with a message naming the field, as Kubernetes does.
    #[test]
    fn numbers_out_of_range_are_named() {
        let table: &[(&str, Value, &[&str])] = &[
            ("Pod", pod_with(json!({"activeDeadlineSeconds": 9_223_372_036_854_775_807_i64})),
                &["spec.activeDeadlineSeconds: Invalid value: \"9223372036854775807\": must be between 1 and 2147483647, inclusive"]),
            ("Pod", pod_with(json!({"activeDeadlineSeconds": 0})),
                &["spec.activeDeadlineSeconds: Invalid value: \"0\": must be between 1 and 2147483647, inclusive"]),
            ("Pod", pod_with(json!({"terminationGracePeriodSeconds": -1})),
                &["spec.terminationGracePeriodSeconds: Invalid value: \"-1\": must be greater than or equal to 0"]),
            ("Pod", pod_with(json!({"containers": [{"name": "c", "image": "h.wasm",
                "resources": {"requests": {"memory": "99999999T", "cpu": "lots"}, "limits": {"memory": "1Gi", "cpu": "-1"}}}]})),
                &["spec.containers[0].resources.limits[cpu]: Invalid value: \"-1\": must be greater than or equal to 0",
                  "spec.containers[0].resources.requests[cpu]: Invalid value: \"lots\": quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': \"lots\"",
                  "spec.containers[0].resources.requests[memory]: Invalid value: \"99999999T\": must be less than or equal to memory limit of 1Gi"]),
            ("Pod", pod_with(json!({"containers": [{"name": "c", "image": "h.wasm",
                "resources": {"requests": {"memory": "99999999999999999999999999999999999999999"}}}]})),
                &["spec.containers[0].resources.requests[memory]: Invalid value: \"99999999999999999999999999999999999999999\": quantity \"99999999999999999999999999999999999999999\" is too large"]),
            ("Pod", pod_with(json!({"containers": [{"name": "c", "image": "h.wasm", "livenessProbe": {"httpGet": {"port": 80}, "periodSeconds": 99_999_999_999_i64}}]})),
                &["spec.containers[0].livenessProbe.periodSeconds: Invalid value: \"99999999999\": must be between 0 and 2147483647, inclusive"]),
            ("Deployment", json!({"metadata": {"name": "d"}, "spec": {"replicas": 2_147_483_647, "selector": {"matchLabels": {"a": "b"}},
                "strategy": {"rollingUpdate": {"maxSurge": "150%", "maxUnavailable": "150%"}},
                "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "h.wasm"}]}}}}),
                &["spec.strategy.rollingUpdate.maxUnavailable: Invalid value: \"150%\": must not be greater than 100%"]),
            ("Deployment", json!({"metadata": {"name": "d"}, "spec": {"replicas": 99_999_999_999_i64, "minReadySeconds": 10, "progressDeadlineSeconds": 5,
                "selector": {"matchLabels": {"a": "b"}},
                "strategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": "x"}},
                "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "h.wasm"}]}}}}),
                &["spec.replicas: Invalid value: \"99999999999\": must be between 0 and 2147483647, inclusive",
                  "spec.progressDeadlineSeconds: Invalid value: \"5\": must be greater than minReadySeconds",
                  "spec.strategy.rollingUpdate.maxUnavailable: Invalid value: \"x\": a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')"]),
            ("Deployment", json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"a": "b"}},
                "strategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"}},
                "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "h.wasm"}]}}}}),
                &["spec.strategy.rollingUpdate.maxUnavailable: Invalid value: \"0\": may not be 0 when `maxSurge` is 0"]),
            ("Job", json!({"metadata": {"name": "j"}, "spec": {"activeDeadlineSeconds": -5, "ttlSecondsAfterFinished": -1,
                "template": {"spec": {"restartPolicy": "Never", "activeDeadlineSeconds": 9_223_372_036_854_775_807_i64, "containers": [{"name": "c", "image": "h.wasm"}]}}}}),
                &["spec.ttlSecondsAfterFinished: Invalid value: \"-1\": must be greater than or equal to 0",
                  "spec.activeDeadlineSeconds: Invalid value: \"-5\": must be greater than or equal to 0",
                  "spec.template.spec.activeDeadlineSeconds: Invalid value: \"9223372036854775807\": must be between 1 and 2147483647, inclusive"]),
            ("CronJob", json!({"metadata": {"name": "c"}, "spec": {"schedule": "0 9 * * MON", "timeZone": "Mars/Olympus", "startingDeadlineSeconds": -1,
                "concurrencyPolicy": "Sometimes",
                "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "h.wasm"}]}}}}}}),
                &["spec.timeZone: Invalid value: \"Mars/Olympus\": unknown time zone Mars/Olympus",
                  "spec.startingDeadlineSeconds: Invalid value: \"-1\": must be greater than or equal to 0",
                  "spec.concurrencyPolicy: Unsupported value: \"Sometimes\": supported values: \"Allow\", \"Forbid\", \"Replace\""]),
        ];
        for (kind, object, expected) in table {
            assert_eq!(&messages(kind, object.clone()), expected, "{kind} {object}");
        }
        // Within range, nothing to say.
        let fine = pod_with(
            json!({"activeDeadlineSeconds": 2_147_483_647, "terminationGracePeriodSeconds": 9_223_372_036_854_775_807_i64,
            "containers": [{"name": "c", "image": "h.wasm", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "128Mi"}}}]}),
        );
        assert_eq!(messages("Pod", fine), Vec::<String>::new());
    }
}
