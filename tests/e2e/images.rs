//! Images by file path, by `http://` URL, and by the `sha256:` reference of a module pushed
//! into the cluster with `shoal push`; and the errors when an image cannot be had.

use serde_json::json;
use shoal_examples::{HELLO_P1, HELLO_P2};
use shoal_tests::*;

const PODS: &str = "/api/v1/namespaces/default/pods";

fn pod(name: &str, image: &str) -> String {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": image, "args": [name]}]}})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_and_http_images_run() {
    let cluster = TestCluster::start(1).await;
    let http = cluster.http();

    let pushed = ok(shoal_async(&cluster.kubeconfig, &["push", HELLO_P2]).await);
    let reference = pushed.trim().to_string();
    assert!(
        reference.starts_with("sha256:") && reference.len() == 71,
        "{reference}"
    );
    assert_eq!(
        http.call("POST", PODS, "application/json", &pod("pushed", &reference))
            .await
            .0,
        201
    );
    wait_phase(&http, "default", "pushed", "Succeeded").await;
    let (_, log) = http.raw("GET", &format!("{PODS}/pushed/log"), "", "").await;
    assert_eq!(
        String::from_utf8_lossy(&log),
        "Hello, pushed! (from a wasip2 component)\n"
    );

    // A module served over plain HTTP by a server on loopback.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let module = std::fs::read(HELLO_P1).unwrap();
    let app = axum::Router::new().route(
        "/hello.wasm",
        axum::routing::get(move || {
            let module = module.clone();
            async move { module }
        }),
    );
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let url = format!("http://{addr}/hello.wasm");
    assert_eq!(
        http.call("POST", PODS, "application/json", &pod("fetched", &url))
            .await
            .0,
        201
    );
    wait_phase(&http, "default", "fetched", "Succeeded").await;

    // Images that cannot be had say why.
    let missing_url = format!("http://{addr}/nothing.wasm");
    let unknown = format!("sha256:{}", "0".repeat(64));
    let closed = format!("http://{}/m.wasm", free_addr());
    for (name, image) in [
        ("not-served", missing_url.as_str()),
        ("not-pushed", unknown.as_str()),
        ("unreachable", closed.as_str()),
    ] {
        assert_eq!(
            http.call("POST", PODS, "application/json", &pod(name, image))
                .await
                .0,
            201
        );
    }
    let (reason, message) = waiting_reason(&http, "default", "not-served").await;
    assert_eq!(reason, "ErrImagePull");
    assert!(message.contains("404"), "{message}");
    let (reason, message) = waiting_reason(&http, "default", "not-pushed").await;
    assert_eq!(reason, "ErrImagePull");
    assert!(
        message.contains("no such module in the cluster's module store"),
        "{message}"
    );
    let (reason, message) = waiting_reason(&http, "default", "unreachable").await;
    assert_eq!(reason, "ErrImagePull");
    assert!(message.contains("cannot connect"), "{message}");
    server.abort();

    // Pushing something that is not Wasm is refused.
    let text = cluster.dir.path().join("notes.txt");
    std::fs::write(&text, "not a module").unwrap();
    let refused = shoal_async(&cluster.kubeconfig, &["push", text.to_str().unwrap()]).await;
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("not a WebAssembly module"),
        "{}",
        stderr(&refused)
    );
}

/// Serves `module` over TLS (a self-signed certificate for `localhost`) on loopback; returns
/// the port and the CA certificate (PEM).
async fn tls_module_server(module: Vec<u8>) -> (u16, String, tokio::task::JoinHandle<()>) {
    use hyper_util::rt::TokioIo;
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, module) = (acceptor.clone(), module.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |_request| {
                    let body = http_body_util::Full::new(bytes::Bytes::from(module.clone()));
                    async move { Ok::<_, std::convert::Infallible>(hyper::Response::new(body)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (port, certified.cert.pem(), server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_images_are_verified() {
    let (port, ca, server) = tls_module_server(std::fs::read(HELLO_P1).unwrap()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    let cluster =
        TestCluster::start_with(1, move |config| config.image_ca = Some(ca_file.clone())).await;
    let http = cluster.http();
    let trusted = format!("https://localhost:{port}/hello.wasm");
    assert_eq!(
        http.call("POST", PODS, "application/json", &pod("tls", &trusted))
            .await
            .0,
        201
    );
    wait_phase(&http, "default", "tls", "Succeeded").await;

    // The certificate names localhost, not 127.0.0.1: the fetch is refused.
    let mismatched = format!("https://127.0.0.1:{port}/hello.wasm");
    assert_eq!(
        http.call(
            "POST",
            PODS,
            "application/json",
            &pod("wrong-name", &mismatched)
        )
        .await
        .0,
        201
    );
    let (reason, message) = waiting_reason(&http, "default", "wrong-name").await;
    assert_eq!(reason, "ErrImagePull");
    assert!(message.to_lowercase().contains("certificate"), "{message}");
    server.abort();
}
