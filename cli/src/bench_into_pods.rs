//! The into-the-pod benchmarks of `shoal-bench` (issue 16):
//!
//! - `port-forward`: requests through `kubectl port-forward` (kubectl -> API server ->
//!   agent, SPDY in a WebSocket, then the pod's port in-process) against the same pod
//!   through the dev ingress, side by side in one run: sequential latency interleaved
//!   request by request, then requests per second in alternating phases.
//! - `exec`: the round trip of `kubectl exec POD -- echo x` beside `kubectl get pod` (the
//!   floor any kubectl command pays: process start, kubeconfig, TLS), interleaved; and the
//!   same exec from kube-rs in this process (no kubectl start), which is what the protocol,
//!   the API server, the agent and a fresh toolbox instance cost.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shoal_control::server::ServerOptions;

use super::bench_services::{load, web_service, KillOnDrop};
use super::{http_client, ms, percentile, start_cluster, Args};

pub async fn port_forward(args: &Args) -> anyhow::Result<()> {
    let mut bench = start_cluster(1, ServerOptions::default(), |_| {}).await?;
    let ingress = bench.cluster.start_ingress("127.0.0.1:0".parse()?).await?;
    let proxy = bench.cluster.agents[0].proxy.clone();
    web_service(&bench, &proxy, "forwarded", 1).await?;
    let kubeconfig = bench.cluster.write_kubeconfig()?;
    let mut kubectl = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["port-forward", "pod/forwarded-0", ":8080"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("port-forward: cannot run kubectl: {e}"))?;
    let stdout = kubectl.stdout.take();
    let _kubectl = KillOnDrop(kubectl);
    // "Forwarding from 127.0.0.1:41234 -> 8080"
    let local = tokio::task::spawn_blocking(move || -> Option<u16> {
        let mut lines = BufReader::new(stdout?).lines();
        let line = lines.next()?.ok()?;
        std::thread::spawn(move || for _ in lines {});
        line.strip_prefix("Forwarding from 127.0.0.1:")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    });
    let local = tokio::time::timeout(Duration::from_secs(30), local)
        .await??
        .ok_or_else(|| anyhow::anyhow!("kubectl port-forward printed no local port"))?;
    let forwarded_url = format!("http://127.0.0.1:{local}/healthz");
    let ingress_url = format!("http://{ingress}/healthz");
    let host = "forwarded.default.localhost";

    // Latency: one request each way, interleaved, on kept-alive connections.
    let client = http_client();
    let request = |url: &str, host: Option<&str>| {
        let mut request = http::Request::get(url);
        if let Some(host) = host {
            request = request.header(http::header::HOST, host);
        }
        request
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("a valid request")
    };
    let (mut forwarded, mut ingressed) = (Vec::new(), Vec::new());
    for i in 0..args.requests + 100 {
        for (url, host, times) in [
            (&forwarded_url, None, &mut forwarded),
            (&ingress_url, Some(host), &mut ingressed),
        ] {
            let start = Instant::now();
            let response = client.request(request(url, host)).await?;
            anyhow::ensure!(response.status() == 200, "{url}: {}", response.status());
            http_body_util::BodyExt::collect(response.into_body()).await?;
            if i >= 100 {
                times.push(start.elapsed());
            }
        }
    }
    forwarded.sort();
    ingressed.sort();
    println!(
        "one web pod, {} sequential GETs each way, interleaved: kubectl port-forward p50 {:.2} ms, p99 {:.2} ms; dev ingress p50 {:.2} ms, p99 {:.2} ms",
        args.requests,
        ms(percentile(&forwarded, 0.5)),
        ms(percentile(&forwarded, 0.99)),
        ms(percentile(&ingressed, 0.5)),
        ms(percentile(&ingressed, 0.99)),
    );

    // Throughput: alternating phases, F I F I.
    let phase = args.seconds as f64 / 2.0;
    let (mut through_forward, mut through_ingress) = ((0.0, 0), (0.0, 0));
    for _ in 0..2 {
        let (rps, failed) = load(&forwarded_url, None, args.connections, phase).await;
        through_forward = (through_forward.0 + rps / 2.0, through_forward.1 + failed);
        let (rps, failed) = load(&ingress_url, Some(host), args.connections, phase).await;
        through_ingress = (through_ingress.0 + rps / 2.0, through_ingress.1 + failed);
    }
    println!(
        "{} connections, {} s, alternating phases: kubectl port-forward {:.0} requests/s ({} failed); dev ingress {:.0} requests/s ({} failed); port-forward / ingress = {:.2}",
        args.connections,
        args.seconds,
        through_forward.0,
        through_forward.1,
        through_ingress.0,
        through_ingress.1,
        through_forward.0 / through_ingress.0
    );
    bench.cluster.shutdown().await;
    Ok(())
}

