//! Structural schemas of custom resources (apiextensions.k8s.io/v1 `openAPIV3Schema`), as
//! kube-apiserver reads them: [`Schema::parse`] checks that a schema is structural and names
//! every violation; [`Schema::prune`] drops fields the schema does not declare,
//! [`Schema::default`] fills in `default`s, and [`Schema::validate`] reports every value that
//! breaks the schema as one [`Cause`] with its field path (`spec.replicas`,
//! `spec.ports[0].name`), in kube-openapi's words.
//!
//! What a structural schema is (Kubernetes' "Specifying a structural schema"): every node has
//! a `type` (unless it is `x-kubernetes-int-or-string` or `x-kubernetes-preserve-unknown-fields`),
//! arrays have `items`, `properties` and `additionalProperties` are not both set,
//! `additionalProperties: false`, `uniqueItems: true` and `$ref` are refused, and the logical
//! junctors (`allOf`, `anyOf`, `oneOf`, `not`) only restrict values: they may not carry
//! `type`, `default`, `nullable`, `additionalProperties` or the `x-kubernetes-` extensions.
//! Formats are accepted and not checked (kube-openapi checks a few, such as `int32`).

use std::collections::{BTreeMap, HashSet};

use serde_json::{Map, Value};

use crate::api::validation::Cause;

/// A JSON type a schema node may require.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    Object,
    Array,
    String,
    Integer,
    Number,
    Boolean,
}

impl Type {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "object" => Self::Object,
            "array" => Self::Array,
            "string" => Self::String,
            "integer" => Self::Integer,
            "number" => Self::Number,
            "boolean" => Self::Boolean,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Object => "object",
            Self::Array => "array",
            Self::String => "string",
            Self::Integer => "integer",
            Self::Number => "number",
            Self::Boolean => "boolean",
        }
    }

    fn admits(self, value: &Value) -> bool {
        match self {
            Self::Object => value.is_object(),
            Self::Array => value.is_array(),
            Self::String => value.is_string(),
            Self::Integer => value.is_i64() || value.is_u64(),
            Self::Number => value.is_number(),
            Self::Boolean => value.is_boolean(),
        }
    }
}

/// How a list's items are told apart (`x-kubernetes-list-type`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ListType {
    #[default]
    Atomic,
    Set,
    /// Items are objects identified by these keys (`x-kubernetes-list-map-keys`).
    Map(Vec<String>),
}

/// One node of a structural schema.
#[derive(Clone, Debug, Default)]
pub struct Schema {
    pub ty: Option<Type>,
    pub nullable: bool,
    pub properties: BTreeMap<String, Schema>,
    /// `additionalProperties`: a schema for every value of a map (`true` is an empty schema).
    pub additional_properties: Option<Box<Schema>>,
    pub items: Option<Box<Schema>>,
    pub required: Vec<String>,
    pub enumeration: Vec<Value>,
    pub default: Option<Value>,
    pub minimum: Option<f64>,
    pub maximum: Option<f64>,
    pub exclusive_minimum: bool,
    pub exclusive_maximum: bool,
    pub multiple_of: Option<f64>,
    pub min_length: Option<u64>,
    pub max_length: Option<u64>,
    pub pattern: Option<(String, regex::Regex)>,
    pub min_items: Option<u64>,
    pub max_items: Option<u64>,
    pub min_properties: Option<u64>,
    pub max_properties: Option<u64>,
    pub preserve_unknown_fields: bool,
    pub int_or_string: bool,
    /// `x-kubernetes-embedded-resource`: an object with its own apiVersion, kind and metadata.
    pub embedded_resource: bool,
    pub list_type: ListType,
    pub all_of: Vec<Schema>,
    pub any_of: Vec<Schema>,
    pub one_of: Vec<Schema>,
    pub not: Option<Box<Schema>>,
}

/// Where in the CRD a schema node is, for messages: `spec.versions[0].schema.openAPIV3Schema`.
type At<'a> = &'a str;

