//! `shoal agent`: a node agent in its own process, joining the control plane at `--server`,
//! either with a kubeconfig made for it or with a bootstrap token and the CA's pin (then it
//! gets and renews its own certificate: `crate::join`).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use std::sync::Arc;

use shoal_runtime::agent::{Agent, AgentConfig, GatewayTls};

#[derive(Args)]
pub struct AgentCommand {
    /// The kubeconfig with the agent's credentials (a client certificate for
    /// `system:node:<name>` in `system:nodes`, from `shoal kubeconfig`). Without it, the
    /// agent joins with --token and --ca-cert-hash.
    #[arg(long, conflicts_with_all = ["token", "ca_cert_hash"])]
    kubeconfig: Option<PathBuf>,
    /// The API servers' URLs, comma-separated (default: the kubeconfig's; required to join
    /// with a token). With several, the agent uses the one that answers and moves to the next
    /// when it stops answering; its pods run on meanwhile.
    #[arg(long, value_delimiter = ',')]
    server: Vec<String>,
    /// A bootstrap token (`shoal token create`) to join with: the agent asks for its own
    /// client certificate, keeps it in <data-dir>/node.kubeconfig and renews it.
    #[arg(
        long,
        requires = "ca_cert_hash",
        env = "SHOAL_JOIN_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// The pin of the cluster CA (`sha256:<hex>` of its public key): the server must present
    /// that CA, so the token goes to no one else.
    #[arg(long, requires = "token")]
    ca_cert_hash: Option<String>,
    /// The node's name (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// Where pods' volumes and the compiled-module cache live.
    #[arg(long, default_value = "shoal-agent-data")]
    data_dir: PathBuf,
    /// Where the agent's gateway (logs, pod traffic) listens.
    #[arg(long, default_value = "127.0.0.1:0")]
    gateway_addr: SocketAddr,
    /// How many pods the node accepts.
    #[arg(long, default_value_t = 110)]
    max_pods: u32,
    /// A directory under which pods may mount hostPath volumes (repeatable; none by default).
    #[arg(long = "allow-host-path")]
    allow_host_path: Vec<PathBuf>,
    /// A directory file-path images may come from (repeatable; without one, pods can run
    /// only http(s):// and pushed sha256: images).
    #[arg(long = "allow-image-dir")]
    allow_image_dir: Vec<PathBuf>,
    /// A PEM file of CA certificates to trust, besides the system's, for https:// images and
    /// registries.
    #[arg(long)]
    image_ca: Option<PathBuf>,
    #[command(flatten)]
    registries: super::RegistryArgs,
    /// How long the node's lease stands without renewal. Past it the control plane treats
    /// the node as unreachable even if its agent accepts connections, and the agent stops its
    /// pods that must be unique (StatefulSets', and those with claims) until it renews again.
    #[arg(long, default_value_t = shoal_runtime::agent::LEASE_DURATION_SECONDS as u64)]
    lease_duration_seconds: u64,
    /// How often the node's lease is renewed (less than --lease-duration-seconds).
    #[arg(long, default_value_t = shoal_runtime::agent::LEASE_RENEW.as_secs())]
    lease_renew_seconds: u64,
    /// Where persistentVolumeClaim data lives (default: `<data-dir>/claims`). Point agents at
    /// one shared directory and a claim's data follows its pod from node to node.
    #[arg(long)]
    claims_dir: Option<PathBuf>,
    /// Do not bind the node ports of NodePort and LoadBalancer Services on this node's
    /// address (for agents that share a host with another that binds them).
    #[arg(long)]
    no_node_ports: bool,
    /// What the CPU figures of the metrics API (`kubectl top`, autoscaling) average over.
    #[arg(long, default_value_t = 10)]
    metrics_window_seconds: u64,
    /// How long the proxy holds a request for a Service scaled to zero while it wakes,
    /// before answering 503 with Retry-After.
    #[arg(long, default_value_t = 30)]
    scale_from_zero_timeout_seconds: u64,
    /// Requests the proxy holds per Service while it wakes; more get 503 at once.
    #[arg(long, default_value_t = 1000)]
    scale_from_zero_max_held: usize,
}

