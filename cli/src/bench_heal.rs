//! `heal`: how fast a lost node's pods serve again, and what the heartbeats that find it
//! cost.
//!
//! - Node loss: an in-process cluster with a keeper node (it also runs the ingress) and, each
//!   round, a fresh victim node carrying a Deployment's `P` pods (the keeper cordoned while
//!   they are placed) beside one steady pod on the keeper behind the same Service. The
//!   victim's agent is then stopped abruptly, as a SIGKILL would (lease renewals end, its
//!   gateway refuses connections, its pods stop); the figure is the time from that moment
//!   until `P` replacement pods are Ready on the keeper, with requests through the ingress
//!   counted all along. `--kills` rounds with `P` = 10, and a quarter as many (at least 3)
//!   with `P` = 1,000.
//! - Lease renewals: `N` simulated nodes (Node objects and Leases) each renewing once a second
//!   for `--seconds`, as agents do by default, at `N` = 1,000 and 5,000, each a client of its
//!   own as an agent is (a node identity and a connection of its own): renewals per second
//!   achieved and their latency, beside the store's capacity for creates from 64 clients
//!   (the `writes` benchmark's figure) measured in the same cluster just before. The
//!   simulated nodes run in the benchmark's process, beside the API server: their side of
//!   each request (TLS, JSON) takes CPU a real cluster's agents would spend elsewhere.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use serde_json::json;
use shoal::cluster::ControlPlaneOptions;
use shoal_control::client::{watcher, Client, ListParams};
use shoal_control::server::ServerOptions;
use tokio::sync::Semaphore;

use super::{http_client, ms, percentile, start_cluster_with, Args};

/// The node-loss rounds when `loss`, the lease renewal load when `heartbeats`.
pub async fn heal(args: &Args, loss: bool, heartbeats: bool) -> anyhow::Result<()> {
    // A smoke run loses one small node and renews a few leases: the paths, not the scale.
    let (big_node, big_kills, fleets) = match args.smoke {
        true => (0, 0, [20, 50]),
        false => (1000, (args.kills / 4).max(3), [1000, 5000]),
    };
    if loss {
        let eviction = Duration::from_secs(args.pod_eviction_timeout_seconds);
        node_loss(10, args.kills.max(1), eviction).await?;
        if big_node > 0 {
            node_loss(big_node, big_kills, eviction).await?;
        }
    }
    if heartbeats {
        for nodes in fleets {
            renewals(nodes, args.seconds.max(1)).await?;
        }
    }
    Ok(())
}

/// The benchmark's pods as a watch keeps them (polling lists of 1,000 pods would cost more
/// than what is measured).
#[derive(Clone, Default)]
struct PodView(Arc<std::sync::Mutex<HashMap<String, Pod>>>);

impl PodView {
    fn start(client: &Client) -> Self {
        let view = Self::default();
        let mut events = watcher::<Pod>(client, ListParams::default().labels("app=heal"));
        let pods = view.0.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                event.apply_to(&mut pods.lock().unwrap_or_else(|p| p.into_inner()));
            }
        });
        view
    }

    /// How many pods of `set` pass `test`.
    fn count_where(&self, set: &str, test: impl Fn(&Pod) -> bool) -> usize {
        let pods = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let in_set = |p: &&Pod| {
            (p.metadata.labels.as_ref())
                .and_then(|l| l.get("set"))
                .map(String::as_str)
                == Some(set)
        };
        pods.values().filter(in_set).filter(|p| test(p)).count()
    }

    /// The pods of `set` that serve: Ready, not being deleted, not on node `off`.
    fn serving(&self, set: &str, off: &str) -> usize {
        self.count_where(set, |p| {
            p.metadata.deletion_timestamp.is_none()
                && (p.spec.as_ref()).and_then(|s| s.node_name.as_deref()) != Some(off)
                && shoal_control::controllers::pod_is_ready(p)
        })
    }

    /// How many pods of `set` there are at all.
    fn count(&self, set: &str) -> usize {
        self.count_where(set, |_| true)
    }
}

async fn cordon(client: &Client, node: &str, unschedulable: bool) -> anyhow::Result<()> {
    client
        .api::<Node>(None)
        .patch_merge(node, &json!({"spec": {"unschedulable": unschedulable}}))
        .await?;
    Ok(())
}

