//! The API through a plain HTTP client: create, watch, status, logs, conflicts, selectors,
//! delete.

use std::time::Duration;

use serde_json::{json, Value};
use shoal_examples::HELLO_P2;
use shoal_tests::*;

fn pod_json(name: &str, args: &[&str]) -> String {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "web", "tier": "be"}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": HELLO_P2, "args": args}]}
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_client_drives_a_pod() {
    let cluster = TestCluster::start(1).await;
    let http = cluster.http();
    let (status, list) = http
        .call("GET", "/api/v1/namespaces/default/pods", "", "")
        .await;
    assert_eq!(status, 200);
    let since = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let mut events = EventReader::new(
        http.stream(&format!(
            "/api/v1/namespaces/default/pods?watch=true&resourceVersion={since}"
        ))
        .await,
    );

    let (status, created) = http
        .call(
            "POST",
            "/api/v1/namespaces/default/pods",
            "application/json",
            &pod_json("web", &["http", "--lines", "2"]),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["status"]["phase"], "Pending");
    assert!(!created["metadata"]["uid"].as_str().unwrap().is_empty());

    // The watch shows the pod's whole life: added, bound, running, succeeded.
    let mut phases = Vec::new();
    let mut bound = false;
    while let Some(event) = events.next(Duration::from_secs(30)).await {
        let pod = &event["object"];
        assert_eq!(pod["metadata"]["name"], "web");
        bound |= pod["spec"]["nodeName"] == "node-0";
        let phase = pod["status"]["phase"].as_str().unwrap().to_string();
        if phases.last() != Some(&phase) {
            phases.push(phase.clone());
        }
        if phase == "Succeeded" {
            break;
        }
    }
    assert_eq!(phases.first().map(String::as_str), Some("Pending"));
    assert_eq!(
        phases.last().map(String::as_str),
        Some("Succeeded"),
        "{phases:?}"
    );
    assert!(bound);

    let (status, log) = http
        .raw("GET", "/api/v1/namespaces/default/pods/web/log", "", "")
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        std::str::from_utf8(&log).unwrap(),
        "Hello, http! (from a wasip2 component)\nline 1\nline 2\n"
    );
    let (status, log) = http
        .raw(
            "GET",
            "/api/v1/namespaces/default/pods/web/log?tailLines=1",
            "",
            "",
        )
        .await;
    assert_eq!(
        (status, std::str::from_utf8(&log).unwrap()),
        (200, "line 2\n")
    );

    let (_, pod) = http
        .call("GET", "/api/v1/namespaces/default/pods/web", "", "")
        .await;
    let statuses = &pod["status"]["containerStatuses"][0];
    assert_eq!(statuses["state"]["terminated"]["exitCode"], 0);
    assert_eq!(statuses["state"]["terminated"]["reason"], "Completed");
    assert_eq!(statuses["restartCount"], 0);
    assert!(pod["status"]["podIP"]
        .as_str()
        .unwrap()
        .starts_with("10.244."));
    assert_eq!(pod["status"]["hostIP"], "127.0.0.1");
    assert!(pod["status"]["startTime"].is_string());

    // Compare-and-swap: a stale resourceVersion is a conflict and changes nothing.
    let mut stale = pod.clone();
    stale["metadata"]["resourceVersion"] = json!("1");
    stale["metadata"]["labels"]["tier"] = json!("fe");
    let (status, body) = http
        .call(
            "PUT",
            "/api/v1/namespaces/default/pods/web",
            "application/json",
            &stale.to_string(),
        )
        .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (409, Some("Conflict")),
        "{body}"
    );
    let (status, _) = http
        .call(
            "PATCH",
            "/api/v1/namespaces/default/pods/web",
            "application/merge-patch+json",
            r#"{"metadata":{"labels":{"extra":"yes"}}}"#,
        )
        .await;
    assert_eq!(status, 200);

    // Selectors.
    let names = async |query: &str| -> Vec<String> {
        let (_, list) = http
            .call("GET", &format!("/api/v1/pods?{query}"), "", "")
            .await;
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names("labelSelector=app%20in%20(web,db),tier!=fe,extra").await,
        ["web"]
    );
    assert!(names("labelSelector=!extra").await.is_empty());
    assert_eq!(
        names("fieldSelector=spec.nodeName=node-0,status.phase=Succeeded").await,
        ["web"]
    );
    assert!(names("fieldSelector=status.phase!=Succeeded")
        .await
        .is_empty());

    // A single-object watch from resourceVersion 0 starts with the object itself.
    let mut single = EventReader::new(http.stream("/api/v1/namespaces/default/pods?watch=true&resourceVersion=0&fieldSelector=metadata.name=web").await);
    let first = single.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (
            first["type"].as_str(),
            first["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("web"))
    );

    let (status, _) = http
        .call(
            "DELETE",
            "/api/v1/namespaces/default/pods/web",
            "application/json",
            "{}",
        )
        .await;
    assert_eq!(status, 200);
    let deleted = single.next(Duration::from_secs(10)).await;
    let deleted = loop {
        match deleted {
            Some(ref e) if e["type"] == "DELETED" => break e.clone(),
            _ => {}
        }
        match single.next(Duration::from_secs(10)).await {
            Some(e) if e["type"] == "DELETED" => break e,
            Some(_) => continue,
            None => panic!("no DELETED event"),
        }
    };
    assert_eq!(deleted["object"]["metadata"]["name"], "web");
    let (status, body) = http
        .call("GET", "/api/v1/namespaces/default/pods/web", "", "")
        .await;
    assert_eq!(
        (status, body["message"].as_str()),
        (404, Some("pods \"web\" not found"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_and_defaults() {
    let cluster = TestCluster::start(1).await;
    let http = cluster.http();
    let (_, version) = http.call("GET", "/version", "", "").await;
    assert!(version["gitVersion"]
        .as_str()
        .unwrap()
        .starts_with("v1.33."));
    let (_, namespaces) = http.call("GET", "/api/v1/namespaces", "", "").await;
    let names: Vec<&str> = namespaces["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["metadata"]["name"].as_str())
        .collect();
    assert!(
        names.contains(&"default") && names.contains(&"kube-node-lease"),
        "{names:?}"
    );
    let (_, resources) = http.call("GET", "/api/v1", "", "").await;
    assert!(resources["resources"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["name"] == "pods/binding"));

    // The node registered itself and renews its lease.
    let (_, node) = http.call("GET", "/api/v1/nodes/node-0", "", "").await;
    assert_eq!(node["status"]["conditions"][0]["type"], "Ready");
    assert_eq!(node["spec"]["podCIDR"], "10.244.0.0/24");
    let (status, lease) = http
        .call(
            "GET",
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/node-0",
            "",
            "",
        )
        .await;
    assert_eq!(
        (status, lease["spec"]["holderIdentity"].as_str()),
        (200, Some("node-0"))
    );

    // generateName, and a pod created in a missing namespace.
    let body = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "gen-"},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": HELLO_P2}]}});
    let (status, created) = http
        .call(
            "POST",
            "/api/v1/namespaces/default/pods",
            "application/json",
            &body.to_string(),
        )
        .await;
    assert_eq!(status, 201);
    assert!(created["metadata"]["name"]
        .as_str()
        .unwrap()
        .starts_with("gen-"));
    let (status, missing) = http
        .call(
            "POST",
            "/api/v1/namespaces/nowhere/pods",
            "application/json",
            &body.to_string(),
        )
        .await;
    assert_eq!(
        (status, missing["message"].as_str()),
        (404, Some("namespaces \"nowhere\" not found"))
    );

    // A namespace's deletion takes its pods with it.
    http.call(
        "POST",
        "/api/v1/namespaces",
        "application/json",
        r#"{"metadata":{"name":"scratch"}}"#,
    )
    .await;
    let (status, _) = http
        .call(
            "POST",
            "/api/v1/namespaces/scratch/pods",
            "application/json",
            &body.to_string(),
        )
        .await;
    assert_eq!(status, 201);
    let (status, ns) = http
        .call(
            "DELETE",
            "/api/v1/namespaces/scratch",
            "application/json",
            "{}",
        )
        .await;
    assert_eq!(
        (status, ns["status"]["phase"].as_str()),
        (200, Some("Terminating"))
    );
    wait_for(
        "namespace scratch to go",
        Duration::from_secs(30),
        async || {
            (http
                .call("GET", "/api/v1/namespaces/scratch", "", "")
                .await
                .0
                == 404)
                .then_some(())
        },
    )
    .await;
    let (_, pods) = http
        .call("GET", "/api/v1/namespaces/scratch/pods", "", "")
        .await;
    assert_eq!(pods["items"].as_array().map(Vec::len), Some(0));

    // Someone else's finalizer holds an emptied namespace until they remove it.
    let (status, held) = http
        .call(
            "POST",
            "/api/v1/namespaces",
            "application/json",
            r#"{"metadata":{"name":"held"},"spec":{"finalizers":["kubernetes","example.com/hold"]}}"#,
        )
        .await;
    assert_eq!(status, 201, "{held}");
    let (status, _) = http
        .call(
            "POST",
            "/api/v1/namespaces/held/configmaps",
            "application/json",
            r#"{"metadata":{"name":"settings"},"data":{"a":"b"}}"#,
        )
        .await;
    assert_eq!(status, 201);
    http.call(
        "DELETE",
        "/api/v1/namespaces/held",
        "application/json",
        "{}",
    )
    .await;
    let held = wait_for(
        "namespace held to be emptied and its own finalizer removed",
        Duration::from_secs(30),
        async || {
            let (_, ns) = http.call("GET", "/api/v1/namespaces/held", "", "").await;
            (ns["spec"]["finalizers"] == json!(["example.com/hold"])).then_some(ns)
        },
    )
    .await;
    assert_eq!(held["status"]["phase"], "Terminating");
    let (_, configmaps) = http
        .call("GET", "/api/v1/namespaces/held/configmaps", "", "")
        .await;
    assert_eq!(configmaps["items"].as_array().map(Vec::len), Some(0));
    let (status, body) = http
        .call(
            "PUT",
            "/api/v1/namespaces/held/finalize",
            "application/json",
            r#"{"metadata":{"name":"held"},"spec":{"finalizers":[]}}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = http.call("GET", "/api/v1/namespaces/held", "", "").await;
    assert_eq!(status, 404, "gone once no finalizer is left");
    let (status, body) = http
        .call(
            "DELETE",
            "/api/v1/namespaces/default",
            "application/json",
            "{}",
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let _: Value = body;
}
