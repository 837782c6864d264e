//! Wiring of the cluster's parts into running processes: a control plane (store, API server,
//! scheduler) and node agents, all in one process for `shoal dev` or split across
//! `shoal server` and `shoal agent`. Tests and benchmarks start clusters through here too.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use shoal_control::auth::pki::{CertAndKey, Pki};
use shoal_control::auth::tls::{RotatingCertificate, TlsServing};
use shoal_control::client::Client;
use shoal_control::server::{ApiServer, KubeletClient, SecurityOptions, ServerOptions};
use shoal_control::store::{EtcdStore, RedbStore, Released};
use shoal_control::task::Tasks;
use shoal_runtime::agent::{Agent, AgentConfig};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Settings of a control plane: the API server's and the controller manager's.
#[derive(Clone, Debug, Default)]
pub struct ControlPlaneOptions {
    /// TLS and authentication of the API.
    pub security: ApiSecurity,
    pub server: ServerOptions,
    pub controllers: shoal_control::controllers::Options,
    pub scheduler: shoal_control::scheduler::Options,
    /// Leave the scheduler out (the scheduler benchmark starts its own on a backlog).
    pub without_scheduler: bool,
    /// Events the store keeps for watches to resume from (`None`: the store's default);
    /// a watch from before them gets 410 Gone and relists.
    pub event_log_len: Option<u64>,
    /// Keep objects in etcd instead of the data dir's redb file.
    pub etcd: Option<shoal_control::store::EtcdOptions>,
    /// Run the scheduler and controllers only while this server holds the election Lease
    /// (several servers on one etcd); `None`: always.
    pub leader_election: Option<shoal_control::leader::ElectionOptions>,
    /// The address listed for this server in the default/kubernetes Endpoints (`None`: the
    /// bound address, or 127.0.0.1 when that is unspecified).
    pub advertise_address: Option<std::net::IpAddr>,
    /// How this server's identity Lease (its place in those Endpoints) is renewed.
    pub peers: shoal_control::peers::PeerOptions,
}

/// How the API is served and who may use it.
#[derive(Clone, Debug)]
pub struct ApiSecurity {
    /// Requests without credentials may read `/healthz`, `/livez`, `/readyz`, `/version`.
    pub anonymous_auth: bool,
    /// A plain HTTP address besides HTTPS, loopback only (requests there act as a superuser).
    pub insecure_http_addr: Option<SocketAddr>,
    /// The user's own serving certificate and key (PEM files) instead of the cluster CA's.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_private_key_file: Option<PathBuf>,
    /// More CA certificates (PEM) whose client certificates authenticate users.
    pub client_ca_file: Option<PathBuf>,
    /// More names (DNS or IP) for the serving certificate.
    pub extra_names: Vec<String>,
    /// An `EncryptionConfiguration` file: which resources are encrypted at rest, and how.
    pub encryption_config: Option<PathBuf>,
}

impl Default for ApiSecurity {
    fn default() -> Self {
        Self {
            anonymous_auth: true,
            insecure_http_addr: None,
            tls_cert_file: None,
            tls_private_key_file: None,
            client_ca_file: None,
            extra_names: Vec::new(),
            encryption_config: None,
        }
    }
}

/// The `kubernetes` Service's names and ClusterIP (the first of the service range), which
/// pods use to reach the API.
const KUBERNETES_SERVICE_NAMES: &[&str] = &[
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
    "10.96.0.1",
];

/// How long the admin kubeconfig's client certificate is valid.
const ADMIN_CERT_TTL: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

/// The names the serving certificate carries for an API on `addr`.
fn serving_names(addr: SocketAddr, extra: &[String]) -> Vec<String> {
    let mut names: Vec<String> = ["localhost", "127.0.0.1", "::1"]
        .iter()
        .chain(KUBERNETES_SERVICE_NAMES)
        .map(|n| n.to_string())
        .collect();
    if addr.ip().is_unspecified() {
        // Listening everywhere: the host's own name too.
        if let Ok(host) = std::fs::read_to_string("/etc/hostname") {
            let host = host.trim();
            if !host.is_empty() {
                names.push(host.to_string());
            }
        }
    } else {
        names.push(addr.ip().to_string());
    }
    names.extend(extra.iter().cloned());
    names.sort();
    names.dedup();
    names
}

