//! Security over real HTTPS sockets: who gets 401 (no, wrong or stale credentials), what RBAC
//! allows per namespace (kubectl as an ordinary user, `auth can-i`, `whoami`), escalation
//! prevention, and the insecure address's loopback rule.

use std::time::Duration;

use serde_json::{json, Value};
use shoal_control::auth::tokens::{KubernetesClaim, ObjectRef, ServiceAccountTokens};
use shoal_tests::*;

fn ca(cluster: &TestCluster) -> String {
    cluster.cluster.control.server_ca_pem.clone()
}

fn cluster_tokens(cluster: &TestCluster) -> ServiceAccountTokens {
    let (private, public) = cluster.cluster.control.pki.service_account_keys();
    ServiceAccountTokens::new(private, public).unwrap()
}

fn claim(namespace: &str, name: &str, uid: &str) -> KubernetesClaim {
    KubernetesClaim {
        namespace: namespace.into(),
        serviceaccount: ObjectRef {
            name: name.into(),
            uid: uid.into(),
        },
        pod: None,
    }
}

async fn whoami(http: &Http) -> (u16, Value) {
    let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"});
    http.call(
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        "application/json",
        &review.to_string(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_valid_credentials_get_401() {
    let cluster = TestCluster::start(0).await;
    let url = cluster.url();
    assert!(url.starts_with("https://"), "{url}");
    let anonymous = Http::anonymous(&url, &ca(&cluster));
    for public in ["/version", "/healthz", "/livez", "/readyz"] {
        assert_eq!(
            anonymous.call("GET", public, "", "").await.0,
            200,
            "{public}"
        );
    }
    for private in [
        "/api/v1/pods",
        "/api",
        "/apis",
        "/openapi/v3",
        "/api/v1/namespaces/default/secrets",
    ] {
        let (status, body) = anonymous.call("GET", private, "", "").await;
        assert_eq!(
            (status, body["reason"].as_str()),
            (401, Some("Unauthorized")),
            "{private}: {body}"
        );
    }

    // A client certificate from another CA, even one claiming system:masters.
    let other = tempfile::tempdir().unwrap();
    let other_pki = shoal_control::auth::pki::Pki::load_or_create(other.path()).unwrap();
    let forged = other_pki
        .issue_client(
            "mallory",
            &["system:masters".into()],
            Duration::from_secs(600),
        )
        .unwrap();
    let mallory =
        Http::with_client_certificate(&url, &ca(&cluster), &forged.cert_pem, &forged.key_pem);
    assert_eq!(mallory.call("GET", "/api/v1/pods", "", "").await.0, 401);

    // ServiceAccount tokens: valid, then signed elsewhere, expired, revoked.
    let admin = cluster.http();
    let account = admin
        .create(
            "/api/v1/namespaces/default/serviceaccounts",
            &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "robot"}}),
        )
        .await;
    let uid = account["metadata"]["uid"].as_str().unwrap();
    let tokens = cluster_tokens(&cluster);
    let (token, _) = tokens
        .issue(
            claim("default", "robot", uid),
            &[],
            Duration::from_secs(600),
        )
        .unwrap();
    let robot = Http::anonymous(&url, &ca(&cluster)).bearer(&token);
    let (status, me) = whoami(&robot).await;
    assert_eq!(status, 201, "{me}");
    assert_eq!(
        me["status"]["userInfo"]["username"],
        "system:serviceaccount:default:robot"
    );
    let groups = me["status"]["userInfo"]["groups"].to_string();
    assert!(
        groups.contains("system:serviceaccounts:default"),
        "{groups}"
    );
    // Authenticated, and allowed nothing it was not granted.
    assert_eq!(
        robot
            .call("GET", "/api/v1/namespaces/default/pods", "", "")
            .await
            .0,
        403
    );

    let foreign_key = rcgen::KeyPair::generate().unwrap();
    let foreign =
        ServiceAccountTokens::new(&foreign_key.serialize_pem(), &foreign_key.public_key_pem())
            .unwrap();
    let (forged, _) = foreign
        .issue(
            claim("default", "robot", uid),
            &[],
            Duration::from_secs(600),
        )
        .unwrap();
    let (expired, _) = tokens
        .issue(claim("default", "robot", uid), &[], Duration::ZERO)
        .unwrap();
    let (wrong_uid, _) = tokens
        .issue(
            claim("default", "robot", "another-uid"),
            &[],
            Duration::from_secs(600),
        )
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for (what, bad) in [
        ("signed by another key", forged.as_str()),
        ("expired", expired.as_str()),
        ("for an older account of the same name", wrong_uid.as_str()),
        ("garbage", "not-a-token"),
        ("three garbage parts", "a.b.c"),
    ] {
        let http = Http::anonymous(&url, &ca(&cluster)).bearer(bad);
        assert_eq!(whoami(&http).await.0, 401, "{what}");
        // A bad token never falls back to anonymous, even on a public path.
        assert_eq!(
            http.call("GET", "/version", "", "").await.0,
            401,
            "{what} on /version"
        );
    }
    let (status, _) = admin
        .call(
            "DELETE",
            "/api/v1/namespaces/default/serviceaccounts/robot",
            "",
            "",
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        whoami(&robot).await.0,
        401,
        "a deleted account's token is revoked"
    );

    // A bootstrap token authenticates while its Secret exists and is unexpired.
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "type": "bootstrap.kubernetes.io/token",
        "metadata": {"name": "bootstrap-token-abcdef", "namespace": "kube-system"},
        "stringData": {"token-id": "abcdef", "token-secret": "0123456789abcdef", "usage-bootstrap-authentication": "true"}});
    admin
        .create("/api/v1/namespaces/kube-system/secrets", &secret)
        .await;
    let joiner = Http::anonymous(&url, &ca(&cluster)).bearer("abcdef.0123456789abcdef");
    let (status, me) = whoami(&joiner).await;
    assert_eq!(
        (status, me["status"]["userInfo"]["username"].as_str()),
        (201, Some("system:bootstrap:abcdef")),
        "{me}"
    );
    let wrong_secret = Http::anonymous(&url, &ca(&cluster)).bearer("abcdef.0123456789abcdee");
    assert_eq!(whoami(&wrong_secret).await.0, 401);
    let (status, _) = admin
        .call(
            "DELETE",
            "/api/v1/namespaces/kube-system/secrets/bootstrap-token-abcdef",
            "",
            "",
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(whoami(&joiner).await.0, 401, "a deleted bootstrap token");
    let expired_secret = json!({"apiVersion": "v1", "kind": "Secret", "type": "bootstrap.kubernetes.io/token",
        "metadata": {"name": "bootstrap-token-zyxwvu", "namespace": "kube-system"},
        "stringData": {"token-secret": "0123456789abcdef", "usage-bootstrap-authentication": "true", "expiration": "2020-01-01T00:00:00Z"}});
    admin
        .create("/api/v1/namespaces/kube-system/secrets", &expired_secret)
        .await;
    let late = Http::anonymous(&url, &ca(&cluster)).bearer("zyxwvu.0123456789abcdef");
    assert_eq!(whoami(&late).await.0, 401, "an expired bootstrap token");
    cluster.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_auth_can_be_turned_off_and_plain_http_stays_on_loopback() {
    let mut options = shoal::cluster::ControlPlaneOptions::default();
    options.security.anonymous_auth = false;
    options.security.insecure_http_addr = Some("127.0.0.1:0".parse().unwrap());
    let cluster = TestCluster::start_with_options(0, options, |_| {}).await;
    let anonymous = Http::anonymous(&cluster.url(), &ca(&cluster));
    assert_eq!(anonymous.call("GET", "/version", "", "").await.0, 401);
    assert_eq!(cluster.http().call("GET", "/version", "", "").await.0, 200);
    // The loopback plain HTTP address answers without credentials, as a superuser.
    let insecure = Http::new(&cluster.cluster.control.insecure_url().unwrap());
    assert_eq!(
        insecure.call("GET", "/api/v1/namespaces", "", "").await.0,
        200
    );
    cluster.cluster.shutdown().await;

    let dir = tempfile::tempdir().unwrap();
    let mut options = shoal::cluster::ControlPlaneOptions::default();
    options.security.insecure_http_addr = Some("0.0.0.0:0".parse().unwrap());
    let refused = shoal::cluster::ControlPlane::start_with(
        dir.path(),
        "127.0.0.1:0".parse().unwrap(),
        options,
    )
    .await;
    let error = refused
        .err()
        .expect("plain HTTP beyond loopback is refused")
        .to_string();
    assert!(error.contains("not a loopback address"), "{error}");
}

const NAMESPACES: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: team-a}
---
apiVersion: v1
kind: Namespace
metadata: {name: team-b}
";

