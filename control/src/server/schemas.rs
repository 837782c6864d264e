//! Kubernetes' own type schemas, vendored as data (`control/kubernetes`, v1.33.1): the
//! OpenAPI v2 `definitions` (descriptions, types, patch strategies, GVKs) and the compiled
//! `.proto` descriptors. Parsed once, on first use; nothing here is written by hand.

use std::sync::LazyLock;

use prost_reflect::DescriptorPool;
use serde_json::{Map, Value};

static DEFINITIONS: LazyLock<Map<String, Value>> = LazyLock::new(|| {
    let document: Value =
        serde_json::from_str(include_str!("../../kubernetes/swagger-definitions.json"))
            .expect("kubernetes/swagger-definitions.json is JSON (checked by a test)");
    match document {
        Value::Object(mut root) => match root.remove("definitions") {
            Some(Value::Object(definitions)) => definitions,
            _ => Map::new(),
        },
        _ => Map::new(),
    }
});

static DESCRIPTORS: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(include_bytes!(concat!(env!("OUT_DIR"), "/kubernetes.binpb")).as_slice())
        .expect("build.rs wrote a valid descriptor set (checked by a test)")
});

/// Every OpenAPI v2 definition, by name (`io.k8s.api.apps.v1.Deployment`).
pub fn definitions() -> &'static Map<String, Value> {
    &DEFINITIONS
}

/// One OpenAPI v2 definition.
pub fn definition(name: &str) -> Option<&'static Value> {
    DEFINITIONS.get(name)
}

/// The protobuf messages of every stable Kubernetes API group.
pub fn descriptors() -> &'static DescriptorPool {
    &DESCRIPTORS
}

/// The OpenAPI definition name of a protobuf message: the vendored protos' packages are the
/// Go import paths under `k8s.io` (`api.apps.v1.Deployment` is `io.k8s.api.apps.v1.Deployment`).
pub fn definition_name_of_message(full_name: &str) -> String {
    let path = full_name
        .replacen("apiextensions_apiserver.", "apiextensions-apiserver.", 1)
        .replacen("kube_aggregator.", "kube-aggregator.", 1);
    format!("io.k8s.{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vendored_schemas_load() {
        assert!(definitions().len() > 500);
        let deployment = definition("io.k8s.api.apps.v1.Deployment").unwrap();
        assert!(deployment["description"]
            .as_str()
            .unwrap()
            .contains("declarative updates"));
        let message = descriptors()
            .get_message_by_name("api.apps.v1.Deployment")
            .unwrap();
        assert!(definition(&definition_name_of_message(message.full_name())).is_some());
    }
}
