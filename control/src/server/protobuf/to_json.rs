//! A decoded protobuf message to the JSON form Kubernetes gives the same object.
//!
//! Go writes every non-pointer field to protobuf, zero or not, where its JSON encoder omits
//! empty ones (`omitempty`). So a singular empty string and a zero time are left out here;
//! zeros of numbers and bools are kept (for a non-pointer field they mean what an absent one
//! means, and for a pointer field, such as `automountServiceAccountToken: false`, they are
//! what the client set).

use base64::Engine;
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MapKey, ReflectMessage, Value as Proto,
};
use serde_json::{Map, Number, Value};

use super::names::{self, JsonName, Special};
use super::ProtobufError;

/// The JSON object of a message with the regular (non-[`Special`]) form.
pub fn message(message: &DynamicMessage) -> Result<Value, ProtobufError> {
    if let Some(special) = names::special(&message.descriptor()) {
        return special_form(message, special).map(|v| v.unwrap_or(Value::Null));
    }
    let descriptor = message.descriptor();
    let mut object = Map::new();
    for (field, value) in message.fields() {
        let Some(json) = field_value(&field, value)? else {
            continue;
        };
        match names::json_name(&descriptor, field.number(), field.name()) {
            JsonName::Property(name) => {
                object.insert(name, json);
            }
            JsonName::Inline => {
                if let Value::Object(inner) = json {
                    object.extend(inner);
                }
            }
        }
    }
    Ok(Value::Object(object))
}

/// The JSON of one set field; `None` when Go's JSON would leave it out.
fn field_value(field: &FieldDescriptor, value: &Proto) -> Result<Option<Value>, ProtobufError> {
    match value {
        Proto::List(items) => {
            let items = items
                .iter()
                .map(|item| element(&field.kind(), item))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Some(Value::Array(items)))
        }
        Proto::Map(entries) => {
            let value_kind = match field.kind() {
                Kind::Message(entry) => entry.map_entry_value_field().kind(),
                other => other,
            };
            let mut object = Map::new();
            for (key, value) in entries {
                let key = match key {
                    MapKey::String(s) => s.clone(),
                    MapKey::Bool(b) => b.to_string(),
                    MapKey::I32(n) => n.to_string(),
                    MapKey::I64(n) => n.to_string(),
                    MapKey::U32(n) => n.to_string(),
                    MapKey::U64(n) => n.to_string(),
                };
                object.insert(key, element(&value_kind, value)?);
            }
            Ok(Some(Value::Object(object)))
        }
        Proto::String(s) if s.is_empty() => Ok(None),
        Proto::Message(inner) => match names::special(&inner.descriptor()) {
            Some(special) => special_form(inner, special),
            None => message(inner).map(Some),
        },
        scalar => scalar_value(scalar).map(Some),
    }
}

/// A list element or map value: kept even when empty (`args: [""]`, `data: {k: ""}`).
fn element(kind: &Kind, value: &Proto) -> Result<Value, ProtobufError> {
    match (kind, value) {
        (_, Proto::Message(inner)) => match names::special(&inner.descriptor()) {
            Some(special) => special_form(inner, special).map(|v| v.unwrap_or(Value::Null)),
            None => message(inner),
        },
        (_, scalar) => scalar_value(scalar),
    }
}

fn scalar_value(value: &Proto) -> Result<Value, ProtobufError> {
    Ok(match value {
        Proto::Bool(b) => Value::Bool(*b),
        Proto::I32(n) => Value::from(*n),
        Proto::I64(n) => Value::from(*n),
        Proto::U32(n) => Value::from(*n),
        Proto::U64(n) => Value::from(*n),
        Proto::EnumNumber(n) => Value::from(*n),
        Proto::F32(n) => float(f64::from(*n))?,
        Proto::F64(n) => float(*n)?,
        Proto::String(s) => Value::String(s.clone()),
        Proto::Bytes(b) => Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
        Proto::Message(m) => message(m)?,
        Proto::List(_) | Proto::Map(_) => {
            return Err(ProtobufError::Invalid(
                "a list or map where a single value belongs".into(),
            ))
        }
    })
}

