//! The autoscaling benchmarks: `wake`, the first response of a Service whose workload is at
//! zero (the module already compiled on the node), over `--wakeups` wake-ups; and `load URL
//! --rps N --seconds D`, an open-loop load generator for the scale-to-zero demo
//! (`examples-wasm/manifests/autoscale.yaml`), printing what it got.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use super::{http_client, ms, percentile, start_cluster_with, Args};
use shoal::cluster::ControlPlaneOptions;
use shoal_control::client::ListParams;

/// The demo workload: a web Deployment, its Service and an HPA on requests per second with
/// `minReplicas: 0`.
fn manifests(name: &str) -> Vec<serde_json::Value> {
    vec![
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
               "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                        "template": {"metadata": {"labels": {"app": name}},
                                     "spec": {"terminationGracePeriodSeconds": 0, "containers": [{"name": "web",
                                              "image": shoal_examples::WEB_P2, "ports": [{"containerPort": 8080}]}]}}}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
               "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]}}),
        json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": name},
               "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                        "minReplicas": 0, "maxReplicas": 3,
                        "metrics": [{"type": "Pods", "pods": {"metric": {"name": "requests_per_second"},
                                     "target": {"type": "AverageValue", "averageValue": "5"}}}]}}),
    ]
}

pub async fn wake(args: &Args) -> anyhow::Result<()> {
    let mut options = ControlPlaneOptions::default();
    options.controllers.hpa_sync_period = Duration::from_secs(1);
    let mut bench = start_cluster_with(1, options, |_| {}).await?;
    let ingress = bench.cluster.start_ingress("127.0.0.1:0".parse()?).await?;
    let proxy = bench.cluster.agents[0].proxy.clone();
    let name = "sleepy";
    let collections = [
        "/apis/apps/v1/namespaces/default/deployments",
        "/api/v1/namespaces/default/services",
        "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers",
    ];
    for (collection, object) in collections.iter().zip(manifests(name)) {
        bench
            .client
            .json(
                http::Method::POST,
                collection,
                "application/json",
                Some(&object),
            )
            .await?;
    }
    let url = format!("http://{ingress}/");
    let host = format!("{name}.default.localhost");
    let client = http_client();
    let request = || {
        http::Request::get(&url)
            .header(http::header::HOST, &host)
            .body(Empty::<Bytes>::new())
            .expect("a valid request")
    };
    // Warm: the module compiled and the connection open.
    let deadline = Instant::now() + Duration::from_secs(60);
    while proxy
        .resolve_service("default", name)
        .is_none_or(|r| r.backends.is_empty())
    {
        anyhow::ensure!(Instant::now() < deadline, "the workload never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client
        .request(request())
        .await?
        .into_body()
        .collect()
        .await?;
    let pods = bench.client.api::<Pod>(Some("default"));
    let selector = ListParams::default().labels(&format!("app={name}"));
    let scale = format!("/apis/apps/v1/namespaces/default/deployments/{name}/scale");
    let mut times = Vec::new();
    for _ in 0..args.wakeups {
        bench
            .client
            .json(
                http::Method::PATCH,
                &scale,
                "application/merge-patch+json",
                Some(&json!({"spec": {"replicas": 0}})),
            )
            .await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !pods.list(&selector).await?.items.is_empty()
            || proxy
                .resolve_service("default", name)
                .is_some_and(|r| !r.backends.is_empty())
        {
            anyhow::ensure!(Instant::now() < deadline, "the workload never went to zero");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let started = Instant::now();
        let response = client.request(request()).await?;
        let status = response.status();
        response.into_body().collect().await?;
        times.push(started.elapsed());
        anyhow::ensure!(status == 200, "a woken request got {status}");
    }
    times.sort();
    println!(
        "first response after zero (module compiled), {} wake-ups: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        times.len(),
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
        ms(times.last().copied().unwrap_or_default()),
    );

    // Reaction: from a flood starting (one pod serving) to a second replica serving it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while proxy
        .resolve_service("default", name)
        .is_none_or(|r| r.backends.len() != 1)
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the woken pod never became ready"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let flood = Instant::now();
    let flooding = {
        let url = url.clone();
        let host = host.clone();
        tokio::spawn(async move { super::bench_services::load(&url, Some(&host), 4, 30.0).await })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while proxy
        .resolve_service("default", name)
        .is_none_or(|r| r.backends.len() < 2)
    {
        anyhow::ensure!(Instant::now() < deadline, "no replica was added under load");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "reaction: load starting -> a second replica serving: {:.0} ms (HPA sync period 1 s, metrics window {} s)",
        ms(flood.elapsed()),
        shoal_runtime::agent::DEFAULT_METRICS_WINDOW.as_secs()
    );
    flooding.abort();
    bench.cluster.shutdown().await;
    Ok(())
}

/// `load URL [--host H] --rps N --seconds D`: N requests a second, each on its own task (open
/// loop: a slow answer does not slow the sending), for D seconds.
pub async fn load(args: &Args) -> anyhow::Result<()> {
    let url = args
        .target
        .clone()
        .ok_or_else(|| anyhow::anyhow!("load needs a URL: shoal-bench load http://127.0.0.1:8080/ --host web.default.localhost"))?;
    anyhow::ensure!(args.rps > 0, "--rps must be at least 1");
    let client = http_client();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rps as f64));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    while Instant::now() < deadline {
        ticks.tick().await;
        let mut request = http::Request::get(&url);
        if let Some(host) = &args.host {
            request = request.header(http::header::HOST, host);
        }
        let request = request.body(Empty::<Bytes>::new())?;
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let status = match client.request(request).await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    response
                        .into_body()
                        .collect()
                        .await
                        .map(|_| status)
                        .unwrap_or(0)
                }
                Err(_) => 0,
            };
            (status, started.elapsed())
        }));
    }
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut times = Vec::new();
    for task in tasks {
        let (status, elapsed) = task.await?;
        *statuses.entry(status).or_default() += 1;
        times.push(elapsed);
    }
    times.sort();
    println!(
        "{} requests at {} per second for {} s: statuses {statuses:?} (0: no answer); p50 {:.2} ms, p99 {:.2} ms",
        times.len(),
        args.rps,
        args.seconds,
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
    );
    Ok(())
}
