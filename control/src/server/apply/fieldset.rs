//! Field sets: which fields of an object a manager owns, as Kubernetes' structured merge
//! names them (`managedFields[].fieldsV1`). A path is a list of elements: `f:name` (a field
//! of an object or a key of a map), `k:{"name":"app"}` (the element of a keyed list with these
//! keys), `v:"x"` (the element of a set list); a path ending in `.` is the list element
//! itself. Lists are keyed, sets or atomic as Kubernetes' schemas say
//! (`x-kubernetes-list-type`, `x-kubernetes-list-map-keys`); an atomic list is one field.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::schema::{ListType, Node};

/// One path into an object.
pub type Path = Vec<String>;

/// A set of paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet(pub BTreeSet<Path>);

/// The marker of a list element (or object) itself being owned.
const ITSELF: &str = ".";

impl FieldSet {
    /// Every field set in `object` (the fields below `skip` left out at the top level).
    pub fn of(object: &Value, schema: Node, skip: &[&[&str]]) -> Self {
        let mut set = FieldSet::default();
        collect(object, schema, &mut Vec::new(), &mut set.0);
        set.0.retain(|path| {
            !skip.iter().any(|prefix| {
                prefix.len() <= path.len()
                    && prefix
                        .iter()
                        .zip(path)
                        .all(|(wanted, element)| element == &format!("f:{wanted}"))
            })
        });
        set
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn union(&self, other: &FieldSet) -> FieldSet {
        FieldSet(self.0.union(&other.0).cloned().collect())
    }

    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        FieldSet(self.0.difference(&other.0).cloned().collect())
    }

    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        FieldSet(self.0.intersection(&other.0).cloned().collect())
    }

    /// The `fieldsV1` JSON form.
    pub fn to_fields_v1(&self) -> Value {
        let mut root = Map::new();
        for path in &self.0 {
            let mut node = &mut root;
            for element in path {
                node = node
                    .entry(element.clone())
                    .or_insert_with(|| Value::Object(Map::new()))
                    .as_object_mut()
                    .expect("every node is an object");
            }
        }
        Value::Object(root)
    }

    /// Reads the `fieldsV1` JSON form; anything that is not an object of objects is empty.
    pub fn from_fields_v1(value: &Value) -> FieldSet {
        fn walk(node: &Map<String, Value>, prefix: &mut Path, out: &mut BTreeSet<Path>) {
            for (element, child) in node {
                prefix.push(element.clone());
                match child.as_object() {
                    Some(children) if !children.is_empty() => walk(children, prefix, out),
                    _ => {
                        out.insert(prefix.clone());
                    }
                }
                prefix.pop();
            }
        }
        let mut out = BTreeSet::new();
        if let Some(root) = value.as_object() {
            walk(root, &mut Vec::new(), &mut out);
        }
        FieldSet(out)
    }
}

fn collect(value: &Value, schema: Node, prefix: &mut Path, out: &mut BTreeSet<Path>) {
    let Value::Object(object) = value else {
        out.insert(prefix.clone());
        return;
    };
    if object.is_empty() && !prefix.is_empty() {
        out.insert(prefix.clone());
        return;
    }
    for (name, child) in object {
        let child_schema = schema.field(name);
        prefix.push(format!("f:{name}"));
        match child {
            Value::Array(items) => collect_list(items, child_schema, prefix, out),
            Value::Object(_) => collect(child, child_schema, prefix, out),
            _ => {
                out.insert(prefix.clone());
            }
        }
        prefix.pop();
    }
}

fn collect_list(items: &[Value], schema: Node, prefix: &mut Path, out: &mut BTreeSet<Path>) {
    match schema.list_type() {
        ListType::Map(keys) => {
            for item in items {
                let Some(key) = element_key(item, &keys) else {
                    // An element without its keys cannot be tracked alone: the list is.
                    out.insert(prefix.clone());
                    return;
                };
                prefix.push(key);
                prefix.push(ITSELF.into());
                out.insert(prefix.clone());
                prefix.pop();
                collect(item, schema.items(), prefix, out);
                prefix.pop();
            }
        }
        ListType::Set => {
            for item in items {
                prefix.push(format!("v:{item}"));
                out.insert(prefix.clone());
                prefix.pop();
            }
        }
        ListType::Atomic => {
            out.insert(prefix.clone());
        }
    }
}

