//! Services and the proxy: endpoints follow pod readiness; the dev ingress spreads requests
//! over ready replicas by Host; pods call Services by name across nodes; bad Services and
//! hosts get clear errors.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};
use shoal_examples::WEB_P2;
use shoal_tests::*;

const PODS: &str = "/api/v1/namespaces/default/pods";
const SERVICES: &str = "/api/v1/namespaces/default/services";

fn deployment() -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "hello"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "hello"}},
            "template": {"metadata": {"labels": {"app": "hello"}}, "spec": {
                "volumes": [{"name": "data", "emptyDir": {}}],
                "containers": [{"name": "web", "image": WEB_P2,
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                    "readinessProbe": {"httpGet": {"path": "/flag/ready", "port": 8080}, "periodSeconds": 1}}]}}}})
}

/// A dev cluster of `nodes` with its ingress on a free port: the cluster, a client of its API
/// and one of its ingress.
async fn cluster_with_ingress(nodes: usize) -> (TestCluster, Http, Http) {
    let mut cluster = TestCluster::start(nodes).await;
    let http = cluster.http();
    let ingress_addr = cluster
        .cluster
        .start_ingress("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    (cluster, http, Http::new(&format!("http://{ingress_addr}")))
}

/// Sends a GET through the ingress with `host` and returns the status and body.
async fn through_ingress(ingress: &Http, host: &str, path: &str) -> (u16, String) {
    let (status, body) = ingress.get_with_host(path, host).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn ready_endpoints(http: &Http) -> Vec<String> {
    let (_, endpoints) = http
        .call("GET", "/api/v1/namespaces/default/endpoints/hello", "", "")
        .await;
    let mut pods: Vec<String> = endpoints["subsets"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["addresses"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["targetRef"]["name"].as_str().map(str::to_string))
        .collect();
    pods.sort();
    pods
}

async fn wait_endpoints(http: &Http, expected: &[String]) {
    wait_for(
        &format!("ready endpoints {expected:?}"),
        Duration::from_secs(30),
        async || (ready_endpoints(http).await == expected).then_some(()),
    )
    .await;
}

async fn set_ready(http: &Http, pod: &str, ready: bool) {
    let path = format!("{PODS}/{pod}:8080/proxy/file/data/ready");
    let (status, body) = if ready {
        http.raw("PUT", &path, "text/plain", "yes").await
    } else {
        http.raw("DELETE", &path, "", "").await
    };
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

/// Which pod answered each of `count` requests through the ingress.
async fn spread(ingress: &Http, count: usize) -> HashMap<String, usize> {
    let mut answers: HashMap<String, usize> = HashMap::new();
    for _ in 0..count {
        let (status, body) = through_ingress(ingress, "hello.default.localhost", "/").await;
        assert_eq!(status, 200, "{body}");
        let pod = body
            .split("(pod ")
            .nth(1)
            .and_then(|rest| rest.split(')').next())
            .unwrap_or_else(|| panic!("no pod name in {body:?}"));
        *answers.entry(pod.to_string()).or_default() += 1;
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_balance_over_ready_endpoints_through_the_ingress_and_between_pods() {
    let (_cluster, http, ingress) = cluster_with_ingress(2).await;
    let (status, body) = http
        .call(
            "POST",
            "/apis/apps/v1/namespaces/default/deployments",
            "application/json",
            &deployment().to_string(),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "hello"},
        "spec": {"selector": {"app": "hello"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}});
    let (status, created) = http
        .call("POST", SERVICES, "application/json", &service.to_string())
        .await;
    assert_eq!(status, 201, "{created}");
    assert!(
        created["spec"]["clusterIP"]
            .as_str()
            .unwrap()
            .starts_with("10.96."),
        "{created}"
    );

    // Running but unready pods: no endpoint, and the ingress says so at once.
    let pods: Vec<String> = wait_for("3 running pods", Duration::from_secs(60), async || {
        let (_, list) = http
            .call("GET", &format!("{PODS}?labelSelector=app%3Dhello"), "", "")
            .await;
        let running: Vec<String> = list["items"]
            .as_array()?
            .iter()
            .filter(|p| p["status"]["phase"] == "Running")
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
            .collect();
        (running.len() == 3).then_some(running)
    })
    .await;
    let asked = std::time::Instant::now();
    let (status, body) = through_ingress(&ingress, "hello.default.localhost:80", "/").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no ready endpoints"), "{body}");
    assert!(asked.elapsed() < Duration::from_secs(1), "503 at once");

    let mut sorted = pods.clone();
    sorted.sort();
    for pod in &pods {
        set_ready(&http, pod, true).await;
    }
    wait_endpoints(&http, &sorted).await;

    // 300 requests spread over all three: each gets 20-46 %.
    let answers = spread(&ingress, 300).await;
    assert_eq!(answers.len(), 3, "{answers:?}");
    for (pod, count) in &answers {
        assert!(
            (60..=138).contains(count),
            "{pod} got {count} of 300: {answers:?}"
        );
    }

    // The ingress's proxy counted them, and the 503 before (`/metrics`, Prometheus text).
    let (status, metrics) = through_ingress(&ingress, "127.0.0.1", "/metrics").await;
    assert_eq!(status, 200, "{metrics}");
    let count = |line: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {line} in\n{metrics}"))
    };
    assert_eq!(
        count(r#"shoal_proxy_requests_total{service="default/hello",code="200"}"#),
        300
    );
    assert_eq!(
        count(r#"shoal_proxy_requests_total{service="default/hello",code="503"}"#),
        1
    );
    assert_eq!(
        count(r#"shoal_proxy_errors_total{service="default/hello"}"#),
        1
    );
    assert_eq!(
        count(r#"shoal_proxy_request_duration_seconds_count{service="default/hello"}"#),
        301
    );

    // An unready replica gets nothing until it is ready again.
    set_ready(&http, &pods[0], false).await;
    let others: Vec<String> = sorted.iter().filter(|p| **p != pods[0]).cloned().collect();
    wait_endpoints(&http, &others).await;
    let answers = spread(&ingress, 60).await;
    assert!(!answers.contains_key(&pods[0]), "{answers:?}");
    set_ready(&http, &pods[0], true).await;
    wait_endpoints(&http, &sorted).await;
    let answers = spread(&ingress, 90).await;
    assert!(
        answers.contains_key(&pods[0]),
        "back in rotation: {answers:?}"
    );

    // A pod calls the Service by its names and by its ClusterIP (pods are on both nodes).
    let cluster_ip = created["spec"]["clusterIP"].as_str().unwrap().to_string();
    for pod in &pods {
        for name in [
            "hello",
            "hello.default",
            "hello.default.svc.cluster.local",
            &cluster_ip,
        ] {
            let (status, body) = http
                .raw(
                    "GET",
                    &format!("{PODS}/{pod}:8080/proxy/call/{name}/"),
                    "",
                    "",
                )
                .await;
            let body = String::from_utf8_lossy(&body);
            assert_eq!(status, 200, "{pod} -> {name}: {body}");
            assert!(
                body.contains("200") && body.contains("Hello from web"),
                "{pod} -> {name}: {body}"
            );
        }
    }
    let (_, list) = http
        .call("GET", &format!("{PODS}?labelSelector=app%3Dhello"), "", "")
        .await;
    let nodes: std::collections::HashSet<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["spec"]["nodeName"].as_str())
        .collect();
    assert_eq!(nodes.len(), 2, "the replicas run on both nodes");

    // Unknown hosts get 404.
    let (status, body) = through_ingress(&ingress, "nope.default.localhost", "/").await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = through_ingress(&ingress, "example.com", "/").await;
    assert_eq!(status, 404);

    // Bad Services get 422 naming the field.
    for (spec, field) in [
        (json!({"ports": [{"port": 70000}]}), "spec.ports[0].port"),
        (
            json!({"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80}]}),
            "spec.ports[1]",
        ),
        (
            json!({"selector": {"app": "hello"}, "ports": [{"port": 80, "targetPort": "htp"}]}),
            "spec.ports[0].targetPort",
        ),
    ] {
        let bad = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bad"}, "spec": spec});
        let (status, body) = http
            .call("POST", SERVICES, "application/json", &bad.to_string())
            .await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["details"]["causes"][0]["field"], field, "{body}");
    }
    let (status, _) = http.call("GET", &format!("{SERVICES}/bad"), "", "").await;
    assert_eq!(status, 404, "nothing was created");
}

/// Two clients send requests through the ingress for 30 s while a 3-replica Deployment rolls
/// to a new version: not one request fails, and by the end the new version answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_under_load_fails_no_request() {
    const LOAD: Duration = Duration::from_secs(30);
    let (_cluster, http, ingress) = cluster_with_ingress(2).await;
    let deployment = |version: &str| {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "roll"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "roll"}},
                "template": {"metadata": {"labels": {"app": "roll"}}, "spec": {
                    "containers": [{"name": "web", "image": WEB_P2,
                        "ports": [{"containerPort": 8080}],
                        "env": [{"name": "NAME", "value": version}],
                        "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1}}]}}}})
    };
    http.create(
        "/apis/apps/v1/namespaces/default/deployments",
        &deployment("v1"),
    )
    .await;
    let service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "roll"},
        "spec": {"selector": {"app": "roll"}, "ports": [{"port": 80, "targetPort": 8080}]}});
    http.create(SERVICES, &service).await;
    wait_for("3 endpoints", Duration::from_secs(60), async || {
        let (_, ep) = http
            .call("GET", "/api/v1/namespaces/default/endpoints/roll", "", "")
            .await;
        let ready = ep["subsets"][0]["addresses"].as_array().map(Vec::len);
        (ready == Some(3)).then_some(())
    })
    .await;

    let started = std::time::Instant::now();
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let ingress = ingress.clone();
            tokio::spawn(async move {
                let (mut answers, mut failures) = (Vec::new(), Vec::new());
                while started.elapsed() < LOAD {
                    let (status, body) =
                        through_ingress(&ingress, "roll.default.localhost", "/").await;
                    if status == 200 {
                        answers.push(body);
                    } else {
                        failures.push(format!("{status} {body}"));
                    }
                }
                (answers, failures)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, body) = http
        .call(
            "PUT",
            "/apis/apps/v1/namespaces/default/deployments/roll",
            "application/json",
            &deployment("v2").to_string(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (mut answers, mut failures) = (Vec::new(), Vec::new());
    for client in clients {
        let (a, f) = client.await.unwrap();
        answers.extend(a);
        failures.extend(f);
    }
    let (_, d) = http
        .call(
            "GET",
            "/apis/apps/v1/namespaces/default/deployments/roll",
            "",
            "",
        )
        .await;
    assert_eq!(
        (
            d["status"]["updatedReplicas"].as_i64(),
            d["status"]["availableReplicas"].as_i64()
        ),
        (Some(3), Some(3)),
        "the rollout finished within the load: {}",
        d["status"]
    );
    let v1 = answers.iter().filter(|a| a.contains("from v1")).count();
    let v2 = answers.iter().filter(|a| a.contains("from v2")).count();
    println!(
        "{} requests: {v1} answered by v1, {v2} by v2, {} failed",
        answers.len() + failures.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} failed requests, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(v1 > 0 && v2 > 0, "both versions answered: v1 {v1}, v2 {v2}");
    assert!(
        answers.last().is_some_and(|a| a.contains("from v2")),
        "the new version answers at the end"
    );
}

/// Ingress rules route by host and path (Exact before Prefix, longest first); NodePort and
/// LoadBalancer Services answer on their ports of the ingress host; bad Ingresses get 422.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_rules_node_ports_and_load_balancers_route_to_services() {
    let (_cluster, http, ingress) = cluster_with_ingress(1).await;
    for (name, env) in [
        (
            "alpha",
            json!([{"name": "NAME", "value": "alpha"}, {"name": "GREETING", "value": "Hi"}]),
        ),
        ("beta", json!([{"name": "NAME", "value": "beta"}])),
    ] {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"containers": [{"name": "web", "image": WEB_P2, "ports": [{"containerPort": 8080}], "env": env}]}});
        http.create(PODS, &pod).await;
    }
    let lb_port = free_addr().port();
    let services = [
        json!({"metadata": {"name": "alpha"}, "spec": {"selector": {"app": "alpha"}, "ports": [{"port": 80, "targetPort": 8080}]}}),
        json!({"metadata": {"name": "beta"}, "spec": {"type": "NodePort", "selector": {"app": "beta"},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
        json!({"metadata": {"name": "gamma"}, "spec": {"type": "LoadBalancer", "selector": {"app": "alpha"},
            "ports": [{"port": lb_port, "targetPort": 8080}]}}),
    ];
    let mut created = Vec::new();
    for service in services {
        created.push(http.create(SERVICES, &service).await);
    }
    let node_port = created[1]["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
    assert!((30000..=32767).contains(&node_port), "{}", created[1]);
    let rules = json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "shop"},
        "spec": {"rules": [{"host": "shop.test", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "alpha", "port": {"number": 80}}}},
            {"path": "/env", "pathType": "Prefix", "backend": {"service": {"name": "beta", "port": {"name": "http"}}}},
            {"path": "/env/GREETING", "pathType": "Exact", "backend": {"service": {"name": "alpha", "port": {"number": 80}}}}]}}]}});
    http.create(
        "/apis/networking.k8s.io/v1/namespaces/default/ingresses",
        &rules,
    )
    .await;

    let answer = async |base: &Http, host: &str, path: &str| {
        wait_for(
            &format!("{host}{path} to answer"),
            Duration::from_secs(60),
            async || {
                let (status, body) = through_ingress(base, host, path).await;
                (status == 200).then_some(body)
            },
        )
        .await
    };
    assert_eq!(answer(&ingress, "shop.test", "/").await, "Hi from alpha\n");
    assert_eq!(
        answer(&ingress, "shop.test:8080", "/env/NAME").await,
        "beta"
    );
    assert_eq!(answer(&ingress, "shop.test", "/env/GREETING").await, "Hi");
    let (status, body) = through_ingress(&ingress, "other.test", "/").await;
    assert_eq!(status, 404, "no rule for other.test: {body}");

    let node_port = Http::new(&format!("http://127.0.0.1:{node_port}"));
    assert_eq!(answer(&node_port, "anything", "/env/NAME").await, "beta");
    let load_balancer = Http::new(&format!("http://127.0.0.1:{lb_port}"));
    assert_eq!(
        answer(&load_balancer, "anything", "/").await,
        "Hi from alpha\n"
    );
    wait_for(
        "the load balancer's address",
        Duration::from_secs(10),
        async || {
            let (_, gamma) = http.call("GET", &format!("{SERVICES}/gamma"), "", "").await;
            (gamma["status"]["loadBalancer"]["ingress"][0]["ip"] == "127.0.0.1").then_some(())
        },
    )
    .await;
    wait_for(
        "the Ingress's address",
        Duration::from_secs(10),
        async || {
            let path = "/apis/networking.k8s.io/v1/namespaces/default/ingresses/shop";
            let (_, shop) = http.call("GET", path, "", "").await;
            (shop["status"]["loadBalancer"]["ingress"][0]["ip"] == "127.0.0.1").then_some(())
        },
    )
    .await;

    let mut bad = rules.clone();
    bad["metadata"]["name"] = json!("bad");
    bad["spec"]["rules"][0]["http"]["paths"][1]["pathType"] = json!("Regex");
    let (status, body) = http
        .call(
            "POST",
            "/apis/networking.k8s.io/v1/namespaces/default/ingresses",
            "application/json",
            &bad.to_string(),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        body["details"]["causes"][0]["field"],
        "spec.rules[0].http.paths[1].pathType"
    );
}

/// Through a headless Service, `pod.svc` (and its longer forms) reaches that pod; a pod IP
/// is routable too: from a pod on the same node and from one on the other node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_names_and_pod_ips_reach_one_pod() {
    let cluster = TestCluster::start(2).await;
    let http = cluster.http();
    for (name, node) in [("peer-0", "node-0"), ("peer-1", "node-1")] {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "peer"}},
            "spec": {"hostname": name, "subdomain": "peers", "nodeSelector": {"kubernetes.io/hostname": node},
                "containers": [{"name": "web", "image": WEB_P2, "ports": [{"containerPort": 8080}],
                    "env": [{"name": "NAME", "value": name}]}]}});
        http.create(PODS, &pod).await;
    }
    let headless = json!({"metadata": {"name": "peers"}, "spec": {"clusterIP": "None",
        "selector": {"app": "peer"}, "ports": [{"port": 8080}]}});
    let created = http.create(SERVICES, &headless).await;
    assert_eq!(created["spec"]["clusterIP"], "None", "{created}");
    let ips = wait_for(
        "both peers ready with IPs",
        Duration::from_secs(60),
        async || {
            let (_, ep) = http
                .call("GET", "/api/v1/namespaces/default/endpoints/peers", "", "")
                .await;
            let addresses = ep["subsets"][0]["addresses"].as_array()?.clone();
            let ip_of = |pod: &str| {
                addresses
                    .iter()
                    .find(|a| a["targetRef"]["name"] == pod)
                    .and_then(|a| a["ip"].as_str().map(str::to_string))
            };
            Some((ip_of("peer-0")?, ip_of("peer-1")?))
        },
    )
    .await;
    let call = async |from: &str, target: &str| {
        let path = format!("{PODS}/{from}:8080/proxy/call/{target}");
        let (status, body) = http.raw("GET", &path, "", "").await;
        assert_eq!(status, 200, "{from} -> {target}");
        String::from_utf8_lossy(&body).into_owned()
    };
    for from in ["peer-0", "peer-1"] {
        for (target, answer) in [
            ("peer-1.peers:8080/", "200 Hello from peer-1\n"),
            ("peer-0.peers.default:8080/", "200 Hello from peer-0\n"),
            (
                "peer-1.peers.default.svc.cluster.local:8080/",
                "200 Hello from peer-1\n",
            ),
            (&format!("{}:8080/", ips.0), "200 Hello from peer-0\n"),
            (&format!("{}:8080/", ips.1), "200 Hello from peer-1\n"),
        ] {
            assert_eq!(call(from, target).await, answer, "{from} -> {target}");
        }
        let both = call(from, "peers:8080/").await;
        assert!(
            both.starts_with("200 Hello from peer-"),
            "{from} -> peers: {both}"
        );
        let path = format!("{PODS}/{from}:8080/proxy/call/peer-7.peers:8080/");
        let (status, body) = http.raw("GET", &path, "", "").await;
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, 502, "no such pod, no route: {body}");
        assert!(body.contains("HttpRequestDenied"), "{body}");
    }
}

