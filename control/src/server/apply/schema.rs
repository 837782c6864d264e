//! Walking Kubernetes' OpenAPI definitions (or a CRD's schema) to learn how a list merges:
//! keyed by fields, a set, or atomic. Fields with no schema (unknown fields, a CRD's
//! `x-kubernetes-preserve-unknown-fields`) have atomic lists.

use serde_json::Value;

use crate::server::schemas;

/// How the elements of a list are told apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListType {
    /// By these fields (`x-kubernetes-list-type: map` or a patch merge key).
    Map(Vec<String>),
    /// By value.
    Set,
    /// Not at all: the list is one value.
    Atomic,
}

/// A place in a schema; `None` where the schema says nothing.
#[derive(Debug, Clone, Copy)]
pub struct Node(Option<&'static Value>);

impl Node {
    /// The schema of the definition `name`.
    pub fn definition(name: &str) -> Node {
        Node(schemas::definition(name)).resolved()
    }

    /// A schema of its own (a CRD version's), whose `$ref`s name Kubernetes' definitions.
    pub fn schema(schema: &'static Value) -> Node {
        Node(Some(schema)).resolved()
    }

    /// No schema.
    pub fn unknown() -> Node {
        Node(None)
    }

    fn resolved(self) -> Node {
        let mut here = self.0;
        // Follows `$ref` chains (a property that is a reference, perhaps with a description).
        for _ in 0..8 {
            let Some(reference) = here.and_then(|v| v["$ref"].as_str()) else {
                break;
            };
            here = reference
                .strip_prefix("#/definitions/")
                .and_then(schemas::definition);
        }
        Node(here)
    }

    /// The schema of field `name` (a property, or the values of a map).
    pub fn field(self, name: &str) -> Node {
        let Some(schema) = self.0 else {
            return self;
        };
        let child = schema["properties"]
            .get(name)
            .or_else(|| schema.get("additionalProperties").filter(|v| v.is_object()));
        Node(child).resolved()
    }

    /// The schema of a list's elements.
    pub fn items(self) -> Node {
        Node(self.0.and_then(|s| s.get("items"))).resolved()
    }

    pub fn list_type(self) -> ListType {
        let Some(schema) = self.0 else {
            return ListType::Atomic;
        };
        match schema["x-kubernetes-list-type"].as_str() {
            Some("set") => ListType::Set,
            Some("atomic") => ListType::Atomic,
            Some("map") => ListType::Map(
                schema["x-kubernetes-list-map-keys"]
                    .as_array()
                    .map(|keys| {
                        keys.iter()
                            .filter_map(|k| k.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            _ => match schema["x-kubernetes-patch-merge-key"].as_str() {
                Some(key) => ListType::Map(vec![key.to_string()]),
                None => ListType::Atomic,
            },
        }
    }
}
