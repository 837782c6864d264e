//! Several `shoal server`s on one etcd (3 real members), with agents given every server: one leads the scheduler and the
//! controllers by a Lease, and when it is SIGKILLed another takes over within the lease
//! duration plus a few seconds; a Deployment scaled during the failover gets exactly its
//! replicas. The default/kubernetes Endpoints list the live servers. An agent given both
//! servers moves to the live one, and keeps serving its pods when none is left.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shoal_tests::etcd::{etcd_available, EtcdCluster};
use shoal_tests::*;

/// A 2-replica Deployment of the example HTTP component.
fn deployment() -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: steady
  namespace: default
spec:
  replicas: 2
  selector:
    matchLabels: {{app: steady}}
  template:
    metadata:
      labels: {{app: steady}}
    spec:
      containers:
      - name: app
        image: {}
        ports: [{{containerPort: 8080}}]
",
        shoal_examples::WEB_P2
    )
}

/// The pid in the election Lease's holder identity (`host_pid_started`).
async fn leader_pid(kubeconfig: &Path) -> Option<u32> {
    let output = kubectl_async(
        kubeconfig,
        &[
            "-n",
            "kube-system",
            "get",
            "lease",
            "shoal-controller-manager",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
    )
    .await;
    let holder = String::from_utf8_lossy(&output.stdout).to_string();
    holder.split('_').nth(1)?.parse().ok()
}

/// The names of the Deployment's pods.
async fn pods(kubeconfig: &Path) -> Vec<String> {
    let output = kubectl_async(
        kubeconfig,
        &[
            "get",
            "pods",
            "-l",
            "app=steady",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ],
    )
    .await;
    ok(output).split_whitespace().map(str::to_string).collect()
}

/// How many of the Deployment's pods are Running.
async fn running(kubeconfig: &Path) -> usize {
    let output = kubectl_async(
        kubeconfig,
        &[
            "get",
            "pods",
            "-l",
            "app=steady",
            "-o",
            "jsonpath={.items[*].status.phase}",
        ],
    )
    .await;
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .filter(|phase| *phase == "Running")
        .count()
}

/// The ports the default/kubernetes Endpoints list (every server here is on 127.0.0.1).
async fn endpoint_ports(kubeconfig: &Path) -> Vec<u16> {
    let output = kubectl_async(
        kubeconfig,
        &[
            "get",
            "endpoints",
            "kubernetes",
            "-o",
            "jsonpath={.subsets[*].ports[*].port}",
        ],
    )
    .await;
    let mut ports: Vec<u16> = String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    ports.sort();
    ports
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controllers_fail_over_to_another_server() {
    if !etcd_available("controllers_fail_over_to_another_server")
        || !kubectl_available("controllers_fail_over_to_another_server")
    {
        return;
    }
    let etcd = EtcdCluster::start(3);
    let endpoints = etcd.endpoints().join(",");
    let args = [
        "--etcd-servers",
        endpoints.as_str(),
        "--leader-elect-lease-duration",
        "3s",
        "--leader-elect-renew-deadline",
        "2s",
        "--leader-elect-retry-period",
        "1s",
        "--apiserver-lease-duration",
        "3s",
    ];
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let (first, first_url) = start_server(dirs[0].path(), &args);
    let mut servers = vec![first];
    copy_pki(dirs[0].path(), dirs[1].path());
    let (second, second_url) = start_server(dirs[1].path(), &args);
    servers.push(second);
    let ports = [port_of(&first_url), port_of(&second_url)];
    let kubeconfigs: Vec<PathBuf> = dirs.iter().map(|d| server_kubeconfig(d.path())).collect();
    // Two agents, each given both servers.
    let both_servers = format!("{first_url},{second_url}");
    let _agents = [
        start_agent(dirs[0].path(), &both_servers, "n1", &[]),
        start_agent(dirs[0].path(), &both_servers, "n2", &[]),
    ];

    // The kubernetes Endpoints list both servers.
    let mut both = ports.to_vec();
    both.sort();
    wait_for(
        "both servers in the Endpoints",
        Duration::from_secs(15),
        async || (endpoint_ports(&kubeconfigs[0]).await == both).then_some(()),
    )
    .await;

    let leader = wait_for("a leader", Duration::from_secs(30), async || {
        leader_pid(&kubeconfigs[0]).await
    })
    .await;
    let leading = servers
        .iter()
        .position(|s| s.child.id() == leader)
        .expect("the Lease names one of the two servers");
    let other = 1 - leading;
    ok(kubectl_stdin_async(&kubeconfigs[other], &["apply", "-f", "-"], &deployment()).await);
    wait_for("2 pods Running", Duration::from_secs(60), async || {
        (running(&kubeconfigs[other]).await == 2).then_some(())
    })
    .await;

    // SIGKILL the leader, and scale while nobody leads.
    servers[leading].signal(nix::sys::signal::Signal::SIGKILL);
    let killed = Instant::now();
    servers[leading].wait(Duration::from_secs(10));
    ok(kubectl_async(
        &kubeconfigs[other],
        &["scale", "deployment/steady", "--replicas=4"],
    )
    .await);
    let survivor = servers[other].child.id();
    wait_for(
        "the other server to take the Lease",
        Duration::from_secs(3 + 5),
        async || (leader_pid(&kubeconfigs[other]).await == Some(survivor)).then_some(()),
    )
    .await;
    eprintln!("controller failover took {:?}", killed.elapsed());
    // The killed server leaves the Endpoints once its identity Lease lapses (3 s).
    wait_for(
        "only the survivor in the Endpoints",
        Duration::from_secs(3 + 10),
        async || (endpoint_ports(&kubeconfigs[other]).await == [ports[other]]).then_some(()),
    )
    .await;
    wait_for("4 pods Running", Duration::from_secs(60), async || {
        (running(&kubeconfigs[other]).await == 4).then_some(())
    })
    .await;
    // Nothing created twice: still 4 a while later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(pods(&kubeconfigs[other]).await.len(), 4);
    assert_eq!(running(&kubeconfigs[other]).await, 4);
}

/// An agent given both servers (`--server A,B`): with the one it uses SIGKILLed, it moves to
/// the other, where new pods still reach it and `kubectl logs` still reads them; with both
/// down, its HTTP pod keeps serving on the node port from what it last knew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_fails_over_and_serves_with_no_server() {
    if !etcd_available("an_agent_fails_over_and_serves_with_no_server")
        || !kubectl_available("an_agent_fails_over_and_serves_with_no_server")
    {
        return;
    }
    let etcd = EtcdCluster::start(3);
    let endpoints = etcd.endpoints().join(",");
    let args = [
        "--etcd-servers",
        endpoints.as_str(),
        "--leader-elect-lease-duration",
        "3s",
        "--leader-elect-renew-deadline",
        "2s",
        "--leader-elect-retry-period",
        "1s",
    ];
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let (mut first, first_url) = start_server(dirs[0].path(), &args);
    copy_pki(dirs[0].path(), dirs[1].path());
    let (mut second, second_url) = start_server(dirs[1].path(), &args);
    let kubeconfigs: Vec<PathBuf> = dirs.iter().map(|d| server_kubeconfig(d.path())).collect();
    let servers = format!("{first_url},{second_url}");
    let _agent = start_agent(dirs[0].path(), &servers, "n1", &[]);

    let web = format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: web, labels: {{app: web}}}}
