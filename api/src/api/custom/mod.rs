//! Custom resources: what a CustomResourceDefinition (apiextensions.k8s.io/v1) makes the API
//! server serve. [`crd`] checks and completes CRDs themselves; [`schema`] is the structural
//! schema each served version validates, defaults and prunes with; [`CustomKind`] is one
//! served version of a CRD (names, scope, subresources, printer columns, schema), and
//! `ResourceInfo::of_custom` turns it into a row of the kinds table, so the server routes,
//! lists, watches and prints custom resources through the same code as built-in kinds.
//!
//! Rows of the kinds table are `&'static` (the built-in table is a static). A custom kind's
//! row is leaked once per distinct definition (the control plane's registry interns them by
//! content), so memory grows only with the number of distinct CRD versions ever served, not
//! with requests or restarts of watches.

pub mod crd;
pub mod schema;

use serde_json::{json, Value};

use super::object::{human_age, str_at};
use super::table::{Column, TableConvertor};
pub use schema::Schema;

/// Where the `scale` subresource reads and writes (`.spec.replicas` and the like).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    /// Where the label selector (a string, as `kubectl scale` and the HPA read it) is.
    pub label_selector: Option<String>,
}

impl ScalePaths {
    /// The built-in workloads' layout.
    pub fn workload() -> Self {
        Self {
            spec_replicas: ".spec.replicas".into(),
            status_replicas: ".status.replicas".into(),
            label_selector: None,
        }
    }
}

/// A dotted path (`.spec.replicas`) as a JSON pointer (`/spec/replicas`), for both reading
/// (`Value::pointer`) and writing (`object::set_at`, which takes segments as they are).
pub fn pointer_of(path: &str) -> String {
    path.split('.')
        .filter(|part| !part.is_empty())
        .map(|part| format!("/{part}"))
        .collect()
}

/// One `additionalPrinterColumns` entry.
#[derive(Clone, Debug)]
pub struct PrinterColumn {
    pub name: String,
    /// integer, number, string, boolean or date.
    pub kind: String,
    pub json_path: String,
    pub priority: u8,
}

/// One served version of a CRD.
#[derive(Debug)]
pub struct CustomKind {
    pub group: String,
    pub version: String,
    /// The version objects are stored at (`storage: true`); other served versions are the
    /// same objects with another `apiVersion` (conversion strategy `None`).
    pub storage_version: String,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub schema: Schema,
    /// The schema as the CRD states it (for the OpenAPI documents and `kubectl explain`).
    pub raw_schema: Value,
    /// The schema server-side apply merges with: the CRD's, with `metadata` as Kubernetes'
    /// ObjectMeta definition (so owner references and the like merge as on every kind).
    pub merge_schema: Value,
    pub status: bool,
    pub scale: Option<ScalePaths>,
    /// Table columns after NAME; Kubernetes' default (AGE) when the CRD names none.
    columns: Vec<PrinterColumn>,
    /// The same columns as the table module prints them (set by [`CustomKind::leak`]).
    table_columns: Vec<Column>,
}

impl CustomKind {
    /// The served version `version` of `crd`, or `None` when the CRD does not serve it or is
    /// invalid (the API server refuses invalid CRDs; this guards a store written by others).
    pub fn from_crd(crd: &Value, version: &Value) -> Option<CustomKind> {
        let spec = crd.get("spec")?;
        if version.get("served") == Some(&Value::Bool(false)) {
            return None;
        }
        let mut causes = Vec::new();
        let raw_schema = version.pointer("/schema/openAPIV3Schema")?.clone();
        let schema = Schema::parse(&raw_schema, "", &mut causes);
        if !causes.is_empty() {
            return None;
        }
        let names = &spec["names"];
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        };
        let storage_version = spec["versions"]
            .as_array()?
            .iter()
            .find(|v| v["storage"] == true)?["name"]
            .as_str()?
            .to_string();
        let scale = version
            .pointer("/subresources/scale")
            .map(|scale| ScalePaths {
                spec_replicas: str_at(scale, "/specReplicasPath").to_string(),
                status_replicas: str_at(scale, "/statusReplicasPath").to_string(),
                label_selector: scale
                    .get("labelSelectorPath")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            });
        let mut columns: Vec<PrinterColumn> = version["additionalPrinterColumns"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| PrinterColumn {
                name: str_at(c, "/name").to_string(),
                kind: str_at(c, "/type").to_string(),
                json_path: str_at(c, "/jsonPath").to_string(),
                priority: c["priority"].as_u64().map_or(0, |p| p.min(1) as u8),
            })
            .collect();
        if columns.is_empty() {
            columns.push(PrinterColumn {
                name: "Age".into(),
                kind: "date".into(),
                json_path: ".metadata.creationTimestamp".into(),
                priority: 0,
            });
        }
        let kind = str_at(names, "/kind").to_string();
        Some(CustomKind {
            group: str_at(spec, "/group").to_string(),
            version: str_at(version, "/name").to_string(),
            storage_version,
            singular: match str_at(names, "/singular") {
                "" => kind.to_ascii_lowercase(),
                singular => singular.to_string(),
            },
            kind,
            plural: str_at(names, "/plural").to_string(),
            namespaced: str_at(spec, "/scope") != "Cluster",
            short_names: strings(&names["shortNames"]),
            categories: strings(&names["categories"]),
            schema,
            merge_schema: with_object_meta(&raw_schema),
            raw_schema,
            status: version.pointer("/subresources/status").is_some(),
            scale,
            columns,
            table_columns: Vec::new(),
        })
    }

    /// Every served version of `crd`.
    pub fn all_of(crd: &Value) -> Vec<CustomKind> {
        crd.pointer("/spec/versions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|version| Self::from_crd(crd, version))
            .collect()
    }

    /// `group/storage-version`.
    pub fn storage_api_version(&self) -> String {
        format!("{}/{}", self.group, self.storage_version)
    }
}

