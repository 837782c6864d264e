//! The horizontal pod autoscaler controller: every sync period, for each
//! HorizontalPodAutoscaler, reads its target's `/scale`, the metrics its `spec.metrics` name
//! (resource metrics from `metrics.k8s.io`, Pods and Object metrics from
//! `custom.metrics.k8s.io`), asks the [`replicas`] calculator what each metric wants, bounds
//! the largest through [`behavior`] (stabilization, policies, min and max), writes the new
//! count to `/scale`, and keeps the HPA's status (current metrics, the `AbleToScale`,
//! `ScalingActive` and `ScalingLimited` conditions) as Kubernetes' does.
//!
//! Everything goes through the API, as for any client: the target may be any kind with a
//! `/scale` subresource (custom kinds are found through discovery). What the controller
//! remembers between syncs (recent recommendations and changes, for the windows and policies)
//! lives in memory, as in kube-controller-manager: a restart or failover starts it afresh.
//!
//! One choice differs: Kubernetes records a Warning event at every sync that fails (and its
//! recorder folds repeats into a count); this controller records one when the failure starts
//! or changes, so a broken HPA does not write an event every second of a short sync period.

pub mod behavior;
pub mod replicas;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use http::Method;
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HPAScalingRules, HorizontalPodAutoscaler, MetricSpec, MetricTarget,
};
use serde_json::{json, Value};

use self::behavior::{History, Policy, Rules, Select};
use self::replicas::{CalcError, PodFacts, Proposal, Sample};
use super::runtime::{Action, ObjectKey, Reconciler};
use super::Error;
use crate::api::autoscaling;
use crate::api::object::{self, str_at};
use crate::api::quantity::Quantity;
use crate::api::resources::{self, lookup_kind};
use crate::client::{Client, Recorder};

/// How often each HPA is looked at (Kubernetes' `--horizontal-pod-autoscaler-sync-period`).
pub const DEFAULT_SYNC_PERIOD: Duration = Duration::from_secs(15);

/// What the controller remembers of one HPA between syncs.
struct Memory {
    history: History,
    last_sync: Instant,
    generation: i64,
    /// The wake stamp last seen: a new one (a proxy woke the target) is looked at at once.
    woken_at: Option<String>,
}

type Memories = Arc<Mutex<HashMap<ObjectKey, Memory>>>;

/// How long a deleted HPA's memory is kept before it is dropped (longer than any window).
const FORGET_AFTER: Duration = Duration::from_secs(2 * 3600);

pub async fn run(client: Client, sync_period: Duration) {
    let recorder = Recorder::new(client.clone(), "horizontal-pod-autoscaler", None);
    let memories: Memories = Arc::default();
    Reconciler::<HorizontalPodAutoscaler>::new("horizontal-pod-autoscaler", &client)
        .run(move |hpa| {
            sync(
                client.clone(),
                recorder.clone(),
                memories.clone(),
                sync_period,
                hpa,
            )
        })
        .await
}

/// Runs [`reconcile`] at most once per sync period per HPA; a change of its spec (a new
/// generation) is looked at at once. Status writes (its own) do not make it run again.
async fn sync(
    client: Client,
    recorder: Recorder,
    memories: Memories,
    sync_period: Duration,
    hpa: Arc<HorizontalPodAutoscaler>,
) -> Result<Action, Error> {
    let key = ObjectKey::of(&hpa.metadata);
    let generation = hpa.metadata.generation.unwrap_or(0);
    let woken_at = woken_at(&hpa).map(str::to_string);
    let now = Instant::now();
    let mut history = {
        let mut memories = memories.lock().unwrap_or_else(|p| p.into_inner());
        memories.retain(|_, m| now.duration_since(m.last_sync) < FORGET_AFTER);
        match memories.get(&key) {
            Some(m)
                if m.generation == generation
                    && m.woken_at == woken_at
                    && now.duration_since(m.last_sync) < sync_period =>
            {
                return Ok(Action::RequeueAfter(
                    sync_period - now.duration_since(m.last_sync),
                ));
            }
            _ => memories.remove(&key).map(|m| m.history).unwrap_or_default(),
        }
    };
    let result = reconcile(&client, &recorder, &mut history, &hpa).await;
    memories.lock().unwrap_or_else(|p| p.into_inner()).insert(
        key,
        Memory {
            history,
            last_sync: now,
            generation,
            woken_at,
        },
    );
    result?;
    Ok(Action::RequeueAfter(sync_period))
}

