//! Property tests: arbitrary JSON and arbitrary field values through every function that
//! takes user input before it reaches the store (defaults, validation, tables, selectors,
//! patches). The property is the one the API server relies on: these functions return (an
//! answer or an error) for every input, and never panic.

use proptest::prelude::*;
use serde_json::{Map, Value};

use super::patch;
use super::resources::RESOURCES;
use super::selector::{FieldSelector, LabelSelector};

/// Field names the object model looks at, so that generated objects reach deep code paths
/// instead of being rejected at the top.
const KEYS: &[&str] = &[
    "metadata",
    "name",
    "namespace",
    "labels",
    "annotations",
    "generateName",
    "ownerReferences",
    "spec",
    "status",
    "containers",
    "initContainers",
    "image",
    "ports",
    "containerPort",
    "resources",
    "requests",
    "limits",
    "cpu",
    "memory",
    "replicas",
    "selector",
    "matchLabels",
    "matchExpressions",
    "key",
    "operator",
    "values",
    "template",
    "strategy",
    "rollingUpdate",
    "maxSurge",
    "maxUnavailable",
    "updateStrategy",
    "partition",
    "type",
    "schedule",
    "timeZone",
    "jobTemplate",
    "activeDeadlineSeconds",
    "terminationGracePeriodSeconds",
    "livenessProbe",
    "httpGet",
    "port",
    "periodSeconds",
    "volumes",
    "volumeMounts",
    "hard",
    "used",
    "limits",
    "default",
    "defaultRequest",
    "max",
    "min",
    "maxLimitRequestRatio",
    "minAvailable",
    "maxUnavailable",
    "currentHealthy",
    "desiredHealthy",
    "disruptionsAllowed",
    "observedGeneration",
    "scopes",
    "priority",
    "mountPath",
    "emptyDir",
    "restartPolicy",
    "nodeName",
    "phase",
    "conditions",
    "clusterIP",
    "targetPort",
    "protocol",
    "rules",
    "host",
    "http",
    "paths",
    "path",
    "backend",
    "service",
    "number",
    "data",
    "stringData",
    "completions",
    "parallelism",
    "minReadySeconds",
    "progressDeadlineSeconds",
    "$patch",
    "$setElementOrder/containers",
    "$retainKeys",
    "x",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(KEYS).prop_map(str::to_string),
        1 => "\\PC{0,8}",
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        prop_oneof![
            Just(i64::MAX),
            Just(i64::MIN),
            Just(i32::MAX as i64 + 1),
            Just(-1i64),
            Just(0i64)
        ]
        .prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "\\PC{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("99999999T"),
            Just("1e400"),
            Just("25%"),
            Just("150%"),
            Just("-1"),
            Just("*/5 * * * *"),
            Just("web"),
            Just("Always"),
            Just("RollingUpdate"),
            Just("/x"),
            Just("TCP"),
            Just("a=b"),
        ]
        .prop_map(|s| Value::String(s.to_string())),
    ]
}

