//! Unmodified kubectl against `shoal dev`: apply, wait, logs, get -o wide, get -w, delete.

use std::process::{Command, Stdio};
use std::time::Duration;

use shoal_examples::{HELLO_P1, HELLO_P2};
use shoal_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_runs_hello_pods_end_to_end() {
    if !kubectl_available("kubectl_runs_hello_pods_end_to_end") {
        return;
    }
    let cluster = TestCluster::start(1).await;
    let kubeconfig = cluster.kubeconfig.clone();
    let http = cluster.http();

    // A watch started before anything exists streams what follows.
    let watch_log = cluster.dir.path().join("watch.log");
    let mut watch = Command::new("kubectl")
        .args([
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--cache-dir",
            cluster.dir.path().join("watch-cache").to_str().unwrap(),
        ])
        .args(["get", "pods", "-w"])
        .stdout(std::fs::File::create(&watch_log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let manifest = format!(
        "{}---\n{}",
        pod_yaml("hello-p1", HELLO_P1, &["kubectl"]),
        pod_yaml("hello-p2", HELLO_P2, &["kubectl"])
    );
    let applied = ok(kubectl_stdin_async(&kubeconfig, &["apply", "-f", "-"], &manifest).await);
    assert!(
        applied.contains("pod/hello-p1 created") && applied.contains("pod/hello-p2 created"),
        "{applied}"
    );
    wait_phase(&http, "default", "hello-p1", "Succeeded").await;
    wait_phase(&http, "default", "hello-p2", "Succeeded").await;

    let log = ok(kubectl_async(&kubeconfig, &["logs", "hello-p1"]).await);
    assert_eq!(log, "Hello, kubectl! (from a wasip1 module)\n");
    let log = ok(kubectl_async(&kubeconfig, &["logs", "hello-p2"]).await);
    assert_eq!(log, "Hello, kubectl! (from a wasip2 component)\n");

    let wide = ok(kubectl_async(&kubeconfig, &["get", "pods", "-o", "wide"]).await);
    let row = wide
        .lines()
        .find(|l| l.starts_with("hello-p1"))
        .unwrap_or_else(|| panic!("{wide}"));
    assert!(
        row.contains("Completed") && row.contains("node-0") && row.contains("10.244."),
        "{wide}"
    );
    assert!(wide.lines().next().unwrap().contains("NODE"), "{wide}");

    // Re-applying the same manifest changes nothing.
    let again = ok(kubectl_stdin_async(&kubeconfig, &["apply", "-f", "-"], &manifest).await);
    assert!(again.contains("pod/hello-p1 unchanged"), "{again}");

    tokio::time::sleep(Duration::from_millis(500)).await;
    watch.kill().unwrap();
    watch.wait().unwrap();
    let streamed = std::fs::read_to_string(&watch_log).unwrap();
    let p1_rows: Vec<&str> = streamed
        .lines()
        .filter(|l| l.starts_with("hello-p1"))
        .collect();
    assert!(
        p1_rows.len() >= 2,
        "expected several watch rows for hello-p1:\n{streamed}"
    );
    assert!(
        p1_rows.iter().any(|l| l.contains("Completed")),
        "{streamed}"
    );

    // `logs -f` streams a running container's lines and ends when the container does.
    ok(kubectl_stdin_async(
        &kubeconfig,
        &["apply", "-f", "-"],
        &pod_yaml(
            "follower",
            HELLO_P1,
            &["follow", "--lines", "3", "--sleep-ms", "1500"],
        ),
    )
    .await);
    wait_phase(&http, "default", "follower", "Running").await;
    let started = std::time::Instant::now();
    let followed = ok(kubectl_async(&kubeconfig, &["logs", "-f", "follower"]).await);
    assert_eq!(
        followed,
        "Hello, follow! (from a wasip1 module)\nline 1\nline 2\nline 3\n"
    );
    // The guest sleeps 1.5 s after its last line; -f must have waited for it to end.
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(1000),
        "-f returned after {:?}",
        started.elapsed()
    );
    wait_phase(&http, "default", "follower", "Succeeded").await;

    // describe shows what the scheduler and the agent did.
    let described = ok(kubectl_async(&kubeconfig, &["describe", "pod", "follower"]).await);
    assert!(
        described.contains("Scheduled")
            && described.contains("Successfully assigned default/follower to node-0"),
        "{described}"
    );
    assert!(described.contains("Started container main"), "{described}");

    let deleted = ok(kubectl_async(
        &kubeconfig,
        &["delete", "pod", "hello-p1", "hello-p2", "follower"],
    )
    .await);
    assert!(deleted.contains("pod \"hello-p1\" deleted"), "{deleted}");
    let left = kubectl_async(&kubeconfig, &["get", "pods"]).await;
    assert!(
        stderr(&left).contains("No resources found"),
        "{} {}",
        stdout(&left),
        stderr(&left)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_reports_bad_manifests() {
    if !kubectl_available("kubectl_reports_bad_manifests") {
        return;
    }
    let cluster = TestCluster::start(1).await;
    let kubeconfig = cluster.kubeconfig.clone();
    let check = async |manifest: &str, expected: &str| {
        let out = kubectl_stdin_async(&kubeconfig, &["apply", "-f", "-"], manifest).await;
        assert!(!out.status.success(), "{manifest} was accepted");
        assert!(
            stderr(&out).contains(expected),
            "expected {expected:?} in: {}",
            stderr(&out)
        );
    };
    check(
        "apiVersion: v1\nkind: Pod\nmetadata: [\n",
        "error converting YAML to JSON",
    )
    .await;
    check(
        "apiVersion: v1\nkind: Widget\nmetadata:\n  name: w\n",
        "no matches for kind \"Widget\"",
    )
    .await;
    check(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: empty\nspec:\n  containers: []\n",
        "spec.containers: Required value",
    )
    .await;
    check(
        &pod_yaml("Bad_Name", HELLO_P1, &[]),
        "metadata.name: Invalid value: \"Bad_Name\"",
    )
    .await;
    let pods = ok(kubectl_async(&kubeconfig, &["get", "pods", "-o", "name"]).await);
    assert_eq!(pods, "", "nothing was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_explain_shows_the_kubernetes_field_descriptions() {
    if !kubectl_available("kubectl_explain_shows_the_kubernetes_field_descriptions") {
        return;
    }
    let cluster = TestCluster::start(0).await;
    let kubeconfig = cluster.kubeconfig.clone();
    let strategy = ok(kubectl_async(&kubeconfig, &["explain", "deployment.spec.strategy"]).await);
    assert!(strategy.contains("GROUP:      apps"), "{strategy}");
    assert!(
        strategy.contains("FIELD: strategy <DeploymentStrategy>"),
        "{strategy}"
    );
    assert!(
        strategy.contains("The deployment strategy to use to replace existing pods with new ones."),
        "{strategy}"
    );
    assert!(
        strategy.contains("rollingUpdate\t<RollingUpdateDeployment>"),
        "{strategy}"
    );
    let ports = ok(kubectl_async(&kubeconfig, &["explain", "svc.spec.ports.targetPort"]).await);
    assert!(ports.contains("FIELD: targetPort"), "{ports}");
    assert!(
        ports.contains("Number or name of the port to access on the pods"),
        "{ports}"
    );
    let recursive = ok(kubectl_async(&kubeconfig, &["explain", "pods.spec", "--recursive"]).await);
    for field in [
        "containers\t<[]Container>",
        "readinessProbe\t<Probe>",
        "httpGet\t<HTTPGetAction>",
    ] {
        assert!(
            recursive.contains(field),
            "{field} missing from: {recursive}"
        );
    }
    let missing = kubectl_async(&kubeconfig, &["explain", "deployment.spec.nope"]).await;
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("field \"nope\" does not exist"),
        "{}",
        stderr(&missing)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_label_and_annotate_honour_overwrite_and_resource_version() {
    if !kubectl_available("kubectl_label_and_annotate_honour_overwrite_and_resource_version") {
        return;
    }
    let cluster = TestCluster::start(0).await;
    let kc = cluster.kubeconfig.clone();
    ok(kubectl_async(&kc, &["create", "configmap", "c", "--from-literal=k=v"]).await);
    ok(kubectl_async(&kc, &["label", "configmap", "c", "tier=web"]).await);
    let again = kubectl_async(&kc, &["label", "configmap", "c", "tier=db"]).await;
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("--overwrite is false"),
        "{}",
        stderr(&again)
    );
    ok(kubectl_async(&kc, &["label", "configmap", "c", "tier=db", "--overwrite"]).await);
    ok(kubectl_async(&kc, &["annotate", "configmap", "c", "note=hi"]).await);
    let current = ok(kubectl_async(
        &kc,
        &[
            "get",
            "configmap",
            "c",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ],
    )
    .await);
    // A stale resourceVersion is a conflict and changes nothing; the current one passes.
    let stale = kubectl_async(
        &kc,
        &["label", "configmap", "c", "x=1", "--resource-version=1"],
    )
    .await;
    assert!(!stale.status.success());
    assert!(
        stderr(&stale).contains("the object has been modified"),
        "{}",
        stderr(&stale)
    );
    let labels = ok(kubectl_async(
        &kc,
        &["get", "configmap", "c", "-o", "jsonpath={.metadata.labels}"],
    )
    .await);
    assert_eq!(labels, r#"{"tier":"db"}"#);
    ok(kubectl_async(
        &kc,
        &[
            "annotate",
            "configmap",
            "c",
            "owner=me",
            &format!("--resource-version={current}"),
        ],
    )
    .await);
    let annotations = ok(kubectl_async(
        &kc,
        &[
            "get",
            "configmap",
            "c",
            "-o",
            "jsonpath={.metadata.annotations.owner}",
        ],
    )
    .await);
    assert_eq!(annotations, "me");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_wait_diff_dry_run_and_taint_work() {
    if !kubectl_available("kubectl_wait_diff_dry_run_and_taint_work") {
        return;
    }
    let cluster = TestCluster::start(1).await;
    let kc = cluster.kubeconfig.clone();
    let manifest = |value: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  k: {value}\n")
    };

    // --dry-run=server answers with the object and stores nothing.
    let dry = ok(kubectl_stdin_async(
        &kc,
        &["apply", "--dry-run=server", "-f", "-"],
        &manifest("v"),
    )
    .await);
    assert!(dry.contains("(server dry run)"), "{dry}");
    let missing = kubectl_async(&kc, &["get", "configmap", "c"]).await;
    assert!(
        stderr(&missing).contains("not found"),
        "{}",
        stderr(&missing)
    );
    ok(kubectl_stdin_async(&kc, &["apply", "-f", "-"], &manifest("v")).await);

    // diff: nothing to say for the same manifest (exit 0), the change and exit 1 otherwise.
    let same = kubectl_stdin_async(&kc, &["diff", "-f", "-"], &manifest("v")).await;
    assert_eq!(same.status.code(), Some(0), "{}", stderr(&same));
    let changed = kubectl_stdin_async(&kc, &["diff", "-f", "-"], &manifest("w")).await;
    assert_eq!(changed.status.code(), Some(1), "{}", stderr(&changed));
    assert!(
        stdout(&changed).contains("-  k: v") && stdout(&changed).contains("+  k: w"),
        "{}",
        stdout(&changed)
    );
    let unchanged =
        ok(kubectl_async(&kc, &["get", "configmap", "c", "-o", "jsonpath={.data.k}"]).await);
    assert_eq!(unchanged, "v", "diff changed nothing");

    // wait: for a condition, a JSONPath value and a deletion.
    ok(kubectl_async(
        &kc,
        &[
            "wait",
            "--for=condition=Ready",
            "node/node-0",
            "--timeout=30s",
        ],
    )
    .await);
    ok(kubectl_async(
        &kc,
        &[
            "wait",
            "--for=jsonpath={.data.k}=v",
            "configmap/c",
            "--timeout=10s",
        ],
    )
    .await);
    let timed_out = kubectl_async(
        &kc,
        &[
            "wait",
            "--for=jsonpath={.data.k}=nope",
            "configmap/c",
            "--timeout=1s",
        ],
    )
    .await;
    assert!(!timed_out.status.success());
    let deleting = tokio::spawn({
        let kc = kc.clone();
        async move {
            kubectl_async(
                &kc,
                &["wait", "--for=delete", "configmap/c", "--timeout=30s"],
            )
            .await
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    ok(kubectl_async(&kc, &["delete", "configmap", "c"]).await);
    let deleted = ok(deleting.await.unwrap());
    assert!(deleted.contains("condition met"), "{deleted}");

    // taint and untaint a node.
    let taints = async || {
        ok(kubectl_async(
            &kc,
            &[
                "get",
                "node",
                "node-0",
                "-o",
                "jsonpath={.spec.taints[*].key}",
            ],
        )
        .await)
    };
    ok(kubectl_async(
        &kc,
        &["taint", "nodes", "node-0", "dedicated=web:NoSchedule"],
    )
    .await);
    assert!(taints().await.contains("dedicated"));
    ok(kubectl_async(
        &kc,
        &["taint", "nodes", "node-0", "dedicated=web:NoSchedule-"],
    )
    .await);
    assert!(!taints().await.contains("dedicated"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_everyday_commands_work() {
    if !kubectl_available("kubectl_everyday_commands_work") {
        return;
    }
    let cluster = TestCluster::start(1).await;
    let kc = cluster.kubeconfig.clone();
    let run = async |args: &[&str]| ok(kubectl_async(&kc, args).await);

    let resources = run(&["api-resources", "-o", "wide"]).await;
    assert!(
        resources.contains("deployments") && resources.contains("apps/v1"),
        "{resources}"
    );
    let versions = run(&["api-versions"]).await;
    assert!(
        versions
            .lines()
            .any(|l| l == "rbac.authorization.k8s.io/v1"),
        "{versions}"
    );

    run(&[
        "create",
        "deployment",
        "web",
        "--image",
        shoal_examples::WEB_P2,
        "--port=8080",
    ])
    .await;
    let exposed = run(&[
        "expose",
        "deployment",
        "web",
        "--port=80",
        "--target-port=8080",
    ])
    .await;
    assert!(exposed.contains("service/web exposed"), "{exposed}");
    let selector = run(&[
        "get",
        "service",
        "web",
        "-o",
        "jsonpath={.spec.selector.app}",
    ])
    .await;
    assert_eq!(selector, "web");

    // replace with a changed manifest; edit through an editor that rewrites the file.
    let manifest = |value: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  k: {value}\n")
    };
    ok(kubectl_stdin_async(&kc, &["create", "-f", "-"], &manifest("v1")).await);
    ok(kubectl_stdin_async(&kc, &["replace", "-f", "-"], &manifest("v2")).await);
    let mut edit = std::process::Command::new("kubectl");
    edit.args([
        "--kubeconfig",
        kc.to_str().unwrap(),
        "edit",
        "configmap",
        "c",
    ])
    .env("KUBE_EDITOR", "sed -i s/k:\\ v2/k:\\ v3/");
    let edited = tokio::task::spawn_blocking(move || edit.output().unwrap())
        .await
        .unwrap();
    assert!(edited.status.success(), "{}", stderr(&edited));
    assert_eq!(
        run(&["get", "configmap", "c", "-o", "jsonpath={.data.k}"]).await,
        "v3"
    );

    // Field selectors, cordon and uncordon, events from the controllers.
    let named = run(&[
        "get",
        "configmaps",
        "--field-selector=metadata.name=c",
        "-o",
        "name",
    ])
    .await;
    assert_eq!(named.trim(), "configmap/c");
    run(&["cordon", "node-0"]).await;
    assert_eq!(
        run(&[
            "get",
            "node",
            "node-0",
            "-o",
            "jsonpath={.spec.unschedulable}"
        ])
        .await,
        "true"
    );
    run(&["uncordon", "node-0"]).await;
    assert_eq!(
        run(&[
            "get",
            "node",
            "node-0",
            "-o",
            "jsonpath={.spec.unschedulable}"
        ])
        .await,
        ""
    );
    wait_for(
        "the deployment's scaling event",
        std::time::Duration::from_secs(30),
        async || {
            let events = stdout(&kubectl_async(&kc, &["events"]).await);
            events.contains("ScalingReplicaSet").then_some(())
        },
    )
    .await;
    let events = run(&[
        "get",
        "events",
        "--field-selector=reason=ScalingReplicaSet",
        "-o",
        "name",
    ])
    .await;
    assert!(!events.trim().is_empty(), "no events selected by reason");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_tracks_field_managers_and_their_conflicts() {
    if !kubectl_available("server_side_apply_tracks_field_managers_and_their_conflicts") {
        return;
    }
    let cluster = TestCluster::start(0).await;
    let kc = cluster.kubeconfig.clone();
    let config = |data: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: shared\ndata:\n{data}")
    };
    let apply = async |manager: &str, data: &str, extra: &[&str]| {
        let mut args = vec![
            "apply",
            "--server-side",
            "--field-manager",
            manager,
            "-f",
            "-",
        ];
        args.extend_from_slice(extra);
        kubectl_stdin_async(&kc, &args, &config(data)).await
    };
    ok(apply("alice", "  color: blue\n  size: big\n", &[]).await);
    // The same value is shared; another value is a conflict naming alice and the field.
    ok(apply("bob", "  color: blue\n", &[]).await);
    let refused = apply("bob", "  color: red\n", &[]).await;
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains(
            r#"Apply failed with 1 conflict: conflict with "alice" using v1: .data.color"#
        ),
        "{}",
        stderr(&refused)
    );
    let data = || async {
        ok(kubectl_async(&kc, &["get", "cm", "shared", "-o", "jsonpath={.data}"]).await)
    };
    assert_eq!(
        data().await,
        r#"{"color":"blue","size":"big"}"#,
        "a refused apply changes nothing"
    );
    ok(apply("bob", "  color: red\n", &["--force-conflicts"]).await);
    assert_eq!(data().await, r#"{"color":"red","size":"big"}"#);
    // alice re-applies without size: hers alone, so it goes; color is bob's now.
    let again = apply("alice", "  color: red\n", &[]).await;
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(data().await, r#"{"color":"red"}"#);

    let managed = ok(kubectl_async(
        &kc,
        &["get", "cm", "shared", "--show-managed-fields", "-o", "json"],
    )
    .await);
    let managed: serde_json::Value = serde_json::from_str(&managed).unwrap();
    let entries = managed["metadata"]["managedFields"].as_array().unwrap();
    let bob = entries.iter().find(|e| e["manager"] == "bob").unwrap();
    assert_eq!(bob["operation"], "Apply");
    assert_eq!(
        bob["fieldsV1"],
        serde_json::json!({"f:data": {"f:color": {}}})
    );
    // Updates are recorded too: kubectl edit-like writes take over what they change.
    ok(kubectl_async(&kc, &["label", "cm", "shared", "team=web"]).await);
    let managed = ok(kubectl_async(
        &kc,
        &["get", "cm", "shared", "--show-managed-fields", "-o", "json"],
    )
    .await);
    let managed: serde_json::Value = serde_json::from_str(&managed).unwrap();
    let label = managed["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["manager"] == "kubectl-label")
        .unwrap_or_else(|| panic!("no kubectl-label entry: {managed}"));
    assert_eq!(label["operation"], "Update");
    assert_eq!(
        label["fieldsV1"],
        serde_json::json!({"f:metadata": {"f:labels": {"f:team": {}}}})
    );
    let plain = ok(kubectl_async(&kc, &["get", "cm", "shared", "-o", "yaml"]).await);
    assert!(
        !plain.contains("managedFields"),
        "kubectl hides them by default"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_prune_deletes_what_the_configuration_dropped() {
    if !kubectl_available("kubectl_apply_prune_deletes_what_the_configuration_dropped") {
        return;
    }
    let cluster = TestCluster::start(0).await;
    let kc = cluster.kubeconfig.as_path();
    let config_map = |name: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, labels: {{app: pruned}}}}\ndata: {{k: v}}\n")
    };
    let both = format!("{}---\n{}", config_map("keep"), config_map("drop"));
    ok(kubectl_stdin_async(kc, &["apply", "-f", "-"], &both).await);
    // kubectl's default prune list (every kind it names must be served, PersistentVolumes too).
    let pruned = ok(kubectl_stdin_async(
        kc,
        &["apply", "--prune", "-l", "app=pruned", "-f", "-"],
        &config_map("keep"),
    )
    .await);
    assert!(pruned.contains("configmap/drop pruned"), "{pruned}");
    let left =
        ok(kubectl_async(kc, &["get", "configmaps", "-l", "app=pruned", "-o", "name"]).await);
    assert_eq!(left.trim(), "configmap/keep");
    // PersistentVolumes are served (stored; Shoal's claims are provisioned on their node).
    let pv = "apiVersion: v1\nkind: PersistentVolume\nmetadata: {name: pv1}\nspec: {capacity: {storage: 1Gi}, accessModes: [ReadWriteOnce], persistentVolumeReclaimPolicy: Retain, hostPath: {path: /tmp/pv1}}\n";
    ok(kubectl_stdin_async(kc, &["apply", "-f", "-"], pv).await);
    let table = ok(kubectl_async(kc, &["get", "pv"]).await);
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(&row[..4], ["pv1", "1Gi", "RWO", "Retain"], "{table}");
}
