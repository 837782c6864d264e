//! LimitRange (core/v1), as Kubernetes' `LimitRanger` admission applies it to a new pod:
//! containers without limits or requests get the range's `default` and `defaultRequest`
//! (a request defaults to the limit), then each container (`type: Container`) and the pod as
//! a whole (`type: Pod`) must be within `min` and `max`, and a limit may be at most
//! `maxLimitRequestRatio` times its request. A violation is refused with Kubernetes' message
//! (`maximum cpu usage per Container is 500m, but limit is 1`).

use serde_json::{json, Value};

use super::object::{self, str_at};
use super::pod_requests;
use super::quantity::Quantity;
use super::validation::Cause;

const TYPES: &[&str] = &["Container", "Pod", "PersistentVolumeClaim"];

fn quantity_at(value: &Value, pointer: &str) -> Option<Quantity> {
    match value.pointer(pointer)? {
        Value::String(s) => Quantity::parse(s).ok(),
        Value::Number(n) => Quantity::parse(&n.to_string()).ok(),
        _ => None,
    }
}

fn entries(item: &Value, field: &str) -> Vec<(String, Quantity)> {
    item.get(field)
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(name, _)| {
            Some((
                name.clone(),
                quantity_at(item, &format!("/{field}/{name}"))?,
            ))
        })
        .collect()
}

/// The `spec.limits` items of the ranges.
fn items<'a>(ranges: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    ranges.iter().flat_map(move |range| {
        range
            .pointer("/spec/limits")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(move |item| str_at(item, "/type") == kind)
    })
}

/// Applies the ranges' defaults to `pod`'s containers and checks every limit; the message of
/// the first violation when it is refused. What was defaulted is recorded in the pod's
/// `kubernetes.io/limit-ranger` annotation, as Kubernetes does.
pub fn admit_pod(ranges: &[Value], pod: &mut Value) -> Result<(), String> {
    let mut defaulted = Vec::new();
    for item in items(ranges, "Container") {
        for field in ["containers", "initContainers"] {
            let Some(containers) = pod
                .pointer_mut(&format!("/spec/{field}"))
                .and_then(Value::as_array_mut)
            else {
                continue;
            };
            for container in containers {
                let name = str_at(container, "/name").to_string();
                for (kind, source) in [("limits", "default"), ("requests", "defaultRequest")] {
                    for (resource, _) in entries(item, source) {
                        let pointer = format!("/resources/{kind}/{resource}");
                        if container.pointer(&pointer).is_none() {
                            object::set_at(
                                container,
                                &pointer,
                                json!(amount_text(item, source, &resource)),
                            );
                            defaulted.push(format!(
                                "{resource} {} for container {name}",
                                &kind[..kind.len() - 1]
                            ));
                        }
                    }
                }
                // A request missing still defaults to the limit.
                let limits: Vec<(String, Value)> = container
                    .pointer("/resources/limits")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                for (resource, limit) in limits {
                    let pointer = format!("/resources/requests/{resource}");
                    if container.pointer(&pointer).is_none() {
                        object::set_at(container, &pointer, limit);
                    }
                }
            }
        }
    }
    if !defaulted.is_empty() {
        let annotations = object::metadata_mut(pod)
            .entry("annotations")
            .or_insert_with(|| json!({}));
        if let Some(annotations) = annotations.as_object_mut() {
            annotations.insert(
                "kubernetes.io/limit-ranger".into(),
                json!(format!("LimitRanger plugin set: {}", defaulted.join("; "))),
            );
        }
    }
    for item in items(ranges, "Container") {
        for field in ["containers", "initContainers"] {
            for container in pod
                .pointer(&format!("/spec/{field}"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let amount = |kind: &str, resource: &str| {
                    quantity_at(container, &format!("/resources/{kind}/{resource}"))
                };
                check("Container", item, &amount)?;
            }
        }
    }
    let containers = |field: &str| -> &[Value] {
        pod.pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice)
    };
    for item in items(ranges, "Pod") {
        // What the pod needs at its peak, init containers and sidecars included, as
        // Kubernetes' LimitRanger counts it.
        let sum = |kind: &str, resource: &str| -> Option<Quantity> {
            let path = format!("/resources/{kind}/{resource}");
            let declared = |c: &Value| quantity_at(c, &path);
            let (init, main) = (containers("initContainers"), containers("containers"));
            let any = init.iter().chain(main).any(|c| declared(c).is_some());
            let millis = |c: &Value| declared(c).map_or(0, |q| q.millis());
            let total = pod_requests::effective(
                init.iter()
                    .map(|c| (pod_requests::is_sidecar_json(c), millis(c))),
                main.iter().map(millis),
                i128::saturating_add,
            );
            any.then(|| Quantity::parse(&format!("{total}m")).unwrap_or_default())
        };
        check("Pod", item, &sum)?;
    }
    Ok(())
}

