//! Wasm images from OCI registries: `shoal push` to a real registry (Debian's
//! docker-registry on loopback), pods pulling by tag and by digest, the pull policy, private
//! repositories behind an imagePullSecret, and the errors users see.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use shoal_tests::registry::{registry_available, Registry};
use shoal_tests::*;

/// `shoal push FILE REF --plain-http [--username U --password-stdin]`: the digest reference.
async fn push(file: &str, reference: &str, login: Option<(&str, &str)>) -> std::process::Output {
    let mut args = vec!["push", file, reference, "--plain-http"];
    if let Some((user, _)) = login {
        args.extend(["--username", user, "--password-stdin"]);
    }
    let stdin = login
        .map(|(_, password)| password.to_string())
        .unwrap_or_default();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let mut command = std::process::Command::new(shoal_bin());
        // No ~/.docker/config.json of the machine's user.
        command.args(&args).env("DOCKER_CONFIG", "/nonexistent");
        output_with_stdin(command, &stdin)
    })
    .await
    .unwrap()
}

fn web_pod(name: &str, image: &str, extra: Value) -> Value {
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"containers": [{"name": "web", "image": image, "ports": [{"containerPort": 8080}]}]}});
    if let (Some(spec), Some(extra)) = (pod["spec"].as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    pod
}

async fn events_of(http: &Http, pod: &str) -> Vec<(String, String)> {
    let (_, list) = http
        .call(
            "GET",
            &format!("/api/v1/namespaces/default/events?fieldSelector=involvedObject.name={pod}"),
            "",
            "",
        )
        .await;
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or("").to_string(),
                e["message"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_run_wasm_images_pulled_from_registries() {
    if !registry_available("pods_run_wasm_images_pulled_from_registries") {
        return;
    }
    let open = Registry::start(None);
    let private = Registry::start(Some(("alice", "s3cret")));
    let insecure = vec![open.host.clone(), private.host.clone()];
    let cluster = TestCluster::start_with(1, |config| {
        config.insecure_registries = insecure.clone();
    })
    .await;
    let http = cluster.http();

    // Push: the CNCF Wasm layout, answered with the reference by digest.
    let tagged = format!("{}/team/web:1", open.host);
    let output = push(shoal_examples::WEB_P2, &tagged, None).await;
    let by_digest = ok(output).trim().to_string();
    assert!(
        by_digest.starts_with(&format!("{}/team/web@sha256:", open.host)),
        "{by_digest}"
    );
    // A file that is not Wasm is refused before anything is sent.
    let not_wasm = cluster.dir.path().join("notes.txt");
    std::fs::write(&not_wasm, "hello").unwrap();
    let refused = push(not_wasm.to_str().unwrap(), &tagged, None).await;
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("not WebAssembly"),
        "{}",
        stderr(&refused)
    );

    // kubectl run from the registry: Running, imageID the digest, Pulling/Pulled events.
    ok(kubectl_async(
        &cluster.kubeconfig,
        &[
            "run",
            "from-tag",
            &format!("--image={tagged}"),
            "--port=8080",
        ],
    )
    .await);
    wait_ready(&http, "default", "from-tag").await;
    let (_, pod) = http
        .call("GET", "/api/v1/namespaces/default/pods/from-tag", "", "")
        .await;
    assert_eq!(
        pod["status"]["containerStatuses"][0]["imageID"], by_digest,
        "{pod}"
    );
    let (status, body) = proxy_get(&http, "from-tag:8080", "/").await;
    assert_eq!(status, 200, "{body}");
    let events = wait_for("the Pulled event", Duration::from_secs(10), async || {
        let events = events_of(&http, "from-tag").await;
        events.iter().any(|(r, _)| r == "Pulled").then_some(events)
    })
    .await;
    assert!(
        events
            .iter()
            .any(|(r, m)| r == "Pulling" && m.contains(&tagged)),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|(r, m)| r == "Pulled" && m.contains("Successfully pulled")),
        "{events:?}"
    );
    // A second pod of the same tag (IfNotPresent): no second download.
    http.create(
        "/api/v1/namespaces/default/pods",
        &web_pod("again", &tagged, json!({})),
    )
    .await;
    wait_ready(&http, "default", "again").await;
    let events = wait_for(
        "the second pod's Pulled event",
        Duration::from_secs(10),
        async || {
            let events = events_of(&http, "again").await;
            events.iter().any(|(r, _)| r == "Pulled").then_some(events)
        },
    )
    .await;
    assert!(
        events
            .iter()
            .any(|(_, m)| m.contains("already present on machine")),
        "{events:?}"
    );
    // By digest, too.
    http.create(
        "/api/v1/namespaces/default/pods",
        &web_pod("by-digest", &by_digest, json!({})),
    )
    .await;
    wait_ready(&http, "default", "by-digest").await;

    // A digest the registry does not have: ErrImagePull naming it, then ImagePullBackOff.
    let wrong = format!("{}/team/web@sha256:{}", open.host, "0".repeat(64));
    http.create(
        "/api/v1/namespaces/default/pods",
        &web_pod("wrong-digest", &wrong, json!({})),
    )
    .await;
    let (reason, message) = waiting_reason(&http, "default", "wrong-digest").await;
    assert!(
        reason == "ErrImagePull" || reason == "ImagePullBackOff",
        "{reason}: {message}"
    );
    assert!(message.contains(&"0".repeat(64)), "{message}");
    wait_for("ImagePullBackOff", Duration::from_secs(15), async || {
        let (reason, _) = waiting_reason(&http, "default", "wrong-digest").await;
        (reason == "ImagePullBackOff").then_some(())
    })
    .await;
    // Never: only what the node has.
    let never = format!("{}/team/other:1", open.host);
    http.create(
        "/api/v1/namespaces/default/pods",
        &web_pod(
            "never",
            &never,
            json!({"containers": [{"name": "web", "image": never, "imagePullPolicy": "Never"}]}),
        ),
    )
    .await;
    let (reason, message) = waiting_reason(&http, "default", "never").await;
    assert_eq!(reason, "ErrImageNeverPull", "{message}");

    // A private repository: refused without credentials, pulled with its pull Secret.
    let private_ref = format!("{}/secret/web:1", private.host);
    let denied = push(shoal_examples::WEB_P2, &private_ref, None).await;
    assert!(!denied.status.success(), "pushing needs the login");
    ok(push(
        shoal_examples::WEB_P2,
        &private_ref,
        Some(("alice", "s3cret")),
    )
    .await);
    http.create(
        "/api/v1/namespaces/default/pods",
        &web_pod("no-secret", &private_ref, json!({})),
    )
    .await;
    let (reason, message) = waiting_reason(&http, "default", "no-secret").await;
    assert!(
        reason == "ErrImagePull" || reason == "ImagePullBackOff",
        "{reason}: {message}"
    );
    assert!(message.contains("Not authorized"), "{message}");
    let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
    let docker_config = json!({"auths": {private.host.clone(): {"auth": auth}}}).to_string();
    http.create(
        "/api/v1/namespaces/default/secrets",
        &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pull"},
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": base64::engine::general_purpose::STANDARD.encode(docker_config)}}),
    )
    .await;
    http.create(
        "/api/v1/namespaces/default/pods",
        &web_pod(
            "with-secret",
            &private_ref,
            json!({"imagePullSecrets": [{"name": "pull"}]}),
        ),
    )
    .await;
    wait_ready(&http, "default", "with-secret").await;

    // The node restarts while the registry is gone: what it resolved and compiled is on its
    // disk, so its IfNotPresent pods run again without the registry.
    let TestCluster { cluster, dir, .. } = cluster;
    cluster.shutdown().await;
    drop(open);
    let cluster = shoal::cluster::DevCluster::start_with(
        dir.path(),
        "127.0.0.1:0".parse().unwrap(),
        1,
        Default::default(),
        |config| config.insecure_registries = insecure.clone(),
    )
    .await
    .unwrap();
    let kubeconfig = cluster.write_kubeconfig().unwrap();
    let http = Http::from_kubeconfig(&kubeconfig);
    wait_for(
        "the pod of a tag to run again",
        Duration::from_secs(30),
        async || {
            let (_, pod) = http
                .call("GET", "/api/v1/namespaces/default/pods/again", "", "")
                .await;
            let running = pod
                .pointer("/status/containerStatuses/0/state/running")
                .is_some();
            let id = pod["status"]["containerStatuses"][0]["imageID"].clone();
            // The status read may still be the one from before the restart: the pod counts
            // as running again once it answers.
            if !(running && id == by_digest.as_str()) {
                return None;
            }
            let (status, _) = proxy_get(&http, "again:8080", "/").await;
            (status == 200).then_some(())
        },
    )
    .await;
    cluster.shutdown().await;
}

