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
    /// Seconds a node may be unreachable before the pods left on it (bare pods; those of
    /// controllers are replaced at once) are deleted.
    #[arg(long, default_value_t = 60)]
    pod_eviction_timeout_seconds: u64,
    /// How late a node's lease renewal may be before the server probes its agent; an agent
    /// that refuses the connection (or does not answer within 500 ms) makes its node
    /// unreachable at once. Agents renew every second by default. A number with ms, s or m.
    #[arg(long, default_value = "2s")]
    node_monitor_grace_period: String,
    /// How the scheduler places pods that name no profile: `spread` (fewest pods first) or
    /// `bin-packing` (fill the most allocated node first).
    #[arg(long, default_value = "spread")]
    scheduler_profile: shoal_control::scheduler::Profile,
    /// Events the store keeps for watches to resume from; a watch from before them gets
    /// 410 Gone (clients relist).
    #[arg(long)]
    event_log_len: Option<u64>,
    /// The longest client certificate the cluster signs for a CertificateSigningRequest
    /// (nodes joining with a token, and their renewals): seconds, or a number with s, m, h
    /// or d.
    #[arg(long, default_value = "365d")]
    cluster_signing_duration: String,
    /// The address other machines reach this API server at, listed in the
    /// default/kubernetes Endpoints (default: the --api-addr host, or 127.0.0.1 when that is
    /// unspecified).
    #[arg(long)]
    advertise_address: Option<std::net::IpAddr>,
    /// How long an API server stays in the default/kubernetes Endpoints after it last renewed
    /// its identity Lease (it renews every third of this): seconds, or a number with s or m.
    #[arg(long, default_value = "15s")]
    apiserver_lease_duration: String,
    /// How often each HorizontalPodAutoscaler is looked at: seconds, or a number with s or m.
    #[arg(long, default_value = "15s")]
    horizontal_pod_autoscaler_sync_period: String,
    /// The prefix length of each node's pod CIDR (kube-controller-manager's flag): 24 gives
    /// 254 pods per node and room for 3,072 nodes (10.244.0.0 to 10.255.255.0); 16 gives
    /// 65,534 pods per node and 256 nodes; 26 gives 62 pods per node and 12,288 nodes.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u8).range(8..=30))]
    node_cidr_mask_size: u8,
    #[command(flatten)]
    security: SecurityArgs,
    #[command(flatten)]
    etcd: EtcdArgs,
}

/// Where objects are kept when not in the data dir: an etcd cluster (kube-apiserver's flags).
#[derive(Args, Clone, Debug)]
pub struct EtcdArgs {
    /// etcd client URLs, comma-separated (`http://10.0.0.1:2379,https://…`): keep objects in
    /// etcd, shared by every API server given the same list, instead of the data dir.
    #[arg(long, value_delimiter = ',')]
    etcd_servers: Vec<String>,
    #[command(flatten)]
    connection: EtcdConnectionArgs,
    /// With --etcd-servers, run the scheduler and controllers only in the server holding the
    /// kube-system/shoal-controller-manager Lease (as kube-controller-manager).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// How long a leader's Lease stands without renewal.
    #[arg(long, default_value = "15s")]
    leader_elect_lease_duration: String,
    /// How long a leader goes on failing to renew before it steps down.
    #[arg(long, default_value = "10s")]
    leader_elect_renew_deadline: String,
    /// How often the leader renews and the others try to take over.
    #[arg(long, default_value = "2s")]
    leader_elect_retry_period: String,
}

