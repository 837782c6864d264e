//! Nodes join a `shoal server` over a real socket with a bootstrap token and the CA's pin,
//! get their own client certificates through CertificateSigningRequests, are held to their
//! own objects by the Node authorizer, serve their gateways with certificates the cluster
//! signed for them and only to nodes and the control plane (mTLS both ways), and renew their
//! certificates before they expire.

use std::time::{Duration, Instant};

use base64::Engine;

use serde_json::{json, Value};
use shoal_tests::*;

/// The value after `flag` in a printed command line.
fn arg_after<'a>(words: &[&'a str], flag: &str) -> &'a str {
    let at = words.iter().position(|w| *w == flag).unwrap();
    words[at + 1]
}

fn examples_dir() -> &'static std::path::Path {
    std::path::Path::new(shoal_examples::WEB_P2)
        .ancestors()
        .nth(3)
        .unwrap()
}

fn join_args<'a>(
    dir: &'a str,
    url: &'a str,
    token: &'a str,
    pin: &'a str,
    name: &'a str,
) -> Vec<&'a str> {
    vec![
        "agent",
        "--server",
        url,
        "--token",
        token,
        "--ca-cert-hash",
        pin,
        "--name",
        name,
        "--data-dir",
        dir,
        "--allow-image-dir",
        examples_dir().to_str().unwrap(),
        "--lease-renew-seconds",
        "2",
    ]
}

