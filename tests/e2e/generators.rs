//! kubectl's typed-client calls against `shoal dev`: every `kubectl create <generator>` (each
//! sends its object as protobuf), and replies in protobuf to clients that prefer it.

use prost::Message;
use serde_json::Value;
use shoal_examples::{HELLO_P2, WEB_P2};
use shoal_tests::*;

async fn get_json(kubeconfig: &std::path::Path, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.extend(["-o", "json"]);
    serde_json::from_str(&ok(kubectl_async(kubeconfig, &args).await)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kubectl_create_generator_works() {
    if !kubectl_available("every_kubectl_create_generator_works") {
        return;
    }
    let cluster = TestCluster::start(1).await;
    let kubeconfig = cluster.kubeconfig.clone();
    let kc = kubeconfig.as_path();
    let dir = cluster.dir.path();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["web.example".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_file, key_file) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let (cert_file, key_file) = (cert_file.to_str().unwrap(), key_file.to_str().unwrap());

    // Every generator kubectl 1.33 has for a kind Shoal serves. (`quota` and `priorityclass`
    // make kinds the fair-sharing issue adds; `poddisruptionbudget` too.)
    let generators: &[&[&str]] = &[
        &["create", "namespace", "gen"],
        &[
            "-n",
            "gen",
            "create",
            "configmap",
            "cfg",
            "--from-literal=a=1",
            "--from-literal=empty=",
        ],
        &[
            "-n",
            "gen",
            "create",
            "secret",
            "generic",
            "pw",
            "--from-literal=password=s3cret",
        ],
        &[
            "-n", "gen", "create", "secret", "tls", "web-tls", "--cert", cert_file, "--key",
            key_file,
        ],
        &[
            "-n",
            "gen",
            "create",
            "secret",
            "docker-registry",
            "regcred",
            "--docker-server=registry.example",
            "--docker-username=u",
            "--docker-password=p",
        ],
        &[
            "-n",
            "gen",
            "create",
            "deployment",
            "web",
            "--image",
            WEB_P2,
            "--replicas=2",
            "--port=8080",
        ],
        &["-n", "gen", "create", "job", "once", "--image", HELLO_P2],
        &[
            "-n",
            "gen",
            "create",
            "cronjob",
            "tick",
            "--image",
            HELLO_P2,
            "--schedule=*/5 * * * *",
        ],
        &[
            "-n",
            "gen",
            "create",
            "service",
            "clusterip",
            "web",
            "--tcp=80:8080",
        ],
        &[
            "-n",
            "gen",
            "create",
            "service",
            "nodeport",
            "web-np",
            "--tcp=80:8080",
            "--node-port=30080",
        ],
        &["-n", "gen", "create", "serviceaccount", "robot"],
        &[
            "-n",
            "gen",
            "create",
            "role",
            "reader",
            "--verb=get,list",
            "--resource=pods,configmaps",
        ],
        &[
            "-n",
            "gen",
            "create",
            "rolebinding",
            "robot-reads",
            "--role=reader",
            "--serviceaccount=gen:robot",
        ],
        &[
            "create",
            "clusterrole",
            "node-reader",
            "--verb=get",
            "--resource=nodes",
        ],
        &[
            "create",
            "clusterrolebinding",
            "robot-nodes",
            "--clusterrole=node-reader",
            "--serviceaccount=gen:robot",
        ],
        &[
            "-n",
            "gen",
            "create",
            "ingress",
            "web",
            "--rule=web.example/*=web:80,tls=web-tls",
        ],
        &[
            "-n",
            "gen",
            "create",
            "quota",
            "gen-quota",
            "--hard=pods=50,requests.cpu=20",
        ],
        &["create", "priorityclass", "gen-high", "--value=1000"],
        &[
            "-n",
            "gen",
            "create",
            "poddisruptionbudget",
            "gen-pdb",
            "--selector=app=web",
            "--max-unavailable=1",
        ],
    ];
    for args in generators {
        let out = kubectl_async(kc, args).await;
        assert!(out.status.success(), "kubectl {args:?}: {}", stderr(&out));
        assert!(
            stdout(&out).contains("created"),
            "kubectl {args:?}: {}",
            stdout(&out)
        );
    }

    // What each generator built arrived whole.
    let cfg = get_json(kc, &["-n", "gen", "get", "configmap", "cfg"]).await;
    assert_eq!(cfg["data"], serde_json::json!({"a": "1", "empty": ""}));
    let pw = get_json(kc, &["-n", "gen", "get", "secret", "pw"]).await;
    assert_eq!(pw["data"]["password"], "czNjcmV0");
    assert_eq!(pw["type"], "Opaque");
    let tls = get_json(kc, &["-n", "gen", "get", "secret", "web-tls"]).await;
    assert_eq!(tls["type"], "kubernetes.io/tls");
    assert!(tls["data"]["tls.crt"]
        .as_str()
        .is_some_and(|c| c.len() > 100));
    let reg = get_json(kc, &["-n", "gen", "get", "secret", "regcred"]).await;
    assert_eq!(reg["type"], "kubernetes.io/dockerconfigjson");
    let web = get_json(kc, &["-n", "gen", "get", "deployment", "web"]).await;
    assert_eq!(web["spec"]["replicas"], 2);
    assert_eq!(web["spec"]["selector"]["matchLabels"]["app"], "web");
    let container = &web["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], WEB_P2);
    assert_eq!(container["ports"][0]["containerPort"], 8080);
    let tick = get_json(kc, &["-n", "gen", "get", "cronjob", "tick"]).await;
    assert_eq!(tick["spec"]["schedule"], "*/5 * * * *");
    let svc = get_json(kc, &["-n", "gen", "get", "service", "web"]).await;
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    assert_eq!(svc["spec"]["ports"][0]["port"], 80);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);
    assert!(svc["spec"]["clusterIP"]
        .as_str()
        .is_some_and(|ip| ip.contains('.')));
    let np = get_json(kc, &["-n", "gen", "get", "service", "web-np"]).await;
    assert_eq!(np["spec"]["type"], "NodePort");
    assert_eq!(np["spec"]["ports"][0]["nodePort"], 30080);
    let quota = get_json(kc, &["-n", "gen", "get", "quota", "gen-quota"]).await;
    assert_eq!(quota["spec"]["hard"]["pods"], "50");
    let class = get_json(kc, &["get", "priorityclass", "gen-high"]).await;
    assert_eq!(class["value"], 1000);
    let pdb = get_json(kc, &["-n", "gen", "get", "pdb", "gen-pdb"]).await;
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    let role = get_json(kc, &["-n", "gen", "get", "role", "reader"]).await;
    assert_eq!(role["rules"][0]["apiGroups"], serde_json::json!([""]));
    assert_eq!(
        role["rules"][0]["verbs"],
        serde_json::json!(["get", "list"])
    );
    let binding = get_json(kc, &["-n", "gen", "get", "rolebinding", "robot-reads"]).await;
    assert_eq!(binding["subjects"][0]["kind"], "ServiceAccount");
    assert_eq!(binding["subjects"][0]["namespace"], "gen");
    let ingress = get_json(kc, &["-n", "gen", "get", "ingress", "web"]).await;
    assert_eq!(ingress["spec"]["tls"][0]["secretName"], "web-tls");
    assert_eq!(
        ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"]["number"],
        80
    );

    // The generated objects work: the Deployment's pods run, RBAC reads the binding.
    let http = cluster.http();
    wait_for(
        "both web replicas ready",
        std::time::Duration::from_secs(60),
        || async {
            let (_, deployment) = http
                .call(
                    "GET",
                    "/apis/apps/v1/namespaces/gen/deployments/web",
                    "",
                    "",
                )
                .await;
            (deployment["status"]["readyReplicas"] == 2).then_some(())
        },
    )
    .await;
    let can = ok(kubectl_async(
        kc,
        &[
            "auth",
            "can-i",
            "list",
            "pods",
            "-n",
            "gen",
            "--as=system:serviceaccount:gen:robot",
        ],
    )
    .await);
    assert_eq!(can.trim(), "yes");

    // Typed calls (describe, rollout history) get protobuf replies and read them.
    let described = ok(kubectl_async(kc, &["-n", "gen", "describe", "deployment", "web"]).await);
    assert!(
        described.contains("Replicas:") && described.contains("2 desired"),
        "{described}"
    );
    let history =
        ok(kubectl_async(kc, &["-n", "gen", "rollout", "history", "deployment/web"]).await);
    assert!(history.contains("REVISION"), "{history}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_prefer_protobuf_get_it() {
    let cluster = TestCluster::start(0).await;
    let http = cluster.http();
    http.create(
        "/api/v1/namespaces/default/configmaps",
        &serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                            "metadata": {"name": "c", "labels": {"x": "y"}},
                            "data": {"k": "v"}}),
    )
    .await;
    let protobuf_first = "application/vnd.kubernetes.protobuf, application/json";
    let unwrap = |body: &[u8]| {
        let body = body.strip_prefix(b"k8s\0").expect("the protobuf envelope");
        k8s_pb::apimachinery::pkg::runtime::Unknown::decode(body).unwrap()
    };

    let (status, content_type, body) = http
        .get_accepting("/api/v1/namespaces/default/configmaps/c", protobuf_first)
        .await;
    assert_eq!(
        (status, content_type.as_str()),
        (200, "application/vnd.kubernetes.protobuf")
    );
    let unknown = unwrap(&body);
    assert_eq!(
        unknown.type_meta.unwrap().kind.as_deref(),
        Some("ConfigMap")
    );
    let configmap =
        k8s_pb::api::core::v1::ConfigMap::decode(unknown.raw.unwrap().as_slice()).unwrap();
    assert_eq!(configmap.data.get("k").map(String::as_str), Some("v"));
    let metadata = configmap.metadata.unwrap();
    assert_eq!(metadata.labels.get("x").map(String::as_str), Some("y"));
    assert!(metadata
        .creation_timestamp
        .and_then(|t| t.seconds)
        .is_some_and(|s| s > 0));

    let (status, content_type, body) = http
        .get_accepting("/api/v1/namespaces/default/configmaps", protobuf_first)
        .await;
    assert_eq!(
        (status, content_type.as_str()),
        (200, "application/vnd.kubernetes.protobuf")
    );
    let list = k8s_pb::api::core::v1::ConfigMapList::decode(unwrap(&body).raw.unwrap().as_slice())
        .unwrap();
    assert!(list
        .items
        .iter()
        .any(|c| c.metadata.as_ref().and_then(|m| m.name.as_deref()) == Some("c")));
    assert!(list.metadata.and_then(|m| m.resource_version).is_some());

    // Errors are Status messages; JSON-first clients and Tables still get JSON.
    let (status, content_type, body) = http
        .get_accepting("/api/v1/namespaces/default/configmaps/nope", protobuf_first)
        .await;
    assert_eq!(
        (status, content_type.as_str()),
        (404, "application/vnd.kubernetes.protobuf")
    );
    let not_found = k8s_pb::apimachinery::pkg::apis::meta::v1::Status::decode(
        unwrap(&body).raw.unwrap().as_slice(),
    )
    .unwrap();
    assert_eq!(not_found.reason.as_deref(), Some("NotFound"));
    let (_, content_type, _) = http
        .get_accepting(
            "/api/v1/namespaces/default/configmaps/c",
            "application/json, application/vnd.kubernetes.protobuf",
        )
        .await;
    assert_eq!(content_type, "application/json");
    let (_, content_type, _) = http
        .get_accepting(
            "/api/v1/namespaces/default/configmaps",
            "application/json;as=Table;v=v1;g=meta.k8s.io, application/vnd.kubernetes.protobuf",
        )
        .await;
    assert_eq!(content_type, "application/json");
}