/// `k:{"name":"app"}` for an element of a list keyed by `keys` (in the keys' order).
fn element_key(item: &Value, keys: &[String]) -> Option<String> {
    let mut fields = Map::new();
    for key in keys {
        fields.insert(key.clone(), item.get(key)?.clone());
    }
    Some(format!("k:{}", Value::Object(fields)))
}

/// The value at `path` in `object`, if there is one.
pub fn value_at<'a>(object: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut here = object;
    for element in path {
        if element == ITSELF {
            return Some(here);
        }
        here = step(here, element)?;
    }
    Some(here)
}

fn step<'a>(here: &'a Value, element: &str) -> Option<&'a Value> {
    if let Some(name) = element.strip_prefix("f:") {
        return here.get(name);
    }
    let items = here.as_array()?;
    if let Some(key) = element.strip_prefix("k:") {
        let key: Map<String, Value> = serde_json::from_str(key).ok()?;
        return items
            .iter()
            .find(|item| key.iter().all(|(k, v)| item.get(k) == Some(v)));
    }
    if let Some(wanted) = element.strip_prefix("v:") {
        let wanted: Value = serde_json::from_str(wanted).ok()?;
        return items.iter().find(|item| **item == wanted);
    }
    None
}

/// Removes what `path` names from `object` (a field, a list element); nothing if absent.
pub fn remove_at(object: &mut Value, path: &[String]) {
    let path = match path.last().map(String::as_str) {
        Some(ITSELF) => &path[..path.len() - 1],
        _ => path,
    };
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut here = object;
    for element in parents {
        let next = match element.strip_prefix("f:") {
            Some(name) => here.get_mut(name),
            None => {
                let index = here.as_array().and_then(|items| position(items, element));
                match index {
                    Some(i) => here.get_mut(i),
                    None => None,
                }
            }
        };
        let Some(next) = next else {
            return;
        };
        here = next;
    }
    if let Some(name) = last.strip_prefix("f:") {
        if let Some(map) = here.as_object_mut() {
            map.remove(name);
        }
    } else if let Some(items) = here.as_array_mut() {
        if let Some(i) = position(items, last) {
            items.remove(i);
        }
    }
}