impl EtcdArgs {
    /// The leader election to run: with etcd (several servers may share it) unless
    /// `--leader-elect=false`.
    pub fn election(&self) -> anyhow::Result<Option<shoal_control::leader::ElectionOptions>> {
        if self.etcd_servers.is_empty() || !self.leader_elect {
            return Ok(None);
        }
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "shoal".into());
        // Unique per process: a restarted server is a new candidate.
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let identity = format!("{host}_{}_{started}", std::process::id());
        let mut options = shoal_control::leader::ElectionOptions::new(&identity);
        let duration = |flag: &str, text: &str| {
            super::kubeconfig::parse_duration(text).map_err(|e| anyhow::anyhow!("{flag}: {e}"))
        };
        options.lease_duration = duration(
            "--leader-elect-lease-duration",
            &self.leader_elect_lease_duration,
        )?;
        options.renew_deadline = duration(
            "--leader-elect-renew-deadline",
            &self.leader_elect_renew_deadline,
        )?;
        options.retry_period = duration(
            "--leader-elect-retry-period",
            &self.leader_elect_retry_period,
        )?;
        anyhow::ensure!(
            options.retry_period < options.renew_deadline
                && options.renew_deadline < options.lease_duration,
            "leader election needs retry period < renew deadline < lease duration"
        );
        Ok(Some(options))
    }

    /// The etcd to use, if `--etcd-servers` names one.
    pub fn options(&self) -> anyhow::Result<Option<shoal_control::store::EtcdOptions>> {
        if self.etcd_servers.is_empty() {
            anyhow::ensure!(
                self.connection.etcd_cafile.is_none() && self.connection.etcd_certfile.is_none(),
                "--etcd-cafile and --etcd-certfile need --etcd-servers"
            );
            return Ok(None);
        }
        self.connection
            .options_for(self.etcd_servers.clone())
            .map(Some)
    }
}

/// How to reach etcd besides its URLs: the key prefix, TLS, compaction (`shoal server` and
/// `shoal migrate`).
#[derive(Args, Clone, Debug)]
pub struct EtcdConnectionArgs {
    /// The key prefix objects live under in etcd.
    #[arg(long, default_value = "/registry")]
    etcd_prefix: String,
    /// The CA (PEM) that signed etcd's serving certificates.
    #[arg(long)]
    etcd_cafile: Option<PathBuf>,
    /// A client certificate (PEM) to present to etcd.
    #[arg(long, requires = "etcd_keyfile")]
    etcd_certfile: Option<PathBuf>,
    /// The private key (PEM) of --etcd-certfile.
    #[arg(long, requires = "etcd_certfile")]
    etcd_keyfile: Option<PathBuf>,
    /// How often etcd's history is compacted: seconds, or a number with s, m or h; 0 never.
    #[arg(long, default_value = "5m")]
    etcd_compaction_interval: String,
}

impl EtcdConnectionArgs {
    /// The etcd at `endpoints`, with these flags' prefix, TLS and compaction interval.
    pub fn options_for(
        &self,
        endpoints: Vec<String>,
    ) -> anyhow::Result<shoal_control::store::EtcdOptions> {
        for url in &endpoints {
            anyhow::ensure!(
                url.starts_with("http://") || url.starts_with("https://"),
                "--etcd-servers: {url:?} is not an http:// or https:// URL"
            );
        }
        let mut options = shoal_control::store::EtcdOptions::new(endpoints);
        options.prefix = self.etcd_prefix.clone();
        options.ca_file = self.etcd_cafile.clone();
        options.cert_file = self.etcd_certfile.clone();
        options.key_file = self.etcd_keyfile.clone();
        options.compaction_interval = match self.etcd_compaction_interval.trim() {
            "0" => std::time::Duration::ZERO,
            interval => super::kubeconfig::parse_duration(interval)
                .map_err(|e| anyhow::anyhow!("--etcd-compaction-interval: {e}"))?,
        };
        Ok(options)
    }
}

