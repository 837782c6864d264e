//! The JSON form of a Kubernetes object to its protobuf message: the inverse of
//! [`super::to_json`]. Properties the message does not have are dropped, as Kubernetes'
//! protobuf encoding drops them; `null` is absent.

use base64::Engine;
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, Value as Proto,
};
use serde_json::Value;

use super::names::{self, JsonName, Special};
use super::ProtobufError;

/// `value` as a message of type `descriptor`; `path` names the place in errors.
pub fn message(
    descriptor: &MessageDescriptor,
    value: &Value,
    path: &str,
) -> Result<DynamicMessage, ProtobufError> {
    if let Some(special) = names::special(descriptor) {
        return special_form(descriptor, special, value, path);
    }
    let Value::Object(object) = value else {
        return Err(wrong(path, "an object", value));
    };
    let mut message = DynamicMessage::new(descriptor.clone());
    for field in descriptor.fields() {
        match names::json_name(descriptor, field.number(), field.name()) {
            JsonName::Property(name) => {
                let Some(value) = object.get(&name).filter(|v| !v.is_null()) else {
                    continue;
                };
                let place = format!("{path}.{name}");
                message.set_field(&field, field_value(&field, value, &place)?);
            }
            JsonName::Inline => {
                let Kind::Message(inner) = field.kind() else {
                    continue;
                };
                let embedded = self::message(&inner, value, path)?;
                if embedded.fields().next().is_some() {
                    message.set_field(&field, Proto::Message(embedded));
                }
            }
        }
    }
    Ok(message)
}

fn field_value(field: &FieldDescriptor, value: &Value, path: &str) -> Result<Proto, ProtobufError> {
    let kind = field.kind();
    if field.is_map() {
        let Value::Object(entries) = value else {
            return Err(wrong(path, "an object", value));
        };
        let Kind::Message(entry) = &kind else {
            return Err(ProtobufError::Invalid(format!(
                "{path}: a map without entries"
            )));
        };
        let value_kind = entry.map_entry_value_field().kind();
        let mut map = std::collections::HashMap::new();
        for (key, item) in entries {
            let place = format!("{path}.{key}");
            map.insert(
                MapKey::String(key.clone()),
                single(&value_kind, item, &place)?,
            );
        }
        return Ok(Proto::Map(map));
    }
    if field.is_list() {
        let Value::Array(items) = value else {
            return Err(wrong(path, "a list", value));
        };
        return items
            .iter()
            .enumerate()
            .map(|(i, item)| single(&kind, item, &format!("{path}[{i}]")))
            .collect::<Result<Vec<_>, _>>()
            .map(Proto::List);
    }
    single(&kind, value, path)
}

fn single(kind: &Kind, value: &Value, path: &str) -> Result<Proto, ProtobufError> {
    let integer = || {
        value
            .as_i64()
            .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
            .ok_or_else(|| wrong(path, "an integer", value))
    };
    let out_of_range = || ProtobufError::Invalid(format!("{path}: {value} is out of range"));
    Ok(match kind {
        Kind::Message(descriptor) => Proto::Message(message(descriptor, value, path)?),
        Kind::String => Proto::String(match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => return Err(wrong(path, "a string", other)),
        }),
        Kind::Bytes => {
            let text = value
                .as_str()
                .ok_or_else(|| wrong(path, "base64 text", value))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| ProtobufError::Invalid(format!("{path}: not base64: {e}")))?;
            Proto::Bytes(bytes.into())
        }
        Kind::Bool => Proto::Bool(
            value
                .as_bool()
                .ok_or_else(|| wrong(path, "a bool", value))?,
        ),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Proto::I32(i32::try_from(integer()?).map_err(|_| out_of_range())?)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Proto::I64(integer()?),
        Kind::Uint32 | Kind::Fixed32 => {
            Proto::U32(u32::try_from(integer()?).map_err(|_| out_of_range())?)
        }
        Kind::Uint64 | Kind::Fixed64 => Proto::U64(
            value
                .as_u64()
                .ok_or_else(|| wrong(path, "an unsigned integer", value))?,
        ),
        Kind::Double => Proto::F64(
            value
                .as_f64()
                .ok_or_else(|| wrong(path, "a number", value))?,
        ),
        // Narrowing to f32 is what a float field holds.
        Kind::Float => Proto::F32(
            value
                .as_f64()
                .ok_or_else(|| wrong(path, "a number", value))? as f32,
        ),
        Kind::Enum(_) => Proto::EnumNumber(i32::try_from(integer()?).map_err(|_| out_of_range())?),
    })
}