fn binding(name: &str, namespace: &str, role: &str, user: &str) -> String {
    format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: {name}, namespace: {namespace}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {role}}}\nsubjects:\n- {{apiGroup: rbac.authorization.k8s.io, kind: User, name: {user}}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_binding_lets_a_user_read_one_namespace_and_nothing_more() {
    if !kubectl_available("a_view_binding_lets_a_user_read_one_namespace_and_nothing_more") {
        return;
    }
    let cluster = TestCluster::start(1).await;
    let admin = &cluster.kubeconfig;
    ok(kubectl_stdin_async(admin, &["apply", "-f", "-"], NAMESPACES).await);
    ok(kubectl_stdin_async(
        admin,
        &["apply", "-f", "-"],
        &binding("alice-view", "team-a", "view", "alice"),
    )
    .await);
    let pod = pod_yaml("p", shoal_examples::HELLO_P1, &["x"]);
    ok(kubectl_stdin_async(admin, &["apply", "-n", "team-a", "-f", "-"], &pod).await);
    let alice = cluster.kubeconfig_for("alice", &[]);

    let listed = ok(kubectl_async(&alice, &["get", "pods", "-n", "team-a", "-o", "name"]).await);
    assert_eq!(listed.trim(), "pod/p");
    let whoami = ok(kubectl_async(&alice, &["auth", "whoami"]).await);
    assert!(whoami.contains("alice"), "{whoami}");

    let other = kubectl_async(&alice, &["get", "pods", "-n", "team-b"]).await;
    assert!(!other.status.success());
    assert!(
        stderr(&other).contains("pods is forbidden: User \"alice\" cannot list resource \"pods\" in API group \"\" in the namespace \"team-b\""),
        "{}",
        stderr(&other)
    );
    let create = kubectl_stdin_async(
        &alice,
        &["apply", "-n", "team-a", "-f", "-"],
        &pod_yaml("q", shoal_examples::HELLO_P1, &[]),
    )
    .await;
    assert!(!create.status.success());
    assert!(stderr(&create).contains("forbidden"), "{}", stderr(&create));
    let secrets = kubectl_async(&alice, &["get", "secrets", "-n", "team-a"]).await;
    assert!(
        stderr(&secrets).contains("cannot list resource \"secrets\""),
        "{}",
        stderr(&secrets)
    );

    // kubectl auth can-i agrees with what the server enforces.
    for (args, expected) in [
        (&["list", "pods", "-n", "team-a"][..], "yes"),
        (&["watch", "pods", "-n", "team-a"], "yes"),
        (&["get", "pods/log", "-n", "team-a"], "yes"),
        (&["create", "pods", "-n", "team-a"], "no"),
        (&["list", "pods", "-n", "team-b"], "no"),
        (&["list", "secrets", "-n", "team-a"], "no"),
        (&["list", "nodes"], "no"),
    ] {
        let mut full = vec!["auth", "can-i"];
        full.extend_from_slice(args);
        let answer = kubectl_async(&alice, &full).await;
        assert_eq!(
            stdout(&answer).trim(),
            expected,
            "can-i {args:?}: {}",
            stderr(&answer)
        );
    }
    let rules = ok(kubectl_async(&alice, &["auth", "can-i", "--list", "-n", "team-a"]).await);
    assert!(rules.contains("pods "), "{rules}");
    assert!(!rules.contains("secrets "), "{rules}");

    // Watches are authorized as lists.
    let http = Http::from_kubeconfig(&alice);
    let (status, _) = http
        .call("GET", "/api/v1/namespaces/team-b/pods?watch=true", "", "")
        .await;
    assert_eq!(status, 403);
    let (status, _) = http.call("GET", "/api/v1/pods?watch=true", "", "").await;
    assert_eq!(status, 403, "a cluster-wide watch");

    // A SubjectAccessReview asks the same question for someone else (admins only).
    let review = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": "alice", "resourceAttributes": {"namespace": "team-a", "verb": "get", "resource": "pods"}}});
    let path = "/apis/authorization.k8s.io/v1/subjectaccessreviews";
    let (status, answer) = cluster
        .http()
        .call("POST", path, "application/json", &review.to_string())
        .await;
    assert_eq!(
        (status, answer["status"]["allowed"].as_bool()),
        (201, Some(true)),
        "{answer}"
    );
    assert_eq!(
        http.call("POST", path, "application/json", &review.to_string())
            .await
            .0,
        403
    );
    cluster.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_cannot_grant_what_they_do_not_hold() {
    if !kubectl_available("users_cannot_grant_what_they_do_not_hold") {
        return;
    }
    let cluster = TestCluster::start(0).await;
    let admin = &cluster.kubeconfig;
    ok(kubectl_stdin_async(admin, &["apply", "-f", "-"], NAMESPACES).await);
    ok(kubectl_stdin_async(
        admin,
        &["apply", "-f", "-"],
        &binding("bob-admin", "team-a", "admin", "bob"),
    )
    .await);
    ok(kubectl_stdin_async(
        admin,
        &["apply", "-f", "-"],
        &binding("carol-edit", "team-a", "edit", "carol"),
    )
    .await);
    let bob = cluster.kubeconfig_for("bob", &[]);
    let carol = cluster.kubeconfig_for("carol", &[]);

    // edit may not touch bindings at all.
    let denied = kubectl_stdin_async(
        &carol,
        &["apply", "-f", "-"],
        &binding("carol-root", "team-a", "cluster-admin", "carol"),
    )
    .await;
    assert!(!denied.status.success());
    assert!(stderr(&denied).contains("forbidden"), "{}", stderr(&denied));

    // admin may bind roles, but only to what it holds itself.
    let escalation = kubectl_stdin_async(
        &bob,
        &["apply", "-f", "-"],
        &binding("bob-root", "team-a", "cluster-admin", "bob"),
    )
    .await;
    assert!(!escalation.status.success());
    assert!(
        stderr(&escalation).contains("is attempting to grant RBAC permissions not currently held"),
        "{}",
        stderr(&escalation)
    );
    ok(kubectl_stdin_async(
        &bob,
        &["apply", "-f", "-"],
        &binding("dave-view", "team-a", "view", "dave"),
    )
    .await);
    let other_namespace = kubectl_stdin_async(
        &bob,
        &["apply", "-f", "-"],
        &binding("dave-view", "team-b", "view", "dave"),
    )
    .await;
    assert!(
        !other_namespace.status.success(),
        "bob holds nothing in team-b"
    );
    let wide_role = "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: everything, namespace: team-a}\nrules:\n- {apiGroups: ['*'], resources: ['*'], verbs: ['*']}\n";
    let denied = kubectl_stdin_async(&bob, &["apply", "-f", "-"], wide_role).await;
    assert!(
        stderr(&denied).contains("not currently held"),
        "{}",
        stderr(&denied)
    );

    // The binding bob made is in force when its create returns.
    let dave = cluster.kubeconfig_for("dave", &[]);
    ok(kubectl_async(&dave, &["get", "pods", "-n", "team-a"]).await);

    // Bad RBAC objects are refused with the field named, and change nothing.
    let bad = "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: bad, namespace: team-a}\nrules:\n- {apiGroups: [''], resources: [pods], verbs: [fly]}\n- {apiGroups: [''], resources: [pods], verbs: []}\n";
    let invalid = kubectl_stdin_async(admin, &["apply", "-f", "-"], bad).await;
    let message = stderr(&invalid);
    assert!(
        message.contains("rules[0].verbs[0]") && message.contains("fly"),
        "{message}"
    );
    assert!(message.contains("rules[1].verbs"), "{message}");
    let absent = kubectl_async(admin, &["get", "role", "bad", "-n", "team-a"]).await;
    assert!(!absent.status.success());
    cluster.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasm_pod_calls_the_api_as_its_service_account() {
    let cluster = TestCluster::start(1).await;
    let admin = cluster.http();
    // The control plane publishes itself as the kubernetes Service.
    let (_, service) = admin
        .call(
            "GET",
            "/api/v1/namespaces/default/services/kubernetes",
            "",
            "",
        )
        .await;
    assert_eq!(service["spec"]["clusterIP"], "10.96.0.1", "{service}");
    // Every namespace gets a default ServiceAccount.
    admin
        .create(
            "/api/v1/namespaces",
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "fresh"}}),
        )
        .await;
    wait_for(
        "the default ServiceAccount of a new namespace",
        Duration::from_secs(10),
        async || {
            let (status, _) = admin
                .call(
                    "GET",
                    "/api/v1/namespaces/fresh/serviceaccounts/default",
                    "",
                    "",
                )
                .await;
            (status == 200).then_some(())
        },
    )
    .await;

    for (path, object) in [
        (
            "/api/v1/namespaces/default/serviceaccounts",
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}}),
        ),
        (
            "/api/v1/namespaces/default/configmaps",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"color": "blue"}}),
        ),
        (
            "/api/v1/namespaces/default/secrets",
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hidden"}, "stringData": {"k": "v"}}),
        ),
        (
            "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "configmap-reader"}, "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]}),
        ),
        (
            "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "reader"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmap-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader"}]}),
        ),
    ] {
        admin.create(path, &object).await;
    }
    let web = |name: &str| json!({"name": name, "image": shoal_examples::WEB_P2, "ports": [{"containerPort": 8080}]});
    admin
        .create(
            "/api/v1/namespaces/default/pods",
            &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client"},
        "spec": {"serviceAccountName": "reader", "containers": [web("web")]}}),
        )
        .await;
    admin
        .create(
            "/api/v1/namespaces/default/pods",
            &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "tokenless"},
        "spec": {"automountServiceAccountToken": false, "containers": [web("web")]}}),
        )
        .await;
    // A pod of its own projection: a token for another audience, and its labels.
    admin
        .create(
            "/api/v1/namespaces/default/pods",
            &json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "federated", "labels": {"team": "blue"}},
        "spec": {"serviceAccountName": "reader", "automountServiceAccountToken": false,
            "volumes": [{"name": "creds", "projected": {"sources": [
                {"serviceAccountToken": {"audience": "vault", "expirationSeconds": 900, "path": "vault-token"}},
                {"downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
            ]}}],
            "containers": [{"name": "web", "image": shoal_examples::WEB_P2, "ports": [{"containerPort": 8080}],
                "volumeMounts": [{"name": "creds", "mountPath": "/creds"}]}]}}),
        )
        .await;
    wait_ready(&admin, "default", "client").await;
    wait_ready(&admin, "default", "tokenless").await;
    wait_ready(&admin, "default", "federated").await;

    // The ServiceAccount admission shows its volume in the spec, as on Kubernetes.
    let (_, pod) = admin
        .call("GET", "/api/v1/namespaces/default/pods/client", "", "")
        .await;
    let volume = &pod["spec"]["volumes"][0];
    assert!(
        volume["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("kube-api-access-")),
        "{pod}"
    );
    assert_eq!(
        volume["projected"]["sources"][0]["serviceAccountToken"]["path"],
        "token"
    );
    assert_eq!(
        pod["spec"]["containers"][0]["volumeMounts"][0],
        json!({"name": volume["name"], "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true})
    );
    assert_eq!(pod["spec"]["serviceAccount"], "reader");
    let (_, pod) = admin
        .call("GET", "/api/v1/namespaces/default/pods/tokenless", "", "")
        .await;
    assert!(pod["spec"]["volumes"].is_null(), "{pod}");
    assert_eq!(pod["spec"]["serviceAccountName"], "default");
    // The user's projection: a token for its audience, the labels in Kubernetes' format.
    let (_, token) = proxy_get(&admin, "federated:8080", "/file/creds/vault-token").await;
    let claims = token.split('.').nth(1).expect("a JWT");
    use base64::Engine as _;
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["aud"], json!(["vault"]), "{claims}");
    assert_eq!(
        claims["sub"], "system:serviceaccount:default:reader",
        "{claims}"
    );
    let (_, labels) = proxy_get(&admin, "federated:8080", "/file/creds/labels").await;
    assert_eq!(labels, "team=\"blue\"");
    // A ServiceAccount that opts out speaks for its pods (a dry run shows the admitted pod).
    admin
        .create(
            "/api/v1/namespaces/default/serviceaccounts",
            &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "quiet"},
                "automountServiceAccountToken": false}),
        )
        .await;
    let quiet = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "quiet"},
        "spec": {"serviceAccountName": "quiet", "containers": [web("web")]}});
    let (status, pod) = admin
        .call(
            "POST",
            "/api/v1/namespaces/default/pods?dryRun=All",
            "application/json",
            &quiet.to_string(),
        )
        .await;
    assert_eq!(status, 201, "{pod}");
    assert!(pod["spec"]["volumes"].is_null(), "{pod}");

    // From its guest code, the pod reads what its ServiceAccount may read...
    let (status, body) = proxy_get(
        &admin,
        "client:8080",
        "/kube/api/v1/namespaces/default/configmaps/settings",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("200 ") && body.contains("\"color\":\"blue\""),
        "{body}"
    );
    // ...and nothing more.
    let (_, body) = proxy_get(
        &admin,
        "client:8080",
        "/kube/api/v1/namespaces/default/secrets/hidden",
    )
    .await;
    assert!(
        body.starts_with("403 ") && body.contains("system:serviceaccount:default:reader"),
        "{body}"
    );
    let (_, body) = proxy_get(
        &admin,
        "client:8080",
        "/file/var/run/secrets/kubernetes.io/serviceaccount/namespace",
    )
    .await;
    assert_eq!(body, "default");
    let (_, body) = proxy_get(
        &admin,
        "client:8080",
        "/file/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
    )
    .await;
    assert_eq!(body, ca(&cluster));
    // The mount is read-only.
    let (status, body) = admin
        .raw("PUT", "/api/v1/namespaces/default/pods/client:8080/proxy/file/var/run/secrets/kubernetes.io/serviceaccount/token", "text/plain", "stolen")
        .await;
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    // A pod that opts out has no token.
    let (status, body) = proxy_get(
        &admin,
        "tokenless:8080",
        "/kube/api/v1/namespaces/default/configmaps/settings",
    )
    .await;
    assert_eq!(status, 500, "{body}");

    // TokenRequest: the token names the account; too short a lifetime is refused.
    let path = "/api/v1/namespaces/default/serviceaccounts/reader/token";
    let request = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}});
    let (status, answer) = admin
        .call("POST", path, "application/json", &request.to_string())
        .await;
    assert_eq!(status, 201, "{answer}");
    let token = answer["status"]["token"].as_str().unwrap();
    let as_reader = Http::anonymous(&cluster.url(), &ca(&cluster)).bearer(token);
    let (_, me) = whoami(&as_reader).await;
    assert_eq!(
        me["status"]["userInfo"]["username"],
        "system:serviceaccount:default:reader"
    );
    let short = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 60}});
    let (status, answer) = admin
        .call("POST", path, "application/json", &short.to_string())
        .await;
    assert_eq!(status, 422, "{answer}");
    let (status, _) = admin
        .call(
            "POST",
            "/api/v1/namespaces/default/serviceaccounts/nobody/token",
            "application/json",
            &request.to_string(),
        )
        .await;
    assert_eq!(status, 404);
    // A token bound to a pod dies with the pod.
    let bound = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "tokenless"}}});
    let (status, answer) = admin
        .call("POST", path, "application/json", &bound.to_string())
        .await;
    assert_eq!(status, 201, "{answer}");
    let bound_client = Http::anonymous(&cluster.url(), &ca(&cluster))
        .bearer(answer["status"]["token"].as_str().unwrap());
    assert_eq!(whoami(&bound_client).await.0, 201);
    let (status, _) = admin
        .call(
            "DELETE",
            "/api/v1/namespaces/default/pods/tokenless?gracePeriodSeconds=0",
            "",
            "",
        )
        .await;
    assert_eq!(status, 200);
    wait_for(
        "the pod-bound token to die with its pod",
        Duration::from_secs(30),
        async || (whoami(&bound_client).await.0 == 401).then_some(()),
    )
    .await;
    cluster.cluster.shutdown().await;
}

