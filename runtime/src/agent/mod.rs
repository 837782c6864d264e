//! The node agent (DESIGN.md §3.5): registers its Node, renews its Lease, watches the pods
//! bound to it and runs each through a [`worker::PodWorker`], finishes their deletion, and
//! serves their logs on its gateway. It talks to the API only through the client.

mod config;
mod console;
mod env;
mod ephemeral;
mod exec;
mod gateway;
mod gateway_tls;
mod launch;
mod logs;
mod networks;
mod node;
pub mod portforward;
mod probe;
mod projected;
mod sandboxes;
mod sources;
pub mod status;
mod toolbox;
pub mod usage;
mod volumes;
mod worker;

use shoal_api::task::Tasks;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Pod;
use shoal_api::client::{Client, DeleteParams, ListParams, Recorder, WatcherEvent};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::engine::{Engine, EngineOptions};
use crate::pod::network::PodNetwork;
pub use node::{LEASE_DURATION_SECONDS, LEASE_RENEW};
pub use shoal_api::tls::GatewayTls;

/// The default of [`AgentConfig::metrics_window`].
pub const DEFAULT_METRICS_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub node_name: String,
    /// Where pods' volumes and the compiled-module cache live.
    pub data_dir: PathBuf,
    /// The address the gateway listens on (port 0 picks a free one).
    pub gateway_addr: SocketAddr,
    /// The pod count the node advertises.
    pub max_pods: u32,
    /// How many guest instances may be alive at once (default: two per pod). HTTP pods hold
    /// instances only while serving, so dense HTTP nodes need far fewer than their pods.
    pub max_instances: Option<u32>,
    /// Memory limit of an instance whose container sets none.
    pub default_memory_limit: usize,
    /// Directories under which pods may mount `hostPath` volumes (none by default).
    pub host_path_allow: Vec<PathBuf>,
    /// The first restart back-off of a failed container (doubling to 30 times this); the
    /// kubelet's 10 s by default.
    pub restart_backoff: std::time::Duration,
    /// How long a request to an HTTP pod may take to get its response head.
    pub request_deadline: std::time::Duration,
    /// Instances one HTTP container may run at once; past it requests queue (at most four
    /// times this many) for `admission_wait`, then get 503 with `Retry-After`.
    pub max_container_instances: usize,
    pub admission_wait: std::time::Duration,
    /// A PEM file of CA certificates trusted, besides the system's, for `https://` images.
    pub image_ca: Option<PathBuf>,
    /// Registries (`HOST:PORT`) spoken to over plain HTTP (`--insecure-registry`).
    pub insecure_registries: Vec<String>,
    /// The largest Wasm layer pulled from a registry, in bytes.
    pub max_image_bytes: u64,
    /// How long the node's Lease is valid, and how often it is renewed (40 s and 10 s, as the
    /// kubelet's). The control plane declares the node unreachable when the lease expires.
    pub lease_duration: std::time::Duration,
    pub lease_renew: std::time::Duration,
    /// Where persistentVolumeClaim data lives, one directory per namespace and claim
    /// (default `<data_dir>/claims`). Agents that share it (the nodes of `shoal dev`, or
    /// agents over a shared filesystem) keep a claim's data when its pod moves between them.
    pub claims_dir: Option<PathBuf>,
    /// Whether this agent binds the node ports of NodePort and LoadBalancer Services on its
    /// address. Off in `shoal dev`, whose nodes share one host and bind them once.
    pub node_ports: bool,
    /// The API server's URL and CA (PEM) as pods see it: where `kubernetes.default.svc`
    /// leads, and what is mounted with each pod's ServiceAccount token. `None`: pods get no
    /// token and no way to the API.
    pub api_endpoint: Option<(String, String)>,
    /// Directories file-path images may come from (`--allow-image-dir`); `None` allows any
    /// file, which only in-process clusters of tests and benchmarks use.
    pub image_dirs: Option<Vec<PathBuf>>,
    /// The longest wait between renewals of a running pod's ServiceAccount tokens: they are
    /// renewed at 80% of their life, as the kubelet does, or sooner if this is shorter.
    pub token_refresh: std::time::Duration,
    /// The gateway's mTLS: the cluster CA its clients need, and this node's certificate for
    /// calling other gateways.
    pub gateway_tls: GatewayTls,
    /// Whether the proxy's cluster-wide watches (Services, Endpoints, Nodes, Ingresses,
    /// NetworkPolicies, Namespaces, Pods) are the client's shared ones
    /// (`Client::shared_watch`): in `shoal dev`, whose agents share the controllers' client,
    /// each kind is then watched and decoded once for all. A standalone agent keeps watches
    /// of its own (a shared watch also caches every object, which only pays when shared).
    pub share_watches: bool,
    /// What the CPU figures of the metrics API average over (metrics-server's window is
    /// 15 to 30 s; a shorter one makes autoscaling react sooner and noisier).
    pub metrics_window: std::time::Duration,
    /// How this node's proxy holds requests for a Service at zero while it wakes.
    pub hold: crate::proxy::activator::HoldOptions,
}

