//! Pod-specific API behaviour: creation resets the status and mounts the ServiceAccount's
//! credentials (the ServiceAccount admission plugin), `binding` assigns a node,
//! deletion of a bound pod is graceful (the node agent stops it and finishes the deletion),
//! and `log` is answered by the agent that runs the pod.

use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::header::CONTENT_TYPE;
use http::StatusCode;
use serde_json::{json, Value};

use super::error::{ApiError, Result};
use super::request::Request;
use super::{json_response, ApiServer};
use crate::api::{disruption, object};
use crate::store::{revision_of, ObjectKey};

/// A new pod starts Pending with no observed state, whatever the client sent.
pub fn prepare_create(pod: &mut Value) {
    let qos = pod
        .pointer("/status/qosClass")
        .cloned()
        .unwrap_or(json!("BestEffort"));
    object::set_at(pod, "/status", json!({"phase": "Pending", "qosClass": qos}));
}

/// Where a pod finds its ServiceAccount credentials, as on Kubernetes.
pub const SERVICE_ACCOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// How long the token of the admitted volume asks to live: Kubernetes' 3607 s (an hour, and
/// a few seconds that tell it apart from a user's choice); the agent renews it at 80%.
const TOKEN_EXPIRATION_SECONDS: i64 = 3607;

/// Kubernetes' ServiceAccount admission: the pod runs as `spec.serviceAccountName`
/// (`default` unless named; the deprecated `serviceAccount` mirrors it) and, unless the pod
/// or its ServiceAccount sets `automountServiceAccountToken: false`, gets the projected
/// volume `kube-api-access-<suffix>` (a bound token, the cluster CA from the
/// `kube-root-ca.crt` ConfigMap, its namespace) mounted read-only at
/// [`SERVICE_ACCOUNT_PATH`] in every container that mounts nothing there itself. The agent
/// makes the volume from the spec as it makes any projected volume.
pub fn admit_service_account(server: &ApiServer, namespace: &str, pod: &mut Value) {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let account = ["serviceAccountName", "serviceAccount"]
        .iter()
        .find_map(|field| spec.get(*field).and_then(Value::as_str))
        .filter(|name| !name.is_empty())
        .unwrap_or("default")
        .to_string();
    spec.insert("serviceAccountName".into(), json!(account));
    spec.insert("serviceAccount".into(), json!(account));
    let automount = match spec
        .get("automountServiceAccountToken")
        .and_then(Value::as_bool)
    {
        Some(set) => set,
        None => server
            .store
            .get(&ObjectKey::new("serviceaccounts", namespace, &account))
            .ok()
            .flatten()
            .and_then(|sa| {
                sa.get("automountServiceAccountToken")
                    .and_then(Value::as_bool)
            })
            .unwrap_or(true),
    };
    if !automount {
        return;
    }
    let mounted_there = |container: &Value| {
        container
            .get("volumeMounts")
            .and_then(Value::as_array)
            .is_some_and(|mounts| {
                mounts.iter().any(|m| {
                    m.get("mountPath").and_then(Value::as_str) == Some(SERVICE_ACCOUNT_PATH)
                })
            })
    };
    let lists = ["initContainers", "containers"];
    let wanting = lists
        .iter()
        .filter_map(|list| spec.get(*list).and_then(Value::as_array))
        .flatten()
        .any(|c| c.is_object() && !mounted_there(c));
    if !wanting {
        return;
    }
    let volume = format!(
        "kube-api-access-{}",
        shoal_api::api::defaults::random_suffix()
    );
    let volumes = spec.entry("volumes").or_insert_with(|| json!([]));
    let Some(volumes) = volumes.as_array_mut() else {
        // Not a list: validation names it.
        return;
    };
    volumes.push(json!({
        "name": volume,
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": TOKEN_EXPIRATION_SECONDS, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace",
                    "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        },
    }));
    for list in lists {
        let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for container in containers
            .iter_mut()
            .filter(|c| c.is_object() && !mounted_there(c))
        {
            let mounts = container
                .as_object_mut()
                .map(|c| c.entry("volumeMounts").or_insert_with(|| json!([])));
            if let Some(mounts) = mounts.and_then(Value::as_array_mut) {
                mounts.push(json!({
                    "name": volume, "mountPath": SERVICE_ACCOUNT_PATH, "readOnly": true,
                }));
            }
        }
    }
}

