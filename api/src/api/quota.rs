//! ResourceQuota (core/v1), as Kubernetes' quota evaluators count: what an object uses
//! ([`usage_of`]: `pods`, `requests.cpu`, `limits.memory`, `services`, `count/<resource>`...),
//! which quotas track it ([`Quota::tracks`]: scopes `BestEffort`, `NotBestEffort`,
//! `Terminating`, `NotTerminating`, `PriorityClass` through `scopeSelector`), and whether a
//! request fits ([`Quota::admit`], with Kubernetes' message: `exceeded quota: q1, requested:
//! pods=1, used: pods=2, limited: pods=2`). The API server admits against these with a
//! compare-and-swap of the quota's `status.used`; the quota controller recounts.
//!
//! Pods count while they are not terminal (phase Succeeded or Failed); a pod's compute
//! resources are counted by [`super::pod_requests`], as Kubernetes' `PodRequests` (init
//! containers one at a time, native sidecars beside everything after them).

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::object::str_at;
use super::pod_requests;
use super::quantity::Quantity;
use super::validation::Cause;

/// The annotation each admission charge stamps on a quota (RFC 3339, microseconds).
pub const CHARGED_AT: &str = "quota.shoal.dev/charged-at";

/// How long after a charge a recount may not lower `used`: the charged object may still be on
/// its way into the store, and a recount that missed it would give its slot away twice.
pub const CHARGE_SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

/// Amounts by resource name (`pods`, `requests.cpu`).
pub type Usage = BTreeMap<String, Quantity>;

/// The compute resources a pod's containers declare.
const COMPUTE: [&str; 2] = ["cpu", "memory"];

/// What `object` of `plural` in `group` uses.
pub fn usage_of(group: &str, plural: &str, object: &Value) -> Usage {
    let mut usage = Usage::new();
    let one = Quantity::parse("1").unwrap_or_default();
    let count = if group.is_empty() {
        format!("count/{plural}")
    } else {
        format!("count/{plural}.{group}")
    };
    usage.insert(count, one);
    if !group.is_empty() {
        return usage;
    }
    match plural {
        "pods" => {
            if is_terminal(object) {
                return Usage::new();
            }
            usage.insert("pods".into(), one);
            for (name, amount) in pod_compute(object) {
                usage.insert(name, amount);
            }
        }
        "services" => {
            usage.insert("services".into(), one);
            match str_at(object, "/spec/type") {
                "NodePort" => {
                    usage.insert("services.nodeports".into(), one);
                }
                "LoadBalancer" => {
                    usage.insert("services.loadbalancers".into(), one);
                }
                _ => {}
            }
        }
        "persistentvolumeclaims" => {
            usage.insert("persistentvolumeclaims".into(), one);
            if let Ok(storage) = Quantity::parse(str_at(object, "/spec/resources/requests/storage"))
            {
                usage.insert("requests.storage".into(), storage);
            }
        }
        "configmaps" | "secrets" | "replicationcontrollers" | "resourcequotas" => {
            usage.insert(plural.to_string(), one);
        }
        _ => {}
    }
    usage
}

fn is_terminal(pod: &Value) -> bool {
    matches!(str_at(pod, "/status/phase"), "Succeeded" | "Failed")
}

