//! The etcd benchmarks (`--store etcd:URL[,URL…]`, a running etcd cluster): the store every
//! benchmark's cluster uses, raw `etcd-client` puts beside Shoal's durable creates in one run,
//! a list of 10,000 pods from the watch cache, and controller failover between `shoal
//! server` processes.

use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use shoal_control::store::EtcdOptions;
use tokio::sync::Semaphore;

use super::{ms, percentile, start_cluster_with, Args};

/// The etcd every benchmark cluster keeps its objects in (`None`: each its own redb file).
static ETCD: OnceLock<Option<Vec<String>>> = OnceLock::new();

/// Reads `--store`: `redb` (the default) or `etcd:URL[,URL…]`.
pub fn configure(store: &str) -> anyhow::Result<()> {
    let endpoints = match store.split_once(':') {
        None if store == "redb" => None,
        Some(("etcd", urls)) => Some(urls.split(',').map(str::to_string).collect()),
        _ => anyhow::bail!("--store {store:?}: redb or etcd:URL[,URL…]"),
    };
    let _ = ETCD.set(endpoints);
    Ok(())
}

/// The etcd endpoints of `--store`, if it names etcd.
pub fn endpoints() -> Option<&'static Vec<String>> {
    ETCD.get().and_then(Option::as_ref)
}

/// The store of a new benchmark cluster: a prefix of its own in the `--store` etcd, so that
/// clusters of one run do not see each other's objects.
pub fn store_options() -> Option<EtcdOptions> {
    let endpoints = endpoints()?;
    let mut options = EtcdOptions::new(endpoints.clone());
    options.prefix = format!("/bench-{}", uuid_like());
    Some(options)
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{nanos:x}-{}", std::process::id())
}

/// Raw `etcd-client` puts of a ConfigMap-sized value from `clients` concurrent tasks over one
/// client (as the API server's store has one): puts per second. With `as_create`, each put
/// is the transaction a create is (the key must not exist: `create_revision == 0`).
pub async fn raw_puts(clients: usize, total: usize, as_create: bool) -> anyhow::Result<f64> {
    let Some(endpoints) = endpoints() else {
        anyhow::bail!("raw etcd puts need --store etcd:URL");
    };
    let client = etcd_client::Client::connect(endpoints, None).await?;
    let value = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "w64-00-0000", "namespace": "default",
            "uid": "00000000-0000-0000-0000-000000000000",
            "creationTimestamp": "2026-12-05T00:00:00Z"},
        "data": {"key": "value"}})
    .to_string();
    let prefix = format!("/bench-raw-{}", uuid_like());
    let began = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (mut client, value, prefix) = (client.clone(), value.clone(), prefix.clone());
        let per_client = total / clients;
        tasks.push(tokio::spawn(async move {
            for i in 0..per_client {
                let key = format!("{prefix}/{c}/{i}");
                if as_create {
                    let txn = etcd_client::Txn::new()
                        .when([etcd_client::Compare::create_revision(
                            key.clone(),
                            etcd_client::CompareOp::Equal,
                            0,
                        )])
                        .and_then([etcd_client::TxnOp::put(key.clone(), value.clone(), None)])
                        .or_else([etcd_client::TxnOp::get(key, None)]);
                    client.txn(txn).await?;
                } else {
                    client.put(key, value.clone(), None).await?;
                }
            }
            Ok::<_, etcd_client::Error>(per_client)
        }));
    }
    let mut done = 0;
    for task in tasks {
        done += task.await??;
    }
    Ok(done as f64 / began.elapsed().as_secs_f64())
}

/// `list-cache`: 10,000 pods (by `--pods`) stored, then whole-cluster lists of them timed:
/// from the cache as it is (`resourceVersion=0`) and consistent (`resourceVersion` unset:
/// on etcd, first asks etcd for its revision).
pub async fn list_cache(args: &Args) -> anyhow::Result<()> {
    let options = shoal::cluster::ControlPlaneOptions {
        without_scheduler: true,
        ..Default::default()
    };
    let bench = start_cluster_with(0, options, |_| {}).await?;
    let pods = bench.client.api::<Pod>(Some("default"));
    let permits = std::sync::Arc::new(Semaphore::new(64));
    let mut tasks = Vec::new();
    for i in 0..args.pods {
        let permit = permits.clone().acquire_owned().await?;
        let pods = pods.clone();
        let pod = super::pod(
            &format!("listed-{i}"),
            "list",
            "/nonexistent/app.wasm",
            &[],
            None,
        )?;
        tasks.push(tokio::spawn(async move {
            pods.create(&pod).await.expect("create pod");
            drop(permit);
        }));
    }
    for task in tasks {
        task.await?;
    }
    for (what, query) in [
        ("resourceVersion=0 (cache as is)", "?resourceVersion=0"),
        ("consistent (resourceVersion unset)", ""),
    ] {
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..20 {
            let request = http::Request::get(format!("/api/v1/pods{query}")).body(Vec::new())?;
            let start = Instant::now();
            bytes = bench.client.send_bytes(request).await?.len();
            times.push(start.elapsed());
        }
        times.sort();
        println!(
            "list of {} pods, {what}, {}: p50 {:.1} ms, p90 {:.1} ms ({:.1} MB each)",
            args.pods,
            store_name(),
            ms(percentile(&times, 0.50)),
            ms(percentile(&times, 0.90)),
            bytes as f64 / 1e6
        );
    }
    bench.cluster.shutdown().await;
    Ok(())
}