/// An endpoint whose pod is not (or no longer) on its node gets no request lost: the node's
/// gateway says it serves nothing there, and a request without a body goes to another
/// endpoint (the window between a pod stopping and every proxy hearing of it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_for_a_vanished_endpoint_go_to_another() {
    let (_cluster, http, ingress) = cluster_with_ingress(2).await;
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "real"},
        "spec": {"nodeSelector": {"kubernetes.io/hostname": "node-0"},
            "containers": [{"name": "web", "image": WEB_P2, "ports": [{"containerPort": 8080}]}]}});
    http.create(PODS, &pod).await;
    let ip = wait_for("the pod's IP", Duration::from_secs(60), async || {
        let (_, pod) = http.call("GET", &format!("{PODS}/real"), "", "").await;
        (pod["status"]["phase"] == "Running")
            .then(|| pod["status"]["podIP"].as_str().map(str::to_string))
            .flatten()
    })
    .await;
    // A Service without selector: its Endpoints are ours to write, and one is a ghost.
    let service = json!({"metadata": {"name": "mixed"}, "spec": {"ports": [{"port": 80, "targetPort": 8080}]}});
    http.create(SERVICES, &service).await;
    let address = |pod: &str, ip: &str, node: &str| json!({"ip": ip, "nodeName": node, "targetRef": {"kind": "Pod", "name": pod, "namespace": "default"}});
    let endpoints = json!({"metadata": {"name": "mixed"}, "subsets": [{
        "addresses": [address("ghost", "10.244.1.250", "node-1"), address("real", &ip, "node-0")],
        "ports": [{"port": 8080}]}]});
    http.create("/api/v1/namespaces/default/endpoints", &endpoints)
        .await;
    wait_for("the route", Duration::from_secs(10), async || {
        let (status, _) = through_ingress(&ingress, "mixed.default.localhost", "/").await;
        (status == 200).then_some(())
    })
    .await;
    for _ in 0..30 {
        let (status, body) = through_ingress(&ingress, "mixed.default.localhost", "/").await;
        assert_eq!((status, body.as_str()), (200, "Hello from web\n"));
    }
}

