//! Pods as groups of Wasm modules: HTTP workloads on the pod loopback, modules of one pod
//! talking over localhost, shared volumes, ConfigMaps and Secrets, probes, restarts, limits,
//! and guests that misbehave without hurting the agent or other pods.

use std::time::Duration;

use serde_json::{json, Value};
use shoal_examples::{HELLO_P1, HELLO_P2, MISBEHAVE_P1, MISBEHAVE_P2, WEB_P2};
use shoal_tests::*;

const PODS: &str = "/api/v1/namespaces/default/pods";

async fn create(http: &Http, path: &str, object: Value) {
    let (status, body) = http
        .call("POST", path, "application/json", &object.to_string())
        .await;
    assert_eq!(status, 201, "creating {object}: {body}");
}

async fn get_pod(http: &Http, name: &str) -> Value {
    http.call("GET", &format!("{PODS}/{name}"), "", "").await.1
}

/// Waits until `check` holds for the pod, and returns it.
async fn wait_pod(http: &Http, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    wait_for(
        &format!("pod {name}: {what}"),
        Duration::from_secs(60),
        async || {
            let pod = get_pod(http, name).await;
            check(&pod).then_some(pod)
        },
    )
    .await
}

fn ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

fn web_container(name: &str, port: u16) -> Value {
    json!({"name": name, "image": WEB_P2, "ports": [{"containerPort": port}],
           "env": [{"name": "NAME", "value": name}, {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_hello_serves_through_the_pod_proxy_and_the_gateway() {
    let cluster = TestCluster::start(1).await;
    let http = cluster.http();
    create(&http, PODS, json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"}, "spec": {"containers": [web_container("hello", 8080)]}})).await;
    let pod = wait_pod(&http, "web", "Ready", ready).await;
    let status = &pod["status"]["containerStatuses"][0];
    assert!(
        status["state"]["running"].is_object(),
        "an HTTP container is Running: {status}"
    );
    assert!(status["state"]["terminated"].is_null() && status["ready"] == true);
    assert_eq!(pod["status"]["phase"], "Running");

    assert_eq!(
        proxy_get(&http, "web:8080", "/").await,
        (200, "Hello from hello (pod web)\n".to_string())
    );
    assert_eq!(
        proxy_get(&http, "web", "/echo").await,
        (200, "Method::Get ".to_string()),
        "the first declared port is the default"
    );
    let (status, body) = http
        .raw(
            "POST",
            &format!("{PODS}/web:8080/proxy/echo"),
            "text/plain",
            "posted body",
        )
        .await;
    assert_eq!(
        (status, String::from_utf8_lossy(&body).as_ref()),
        (200, "Method::Post posted body")
    );
    let (status, _) = proxy_get(&http, "web:9090", "/").await;
    assert_eq!(status, 502, "nobody serves port 9090");

    // The same through the agent's gateway, as other nodes reach the pod.
    let gateway = Http::gateway(
        &format!("https://{}", cluster.cluster.agents[0].gateway_addr),
        cluster.cluster.control.node_gateway_tls("node-9").unwrap(),
    );
    let (status, body) = gateway.raw("GET", "/proxy/default/web/8080/", "", "").await;
    assert_eq!(
        (status, String::from_utf8_lossy(&body).as_ref()),
        (200, "Hello from hello (pod web)\n")
    );

    // A handler that traps answers 502, is recorded in the container status, and the
    // container keeps serving.
    let (status, body) = proxy_get(&http, "web:8080", "/crash").await;
    assert_eq!(status, 502, "{body}");
    let pod = wait_pod(&http, "web", "the trap is recorded", |p| {
        p["status"]["containerStatuses"][0]["restartCount"] == 1
    })
    .await;
    let last = &pod["status"]["containerStatuses"][0]["lastState"]["terminated"];
    assert_eq!(last["reason"], "Error");
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("crash requested")
            || last["message"].as_str().unwrap().contains("unreachable"),
        "{last}"
    );
    assert_eq!(proxy_get(&http, "web:8080", "/healthz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modules_of_a_pod_talk_over_localhost_and_nothing_else() {
    let cluster = TestCluster::start(1).await;
    let http = cluster.http();
    let spec =
        json!({"containers": [web_container("frontend", 8080), web_container("backend", 8081)]});
    create(
        &http,
        PODS,
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "duo"}, "spec": spec}),
    )
    .await;
    create(&http, PODS, json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "neighbour"}, "spec": {"containers": [web_container("neighbour", 8082)]}})).await;
    wait_pod(&http, "duo", "Ready", ready).await;
    wait_pod(&http, "neighbour", "Ready", ready).await;

    assert_eq!(
        proxy_get(&http, "duo:8080", "/call/localhost:8081/")
            .await
            .1,
        "200 Hello from backend (pod duo)\n"
    );
    assert_eq!(
        proxy_get(&http, "duo:8081", "/call/127.0.0.1:8080/")
            .await
            .1,
        "200 Hello from frontend (pod duo)\n"
    );
    let (_, refused) = proxy_get(&http, "duo:8080", "/call/localhost:8082/").await;
    assert!(
        refused.contains("ConnectionRefused"),
        "another pod's port is not on this pod's loopback: {refused}"
    );
    let (_, denied) = proxy_get(&http, "duo:8080", "/call/example.com/").await;
    assert!(denied.contains("HttpRequestDenied"), "{denied}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_p1_writer_and_a_p2_reader_share_an_empty_dir() {
    let cluster = TestCluster::start(1).await;
    let http = cluster.http();
    let mount = json!([{"name": "shared", "mountPath": "/shared"}]);
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pair"}, "spec": {
        "restartPolicy": "Never",
        "volumes": [{"name": "shared", "emptyDir": {}}],
        "initContainers": [{"name": "writer", "image": HELLO_P1, "args": ["writer", "--write", "/shared/message.txt"], "volumeMounts": mount}],
        "containers": [{"name": "reader", "image": HELLO_P2, "args": ["reader", "--read", "/shared/message.txt"], "volumeMounts": mount}]
    }});
    create(&http, PODS, pod).await;
    wait_phase(&http, "default", "pair", "Succeeded").await;
    let (_, log) = http
        .raw("GET", &format!("{PODS}/pair/log?container=reader"), "", "")
        .await;
    assert!(
        String::from_utf8_lossy(&log)
            .contains("read /shared/message.txt: Hello, writer! (from a wasip1 module)"),
        "{log:?}"
    );
    let pod = get_pod(&http, "pair").await;
    assert_eq!(
        pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["reason"],
        "Completed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmaps_and_secrets_reach_env_and_files() {
    let cluster = TestCluster::start(1).await;
    let http = cluster.http();
    create(&http, "/api/v1/namespaces/default/configmaps", json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "greeting"}, "data": {"greeting": "Bonjour", "app.conf": "mode=friendly"}})).await;
    create(&http, "/api/v1/namespaces/default/secrets", json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "token"}, "stringData": {"token": "s3cret"}})).await;
    let container = json!({"name": "greeter", "image": WEB_P2, "ports": [{"containerPort": 8080}],
        "env": [{"name": "NAME", "value": "greeter"}, {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "greeting", "key": "greeting"}}}],
        "envFrom": [{"prefix": "SECRET_", "secretRef": {"name": "token"}}],
        "volumeMounts": [{"name": "config", "mountPath": "/config"}, {"name": "token", "mountPath": "/secret"}]});
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "greeter"}, "spec": {"containers": [container], "volumes": [
        {"name": "config", "configMap": {"name": "greeting", "items": [{"key": "app.conf", "path": "conf/app.conf"}]}},
        {"name": "token", "secret": {"secretName": "token"}}]}});
    create(&http, PODS, pod).await;
    wait_pod(&http, "greeter", "Ready", ready).await;
    assert_eq!(
        proxy_get(&http, "greeter:8080", "/").await.1,
        "Bonjour from greeter\n"
    );
    assert_eq!(
        proxy_get(&http, "greeter:8080", "/env/SECRET_token")
            .await
            .1,
        "s3cret"
    );
    assert_eq!(
        proxy_get(&http, "greeter:8080", "/file/config/conf/app.conf")
            .await
            .1,
        "mode=friendly"
    );
    assert_eq!(
        proxy_get(&http, "greeter:8080", "/file/secret/token")
            .await
            .1,
        "s3cret"
    );
    let (status, body) = http
        .raw(
            "PUT",
            &format!("{PODS}/greeter:8080/proxy/file/config/conf/app.conf"),
            "text/plain",
            "tampered",
        )
        .await;
    assert_eq!(status, 403, "a configMap volume is read-only: {body:?}");

    // A pod naming a missing ConfigMap waits with a reason naming it.
    let missing = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "lost"}, "spec": {"containers": [{"name": "c", "image": WEB_P2, "ports": [{"containerPort": 80}],
        "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "nowhere", "key": "k"}}}]}]}});
    create(&http, PODS, missing).await;
    let pod = wait_pod(&http, "lost", "a waiting reason", |p| {
        p.pointer("/status/containerStatuses/0/state/waiting/reason")
            == Some(&json!("CreateContainerConfigError"))
    })
    .await;
    assert!(
        pod.pointer("/status/containerStatuses/0/state/waiting/message")
            .unwrap()
            .as_str()
            .unwrap()
            .contains("\"nowhere\""),
        "{pod}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_drive_readiness_and_restarts() {
    let cluster = TestCluster::start(1).await;
    let http = cluster.http();
    let probe = |flag: &str| json!({"httpGet": {"path": format!("/flag/{flag}"), "port": "web"}, "periodSeconds": 1, "failureThreshold": 1});
    let container = json!({"name": "app", "image": WEB_P2, "ports": [{"name": "web", "containerPort": 8080}],
        "readinessProbe": probe("ready"), "volumeMounts": [{"name": "data", "mountPath": "/data"}]});
    create(&http, PODS, json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probed"}, "spec": {"containers": [container], "volumes": [{"name": "data", "emptyDir": {}}]}})).await;
    let pod = wait_pod(&http, "probed", "Running", |p| {
        p["status"]["phase"] == "Running"
    })
    .await;
    assert!(!ready(&pod), "not ready before the readiness probe passes");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!ready(&get_pod(&http, "probed").await));
    let (status, _) = http
        .raw(
            "PUT",
            &format!("{PODS}/probed:8080/proxy/file/data/ready"),
            "text/plain",
            "yes",
        )
        .await;
    assert_eq!(status, 200);
    wait_pod(&http, "probed", "Ready after the flag is set", ready).await;

    let liveness = json!({"name": "app", "image": WEB_P2, "ports": [{"name": "web", "containerPort": 8080}], "livenessProbe": probe("alive"),
        "volumeMounts": [{"name": "data", "mountPath": "/data"}]});
    create(&http, PODS, json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "unhealthy"}, "spec": {"containers": [liveness], "volumes": [{"name": "data", "emptyDir": {}}]}})).await;
    let pod = wait_pod(&http, "unhealthy", "restarted by its liveness probe", |p| {
        p["status"]["containerStatuses"][0]["restartCount"]
            .as_i64()
            .unwrap_or(0)
            >= 1
    })
    .await;
    let message = pod["status"]["containerStatuses"][0]["lastState"]["terminated"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("Liveness probe failed") && message.contains("503"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_guests_end_alone() {
    let cluster = TestCluster::start(1).await;
    let http = cluster.http();
    create(&http, PODS, json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "steady"}, "spec": {"containers": [web_container("steady", 8080)]}})).await;
    wait_pod(&http, "steady", "Ready", ready).await;

    let bad = |name: &str, image: &str, args: Value, extra: Value| {
        let mut spec = json!({"restartPolicy": "Never", "containers": [{"name": "main", "image": image, "args": args}]});
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})
    };
    create(
        &http,
        PODS,
        bad(
            "spinner",
            MISBEHAVE_P1,
            json!(["spin"]),
            json!({"activeDeadlineSeconds": 3}),
        ),
    )
    .await;
    create(
        &http,
        PODS,
        bad(
            "flooder",
            MISBEHAVE_P2,
            json!(["flood"]),
            json!({"activeDeadlineSeconds": 3}),
        ),
    )
    .await;
    let mut hog = bad("hog", MISBEHAVE_P1, json!(["hog"]), json!({}));
    hog["spec"]["containers"][0]["resources"] = json!({"limits": {"memory": "32Mi"}});
    create(&http, PODS, hog).await;
    create(
        &http,
        PODS,
        bad("overflow", MISBEHAVE_P2, json!(["overflow"]), json!({})),
    )
    .await;
    create(
        &http,
        PODS,
        bad("exit3", MISBEHAVE_P1, json!(["exit", "3"]), json!({})),
    )
    .await;
    let mut linkless = bad("linkless", "", json!([]), json!({}));
    // A core module importing a function no host provides.
    let module = cluster.dir.path().join("linkless.wasm");
    std::fs::write(
        &module,
        b"\0asm\x01\0\0\0\x01\x04\x01\x60\0\0\x02\x0f\x01\x03env\x07missing\0\0",
    )
    .unwrap();
    linkless["spec"]["containers"][0]["image"] = json!(module.to_str().unwrap());
    create(&http, PODS, linkless).await;

    // While they spin, flood and allocate, the steady pod keeps answering.
    for _ in 0..10 {
        let started = std::time::Instant::now();
        assert_eq!(proxy_get(&http, "steady:8080", "/healthz").await.0, 200);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a request took {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let terminated = |pod: &Value| {
        pod.pointer("/status/containerStatuses/0/state/terminated")
            .cloned()
            .unwrap_or(Value::Null)
    };
    let spinner = wait_pod(&http, "spinner", "Failed", |p| {
        p["status"]["phase"] == "Failed"
    })
    .await;
    assert_eq!(spinner["status"]["reason"], "DeadlineExceeded");
    assert_eq!(terminated(&spinner)["reason"], "DeadlineExceeded");
    let flooder = wait_pod(&http, "flooder", "Failed", |p| {
        p["status"]["phase"] == "Failed"
    })
    .await;
    assert_eq!(flooder["status"]["reason"], "DeadlineExceeded");
    let hog = wait_pod(&http, "hog", "Failed", |p| p["status"]["phase"] == "Failed").await;
    assert_eq!(terminated(&hog)["reason"], "OOMKilled", "{hog}");
    let overflow = wait_pod(&http, "overflow", "Failed", |p| {
        p["status"]["phase"] == "Failed"
    })
    .await;
    assert_eq!(terminated(&overflow)["reason"], "Error");
    // Rust keeps its stack in linear memory: overflowing it is an out-of-bounds access.
    assert!(
        terminated(&overflow)["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("wasm trap: out of bounds"),
        "{overflow}"
    );
    let exit3 = wait_pod(&http, "exit3", "Failed", |p| {
        p["status"]["phase"] == "Failed"
    })
    .await;
    assert_eq!(terminated(&exit3)["exitCode"], 3);
    let linkless = wait_pod(&http, "linkless", "a waiting reason", |p| {
        p.pointer("/status/containerStatuses/0/state/waiting/reason")
            == Some(&json!("CreateContainerError"))
    })
    .await;
    let message = linkless
        .pointer("/status/containerStatuses/0/state/waiting/message")
        .unwrap()
        .as_str()
        .unwrap();
    assert!(
        message.contains("cannot be linked") && message.contains("missing"),
        "{message}"
    );

    // The flood was cut to the log's bound, and its tail is still readable.
    let (status, tail) = http
        .raw("GET", &format!("{PODS}/flooder/log?tailLines=2"), "", "")
        .await;
    assert_eq!(status, 200);
    assert_eq!(String::from_utf8_lossy(&tail).lines().count(), 2);
    let (_, whole) = http
        .raw("GET", &format!("{PODS}/flooder/log"), "", "")
        .await;
    assert!(
        whole.len() <= (1 << 20) + (16 << 10),
        "log of {} bytes",
        whole.len()
    );
    assert_eq!(proxy_get(&http, "steady:8080", "/healthz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loops_back_off_and_keep_the_previous_log() {
    let cluster = TestCluster::start(1).await;
    let http = cluster.http();
    create(
        &http,
        PODS,
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "crasher"},
        "spec": {"containers": [{"name": "main", "image": MISBEHAVE_P2, "args": ["crash"]}]}}),
    )
    .await;
    let pod = wait_pod(&http, "crasher", "restarted twice", |p| {
        p["status"]["containerStatuses"][0]["restartCount"]
            .as_i64()
            .unwrap_or(0)
            >= 2
    })
    .await;
    let status = &pod["status"]["containerStatuses"][0];
    assert_eq!(status["lastState"]["terminated"]["reason"], "Error");
    assert_eq!(
        pod["status"]["phase"], "Running",
        "restartPolicy Always keeps the pod Running"
    );
    let pod = wait_pod(&http, "crasher", "in CrashLoopBackOff", |p| {
        p.pointer("/status/containerStatuses/0/state/waiting/reason")
            == Some(&json!("CrashLoopBackOff"))
    })
    .await;
    assert!(pod
        .pointer("/status/containerStatuses/0/state/waiting/message")
        .unwrap()
        .as_str()
        .unwrap()
        .contains("back-off"));
    let (status, previous) = http
        .raw("GET", &format!("{PODS}/crasher/log?previous=true"), "", "")
        .await;
    assert_eq!(status, 200);
    assert!(
        String::from_utf8_lossy(&previous).contains("misbehave: crash"),
        "{previous:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_cannot_leave_their_mounts() {
    let allowed = tempfile::tempdir().unwrap();
    let volume = allowed.path().join("vol");
    std::fs::create_dir_all(&volume).unwrap();
    std::os::unix::fs::symlink("/etc", volume.join("link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", volume.join("escape-link")).unwrap();
    let prefix = allowed.path().to_path_buf();
    let cluster = TestCluster::start_with(1, move |config| {
        config.host_path_allow = vec![prefix.clone()]
    })
    .await;
    let http = cluster.http();
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "escaper"}, "spec": {"restartPolicy": "Never",
        "volumes": [{"name": "data", "hostPath": {"path": volume.to_str().unwrap()}}],
        "containers": [{"name": "main", "image": MISBEHAVE_P1, "args": ["escape"], "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}});
    create(&http, PODS, pod).await;
    wait_phase(&http, "default", "escaper", "Succeeded").await;
    let (_, log) = http
        .raw("GET", &format!("{PODS}/escaper/log"), "", "")
        .await;
    let log = String::from_utf8_lossy(&log);
    assert!(
        !log.contains("READ"),
        "a guest read outside its mounts:\n{log}"
    );
    assert_eq!(log.matches("DENIED").count(), 5, "{log}");

    // A hostPath outside the agent's allow-list is refused with a reason.
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "rooted"}, "spec": {"restartPolicy": "Never",
        "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
        "containers": [{"name": "main", "image": MISBEHAVE_P1, "args": ["escape"], "volumeMounts": [{"name": "root", "mountPath": "/data"}]}]}});
    create(&http, PODS, pod).await;
    let pod = wait_pod(&http, "rooted", "a waiting reason", |p| {
        p.pointer("/status/containerStatuses/0/state/waiting/reason")
            .is_some_and(|r| r != "ContainerCreating")
    })
    .await;
    let message = pod
        .pointer("/status/containerStatuses/0/state/waiting/message")
        .unwrap()
        .as_str()
        .unwrap();
    assert!(
        message.contains("hostPath \"/\" is not allowed"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_spins_hits_its_deadline() {
    let cluster =
        TestCluster::start_with(1, |config| config.request_deadline = Duration::from_secs(1)).await;
    let http = cluster.http();
    create(&http, PODS, json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "spinny"}, "spec": {"containers": [web_container("spinny", 8080)]}})).await;
    wait_pod(&http, "spinny", "Ready", ready).await;
    let started = std::time::Instant::now();
    let (status, body) = proxy_get(&http, "spinny:8080", "/spin").await;
    assert_eq!(status, 504, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let pod = wait_pod(&http, "spinny", "the deadline is recorded", |p| {
        p["status"]["containerStatuses"][0]["restartCount"] == 1
    })
    .await;
    assert_eq!(
        pod["status"]["containerStatuses"][0]["lastState"]["terminated"]["reason"],
        "DeadlineExceeded"
    );
    assert_eq!(
        proxy_get(&http, "spinny:8080", "/healthz").await.0,
        200,
        "the container keeps serving"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_http_pod_drains_its_requests() {
    let cluster = TestCluster::start(1).await;
    let http = cluster.http();
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "draining"},
        "spec": {"terminationGracePeriodSeconds": 10, "containers": [web_container("draining", 8080)]}});
    create(&http, PODS, pod).await;
    wait_pod(&http, "draining", "Ready", ready).await;
    let slow_http = cluster.http();
    let slow =
        tokio::spawn(async move { proxy_get(&slow_http, "draining:8080", "/sleep/1500").await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let started = std::time::Instant::now();
    let (status, _) = http
        .call(
            "DELETE",
            &format!("{PODS}/draining"),
            "application/json",
            "{}",
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        slow.await.unwrap(),
        (200, "slept 1500 ms\n".to_string()),
        "the in-flight request finished"
    );
    wait_for("the pod to be gone", Duration::from_secs(20), async || {
        (http
            .call("GET", &format!("{PODS}/draining"), "", "")
            .await
            .0
            == 404)
            .then_some(())
    })
    .await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(10),
        "deletion took {waited:?}: it waits for in-flight requests, not the whole grace period"
    );
}

/// The outside network is closed to pods unless a cluster admin opens their namespace: a pod's
/// own annotation does nothing, and a namespace admin cannot annotate the namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_is_closed_unless_an_admin_opens_the_namespace() {
    // A server "outside" the cluster, on another loopback address than the pods' own.
    let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let outside = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/hi", axum::routing::get(|| async { "outside says hi" }));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let cluster = TestCluster::start(1).await;
    let http = cluster.http();
    create(&http, PODS, json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "asks", "annotations": {"shoal.dev/egress": "allow"}},
        "spec": {"containers": [web_container("asks", 8080)]}})).await;
    wait_pod(&http, "asks", "Ready", ready).await;
    let path = format!("/call/{outside}/hi");
    let (_, denied) = proxy_get(&http, "asks:8080", &path).await;
    assert!(denied.contains("HttpRequestDenied"), "{denied}");

    // A namespace admin may not open it...
    let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "dana-admin", "namespace": "default"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
        "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "dana"}]});
    create(
        &http,
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
        binding,
    )
    .await;
    let dana = Http::from_kubeconfig(&cluster.kubeconfig_for("dana", &[]));
    let open = json!({"metadata": {"annotations": {"shoal.dev/egress": "allow"}}}).to_string();
    let merge = "application/merge-patch+json";
    let (status, body) = dana
        .call("PATCH", "/api/v1/namespaces/default", merge, &open)
        .await;
    assert_eq!(status, 403, "{body}");
    // ...the cluster admin may.
    let (status, body) = http
        .call("PATCH", "/api/v1/namespaces/default", merge, &open)
        .await;
    assert_eq!(status, 200, "{body}");
    let answer = wait_for(
        "the namespace to open",
        Duration::from_secs(10),
        async || {
            let (_, answer) = proxy_get(&http, "asks:8080", &path).await;
            answer.starts_with("200").then_some(answer)
        },
    )
    .await;
    assert_eq!(answer, "200 outside says hi");
    server.abort();
}

