//! What every client command shares: the kubeconfig and namespace flags, the client they make,
//! and URL building for a resource named the way users type it (`pods`, `po`, `pod/x`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use shoal_control::api::resources::{lookup_kind, lookup_name, ResourceInfo};
use shoal_control::client::Client;

#[derive(Args, Clone, Debug)]
pub struct ConnectionArgs {
    /// The kubeconfig to use (default: $KUBECONFIG, else ~/.shoal/dev/kubeconfig).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The namespace (default: the kubeconfig context's, else "default").
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
}

pub struct Connection {
    pub client: Client,
    pub namespace: String,
}

impl ConnectionArgs {
    pub async fn connect(&self) -> anyhow::Result<Connection> {
        let path = crate::kubeconfig::locate(self.kubeconfig.as_deref());
        let (client, namespace) = crate::kubeconfig::connect(&path).await?;
        Ok(Connection {
            client,
            namespace: self.namespace.clone().unwrap_or(namespace),
        })
    }
}

/// A resource by the name a user typed.
pub fn resource(name: &str) -> anyhow::Result<&'static ResourceInfo> {
    lookup_name(name)
        .ok_or_else(|| anyhow::anyhow!("the server doesn't have a resource type {name:?}"))
}

/// A resource by a manifest's apiVersion and kind.
pub fn resource_of(object: &serde_json::Value) -> anyhow::Result<&'static ResourceInfo> {
    let api_version = object["apiVersion"].as_str().unwrap_or("");
    let kind = object["kind"].as_str().unwrap_or("");
    if kind.is_empty() || api_version.is_empty() {
        anyhow::bail!("the object has no apiVersion or kind: every manifest document needs both");
    }
    lookup_kind(api_version, kind)
        .ok_or_else(|| anyhow::anyhow!("no matches for kind {kind:?} in version {api_version:?}"))
}

/// The collection URL of `resource` in `namespace` (cluster-wide with `None`).
pub fn collection_path(resource: &ResourceInfo, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) if resource.namespaced => format!(
            "{}/namespaces/{ns}/{}",
            resource.group_version_path(),
            resource.plural
        ),
        _ => format!("{}/{}", resource.group_version_path(), resource.plural),
    }
}

/// Splits `kind/name` or takes `kind` and `name` separately.
pub fn kind_and_name(
    first: &str,
    second: Option<&str>,
) -> anyhow::Result<(&'static ResourceInfo, Option<String>)> {
    match first.split_once('/') {
        Some((kind, name)) => Ok((resource(kind)?, Some(name.to_string()))),
        None => Ok((resource(first)?, second.map(str::to_string))),
    }
}

/// Reads manifest documents (YAML or JSON, `---`-separated; `-` is stdin).
pub fn read_manifests(file: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let text = if file == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading stdin")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?
    };
    let mut documents = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let value = serde_yaml::Value::deserialize(document)
            .with_context(|| format!("{file}: document {} is not valid YAML", i + 1))?;
        if value.is_null() {
            continue;
        }
        let json: serde_json::Value = serde_json::to_value(value)
            .with_context(|| format!("{file}: document {} cannot be converted to JSON", i + 1))?;
        if !json.is_object() {
            anyhow::bail!("{file}: document {} is not an object", i + 1);
        }
        documents.push(json);
    }
    Ok(documents)
}

use serde::Deserialize;
