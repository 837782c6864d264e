//! CustomResourceDefinitions through the clients users have: kubectl (create a CRD, then its
//! custom resources with validation, defaulting, pruning, printer columns, short names,
//! explain, the status and scale subresources, a second served version, and deletion of the
//! CRD taking its objects), and a kube-rs `#[derive(CustomResource)]` type whose generated CRD
//! is installed and whose objects round-trip through `kube::Api`.

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{CustomResource, CustomResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use shoal_tests::*;

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd], categories: [gadgets]}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        description: A Widget is a thing the tests make.
        properties:
          spec:
            type: object
            description: What the widget should be.
            required: [size]
            properties:
              size: {type: integer, minimum: 1, maximum: 10, description: How big the widget is.}
              color: {type: string, enum: [red, blue], default: red}
              replicas: {type: integer, minimum: 0}
          status:
            type: object
            properties:
              ready: {type: boolean}
              replicas: {type: integer}
    subresources:
      status: {}
      scale: {specReplicasPath: .spec.replicas, statusReplicasPath: .status.replicas}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    - {name: Color, type: string, jsonPath: .spec.color}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
  - name: v1beta1
    served: true
    storage: false
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#;

fn widget(name: &str, spec: &str) -> String {
    format!("apiVersion: example.com/v1\nkind: Widget\nmetadata: {{name: {name}}}\nspec: {spec}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_serves_custom_resources_from_a_crd() {
    if !kubectl_available("kubectl_serves_custom_resources_from_a_crd") {
        return;
    }
    let cluster = TestCluster::start(0).await;
    let kc = cluster.kubeconfig.as_path();
    ok(kubectl_stdin_async(kc, &["apply", "-f", "-"], CRD).await);
    let crd: Value = serde_json::from_str(&ok(kubectl_async(
        kc,
        &["get", "crd", "widgets.example.com", "-o", "json"],
    )
    .await))
    .unwrap();
    let conditions = crd["status"]["conditions"].to_string();
    assert!(conditions.contains("Established"), "{conditions}");
    assert_eq!(crd["status"]["storedVersions"], json!(["v1"]));

    // Created right after its CRD: defaults filled in, columns printed, short name known.
    ok(kubectl_stdin_async(kc, &["apply", "-f", "-"], &widget("w1", "{size: 3}")).await);
    let table = ok(kubectl_async(kc, &["get", "wd"]).await);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "SIZE", "COLOR", "AGE"], "{table}");
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..3], ["w1", "3", "red"], "{table}");
    let resources = ok(kubectl_async(kc, &["api-resources", "--api-group=example.com"]).await);
    assert!(
        resources.contains("widgets") && resources.contains("wd"),
        "{resources}"
    );
    let gadgets = ok(kubectl_async(kc, &["get", "gadgets", "-o", "name"]).await);
    assert_eq!(gadgets.trim(), "widget.example.com/w1");

    // Schema violations: 422 naming the field; an unknown field refused (kubectl asks for
    // strict field validation).
    let too_big = kubectl_stdin_async(kc, &["apply", "-f", "-"], &widget("w2", "{size: 20}")).await;
    assert!(!too_big.status.success());
    let message = stderr(&too_big);
    assert!(
        message.contains("is invalid")
            && message.contains("spec.size")
            && message.contains("should be less than or equal to 10"),
        "{message}"
    );
    let wrong_enum = kubectl_stdin_async(
        kc,
        &["create", "-f", "-"],
        &widget("w2", "{size: 2, color: green}"),
    )
    .await;
    assert!(
        stderr(&wrong_enum).contains("spec.color: Unsupported value: \"green\""),
        "{}",
        stderr(&wrong_enum)
    );
    let missing =
        kubectl_stdin_async(kc, &["create", "-f", "-"], &widget("w2", "{color: blue}")).await;
    assert!(
        stderr(&missing).contains("spec.size: Required value"),
        "{}",
        stderr(&missing)
    );
    let unknown = kubectl_stdin_async(
        kc,
        &["create", "-f", "-"],
        &widget("w2", "{size: 2, bogus: 1}"),
    )
    .await;
    assert!(
        stderr(&unknown).contains("unknown field \"spec.bogus\""),
        "{}",
        stderr(&unknown)
    );
    let absent = kubectl_async(kc, &["get", "widget", "w2"]).await;
    assert!(!absent.status.success(), "nothing invalid was stored");
    // Without strict validation, unknown fields are pruned.
    ok(kubectl_stdin_async(
        kc,
        &["create", "--validate=false", "-f", "-"],
        &widget("w3", "{size: 2, bogus: 1}"),
    )
    .await);
    let w3 = ok(kubectl_async(kc, &["get", "widget", "w3", "-o", "jsonpath={.spec}"]).await);
    assert_eq!(
        serde_json::from_str::<Value>(&w3).unwrap(),
        json!({"size": 2, "color": "red"})
    );

    // explain reads the CRD's schema.
    let explained = ok(kubectl_async(kc, &["explain", "widgets.spec.size"]).await);
    assert!(explained.contains("How big the widget is."), "{explained}");

    // Patches: merge works, strategic merge is refused as on Kubernetes.
    ok(kubectl_async(
        kc,
        &[
            "patch",
            "widget",
            "w1",
            "--type=merge",
            "-p",
            r#"{"spec":{"color":"blue"}}"#,
        ],
    )
    .await);
    let strategic = kubectl_async(
        kc,
        &["patch", "widget", "w1", "-p", r#"{"spec":{"color":"red"}}"#],
    )
    .await;
    assert!(!strategic.status.success());
    assert!(
        stderr(&strategic).contains("strategic-merge-patch"),
        "{}",
        stderr(&strategic)
    );

    // The status subresource: the main resource ignores status, /status takes only status.
    ok(kubectl_async(
        kc,
        &[
            "patch",
            "widget",
            "w1",
            "--type=merge",
            "-p",
            r#"{"status":{"ready":true}}"#,
        ],
    )
    .await);
    let ready = ok(kubectl_async(
        kc,
        &["get", "widget", "w1", "-o", "jsonpath={.status.ready}"],
    )
    .await);
    assert_eq!(ready, "", "the main resource does not write status");
    ok(kubectl_async(
        kc,
        &[
            "patch",
            "widget",
            "w1",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"ready":true,"replicas":2}}"#,
        ],
    )
    .await);
    let ready = ok(kubectl_async(
        kc,
        &["get", "widget", "w1", "-o", "jsonpath={.status.ready}"],
    )
    .await);
    assert_eq!(ready, "true");

    // The scale subresource writes the CRD's specReplicasPath, validated by the schema.
    ok(kubectl_async(kc, &["scale", "widget", "w1", "--replicas=4"]).await);
    let replicas = ok(kubectl_async(
        kc,
        &["get", "widget", "w1", "-o", "jsonpath={.spec.replicas}"],
    )
    .await);
    assert_eq!(replicas, "4");
    let scale = ok(kubectl_async(
        kc,
        &[
            "get",
            "--raw",
            "/apis/example.com/v1/namespaces/default/widgets/w1/scale",
        ],
    )
    .await);
    let scale: Value = serde_json::from_str(&scale).unwrap();
    assert_eq!(
        (
            scale["spec"]["replicas"].as_i64(),
            scale["status"]["replicas"].as_i64()
        ),
        (Some(4), Some(2))
    );

    // The second served version is the same object under another apiVersion.
    let beta = ok(kubectl_async(
        kc,
        &["get", "widgets.v1beta1.example.com", "w1", "-o", "json"],
    )
    .await);
    let beta: Value = serde_json::from_str(&beta).unwrap();
    assert_eq!(beta["apiVersion"], "example.com/v1beta1");
    assert_eq!(beta["spec"]["size"], 3);

    // Deleting the CRD deletes its objects, then stops serving the kind.
    ok(kubectl_async(
        kc,
        &["delete", "crd", "widgets.example.com", "--timeout=30s"],
    )
    .await);
    let gone = kubectl_async(kc, &["get", "widgets"]).await;
    assert!(!gone.status.success());
    // kubectl says so from its cached discovery, or from a fresh one.
    let message = stderr(&gone);
    assert!(
        message.contains("the server could not find the requested resource")
            || message.contains("the server doesn't have a resource type"),
        "{message}"
    );
    // A CRD whose schema is not structural is refused, naming the field.
    let bad = CRD.replace("size: {type: integer,", "size: {");
    let refused = kubectl_stdin_async(kc, &["apply", "-f", "-"], &bad).await;
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[size].type: Required value"),
        "{}",
        stderr(&refused)
    );

    // The objects went with their CRD: defined again, the kind has none.
    ok(kubectl_stdin_async(kc, &["apply", "-f", "-"], CRD).await);
    let again = kubectl_async(kc, &["get", "widgets", "-o", "name"]).await;
    assert_eq!(stdout(&again).trim(), "", "{}", stderr(&again));
    assert!(again.status.success(), "{}", stderr(&again));
}

