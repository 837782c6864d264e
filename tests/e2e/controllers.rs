//! Workload controllers: a ReplicaSet keeps its replicas (creating, replacing, scaling down),
//! adopts matching orphans, and its pods go with it (or stay, with `--cascade=orphan`).

use std::time::Duration;

use serde_json::{json, Value};
use shoal_examples::WEB_P2;
use shoal_tests::*;

const PODS: &str = "/api/v1/namespaces/default/pods";
const SETS: &str = "/apis/apps/v1/namespaces/default/replicasets";

fn replica_set(name: &str, replicas: i64) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [
                {"name": "web", "image": WEB_P2, "ports": [{"containerPort": 8080}]}]}}}})
}

/// The active pods of `app` and how many of them are ready.
async fn pods_of(http: &Http, app: &str) -> (Vec<Value>, usize) {
    let (_, list) = http
        .call("GET", &format!("{PODS}?labelSelector=app%3D{app}"), "", "")
        .await;
    let active: Vec<Value> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .cloned()
        .collect();
    let ready = active
        .iter()
        .filter(|p| {
            p["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        })
        .count();
    (active, ready)
}

async fn wait_ready_replicas(http: &Http, name: &str, count: usize) -> Vec<Value> {
    wait_for(
        &format!("{count} ready pods of {name}"),
        Duration::from_secs(60),
        async || {
            let (active, ready) = pods_of(http, name).await;
            let (_, rs) = http.call("GET", &format!("{SETS}/{name}"), "", "").await;
            let reported = rs["status"]["readyReplicas"].as_i64() == Some(count as i64);
            (active.len() == count && ready == count && reported).then_some(active)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_set_keeps_its_replicas() {
    let cluster = TestCluster::start(2).await;
    let http = cluster.http();
    let with_kubectl = kubectl_available("a_replica_set_keeps_its_replicas (kubectl parts)");
    http.create(SETS, &replica_set("web", 3)).await;
    let pods = wait_ready_replicas(&http, "web", 3).await;
    for pod in &pods {
        let owner = &pod["metadata"]["ownerReferences"][0];
        assert_eq!(
            (owner["kind"].as_str(), owner["controller"].as_bool()),
            (Some("ReplicaSet"), Some(true))
        );
        assert!(pod["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("web-"));
    }

    // A deleted pod is replaced.
    let victim = pods[0]["metadata"]["name"].as_str().unwrap().to_string();
    http.call(
        "DELETE",
        &format!("{PODS}/{victim}"),
        "application/json",
        "{}",
    )
    .await;
    let replaced = wait_ready_replicas(&http, "web", 3).await;
    assert!(replaced
        .iter()
        .all(|p| p["metadata"]["name"] != victim.as_str()));

    // Scale through the scale subresource (kubectl scale when kubectl is here).
    if with_kubectl {
        let out =
            ok(kubectl_async(&cluster.kubeconfig, &["scale", "rs/web", "--replicas=5"]).await);
        assert!(out.contains("scaled"), "{out}");
    } else {
        let (status, _) = http
            .call(
                "PATCH",
                &format!("{SETS}/web/scale"),
                "application/merge-patch+json",
                r#"{"spec":{"replicas":5}}"#,
            )
            .await;
        assert_eq!(status, 200);
    }
    wait_ready_replicas(&http, "web", 5).await;
    let (_, scale) = http.call("GET", &format!("{SETS}/web/scale"), "", "").await;
    assert_eq!(
        (
            scale["kind"].as_str(),
            scale["spec"]["replicas"].as_i64(),
            scale["status"]["selector"].as_str()
        ),
        (Some("Scale"), Some(5), Some("app=web"))
    );
    let (status, _) = http
        .call(
            "PATCH",
            &format!("{SETS}/web/scale"),
            "application/merge-patch+json",
            r#"{"spec":{"replicas":2}}"#,
        )
        .await;
    assert_eq!(status, 200);
    wait_ready_replicas(&http, "web", 2).await;
    if with_kubectl {
        let table = ok(kubectl_async(&cluster.kubeconfig, &["get", "rs", "web"]).await);
        let row = table
            .lines()
            .nth(1)
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>();
        assert_eq!(&row[..4], ["web", "2", "2", "2"], "{table}");
    }

    // An orphan that matches the selector is adopted (and so the surplus goes).
    let orphan = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "stray", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": WEB_P2, "ports": [{"containerPort": 8080}]}]}});
    http.create(PODS, &orphan).await;
    wait_for(
        "the orphan to be adopted",
        Duration::from_secs(30),
        async || {
            let (_, pod) = http.call("GET", &format!("{PODS}/stray"), "", "").await;
            let adopted = pod["metadata"]["ownerReferences"][0]["name"] == "web";
            (adopted || pod["kind"] == "Status").then_some(())
        },
    )
    .await;
    wait_ready_replicas(&http, "web", 2).await;

    // Deleting the ReplicaSet takes its pods (background propagation).
    let (status, _) = http
        .call(
            "DELETE",
            &format!("{SETS}/web"),
            "application/json",
            r#"{"propagationPolicy":"Background"}"#,
        )
        .await;
    assert_eq!(status, 200);
    wait_for(
        "the pods to go with their ReplicaSet",
        Duration::from_secs(30),
        async || pods_of(&http, "web").await.0.is_empty().then_some(()),
    )
    .await;
}

/// A ReplicaSet creating 7 pods (slow start: batches of 1, 2 and 4, each batch's events
/// recorded while the next is created) records one `SuccessfulCreate` per pod, the last
/// batch's included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_set_records_one_event_per_created_pod() {
    let cluster = TestCluster::start(0).await;
    let http = cluster.http();
    http.create(SETS, &replica_set("batchy", 7)).await;
    let created = wait_for(
        "an event for each of the 7 pods",
        Duration::from_secs(20),
        async || {
            let (_, events) = http
                .call(
                    "GET",
                    "/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Dbatchy,reason%3DSuccessfulCreate",
                    "",
                    "",
                )
                .await;
            let mut messages: Vec<String> = events["items"]
                .as_array()?
                .iter()
                .filter_map(|e| e["message"].as_str().map(str::to_string))
                .collect();
            messages.sort();
            (messages.len() >= 7).then_some(messages)
        },
    )
    .await;
    let (_, pods) = http
        .call("GET", &format!("{PODS}?labelSelector=app%3Dbatchy"), "", "")
        .await;
    let mut expected: Vec<String> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| format!("Created pod: {}", p["metadata"]["name"].as_str().unwrap()))
        .collect();
    expected.sort();
    assert_eq!(created, expected);
    cluster.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_propagation_keeps_the_pods() {
    let cluster = TestCluster::start(1).await;
    let http = cluster.http();
    http.create(SETS, &replica_set("kept", 2)).await;
    wait_ready_replicas(&http, "kept", 2).await;
    let (status, _) = http
        .call(
            "DELETE",
            &format!("{SETS}/kept"),
            "application/json",
            r#"{"propagationPolicy":"Orphan"}"#,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        http.call("GET", &format!("{SETS}/kept"), "", "").await.0,
        404
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (pods, ready) = pods_of(&http, "kept").await;
    assert_eq!(
        (pods.len(), ready),
        (2, 2),
        "the pods outlive their ReplicaSet"
    );
    assert!(pods.iter().all(|p| p["metadata"]["ownerReferences"]
        .as_array()
        .is_none_or(Vec::is_empty)));

    // A ReplicaSet whose selector does not match its template is refused.
    let mut bad = replica_set("bad", 1);
    bad["spec"]["template"]["metadata"]["labels"] = json!({"app": "other"});
    let (status, body) = http
        .call("POST", SETS, "application/json", &bad.to_string())
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        body["details"]["causes"][0]["field"],
        "spec.template.metadata.labels"
    );
}

fn deployment_yaml(image: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 3\n  selector:\n    matchLabels:\n      app: web\n  template:\n    metadata:\n      labels:\n        app: web\n    spec:\n      containers:\n      - name: web\n        image: {image}\n        ports:\n        - containerPort: 8080\n"
    )
}

/// The ReplicaSets of Deployment `web` as (revision, spec replicas) sorted by revision.
async fn revisions(http: &Http) -> Vec<(i64, i64)> {
    let (_, list) = http
        .call("GET", &format!("{SETS}?labelSelector=app%3Dweb"), "", "")
        .await;
    let mut found: Vec<(i64, i64)> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rs| {
            let revision = rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
                .as_str()
                .unwrap_or("0")
                .parse()
                .unwrap_or(0);
            (revision, rs["spec"]["replicas"].as_i64().unwrap_or(0))
        })
        .collect();
    found.sort();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_roll_out_roll_back_and_restart_with_kubectl() {
    if !kubectl_available("deployments_roll_out_roll_back_and_restart_with_kubectl") {
        return;
    }
    let cluster = TestCluster::start(2).await;
    let http = cluster.http();
    let kc = cluster.kubeconfig.clone();
    let v2 = cluster.dir.path().join("web-v2.wasm");
    std::fs::copy(WEB_P2, &v2).unwrap();
    let v2 = v2.to_str().unwrap().to_string();

    ok(kubectl_stdin_async(&kc, &["apply", "-f", "-"], &deployment_yaml(WEB_P2)).await);
    let status = ok(kubectl_async(
        &kc,
        &["rollout", "status", "deployment/web", "--timeout=60s"],
    )
    .await);
    assert!(status.contains("successfully rolled out"), "{status}");
    assert_eq!(revisions(&http).await, [(1, 3)]);
    let table = ok(kubectl_async(&kc, &["get", "deploy", "web"]).await);
    assert!(
        table.lines().nth(1).unwrap_or_default().contains("3/3"),
        "{table}"
    );

    // A new image rolls out as a new ReplicaSet; the old one is scaled to zero.
    ok(kubectl_async(
        &kc,
        &["set", "image", "deployment/web", &format!("web={v2}")],
    )
    .await);
    let status = ok(kubectl_async(
        &kc,
        &["rollout", "status", "deployment/web", "--timeout=60s"],
    )
    .await);
    assert!(status.contains("successfully rolled out"), "{status}");
    assert_eq!(revisions(&http).await, [(1, 0), (2, 3)]);
    let history = ok(kubectl_async(&kc, &["rollout", "history", "deployment/web"]).await);
    assert!(history.contains('1') && history.contains('2'), "{history}");

    // Undo reuses the first ReplicaSet, which becomes revision 3.
    ok(kubectl_async(&kc, &["rollout", "undo", "deployment/web"]).await);
    ok(kubectl_async(
        &kc,
        &["rollout", "status", "deployment/web", "--timeout=60s"],
    )
    .await);
    assert_eq!(revisions(&http).await, [(2, 0), (3, 3)]);
    let (_, d) = http
        .call(
            "GET",
            "/apis/apps/v1/namespaces/default/deployments/web",
            "",
            "",
        )
        .await;
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        WEB_P2
    );

    // Paused: a change waits; resumed: it rolls out.
    ok(kubectl_async(&kc, &["rollout", "pause", "deployment/web"]).await);
    ok(kubectl_async(
        &kc,
        &["set", "image", "deployment/web", &format!("web={v2}")],
    )
    .await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        revisions(&http).await,
        [(2, 0), (3, 3)],
        "a paused deployment does not roll"
    );
    ok(kubectl_async(&kc, &["rollout", "resume", "deployment/web"]).await);
    ok(kubectl_async(
        &kc,
        &["rollout", "status", "deployment/web", "--timeout=60s"],
    )
    .await);
    assert_eq!(
        revisions(&http).await,
        [(3, 0), (4, 3)],
        "the v2 ReplicaSet is reused as revision 4"
    );

    // Restart: a new template (restartedAt annotation), so a new ReplicaSet.
    ok(kubectl_async(&kc, &["rollout", "restart", "deployment/web"]).await);
    ok(kubectl_async(
        &kc,
        &["rollout", "status", "deployment/web", "--timeout=60s"],
    )
    .await);
    assert_eq!(revisions(&http).await, [(3, 0), (4, 0), (5, 3)]);

    // Scale, then delete: the ReplicaSets and pods go with it.
    ok(kubectl_async(&kc, &["scale", "deployment/web", "--replicas=1"]).await);
    ok(kubectl_async(
        &kc,
        &["rollout", "status", "deployment/web", "--timeout=60s"],
    )
    .await);
    // `rollout status` only waits for updated >= replicas (as on Kubernetes), so the surplus
    // pods may still be on their way out when it returns.
    wait_for("one pod left", Duration::from_secs(30), async || {
        (pods_of(&http, "web").await.0.len() == 1).then_some(())
    })
    .await;
    ok(kubectl_async(&kc, &["delete", "deployment", "web"]).await);
    wait_for(
        "the ReplicaSets and pods to go",
        Duration::from_secs(30),
        async || {
            (revisions(&http).await.is_empty() && pods_of(&http, "web").await.0.is_empty())
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_stays_within_surge_and_unavailability() {
    let cluster = TestCluster::start(2).await;
    let http = cluster.http();
    let deployments = "/apis/apps/v1/namespaces/default/deployments";
    let mut d: Value = serde_json::to_value(
        serde_yaml::from_str::<serde_yaml::Value>(&deployment_yaml(WEB_P2)).unwrap(),
    )
    .unwrap();
    d["spec"]["replicas"] = json!(4);
    d["spec"]["strategy"] =
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}});
    http.create(deployments, &d).await;
    wait_ready_replicas_of_deployment(&http, 4).await;

    let (_, list) = http
        .call("GET", &format!("{PODS}?labelSelector=app%3Dweb"), "", "")
        .await;
    let since = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let mut pods: std::collections::HashMap<String, (bool, bool)> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap().to_string(),
                pod_state(p),
            )
        })
        .collect();
    let mut events = EventReader::new(
        http.stream(&format!(
            "{PODS}?watch=true&labelSelector=app%3Dweb&resourceVersion={since}"
        ))
        .await,
    );
    let v2 = cluster.dir.path().join("web-v2.wasm");
    std::fs::copy(WEB_P2, &v2).unwrap();
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": v2.to_str().unwrap()}]}}}});
    let (status, _) = http
        .call(
            "PATCH",
            &format!("{deployments}/web"),
            "application/strategic-merge-patch+json",
            &patch.to_string(),
        )
        .await;
    assert_eq!(status, 200);

    let (mut min_ready, mut max_total) = (usize::MAX, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the rollout did not finish"
        );
        if let Some(event) = events.next(Duration::from_millis(500)).await {
            let name = event["object"]["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_string();
            if event["type"] == "DELETED" {
                pods.remove(&name);
            } else {
                pods.insert(name, pod_state(&event["object"]));
            }
            let live: Vec<&(bool, bool)> = pods
                .values()
                .filter(|(terminating, _)| !terminating)
                .collect();
            max_total = max_total.max(live.len());
            min_ready = min_ready.min(live.iter().filter(|(_, ready)| *ready).count());
        }
        let (_, d) = http
            .call("GET", &format!("{deployments}/web"), "", "")
            .await;
        let status = &d["status"];
        let done = d["metadata"]["generation"] == status["observedGeneration"]
            && [
                &status["updatedReplicas"],
                &status["replicas"],
                &status["availableReplicas"],
            ]
            .iter()
            .all(|v| v.as_i64() == Some(4));
        if done && revisions(&http).await == [(1, 0), (2, 4)] {
            break;
        }
    }
    assert!(
        max_total <= 5,
        "total pods reached {max_total} > replicas + maxSurge = 5"
    );
    assert!(
        min_ready >= 3,
        "ready pods fell to {min_ready} < replicas - maxUnavailable = 3"
    );
}

/// A pod counts as available only after `minReadySeconds` of readiness: the Deployment's
/// `availableReplicas` lags `readyReplicas` by that long, and then catches up without any
/// object changing (the ReplicaSet controller looks again when the time is up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_ready_seconds_delays_availability() {
    let cluster = TestCluster::start(1).await;
    let http = cluster.http();
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 2, "minReadySeconds": 3, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [
                {"name": "web", "image": WEB_P2, "ports": [{"containerPort": 8080}]}]}}}});
    http.create("/apis/apps/v1/namespaces/default/deployments", &deployment)
        .await;
    let started = std::time::Instant::now();
    let (mut all_ready, mut all_available) = (None, None);
    while all_available.is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the deployment never became available"
        );
        let (_, d) = http
            .call(
                "GET",
                "/apis/apps/v1/namespaces/default/deployments/web",
                "",
                "",
            )
            .await;
        let now = chrono::Utc::now();
        if all_ready.is_none() && d["status"]["readyReplicas"].as_i64() == Some(2) {
            all_ready = Some(d["status"]["availableReplicas"].as_i64().unwrap_or(0));
        }
        if d["status"]["availableReplicas"].as_i64() == Some(2) {
            all_available = Some(now);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (available_when_ready, all_available) = (
        all_ready.expect("the status showed both ready"),
        all_available.unwrap(),
    );
    assert!(
        available_when_ready < 2,
        "both pods counted available as soon as they were ready"
    );
    let (pods, _) = pods_of(&http, "web").await;
    let became_ready = pods
        .iter()
        .filter_map(|p| {
            let conditions = p["status"]["conditions"].as_array()?;
            let ready = conditions.iter().find(|c| c["type"] == "Ready")?;
            chrono::DateTime::parse_from_rfc3339(ready["lastTransitionTime"].as_str()?).ok()
        })
        .max()
        .expect("ready pods have a Ready transition time");
    let late = (all_available - became_ready.with_timezone(&chrono::Utc)).num_milliseconds();
    assert!(
        (3000..6000).contains(&late),
        "available {late} ms after the last pod turned ready; expected 3 s (plus at most the status round trip)"
    );
}