impl AgentCommand {
    pub async fn execute(self) -> anyhow::Result<()> {
        super::init_tracing();
        let name = match self.name {
            Some(name) => name,
            None => std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_lowercase())
                .unwrap_or_else(|_| "node".into()),
        };
        let mut renewal = None;
        let (client, server, ca_pem, identity) = match &self.kubeconfig {
            Some(kubeconfig) => {
                let mut servers = Vec::new();
                let mut ca_pem = None;
                for url in self.server.iter().map(|s| Some(s.as_str())).chain(
                    // No --server: the kubeconfig's own.
                    self.server.is_empty().then_some(None),
                ) {
                    let (client, server, ca) =
                        crate::kubeconfig::connect_to(kubeconfig, url).await?;
                    ca_pem = ca;
                    servers.push((server, client.kube().clone()));
                }
                let server = servers[0].0.clone();
                let client = shoal_api::client::Client::failover(servers);
                let (cert, key) = crate::kubeconfig::client_certificate(kubeconfig)?
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "kubeconfig {} has no client certificate: an agent shows it to other nodes' gateways (make one with `shoal kubeconfig --user system:node:{name} --group system:nodes`, or join with --token)",
                            kubeconfig.display()
                        )
                    })?;
                let identity: Arc<dyn rustls::client::ResolvesClientCert> =
                    Arc::new(shoal_api::tls::ClientIdentity::from_pem(&cert, &key)?);
                (client, server, ca_pem, identity)
            }
            None => {
                anyhow::ensure!(
                    !self.server.is_empty(),
                    "--server is needed to join without a --kubeconfig"
                );
                // Joined through the first server that lets it join.
                let mut joined = Err(anyhow::anyhow!("no server"));
                for server in &self.server {
                    joined = crate::join::NodeCredentials::load_or_join(
                        &self.data_dir,
                        &name,
                        server,
                        self.token.as_deref(),
                        self.ca_cert_hash.as_deref(),
                    )
                    .await;
                    match &joined {
                        Ok(_) => break,
                        Err(e) => tracing::warn!("joining through {server}: {e:#}"),
                    }
                }
                let credentials = Arc::new(joined?);
                let servers = self
                    .server
                    .iter()
                    .map(|url| Ok((url.clone(), credentials.kube_client(url)?)))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let client = shoal_api::client::Client::failover(servers);
                renewal = Some(tokio::spawn(
                    credentials.clone().keep_renewed(client.clone()),
                ));
                let identity: Arc<dyn rustls::client::ResolvesClientCert> = credentials.identity();
                (
                    client,
                    credentials.server.clone(),
                    Some(credentials.ca_pem.clone()),
                    identity,
                )
            }
        };
        let client_ca_pem = ca_pem.clone().ok_or_else(|| {
            anyhow::anyhow!("the agent's kubeconfig embeds no CA certificate (certificate-authority-data): its gateway trusts that CA's certificates")
        })?;
        let gateway_tls = GatewayTls {
            client_ca_pem,
            identity,
        };
        let mut config = AgentConfig::new(&name, self.data_dir, gateway_tls);
        config.gateway_addr = self.gateway_addr;
        config.max_pods = self.max_pods;
        config.host_path_allow = self.allow_host_path;
        config.image_dirs = Some(self.allow_image_dir);
        config.image_ca = self.image_ca;
        self.registries.apply(&mut config);
        config.claims_dir = self.claims_dir;
        config.node_ports = !self.no_node_ports;
        anyhow::ensure!(
            self.lease_renew_seconds >= 1
                && self.lease_renew_seconds < self.lease_duration_seconds
                && self.lease_duration_seconds <= i32::MAX as u64,
            "--lease-renew-seconds ({}) must be at least 1 and less than --lease-duration-seconds ({})",
            self.lease_renew_seconds,
            self.lease_duration_seconds
        );
        config.lease_duration = std::time::Duration::from_secs(self.lease_duration_seconds);
        config.lease_renew = std::time::Duration::from_secs(self.lease_renew_seconds);
        config.metrics_window = std::time::Duration::from_secs(self.metrics_window_seconds);
        config.hold = shoal_runtime::proxy::activator::HoldOptions {
            timeout: std::time::Duration::from_secs(self.scale_from_zero_timeout_seconds),
            max_held: self.scale_from_zero_max_held,
        };
        // Pods reach the API where the agent does, trusting the same CA.
        config.api_endpoint = ca_pem.map(|ca| (server.clone(), ca));
        let mut agent = Agent::start(client, config).await?;
        println!(
            "shoal agent {name} ready: joined {server}; gateway on {}",
            agent.gateway_addr
        );
        super::shutdown_signal().await;
        if let Some(renewal) = renewal {
            renewal.abort();
        }
        agent.shutdown().await;
        Ok(())
    }
}
