//! Paged lists through the API, as clients page them: kubectl's `--chunk-size`, kube-rs's
//! `limit` and continue token, and the 410 with a fresh continue token when the revision a
//! token holds can no longer be read.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::ListParams;
use kube::{Api, Client, Config};
use serde_json::json;
use shoal_tests::*;

const COUNT: usize = 23;

async fn cluster_with_config_maps() -> TestCluster {
    let cluster = TestCluster::start(0).await;
    let http = cluster.http();
    http.create(
        "/api/v1/namespaces",
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "paging"}}),
    )
    .await;
    for i in 0..COUNT {
        http.create(
            "/api/v1/namespaces/paging/configmaps",
            &json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("cm-{i:02}"), "labels": {"parity": (i % 2).to_string()}},
            }),
        )
        .await;
    }
    // The root CA publisher adds its own ConfigMap to every namespace: wait for it, so the
    // list is settled.
    wait_for("kube-root-ca.crt", Duration::from_secs(10), async || {
        let (status, _) = http
            .call(
                "GET",
                "/api/v1/namespaces/paging/configmaps/kube-root-ca.crt",
                "",
                "",
            )
            .await;
        (status == 200).then_some(())
    })
    .await;
    cluster
}

/// The namespace's ConfigMaps in key order: ours, then the root CA's.
fn expected_names() -> Vec<String> {
    (0..COUNT)
        .map(|i| format!("cm-{i:02}"))
        .chain(["kube-root-ca.crt".to_string()])
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_and_kube_rs_page_through_lists() {
    if !kubectl_available("kubectl_and_kube_rs_page_through_lists") {
        return;
    }
    let cluster = cluster_with_config_maps().await;

    // kubectl asks for pages of 5 and follows the continue tokens (-v=6 logs each request).
    let output = kubectl_async(
        &cluster.kubeconfig,
        &[
            "get",
            "configmaps",
            "-n",
            "paging",
            "--chunk-size=5",
            "-o",
            "name",
            "-v=6",
        ],
    )
    .await;
    let listed: Vec<String> = stdout(&output)
        .lines()
        .filter_map(|line| line.strip_prefix("configmap/").map(str::to_string))
        .collect();
    assert_eq!(listed, expected_names(), "{}", stderr(&output));
    let continued = stderr(&output)
        .lines()
        .filter(|line| line.contains("GET") && line.contains("continue="))
        .count();
    assert_eq!(
        continued, 4,
        "24 objects in pages of 5: four continued requests"
    );

    // kube-rs: pages of 10 with remainingItemCount, then a filtered page.
    let kubeconfig = kube::config::Kubeconfig::read_from(&cluster.kubeconfig).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let configmaps: Api<ConfigMap> = Api::namespaced(Client::try_from(config).unwrap(), "paging");
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut params = ListParams::default().limit(10);
        if let Some(token) = &token {
            params = params.continue_token(token);
        }
        let page = configmaps.list(&params).await.unwrap();
        pages += 1;
        if pages == 1 {
            assert_eq!(page.metadata.remaining_item_count, Some(14));
        }
        names.extend(page.items.into_iter().filter_map(|cm| cm.metadata.name));
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            break;
        }
    }
    assert_eq!((names, pages), (expected_names(), 3));
    let odd = configmaps
        .list(&ListParams::default().labels("parity=1").limit(4))
        .await
        .unwrap();
    let odd_names: Vec<_> = odd
        .items
        .iter()
        .filter_map(|cm| cm.metadata.name.clone())
        .collect();
    assert_eq!(odd_names, ["cm-01", "cm-03", "cm-05", "cm-07"]);
    assert!(odd.metadata.continue_.is_some());
    assert_eq!(
        odd.metadata.remaining_item_count, None,
        "a filtered list does not know how many match"
    );

    // A streaming list (sendInitialEvents): the objects as events, then the bookmark that
    // ends them (without it kube-rs would never say InitDone), then live changes.
    let mut events = kube::runtime::watcher(
        configmaps.clone(),
        kube::runtime::watcher::Config::default()
            .labels("parity=0")
            .streaming_lists(),
    )
    .boxed();
    let mut initial = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("the initial events end within 10 s")
            .unwrap()
            .unwrap();
        match event {
            kube::runtime::watcher::Event::InitApply(cm) => initial.push(cm.metadata.name.unwrap()),
            kube::runtime::watcher::Event::InitDone => break,
            _ => {}
        }
    }
    let even: Vec<String> = (0..COUNT)
        .step_by(2)
        .map(|i| format!("cm-{i:02}"))
        .collect();
    assert_eq!(initial, even);
    let http = cluster.http();
    http.create(
        "/api/v1/namespaces/paging/configmaps",
        &json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "late", "labels": {"parity": "0"}}}),
    )
    .await;
    let event = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(&event, kube::runtime::watcher::Event::Apply(cm) if cm.metadata.name.as_deref() == Some("late")),
        "{event:?}"
    );
}

