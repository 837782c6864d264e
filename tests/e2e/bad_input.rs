//! Bad input gets a clear error naming the problem, changes nothing, and leaves the server
//! serving and the agent running other pods.

use std::time::Duration;

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
    let http = cluster.http();
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
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("the protobuf body cannot be read")),
        "{body}"
    );
    // An envelope naming a kind with no protobuf form (a custom resource's): 415.
    let mut custom = b"k8s\0\x0a\x15\x0a\x0eexample.com/v1\x12\x03Pod".to_vec();
    custom.extend_from_slice(b"\x12\x00");
    let (status, body) = http
        .call(
            "POST",
            pods,
            "application/vnd.kubernetes.protobuf",
            std::str::from_utf8(&custom).unwrap(),
        )
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
    let http = cluster.http();
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

/// Values that used to panic a task (the scheduler's sums, pod deletion's grace period, the Job
/// controller's deadline, the Deployment's surge arithmetic) are refused with a 422 naming the
/// field, or are taken and survived: the server, scheduler and controllers keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_that_used_to_panic_are_refused_or_survived() {
    let cluster = TestCluster::start(1).await;
    let http = cluster.http();
    let pods = "/api/v1/namespaces/default/pods";

    // A pod asking for more memory than a u64 holds: valid, but fits no node.
    let greedy = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "greedy"},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": HELLO_P1,
            "resources": {"requests": {"memory": "99999999E", "cpu": "99999999999999"}}}]}});
    http.create(pods, &greedy).await;
    wait_for(
        "the greedy pod to be unschedulable",
        Duration::from_secs(30),
        async || {
            let (_, pod) = http.call("GET", &format!("{pods}/greedy"), "", "").await;
            let conditions = pod["status"]["conditions"].as_array()?.clone();
            conditions
                .iter()
                .find(|c| c["type"] == "PodScheduled" && c["status"] == "False")
                .map(|c| c["message"].as_str().unwrap_or_default().to_string())
                .filter(|m| m.contains("Insufficient"))
        },
    )
    .await;

    // A pod deadline past what a clock holds is refused, naming the field.
    let mut forever = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "forever"},
        "spec": {"activeDeadlineSeconds": i64::MAX, "containers": [{"name": "main", "image": HELLO_P1}]}});
    let (status, body) = http
        .call("POST", pods, "application/json", &forever.to_string())
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        body["details"]["causes"][0]["field"],
        "spec.activeDeadlineSeconds"
    );
    forever["spec"]["activeDeadlineSeconds"] = json!(1);
    forever["spec"]["containers"][0]["resources"] = json!({"limits": {"memory": "a lot"}});
    let (status, body) = http
        .call("POST", pods, "application/json", &forever.to_string())
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        body["details"]["causes"][0]["field"],
        "spec.containers[0].resources.limits[memory]"
    );

    // A Job whose deadline is i64::MAX seconds: allowed (as on Kubernetes), and it completes.
    let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "patient"},
        "spec": {"activeDeadlineSeconds": i64::MAX, "template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "main", "image": HELLO_P1}]}}}});
    http.create("/apis/batch/v1/namespaces/default/jobs", &job)
        .await;
    wait_for("the Job to complete", Duration::from_secs(60), async || {
        let (_, job) = http
            .call(
                "GET",
                "/apis/batch/v1/namespaces/default/jobs/patient",
                "",
                "",
            )
            .await;
        (job["status"]["succeeded"] == 1).then_some(())
    })
    .await;

    // A Deployment with the largest surge there is: replicas + maxSurge overflowed an i32.
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "surge"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "surge"}},
            "strategy": {"rollingUpdate": {"maxSurge": i32::MAX, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": {"app": "surge"}}, "spec": {"containers": [
                {"name": "web", "image": shoal_examples::WEB_P2, "ports": [{"containerPort": 8080}]}]}}}});
    http.create("/apis/apps/v1/namespaces/default/deployments", &deployment)
        .await;
    wait_for(
        "the Deployment's pod to be ready",
        Duration::from_secs(60),
        async || {
            let (_, d) = http
                .call(
                    "GET",
                    "/apis/apps/v1/namespaces/default/deployments/surge",
                    "",
                    "",
                )
                .await;
            (d["status"]["readyReplicas"] == 1).then_some(())
        },
    )
    .await;

    // Deleting a bound pod with the largest grace period there is.
    let (_, list) = http
        .call("GET", &format!("{pods}?labelSelector=app%3Dsurge"), "", "")
        .await;
    let name = list["items"][0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, body) = http
        .call(
            "DELETE",
            &format!("{pods}/{name}?gracePeriodSeconds=9223372036854775807"),
            "",
            "",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let deletion = body["metadata"]["deletionTimestamp"]
        .as_str()
        .unwrap_or_default();
    assert!(
        chrono::DateTime::parse_from_rfc3339(deletion).is_ok(),
        "a readable deletionTimestamp: {body}"
    );
    wait_for("the pod to go", Duration::from_secs(30), async || {
        let (status, _) = http.call("GET", &format!("{pods}/{name}"), "", "").await;
        (status == 404).then_some(())
    })
    .await;

    // Everything still works: the scheduler places new pods, the server answers.
    http.create(
        pods,
        &serde_json::from_str(&pod("after", HELLO_P1)).unwrap(),
    )
    .await;
    wait_phase(&http, "default", "after", "Succeeded").await;
}
