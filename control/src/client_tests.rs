//! The client of `shoal-api` against the real API server and store: what needs both crates.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::client::{Client, WatcherEvent};
use crate::server::ApiServer;
use k8s_openapi::api::core::v1::ConfigMap;
use std::time::Duration;

fn config_map(name: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({"metadata": {"name": name, "namespace": "default"}}))
        .unwrap()
}

async fn next(rx: &mut mpsc::Receiver<WatcherEvent<ConfigMap>>) -> WatcherEvent<ConfigMap> {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("an event within 5 s")
        .expect("the feed is open")
}

fn names(event: &WatcherEvent<ConfigMap>) -> (&'static str, Vec<String>) {
    let (kind, objects): (&str, Vec<&ConfigMap>) = match event {
        WatcherEvent::Restarted(all) => ("restarted", all.iter().collect()),
        WatcherEvent::Applied(o) => ("applied", vec![o]),
        WatcherEvent::Deleted(o) => ("deleted", vec![o]),
    };
    let mut names: Vec<String> = objects
        .iter()
        .map(|o| o.metadata.name.clone().unwrap_or_default())
        .collect();
    names.sort();
    (kind, names)
}

/// A real API server over a fresh redb store, and an in-process client of it (the store
/// lives as long as the directory).
pub(crate) async fn in_process_server() -> (tempfile::TempDir, Client) {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::store::RedbStore::open(&dir.path().join("db")).unwrap();
    let server = ApiServer::new(Arc::new(store)).await.unwrap();
    (dir, Client::in_process(server.router()))
}

#[tokio::test]
async fn subscribers_early_and_late_see_the_same_state() {
    let (_dir, client) = in_process_server().await;
    let maps = client.api::<ConfigMap>(Some("default"));
    maps.create(&config_map("a")).await.unwrap();

    let mut early = client.shared_watch::<ConfigMap>();
    assert_eq!(
        names(&next(&mut early).await),
        ("restarted", vec!["a".into()])
    );
    maps.create(&config_map("b")).await.unwrap();
    assert_eq!(
        names(&next(&mut early).await),
        ("applied", vec!["b".into()])
    );

    // A late subscriber starts from the shared cache, then follows the same feed.
    let mut late = client.clone().shared_watch::<ConfigMap>();
    assert_eq!(
        names(&next(&mut late).await),
        ("restarted", vec!["a".into(), "b".into()])
    );
    maps.delete("a", &Default::default()).await.unwrap();
    assert_eq!(
        names(&next(&mut early).await),
        ("deleted", vec!["a".into()])
    );
    assert_eq!(names(&next(&mut late).await), ("deleted", vec!["a".into()]));

    // A subscriber that leaves does not stop the others.
    drop(early);
    maps.create(&config_map("c")).await.unwrap();
    assert_eq!(names(&next(&mut late).await), ("applied", vec!["c".into()]));
}

/// A cache kept with no subscriber follows the store: `cached_object` says `None` before
/// the first list, then what the store holds, including that an object is gone; `cached`
/// filters it, and shares its objects rather than copying them.
#[tokio::test]
async fn a_cache_kept_without_subscribers_follows_the_store() {
    let (_dir, client) = in_process_server().await;
    let maps = client.api::<ConfigMap>(Some("default"));
    maps.create(&config_map("a")).await.unwrap();
    assert!(client.cached_object::<ConfigMap>("default", "a").is_none());

    client.keep_cache_of::<ConfigMap>();
    let shown = async |name: &str, present: bool| {
        for _ in 0..250 {
            if let Some(cached) = client.cached_object::<ConfigMap>("default", name) {
                if cached.is_some() == present {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{name} not shown as present={present} within 5 s");
    };
    shown("a", true).await;
    maps.create(&config_map("b")).await.unwrap();
    shown("b", true).await;
    maps.delete("a", &Default::default()).await.unwrap();
    shown("a", false).await;

    let only_b = client
        .cached::<ConfigMap>(|m| m.metadata.name.as_deref() == Some("b"))
        .unwrap();
    assert_eq!(only_b.len(), 1);
    let again = client
        .cached_object::<ConfigMap>("default", "b")
        .unwrap()
        .unwrap();
    assert!(
        Arc::ptr_eq(&only_b[0], &again),
        "one shared object, not copies"
    );
}

/// Nodes registering at the same moment each get a pod CIDR of their own (the allocation
/// and the create are one step), the first ones from Kubernetes' default range.
#[tokio::test]
async fn nodes_registering_together_get_distinct_pod_cidrs() {
    use k8s_openapi::api::core::v1::Node;
    let (_dir, client) = in_process_server().await;
    let registrations = (0..32).map(|i| {
        let nodes = client.api::<Node>(None);
        async move {
            let node: Node =
                serde_json::from_value(serde_json::json!({"metadata": {"name": format!("n{i}")}}))
                    .unwrap();
            let node = nodes.create(&node).await.unwrap();
            node.spec.and_then(|s| s.pod_cidr).expect("a pod CIDR")
        }
    });
    let cidrs = futures::future::join_all(registrations).await;
    let distinct: std::collections::BTreeSet<&String> = cidrs.iter().collect();
    assert_eq!(distinct.len(), 32, "{cidrs:?}");
    assert!(distinct.contains(&"10.244.0.0/24".to_string()));
    assert!(distinct.contains(&"10.244.31.0/24".to_string()));
}

/// Recording an event does not wait for its write: the recorder's writer writes what was
/// recorded, and what came beyond its queue is dropped (a current-thread runtime, so the
/// writer cannot start before the recording loop yields). Paced faster than the default, so
/// that the queue drains in the test's time.
#[tokio::test]
async fn events_are_written_behind_the_recorder_and_a_full_queue_drops() {
    use crate::client::{EventPace, Recorder, EVENTS_QUEUED};
    use k8s_openapi::api::core::v1::Event;
    let (_dir, client) = in_process_server().await;
    let fast = EventPace {
        per_second: 1e6,
        burst: 1e6,
    };
    let recorder = Recorder::new(client.clone(), "test-recorder", None).paced(fast);
    let recorded = EVENTS_QUEUED + 200;
    for i in 0..recorded {
        // One object each: the spam filter lets each object's first event pass.
        recorder.normal(&config_map(&format!("m{i}")), "Tested", &format!("{i}"));
    }
    let events = client.api::<Event>(Some("default"));
    let written = || async {
        let list = events.list(&Default::default()).await.unwrap();
        (list.items.into_iter())
            .map(|e| e.message.unwrap_or_default().parse::<usize>().unwrap())
            .collect::<Vec<_>>()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while written().await.len() < EVENTS_QUEUED && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut messages = written().await;
    messages.sort_unstable();
    assert_eq!(
        messages,
        (0..EVENTS_QUEUED).collect::<Vec<_>>(),
        "the first {EVENTS_QUEUED} recorded are written, the rest dropped"
    );
    recorder.normal(&config_map("after"), "Tested", &format!("{recorded}"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while written().await.len() == EVENTS_QUEUED && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        written().await.contains(&recorded),
        "a drained queue takes events again"
    );
}
