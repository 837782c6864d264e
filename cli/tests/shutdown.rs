//! A control plane with two agents, started and stopped 20 times in one process, leaves
//! nothing behind: no tokio task, no socket, no file handle. Its own test binary (its own
//! process) so that no other test's sockets and files are counted.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use shoal::cluster::DevCluster;
use shoal_control::client::ListParams;

/// Open file descriptors of this process (sockets, files, pipes, epoll instances).
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|dir| dir.count())
        .unwrap_or(0)
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// One start and stop on the same data directory (so the store must have been released by
/// the cycle before); a Deployment's HTTP pod runs in between, so the controllers, the
/// scheduler, the agents' pod workers and the shared watches have all had work. The first
/// cycle creates the Deployment; later ones find its pod again after the restart.
async fn cycle(dir: &std::path::Path) {
    let cluster = DevCluster::start(dir, "127.0.0.1:0".parse().unwrap(), 2)
        .await
        .expect("the cluster starts");
    let name = "web";
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{
                    "name": "web",
                    "image": shoal_examples::WEB_P2,
                    "ports": [{"containerPort": 8080}],
                }]},
            },
        },
    }))
    .unwrap();
    let client = cluster.control.client.clone();
    match client
        .api::<Deployment>(Some("default"))
        .create(&deployment)
        .await
    {
        Ok(_) => {}
        Err(e) if e.code() == Some(409) => {}
        Err(e) => panic!("creating the deployment: {e}"),
    }
    let pods = client.api::<Pod>(Some("default"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = pods
            .list(&ListParams::default().labels(&format!("app={name}")))
            .await
            .unwrap();
        let running = list
            .items
            .iter()
            .any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"));
        if running {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pod of {name} runs within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The control plane's store closes once no client of it is left.
    drop((client, pods));
    cluster.shutdown().await;
}

/// Waits (briefly) until at most `tasks` tasks and `fds` fds are left: tasks end and
/// sockets close asynchronously. Returns what is left then.
async fn settle(tasks: usize, fds: usize) -> (usize, usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = (alive_tasks(), open_fds());
        if (now.0 <= tasks && now.1 <= fds) || Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_start_stop_cycles_leave_no_task_socket_or_file() {
    let dir = tempfile::tempdir().unwrap();
    cycle(dir.path()).await;
    let (tasks, _) = settle(0, usize::MAX).await;
    assert_eq!(tasks, 0, "tokio tasks left after a cluster shut down");
    // The first cycle initialises what a process keeps for good (the runtime's blocking
    // pool, TLS roots): sockets and files are counted from after it.
    let fds_before = open_fds();
    for _ in 0..20 {
        cycle(dir.path()).await;
    }
    let (tasks, fds_after) = settle(0, fds_before).await;
    assert_eq!(
        (tasks, fds_after),
        (0, fds_before),
        "tokio tasks and open fds after 20 more start/stop cycles"
    );
}