impl Schema {
    /// Reads the schema at `at` of a CRD and checks that it is structural; every problem is a
    /// cause naming the CRD field. The root must be an object.
    pub fn parse(value: &Value, at: At, causes: &mut Vec<Cause>) -> Schema {
        let schema = Self::parse_node(value, at, false, causes);
        if schema.ty != Some(Type::Object) {
            causes.push(Cause::invalid(
                format!("{at}.type"),
                schema.ty.map_or("", Type::name),
                "must be object at the root",
            ));
        }
        if let Some(meta) = value.pointer("/properties/metadata") {
            // Only name and generateName of an object's metadata may be restricted.
            let props = meta.get("properties").and_then(Value::as_object);
            for key in props.into_iter().flat_map(Map::keys) {
                if key != "name" && key != "generateName" {
                    causes.push(Cause::forbidden(
                        format!("{at}.properties[metadata].properties[{key}]"),
                        "must not be specified: only name and generateName may be restricted",
                    ));
                }
            }
        }
        schema
    }

    fn parse_node(value: &Value, at: At, in_junctor: bool, causes: &mut Vec<Cause>) -> Schema {
        let Some(map) = value.as_object() else {
            causes.push(Cause::invalid(
                at,
                &value.to_string(),
                "must be a schema object",
            ));
            return Schema::default();
        };
        let mut schema = Schema::default();
        for forbidden in ["$ref", "definitions", "dependencies", "id", "$schema"] {
            if map.contains_key(forbidden) {
                causes.push(Cause::forbidden(
                    format!("{at}.{forbidden}"),
                    "must not be set",
                ));
            }
        }
        let flag = |name: &str, causes: &mut Vec<Cause>| -> bool {
            match map.get(name) {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(other) => {
                    causes.push(Cause::invalid(
                        format!("{at}.{name}"),
                        &other.to_string(),
                        "must be a boolean",
                    ));
                    false
                }
            }
        };
        let number = |name: &str, causes: &mut Vec<Cause>| -> Option<f64> {
            let value = map.get(name).filter(|v| !v.is_null())?;
            let number = value.as_f64();
            if number.is_none() {
                causes.push(Cause::invalid(
                    format!("{at}.{name}"),
                    &value.to_string(),
                    "must be a number",
                ));
            }
            number
        };
        let count = |name: &str, causes: &mut Vec<Cause>| -> Option<u64> {
            let value = map.get(name).filter(|v| !v.is_null())?;
            let count = value.as_u64();
            if count.is_none() {
                causes.push(Cause::invalid(
                    format!("{at}.{name}"),
                    &value.to_string(),
                    "must be a non-negative integer",
                ));
            }
            count
        };

        schema.nullable = flag("nullable", causes);
        schema.exclusive_minimum = flag("exclusiveMinimum", causes);
        schema.exclusive_maximum = flag("exclusiveMaximum", causes);
        schema.int_or_string = flag("x-kubernetes-int-or-string", causes);
        schema.embedded_resource = flag("x-kubernetes-embedded-resource", causes);
        schema.preserve_unknown_fields = flag("x-kubernetes-preserve-unknown-fields", causes);
        if map.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(false)) {
            causes.push(Cause::invalid(
                format!("{at}.x-kubernetes-preserve-unknown-fields"),
                "false",
                "must be true or undefined",
            ));
        }
        if flag("uniqueItems", causes) {
            causes.push(Cause::forbidden(
                format!("{at}.uniqueItems"),
                "uniqueItems cannot be set to true since the runtime complexity becomes quadratic",
            ));
        }
        schema.minimum = number("minimum", causes);
        schema.maximum = number("maximum", causes);
        schema.multiple_of = number("multipleOf", causes);
        if schema.multiple_of.is_some_and(|m| m <= 0.0) {
            causes.push(Cause::invalid(
                format!("{at}.multipleOf"),
                &map["multipleOf"].to_string(),
                "must be greater than zero",
            ));
            schema.multiple_of = None;
        }
        schema.min_length = count("minLength", causes);
        schema.max_length = count("maxLength", causes);
        schema.min_items = count("minItems", causes);
        schema.max_items = count("maxItems", causes);
        schema.min_properties = count("minProperties", causes);
        schema.max_properties = count("maxProperties", causes);

        match map.get("type") {
            None | Some(Value::Null) => {}
            Some(Value::String(name)) if name.is_empty() => {}
            Some(Value::String(name)) => match Type::parse(name) {
                Some(ty) => schema.ty = Some(ty),
                None => causes.push(Cause::not_supported(
                    format!("{at}.type"),
                    name,
                    &["array", "boolean", "integer", "number", "object", "string"],
                )),
            },
            Some(other) => causes.push(Cause::invalid(
                format!("{at}.type"),
                &other.to_string(),
                "must be a string",
            )),
        }
        if schema.int_or_string && schema.ty.is_some() {
            causes.push(Cause::forbidden(
                format!("{at}.type"),
                "must be empty when x-kubernetes-int-or-string is true",
            ));
        }
        if !in_junctor
            && schema.ty.is_none()
            && !schema.int_or_string
            && !schema.preserve_unknown_fields
        {
            causes.push(Cause {
                reason: "FieldValueRequired",
                message: "Required value: must not be empty for specified object fields".into(),
                field: format!("{at}.type"),
            });
        }

