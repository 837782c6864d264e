//! `shoal server` with two `shoal agent` processes: pods land on both nodes and run, and their
//! logs come back through the API server from each node's agent.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};
use shoal_examples::{HELLO_P1, HELLO_P2, WEB_P2};
use shoal_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_run_on_two_agent_processes() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, url) = start_server(dir.path(), &[]);
    let _agents: Vec<Process> = ["alpha", "beta"]
        .iter()
        .map(|name| start_agent(dir.path(), &url, name, &[]))
        .collect();
    let http = Http::from_kubeconfig(&server_kubeconfig(dir.path()));
    wait_for(
        "both nodes to be registered",
        Duration::from_secs(30),
        async || {
            let (_, nodes) = http.call("GET", "/api/v1/nodes", "", "").await;
            (nodes["items"].as_array().map(Vec::len) == Some(2)).then_some(())
        },
    )
    .await;

    for i in 0..6 {
        let image = if i % 2 == 0 { HELLO_P1 } else { HELLO_P2 };
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("spread-{i}")},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": image, "args": [format!("pod {i}")]}]}});
        let (status, body) = http
            .call(
                "POST",
                "/api/v1/namespaces/default/pods",
                "application/json",
                &pod.to_string(),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let mut nodes = BTreeSet::new();
    for i in 0..6 {
        let name = format!("spread-{i}");
        wait_phase(&http, "default", &name, "Succeeded").await;
        let (_, pod) = http
            .call(
                "GET",
                &format!("/api/v1/namespaces/default/pods/{name}"),
                "",
                "",
            )
            .await;
        nodes.insert(pod["spec"]["nodeName"].as_str().unwrap().to_string());
        let (status, log) = http
            .raw(
                "GET",
                &format!("/api/v1/namespaces/default/pods/{name}/log"),
                "",
                "",
            )
            .await;
        assert_eq!(status, 200);
        assert!(
            std::str::from_utf8(&log)
                .unwrap()
                .starts_with(&format!("Hello, pod {i}!")),
            "{log:?}"
        );
        let _: &Value = &pod;
    }
    assert_eq!(
        nodes,
        BTreeSet::from(["alpha".to_string(), "beta".to_string()])
    );

    // A pod calls a Service by name: on its own node (in-process) and from the other agent
    // process (through the backend node's gateway).
    let web = |name: &str, node: &str, app: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": app}},
            "spec": {"nodeSelector": {"kubernetes.io/hostname": node}, "containers": [{"name": "web", "image": WEB_P2,
                "ports": [{"containerPort": 8080}], "env": [{"name": "NAME", "value": name}]}]}})
    };
    http.create(
        "/api/v1/namespaces/default/pods",
        &web("backend", "alpha", "backend"),
    )
    .await;
    for (caller, node) in [("near", "alpha"), ("far", "beta")] {
        http.create(
            "/api/v1/namespaces/default/pods",
            &web(caller, node, "caller"),
        )
        .await;
    }
    let service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "backend"},
        "spec": {"selector": {"app": "backend"}, "ports": [{"port": 80, "targetPort": 8080}]}});
    http.create("/api/v1/namespaces/default/services", &service)
        .await;
    for caller in ["near", "far"] {
        let path = format!("/api/v1/namespaces/default/pods/{caller}:8080/proxy/call/backend/");
        let answer = wait_for(
            &format!("{caller} to reach Service backend"),
            Duration::from_secs(30),
            async || {
                let (status, body) = http.raw("GET", &path, "", "").await;
                let body = String::from_utf8_lossy(&body).into_owned();
                (status == 200 && body.starts_with("200 ")).then_some(body)
            },
        )
        .await;
        assert_eq!(answer, "200 Hello from backend\n", "{caller}");
    }
}

