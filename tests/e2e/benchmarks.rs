//! The benchmarks' smoke runs: each `shoal-bench` benchmark of the performance targets runs at
//! CI sizes (`--smoke`) and works end to end: it exits cleanly, nothing it sent failed, and it
//! prints its figure. How fast is `shoal-bench`'s business in release builds, not the tests'.

use std::time::Duration;

use shoal_tests::shoal_bench_bin;

/// Runs `shoal-bench --smoke ARGS` and returns its standard output, failing the test when the
/// run fails or prints no line containing `figure`.
async fn smoke(args: &[&str], figure: &str) -> String {
    let run = tokio::process::Command::new(shoal_bench_bin())
        .arg("--smoke")
        .args(args)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .unwrap_or_else(|_| panic!("shoal-bench --smoke {args:?} ran over 5 minutes"))
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "shoal-bench --smoke {args:?} failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.lines().any(|line| line.contains(figure)),
        "shoal-bench --smoke {args:?} printed no {figure:?} figure:\n{stdout}"
    );
    stdout
}

#[tokio::test]
async fn pods_smoke() {
    smoke(&["pods", "--creators", "1"], "12 pods, 1 creator(s)").await;
    smoke(&["pods"], "12 pods, 4 creator(s)").await;
}

#[tokio::test]
async fn writes_smoke() {
    let out = smoke(&["writes"], "64 client(s)").await;
    assert_eq!(
        out.matches("(128 writes in").count(),
        3,
        "every write of 1, 32 and 64 clients counted: {out}"
    );
}

#[tokio::test]
async fn gateway_smoke() {
    let out = smoke(&["gateway"], "over mTLS, round 2").await;
    assert!(out.contains("over plain HTTP, round 2"), "{out}");
}

#[tokio::test]
async fn heal_smoke() {
    let out = smoke(
        &["heal"],
        "node loss -> 10 replacement pod(s) Ready, 1 kills",
    )
    .await;
    assert!(out.contains("lease renewals, 50 nodes"), "{out}");
}

/// The benchmarks whose smoke run is checked by its exit and its figure line alone.
macro_rules! smoke_prints {
    ($($test:ident: [$($arg:literal),*] prints $figure:literal;)*) => {$(
        #[tokio::test]
        async fn $test() {
            smoke(&[$($arg),*], $figure).await;
        }
    )*};
}

smoke_prints! {
    http_instance_smoke: ["http-instance"] prints "50 requests: p50";
    density_smoke: ["density"] prints "12 Running after";
    scheduler_smoke: ["scheduler"] prints "12 seen bound by a watcher";
    ingress_smoke: ["ingress"] prints "dev ingress -> Service of 3 web pods";
    scale_smoke: ["scale"] prints "all 12 pods Running";
    quota_writes_smoke: ["quota-writes"] prints "creates/s with a quota vs";
    preemption_smoke: ["preemption"] prints "preemption decision, 10 nodes, 100 pods, 100 budgets";
    proxy_latency_smoke: ["proxy-latency"] prints "through the proxy (resolve + stack + balance)";
    endpoints_smoke: ["endpoints"] prints "a pod relabelled out of / into the selector";
    port_forward_smoke: ["port-forward"] prints "(0 failed); dev ingress";
    exec_smoke: ["exec"] prints "kubectl exec p50";
    api_tls_smoke: ["api-tls"] prints "API GET over HTTPS (client certificate), round 2";
    authz_smoke: ["authz"] prints "GET as a user bound among 1000 RoleBindings, round 2";
    metrics_smoke: ["metrics"] prints "metrics, 12 pods: sample";
    wake_smoke: ["wake"] prints "reaction: load starting -> a second replica serving";
    list_cache_smoke: ["list-cache"] prints "list of 12 pods, consistent";
}
