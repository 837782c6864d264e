//! Into the pod: `kubectl port-forward` carries local connections into a pod's port through
//! the API server and the agent (WebSocket, SPDY/3.1 tunnelled), as on Kubernetes; the pod
//! proxy passes requests in without the caller's credential.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use shoal_tests::*;

/// A running `kubectl port-forward`, killed when dropped.
struct Forward {
    child: Child,
    port: u16,
}

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `kubectl port-forward TARGET :PORT` and waits for the local port it chose.
async fn port_forward(kubeconfig: &std::path::Path, target: &str, port: u16) -> Forward {
    let cache = kubeconfig.parent().unwrap().join("kubectl-cache");
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(&cache)
        .args(["port-forward", target, &format!(":{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // "Forwarding from 127.0.0.1:41234 -> 8080"
    let local = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let line = lines.next()?.ok()?;
        let port = line
            .strip_prefix("Forwarding from 127.0.0.1:")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        // Keep reading, so kubectl never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Some(port)
    });
    let port = tokio::time::timeout(Duration::from_secs(30), local)
        .await
        .expect("kubectl port-forward printed its port in time")
        .unwrap();
    Forward {
        child,
        port: port.expect("kubectl port-forward printed `Forwarding from 127.0.0.1:PORT`"),
    }
}

/// What the `web` guest's `/echo` puts before the body it echoes.
const ECHOED: &str = "Method::Post ";

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<bytes::Bytes>,
>;

fn client() -> Client {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

async fn call(client: &Client, method: &str, url: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
    let request = http::Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
        .await
        .expect("an answer in time")
        .expect("an answer");
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, body.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_port_forward_carries_connections_into_the_pod() {
    if !kubectl_available("kubectl_port_forward_carries_connections_into_the_pod") {
        return;
    }
    let cluster = TestCluster::start(1).await;
    let kc = cluster.kubeconfig.as_path();
    let http = cluster.http();
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: web}}\nspec:\n  containers:\n  - name: web\n    image: {}\n    ports: [{{containerPort: 8080}}]\n",
        shoal_examples::WEB_P2
    );
    ok(kubectl_stdin_async(kc, &["apply", "-f", "-"], &pod).await);
    wait_phase(&http, "default", "web", "Running").await;
    // The pod proxy passes requests in, but never the caller's credential: authenticated
    // by its certificate, a request's Authorization header stops at the API server.
    let with_token = http.clone().bearer("a-secret-the-pod-must-not-see");
    let (status, body) = proxy_get(&with_token, "web:8080", "/header/authorization").await;
    assert_eq!((status, body.as_str()), (404, "no header authorization\n"));
    // Other headers do reach the pod.
    let proxied = "/api/v1/namespaces/default/pods/web:8080/proxy/header/content-type";
    let (status, body) = with_token.raw("GET", proxied, "text/x-probe", "").await;
    assert_eq!((status, &body[..]), (200, &b"text/x-probe"[..]));

    let forward = port_forward(kc, "pod/web", 8080).await;
    let base = format!("http://127.0.0.1:{}", forward.port);

    // 100 sequential requests on one kept-alive connection.
    let keep_alive = client();
    for i in 0..100 {
        let (status, body) = call(&keep_alive, "GET", &format!("{base}/"), vec![]).await;
        assert_eq!(
            status,
            200,
            "request {i}: {}",
            String::from_utf8_lossy(&body)
        );
        assert!(
            String::from_utf8_lossy(&body).starts_with("Hello from web"),
            "request {i}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    // 20 at once, each on its own connection.
    let calls = (0..20).map(|i| {
        let base = base.clone();
        tokio::spawn(async move {
            let (status, body) = call(
                &client(),
                "POST",
                &format!("{base}/echo"),
                format!("call {i}").into_bytes(),
            )
            .await;
            (status, String::from_utf8_lossy(&body).to_string())
        })
    });
    for (i, answer) in futures::future::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        let (status, body) = answer.unwrap();
        assert_eq!((status, body), (200, format!("{ECHOED}call {i}")));
    }
    // A 10 MiB body there and back, byte for byte.
    let big: Vec<u8> = (0..10 << 20).map(|i| b'a' + (i % 26) as u8).collect();
    let (status, body) = call(&client(), "POST", &format!("{base}/echo"), big.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(body.len(), big.len() + ECHOED.len());
    assert!(body[ECHOED.len()..] == big[..], "the echoed body differs");

    // A port nothing serves: the connection is closed and kubectl reports why; the pod and
    // the agent are unaffected.
    let closed = port_forward(kc, "pod/web", 9999).await;
    let refused = tokio::time::timeout(
        Duration::from_secs(30),
        client().request(
            http::Request::get(format!("http://127.0.0.1:{}/", closed.port))
                .body(Full::new(bytes::Bytes::new()))
                .unwrap(),
        ),
    )
    .await
    .expect("an answer or a closed connection in time");
    assert!(refused.is_err(), "nothing serves 9999: {refused:?}");
    let (status, _) = call(&keep_alive, "GET", &format!("{base}/healthz"), vec![]).await;
    assert_eq!(status, 200);
    assert_eq!(pod_phase(&http, "default", "web").await, "Running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_reaches_services_and_deployments_on_an_agent_process() {
    if !kubectl_available("port_forward_reaches_services_and_deployments_on_an_agent_process") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_server, url) = start_server(dir.path(), &[]);
    let _agent = start_agent(dir.path(), &url, "alpha", &[]);
    let kc = server_kubeconfig(dir.path());
    let manifests = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  replicas: 1\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      containers:\n      - name: web\n        image: {}\n        ports: [{{containerPort: 8080}}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  selector: {{app: web}}\n  ports: [{{port: 80, targetPort: 8080}}]\n",
        shoal_examples::WEB_P2
    );
    ok(kubectl_stdin_async(&kc, &["apply", "-f", "-"], &manifests).await);
    ok(kubectl_async(
        &kc,
        &["rollout", "status", "deployment/web", "--timeout=60s"],
    )
    .await);
    // kubectl resolves svc/ and deploy/ to a pod (and the Service's port to the pod's).
    for (target, port) in [("svc/web", 80), ("deploy/web", 8080)] {
        let forward = port_forward(&kc, target, port).await;
        let base = format!("http://127.0.0.1:{}", forward.port);
        let keep_alive = client();
        for i in 0..20 {
            let (status, body) = call(&keep_alive, "GET", &format!("{base}/"), vec![]).await;
            assert_eq!(status, 200, "{target}, request {i}");
            assert!(String::from_utf8_lossy(&body).starts_with("Hello from web"));
        }
        let big: Vec<u8> = (0..1 << 20).map(|i| b'a' + (i % 26) as u8).collect();
        let (status, body) = call(&client(), "POST", &format!("{base}/echo"), big.clone()).await;
        assert_eq!(status, 200, "{target}");
        assert!(
            body[ECHOED.len()..] == big[..],
            "{target}: the echoed body differs"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_port_forward_speaks_websocket_channels() {
    use k8s_openapi::api::core::v1::Pod;
    let cluster = TestCluster::start(1).await;
    let http = cluster.http();
    let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
        "spec": {"containers": [{"name": "web", "image": shoal_examples::WEB_P2,
                                 "ports": [{"containerPort": 8080}]}]}});
    http.create("/api/v1/namespaces/default/pods", &pod).await;
    wait_phase(&http, "default", "web", "Running").await;
    let kubeconfig = kube::config::Kubeconfig::read_from(&cluster.kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let pods: kube::Api<Pod> =
        kube::Api::namespaced(kube::Client::try_from(config).unwrap(), "default");

    let mut forwarder = pods.portforward("web", &[8080]).await.unwrap();
    let stream = forwarder.take_stream(8080).unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    for i in 0..10 {
        let request = http::Request::get("/")
            .header(http::header::HOST, "localhost")
            .body(Full::new(bytes::Bytes::new()))
            .unwrap();
        // hyper's client connection takes a request only once it is ready.
        sender.ready().await.unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200, "request {i}");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&body).starts_with("Hello from web"));
    }
    let big: Vec<u8> = (0..1 << 20).map(|i| b'a' + (i % 26) as u8).collect();
    let request = http::Request::post("/echo")
        .header(http::header::HOST, "localhost")
        .body(Full::new(bytes::Bytes::from(big.clone())))
        .unwrap();
    sender.ready().await.unwrap();
    let response = sender.send_request(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(body[ECHOED.len()..] == big[..], "the echoed body differs");
    drop(sender);
    forwarder.abort();

    // A port nothing serves: its error channel says so.
    let mut closed = pods.portforward("web", &[9999]).await.unwrap();
    let error = tokio::time::timeout(Duration::from_secs(10), closed.take_error(9999).unwrap())
        .await
        .expect("the error in time");
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.contains("nothing in the pod serves port 9999")),
        "{error:?}"
    );
}

