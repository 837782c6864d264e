//! Shared harness of the end-to-end tests: clusters in this process or as `shoal` processes,
//! kubectl and shoal command runners, a plain HTTP client, and polling helpers. Everything
//! binds 127.0.0.1 on free ports and is stopped when its handle drops.

pub mod browser;
pub mod etcd;
pub mod registry;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use serde_json::Value;

pub use shoal::cluster::DevCluster;

/// A `shoal dev`-style cluster in this process, on a free port, in a temporary directory.
pub struct TestCluster {
    pub cluster: DevCluster,
    pub kubeconfig: PathBuf,
    pub dir: tempfile::TempDir,
}

impl TestCluster {
    pub async fn start(nodes: usize) -> Self {
        Self::start_with(nodes, |_| {}).await
    }

    /// A cluster whose agents restart failed containers after 200 ms (not the kubelet's 10 s),
    /// with `configure` adjusting each agent further.
    pub async fn start_with(
        nodes: usize,
        configure: impl Fn(&mut shoal_runtime::agent::AgentConfig),
    ) -> Self {
        Self::start_with_options(nodes, Default::default(), configure).await
    }

    /// Like [`TestCluster::start_with`], with control plane options.
    pub async fn start_with_options(
        nodes: usize,
        options: shoal::cluster::ControlPlaneOptions,
        configure: impl Fn(&mut shoal_runtime::agent::AgentConfig),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let addr = "127.0.0.1:0".parse().unwrap();
        let cluster = DevCluster::start_with(dir.path(), addr, nodes, options, |config| {
            config.restart_backoff = Duration::from_millis(200);
            configure(config);
        })
        .await
        .unwrap();
        let kubeconfig = cluster.write_kubeconfig().unwrap();
        Self {
            cluster,
            kubeconfig,
            dir,
        }
    }

    pub fn url(&self) -> String {
        self.cluster.control.url()
    }

    /// An HTTPS client to the API as the cluster's admin.
    pub fn http(&self) -> Http {
        Http::from_kubeconfig(&self.kubeconfig)
    }

    /// Writes a kubeconfig for `user` in `groups` (no rights until bound) and returns its path.
    pub fn kubeconfig_for(&self, user: &str, groups: &[&str]) -> PathBuf {
        let path = self.dir.path().join(format!("kubeconfig-{user}"));
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        self.cluster
            .control
            .write_kubeconfig_for(&path, user, &groups, Duration::from_secs(3600))
            .unwrap();
        path
    }
}

/// The `shoal` binary built beside this test binary (`cargo test --workspace` builds it).
pub fn shoal_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(Path::parent).unwrap().join("shoal");
    assert!(bin.exists(), "{} is missing: run the tests with `cargo test --workspace` (or `cargo build -p shoal` first)", bin.display());
    bin
}

/// The `shoal-bench` binary built beside this test binary (as [`shoal_bin`]).
pub fn shoal_bench_bin() -> PathBuf {
    shoal_bin().with_file_name("shoal-bench")
}

/// Runs `shoal ARGS` with a kubeconfig and returns its output.
pub fn shoal(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(shoal_bin())
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .output()
        .unwrap()
}

/// Whether a system component the tests use can be run (`program args` succeeds). Under
/// CI=true it must be there; elsewhere a test without it says it was skipped and why.
pub fn component_available(test: &str, program: &str, args: &[&str], install: &str) -> bool {
    let found = Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{program} is required under CI=true but is not on the PATH ({install})"
        );
        eprintln!(
            "SKIPPED {test}: {program} is not on the PATH ({install}; CI=true makes this a failure)"
        );
    }
    found
}

/// Whether kubectl can be used (see [`component_available`]).
pub fn kubectl_available(test: &str) -> bool {
    component_available(test, "kubectl", &["version", "--client"], "install kubectl")
}

/// The Python interpreter that has the official Kubernetes client (`scripts/test` installs
/// it in `target/test-venv`; `SHOAL_TEST_PYTHON` names another), or `None` with a SKIPPED
/// line; under `CI=true` a missing client fails the test.
pub fn python_client(test: &str) -> Option<PathBuf> {
    let python = std::env::var_os("SHOAL_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-venv/bin/python")
        });
    let found = Command::new(&python)
        .args(["-c", "import kubernetes"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the Python kubernetes client is required under CI=true but {} cannot import it (run scripts/test)",
            python.display()
        );
        eprintln!(
            "SKIPPED {test}: no Python kubernetes client at {} (run scripts/test)",
            python.display()
        );
        return None;
    }
    Some(python)
}