/// The API's TLS setup: the cluster PKI's (or the user's) serving certificate and the client
/// CAs, and the CA clients are told to trust.
struct ApiTls {
    serving: Arc<TlsServing>,
    /// The CA certificate kubeconfigs carry.
    server_ca_pem: String,
    /// Names the cluster-issued serving certificate carries (`None`: the user's certificate).
    rotate_for: Option<Vec<String>>,
}

fn read_text(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading {what} {}: {e}", path.display()))
}

fn api_tls(pki: &Pki, addr: SocketAddr, security: &ApiSecurity) -> anyhow::Result<ApiTls> {
    let mut client_cas = vec![pki.ca_pem().to_string()];
    if let Some(path) = &security.client_ca_file {
        client_cas.push(read_text(path, "--client-ca-file")?);
    }
    let (serving, server_ca_pem, rotate_for) =
        match (&security.tls_cert_file, &security.tls_private_key_file) {
            (Some(cert), Some(key)) => {
                let pem = CertAndKey {
                    cert_pem: read_text(cert, "--tls-cert-file")?,
                    key_pem: read_text(key, "--tls-private-key-file")?,
                };
                // Clients trust the last certificate of the chain given (its CA, when the
                // file holds the whole chain).
                let last = pem
                    .cert_pem
                    .rfind("-----BEGIN CERTIFICATE-----")
                    .unwrap_or(0);
                let ca = pem.cert_pem[last..].to_string();
                (pem, ca, None)
            }
            (None, None) => {
                let names = serving_names(addr, &security.extra_names);
                let pem = pki.serving_certificate(&names, time_now())?;
                (pem, pki.ca_pem().to_string(), Some(names))
            }
            _ => anyhow::bail!("--tls-cert-file and --tls-private-key-file go together"),
        };
    let certificate = Arc::new(RotatingCertificate::new(&serving)?);
    let client_cas: Vec<&str> = client_cas.iter().map(String::as_str).collect();
    Ok(ApiTls {
        serving: Arc::new(TlsServing::new(certificate, &client_cas)?),
        server_ca_pem,
        rotate_for,
    })
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// Re-issues the serving certificate when it nears expiry (looking every hour) and swaps it
/// into the listener; new connections get the new one.
async fn rotate_serving_certificate(pki: Arc<Pki>, names: Vec<String>, tls: Arc<TlsServing>) {
    let mut current = pki
        .serving_certificate(&names, time_now())
        .ok()
        .map(|c| c.cert_pem);
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        match pki.serving_certificate(&names, time_now()) {
            Ok(fresh) if Some(&fresh.cert_pem) != current.as_ref() => {
                match tls.certificate.replace(&fresh) {
                    Ok(()) => {
                        tracing::info!("rotated the API serving certificate");
                        current = Some(fresh.cert_pem);
                    }
                    Err(e) => tracing::warn!("rotating the API serving certificate: {e}"),
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("rotating the API serving certificate: {e}"),
        }
    }
}

/// The `default/kubernetes` Service (ClusterIP 10.96.0.1, port 443): how pods find the API
/// (`https://kubernetes.default.svc`). Its Endpoints list every live API server
/// (`shoal_control::peers`).
async fn publish_kubernetes_service(client: &Client, addr: SocketAddr) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Service;
    let service: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "kubernetes", "namespace": "default",
            "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"clusterIP": "10.96.0.1", "type": "ClusterIP",
            "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": addr.port()}]}
    }))?;
    let services = client.api::<Service>(Some("default"));
    if services.get_opt("kubernetes").await?.is_some() {
        // From an earlier start: the API's port may have changed.
        let ports = serde_json::json!({"spec": {"ports": [
            {"name": "https", "port": 443, "protocol": "TCP", "targetPort": addr.port()}]}});
        services.patch_merge("kubernetes", &ports).await?;
    } else {
        match services.create(&service).await {
            Ok(_) => {}
            Err(e) if e.is_conflict() => {}
            Err(e) => return Err(anyhow::anyhow!("creating the kubernetes Service: {e}")),
        }
    }
    Ok(())
}

