//! `shoal dashboard`: opens the cluster's web dashboard (`/ui/` on the API server) logged in as
//! the kubeconfig's user. It asks the API server for a short-lived dashboard session for that
//! user (`POST /shoal/v1/dashboard/token`) and opens `https://SERVER/ui/#token=…` in the
//! browser; the page takes the token out of the address at once, and the fragment is never
//! sent to any server. `--print-url` prints the URL instead.

use clap::Args;

use super::connection::ConnectionArgs;
use super::kubeconfig::parse_duration;

#[derive(Args)]
pub struct DashboardCommand {
    /// Print the URL instead of opening a browser.
    #[arg(long)]
    print_url: bool,
    /// How long the session lasts: seconds, or a number with s, m, h or d (at most 24h).
    #[arg(long, default_value = "1h")]
    ttl: String,
    #[command(flatten)]
    connection: ConnectionArgs,
}

impl DashboardCommand {
    pub async fn execute(self) -> anyhow::Result<()> {
        let ttl = parse_duration(&self.ttl)?;
        let connection = self.connection.connect().await?;
        let session = connection
            .client
            .json(
                http::Method::POST,
                &format!("/shoal/v1/dashboard/token?ttl={}", ttl.as_secs()),
                "application/json",
                None,
            )
            .await?;
        let token = session["token"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("the API server answered no session token"))?;
        let path = crate::kubeconfig::locate(self.connection.kubeconfig.as_deref());
        let (server, _) = crate::kubeconfig::cluster_of(&path)?;
        let url = format!("{}/ui/#token={token}", server.trim_end_matches('/'));
        if self.print_url {
            println!("{url}");
            return Ok(());
        }
        let opened = std::process::Command::new("xdg-open")
            .arg(&url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        match opened {
            Ok(status) if status.success() => {
                println!(
                    "opened the dashboard as {} (the session ends at {})",
                    session["user"].as_str().unwrap_or("?"),
                    session["expirationTimestamp"].as_str().unwrap_or("?")
                );
            }
            _ => {
                eprintln!("no browser could be opened; open this URL (it logs you in):");
                println!("{url}");
            }
        }
        Ok(())
    }
}