/// Runs a Python `script` (written to `dir`) with `args` and returns the JSON it prints;
/// panics with its stderr if it fails.
pub async fn run_python(
    python: &Path,
    dir: &Path,
    script: &str,
    args: &[&std::ffi::OsStr],
) -> serde_json::Value {
    let path = dir.join("script.py");
    std::fs::write(&path, script).unwrap();
    let output = tokio::process::Command::new(python)
        .arg(&path)
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Runs `kubectl ARGS` against a kubeconfig, with a private discovery cache.
pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> Output {
    let cache = kubeconfig.parent().unwrap().join("kubectl-cache");
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(&cache)
        .args(args)
        .output()
        .unwrap()
}

pub fn kubectl_with_stdin(kubeconfig: &Path, args: &[&str], stdin: &str) -> Output {
    let cache = kubeconfig.parent().unwrap().join("kubectl-cache");
    let mut command = Command::new("kubectl");
    command
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(&cache)
        .args(args);
    output_with_stdin(command, stdin)
}

/// Runs `command` with `stdin` as its standard input; its output.
pub fn output_with_stdin(mut command: Command, stdin: &str) -> Output {
    use std::io::Write;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts a command succeeded and returns its stdout.
#[track_caller]
pub fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "command failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

/// A pod manifest running `image` with `args` (restartPolicy Never).
pub fn pod_yaml(name: &str, image: &str, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels:\n    app: hello\nspec:\n  restartPolicy: Never\n  containers:\n  - name: main\n    image: {image}\n    args: [{}]\n",
        args.join(", ")
    )
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `timeout` with `what`.
pub async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An HTTP/1.1 client (hyper, rustls for https://), for testing the API as any HTTP client
/// would use it: plain, or over TLS with the credentials of a kubeconfig, a bearer token or
/// none.
#[derive(Clone)]
pub struct Http {
    client: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Full<bytes::Bytes>,
    >,
    config: rustls::ClientConfig,
    base: String,
    token: Option<String>,
}

/// What a kubeconfig's first cluster and user say.
pub struct KubeconfigParts {
    pub server: String,
    pub ca_pem: String,
    /// Client certificate and key (PEM).
    pub client: Option<(String, String)>,
}

pub fn read_kubeconfig(path: &Path) -> KubeconfigParts {
    use base64::Engine;
    let config: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let field = |v: &serde_yaml::Value, key: &str| -> Option<String> {
        let encoded = v.get(key)?.as_str()?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()?;
        String::from_utf8(bytes).ok()
    };
    let cluster = &config["clusters"][0]["cluster"];
    let user = &config["users"][0]["user"];
    KubeconfigParts {
        server: cluster["server"].as_str().unwrap().to_string(),
        ca_pem: field(cluster, "certificate-authority-data").unwrap_or_default(),
        client: field(user, "client-certificate-data").zip(field(user, "client-key-data")),
    }
}

impl Http {
    /// Plain HTTP (or HTTPS trusting nothing but the system's roots).
    pub fn new(base: &str) -> Self {
        Self::build(base, None, None)
    }

    /// HTTPS to the kubeconfig's server, as its user.
    pub fn from_kubeconfig(path: &Path) -> Self {
        let parts = read_kubeconfig(path);
        Self::build(&parts.server, Some(&parts.ca_pem), parts.client)
    }

    /// HTTPS to the kubeconfig's server, as its user, speaking HTTP/2 only (ALPN `h2`): every
    /// request and watch shares one connection, as Go clients do.
    pub fn from_kubeconfig_http2(path: &Path) -> Self {
        let parts = read_kubeconfig(path);
        let mut http = Self::build(&parts.server, Some(&parts.ca_pem), parts.client);
        let config = http.config.clone();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_only()
            .enable_http2()
            .build();
        http.client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(true)
                .build(connector);
        http
    }

    /// The same client, its requests sent to `base` instead (through a relay, say).
    pub fn at(mut self, base: &str) -> Self {
        self.base = base.trim_end_matches('/').to_string();
        self
    }

    /// HTTPS trusting `ca_pem`, with no credentials (anonymous).
    pub fn anonymous(base: &str, ca_pem: &str) -> Self {
        Self::build(base, Some(ca_pem), None)
    }

    /// HTTPS trusting `ca_pem`, with a client certificate and key (PEM).
    pub fn with_client_certificate(
        base: &str,
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Self {
        Self::build(
            base,
            Some(ca_pem),
            Some((cert_pem.to_string(), key_pem.to_string())),
        )
    }

    /// The same client, sending `Authorization: Bearer <token>`.
    pub fn bearer(mut self, token: &str) -> Self {
        self.token = Some(token.to_string());
        self
    }

    /// HTTPS to an agent's gateway (`https://address:port`), presenting `identity` as another
    /// node does.
    pub fn gateway(base: &str, identity: shoal_runtime::agent::GatewayTls) -> Self {
        let roots = shoal_api::tls::root_store(&identity.client_ca_pem).unwrap();
        let config = shoal_api::tls::gateway_client_config(identity.identity, roots).unwrap();
        Self::with_config(base, config)
    }

    fn with_config(base: &str, config: rustls::ClientConfig) -> Self {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config.clone())
            .https_or_http()
            .enable_http1()
            .build();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector);
        Self {
            client,
            config,
            base: base.trim_end_matches('/').to_string(),
            token: None,
        }
    }

    fn build(base: &str, ca_pem: Option<&str>, client: Option<(String, String)>) -> Self {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        if let Some(ca) = ca_pem {
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
                roots.add(cert.unwrap()).unwrap();
            }
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match client {
            Some((cert, key)) => {
                let chain = rustls::pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap();
                let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        Self::with_config(base, config)
    }

    fn request(&self, method: &str, path: &str) -> http::request::Builder {
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        request
    }

    /// Sends a request and returns the status and the body as JSON (or as a JSON string if it
    /// is not JSON).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &str,
    ) -> (u16, Value) {
        let (status, bytes) = self.raw(method, path, content_type, body).await;
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, value)
    }

    /// POSTs `object` to `collection` and returns what was created; panics (naming the
    /// server's answer) unless it is a 201.
    pub async fn create(&self, collection: &str, object: &Value) -> Value {
        let (status, body) = self
            .call("POST", collection, "application/json", &object.to_string())
            .await;
        assert_eq!(status, 201, "creating in {collection}: {body}");
        body
    }

    /// `GET path`: the status, the headers and the body.
    pub async fn get_with_headers(&self, path: &str) -> (u16, http::HeaderMap, bytes::Bytes) {
        let request = self
            .request("GET", path)
            .body(Full::new(bytes::Bytes::new()))
            .unwrap();
        let response = self.client.request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        (
            parts.status.as_u16(),
            parts.headers,
            body.collect().await.unwrap().to_bytes(),
        )
    }

    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &str,
    ) -> (u16, bytes::Bytes) {
        let request = self
            .request(method, path)
            .header("content-type", content_type)
            .body(Full::new(bytes::Bytes::from(body.to_string())))
            .unwrap();
        let response = self.client.request(request).await.unwrap();
        let status = response.status().as_u16();
        (
            status,
            response.into_body().collect().await.unwrap().to_bytes(),
        )
    }

    /// A GET with an `Accept` header: the status, the reply's Content-Type and its body.
    pub async fn get_accepting(&self, path: &str, accept: &str) -> (u16, String, bytes::Bytes) {
        let request = self
            .request("GET", path)
            .header(http::header::ACCEPT, accept)
            .body(Full::new(bytes::Bytes::new()))
            .unwrap();
        let response = self.client.request(request).await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, content_type, body)
    }

    /// A GET with an explicit Host header (what a browser sends to a named virtual host).
    pub async fn get_with_host(&self, path: &str, host: &str) -> (u16, bytes::Bytes) {
        let (status, _, body) = self.send_with_host("GET", path, host, "", "").await;
        (status, body)
    }

    /// A request with an explicit Host header: status, headers and body of the answer.
    pub async fn send_with_host(
        &self,
        method: &str,
        path: &str,
        host: &str,
        content_type: &str,
        body: &str,
    ) -> (u16, http::HeaderMap, bytes::Bytes) {
        let mut request = self.request(method, path).header(http::header::HOST, host);
        if !content_type.is_empty() {
            request = request.header(http::header::CONTENT_TYPE, content_type);
        }
        let request = request
            .body(Full::new(bytes::Bytes::from(body.to_string())))
            .unwrap();
        let response = self.client.request(request).await.unwrap();
        let (status, headers) = (response.status().as_u16(), response.headers().clone());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, headers, body)
    }

    /// Opens a watch and returns its body for reading events line by line.
    pub async fn stream(&self, path: &str) -> hyper::body::Incoming {
        let request = self
            .request("GET", path)
            .body(Full::new(bytes::Bytes::new()))
            .unwrap();
        let response = self.client.request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        response.into_body()
    }
}