/// Pods that resolve a named targetPort to different numbers get one EndpointSlice per port
/// set (and one Endpoints subset each); the proxy sends each to its own port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_port_resolved_two_ways_makes_two_slices() {
    let (_cluster, http, ingress) = cluster_with_ingress(1).await;
    for (name, port) in [("eight", 8080), ("nine", 9090)] {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "split"}},
            "spec": {"containers": [{"name": "web", "image": WEB_P2, "env": [{"name": "NAME", "value": name}],
                "ports": [{"name": "web", "containerPort": port}]}]}});
        http.create(PODS, &pod).await;
    }
    let service = json!({"metadata": {"name": "split"}, "spec": {"selector": {"app": "split"},
        "ports": [{"port": 80, "targetPort": "web"}]}});
    http.create(SERVICES, &service).await;
    let slices = wait_for("two slices", Duration::from_secs(60), async || {
        let (_, list) = http
            .call(
                "GET",
                "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Dsplit",
                "",
                "",
            )
            .await;
        let mut slices: Vec<(i64, Vec<String>)> = list["items"]
            .as_array()?
            .iter()
            .map(|s| {
                let port = s["ports"][0]["port"].as_i64().unwrap_or(0);
                let pods = (s["endpoints"].as_array().cloned().unwrap_or_default().iter())
                    .filter(|e| e["conditions"]["ready"] == true)
                    .filter_map(|e| e["targetRef"]["name"].as_str().map(str::to_string))
                    .collect();
                (port, pods)
            })
            .collect();
        slices.sort();
        (slices.len() == 2 && slices.iter().all(|(_, pods)| pods.len() == 1)).then_some(slices)
    })
    .await;
    assert_eq!(
        slices,
        vec![
            (8080, vec!["eight".to_string()]),
            (9090, vec!["nine".to_string()])
        ]
    );
    let mut answered = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let (status, body) = through_ingress(&ingress, "split.default.localhost", "/").await;
        assert_eq!(status, 200, "{body}");
        answered.insert(body);
    }
    assert_eq!(
        answered.into_iter().collect::<Vec<_>>(),
        ["Hello from eight\n", "Hello from nine\n"]
    );
}

