//! `shoal apply -f FILE`: creates each object of a manifest, or updates it if it exists
//! (server-side apply). Image paths starting with `~/` are expanded, a convenience for
//! manifests that name modules in the user's home.

use clap::Args;
use http::Method;
use serde_json::Value;

use super::connection::{collection_path, read_manifests, resource_of, ConnectionArgs};

#[derive(Args)]
pub struct ApplyCommand {
    /// The manifest (YAML or JSON, several documents allowed; `-` reads stdin).
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<String>,
    #[command(flatten)]
    connection: ConnectionArgs,
}

impl ApplyCommand {
    pub async fn execute(self) -> anyhow::Result<()> {
        let connection = self.connection.connect().await?;
        let mut documents = Vec::new();
        for file in &self.files {
            documents.extend(read_manifests(file)?);
        }
        // Check every document before changing anything.
        let resources = documents
            .iter()
            .map(resource_of)
            .collect::<anyhow::Result<Vec<_>>>()?;
        for (mut object, resource) in documents.into_iter().zip(resources) {
            expand_home_in_images(&mut object);
            let name = object
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let namespace = object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| connection.namespace.clone());
            let collection = collection_path(resource, Some(&namespace));
            let client = &connection.client;
            let exists = !name.is_empty()
                && client
                    .json(
                        Method::GET,
                        &format!("{collection}/{name}"),
                        "application/json",
                        None,
                    )
                    .await
                    .is_ok();
            let stored = if exists {
                let path = format!("{collection}/{name}?fieldManager=shoal");
                client
                    .json(
                        Method::PATCH,
                        &path,
                        "application/apply-patch+yaml",
                        Some(&object),
                    )
                    .await?
            } else {
                client
                    .json(
                        Method::POST,
                        &format!("{collection}?fieldManager=shoal"),
                        "application/json",
                        Some(&object),
                    )
                    .await?
            };
            let stored_name = stored
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or(&name);
            let verb = if exists { "configured" } else { "created" };
            println!("{}/{stored_name} {verb}", resource.singular);
        }
        Ok(())
    }
}

fn expand_home_in_images(object: &mut Value) {
    let Some(home) = std::env::var_os("HOME").map(|h| h.to_string_lossy().into_owned()) else {
        return;
    };
    for list in ["containers", "initContainers"] {
        let Some(containers) = object
            .pointer_mut(&format!("/spec/{list}"))
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        for container in containers {
            if let Some(image) = container.get("image").and_then(Value::as_str) {
                if let Some(rest) = image.strip_prefix("~/") {
                    container["image"] = Value::String(format!("{home}/{rest}"));
                }
            }
        }
    }
}