impl TableConvertor for CustomKind {
    fn columns(&self) -> &[Column] {
        &self.table_columns
    }

    fn cells(&self, object: &Value) -> Vec<Value> {
        std::iter::once(json!(str_at(object, "/metadata/name")))
            .chain(self.columns.iter().map(|c| cell(object, c)))
            .collect()
    }
}

/// One printer column's cell: the JSONPath's value (`null` when it finds nothing), dates as
/// ages, several values joined by commas.
fn cell(object: &Value, column: &PrinterColumn) -> Value {
    use jsonpath_rust::JsonPath;
    let path = column.json_path.trim();
    let path = path.trim_start_matches('{').trim_end_matches('}');
    let query = if path.starts_with('$') {
        path.to_string()
    } else {
        format!("${path}")
    };
    let Ok(found) = object.query(&query) else {
        return Value::Null;
    };
    match found.as_slice() {
        [] => Value::Null,
        [one] if column.kind == "date" => json!(human_age(one.as_str().unwrap_or(""))),
        [one] => match (&column.kind[..], one) {
            ("string", Value::String(_)) => (*one).clone(),
            ("string", other) => json!(other.to_string()),
            _ => (*one).clone(),
        },
        many => json!(many
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(",")),
    }
}

impl CustomKind {
    /// Leaks this kind (see the module doc), its table columns made.
    pub fn leak(mut self) -> &'static CustomKind {
        self.table_columns = std::iter::once(Column::new("Name", "string", 0))
            .chain(self.columns.iter().map(|c| {
                let kind = if c.kind == "date" {
                    "string"
                } else {
                    c.kind.as_str()
                };
                Column::new(leak_str(&c.name), leak_str(kind), c.priority)
            }))
            .collect();
        Box::leak(Box::new(self))
    }

    /// The short names, as the kinds table holds them.
    pub fn short_name_list(&'static self) -> &'static [&'static str] {
        leak_list(&self.short_names)
    }

    /// The categories, as the kinds table holds them.
    pub fn category_list(&'static self) -> &'static [&'static str] {
        leak_list(&self.categories)
    }

    /// The subresources (status, scale), as the kinds table holds them.
    pub fn subresource_list(
        &'static self,
    ) -> &'static [(&'static str, &'static str, &'static [&'static str])] {
        match (self.status, &self.scale) {
            (false, None) => &[],
            (true, None) => leak_subresources(&[("status", self.kind.as_str())]),
            (false, Some(_)) => leak_subresources(&[("scale", "Scale")]),
            (true, Some(_)) => {
                leak_subresources(&[("status", self.kind.as_str()), ("scale", "Scale")])
            }
        }
    }
}

fn leak_str(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

fn leak_list(list: &'static [String]) -> &'static [&'static str] {
    Box::leak(
        list.iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    )
}

fn leak_subresources(
    subs: &[(&'static str, &'static str)],
) -> &'static [(&'static str, &'static str, &'static [&'static str])] {
    const VERBS: &[&str] = &["get", "patch", "update"];
    Box::leak(
        subs.iter()
            .map(|(name, kind)| (*name, *kind, VERBS))
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    )
}

/// `schema` with `metadata` as a reference to Kubernetes' ObjectMeta definition.
fn with_object_meta(schema: &Value) -> Value {
    let mut schema = schema.clone();
    if let Some(map) = schema.as_object_mut() {
        let properties = map.entry("properties").or_insert_with(|| json!({}));
        if let Some(properties) = properties.as_object_mut() {
            properties.insert(
                "metadata".into(),
                json!({"$ref": "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}),
            );
        }
    }
    schema
}
