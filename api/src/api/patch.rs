//! The patch formats kubectl sends: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and
//! strategic merge patch (merge patch plus Kubernetes' list merge keys and `$` directives).

use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatchError {
    #[error("the patch is not valid JSON: {0}")]
    Decode(String),
    #[error("json patch operation {index} ({op}): {why}")]
    Operation {
        index: usize,
        op: String,
        why: String,
    },
}

/// RFC 7386: objects merge recursively, `null` deletes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let target = target.as_object_mut().expect("made an object above");
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// The merge key of a list field, as Kubernetes' types declare it (`patchMergeKey`).
fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets" => "name",
        "volumeMounts" => "mountPath",
        "ports" => "containerPort",
        "conditions" => "type",
        "ownerReferences" => "uid",
        "tolerations" | "finalizers" => return None,
        _ => return None,
    })
}

/// Strategic merge patch: like a merge patch, but lists with a merge key merge element by
/// element, and the directives `$patch`, `$setElementOrder/`, `$retainKeys` and
/// `$deleteFromPrimitiveList/` are honoured.
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replacement = Value::Object(patch.clone());
        strip_directives(&mut replacement);
        *target = replacement;
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let target = target.as_object_mut().expect("made an object above");
    if let Some(keep) = patch.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        target.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(remove)) =
                (target.get_mut(field), value.as_array())
            {
                list.retain(|item| !remove.contains(item));
            }
            continue;
        }
        if key.starts_with('$') {
            continue;
        }
        if value.is_null() {
            target.remove(key);
            continue;
        }
        match (value, merge_key(key)) {
            (Value::Array(items), Some(merge_key)) => {
                let existing = target.entry(key.clone()).or_insert(Value::Array(vec![]));
                merge_list(existing, items, merge_key);
            }
            (Value::Array(_), None) => {
                let mut replacement = value.clone();
                strip_directives(&mut replacement);
                target.insert(key.clone(), replacement);
            }
            _ => strategic_merge_patch(target.entry(key.clone()).or_insert(Value::Null), value),
        }
    }
}

fn merge_list(existing: &mut Value, patch_items: &[Value], merge_key: &str) {
    if !existing.is_array() {
        *existing = Value::Array(vec![]);
    }
    let list = existing.as_array_mut().expect("made an array above");
    for item in patch_items {
        let Some(key_value) = item.get(merge_key) else {
            continue;
        };
        let position = list
            .iter()
            .position(|e| e.get(merge_key) == Some(key_value));
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (position, delete) {
            (Some(i), true) => {
                list.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => strategic_merge_patch(&mut list[i], item),
            (None, false) => {
                let mut added = item.clone();
                strip_directives(&mut added);
                list.push(added);
            }
        }
    }
}

fn strip_directives(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|k, _| !k.starts_with('$'));
            map.values_mut().for_each(strip_directives);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_directives),
        _ => {}
    }
}

/// RFC 6902 JSON patch (the `json-patch` crate). Atomic: on any failing operation the target
/// is unchanged.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    if !patch.is_array() {
        return Err(PatchError::Decode("a JSON patch must be an array".into()));
    }
    let operations: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| PatchError::Decode(e.to_string()))?;
    // Applied to a copy, one operation at a time, without the crate's undo: its undo of a
    // `move` can itself fail, and json-patch 5 then panics (`unreachable!`). The copy is simply
    // dropped when an operation fails.
    let mut patched = target.clone();
    for (index, operation) in operations.iter().enumerate() {
        let failed = |why: String| PatchError::Operation {
            index,
            op: operation_name(operation).to_string(),
            why,
        };
        if let Some(path) = removes_past_the_end(&patched, operation) {
            // json-patch 5 pops the last element for `-` and panics on an empty array; RFC 6901
            // says `-` names the element after the last, which does not exist, and Kubernetes
            // refuses it.
            return Err(failed(format!(
                "\"-\" names no element to remove (path {path:?})"
            )));
        }
        json_patch::patch_unsafe(&mut patched, std::slice::from_ref(operation))
            .map_err(|e| failed(format!("{} (path {:?})", e.kind, e.path.as_str())))?;
    }
    *target = patched;
    Ok(())
}

fn operation_name(operation: &json_patch::PatchOperation) -> &'static str {
    use json_patch::PatchOperation::*;
    match operation {
        Add(_) => "add",
        Remove(_) => "remove",
        Replace(_) => "replace",
        Move(_) => "move",
        Copy(_) => "copy",
        Test(_) => "test",
    }
}

