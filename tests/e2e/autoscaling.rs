//! Resource metrics and autoscaling: `kubectl top` reads what the agents measure (CPU as time
//! spent in guest code, memory as what live instances hold) through the API server's
//! `metrics.k8s.io` API.

use std::time::Duration;

use shoal_tests::*;

/// `kubectl top pods` rows: (name, millicores, MiB).
fn top_pods(kubeconfig: &std::path::Path, extra: &[&str]) -> Vec<(String, u64, u64)> {
    let mut args = vec!["top", "pods", "--no-headers"];
    args.extend(extra);
    let output = kubectl(kubeconfig, &args);
    if !output.status.success() {
        return Vec::new();
    }
    stdout(&output)
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (name, cpu, memory) = match fields[..] {
                [name, cpu, memory] => (name, cpu, memory),
                _ => return None,
            };
            let millicores = match cpu.strip_suffix('m') {
                Some(m) => m.parse().ok()?,
                None => cpu.parse::<u64>().ok()? * 1000,
            };
            let mebibytes = memory.strip_suffix("Mi")?.parse().ok()?;
            Some((name.to_string(), millicores, mebibytes))
        })
        .collect()
}

fn row<'a>(rows: &'a [(String, u64, u64)], name: &str) -> Option<&'a (String, u64, u64)> {
    rows.iter().find(|(n, _, _)| n == name)
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_top_shows_what_pods_use() {
    if !kubectl_available("kubectl_top_shows_what_pods_use") {
        return;
    }
    let cluster = TestCluster::start_with(1, |config| {
        config.metrics_window = Duration::from_secs(3);
    })
    .await;
    let kubeconfig = &cluster.kubeconfig;
    let misbehave = shoal_examples::MISBEHAVE_P1;
    let web = shoal_examples::WEB_P2;
    let manifest = format!(
        "{}---\n{}---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: idle\n  labels:\n    app: idle\nspec:\n  containers:\n  - name: web\n    image: {web}\n    ports:\n    - containerPort: 8080\n",
        pod_yaml("spinner", misbehave, &["spin"]).replace("app: hello", "app: spinner"),
        pod_yaml("grower", misbehave, &["grow", "64"]).replace("app: hello", "app: grower"),
    );
    ok(kubectl_with_stdin(
        kubeconfig,
        &["apply", "-f", "-"],
        &manifest,
    ));
    let http = cluster.http();
    for pod in ["spinner", "grower", "idle"] {
        wait_phase(&http, "default", pod, "Running").await;
    }

    // Memory grows as the grower allocates: seen low first, then at its 64 MiB.
    let first = wait_for(
        "kubectl top shows the grower",
        Duration::from_secs(30),
        async || row(&top_pods(kubeconfig, &["grower"]), "grower").map(|r| r.2),
    )
    .await;
    assert!(
        first < 48,
        "the grower was seen at {first} MiB, before it grew"
    );
    wait_for(
        "the grower's memory grows",
        Duration::from_secs(30),
        async || {
            let rows = top_pods(kubeconfig, &["grower"]);
            row(&rows, "grower").filter(|r| r.2 >= 64).map(|_| ())
        },
    )
    .await;

    // A spinning pod's CPU is far above an idle one's.
    let rows = wait_for(
        "the spinner's CPU shows",
        Duration::from_secs(30),
        async || {
            let rows = top_pods(kubeconfig, &[]);
            let spinner = row(&rows, "spinner")?.1;
            let idle = row(&rows, "idle")?.1;
            (spinner >= 200 && spinner > idle + 150).then_some(rows)
        },
    )
    .await;
    assert!(row(&rows, "idle").unwrap().1 < 50, "{rows:?}");

    // Per container, and selected by label.
    let containers = ok(kubectl(
        kubeconfig,
        &["top", "pods", "--containers", "-l", "app=idle"],
    ));
    let lines: Vec<&str> = containers.lines().collect();
    assert_eq!(lines.len(), 2, "{containers}");
    assert!(lines[0].starts_with("POD"), "{containers}");
    let fields: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(fields[..2], ["idle", "web"], "{containers}");

    // The node's total includes the spinner.
    let nodes = ok(kubectl(kubeconfig, &["top", "nodes", "--no-headers"]));
    let fields: Vec<&str> = nodes.split_whitespace().collect();
    let millicores: u64 = fields[1].trim_end_matches('m').parse().unwrap();
    assert!(millicores >= 200, "{nodes}");

    // A pod with no figures (not running) is a 404 naming it, as metrics-server answers.
    let (status, body) = http
        .raw(
            "GET",
            "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/nothing",
            "",
            "",
        )
        .await;
    assert_eq!(status, 404);
    assert!(
        String::from_utf8_lossy(&body)
            .contains("podmetrics.metrics.k8s.io \\\"default/nothing\\\" not found"),
        "{}",
        String::from_utf8_lossy(&body)
    );

    // The agent's /metrics carries the same figures as Prometheus text.
    let gateway = Http::gateway(
        &format!("https://{}", cluster.cluster.agents[0].gateway_addr),
        cluster.cluster.control.node_gateway_tls("node-9").unwrap(),
    );
    let (status, body) = gateway.raw("GET", "/metrics", "", "").await;
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 200);
    let spinner_seconds: f64 = text
        .lines()
        .find(|l| {
            l.starts_with("container_cpu_usage_seconds_total{") && l.contains(r#"pod="spinner""#)
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no spinner CPU in\n{text}"));
    assert!(spinner_seconds > 0.5, "{text}");
    assert!(text.contains("node_memory_working_set_bytes "), "{text}");

    // Someone with `view` in a namespace reads its pods' metrics (the role includes them),
    // and not the nodes'.
    let viewer = cluster.kubeconfig_for("vera", &[]);
    ok(kubectl(
        kubeconfig,
        &[
            "create",
            "rolebinding",
            "vera-view",
            "--clusterrole=view",
            "--user=vera",
        ],
    ));
    wait_for(
        "vera can read pod metrics",
        Duration::from_secs(10),
        async || row(&top_pods(&viewer, &[]), "idle").map(|_| ()),
    )
    .await;
    let denied = kubectl(&viewer, &["top", "nodes"]);
    assert!(!denied.status.success());
    assert!(stderr(&denied).contains("forbidden"), "{}", stderr(&denied));
}

/// A cluster whose HPAs sync every second and whose agents report CPU over 2 s, so scaling
/// shows within seconds.
async fn fast_autoscaling_cluster() -> TestCluster {
    let mut options = shoal::cluster::ControlPlaneOptions::default();
    options.controllers.hpa_sync_period = Duration::from_secs(1);
    TestCluster::start_with_options(1, options, |config| {
        config.metrics_window = Duration::from_secs(2);
    })
    .await
}

/// A Deployment of the web guest asking 100m of CPU per pod, and its Service.
fn burn_manifest(replicas: u32) -> String {
    let web = shoal_examples::WEB_P2;
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: burn\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels:\n      app: burn\n  template:\n    metadata:\n      labels:\n        app: burn\n    spec:\n      containers:\n      - name: web\n        image: {web}\n        ports:\n        - containerPort: 8080\n        resources:\n          requests:\n            cpu: 100m\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: burn\nspec:\n  selector:\n    app: burn\n  ports:\n  - port: 80\n    targetPort: 8080\n"
    )
}

async fn deployment_replicas(http: &Http, name: &str) -> i64 {
    let (_, body) = http
        .raw(
            "GET",
            &format!("/apis/apps/v1/namespaces/default/deployments/{name}"),
            "",
            "",
        )
        .await;
    let deployment: serde_json::Value = serde_json::from_slice(&body).unwrap();
    deployment["spec"]["replicas"].as_i64().unwrap_or(-1)
}

async fn hpa_status(http: &Http, name: &str) -> serde_json::Value {
    let (_, body) = http
        .raw(
            "GET",
            &format!("/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers/{name}"),
            "",
            "",
        )
        .await;
    let hpa: serde_json::Value = serde_json::from_slice(&body).unwrap();
    hpa["status"].clone()
}

fn condition<'a>(status: &'a serde_json::Value, kind: &str) -> Option<&'a serde_json::Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