/// `requests.cpu`, `cpu` (the same), `limits.cpu` and the memory ones of a pod.
fn pod_compute(pod: &Value) -> Usage {
    let containers = |field: &str| -> Vec<Value> {
        pod.pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let amount = |container: &Value, kind: &str, name: &str| -> Quantity {
        Quantity::parse(str_at(container, &format!("/resources/{kind}/{name}"))).unwrap_or_default()
    };
    let (init, main) = (containers("initContainers"), containers("containers"));
    let mut usage = Usage::new();
    for kind in ["requests", "limits"] {
        for name in COMPUTE {
            let millis = |c: &Value| amount(c, kind, name).millis();
            let total = pod_requests::effective(
                init.iter()
                    .map(|c| (pod_requests::is_sidecar_json(c), millis(c))),
                main.iter().map(millis),
                i128::saturating_add,
            );
            if total > 0 {
                let quantity = from_millis(total);
                if kind == "requests" {
                    usage.insert(name.to_string(), quantity);
                }
                usage.insert(format!("{kind}.{name}"), quantity);
            }
        }
    }
    usage
}

fn from_millis(millis: i128) -> Quantity {
    Quantity::parse(&format!("{millis}m")).unwrap_or_default()
}

/// Whether a pod declares no requests or limits at all (QoS class BestEffort).
fn best_effort(pod: &Value) -> bool {
    ["containers", "initContainers"].iter().all(|field| {
        pod.pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .all(|c| {
                ["requests", "limits"].iter().all(|kind| {
                    c.pointer(&format!("/resources/{kind}"))
                        .and_then(Value::as_object)
                        .is_none_or(|m| m.is_empty())
                })
            })
    })
}

/// One ResourceQuota: its name, hard limits, scopes and what it has counted.
pub struct Quota<'a> {
    pub object: &'a Value,
}

impl<'a> Quota<'a> {
    pub fn name(&self) -> &'a str {
        str_at(self.object, "/metadata/name")
    }

    /// `spec.hard`, the unparsable entries left out (validation refuses them).
    pub fn hard(&self) -> Usage {
        quantities(self.object.pointer("/spec/hard"))
    }

    /// `status.used` as counted so far; `None` for a resource not counted yet.
    pub fn used(&self) -> Usage {
        quantities(self.object.pointer("/status/used"))
    }

    /// Whether the quota has counted everything it limits (its status is current), given
    /// its `spec.hard` and `status.used` parsed.
    fn counted_with(&self, hard: &Usage, used: &Usage) -> bool {
        // Admission copies `spec.hard` as it is: equal JSON needs no parsing.
        let status_hard = self.object.pointer("/status/hard");
        let current =
            status_hard == self.object.pointer("/spec/hard") || quantities(status_hard) == *hard;
        current && hard.keys().all(|k| used.contains_key(k))
    }

    /// Whether the quota counts `object` (of `plural` in the core group or `group`): its
    /// scopes only ever match pods.
    pub fn tracks(&self, plural: &str, object: &Value) -> bool {
        scopes_match(&self.scopes(), plural, object)
    }

    /// (scope, operator, values) from `spec.scopes` and `spec.scopeSelector`.
    fn scopes(&self) -> Vec<Scope> {
        let mut scopes: Vec<Scope> = self
            .object
            .pointer("/spec/scopes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|s| (s.to_string(), "Exists".to_string(), Vec::new()))
            .collect();
        for expression in self
            .object
            .pointer("/spec/scopeSelector/matchExpressions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let values = expression["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect();
            scopes.push((
                str_at(expression, "/scopeName").to_string(),
                str_at(expression, "/operator").to_string(),
                values,
            ));
        }
        scopes
    }

    /// The part of `usage` this quota limits.
    pub fn limited(&self, usage: &Usage) -> Usage {
        limited_by(&self.hard(), usage)
    }
}

/// (scope, operator, values): one of a quota's scopes.
type Scope = (String, String, Vec<String>);

/// Whether an object (of `plural` in the core group, or `""`) is in all of `scopes`: they
/// only ever match pods.
fn scopes_match(scopes: &[Scope], plural: &str, object: &Value) -> bool {
    if scopes.is_empty() {
        return true;
    }
    if plural != "pods" {
        return false;
    }
    scopes.iter().all(|(scope, operator, values)| {
        let matched = match scope.as_str() {
            "BestEffort" => best_effort(object),
            "NotBestEffort" => !best_effort(object),
            "Terminating" => object.pointer("/spec/activeDeadlineSeconds").is_some(),
            "NotTerminating" => object.pointer("/spec/activeDeadlineSeconds").is_none(),
            "PriorityClass" => {
                let class = str_at(object, "/spec/priorityClassName");
                return match operator.as_str() {
                    "In" => values.iter().any(|v| v == class),
                    "NotIn" => !values.iter().any(|v| v == class),
                    "Exists" => !class.is_empty(),
                    "DoesNotExist" => class.is_empty(),
                    _ => false,
                };
            }
            _ => false,
        };
        match operator.as_str() {
            "DoesNotExist" | "NotIn" => !matched,
            _ => matched,
        }
    })
}