/// `POST pods/{name}/binding`: sets `spec.nodeName` once, and the PodScheduled condition.
pub async fn bind(server: &Arc<ApiServer>, request: &Request) -> Result<Response> {
    let binding = request.decode_body()?;
    let node = object::str_at(&binding, "/target/name").to_string();
    if node.is_empty() {
        return Err(ApiError::Invalid {
            kind: "Binding".into(),
            name: request.name().into(),
            causes: vec![crate::api::validation::Cause::required("target.name")],
        });
    }
    for _attempt in 0..16 {
        let pod = server.get_object(&request.key())?;
        let current = object::str_at(&pod, "/spec/nodeName");
        if !current.is_empty() {
            return Err(ApiError::Conflict {
                resource: "pods".into(),
                name: request.name().into(),
                why: format!(
                    "pod {} is already assigned to node {current:?}",
                    request.name()
                ),
            });
        }
        if pod.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(ApiError::Conflict {
                resource: "pods".into(),
                name: request.name().into(),
                why: "the pod is being deleted".into(),
            });
        }
        let mut bound = pod.clone();
        object::set_at(&mut bound, "/spec/nodeName", json!(node));
        let condition = json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": object::now_rfc3339()});
        let conditions = bound
            .pointer_mut("/status/conditions")
            .and_then(Value::as_array_mut);
        match conditions {
            Some(list) => {
                list.retain(|c| c["type"] != "PodScheduled");
                list.push(condition);
            }
            None => object::set_at(&mut bound, "/status/conditions", json!([condition])),
        }
        match server
            .store
            .update(request.key(), bound, revision_of(&pod))
            .await
        {
            Ok(_) => {
                let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201});
                return Ok(json_response(StatusCode::CREATED, &status));
            }
            Err(crate::store::Error::Conflict { .. }) => continue,
            Err(e) => return Err(ApiError::from_store(e, "pods", request.name())),
        }
    }
    Err(ApiError::Conflict {
        resource: "pods".into(),
        name: request.name().into(),
        why: "too many concurrent writers".into(),
    })
}

/// Deletes a pod: at once when it is not on a node or the grace period is zero; otherwise it
/// is marked with a deletion timestamp and its agent stops it and removes it.
pub async fn delete(
    server: &Arc<ApiServer>,
    request: &Request,
    pod: Value,
    grace: Option<i64>,
    precondition: Option<u64>,
) -> Result<Response> {
    let bound = !object::str_at(&pod, "/spec/nodeName").is_empty();
    if !bound || grace == Some(0) {
        return server.delete_now(request, precondition).await;
    }
    let stored = mark_for_deletion(server, request.key(), pod, grace).await?;
    Ok(json_response(StatusCode::OK, &stored))
}

/// The longest grace period a delete may ask for (Kubernetes' int32 bound on durations).
pub const MAX_GRACE_SECONDS: i64 = i32::MAX as i64;

