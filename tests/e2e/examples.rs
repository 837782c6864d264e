//! Every manifest in `examples-wasm/manifests`, applied as a user would (with its
//! `~/.shoal/dev/examples/` images pointed at the built examples), does what it says.

use std::time::Duration;

use serde_json::Value;
use shoal_tests::*;

const PODS: &str = "/api/v1/namespaces/default/pods";

/// The manifest with its example images replaced by the freshly built files.
fn manifest(file: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples-wasm/manifests")
        .join(file);
    let mut text = std::fs::read_to_string(&path).unwrap();
    for (name, constant) in [
        ("hello-p1.wasm", shoal_examples::HELLO_P1),
        ("hello-p2.wasm", shoal_examples::HELLO_P2),
        ("misbehave-p1.wasm", shoal_examples::MISBEHAVE_P1),
        ("misbehave-p2.wasm", shoal_examples::MISBEHAVE_P2),
        ("web-p2.wasm", shoal_examples::WEB_P2),
        ("guestbook-p2.wasm", shoal_examples::GUESTBOOK_P2),
    ] {
        text = text.replace(&format!("~/.shoal/dev/examples/{name}"), constant);
    }
    assert!(
        !text.contains("image: ~/"),
        "{file} names an example this test does not know"
    );
    text
}

async fn pod_until(http: &Http, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    wait_for(
        &format!("{name}: {what}"),
        Duration::from_secs(60),
        async || {
            let (_, pod) = http.call("GET", &format!("{PODS}/{name}"), "", "").await;
            check(&pod).then_some(pod)
        },
    )
    .await
}

async fn get_text(http: &Http, path: &str) -> String {
    let (status, body) = http.raw("GET", path, "", "").await;
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    String::from_utf8_lossy(&body).into_owned()
}

fn ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

