//! The shoal client commands against an in-process cluster.

use shoal_examples::{HELLO_P1, HELLO_P2};
use shoal_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shoal_client_commands_run_hello_pods() {
    let cluster = TestCluster::start(1).await;
    let kubeconfig = cluster.kubeconfig.clone();
    let http = cluster.http();
    let manifest = cluster.dir.path().join("hello.yaml");
    std::fs::write(
        &manifest,
        format!(
            "{}---\n{}",
            pod_yaml("cli-p1", HELLO_P1, &["cli"]),
            pod_yaml("cli-p2", HELLO_P2, &["cli"])
        ),
    )
    .unwrap();
    let manifest = manifest.to_str().unwrap();

    let applied = ok(shoal_async(&kubeconfig, &["apply", "-f", manifest]).await);
    assert_eq!(applied, "pod/cli-p1 created\npod/cli-p2 created\n");
    wait_phase(&http, "default", "cli-p1", "Succeeded").await;
    wait_phase(&http, "default", "cli-p2", "Succeeded").await;

    let table = ok(shoal_async(&kubeconfig, &["get", "pods", "-o", "wide"]).await);
    let header = table.lines().next().unwrap();
    assert!(
        header.starts_with("NAME") && header.contains("STATUS") && header.contains("NODE"),
        "{table}"
    );
    let row = table
        .lines()
        .find(|l| l.starts_with("cli-p2"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.contains("Completed") && row.contains("node-0"),
        "{table}"
    );

    assert_eq!(
        ok(shoal_async(&kubeconfig, &["logs", "cli-p1"]).await),
        "Hello, cli! (from a wasip1 module)\n"
    );
    assert_eq!(
        ok(shoal_async(&kubeconfig, &["logs", "pod/cli-p2", "-f"]).await),
        "Hello, cli! (from a wasip2 component)\n"
    );

    let described = ok(shoal_async(&kubeconfig, &["describe", "pod", "cli-p1"]).await);
    assert!(
        described.contains("phase: Succeeded")
            && described.contains("exitCode: 0")
            && described.contains("Events:"),
        "{described}"
    );

    let yaml = ok(shoal_async(&kubeconfig, &["get", "pod/cli-p1", "-o", "yaml"]).await);
    assert!(yaml.contains("nodeName: node-0"), "{yaml}");

    // Applying again updates in place.
    let again = ok(shoal_async(&kubeconfig, &["apply", "-f", manifest]).await);
    assert_eq!(again, "pod/cli-p1 configured\npod/cli-p2 configured\n");

    let deleted = ok(shoal_async(&kubeconfig, &["delete", "-f", manifest]).await);
    assert_eq!(deleted, "pod \"cli-p1\" deleted\npod \"cli-p2\" deleted\n");
    assert_eq!(
        pod_phase(&http, "default", "cli-p1").await,
        "",
        "the delete waited until the pod was gone"
    );

    let missing = shoal_async(&kubeconfig, &["get", "pod", "nosuch"]).await;
    assert!(!missing.status.success());
    assert_eq!(
        stderr(&missing).trim(),
        "Error from server (NotFound): pods \"nosuch\" not found"
    );
    let unknown = shoal_async(&kubeconfig, &["get", "widgets"]).await;
    assert!(
        stderr(&unknown).contains("doesn't have a resource type \"widgets\""),
        "{}",
        stderr(&unknown)
    );
}