fn encryption_config(dir: &std::path::Path, name: &str, providers: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    let text = format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n{providers}"
    );
    std::fs::write(&path, text).unwrap();
    path
}

const KEY1: &str = "YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE=";
const KEY2: &str = "YmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmI=";

async fn control_plane(
    dir: &std::path::Path,
    config: &std::path::Path,
) -> (shoal::cluster::ControlPlane, Http) {
    let mut options = shoal::cluster::ControlPlaneOptions::default();
    options.security.encryption_config = Some(config.to_path_buf());
    let control =
        shoal::cluster::ControlPlane::start_with(dir, "127.0.0.1:0".parse().unwrap(), options)
            .await
            .unwrap();
    let kubeconfig = dir.join("kubeconfig");
    control.write_admin_kubeconfig(&kubeconfig).unwrap();
    (control, Http::from_kubeconfig(&kubeconfig))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_encrypted_at_rest_and_survive_a_key_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"}, "stringData": {"password": "hunter2-plaintext"}});
    let first = encryption_config(
        dir.path(),
        "first.yaml",
        &format!("  - aesgcm:\n      keys: [{{name: k1, secret: {KEY1}}}]\n  - identity: {{}}\n"),
    );
    let (control, http) = control_plane(&data, &first).await;
    http.create("/api/v1/namespaces/default/secrets", &secret)
        .await;
    let (_, read) = http
        .call("GET", "/api/v1/namespaces/default/secrets/db", "", "")
        .await;
    assert_eq!(
        read["data"]["password"], "aHVudGVyMi1wbGFpbnRleHQ=",
        "{read}"
    );
    control.shutdown().await;

    // On disk: the envelope, never the value.
    {
        use shoal_control::store::Store;
        let raw = shoal_control::store::RedbStore::open(&data.join("store.redb")).unwrap();
        let stored = raw
            .get(&shoal_control::store::ObjectKey::new(
                "secrets", "default", "db",
            ))
            .unwrap()
            .unwrap()
            .to_string();
        assert!(stored.contains("k8s:enc:aesgcm:v1:k1:"), "{stored}");
        assert!(
            !stored.contains("aHVudGVyMi1wbGFpbnRleHQ") && !stored.contains("hunter2"),
            "{stored}"
        );
    }
    let raw_file = std::fs::read(data.join("store.redb")).unwrap();
    let needle = b"aHVudGVyMi1wbGFpbnRleHQ";
    assert!(
        !raw_file.windows(needle.len()).any(|w| w == needle),
        "the secret is in the file"
    );

    // Rotation: a new key first, the old one still listed; everything stays readable.
    let rotated = encryption_config(dir.path(), "rotated.yaml", &format!("  - secretbox:\n      keys: [{{name: k2, secret: {KEY2}}}]\n  - aesgcm:\n      keys: [{{name: k1, secret: {KEY1}}}]\n"));
    let (control, http) = control_plane(&data, &rotated).await;
    let (status, read) = http
        .call("GET", "/api/v1/namespaces/default/secrets/db", "", "")
        .await;
    assert_eq!(
        (status, read["data"]["password"].as_str()),
        (200, Some("aHVudGVyMi1wbGFpbnRleHQ=")),
        "{read}"
    );
    control.shutdown().await;

    // With the old key dropped, the old secret is a clear error; the server keeps serving.
    let dropped = encryption_config(
        dir.path(),
        "dropped.yaml",
        &format!("  - secretbox:\n      keys: [{{name: k2, secret: {KEY2}}}]\n"),
    );
    let (control, http) = control_plane(&data, &dropped).await;
    let (status, _) = http
        .call("GET", "/api/v1/namespaces/default/secrets/db", "", "")
        .await;
    assert_eq!(status, 500);
    assert_eq!(http.call("GET", "/api/v1/namespaces", "", "").await.0, 200);
    control.shutdown().await;

    // A broken config stops the server at start with the field named.
    let broken = encryption_config(
        dir.path(),
        "broken.yaml",
        "  - aesgcm:\n      keys: [{name: k3, secret: c2hvcnQ=}]\n",
    );
    let mut options = shoal::cluster::ControlPlaneOptions::default();
    options.security.encryption_config = Some(broken);
    let error =
        shoal::cluster::ControlPlane::start_with(&data, "127.0.0.1:0".parse().unwrap(), options)
            .await
            .err()
            .expect("a bad key is refused")
            .to_string();
    assert!(
        error.contains("providers[0].aesgcm.keys[0].secret"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_images_come_only_from_allowed_directories() {
    let examples = std::path::Path::new(shoal_examples::HELLO_P1)
        .parent()
        .unwrap()
        .to_path_buf();
    let links = tempfile::tempdir().unwrap();
    let allowed = vec![examples, links.path().to_path_buf()];
    let cluster =
        TestCluster::start_with(1, |config| config.image_dirs = Some(allowed.clone())).await;
    let http = cluster.http();
    let outside = cluster.dir.path().join("outside.wasm");
    std::fs::copy(shoal_examples::HELLO_P1, &outside).unwrap();
    // A link inside an allowed directory to a file outside it is outside.
    let escape = links.path().join("escape.wasm");
    std::os::unix::fs::symlink(&outside, &escape).unwrap();
    let pod = |name: &str, image: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": image, "args": ["x"]}]}})
    };
    http.create(
        "/api/v1/namespaces/default/pods",
        &pod("inside", shoal_examples::HELLO_P1),
    )
    .await;
    http.create(
        "/api/v1/namespaces/default/pods",
        &pod("outside", outside.to_str().unwrap()),
    )
    .await;
    http.create(
        "/api/v1/namespaces/default/pods",
        &pod("escape", escape.to_str().unwrap()),
    )
    .await;
    for name in ["outside", "escape"] {
        let (reason, message) = waiting_reason(&http, "default", name).await;
        assert_eq!(reason, "ErrImagePull", "{name}: {message}");
        assert!(message.contains("--allow-image-dir"), "{name}: {message}");
    }
    wait_phase(&http, "default", "inside", "Succeeded").await;
    cluster.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_touch_only_their_own_objects() {
    let cluster = TestCluster::start(1).await;
    let admin = cluster.http();
    let secret = |name: &str| json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": {"k": "v"}});
    admin
        .create("/api/v1/namespaces/default/secrets", &secret("used"))
        .await;
    admin
        .create("/api/v1/namespaces/default/secrets", &secret("unused"))
        .await;
    admin.create("/api/v1/namespaces/default/pods", &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p0"},
        "spec": {"nodeName": "node-0", "volumes": [{"name": "s", "secret": {"secretName": "used"}}],
            "containers": [{"name": "web", "image": shoal_examples::WEB_P2, "ports": [{"containerPort": 8080}],
                "volumeMounts": [{"name": "s", "mountPath": "/s"}]}]}})).await;
    wait_ready(&admin, "default", "p0").await;
    let node0 =
        Http::from_kubeconfig(&cluster.kubeconfig_for("system:node:node-0", &["system:nodes"]));
    let node1 =
        Http::from_kubeconfig(&cluster.kubeconfig_for("system:node:node-1", &["system:nodes"]));

    // Secrets: only those a pod bound to the node uses, and never a list.
    assert_eq!(
        node0
            .call("GET", "/api/v1/namespaces/default/secrets/used", "", "")
            .await
            .0,
        200
    );
    let (status, body) = node0
        .call("GET", "/api/v1/namespaces/default/secrets/unused", "", "")
        .await;
    assert_eq!(status, 403);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("no relationship found between node 'node-0'"),
        "{body}"
    );
    assert_eq!(
        node0
            .call("GET", "/api/v1/namespaces/default/secrets", "", "")
            .await
            .0,
        403
    );
    assert_eq!(
        node1
            .call("GET", "/api/v1/namespaces/default/secrets/used", "", "")
            .await
            .0,
        403
    );

    // Nodes: reading any, changing only its own.
    assert_eq!(
        node1.call("GET", "/api/v1/nodes/node-0", "", "").await.0,
        200
    );
    let ready =
        json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}).to_string();
    let merge = "application/merge-patch+json";
    assert_eq!(
        node1
            .call("PATCH", "/api/v1/nodes/node-0/status", merge, &ready)
            .await
            .0,
        403
    );
    let node = |name: &str| {
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}).to_string()
    };
    let (status, body) = node1
        .call("POST", "/api/v1/nodes", "application/json", &node("node-7"))
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        node1
            .call("POST", "/api/v1/nodes", "application/json", &node("node-1"))
            .await
            .0,
        201
    );
    assert_eq!(
        node1
            .call("PATCH", "/api/v1/nodes/node-1/status", merge, &ready)
            .await
            .0,
        200
    );
    let lease = |name: &str| {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name}})
            .to_string()
    };
    let leases = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";
    assert_eq!(
        node1
            .call("POST", leases, "application/json", &lease("node-0"))
            .await
            .0,
        403
    );
    assert_eq!(
        node1
            .call("DELETE", &format!("{leases}/node-0"), "", "")
            .await
            .0,
        403
    );

    // Pods: status and deletion only of pods bound to it; tokens only for them.
    let status_patch = json!({"status": {"message": "x"}}).to_string();
    let path = "/api/v1/namespaces/default/pods/p0/status";
    assert_eq!(node1.call("PATCH", path, merge, &status_patch).await.0, 403);
    assert_eq!(node0.call("PATCH", path, merge, &status_patch).await.0, 200);
    assert_eq!(
        node1
            .call("DELETE", "/api/v1/namespaces/default/pods/p0", "", "")
            .await
            .0,
        403
    );
    let token = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "p0"}}})
    .to_string();
    let token_path = "/api/v1/namespaces/default/serviceaccounts/default/token";
    assert_eq!(
        node1
            .call("POST", token_path, "application/json", &token)
            .await
            .0,
        403
    );
    assert_eq!(
        node0
            .call("POST", token_path, "application/json", &token)
            .await
            .0,
        201
    );
    let unbound =
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}})
            .to_string();
    assert_eq!(
        node0
            .call("POST", token_path, "application/json", &unbound)
            .await
            .0,
        403
    );
    cluster.cluster.shutdown().await;
}