/// The pod lifecycle's consequences, beyond status: a failed liveness probe restarts a command
/// (a second run, with the first one's log as `--previous`), a failed startup probe ends an
/// HTTP container that is never restarted (the pod fails), and `activeDeadlineSeconds` stops an
/// HTTP pod from serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_deadlines_stop_and_restart_containers() {
    let cluster = TestCluster::start(1).await;
    let http = cluster.http();
    let flag_probe = |flag: &str| json!({"httpGet": {"path": format!("/flag/{flag}"), "port": 8080}, "periodSeconds": 1, "failureThreshold": 2});
    let data = json!([{"name": "data", "mountPath": "/data"}]);
    let volumes = json!([{"name": "data", "emptyDir": {}}]);

    // A command whose liveness depends on a flag its sibling serves: absent, so it restarts.
    let web = json!({"name": "web", "image": WEB_P2, "ports": [{"containerPort": 8080}], "volumeMounts": data});
    let worker = json!({"name": "worker", "image": HELLO_P1, "args": ["worker", "--sleep-ms", "600000"],
        "livenessProbe": flag_probe("alive")});
    create(
        &http,
        PODS,
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sleeper"},
        "spec": {"containers": [web, worker], "volumes": volumes}}),
    )
    .await;
    let pod = wait_pod(&http, "sleeper", "the worker restarted", |p| {
        p["status"]["containerStatuses"][1]["restartCount"]
            .as_i64()
            .unwrap_or(0)
            >= 1
    })
    .await;
    let last = &pod["status"]["containerStatuses"][1]["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 137, "{pod}");
    assert!(
        last["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Liveness probe failed"),
        "{pod}"
    );
    wait_for(
        "the first run's log as --previous",
        Duration::from_secs(30),
        async || {
            let (status, body) = http
                .raw(
                    "GET",
                    &format!("{PODS}/sleeper/log?container=worker&previous=true"),
                    "",
                    "",
                )
                .await;
            (status == 200 && String::from_utf8_lossy(&body).contains("Hello, worker!"))
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        get_pod(&http, "sleeper").await["status"]["containerStatuses"][0]["restartCount"],
        0,
        "the healthy sibling is untouched"
    );

    // An HTTP container whose startup probe never passes, in a pod that never restarts.
    let slow = json!({"name": "slow", "image": WEB_P2, "ports": [{"containerPort": 8080}], "volumeMounts": data,
        "startupProbe": flag_probe("started")});
    create(
        &http,
        PODS,
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "never-started"},
        "spec": {"restartPolicy": "Never", "containers": [slow], "volumes": volumes}}),
    )
    .await;
    let pod = wait_pod(&http, "never-started", "Failed", |p| {
        p["status"]["phase"] == "Failed"
    })
    .await;
    let state = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
    assert!(
        state["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Startup probe failed"),
        "{pod}"
    );
    let (status, _) = proxy_get(&http, "never-started:8080", "/").await;
    assert_ne!(status, 200, "a killed HTTP container serves no more");

    // An HTTP pod past its activeDeadlineSeconds stops serving.
    create(
        &http,
        PODS,
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "short-lived"},
        "spec": {"activeDeadlineSeconds": 2, "containers": [web_container("short", 8080)]}}),
    )
    .await;
    wait_pod(&http, "short-lived", "Ready", ready).await;
    assert_eq!(proxy_get(&http, "short-lived:8080", "/").await.0, 200);
    let pod = wait_pod(&http, "short-lived", "Failed", |p| {
        p["status"]["phase"] == "Failed"
    })
    .await;
    assert_eq!(pod["status"]["reason"], "DeadlineExceeded");
    assert_eq!(
        pod["status"]["containerStatuses"][0]["state"]["terminated"]["reason"],
        "DeadlineExceeded"
    );
    let (status, _) = proxy_get(&http, "short-lived:8080", "/").await;
    assert_ne!(status, 200, "past its deadline the pod serves no more");
}

