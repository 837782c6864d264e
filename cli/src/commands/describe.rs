//! `shoal describe KIND NAME`: the object as YAML, then the events about it.

use clap::Args;
use http::Method;
use serde_json::Value;

use super::connection::{collection_path, kind_and_name, ConnectionArgs};

#[derive(Args)]
pub struct DescribeCommand {
    /// The resource or `kind/name`.
    kind: String,
    name: Option<String>,
    #[command(flatten)]
    connection: ConnectionArgs,
}

impl DescribeCommand {
    pub async fn execute(self) -> anyhow::Result<()> {
        let connection = self.connection.connect().await?;
        let (resource, name) = kind_and_name(&self.kind, self.name.as_deref())?;
        let name = name.ok_or_else(|| {
            anyhow::anyhow!(
                "describe needs a name: shoal describe {} NAME",
                resource.singular
            )
        })?;
        let path = format!(
            "{}/{name}",
            collection_path(resource, Some(&connection.namespace))
        );
        let mut object = connection
            .client
            .json(Method::GET, &path, "application/json", None)
            .await?;
        let uid = object
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("managedFields");
        }
        print!("{}", serde_yaml::to_string(&object)?);
        let namespace = if resource.namespaced {
            connection.namespace.as_str()
        } else {
            "default"
        };
        let selector = format!("involvedObject.name={name},involvedObject.uid={uid}");
        let events_path = format!(
            "/api/v1/namespaces/{namespace}/events?fieldSelector={}",
            url::form_urlencoded::byte_serialize(selector.as_bytes()).collect::<String>()
        );
        let events = connection
            .client
            .json(Method::GET, &events_path, "application/json", None)
            .await?;
        let items = events["items"].as_array().cloned().unwrap_or_default();
        println!("Events:");
        if items.is_empty() {
            println!("  <none>");
        }
        for event in items {
            let field = |p: &str| {
                event
                    .pointer(p)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            println!(
                "  {}\t{}\t{}\t{}",
                field("/type"),
                field("/reason"),
                field("/source/component"),
                field("/message")
            );
        }
        Ok(())
    }
}