/// CertificateSigningRequests as a user meets them: bad requests are refused naming the field,
/// the requester is recorded by the server, approving needs `approve` on the signer, and
/// `kubectl certificate approve` gets a usable client certificate signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_signing_requests_are_approved_only_by_approvers() {
    use base64::Engine;
    let cluster = TestCluster::start(0).await;
    let admin = cluster.http();
    let collection = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    let csr = |name: &str, request: &str, usages: Value| {
        json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
            "metadata": {"name": name},
            "spec": {"request": b64(request), "signerName": "kubernetes.io/kube-apiserver-client",
                "usages": usages, "username": "mallory", "groups": ["system:masters"]}})
        .to_string()
    };
    let (request_pem, key_pem) =
        shoal_control::auth::pki::certificate_request("carol", &["devs".into()]).unwrap();

    // Bad input names what is wrong and stores nothing.
    let garbage = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n";
    for (body, field) in [
        (csr("bad", garbage, json!(["client auth"])), "spec.request"),
        (
            csr("bad", &request_pem, json!(["client auth", "flying"])),
            "spec.usages[1]",
        ),
        (csr("bad", &request_pem, json!([])), "spec.usages"),
    ] {
        let (status, answer) = admin
            .call("POST", collection, "application/json", &body)
            .await;
        assert_eq!(status, 422, "{answer}");
        assert_eq!(answer["details"]["causes"][0]["field"], field, "{answer}");
    }
    assert_eq!(
        admin
            .call("GET", &format!("{collection}/bad"), "", "")
            .await
            .0,
        404
    );

    // The server records who asked, whatever the body claims; nothing approves a user's
    // request on its own.
    let (status, created) = admin
        .call(
            "POST",
            collection,
            "application/json",
            &csr(
                "carol",
                &request_pem,
                json!(["digital signature", "client auth"]),
            ),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["spec"]["username"], "shoal-admin");
    assert!(!created["spec"]["groups"]
        .as_array()
        .unwrap()
        .contains(&json!("devs")));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, pending) = admin
        .call("GET", &format!("{collection}/carol"), "", "")
        .await;
    assert!(pending["status"]["conditions"].is_null(), "{pending}");

    // Updating the approval subresource is not enough: approving needs `approve` on the signer.
    let rules = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "csr-updater"},
        "rules": [{"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests", "certificatesigningrequests/approval"], "verbs": ["get", "update", "patch"]}]});
    admin
        .create("/apis/rbac.authorization.k8s.io/v1/clusterroles", &rules)
        .await;
    let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "csr-updater"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "csr-updater"},
        "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "dave"}]});
    admin
        .create(
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            &binding,
        )
        .await;
    let dave = Http::from_kubeconfig(&cluster.kubeconfig_for("dave", &[]));
    let approve = json!({"status": {"conditions": [{"type": "Approved", "status": "True", "reason": "ByHand"}]}});
    let (status, body) = dave
        .call(
            "PATCH",
            &format!("{collection}/carol/approval"),
            "application/merge-patch+json",
            &approve.to_string(),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("user not permitted to approve requests with signerName \"kubernetes.io/kube-apiserver-client\""),
        "{body}"
    );
    // Nor can the main resource carry an approval in.
    let (_, current) = dave
        .call("GET", &format!("{collection}/carol"), "", "")
        .await;
    let mut sneaky = current.clone();
    sneaky["status"] = approve["status"].clone();
    let (status, after) = dave
        .call(
            "PUT",
            &format!("{collection}/carol"),
            "application/json",
            &sneaky.to_string(),
        )
        .await;
    assert_eq!(status, 200, "{after}");
    assert!(after["status"]["conditions"].is_null(), "{after}");

    // kubectl approves (a protobuf body to /approval); the signer issues carol's certificate.
    if kubectl_available("certificate_signing_requests_are_approved_only_by_approvers") {
        let admin_kubeconfig = cluster.kubeconfig_for("csr-admin", &["system:masters"]);
        let approved =
            ok(kubectl_async(&admin_kubeconfig, &["certificate", "approve", "carol"]).await);
        assert!(approved.contains("approved"), "{approved}");
    } else {
        let (status, body) = admin
            .call(
                "PATCH",
                &format!("{collection}/carol/approval"),
                "application/merge-patch+json",
                &approve.to_string(),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let certificate = wait_for("carol's certificate", Duration::from_secs(10), async || {
        let (_, csr) = admin
            .call("GET", &format!("{collection}/carol"), "", "")
            .await;
        let encoded = csr["status"]["certificate"].as_str()?.to_string();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()?;
        String::from_utf8(bytes).ok()
    })
    .await;
    let carol =
        Http::with_client_certificate(&cluster.url(), &ca(&cluster), &certificate, &key_pem);
    let (status, review) = whoami(&carol).await;
    assert_eq!(status, 201, "{review}");
    assert_eq!(review["status"]["userInfo"]["username"], "carol");
    assert!(review["status"]["userInfo"]["groups"]
        .as_array()
        .unwrap()
        .contains(&json!("devs")));
    // An approval is never taken back.
    let (status, _) = admin
        .call(
            "PUT",
            &format!("{collection}/carol/approval"),
            "application/json",
            &json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
                "metadata": {"name": "carol"}, "status": {"conditions": []}})
            .to_string(),
        )
        .await;
    assert_eq!(status, 422);

    // A request naming two groups (two O attributes) fails when signed, saying why: the
    // signer would otherwise drop one of them without a word.
    let mut two_groups = rcgen::CertificateParams::default();
    two_groups
        .distinguished_name
        .push(rcgen::DnType::CommonName, "erin");
    two_groups
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "devs");
    two_groups.distinguished_name.push(
        rcgen::DnType::CustomDnType(vec![2, 5, 4, 10]),
        rcgen::DnValue::Utf8String("ops".into()),
    );
    let two_groups_pem = two_groups
        .serialize_request(&rcgen::KeyPair::generate().unwrap())
        .unwrap()
        .pem()
        .unwrap();
    let (status, body) = admin
        .call(
            "POST",
            collection,
            "application/json",
            &csr(
                "erin",
                &two_groups_pem,
                json!(["digital signature", "client auth"]),
            ),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = admin
        .call(
            "PATCH",
            &format!("{collection}/erin/approval"),
            "application/merge-patch+json",
            &approve.to_string(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let failed = wait_for(
        "erin's request to fail",
        Duration::from_secs(10),
        async || {
            let (_, csr) = admin
                .call("GET", &format!("{collection}/erin"), "", "")
                .await;
            let conditions = csr["status"]["conditions"].as_array()?.clone();
            conditions.into_iter().find(|c| c["type"] == "Failed")
        },
    )
    .await;
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("names 2 organizations"),
        "{failed}"
    );
    cluster.cluster.shutdown().await;
}

/// The API server dials a node's agent (logs, pod proxy) only where the node itself said it
/// listens: a status rewritten by someone else, or the record written directly, is not used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_dials_only_where_the_node_said_it_listens() {
    let cluster = TestCluster::start(1).await;
    let admin = cluster.http();
    admin.create("/api/v1/namespaces/default/pods", &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p0"},
        "spec": {"nodeName": "node-0", "containers": [{"name": "web", "image": shoal_examples::WEB_P2, "ports": [{"containerPort": 8080}]}]}})).await;
    wait_ready(&admin, "default", "p0").await;
    let log = "/api/v1/namespaces/default/pods/p0/log";
    assert_eq!(admin.call("GET", log, "", "").await.0, 200);
    let (_, node) = admin.call("GET", "/api/v1/nodes/node-0", "", "").await;
    let recorded = node["metadata"]["annotations"]["shoal.dev/agent-endpoint"]
        .as_str()
        .unwrap()
        .to_string();
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"].clone();
    assert!(recorded.ends_with(&format!(":{port}")), "{recorded}");

    let merge = "application/merge-patch+json";
    let elsewhere = json!({"status": {"daemonEndpoints": {"kubeletEndpoint": {"Port": 1}}}});
    let (status, patched) = admin
        .call(
            "PATCH",
            "/api/v1/nodes/node-0/status",
            merge,
            &elsewhere.to_string(),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert!(patched["metadata"]["annotations"]["shoal.dev/agent-endpoint"].is_null());
    let (status, body) = admin.call("GET", log, "", "").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("no agent endpoint that the node itself published"),
        "{body}"
    );
    let forged = json!({"metadata": {"annotations": {"shoal.dev/agent-endpoint": recorded}}});
    let (status, patched) = admin
        .call("PATCH", "/api/v1/nodes/node-0", merge, &forged.to_string())
        .await;
    assert_eq!(status, 200, "{patched}");
    assert!(patched["metadata"]["annotations"]["shoal.dev/agent-endpoint"].is_null());
    assert_eq!(admin.call("GET", log, "", "").await.0, 503);

    // The node publishing its own address again restores it.
    let node0 =
        Http::from_kubeconfig(&cluster.kubeconfig_for("system:node:node-0", &["system:nodes"]));
    let back = json!({"status": {"daemonEndpoints": {"kubeletEndpoint": {"Port": port}}}});
    let (status, patched) = node0
        .call(
            "PATCH",
            "/api/v1/nodes/node-0/status",
            merge,
            &back.to_string(),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(
        patched["metadata"]["annotations"]["shoal.dev/agent-endpoint"],
        recorded
    );
    assert_eq!(admin.call("GET", log, "", "").await.0, 200);
    cluster.cluster.shutdown().await;
}

