//! `shoal dev`: the control plane and N agents in one process, a kubeconfig for kubectl, and
//! optionally a demo workload.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::json;

use crate::cluster::DevCluster;

#[derive(Args)]
pub struct DevCommand {
    /// How many node agents to run.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Where the API server listens.
    #[arg(long, default_value = "127.0.0.1:6443")]
    api_addr: SocketAddr,
    /// Where the store, the kubeconfig and the nodes' data live (default ~/.shoal/dev).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Deploy the demo workload once the cluster is up.
    #[arg(long)]
    demo: bool,
    /// How the scheduler places pods that name no profile: `spread` (fewest pods first) or
    /// `bin-packing` (fill the most allocated node first).
    #[arg(long, default_value = "spread")]
    scheduler_profile: shoal_control::scheduler::Profile,
    /// Where the ingress serves every Service, at `http://<service>.<namespace>.localhost:<port>/`.
    #[arg(long, default_value = "127.0.0.1:8080")]
    ingress_addr: SocketAddr,
    /// Also serve the ingress over HTTPS here, with the certificates Ingresses name in their
    /// `spec.tls` (kubernetes.io/tls Secrets), chosen by the requested host (SNI).
    #[arg(long)]
    ingress_tls_addr: Option<SocketAddr>,
    /// More directories file-path images may come from (repeatable; the examples directory
    /// `<data-dir>/examples` always may).
    #[arg(long = "allow-image-dir")]
    allow_image_dir: Vec<PathBuf>,
    /// How often each HorizontalPodAutoscaler is looked at: seconds, or a number with s or m.
    #[arg(long, default_value = "15s")]
    horizontal_pod_autoscaler_sync_period: String,
    #[command(flatten)]
    registries: super::RegistryArgs,
    #[command(flatten)]
    security: super::server::SecurityArgs,
}

impl DevCommand {
    pub async fn execute(self) -> anyhow::Result<()> {
        super::init_tracing();
        let data_dir = self
            .data_dir
            .unwrap_or_else(crate::kubeconfig::default_data_dir);
        let mut options = crate::cluster::ControlPlaneOptions::default();
        options.scheduler.default_profile = self.scheduler_profile;
        options.security = self.security.options();
        options.controllers.hpa_sync_period =
            super::server::hpa_sync_period(&self.horizontal_pod_autoscaler_sync_period)?;
        let examples = install_examples(&data_dir)?;
        let mut image_dirs = vec![examples.clone()];
        image_dirs.extend(self.allow_image_dir.iter().cloned());
        let mut cluster =
            DevCluster::start_with(&data_dir, self.api_addr, self.nodes, options, |c| {
                c.image_dirs = Some(image_dirs.clone());
                self.registries.apply(c);
            })
            .await?;
        let kubeconfig = cluster.write_kubeconfig()?;
        let ingress = cluster.start_ingress(self.ingress_addr).await?;
        let ingress_tls = match self.ingress_tls_addr {
            Some(addr) => format!(" and https://{}", cluster.start_ingress_tls(addr).await?),
            None => String::new(),
        };
        if self.demo {
            deploy_demo(&cluster, &examples).await?;
        }
        println!(
            "shoal dev ready: API at {} with {} node(s); kubeconfig at {}; ingress on http://{ingress}{ingress_tls}",
            cluster.control.url(),
            cluster.agents.len(),
            kubeconfig.display()
        );
        if self.demo {
            let kc = kubeconfig.display();
            println!("demo deployed: try `kubectl --kubeconfig {kc} get pods -o wide`, `kubectl --kubeconfig {kc} logs hello-p2`");
            println!("  and the HTTP pod: `kubectl --kubeconfig {kc} get --raw /api/v1/namespaces/default/pods/web-demo:8080/proxy/`");
            println!(
                "  and its Service through the ingress: `curl http://web-demo.default.localhost:{}/`",
                ingress.port()
            );
        }
        super::shutdown_signal().await;
        println!("shoal dev stopping");
        cluster.shutdown().await;
        Ok(())
    }
}

/// Writes the example programs to `<data-dir>/examples/` so manifests can name them.
fn install_examples(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = data_dir.join("examples");
    std::fs::create_dir_all(&dir)?;
    for (name, bytes) in shoal_examples::EMBEDDED {
        std::fs::write(dir.join(name), bytes)?;
    }
    Ok(dir)
}

/// The demo: the hello example as a preview 1 module and as a preview 2 component, and the
/// web example as an HTTP pod.
async fn deploy_demo(cluster: &DevCluster, examples: &Path) -> anyhow::Result<()> {
    let pods = cluster
        .control
        .client
        .api::<k8s_openapi::api::core::v1::Pod>(Some("default"));
    let hello = |name: &str, file: &str| {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "hello-demo"}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "hello", "image": examples.join(file), "args": ["shoal demo"]}]}
        })
    };
    let web = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-demo", "labels": {"app": "web-demo"}},
        "spec": {"volumes": [{"name": "data", "emptyDir": {}}],
                 "containers": [{"name": "web", "image": examples.join("web-p2.wasm"), "ports": [{"containerPort": 8080}],
                 "env": [{"name": "NAME", "value": "the Shoal demo"}],
                 "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}
    });
    for pod in [
        hello("hello-p1", "hello-p1.wasm"),
        hello("hello-p2", "hello-p2.wasm"),
        web,
    ] {
        match pods.create(&serde_json::from_value(pod)?).await {
            Ok(_) => {}
            Err(e) if e.is_conflict() => {}
            Err(e) => return Err(e.into()),
        }
    }
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web-demo"},
        "spec": {"selector": {"app": "web-demo"}, "ports": [{"port": 80, "targetPort": 8080}]}
    });
    let services = cluster
        .control
        .client
        .api::<k8s_openapi::api::core::v1::Service>(Some("default"));
    match services.create(&serde_json::from_value(service)?).await {
        Ok(_) => {}
        Err(e) if e.is_conflict() => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}