/// A native sidecar (an init container with `restartPolicy: Always`) is serving on the pod's
/// loopback before the main container starts (the main container's one GET to it must
/// succeed, or the Job fails: `backoffLimit: 0`), and the Job completes when its main
/// container exits, though the sidecar would serve forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_sidecar_serves_before_the_app_and_does_not_hold_a_job() {
    let cluster = TestCluster::start(1).await;
    let http = cluster.http();
    let sidecar = json!({"name": "cache", "image": WEB_P2, "restartPolicy": "Always",
        "ports": [{"containerPort": 9090}]});
    let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "with-sidecar"},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "initContainers": [sidecar],
            "containers": [{"name": "main", "image": HELLO_P2,
                "args": ["main", "--get", "localhost:9090/healthz"]}]}}}});
    create(&http, "/apis/batch/v1/namespaces/default/jobs", job).await;
    let job_path = "/apis/batch/v1/namespaces/default/jobs/with-sidecar";
    let job = wait_for("the Job to finish", Duration::from_secs(60), async || {
        let (_, job) = http.call("GET", job_path, "", "").await;
        let finished = job["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter().any(|c| {
                (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True"
            })
        });
        finished.then_some(job)
    })
    .await;
    assert_eq!(job["status"]["succeeded"], 1, "{job}");
    let (_, pods) = http
        .call(
            "GET",
            &format!("{PODS}?labelSelector=job-name%3Dwith-sidecar"),
            "",
            "",
        )
        .await;
    let pod = &pods["items"][0];
    let name = pod["metadata"]["name"].as_str().unwrap();
    assert_eq!(pod["status"]["phase"], "Succeeded", "{pod}");
    let (_, log) = http
        .raw("GET", &format!("{PODS}/{name}/log?container=main"), "", "")
        .await;
    let log = String::from_utf8_lossy(&log);
    assert!(log.contains("GET localhost:9090/healthz: 200 ok"), "{log}");
    // The sidecar ran beside the main container, was stopped after it, and never failed.
    let cache = &pod["status"]["initContainerStatuses"][0];
    let main = &pod["status"]["containerStatuses"][0];
    assert_eq!(cache["state"]["terminated"]["exitCode"], 0, "{cache}");
    assert_eq!(cache["restartCount"], 0, "{cache}");
    let started = |status: &Value| {
        status["state"]["terminated"]["startedAt"]
            .as_str()
            .map(str::to_owned)
    };
    let finished = |status: &Value| {
        status["state"]["terminated"]["finishedAt"]
            .as_str()
            .map(str::to_owned)
    };
    assert!(started(cache) <= started(main), "{cache} {main}");
    assert!(finished(cache) >= finished(main), "{cache} {main}");
}

