//! `shoal logs POD [-c CONTAINER] [-f]`: prints a container's log, following it with `-f`.

use std::io::Write;

use clap::Args;
use http_body_util::BodyExt;

use super::connection::ConnectionArgs;

#[derive(Args)]
pub struct LogsCommand {
    /// The pod (or `pod/NAME`).
    pod: String,
    /// The container (default: the first).
    #[arg(short = 'c', long)]
    container: Option<String>,
    /// Keep streaming while the container runs.
    #[arg(short = 'f', long)]
    follow: bool,
    #[command(flatten)]
    connection: ConnectionArgs,
}

impl LogsCommand {
    pub async fn execute(self) -> anyhow::Result<()> {
        let connection = self.connection.connect().await?;
        let pod = self
            .pod
            .strip_prefix("pod/")
            .or_else(|| self.pod.strip_prefix("pods/"))
            .unwrap_or(&self.pod);
        let mut body = connection
            .client
            .pod_logs(
                &connection.namespace,
                pod,
                self.container.as_deref(),
                self.follow,
            )
            .await?;
        let mut stdout = std::io::stdout();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                stdout.write_all(&data)?;
                stdout.flush()?;
            }
        }
        Ok(())
    }
}