impl AgentConfig {
    pub fn new(node_name: &str, data_dir: PathBuf, gateway_tls: GatewayTls) -> Self {
        Self {
            gateway_tls,
            node_name: node_name.into(),
            data_dir,
            gateway_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_pods: 110,
            max_instances: None,
            default_memory_limit: 512 << 20,
            host_path_allow: Vec::new(),
            restart_backoff: worker::INITIAL_BACKOFF,
            request_deadline: crate::pod::network::DEFAULT_REQUEST_DEADLINE,
            max_container_instances: 64,
            admission_wait: std::time::Duration::from_secs(1),
            image_ca: None,
            insecure_registries: Vec::new(),
            max_image_bytes: crate::engine::oci::DEFAULT_MAX_LAYER_BYTES,
            claims_dir: None,
            node_ports: false,
            share_watches: false,
            lease_duration: std::time::Duration::from_secs(LEASE_DURATION_SECONDS as u64),
            lease_renew: LEASE_RENEW,
            api_endpoint: None,
            image_dirs: None,
            token_refresh: std::time::Duration::MAX,
            metrics_window: DEFAULT_METRICS_WINDOW,
            hold: Default::default(),
        }
    }
}

/// What the agent's tasks share.
pub(crate) struct Shared {
    client: Client,
    engine: Arc<Engine>,
    logs: logs::LogStore,
    recorder: Recorder,
    address: String,
    data_dir: PathBuf,
    claims_dir: PathBuf,
    default_memory_limit: usize,
    host_path_allow: Vec<PathBuf>,
    restart_backoff: std::time::Duration,
    server_limits: crate::pod::network::ServerLimits,
    /// The loopback of each pod running here, for the gateway and the proxy.
    networks: Arc<networks::LocalNetworks>,
    /// What exec needs of each pod running here.
    sandboxes: Arc<sandboxes::Sandboxes>,
    /// What each pod running here uses (the metrics API, `/metrics`).
    usage: Arc<usage::ResourceUsage>,
    /// Routes pods' requests for Services.
    proxy: Arc<crate::proxy::Proxy>,
    /// How often running pods' tokens are replaced.
    token_refresh: std::time::Duration,
    /// The outside network, for pods the proxy lets leave the cluster (one client, with the
    /// system's roots, for the whole node); `None` if the roots could not be read.
    egress: Option<crate::pod::network::EgressClient>,
    /// Routes pods' requests for the API, and the CA mounted with their tokens.
    api: Option<(Arc<crate::pod::network::ApiRoute>, String)>,
    /// Where pods' ServiceAccount tokens are written: memory (`/dev/shm`) where the host has
    /// it, as the kubelet's tmpfs for projected tokens: secrets never reach the disk, and
    /// making a pod's token directory costs no disk inode. Removed when the agent stops.
    tokens_dir: PathBuf,
}