/// Reads newline-delimited JSON events from a streaming body.
pub struct EventReader {
    body: hyper::body::Incoming,
    buffer: Vec<u8>,
}

impl EventReader {
    pub fn new(body: hyper::body::Incoming) -> Self {
        Self {
            body,
            buffer: Vec::new(),
        }
    }

    /// The next event, or `None` when the stream ends or nothing arrives within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return Some(serde_json::from_slice(&line).expect("a watch event is JSON"));
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            match tokio::time::timeout(left, self.body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
                _ => return None,
            }
        }
    }
}

/// A `shoal` process (server, agent or dev), killed when dropped.
pub struct Process {
    pub child: Child,
    pub log: PathBuf,
}

impl Process {
    /// Starts `shoal ARGS`, its output going to `log`, and waits until `ready` appears in it.
    pub fn start(args: &[&str], log: PathBuf, ready: &str) -> Self {
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(shoal_bin())
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let mut process = Self { child, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string(&process.log)
            .unwrap_or_default()
            .contains(ready)
        {
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!("shoal {args:?} exited with {status}: {}", process.output());
            }
            assert!(
                Instant::now() < deadline,
                "shoal {args:?} did not print {ready:?}: {}",
                process.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        process
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port for a server a test starts as another process (bound and released).
///
/// The port is picked at random below the kernel's ephemeral range (Linux: 32768-60999):
/// a port from `bind(0)` is in that range, where any outgoing connection of a parallel test
/// may take it before the child process binds it. Below the range only another test's pick can
/// collide, and callers that start several processes retry on "address already in use".
pub fn free_addr() -> SocketAddr {
    use rand::Rng;
    let lowest_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let mut random = rand::thread_rng();
    for _ in 0..100 {
        let port = random.gen_range(10_000..lowest_ephemeral.max(10_001));
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return listener.local_addr().unwrap();
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Runs kubectl off the async runtime (the cluster under test shares it).
pub async fn kubectl_async(kubeconfig: &Path, args: &[&str]) -> Output {
    let (kubeconfig, args): (PathBuf, Vec<String>) = (
        kubeconfig.into(),
        args.iter().map(|a| a.to_string()).collect(),
    );
    tokio::task::spawn_blocking(move || {
        kubectl(
            &kubeconfig,
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    })
    .await
    .unwrap()
}

pub async fn kubectl_stdin_async(kubeconfig: &Path, args: &[&str], stdin: &str) -> Output {
    let (kubeconfig, stdin): (PathBuf, String) = (kubeconfig.into(), stdin.into());
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        kubectl_with_stdin(
            &kubeconfig,
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
            &stdin,
        )
    })
    .await
    .unwrap()
}

/// Runs the shoal client off the async runtime.
pub async fn shoal_async(kubeconfig: &Path, args: &[&str]) -> Output {
    let (kubeconfig, args): (PathBuf, Vec<String>) = (
        kubeconfig.into(),
        args.iter().map(|a| a.to_string()).collect(),
    );
    tokio::task::spawn_blocking(move || {
        shoal(
            &kubeconfig,
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    })
    .await
    .unwrap()
}

/// The phase of a pod read through the API, or "" if it does not exist.
pub async fn pod_phase(http: &Http, namespace: &str, name: &str) -> String {
    let (status, pod) = http
        .call(
            "GET",
            &format!("/api/v1/namespaces/{namespace}/pods/{name}"),
            "application/json",
            "",
        )
        .await;
    if status != 200 {
        return String::new();
    }
    pod.pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

/// Waits for a pod to reach `phase`.
pub async fn wait_phase(http: &Http, namespace: &str, name: &str, phase: &str) {
    wait_for(
        &format!("pod {namespace}/{name} to be {phase}"),
        Duration::from_secs(60),
        async || (pod_phase(http, namespace, name).await == phase).then_some(()),
    )
    .await
}

/// A GET through the API server's pod proxy to a pod of `default`: (status, body).
pub async fn proxy_get(http: &Http, pod_and_port: &str, path: &str) -> (u16, String) {
    let url = format!("/api/v1/namespaces/default/pods/{pod_and_port}/proxy{path}");
    let (status, body) = http.raw("GET", &url, "", "").await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Waits until a pod's Ready condition is True.
pub async fn wait_ready(http: &Http, namespace: &str, name: &str) {
    wait_for(
        &format!("pod {namespace}/{name} to be ready"),
        Duration::from_secs(60),
        async || {
            let path = format!("/api/v1/namespaces/{namespace}/pods/{name}");
            let (_, pod) = http.call("GET", &path, "", "").await;
            pod["status"]["conditions"]
                .as_array()
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
                .then_some(())
        },
    )
    .await;
}

/// Waits until a pod's first container is waiting for a reason other than ContainerCreating,
/// and returns (reason, message).
pub async fn waiting_reason(http: &Http, namespace: &str, name: &str) -> (String, String) {
    wait_for(
        &format!("{namespace}/{name} to report why it waits"),
        Duration::from_secs(30),
        async || {
            let (_, pod) = http
                .call(
                    "GET",
                    &format!("/api/v1/namespaces/{namespace}/pods/{name}"),
                    "",
                    "",
                )
                .await;
            let waiting = pod
                .pointer("/status/containerStatuses/0/state/waiting")?
                .clone();
            let reason = waiting["reason"].as_str()?.to_string();
            (reason != "ContainerCreating").then(|| {
                (
                    reason,
                    waiting["message"].as_str().unwrap_or("").to_string(),
                )
            })
        },
    )
    .await
}

/// `shoal server` on a free port with its data under `dir` (in `dir/server`), and its URL.
pub fn start_server(dir: &std::path::Path, extra: &[&str]) -> (Process, String) {
    let addr = free_addr().to_string();
    let server = start_server_at(dir, &addr, extra);
    (server, format!("https://{addr}"))
}

/// Copies the cluster PKI of the server started in `from` to `to`, as onto another machine
/// running a second API server on the same etcd.
pub fn copy_pki(from: &std::path::Path, to: &std::path::Path) {
    let (pki, copied) = (from.join("server/pki"), to.join("server/pki"));
    std::fs::create_dir_all(&copied).unwrap();
    for file in std::fs::read_dir(&pki).unwrap() {
        let file = file.unwrap();
        std::fs::copy(file.path(), copied.join(file.file_name())).unwrap();
    }
}

/// The admin kubeconfig `shoal server` wrote for the server started in `dir`.
pub fn server_kubeconfig(dir: &std::path::Path) -> PathBuf {
    dir.join("server").join("kubeconfig")
}

/// A kubeconfig for `user` in `groups` issued by `shoal kubeconfig` from the server's CA in
/// `dir`, written to `dir/<file>`.
pub fn issue_kubeconfig(dir: &std::path::Path, user: &str, groups: &[&str], file: &str) -> PathBuf {
    let path = dir.join(file);
    let data = dir.join("server");
    let mut args = vec![
        "kubeconfig",
        "--user",
        user,
        "--data-dir",
        data.to_str().unwrap(),
        "-o",
        path.to_str().unwrap(),
    ];
    for group in groups {
        args.extend(["--group", group]);
    }
    let output = Command::new(shoal_bin()).args(&args).output().unwrap();
    ok(output);
    path
}

/// `shoal agent` named `name`, joined to the server at `url` (or several, comma-separated) as `system:node:<name>` (a
/// kubeconfig from `shoal kubeconfig`), its data under `dir`.
pub fn start_agent(dir: &std::path::Path, url: &str, name: &str, extra: &[&str]) -> Process {
    let data = dir.join(name);
    // The built example guests (`guests-target/<target>/release/*.wasm`) are the only files
    // these agents run.
    let examples_dir = std::path::Path::new(shoal_examples::WEB_P2)
        .ancestors()
        .nth(3)
        .unwrap();
    let kubeconfig = issue_kubeconfig(
        dir,
        &format!("system:node:{name}"),
        &["system:nodes"],
        &format!("kubeconfig-{name}"),
    );
    let mut args = vec![
        "agent",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--server",
        url,
        "--name",
        name,
        "--data-dir",
        data.to_str().unwrap(),
        "--allow-image-dir",
        examples_dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Process::start(&args, dir.join(format!("{name}.log")), "shoal agent")
}

/// `shoal server` on `addr` with its data in `dir/server` (again, after a restart).
pub fn start_server_at(dir: &std::path::Path, addr: &str, extra: &[&str]) -> Process {
    let data = dir.join("server");
    let mut args = vec![
        "server",
        "--api-addr",
        addr,
        "--data-dir",
        data.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Process::start(&args, dir.join("server.log"), "shoal server ready")
}