/// A layer over the agent's `--max-image-size` is refused before it is downloaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_layers_are_refused() {
    if !registry_available("oversized_layers_are_refused") {
        return;
    }
    let open = Registry::start(None);
    let insecure = vec![open.host.clone()];
    let cluster = TestCluster::start_with(1, |config| {
        config.insecure_registries = insecure.clone();
        config.max_image_bytes = 1000;
    })
    .await;
    let http = cluster.http();
    let image = format!("{}/team/web:big", open.host);
    ok(push(shoal_examples::WEB_P2, &image, None).await);
    http.create(
        "/api/v1/namespaces/default/pods",
        &web_pod("big", &image, json!({})),
    )
    .await;
    let (reason, message) = waiting_reason(&http, "default", "big").await;
    assert!(
        reason == "ErrImagePull" || reason == "ImagePullBackOff",
        "{reason}: {message}"
    );
    assert!(message.contains("more than the 1000 allowed"), "{message}");
    // An unreachable registry is named, and nothing else changes.
    let nowhere = format!("{}/team/web:1", free_addr());
    http.create(
        "/api/v1/namespaces/default/pods",
        &web_pod("nowhere", &nowhere, json!({})),
    )
    .await;
    let (reason, message) = waiting_reason(&http, "default", "nowhere").await;
    assert!(
        reason == "ErrImagePull" || reason == "ImagePullBackOff",
        "{reason}: {message}"
    );
    assert!(message.contains(&nowhere), "{message}");
    cluster.cluster.shutdown().await;
}