impl Shared {
    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.data_dir.join("pods").join(uid)
    }

    /// Where a pod's ServiceAccount token is written (and the per-namespace CA and namespace
    /// files, under `.shared`).
    fn token_dir(&self, uid: &str) -> PathBuf {
        self.tokens_dir.join(uid)
    }
}

/// A running agent; dropping it (or calling [`Agent::shutdown`]) stops everything it runs.
pub struct Agent {
    pub node_name: String,
    pub gateway_addr: SocketAddr,
    /// The node's Service proxy (the dev ingress serves through it).
    pub proxy: Arc<crate::proxy::Proxy>,
    networks: Arc<networks::LocalNetworks>,
    /// The gateway's routes (served over mTLS).
    gateway: axum::Router,
    /// Everything the agent runs: gateway, heartbeat, pod supervisor, pod workers.
    tasks: Tasks,
    tokens_dir: PathBuf,
}

/// A directory of this agent's own for pods' tokens: in `/dev/shm` when the host has it (a
/// name no other agent process uses), else under the data directory.
fn tokens_dir(config: &AgentConfig) -> PathBuf {
    let memory = std::path::Path::new("/dev/shm");
    if memory.is_dir() {
        let unique = format!(
            "shoal-tokens-{}-{}-{}",
            config.node_name,
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        let dir = memory.join(unique);
        if std::fs::create_dir(&dir).is_ok() {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
            }
            return dir;
        }
    }
    config.data_dir.join("tokens")
}

