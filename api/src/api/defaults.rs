//! Server-side defaults, applied at create (and to the fields an update may leave unset)
//! before validation: what a Kubernetes API server fills in, so clients such as kubectl find
//! the fields they read.

use rand::Rng;
use serde_json::{json, Value};

use super::object::{metadata_mut, now_rfc3339, set_at};

/// Fills the metadata every created object gets: a name from `generateName`, a uid, the
/// creation time and the first generation; `apiVersion` and `kind` as the URL says.
pub fn metadata_on_create(object: &mut Value, api_version: String, kind: &str) {
    let meta = metadata_mut(object);
    let has_name = meta
        .get("name")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    if !has_name {
        if let Some(prefix) = meta.get("generateName").and_then(Value::as_str) {
            let name = format!("{prefix}{}", random_suffix());
            meta.insert("name".into(), Value::String(name));
        }
    }
    meta.insert(
        "uid".into(),
        Value::String(uuid::Uuid::new_v4().to_string()),
    );
    meta.insert("creationTimestamp".into(), Value::String(now_rfc3339()));
    meta.insert("generation".into(), json!(1));
    meta.remove("deletionTimestamp");
    meta.remove("resourceVersion");
    if let Some(map) = object.as_object_mut() {
        map.insert("apiVersion".into(), Value::String(api_version));
        map.insert("kind".into(), Value::String(kind.into()));
    }
}

/// Sets each absent field to its default.
fn set_absent(object: &mut Value, defaults: impl IntoIterator<Item = (&'static str, Value)>) {
    for (pointer, value) in defaults {
        if object.pointer(pointer).is_none() {
            set_at(object, pointer, value);
        }
    }
}

pub fn replica_set(object: &mut Value) {
    set_absent(object, [("/spec/replicas", json!(1))]);
}

/// Parallelism 1, six retries; a Job with neither completions nor parallelism runs one pod
/// to completion.
pub fn job(object: &mut Value) {
    let parallel = object.pointer("/spec/parallelism").is_some();
    set_absent(
        object,
        [
            ("/spec/parallelism", json!(1)),
            ("/spec/backoffLimit", json!(6)),
            ("/spec/completionMode", json!("NonIndexed")),
        ],
    );
    if object.pointer("/spec/completions").is_none() && !parallel {
        set_at(object, "/spec/completions", json!(1));
    }
}

/// Rolling updates one node at a time, ten revisions kept.
pub fn daemon_set(object: &mut Value) {
    set_absent(
        object,
        [
            ("/spec/updateStrategy/type", json!("RollingUpdate")),
            ("/spec/revisionHistoryLimit", json!(10)),
        ],
    );
    if object
        .pointer("/spec/updateStrategy/type")
        .and_then(Value::as_str)
        == Some("RollingUpdate")
    {
        set_absent(
            object,
            [(
                "/spec/updateStrategy/rollingUpdate/maxUnavailable",
                json!(1),
            )],
        );
    }
}

/// Active, with the namespace controller's finalizer: it empties the namespace, then removes
/// it.
pub fn namespace(object: &mut Value) {
    set_absent(
        object,
        [
            ("/status/phase", json!("Active")),
            ("/spec/finalizers", json!(["kubernetes"])),
        ],
    );
}

/// `stringData` is write-only: it is merged into `data` (base64) as Kubernetes does; an
/// absent or empty `type` is `Opaque` (what `kubectl create secret generic` relies on).
pub fn secret(object: &mut Value) {
    use base64::Engine as _;
    let Some(map) = object.as_object_mut() else {
        return;
    };
    if map
        .get("type")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        map.insert("type".into(), json!("Opaque"));
    }
    let Some(Value::Object(strings)) = map.remove("stringData") else {
        return;
    };
    let data = map.entry("data").or_insert_with(|| json!({}));
    if let Some(data) = data.as_object_mut() {
        for (key, value) in strings {
            let text = value.as_str().unwrap_or_default().to_string();
            data.insert(
                key,
                json!(base64::engine::general_purpose::STANDARD.encode(text)),
            );
        }
    }
}

/// What kubectl reads back: the strategy, history limit and progress deadline.
pub fn deployment(object: &mut Value) {
    let defaults = [
        ("/spec/replicas", json!(1)),
        ("/spec/revisionHistoryLimit", json!(10)),
        ("/spec/progressDeadlineSeconds", json!(600)),
        ("/spec/strategy/type", json!("RollingUpdate")),
    ];
    for (pointer, value) in defaults {
        if object.pointer(pointer).is_none() {
            set_at(object, pointer, value);
        }
    }
    if object
        .pointer("/spec/strategy/type")
        .and_then(Value::as_str)
        == Some("RollingUpdate")
    {
        for (pointer, value) in [
            ("/spec/strategy/rollingUpdate/maxSurge", json!("25%")),
            ("/spec/strategy/rollingUpdate/maxUnavailable", json!("25%")),
        ] {
            if object.pointer(pointer).is_none() {
                set_at(object, pointer, value);
            }
        }
    }
}