fn position(items: &[Value], element: &str) -> Option<usize> {
    let wanted = step(&Value::Array(items.to_vec()), element)?.clone();
    items.iter().position(|item| *item == wanted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod_spec_set(object: &Value) -> FieldSet {
        FieldSet::of(object, Node::definition("io.k8s.api.core.v1.Pod"), &[])
    }

    fn paths(set: &FieldSet) -> Vec<String> {
        set.0.iter().map(|p| p.join(" ")).collect()
    }

    #[test]
    fn keyed_lists_sets_and_atomic_lists() {
        let pod = json!({"metadata": {"labels": {"app": "web"}, "finalizers": ["a"]},
            "spec": {"containers": [{"name": "c", "image": "i", "args": ["x", "y"]}]}});
        assert_eq!(
            paths(&pod_spec_set(&pod)),
            [
                "f:metadata f:finalizers v:\"a\"",
                "f:metadata f:labels f:app",
                "f:spec f:containers k:{\"name\":\"c\"} .",
                "f:spec f:containers k:{\"name\":\"c\"} f:args",
                "f:spec f:containers k:{\"name\":\"c\"} f:image",
                "f:spec f:containers k:{\"name\":\"c\"} f:name",
            ]
        );
    }

    #[test]
    fn fields_v1_round_trips() {
        let pod = json!({"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "i"}], "nodeSelector": {}}});
        let set = pod_spec_set(&pod);
        let fields = set.to_fields_v1();
        assert_eq!(
            fields,
            json!({"f:metadata": {"f:labels": {"f:app": {}}},
                   "f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {".": {}, "f:image": {}, "f:name": {}}},
                              "f:nodeSelector": {}}})
        );
        assert_eq!(FieldSet::from_fields_v1(&fields), set);
    }

    #[test]
    fn values_are_found_and_removed_by_path() {
        let mut pod = json!({"spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "2"}]},
                             "metadata": {"finalizers": ["x", "y"]}});
        let path = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert_eq!(
            value_at(
                &pod,
                &path("f:spec f:containers k:{\"name\":\"b\"} f:image")
            ),
            Some(&json!("2"))
        );
        remove_at(&mut pod, &path("f:spec f:containers k:{\"name\":\"a\"} ."));
        remove_at(&mut pod, &path("f:metadata f:finalizers v:\"y\""));
        remove_at(&mut pod, &path("f:spec f:nothing f:here"));
        assert_eq!(
            pod,
            json!({"spec": {"containers": [{"name": "b", "image": "2"}]}, "metadata": {"finalizers": ["x"]}})
        );
    }
}

/// Which top-level fields a write can change: the main resource's (without `status` when the
/// kind has a status subresource), or only `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Everything,
    AllButStatus,
    OnlyStatus,
}

/// What a write changed, in one walk of the old and new objects: the paths of `new` whose
/// values are new or different, and the paths of `old` that `new` no longer has (a removed
/// subtree is one path). Fields under `skip` are not looked at.
pub fn diff(
    old: Option<&Value>,
    new: &Value,
    schema: Node,
    skip: &[&[&str]],
    scope: Scope,
) -> (FieldSet, FieldSet) {
    let mut walk = Walk {
        skip,
        scope,
        changed: BTreeSet::new(),
        removed: BTreeSet::new(),
        prefix: Vec::new(),
    };
    walk.object(old, new, schema);
    (FieldSet(walk.changed), FieldSet(walk.removed))
}

struct Walk<'a> {
    skip: &'a [&'a [&'a str]],
    scope: Scope,
    changed: BTreeSet<Path>,
    removed: BTreeSet<Path>,
    prefix: Path,
}

impl Walk<'_> {
    fn skipped(&self, name: &str) -> bool {
        if self.prefix.is_empty() {
            let status = name == "status";
            match self.scope {
                Scope::OnlyStatus if !status => return true,
                Scope::AllButStatus if status => return true,
                _ => {}
            }
        }
        self.skip.iter().any(|skip| {
            skip.len() == self.prefix.len() + 1
                && skip[skip.len() - 1] == name
                && skip
                    .iter()
                    .zip(&self.prefix)
                    .all(|(wanted, element)| element.strip_prefix("f:") == Some(*wanted))
        })
    }

    fn object(&mut self, old: Option<&Value>, new: &Value, schema: Node) {
        let Value::Object(fields) = new else {
            return;
        };
        let old_fields = old.and_then(Value::as_object);
        if fields.is_empty() && !self.prefix.is_empty() {
            if old_fields.is_none_or(|o| !o.is_empty()) {
                self.changed.insert(self.prefix.clone());
            }
            return;
        }
        for (name, value) in fields {
            if self.skipped(name) {
                continue;
            }
            self.prefix.push(format!("f:{name}"));
            self.value(
                old_fields.and_then(|o| o.get(name)),
                value,
                schema.field(name),
            );
            self.prefix.pop();
        }
        for name in old_fields.into_iter().flat_map(|o| o.keys()) {
            if !fields.contains_key(name) && !self.skipped(name) {
                let mut path = self.prefix.clone();
                path.push(format!("f:{name}"));
                self.removed.insert(path);
            }
        }
    }

    fn value(&mut self, old: Option<&Value>, new: &Value, schema: Node) {
        match new {
            Value::Object(_) => {
                self.object(old.filter(|o| o.is_object()), new, schema);
            }
            Value::Array(items) => self.list(old.and_then(Value::as_array), items, schema),
            scalar => {
                if old != Some(scalar) {
                    self.changed.insert(self.prefix.clone());
                }
            }
        }
    }

    fn list(&mut self, old: Option<&Vec<Value>>, items: &[Value], schema: Node) {
        let atomic = |walk: &mut Self| {
            if old.is_none_or(|o| o.as_slice() != items) {
                walk.changed.insert(walk.prefix.clone());
            }
        };
        match schema.list_type() {
            ListType::Atomic => atomic(self),
            ListType::Set => {
                let old = old.map(Vec::as_slice).unwrap_or_default();
                for item in items {
                    if !old.contains(item) {
                        self.with(format!("v:{item}"), |walk| {
                            walk.changed.insert(walk.prefix.clone());
                        });
                    }
                }
                for item in old {
                    if !items.contains(item) {
                        self.with(format!("v:{item}"), |walk| {
                            walk.removed.insert(walk.prefix.clone());
                        });
                    }
                }
            }
            ListType::Map(keys) => {
                if items.iter().any(|item| element_key(item, &keys).is_none()) {
                    return atomic(self);
                }
                let same_key = |a: &Value, b: &Value| keys.iter().all(|k| a.get(k) == b.get(k));
                let old = old.map(Vec::as_slice).unwrap_or_default();
                for item in items {
                    let key = element_key(item, &keys).expect("checked above");
                    let before = old.iter().find(|o| same_key(o, item));
                    self.with(key, |walk| {
                        if before.is_none() {
                            walk.with(ITSELF.into(), |walk| {
                                walk.changed.insert(walk.prefix.clone());
                            });
                        }
                        walk.object(before, item, schema.items());
                    });
                }
                for item in old {
                    if !items.iter().any(|i| same_key(i, item)) {
                        if let Some(key) = element_key(item, &keys) {
                            self.with(key, |walk| {
                                walk.removed.insert(walk.prefix.clone());
                            });
                        }
                    }
                }
            }
        }
    }

    fn with(&mut self, element: String, then: impl FnOnce(&mut Self)) {
        self.prefix.push(element);
        then(self);
        self.prefix.pop();
    }
}