/// A running pod's token is replaced before it expires (here every second), in place: the
/// guest reads a new, valid token bound to it from the same file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_pods_get_fresh_tokens() {
    let cluster = TestCluster::start_with(1, |config| {
        config.token_refresh = Duration::from_secs(1);
    })
    .await;
    let admin = cluster.http();
    admin.create("/api/v1/namespaces/default/pods", &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "fresh"},
        "spec": {"containers": [{"name": "web", "image": shoal_examples::WEB_P2, "ports": [{"containerPort": 8080}]}]}})).await;
    wait_ready(&admin, "default", "fresh").await;
    let read = async || {
        let (status, token) = proxy_get(
            &admin,
            "fresh:8080",
            "/file/var/run/secrets/kubernetes.io/serviceaccount/token",
        )
        .await;
        assert_eq!(status, 200, "{token}");
        token
    };
    let first = read().await;
    let tokens = cluster_tokens(&cluster);
    let renewed = wait_for("a new token", Duration::from_secs(10), async || {
        let current = read().await;
        (current != first).then_some(current)
    })
    .await;
    for token in [&first, &renewed] {
        let claims = tokens.verify(token).unwrap();
        assert_eq!(claims.kubernetes.pod.as_ref().unwrap().name, "fresh");
    }
    let (status, review) =
        whoami(&Http::anonymous(&cluster.url(), &ca(&cluster)).bearer(&renewed)).await;
    assert_eq!(status, 201, "{review}");
    assert_eq!(
        review["status"]["userInfo"]["username"],
        "system:serviceaccount:default:default"
    );
    cluster.cluster.shutdown().await;
}