/// The store, the API server on a socket, the scheduler and the controllers.
pub struct ControlPlane {
    pub addr: SocketAddr,
    /// The plain HTTP address, when one was asked for.
    pub insecure_addr: Option<SocketAddr>,
    /// The cluster CA and what it issues.
    pub pki: Arc<Pki>,
    /// The CA certificate clients trust for this API.
    pub server_ca_pem: String,
    /// A client that calls the API in-process (what controllers and in-process agents use).
    pub client: Client,
    server: Arc<ApiServer>,
    /// To tell when everything holding the store is gone (and its file released).
    store: Option<Released>,
    stop_http: Option<oneshot::Sender<()>>,
    http: Option<JoinHandle<std::io::Result<()>>>,
    insecure_http: Option<JoinHandle<std::io::Result<()>>>,
    /// The scheduler and the controllers.
    tasks: Tasks,
    /// Where this server is listed in the default/kubernetes Endpoints.
    advertised: SocketAddr,
}

impl ControlPlane {
    pub async fn start(data_dir: &Path, api_addr: SocketAddr) -> anyhow::Result<Self> {
        Self::start_with(data_dir, api_addr, ControlPlaneOptions::default()).await
    }

    pub async fn start_with(
        data_dir: &Path,
        api_addr: SocketAddr,
        options: ControlPlaneOptions,
    ) -> anyhow::Result<Self> {
        let ControlPlaneOptions {
            security,
            server: options,
            controllers: controller_options,
            scheduler: scheduler_options,
            without_scheduler,
            event_log_len,
            etcd,
            leader_election,
            advertise_address,
            peers,
        } = options;
        std::fs::create_dir_all(data_dir)?;
        let log_len = event_log_len.unwrap_or(shoal_control::store::DEFAULT_EVENT_LOG_LEN);
        let (store, released): (Arc<dyn shoal_control::store::Store>, _) = match etcd {
            Some(mut etcd) => {
                etcd.event_log_len = usize::try_from(log_len).unwrap_or(usize::MAX);
                let endpoints = etcd.endpoints.join(",");
                let store = EtcdStore::connect(etcd).await.map_err(|e| {
                    anyhow::anyhow!("opening the store in etcd at {endpoints}: {e}")
                })?;
                (Arc::new(store), None)
            }
            None => {
                let store = RedbStore::open_with_log_len(&data_dir.join("store.redb"), log_len)
                    .map_err(|e| {
                        anyhow::anyhow!("opening the store in {}: {e}", data_dir.display())
                    })?;
                let released = store.released();
                (Arc::new(store), Some(released))
            }
        };
        let store: Arc<dyn shoal_control::store::Store> = match &security.encryption_config {
            Some(path) => {
                let text = read_text(path, "--encryption-provider-config")?;
                let config = shoal_control::store::encryption::EncryptionConfig::parse(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                Arc::new(shoal_control::store::encryption::EncryptedStore::new(
                    store, config,
                ))
            }
            None => store,
        };
        let pki = Arc::new(Pki::load_or_create(&data_dir.join("pki"))?);
        let (sa_private, sa_public) = pki.service_account_keys();
        // What the API server shows agents' gateways (re-issued at every start).
        let kubelet_client = pki.issue_client(
            "kube-apiserver-kubelet-client",
            &[shoal_control::auth::SUPERUSER_GROUP.to_string()],
            ADMIN_CERT_TTL,
        )?;
        let security_options = SecurityOptions {
            anonymous_auth: security.anonymous_auth,
            service_account_keys: Some((sa_private.to_string(), sa_public.to_string())),
            kubelet_client: Some(KubeletClient {
                cert_pem: kubelet_client.cert_pem,
                key_pem: kubelet_client.key_pem,
                ca_pem: pki.ca_pem().to_string(),
            }),
        };
        let server = ApiServer::with_security(store, options, security_options).await?;
        let router = server.router();
        if let Some(insecure) = security.insecure_http_addr {
            anyhow::ensure!(
                insecure.ip().is_loopback(),
                "--insecure-http-addr {insecure} is not a loopback address: plain HTTP would answer the network without authentication"
            );
        }
        let listener = tokio::net::TcpListener::bind(api_addr)
            .await
            .map_err(|e| anyhow::anyhow!("binding the API server to {api_addr}: {e}"))?;
        let addr = listener.local_addr()?;
        let tls = api_tls(&pki, addr, &security)?;
        let (stop_http, stopped) = oneshot::channel::<()>();
        let stopped = futures::FutureExt::shared(async move {
            let _ = stopped.await;
        });
        let http = tokio::spawn(shoal_control::auth::tls::serve_https(
            listener,
            router.clone(),
            tls.serving.clone(),
            stopped.clone(),
        ));
        let (insecure_addr, insecure_http) = match security.insecure_http_addr {
            Some(insecure) => {
                let listener = tokio::net::TcpListener::bind(insecure).await.map_err(|e| {
                    anyhow::anyhow!("binding the insecure HTTP address {insecure}: {e}")
                })?;
                let bound = listener.local_addr()?;
                tracing::warn!("serving plain HTTP on {bound}: requests there act as a superuser");
                let task = tokio::spawn(shoal_control::auth::tls::serve_http(
                    listener,
                    router.clone(),
                    stopped.clone(),
                ));
                (Some(bound), Some(task))
            }
            None => (None, None),
        };
        let client = Client::in_process(router);
        let tasks = Tasks::new();
        if let Some(names) = tls.rotate_for.clone() {
            let (pki, serving) = (pki.clone(), tls.serving.clone());
            tasks.supervise("serving certificate rotation", move || {
                rotate_serving_certificate(pki.clone(), names.clone(), serving.clone())
            });
        }
        let lead = {
            let (client, pki) = (client.clone(), pki.clone());
            let server_ca_pem = tls.server_ca_pem.clone();
            move |tasks: &Tasks| {
                shoal_control::controllers::start_root_ca_publisher(
                    client.clone(),
                    &server_ca_pem,
                    tasks,
                );
                if !without_scheduler {
                    let client = client.clone();
                    tasks.supervise("scheduler", move || {
                        shoal_control::scheduler::run(client.clone(), scheduler_options)
                    });
                }
                shoal_control::controllers::start(client.clone(), controller_options, tasks);
                shoal_control::controllers::start_certificate_signer(
                    client.clone(),
                    pki.clone(),
                    controller_options,
                    tasks,
                );
            }
        };
        match leader_election {
            Some(election) => {
                let (client, inner) = (client.clone(), tasks.clone());
                tasks.spawn(shoal_control::leader::run(client, election, inner, lead));
            }
            None => lead(&tasks),
        }
        let advertised = SocketAddr::new(
            advertise_address.unwrap_or(if addr.ip().is_unspecified() {
                std::net::IpAddr::from([127, 0, 0, 1])
            } else {
                addr.ip()
            }),
            addr.port(),
        );
        publish_kubernetes_service(&client, addr).await?;
        {
            let client = client.clone();
            tasks.supervise("API server identity Lease", move || {
                shoal_control::peers::run(client.clone(), advertised, peers)
            });
        }
        Ok(Self {
            advertised,
            addr,
            insecure_addr,
            pki,
            server_ca_pem: tls.server_ca_pem,
            client,
            server,
            store: released,
            stop_http: Some(stop_http),
            http: Some(http),
            insecure_http,
            tasks,
        })
    }

    /// The API's HTTPS URL.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The plain HTTP URL of `--insecure-http-addr`, when one was asked for.
    pub fn insecure_url(&self) -> Option<String> {
        self.insecure_addr.map(|addr| format!("http://{addr}"))
    }

    /// The gateway mTLS of an in-process agent named `name`: trusting the cluster CA, and
    /// presenting a node certificate from it.
    pub fn node_gateway_tls(&self, name: &str) -> anyhow::Result<shoal_runtime::agent::GatewayTls> {
        let node = self.pki.issue_client(
            &format!("system:node:{name}"),
            &["system:nodes".to_string()],
            ADMIN_CERT_TTL,
        )?;
        Ok(shoal_runtime::agent::GatewayTls {
            client_ca_pem: self.pki.ca_pem().to_string(),
            identity: Arc::new(shoal_api::tls::ClientIdentity::from_pem(
                &node.cert_pem,
                &node.key_pem,
            )?),
        })
    }

    /// Writes the admin kubeconfig (user `shoal-admin` in `system:masters`) at `path`.
    pub fn write_admin_kubeconfig(&self, path: &Path) -> anyhow::Result<()> {
        let groups = [shoal_control::auth::SUPERUSER_GROUP.to_string()];
        self.write_kubeconfig_for(path, "shoal-admin", &groups, ADMIN_CERT_TTL)
    }

    /// Writes a kubeconfig at `path` for `user` in `groups` (a client certificate from the
    /// cluster CA, valid for `ttl`), trusting this API's CA.
    pub fn write_kubeconfig_for(
        &self,
        path: &Path,
        user: &str,
        groups: &[String],
        ttl: std::time::Duration,
    ) -> anyhow::Result<()> {
        let credentials = self.pki.issue_client(user, groups, ttl)?;
        let text = crate::kubeconfig::render(&self.url(), &self.server_ca_pem, user, &credentials);
        crate::kubeconfig::write_private(path, &text)
    }

    /// Stops the scheduler and the controllers and waits for them, ends open watches, stops
    /// serving once the requests in flight are answered (at most 5 s), and returns once the
    /// store is closed: a control plane can start again on the same data directory at once.
    /// Clients of this control plane held elsewhere (agents) must be dropped first.
    pub async fn shutdown(mut self) {
        self.tasks.shutdown().await;
        // Out of the kubernetes Endpoints at once, not a lease duration later.
        shoal_control::peers::leave(&self.client, self.advertised).await;
        self.client.stop_shared_watches();
        self.server.stop();
        if let Some(stop) = self.stop_http.take() {
            let _ = stop.send(());
        }
        if let Some(insecure) = self.insecure_http.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), insecure).await;
        }
        if let Some(http) = self.http.take() {
            let abort = http.abort_handle();
            if tokio::time::timeout(std::time::Duration::from_secs(5), http)
                .await
                .is_err()
            {
                tracing::warn!("the API server did not finish its requests within 5 s");
                abort.abort();
            }
        }
        let store = self.store.take();
        drop(self);
        // The last holders (the in-process client's service, watch streams) let go as their
        // tasks notice; the store's own drop then joins its writer.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while store.as_ref().is_some_and(|store| !store.is_released()) {
            if std::time::Instant::now() > deadline {
                tracing::warn!("the store is still in use 5 s after the control plane stopped");
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

impl Drop for ControlPlane {
    /// Without [`ControlPlane::shutdown`]: everything is told to stop, nothing is waited for.
    fn drop(&mut self) {
        let tasks = self.tasks.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { tasks.shutdown().await });
        }
        self.server.stop();
        for http in [&self.http, &self.insecure_http].into_iter().flatten() {
            http.abort();
        }
    }
}