/// Arbitrary JSON, objects keyed mostly by field names the model knows.
fn json() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec((key(), inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Keys and type names of CRD schemas, so generated schemas reach the schema code's paths.
const SCHEMA_WORDS: &[&str] = &[
    "type",
    "object",
    "array",
    "string",
    "integer",
    "number",
    "boolean",
    "properties",
    "items",
    "additionalProperties",
    "required",
    "enum",
    "default",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "multipleOf",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "nullable",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
    "spec",
    "size",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "map",
    "set",
    "metadata",
];

/// Arbitrary JSON made of schema words.
fn schema_json() -> impl Strategy<Value = Value> {
    let word = proptest::sample::select(SCHEMA_WORDS);
    let leaf = prop_oneof![
        word.clone().prop_map(|w| Value::String(w.into())),
        any::<bool>().prop_map(Value::Bool),
        (-3i64..20).prop_map(Value::from),
        Just(Value::from(0.5)),
        Just(Value::String("^[a-z(]+$".into())),
    ];
    leaf.prop_recursive(6, 96, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec((word.clone().prop_map(String::from), inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn crd_schemas_and_custom_resources_take_any_json(schema in schema_json(), object in schema_json()) {
        let mut causes = Vec::new();
        let parsed = super::custom::Schema::parse(&schema, "schema", &mut causes);
        let mut object = object;
        let _ = parsed.prune(&mut object);
        parsed.apply_defaults(&mut object);
        let _ = parsed.validate(&object);
        let crd = serde_json::json!({"metadata": {"name": "a.b.c"}, "spec": {"group": "b.c",
            "names": {"plural": "a", "kind": "A"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                          "schema": {"openAPIV3Schema": schema},
                          "additionalPrinterColumns": [{"name": "X", "type": "string", "jsonPath": ".spec[0].size"}]}]}});
        let mut crd_causes = Vec::new();
        super::custom::crd::validate(&crd, &mut crd_causes);
        for kind in super::custom::CustomKind::all_of(&crd) {
            use super::table::TableConvertor;
            prop_assert_eq!(kind.cells(&object).len(), 2);
        }
    }

    #[test]
    fn every_kind_takes_any_json(object in json(), other in json()) {
        for resource in RESOURCES {
            let mut created = object.clone();
            resource.prepare_for_create(&mut created);
            let _ = resource.validate(&created);
            let mut updated = other.clone();
            resource.apply_defaults(&mut updated);
            let _ = resource.validate_update(&created, &updated);
            let table = resource.table(&[&created, &object], 7, true);
            let columns = table["columnDefinitions"].as_array().map_or(0, Vec::len);
            for row in table["rows"].as_array().into_iter().flatten() {
                prop_assert_eq!(row["cells"].as_array().map_or(0, Vec::len), columns);
            }
        }
    }

    #[test]
    fn sharing_admission_takes_any_json(policy in json(), object in json(), other in json()) {
        // Quotas: usage, scopes, charges and recounts of arbitrary objects.
        let quota = super::quota::Quota { object: &policy };
        for (group, plural) in [("", "pods"), ("", "services"), ("", "persistentvolumeclaims"), ("apps", "deployments")] {
            let usage = super::quota::usage_of(group, plural, &object);
            let _ = quota.tracks(plural, &object);
            let _ = quota.limited(&usage);
            let mut tally = super::quota::Tally::of(&quota);
            let _ = tally.tracks(plural, &object);
            if let Some(Ok(used)) = tally.charge(&usage, || quota.recount(|_, _| vec![other.clone()])) {
                tally.record(used);
            }
        }
        let _ = quota.recount(|_, _| vec![object.clone(), other.clone()]);
        // LimitRanges applied to an arbitrary pod.
        let mut pod = object.clone();
        let _ = super::limits::admit_pod(&[policy.clone(), other.clone()], &mut pod);
        // Disruption budgets: status and the eviction decision.
        let _ = super::disruption::status_of(&policy, &[&object, &other], 3);
        let _ = super::disruption::decide(&policy, &object);
        let _ = super::disruption::selector_of(&policy);
    }

    #[test]
    fn selectors_take_any_text(text in "\\PC{0,40}", object in json()) {
        if let Ok(selector) = LabelSelector::parse(&text) {
            let _ = selector.matches_object(&object);
        }
        if let Ok(selector) = FieldSelector::parse(&text) {
            let _ = selector.matches(&object);
        }
    }

    #[test]
    fn selector_shaped_text_never_panics(
        text in "([a-z./-]{0,6}(=|==|!=| in | notin |!)?(\\(|\\))?[a-z0-9,]{0,6}){0,4}"
    ) {
        let _ = LabelSelector::parse(&text);
        let _ = FieldSelector::parse(&text);
    }

    #[test]
    fn patches_take_any_json(target in json(), body in json()) {
        let mut merged = target.clone();
        patch::merge_patch(&mut merged, &body);
        let mut strategic = target.clone();
        patch::strategic_merge_patch(&mut strategic, &body);
        let mut patched = target.clone();
        if patch::json_patch(&mut patched, &body).is_err() {
            prop_assert_eq!(patched, target, "a failed JSON patch changes nothing");
        }
    }

    #[test]
    fn json_patch_operations_with_any_paths(
        target in json(),
        ops in proptest::collection::vec(
            ("(add|remove|replace|move|copy|test)", "(/[a-z0-9~-]{0,4}){0,3}", "(/[a-z0-9~-]{0,4}){0,3}", json()),
            0..4,
        ),
    ) {
        let body = Value::Array(
            ops.into_iter()
                .map(|(op, path, from, value)| serde_json::json!({"op": op, "path": path, "from": from, "value": value}))
                .collect(),
        );
        let mut patched = target.clone();
        if patch::json_patch(&mut patched, &body).is_err() {
            prop_assert_eq!(patched, target);
        }
    }
}