/// A user's own kind, as kube-rs users declare them.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[kube(
    group = "shoal.test",
    version = "v1",
    kind = "Gadget",
    namespaced,
    status = "GadgetStatus",
    shortname = "gd",
    printcolumn = r#"{"name": "Level", "type": "integer", "jsonPath": ".spec.level"}"#
)]
pub struct GadgetSpec {
    pub level: u32,
    pub label: Option<String>,
    pub parts: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
pub struct GadgetStatus {
    pub assembled: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kube_rs_custom_resource_round_trips() {
    let cluster = TestCluster::start(0).await;
    let kubeconfig = kube::config::Kubeconfig::read_from(&cluster.kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    crds.create(&PostParams::default(), &Gadget::crd())
        .await
        .unwrap();

    let gadgets: Api<Gadget> = Api::namespaced(client.clone(), "default");
    let mut gadget = Gadget::new(
        "g1",
        GadgetSpec {
            level: 7,
            label: Some("first".into()),
            parts: vec!["gear".into(), "spring".into()],
        },
    );
    let created = gadgets
        .create(&PostParams::default(), &gadget)
        .await
        .unwrap();
    assert_eq!(created.spec, gadget.spec);
    gadget.metadata = created.metadata.clone();

    // Read back, listed, replaced, server-side applied, status written, deleted.
    assert_eq!(gadgets.get("g1").await.unwrap().spec, gadget.spec);
    let listed = gadgets.list(&Default::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    gadget.spec.level = 8;
    let replaced = gadgets
        .replace("g1", &PostParams::default(), &gadget)
        .await
        .unwrap();
    assert_eq!(replaced.spec.level, 8);
    let applied = json!({"apiVersion": "shoal.test/v1", "kind": "Gadget", "metadata": {"name": "g1"},
                         "spec": {"level": 9, "parts": ["gear"]}});
    let applied = gadgets
        .patch(
            "g1",
            &PatchParams::apply("gadget-tool").force(),
            &Patch::Apply(&applied),
        )
        .await
        .unwrap();
    assert_eq!((applied.spec.level, applied.spec.parts.len()), (9, 1));
    let status = json!({"status": {"assembled": true}});
    let with_status = gadgets
        .patch_status("g1", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    assert_eq!(with_status.status, Some(GadgetStatus { assembled: true }));

    // Its schema is enforced: kube-rs says a u32 has `minimum: 0`, and a client in another
    // language may well send -1.
    let (code, body) = cluster
        .http()
        .call(
            "POST",
            "/apis/shoal.test/v1/namespaces/default/gadgets",
            "application/json",
            &json!({"apiVersion": "shoal.test/v1", "kind": "Gadget", "metadata": {"name": "g2"},
                    "spec": {"level": -1, "parts": []}})
            .to_string(),
        )
        .await;
    assert_eq!(code, 422, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("spec.level"),
        "{body}"
    );

    gadgets.delete("g1", &Default::default()).await.unwrap();
    wait_for("g1 to go", Duration::from_secs(10), async || {
        gadgets.get_opt("g1").await.unwrap().is_none().then_some(())
    })
    .await;
}