/// Waits until no pod of Job `job` is left.
async fn wait_job_pods_gone(http: &Http, job: &str) {
    let path = format!("{PODS}?labelSelector=job-name%3D{job}");
    wait_for(
        &format!("job {job}'s pods to go"),
        Duration::from_secs(30),
        async || {
            let (_, list) = http.call("GET", &path, "", "").await;
            list["items"].as_array().unwrap().is_empty().then_some(())
        },
    )
    .await;
}

/// (terminating, ready) of a pod object.
fn pod_state(pod: &Value) -> (bool, bool) {
    let terminating = !pod["metadata"]["deletionTimestamp"].is_null();
    let ready = pod["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    });
    (terminating, ready)
}

async fn wait_ready_replicas_of_deployment(http: &Http, count: i64) {
    wait_for(
        "the deployment to be available",
        Duration::from_secs(60),
        async || {
            let (_, d) = http
                .call(
                    "GET",
                    "/apis/apps/v1/namespaces/default/deployments/web",
                    "",
                    "",
                )
                .await;
            (d["status"]["availableReplicas"].as_i64() == Some(count)
                && d["status"]["updatedReplicas"].as_i64() == Some(count))
            .then_some(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_set_follows_nodes() {
    let cluster = TestCluster::start(2).await;
    let http = cluster.http();
    let ds = json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
            "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {"containers": [
                {"name": "web", "image": WEB_P2, "ports": [{"containerPort": 8080}]}]}}}});
    http.create("/apis/apps/v1/namespaces/default/daemonsets", &ds)
        .await;
    let nodes_with_pods = async |count: usize| -> Vec<String> {
        wait_for(
            &format!("daemon pods on {count} nodes"),
            Duration::from_secs(60),
            async || {
                let (pods, ready) = pods_of(&http, "agent").await;
                let mut nodes: Vec<String> = pods
                    .iter()
                    .map(|p| p["spec"]["nodeName"].as_str().unwrap_or("").to_string())
                    .collect();
                nodes.sort();
                (pods.len() == count && ready == count).then_some(nodes)
            },
        )
        .await
    };
    assert_eq!(nodes_with_pods(2).await, ["node-0", "node-1"]);

    // A node joins: it gets its daemon pod.
    let extra_dir = cluster.dir.path().join("extra");
    let mut extra = shoal_runtime::agent::Agent::start(
        cluster.cluster.control.client.clone(),
        shoal_runtime::agent::AgentConfig::new(
            "node-extra",
            extra_dir,
            cluster
                .cluster
                .control
                .node_gateway_tls("node-extra")
                .unwrap(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(nodes_with_pods(3).await, ["node-0", "node-1", "node-extra"]);
    let (_, ds) = http
        .call(
            "GET",
            "/apis/apps/v1/namespaces/default/daemonsets/agent",
            "",
            "",
        )
        .await;
    assert_eq!(ds["status"]["desiredNumberScheduled"], 3);

    // The node leaves: its daemon pod goes.
    extra.shutdown().await;
    let (status, _) = http
        .call(
            "DELETE",
            "/api/v1/nodes/node-extra",
            "application/json",
            "{}",
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(nodes_with_pods(2).await, ["node-0", "node-1"]);
}

fn job(name: &str, image: &str, args: &[&str], extra: Value) -> Value {
    let mut spec = json!({"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": image, "args": args}]}}});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": spec})
}