/// The new total once `requested` is added to `used`, or Kubernetes' message (naming the
/// quota) when it would go over a hard limit.
fn admit_within(
    quota: &str,
    hard: &Usage,
    used: &Usage,
    requested: &Usage,
) -> Result<Usage, String> {
    let mut next = used.clone();
    let mut over = Vec::new();
    for (name, amount) in requested {
        let Some(limit) = hard.get(name) else {
            continue;
        };
        let now = used.get(name).copied().unwrap_or_default();
        let total = now.millis().saturating_add(amount.millis());
        if total > limit.millis() {
            over.push(name.clone());
        }
        next.insert(name.clone(), from_millis(total));
    }
    if over.is_empty() {
        return Ok(next);
    }
    let list = |usage: &Usage| -> String {
        over.iter()
            .map(|name| format!("{name}={}", usage.get(name).copied().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(",")
    };
    Err(format!(
        "exceeded quota: {}, requested: {}, used: {}, limited: {}",
        quota,
        list(requested),
        list(used),
        list(hard)
    ))
}

/// A quota parsed once, to judge many creates in a row (admission inside a store commit
/// charges a namespace's creates one after another): its limits, scopes and running total.
pub struct Tally {
    name: String,
    hard: Usage,
    scopes: Vec<Scope>,
    /// `status.used` with the charges recorded since; `None` while the quota has not counted
    /// what it limits (just created, or its limits changed).
    used: Option<Usage>,
}

impl Tally {
    pub fn of(quota: &Quota<'_>) -> Self {
        let hard = quota.hard();
        let used = quota.used();
        let counted = quota.counted_with(&hard, &used);
        Self {
            name: quota.name().to_string(),
            scopes: quota.scopes(),
            used: counted.then_some(used),
            hard,
        }
    }

    /// Whether the quota counts `object` (of `plural` in the core group, or `""`).
    pub fn tracks(&self, plural: &str, object: &Value) -> bool {
        scopes_match(&self.scopes, plural, object)
    }

    /// What admitting `usage` makes of the total: `None` when the quota limits none of it,
    /// else the new total (not recorded yet: see [`Tally::record`]) or Kubernetes' message.
    /// `recount` gives the total so far when the quota has not counted; it is kept.
    pub fn charge(
        &mut self,
        usage: &Usage,
        recount: impl FnOnce() -> Usage,
    ) -> Option<Result<Usage, String>> {
        let requested = limited_by(&self.hard, usage);
        if requested.is_empty() {
            return None;
        }
        let used = self.used.get_or_insert_with(recount);
        Some(admit_within(&self.name, &self.hard, used, &requested))
    }

    /// Makes `used` (what [`Tally::charge`] returned) the running total.
    pub fn record(&mut self, used: Usage) {
        self.used = Some(used);
    }

    /// The running total; `None` while the quota has not counted.
    pub fn used(&self) -> Option<&Usage> {
        self.used.as_ref()
    }
}

/// The part of `usage` that `hard` limits.
fn limited_by(hard: &Usage, usage: &Usage) -> Usage {
    usage
        .iter()
        .filter(|(name, _)| hard.contains_key(*name))
        .map(|(name, amount)| (name.clone(), *amount))
        .collect()
}

/// The (group, plural) whose objects a hard limit counts: `pods` and the compute resources
/// count pods, `count/deployments.apps` Deployments, and so on.
pub fn counted_kind(limit: &str) -> Option<(String, String)> {
    if let Some(resource) = limit.strip_prefix("count/") {
        return Some(match resource.split_once('.') {
            Some((plural, group)) => (group.to_string(), plural.to_string()),
            None => (String::new(), resource.to_string()),
        });
    }
    let plural = match limit {
        "pods" | "cpu" | "memory" => "pods",
        l if l.starts_with("requests.") && l != "requests.storage" => "pods",
        l if l.starts_with("limits.") => "pods",
        "services" | "services.nodeports" | "services.loadbalancers" => "services",
        "persistentvolumeclaims" | "requests.storage" => "persistentvolumeclaims",
        "configmaps" | "secrets" | "replicationcontrollers" | "resourcequotas" => limit,
        _ => return None,
    };
    Some((String::new(), plural.to_string()))
}

impl Quota<'_> {
    /// Counts what the quota limits from the namespace's objects: `list(group, plural)`
    /// returns the objects of a kind in the quota's namespace.
    pub fn recount(&self, mut list: impl FnMut(&str, &str) -> Vec<Value>) -> Usage {
        let hard = self.hard();
        let mut kinds: Vec<(String, String)> =
            hard.keys().filter_map(|k| counted_kind(k)).collect();
        kinds.sort();
        kinds.dedup();
        let mut used: Usage = hard
            .keys()
            .map(|k| (k.clone(), Quantity::default()))
            .collect();
        for (group, plural) in kinds {
            for object in list(&group, &plural) {
                let tracked_as = if group.is_empty() {
                    plural.as_str()
                } else {
                    ""
                };
                if !self.tracks(tracked_as, &object) {
                    continue;
                }
                for (name, amount) in self.limited(&usage_of(&group, &plural, &object)) {
                    let total = used.get(&name).copied().unwrap_or_default();
                    used.insert(
                        name,
                        from_millis(total.millis().saturating_add(amount.millis())),
                    );
                }
            }
        }
        used
    }
}

fn quantities(map: Option<&Value>) -> Usage {
    map.and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(name, amount)| {
            let text = match amount {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return None,
            };
            Some((name.clone(), Quantity::parse(&text).ok()?))
        })
        .collect()
}