/// A whole cluster in one process: a control plane and `nodes` agents.
pub struct DevCluster {
    pub control: ControlPlane,
    pub agents: Vec<Agent>,
    pub data_dir: PathBuf,
    ingress: Option<JoinHandle<std::io::Result<()>>>,
    node_ports: Option<JoinHandle<()>>,
    /// Writes the ingress's address into Ingresses' status.
    ingress_address: Option<JoinHandle<()>>,
    /// The ingress's TLS port and the watch of the certificates it serves.
    ingress_tls: Vec<JoinHandle<()>>,
}

impl DevCluster {
    pub async fn start(
        data_dir: &Path,
        api_addr: SocketAddr,
        nodes: usize,
    ) -> anyhow::Result<Self> {
        Self::start_with(data_dir, api_addr, nodes, Default::default(), |_| {}).await
    }

    /// Like [`DevCluster::start`], with `configure` adjusting each agent's configuration.
    pub async fn start_with(
        data_dir: &Path,
        api_addr: SocketAddr,
        nodes: usize,
        options: ControlPlaneOptions,
        configure: impl Fn(&mut AgentConfig),
    ) -> anyhow::Result<Self> {
        let control = ControlPlane::start_with(data_dir, api_addr, options).await?;
        let mut cluster = Self {
            control,
            agents: Vec::new(),
            data_dir: data_dir.to_path_buf(),
            ingress: None,
            node_ports: None,
            ingress_address: None,
            ingress_tls: Vec::new(),
        };
        for i in 0..nodes {
            cluster.add_node(&format!("node-{i}"), &configure).await?;
        }
        Ok(cluster)
    }