async fn job_condition(http: &Http, name: &str) -> (String, Value) {
    wait_for(
        &format!("job {name} to finish"),
        Duration::from_secs(60),
        async || {
            let (_, job) = http
                .call(
                    "GET",
                    &format!("/apis/batch/v1/namespaces/default/jobs/{name}"),
                    "",
                    "",
                )
                .await;
            let condition = job["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["status"] == "True")?
                .clone();
            Some((condition["type"].as_str()?.to_string(), job))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_complete_fail_and_index() {
    let cluster = TestCluster::start(2).await;
    let http = cluster.http();
    let jobs = "/apis/batch/v1/namespaces/default/jobs";
    let batch = job(
        "batch",
        shoal_examples::HELLO_P1,
        &["batch", "--sleep-ms", "300"],
        json!({"completions": 5, "parallelism": 2}),
    );
    http.create(jobs, &batch).await;
    let failing = job(
        "failing",
        shoal_examples::MISBEHAVE_P1,
        &["exit", "3"],
        json!({"backoffLimit": 2}),
    );
    http.create(jobs, &failing).await;
    let indexed = job(
        "indexed",
        shoal_examples::HELLO_P2,
        &["indexed"],
        json!({"completions": 3, "parallelism": 3, "completionMode": "Indexed"}),
    );
    http.create(jobs, &indexed).await;

    // Never more than `parallelism` pods of the batch at once.
    let mut most_running = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, list) = http
            .call(
                "GET",
                &format!("{PODS}?labelSelector=job-name%3Dbatch"),
                "",
                "",
            )
            .await;
        let items = list["items"].as_array().unwrap();
        let running = items
            .iter()
            .filter(|p| !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
            .count();
        most_running = most_running.max(running);
        if items
            .iter()
            .filter(|p| p["status"]["phase"] == "Succeeded")
            .count()
            >= 5
            || std::time::Instant::now() > deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        most_running <= 2,
        "{most_running} pods of a parallelism-2 job ran at once"
    );
    let (outcome, batch) = job_condition(&http, "batch").await;
    assert_eq!(outcome, "Complete", "{batch}");
    assert_eq!(batch["status"]["succeeded"], 5);

    let (outcome, failing) = job_condition(&http, "failing").await;
    assert_eq!(outcome, "Failed");
    let reason = failing["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Failed")
        .unwrap()["reason"]
        .clone();
    assert_eq!(reason, "BackoffLimitExceeded");
    assert_eq!(
        failing["status"]["failed"], 3,
        "backoffLimit 2 allows two retries"
    );

    let (outcome, indexed) = job_condition(&http, "indexed").await;
    assert_eq!(outcome, "Complete");
    assert_eq!(indexed["status"]["completedIndexes"], "0,1,2");
    if kubectl_available("jobs_complete_fail_and_index (kubectl part)") {
        let table = ok(kubectl_async(&cluster.kubeconfig, &["get", "jobs"]).await);
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("batch") && l.contains("Complete") && l.contains("5/5")),
            "{table}"
        );
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("failing") && l.contains("Failed")),
            "{table}"
        );
    }
    // Deleting a Job takes its pods.
    http.call(
        "DELETE",
        &format!("{jobs}/batch"),
        "application/json",
        r#"{"propagationPolicy":"Background"}"#,
    )
    .await;
    wait_job_pods_gone(&http, "batch").await;

    // ttlSecondsAfterFinished: a finished Job goes, with its pods, that long after.
    let expiring = job(
        "expiring",
        shoal_examples::HELLO_P1,
        &["once"],
        json!({"ttlSecondsAfterFinished": 3}),
    );
    http.create(jobs, &expiring).await;
    let (outcome, finished) = job_condition(&http, "expiring").await;
    assert_eq!(outcome, "Complete");
    // Measured from the Job's own completion time (seconds precision), not from when this
    // test happened to see it: a loaded machine sees it late.
    let completed = chrono::DateTime::parse_from_rfc3339(
        finished["status"]["completionTime"]
            .as_str()
            .unwrap_or_default(),
    )
    .expect("a completed Job has a completionTime");
    wait_for(
        "job expiring to be deleted",
        Duration::from_secs(30),
        async || {
            let (status, _) = http.call("GET", &format!("{jobs}/expiring"), "", "").await;
            (status == 404).then_some(())
        },
    )
    .await;
    let lived = chrono::Utc::now() - completed.with_timezone(&chrono::Utc);
    // The TTL is 3 s; the completion time is truncated to the second.
    assert!(
        lived >= chrono::Duration::seconds(2),
        "deleted {lived} after completing, before its TTL"
    );
    wait_job_pods_gone(&http, "expiring").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_drain_evicts_and_pods_move() {
    if !kubectl_available("kubectl_drain_evicts_and_pods_move") {
        return;
    }
    let cluster = TestCluster::start(2).await;
    let http = cluster.http();
    http.create(SETS, &replica_set("drained", 4)).await;
    wait_ready_replicas(&http, "drained", 4).await;
    let out = ok(kubectl_async(&cluster.kubeconfig, &["drain", "node-0", "--timeout=60s"]).await);
    assert!(
        out.contains("evicting pod") || out.contains("evicted"),
        "{out}"
    );
    let pods = wait_ready_replicas(&http, "drained", 4).await;
    assert!(
        pods.iter().all(|p| p["spec"]["nodeName"] == "node-1"),
        "all pods moved to node-1"
    );
    let (_, node) = http.call("GET", "/api/v1/nodes/node-0", "", "").await;
    assert_eq!(node["spec"]["unschedulable"], true);
    ok(kubectl_async(&cluster.kubeconfig, &["uncordon", "node-0"]).await);
    let (_, node) = http.call("GET", "/api/v1/nodes/node-0", "", "").await;
    assert!(
        node["spec"]["unschedulable"].is_null() || node["spec"]["unschedulable"] == false,
        "{node}"
    );
}