/// A self-signed certificate and key (PEM) for `host`.
fn self_signed(host: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![host.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

/// GET / over TLS to `addr`, asking for `host` (SNI and Host) and trusting only `ca_pem`:
/// the answer's head and body, or the handshake's error.
async fn https_get(addr: std::net::SocketAddr, host: &str, ca_pem: &str) -> Result<String, String> {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(shoal_api::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    Ok(answer)
}

/// `shoal dev --ingress-tls-addr`: HTTPS for the hosts an Ingress lists in `spec.tls`, with
/// the certificate of the Secret it names (rotated when the Secret changes); a host no
/// Ingress lists gets no certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingress_terminates_tls_with_the_secret_an_ingress_names() {
    let mut cluster = TestCluster::start(1).await;
    let tls_addr = cluster
        .cluster
        .start_ingress_tls("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let http = cluster.http();
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "shop", "labels": {"app": "shop"}},
        "spec": {"containers": [{"name": "web", "image": WEB_P2, "ports": [{"containerPort": 8080}],
            "env": [{"name": "NAME", "value": "secure-shop"}]}]}});
    http.create(PODS, &pod).await;
    let service = json!({"metadata": {"name": "shop"}, "spec": {"selector": {"app": "shop"},
        "ports": [{"port": 80, "targetPort": 8080}]}});
    http.create(SERVICES, &service).await;
    let (cert, key) = self_signed("shop.test");
    let secret = |cert: &str, key: &str| {
        use base64::Engine;
        let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
        json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": "shop-tls"}, "data": {"tls.crt": b64(cert), "tls.key": b64(key)}})
    };
    http.create("/api/v1/namespaces/default/secrets", &secret(&cert, &key))
        .await;
    let ingress = json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "shop"},
        "spec": {"tls": [{"hosts": ["shop.test"], "secretName": "shop-tls"}],
            "rules": [{"host": "shop.test", "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "shop", "port": {"number": 80}}}}]}}]}});
    http.create(
        "/apis/networking.k8s.io/v1/namespaces/default/ingresses",
        &ingress,
    )
    .await;
    let answer = wait_for(
        "HTTPS through the ingress",
        Duration::from_secs(60),
        async || {
            https_get(tls_addr, "shop.test", &cert)
                .await
                .ok()
                .filter(|a| a.starts_with("HTTP/1.1 200"))
        },
    )
    .await;
    assert!(answer.contains("secure-shop"), "{answer}");

    // A host no Ingress lists: no certificate, the handshake fails.
    let refused = https_get(tls_addr, "other.test", &cert).await;
    assert!(refused.is_err(), "{refused:?}");

    // The Secret renewed: new handshakes present the new certificate.
    let (renewed, renewed_key) = self_signed("shop.test");
    let (status, body) = http
        .call(
            "PUT",
            "/api/v1/namespaces/default/secrets/shop-tls",
            "application/json",
            &secret(&renewed, &renewed_key).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    wait_for(
        "the renewed certificate",
        Duration::from_secs(10),
        async || https_get(tls_addr, "shop.test", &renewed).await.ok(),
    )
    .await;
    assert!(https_get(tls_addr, "shop.test", &cert).await.is_err());
}
