//! Bad input gets a clear error naming the problem, changes nothing, and leaves the server
//! serving and the agent running other pods.

use serde_json::{json, Value};
use shoal_examples::HELLO_P1;
use shoal_tests::*;

fn pod(name: &str, image: &str) -> String {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": image}]}})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_rejected_and_change_nothing() {
    let cluster = TestCluster::start(1).await;
    let http = Http::new(&cluster.url());
    let pods = "/api/v1/namespaces/default/pods";

    let (status, body) = http
        .call("POST", pods, "application/yaml", "metadata: [\n  name: x")
        .await;
    assert_eq!(status, 400);
    assert!(
        body["message"].as_str().unwrap().contains("not valid YAML"),
        "{body}"
    );
    let (status, body) = http
        .call("POST", pods, "application/json", "{\"metadata\": ")
        .await;
    assert_eq!(status, 400);
    assert!(
        body["message"].as_str().unwrap().contains("not valid JSON"),
        "{body}"
    );
    let (status, _) = http
        .call(
            "POST",
            "/api/v1/namespaces/default/widgets",
            "application/json",
            "{}",
        )
        .await;
    assert_eq!(status, 404);
    let (status, body) = http
        .call(
            "POST",
            pods,
            "application/json",
            r#"{"apiVersion":"v1","kind":"Widget","metadata":{"name":"w"}}"#,
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        body["message"].as_str().unwrap().contains("Widget"),
        "{body}"
    );

    let no_containers =
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"empty"},"spec":{"containers":[]}}"#;
    let (status, body) = http
        .call("POST", pods, "application/json", no_containers)
        .await;
    assert_eq!((status, body["reason"].as_str()), (422, Some("Invalid")));
    assert_eq!(body["details"]["causes"][0]["field"], "spec.containers");
    assert_eq!(
        body["message"],
        "Pod \"empty\" is invalid: spec.containers: Required value"
    );

    let (status, body) = http
        .call(
            "POST",
            pods,
            "application/json",
            &pod("Not_Valid", HELLO_P1),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(body["details"]["causes"][0]["field"], "metadata.name");

    let (status, body) = http
        .call("POST", pods, "application/vnd.kubernetes.protobuf", "k8s\0")
        .await;
    assert_eq!(status, 415, "{body}");

    let (_, after) = http.call("GET", pods, "", "").await;
    assert_eq!(
        after["items"].as_array().map(Vec::len),
        Some(0),
        "nothing was created"
    );
    for name in ["empty", "Not_Valid", "w", "x"] {
        let (status, _) = http.call("GET", &format!("{pods}/{name}"), "", "").await;
        assert_eq!(status, 404, "{name} must not exist");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_images_get_a_reason_and_the_agent_keeps_running() {
    let cluster = TestCluster::start(1).await;
    let http = Http::new(&cluster.url());
    let pods = "/api/v1/namespaces/default/pods";
    let text_file = cluster.dir.path().join("readme.wasm");
    std::fs::write(&text_file, "this is not WebAssembly").unwrap();
    for (name, image) in [
        ("missing", "/no/such/module.wasm"),
        ("notwasm", text_file.to_str().unwrap()),
        ("relative", "hello.wasm"),
    ] {
        let (status, body) = http
            .call("POST", pods, "application/json", &pod(name, image))
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let (reason, message) = waiting_reason(&http, "default", "missing").await;
    assert_eq!(reason, "ErrImagePull");
    assert!(
        message.contains("no such file \"/no/such/module.wasm\""),
        "{message}"
    );
    let (reason, message) = waiting_reason(&http, "default", "notwasm").await;
    assert_eq!(reason, "CreateContainerError");
    assert!(
        message.contains("not a WebAssembly module or component"),
        "{message}"
    );
    let (reason, message) = waiting_reason(&http, "default", "relative").await;
    assert_eq!(reason, "ErrImagePull");
    assert!(message.contains("absolute file path"), "{message}");

    // The same agent still runs good pods, and the server still serves.
    let (status, _) = http
        .call("POST", pods, "application/json", &pod("good", HELLO_P1))
        .await;
    assert_eq!(status, 201);
    wait_phase(&http, "default", "good", "Succeeded").await;
    let (status, version): (u16, Value) = http.call("GET", "/version", "", "").await;
    assert_eq!(status, 200, "{version}");
    assert_eq!(pod_phase(&http, "default", "missing").await, "Pending");
}
