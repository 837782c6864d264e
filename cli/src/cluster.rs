//! Wiring of the cluster's parts into running processes: a control plane (store, API server,
//! scheduler) and node agents, all in one process for `shoal dev` or split across
//! `shoal server` and `shoal agent`. Tests and benchmarks start clusters through here too.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use shoal_control::client::Client;
use shoal_control::server::{ApiServer, ServerOptions};
use shoal_control::store::{RedbStore, Released};
use shoal_control::task::Tasks;
use shoal_runtime::agent::{Agent, AgentConfig};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Settings of a control plane: the API server's and the controller manager's.
#[derive(Clone, Copy, Debug, Default)]
pub struct ControlPlaneOptions {
    pub server: ServerOptions,
    pub controllers: shoal_control::controllers::Options,
    pub scheduler: shoal_control::scheduler::Options,
    /// Leave the scheduler out (the scheduler benchmark starts its own on a backlog).
    pub without_scheduler: bool,
    /// Events the store keeps for watches to resume from (`None`: the store's default);
    /// a watch from before them gets 410 Gone and relists.
    pub event_log_len: Option<u64>,
}

/// The store, the API server on a socket, the scheduler and the controllers.
pub struct ControlPlane {
    pub addr: SocketAddr,
    /// A client that calls the API in-process (what controllers and in-process agents use).
    pub client: Client,
    server: Arc<ApiServer>,
    /// To tell when everything holding the store is gone (and its file released).
    store: Option<Released>,
    stop_http: Option<oneshot::Sender<()>>,
    http: Option<JoinHandle<std::io::Result<()>>>,
    /// The scheduler and the controllers.
    tasks: Tasks,
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
            server: options,
            controllers: controller_options,
            scheduler: scheduler_options,
            without_scheduler,
            event_log_len,
        } = options;
        std::fs::create_dir_all(data_dir)?;
        let log_len = event_log_len.unwrap_or(shoal_control::store::DEFAULT_EVENT_LOG_LEN);
        let store = RedbStore::open_with_log_len(&data_dir.join("store.redb"), log_len)
            .map_err(|e| anyhow::anyhow!("opening the store in {}: {e}", data_dir.display()))?;
        let released = store.released();
        let server = ApiServer::with_options(Arc::new(store), options).await?;
        let router = server.router();
        let listener = tokio::net::TcpListener::bind(api_addr)
            .await
            .map_err(|e| anyhow::anyhow!("binding the API server to {api_addr}: {e}"))?;
        let addr = listener.local_addr()?;
        let (stop_http, stopped) = oneshot::channel::<()>();
        let http = tokio::spawn(shoal_control::server::serve(
            listener,
            router.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        let client = Client::in_process(router);
        let tasks = Tasks::new();
        if !without_scheduler {
            let client = client.clone();
            tasks.supervise("scheduler", move || {
                shoal_control::scheduler::run(client.clone(), scheduler_options)
            });
        }
        shoal_control::controllers::start(client.clone(), controller_options, &tasks);
        Ok(Self {
            addr,
            client,
            server,
            store: Some(released),
            stop_http: Some(stop_http),
            http: Some(http),
            tasks,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the scheduler and the controllers and waits for them, ends open watches, stops
    /// serving once the requests in flight are answered (at most 5 s), and returns once the
    /// store is closed: a control plane can start again on the same data directory at once.
    /// Clients of this control plane held elsewhere (agents) must be dropped first.
    pub async fn shutdown(mut self) {
        self.tasks.shutdown().await;
        self.client.stop_shared_watches();
        self.server.stop();
        if let Some(stop) = self.stop_http.take() {
            let _ = stop.send(());
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
        if let Some(http) = &self.http {
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
        let mut agents = Vec::new();
        for i in 0..nodes {
            let name = format!("node-{i}");
            let mut config = AgentConfig::new(&name, data_dir.join("nodes").join(&name));
            // The nodes of one dev cluster share a disk, so claims follow their pods.
            config.claims_dir = Some(data_dir.join("claims"));
            configure(&mut config);
            agents.push(Agent::start(control.client.clone(), config).await?);
        }
        Ok(Self {
            control,
            agents,
            data_dir: data_dir.to_path_buf(),
            ingress: None,
            node_ports: None,
            ingress_address: None,
        })
    }

    /// Writes a kubeconfig for this cluster at `<data-dir>/kubeconfig` and returns its path.
    pub fn write_kubeconfig(&self) -> anyhow::Result<PathBuf> {
        let path = self.data_dir.join("kubeconfig");
        crate::kubeconfig::write(&path, &self.control.url())?;
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

    /// Stops the ingress, the agents and the control plane, each waited for (see
    /// [`ControlPlane::shutdown`]).
    pub async fn shutdown(mut self) {
        for task in [self.node_ports.take(), self.ingress_address.take()]
            .into_iter()
            .flatten()
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