/// The official Python client pages with `limit` and `_continue`, as its users write it.
const PYTHON_PAGES: &str = r#"
import json, sys
from kubernetes import client, config
config.load_kube_config(config_file=sys.argv[1])
api = client.CoreV1Api()
names, pages, token = [], 0, None
while True:
    page = api.list_namespaced_config_map("paging", limit=6, _continue=token)
    pages += 1
    names += [cm.metadata.name for cm in page.items]
    token = page.metadata._continue
    if not token:
        break
print(json.dumps({"names": names, "pages": pages}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_pages_through_a_list() {
    let Some(python) = python_client("the_python_client_pages_through_a_list") else {
        return;
    };
    let cluster = cluster_with_config_maps().await;
    let result = run_python(
        &python,
        cluster.dir.path(),
        PYTHON_PAGES,
        &[cluster.kubeconfig.as_os_str()],
    )
    .await;
    assert_eq!(result["pages"], 4, "24 objects in pages of 6");
    assert_eq!(result["names"], json!(expected_names()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_consistent_and_a_gone_revision_gets_a_fresh_token() {
    let cluster = cluster_with_config_maps().await;
    let http = cluster.http();
    let list = "/api/v1/namespaces/paging/configmaps";
    let (status, first) = http.call("GET", &format!("{list}?limit=10"), "", "").await;
    assert_eq!(status, 200, "{first}");
    let revision = first["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let token = first["metadata"]["continue"].as_str().unwrap().to_string();

    // Writes after the first page do not show in the pages that follow.
    let (status, _) = http.call("DELETE", &format!("{list}/cm-15"), "", "").await;
    assert_eq!(status, 200);
    http.create(
        list,
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm-99"}}),
    )
    .await;
    let mut names = Vec::new();
    let mut next = Some(token);
    while let Some(token) = next {
        let (status, page) = http
            .call("GET", &format!("{list}?limit=10&continue={token}"), "", "")
            .await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["metadata"]["resourceVersion"], revision.as_str());
        names.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["metadata"]["name"].as_str().unwrap().to_string()),
        );
        next = page["metadata"]["continue"].as_str().map(str::to_string);
    }
    let expected: Vec<String> = expected_names().into_iter().skip(10).collect();
    assert_eq!(names, expected, "the list as of its first page");

    // A token for a revision that is no longer readable: 410 Expired, with a token that
    // continues from the same key at the latest state.
    let stale = {
        use base64::Engine;
        let raw = json!({"v": "meta.k8s.io/v1", "rv": 1, "start": "cm-09\u{0}"});
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.to_string())
    };
    let (status, gone) = http
        .call("GET", &format!("{list}?limit=10&continue={stale}"), "", "")
        .await;
    assert_eq!(status, 410, "{gone}");
    assert_eq!(gone["reason"], "Expired");
    let fresh = gone["metadata"]["continue"]
        .as_str()
        .expect("a fresh token");
    let (status, rest) = http
        .call("GET", &format!("{list}?limit=100&continue={fresh}"), "", "")
        .await;
    assert_eq!(status, 200, "{rest}");
    let rest: Vec<&str> = rest["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap())
        .collect();
    assert!(
        !rest.contains(&"cm-15") && rest.contains(&"cm-99"),
        "{rest:?}"
    );
    assert_eq!(rest.first(), Some(&"cm-10"));

    // A revision the store has not reached: 504, as kube-apiserver answers.
    let (status, ahead) = http
        .call(
            "GET",
            &format!("{list}?resourceVersion=999999&resourceVersionMatch=NotOlderThan"),
            "",
            "",
        )
        .await;
    assert_eq!(status, 504, "{ahead}");
    assert!(ahead["message"]
        .as_str()
        .unwrap()
        .starts_with("Too large resource version"));
}