/// A usage as the quota's `status` holds it.
pub fn to_json(usage: &Usage) -> Value {
    Value::Object(
        usage
            .iter()
            .map(|(name, amount)| (name.clone(), json!(amount.to_string())))
            .collect(),
    )
}

const SCOPES: &[&str] = &[
    "BestEffort",
    "NotBestEffort",
    "Terminating",
    "NotTerminating",
    "PriorityClass",
];

/// Kubernetes' `ValidateResourceQuota`: quantities that parse and are not negative, known
/// scopes and operators.
pub fn validate(quota: &Value, causes: &mut Vec<Cause>) {
    for (name, amount) in quota
        .pointer("/spec/hard")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let field = format!("spec.hard[{name}]");
        let text = match amount {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => other.to_string(),
        };
        match Quantity::parse(&text) {
            Ok(q) if q.is_negative() => causes.push(Cause::invalid(
                field,
                &text,
                "must be greater than or equal to 0",
            )),
            Ok(_) => {}
            Err(e) => causes.push(Cause::invalid(field, &text, &e.to_string())),
        }
    }
    for (i, scope) in quota
        .pointer("/spec/scopes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let scope = scope.as_str().unwrap_or("");
        if !SCOPES.contains(&scope) || scope == "PriorityClass" {
            causes.push(Cause::not_supported(
                format!("spec.scopes[{i}]"),
                scope,
                &SCOPES[..4],
            ));
        }
    }
    for (i, expression) in quota
        .pointer("/spec/scopeSelector/matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let at = format!("spec.scopeSelector.matchExpressions[{i}]");
        let scope = str_at(expression, "/scopeName");
        if !SCOPES.contains(&scope) {
            causes.push(Cause::not_supported(
                format!("{at}.scopeName"),
                scope,
                SCOPES,
            ));
        }
        let operator = str_at(expression, "/operator");
        let values = expression["values"].as_array().map_or(0, Vec::len);
        match operator {
            "In" | "NotIn" if values == 0 => causes.push(Cause::required(format!("{at}.values"))),
            "Exists" | "DoesNotExist" if values > 0 => causes.push(Cause::forbidden(
                format!("{at}.values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => causes.push(Cause::not_supported(
                format!("{at}.operator"),
                other,
                &["In", "NotIn", "Exists", "DoesNotExist"],
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(text: &str) -> Quantity {
        Quantity::parse(text).unwrap()
    }

    #[test]
    fn pods_use_their_containers_and_count_until_they_end() {
        let pod = json!({"spec": {
            "containers": [
                {"resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "200m"}}},
                {"resources": {"requests": {"cpu": "150m"}}},
            ],
            "initContainers": [{"resources": {"requests": {"cpu": "1"}}}],
        }});
        let usage = usage_of("", "pods", &pod);
        assert_eq!(usage["pods"], q("1"));
        assert_eq!(
            usage["requests.cpu"],
            q("1"),
            "the init container's is larger"
        );
        assert_eq!(usage["cpu"], q("1"));
        assert_eq!(usage["requests.memory"], q("64Mi"));
        assert_eq!(usage["limits.cpu"], q("200m"));
        assert_eq!(usage["count/pods"], q("1"));
        // A sidecar runs beside the main containers: its request adds to theirs.
        let mut with_sidecar = pod.clone();
        with_sidecar["spec"]["initContainers"] = json!([
            {"restartPolicy": "Always", "resources": {"requests": {"cpu": "50m"}}},
        ]);
        let usage = usage_of("", "pods", &with_sidecar);
        assert_eq!(usage["requests.cpu"], q("300m"));
        let mut done = pod.clone();
        done["status"] = json!({"phase": "Succeeded"});
        assert!(usage_of("", "pods", &done).is_empty());
        assert_eq!(
            usage_of("apps", "deployments", &json!({}))["count/deployments.apps"],
            q("1")
        );
        let svc = usage_of("", "services", &json!({"spec": {"type": "NodePort"}}));
        assert_eq!(
            (svc["services"], svc["services.nodeports"]),
            (q("1"), q("1"))
        );
    }

    #[test]
    fn admission_adds_up_and_says_what_was_exceeded() {
        let object = json!({"metadata": {"name": "q1"}, "spec": {"hard": {"pods": "2", "requests.cpu": "1"}}});
        let quota = Quota { object: &object };
        let used: Usage = [
            ("pods".to_string(), q("1")),
            ("requests.cpu".to_string(), q("500m")),
        ]
        .into();
        let pod = json!({"spec": {"containers": [{"resources": {"requests": {"cpu": "250m"}}}]}});
        let requested = quota.limited(&usage_of("", "pods", &pod));
        assert_eq!(requested.len(), 2, "{requested:?}");
        let next = admit_within(quota.name(), &quota.hard(), &used, &requested).unwrap();
        assert_eq!((next["pods"], next["requests.cpu"]), (q("2"), q("750m")));
        let refused = admit_within(quota.name(), &quota.hard(), &next, &requested).unwrap_err();
        assert_eq!(
            refused,
            "exceeded quota: q1, requested: pods=1, used: pods=2, limited: pods=2"
        );
    }

    #[test]
    fn a_tally_counts_once_and_adds_up_what_it_records() {
        // Not counted yet: no `status.used`.
        let object =
            json!({"metadata": {"name": "q1"}, "spec": {"hard": {"pods": "2", "configmaps": "5"}}});
        let mut tally = Tally::of(&Quota { object: &object });
        assert_eq!(tally.used(), None);
        let pod = usage_of("", "pods", &json!({"spec": {"containers": [{}]}}));
        let mut recounts = 0;
        let mut recount = || {
            recounts += 1;
            [
                ("pods".to_string(), q("1")),
                ("configmaps".to_string(), q("0")),
            ]
            .into()
        };
        let used = tally.charge(&pod, &mut recount).unwrap().unwrap();
        assert_eq!(used["pods"], q("2"));
        // Not recorded: the total stays what was counted.
        assert_eq!(tally.used().map(|u| u["pods"]), Some(q("1")));
        tally.record(used);
        let refused = tally.charge(&pod, &mut recount).unwrap().unwrap_err();
        assert_eq!(
            refused,
            "exceeded quota: q1, requested: pods=1, used: pods=2, limited: pods=2"
        );
        assert_eq!(recounts, 1, "counted once, then the running total");
        // A kind the quota does not limit is no charge.
        assert!(tally
            .charge(&usage_of("", "secrets", &json!({})), || unreachable!())
            .is_none());
        // A counted quota starts from its status.
        let counted = json!({"metadata": {"name": "q2"}, "spec": {"hard": {"pods": "2"}},
            "status": {"hard": {"pods": "2"}, "used": {"pods": "1"}}});
        let mut tally = Tally::of(&Quota { object: &counted });
        assert_eq!(tally.used().map(|u| u["pods"]), Some(q("1")));
        assert!(tally.charge(&pod, || unreachable!()).unwrap().is_ok());
    }

    #[test]
    fn scopes_pick_the_pods_they_count() {
        let scoped = |spec: Value| json!({"metadata": {"name": "q"}, "spec": spec});
        let best = json!({"spec": {"containers": [{}]}});
        let burstable = json!({"spec": {"containers": [{"resources": {"requests": {"cpu": "1"}}}], "priorityClassName": "high"}});
        let be = scoped(json!({"hard": {"pods": "1"}, "scopes": ["BestEffort"]}));
        let be = Quota { object: &be };
        assert!(be.tracks("pods", &best) && !be.tracks("pods", &burstable));
        assert!(!be.tracks("configmaps", &json!({})));
        let high = scoped(
            json!({"hard": {"pods": "1"}, "scopeSelector": {"matchExpressions": [
            {"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]}}),
        );
        let high = Quota { object: &high };
        assert!(high.tracks("pods", &burstable) && !high.tracks("pods", &best));
    }

    #[test]
    fn a_recount_sums_what_each_limit_counts() {
        let object = json!({"metadata": {"name": "q"}, "spec": {"hard": {
            "pods": "5", "requests.memory": "1Gi", "count/deployments.apps": "3", "configmaps": "9"}}});
        let quota = Quota { object: &object };
        let pod =
            json!({"spec": {"containers": [{"resources": {"requests": {"memory": "100Mi"}}}]}});
        let done = json!({"spec": {}, "status": {"phase": "Failed"}});
        let used = quota.recount(|group, plural| match (group, plural) {
            ("", "pods") => vec![pod.clone(), pod.clone(), done.clone()],
            ("apps", "deployments") => vec![json!({})],
            ("", "configmaps") => vec![],
            other => panic!("{other:?} is not limited"),
        });
        assert_eq!(used["pods"], q("2"));
        assert_eq!(used["requests.memory"], q("200Mi"));
        assert_eq!(used["count/deployments.apps"], q("1"));
        assert_eq!(used["configmaps"], q("0"));
    }

    #[test]
    fn bad_quotas_name_the_field() {
        let mut causes = Vec::new();
        validate(
            &json!({"spec": {"hard": {"pods": "-1", "cpu": "lots"}, "scopes": ["Sometimes"],
                "scopeSelector": {"matchExpressions": [{"scopeName": "PriorityClass", "operator": "In"}]}}}),
            &mut causes,
        );
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.hard[cpu]",
                "spec.hard[pods]",
                "spec.scopes[0]",
                "spec.scopeSelector.matchExpressions[0].values"
            ]
        );
    }
}