/// Sets `deletionTimestamp` (now + grace) and `deletionGracePeriodSeconds`; a later delete
/// can only shorten the grace period.
pub async fn mark_for_deletion(
    server: &ApiServer,
    key: ObjectKey,
    pod: Value,
    grace: Option<i64>,
) -> Result<Value> {
    let default_grace = pod
        .pointer("/spec/terminationGracePeriodSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(30);
    // Clamped so that now + grace is a time every client can read back (a year of five
    // digits is not RFC 3339); a Wasm pod stops at once anyway.
    let grace = grace.unwrap_or(default_grace).clamp(0, MAX_GRACE_SECONDS);
    let existing = pod
        .pointer("/metadata/deletionGracePeriodSeconds")
        .and_then(Value::as_i64);
    if existing.is_some_and(|e| e <= grace) {
        return Ok(pod);
    }
    let mut marked = pod.clone();
    let deadline = chrono::TimeDelta::try_seconds(grace)
        .and_then(|grace| chrono::Utc::now().checked_add_signed(grace))
        .unwrap_or_else(chrono::Utc::now);
    let meta = object::metadata_mut(&mut marked);
    meta.insert(
        "deletionTimestamp".into(),
        json!(deadline.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
    );
    meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
    let name = key.name.clone();
    server
        .store
        .update(key, marked, revision_of(&pod))
        .await
        .map_err(|e| ApiError::from_store(e, "pods", &name))
}

/// `GET pods/{name}/log`: streams the container's log from the agent of the pod's node.
pub async fn log(server: &Arc<ApiServer>, request: &Request) -> Result<Response> {
    let pod = server.get_object(&request.key())?;
    let name = request.name();
    let mut containers = Vec::new();
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        for c in pod
            .pointer(&format!("/spec/{list}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            containers.push(object::str_at(c, "/name").to_string());
        }
    }
    let default = pod
        .pointer("/spec/containers/0/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let container = request
        .query
        .get("container")
        .map(str::to_string)
        .unwrap_or(default);
    if !containers.contains(&container) {
        return Err(ApiError::BadRequest(format!(
            "container {container} is not valid for pod {name}"
        )));
    }
    let node_name = object::str_at(&pod, "/spec/nodeName");
    if node_name.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: the pod is not yet scheduled to a node"
        )));
    }
    let endpoint = super::nodes::agent_of(server, node_name)?;
    let query = {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for key in [
            "follow",
            "tailLines",
            "timestamps",
            "previous",
            "limitBytes",
            "sinceSeconds",
            "sinceTime",
        ] {
            if let Some(value) = request.query.get(key) {
                query.append_pair(key, value);
            }
        }
        query.finish()
    };
    let url = format!(
        "https://{endpoint}/containerLogs/{}/{name}/{container}?{query}",
        request.namespace()
    );
    let uri: http::Uri = url
        .parse()
        .map_err(|e| ApiError::Internal(format!("bad agent URL {url}: {e}")))?;
    let answer = server.agents.get(uri).await.map_err(|e| {
        ApiError::Internal(format!(
            "cannot reach the agent of node {node_name} at {endpoint}: {e}"
        ))
    })?;
    if answer.status() != StatusCode::OK {
        return Err(super::nodes::agent_refusal(answer, node_name).await);
    }
    Ok((
        [(CONTENT_TYPE, "text/plain")],
        Body::new(answer.into_body()),
    )
        .into_response())
}

/// `pods/{name}[:{port}]/proxy/{path}`: forwards the request to the pod's port through the
/// agent of its node, and streams the answer back.
pub async fn proxy(server: &Arc<ApiServer>, request: &Request) -> Result<Response> {
    let (name, port) = match request.name().split_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (request.name(), None),
    };
    let pod = server.get_object(&ObjectKey::new("pods", request.namespace(), name))?;
    let port: u16 = match port {
        Some(port) => match port.parse() {
            Ok(number) => number,
            // A named port: look it up among the containers' ports.
            Err(_) => named_port(&pod, port).ok_or_else(|| {
                ApiError::BadRequest(format!("pod {name} has no port named {port:?}"))
            })?,
        },
        None => pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .and_then(|cs| {
                cs.iter()
                    .find_map(|c| c.pointer("/ports/0/containerPort")?.as_u64())
            })
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(80),
    };
    let node_name = object::str_at(&pod, "/spec/nodeName");
    if node_name.is_empty() || object::str_at(&pod, "/status/phase") != "Running" {
        return Err(ApiError::ServiceUnavailable(format!(
            "pod {name} is not running"
        )));
    }
    let endpoint = super::nodes::agent_of(server, node_name)?;
    let rest = request.path.rest.as_deref().unwrap_or("");
    let query = request
        .raw_query
        .as_deref()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    // The agent's route for the pod root has no trailing slash.
    let rest = if rest.is_empty() {
        String::new()
    } else {
        format!("/{rest}")
    };
    let url = format!(
        "https://{endpoint}/proxy/{}/{name}/{port}{rest}{query}",
        request.namespace()
    );
    let mut forwarded = http::Request::builder()
        .method(request.method.clone())
        .uri(&url);
    for (header, value) in &request.headers {
        if header != http::header::HOST {
            forwarded = forwarded.header(header, value);
        }
    }
    let forwarded = forwarded
        .body(Body::from(request.body.clone()))
        .map_err(|e| ApiError::BadRequest(format!("cannot forward to {url}: {e}")))?;
    let answer = server.agents.request(forwarded).await.map_err(|e| {
        ApiError::ServiceUnavailable(format!(
            "cannot reach the agent of node {node_name} at {endpoint}: {e}"
        ))
    })?;
    Ok(answer.map(Body::new).into_response())
}