/// The text of `item.source[resource]` as written (`500m`, `128Mi`).
fn amount_text(item: &Value, source: &str, resource: &str) -> String {
    match item.pointer(&format!("/{source}/{resource}")) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

/// Checks one item of the range against `amount(kind, resource)` (a container's or the pod's).
fn check(
    scope: &str,
    item: &Value,
    amount: &dyn Fn(&str, &str) -> Option<Quantity>,
) -> Result<(), String> {
    for (resource, min) in entries(item, "min") {
        let min_text = amount_text(item, "min", &resource);
        for kind in ["requests", "limits"] {
            match amount(kind, &resource) {
                Some(q) if q < min => {
                    return Err(format!(
                        "minimum {resource} usage per {scope} is {min_text}, but {} is {q}",
                        &kind[..kind.len() - 1]
                    ))
                }
                None if kind == "requests" => {
                    return Err(format!(
                    "minimum {resource} usage per {scope} is {min_text}.  No request is specified"
                ))
                }
                _ => {}
            }
        }
    }
    for (resource, max) in entries(item, "max") {
        let max_text = amount_text(item, "max", &resource);
        match amount("limits", &resource) {
            Some(q) if q > max => {
                return Err(format!(
                    "maximum {resource} usage per {scope} is {max_text}, but limit is {q}"
                ))
            }
            None => {
                return Err(format!(
                    "maximum {resource} usage per {scope} is {max_text}.  No limit is specified"
                ))
            }
            _ => {}
        }
    }
    for (resource, ratio) in entries(item, "maxLimitRequestRatio") {
        let (Some(limit), Some(request)) =
            (amount("limits", &resource), amount("requests", &resource))
        else {
            continue;
        };
        if request.millis() == 0 {
            continue;
        }
        // limit / request > ratio, in exact integers: limit * 1000 > ratio_millis * request.
        let over =
            limit.millis().saturating_mul(1000) > ratio.millis().saturating_mul(request.millis());
        if over {
            let provided = limit.millis() as f64 / request.millis() as f64;
            return Err(format!(
                "{resource} max limit to request ratio per {scope} is {}, but provided ratio is {provided:.6}",
                amount_text(item, "maxLimitRequestRatio", &resource)
            ));
        }
    }
    Ok(())
}

/// Kubernetes' `ValidateLimitRange`: known types, quantities that parse and are not negative,
/// and `min <= defaultRequest <= default <= max` for each resource.
pub fn validate(range: &Value, causes: &mut Vec<Cause>) {
    for (i, item) in range
        .pointer("/spec/limits")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let at = format!("spec.limits[{i}]");
        let kind = str_at(item, "/type");
        if !TYPES.contains(&kind) {
            causes.push(Cause::not_supported(format!("{at}.type"), kind, TYPES));
        }
        for field in [
            "max",
            "min",
            "default",
            "defaultRequest",
            "maxLimitRequestRatio",
        ] {
            for (resource, value) in item
                .get(field)
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                let text = match value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                match Quantity::parse(&text) {
                    Ok(q) if q.is_negative() => causes.push(Cause::invalid(
                        format!("{at}.{field}[{resource}]"),
                        &text,
                        "must be greater than or equal to 0",
                    )),
                    Ok(_) => {}
                    Err(e) => causes.push(Cause::invalid(
                        format!("{at}.{field}[{resource}]"),
                        &text,
                        &e.to_string(),
                    )),
                }
            }
        }
        let get = |field: &str, resource: &str| quantity_at(item, &format!("/{field}/{resource}"));
        let mut resources: Vec<String> = ["max", "min", "default", "defaultRequest"]
            .iter()
            .flat_map(|f| entries(item, f).into_iter().map(|(r, _)| r))
            .collect();
        resources.sort();
        resources.dedup();
        for resource in resources {
            let order = [
                ("min", "defaultRequest"),
                ("defaultRequest", "default"),
                ("default", "max"),
                ("min", "max"),
            ];
            for (low, high) in order {
                if let (Some(l), Some(h)) = (get(low, &resource), get(high, &resource)) {
                    if l > h {
                        causes.push(Cause::invalid(
                            format!("{at}.{high}[{resource}]"),
                            &amount_text(item, high, &resource),
                            &format!(
                                "{high} value {} is less than {low} value {}",
                                amount_text(item, high, &resource),
                                amount_text(item, low, &resource)
                            ),
                        ));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(limits: Value) -> Value {
        json!({"metadata": {"name": "r"}, "spec": {"limits": limits}})
    }

    fn pod(resources: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "resources": resources}]}})
    }

    #[test]
    fn defaults_fill_in_missing_limits_and_requests() {
        let ranges = [range(
            json!([{"type": "Container", "default": {"cpu": "500m"}, "defaultRequest": {"cpu": "100m", "memory": "64Mi"}}]),
        )];
        let mut p = pod(json!({}));
        admit_pod(&ranges, &mut p).unwrap();
        let resources = &p["spec"]["containers"][0]["resources"];
        assert_eq!(
            resources,
            &json!({"limits": {"cpu": "500m"}, "requests": {"cpu": "100m", "memory": "64Mi"}})
        );
        assert!(p["metadata"]["annotations"]["kubernetes.io/limit-ranger"]
            .as_str()
            .unwrap()
            .contains("cpu request for container c"));
        // A request missing defaults to the container's own limit when the range has none.
        let ranges = [range(json!([{"type": "Container", "max": {"cpu": "2"}}]))];
        let mut p = pod(json!({"limits": {"cpu": "1"}}));
        admit_pod(&ranges, &mut p).unwrap();
        assert_eq!(
            p["spec"]["containers"][0]["resources"]["requests"]["cpu"],
            "1"
        );
    }

    #[test]
    fn limits_are_enforced_with_kubernetes_messages() {
        let ranges = [range(
            json!([{"type": "Container", "max": {"cpu": "500m"}, "min": {"memory": "100Mi"},
                                    "maxLimitRequestRatio": {"cpu": "2"}}]),
        )];
        let over = admit_pod(
            &ranges,
            &mut pod(json!({"limits": {"cpu": "1"}, "requests": {"memory": "200Mi"}})),
        )
        .unwrap_err();
        assert_eq!(
            over,
            "maximum cpu usage per Container is 500m, but limit is 1"
        );
        let under = admit_pod(
            &ranges,
            &mut pod(json!({"limits": {"cpu": "500m"}, "requests": {"memory": "50Mi"}})),
        )
        .unwrap_err();
        assert!(
            under.starts_with("minimum memory usage per Container is 100Mi, but request is"),
            "{under}"
        );
        let ratio = admit_pod(
            &ranges,
            &mut pod(
                json!({"limits": {"cpu": "400m"}, "requests": {"cpu": "100m", "memory": "100Mi"}}),
            ),
        )
        .unwrap_err();
        assert_eq!(
            ratio,
            "cpu max limit to request ratio per Container is 2, but provided ratio is 4.000000"
        );
        let pods = [range(json!([{"type": "Pod", "max": {"memory": "1Gi"}}]))];
        let two = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "resources": {"limits": {"memory": "600Mi"}}}, {"name": "b", "resources": {"limits": {"memory": "600Mi"}}}]}});
        assert!(admit_pod(&pods, &mut two.clone())
            .unwrap_err()
            .starts_with("maximum memory usage per Pod is 1Gi"));
    }

    #[test]
    fn bad_ranges_name_the_field() {
        let mut causes = Vec::new();
        validate(
            &range(
                json!([{"type": "Node", "max": {"cpu": "-1"}}, {"type": "Container", "min": {"cpu": "1"}, "max": {"cpu": "500m"}}]),
            ),
            &mut causes,
        );
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.limits[0].type",
                "spec.limits[0].max[cpu]",
                "spec.limits[1].max[cpu]"
            ]
        );
    }
}