fn float(n: f64) -> Result<Value, ProtobufError> {
    Number::from_f64(n)
        .map(Value::Number)
        .ok_or_else(|| ProtobufError::Invalid(format!("the number {n} has no JSON form")))
}

fn get<'a>(message: &'a DynamicMessage, name: &str) -> Option<std::borrow::Cow<'a, Proto>> {
    let field = message.descriptor().get_field_by_name(name)?;
    message.has_field(&field).then(|| message.get_field(&field))
}

fn special_form(
    message: &DynamicMessage,
    special: Special,
) -> Result<Option<Value>, ProtobufError> {
    let int =
        |name: &str| get(message, name).and_then(|v| v.as_i64().or(v.as_i32().map(i64::from)));
    match special {
        Special::Time | Special::MicroTime => {
            let seconds = int("seconds").unwrap_or(0);
            let nanos = int("nanos").unwrap_or(0);
            if seconds == 0 && nanos == 0 {
                return Ok(None);
            }
            let nanos = u32::try_from(nanos)
                .ok()
                .filter(|n| *n < 1_000_000_000)
                .ok_or_else(|| ProtobufError::Invalid(format!("a time has {nanos} nanoseconds")))?;
            let time = chrono::DateTime::from_timestamp(seconds, nanos).ok_or_else(|| {
                ProtobufError::Invalid(format!("a time {seconds} s from 1970 is out of range"))
            })?;
            let format = if special == Special::Time {
                chrono::SecondsFormat::Secs
            } else {
                chrono::SecondsFormat::Micros
            };
            Ok(Some(Value::String(time.to_rfc3339_opts(format, true))))
        }
        Special::IntOrString => {
            if int("type") == Some(1) {
                let text = get(message, "strVal")
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                Ok(Some(Value::String(text)))
            } else {
                Ok(Some(Value::from(int("intVal").unwrap_or(0))))
            }
        }
        Special::Quantity => {
            Ok(get(message, "string")
                .and_then(|v| v.as_str().map(|s| Value::String(s.to_string()))))
        }
        Special::RawJson => {
            let raw = message
                .fields()
                .find_map(|(_, v)| v.as_bytes().cloned())
                .unwrap_or_default();
            if raw.is_empty() {
                return Ok(None);
            }
            if raw.starts_with(super::MAGIC) {
                return super::decode_envelope(&raw).map(Some);
            }
            serde_json::from_slice(&raw).map(Some).map_err(|e| {
                ProtobufError::Invalid(format!("an embedded JSON object is not JSON: {e}"))
            })
        }
        Special::SchemaOrBool => match get(message, "schema") {
            Some(schema) => scalar_value(&schema).map(Some),
            None => Ok(Some(Value::Bool(
                get(message, "allows")
                    .and_then(|v| v.as_bool())
                    .unwrap_or(false),
            ))),
        },
        Special::SchemaOrArray => {
            let list = message.descriptor().get_field_by_name("jSONSchemas");
            match (list, get(message, "jSONSchemas")) {
                (Some(field), Some(items)) => field_value(&field, &items),
                _ => get(message, "schema")
                    .map(|schema| scalar_value(&schema))
                    .transpose(),
            }
        }
        Special::SchemaOrStringArray => match get(message, "property").as_deref() {
            Some(Proto::List(items)) => Ok(Some(Value::Array(
                items.iter().map(scalar_value).collect::<Result<_, _>>()?,
            ))),
            _ => get(message, "schema")
                .map(|schema| scalar_value(&schema))
                .transpose(),
        },
        Special::ListWrapper => match get(message, "items").as_deref() {
            Some(Proto::List(items)) => Ok(Some(Value::Array(
                items.iter().map(scalar_value).collect::<Result<_, _>>()?,
            ))),
            _ => Ok(Some(Value::Array(Vec::new()))),
        },
    }
}
