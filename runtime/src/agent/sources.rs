//! The ConfigMaps and Secrets a pod refers to (volumes, `env`, `envFrom`), fetched once per
//! pod start through the API, and how their data becomes files.

use std::collections::BTreeMap;
use std::collections::HashMap;

use k8s_openapi::api::core::v1::{ConfigMap, KeyToPath, Secret};
use shoal_api::client::Client;

use super::config::ConfigError;

pub struct Sources {
    client: Client,
    namespace: String,
    config_maps: HashMap<String, Option<BTreeMap<String, Vec<u8>>>>,
    secrets: HashMap<String, Option<BTreeMap<String, Vec<u8>>>>,
}

impl Sources {
    pub fn new(client: Client, namespace: &str) -> Self {
        Self {
            client,
            namespace: namespace.into(),
            config_maps: HashMap::new(),
            secrets: HashMap::new(),
        }
    }

    /// The data of ConfigMap `name` (text and binary keys), or `None` if it does not exist.
    pub async fn config_map(
        &mut self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, ConfigError> {
        if !self.config_maps.contains_key(name) {
            let found = self
                .client
                .api::<ConfigMap>(Some(&self.namespace))
                .get_opt(name)
                .await
                .map_err(|source| ConfigError::Read {
                    kind: "configmap",
                    name: name.into(),
                    source,
                })?;
            let data = found.map(|cm| {
                let mut data: BTreeMap<String, Vec<u8>> = cm
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .collect();
                data.extend(
                    cm.binary_data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0)),
                );
                data
            });
            self.config_maps.insert(name.into(), data);
        }
        Ok(self.config_maps[name].clone())
    }

    /// The decoded data of Secret `name`, or `None` if it does not exist.
    pub async fn secret(
        &mut self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, ConfigError> {
        if !self.secrets.contains_key(name) {
            let found = self
                .client
                .api::<Secret>(Some(&self.namespace))
                .get_opt(name)
                .await
                .map_err(|source| ConfigError::Read {
                    kind: "secret",
                    name: name.into(),
                    source,
                })?;
            let data = found.map(|s| {
                let mut data: BTreeMap<String, Vec<u8>> = s
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect();
                data.extend(
                    s.string_data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.into_bytes())),
                );
                data
            });
            self.secrets.insert(name.into(), data);
        }
        Ok(self.secrets[name].clone())
    }
}

/// The data of a ConfigMap or Secret that must exist unless `optional`.
pub fn present(
    data: Option<BTreeMap<String, Vec<u8>>>,
    kind: &'static str,
    name: &str,
    optional: Option<bool>,
) -> Result<BTreeMap<String, Vec<u8>>, ConfigError> {
    match data {
        Some(data) => Ok(data),
        None if optional == Some(true) => Ok(BTreeMap::new()),
        None => Err(ConfigError::NotFound {
            context: String::new(),
            kind,
            name: name.into(),
        }),
    }
}

/// The files of a ConfigMap or Secret volume: every key, or the `items` mapping.
pub fn select(
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    kind: &'static str,
    name: &str,
) -> Result<Vec<(String, Vec<u8>)>, ConfigError> {
    match items {
        None => Ok(data.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
        Some(items) => items
            .iter()
            .map(|item| match data.get(&item.key) {
                Some(value) => Ok((item.path.clone(), value.clone())),
                None => Err(ConfigError::NoKey {
                    context: String::new(),
                    kind,
                    name: name.into(),
                    key: item.key.clone(),
                }),
            })
            .collect(),
    }
}