/// Self-healing: an agent killed with SIGKILL stops renewing its lease; its node turns
/// unreachable, its pods are evicted, and the ReplicaSet brings them back on the other nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_of_a_killed_agent_run_again_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, url) = start_server(dir.path(), &["--pod-eviction-timeout-seconds", "1"]);
    let lease = [
        "--lease-duration-seconds",
        "2",
        "--lease-renew-seconds",
        "1",
    ];
    let mut agents = std::collections::HashMap::new();
    for name in ["a", "b", "c"] {
        agents.insert(
            name.to_string(),
            start_agent(dir.path(), &url, name, &lease),
        );
    }
    let http = Http::from_kubeconfig(&server_kubeconfig(dir.path()));
    let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "healer"},
        "spec": {"replicas": 6, "selector": {"matchLabels": {"app": "healer"}},
            "template": {"metadata": {"labels": {"app": "healer"}}, "spec": {"containers": [
                {"name": "web", "image": shoal_examples::WEB_P2, "ports": [{"containerPort": 8080}]}]}}}});
    let (status, body) = http
        .call(
            "POST",
            "/apis/apps/v1/namespaces/default/replicasets",
            "application/json",
            &rs.to_string(),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let ready_on = async |http: &Http| -> Vec<String> {
        let (_, list) = http
            .call(
                "GET",
                "/api/v1/namespaces/default/pods?labelSelector=app%3Dhealer",
                "",
                "",
            )
            .await;
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .filter(|p| {
                p["status"]["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
            })
            .map(|p| p["spec"]["nodeName"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let nodes = wait_for("6 ready pods", Duration::from_secs(60), async || {
        let nodes = ready_on(&http).await;
        (nodes.len() == 6).then_some(nodes)
    })
    .await;
    let victim = nodes[0].clone();
    agents
        .get(&victim)
        .unwrap()
        .signal(nix::sys::signal::Signal::SIGKILL);
    let killed = std::time::Instant::now();
    wait_for(
        "6 ready pods off the killed node",
        Duration::from_secs(60),
        async || {
            let nodes = ready_on(&http).await;
            (nodes.len() == 6 && !nodes.contains(&victim)).then_some(())
        },
    )
    .await;
    let healed = killed.elapsed();
    // Lease of 2 s, eviction after 1 s more: the pods must be back within 10 s after that.
    assert!(healed < Duration::from_secs(13), "healing took {healed:?}");
    let (_, node) = http
        .call("GET", &format!("/api/v1/nodes/{victim}"), "", "")
        .await;
    let ready = node["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready["status"], "Unknown", "{node}");
    assert!(node["spec"]["taints"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["key"] == "node.kubernetes.io/unreachable"));
    eprintln!("pods of the killed agent ran again elsewhere {healed:?} after SIGKILL");
}

/// NetworkPolicy, from the pods' own guest code, on one node and across two agent processes:
/// an ingress policy admits only `role=frontend` pods to the backend, and an egress policy
/// keeps the frontends to the backend alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_policies_decide_which_pods_talk() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, url) = start_server(dir.path(), &[]);
    let _agents: Vec<Process> = ["alpha", "beta"]
        .iter()
        .map(|name| start_agent(dir.path(), &url, name, &[]))
        .collect();
    let http = Http::from_kubeconfig(&server_kubeconfig(dir.path()));
    let web = |name: &str, node: &str, labels: Value| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
            "spec": {"nodeSelector": {"kubernetes.io/hostname": node}, "containers": [{"name": "web", "image": WEB_P2,
                "ports": [{"containerPort": 8080}], "env": [{"name": "NAME", "value": name}]}]}})
    };
    let pods = [
        ("backend", "alpha", json!({"app": "backend"})),
        ("elsewhere", "alpha", json!({"app": "elsewhere"})),
        ("front-near", "alpha", json!({"role": "frontend"})),
        ("plain-near", "alpha", json!({"role": "batch"})),
        ("front-far", "beta", json!({"role": "frontend"})),
        ("plain-far", "beta", json!({})),
    ];
    for (name, node, labels) in &pods {
        http.create(
            "/api/v1/namespaces/default/pods",
            &web(name, node, labels.clone()),
        )
        .await;
    }
    for (service, app) in [("backend", "backend"), ("elsewhere", "elsewhere")] {
        let object = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": service},
            "spec": {"selector": {"app": app}, "ports": [{"port": 80, "targetPort": 8080}]}});
        http.create("/api/v1/namespaces/default/services", &object)
            .await;
    }
    for (name, _, _) in &pods {
        wait_ready(&http, "default", name).await;
    }
    let call = async |caller: &str, service: &str| -> String {
        let path = format!("/api/v1/namespaces/default/pods/{caller}:8080/proxy/call/{service}/");
        let (_, body) = http.raw("GET", &path, "", "").await;
        String::from_utf8_lossy(&body).into_owned()
    };
    // Open by default: every caller reaches the backend.
    for (caller, _, _) in &pods[2..] {
        let answer = wait_for(
            &format!("{caller} to reach the backend"),
            Duration::from_secs(30),
            async || {
                let answer = call(caller, "backend").await;
                answer.starts_with("200 ").then_some(answer)
            },
        )
        .await;
        assert_eq!(answer, "200 Hello from backend\n", "{caller}");
    }

    let policy = async |object: Value| {
        let (status, body) = http
            .call(
                "POST",
                "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies",
                "application/json",
                &object.to_string(),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    };
    policy(
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "backend-from-frontends"},
        "spec": {"podSelector": {"matchLabels": {"app": "backend"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "frontend"}}}],
                         "ports": [{"port": 8080}]}]}}),
    )
    .await;
    let refused = wait_for(
        "the ingress policy to apply",
        Duration::from_secs(20),
        async || {
            let answer = call("plain-near", "backend").await;
            answer.starts_with("403 ").then_some(answer)
        },
    )
    .await;
    assert!(refused.contains("no ingress rule"), "{refused}");
    let refused = wait_for(
        "the ingress policy to apply on beta",
        Duration::from_secs(20),
        async || {
            let answer = call("plain-far", "backend").await;
            answer.starts_with("403 ").then_some(answer)
        },
    )
    .await;
    assert!(refused.contains("no ingress rule"), "{refused}");
    for caller in ["front-near", "front-far"] {
        assert_eq!(
            call(caller, "backend").await,
            "200 Hello from backend\n",
            "{caller}"
        );
    }
    // The unselected Service stays open to everyone.
    assert_eq!(
        call("plain-far", "elsewhere").await,
        "200 Hello from elsewhere\n"
    );

    policy(
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "frontends-to-backend-only"},
        "spec": {"podSelector": {"matchLabels": {"role": "frontend"}}, "policyTypes": ["Egress"],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "backend"}}}]}]}}),
    )
    .await;
    for caller in ["front-near", "front-far"] {
        let refused = wait_for(
            &format!("the egress policy to apply to {caller}"),
            Duration::from_secs(20),
            async || {
                let answer = call(caller, "elsewhere").await;
                answer.starts_with("403 ").then_some(answer)
            },
        )
        .await;
        assert!(refused.contains("no egress rule"), "{refused}");
        assert_eq!(
            call(caller, "backend").await,
            "200 Hello from backend\n",
            "{caller}"
        );
    }
    assert_eq!(
        call("plain-near", "elsewhere").await,
        "200 Hello from elsewhere\n"
    );

    // A policy with a bad peer is refused, naming the field, and changes nothing.
    let (status, body) = http
        .call(
            "POST",
            "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies",
            "application/json",
            &json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": "bad"},
                "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}})
            .to_string(),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        body["details"]["causes"][0]["field"],
        "spec.ingress[0].from[0].ipBlock.cidr"
    );
    assert_eq!(
        call("front-near", "backend").await,
        "200 Hello from backend\n"
    );
}