        if let Some(pattern) = map.get("pattern").filter(|p| !p.is_null()) {
            match pattern.as_str().map(regex::Regex::new) {
                Some(Ok(re)) => schema.pattern = Some((pattern.as_str().unwrap_or("").into(), re)),
                Some(Err(e)) => causes.push(Cause::invalid(
                    format!("{at}.pattern"),
                    pattern.as_str().unwrap_or(""),
                    &format!("must be a valid regular expression: {e}"),
                )),
                None => causes.push(Cause::invalid(
                    format!("{at}.pattern"),
                    &pattern.to_string(),
                    "must be a string",
                )),
            }
        }
        if let Some(values) = map.get("enum").filter(|v| !v.is_null()) {
            match values.as_array() {
                Some(values) => schema.enumeration = values.clone(),
                None => causes.push(Cause::invalid(
                    format!("{at}.enum"),
                    &values.to_string(),
                    "must be a list",
                )),
            }
        }
        if let Some(required) = map.get("required").filter(|v| !v.is_null()) {
            match required.as_array() {
                Some(names) => {
                    schema.required = names
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                }
                None => causes.push(Cause::invalid(
                    format!("{at}.required"),
                    &required.to_string(),
                    "must be a list of names",
                )),
            }
        }

        if let Some(properties) = map.get("properties").filter(|v| !v.is_null()) {
            match properties.as_object() {
                Some(properties) => {
                    for (name, property) in properties {
                        let child = format!("{at}.properties[{name}]");
                        schema.properties.insert(
                            name.clone(),
                            Self::parse_node(property, &child, in_junctor, causes),
                        );
                    }
                }
                None => causes.push(Cause::invalid(
                    format!("{at}.properties"),
                    &properties.to_string(),
                    "must be a map of schemas",
                )),
            }
        }
        match map.get("additionalProperties") {
            None | Some(Value::Null) => {}
            Some(Value::Bool(false)) => causes.push(Cause::forbidden(
                format!("{at}.additionalProperties"),
                "additionalProperties cannot be set to false",
            )),
            Some(Value::Bool(true)) => {
                schema.additional_properties = Some(Box::new(Schema {
                    preserve_unknown_fields: true,
                    ..Schema::default()
                }))
            }
            Some(other) => {
                let child = format!("{at}.additionalProperties");
                schema.additional_properties = Some(Box::new(Self::parse_node(
                    other, &child, in_junctor, causes,
                )));
            }
        }
        if !schema.properties.is_empty() && schema.additional_properties.is_some() {
            causes.push(Cause::forbidden(
                format!("{at}.additionalProperties"),
                "additionalProperties and properties are mutual exclusive",
            ));
        }
        match map.get("items") {
            None | Some(Value::Null) => {
                if schema.ty == Some(Type::Array) && !in_junctor {
                    causes.push(Cause {
                        reason: "FieldValueRequired",
                        message: "Required value: must be specified".into(),
                        field: format!("{at}.items"),
                    });
                }
            }
            Some(Value::Array(_)) => causes.push(Cause::forbidden(
                format!("{at}.items"),
                "items must be a schema object and not an array",
            )),
            Some(items) => {
                let child = format!("{at}.items");
                schema.items = Some(Box::new(Self::parse_node(
                    items, &child, in_junctor, causes,
                )));
            }
        }

        schema.list_type = match map.get("x-kubernetes-list-type").and_then(Value::as_str) {
            None | Some("atomic") => ListType::Atomic,
            Some("set") => ListType::Set,
            Some("map") => {
                let keys: Vec<String> = map
                    .get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect();
                if keys.is_empty() {
                    causes.push(Cause {
                        reason: "FieldValueRequired",
                        message:
                            "Required value: must not be empty if x-kubernetes-list-type is map"
                                .into(),
                        field: format!("{at}.x-kubernetes-list-map-keys"),
                    });
                }
                ListType::Map(keys)
            }
            Some(other) => {
                causes.push(Cause::not_supported(
                    format!("{at}.x-kubernetes-list-type"),
                    other,
                    &["atomic", "set", "map"],
                ));
                ListType::Atomic
            }
        };
        if schema.list_type != ListType::Atomic && schema.ty != Some(Type::Array) {
            causes.push(Cause::invalid(
                format!("{at}.x-kubernetes-list-type"),
                map["x-kubernetes-list-type"].as_str().unwrap_or(""),
                "must only be used if type is array",
            ));
        }

