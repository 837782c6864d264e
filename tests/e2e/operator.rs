//! A user's operator, written the way Kubernetes users write them (kube-rs's
//! `kube::runtime::Controller`), runs against `shoal server` over a socket: its initial list,
//! its watch (with bookmarks, as kube asks), server-side apply of what it derives, and its
//! recovery when the server restarts and the revision it watched from has been compacted
//! (410 Gone, then a fresh list).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, Config, Resource, ResourceExt};
use serde_json::{json, Value};
use shoal_control::store::{ObjectKey, RedbStore, Store};
use shoal_tests::*;

/// The operator: every ConfigMap labelled `role=source` gets a `<name>-derived` ConfigMap
/// with its values upper-cased, owned by the source.
async fn reconcile(source: Arc<ConfigMap>, client: Arc<Client>) -> Result<Action, kube::Error> {
    let name = source.name_any();
    let data: BTreeMap<String, String> = (source.data.clone().unwrap_or_default())
        .into_iter()
        .map(|(key, value)| (key, value.to_uppercase()))
        .collect();
    let derived = ConfigMap {
        metadata: ObjectMeta {
            name: Some(format!("{name}-derived")),
            owner_references: source.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    };
    Api::<ConfigMap>::namespaced((*client).clone(), "default")
        .patch(
            &format!("{name}-derived"),
            &PatchParams::apply("shoal-test-operator"),
            &Patch::Apply(&derived),
        )
        .await?;
    Ok(Action::await_change())
}

fn error_policy(_: Arc<ConfigMap>, _: &kube::Error, _: Arc<Client>) -> Action {
    Action::requeue(Duration::from_millis(200))
}

fn source(name: &str, value: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([("role".to_string(), "source".to_string())].into()),
            ..Default::default()
        },
        data: Some([("greeting".to_string(), value.to_string())].into()),
        ..Default::default()
    }
}

/// Waits until `<name>-derived` holds `expected`.
async fn wait_derived(configmaps: &Api<ConfigMap>, name: &str, expected: &str) {
    wait_for(
        &format!("{name}-derived to say {expected}"),
        Duration::from_secs(60),
        async || {
            let derived = configmaps
                .get_opt(&format!("{name}-derived"))
                .await
                .ok()??;
            let value = derived.data?.get("greeting")?.clone();
            (value == expected).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kube_rs_operator_lists_watches_and_recovers_from_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr().to_string();
    // A short event log, so that the revision the operator watched from is compacted while
    // the server is down.
    let log = ["--event-log-len", "20"];
    let mut server = start_server_at(dir.path(), &addr, &log);
    // kube-rs reads the server's kubeconfig: HTTPS, the cluster CA, a client certificate.
    let kubeconfig = kube::config::Kubeconfig::read_from(server_kubeconfig(dir.path())).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let client = Client::try_from(config).unwrap();
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    // Initial list: a source that exists before the operator starts.
    configmaps
        .create(&PostParams::default(), &source("early", "hello"))
        .await
        .unwrap();
    let operator = tokio::spawn(
        Controller::new(
            configmaps.clone(),
            watcher::Config::default().labels("role=source"),
        )
        .run(reconcile, error_policy, Arc::new(client.clone()))
        .for_each(|_| futures::future::ready(())),
    );
    wait_derived(&configmaps, "early", "HELLO").await;
    let derived = configmaps.get("early-derived").await.unwrap();
    let owner = &derived.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("ConfigMap", "early")
    );

    // Watch: a change and a new source reach the operator.
    let mut early = configmaps.get("early").await.unwrap();
    early.data = Some([("greeting".to_string(), "changed".to_string())].into());
    configmaps
        .replace("early", &PostParams::default(), &early)
        .await
        .unwrap();
    wait_derived(&configmaps, "early", "CHANGED").await;
    let last_seen = configmaps
        .create(&PostParams::default(), &source("later", "watched"))
        .await
        .unwrap()
        .resource_version()
        .unwrap();
    wait_derived(&configmaps, "later", "WATCHED").await;

    // The server stops; while it is down the store moves far past the operator's revision
    // (and a source appears that only a fresh list can show it).
    server.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(
        server.wait(Duration::from_secs(20)).is_some(),
        "the server stops"
    );
    drop(server);
    {
        let store =
            RedbStore::open_with_log_len(&dir.path().join("server/store.redb"), 20).unwrap();
        for i in 0..130 {
            let noise = json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("noise-{i}"), "namespace": "kube-public", "uid": format!("noise-{i}"),
                    "creationTimestamp": "2026-12-04T00:00:00Z"}, "data": {"i": i.to_string()}});
            store
                .create(
                    ObjectKey::new("configmaps", "kube-public", &format!("noise-{i}")),
                    noise,
                )
                .await
                .unwrap();
        }
        let offline = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "offline", "namespace": "default", "uid": "offline-uid", "labels": {"role": "source"},
                "creationTimestamp": "2026-12-04T00:00:00Z"}, "data": {"greeting": "relisted"}});
        store
            .create(ObjectKey::new("configmaps", "default", "offline"), offline)
            .await
            .unwrap();
    }
    let _server = start_server_at(dir.path(), &addr, &log);

    // The revision the operator last saw is gone: a watch from it is refused with 410...
    let http = Http::from_kubeconfig(&server_kubeconfig(dir.path()));
    let mut events = EventReader::new(
        http.stream(&format!(
            "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={last_seen}"
        ))
        .await,
    );
    let first: Value = events.next(Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        (first["type"].as_str(), first["object"]["code"].as_i64()),
        (Some("ERROR"), Some(410)),
        "{first}"
    );
    // ...and kube's watcher lists afresh and finds the source written while it was away.
    wait_derived(&configmaps, "offline", "RELISTED").await;
    // Its watch works again afterwards.
    configmaps
        .create(&PostParams::default(), &source("after", "back"))
        .await
        .unwrap();
    wait_derived(&configmaps, "after", "BACK").await;
    operator.abort();
}