/// `kubectl drain` under a PodDisruptionBudget: the node holding 2 of 3 replicas of a
/// `minAvailable: 2` budget is drained one pod at a time (the second eviction waits, 429,
/// until the first pod's replacement is ready elsewhere), and never fewer than 2 are ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_drain_waits_for_a_disruption_budget() {
    if !kubectl_available("kubectl_drain_waits_for_a_disruption_budget") {
        return;
    }
    let cluster = TestCluster::start(2).await;
    let http = cluster.http();
    http.create(SETS, &replica_set("guarded", 3)).await;
    let pods = wait_ready_replicas(&http, "guarded", 3).await;
    let budget = json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "guarded"},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "guarded"}}}});
    http.create(
        "/apis/policy/v1/namespaces/default/poddisruptionbudgets",
        &budget,
    )
    .await;
    wait_for(
        "the budget to allow one disruption",
        Duration::from_secs(10),
        async || {
            let (_, pdb) = http
                .call(
                    "GET",
                    "/apis/policy/v1/namespaces/default/poddisruptionbudgets/guarded",
                    "",
                    "",
                )
                .await;
            (pdb["status"]["disruptionsAllowed"] == 1).then_some(())
        },
    )
    .await;
    let on = |node: &str| {
        pods.iter()
            .filter(|p| p["spec"]["nodeName"] == node)
            .count()
    };
    let busiest = if on("node-0") >= on("node-1") {
        "node-0"
    } else {
        "node-1"
    };
    assert_eq!(on(busiest), 2, "3 pods spread 2/1 over 2 nodes");

    // Watch readiness while the drain runs: never below the budget.
    let lowest = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(usize::MAX));
    let watching = {
        let (http, lowest) = (http.clone(), lowest.clone());
        tokio::spawn(async move {
            loop {
                let (_, ready) = pods_of(&http, "guarded").await;
                lowest.fetch_min(ready, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let drain = kubectl_async(
        &cluster.kubeconfig,
        &["drain", busiest, "--timeout=90s", "--ignore-daemonsets"],
    )
    .await;
    let (out, err) = (stdout(&drain), stderr(&drain));
    assert!(
        out.contains(&format!("node/{busiest} drained")),
        "{out}\n{err}"
    );
    assert!(
        err.contains("(will retry after 5s): Cannot evict pod as it would violate the pod's disruption budget"),
        "the second eviction waited for the budget: {err}"
    );
    let pods = wait_ready_replicas(&http, "guarded", 3).await;
    assert!(
        pods.iter().all(|p| p["spec"]["nodeName"] != busiest),
        "all moved off {busiest}"
    );
    watching.abort();
    let lowest = lowest.load(std::sync::atomic::Ordering::SeqCst);
    assert!(lowest >= 2, "ready pods went down to {lowest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_job_fires_on_schedule() {
    let cluster = TestCluster::start(1).await;
    let http = cluster.http();
    let cron = json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "tick"},
        "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "main", "image": shoal_examples::HELLO_P1, "args": ["tick"]}]}}}}}});
    http.create("/apis/batch/v1/namespaces/default/cronjobs", &cron)
        .await;
    // Every minute: the first Job comes at the next minute boundary.
    let job = wait_for(
        "the CronJob to create a Job",
        Duration::from_secs(75),
        async || {
            let (_, list) = http
                .call("GET", "/apis/batch/v1/namespaces/default/jobs", "", "")
                .await;
            list["items"].as_array()?.first().cloned()
        },
    )
    .await;
    assert_eq!(job["metadata"]["ownerReferences"][0]["kind"], "CronJob");
    let name = job["metadata"]["name"].as_str().unwrap().to_string();
    let (outcome, _) = job_condition(&http, &name).await;
    assert_eq!(outcome, "Complete");
    let (_, cron) = http
        .call(
            "GET",
            "/apis/batch/v1/namespaces/default/cronjobs/tick",
            "",
            "",
        )
        .await;
    assert!(cron["status"]["lastScheduleTime"].is_string(), "{cron}");
    // Deleting the CronJob takes its Jobs (and their pods).
    http.call(
        "DELETE",
        "/apis/batch/v1/namespaces/default/cronjobs/tick",
        "application/json",
        r#"{"propagationPolicy":"Background"}"#,
    )
    .await;
    wait_for(
        "the CronJob's Jobs to go",
        Duration::from_secs(30),
        async || {
            let (_, list) = http
                .call("GET", "/apis/batch/v1/namespaces/default/jobs", "", "")
                .await;
            list["items"].as_array()?.is_empty().then_some(())
        },
    )
    .await;

    let (status, body) = http.call("POST", "/apis/batch/v1/namespaces/default/cronjobs", "application/json",
        &json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "bad"}, "spec": {"schedule": "every minute", "jobTemplate": {"spec": {"template": {"spec": {"containers": []}}}}}}).to_string()).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["details"]["causes"][0]["field"], "spec.schedule");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replication_controller_keeps_its_replicas_with_kubectl() {
    if !kubectl_available("a_replication_controller_keeps_its_replicas_with_kubectl") {
        return;
    }
    let cluster = TestCluster::start(1).await;
    let http = cluster.http();
    let kc = cluster.kubeconfig.clone();
    // No selector: it defaults to the template's labels.
    let manifest = format!(
        "apiVersion: v1\nkind: ReplicationController\nmetadata:\n  name: legacy\nspec:\n  replicas: 2\n  template:\n    metadata:\n      labels:\n        app: legacy\n    spec:\n      containers:\n      - name: web\n        image: {WEB_P2}\n        ports:\n        - containerPort: 8080\n"
    );
    ok(kubectl_stdin_async(&kc, &["apply", "-f", "-"], &manifest).await);
    let ready = async |count: usize| {
        wait_for(
            &format!("{count} ready pods of rc/legacy"),
            Duration::from_secs(60),
            async || {
                let (active, ready) = pods_of(&http, "legacy").await;
                (active.len() == count && ready == count).then_some(active)
            },
        )
        .await
    };
    let pods = ready(2).await;
    assert_eq!(
        pods[0]["metadata"]["ownerReferences"][0]["kind"],
        "ReplicationController"
    );
    ok(kubectl_async(&kc, &["scale", "rc", "legacy", "--replicas=3"]).await);
    let pods = ready(3).await;
    let victim = pods[0]["metadata"]["name"].as_str().unwrap().to_string();
    ok(kubectl_async(&kc, &["delete", "pod", &victim]).await);
    let pods = ready(3).await;
    assert!(pods
        .iter()
        .all(|p| p["metadata"]["name"] != victim.as_str()));
    let table = ok(kubectl_async(&kc, &["get", "rc", "legacy"]).await);
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(&row[..4], ["legacy", "3", "3", "3"], "{table}");
    ok(kubectl_async(&kc, &["delete", "rc", "legacy"]).await);
    wait_for(
        "rc/legacy's pods gone",
        Duration::from_secs(30),
        async || pods_of(&http, "legacy").await.0.is_empty().then_some(()),
    )
    .await;
}

/// The ReplicaSets and (not yet deleted) pods of Deployment `web`.
async fn dependents_of_web(http: &Http) -> (usize, usize) {
    let (_, sets) = http
        .call("GET", &format!("{SETS}?labelSelector=app%3Dweb"), "", "")
        .await;
    let (_, pods) = http
        .call("GET", &format!("{PODS}?labelSelector=app%3Dweb"), "", "")
        .await;
    let count = |v: &Value| v["items"].as_array().map_or(0, Vec::len);
    (count(&sets), count(&pods))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_deployment_follows_each_propagation_policy() {
    if !kubectl_available("deleting_a_deployment_follows_each_propagation_policy") {
        return;
    }
    let cluster = TestCluster::start(1).await;
    let http = cluster.http();
    let kc = cluster.kubeconfig.clone();
    let deploy = async || {
        ok(kubectl_stdin_async(&kc, &["apply", "-f", "-"], &deployment_yaml(WEB_P2)).await);
        ok(kubectl_async(
            &kc,
            &["rollout", "status", "deployment/web", "--timeout=60s"],
        )
        .await);
        assert_eq!(dependents_of_web(&http).await, (1, 3));
    };

    // Foreground: kubectl waits for the Deployment to go, which is after all it owned.
    deploy().await;
    let mut events = EventReader::new(
        http.stream("/apis/apps/v1/namespaces/default/deployments?watch=true")
            .await,
    );
    ok(kubectl_async(
        &kc,
        &["delete", "deployment", "web", "--cascade=foreground"],
    )
    .await);
    assert_eq!(
        dependents_of_web(&http).await,
        (0, 0),
        "with foreground propagation the dependents are gone before the owner"
    );
    let mut saw_finalizer = false;
    while let Some(event) = events.next(Duration::from_secs(5)).await {
        let finalizers = &event["object"]["metadata"]["finalizers"];
        saw_finalizer |= finalizers
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "foregroundDeletion"));
        if event["type"] == "DELETED" {
            break;
        }
    }
    assert!(
        saw_finalizer,
        "the owner waited with the foregroundDeletion finalizer"
    );

    // Background: the Deployment goes at once, its dependents after it.
    deploy().await;
    ok(kubectl_async(
        &kc,
        &["delete", "deployment", "web", "--cascade=background"],
    )
    .await);
    wait_for(
        "web's dependents collected",
        Duration::from_secs(30),
        async || (dependents_of_web(&http).await == (0, 0)).then_some(()),
    )
    .await;

    // Orphan: the ReplicaSet and its pods stay, without an owner.
    deploy().await;
    ok(kubectl_async(&kc, &["delete", "deployment", "web", "--cascade=orphan"]).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(dependents_of_web(&http).await, (1, 3), "orphans stay");
    let (_, sets) = http
        .call("GET", &format!("{SETS}?labelSelector=app%3Dweb"), "", "")
        .await;
    assert!(sets["items"][0]["metadata"]["ownerReferences"]
        .as_array()
        .is_none_or(Vec::is_empty));
}