spec:
  containers:
  - name: web
    image: {}
    ports: [{{containerPort: 8080}}]
    env: [{{name: NAME, value: survivor}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  type: NodePort
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
",
        shoal_examples::WEB_P2
    );
    ok(kubectl_stdin_async(&kubeconfigs[0], &["apply", "-f", "-"], &web).await);
    let node_port = ok(kubectl_async(
        &kubeconfigs[0],
        &[
            "get",
            "service",
            "web",
            "-o",
            "jsonpath={.spec.ports[0].nodePort}",
        ],
    )
    .await);
    let through_node_port = Http::new(&format!("http://127.0.0.1:{}", node_port.trim()));
    let serves = async || {
        let (status, body) = through_node_port.raw("GET", "/", "", "").await;
        (status == 200 && String::from_utf8_lossy(&body).contains("survivor")).then_some(())
    };
    wait_for(
        "the pod to serve on the node port",
        Duration::from_secs(60),
        serves,
    )
    .await;

    // The agent's first server dies: it goes on through the second.
    first.signal(nix::sys::signal::Signal::SIGKILL);
    first.wait(Duration::from_secs(10));
    let hello = pod_yaml("after", shoal_examples::HELLO_P1, &["failover"]);
    ok(kubectl_stdin_async(&kubeconfigs[1], &["apply", "-f", "-"], &hello).await);
    let log = wait_for(
        "the new pod's log through the second server",
        Duration::from_secs(60),
        async || {
            let output = kubectl_async(&kubeconfigs[1], &["logs", "after"]).await;
            let log = String::from_utf8_lossy(&output.stdout).to_string();
            (output.status.success() && log.contains("failover")).then_some(log)
        },
    )
    .await;
    assert!(log.starts_with("Hello, failover!"), "{log}");
    let node = ok(kubectl_async(
        &kubeconfigs[1],
        &["get", "pod", "after", "-o", "jsonpath={.spec.nodeName}"],
    )
    .await);
    assert_eq!(node.trim(), "n1");

    // Both servers down: the pod still serves on the node port, again and again.
    second.signal(nix::sys::signal::Signal::SIGKILL);
    second.wait(Duration::from_secs(10));
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(
            serves().await.is_some(),
            "the pod stopped serving with no API server"
        );
    }
}