fn named_port(pod: &Value, name: &str) -> Option<u16> {
    let containers = pod.pointer("/spec/containers")?.as_array()?;
    containers
        .iter()
        .flat_map(|c| {
            c.get("ports")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .and_then(|p| u16::try_from(p).ok())
}

/// `POST pods/{name}/eviction` (`kubectl drain`): a graceful delete of the pod, answered with
/// a Success Status. There are no PodDisruptionBudgets yet, so an eviction is never refused.
pub async fn evict(server: &Arc<ApiServer>, request: &Request) -> Result<Response> {
    let eviction = request.decode_body()?;
    let grace = eviction
        .pointer("/deleteOptions/gracePeriodSeconds")
        .and_then(Value::as_i64);
    let pod = server.get_object(&request.key())?;
    take_disruption(server, &pod).await?;
    delete(server, request, pod, grace, None).await?;
    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201});
    Ok(json_response(StatusCode::CREATED, &status))
}

/// Takes one disruption from the budget that selects `pod` (Kubernetes' eviction rule): 429
/// when the budget allows none, 500 when several budgets select it. The decrement is a
/// compare-and-swap of the budget's status, so concurrent evictions never take more than it
/// allows; the disruption controller recounts from the pods afterwards.
async fn take_disruption(server: &ApiServer, pod: &Value) -> Result<()> {
    const BUDGETS: &str = "poddisruptionbudgets.policy";
    let namespace = object::namespace(pod);
    for _attempt in 0..16 {
        let budgets = server
            .store
            .list(BUDGETS, Some(namespace))
            .map_err(|e| ApiError::from_store(e, BUDGETS, ""))?;
        let selecting: Vec<&Value> = budgets
            .objects
            .iter()
            .filter(|b| disruption::selector_of(b).is_some_and(|s| s.matches_object(pod)))
            .collect();
        let budget = match selecting.as_slice() {
            [] => return Ok(()),
            [budget] => *budget,
            _ => {
                return Err(ApiError::Internal(
                    "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.".into(),
                ))
            }
        };
        match disruption::decide(budget, pod) {
            disruption::Eviction::Free => return Ok(()),
            disruption::Eviction::Refuse(why) => return Err(ApiError::TooManyRequests(why)),
            disruption::Eviction::Take => {}
        }
        let mut taken = budget.clone();
        let allowed = budget
            .pointer("/status/disruptionsAllowed")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        object::set_at(&mut taken, "/status/disruptionsAllowed", json!(allowed - 1));
        object::set_at(
            &mut taken,
            &format!("/status/disruptedPods/{}", object::name(pod)),
            json!(object::now_rfc3339()),
        );
        let key = ObjectKey::new(BUDGETS, namespace, object::name(budget));
        match server.store.update(key, taken, revision_of(budget)).await {
            Ok(_) => return Ok(()),
            Err(crate::store::Error::Conflict { .. }) => continue,
            Err(e) => return Err(ApiError::from_store(e, BUDGETS, object::name(budget))),
        }
    }
    Err(ApiError::TooManyRequests(
        "too many concurrent evictions; try again".into(),
    ))
}