/// A TCP relay to `server` that counts the connections made through it.
async fn counting_relay(
    server: std::net::SocketAddr,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = connections.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = relay.accept().await else {
                return;
            };
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut upstream) = tokio::net::TcpStream::connect(server).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
        }
    });
    (relay_addr, connections, task)
}

/// One kubectl command, discovery included, sends all its requests on one connection,
/// counted by a TCP relay in front of the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubectl_command_opens_one_connection() {
    if !kubectl_available("a_kubectl_command_opens_one_connection") {
        return;
    }
    let cluster = TestCluster::start(0).await;
    let server = cluster.cluster.control.addr;
    let (relay_addr, connections, relay_task) = counting_relay(server).await;
    // The admin kubeconfig, pointed at the relay (the serving certificate names 127.0.0.1).
    let text = std::fs::read_to_string(&cluster.kubeconfig)
        .unwrap()
        .replace(&server.to_string(), &relay_addr.to_string());
    let kubeconfig = cluster.dir.path().join("relayed").join("kubeconfig");
    std::fs::create_dir_all(kubeconfig.parent().unwrap()).unwrap();
    std::fs::write(&kubeconfig, text).unwrap();
    // A cold discovery cache: kubectl asks /api, /apis and every group first; -v=6 logs
    // each request it sends.
    let output = kubectl_async(
        &kubeconfig,
        &["get", "pods,services,deployments", "-A", "-v=6"],
    )
    .await;
    let log = String::from_utf8_lossy(&output.stderr).to_string();
    ok(output);
    let requests = log
        .lines()
        .filter(|line| line.contains(&format!("https://{relay_addr}/")))
        .count();
    let opened = connections.load(std::sync::atomic::Ordering::SeqCst);
    // The kubectl on CI machines is a dispatcher that asks /version on a connection of its
    // own before it runs the matching client: at most one more.
    assert!(
        requests >= 5 && opened <= 2,
        "{requests} requests over {opened} connections (one for kubectl, one for a \
         version dispatcher at most):\n{log}"
    );
    relay_task.abort();
    cluster.cluster.shutdown().await;
}

