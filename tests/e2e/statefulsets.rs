//! StatefulSets through kubectl: pods start in ordinal order, each after its predecessor is
//! ready; a deleted pod comes back with its name and its volume's data; rolling updates go
//! highest ordinal first and stop at the partition; history and undo use ControllerRevisions;
//! scaling down removes the highest ordinals first and keeps their claims.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use shoal_examples::WEB_P2;
use shoal_tests::*;

const PODS: &str = "/api/v1/namespaces/default/pods";
const CLAIMS: &str = "/api/v1/namespaces/default/persistentvolumeclaims";
const SETS: &str = "/apis/apps/v1/namespaces/default/statefulsets";

fn stateful_set_yaml(image: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: db
spec:
  serviceName: db
  replicas: 3
  selector:
    matchLabels:
      app: db
  template:
    metadata:
      labels:
        app: db
    spec:
      containers:
      - name: web
        image: {image}
        ports:
        - containerPort: 8080
        readinessProbe:
          httpGet:
            path: /healthz
            port: 8080
          periodSeconds: 1
        volumeMounts:
        - name: data
          mountPath: /data
  volumeClaimTemplates:
  - metadata:
      name: data
    spec:
      accessModes: [ReadWriteOnce]
      resources:
        requests:
          storage: 1Gi
"#
    )
}

/// What a pod watch saw, in order: (event type, pod name, ready, uid, revision label).
type Seen = Arc<Mutex<Vec<(String, String, bool, String, String)>>>;