fn special_form(
    descriptor: &MessageDescriptor,
    special: Special,
    value: &Value,
    path: &str,
) -> Result<DynamicMessage, ProtobufError> {
    let mut message = DynamicMessage::new(descriptor.clone());
    let mut set = |name: &str, field_value: Proto| {
        if let Some(field) = descriptor.get_field_by_name(name) {
            message.set_field(&field, field_value);
        }
    };
    match special {
        Special::Time | Special::MicroTime => {
            let text = value
                .as_str()
                .ok_or_else(|| wrong(path, "an RFC 3339 time", value))?;
            let time = chrono::DateTime::parse_from_rfc3339(text).map_err(|e| {
                ProtobufError::Invalid(format!("{path}: {text:?} is not an RFC 3339 time: {e}"))
            })?;
            set("seconds", Proto::I64(time.timestamp()));
            let nanos = time.timestamp_subsec_nanos();
            if special == Special::MicroTime && nanos > 0 {
                // Lossless: at most 999,999,999.
                set("nanos", Proto::I32(nanos as i32));
            }
        }
        Special::IntOrString => match value {
            Value::String(s) => {
                set("type", Proto::I64(1));
                set("strVal", Proto::String(s.clone()));
            }
            Value::Number(_) => {
                let n = value
                    .as_i64()
                    .ok_or_else(|| wrong(path, "an integer", value))?;
                set("type", Proto::I64(0));
                set(
                    "intVal",
                    Proto::I32(i32::try_from(n).map_err(|_| {
                        ProtobufError::Invalid(format!("{path}: {n} is out of range"))
                    })?),
                );
            }
            other => return Err(wrong(path, "a number or a string", other)),
        },
        Special::Quantity => set(
            "string",
            Proto::String(match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                other => return Err(wrong(path, "a quantity", other)),
            }),
        ),
        Special::RawJson => {
            let raw = serde_json::to_vec(value)
                .map_err(|e| ProtobufError::Invalid(format!("{path}: {e}")))?;
            if let Some(field) = descriptor.fields().next() {
                message.set_field(&field, Proto::Bytes(raw.into()));
            }
        }
        Special::SchemaOrBool => match value {
            Value::Bool(allows) => set("allows", Proto::Bool(*allows)),
            schema => {
                set("allows", Proto::Bool(true));
                set_schema(descriptor, &mut message, schema, path)?;
            }
        },
        Special::SchemaOrArray => match value {
            Value::Array(_) => {
                if let Some(field) = descriptor.get_field_by_name("jSONSchemas") {
                    let list = field_value(&field, value, path)?;
                    message.set_field(&field, list);
                }
            }
            schema => set_schema(descriptor, &mut message, schema, path)?,
        },
        Special::SchemaOrStringArray => match value {
            Value::Array(_) => {
                if let Some(field) = descriptor.get_field_by_name("property") {
                    let list = field_value(&field, value, path)?;
                    message.set_field(&field, list);
                }
            }
            schema => set_schema(descriptor, &mut message, schema, path)?,
        },
        Special::ListWrapper => {
            if let Some(field) = descriptor.get_field_by_name("items") {
                let list = field_value(&field, value, path)?;
                message.set_field(&field, list);
            }
        }
    }
    Ok(message)
}

fn set_schema(
    descriptor: &MessageDescriptor,
    message: &mut DynamicMessage,
    schema: &Value,
    path: &str,
) -> Result<(), ProtobufError> {
    if let Some(field) = descriptor.get_field_by_name("schema") {
        let value = field_value(&field, schema, path)?;
        message.set_field(&field, value);
    }
    Ok(())
}

fn wrong(path: &str, expected: &str, found: &Value) -> ProtobufError {
    let found = match found {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    };
    ProtobufError::Invalid(format!("{path}: expected {expected}, found {found}"))
}