impl Agent {
    pub async fn start(client: Client, config: AgentConfig) -> anyhow::Result<Self> {
        let engine = Engine::new(&EngineOptions {
            cache_dir: config.data_dir.join("cache"),
            max_instances: config.max_instances.unwrap_or(config.max_pods * 2),
        })?;
        engine.use_cluster(client.clone());
        if let Some(ca) = &config.image_ca {
            engine.trust_image_ca(ca.clone());
        }
        if let Some(dirs) = &config.image_dirs {
            engine.allow_image_dirs(dirs.clone());
        }
        engine
            .registries
            .configure(crate::engine::oci::RegistrySettings {
                insecure: config.insecure_registries.clone(),
                extra_ca: config.image_ca.clone(),
                max_layer_bytes: config.max_image_bytes,
                state_file: Some(config.data_dir.join("images.json")),
            });
        let listener = tokio::net::TcpListener::bind(config.gateway_addr).await?;
        let gateway_addr = listener.local_addr()?;
        let networks: Arc<networks::LocalNetworks> = Arc::default();
        let tasks = Tasks::new();
        // Weak: the pods' networks hold the proxy (their egress), so a strong reference back
        // would be a cycle that outlives the agent.
        let local_pods = Arc::downgrade(&networks);
        let api = match &config.api_endpoint {
            Some((url, ca)) => Some((
                Arc::new(crate::pod::network::ApiRoute::new(url, ca)?),
                ca.clone(),
            )),
            None => None,
        };
        let tokens_dir = tokens_dir(&config);
        let shared = Arc::new(Shared {
            tokens_dir: tokens_dir.clone(),
            api,
            client: client.clone(),
            engine,
            logs: logs::LogStore::default(),
            recorder: Recorder::new(client.clone(), "shoal-agent", Some(&config.node_name)),
            address: gateway_addr.ip().to_string(),
            data_dir: config.data_dir.clone(),
            claims_dir: (config.claims_dir.clone())
                .unwrap_or_else(|| config.data_dir.join("claims")),
            default_memory_limit: config.default_memory_limit,
            host_path_allow: config.host_path_allow.clone(),
            restart_backoff: config.restart_backoff,
            server_limits: crate::pod::network::ServerLimits {
                request_deadline: config.request_deadline,
                max_instances: config.max_container_instances.max(1),
                max_waiting: config.max_container_instances.max(1).saturating_mul(4),
                admission_wait: config.admission_wait,
            },
            networks,
            sandboxes: Arc::default(),
            usage: usage::ResourceUsage::new(config.metrics_window),
            token_refresh: config.token_refresh,
            egress: match crate::engine::fetch::https_connector(None) {
                Ok(connector) => Some(
                    hyper_util::client::legacy::Client::builder(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .build(connector),
                ),
                Err(e) => {
                    tracing::warn!("pods cannot reach outside the cluster: {e}");
                    None
                }
            },
            proxy: crate::proxy::Proxy::start_with(
                client.clone(),
                &config.node_name,
                Arc::new(move |pod| local_pods.upgrade()?.get(pod)),
                &config.gateway_tls,
                crate::proxy::stack::Options {
                    rate_window: config.metrics_window,
                    hold: config.hold,
                    ..Default::default()
                },
                config.share_watches,
                &tasks,
            )?,
        });
        let (proxy, local_networks) = (shared.proxy.clone(), shared.networks.clone());
        let identity = node::NodeIdentity {
            name: config.node_name.clone(),
            address: shared.address.clone(),
            gateway_port: gateway_addr.port(),
            max_pods: config.max_pods,
        };
        let node = register_with_retry(&client, &identity).await?;
        let cidr = node
            .spec
            .and_then(|s| s.pod_cidr)
            .unwrap_or_else(|| "10.244.0.0/24".into());
        let ips = IpPool::new(&cidr)?;

        // Whether the agent has gone a whole lease without renewing it: its unique pods stop.
        let fenced = Arc::new(watch::channel(false).0);
        let gateway = gateway::router(shared.clone());
        // The gateway's certificate comes from the cluster once the Node publishes the
        // address it names; until then connections wait in the listener's backlog.
        let names = gateway_tls::serving_names(&config.node_name, gateway_addr.ip());
        let (cert_pem, key_pem) =
            gateway_tls::request_serving_certificate(&client, &config.node_name, &names).await?;
        let serving = Arc::new(shoal_api::tls::ServingIdentity::from_pem(
            &cert_pem, &key_pem,
        )?);
        let tls = gateway_tls::server_config(&config.gateway_tls, serving.clone())?;
        tasks.spawn(gateway_tls::serve(listener, gateway.clone(), tls));
        tasks.spawn(gateway_tls::keep_renewed(
            client.clone(),
            config.node_name.clone(),
            names,
            serving,
        ));
        tasks.spawn(shared.usage.clone().run_sampler());
        {
            let (client, name) = (client.clone(), config.node_name.clone());
            let (duration, renew) = (config.lease_duration, config.lease_renew);
            let fenced = fenced.clone();
            tasks.supervise("node-heartbeat", move || {
                node::heartbeat(
                    client.clone(),
                    name.clone(),
                    duration,
                    renew,
                    fenced.clone(),
                )
            });
        }
        let supervisor = PodSupervisor::new(
            shared,
            ips,
            config.node_name.clone(),
            tasks.clone(),
            fenced.subscribe(),
        );
        tasks.spawn(supervisor.run());
        if config.node_ports {
            let host = gateway_addr.ip();
            tasks.spawn(crate::proxy::node_ports::serve(proxy.clone(), host));
        }
        tracing::info!(
            "agent {} ready, gateway on {gateway_addr}",
            config.node_name
        );
        Ok(Self {
            node_name: config.node_name,
            gateway_addr,
            proxy,
            networks: local_networks,
            gateway,
            tasks,
            tokens_dir,
        })
    }

    /// The gateway's routes without its mTLS: what `shoal-bench gateway` serves on plain
    /// HTTP beside the real gateway, to measure what mTLS costs. Nothing else serves them.
    pub fn gateway_router(&self) -> axum::Router {
        self.gateway.clone()
    }

    /// The network of pod `namespace/name` if it runs here: its servers answer in-process
    /// (what the benchmarks compare the proxy with).
    pub fn pod_network(&self, namespace: &str, name: &str) -> Option<Arc<PodNetwork>> {
        let key = format!("{namespace}/{name}");
        self.networks.get(crate::proxy::LocalPod::Named(&key))
    }

    /// Stops everything the agent runs (its pods' containers too, without grace: on a
    /// restart the pods start again from the API) and waits until all of it has ended.
    pub async fn shutdown(&mut self) {
        self.tasks.shutdown().await;
        let _ = tokio::fs::remove_dir_all(&self.tokens_dir).await;
    }
}

impl Drop for Agent {
    /// Without [`Agent::shutdown`]: everything is told to stop, nothing is waited for.
    fn drop(&mut self) {
        let tasks = self.tasks.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { tasks.shutdown().await });
        }
        // Tokens are secrets: never left behind, even without a clean shutdown.
        let _ = std::fs::remove_dir_all(&self.tokens_dir);
    }
}