        for (name, list) in [
            ("allOf", &mut schema.all_of),
            ("anyOf", &mut schema.any_of),
            ("oneOf", &mut schema.one_of),
        ] {
            if let Some(schemas) = map.get(name).filter(|v| !v.is_null()) {
                for (i, junct) in schemas.as_array().into_iter().flatten().enumerate() {
                    let child = format!("{at}.{name}[{i}]");
                    check_junctor(junct, &child, causes);
                    list.push(Self::parse_node(junct, &child, true, causes));
                }
            }
        }
        if let Some(not) = map.get("not").filter(|v| !v.is_null()) {
            let child = format!("{at}.not");
            check_junctor(not, &child, causes);
            schema.not = Some(Box::new(Self::parse_node(not, &child, true, causes)));
        }

        if let Some(default) = map.get("default") {
            if in_junctor {
                causes.push(Cause::forbidden(
                    format!("{at}.default"),
                    "must not be used inside of logical junctors",
                ));
            } else {
                let mut problems = Vec::new();
                let mut pruned = default.clone();
                schema.prune_value(&mut pruned, "", &mut Vec::new());
                schema.validate_value(&pruned, &format!("{at}.default"), &mut problems);
                if pruned != *default {
                    causes.push(Cause::invalid(
                        format!("{at}.default"),
                        &default.to_string(),
                        "must not have unknown fields",
                    ));
                }
                causes.extend(problems);
                schema.default = Some(default.clone());
            }
        }
        schema
    }

    /// Whether `value` may be `null` here.
    fn admits_null(&self) -> bool {
        self.nullable || (self.ty.is_none() && !self.int_or_string)
    }

    /// Removes from `object` (a whole custom resource) every field the schema does not
    /// declare, and returns their paths (`spec.foo`) for `fieldValidation`. `apiVersion`,
    /// `kind` and `metadata` of the root always stay.
    pub fn prune(&self, object: &mut Value) -> Vec<String> {
        let mut unknown = Vec::new();
        let Some(map) = object.as_object_mut() else {
            return unknown;
        };
        for (key, value) in map.iter_mut() {
            if matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            if let Some(property) = self.properties.get(key) {
                property.prune_value(value, key, &mut unknown);
            }
        }
        if !self.preserve_unknown_fields {
            let kept = |key: &String| {
                matches!(key.as_str(), "apiVersion" | "kind" | "metadata")
                    || self.properties.contains_key(key)
            };
            for key in map.keys().filter(|k| !kept(k)) {
                unknown.push(key.clone());
            }
            map.retain(|key, _| kept(key));
        }
        unknown
    }

    fn prune_value(&self, value: &mut Value, at: &str, unknown: &mut Vec<String>) {
        if self.int_or_string {
            return;
        }
        match value {
            Value::Object(map) => {
                let embedded = |key: &str| {
                    self.embedded_resource && matches!(key, "apiVersion" | "kind" | "metadata")
                };
                if let Some(additional) = &self.additional_properties {
                    for (key, item) in map.iter_mut() {
                        additional.prune_value(item, &format!("{at}.{key}"), unknown);
                    }
                    return;
                }
                for (key, item) in map.iter_mut() {
                    if let Some(property) = self.properties.get(key) {
                        property.prune_value(item, &join(at, key), unknown);
                    }
                }
                if !self.preserve_unknown_fields {
                    map.retain(|key, _| {
                        let keep = self.properties.contains_key(key) || embedded(key);
                        if !keep {
                            unknown.push(join(at, key));
                        }
                        keep
                    });
                }
            }
            Value::Array(items) => {
                if let Some(schema) = &self.items {
                    for (i, item) in items.iter_mut().enumerate() {
                        schema.prune_value(item, &format!("{at}[{i}]"), unknown);
                    }
                }
            }
            _ => {}
        }
    }

    /// Fills in the `default` of every absent field (and of a `null` one that may not be
    /// null), depth first, as kube-apiserver defaults custom resources.
    pub fn apply_defaults(&self, value: &mut Value) {
        match value {
            Value::Object(map) => {
                if let Some(additional) = &self.additional_properties {
                    for item in map.values_mut() {
                        additional.apply_defaults(item);
                    }
                }
                for (key, property) in &self.properties {
                    let Some(default) = &property.default else {
                        continue;
                    };
                    let missing = match map.get(key) {
                        None => true,
                        Some(Value::Null) => !property.nullable,
                        Some(_) => false,
                    };
                    if missing {
                        map.insert(key.clone(), default.clone());
                    }
                }
                for (key, item) in map.iter_mut() {
                    if let Some(property) = self.properties.get(key) {
                        property.apply_defaults(item);
                    }
                }
            }
            Value::Array(items) => {
                if let Some(schema) = &self.items {
                    for item in items {
                        schema.apply_defaults(item);
                    }
                }
            }
            _ => {}
        }
    }

    /// Every way the custom resource `object` breaks the schema. The root's `metadata`,
    /// `apiVersion` and `kind` are the API server's to check.
    pub fn validate(&self, object: &Value) -> Vec<Cause> {
        let mut causes = Vec::new();
        let Some(map) = object.as_object() else {
            causes.push(Cause::invalid("", &object.to_string(), "must be an object"));
            return causes;
        };
        for name in &self.required {
            if !map.contains_key(name)
                && !matches!(name.as_str(), "metadata" | "apiVersion" | "kind")
            {
                causes.push(Cause::required(name.clone()));
            }
        }
        for (key, value) in map {
            if matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            if let Some(property) = self.properties.get(key) {
                property.validate_value(value, key, &mut causes);
            }
        }
        causes
    }

    fn validate_value(&self, value: &Value, at: &str, causes: &mut Vec<Cause>) {
        if value.is_null() {
            if !self.admits_null() {
                let expected = self.ty.map_or("string", Type::name);
                causes.push(type_cause(at, value, expected));
            }
            return;
        }
        if self.int_or_string && !(value.is_string() || value.is_i64() || value.is_u64()) {
            causes.push(type_cause(at, value, "integer,string"));
            return;
        }
        if let Some(ty) = self.ty {
            if !ty.admits(value) {
                causes.push(type_cause(at, value, ty.name()));
                return;
            }
        }
        if !self.enumeration.is_empty() && !self.enumeration.contains(value) {
            let supported: Vec<String> = self.enumeration.iter().map(plain).collect();
            let supported: Vec<&str> = supported.iter().map(String::as_str).collect();
            causes.push(Cause::not_supported(at, &plain(value), &supported));
        }
        match value {
            Value::Number(n) => self.validate_number(n.as_f64().unwrap_or(0.0), value, at, causes),
            Value::String(s) => self.validate_string(s, value, at, causes),
            Value::Array(items) => self.validate_array(items, value, at, causes),
            Value::Object(map) => self.validate_object(map, value, at, causes),
            _ => {}
        }
        self.validate_junctors(value, at, causes);
    }

    fn validate_number(&self, n: f64, value: &Value, at: &str, causes: &mut Vec<Cause>) {
        if let Some(max) = self.maximum {
            if (self.exclusive_maximum && n >= max) || n > max {
                let op = if self.exclusive_maximum {
                    "less than"
                } else {
                    "less than or equal to"
                };
                causes.push(invalid(
                    at,
                    value,
                    &format!("{at} in body should be {op} {}", num(max)),
                ));
            }
        }
        if let Some(min) = self.minimum {
            if (self.exclusive_minimum && n <= min) || n < min {
                let op = if self.exclusive_minimum {
                    "greater than"
                } else {
                    "greater than or equal to"
                };
                causes.push(invalid(
                    at,
                    value,
                    &format!("{at} in body should be {op} {}", num(min)),
                ));
            }
        }
        if let Some(factor) = self.multiple_of {
            let ratio = n / factor;
            if (ratio - ratio.round()).abs() > 1e-9 {
                causes.push(invalid(
                    at,
                    value,
                    &format!("{at} in body should be a multiple of {}", num(factor)),
                ));
            }
        }
    }

    fn validate_string(&self, s: &str, value: &Value, at: &str, causes: &mut Vec<Cause>) {
        let chars = s.chars().count() as u64;
        if let Some(max) = self.max_length.filter(|max| chars > *max) {
            causes.push(Cause {
                reason: "FieldValueTooLong",
                message: format!("Too long: may not be more than {max} bytes"),
                field: at.into(),
            });
        }
        if let Some(min) = self.min_length.filter(|min| chars < *min) {
            causes.push(invalid(
                at,
                value,
                &format!("{at} in body should be at least {min} chars long"),
            ));
        }
        if let Some((source, re)) = &self.pattern {
            if !re.is_match(s) {
                causes.push(invalid(
                    at,
                    value,
                    &format!("{at} in body should match '{source}'"),
                ));
            }
        }
    }

    fn validate_array(&self, items: &[Value], value: &Value, at: &str, causes: &mut Vec<Cause>) {
        let len = items.len() as u64;
        if let Some(max) = self.max_items.filter(|max| len > *max) {
            causes.push(Cause {
                reason: "FieldValueTooMany",
                message: format!("Too many: {len}: must have at most {max} items"),
                field: at.into(),
            });
        }
        if let Some(min) = self.min_items.filter(|min| len < *min) {
            causes.push(invalid(
                at,
                value,
                &format!("{at} in body should have at least {min} items"),
            ));
        }
        match &self.list_type {
            ListType::Atomic => {}
            ListType::Set => {
                let mut seen = HashSet::new();
                for (i, item) in items.iter().enumerate() {
                    if !seen.insert(item.to_string()) {
                        causes.push(duplicate(&format!("{at}[{i}]"), item));
                    }
                }
            }
            ListType::Map(keys) => {
                let mut seen = HashSet::new();
                for (i, item) in items.iter().enumerate() {
                    let key: Vec<String> = keys
                        .iter()
                        .map(|k| item.get(k).map(Value::to_string).unwrap_or_default())
                        .collect();
                    if !seen.insert(key) {
                        let identity: Map<String, Value> = keys
                            .iter()
                            .filter_map(|k| Some((k.clone(), item.get(k)?.clone())))
                            .collect();
                        causes.push(duplicate(&format!("{at}[{i}]"), &Value::Object(identity)));
                    }
                }
            }
        }
        if let Some(schema) = &self.items {
            for (i, item) in items.iter().enumerate() {
                schema.validate_value(item, &format!("{at}[{i}]"), causes);
            }
        }
    }

    fn validate_object(
        &self,
        map: &Map<String, Value>,
        value: &Value,
        at: &str,
        causes: &mut Vec<Cause>,
    ) {
        let len = map.len() as u64;
        if let Some(max) = self.max_properties.filter(|max| len > *max) {
            causes.push(invalid(
                at,
                value,
                &format!("{at} in body should have at most {max} properties"),
            ));
        }
        if let Some(min) = self.min_properties.filter(|min| len < *min) {
            causes.push(invalid(
                at,
                value,
                &format!("{at} in body should have at least {min} properties"),
            ));
        }
        for name in &self.required {
            if !map.contains_key(name) {
                causes.push(Cause::required(join(at, name)));
            }
        }
        for (key, item) in map {
            if let Some(property) = self.properties.get(key) {
                property.validate_value(item, &join(at, key), causes);
            } else if let Some(additional) = &self.additional_properties {
                additional.validate_value(item, &format!("{at}[{key}]"), causes);
            }
        }
    }

    fn validate_junctors(&self, value: &Value, at: &str, causes: &mut Vec<Cause>) {
        let passes = |schema: &Schema| {
            let mut found = Vec::new();
            schema.validate_value(value, at, &mut found);
            found.is_empty()
        };
        for schema in &self.all_of {
            schema.validate_value(value, at, causes);
        }
        if !self.any_of.is_empty() && !self.any_of.iter().any(passes) {
            causes.push(invalid(
                at,
                value,
                "must validate at least one schema (anyOf)",
            ));
        }
        if !self.one_of.is_empty() && self.one_of.iter().filter(|s| passes(s)).count() != 1 {
            causes.push(invalid(
                at,
                value,
                "must validate one and only one schema (oneOf)",
            ));
        }
        if let Some(not) = &self.not {
            if passes(not) {
                causes.push(invalid(at, value, "must not validate the schema (not)"));
            }
        }
    }
}

