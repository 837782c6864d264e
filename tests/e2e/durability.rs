//! Durability: objects survive a clean restart of `shoal dev`, and every acknowledged write
//! survives a SIGKILL of `shoal server` in the middle of a burst of writes.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;
use shoal_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_survive_a_restart_of_shoal_dev() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr().to_string();
    let data = dir.path().join("data");
    let args = [
        "dev",
        "--api-addr",
        &addr,
        "--data-dir",
        data.to_str().unwrap(),
        "--ingress-addr",
        "127.0.0.1:0",
    ];
    let mut dev = Process::start(&args, dir.path().join("dev1.log"), "shoal dev ready");
    let http = Http::from_kubeconfig(&data.join("kubeconfig"));
    let config = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kept"}, "data": {"k": "v"}});
    let (status, _) = http
        .call(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            &config.to_string(),
        )
        .await;
    assert_eq!(status, 201);
    dev.signal(Signal::SIGINT);
    let exit = dev
        .wait(Duration::from_secs(10))
        .expect("shoal dev stops on Ctrl-C");
    assert!(exit.success(), "{exit}: {}", dev.output());
    assert!(dev.output().contains("shoal dev stopping"));

    let _dev = Process::start(&args, dir.path().join("dev2.log"), "shoal dev ready");
    let (status, kept) = http
        .call("GET", "/api/v1/namespaces/default/configmaps/kept", "", "")
        .await;
    assert_eq!((status, kept["data"]["k"].as_str()), (200, Some("v")));
    let (status, _) = http.call("GET", "/api/v1/nodes/node-0", "", "").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr().to_string();
    let data = dir.path().join("data");
    let args = [
        "server",
        "--api-addr",
        &addr,
        "--data-dir",
        data.to_str().unwrap(),
    ];
    let server = Process::start(&args, dir.path().join("server1.log"), "shoal server ready");
    let kubeconfig = data.join("kubeconfig");

    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let mut writers = Vec::new();
    for writer in 0..16 {
        let (acknowledged, kubeconfig) = (acknowledged.clone(), kubeconfig.clone());
        writers.push(tokio::spawn(async move {
            let http = Http::from_kubeconfig(&kubeconfig);
            for i in 0..100_000 {
                let name = format!("w{writer}-{i}");
                let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"i": i.to_string()}});
                let body = body.to_string();
                let request = http.call("POST", "/api/v1/namespaces/default/configmaps", "application/json", &body);
                match tokio::time::timeout(Duration::from_secs(5), request).await {
                    Ok((201, _)) => {
                        acknowledged.lock().unwrap().insert(name);
                    }
                    _ => return,
                }
            }
        }));
    }
    wait_for(
        "a burst of acknowledged writes",
        Duration::from_secs(60),
        async || (acknowledged.lock().unwrap().len() >= 300).then_some(()),
    )
    .await;
    server.signal(Signal::SIGKILL);
    // The writers see the connection drop; whatever was acknowledged before that must be kept.
    for writer in writers {
        let _ = tokio::time::timeout(Duration::from_secs(10), writer).await;
    }
    drop(server);
    let acknowledged = acknowledged.lock().unwrap().clone();

    let _server = Process::start(&args, dir.path().join("server2.log"), "shoal server ready");
    let http = Http::from_kubeconfig(&kubeconfig);
    let (status, list) = http
        .call("GET", "/api/v1/namespaces/default/configmaps", "", "")
        .await;
    assert_eq!(status, 200);
    let stored: BTreeSet<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let lost: Vec<&String> = acknowledged.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes were lost, e.g. {:?}",
        lost.len(),
        acknowledged.len(),
        &lost[..lost.len().min(5)]
    );
    eprintln!(
        "{} acknowledged writes, all present after SIGKILL ({} stored)",
        acknowledged.len(),
        stored.len()
    );
}