/// kube-rs's event `Recorder` writes events.k8s.io/v1 Events (and patches a repeated one into
/// a series); kubectl reads them as the core/v1 Events they are stored as, and through
/// events.k8s.io/v1 as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_recorder_events_are_core_events_too() {
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    if !kubectl_available("kube_rs_recorder_events_are_core_events_too") {
        return;
    }
    let cluster = TestCluster::start(0).await;
    let kubeconfig = kube::config::Kubeconfig::read_from(&cluster.kubeconfig).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let client = Client::try_from(config).unwrap();
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let source = configmaps
        .create(&PostParams::default(), &source("recorded", "hi"))
        .await
        .unwrap();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "shoal-test-operator".into(),
            instance: Some("op-1".into()),
        },
    );
    let event = Event {
        type_: EventType::Normal,
        reason: "Derived".into(),
        note: Some("derived a ConfigMap".into()),
        action: "Derive".into(),
        secondary: None,
    };
    let reference = source.object_ref(&());
    recorder.publish(&event, &reference).await.unwrap();
    recorder.publish(&event, &reference).await.unwrap();

    let kc = cluster.kubeconfig.as_path();
    let core = ok(kubectl_async(
        kc,
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=recorded",
            "-o",
            "json",
        ],
    )
    .await);
    let core: Value = serde_json::from_str(&core).unwrap();
    let items = core["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{core}");
    assert_eq!(items[0]["message"], "derived a ConfigMap");
    assert_eq!(items[0]["reportingComponent"], "shoal-test-operator");
    assert_eq!(items[0]["series"]["count"], 2, "the repeat was patched in");
    let listed = ok(kubectl_async(kc, &["events", "--for", "configmap/recorded"]).await);
    assert!(
        listed.contains("Derived") && listed.contains("derived a ConfigMap"),
        "{listed}"
    );
    let v1 = ok(kubectl_async(kc, &["get", "events.v1.events.k8s.io", "-o", "json"]).await);
    let v1: Value = serde_json::from_str(&v1).unwrap();
    let item = v1["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["regarding"]["name"] == "recorded")
        .unwrap_or_else(|| panic!("{v1}"));
    assert_eq!(item["apiVersion"], "events.k8s.io/v1");
    assert_eq!(
        (item["note"].as_str(), item["reportingController"].as_str()),
        (Some("derived a ConfigMap"), Some("shoal-test-operator"))
    );
}