fn record_pod_events(http: &Http) -> (Seen, tokio::task::JoinHandle<()>) {
    let seen: Seen = Arc::default();
    let (log, http) = (seen.clone(), http.clone());
    let task = tokio::spawn(async move {
        let mut events = EventReader::new(
            http.stream(&format!("{PODS}?watch=true&labelSelector=app%3Ddb"))
                .await,
        );
        while let Some(event) = events.next(Duration::from_secs(600)).await {
            let pod = &event["object"];
            let ready = pod["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
            log.lock().unwrap().push((
                text(&event["type"]),
                text(&pod["metadata"]["name"]),
                ready,
                text(&pod["metadata"]["uid"]),
                text(&pod["metadata"]["labels"]["controller-revision-hash"]),
            ));
        }
    });
    (seen, task)
}

/// Index of the first event matching `f`.
fn first(seen: &Seen, f: impl Fn(&(String, String, bool, String, String)) -> bool) -> usize {
    let seen = seen.lock().unwrap();
    seen.iter()
        .position(f)
        .unwrap_or_else(|| panic!("no such event in {seen:?}"))
}

async fn pod(http: &Http, name: &str) -> Value {
    http.call("GET", &format!("{PODS}/{name}"), "", "").await.1
}

/// The `controller-revision-hash` of each of db-0..db-2.
async fn pod_revisions(http: &Http) -> Vec<String> {
    let mut found = Vec::new();
    for i in 0..3 {
        let p = pod(http, &format!("db-{i}")).await;
        found.push(
            p["metadata"]["labels"]["controller-revision-hash"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    found
}

/// The uids of db-0..db-2 (empty for a missing pod).
async fn pod_uids(http: &Http) -> Vec<String> {
    let mut found = Vec::new();
    for i in 0..3 {
        let p = pod(http, &format!("db-{i}")).await;
        found.push(
            p["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    found
}

/// The names of the pods with these uids, in the order the watch saw them deleted (waiting
/// for the watch to catch up).
async fn deletion_order(seen: &Seen, uids: &[String], expected: usize) -> Vec<String> {
    wait_for(
        "the watch to see the deletions",
        Duration::from_secs(10),
        async || {
            let seen = seen.lock().unwrap();
            let order: Vec<String> = seen
                .iter()
                .filter(|e| e.0 == "DELETED" && uids.contains(&e.3))
                .map(|e| e.1.clone())
                .collect();
            (order.len() >= expected).then_some(order)
        },
    )
    .await
}

async fn rollout_status(kc: &std::path::Path) -> String {
    ok(kubectl_async(
        kc,
        &["rollout", "status", "statefulset/db", "--timeout=90s"],
    )
    .await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateful_set_starts_in_order_and_keeps_identity_and_data() {
    if !kubectl_available("a_stateful_set_starts_in_order_and_keeps_identity_and_data") {
        return;
    }
    let cluster = TestCluster::start(2).await;
    let http = cluster.http();
    let kc = cluster.kubeconfig.clone();
    let (seen, watch) = record_pod_events(&http);

    ok(kubectl_stdin_async(&kc, &["apply", "-f", "-"], &stateful_set_yaml(WEB_P2)).await);
    let status = rollout_status(&kc).await;
    assert!(status.contains("roll out complete"), "{status}");

    // OrderedReady: db-N is created only once db-(N-1) is ready.
    for n in 1..3 {
        let created = first(&seen, |e| e.0 == "ADDED" && e.1 == format!("db-{n}"));
        let previous_ready = first(&seen, |e| e.1 == format!("db-{}", n - 1) && e.2);
        assert!(
            previous_ready < created,
            "db-{n} was created before db-{} was ready",
            n - 1
        );
    }
    let table = ok(kubectl_async(&kc, &["get", "statefulset", "db"]).await);
    assert!(
        table.lines().nth(1).unwrap_or_default().contains("3/3"),
        "{table}"
    );
    let db1 = pod(&http, "db-1").await;
    assert_eq!(db1["spec"]["hostname"], "db-1");
    assert_eq!(db1["spec"]["subdomain"], "db");
    for i in 0..3 {
        let (status, _) = http
            .call("GET", &format!("{CLAIMS}/data-db-{i}"), "", "")
            .await;
        assert_eq!(status, 200, "claim data-db-{i}");
    }

    // db-1 writes to its volume; deleted, it comes back as db-1 with the same data.
    let file = format!("{PODS}/db-1:8080/proxy/file/data/note.txt");
    let (status, body) = http
        .raw("PUT", &file, "text/plain", "written by db-1")
        .await;
    assert_eq!(status, 200, "{body:?}");
    let old_uid = db1["metadata"]["uid"].as_str().unwrap().to_string();
    // --wait=false: kubectl's wait lists by name after its first check, and can find the
    // replacement db-1 (a new uid) there and wait forever for its deletion.
    ok(kubectl_async(&kc, &["delete", "pod", "db-1", "--wait=false"]).await);
    wait_for("db-1 back and ready", Duration::from_secs(60), async || {
        let p = pod(&http, "db-1").await;
        let ready = p["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        });
        (p["metadata"]["uid"] != old_uid.as_str() && ready).then_some(())
    })
    .await;
    let (status, body) = http.raw("GET", &file, "", "").await;
    assert_eq!(
        (status, String::from_utf8_lossy(&body).as_ref()),
        (200, "written by db-1"),
        "the new db-1 reads what the old one wrote"
    );

    // A rolling update replaces db-2, then db-1, then db-0.
    let v2 = cluster.dir.path().join("web-v2.wasm");
    std::fs::copy(WEB_P2, &v2).unwrap();
    let v2 = v2.to_str().unwrap().to_string();
    let before = pod_revisions(&http).await;
    let uids = pod_uids(&http).await;
    ok(kubectl_async(
        &kc,
        &["set", "image", "statefulset/db", &format!("web={v2}")],
    )
    .await);
    rollout_status(&kc).await;
    let after = pod_revisions(&http).await;
    assert!(
        after.iter().all(|r| r == &after[0]) && after[0] != before[0],
        "all pods moved to one new revision: {before:?} -> {after:?}"
    );
    assert_eq!(
        deletion_order(&seen, &uids, 3).await,
        ["db-2", "db-1", "db-0"]
    );
    let history = ok(kubectl_async(&kc, &["rollout", "history", "statefulset/db"]).await);
    assert!(
        history.contains('1') && history.contains('2'),
        "two revisions: {history}"
    );

    // Undo goes back to the first template (its revision becomes the newest).
    ok(kubectl_async(&kc, &["rollout", "undo", "statefulset/db"]).await);
    rollout_status(&kc).await;
    let undone = pod_revisions(&http).await;
    assert_eq!(undone, before, "undo brings back the first revision");
    let (_, set) = http.call("GET", &format!("{SETS}/db"), "", "").await;
    assert_eq!(
        set["spec"]["template"]["spec"]["containers"][0]["image"],
        WEB_P2
    );

    // With partition 2 only db-2 takes the new template.
    ok(kubectl_async(
        &kc,
        &[
            "patch",
            "statefulset",
            "db",
            "-p",
            r#"{"spec":{"updateStrategy":{"type":"RollingUpdate","rollingUpdate":{"partition":2}}}}"#,
        ],
    )
    .await);
    ok(kubectl_async(
        &kc,
        &["set", "image", "statefulset/db", &format!("web={v2}")],
    )
    .await);
    let status = rollout_status(&kc).await;
    assert!(status.contains("partitioned roll out complete"), "{status}");
    let partitioned = pod_revisions(&http).await;
    assert_eq!(
        &partitioned[..2],
        &before[..2],
        "below the partition: unchanged"
    );
    assert_eq!(partitioned[2], after[2], "db-2 updated");

    // Scaling down removes the highest ordinal first; the claims stay.
    let uids = pod_uids(&http).await;
    ok(kubectl_async(&kc, &["scale", "statefulset", "db", "--replicas=1"]).await);
    wait_for("db scaled to 1", Duration::from_secs(60), async || {
        let (_, list) = http
            .call("GET", &format!("{PODS}?labelSelector=app%3Ddb"), "", "")
            .await;
        (list["items"].as_array().map(Vec::len) == Some(1)).then_some(())
    })
    .await;
    assert_eq!(deletion_order(&seen, &uids, 2).await, ["db-2", "db-1"]);
    for i in 0..3 {
        let (status, _) = http
            .call("GET", &format!("{CLAIMS}/data-db-{i}"), "", "")
            .await;
        assert_eq!(status, 200, "claim data-db-{i} is retained");
    }

    // Deleting the set takes its pods and revisions.
    ok(kubectl_async(&kc, &["delete", "statefulset", "db"]).await);
    wait_for(
        "db's pods and revisions gone",
        Duration::from_secs(30),
        async || {
            let (_, pods) = http
                .call("GET", &format!("{PODS}?labelSelector=app%3Ddb"), "", "")
                .await;
            let (_, revisions) = http
                .call(
                    "GET",
                    "/apis/apps/v1/namespaces/default/controllerrevisions",
                    "",
                    "",
                )
                .await;
            let empty = |v: &Value| v["items"].as_array().is_some_and(Vec::is_empty);
            (empty(&pods) && empty(&revisions)).then_some(())
        },
    )
    .await;
    watch.abort();
}
