//! The two APIs of Events: `core/v1` (how Shoal stores them, and what `kubectl get events`
//! and `kubectl events` read) and `events.k8s.io/v1` (what kube-rs's `Recorder`, client-go's
//! new event broadcaster and kube-scheduler write). Both are views of the same objects, as on
//! Kubernetes; these functions convert between them field by field, following Kubernetes'
//! conversion (`pkg/apis/events/v1/conversion.go`): `regarding` is `involvedObject`, `note` is
//! `message`, `reportingController` is `reportingComponent`, and the `deprecated…` fields are
//! the core fields of the same names.

use serde_json::{Map, Value};

/// (events.k8s.io/v1 name, core/v1 name) of the fields that differ only by name.
const RENAMED: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

/// An events.k8s.io/v1 Event as the core/v1 Event it is stored as.
pub fn to_core(event: Value) -> Value {
    rename(event, |name| {
        RENAMED
            .iter()
            .find(|(v1, _)| *v1 == name)
            .map(|(_, core)| *core)
    })
}

/// A stored (core/v1) Event as events.k8s.io/v1 shows it.
pub fn to_events_v1(event: &Value) -> Value {
    let mut converted = rename(event.clone(), |name| {
        RENAMED
            .iter()
            .find(|(_, core)| *core == name)
            .map(|(v1, _)| *v1)
    });
    if let Some(map) = converted.as_object_mut() {
        map.insert(
            "apiVersion".into(),
            Value::String("events.k8s.io/v1".into()),
        );
    }
    converted
}

fn rename(event: Value, new_name: impl Fn(&str) -> Option<&'static str>) -> Value {
    let Value::Object(fields) = event else {
        return event;
    };
    let renamed: Map<String, Value> = fields
        .into_iter()
        .map(|(name, value)| match new_name(&name) {
            Some(new) => (new.to_string(), value),
            None => (name, value),
        })
        .collect();
    Value::Object(renamed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_two_views_convert_both_ways() {
        let v1 = json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e", "namespace": "default"},
            "eventTime": "2026-12-05T10:00:00.000000Z", "reason": "Scaled", "type": "Normal",
            "action": "Scale", "note": "scaled up", "reportingController": "shoal.dev/op",
            "reportingInstance": "op-1", "regarding": {"kind": "Deployment", "name": "web"},
            "deprecatedCount": 2,
        });
        let core = to_core(v1.clone());
        assert_eq!(core["message"], "scaled up");
        assert_eq!(core["involvedObject"]["name"], "web");
        assert_eq!(core["reportingComponent"], "shoal.dev/op");
        assert_eq!(core["count"], 2);
        assert!(core.get("note").is_none() && core.get("regarding").is_none());
        let mut stored = core.clone();
        stored["apiVersion"] = json!("v1");
        assert_eq!(to_events_v1(&stored), v1);
    }
}