fn deployment(name: &str, replicas: usize) -> serde_json::Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"set": name}},
            "template": {"metadata": {"labels": {"app": "heal", "set": name}},
                "spec": {"terminationGracePeriodSeconds": 0, "containers": [{"name": "web",
                    "image": shoal_examples::WEB_P2, "ports": [{"containerPort": 8080}]}]}}}})
}

async fn wait_until(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !check().await? {
        anyhow::ensure!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn node_loss(pods: usize, kills: usize, eviction_timeout: Duration) -> anyhow::Result<()> {
    // A /16 per node: the keeper ends up with every round's replacements.
    let mut options = ControlPlaneOptions {
        server: ServerOptions { node_cidr_mask: 16 },
        ..Default::default()
    };
    // The lost pods themselves stay (terminating) until the eviction timeout, or until the
    // round deletes the dead node. A short timeout deletes them while their replacements are
    // being made, and those deletions' writes are then part of the figure.
    options.controllers.pod_eviction_timeout = eviction_timeout;
    let max_pods = u32::try_from(pods + 64)?;
    let configure = move |c: &mut shoal_runtime::agent::AgentConfig| c.max_pods = max_pods;
    let mut bench = start_cluster_with(1, options, configure).await?;
    let client = bench.client.clone();
    let keeper = bench.cluster.agents[0].node_name.clone();
    let ingress = bench.cluster.start_ingress("127.0.0.1:0".parse()?).await?;
    let service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "heal"},
        "spec": {"selector": {"app": "heal"}, "ports": [{"port": 80, "targetPort": 8080}]}});
    let deployments = "/apis/apps/v1/namespaces/default/deployments";
    client
        .json(
            http::Method::POST,
            "/api/v1/namespaces/default/services",
            "application/json",
            Some(&service),
        )
        .await?;
    client
        .json(
            http::Method::POST,
            deployments,
            "application/json",
            Some(&deployment("steady", 1)),
        )
        .await?;
    let view = PodView::start(&client);
    wait_until("the steady pod", Duration::from_secs(60), async || {
        Ok(view.serving("steady", "") == 1)
    })
    .await?;

    let (mut healed, mut failed, mut sent) = (Vec::new(), 0, 0);
    for round in 0..kills {
        let victim = format!("victim-{round}");
        bench.cluster.add_node(&victim, configure).await?;
        cordon(&client, &keeper, true).await?;
        client
            .json(
                http::Method::POST,
                deployments,
                "application/json",
                Some(&deployment("lost", pods)),
            )
            .await?;
        wait_until("the victim's pods", Duration::from_secs(300), async || {
            Ok(view.serving("lost", "") == pods)
        })
        .await?;
        cordon(&client, &keeper, false).await?;

        let load = Load::start(ingress, "heal.default.localhost");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut agent = bench.cluster.agents.pop().expect("the victim");
        let killed = Instant::now();
        agent.shutdown().await;
        // When the lost pods were all marked for deletion, and the replacements all made,
        // all placed and all running, on the way to all Ready: where a round's time goes.
        let mut steps: [Option<Duration>; 5] = [None; 5];
        // More replacements than pods at once would mean a controller made too many.
        let mut most = 0;
        wait_until("the replacements", Duration::from_secs(300), async || {
            let elsewhere = |p: &Pod| {
                p.metadata.deletion_timestamp.is_none()
                    && (p.spec.as_ref()).and_then(|s| s.node_name.as_deref()) != Some(&victim)
            };
            let phase = |p: &Pod| (p.status.as_ref()).and_then(|s| s.phase.clone());
            let counts = [
                view.count_where("lost", elsewhere),
                view.count_where("lost", |p| {
                    elsewhere(p) && (p.spec.as_ref()).is_some_and(|s| s.node_name.is_some())
                }),
                view.count_where("lost", |p| {
                    elsewhere(p) && phase(p).as_deref() == Some("Running")
                }),
                view.serving("lost", &victim),
                view.count_where("lost", |p| {
                    p.metadata.deletion_timestamp.is_some()
                        && (p.spec.as_ref()).and_then(|s| s.node_name.as_deref()) == Some(&victim)
                }),
            ];
            most = most.max(counts[0]);
            for (step, count) in steps.iter_mut().zip(counts) {
                if step.is_none() && count >= pods {
                    *step = Some(killed.elapsed());
                }
            }
            Ok(counts[3] == pods)
        })
        .await?;
        healed.push(killed.elapsed());
        let at = |step: Option<Duration>| step.map_or(f64::NAN, ms);
        eprintln!(
            "  {pods} pods, round {round}: replaced in {:.0} ms (lost pods all marked for deletion at {:.0} ms; replacements all made at {:.0} ms, placed at {:.0} ms, running at {:.0} ms; at most {most} replacements at once)",
            ms(killed.elapsed()),
            at(steps[4]),
            at(steps[0]),
            at(steps[1]),
            at(steps[2]),
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (round_sent, round_failed, failures) = load.stop().await;
        (sent, failed) = (sent + round_sent, failed + round_failed);
        if !failures.is_empty() {
            eprintln!(
                "  round {round}: {round_failed} of {round_sent} failed, first: {failures:?}"
            );
        }

        // Clean up for the next round: the Deployment, and the lost node.
        client
            .json(
                http::Method::DELETE,
                &format!("{deployments}/lost"),
                "application/json",
                None,
            )
            .await?;
        let _ = client
            .api::<Node>(None)
            .delete(&victim, &Default::default())
            .await;
        wait_until(
            "the round's pods to go",
            Duration::from_secs(120),
            async || Ok(view.count("lost") == 0),
        )
        .await?;
    }
    healed.sort();
    println!(
        "node loss -> {pods} replacement pod(s) Ready, {kills} kills: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; requests through the ingress meanwhile: {failed} of {sent} failed",
        ms(percentile(&healed, 0.50)),
        ms(percentile(&healed, 0.99)),
        ms(healed.last().copied().unwrap_or_default()),
    );
    bench.cluster.shutdown().await;
    Ok(())
}