/// The API speaks HTTP/2 (ALPN h2, as kube-apiserver): a client's concurrent watches and
/// writes share one TLS connection, where HTTP/1.1 would need one connection per watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_multiplex_watches_on_one_connection() {
    let cluster = TestCluster::start(0).await;
    let (relay_addr, connections, relay_task) = counting_relay(cluster.cluster.control.addr).await;
    let http =
        Http::from_kubeconfig_http2(&cluster.kubeconfig).at(&format!("https://{relay_addr}"));
    let kinds = ["configmaps", "secrets", "serviceaccounts"];
    let mut watches = Vec::new();
    for kind in kinds {
        let body = http
            .stream(&format!("/api/v1/namespaces/default/{kind}?watch=true"))
            .await;
        watches.push(EventReader::new(body));
    }
    for (kind, object) in [
        (
            "configmaps",
            json!({"metadata": {"name": "over-h2"}, "data": {"a": "b"}}),
        ),
        (
            "secrets",
            json!({"metadata": {"name": "over-h2"}, "stringData": {"a": "b"}}),
        ),
        ("serviceaccounts", json!({"metadata": {"name": "over-h2"}})),
    ] {
        http.create(&format!("/api/v1/namespaces/default/{kind}"), &object)
            .await;
    }
    for (kind, watch) in kinds.iter().zip(watches.iter_mut()) {
        // Objects already there (the default ServiceAccount) come first as ADDED too.
        let mut seen = false;
        while let Some(event) = watch.next(Duration::from_secs(10)).await {
            if event["object"]["metadata"]["name"] == "over-h2" {
                assert_eq!(event["type"], "ADDED", "{kind}: {event}");
                seen = true;
                break;
            }
        }
        assert!(seen, "the {kind} watch saw the new object");
    }
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "connections for three watches and three creates over HTTP/2"
    );
    relay_task.abort();
    cluster.cluster.shutdown().await;
}

