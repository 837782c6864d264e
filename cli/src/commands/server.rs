//! `shoal server`: the control plane alone; agents join it with `shoal agent --server URL`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use crate::cluster::{ControlPlane, ControlPlaneOptions};

#[derive(Args)]
pub struct ServerCommand {
    /// Where the API server listens.
    #[arg(long, default_value = "127.0.0.1:6443")]
    api_addr: SocketAddr,
    /// Where the store and kubeconfig live.
    #[arg(long, default_value = "shoal-data")]
    data_dir: PathBuf,
    /// Seconds a node may be unreachable (its lease expired) before its pods are evicted.
    #[arg(long, default_value_t = 60)]
    pod_eviction_timeout_seconds: u64,
    /// How the scheduler places pods that name no profile: `spread` (fewest pods first) or
    /// `bin-packing` (fill the most allocated node first).
    #[arg(long, default_value = "spread")]
    scheduler_profile: shoal_control::scheduler::Profile,
    /// Events the store keeps for watches to resume from; a watch from before them gets
    /// 410 Gone (clients relist).
    #[arg(long)]
    event_log_len: Option<u64>,
}

impl ServerCommand {
    pub async fn execute(self) -> anyhow::Result<()> {
        super::init_tracing();
        let mut options = ControlPlaneOptions::default();
        options.controllers.pod_eviction_timeout =
            std::time::Duration::from_secs(self.pod_eviction_timeout_seconds);
        options.scheduler.default_profile = self.scheduler_profile;
        options.event_log_len = self.event_log_len;
        let control = ControlPlane::start_with(&self.data_dir, self.api_addr, options).await?;
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
