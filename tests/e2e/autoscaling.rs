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
