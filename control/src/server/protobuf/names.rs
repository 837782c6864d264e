//! How each protobuf field of a Kubernetes message appears in the JSON form, read from
//! Kubernetes' own OpenAPI definitions rather than written per type:
//! - a field whose name matches a property of the message's definition (ignoring case and
//!   punctuation: `uID` is `uid`, `xKubernetesListType` is `x-kubernetes-list-type`) is that
//!   property;
//! - a message field that matches none is a Go embedded struct, whose fields are inlined into
//!   the parent (`ConfigMapKeySelector.localObjectReference`, `Volume.volumeSource`,
//!   `Probe.handler`);
//! - a few apimachinery messages have a JSON form of their own ([`Special`]).

use std::collections::HashMap;
use std::sync::LazyLock;

use prost_reflect::{Kind, MessageDescriptor};

use crate::server::schemas;

/// Where a protobuf field goes in the JSON object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonName {
    /// The property of this name.
    Property(String),
    /// Its fields are the parent's own (a Go embedded struct).
    Inline,
}

/// Messages whose JSON form is not an object of their fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    /// `meta/v1.Time`: RFC 3339 to the second; the zero time is absent.
    Time,
    /// `meta/v1.MicroTime`: RFC 3339 with microseconds.
    MicroTime,
    /// `intstr.IntOrString`: a number or a string.
    IntOrString,
    /// `resource.Quantity`: its canonical string.
    Quantity,
    /// `runtime.RawExtension`, `meta/v1.FieldsV1`, apiextensions `JSON`: JSON bytes inline.
    RawJson,
    /// apiextensions `JSONSchemaPropsOrBool`: a schema or a bool.
    SchemaOrBool,
    /// apiextensions `JSONSchemaPropsOrArray`: a schema or a list of schemas.
    SchemaOrArray,
    /// apiextensions `JSONSchemaPropsOrStringArray`: a schema or a list of strings.
    SchemaOrStringArray,
    /// A named Go slice (`meta/v1.Verbs`, `ExtraValue`): a message with one repeated `items`.
    ListWrapper,
}

/// The special form of a message, if it has one.
pub fn special(message: &MessageDescriptor) -> Option<Special> {
    let special = match message.full_name() {
        "apimachinery.pkg.apis.meta.v1.Time" => Special::Time,
        "apimachinery.pkg.apis.meta.v1.MicroTime" => Special::MicroTime,
        "apimachinery.pkg.util.intstr.IntOrString" => Special::IntOrString,
        "apimachinery.pkg.api.resource.Quantity" => Special::Quantity,
        "apimachinery.pkg.runtime.RawExtension"
        | "apimachinery.pkg.apis.meta.v1.FieldsV1"
        | "apiextensions_apiserver.pkg.apis.apiextensions.v1.JSON" => Special::RawJson,
        "apiextensions_apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrBool" => {
            Special::SchemaOrBool
        }
        "apiextensions_apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrArray" => {
            Special::SchemaOrArray
        }
        "apiextensions_apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrStringArray" => {
            Special::SchemaOrStringArray
        }
        _ if is_list_wrapper(message) => Special::ListWrapper,
        _ => return None,
    };
    Some(special)
}

fn is_list_wrapper(message: &MessageDescriptor) -> bool {
    let mut fields = message.fields();
    fields.len() == 1
        && fields
            .next()
            .is_some_and(|f| f.name() == "items" && f.is_list())
        && schemas::definition(&schemas::definition_name_of_message(message.full_name())).is_none()
}

/// The JSON placement of every field of every message, by message full name and field number.
static NAMES: LazyLock<HashMap<String, HashMap<u32, JsonName>>> = LazyLock::new(|| {
    schemas::descriptors()
        .all_messages()
        .map(|message| (message.full_name().to_string(), placements(&message)))
        .collect()
});

/// Where field `number` of `message` goes in JSON.
pub fn json_name(message: &MessageDescriptor, number: u32, proto_name: &str) -> JsonName {
    NAMES
        .get(message.full_name())
        .and_then(|fields| fields.get(&number))
        .cloned()
        .unwrap_or_else(|| JsonName::Property(proto_name.to_string()))
}

fn placements(message: &MessageDescriptor) -> HashMap<u32, JsonName> {
    let properties: Vec<&str> =
        schemas::definition(&schemas::definition_name_of_message(message.full_name()))
            .and_then(|d| d["properties"].as_object())
            .map(|p| p.keys().map(String::as_str).collect())
            .unwrap_or_default();
    message
        .fields()
        .map(|field| {
            let wanted = normalized(field.name());
            let name = match properties.iter().find(|p| normalized(p) == wanted) {
                Some(property) => JsonName::Property(property.to_string()),
                None if !properties.is_empty()
                    && !field.is_list()
                    && !field.is_map()
                    && matches!(field.kind(), Kind::Message(_)) =>
                {
                    JsonName::Inline
                }
                None => JsonName::Property(field.name().to_string()),
            };
            (field.number(), name)
        })
        .collect()
}

fn normalized(name: &str) -> String {
    name.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(name: &str) -> MessageDescriptor {
        schemas::descriptors().get_message_by_name(name).unwrap()
    }

    fn name_of(message_name: &str, field: &str) -> JsonName {
        let message = message(message_name);
        let field = message.get_field_by_name(field).unwrap();
        json_name(&message, field.number(), field.name())
    }

    #[test]
    fn fields_take_their_openapi_names() {
        assert_eq!(
            name_of("api.authentication.v1.BoundObjectReference", "uID"),
            JsonName::Property("uid".into())
        );
        assert_eq!(
            name_of(
                "apiextensions_apiserver.pkg.apis.apiextensions.v1.JSONSchemaProps",
                "xKubernetesPreserveUnknownFields"
            ),
            JsonName::Property("x-kubernetes-preserve-unknown-fields".into())
        );
        assert_eq!(
            name_of(
                "apiextensions_apiserver.pkg.apis.apiextensions.v1.JSONSchemaProps",
                "ref"
            ),
            JsonName::Property("$ref".into())
        );
        assert_eq!(
            name_of("api.apps.v1.DeploymentSpec", "replicas"),
            JsonName::Property("replicas".into())
        );
    }

    #[test]
    fn embedded_structs_are_inlined() {
        assert_eq!(
            name_of("api.core.v1.Volume", "volumeSource"),
            JsonName::Inline
        );
        assert_eq!(name_of("api.core.v1.Probe", "handler"), JsonName::Inline);
        assert_eq!(
            name_of("api.core.v1.ConfigMapKeySelector", "localObjectReference"),
            JsonName::Inline
        );
    }

    #[test]
    fn special_messages_are_recognised() {
        assert_eq!(
            special(&message("apimachinery.pkg.apis.meta.v1.Verbs")),
            Some(Special::ListWrapper)
        );
        assert_eq!(
            special(&message("api.authentication.v1.ExtraValue")),
            Some(Special::ListWrapper)
        );
        assert_eq!(
            special(&message("apimachinery.pkg.util.intstr.IntOrString")),
            Some(Special::IntOrString)
        );
        assert_eq!(special(&message("api.core.v1.PodList")), None);
    }
}
