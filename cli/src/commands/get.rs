//! `shoal get KIND [NAME]`: the server's Table for the resource, printed as columns, or the
//! objects as YAML or JSON.

use clap::Args;
use http::{Method, Request};
use serde_json::Value;

use super::connection::{collection_path, kind_and_name, ConnectionArgs};

#[derive(Args)]
pub struct GetCommand {
    /// The resource (`pods`, `po`, `nodes`, …) or `kind/name`.
    kind: String,
    name: Option<String>,
    /// Output format: wide, yaml, json or name.
    #[arg(short = 'o', long)]
    output: Option<String>,
    /// List across all namespaces.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// Filter by label selector.
    #[arg(short = 'l', long)]
    selector: Option<String>,
    #[command(flatten)]
    connection: ConnectionArgs,
}

impl GetCommand {
    pub async fn execute(self) -> anyhow::Result<()> {
        let connection = self.connection.connect().await?;
        let (resource, name) = kind_and_name(&self.kind, self.name.as_deref())?;
        let namespace = (!self.all_namespaces).then_some(connection.namespace.as_str());
        let mut path = collection_path(resource, namespace);
        if let Some(name) = &name {
            path = format!("{path}/{name}");
        }
        if let Some(selector) = &self.selector {
            path = format!(
                "{path}?labelSelector={}",
                url::form_urlencoded::byte_serialize(selector.as_bytes()).collect::<String>()
            );
        }
        match self.output.as_deref() {
            Some("yaml") | Some("json") | Some("name") => {
                let value = connection
                    .client
                    .json(Method::GET, &path, "application/json", None)
                    .await?;
                match self.output.as_deref() {
                    Some("yaml") => print!("{}", serde_yaml::to_string(&value)?),
                    Some("json") => println!("{}", serde_json::to_string_pretty(&value)?),
                    _ => {
                        let items = value
                            .get("items")
                            .and_then(Value::as_array)
                            .cloned()
                            .unwrap_or_else(|| vec![value.clone()]);
                        for item in items {
                            println!(
                                "{}/{}",
                                resource.singular,
                                item.pointer("/metadata/name")
                                    .and_then(Value::as_str)
                                    .unwrap_or("")
                            );
                        }
                    }
                }
            }
            Some("wide") | None => {
                let table = get_table(&connection.client, &path).await?;
                let rows = table["rows"].as_array().cloned().unwrap_or_default();
                if rows.is_empty() && name.is_none() {
                    eprintln!("No resources found");
                    return Ok(());
                }
                print!(
                    "{}",
                    render(
                        &table,
                        self.output.as_deref() == Some("wide"),
                        self.all_namespaces && resource.namespaced
                    )
                );
            }
            Some(other) => {
                anyhow::bail!("unknown output format {other:?}: use wide, yaml, json or name")
            }
        }
        Ok(())
    }
}

async fn get_table(client: &shoal_control::client::Client, path: &str) -> anyhow::Result<Value> {
    let request = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header(
            http::header::ACCEPT,
            "application/json;as=Table;v=v1;g=meta.k8s.io",
        )
        .body(Vec::new())?;
    let bytes = client.send_bytes(request).await?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// Prints a Table as kubectl does: upper-case headers, columns padded to fit.
pub fn render(table: &Value, wide: bool, with_namespace: bool) -> String {
    let columns = table["columnDefinitions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let shown: Vec<usize> = (0..columns.len())
        .filter(|i| wide || columns[*i]["priority"].as_i64().unwrap_or(0) == 0)
        .collect();
    let mut lines: Vec<Vec<String>> = Vec::new();
    let mut header: Vec<String> = shown
        .iter()
        .map(|i| columns[*i]["name"].as_str().unwrap_or("").to_uppercase())
        .collect();
    if with_namespace {
        header.insert(0, "NAMESPACE".into());
    }
    lines.push(header);
    for row in table["rows"].as_array().into_iter().flatten() {
        let cells = row["cells"].as_array().cloned().unwrap_or_default();
        let mut line: Vec<String> = shown
            .iter()
            .map(|i| match cells.get(*i) {
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            })
            .collect();
        if with_namespace {
            line.insert(
                0,
                row.pointer("/object/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            );
        }
        lines.push(line);
    }
    let widths: Vec<usize> = (0..lines[0].len())
        .map(|c| lines.iter().map(|l| l[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for line in lines {
        let padded: Vec<String> = line
            .iter()
            .enumerate()
            .map(|(c, cell)| format!("{cell:<width$}", width = widths[c]))
            .collect();
        out.push_str(padded.join("   ").trim_end());
        out.push('\n');
    }
    out
}