pub fn store_name() -> &'static str {
    if endpoints().is_some() {
        "etcd"
    } else {
        "redb"
    }
}

/// A `shoal server` process (the binary beside this one) on etcd, with a 3 s election lease.
struct ServerProcess {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(dir: &std::path::Path, prefix: &str) -> anyhow::Result<ServerProcess> {
    let shoal = std::env::current_exe()?.with_file_name("shoal");
    let endpoints = endpoints().expect("etcd").join(",");
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let child = Command::new(shoal)
        .args(["server", "--api-addr", &addr.to_string()])
        .args(["--data-dir", dir.to_str().unwrap_or(".")])
        .args(["--etcd-servers", &endpoints, "--etcd-prefix", prefix])
        .args(["--leader-elect-lease-duration", "3s"])
        .args(["--leader-elect-renew-deadline", "2s"])
        .args(["--leader-elect-retry-period", "1s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(ServerProcess {
        child,
        dir: dir.to_path_buf(),
    })
}

/// The pid in the election Lease's holder (`host_pid_started`), read through `client`.
async fn leader_pid(client: &shoal_control::client::Client) -> Option<u32> {
    let lease = client
        .api::<Lease>(Some("kube-system"))
        .get_opt("shoal-controller-manager")
        .await
        .ok()??;
    let holder = lease.spec?.holder_identity?;
    holder.split('_').nth(1)?.parse().ok()
}

async fn wait_for_kubeconfig(
    dir: &std::path::Path,
) -> anyhow::Result<shoal_control::client::Client> {
    let path = dir.join("kubeconfig");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if path.exists() {
            if let Ok((client, _)) = shoal::kubeconfig::connect(&path).await {
                if client
                    .api::<Lease>(Some("kube-system"))
                    .get_opt("x")
                    .await
                    .is_ok()
                {
                    return Ok(client);
                }
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no server ready in {}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `failover`: two `shoal server`s on the `--store` etcd with a 3 s election lease; the
/// leader is SIGKILLed and the time until the other holds the Lease is measured, 3 times.
pub async fn failover(_args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(endpoints().is_some(), "failover needs --store etcd:URL");
    let mut figures = Vec::new();
    for _ in 0..3 {
        let root = tempfile::tempdir()?;
        let prefix = format!("/bench-failover-{}", uuid_like());
        let first = start_server(&root.path().join("a"), &prefix)?;
        let first_client = wait_for_kubeconfig(&first.dir).await?;
        // Same PKI on the second, as on another machine.
        copy_dir(&first.dir.join("pki"), &root.path().join("b/pki"))?;
        let second = start_server(&root.path().join("b"), &prefix)?;
        let second_client = wait_for_kubeconfig(&second.dir).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let leader = loop {
            if let Some(pid) = leader_pid(&first_client).await {
                break pid;
            }
            anyhow::ensure!(Instant::now() < deadline, "no leader within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (mut leading, survivor, survivor_client) = if leader == first.child.id() {
            (first, second, second_client)
        } else {
            (second, first, first_client)
        };
        let killed = Instant::now();
        leading.child.kill()?;
        leading.child.wait()?;
        loop {
            if leader_pid(&survivor_client).await == Some(survivor.child.id()) {
                break;
            }
            anyhow::ensure!(
                killed.elapsed() < Duration::from_secs(30),
                "no takeover in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        figures.push(killed.elapsed());
    }
    let shown: Vec<String> = figures
        .iter()
        .map(|d| format!("{:.2} s", d.as_secs_f64()))
        .collect();
    println!(
        "controller failover (leader SIGKILLed -> the other holds the Lease), 3 s lease: {}",
        shown.join(", ")
    );
    Ok(())
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}