/// Registers the Node, waiting up to a minute for an API server that is still starting.
async fn register_with_retry(
    client: &Client,
    identity: &node::NodeIdentity,
) -> anyhow::Result<k8s_openapi::api::core::v1::Node> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut delay = std::time::Duration::from_millis(100);
    loop {
        match node::register(client, identity).await {
            Ok(node) => return Ok(node),
            Err(shoal_api::client::Error::Transport(e)) if std::time::Instant::now() < deadline => {
                tracing::info!("node {}: waiting for the API server: {e}", identity.name);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(2));
            }
            Err(e) => return Err(anyhow::anyhow!("registering node {}: {e}", identity.name)),
        }
    }
}

/// Pod IPs from the node's pod CIDR (network and first address excluded, as the node's own).
struct IpPool {
    base: u32,
    size: u32,
    used: BTreeSet<u32>,
    next: u32,
}

impl IpPool {
    fn new(cidr: &str) -> anyhow::Result<Self> {
        let net: ipnet::Ipv4Net = cidr
            .parse()
            .map_err(|e| anyhow::anyhow!("pod CIDR {cidr:?} is not an IPv4 CIDR: {e}"))?;
        let prefix = u32::from(net.prefix_len());
        if !(8..=30).contains(&prefix) {
            anyhow::bail!("pod CIDR {cidr:?}: prefix must be /8 to /30");
        }
        let size = 1u32 << (32 - prefix);
        Ok(Self {
            base: u32::from(net.network()),
            size,
            used: BTreeSet::new(),
            next: 2,
        })
    }

    fn allocate(&mut self) -> Option<String> {
        // Addresses .0 (network), .1 (the node) and the last (broadcast) are never handed out.
        let usable = self.size.saturating_sub(3);
        for step in 0..usable {
            let offset = 2 + (self.next - 2 + step) % usable;
            if self.used.insert(offset) {
                self.next = offset + 1;
                if self.next >= self.size - 1 {
                    self.next = 2;
                }
                return Some(std::net::Ipv4Addr::from(self.base + offset).to_string());
            }
        }
        None
    }

    fn release(&mut self, ip: &str) {
        if let Ok(address) = ip.parse::<std::net::Ipv4Addr>() {
            self.used
                .remove(&u32::from(address).wrapping_sub(self.base));
        }
    }
}

struct Running {
    uid: String,
    ip: String,
    stop: watch::Sender<Option<std::time::Duration>>,
    reports: tokio::sync::mpsc::Sender<worker::Report>,
    task: JoinHandle<()>,
}

/// Whether the node lifecycle controller marked the pod not ready because its node was
/// unreachable.
fn marked_unreachable(pod: &Pod) -> bool {
    (pod.status.as_ref())
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.type_ == "Ready"
                    && c.reason.as_deref() == Some(shoal_api::api::fencing::NODE_UNREACHABLE_REASON)
            })
        })
}