    /// Starts one more agent, named `name`, at the end of [`DevCluster::agents`].
    pub async fn add_node(
        &mut self,
        name: &str,
        configure: impl Fn(&mut AgentConfig),
    ) -> anyhow::Result<()> {
        let control = &self.control;
        let gateway_tls = control.node_gateway_tls(name)?;
        let mut config =
            AgentConfig::new(name, self.data_dir.join("nodes").join(name), gateway_tls);
        // The nodes of one dev cluster share a disk, so claims follow their pods.
        config.claims_dir = Some(self.data_dir.join("claims"));
        // The agents share the controllers' client: one watch of each kind for all.
        config.share_watches = true;
        config.api_endpoint = Some((control.url(), control.server_ca_pem.clone()));
        configure(&mut config);
        self.agents
            .push(Agent::start(control.client.clone(), config).await?);
        Ok(())
    }

    /// Writes an admin kubeconfig for this cluster at `<data-dir>/kubeconfig` (a client
    /// certificate in `system:masters`) and returns its path.
    pub fn write_kubeconfig(&self) -> anyhow::Result<PathBuf> {
        let path = self.data_dir.join("kubeconfig");
        self.control.write_admin_kubeconfig(&path)?;
        Ok(path)
    }

    /// Serves every Service at `http://<service>.<namespace>.localhost:<port>/` on `addr`,
    /// through the first node's proxy; returns the bound address.
    pub async fn start_ingress(&mut self, addr: SocketAddr) -> anyhow::Result<SocketAddr> {
        let proxy = (self.agents.first())
            .ok_or_else(|| anyhow::anyhow!("the ingress needs a node"))?
            .proxy
            .clone();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("binding the ingress to {addr}: {e}"))?;
        let bound = listener.local_addr()?;
        // The nodes of a dev cluster share this host: NodePort and LoadBalancer Services are
        // bound once, on the ingress's address.
        self.node_ports = Some(tokio::spawn(shoal_runtime::proxy::node_ports::serve(
            proxy.clone(),
            bound.ip(),
        )));
        self.ingress_address = Some(tokio::spawn(shoal_runtime::proxy::ingress::announce(
            proxy.clone(),
            bound.ip(),
        )));
        self.ingress = Some(tokio::spawn(shoal_runtime::proxy::ingress::serve(
            listener, proxy,
        )));
        Ok(bound)
    }

    /// Serves the ingress over TLS at `addr` too, with the certificates Ingresses name in
    /// their `spec.tls` (kubernetes.io/tls Secrets), chosen by the requested host.
    pub async fn start_ingress_tls(&mut self, addr: SocketAddr) -> anyhow::Result<SocketAddr> {
        use shoal_runtime::proxy::ingress_tls;
        let proxy = (self.agents.first())
            .ok_or_else(|| anyhow::anyhow!("the ingress needs a node"))?
            .proxy
            .clone();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("binding the ingress's TLS port to {addr}: {e}"))?;
        let bound = listener.local_addr()?;
        let certificates = ingress_tls::IngressCertificates::new(&proxy);
        self.ingress_tls.push(tokio::spawn(
            certificates.clone().follow(self.control.client.clone()),
        ));
        self.ingress_tls.push(tokio::spawn(ingress_tls::serve(
            listener,
            proxy,
            certificates,
        )));
        Ok(bound)
    }

    /// Stops the ingress, the agents and the control plane, each waited for (see
    /// [`ControlPlane::shutdown`]).
    pub async fn shutdown(mut self) {
        for task in [self.node_ports.take(), self.ingress_address.take()]
            .into_iter()
            .flatten()
            .chain(self.ingress_tls.drain(..))
        {
            task.abort();
            let _ = task.await;
        }
        if let Some(ingress) = self.ingress.take() {
            ingress.abort();
            let _ = ingress.await;
        }
        for mut agent in self.agents.drain(..) {
            agent.shutdown().await;
        }
        self.control.shutdown().await;
    }
}