/// Every namespace gets `kube-root-ca.crt` holding the CA that signs the API's certificate
/// (put back when deleted or edited), and an expired bootstrap token Secret is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_ca_is_published_and_expired_bootstrap_tokens_are_cleaned() {
    let cluster = TestCluster::start(0).await;
    let http = cluster.http();
    let ca_pem = read_kubeconfig(&cluster.kubeconfig).ca_pem;
    http.create(
        "/api/v1/namespaces",
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}}),
    )
    .await;
    let path = "/api/v1/namespaces/team/configmaps/kube-root-ca.crt";
    let published = async || {
        wait_for("kube-root-ca.crt", Duration::from_secs(10), async || {
            let (status, body) = http.call("GET", path, "", "").await;
            (status == 200 && body["data"]["ca.crt"] == ca_pem.as_str()).then_some(body)
        })
        .await
    };
    let first = published().await;
    let (status, _) = http.call("DELETE", path, "", "").await;
    assert_eq!(status, 200);
    let again = published().await;
    assert_ne!(
        first["metadata"]["uid"], again["metadata"]["uid"],
        "re-created"
    );
    let (status, _) = http
        .call(
            "PATCH",
            path,
            "application/merge-patch+json",
            r#"{"data": {"ca.crt": "forged"}}"#,
        )
        .await;
    assert_eq!(status, 200);
    published().await;

    use base64::Engine;
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    let token = |id: &str, expiration: &str| {
        json!({"apiVersion": "v1", "kind": "Secret", "type": "bootstrap.kubernetes.io/token",
            "metadata": {"name": format!("bootstrap-token-{id}"), "namespace": "kube-system"},
            "data": {"token-id": b64(id), "token-secret": b64("0123456789abcdef"),
                "usage-bootstrap-authentication": b64("true"), "expiration": b64(expiration)}})
    };
    let secrets = "/api/v1/namespaces/kube-system/secrets";
    http.create(secrets, &token("old123", "2020-01-01T00:00:00Z"))
        .await;
    http.create(secrets, &token("new123", "2099-01-01T00:00:00Z"))
        .await;
    wait_for(
        "the expired token's Secret to go",
        Duration::from_secs(10),
        async || {
            let (status, _) = http
                .call("GET", &format!("{secrets}/bootstrap-token-old123"), "", "")
                .await;
            (status == 404).then_some(())
        },
    )
    .await;
    let (status, _) = http
        .call("GET", &format!("{secrets}/bootstrap-token-new123"), "", "")
        .await;
    assert_eq!(status, 200, "a token still valid stays");
}