pub async fn exec(args: &Args) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Pod;
    use tokio::io::AsyncReadExt;
    let bench = start_cluster(1, ServerOptions::default(), |_| {}).await?;
    let proxy = bench.cluster.agents[0].proxy.clone();
    web_service(&bench, &proxy, "execd", 1).await?;
    let kubeconfig = bench.cluster.write_kubeconfig()?;

    // kube-rs, over HTTPS like any client, sequential.
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig)?,
        &Default::default(),
    )
    .await?;
    let pods: kube::Api<Pod> = kube::Api::namespaced(kube::Client::try_from(config)?, "default");
    let params = kube::api::AttachParams::default().stderr(false);
    let runs = args.requests.clamp(20, 1000);
    let mut library = Vec::with_capacity(runs);
    for i in 0..runs + 20 {
        let start = Instant::now();
        let mut process = pods.exec("execd-0", ["echo", "x"], &params).await?;
        let mut out = String::new();
        let mut stdout = process
            .stdout()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        stdout.read_to_string(&mut out).await?;
        let status = process
            .take_status()
            .ok_or_else(|| anyhow::anyhow!("no status"))?;
        let status = status.await.and_then(|s| s.status);
        anyhow::ensure!(
            out == "x\n" && status.as_deref() == Some("Success"),
            "exec: {out:?} {status:?}"
        );
        if i >= 20 {
            library.push(start.elapsed());
        }
    }
    library.sort();

    // kubectl, a process per command: exec and get interleaved.
    let kubectl_runs = (args.requests / 20).clamp(10, 50);
    let (mut execs, mut gets) = (Vec::new(), Vec::new());
    let kubeconfig_arg = kubeconfig.display().to_string();
    let cache = kubeconfig.with_extension("cache").display().to_string();
    for i in 0..kubectl_runs + 2 {
        for (command, times) in [
            (&["exec", "execd-0", "--", "echo", "x"][..], &mut execs),
            (&["get", "pod", "execd-0", "-o", "name"][..], &mut gets),
        ] {
            let start = Instant::now();
            let output = Command::new("kubectl")
                .args(["--kubeconfig", &kubeconfig_arg, "--cache-dir", &cache])
                .args(command)
                .output()
                .map_err(|e| anyhow::anyhow!("exec: cannot run kubectl: {e}"))?;
            anyhow::ensure!(
                output.status.success(),
                "kubectl {command:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            if i >= 2 {
                times.push(start.elapsed());
            }
        }
    }
    execs.sort();
    gets.sort();
    println!(
        "exec `echo x` in a web pod: kube-rs (in process, {runs} sequential) p50 {:.2} ms, p99 {:.2} ms; kubectl exec p50 {:.1} ms vs kubectl get pod p50 {:.1} ms ({kubectl_runs} each, interleaved)",
        ms(percentile(&library, 0.5)),
        ms(percentile(&library, 0.99)),
        ms(percentile(&execs, 0.5)),
        ms(percentile(&gets, 0.5)),
    );
    bench.cluster.shutdown().await;
    Ok(())
}