/// `GET /healthz` on a gateway at `addr` over TLS, presenting `identity` (certificate and key
/// PEM) or no certificate, and verifying the gateway's certificate against `trusted_ca` (PEM)
/// for the address dialed, or not at all: the status and body, or why no HTTP answer came.
async fn gateway_get(
    addr: &str,
    identity: Option<(&str, &str)>,
    trusted_ca: Option<&str>,
) -> Result<(u16, String), String> {
    use http_body_util::BodyExt;
    use shoal_api::tls::{ClientIdentity, UnverifiedServerCertificate};
    let builder = rustls::ClientConfig::builder_with_provider(shoal_api::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match trusted_ca {
        Some(ca) => builder.with_root_certificates(shoal_api::tls::root_store(ca).unwrap()),
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(std::sync::Arc::new(
                UnverifiedServerCertificate::default(),
            )),
    };
    let config = match identity {
        Some((cert, key)) => builder.with_client_cert_resolver(std::sync::Arc::new(
            ClientIdentity::from_pem(cert, key).unwrap(),
        )),
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let host = addr.rsplit_once(':').unwrap().0.to_string();
    let name = rustls::pki_types::ServerName::try_from(host).unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = http::Request::get("/healthz")
        .header("host", "gateway")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((
        status,
        String::from_utf8_lossy(&body.to_bytes()).to_string(),
    ))
}

/// The `address:port` of a node's gateway, from its status.
fn gateway_of(node: &Value) -> String {
    let address = node["status"]["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["type"] == "InternalIP")
        .unwrap()["address"]
        .as_str()
        .unwrap()
        .to_string();
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_i64()
        .unwrap();
    format!("{address}:{port}")
}

/// Every CertificateSigningRequest, as the admin reads them.
async fn certificate_requests(admin: &Http) -> Vec<Value> {
    let (_, csrs) = admin
        .call(
            "GET",
            "/apis/certificates.k8s.io/v1/certificatesigningrequests",
            "",
            "",
        )
        .await;
    csrs["items"].as_array().unwrap().clone()
}

/// The gateway serving certificate requests node `node` made itself.
fn serving_requests_of<'a>(csrs: &'a [Value], node: &str) -> impl Iterator<Item = &'a Value> {
    let user = format!("system:node:{node}");
    csrs.iter().filter(move |c| {
        c["spec"]["signerName"] == "kubernetes.io/kubelet-serving" && c["spec"]["username"] == user
    })
}

fn certificate_of(kubeconfig: &std::path::Path) -> String {
    read_kubeconfig(kubeconfig).client.unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_with_a_token_and_renew_their_certificates() {
    let dir = tempfile::tempdir().unwrap();
    // Short certificates, so that renewal (at 70-90% of their life) happens within the test.
    let (_server, url) = start_server(dir.path(), &["--cluster-signing-duration", "20s"]);
    let admin_kubeconfig = server_kubeconfig(dir.path());
    let admin = Http::from_kubeconfig(&admin_kubeconfig);
    let printed = ok(shoal_async(
        &admin_kubeconfig,
        &["token", "create", "--print-join-command", "--ttl", "1h"],
    )
    .await);
    let words: Vec<&str> = printed.split_whitespace().collect();
    assert_eq!(&words[..2], ["shoal", "agent"], "{printed}");
    assert_eq!(arg_after(&words, "--server"), url);
    let (token, pin) = (
        arg_after(&words, "--token").to_string(),
        arg_after(&words, "--ca-cert-hash").to_string(),
    );
    let token_id = token.split('.').next().unwrap().to_string();

    // A wrong pin: the agent stops before it sends its token anywhere.
    let wrong_pin = format!("sha256:{}", "0".repeat(64));
    let mallory = dir.path().join("mallory");
    let args = join_args(
        mallory.to_str().unwrap(),
        &url,
        &token,
        &wrong_pin,
        "mallory",
    );
    let output = tokio::task::spawn_blocking({
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        move || {
            std::process::Command::new(shoal_bin())
                .args(&args)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("no certificate matching --ca-cert-hash"),
        "{}",
        stderr(&output)
    );
    // A token that is not one of the cluster's gets nowhere either.
    let bogus = dir.path().join("bogus");
    let args = join_args(
        bogus.to_str().unwrap(),
        &url,
        "abcdef.0123456789abcdef",
        &pin,
        "bogus",
    );
    let output = tokio::task::spawn_blocking({
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        move || {
            std::process::Command::new(shoal_bin())
                .args(&args)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("Unauthorized"),
        "{}",
        stderr(&output)
    );

    // Two nodes join with the token.
    let joined_at = Instant::now();
    let mut agents = Vec::new();
    for name in ["alpha", "beta"] {
        let data = dir.path().join(name);
        let args = join_args(data.to_str().unwrap(), &url, &token, &pin, name);
        agents.push(Process::start(
            &args,
            dir.path().join(format!("{name}.log")),
            "shoal agent",
        ));
    }
    let node_kubeconfig = |name: &str| dir.path().join(name).join("node.kubeconfig");
    let first_alpha_cert = certificate_of(&node_kubeconfig("alpha"));
    let (alpha, beta) = (
        Http::from_kubeconfig(&node_kubeconfig("alpha")),
        Http::from_kubeconfig(&node_kubeconfig("beta")),
    );
    let (status, review) = alpha
        .call(
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            "application/json",
            r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#,
        )
        .await;
    assert_eq!(status, 201, "{review}");
    assert_eq!(
        review["status"]["userInfo"]["username"],
        "system:node:alpha"
    );
    assert!(review["status"]["userInfo"]["groups"]
        .as_array()
        .unwrap()
        .contains(&json!("system:nodes")));

    // Their requests were made by the token's user, approved on their own and signed.
    let csrs = certificate_requests(&admin).await;
    let by_token: Vec<&Value> = csrs
        .iter()
        .filter(|c| c["spec"]["username"] == format!("system:bootstrap:{token_id}"))
        .collect();
    assert_eq!(by_token.len(), 2, "{csrs:?}");
    for csr in by_token {
        assert_eq!(csr["status"]["conditions"][0]["type"], "Approved", "{csr}");
        assert!(csr["status"]["certificate"]
            .as_str()
            .is_some_and(|c| !c.is_empty()));
    }

    // The Node authorizer holds each to its own: a Secret only alpha's pod uses.
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "alpha-only"}, "stringData": {"k": "v"}});
    admin
        .create("/api/v1/namespaces/default/secrets", &secret)
        .await;
    admin.create("/api/v1/namespaces/default/pods", &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "on-alpha"},
        "spec": {"nodeName": "alpha", "volumes": [{"name": "s", "secret": {"secretName": "alpha-only"}}],
            "containers": [{"name": "web", "image": shoal_examples::WEB_P2, "ports": [{"containerPort": 8080}],
                "volumeMounts": [{"name": "s", "mountPath": "/s"}]}]}})).await;
    wait_ready(&admin, "default", "on-alpha").await;
    let secret_path = "/api/v1/namespaces/default/secrets/alpha-only";
    assert_eq!(alpha.call("GET", secret_path, "", "").await.0, 200);
    let (status, body) = beta.call("GET", secret_path, "", "").await;
    assert_eq!(status, 403, "{body}");
    let ready =
        json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}).to_string();
    let (status, body) = beta
        .call(
            "PATCH",
            "/api/v1/nodes/alpha/status",
            "application/merge-patch+json",
            &ready,
        )
        .await;
    assert_eq!(status, 403, "{body}");
    // A node's certificate does not let it approve anything.
    let (status, _) = beta
        .call(
            "PUT",
            "/apis/certificates.k8s.io/v1/certificatesigningrequests/x/approval",
            "application/json",
            "{}",
        )
        .await;
    assert_eq!(status, 403);

    // alpha's gateway serves only cluster certificates of nodes and the control plane.
    let (_, node) = admin.call("GET", "/api/v1/nodes/alpha", "", "").await;
    let gateway = gateway_of(&node);
    let refused = gateway_get(&gateway, None, None).await;
    assert!(refused.is_err(), "no certificate: {refused:?}");
    let stranger_ca = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let stranger_issuer = rcgen::Issuer::new(ca_params, stranger_ca);
    let mut forged = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    forged
        .distinguished_name
        .push(rcgen::DnType::CommonName, "system:node:beta");
    forged
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    let forged_key = rcgen::KeyPair::generate().unwrap();
    let forged_cert = forged.signed_by(&forged_key, &stranger_issuer).unwrap();
    let refused = gateway_get(
        &gateway,
        Some((&forged_cert.pem(), &forged_key.serialize_pem())),
        None,
    )
    .await;
    assert!(refused.is_err(), "another CA's certificate: {refused:?}");
    let user = read_kubeconfig(&issue_kubeconfig(dir.path(), "alice", &[], "alice"))
        .client
        .unwrap();
    let (status, body) = gateway_get(&gateway, Some((&user.0, &user.1)), None)
        .await
        .unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("may not use a node's gateway"), "{body}");
    // A node reaches it, and verifies it: the gateway's certificate is the cluster CA's for
    // alpha's address, asked for with a kubelet-serving request alpha made itself.
    let beta_identity = read_kubeconfig(&node_kubeconfig("beta")).client.unwrap();
    let cluster_ca = read_kubeconfig(&admin_kubeconfig).ca_pem;
    let (status, body) = gateway_get(
        &gateway,
        Some((&beta_identity.0, &beta_identity.1)),
        Some(&cluster_ca),
    )
    .await
    .unwrap();
    assert_eq!((status, body.as_str()), (200, "ok"));
    let stranger_ca_pem = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap()
        .pem();
    let impostor = gateway_get(
        &gateway,
        Some((&beta_identity.0, &beta_identity.1)),
        Some(&stranger_ca_pem),
    )
    .await;
    assert!(
        impostor.as_ref().is_err_and(|e| e.contains("handshake")),
        "a gateway certificate checked against another CA: {impostor:?}"
    );
    let csrs = certificate_requests(&admin).await;
    let alpha_serving = serving_requests_of(&csrs, "alpha")
        .next()
        .expect("alpha's serving request");
    assert_eq!(
        alpha_serving["status"]["conditions"][0]["reason"], "AutoApproved",
        "{alpha_serving}"
    );
    // A node asking for a certificate naming another node is denied, and told why.
    let mut stolen = rcgen::CertificateParams::new(vec!["alpha".to_string()]).unwrap();
    stolen
        .distinguished_name
        .push(rcgen::DnType::CommonName, "system:node:beta");
    stolen
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    let stolen_request = stolen
        .serialize_request(&rcgen::KeyPair::generate().unwrap())
        .unwrap()
        .pem()
        .unwrap();
    let stolen_csr = json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"name": "beta-claims-alpha"},
        "spec": {"request": base64::engine::general_purpose::STANDARD.encode(&stolen_request),
            "signerName": "kubernetes.io/kubelet-serving", "usages": ["digital signature", "server auth"]}});
    let (status, body) = beta
        .call(
            "POST",
            "/apis/certificates.k8s.io/v1/certificatesigningrequests",
            "application/json",
            &stolen_csr.to_string(),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let denied = wait_for(
        "the request naming alpha to be decided",
        Duration::from_secs(10),
        async || {
            let (_, csr) = admin
                .call(
                    "GET",
                    "/apis/certificates.k8s.io/v1/certificatesigningrequests/beta-claims-alpha",
                    "",
                    "",
                )
                .await;
            csr["status"]["conditions"][0]["type"]
                .as_str()
                .is_some()
                .then_some(csr)
        },
    )
    .await;
    assert_eq!(
        denied["status"]["conditions"][0]["type"], "Denied",
        "{denied}"
    );
    assert!(
        denied["status"]["conditions"][0]["message"]
            .as_str()
            .unwrap()
            .contains("DNS:alpha is not an address node beta publishes"),
        "{denied}"
    );
    assert!(denied["status"]["certificate"].is_null(), "{denied}");
    // The API server reaches it with its own certificate: logs through the API.
    let read_alpha_log = async || {
        let log = "/api/v1/namespaces/default/pods/on-alpha/log";
        let (status, body) = admin.raw("GET", log, "", "").await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    };
    read_alpha_log().await;

    // Renewal: alpha asks for a new certificate as itself before the first one expires...
    let renewed = wait_for(
        "alpha to renew its certificate",
        Duration::from_secs(40),
        async || {
            let current = certificate_of(&node_kubeconfig("alpha"));
            (current != first_alpha_cert).then_some(current)
        },
    )
    .await;
    assert_ne!(renewed, first_alpha_cert);
    let csrs = certificate_requests(&admin).await;
    assert!(
        csrs.iter()
            .any(|c| c["spec"]["username"] == "system:node:alpha"
                && c["spec"]["signerName"] == "kubernetes.io/kube-apiserver-client-kubelet"
                && c["status"]["conditions"][0]["reason"] == "AutoApproved"),
        "{csrs:?}"
    );
    // ...and keeps working after it has expired: its connections made with the old one are
    // closed by the server, and new ones present the renewed certificate.
    let after_expiry = Duration::from_secs(22).saturating_sub(joined_at.elapsed());
    tokio::time::sleep(after_expiry).await;
    // Its gateway renewed its serving certificate too: the API server, which verifies it,
    // still reads the pod's logs through it, and a second serving request was approved.
    read_alpha_log().await;
    let csrs = certificate_requests(&admin).await;
    let alpha_serving_requests = serving_requests_of(&csrs, "alpha")
        .filter(|c| c["status"]["certificate"].is_string())
        .count();
    assert!(alpha_serving_requests >= 2, "{csrs:?}");
    admin.create("/api/v1/namespaces/default/pods", &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "later"},
        "spec": {"nodeName": "alpha", "containers": [{"name": "web", "image": shoal_examples::WEB_P2, "ports": [{"containerPort": 8080}]}]}})).await;
    wait_ready(&admin, "default", "later").await;
    let (_, node) = admin.call("GET", "/api/v1/nodes/alpha", "", "").await;
    let ready = node["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready["status"], "True", "{node}");
    drop(agents);
}