/// Keeps one worker per pod bound to this node, and finishes deletions.
struct PodSupervisor {
    shared: Arc<Shared>,
    ips: Arc<Mutex<IpPool>>,
    node_name: String,
    running: HashMap<String, Running>,
    /// Pods whose deletion this agent is finishing.
    terminating: BTreeSet<String>,
    /// The agent's tasks: pod workers and their clean-ups run there, so they stop with it.
    tasks: Tasks,
    /// Whether the agent is fenced (a whole lease without renewal): pods that must be unique
    /// (`shoal_api::api::fencing`) do not run then.
    fenced: watch::Receiver<bool>,
    /// The latest of each unique pod bound here, to start again when the fence lifts.
    unique: HashMap<String, Pod>,
}

impl PodSupervisor {
    fn new(
        shared: Arc<Shared>,
        ips: IpPool,
        node_name: String,
        tasks: Tasks,
        fenced: watch::Receiver<bool>,
    ) -> Self {
        Self {
            shared,
            ips: Arc::new(Mutex::new(ips)),
            node_name,
            running: HashMap::new(),
            terminating: BTreeSet::new(),
            tasks,
            fenced,
            unique: HashMap::new(),
        }
    }

    async fn run(mut self) {
        let params = ListParams::default().fields(&format!("spec.nodeName={}", self.node_name));
        let mut events = shoal_api::client::watcher::<Pod>(&self.shared.client, params);
        loop {
            let event = tokio::select! {
                event = events.recv() => match event {
                    Some(event) => event,
                    None => return,
                },
                changed = self.fenced.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    self.fence_changed();
                    continue;
                }
            };
            match event {
                WatcherEvent::Restarted(pods) => {
                    let keys: BTreeSet<String> = pods.iter().map(pod_key).collect();
                    self.unique.retain(|k, _| keys.contains(k));
                    let gone: Vec<String> = self
                        .running
                        .keys()
                        .filter(|k| !keys.contains(*k))
                        .cloned()
                        .collect();
                    self.terminating.retain(|k| keys.contains(k));
                    for key in gone {
                        self.stop(&key, std::time::Duration::ZERO, None);
                    }
                    for pod in pods {
                        self.observe(pod);
                    }
                }
                WatcherEvent::Applied(pod) => self.observe(pod),
                WatcherEvent::Deleted(pod) => {
                    let key = pod_key(&pod);
                    self.terminating.remove(&key);
                    self.unique.remove(&key);
                    self.stop(&key, std::time::Duration::ZERO, None);
                }
            }
        }
    }

    /// The fence rose (stop the unique pods at once: the control plane may start them
    /// elsewhere soon) or lifted (start those still bound here).
    fn fence_changed(&mut self) {
        let fenced = *self.fenced.borrow_and_update();
        let unique: Vec<(String, Pod)> = (self.unique.iter())
            .map(|(k, p)| (k.clone(), p.clone()))
            .collect();
        for (key, pod) in unique {
            if fenced {
                if self.running.contains_key(&key) {
                    tracing::warn!("pod {key}: stopped, the node is fenced");
                    self.stop(&key, std::time::Duration::ZERO, None);
                }
            } else {
                self.observe(pod);
            }
        }
    }

    fn observe(&mut self, pod: Pod) {
        let key = pod_key(&pod);
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if shoal_api::api::fencing::must_be_unique(&pod) {
            self.unique.insert(key.clone(), pod.clone());
            if *self.fenced.borrow() && pod.metadata.deletion_timestamp.is_none() {
                // Not started while fenced; started again when the fence lifts.
                return;
            }
        }
        if self.running.get(&key).is_some_and(|r| r.uid != uid) {
            // A namesake replaced the pod we ran.
            self.stop(&key, std::time::Duration::ZERO, None);
        }
        if pod.metadata.deletion_timestamp.is_some() {
            if !self.terminating.insert(key.clone()) {
                return;
            }
            let grace = pod
                .metadata
                .deletion_grace_period_seconds
                .unwrap_or(0)
                .max(0) as u64;
            self.stop(&key, std::time::Duration::from_secs(grace), Some(pod));
            return;
        }
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .unwrap_or("Pending");
        if let Some(running) = self.running.get(&key) {
            // A running pod may have been given ephemeral containers (`kubectl debug`).
            ephemeral::sync(&self.shared, &pod);
            if marked_unreachable(&pod) {
                // This node was lost for a while, not its pod: say again how it is.
                let _ = running.reports.try_send(worker::Report::Republish);
            }
            return;
        }
        if matches!(phase, "Succeeded" | "Failed") {
            return;
        }
        let Some(ip) = self
            .ips
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .allocate()
        else {
            tracing::warn!("pod {key}: no pod IP left on node {}", self.node_name);
            return;
        };
        let (stop, stopped) = watch::channel(None);
        let proxy: Option<Arc<dyn crate::pod::network::ServiceRoutes>> =
            Some(self.shared.proxy.clone());
        let api = self.shared.api.as_ref().map(|(route, _)| route.clone());
        let network = PodNetwork::for_pod(&key, proxy, self.shared.egress.clone(), api);
        self.shared.networks.insert(&key, &ip, network.clone());
        let worker = worker::PodWorker::new(self.shared.clone(), pod, ip.clone(), stopped, network);
        let reports = worker.reports();
        let task = self.tasks.spawn(worker.run());
        self.running.insert(
            key,
            Running {
                uid,
                ip,
                stop,
                reports,
                task,
            },
        );
    }

    /// Stops the pod's worker within `grace`, frees what it held, and with `delete` removes
    /// the pod from the API once its containers are stopped.
    fn stop(&mut self, key: &str, grace: std::time::Duration, delete: Option<Pod>) {
        let running = self.running.remove(key);
        let (ips, shared, key) = (self.ips.clone(), self.shared.clone(), key.to_string());
        self.tasks.spawn(async move {
            if let Some(running) = running {
                let _ = running.stop.send(Some(grace));
                let _ = running.task.await;
                ips.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .release(&running.ip);
                let _ = tokio::fs::remove_dir_all(shared.pod_dir(&running.uid)).await;
                let _ = tokio::fs::remove_dir_all(shared.token_dir(&running.uid)).await;
                shared.networks.remove(&key);
                shared.logs.forget_pod(&key);
            }
            if let Some(pod) = delete {
                finish_deletion(&shared.client, pod).await;
            }
        });
    }
}

