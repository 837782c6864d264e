//! The subcommands, one clap struct with an `execute()` each (in the manner of wasmtime's
//! `src/commands`). Cluster commands: `dev`, `server`, `agent`. Client commands, which read a
//! kubeconfig: `apply`, `get`, `describe`, `delete`, `logs`, `push`, `token`, `dashboard`; and `kubeconfig`,
//! which issues one.

mod agent;
mod apply;
mod connection;
mod dashboard;
mod delete;
mod describe;
mod dev;
mod get;
mod kubeconfig;
mod logs;
mod migrate;
mod push;
mod server;
mod token;

use clap::{Parser, Subcommand};

pub use connection::{Connection, ConnectionArgs};

#[derive(Parser)]
#[command(
    name = "shoal",
    version,
    about = "Kubernetes, for WebAssembly: run Wasm pods on a cluster you declare"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole cluster (control plane and agents) in this process.
    Dev(dev::DevCommand),
    /// Run the control plane (API server, store, scheduler) alone.
    Server(Box<server::ServerCommand>),
    /// Run a node agent that joins a control plane.
    Agent(agent::AgentCommand),
    /// Create or update objects from a manifest file.
    Apply(apply::ApplyCommand),
    /// List objects or show one.
    Get(get::GetCommand),
    /// Show an object in detail, with its events.
    Describe(describe::DescribeCommand),
    /// Delete objects by name or from a manifest file.
    Delete(delete::DeleteCommand),
    /// Print a container's log.
    Logs(logs::LogsCommand),
    /// Upload a .wasm file into the cluster and print its image reference.
    Push(push::PushCommand),
    /// Issue a kubeconfig with a client certificate for a user (on the server's machine).
    Kubeconfig(kubeconfig::KubeconfigCommand),
    /// Bootstrap tokens that new nodes join with.
    Token(token::TokenCommand),
    /// Open the web dashboard logged in as the kubeconfig's user (--print-url prints its URL).
    Dashboard(dashboard::DashboardCommand),
    /// Copy a cluster kept in a data dir (redb) into etcd.
    Migrate(migrate::MigrateCommand),
}

impl Cli {
    pub async fn execute(self) -> anyhow::Result<()> {
        match self.command {
            Command::Dev(c) => c.execute().await,
            Command::Server(c) => c.execute().await,
            Command::Agent(c) => c.execute().await,
            Command::Apply(c) => c.execute().await,
            Command::Get(c) => c.execute().await,
            Command::Describe(c) => c.execute().await,
            Command::Delete(c) => c.execute().await,
            Command::Logs(c) => c.execute().await,
            Command::Push(c) => c.execute().await,
            Command::Kubeconfig(c) => c.execute().await,
            Command::Token(c) => c.execute().await,
            Command::Dashboard(c) => c.execute().await,
            Command::Migrate(c) => c.execute().await,
        }
    }
}

/// How an error reads on the terminal: API errors as kubectl prints them.
pub fn describe_error(error: &anyhow::Error) -> String {
    match error.downcast_ref::<shoal_control::client::Error>() {
        Some(shoal_control::client::Error::Api {
            reason, message, ..
        }) => format!("Error from server ({reason}): {message}"),
        _ => format!("error: {error:#}"),
    }
}

/// Logging for the long-running commands; `RUST_LOG` overrides the default.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,wasmtime=warn,cranelift=warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM).
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Where Wasm images may be pulled from (`shoal agent`, `shoal dev`).
#[derive(clap::Args, Debug, Clone)]
pub struct RegistryArgs {
    /// A registry (`HOST:PORT`) to pull from over plain HTTP instead of HTTPS (repeatable;
    /// none by default).
    #[arg(long = "insecure-registry")]
    insecure_registry: Vec<String>,
    /// The largest Wasm layer pulled from a registry, in bytes.
    #[arg(long, default_value_t = shoal_runtime::engine::oci::DEFAULT_MAX_LAYER_BYTES)]
    max_image_size: u64,
}

impl RegistryArgs {
    pub fn apply(&self, config: &mut shoal_runtime::agent::AgentConfig) {
        config.insecure_registries = self.insecure_registry.clone();
        config.max_image_bytes = self.max_image_size;
    }
}