fn terminated_reason(pod: &Value) -> Value {
    pod.pointer("/status/containerStatuses/0/state/terminated/reason")
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_manifests_behave_as_documented() {
    let mut cluster = TestCluster::start(1).await;
    let http = cluster.http();
    let ingress_addr = cluster
        .cluster
        .start_ingress("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let ingress = Http::new(&format!("http://{ingress_addr}"));
    // Applied with kubectl where it is on the PATH (CI requires it), else with shoal.
    let with_kubectl =
        kubectl_available("example_manifests_behave_as_documented (falling back to shoal apply)");
    for file in [
        "http-hello.yaml",
        "frontend-backend.yaml",
        "writer-reader.yaml",
        "crasher.yaml",
        "spinner.yaml",
        "memory-hog.yaml",
        "greeter.yaml",
        "hello.yaml",
        "guestbook.yaml",
        "autoscale.yaml",
    ] {
        let path = cluster.dir.path().join(file);
        std::fs::write(&path, manifest(file)).unwrap();
        let args = ["apply", "-f", path.to_str().unwrap()];
        if with_kubectl {
            ok(kubectl_async(&cluster.kubeconfig, &args).await);
        } else {
            ok(shoal_async(&cluster.kubeconfig, &args).await);
        }
    }

    pod_until(&http, "http-hello", "Ready", ready).await;
    assert_eq!(
        get_text(&http, &format!("{PODS}/http-hello:8080/proxy/")).await,
        "Hello from http-hello\n"
    );

    // The autoscaled demo serves through the ingress, and its HPA reads requests per second.
    let (status, _) = wait_for(
        "the autoscale demo serves",
        Duration::from_secs(60),
        async || {
            let (status, body) = ingress
                .get_with_host("/", "autoscale.default.localhost")
                .await;
            (status == 200).then_some((status, body))
        },
    )
    .await;
    assert_eq!(status, 200);
    wait_for(
        "the autoscale HPA is active",
        Duration::from_secs(60),
        async || {
            let (_, hpa) = http
                .call(
                    "GET",
                    "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers/autoscale",
                    "",
                    "",
                )
                .await;
            let active = hpa["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "ScalingActive" && c["status"] == "True");
            active.then_some(())
        },
    )
    .await;

    // The guestbook: sign through the frontend Service, which calls the backend Service.
    let frontend = "guestbook-frontend.default.localhost";
    let page = wait_for("the guestbook page", Duration::from_secs(60), async || {
        let (status, body) = ingress.get_with_host("/", frontend).await;
        let body = String::from_utf8_lossy(&body).into_owned();
        (status == 200 && body.contains("<h1>Guestbook</h1>")).then_some(body)
    })
    .await;
    assert!(!page.contains("<li>"), "no entries yet: {page}");
    for message in ["hello+from+shoal%21", "a+%3Cb%3E+tag"] {
        let (status, headers, body) = ingress
            .send_with_host(
                "POST",
                "/sign",
                frontend,
                "application/x-www-form-urlencoded",
                &format!("message={message}"),
            )
            .await;
        assert_eq!(status, 303, "{}", String::from_utf8_lossy(&body));
        assert_eq!(headers["location"], "/");
    }
    let mut served_by = std::collections::HashSet::new();
    for _ in 0..20 {
        let (status, body) = ingress.get_with_host("/", frontend).await;
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains("<li>hello from shoal!</li>\n<li>a &lt;b&gt; tag</li>"),
            "{body}"
        );
        served_by.insert(
            body.split("served by ")
                .nth(1)
                .unwrap_or_default()
                .to_string(),
        );
    }
    assert_eq!(
        served_by.len(),
        2,
        "both frontend replicas answered: {served_by:?}"
    );
    let (status, _, body) = ingress
        .send_with_host("POST", "/sign", frontend, "", "message=")
        .await;
    assert_eq!(
        (status, String::from_utf8_lossy(&body).as_ref()),
        (400, "an entry needs some text\n")
    );

    pod_until(&http, "frontend-backend", "Ready", ready).await;
    let answer = get_text(
        &http,
        &format!("{PODS}/frontend-backend:8080/proxy/call/localhost:8081/"),
    )
    .await;
    assert_eq!(answer, "200 Hello from backend\n");

    pod_until(&http, "writer-reader", "Succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    })
    .await;
    let log = get_text(&http, &format!("{PODS}/writer-reader/log?container=reader")).await;
    assert_eq!(log, "Hello, reader! (from a wasip2 component)\nread /shared/message.txt: Hello, writer! (from a wasip1 module)\n");
    if with_kubectl {
        let log = ok(kubectl_async(
            &cluster.kubeconfig,
            &["logs", "writer-reader", "-c", "writer"],
        )
        .await);
        assert_eq!(log, "Hello, writer! (from a wasip1 module)\n");
        let table = ok(kubectl_async(&cluster.kubeconfig, &["get", "pods"]).await);
        let row = |name: &str| {
            table
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_default()
                .to_string()
        };
        assert!(row("writer-reader").contains("Completed"), "{table}");
        assert!(
            row("http-hello").contains("1/1") && row("http-hello").contains("Running"),
            "{table}"
        );
    }

    let crasher = pod_until(&http, "crasher", "restarted", |p| {
        p["status"]["containerStatuses"][0]["restartCount"]
            .as_i64()
            .unwrap_or(0)
            >= 1
    })
    .await;
    assert_eq!(
        crasher["status"]["containerStatuses"][0]["lastState"]["terminated"]["reason"],
        "Error"
    );

    let spinner = pod_until(&http, "spinner", "Failed", |p| {
        p["status"]["phase"] == "Failed"
    })
    .await;
    assert_eq!(spinner["status"]["reason"], "DeadlineExceeded");

    let hog = pod_until(&http, "memory-hog", "Failed", |p| {
        p["status"]["phase"] == "Failed"
    })
    .await;
    assert_eq!(terminated_reason(&hog), "OOMKilled");

    pod_until(&http, "greeter", "Ready", ready).await;
    assert_eq!(
        get_text(&http, &format!("{PODS}/greeter:8080/proxy/")).await,
        "Bonjour from greeter\n"
    );
    assert_eq!(
        get_text(
            &http,
            &format!("{PODS}/greeter:8080/proxy/file/config/app.conf")
        )
        .await,
        "mode=friendly"
    );

    pod_until(&http, "hello", "Succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    })
    .await;
    assert_eq!(
        get_text(&http, &format!("{PODS}/hello/log")).await,
        "Hello, you! (from a wasip2 component)\nline 1\nline 2\nline 3\n"
    );
}

/// The official Python client against the cluster: `utils.create_from_yaml` on every example
/// manifest (each into its own namespace), CRUD of a ConfigMap and a Deployment, and a watch
/// with `timeout_seconds`.
const PYTHON_CLIENT: &str = r#"
import json, sys
from kubernetes import client, config, utils, watch

config.load_kube_config(sys.argv[1])
image = sys.argv[2]
api = client.ApiClient()
core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
created = {}
for i, path in enumerate(sys.argv[3:]):
    namespace = "example-%d" % i
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    groups = utils.create_from_yaml(api, path, namespace=namespace)
    created[path.rsplit("/", 1)[-1]] = sum(len(g) if isinstance(g, list) else 1 for g in groups)

meta = client.V1ObjectMeta(name="py")
core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=meta, data={"a": "1"}))
core.patch_namespaced_config_map("py", "default", {"data": {"b": "2"}})
current = core.read_namespaced_config_map("py", "default")
current.data["c"] = "3"
replaced = core.replace_namespaced_config_map("py", "default", current)
configmap = dict(replaced.data)
core.delete_namespaced_config_map("py", "default")

container = client.V1Container(name="web", image=image)
template = client.V1PodTemplateSpec(metadata=client.V1ObjectMeta(labels={"app": "py"}),
                                    spec=client.V1PodSpec(containers=[container]))
spec = client.V1DeploymentSpec(replicas=1, template=template,
                               selector=client.V1LabelSelector(match_labels={"app": "py"}))
apps.create_namespaced_deployment("default", client.V1Deployment(metadata=meta, spec=spec))
apps.patch_namespaced_deployment_scale("py", "default", {"spec": {"replicas": 2}})
replicas = apps.read_namespaced_deployment("py", "default").spec.replicas
apps.delete_namespaced_deployment("py", "default")

events = [e["type"] + " " + e["object"].metadata.name
          for e in watch.Watch().stream(core.list_namespaced_config_map, "example-0",
                                        timeout_seconds=2)]
print(json.dumps({"created": created, "configmap": configmap, "replicas": replicas,
                  "events": events}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_creates_the_examples_from_yaml() {
    let Some(python) = python_client("the_python_client_creates_the_examples_from_yaml") else {
        return;
    };
    let cluster = TestCluster::start(1).await;
    let dir = cluster.dir.path();
    let mut files = Vec::new();
    let examples =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples-wasm/manifests");
    let mut names: Vec<String> = std::fs::read_dir(&examples)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    for name in &names {
        let path = dir.join(name);
        std::fs::write(&path, manifest(name)).unwrap();
        files.push(path);
    }
    let mut args = vec![
        cluster.kubeconfig.as_os_str(),
        std::ffi::OsStr::new(shoal_examples::WEB_P2),
    ];
    args.extend(files.iter().map(|f| f.as_os_str()));
    let result = run_python(&python, dir, PYTHON_CLIENT, &args).await;
    let http = cluster.http();
    for (i, name) in names.iter().enumerate() {
        let count = result["created"][name].as_u64().unwrap_or(0);
        let documents = manifest(name)
            .lines()
            .filter(|line| line.starts_with("kind:"))
            .count();
        assert_eq!(count as usize, documents, "{name}: every document created");
        // What it made is there: at least one object in its namespace.
        let namespace = format!("example-{i}");
        let mut found = 0;
        for list in [
            "/api/v1/namespaces/NS/pods",
            "/apis/apps/v1/namespaces/NS/deployments",
            "/api/v1/namespaces/NS/services",
            "/api/v1/namespaces/NS/configmaps",
        ] {
            let (_, items) = http
                .call("GET", &list.replace("NS", &namespace), "", "")
                .await;
            found += items["items"].as_array().map_or(0, Vec::len);
        }
        assert!(found > 0, "{name} created nothing in {namespace}");
    }
    assert_eq!(
        result["configmap"],
        serde_json::json!({"a": "1", "b": "2", "c": "3"})
    );
    assert_eq!(result["replicas"], 2);
    assert!(
        result["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e.as_str().is_some_and(|e| e.starts_with("ADDED "))),
        "{}",
        result["events"]
    );
}