/// Removes a pod marked for deletion from the API (grace 0, only this uid).
async fn finish_deletion(client: &Client, pod: Pod) {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let pods = client.api::<Pod>(pod.metadata.namespace.as_deref());
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    };
    if let Err(e) = pods.delete(&name, &params).await {
        if !e.is_not_found() && !e.is_conflict() {
            tracing::warn!("finishing deletion of pod {name}: {e}");
        }
    }
}

fn pod_key(pod: &Pod) -> String {
    shoal_api::api::object::key_of(&pod.metadata)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_pool_allocates_and_reuses() {
        let mut pool = IpPool::new("10.244.3.0/29").unwrap();
        let ips: Vec<String> = (0..5).filter_map(|_| pool.allocate()).collect();
        assert_eq!(
            ips,
            [
                "10.244.3.2",
                "10.244.3.3",
                "10.244.3.4",
                "10.244.3.5",
                "10.244.3.6"
            ]
        );
        assert!(pool.allocate().is_none(), "a /29 has five pod addresses");
        pool.release("10.244.3.3");
        assert_eq!(pool.allocate().unwrap(), "10.244.3.3");
        let mut wide = IpPool::new("10.1.0.0/16").unwrap();
        assert_eq!(
            (0..300).filter_map(|_| wide.allocate()).last().unwrap(),
            "10.1.1.45"
        );
        assert!(IpPool::new("nonsense").is_err());
    }
}