/// Four callers, one request after another each (2 ms apart), until stopped.
struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    counts: Arc<(AtomicUsize, AtomicUsize)>,
    /// The first failures' answers, to show what failed.
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    callers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(ingress: std::net::SocketAddr, host: &str) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let counts = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
        let failures: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let callers = (0..4)
            .map(|_| {
                let (stop, counts, host) = (stop.clone(), counts.clone(), host.to_string());
                let failures = failures.clone();
                tokio::spawn(async move {
                    let client = http_client();
                    while !stop.load(Ordering::Relaxed) {
                        let request = http::Request::get(format!("http://{ingress}/"))
                            .header(http::header::HOST, &host)
                            .body(Empty::<Bytes>::new())
                            .expect("a valid request");
                        let failure = match client.request(request).await {
                            Ok(response) => {
                                let status = response.status();
                                let body = response.into_body().collect().await;
                                let body = body.map(|b| b.to_bytes()).unwrap_or_default();
                                (!status.is_success()).then(|| {
                                    format!("{status}: {}", String::from_utf8_lossy(&body).trim())
                                })
                            }
                            Err(e) => Some(e.to_string()),
                        };
                        counts.0.fetch_add(1, Ordering::Relaxed);
                        // Paced a little: callers flat out would starve the cluster measured.
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        if let Some(failure) = failure {
                            counts.1.fetch_add(1, Ordering::Relaxed);
                            let mut failures = failures.lock().unwrap_or_else(|p| p.into_inner());
                            if failures.len() < 3 {
                                failures.push(failure);
                            }
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            counts,
            failures,
            callers,
        }
    }

    /// (sent, failed, the first failures)
    async fn stop(self) -> (usize, usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for caller in self.callers {
            let _ = caller.await;
        }
        let failures =
            std::mem::take(&mut *self.failures.lock().unwrap_or_else(|p| p.into_inner()));
        (
            self.counts.0.load(Ordering::Relaxed),
            self.counts.1.load(Ordering::Relaxed),
            failures,
        )
    }
}

/// `nodes` simulated nodes renewing their leases once a second for `seconds`, beside the
/// store's create capacity from 64 clients measured in the same cluster just before. Each
/// simulated node is a client of its own, as an agent is: its own node identity
/// (`system:node:<name>`, so the node authorizer and NodeRestriction judge it) and its own
/// connection, made while it registers, as an agent's is.
async fn renewals(nodes: usize, seconds: u64) -> anyhow::Result<()> {
    // /26 node ranges: room for 12,288 nodes (/24 has 3,072).
    let options = ControlPlaneOptions {
        server: ServerOptions { node_cidr_mask: 26 },
        ..Default::default()
    };
    let bench = start_cluster_with(0, options, |_| {}).await?;
    let capacity = create_capacity(&bench.client).await?;

    let permits = Arc::new(Semaphore::new(64));
    let mut tasks = Vec::new();
    for i in 0..nodes {
        let permit = permits.clone().acquire_owned().await?;
        let name = format!("sim-{i}");
        let kubeconfig = bench.cluster.data_dir.join(format!("{name}.kubeconfig"));
        let groups = ["system:nodes".to_string()];
        let day = Duration::from_secs(86_400);
        (bench.cluster.control).write_kubeconfig_for(
            &kubeconfig,
            &format!("system:node:{name}"),
            &groups,
            day,
        )?;
        tasks.push(tokio::spawn(async move {
            let (client, _) = shoal::kubeconfig::connect(&kubeconfig).await?;
            let node: Node = serde_json::from_value(json!({"metadata": {"name": name}}))?;
            client.api::<Node>(None).create(&node).await?;
            let lease: Lease = serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": name, "leaseDurationSeconds": 4,
                    "renewTime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)}}))?;
            client
                .api::<Lease>(Some("kube-node-lease"))
                .create(&lease)
                .await?;
            drop(permit);
            anyhow::Ok(client)
        }));
    }
    let mut clients = Vec::new();
    for task in tasks {
        clients.push(task.await??);
    }

    // Each node renews on its own one-second tick, the ticks spread over the second.
    let began = Instant::now();
    let end = began + Duration::from_secs(seconds);
    let mut renewers = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        let offset = Duration::from_secs(1).mul_f64(i as f64 / nodes as f64);
        renewers.push(tokio::spawn(async move {
            let leases = client.api::<Lease>(Some("kube-node-lease"));
            let name = format!("sim-{i}");
            let mut latencies = Vec::new();
            let mut late = 0usize;
            let mut next = began + offset;
            while next < end {
                tokio::time::sleep_until(next.into()).await;
                let start = Instant::now();
                let patch = json!({"spec": {"renewTime": chrono::Utc::now()
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)}});
                if leases.patch_merge(&name, &patch).await.is_ok() {
                    latencies.push(start.elapsed());
                }
                if start.elapsed() > Duration::from_secs(1) {
                    late += 1;
                }
                next += Duration::from_secs(1);
            }
            (latencies, late)
        }));
    }
    let (mut latencies, mut late) = (Vec::new(), 0);
    for renewer in renewers {
        let (some, some_late) = renewer.await?;
        latencies.extend(some);
        late += some_late;
    }
    let elapsed = began.elapsed();
    latencies.sort();
    let rate = latencies.len() as f64 / elapsed.as_secs_f64();

    println!(
        "lease renewals, {nodes} nodes each renewing every second ({}): {rate:.0} renewals/s, latency p50 {:.2} ms, p99 {:.2} ms, {late} took over a second; the store's capacity (creates, 64 clients, same cluster) {capacity:.0}/s, so the heartbeats take {:.0}% of it",
        super::bench_etcd::store_name(),
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99)),
        100.0 * rate / capacity,
    );
    bench.cluster.shutdown().await;
    Ok(())
}

/// Creates per second from 64 clients, as `writes --clients 64` measures the store's
/// capacity.
async fn create_capacity(client: &Client) -> anyhow::Result<f64> {
    let maps = client.api::<ConfigMap>(Some("default"));
    let (writes, clients) = (4000usize, 64usize);
    let started = Instant::now();
    let mut writers = Vec::new();
    for c in 0..clients {
        let maps = maps.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..writes / clients {
                let map: ConfigMap = serde_json::from_value(
                    json!({"metadata": {"name": format!("cap-{c}-{i}")}, "data": {"k": "v"}}),
                )?;
                maps.create(&map).await?;
            }
            anyhow::Ok(())
        }));
    }
    for writer in writers {
        writer.await??;
    }
    Ok(writes as f64 / started.elapsed().as_secs_f64())
}
