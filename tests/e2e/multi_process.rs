//! `shoal server` with two `shoal agent` processes: pods land on both nodes and run, and their
//! logs come back through the API server from each node's agent.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};
use shoal_examples::{HELLO_P1, HELLO_P2};
use shoal_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_run_on_two_agent_processes() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr().to_string();
    let server_data = dir.path().join("server");
    let _server = Process::start(
        &[
            "server",
            "--api-addr",
            &addr,
            "--data-dir",
            server_data.to_str().unwrap(),
        ],
        dir.path().join("server.log"),
        "shoal server ready",
    );
    let url = format!("http://{addr}");
    let mut agents = Vec::new();
    for name in ["alpha", "beta"] {
        let data = dir.path().join(name);
        let args = [
            "agent",
            "--server",
            &url,
            "--name",
            name,
            "--data-dir",
            data.to_str().unwrap(),
        ];
        agents.push(Process::start(
            &args,
            dir.path().join(format!("{name}.log")),
            "shoal agent",
        ));
    }
    let http = Http::new(&url);
    wait_for(
        "both nodes to be registered",
        Duration::from_secs(30),
        async || {
            let (_, nodes) = http.call("GET", "/api/v1/nodes", "", "").await;
            (nodes["items"].as_array().map(Vec::len) == Some(2)).then_some(())
        },
    )
    .await;

    for i in 0..6 {
        let image = if i % 2 == 0 { HELLO_P1 } else { HELLO_P2 };
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("spread-{i}")},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": image, "args": [format!("pod {i}")]}]}});
        let (status, body) = http
            .call(
                "POST",
                "/api/v1/namespaces/default/pods",
                "application/json",
                &pod.to_string(),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let mut nodes = BTreeSet::new();
    for i in 0..6 {
        let name = format!("spread-{i}");
        wait_phase(&http, "default", &name, "Succeeded").await;
        let (_, pod) = http
            .call(
                "GET",
                &format!("/api/v1/namespaces/default/pods/{name}"),
                "",
                "",
            )
            .await;
        nodes.insert(pod["spec"]["nodeName"].as_str().unwrap().to_string());
        let (status, log) = http
            .raw(
                "GET",
                &format!("/api/v1/namespaces/default/pods/{name}/log"),
                "",
                "",
            )
            .await;
        assert_eq!(status, 200);
        assert!(
            std::str::from_utf8(&log)
                .unwrap()
                .starts_with(&format!("Hello, pod {i}!")),
            "{log:?}"
        );
        let _: &Value = &pod;
    }
    assert_eq!(
        nodes,
        BTreeSet::from(["alpha".to_string(), "beta".to_string()])
    );
}