/// `kubectl autoscale` makes an HPA on CPU; under load (requests that keep the CPU busy) it
/// scales the Deployment up to its max, and once the load stops, after the short scale-down
/// window set in its `behavior`, back down to its min; each rescale is an event, and `kubectl
/// get hpa` and `kubectl describe hpa` show targets, conditions and events as on Kubernetes.
#[tokio::test(flavor = "multi_thread")]
async fn hpa_scales_a_deployment_on_cpu_up_and_down() {
    if !kubectl_available("hpa_scales_a_deployment_on_cpu_up_and_down") {
        return;
    }
    let mut cluster = fast_autoscaling_cluster().await;
    let kubeconfig = cluster.kubeconfig.clone();
    let http = cluster.http();
    ok(kubectl_with_stdin(
        &kubeconfig,
        &["apply", "-f", "-"],
        &burn_manifest(1),
    ));
    ok(kubectl(
        &kubeconfig,
        &[
            "autoscale",
            "deployment",
            "burn",
            "--cpu-percent=50",
            "--min=1",
            "--max=3",
        ],
    ));
    // A short scale-down window, through autoscaling/v2 (v1 has no behavior).
    ok(kubectl(
        &kubeconfig,
        &[
            "patch",
            "hpa",
            "burn",
            "--type=merge",
            "-p",
            r#"{"spec":{"behavior":{"scaleDown":{"stabilizationWindowSeconds":4}}}}"#,
        ],
    ));
    // Idle: the HPA finds a valid metric and keeps one replica.
    wait_for(
        "the HPA reads the pods' CPU",
        Duration::from_secs(60),
        async || {
            let status = hpa_status(&http, "burn").await;
            let active = condition(&status, "ScalingActive")?;
            (active["status"] == "True").then_some(())
        },
    )
    .await;
    assert_eq!(deployment_replicas(&http, "burn").await, 1);
    let table = ok(kubectl(
        &kubeconfig,
        &["get", "hpa", "burn", "--no-headers"],
    ));
    let cells: Vec<&str> = table.split_whitespace().collect();
    assert_eq!(cells[..2], ["burn", "Deployment/burn"], "{table}");
    assert!(table.contains("/50%"), "{table}");

    // Load: two callers keep the CPU busy through the ingress.
    let ingress_addr = cluster
        .cluster
        .start_ingress("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let load = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut callers = Vec::new();
    for _ in 0..2 {
        let ingress = Http::new(&format!("http://{ingress_addr}"));
        let load = load.clone();
        callers.push(tokio::spawn(async move {
            let mut served = 0u32;
            while load.load(std::sync::atomic::Ordering::Relaxed) {
                let (status, _) = ingress
                    .get_with_host("/work/100", "burn.default.localhost")
                    .await;
                served += u32::from(status == 200);
            }
            served
        }));
    }
    wait_for(
        "the HPA scales up to its max",
        Duration::from_secs(60),
        async || (deployment_replicas(&http, "burn").await == 3).then_some(()),
    )
    .await;
    let status = hpa_status(&http, "burn").await;
    let utilization = status["currentMetrics"][0]["resource"]["current"]["averageUtilization"]
        .as_i64()
        .unwrap_or(0);
    assert!(utilization > 50, "{status}");
    load.store(false, std::sync::atomic::Ordering::Relaxed);
    for caller in callers {
        assert!(caller.await.unwrap() > 0, "no request was served");
    }

    // Idle again: back to one after the 4 s window (not at once).
    let idle_at = std::time::Instant::now();
    wait_for(
        "the HPA scales back down",
        Duration::from_secs(60),
        async || (deployment_replicas(&http, "burn").await == 1).then_some(()),
    )
    .await;
    assert!(
        idle_at.elapsed() >= Duration::from_secs(3),
        "scaled down after {:?}, within the stabilization window",
        idle_at.elapsed()
    );

    let described = ok(kubectl(&kubeconfig, &["describe", "hpa", "burn"]));
    for expected in [
        "Reference:",
        "Deployment/burn",
        "Min replicas:",
        "AbleToScale",
        "ScalingActive",
        "ValidMetricFound",
        "SuccessfulRescale",
        "New size: 3; reason: cpu resource utilization (percentage of request) above target",
        "New size: 1; reason: All metrics below target",
    ] {
        assert!(
            described.contains(expected),
            "no {expected:?} in\n{described}"
        );
    }
}

/// HPAs that cannot work say why in their conditions and events and change nothing; bounds
/// that make no sense are refused with the field named.
#[tokio::test(flavor = "multi_thread")]
async fn broken_hpas_say_why_and_change_nothing() {
    if !kubectl_available("broken_hpas_say_why_and_change_nothing") {
        return;
    }
    let cluster = fast_autoscaling_cluster().await;
    let kubeconfig = &cluster.kubeconfig;
    let http = cluster.http();
    ok(kubectl_with_stdin(
        kubeconfig,
        &["apply", "-f", "-"],
        &burn_manifest(2),
    ));
    let hpa = |name: &str, target: &str, extra: &str| {
        format!(
            "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata:\n  name: {name}\nspec:\n  scaleTargetRef:\n    apiVersion: apps/v1\n    {target}\n  minReplicas: 1\n  maxReplicas: 5\n{extra}"
        )
    };
    let unknown_metric = "  metrics:\n  - type: Pods\n    pods:\n      metric:\n        name: nothing_at_all\n      target:\n        type: AverageValue\n        averageValue: \"10\"\n";
    let manifests = [
        hpa("missing", "kind: Deployment\n    name: nope", ""),
        hpa("unscalable", "kind: DaemonSet\n    name: burn", ""),
        hpa("unknown-kind", "kind: Gadget\n    name: burn", ""),
        hpa(
            "unknown-metric",
            "kind: Deployment\n    name: burn",
            unknown_metric,
        ),
    ]
    .join("---\n");
    ok(kubectl_with_stdin(
        kubeconfig,
        &["apply", "-f", "-"],
        &manifests,
    ));
    for (name, kind, reason, says) in [
        (
            "missing",
            "AbleToScale",
            "FailedGetScale",
            "deployments.apps \"nope\" not found",
        ),
        (
            "unscalable",
            "AbleToScale",
            "FailedGetScale",
            "DaemonSet apps/v1 has no scale subresource",
        ),
        (
            "unknown-kind",
            "AbleToScale",
            "FailedGetScale",
            "no matches for kind \"Gadget\" in group \"apps\"",
        ),
        (
            "unknown-metric",
            "ScalingActive",
            "FailedGetPodsMetric",
            "nothing_at_all",
        ),
    ] {
        let status = wait_for(
            &format!("{name}'s condition"),
            Duration::from_secs(30),
            async || {
                let status = hpa_status(&http, name).await;
                let found = condition(&status, kind)?;
                (found["status"] == "False" && found["reason"] == reason).then_some(status)
            },
        )
        .await;
        let message = condition(&status, kind).unwrap()["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(message.contains(says), "{name}: {message}");
        let events = wait_for(
            &format!("{name}'s event"),
            Duration::from_secs(10),
            async || {
                let out = kubectl(
                    kubeconfig,
                    &[
                        "get",
                        "events",
                        "--field-selector",
                        &format!("involvedObject.name={name},type=Warning"),
                        "-o",
                        "jsonpath={.items[*].reason}",
                    ],
                );
                let reasons = stdout(&out);
                reasons.contains(reason).then_some(reasons)
            },
        )
        .await;
        assert!(!events.is_empty());
    }
    // Nothing changed: the Deployment keeps its two replicas (the unknown-metric HPA's min
    // and max would allow any count from 1 to 5).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(deployment_replicas(&http, "burn").await, 2);

    // Inverted or negative bounds are refused, naming the field.
    let inverted = hpa("inverted", "kind: Deployment\n    name: burn", "")
        .replace("minReplicas: 1", "minReplicas: 6");
    let refused = kubectl_with_stdin(kubeconfig, &["apply", "-f", "-"], &inverted);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("spec.maxReplicas: Invalid value: \"5\": must be greater than or equal to `minReplicas`"),
        "{}",
        stderr(&refused)
    );
    let negative = hpa("negative", "kind: Deployment\n    name: burn", "")
        .replace("minReplicas: 1", "minReplicas: -1");
    let refused = kubectl_with_stdin(kubeconfig, &["apply", "-f", "-"], &negative);
    assert!(
        stderr(&refused).contains("spec.minReplicas"),
        "{}",
        stderr(&refused)
    );
    // Zero is allowed (scale to zero).
    let zero = hpa("zero", "kind: Deployment\n    name: burn", "")
        .replace("minReplicas: 1", "minReplicas: 0");
    ok(kubectl_with_stdin(kubeconfig, &["apply", "-f", "-"], &zero));
    // Both versions read the same objects.
    let v1 = ok(kubectl(
        kubeconfig,
        &[
            "get",
            "horizontalpodautoscalers.v1.autoscaling",
            "missing",
            "-o",
            "jsonpath={.apiVersion} {.spec.targetCPUUtilizationPercentage}",
        ],
    ));
    assert_eq!(v1, "autoscaling/v1 80");
    let (status, _) = http
        .raw(
            "POST",
            "/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers",
            "application/json",
            r#"{"apiVersion":"autoscaling/v1","kind":"HorizontalPodAutoscaler","metadata":{"name":"old"},
               "spec":{"scaleTargetRef":{"apiVersion":"apps/v1","kind":"Deployment","name":"burn"},"maxReplicas":2,"targetCPUUtilizationPercentage":70}}"#,
        )
        .await;
    assert_eq!(status, 201);
    let v2 = ok(kubectl(
        kubeconfig,
        &["get", "hpa", "old", "-o", "jsonpath={.apiVersion} {.spec.minReplicas} {.spec.metrics[0].resource.target.averageUtilization}"],
    ));
    assert_eq!(v2, "autoscaling/v2 1 70");
}