/// A pod with a shared volume: `web` (an HTTP component) and `writer` (a command module that
/// writes `/data/key` and stays up).
fn toolbox_pod() -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: box}}\nspec:\n  volumes: [{{name: data, emptyDir: {{}}}}]\n  containers:\n  - name: web\n    image: {web}\n    ports: [{{containerPort: 8080}}]\n    env: [{{name: COLOUR, value: teal}}]\n    volumeMounts: [{{name: data, mountPath: /data}}]\n  - name: writer\n    image: {hello}\n    args: [\"--write\", \"/data/key\", \"--sleep-ms\", \"600000\"]\n    volumeMounts: [{{name: data, mountPath: /data}}]\n",
        web = shoal_examples::WEB_P2,
        hello = shoal_examples::HELLO_P2
    )
}

/// `kubectl exec` with stdin from bytes (kubectl's `-i`).
async fn kubectl_exec_input(
    kubeconfig: &std::path::Path,
    args: &[&str],
    input: Vec<u8>,
) -> std::process::Output {
    use std::io::Write;
    let cache = kubeconfig.parent().unwrap().join("kubectl-cache");
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(&cache)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let output = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    writer.join().unwrap();
    output
}

/// Every file under `dir`, relative, with its bytes.
fn tree(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(at) = pending.pop() {
        for entry in std::fs::read_dir(&at).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let relative = path.strip_prefix(dir).unwrap().display().to_string();
                files.insert(relative, std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_and_cp_step_inside_the_pod() {
    if !kubectl_available("kubectl_exec_and_cp_step_inside_the_pod") {
        return;
    }
    let cluster = TestCluster::start(1).await;
    let kc = cluster.kubeconfig.as_path();
    let http = cluster.http();
    ok(kubectl_stdin_async(kc, &["apply", "-f", "-"], &toolbox_pod()).await);
    wait_phase(&http, "default", "box", "Running").await;
    // A file a module wrote, read through the toolbox in the same volume.
    let key = ok(kubectl_async(kc, &["exec", "box", "-c", "web", "--", "cat", "/data/key"]).await);
    assert_eq!(key, "Hello, world! (from a wasip2 component)\n");
    // A shell: redirection, && and a pipeline.
    let script = "echo hi > /data/x && cat /data/x | wc -c";
    let out = ok(kubectl_async(kc, &["exec", "box", "-c", "web", "--", "sh", "-c", script]).await);
    assert_eq!(out, "3\n");
    // The container's environment and the pod's loopback.
    let out = ok(kubectl_async(
        kc,
        &[
            "exec",
            "box",
            "-c",
            "web",
            "--",
            "sh",
            "-c",
            "echo $COLOUR; get localhost:8080/healthz",
        ],
    )
    .await);
    assert_eq!(out, "teal\nok\n");
    // One of the pod's command modules, run by its container's name.
    let out = ok(kubectl_async(kc, &["exec", "box", "-c", "web", "--", "writer", "shoal"]).await);
    assert!(
        out.starts_with("Hello, shoal! (from a wasip2 component)"),
        "{out}"
    );

    // Exit codes come back as kubectl's own.
    let failed = kubectl_async(
        kc,
        &["exec", "box", "-c", "web", "--", "sh", "-c", "exit 7"],
    )
    .await;
    assert_eq!(failed.status.code(), Some(7), "{}", stderr(&failed));
    assert!(
        stderr(&failed).contains("command terminated with exit code 7"),
        "{}",
        stderr(&failed)
    );
    let unknown = kubectl_async(kc, &["exec", "box", "-c", "web", "--", "frobnicate", "now"]).await;
    assert_eq!(unknown.status.code(), Some(127));
    assert!(
        stderr(&unknown).contains("frobnicate: command not found"),
        "{}",
        stderr(&unknown)
    );
    let bad = kubectl_async(kc, &["exec", "box", "-c", "nope", "--", "ls"]).await;
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("container nope is not valid for pod box"),
        "{}",
        stderr(&bad)
    );

    // stdin streams in (-i): 1 MiB through cat into the volume.
    let input: Vec<u8> = (0..1u32 << 20).map(|i| b'a' + (i % 26) as u8).collect();
    let out = kubectl_exec_input(
        kc,
        &[
            "exec",
            "-i",
            "box",
            "-c",
            "web",
            "--",
            "sh",
            "-c",
            "cat > /data/in; wc -c < /data/in",
        ],
        input,
    )
    .await;
    assert_eq!(ok(out), "1048576\n");

    // kubectl cp, in and out, byte for byte (kubectl runs `test -d` and `tar` in the pod).
    let local = tempfile::tempdir().unwrap();
    let source = local.path().join("tree");
    std::fs::create_dir_all(source.join("sub/deeper")).unwrap();
    std::fs::write(source.join("a.txt"), "alpha\n").unwrap();
    let binary: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(source.join("sub/b.bin"), &binary).unwrap();
    std::fs::write(source.join("sub/deeper/c"), "").unwrap();
    let source_arg = source.display().to_string();
    ok(kubectl_async(kc, &["cp", &source_arg, "box:/data/tree", "-c", "web"]).await);
    let listed = ok(kubectl_async(
        kc,
        &["exec", "box", "-c", "web", "--", "ls", "/data/tree/sub"],
    )
    .await);
    assert_eq!(listed, "b.bin\ndeeper\n");
    let back = local.path().join("back");
    let back_arg = back.display().to_string();
    ok(kubectl_async(kc, &["cp", "box:/data/tree", &back_arg, "-c", "web"]).await);
    assert_eq!(tree(&back), tree(&source));
    // A single file into an existing directory.
    let file_arg = source.join("a.txt").display().to_string();
    ok(kubectl_async(kc, &["cp", &file_arg, "box:/data", "-c", "web"]).await);
    let out = ok(kubectl_async(
        kc,
        &["exec", "box", "-c", "web", "--", "cat", "/data/a.txt"],
    )
    .await);
    assert_eq!(out, "alpha\n");

    // A pod that is not running has nothing to exec into.
    let pending = "apiVersion: v1\nkind: Pod\nmetadata: {name: nowhere}\nspec:\n  nodeSelector: {absent: label}\n  containers: [{name: app, image: toolbox}]\n";
    ok(kubectl_stdin_async(kc, &["apply", "-f", "-"], pending).await);
    let refused = kubectl_async(kc, &["exec", "nowhere", "--", "ls"]).await;
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("unable to upgrade connection"),
        "{}",
        stderr(&refused)
    );

    // After all of it the pod runs on, nothing restarted.
    let (_, pod) = http
        .call("GET", "/api/v1/namespaces/default/pods/box", "", "")
        .await;
    assert_eq!(pod["status"]["phase"], "Running");
    for status in pod["status"]["containerStatuses"].as_array().unwrap() {
        assert_eq!(status["restartCount"], 0, "{status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_exec_with_streams_and_a_terminal() {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::AttachParams;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cluster = TestCluster::start(1).await;
    let http = cluster.http();
    let manifest: serde_json::Value = serde_yaml::from_str(&toolbox_pod()).unwrap();
    http.create("/api/v1/namespaces/default/pods", &manifest)
        .await;
    wait_phase(&http, "default", "box", "Running").await;
    let kubeconfig = kube::config::Kubeconfig::read_from(&cluster.kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let pods: kube::Api<Pod> =
        kube::Api::namespaced(kube::Client::try_from(config).unwrap(), "default");

    // stdin, stdout and stderr as separate streams, and the exit code in the status.
    let params = AttachParams::default()
        .container("web")
        .stdin(true)
        .stderr(true);
    let script = "read name; echo hello $name; echo oops >&2; exit 3";
    let mut process = pods
        .exec("box", ["sh", "-c", script], &params)
        .await
        .unwrap();
    let mut stdin = process.stdin().unwrap();
    stdin.write_all(b"kube\n").await.unwrap();
    let (mut stdout, mut stderr) = (process.stdout().unwrap(), process.stderr().unwrap());
    let status = process.take_status().unwrap();
    let (mut out, mut err) = (String::new(), String::new());
    let read = async {
        stdout.read_to_string(&mut out).await.unwrap();
        stderr.read_to_string(&mut err).await.unwrap();
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("output in time");
    assert_eq!((out.as_str(), err.as_str()), ("hello kube\n", "oops\n"));
    let status = status.await.expect("a status");
    assert_eq!(status.status.as_deref(), Some("Failure"));
    assert_eq!(status.reason.as_deref(), Some("NonZeroExitCode"));
    let code = status.details.and_then(|d| d.causes).unwrap()[0]
        .message
        .clone();
    assert_eq!(code.as_deref(), Some("3"));

    // A terminal: keys are echoed, lines run at Enter, the shell prompts.
    let params = AttachParams::interactive_tty().container("web");
    let mut process = pods.exec("box", ["sh"], &params).await.unwrap();
    let mut stdin = process.stdin().unwrap();
    let mut stdout = process.stdout().unwrap();
    let status = process.take_status().unwrap();
    let mut seen = Vec::new();
    let mut read_until = async |expected: &str| {
        let mut buffer = [0u8; 4096];
        let wait = async {
            while !String::from_utf8_lossy(&seen).contains(expected) {
                let n = stdout.read(&mut buffer).await.unwrap();
                assert!(n > 0, "stdout ended: {:?}", String::from_utf8_lossy(&seen));
                seen.extend_from_slice(&buffer[..n]);
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .unwrap_or_else(|_| {
                panic!("{expected:?} in time: {:?}", String::from_utf8_lossy(&seen))
            });
        String::from_utf8_lossy(&std::mem::take(&mut seen)).into_owned()
    };
    assert_eq!(read_until("$ ").await, "$ ", "the prompt first");
    stdin.write_all(b"cat /data/key\r").await.unwrap();
    let text = read_until("component)\r\n$ ").await;
    assert_eq!(
        text,
        "cat /data/key\r\nHello, world! (from a wasip2 component)\r\n$ "
    );
    stdin.write_all(b"exit\r").await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), status)
        .await
        .unwrap();
    assert_eq!(status.and_then(|s| s.status).as_deref(), Some("Success"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_reaches_a_pod_on_an_agent_process() {
    if !kubectl_available("kubectl_exec_reaches_a_pod_on_an_agent_process") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_server, url) = start_server(dir.path(), &[]);
    let _agent = start_agent(dir.path(), &url, "alpha", &[]);
    let kc = server_kubeconfig(dir.path());
    ok(kubectl_stdin_async(&kc, &["apply", "-f", "-"], &toolbox_pod()).await);
    ok(kubectl_async(
        &kc,
        &["wait", "--for=condition=Ready", "pod/box", "--timeout=60s"],
    )
    .await);
    let script = "echo hi > /data/x && cat /data/x | wc -c";
    let out = ok(kubectl_async(&kc, &["exec", "box", "-c", "web", "--", "sh", "-c", script]).await);
    assert_eq!(out, "3\n");
    let failed = kubectl_async(&kc, &["exec", "box", "--", "sh", "-c", "exit 7"]).await;
    // Two containers and no -c: kubectl picks the first (and says so).
    assert_eq!(failed.status.code(), Some(7), "{}", stderr(&failed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_debug_adds_a_toolbox_that_sees_the_pods_volumes() {
    if !kubectl_available("kubectl_debug_adds_a_toolbox_that_sees_the_pods_volumes") {
        return;
    }
    let cluster = TestCluster::start(1).await;
    let kc = cluster.kubeconfig.as_path();
    let http = cluster.http();
    ok(kubectl_stdin_async(kc, &["apply", "-f", "-"], &toolbox_pod()).await);
    wait_phase(&http, "default", "box", "Running").await;

    // Interactive (-i): kubectl adds the container, waits for it to run, attaches; the
    // toolbox's shell reads what kubectl sends and exits at `exit`.
    let script = b"cat /data/key\necho hidden > /dev/null; ls /data | grep -c key\nexit\n".to_vec();
    let out = kubectl_exec_input(
        kc,
        &[
            "debug",
            "box",
            "-i",
            "--image=toolbox",
            "-c",
            "debugger",
            "--",
            "sh",
        ],
        script,
    )
    .await;
    let text = ok(out);
    assert!(
        text.contains("Hello, world! (from a wasip2 component)\n"),
        "{text}"
    );
    assert!(text.contains("\n1\n") && !text.contains("hidden"), "{text}");

    // Not attached: it runs on its own; its status and its log say how it went.
    ok(kubectl_async(
        kc,
        &[
            "debug",
            "box",
            "--image=toolbox",
            "-c",
            "probe",
            "--",
            "sh",
            "-c",
            "ls /data; exit 4",
        ],
    )
    .await);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let terminated = loop {
        let (_, pod) = http
            .call("GET", "/api/v1/namespaces/default/pods/box", "", "")
            .await;
        let statuses = pod["status"]["ephemeralContainerStatuses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let probe = statuses.iter().find(|s| s["name"] == "probe").cloned();
        if let Some(terminated) = probe.as_ref().and_then(|p| p["state"].get("terminated")) {
            let debugger = statuses.iter().find(|s| s["name"] == "debugger").unwrap();
            assert_eq!(debugger["state"]["terminated"]["exitCode"], 0, "{debugger}");
            break terminated.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "probe never ended: {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(terminated["exitCode"], 4, "{terminated}");
    assert_eq!(terminated["reason"], "Error");
    let logs = ok(kubectl_async(kc, &["logs", "box", "-c", "probe"]).await);
    assert_eq!(logs, "hello.txt\nkey\n");

    // Started detached, attached to later: its first prompt-less output and its stdin.
    ok(kubectl_async(
        kc,
        &[
            "debug",
            "box",
            "-i",
            "--attach=false",
            "--image=toolbox",
            "-c",
            "later",
            "--",
            "sh",
        ],
    )
    .await);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, pod) = http
            .call("GET", "/api/v1/namespaces/default/pods/box", "", "")
            .await;
        let statuses = pod["status"]["ephemeralContainerStatuses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if statuses
            .iter()
            .any(|s| s["name"] == "later" && s["state"].get("running").is_some())
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "`later` never ran: {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = kubectl_exec_input(
        kc,
        &["attach", "box", "-c", "later", "-i"],
        b"echo attached\nexit 0\n".to_vec(),
    )
    .await;
    assert!(ok(out).contains("attached\n"));

    // Ephemeral containers are only ever added, through their subresource.
    let patch = r#"{"spec":{"ephemeralContainers":[]}}"#;
    let (status, body) = http
        .call(
            "PATCH",
            "/api/v1/namespaces/default/pods/box/ephemeralcontainers",
            "application/strategic-merge-patch+json",
            patch,
        )
        .await;
    assert_eq!(status, 200, "a strategic merge keeps the list: {body}");
    let replace = r#"[{"op":"replace","path":"/spec/ephemeralContainers","value":[]}]"#;
    let (status, body) = http
        .call(
            "PATCH",
            "/api/v1/namespaces/default/pods/box/ephemeralcontainers",
            "application/json-patch+json",
            replace,
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("may not be removed"), "{body}");
    let add = r#"[{"op":"add","path":"/spec/ephemeralContainers/-","value":{"name":"web","image":"toolbox"}}]"#;
    let (status, body) = http
        .call(
            "PATCH",
            "/api/v1/namespaces/default/pods/box/ephemeralcontainers",
            "application/json-patch+json",
            add,
        )
        .await;
    assert_eq!(status, 422, "a name taken by a container: {body}");
    let (status, body) = http
        .call(
            "PATCH",
            "/api/v1/namespaces/default/pods/box",
            "application/json-patch+json",
            &add.replace("\"web\"", "\"sneaky\""),
        )
        .await;
    assert_eq!(status, 422, "not through the pod itself: {body}");

    // A pod is never created with one.
    let with_one = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"born-debugged"},"spec":{"containers":[{"name":"a","image":"toolbox"}],"ephemeralContainers":[{"name":"d","image":"toolbox"}]}}"#;
    let (status, body) = http
        .call(
            "POST",
            "/api/v1/namespaces/default/pods",
            "application/json",
            with_one,
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.to_string().contains("spec.ephemeralContainers"),
        "{body}"
    );

    // The pod ran on throughout.
    let (_, pod) = http
        .call("GET", "/api/v1/namespaces/default/pods/box", "", "")
        .await;
    assert_eq!(pod["status"]["phase"], "Running");
}

/// The official Python client: exec (output, then an exit code) and port-forward, over
/// its WebSocket channel protocol.
const PYTHON_INTO_POD: &str = r#"
import json, sys
from kubernetes import client, config
from kubernetes.stream import stream, portforward
config.load_kube_config(config_file=sys.argv[1])
api = client.CoreV1Api()
out = stream(api.connect_get_namespaced_pod_exec, "box", "default", container="web",
             command=["sh", "-c", "cat /data/key; echo $COLOUR"],
             stderr=True, stdin=False, stdout=True, tty=False)
proc = stream(api.connect_get_namespaced_pod_exec, "box", "default", container="web",
              command=["sh", "-c", "echo bye; exit 5"], stderr=True, stdin=False,
              stdout=True, tty=False, _preload_content=False)
proc.run_forever(timeout=30)
code = proc.returncode
pf = portforward(api.connect_get_namespaced_pod_portforward, "box", "default", ports="8080")
sock = pf.socket(8080)
sock.setblocking(True)
sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: box\r\nConnection: close\r\n\r\n")
answer = b""
while True:
    chunk = sock.recv(4096)
    if not chunk:
        break
    answer += chunk
sock.close()
print(json.dumps({"exec": out, "code": code, "forwarded": answer.decode()}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_execs_and_forwards_ports() {
    let Some(python) = python_client("the_python_client_execs_and_forwards_ports") else {
        return;
    };
    let cluster = TestCluster::start(1).await;
    let http = cluster.http();
    let manifest: serde_json::Value = serde_yaml::from_str(&toolbox_pod()).unwrap();
    http.create("/api/v1/namespaces/default/pods", &manifest)
        .await;
    wait_phase(&http, "default", "box", "Running").await;
    let result = run_python(
        &python,
        cluster.dir.path(),
        PYTHON_INTO_POD,
        &[cluster.kubeconfig.as_os_str()],
    )
    .await;
    assert_eq!(
        result["exec"],
        "Hello, world! (from a wasip2 component)\nteal\n"
    );
    assert_eq!(result["code"], 5);
    let forwarded = result["forwarded"].as_str().unwrap();
    assert!(forwarded.starts_with("HTTP/1.1 200"), "{forwarded}");
    // The web guest's body, chunked: "ok\n".
    assert!(
        forwarded.ends_with("\r\n\r\n3\r\nok\n\r\n0\r\n\r\n"),
        "{forwarded}"
    );
}
