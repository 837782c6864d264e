//! The security benchmarks of `shoal-bench`:
//!
//! - `api-tls`: latency of one API request (GET a Namespace) over HTTPS with a client
//!   certificate vs plain HTTP on the loopback insecure address, same server, same run,
//!   alternating rounds; each client keeps its connection (as kubectl and kube-rs do);
//! - `authz`: what RBAC costs per decision with 1,000 RoleBindings in the policy (the
//!   authorizer alone), and end to end: a request by a user bound among them vs the same
//!   request by a `system:masters` admin (who skips the rules).

use std::time::{Duration, Instant};

use serde_json::json;
use shoal_control::auth::rbac::{Decision, Policy, ROLE_BINDINGS};
use shoal_control::auth::{policy, request_info, UserInfo};
use shoal_control::client::Client;

use super::{percentile, start_cluster_with, us, Args};
use shoal::cluster::ControlPlaneOptions;

/// `count` GETs of one Namespace through `client`, one after another: sorted latencies.
async fn get_namespace(client: &Client, count: usize) -> anyhow::Result<Vec<Duration>> {
    let namespaces = client.api::<k8s_openapi::api::core::v1::Namespace>(None);
    let mut latencies = Vec::with_capacity(count);
    for _ in 0..count {
        let start = Instant::now();
        namespaces.get("default").await?;
        latencies.push(start.elapsed());
    }
    latencies.sort();
    Ok(latencies)
}

fn report(what: &str, latencies: &[Duration]) {
    println!(
        "{what}: p50 {:.1} us, p99 {:.1} us ({} requests)",
        us(percentile(latencies, 0.50)),
        us(percentile(latencies, 0.99)),
        latencies.len()
    );
}

pub async fn api_tls(args: &Args) -> anyhow::Result<()> {
    let mut options = ControlPlaneOptions::default();
    options.security.insecure_http_addr = Some("127.0.0.1:0".parse()?);
    let bench = start_cluster_with(0, options, |_| {}).await?;
    let insecure = bench
        .cluster
        .control
        .insecure_url()
        .ok_or_else(|| anyhow::anyhow!("no insecure address"))?;
    let plain = Client::http(&insecure)?;
    let count = args.requests.min(5000);
    // Warm both connections first.
    get_namespace(&bench.client, 50).await?;
    get_namespace(&plain, 50).await?;
    for round in 1..=2 {
        report(
            &format!("API GET over HTTPS (client certificate), round {round}"),
            &get_namespace(&bench.client, count).await?,
        );
        report(
            &format!("API GET over plain HTTP (loopback insecure address), round {round}"),
            &get_namespace(&plain, count).await?,
        );
    }
    bench.cluster.shutdown().await;
    Ok(())
}

const BINDINGS: usize = 1000;

fn binding(i: usize) -> serde_json::Value {
    json!({"metadata": {"name": format!("b{i}"), "namespace": format!("ns{}", i % 50)},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "User", "name": format!("user{i}")}, {"kind": "Group", "name": format!("group{}", i % 20)}]})
}

pub async fn authz(args: &Args) -> anyhow::Result<()> {
    // The authorizer alone.
    let mut policy = Policy::default();
    for (resource, object) in policy::bootstrap_objects() {
        policy.apply(resource, &object, false);
    }
    for i in 0..BINDINGS {
        policy.apply(ROLE_BINDINGS, &binding(i), false);
    }
    let user = UserInfo::authenticated("user777", vec!["group3".into()]);
    let allowed = request_info::parse(&http::Method::GET, "/api/v1/namespaces/ns27/pods", None);
    let denied = request_info::parse(&http::Method::POST, "/api/v1/namespaces/ns27/pods", None);
    for (what, request, expected) in [
        ("allowed", &allowed, Decision::Allow),
        ("denied", &denied, Decision::Deny),
    ] {
        let mut times = Vec::with_capacity(100_000);
        for _ in 0..100_000 {
            let start = Instant::now();
            let decision = policy.authorize(&user, request);
            times.push(start.elapsed());
            assert_eq!(decision, expected);
        }
        times.sort();
        println!(
            "RBAC decision with {BINDINGS} RoleBindings ({what}): p50 {:.2} us, p99 {:.2} us",
            us(percentile(&times, 0.50)),
            us(percentile(&times, 0.99))
        );
    }

    // End to end: the same GET by a bound user and by the admin, over HTTPS.
    let bench = start_cluster_with(0, ControlPlaneOptions::default(), |_| {}).await?;
    let admin = bench.client.clone();
    let bindings = admin.api::<k8s_openapi::api::rbac::v1::RoleBinding>(Some("default"));
    for i in 0..BINDINGS {
        let mut object = binding(i);
        object["metadata"]["namespace"] = json!("default");
        bindings.create(&serde_json::from_value(object)?).await?;
    }
    let kubeconfig = bench.cluster.data_dir.join("kubeconfig-user777");
    bench.cluster.control.write_kubeconfig_for(
        &kubeconfig,
        "user777",
        &[],
        Duration::from_secs(3600),
    )?;
    let (user_client, _) = shoal::kubeconfig::connect(&kubeconfig).await?;
    let count = args.requests.min(5000);
    let configmaps =
        |client: &Client| client.api::<k8s_openapi::api::core::v1::ConfigMap>(Some("default"));
    let list = async |client: &Client| -> anyhow::Result<Vec<Duration>> {
        let api = configmaps(client);
        let mut latencies = Vec::with_capacity(count);
        for _ in 0..count {
            let start = Instant::now();
            api.get_opt("absent").await?;
            latencies.push(start.elapsed());
        }
        latencies.sort();
        Ok(latencies)
    };
    list(&admin).await?;
    list(&user_client).await?;
    for round in 1..=2 {
        report(
            &format!("GET as the admin (system:masters), round {round}"),
            &list(&admin).await?,
        );
        report(
            &format!("GET as a user bound among {BINDINGS} RoleBindings, round {round}"),
            &list(&user_client).await?,
        );
    }
    bench.cluster.shutdown().await;
    Ok(())
}