/// A kube client over both servers, as the admin.
async fn failover_client(kubeconfig: &Path, urls: &[String]) -> shoal_api::client::Client {
    let mut servers = Vec::new();
    for url in urls {
        let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
        let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        config.cluster_url = url.parse().unwrap();
        servers.push((url.clone(), kube::Client::try_from(config).unwrap()));
    }
    shoal_api::client::Client::failover(servers)
}

/// 20 SIGKILLs of API servers (each restarted, the two in turn) under a steady load of
/// creates from a kube client that fails over between them: every create answered 201
/// exists afterwards, and no uid is given twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_create_is_lost_across_20_server_kills() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    if !etcd_available("no_acknowledged_create_is_lost_across_20_server_kills") {
        return;
    }
    let etcd = EtcdCluster::start(3);
    let endpoints = etcd.endpoints().join(",");
    let args = ["--etcd-servers", endpoints.as_str()];
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let addrs = [free_addr().to_string(), free_addr().to_string()];
    let mut servers = vec![start_server_at(dirs[0].path(), &addrs[0], &args)];
    copy_pki(dirs[0].path(), dirs[1].path());
    servers.push(start_server_at(dirs[1].path(), &addrs[1], &args));
    let urls: Vec<String> = addrs.iter().map(|a| format!("https://{a}")).collect();
    let client = failover_client(&server_kubeconfig(dirs[0].path()), &urls).await;

    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut creators = Vec::new();
    for creator in 0..4 {
        let (client, stop) = (client.clone(), stop.clone());
        let (acknowledged, failed) = (acknowledged.clone(), failed.clone());
        creators.push(tokio::spawn(async move {
            let configmaps = client.api::<ConfigMap>(Some("default"));
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("load-{creator}-{n}");
                n += 1;
                let object: ConfigMap =
                    serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))
                        .unwrap();
                match configmaps.create(&object).await {
                    Ok(created) => acknowledged
                        .lock()
                        .unwrap()
                        .push((name, created.metadata.uid.unwrap())),
                    // A request cut by a kill: its outcome is unknown, so it is not counted.
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let started = Instant::now();
    for kill in 0..20 {
        let victim = kill % 2;
        tokio::time::sleep(Duration::from_millis(300)).await;
        servers[victim].signal(nix::sys::signal::Signal::SIGKILL);
        servers[victim].wait(Duration::from_secs(10));
        servers[victim] = start_server_at(dirs[victim].path(), &addrs[victim], &args);
    }
    stop.store(true, Ordering::Relaxed);
    for creator in creators {
        creator.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    eprintln!(
        "20 kills in {:?}: {} creates acknowledged, {} cut",
        started.elapsed(),
        acknowledged.len(),
        failed.load(Ordering::Relaxed)
    );
    assert!(
        acknowledged.len() > 100,
        "the load went on: {}",
        acknowledged.len()
    );

    let listed = client
        .api::<ConfigMap>(Some("default"))
        .list(&Default::default())
        .await
        .unwrap();
    let stored: std::collections::HashMap<String, String> = listed
        .items
        .iter()
        .map(|cm| {
            (
                cm.metadata.name.clone().unwrap(),
                cm.metadata.uid.clone().unwrap(),
            )
        })
        .collect();
    for (name, uid) in &acknowledged {
        assert_eq!(
            stored.get(name),
            Some(uid),
            "{name} was acknowledged with uid {uid}"
        );
    }
    let uids: std::collections::HashSet<&String> = stored.values().collect();
    assert_eq!(uids.len(), stored.len(), "a uid given twice");
}