#[cfg(test)]
mod diff_tests {
    use super::*;
    use serde_json::json;

    fn paths(set: &FieldSet) -> Vec<String> {
        set.0.iter().map(|p| p.join(" ")).collect()
    }

    #[test]
    fn a_diff_names_what_changed_and_what_went() {
        let schema = Node::definition("io.k8s.api.core.v1.Pod");
        let old = json!({"metadata": {"name": "p", "labels": {"a": "1", "b": "2"}},
            "spec": {"containers": [{"name": "c", "image": "v1"}, {"name": "d", "image": "x"}]},
            "status": {"phase": "Pending"}});
        let new = json!({"metadata": {"name": "p", "labels": {"a": "1", "c": "3"}},
            "spec": {"containers": [{"name": "c", "image": "v2"}, {"name": "e", "image": "y"}]},
            "status": {"phase": "Running"}});
        let skip: &[&[&str]] = &[&["metadata", "name"]];
        let (changed, removed) = diff(Some(&old), &new, schema, skip, Scope::AllButStatus);
        assert_eq!(
            paths(&changed),
            [
                "f:metadata f:labels f:c",
                "f:spec f:containers k:{\"name\":\"c\"} f:image",
                "f:spec f:containers k:{\"name\":\"e\"} .",
                "f:spec f:containers k:{\"name\":\"e\"} f:image",
                "f:spec f:containers k:{\"name\":\"e\"} f:name",
            ]
        );
        assert_eq!(
            paths(&removed),
            [
                "f:metadata f:labels f:b",
                "f:spec f:containers k:{\"name\":\"d\"}"
            ]
        );
        let (changed, removed) = diff(Some(&old), &new, schema, skip, Scope::OnlyStatus);
        assert_eq!(paths(&changed), ["f:status f:phase"]);
        assert!(removed.is_empty());
        // A create is every field; the same object again is nothing.
        let (all, _) = diff(None, &new, schema, skip, Scope::Everything);
        assert_eq!(all, FieldSet::of(&new, schema, skip));
        let (none, gone) = diff(Some(&new), &new, schema, skip, Scope::Everything);
        assert!(none.is_empty() && gone.is_empty());
    }
}
