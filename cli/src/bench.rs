//! `shoal-bench`: Shoal's benchmarks (not timed tests), printing the figures the issues ask
//! for. Run in release: `cargo run --release --bin shoal-bench -- --help`.
//!
//! - `pods`: pod create -> Running as observed through a watch, over N pods in an in-process
//!   `shoal dev` cluster, with the module already compiled and cached;
//! - `writes`: durable API writes per second (ConfigMap creates over HTTP) with 1 and with
//!   32 concurrent clients.
//!
//! Every request goes over a real loopback socket to the API server.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use shoal::cluster::DevCluster;
use shoal_control::client::{Client, ListParams, WatchEvent};
use tokio::sync::{Mutex, Semaphore};

#[derive(Parser)]
#[command(name = "shoal-bench", about = "Shoal's benchmarks")]
struct Args {
    /// Which benchmarks to run: pods, writes, or all.
    #[arg(default_value = "all")]
    which: String,
    /// Pods to create in the pod-start benchmark.
    #[arg(long, default_value_t = 1000)]
    pods: usize,
    /// Concurrent creators in the pod-start benchmark.
    #[arg(long, default_value_t = 16)]
    creators: usize,
    /// Writes per client count in the write benchmark.
    #[arg(long, default_value_t = 2000)]
    writes: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        if matches!(args.which.as_str(), "all" | "pods") {
            pod_start(&args).await?;
        }
        if matches!(args.which.as_str(), "all" | "writes") {
            writes(&args).await?;
        }
        Ok(())
    })
}

async fn start_cluster(max_pods: u32) -> anyhow::Result<(DevCluster, tempfile::TempDir, Client)> {
    let dir = tempfile::tempdir()?;
    let cluster = DevCluster::start_with(dir.path(), "127.0.0.1:0".parse()?, 1, |config| {
        config.max_pods = max_pods
    })
    .await?;
    let client = Client::http(&cluster.control.url());
    Ok((cluster, dir, client))
}

fn sleeping_pod(name: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"bench": "pods"}},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 0,
                 "containers": [{"name": "main", "image": shoal_examples::HELLO_P2, "args": ["bench", "--sleep-ms", "30000"]}]}
    }))?)
}

fn is_running(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

async fn pod_start(args: &Args) -> anyhow::Result<()> {
    let (mut cluster, _dir, client) = start_cluster(args.pods as u32 + 16).await?;
    let pods = client.api::<Pod>(Some("default"));
    // Warm-up: the module is compiled once and cached, as the benchmark intends.
    pods.create(&sleeping_pod("warmup")?).await?;
    let params = ListParams::default().labels("bench=pods");
    let list = pods.list(&params).await?;
    let mut watch = Box::pin(pods.watch(&params, &list.resource_version).await?);
    while let Some(event) = watch.next().await {
        if let Ok(WatchEvent::Modified(pod)) = event {
            if is_running(&pod) {
                break;
            }
        }
    }

    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let observer = {
        let sent = sent.clone();
        let total = args.pods;
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(total);
            let mut seen = std::collections::HashSet::new();
            while let Some(event) = watch.next().await {
                let Ok(WatchEvent::Modified(pod) | WatchEvent::Added(pod)) = event else {
                    continue;
                };
                let name = pod.metadata.name.clone().unwrap_or_default();
                if !is_running(&pod) || !seen.insert(name.clone()) {
                    continue;
                }
                if let Some(start) = sent.lock().await.get(&name) {
                    latencies.push(start.elapsed());
                }
                if latencies.len() == total {
                    break;
                }
            }
            latencies
        })
    };
    let began = Instant::now();
    let permits = Arc::new(Semaphore::new(args.creators));
    for i in 0..args.pods {
        let permit = permits.clone().acquire_owned().await?;
        let (pods, sent) = (pods.clone(), sent.clone());
        let name = format!("bench-{i}");
        let pod = sleeping_pod(&name)?;
        tokio::spawn(async move {
            sent.lock().await.insert(name.clone(), Instant::now());
            if let Err(e) = pods.create(&pod).await {
                eprintln!("create {name}: {e}");
            }
            drop(permit);
        });
    }
    let mut latencies = tokio::time::timeout(Duration::from_secs(300), observer).await??;
    let elapsed = began.elapsed();
    latencies.sort();
    println!(
        "pod create -> Running (watch), {} pods, {} creators, 1 node: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms; all Running after {:.2} s ({:.0} pods/s)",
        latencies.len(),
        args.creators,
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.90)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().unwrap_or(&Duration::ZERO)),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64()
    );
    cluster.shutdown().await;
    Ok(())
}

async fn writes(args: &Args) -> anyhow::Result<()> {
    let (mut cluster, _dir, client) = start_cluster(16).await?;
    let maps = client.api::<ConfigMap>(Some("default"));
    for clients in [1usize, 32] {
        let began = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..clients {
            let maps = maps.clone();
            let per_client = args.writes / clients;
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_client);
                for i in 0..per_client {
                    let map: ConfigMap = serde_json::from_value(serde_json::json!({
                        "metadata": {"name": format!("w{clients}-{c}-{i}")}, "data": {"key": "value"}
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
        println!(
            "durable writes (ConfigMap create over HTTP, fsync per commit), {clients} client(s): {:.0} writes/s ({} writes in {:.2} s), latency p50 {:.2} ms, p99 {:.2} ms",
            latencies.len() as f64 / elapsed.as_secs_f64(),
            latencies.len(),
            elapsed.as_secs_f64(),
            ms(percentile(&latencies, 0.50)),
            ms(percentile(&latencies, 0.99)),
        );
    }
    cluster.shutdown().await;
    Ok(())
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
