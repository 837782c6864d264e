//! `shoal push FILE [REF]`: uploads a Wasm module or component. Without `REF`, into the
//! cluster's module store, printing the image reference (`sha256:<hex>`) to put in a pod's
//! `image`; with `REF` (`registry.example.com/team/app:1.2`), to that OCI registry as a Wasm
//! artifact in the CNCF layout, printing the reference by digest.

use std::io::Read as _;
use std::path::PathBuf;

use clap::Args;
use shoal_runtime::engine::oci;

use super::connection::ConnectionArgs;

#[derive(Args)]
pub struct PushCommand {
    /// The .wasm file.
    file: PathBuf,
    /// An OCI registry reference to push to (else: the cluster's module store).
    reference: Option<String>,
    /// The registry user (the password is read from standard input); otherwise
    /// credentials come from ~/.docker/config.json, or none.
    #[arg(long, requires = "password_stdin")]
    username: Option<String>,
    /// Read the registry password from standard input.
    #[arg(long, requires = "username")]
    password_stdin: bool,
    /// Speak plain HTTP to the registry (a local one), not HTTPS.
    #[arg(long)]
    plain_http: bool,
    /// A PEM file of CA certificates to trust for the registry, besides the system's.
    #[arg(long)]
    registry_ca: Option<PathBuf>,
    #[command(flatten)]
    connection: ConnectionArgs,
}

impl PushCommand {
    pub async fn execute(self) -> anyhow::Result<()> {
        let bytes = std::fs::read(&self.file)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", self.file.display()))?;
        let Some(reference) = &self.reference else {
            let connection = self.connection.connect().await?;
            let reference = connection.client.push_module(bytes).await?;
            println!("{reference}");
            return Ok(());
        };
        let registry = oci::registry_of(reference).map_err(|why| anyhow::anyhow!("{why}"))?;
        let credentials = match &self.username {
            Some(user) => {
                let mut password = String::new();
                std::io::stdin().read_to_string(&mut password)?;
                let password = password.trim_end_matches(['\r', '\n']).to_string();
                vec![(registry.clone(), user.clone(), password)]
            }
            None => docker_config_credentials()?,
        };
        let settings = oci::RegistrySettings {
            insecure: if self.plain_http {
                vec![registry]
            } else {
                Vec::new()
            },
            extra_ca: self.registry_ca.clone(),
            ..Default::default()
        };
        let pushed = oci::push(bytes, reference, &credentials, &settings).await?;
        println!("{pushed}");
        Ok(())
    }
}

/// The credentials of `~/.docker/config.json` (`$DOCKER_CONFIG/config.json`), if any.
fn docker_config_credentials() -> anyhow::Result<oci::Credentials> {
    let dir = match std::env::var_os("DOCKER_CONFIG") {
        Some(dir) => PathBuf::from(dir),
        None => match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(".docker"),
            None => return Ok(Vec::new()),
        },
    };
    let path = dir.join("config.json");
    match std::fs::read(&path) {
        Ok(json) => oci::docker_config_credentials(&json)
            .map_err(|why| anyhow::anyhow!("{}: {why}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
    }
}