/// What a junctor (`allOf` and the others) may not say: it only restricts values.
fn check_junctor(value: &Value, at: &str, causes: &mut Vec<Cause>) {
    let Some(map) = value.as_object() else {
        return;
    };
    for key in map.keys() {
        let forbidden = matches!(
            key.as_str(),
            "type" | "additionalProperties" | "default" | "nullable" | "description" | "title"
        ) || key.starts_with("x-kubernetes-");
        if forbidden {
            causes.push(Cause::forbidden(
                format!("{at}.{key}"),
                "must be empty inside of logical junctors",
            ));
        }
    }
}

fn join(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_string()
    } else {
        format!("{at}.{key}")
    }
}

/// A value as kube-openapi prints it in a message: strings bare, the rest as JSON.
fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A number without a needless `.0`.
fn num(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        n.to_string()
    }
}

/// `Invalid value: <value as JSON>: why`.
fn invalid(at: &str, value: &Value, why: &str) -> Cause {
    Cause {
        reason: "FieldValueInvalid",
        message: format!("Invalid value: {}: {why}", compact(value)),
        field: at.into(),
    }
}

/// A value short enough for a message.
fn compact(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 80 {
        format!("{}...", text.chars().take(80).collect::<String>())
    } else {
        text
    }
}

/// kube-openapi's type error: `Invalid value: "string": spec.replicas in body must be of type
/// integer: "string"`, naming the type the value has.
fn type_cause(at: &str, value: &Value, expected: &str) -> Cause {
    let actual = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    Cause {
        reason: "FieldValueTypeInvalid",
        message: format!(
            "Invalid value: \"{actual}\": {at} in body must be of type {expected}: \"{actual}\""
        ),
        field: at.into(),
    }
}