/// The proxy's request counts reach the autoscaler: `custom.metrics.k8s.io` serves requests
/// per second per pod and per Service (summed over the nodes' proxies), and an HPA on the
/// `requests_per_second` Pods metric scales a Deployment up under a flood of requests and
/// back down when they stop.
#[tokio::test(flavor = "multi_thread")]
async fn hpa_scales_on_requests_per_second() {
    if !kubectl_available("hpa_scales_on_requests_per_second") {
        return;
    }
    let mut cluster = fast_autoscaling_cluster().await;
    let kubeconfig = cluster.kubeconfig.clone();
    let http = cluster.http();
    ok(kubectl_with_stdin(
        &kubeconfig,
        &["apply", "-f", "-"],
        &burn_manifest(1),
    ));
    let hpa = "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata:\n  name: burn\nspec:\n  scaleTargetRef:\n    apiVersion: apps/v1\n    kind: Deployment\n    name: burn\n  minReplicas: 1\n  maxReplicas: 4\n  metrics:\n  - type: Pods\n    pods:\n      metric:\n        name: requests_per_second\n      target:\n        type: AverageValue\n        averageValue: \"5\"\n  behavior:\n    scaleDown:\n      stabilizationWindowSeconds: 3\n";
    ok(kubectl_with_stdin(&kubeconfig, &["apply", "-f", "-"], hpa));
    // Idle: 0 requests per second is a valid figure (the HPA is active, at its min).
    wait_for(
        "the HPA reads requests per second",
        Duration::from_secs(60),
        async || {
            let status = hpa_status(&http, "burn").await;
            (condition(&status, "ScalingActive")?["status"] == "True").then_some(())
        },
    )
    .await;
    assert_eq!(deployment_replicas(&http, "burn").await, 1);

    let ingress_addr = cluster
        .cluster
        .start_ingress("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let load = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut callers = Vec::new();
    for _ in 0..2 {
        let ingress = Http::new(&format!("http://{ingress_addr}"));
        let load = load.clone();
        callers.push(tokio::spawn(async move {
            while load.load(std::sync::atomic::Ordering::Relaxed) {
                let (status, _) = ingress.get_with_host("/", "burn.default.localhost").await;
                assert_eq!(status, 200);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    // The Service's rate, as the custom metrics API serves it.
    let per_second = |text: String| -> f64 {
        let list: serde_json::Value = serde_json::from_str(&text).unwrap();
        let value = list["items"][0]["value"]
            .as_str()
            .unwrap_or("0")
            .to_string();
        match value.strip_suffix('m') {
            Some(millis) => millis.parse::<f64>().unwrap() / 1000.0,
            None => value.parse().unwrap(),
        }
    };
    wait_for("the Service's requests per second show", Duration::from_secs(30), async || {
        let raw = kubectl(
            &kubeconfig,
            &["get", "--raw", "/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/services/burn/requests_per_second"],
        );
        (per_second(stdout(&raw)) > 20.0).then_some(())
    })
    .await;
    wait_for(
        "the HPA scales up to its max",
        Duration::from_secs(60),
        async || (deployment_replicas(&http, "burn").await == 4).then_some(()),
    )
    .await;
    // Each pod's share, by label.
    let pods = ok(kubectl(
        &kubeconfig,
        &["get", "--raw", "/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/pods/*/requests_per_second?labelSelector=app%3Dburn"],
    ));
    let list: serde_json::Value = serde_json::from_str(&pods).unwrap();
    assert!(list["items"].as_array().unwrap().len() >= 4, "{pods}");
    assert_eq!(list["items"][0]["describedObject"]["kind"], "Pod");
    let table = ok(kubectl(
        &kubeconfig,
        &["get", "hpa", "burn", "--no-headers"],
    ));
    assert!(table.contains("/5"), "{table}");

    load.store(false, std::sync::atomic::Ordering::Relaxed);
    for caller in callers {
        caller.await.unwrap();
    }
    wait_for(
        "the HPA scales back down",
        Duration::from_secs(60),
        async || (deployment_replicas(&http, "burn").await == 1).then_some(()),
    )
    .await;
    // An unknown metric is a 404 naming it.
    let missing = kubectl(
        &kubeconfig,
        &[
            "get",
            "--raw",
            "/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/services/burn/nothing",
        ],
    );
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("nothing"), "{}", stderr(&missing));
}

/// Scale to zero: an idle workload with an HPA at `minReplicas: 0` goes to no pods; 50
/// concurrent requests to its Service are held by the proxy while exactly one pod starts, and
/// all get 200. A workload that never becomes ready holds at most the queue bound (the rest
/// get 503 at once) and the held ones get 503 with Retry-After at the hold timeout.
#[tokio::test(flavor = "multi_thread")]
async fn idle_workloads_scale_to_zero_and_wake_on_the_first_requests() {
    if !kubectl_available("idle_workloads_scale_to_zero_and_wake_on_the_first_requests") {
        return;
    }
    let mut options = shoal::cluster::ControlPlaneOptions::default();
    options.controllers.hpa_sync_period = Duration::from_secs(1);
    let mut cluster = TestCluster::start_with_options(1, options, |config| {
        config.metrics_window = Duration::from_secs(2);
        config.hold = shoal_runtime::proxy::activator::HoldOptions {
            timeout: Duration::from_secs(3),
            max_held: 50,
        };
    })
    .await;
    let kubeconfig = cluster.kubeconfig.clone();
    let http = cluster.http();
    let web = shoal_examples::WEB_P2;
    let workload = |name: &str, replicas: u32, probe: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels:\n      app: {name}\n  template:\n    metadata:\n      labels:\n        app: {name}\n    spec:\n      containers:\n      - name: web\n        image: {web}\n        ports:\n        - containerPort: 8080\n{probe}---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  selector:\n    app: {name}\n  ports:\n  - port: 80\n    targetPort: 8080\n---\napiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata:\n  name: {name}\nspec:\n  scaleTargetRef:\n    apiVersion: apps/v1\n    kind: Deployment\n    name: {name}\n  minReplicas: 0\n  maxReplicas: 3\n  metrics:\n  - type: Pods\n    pods:\n      metric:\n        name: requests_per_second\n      target:\n        type: AverageValue\n        averageValue: \"5\"\n  behavior:\n    scaleDown:\n      stabilizationWindowSeconds: 2\n"
        )
    };
    let never_ready = "        readinessProbe:\n          httpGet:\n            path: /\n            port: 9999\n          periodSeconds: 1\n";
    let manifest = format!(
        "{}---\n{}",
        workload("sleepy", 1, ""),
        workload("broken", 0, never_ready)
    );
    ok(kubectl_with_stdin(
        &kubeconfig,
        &["apply", "-f", "-"],
        &manifest,
    ));
    let pods_of = |app: &'static str| {
        let http = http.clone();
        async move {
            let (_, body) = http
                .raw(
                    "GET",
                    &format!("/api/v1/namespaces/default/pods?labelSelector=app%3D{app}"),
                    "",
                    "",
                )
                .await;
            let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
            list["items"].as_array().cloned().unwrap_or_default()
        }
    };

    // Idle: down to zero after the short window, with no pod left.
    wait_for(
        "sleepy scales to zero",
        Duration::from_secs(60),
        async || {
            (deployment_replicas(&http, "sleepy").await == 0 && pods_of("sleepy").await.is_empty())
                .then_some(())
        },
    )
    .await;
    wait_for(
        "the HPA says it is at zero",
        Duration::from_secs(10),
        async || {
            let status = hpa_status(&http, "sleepy").await;
            (condition(&status, "ScalingActive")?["reason"] == "ScaledToZero").then_some(())
        },
    )
    .await;

    // 50 concurrent requests wake it: all 200, one pod.
    let ingress_addr = cluster
        .cluster
        .start_ingress("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let send = |host: &'static str, count: usize| {
        (0..count)
            .map(|_| {
                let ingress = Http::new(&format!("http://{ingress_addr}"));
                tokio::spawn(async move {
                    let started = std::time::Instant::now();
                    let (status, headers, body) =
                        ingress.send_with_host("GET", "/", host, "", "").await;
                    let retry_after = headers
                        .get("retry-after")
                        .map(|v| v.to_str().unwrap().to_string());
                    (
                        status,
                        retry_after,
                        String::from_utf8_lossy(&body).to_string(),
                        started.elapsed(),
                    )
                })
            })
            .collect::<Vec<_>>()
    };
    let woken = std::time::Instant::now();
    let mut answers = Vec::new();
    for caller in send("sleepy.default.localhost", 50) {
        answers.push(caller.await.unwrap());
    }
    let first_wake = woken.elapsed();
    for (status, _, body, _) in &answers {
        assert_eq!(*status, 200, "{body}");
    }
    assert_eq!(deployment_replicas(&http, "sleepy").await, 1);
    assert_eq!(
        pods_of("sleepy").await.len(),
        1,
        "exactly one pod was started"
    );
    eprintln!("50 requests to a Service at zero answered within {first_wake:?}");

    // A workload that never becomes ready: 5 of 55 find the queue full at once; the 50 held
    // time out with 503 and Retry-After.
    let callers = send("broken.default.localhost", 55);
    // It is woken (one replica) while the requests wait, just never ready. Checked while
    // they are held: once they time out, the HPA may take the unready workload back to zero
    // (its scale-down window, 2 s, is shorter than the hold).
    wait_for(
        "the broken workload is woken to one replica",
        Duration::from_secs(3),
        async || (deployment_replicas(&http, "broken").await == 1).then_some(()),
    )
    .await;
    let mut answers = Vec::new();
    for caller in callers {
        answers.push(caller.await.unwrap());
    }
    let full: Vec<_> = answers
        .iter()
        .filter(|a| a.2.contains("already waiting"))
        .collect();
    let timed_out: Vec<_> = answers
        .iter()
        .filter(|a| a.2.contains("did not become ready"))
        .collect();
    assert_eq!((full.len(), timed_out.len()), (5, 50), "{answers:?}");
    for (status, retry_after, _, elapsed) in &full {
        assert_eq!((*status, retry_after.as_deref()), (503, Some("1")));
        assert!(*elapsed < Duration::from_secs(2), "{elapsed:?}");
    }
    for (status, retry_after, _, elapsed) in &timed_out {
        assert_eq!((*status, retry_after.as_deref()), (503, Some("1")));
        assert!(*elapsed >= Duration::from_millis(2900), "{elapsed:?}");
    }
}