/// How the API is served and authenticated (`shoal server` and `shoal dev`).
#[derive(Args, Clone, Debug)]
pub struct SecurityArgs {
    /// Let requests without credentials read /healthz, /livez, /readyz and /version (they
    /// get 401 everywhere else either way).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    anonymous_auth: bool,
    /// Also serve plain HTTP here (loopback addresses only; requests there act as a
    /// superuser, as kube-apiserver's old insecure port did).
    #[arg(long)]
    insecure_http_addr: Option<SocketAddr>,
    /// Serve this certificate (PEM, the chain ending with its CA) instead of one from the
    /// cluster CA.
    #[arg(long, requires = "tls_private_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert-file.
    #[arg(long, requires = "tls_cert_file")]
    tls_private_key_file: Option<PathBuf>,
    /// Also accept client certificates signed by these CAs (PEM).
    #[arg(long)]
    client_ca_file: Option<PathBuf>,
    /// More names (DNS or IP) for the serving certificate (repeatable).
    #[arg(long = "tls-san")]
    tls_sans: Vec<String>,
    /// An EncryptionConfiguration (apiserver.config.k8s.io/v1) saying which resources are
    /// encrypted in the store and with which keys (aesgcm, aescbc, secretbox, identity).
    #[arg(long)]
    encryption_provider_config: Option<PathBuf>,
}

impl SecurityArgs {
    pub fn options(&self) -> crate::cluster::ApiSecurity {
        crate::cluster::ApiSecurity {
            anonymous_auth: self.anonymous_auth,
            insecure_http_addr: self.insecure_http_addr,
            tls_cert_file: self.tls_cert_file.clone(),
            tls_private_key_file: self.tls_private_key_file.clone(),
            client_ca_file: self.client_ca_file.clone(),
            extra_names: self.tls_sans.clone(),
            encryption_config: self.encryption_provider_config.clone(),
        }
    }
}

/// `--horizontal-pod-autoscaler-sync-period`, at least one second.
pub fn hpa_sync_period(text: &str) -> anyhow::Result<std::time::Duration> {
    let period = super::kubeconfig::parse_duration(text)
        .map_err(|e| anyhow::anyhow!("--horizontal-pod-autoscaler-sync-period: {e}"))?;
    anyhow::ensure!(
        period >= std::time::Duration::from_secs(1),
        "--horizontal-pod-autoscaler-sync-period must be at least 1s"
    );
    Ok(period)
}

impl ServerCommand {
    pub async fn execute(self) -> anyhow::Result<()> {
        super::init_tracing();
        let mut options = ControlPlaneOptions::default();
        options.controllers.pod_eviction_timeout =
            std::time::Duration::from_secs(self.pod_eviction_timeout_seconds);
        options.controllers.node_monitor_grace_period =
            super::kubeconfig::parse_duration(&self.node_monitor_grace_period)
                .map_err(|e| anyhow::anyhow!("--node-monitor-grace-period: {e}"))?;
        options.scheduler.default_profile = self.scheduler_profile;
        options.server.node_cidr_mask = self.node_cidr_mask_size;
        options.event_log_len = self.event_log_len;
        options.controllers.cluster_signing_duration =
            super::kubeconfig::parse_duration(&self.cluster_signing_duration)?;
        options.controllers.hpa_sync_period =
            hpa_sync_period(&self.horizontal_pod_autoscaler_sync_period)?;
        options.security = self.security.options();
        options.etcd = self.etcd.options()?;
        options.leader_election = self.etcd.election()?;
        options.advertise_address = self.advertise_address;
        let lease = super::kubeconfig::parse_duration(&self.apiserver_lease_duration)
            .map_err(|e| anyhow::anyhow!("--apiserver-lease-duration: {e}"))?;
        anyhow::ensure!(
            lease >= std::time::Duration::from_secs(3),
            "--apiserver-lease-duration must be at least 3s"
        );
        options.peers = shoal_control::peers::PeerOptions {
            lease_duration: lease,
            renew_interval: lease / 3,
        };
        let control = ControlPlane::start_with(&self.data_dir, self.api_addr, options).await?;
        let kubeconfig = self.data_dir.join("kubeconfig");
        control.write_admin_kubeconfig(&kubeconfig)?;
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