/// The HPA's wake stamp (`autoscaling.shoal.dev/woken-at`), if a proxy woke its target.
fn woken_at(hpa: &HorizontalPodAutoscaler) -> Option<&str> {
    hpa.metadata
        .annotations
        .as_ref()?
        .get(autoscaling::WOKEN_AT_ANNOTATION)
        .map(String::as_str)
}

/// Whether the target was woken from zero within `window`: it then keeps at least one
/// replica, whatever the metrics say (the requests that woke it may not show yet).
fn woken_within(hpa: &HorizontalPodAutoscaler, window: Duration) -> bool {
    woken_at(hpa)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .and_then(|t| (Utc::now() - t.with_timezone(&Utc)).to_std().ok())
        .is_some_and(|age| age < window)
}

/// One condition of the status.
struct Condition {
    kind: &'static str,
    status: bool,
    reason: String,
    message: String,
}

impl Condition {
    fn new(kind: &'static str, status: bool, reason: &str, message: impl Into<String>) -> Self {
        Self {
            kind,
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// The status being built in one sync.
struct Status {
    conditions: Vec<Condition>,
    current_metrics: Vec<Value>,
}

impl Status {
    fn set(&mut self, condition: Condition) {
        self.conditions.retain(|c| c.kind != condition.kind);
        self.conditions.push(condition);
    }
}

/// A metric that gave no count: the condition it sets and the event reason it records.
struct MetricFailure {
    reason: &'static str,
    error: String,
}

/// One sync of one HPA.
async fn reconcile(
    client: &Client,
    recorder: &Recorder,
    history: &mut History,
    hpa: &HorizontalPodAutoscaler,
) -> Result<(), Error> {
    let namespace = hpa.metadata.namespace.clone().unwrap_or_default();
    let name = hpa.metadata.name.clone().unwrap_or_default();
    let path =
        format!("/apis/autoscaling/v2/namespaces/{namespace}/horizontalpodautoscalers/{name}");
    let Some(current) = super::read_fresh(client, &path).await? else {
        return Ok(());
    };
    let Ok(hpa_now) = serde_json::from_value::<HorizontalPodAutoscaler>(current.clone()) else {
        return Ok(());
    };
    let spec = hpa_now.spec.clone().unwrap_or_default();
    let mut status = Status {
        conditions: Vec::new(),
        current_metrics: Vec::new(),
    };
    let mut warnings: Vec<(String, String)> = Vec::new();
    let previous = current.pointer("/status").cloned().unwrap_or(json!({}));
    let write = |status: Status, replicas: (i32, i32), scaled: bool| {
        status_json(&previous, &current, status, replicas, scaled)
    };

    // The target's scale.
    let scale = match target_scale(client, &namespace, &spec.scale_target_ref).await {
        Ok(scale) => scale,
        Err(error) => {
            status.set(Condition::new(
                "AbleToScale",
                false,
                "FailedGetScale",
                format!("the HPA controller was unable to get the target's current scale: {error}"),
            ));
            warnings.push(("FailedGetScale".into(), error));
            let replicas = (
                previous_i32(&previous, "currentReplicas"),
                previous_i32(&previous, "desiredReplicas"),
            );
            return finish(
                client,
                recorder,
                hpa,
                &path,
                &previous,
                write(status, replicas, false),
                warnings,
            )
            .await;
        }
    };
    status.set(Condition::new(
        "AbleToScale",
        true,
        "SucceededGetScale",
        "the HPA controller was able to get the target's current scale",
    ));
    let current_replicas = scale.spec_replicas;
    let min = spec.min_replicas.unwrap_or(1);
    let max = spec.max_replicas;
    let (up, down) = rules_of(&spec);
    let mut rescale_reason = String::new();
    let desired = if current_replicas == 0 && min != 0 {
        status.set(Condition::new(
            "ScalingActive",
            false,
            "ScalingDisabled",
            "scaling is disabled since the replica count of the target is zero",
        ));
        0
    } else if current_replicas > max {
        rescale_reason = "Current number of replicas above Spec.MaxReplicas".into();
        max
    } else if current_replicas < min {
        rescale_reason = "Current number of replicas below Spec.MinReplicas".into();
        min
    } else {
        let metrics = spec.metrics.clone().unwrap_or_default();
        let computed = compute_metrics(client, &namespace, &scale, &metrics).await;
        status.current_metrics = computed.statuses;
        let woken = woken_within(&hpa_now, down.stabilization);
        let proposal = match computed.outcome {
            Ok((replicas, metric)) => {
                let replicas = if woken { replicas.max(1) } else { replicas };
                status.set(Condition::new(
                    "ScalingActive",
                    true,
                    "ValidMetricFound",
                    format!(
                        "the HPA was able to successfully calculate a replica count from {metric}"
                    ),
                ));
                if replicas > current_replicas {
                    rescale_reason = format!("{metric} above target");
                } else if replicas < current_replicas {
                    rescale_reason = "All metrics below target".into();
                }
                Some(replicas)
            }
            Err(_) if current_replicas == 0 => {
                // At zero there are no pods to measure: the proxy wakes the target on the
                // next request.
                status.set(Condition::new(
                    "ScalingActive",
                    false,
                    "ScaledToZero",
                    "the target is scaled to zero; a request to a Service selecting its pods wakes it",
                ));
                None
            }
            Err(condition) => {
                status.set(condition);
                warnings.extend(computed.warnings);
                None
            }
        };
        let Some(proposal) = proposal else {
            let replicas = (current_replicas, previous_i32(&previous, "desiredReplicas"));
            return finish(
                client,
                recorder,
                hpa,
                &path,
                &previous,
                write(status, replicas, false),
                warnings,
            )
            .await;
        };
        let decision = history.decide(
            Instant::now(),
            current_replicas,
            proposal,
            (min, max),
            &up,
            &down,
        );
        status.set(Condition::new(
            "AbleToScale",
            decision.able_to_scale.status,
            decision.able_to_scale.reason,
            decision.able_to_scale.message,
        ));
        status.set(Condition::new(
            "ScalingLimited",
            decision.limited.status,
            decision.limited.reason,
            decision.limited.message,
        ));
        decision.replicas
    };

    let rescale = desired != current_replicas && !(current_replicas == 0 && min != 0);
    if rescale {
        let patch = json!({"spec": {"replicas": desired}});
        match client
            .json(
                Method::PATCH,
                &scale.path,
                "application/merge-patch+json",
                Some(&patch),
            )
            .await
        {
            Ok(_) => {
                status.set(Condition::new(
                    "AbleToScale",
                    true,
                    "SucceededRescale",
                    format!("the HPA controller was able to update the target scale to {desired}"),
                ));
                recorder.normal(
                    hpa,
                    "SuccessfulRescale",
                    &format!("New size: {desired}; reason: {rescale_reason}"),
                );
                history.record_change(Instant::now(), current_replicas, desired, &up, &down);
            }
            Err(e) => {
                let error = api_message(&e);
                status.set(Condition::new(
                    "AbleToScale",
                    false,
                    "FailedUpdateScale",
                    format!("the HPA controller was unable to update the target scale: {error}"),
                ));
                recorder.warning(
                    hpa,
                    "FailedRescale",
                    &format!("New size: {desired}; reason: {rescale_reason}; error: {error}"),
                );
                let status = write(status, (current_replicas, desired), false);
                finish(client, recorder, hpa, &path, &previous, status, warnings).await?;
                return Err(e.into());
            }
        }
    }
    let status = write(status, (current_replicas, desired), rescale);
    finish(client, recorder, hpa, &path, &previous, status, warnings).await
}

/// Records the warnings that are new since the last status, and writes the status.
async fn finish(
    client: &Client,
    recorder: &Recorder,
    hpa: &HorizontalPodAutoscaler,
    path: &str,
    previous: &Value,
    status: Value,
    warnings: Vec<(String, String)>,
) -> Result<(), Error> {
    let changed = |new: &Value| {
        let key = |s: &Value| -> Vec<(String, String, String)> {
            s.get("conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|c| {
                    (
                        str_at(c, "/type").to_string(),
                        str_at(c, "/status").to_string(),
                        str_at(c, "/message").to_string(),
                    )
                })
                .collect()
        };
        key(previous) != key(new)
    };
    if changed(&status) {
        for (reason, message) in &warnings {
            recorder.warning(hpa, reason, message);
        }
    }
    if previous == &status {
        return Ok(());
    }
    match client
        .json(
            Method::PATCH,
            &format!("{path}/status"),
            "application/merge-patch+json",
            Some(&json!({"status": status})),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn previous_i32(previous: &Value, field: &str) -> i32 {
    previous
        .get(field)
        .and_then(Value::as_i64)
        .and_then(|n| i32::try_from(n).ok())
        .unwrap_or(0)
}

/// The status to write: conditions keep their transition time while their status holds.
fn status_json(
    previous: &Value,
    hpa: &Value,
    status: Status,
    (current, desired): (i32, i32),
    scaled: bool,
) -> Value {
    let now = object::now_rfc3339();
    let before = |kind: &str| {
        previous
            .get("conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|c| c["type"] == kind)
            .cloned()
    };
    let mut conditions: Vec<Value> = status
        .conditions
        .iter()
        .map(|c| {
            let state = if c.status { "True" } else { "False" };
            let since = before(c.kind)
                .filter(|old| old["status"] == state)
                .map(|old| old["lastTransitionTime"].clone())
                .unwrap_or_else(|| json!(now));
            json!({"type": c.kind, "status": state, "reason": c.reason, "message": c.message,
                   "lastTransitionTime": since})
        })
        .collect();
    // Conditions this sync did not reach keep what they said (Kubernetes keeps them too).
    for kind in ["AbleToScale", "ScalingActive", "ScalingLimited"] {
        if !status.conditions.iter().any(|c| c.kind == kind) {
            if let Some(old) = before(kind) {
                conditions.push(old);
            }
        }
    }
    let order = |c: &Value| match c["type"].as_str() {
        Some("AbleToScale") => 0,
        Some("ScalingActive") => 1,
        _ => 2,
    };
    conditions.sort_by_key(order);
    let mut out = json!({
        "currentReplicas": current,
        "desiredReplicas": desired,
        "conditions": conditions,
    });
    if let Some(generation) = hpa.pointer("/metadata/generation") {
        out["observedGeneration"] = generation.clone();
    }
    if !status.current_metrics.is_empty() {
        out["currentMetrics"] = json!(status.current_metrics);
    }
    let last = if scaled {
        Some(json!(now))
    } else {
        previous.get("lastScaleTime").cloned()
    };
    if let Some(last) = last.filter(|l| !l.is_null()) {
        out["lastScaleTime"] = last;
    }
    out
}

/// The rules of each direction: the HPA's behavior, or the defaults for what it leaves out.
fn rules_of(
    spec: &k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscalerSpec,
) -> (Rules, Rules) {
    let parse = |given: Option<&HPAScalingRules>, default: Value| -> Rules {
        let default: HPAScalingRules = serde_json::from_value(default).unwrap_or_default();
        let stabilization = given
            .and_then(|r| r.stabilization_window_seconds)
            .or(default.stabilization_window_seconds)
            .unwrap_or(0);
        let select = given
            .and_then(|r| r.select_policy.clone())
            .or(default.select_policy.clone())
            .unwrap_or_default();
        let policies = given
            .and_then(|r| r.policies.clone())
            .filter(|p| !p.is_empty())
            .or(default.policies.clone())
            .unwrap_or_default();
        Rules {
            stabilization: Duration::from_secs(u64::try_from(stabilization).unwrap_or(0)),
            select: match select.as_str() {
                "Min" => Select::Min,
                "Disabled" => Select::Disabled,
                _ => Select::Max,
            },
            policies: policies
                .iter()
                .map(|p| Policy {
                    percent: p.type_ == "Percent",
                    value: p.value,
                    period: Duration::from_secs(u64::try_from(p.period_seconds).unwrap_or(15)),
                })
                .collect(),
        }
    };
    let behavior = spec.behavior.as_ref();
    (
        parse(
            behavior.and_then(|b| b.scale_up.as_ref()),
            autoscaling::default_scale_up(),
        ),
        parse(
            behavior.and_then(|b| b.scale_down.as_ref()),
            autoscaling::default_scale_down(),
        ),
    )
}

/// What the target's `/scale` says.
struct Scale {
    path: String,
    spec_replicas: i32,
    status_replicas: i32,
    selector: String,
}

fn api_message(error: &crate::client::Error) -> String {
    match error {
        crate::client::Error::Api { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// Finds the `/scale` of the target and reads it.
async fn target_scale(
    client: &Client,
    namespace: &str,
    target: &CrossVersionObjectReference,
) -> Result<Scale, String> {
    let path = scale_path(client, namespace, target).await?;
    let scale = client
        .json(Method::GET, &path, "application/json", None)
        .await
        .map_err(|e| api_message(&e))?;
    let int = |pointer: &str| {
        scale
            .pointer(pointer)
            .and_then(Value::as_i64)
            .and_then(|n| i32::try_from(n).ok())
            .unwrap_or(0)
    };
    Ok(Scale {
        spec_replicas: int("/spec/replicas"),
        status_replicas: int("/status/replicas"),
        selector: str_at(&scale, "/status/selector").to_string(),
        path,
    })
}

/// The URL of the target's `/scale`: a built-in kind from the kinds table, any other kind
/// (a custom resource) from discovery.
async fn scale_path(
    client: &Client,
    namespace: &str,
    target: &CrossVersionObjectReference,
) -> Result<String, String> {
    let (kind, api_version) = (
        target.kind.as_str(),
        target.api_version.as_deref().unwrap_or(""),
    );
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let no_scale = || format!("{kind} {api_version} has no scale subresource");
    let builtin = if api_version.is_empty() {
        resources::RESOURCES
            .iter()
            .find(|r| r.kind == kind && r.has_subresource("scale"))
    } else {
        lookup_kind(api_version, kind)
    };
    if let Some(resource) = builtin {
        if !resource.has_subresource("scale") {
            return Err(no_scale());
        }
        return Ok(format!(
            "{}/scale",
            resource.item_path(Some(namespace), &target.name)
        ));
    }
    let no_match = || format!("no matches for kind {kind:?} in group {group:?}");
    if api_version.is_empty() {
        return Err(no_match());
    }
    let base = if api_version.contains('/') {
        format!("/apis/{api_version}")
    } else {
        format!("/api/{api_version}")
    };
    let list = match client
        .json(Method::GET, &base, "application/json", None)
        .await
    {
        Ok(list) => list,
        Err(e) if e.is_not_found() => return Err(no_match()),
        Err(e) => return Err(api_message(&e)),
    };
    let entries: Vec<&Value> = list
        .get("resources")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    let plural = entries
        .iter()
        .find(|r| r["kind"] == kind && !str_at(r, "/name").contains('/'))
        .map(|r| str_at(r, "/name").to_string())
        .ok_or_else(no_match)?;
    if !entries
        .iter()
        .any(|r| r["name"] == format!("{plural}/scale"))
    {
        return Err(no_scale());
    }
    Ok(format!(
        "{base}/namespaces/{namespace}/{plural}/{}/scale",
        target.name
    ))
}

/// The outcome of all metrics of one HPA.
struct Computed {
    /// The largest proposal and the metric it came from, or, when no count may be acted on,
    /// the `ScalingActive` condition saying why.
    outcome: Result<(i32, String), Condition>,
    /// Events to record: each failed metric's, and the summary when nothing is done.
    warnings: Vec<(String, String)>,
    statuses: Vec<Value>,
}

/// Kubernetes' `computeReplicasForMetrics`: each metric's proposal; the largest wins. If every
/// metric failed, or some failed and the others would scale down, nothing is done (a broken
/// metric must not shrink a workload).
async fn compute_metrics(
    client: &Client,
    namespace: &str,
    scale: &Scale,
    metrics: &[MetricSpec],
) -> Computed {
    if scale.selector.is_empty() {
        return Computed {
            outcome: Err(Condition::new(
                "ScalingActive",
                false,
                "InvalidSelector",
                "the HPA target's scale is missing a selector",
            )),
            warnings: vec![("SelectorRequired".into(), "selector is required".into())],
            statuses: Vec::new(),
        };
    }
    let mut facts = Facts::new(client, namespace, &scale.selector);
    let mut best: Option<(i32, String)> = None;
    let mut failures: Vec<MetricFailure> = Vec::new();
    let mut statuses = Vec::new();
    for metric in metrics {
        match compute_metric(&mut facts, scale, metric).await {
            Ok((replicas, name, status)) => {
                statuses.push(status);
                if best.as_ref().is_none_or(|(b, _)| replicas > *b) {
                    best = Some((replicas, name));
                }
            }
            Err(failure) => {
                statuses.push(json!({"type": metric.type_}));
                failures.push(failure);
            }
        }
    }
    let mut warnings: Vec<(String, String)> = (failures.iter())
        .map(|f| (f.reason.to_string(), f.error.clone()))
        .collect();
    let (total, invalid) = (metrics.len(), failures.len());
    let outcome = match (best, failures.first()) {
        (Some((replicas, name)), None) => Ok((replicas, name)),
        (Some((replicas, name)), Some(_)) if replicas >= scale.spec_replicas => {
            Ok((replicas, name))
        }
        (_, Some(first)) => {
            warnings.push((
                "FailedComputeMetricsReplicas".into(),
                format!(
                    "invalid metrics ({invalid} invalid out of {total}), first error is: {}",
                    first.error
                ),
            ));
            Err(Condition::new(
                "ScalingActive",
                false,
                first.reason,
                format!(
                    "the HPA was unable to compute the replica count: {}",
                    first.error
                ),
            ))
        }
        (None, None) => Err(Condition::new(
            "ScalingActive",
            false,
            "FailedGetResourceMetric",
            "the HPA was unable to compute the replica count: no metrics are specified",
        )),
    };
    Computed {
        outcome,
        warnings,
        statuses,
    }
}

/// Pods and samples, read once per sync and shared by the HPA's metrics.
struct Facts<'a> {
    client: &'a Client,
    namespace: &'a str,
    selector: &'a str,
    pods: Option<Vec<Value>>,
    resource_metrics: Option<Vec<Value>>,
}

impl<'a> Facts<'a> {
    fn new(client: &'a Client, namespace: &'a str, selector: &'a str) -> Self {
        Self {
            client,
            namespace,
            selector,
            pods: None,
            resource_metrics: None,
        }
    }

    fn query(&self) -> String {
        url::form_urlencoded::Serializer::new(String::new())
            .append_pair("labelSelector", self.selector)
            .finish()
    }

    async fn pods(&mut self) -> Result<&[Value], String> {
        if self.pods.is_none() {
            let path = format!(
                "/api/v1/namespaces/{}/pods?{}",
                self.namespace,
                self.query()
            );
            let list = (self
                .client
                .json(Method::GET, &path, "application/json", None)
                .await)
                .map_err(|e| {
                    format!(
                        "unable to get pods while calculating replica count: {}",
                        api_message(&e)
                    )
                })?;
            self.pods = Some(items(list));
        }
        Ok(self.pods.as_deref().unwrap_or_default())
    }

    async fn resource_metrics(&mut self) -> Result<&[Value], String> {
        if self.resource_metrics.is_none() {
            let path = format!(
                "/apis/{}/{}/namespaces/{}/pods?{}",
                crate::api::usage::GROUP,
                crate::api::usage::VERSION,
                self.namespace,
                self.query()
            );
            let list = (self
                .client
                .json(Method::GET, &path, "application/json", None)
                .await)
                .map_err(|e| {
                    format!(
                        "unable to fetch metrics from resource metrics API: {}",
                        api_message(&e)
                    )
                })?;
            self.resource_metrics = Some(items(list));
        }
        Ok(self.resource_metrics.as_deref().unwrap_or_default())
    }
}

fn items(list: Value) -> Vec<Value> {
    match list {
        Value::Object(mut map) => match map.remove("items") {
            Some(Value::Array(items)) => items,
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

fn millis_of(value: &Value) -> Option<i64> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let millis = Quantity::parse(&text).ok()?.millis();
    Some(i64::try_from(millis).unwrap_or(if millis < 0 { i64::MIN } else { i64::MAX }))
}

/// A quantity in thousandths, as Kubernetes writes a milli-quantity (`250m`, `2`).
fn milli_text(millis: i64) -> String {
    if millis % 1000 == 0 {
        (millis / 1000).to_string()
    } else {
        format!("{millis}m")
    }
}

fn time_of(value: &Value) -> Option<DateTime<Utc>> {
    value
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// `15s`, `1.5s`, `500ms` (metav1.Duration) as a duration; 0 when unreadable.
fn window_of(text: &str) -> Duration {
    let parsed = if let Some(ms) = text.strip_suffix("ms") {
        ms.parse::<f64>().ok().map(|ms| ms / 1000.0)
    } else {
        text.strip_suffix('s').and_then(|s| s.parse::<f64>().ok())
    };
    parsed
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or_default()
}

fn pod_facts(pod: &Value) -> PodFacts {
    let ready = pod
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .map(|c| {
            (
                c["status"] == "True",
                time_of(&c["lastTransitionTime"]).unwrap_or(DateTime::<Utc>::MIN_UTC),
            )
        });
    PodFacts {
        name: object::name(pod).to_string(),
        phase: str_at(pod, "/status/phase").to_string(),
        deleting: pod.pointer("/metadata/deletionTimestamp").is_some(),
        started: pod.pointer("/status/startTime").and_then(time_of),
        ready,
    }
}

/// Each pod's request of `resource`: the sum over its containers (or only `container`), every
/// one of which must have one.
fn requests_of(
    pods: &[Value],
    resource: &str,
    container: Option<&str>,
) -> Result<BTreeMap<String, i64>, CalcError> {
    let mut requests = BTreeMap::new();
    for pod in pods {
        let mut total = 0i64;
        let containers = (pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten())
        .chain(
            (pod.pointer("/spec/initContainers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten())
            .filter(|c| crate::api::pod_requests::is_sidecar_json(c)),
        )
        .filter(|c| container.is_none_or(|name| c["name"] == name));
        for c in containers {
            let request = c
                .pointer(&format!("/resources/requests/{resource}"))
                .and_then(millis_of)
                .ok_or_else(|| CalcError::MissingRequest {
                    resource: resource.into(),
                    container: str_at(c, "/name").into(),
                    pod: object::name(pod).into(),
                })?;
            total = total.saturating_add(request);
        }
        requests.insert(object::name(pod).to_string(), total);
    }
    Ok(requests)
}

/// Each pod's sample of `resource` from PodMetrics (summed over its containers, or only
/// `container`); a pod missing the figure for one of them has none.
fn resource_samples(
    metrics: &[Value],
    resource: &str,
    container: Option<&str>,
) -> BTreeMap<String, Sample> {
    let mut samples = BTreeMap::new();
    for item in metrics {
        let mut total = 0i64;
        let mut complete = true;
        let mut seen = false;
        for c in item
            .get("containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|c| container.is_none_or(|name| c["name"] == name))
        {
            seen = true;
            match c.pointer(&format!("/usage/{resource}")).and_then(millis_of) {
                Some(value) => total = total.saturating_add(value),
                None => complete = false,
            }
        }
        if !complete || !seen {
            continue;
        }
        samples.insert(
            object::name(item).to_string(),
            Sample {
                value: total,
                timestamp: time_of(&item["timestamp"]).unwrap_or_else(Utc::now),
                window: window_of(str_at(item, "/window")),
            },
        );
    }
    samples
}

fn target_millis(target: &MetricTarget, field: &str) -> Option<i64> {
    let quantity = match field {
        "averageValue" => target.average_value.as_ref(),
        _ => target.value.as_ref(),
    }?;
    millis_of(&json!(quantity.0))
}

/// One metric's proposal, name (for the reason of a rescale) and status.
async fn compute_metric(
    facts: &mut Facts<'_>,
    scale: &Scale,
    metric: &MetricSpec,
) -> Result<(i32, String, Value), MetricFailure> {
    let current = scale.spec_replicas;
    match metric.type_.as_str() {
        "Resource" | "ContainerResource" => {
            let (resource, container, target, reason) = match (&metric.resource, &metric.container_resource) {
                (Some(r), _) if metric.type_ == "Resource" => (r.name.clone(), None, r.target.clone(), "FailedGetResourceMetric"),
                (_, Some(c)) => (c.name.clone(), Some(c.container.clone()), c.target.clone(), "FailedGetContainerResourceMetric"),
                _ => {
                    return Err(MetricFailure {
                        reason: "FailedGetResourceMetric",
                        error: format!("the {} metric source is not set", metric.type_),
                    })
                }
            };
            let utilization = target.type_ == "Utilization";
            let fail = |error: String| MetricFailure {
                reason,
                error: if utilization {
                    format!("failed to get {resource} utilization: {error}")
                } else {
                    format!("failed to get {resource} usage: {error}")
                },
            };
            let metrics = facts.resource_metrics().await.map_err(fail)?.to_vec();
            let samples = resource_samples(&metrics, &resource, container.as_deref());
            if samples.is_empty() {
                return Err(fail(format!(
                    "unable to get metrics for resource {resource}: no metrics returned from resource metrics API"
                )));
            }
            let pods = facts.pods().await.map_err(fail)?;
            let pod_facts: Vec<PodFacts> = pods.iter().map(pod_facts).collect();
            let cpu = resource == "cpu";
            let now = Utc::now();
            let kind_name = if container.is_some() { "container resource" } else { "resource" };
            let (proposal, name) = if utilization {
                let percent = target.average_utilization.unwrap_or(autoscaling::DEFAULT_CPU_UTILIZATION as i32);
                let requests = requests_of(pods, &resource, container.as_deref()).map_err(|e| fail(e.to_string()))?;
                let proposal = replicas::utilization(current, percent, &pod_facts, &samples, &requests, cpu, now)
                    .map_err(|e| fail(e.to_string()))?;
                (proposal, format!("{resource} {kind_name} utilization (percentage of request)"))
            } else {
                let goal = target_millis(&target, "averageValue").unwrap_or(1);
                let proposal = replicas::average_value(current, goal, &pod_facts, &samples, cpu, now)
                    .map_err(|e| fail(e.to_string()))?;
                (proposal, format!("{resource} {kind_name}"))
            };
            let mut current_status = json!({"averageValue": milli_text(proposal.average)});
            if let Some(percent) = proposal.utilization {
                current_status["averageUtilization"] = json!(percent);
            }
            let status = if let Some(container) = container {
                json!({"type": "ContainerResource", "containerResource": {"name": resource, "container": container, "current": current_status}})
            } else {
                json!({"type": "Resource", "resource": {"name": resource, "current": current_status}})
            };
            Ok((proposal.replicas, name, status))
        }
        "Pods" => {
            let Some(source) = &metric.pods else {
                return Err(MetricFailure { reason: "FailedGetPodsMetric", error: "the Pods metric source is not set".into() });
            };
            let metric_name = source.metric.name.clone();
            let fail = |error: String| MetricFailure {
                reason: "FailedGetPodsMetric",
                error: format!("failed to get pods metric value: {error}"),
            };
            let path = format!(
                "/apis/custom.metrics.k8s.io/v1beta1/namespaces/{}/pods/*/{}?{}",
                facts.namespace,
                metric_name,
                facts.query()
            );
            let list = (facts.client.json(Method::GET, &path, "application/json", None).await)
                .map_err(|e| fail(format!("unable to get metric {metric_name}: {}", api_message(&e))))?;
            let samples: BTreeMap<String, Sample> = items(list)
                .iter()
                .filter_map(|item| {
                    Some((
                        str_at(item, "/describedObject/name").to_string(),
                        Sample {
                            value: millis_of(&item["value"])?,
                            timestamp: time_of(&item["timestamp"]).unwrap_or_else(Utc::now),
                            window: Duration::from_secs(item["windowSeconds"].as_u64().unwrap_or(0)),
                        },
                    ))
                })
                .collect();
            if samples.is_empty() {
                return Err(fail(format!("unable to get metric {metric_name}: no metrics returned from custom metrics API")));
            }
            let goal = target_millis(&source.target, "averageValue").unwrap_or(1);
            let pods = facts.pods().await.map_err(fail)?;
            let pod_facts: Vec<PodFacts> = pods.iter().map(pod_facts).collect();
            let proposal: Proposal = replicas::average_value(current, goal, &pod_facts, &samples, false, Utc::now())
                .map_err(|e| fail(e.to_string()))?;
            let status = json!({"type": "Pods", "pods": {"metric": {"name": metric_name},
                "current": {"averageValue": milli_text(proposal.average)}}});
            Ok((proposal.replicas, format!("pods metric {metric_name}"), status))
        }
        "Object" => {
            let Some(source) = &metric.object else {
                return Err(MetricFailure { reason: "FailedGetObjectMetric", error: "the Object metric source is not set".into() });
            };
            let metric_name = source.metric.name.clone();
            let described = &source.described_object;
            let fail = |error: String| MetricFailure {
                reason: "FailedGetObjectMetric",
                error: format!("failed to get object metric value: {error}"),
            };
            let plural = lookup_kind(described.api_version.as_deref().unwrap_or("v1"), &described.kind)
                .map(|r| r.plural)
                .ok_or_else(|| fail(format!("no matches for kind {:?}", described.kind)))?;
            let path = format!(
                "/apis/custom.metrics.k8s.io/v1beta1/namespaces/{}/{plural}/{}/{metric_name}",
                facts.namespace, described.name
            );
            let answer = (facts.client.json(Method::GET, &path, "application/json", None).await)
                .map_err(|e| fail(format!("unable to get metric {metric_name}: {}", api_message(&e))))?;
            let item = answer.get("items").and_then(|i| i.get(0)).cloned().unwrap_or(answer);
            let value = millis_of(&item["value"])
                .ok_or_else(|| fail(format!("unable to get metric {metric_name}: no value")))?;
            let (replicas, current_status) = if source.target.type_ == "AverageValue" {
                let goal = target_millis(&source.target, "averageValue").unwrap_or(1);
                let replicas = replicas::object_average(scale.status_replicas, value, goal);
                let per_pod = value / i64::from(scale.status_replicas.max(1));
                (replicas, json!({"averageValue": milli_text(per_pod)}))
            } else {
                let goal = target_millis(&source.target, "value").unwrap_or(1);
                let ready = if current == 0 {
                    0
                } else {
                    let pods = facts.pods().await.map_err(fail)?;
                    if pods.is_empty() {
                        return Err(fail(CalcError::NoPods.to_string()));
                    }
                    pods.iter()
                        .filter(|p| str_at(p, "/status/phase") == "Running" && pod_facts(p).ready.is_some_and(|r| r.0))
                        .count()
                };
                (replicas::object_value(current, value, goal, ready), json!({"value": milli_text(value)}))
            };
            let status = json!({"type": "Object", "object": {"describedObject": described, "metric": {"name": metric_name},
                "current": current_status}});
            Ok((replicas, format!("{} metric {metric_name}", described.kind), status))
        }
        "External" => Err(MetricFailure {
            reason: "FailedGetExternalMetric",
            error: "failed to get external metric: this cluster serves no external metrics API (external.metrics.k8s.io)".into(),
        }),
        other => Err(MetricFailure {
            reason: "InvalidMetricSourceType",
            error: format!("unknown metric source type {other:?}"),
        }),
    }
}
