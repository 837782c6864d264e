//! `shoal server`: the control plane alone; agents join it with `shoal agent --server URL`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use crate::cluster::ControlPlane;

#[derive(Args)]
pub struct ServerCommand {
    /// Where the API server listens.
    #[arg(long, default_value = "127.0.0.1:6443")]
    api_addr: SocketAddr,
    /// Where the store and kubeconfig live.
    #[arg(long, default_value = "shoal-data")]
    data_dir: PathBuf,
}

impl ServerCommand {
    pub async fn execute(self) -> anyhow::Result<()> {
        super::init_tracing();
        let mut control = ControlPlane::start(&self.data_dir, self.api_addr).await?;
        let kubeconfig = self.data_dir.join("kubeconfig");
        crate::kubeconfig::write(&kubeconfig, &control.url())?;
        println!(
            "shoal server ready: API at {}; kubeconfig at {}",
            control.url(),
            kubeconfig.display()
        );
        super::shutdown_signal().await;
        control.shutdown().await;
        Ok(())
    }
}