fn duplicate(at: &str, value: &Value) -> Cause {
    Cause {
        reason: "FieldValueDuplicate",
        message: format!("Duplicate value: {}", compact(value)),
        field: at.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(schema: Value) -> (Schema, Vec<Cause>) {
        let mut causes = Vec::new();
        let schema = Schema::parse(&schema, "schema", &mut causes);
        (schema, causes)
    }

    fn widget_schema() -> Schema {
        let (schema, causes) = parse(json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["size"],
                    "properties": {
                        "size": {"type": "integer", "minimum": 1, "maximum": 10},
                        "color": {"type": "string", "enum": ["red", "blue"], "default": "red"},
                        "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 5},
                        "port": {"x-kubernetes-int-or-string": true},
                        "tags": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set", "maxItems": 3},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "raw": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "ports": {
                            "type": "array",
                            "x-kubernetes-list-type": "map",
                            "x-kubernetes-list-map-keys": ["port"],
                            "items": {"type": "object", "properties": {"port": {"type": "integer"}, "protocol": {"type": "string", "default": "TCP"}}},
                        },
                    },
                },
                "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
            },
        }));
        assert!(causes.is_empty(), "{causes:?}");
        schema
    }

    fn fields(causes: &[Cause]) -> Vec<(&str, &str)> {
        causes
            .iter()
            .map(|c| (c.field.as_str(), c.message.as_str()))
            .collect()
    }

    #[test]
    fn a_valid_resource_passes_and_defaults_fill_in() {
        let schema = widget_schema();
        let mut object = json!({
            "apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
            "spec": {"size": 3, "port": "http", "tags": ["a", "b"], "labels": {"x": "y"},
                     "ports": [{"port": 80}], "raw": {"anything": [1, {"goes": true}]}},
        });
        assert!(schema.prune(&mut object).is_empty());
        schema.apply_defaults(&mut object);
        assert_eq!(object["spec"]["color"], "red");
        assert_eq!(object["spec"]["ports"][0]["protocol"], "TCP");
        assert_eq!(schema.validate(&object), vec![]);
    }

    #[test]
    fn every_violation_names_its_field() {
        let schema = widget_schema();
        let object = json!({"spec": {
            "size": "big", "color": "green", "name": "ABCDEFG", "port": 1.5,
            "tags": ["a", "a", "b", "c"], "labels": {"x": 1}, "ports": [{"port": 1}, {"port": 1}],
        }, "status": {"ready": "yes"}});
        let causes = schema.validate(&object);
        let found = fields(&causes);
        assert!(
            found.contains(&(
                "spec.size",
                "Invalid value: \"string\": spec.size in body must be of type integer: \"string\""
            )),
            "{found:?}"
        );
        assert!(found.contains(&(
            "spec.color",
            "Unsupported value: \"green\": supported values: \"red\", \"blue\""
        )));
        assert!(found.contains(&("spec.name", "Too long: may not be more than 5 bytes")));
        assert!(found.contains(&(
            "spec.name",
            "Invalid value: \"ABCDEFG\": spec.name in body should match '^[a-z]+$'"
        )));
        assert!(found.iter().any(|(f, _)| *f == "spec.port"));
        assert!(found.contains(&("spec.tags[1]", "Duplicate value: \"a\"")));
        assert!(found.contains(&("spec.tags", "Too many: 4: must have at most 3 items")));
        assert!(found.iter().any(|(f, _)| *f == "spec.labels[x]"));
        assert!(found.contains(&("spec.ports[1]", "Duplicate value: {\"port\":1}")));
        assert!(found.iter().any(|(f, _)| *f == "status.ready"));
        let missing = schema.validate(&json!({"spec": {}}));
        assert_eq!(fields(&missing), vec![("spec.size", "Required value")]);
        let too_big = schema.validate(&json!({"spec": {"size": 11}}));
        assert_eq!(
            fields(&too_big),
            vec![(
                "spec.size",
                "Invalid value: 11: spec.size in body should be less than or equal to 10"
            )]
        );
    }

    #[test]
    fn unknown_fields_are_pruned_and_reported() {
        let schema = widget_schema();
        let mut object = json!({
            "apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w", "labels": {"a": "b"}},
            "spec": {"size": 1, "extra": true, "ports": [{"port": 1, "bogus": 2}], "raw": {"kept": 1}},
            "other": 1,
        });
        let mut unknown = schema.prune(&mut object);
        unknown.sort();
        assert_eq!(unknown, ["other", "spec.extra", "spec.ports[0].bogus"]);
        assert_eq!(object["metadata"]["labels"]["a"], "b");
        assert_eq!(object["spec"]["raw"]["kept"], 1);
        assert!(object["spec"].get("extra").is_none());
    }

    #[test]
    fn non_structural_schemas_are_refused_naming_the_field() {
        let (_, causes) = parse(json!({
            "type": "object",
            "properties": {
                "spec": {"properties": {"a": {"type": "string"}}},
                "list": {"type": "array"},
                "both": {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": {"type": "string"}},
                "closed": {"type": "object", "additionalProperties": false},
                "ref": {"$ref": "#/definitions/x"},
                "unique": {"type": "array", "items": {"type": "string"}, "uniqueItems": true},
                "junct": {"type": "string", "anyOf": [{"type": "string"}]},
                "badDefault": {"type": "integer", "default": "seven"},
                "badPattern": {"type": "string", "pattern": "("},
            },
        }));
        let found: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        for field in [
            "schema.properties[spec].type",
            "schema.properties[list].items",
            "schema.properties[both].additionalProperties",
            "schema.properties[closed].additionalProperties",
            "schema.properties[ref].$ref",
            "schema.properties[unique].uniqueItems",
            "schema.properties[junct].anyOf[0].type",
            "schema.properties[badDefault].default",
            "schema.properties[badPattern].pattern",
        ] {
            assert!(found.contains(&field), "{field} not in {found:?}");
        }
        let (_, causes) = parse(json!({"type": "string"}));
        assert_eq!(causes[0].field, "schema.type");
    }

    #[test]
    fn junctors_restrict_values() {
        let (schema, causes) = parse(json!({
            "type": "object",
            "properties": {"spec": {
                "type": "object",
                "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
                "oneOf": [{"required": ["a"]}, {"required": ["b"]}],
            }},
        }));
        assert!(causes.is_empty(), "{causes:?}");
        assert!(schema.validate(&json!({"spec": {"a": "x"}})).is_empty());
        let both = schema.validate(&json!({"spec": {"a": "x", "b": "y"}}));
        assert_eq!(both.len(), 1, "{both:?}");
        assert!(both[0].message.contains("oneOf"));
    }

    #[test]
    fn null_is_refused_unless_nullable_and_a_default_replaces_it() {
        let (schema, _) = parse(json!({
            "type": "object",
            "properties": {"spec": {"type": "object", "properties": {
                "n": {"type": "string", "nullable": true},
                "d": {"type": "string", "default": "x"},
                "s": {"type": "string"},
            }}},
        }));
        let mut object = json!({"spec": {"n": null, "d": null, "s": null}});
        schema.apply_defaults(&mut object);
        assert_eq!(object["spec"]["d"], "x");
        let causes = schema.validate(&object);
        assert_eq!(fields(&causes).len(), 1);
        assert_eq!(causes[0].field, "spec.s");
    }
}
