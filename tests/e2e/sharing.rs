//! Sharing a cluster fairly: ResourceQuotas enforced at admission (Kubernetes' message, the
//! generator `kubectl create quota`, a workload held at the quota with events until it is
//! raised, concurrent creates that never overrun it, slots given back when objects go).

use std::time::Duration;

use serde_json::{json, Value};
use shoal_tests::*;

async fn pod_names(http: &Http, namespace: &str) -> Vec<String> {
    let (_, list) = http
        .call(
            "GET",
            &format!("/api/v1/namespaces/{namespace}/pods"),
            "",
            "",
        )
        .await;
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| p["metadata"]["name"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_holds_pods_and_workloads_to_its_limits() {
    if !kubectl_available("a_quota_holds_pods_and_workloads_to_its_limits") {
        return;
    }
    // No nodes: pods stay Pending, and Pending pods count.
    let cluster = TestCluster::start(0).await;
    let kc = cluster.kubeconfig.as_path();
    let http = cluster.http();
    ok(kubectl_async(kc, &["create", "namespace", "team"]).await);
    ok(kubectl_async(
        kc,
        &[
            "create",
            "quota",
            "q1",
            "--hard=pods=2,requests.cpu=1",
            "-n",
            "team",
        ],
    )
    .await);
    for name in ["p1", "p2"] {
        let pod = pod_yaml(name, "app.wasm", &[]).replace(
            "    args: []\n",
            "    args: []\n    resources: {requests: {cpu: 100m}}\n",
        );
        ok(kubectl_stdin_async(kc, &["apply", "-n", "team", "-f", "-"], &pod).await);
    }
    let third = kubectl_stdin_async(
        kc,
        &["apply", "-n", "team", "-f", "-"],
        &pod_yaml("p3", "app.wasm", &[]),
    )
    .await;
    assert!(!third.status.success());
    assert!(
        stderr(&third).contains(
            "pods \"p3\" is forbidden: exceeded quota: q1, requested: pods=1, used: pods=2, limited: pods=2"
        ),
        "{}",
        stderr(&third)
    );
    let table = ok(kubectl_async(kc, &["get", "quota", "-n", "team"]).await);
    assert!(
        table.contains("pods: 2/2") && table.contains("requests.cpu: 200m/1"),
        "{table}"
    );
    let described = ok(kubectl_async(kc, &["describe", "quota", "q1", "-n", "team"]).await);
    let pods_row = described
        .lines()
        .find(|l| l.trim_start().starts_with("pods"))
        .unwrap_or_default();
    assert_eq!(
        pods_row.split_whitespace().collect::<Vec<_>>(),
        ["pods", "2", "2"],
        "{described}"
    );
    // A quota on CPU refuses a pod asking for more than is left, naming CPU only.
    ok(kubectl_async(
        kc,
        &[
            "patch",
            "quota",
            "q1",
            "-n",
            "team",
            "--type=merge",
            "-p",
            r#"{"spec":{"hard":{"pods":"10"}}}"#,
        ],
    )
    .await);
    let big = pod_yaml("big", "app.wasm", &[]).replace(
        "    args: []\n",
        "    args: []\n    resources: {requests: {cpu: 900m}}\n",
    );
    let refused = kubectl_stdin_async(kc, &["apply", "-n", "team", "-f", "-"], &big).await;
    assert!(
        stderr(&refused).contains(
            "requested: requests.cpu=900m, used: requests.cpu=200m, limited: requests.cpu=1"
        ),
        "{}",
        stderr(&refused)
    );

    // A Deployment of 5 in a namespace allowed 2 pods stays at 2, saying why, until raised.
    ok(kubectl_async(kc, &["create", "namespace", "busy"]).await);
    ok(kubectl_async(kc, &["create", "quota", "q", "--hard=pods=2", "-n", "busy"]).await);
    ok(kubectl_async(
        kc,
        &[
            "create",
            "deployment",
            "web",
            "--image=app.wasm",
            "--replicas=5",
            "-n",
            "busy",
        ],
    )
    .await);
    wait_for("two pods in busy", Duration::from_secs(20), async || {
        let pods = pod_names(&http, "busy").await.len();
        assert!(pods <= 2, "{pods} pods: over the quota");
        (pods == 2).then_some(())
    })
    .await;
    let events = wait_for(
        "a FailedCreate event",
        Duration::from_secs(20),
        async || {
            let events =
                ok(kubectl_async(kc, &["get", "events", "-n", "busy", "-o", "json"]).await);
            events.contains("FailedCreate").then_some(events)
        },
    )
    .await;
    assert!(events.contains("exceeded quota: q"), "{events}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        pod_names(&http, "busy").await.len(),
        2,
        "never over the quota"
    );
    ok(kubectl_async(
        kc,
        &[
            "patch",
            "quota",
            "q",
            "-n",
            "busy",
            "--type=merge",
            "-p",
            r#"{"spec":{"hard":{"pods":"5"}}}"#,
        ],
    )
    .await);
    wait_for(
        "five pods once the quota allows",
        Duration::from_secs(20),
        async || (pod_names(&http, "busy").await.len() == 5).then_some(()),
    )
    .await;
}

/// 20 concurrent creates of Secrets against a quota of 10 in a new namespace `race`: exactly
/// 10 are created, the others refused with Kubernetes' message.
async fn race_for_ten_slots(http: &Http) {
    http.create("/api/v1/namespaces", &json!({"metadata": {"name": "race"}}))
        .await;
    http.create(
        "/api/v1/namespaces/race/resourcequotas",
        &json!({"metadata": {"name": "ten"}, "spec": {"hard": {"secrets": "10", "count/secrets": "10"}}}),
    )
    .await;
    let creates = (0..20).map(|i| {
        let http = http.clone();
        tokio::spawn(async move {
            let body = json!({"metadata": {"name": format!("cm{i}")}}).to_string();
            http.call(
                "POST",
                "/api/v1/namespaces/race/secrets",
                "application/json",
                &body,
            )
            .await
        })
    });
    let mut answers = Vec::new();
    for create in creates {
        answers.push(create.await.unwrap());
    }
    let created = answers.iter().filter(|(code, _)| *code == 201).count();
    let refused: Vec<&Value> = answers
        .iter()
        .filter(|(code, _)| *code == 403)
        .map(|(_, body)| body)
        .collect();
    assert_eq!((created, refused.len()), (10, 10), "{answers:?}");
    assert!(refused[0]["message"]
        .as_str()
        .unwrap()
        .contains("exceeded quota: ten"));
    let (_, listed) = http
        .call("GET", "/api/v1/namespaces/race/secrets", "", "")
        .await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_never_overrun_a_quota_and_deletes_give_slots_back() {
    let cluster = TestCluster::start(0).await;
    let http = cluster.http();
    race_for_ten_slots(&http).await;
    let (_, listed) = http
        .call("GET", "/api/v1/namespaces/race/secrets", "", "")
        .await;

    // A deleted Secret gives its slot back (the controller recounts).
    let victim = listed["items"][0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, _) = http
        .call(
            "DELETE",
            &format!("/api/v1/namespaces/race/secrets/{victim}"),
            "",
            "",
        )
        .await;
    assert_eq!(code, 200);
    wait_for("the freed slot", Duration::from_secs(10), async || {
        let body = json!({"metadata": {"name": "again"}}).to_string();
        let (code, _) = http
            .call(
                "POST",
                "/api/v1/namespaces/race/secrets",
                "application/json",
                &body,
            )
            .await;
        (code == 201).then_some(())
    })
    .await;
    wait_for(
        "the recount to show 10 used",
        Duration::from_secs(10),
        async || {
            let (_, quota) = http
                .call("GET", "/api/v1/namespaces/race/resourcequotas/ten", "", "")
                .await;
            (quota["status"]["used"]["secrets"] == "10").then_some(())
        },
    )
    .await;
    let (code, _) = http
        .call(
            "POST",
            "/api/v1/namespaces/race/secrets",
            "application/json",
            r#"{"metadata":{"name":"eleventh"}}"#,
        )
        .await;
    assert_eq!(code, 403, "full again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_classes_give_pods_their_priority() {
    if !kubectl_available("priority_classes_give_pods_their_priority") {
        return;
    }
    let cluster = TestCluster::start(0).await;
    let kc = cluster.kubeconfig.as_path();
    ok(kubectl_async(
        kc,
        &[
            "create",
            "priorityclass",
            "high",
            "--value=1000",
            "--description=what matters",
        ],
    )
    .await);
    let classes = ok(kubectl_async(kc, &["get", "pc"]).await);
    for name in ["high", "system-cluster-critical", "system-node-critical"] {
        assert!(classes.contains(name), "{classes}");
    }
    let with_class = |name: &str, class: &str| {
        pod_yaml(name, "app.wasm", &[])
            .replace("spec:\n", &format!("spec:\n  priorityClassName: {class}\n"))
    };
    ok(kubectl_stdin_async(kc, &["apply", "-f", "-"], &with_class("important", "high")).await);
    let priority = ok(kubectl_async(
        kc,
        &[
            "get",
            "pod",
            "important",
            "-o",
            "jsonpath={.spec.priority} {.spec.preemptionPolicy}",
        ],
    )
    .await);
    assert_eq!(priority, "1000 PreemptLowerPriority");
    let unknown =
        kubectl_stdin_async(kc, &["apply", "-f", "-"], &with_class("lost", "nosuch")).await;
    assert!(
        stderr(&unknown)
            .contains("pods \"lost\" is forbidden: no PriorityClass with name nosuch was found"),
        "{}",
        stderr(&unknown)
    );
    let reserved = kubectl_async(
        kc,
        &["create", "priorityclass", "too-high", "--value=2000000000"],
    )
    .await;
    assert!(
        stderr(&reserved)
            .contains("maximum allowed value of a user defined priority is 1000000000"),
        "{}",
        stderr(&reserved)
    );
    // One global default, which pods naming no class get.
    ok(kubectl_async(
        kc,
        &[
            "create",
            "priorityclass",
            "normal",
            "--value=10",
            "--global-default",
        ],
    )
    .await);
    let second = kubectl_async(
        kc,
        &[
            "create",
            "priorityclass",
            "other",
            "--value=20",
            "--global-default",
        ],
    )
    .await;
    assert!(
        stderr(&second)
            .contains("PriorityClass normal is marked as default. Only one default can exist"),
        "{}",
        stderr(&second)
    );
    ok(kubectl_stdin_async(
        kc,
        &["apply", "-f", "-"],
        &pod_yaml("plain", "app.wasm", &[]),
    )
    .await);
    let plain = ok(kubectl_async(
        kc,
        &[
            "get",
            "pod",
            "plain",
            "-o",
            "jsonpath={.spec.priorityClassName} {.spec.priority}",
        ],
    )
    .await);
    assert_eq!(plain, "normal 10");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evictions_respect_disruption_budgets() {
    if !kubectl_available("evictions_respect_disruption_budgets") {
        return;
    }
    // No nodes: the test marks the pods Ready itself, as an agent would.
    let cluster = TestCluster::start(0).await;
    let kc = cluster.kubeconfig.as_path();
    let http = cluster.http();
    for name in ["w1", "w2", "w3"] {
        let pod = pod_yaml(name, "app.wasm", &[]).replace("app: hello", "app: web");
        ok(kubectl_stdin_async(kc, &["apply", "-f", "-"], &pod).await);
        let ready = json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}});
        let (code, body) = http
            .call(
                "PATCH",
                &format!("/api/v1/namespaces/default/pods/{name}/status"),
                "application/strategic-merge-patch+json",
                &ready.to_string(),
            )
            .await;
        assert_eq!(code, 200, "{body}");
    }
    // With no node, the scheduler marks each pod PodScheduled=False, before or after the
    // Ready above: merged by type, neither condition drops the other (a merge patch of the
    // scheduler's once replaced them, and the budget then never saw its pods healthy).
    for name in ["w1", "w2", "w3"] {
        wait_for("both conditions", Duration::from_secs(30), async || {
            let (_, pod) = http
                .call(
                    "GET",
                    &format!("/api/v1/namespaces/default/pods/{name}"),
                    "",
                    "",
                )
                .await;
            let conditions = pod["status"]["conditions"].as_array()?.clone();
            let has = |kind: &str, status: &str| {
                conditions
                    .iter()
                    .any(|c| c["type"] == kind && c["status"] == status)
            };
            (has("PodScheduled", "False") && has("Ready", "True")).then_some(())
        })
        .await;
    }
    ok(kubectl_async(
        kc,
        &[
            "create",
            "poddisruptionbudget",
            "web",
            "--selector=app=web",
            "--min-available=2",
        ],
    )
    .await);
    let table = wait_for("the budget's status", Duration::from_secs(30), async || {
        let table = ok(kubectl_async(kc, &["get", "pdb", "web"]).await);
        let row: Vec<String> = table
            .lines()
            .nth(1)?
            .split_whitespace()
            .map(String::from)
            .collect();
        (row.get(3).map(String::as_str) == Some("1")).then_some(table)
    })
    .await;
    assert!(table.contains("MIN AVAILABLE"), "{table}");
    let evict = async |name: &str| {
        let body = json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": "default"}});
        http.call(
            "POST",
            &format!("/api/v1/namespaces/default/pods/{name}/eviction"),
            "application/json",
            &body.to_string(),
        )
        .await
    };
    let (code, body) = evict("w1").await;
    assert_eq!(code, 201, "{body}");
    // The budget is spent: the next eviction waits (429), as kubectl drain expects.
    let (code, body) = evict("w2").await;
    assert_eq!(code, 429, "{body}");
    assert_eq!(body["reason"], "TooManyRequests");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("Cannot evict pod as it would violate the pod's disruption budget"),
        "{body}"
    );
    let pdb = ok(kubectl_async(
        kc,
        &[
            "get",
            "pdb",
            "web",
            "-o",
            "jsonpath={.status.disruptionsAllowed}",
        ],
    )
    .await);
    assert_eq!(pdb, "0");
    // A budget with both fields set is refused naming them.
    let both = "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: bad}\nspec: {minAvailable: 1, maxUnavailable: 1, selector: {matchLabels: {app: web}}}\n";
    let refused = kubectl_stdin_async(kc, &["apply", "-f", "-"], both).await;
    assert!(
        stderr(&refused).contains("minAvailable and maxUnavailable cannot be both set"),
        "{}",
        stderr(&refused)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_ranges_default_and_bound_containers() {
    if !kubectl_available("limit_ranges_default_and_bound_containers") {
        return;
    }
    let cluster = TestCluster::start(0).await;
    let kc = cluster.kubeconfig.as_path();
    let range = "apiVersion: v1\nkind: LimitRange\nmetadata: {name: bounds}\nspec:\n  limits:\n  - type: Container\n    default: {cpu: 500m, memory: 128Mi}\n    defaultRequest: {cpu: 100m, memory: 64Mi}\n    max: {cpu: '1', memory: 256Mi}\n";
    ok(kubectl_stdin_async(kc, &["apply", "-f", "-"], range).await);
    ok(kubectl_stdin_async(
        kc,
        &["apply", "-f", "-"],
        &pod_yaml("plain", "app.wasm", &[]),
    )
    .await);
    let resources = ok(kubectl_async(
        kc,
        &[
            "get",
            "pod",
            "plain",
            "-o",
            "jsonpath={.spec.containers[0].resources}",
        ],
    )
    .await);
    let resources: Value = serde_json::from_str(&resources).unwrap();
    assert_eq!(
        resources,
        json!({"limits": {"cpu": "500m", "memory": "128Mi"}, "requests": {"cpu": "100m", "memory": "64Mi"}})
    );
    let big = pod_yaml("big", "app.wasm", &[]).replace(
        "    args: []\n",
        "    args: []\n    resources: {limits: {cpu: '2'}}\n",
    );
    let refused = kubectl_stdin_async(kc, &["apply", "-f", "-"], &big).await;
    assert!(
        stderr(&refused).contains(
            "pods \"big\" is forbidden: maximum cpu usage per Container is 1, but limit is 2"
        ),
        "{}",
        stderr(&refused)
    );
    let listed = ok(kubectl_async(kc, &["get", "limits"]).await);
    assert!(listed.contains("bounds"), "{listed}");
    let bad = "apiVersion: v1\nkind: LimitRange\nmetadata: {name: bad}\nspec:\n  limits:\n  - type: Container\n    min: {cpu: '2'}\n    max: {cpu: '1'}\n";
    let invalid = kubectl_stdin_async(kc, &["apply", "-f", "-"], bad).await;
    assert!(
        stderr(&invalid).contains("spec.limits[0].max[cpu]"),
        "{}",
        stderr(&invalid)
    );
}

/// On a full node (room for 2 pods), a high-priority pod preempts the lowest-priority pod,
/// and a pod of equal priority preempts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_priority_pod_preempts_a_lower_one_on_a_full_node() {
    if !kubectl_available("a_high_priority_pod_preempts_a_lower_one_on_a_full_node") {
        return;
    }
    let cluster = TestCluster::start_with(1, |config| config.max_pods = 2).await;
    let kc = cluster.kubeconfig.as_path();
    let http = cluster.http();
    ok(kubectl_async(kc, &["create", "priorityclass", "vip", "--value=1000"]).await);
    let web = |name: &str, class: Option<&str>| {
        let class = class.map_or(String::new(), |c| format!("  priorityClassName: {c}\n"));
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n{class}  containers:\n  - name: web\n    image: {}\n    ports: [{{containerPort: 8080}}]\n",
            shoal_examples::WEB_P2
        )
    };
    for name in ["low-1", "low-2"] {
        ok(kubectl_stdin_async(kc, &["apply", "-f", "-"], &web(name, None)).await);
        wait_phase(&http, "default", name, "Running").await;
    }
    // low-2, the newer, is what preemption would take among equals; a budget with no
    // disruption left guards it, so low-1 is taken instead.
    ok(kubectl_async(kc, &["label", "pod", "low-2", "guarded=yes"]).await);
    ok(kubectl_async(
        kc,
        &[
            "create",
            "pdb",
            "guard",
            "--selector=guarded=yes",
            "--min-available=1",
        ],
    )
    .await);
    wait_for("the budget's status", Duration::from_secs(30), async || {
        let (_, pdb) = http
            .call(
                "GET",
                "/apis/policy/v1/namespaces/default/poddisruptionbudgets/guard",
                "",
                "",
            )
            .await;
        (pdb["status"]["currentHealthy"] == 1).then_some(())
    })
    .await;
    let mut victim = EventReader::new(
        http.stream(
            "/api/v1/namespaces/default/pods?watch=true&fieldSelector=metadata.name%3Dlow-1",
        )
        .await,
    );
    ok(kubectl_stdin_async(kc, &["apply", "-f", "-"], &web("equal", None)).await);
    ok(kubectl_stdin_async(kc, &["apply", "-f", "-"], &web("important", Some("vip"))).await);
    wait_phase(&http, "default", "important", "Running").await;
    let names = pod_names(&http, "default").await;
    let lows: Vec<&String> = names.iter().filter(|n| n.starts_with("low-")).collect();
    assert_eq!(
        lows,
        ["low-2"],
        "the unguarded pod is the victim: {names:?}"
    );
    let events = ok(kubectl_async(kc, &["get", "events", "-o", "json"]).await);
    assert!(
        events.contains("Preempted by pod default/important (priority 1000) on node node-0"),
        "{events}"
    );
    // The victim was marked as a disruption target, and kept the mark to its end (the
    // agent's status writes merge conditions by type).
    let mut last = Value::Null;
    while let Some(event) = victim.next(Duration::from_secs(10)).await {
        let deleted = event["type"] == "DELETED";
        last = event["object"].clone();
        if deleted {
            break;
        }
    }
    let target = last["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "DisruptionTarget");
    assert_eq!(
        target.map(|c| c["reason"].clone()),
        Some(json!("PreemptionByScheduler")),
        "{last}"
    );
    // The pod of equal priority evicted nobody and waits, marked unschedulable.
    assert_eq!(pod_phase(&http, "default", "equal").await, "Pending");
}

/// On etcd, where quota charges are judged outside the store's commits and batched per
/// namespace, concurrent creates never overrun a quota either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_on_etcd_never_overrun_a_quota() {
    if !etcd::etcd_available("concurrent_creates_on_etcd_never_overrun_a_quota") {
        return;
    }
    let etcd = etcd::EtcdCluster::start(3);
    let endpoints = etcd.endpoints().join(",");
    let dir = tempfile::tempdir().unwrap();
    let (_server, _) = start_server(dir.path(), &["--etcd-servers", endpoints.as_str()]);
    let http = Http::from_kubeconfig(&server_kubeconfig(dir.path()));
    race_for_ten_slots(&http).await;
}
