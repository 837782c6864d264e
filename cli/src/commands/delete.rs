//! `shoal delete KIND NAME` or `shoal delete -f FILE`: deletes, then waits until the objects
//! are gone (pods stop on their node first), as `kubectl delete` does.

use std::time::{Duration, Instant};

use clap::Args;
use http::Method;
use serde_json::{json, Value};

use super::connection::{
    collection_path, kind_and_name, read_manifests, resource_of, ConnectionArgs,
};

#[derive(Args)]
pub struct DeleteCommand {
    /// The resource or `kind/name`.
    kind: Option<String>,
    names: Vec<String>,
    /// Delete the objects of a manifest.
    #[arg(short = 'f', long = "filename")]
    file: Option<String>,
    /// Return without waiting for the objects to be gone.
    #[arg(long)]
    no_wait: bool,
    /// Seconds the pods get to stop (0 deletes at once).
    #[arg(long)]
    grace_period: Option<i64>,
    #[command(flatten)]
    connection: ConnectionArgs,
}

impl DeleteCommand {
    pub async fn execute(self) -> anyhow::Result<()> {
        let connection = self.connection.connect().await?;
        let mut targets = Vec::new();
        if let Some(file) = &self.file {
            for object in read_manifests(file)? {
                let resource = resource_of(&object)?;
                let namespace = object
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or(&connection.namespace)
                    .to_string();
                let name = object
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                targets.push((resource, namespace, name));
            }
        } else {
            let kind = self.kind.as_deref().ok_or_else(|| {
                anyhow::anyhow!("say what to delete: shoal delete KIND NAME, or -f FILE")
            })?;
            let (resource, first) = kind_and_name(kind, None)?;
            let names: Vec<String> = first
                .into_iter()
                .chain(self.names.iter().cloned())
                .collect();
            if names.is_empty() {
                anyhow::bail!("resource(s) were provided, but no name was specified");
            }
            targets.extend(
                names
                    .into_iter()
                    .map(|n| (resource, connection.namespace.clone(), n)),
            );
        }
        let mut options =
            json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"});
        if let Some(grace) = self.grace_period {
            options["gracePeriodSeconds"] = grace.into();
        }
        let mut pending = Vec::new();
        for (resource, namespace, name) in targets {
            let path = format!("{}/{name}", collection_path(resource, Some(&namespace)));
            connection
                .client
                .json(Method::DELETE, &path, "application/json", Some(&options))
                .await?;
            println!("{} \"{name}\" deleted", resource.singular);
            pending.push(path);
        }
        if self.no_wait {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        for path in pending {
            while connection
                .client
                .json(Method::GET, &path, "application/json", None)
                .await
                .is_ok()
            {
                if Instant::now() > deadline {
                    anyhow::bail!("timed out waiting for {path} to be deleted");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }
}