/// The path of a `remove` (or a `move`'s `from`) whose last token is `-` under an array.
fn removes_past_the_end<'a>(
    document: &Value,
    operation: &'a json_patch::PatchOperation,
) -> Option<&'a str> {
    let removed = match operation {
        json_patch::PatchOperation::Remove(op) => &op.path,
        json_patch::PatchOperation::Move(op) => &op.from,
        _ => return None,
    };
    let (parent, last) = removed.split_back()?;
    let under_array = document
        .pointer(parent.as_str())
        .is_some_and(Value::is_array);
    (under_array && last.decoded() == "-").then(|| removed.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_deletes_with_null() {
        let mut v = json!({"metadata": {"labels": {"a": "1", "team": "x"}}});
        merge_patch(
            &mut v,
            &json!({"metadata": {"labels": {"team": null, "b": "2"}}}),
        );
        assert_eq!(v, json!({"metadata": {"labels": {"a": "1", "b": "2"}}}));
    }

    #[test]
    fn strategic_merge_by_name_and_directives() {
        let mut v = json!({"spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "2"}], "tolerations": [{"key": "x"}]}});
        let patch = json!({"spec": {
            "$setElementOrder/containers": [{"name": "a"}],
            "containers": [{"name": "a", "image": "3"}, {"$patch": "delete", "name": "b"}],
            "tolerations": null
        }});
        strategic_merge_patch(&mut v, &patch);
        assert_eq!(
            v,
            json!({"spec": {"containers": [{"name": "a", "image": "3"}]}})
        );
    }

    #[test]
    fn json_patch_is_all_or_nothing() {
        let mut v = json!({"spec": {"template": 1}, "metadata": {"annotations": {"a": "b"}}});
        json_patch(&mut v, &json!([{"op": "replace", "path": "/spec/template", "value": 2}, {"op": "add", "path": "/metadata/annotations/c", "value": "d"}])).unwrap();
        assert_eq!(
            v,
            json!({"spec": {"template": 2}, "metadata": {"annotations": {"a": "b", "c": "d"}}})
        );
        let before = v.clone();
        let err = json_patch(&mut v, &json!([{"op": "remove", "path": "/spec/template"}, {"op": "remove", "path": "/nope/x"}])).unwrap_err();
        assert!(matches!(err, PatchError::Operation { index: 1, .. }));
        assert_eq!(v, before);
        // The root path names the whole document.
        json_patch(&mut v, &json!([{"op": "test", "path": "", "value": before}, {"op": "replace", "path": "", "value": {"a": 1}}])).unwrap();
        assert_eq!(v, json!({"a": 1}));
        let err = json_patch(&mut v, &json!([{"op": "frobnicate", "path": "/a"}])).unwrap_err();
        assert!(matches!(err, PatchError::Decode(_)), "{err}");
        let err = json_patch(&mut v, &json!({"op": "add"})).unwrap_err();
        assert!(matches!(err, PatchError::Decode(_)), "{err}");
    }

    /// Inputs on which json-patch 5's own `patch` panics: an undo that cannot be undone, and
    /// `-` (past the end) removed from an empty array.
    #[test]
    fn json_patch_refuses_what_the_crate_would_panic_on() {
        let mut v = json!({"": null});
        let err = json_patch(
            &mut v,
            &json!([{"op": "move", "from": "/", "path": ""}, {"op": "add", "path": "/", "value": 1}]),
        )
        .unwrap_err();
        assert!(
            matches!(err, PatchError::Operation { index: 1, .. }),
            "{err}"
        );
        assert_eq!(v, json!({"": null}));
        for (document, operation) in [
            (json!({"a": []}), json!({"op": "remove", "path": "/a/-"})),
            (json!({"a": [1]}), json!({"op": "remove", "path": "/a/-"})),
            (
                json!({"a": []}),
                json!({"op": "move", "from": "/a/-", "path": "/b"}),
            ),
        ] {
            let mut patched = document.clone();
            let err = json_patch(&mut patched, &json!([operation])).unwrap_err();
            assert!(
                matches!(&err, PatchError::Operation { index: 0, op, why } if why.contains("\"-\"") && (op == "remove" || op == "move")),
                "{err}"
            );
            assert_eq!(patched, document);
        }
        // `-` is an ordinary key in an object, and `add` to `-` appends.
        let mut v = json!({"-": 1, "a": [1]});
        json_patch(
            &mut v,
            &json!([{"op": "remove", "path": "/-"}, {"op": "add", "path": "/a/-", "value": 2}]),
        )
        .unwrap();
        assert_eq!(v, json!({"a": [1, 2]}));
    }
}
