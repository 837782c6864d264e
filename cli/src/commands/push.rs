//! `shoal push FILE`: uploads a Wasm module or component into the cluster's module store and
//! prints the image reference (`sha256:<hex>`) to put in a pod's `image`.

use clap::Args;

use super::connection::ConnectionArgs;

#[derive(Args)]
pub struct PushCommand {
    /// The .wasm file.
    file: std::path::PathBuf,
    #[command(flatten)]
    connection: ConnectionArgs,
}

impl PushCommand {
    pub async fn execute(self) -> anyhow::Result<()> {
        let bytes = std::fs::read(&self.file)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", self.file.display()))?;
        let connection = self.connection.connect().await?;
        let reference = connection.client.push_module(bytes).await?;
        println!("{reference}");
        Ok(())
    }
}