/// A sidecar serves beside a serving app for the pod's life: the app reaches it over
/// localhost, its readiness probe counts toward the pod's, and `kubectl get pods` counts it
/// (READY 2/2). A `restartPolicy` on a main container is refused naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_serves_beside_the_app_and_counts_in_its_readiness() {
    let cluster = TestCluster::start(1).await;
    let http = cluster.http();
    let probe = json!({"httpGet": {"path": "/healthz", "port": 9090}, "periodSeconds": 1});
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "duo"}, "spec": {
        "initContainers": [{"name": "cache", "image": WEB_P2, "restartPolicy": "Always",
            "ports": [{"containerPort": 9090}], "readinessProbe": probe, "startupProbe": probe}],
        "containers": [{"name": "app", "image": WEB_P2, "ports": [{"containerPort": 8080}]}]}});
    create(&http, PODS, pod.clone()).await;
    let pod_now = wait_pod(&http, "duo", "Ready", ready).await;
    let cache = &pod_now["status"]["initContainerStatuses"][0];
    assert_eq!(
        (cache["started"].as_bool(), cache["ready"].as_bool()),
        (Some(true), Some(true)),
        "{cache}"
    );
    assert_eq!(
        proxy_get(&http, "duo:8080", "/call/localhost:9090/healthz").await,
        (200, "200 ok\n".to_string())
    );
    let (status, _, table) = http
        .get_accepting(
            &format!("{PODS}/duo"),
            "application/json;as=Table;v=v1;g=meta.k8s.io",
        )
        .await;
    assert_eq!(status, 200);
    let table: Value = serde_json::from_slice(&table).unwrap();
    let cells = &table["rows"][0]["cells"];
    assert_eq!(
        (cells[1].as_str(), cells[2].as_str()),
        (Some("2/2"), Some("Running")),
        "{table}"
    );

    let mut bad = pod;
    bad["metadata"]["name"] = json!("bad");
    bad["spec"]["containers"][0]["restartPolicy"] = json!("Always");
    let (status, body) = http
        .call("POST", PODS, "application/json", &bad.to_string())
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["message"].as_str().unwrap_or_default().contains(
            "spec.containers[0].restartPolicy: Forbidden: may not be set for non-init containers"
        ),
        "{body}"
    );
}