pub fn pod(object: &mut Value) {
    let defaults = [
        ("/spec/restartPolicy", json!("Always")),
        ("/spec/terminationGracePeriodSeconds", json!(30)),
        ("/spec/dnsPolicy", json!("ClusterFirst")),
        ("/spec/schedulerName", json!("default-scheduler")),
        ("/spec/serviceAccountName", json!("default")),
        // As kube-apiserver: clients read it without checking (kubectl debug does).
        ("/spec/securityContext", json!({})),
        ("/status/phase", json!("Pending")),
        ("/status/qosClass", json!("BestEffort")),
    ];
    for (pointer, value) in defaults {
        if object.pointer(pointer).is_none() {
            set_at(object, pointer, value);
        }
    }
    for list in ["containers", "initContainers"] {
        let Some(containers) = object
            .pointer_mut(&format!("/spec/{list}"))
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        for container in containers.iter_mut().filter(|c| c.is_object()) {
            if container.get("imagePullPolicy").is_none() {
                set_at(container, "/imagePullPolicy", json!("IfNotPresent"));
            }
            if container.get("terminationMessagePath").is_none() {
                set_at(
                    container,
                    "/terminationMessagePath",
                    json!("/dev/termination-log"),
                );
            }
            if let Some(ports) = container.get_mut("ports").and_then(Value::as_array_mut) {
                for port in ports
                    .iter_mut()
                    .filter(|p| p.is_object() && p.get("protocol").is_none())
                {
                    set_at(port, "/protocol", json!("TCP"));
                }
            }
        }
    }
}

/// Five characters in Kubernetes' `generateName` alphabet (no vowels, no look-alikes).
pub fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::thread_rng();
    (0..5)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A StatefulSet's defaults, as the API server fills them (kubectl's `rollout status` reads
/// the update strategy and its partition).
pub fn stateful_set(object: &mut Value) {
    for (pointer, value) in [
        ("/spec/replicas", json!(1)),
        ("/spec/podManagementPolicy", json!("OrderedReady")),
        ("/spec/updateStrategy/type", json!("RollingUpdate")),
        ("/spec/revisionHistoryLimit", json!(10)),
        (
            "/spec/persistentVolumeClaimRetentionPolicy",
            json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
        ),
    ] {
        if object.pointer(pointer).is_none() {
            set_at(object, pointer, value);
        }
    }
    let rolling = object
        .pointer("/spec/updateStrategy/type")
        .and_then(Value::as_str)
        == Some("RollingUpdate");
    if rolling
        && object
            .pointer("/spec/updateStrategy/rollingUpdate/partition")
            .is_none()
    {
        set_at(
            object,
            "/spec/updateStrategy/rollingUpdate/partition",
            json!(0),
        );
    }
}

/// A ReplicationController without a selector selects its template's labels (and a template
/// without labels gets the selector's), as Kubernetes defaults them.
pub fn replication_controller(object: &mut Value) {
    if object.pointer("/spec/replicas").is_none() {
        set_at(object, "/spec/replicas", json!(1));
    }
    let selector = object
        .pointer("/spec/selector")
        .and_then(Value::as_object)
        .filter(|s| !s.is_empty())
        .cloned();
    let labels = object
        .pointer("/spec/template/metadata/labels")
        .and_then(Value::as_object)
        .filter(|l| !l.is_empty())
        .cloned();
    match (selector, labels) {
        (None, Some(labels)) => set_at(object, "/spec/selector", Value::Object(labels)),
        (Some(selector), None) if object.pointer("/spec/template").is_some() => set_at(
            object,
            "/spec/template/metadata/labels",
            Value::Object(selector),
        ),
        _ => {}
    }
}

/// A Service's defaults: type ClusterIP, no session affinity, TCP ports whose targetPort is
/// the port itself.
pub fn service(object: &mut Value) {
    for (pointer, value) in [
        ("/spec/type", json!("ClusterIP")),
        ("/spec/sessionAffinity", json!("None")),
        ("/spec/internalTrafficPolicy", json!("Cluster")),
    ] {
        if object.pointer(pointer).is_none() {
            set_at(object, pointer, value);
        }
    }
    let ports = object
        .pointer_mut("/spec/ports")
        .and_then(Value::as_array_mut);
    for port in ports.into_iter().flatten() {
        let Some(map) = port.as_object_mut() else {
            continue;
        };
        map.entry("protocol").or_insert(json!("TCP"));
        if !map.contains_key("targetPort") {
            let number = map.get("port").cloned().unwrap_or(Value::Null);
            map.insert("targetPort".into(), number);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_string_data_becomes_data() {
        let mut object = json!({"data": {"a": "eA=="}, "stringData": {"b": "hi"}});
        secret(&mut object);
        assert_eq!(
            object,
            json!({"data": {"a": "eA==", "b": "aGk="}, "type": "Opaque"})
        );
    }
}
