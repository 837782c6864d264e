//! The web dashboard at `/ui/`, in a real browser (headless Chromium, `tests/browser.rs`):
//! logging in with `shoal dashboard --print-url`, live views that follow the cluster, actions
//! that are API requests as the logged-in user (so RBAC decides), and streaming logs.

use std::time::{Duration, Instant};

use futures::StreamExt;

use serde_json::{json, Value};
use shoal_examples::{HELLO_P1, WEB_P2};
use shoal_tests::browser::Browser;
use shoal_tests::*;

/// How many pods of `prefix` the page shows in `phase`.
fn pods_shown(prefix: &str, phase: &str) -> String {
    format!(
        "[...document.querySelectorAll('tr[data-kind=pod]')].filter(r => r.dataset.name.startsWith('{prefix}') && r.dataset.phase === '{phase}').length"
    )
}

/// Types `replicas` into the Deployment's scale field and clicks Scale.
fn click_scale(namespace: &str, name: &str, replicas: u32) -> String {
    format!(
        "(() => {{
            const input = document.querySelector('input[data-key=\"scale/{namespace}/{name}\"]');
            input.value = '{replicas}';
            input.dispatchEvent(new Event('input'));
            document.querySelector('tr[data-kind=deployment][data-name={name}] button[data-action=scale]').click();
            return true;
        }})()"
    )
}

async fn session_url(kubeconfig: &std::path::Path) -> String {
    ok(shoal_async(kubeconfig, &["dashboard", "--print-url"]).await)
        .trim()
        .to_string()
}

/// Opens `url` (a `shoal dashboard` link) and waits until the page shows `user` logged in.
async fn log_in(browser: &mut Browser, url: &str, user: &str) {
    browser.open(url).await;
    browser
        .wait_for(
            &format!("logged in as {user}"),
            &format!("document.getElementById('who').textContent === '{user}'"),
            Duration::from_secs(10),
        )
        .await;
}

/// Types `namespace` into the page's namespace filter.
async fn choose_namespace(browser: &mut Browser, namespace: &str) {
    browser
        .eval(&format!(
            "(() => {{ const ns = document.getElementById('namespace');
               ns.value = '{namespace}'; ns.dispatchEvent(new Event('change')); return true; }})()"
        ))
        .await;
}

/// The Deployment `web` of namespace default, as the API has it.
async fn web_deployment(admin: &Http) -> Value {
    admin
        .call(
            "GET",
            "/apis/apps/v1/namespaces/default/deployments/web",
            "",
            "",
        )
        .await
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_and_changes_the_cluster_live() {
    let test = "the_dashboard_shows_and_changes_the_cluster_live";
    let Some(mut browser) = Browser::launch(test).await else {
        return;
    };
    let cluster = TestCluster::start(1).await;
    let admin = cluster.http();
    let ada = cluster.kubeconfig_for("ada", &["system:masters"]);

    // The page itself is public and holds no data; it may talk to its own origin only.
    let anonymous = Http::anonymous(&cluster.url(), &read_kubeconfig(&ada).ca_pem);
    let (status, headers, _) = anonymous.get_with_headers("/ui/").await;
    assert_eq!(status, 200);
    let policy = headers
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(policy.contains("connect-src 'self'"), "{policy}");
    assert_eq!(
        anonymous
            .call("POST", "/shoal/v1/dashboard/token", "", "")
            .await
            .0,
        401
    );
    browser.open(&format!("{}/ui/", cluster.url())).await;
    browser
        .wait_for(
            "the login form",
            "!document.getElementById('login').hidden",
            Duration::from_secs(5),
        )
        .await;
    browser
        .eval(
            "document.getElementById('token').value = 'not-a-token';
             document.querySelector('#login-form button').click(); true",
        )
        .await;
    browser
        .wait_for(
            "a wrong token refused",
            "document.getElementById('login-error').textContent.includes('log in again')",
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(
        browser
            .eval("document.querySelectorAll('tr[data-kind]').length")
            .await,
        json!(0)
    );

    // `shoal dashboard --print-url` logs in as the kubeconfig's user; the token leaves the
    // address at once.
    let url = session_url(&ada).await;
    assert!(
        url.starts_with(&format!("{}/ui/#token=", cluster.url())),
        "{url}"
    );
    log_in(&mut browser, &url, "ada").await;
    let address = browser.eval("location.href").await;
    assert!(!address.to_string().contains("token"), "{address}");
    // A session cannot start another one.
    let token = url.split("#token=").nth(1).unwrap();
    let session = Http::anonymous(&cluster.url(), &read_kubeconfig(&ada).ca_pem).bearer(token);
    let (status, body) = session
        .call("POST", "/shoal/v1/dashboard/token", "", "")
        .await;
    assert_eq!(status, 403, "{body}");

    // A Deployment's pod shows up, live.
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": WEB_P2, "ports": [{"containerPort": 8080}]}]}}}});
    admin
        .create("/apis/apps/v1/namespaces/default/deployments", &deployment)
        .await;
    browser
        .wait_for(
            "the Deployment's pod Running on the page",
            &format!("{} === 1", pods_shown("web-", "Running")),
            Duration::from_secs(20),
        )
        .await;

    // Scale to 3 with a click: three pods Running within 5 s.
    browser.eval(&click_scale("default", "web", 3)).await;
    let clicked = Instant::now();
    browser
        .wait_for(
            "three pods Running after scaling to 3",
            &format!("{} === 3", pods_shown("web-", "Running")),
            Duration::from_secs(5),
        )
        .await;
    eprintln!(
        "three pods Running on the page {:?} after the click",
        clicked.elapsed()
    );
    let scaled = web_deployment(&admin).await;
    assert_eq!(scaled["spec"]["replicas"], 3);

    // A pod deleted elsewhere leaves the page within a second of being gone.
    let victim = browser
        .eval("document.querySelector('tr[data-kind=pod][data-phase=Running]').dataset.name")
        .await
        .as_str()
        .unwrap()
        .to_string();
    if kubectl_available(test) {
        ok(kubectl_async(&ada, &["delete", "pod", &victim]).await);
    } else {
        admin
            .call(
                "DELETE",
                &format!("/api/v1/namespaces/default/pods/{victim}?gracePeriodSeconds=0"),
                "",
                "",
            )
            .await;
        wait_for("the pod to be gone", Duration::from_secs(10), async || {
            let (status, _) = admin
                .call(
                    "GET",
                    &format!("/api/v1/namespaces/default/pods/{victim}"),
                    "",
                    "",
                )
                .await;
            (status == 404).then_some(())
        })
        .await;
    }
    let gone = Instant::now();
    browser
        .wait_for(
            "the deleted pod to leave the page",
            &format!("!document.querySelector('tr[data-kind=pod][data-name=\"{victim}\"]')"),
            Duration::from_secs(1),
        )
        .await;
    eprintln!(
        "the deleted pod left the page {:?} after it was gone",
        gone.elapsed()
    );

    // Rollout restart, then undo: a new revision, then the first one's template again.
    let click = |kind: &str, name: &str, action: &str| {
        format!(
            "(() => {{ document.querySelector('tr[data-kind={kind}][data-name=\"{name}\"] button[data-action={action}]').click(); return true; }})()"
        )
    };
    let template_annotation = async || {
        web_deployment(&admin).await["spec"]["template"]["metadata"]["annotations"]
            ["kubectl.kubernetes.io/restartedAt"]
            .clone()
    };
    browser.eval(&click("deployment", "web", "restart")).await;
    wait_for("the restart", Duration::from_secs(5), async || {
        template_annotation().await.as_str().map(str::to_string)
    })
    .await;
    browser
        .wait_for(
            "revisions 1 and 2 listed",
            "document.querySelector('tr[data-kind=deployment][data-name=web]')?.textContent.includes('1, 2')",
            Duration::from_secs(10),
        )
        .await;
    browser.eval(&click("deployment", "web", "undo")).await;
    // The page says how the undo went; a refusal (no earlier revision known) fails here, by name.
    let undone = browser
        .wait_for(
            "the undo's message",
            "!document.getElementById('toast').hidden && document.getElementById('toast').textContent.startsWith('Undoing') && document.getElementById('toast').textContent",
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(undone.as_str(), Some("Undoing web"), "{undone}");
    wait_for("the undo", Duration::from_secs(5), async || {
        template_annotation().await.is_null().then_some(())
    })
    .await;

    // The cluster view: the node, its pods and what they request; cordon and uncordon.
    browser
        .open(&format!("{}/ui/#/cluster", cluster.url()))
        .await;
    let node = cluster.cluster.agents[0].node_name.clone();
    browser
        .wait_for(
            "the node on the cluster page",
            &format!("document.querySelector('tr[data-kind=node][data-name=\"{node}\"]')?.textContent.includes('True')"),
            Duration::from_secs(5),
        )
        .await;
    // The bars are drawn (their width set through the CSSOM: the page's CSP forbids style
    // attributes).
    let width = browser
        .eval(&format!("document.querySelector('tr[data-kind=node][data-name=\"{node}\"] .bar > span').style.width"))
        .await;
    assert!(width.as_str().unwrap().ends_with('%'), "bar width {width}");
    let unschedulable = async || {
        let (_, found) = admin
            .call("GET", &format!("/api/v1/nodes/{node}"), "", "")
            .await;
        found["spec"]["unschedulable"].as_bool().unwrap_or(false)
    };
    browser.eval(&click("node", &node, "cordon")).await;
    wait_for("the cordon", Duration::from_secs(5), async || {
        unschedulable().await.then_some(())
    })
    .await;
    browser
        .wait_for(
            "the node shown cordoned",
            &format!("document.querySelector('tr[data-kind=node][data-name=\"{node}\"] button[data-action=uncordon]')"),
            Duration::from_secs(5),
        )
        .await;
    browser.eval(&click("node", &node, "uncordon")).await;
    wait_for("the uncordon", Duration::from_secs(5), async || {
        (!unschedulable().await).then_some(())
    })
    .await;

    // Apply a pasted manifest: the server's validation errors show at their field; a valid
    // one is created.
    browser.open(&format!("{}/ui/#/apply", cluster.url())).await;
    let paste_and_apply = |manifest: &str| {
        format!(
            "(() => {{
                const text = document.querySelector('textarea[data-key=\"apply/text\"]');
                text.value = {};
                text.dispatchEvent(new Event('input'));
                document.querySelector('button[data-action=apply]').click();
                return true;
            }})()",
            serde_json::to_string(manifest).unwrap()
        )
    };
    browser
        .wait_for(
            "the apply page",
            "document.querySelector('textarea[data-key=\"apply/text\"]')",
            Duration::from_secs(5),
        )
        .await;
    let bad = "apiVersion: v1\nkind: Service\nmetadata:\n  name: broken\nspec:\n  ports:\n  - port: 70000\n";
    browser.eval(&paste_and_apply(bad)).await;
    let errors = browser
        .wait_for(
            "the validation error at its field",
            "document.querySelector('[data-field=apply-errors]')?.textContent",
            Duration::from_secs(5),
        )
        .await;
    assert!(
        errors.as_str().unwrap().contains("spec.ports[0].port"),
        "{errors}"
    );
    let good =
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: pasted\ndata:\n  greeting: hello\n";
    browser.eval(&paste_and_apply(good)).await;
    let created = wait_for("the pasted ConfigMap", Duration::from_secs(5), async || {
        let (status, body) = admin
            .call(
                "GET",
                "/api/v1/namespaces/default/configmaps/pasted",
                "",
                "",
            )
            .await;
        (status == 200).then_some(body)
    })
    .await;
    assert_eq!(created["data"]["greeting"], "hello");

    // A pod's log streams: lines written after the page opened appear on it.
    let talker = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "talker"},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "talk", "image": HELLO_P1,
            "args": ["talker", "--lines", "60", "--every-ms", "200"]}]}});
    admin
        .create("/api/v1/namespaces/default/pods", &talker)
        .await;
    browser
        .open(&format!("{}/ui/#/pod/default/talker", cluster.url()))
        .await;
    let log = "(document.querySelector('pre[data-log=talk]')?.textContent ?? '')";
    browser
        .wait_for(
            "the log's first lines",
            &format!("{log}.includes('line 2\\n')"),
            Duration::from_secs(20),
        )
        .await;
    let first = browser.eval(log).await.as_str().unwrap().to_string();
    let later = browser
        .wait_for(
            "lines written later to stream in",
            &format!(
                "{log}.length > {} && {log}.includes('line 12\\n') && {log}",
                first.len()
            ),
            Duration::from_secs(10),
        )
        .await;
    assert!(
        later.as_str().unwrap().starts_with("Hello, talker!"),
        "{later}"
    );
    // Its module: the digest, what kind of Wasm it is, its size and how it was compiled, as
    // the node reports them (nodes/{name}/proxy/modules).
    let module = browser
        .wait_for(
            "the module's details",
            "(() => { const row = document.querySelector('tr[data-kind=container][data-name=talk]');
                      const kind = row?.querySelector('[data-field=module-kind]')?.textContent;
                      return kind ? [kind, row.querySelector('[data-field=size]').textContent,
                                     row.querySelector('[data-field=compiled]').textContent,
                                     row.querySelector('[data-field=digest]').textContent] : null; })()",
            Duration::from_secs(15),
        )
        .await;
    let module: Vec<String> = serde_json::from_value(module).unwrap();
    assert_eq!(module[0], "module", "{module:?}");
    assert!(
        module[1].ends_with("KiB") || module[1].ends_with("MiB"),
        "{module:?}"
    );
    assert!(
        module[2].starts_with("compiled in ") || module[2].starts_with("cached in "),
        "{module:?}"
    );
    assert!(module[3].starts_with("sha256:"), "{module:?}");
    // The same through the API, and only the agent's read-only pages pass.
    let node_path = format!("/api/v1/nodes/{node}/proxy");
    let (status, modules) = admin
        .call("GET", &format!("{node_path}/modules"), "", "")
        .await;
    assert_eq!(status, 200, "{modules}");
    assert!(
        modules["modules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["digest"] == module[3].as_str()),
        "{modules}"
    );
    let (status, _) = admin
        .call(
            "GET",
            &format!("{node_path}/proxy/default/talker/80"),
            "",
            "",
        )
        .await;
    assert_eq!(status, 404);

    // A `view` user sees the namespace but may not scale: the page shows the 403's words.
    let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "viola-views", "namespace": "default"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "viola"}]});
    admin
        .create(
            "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
            &binding,
        )
        .await;
    let viola = cluster.kubeconfig_for("viola", &[]);
    log_in(&mut browser, &session_url(&viola).await, "viola").await;
    choose_namespace(&mut browser, "default").await;
    browser
        .wait_for(
            "viola sees the Deployment",
            "document.querySelector('tr[data-kind=deployment][data-name=web]')",
            Duration::from_secs(5),
        )
        .await;
    browser.eval(&click_scale("default", "web", 1)).await;
    let refusal = browser
        .wait_for(
            "the refusal shown",
            "!document.getElementById('toast').hidden && document.getElementById('toast').textContent",
            Duration::from_secs(5),
        )
        .await;
    assert!(
        refusal
            .as_str()
            .unwrap()
            .contains("User \"viola\" cannot patch resource \"deployments/scale\""),
        "{refusal}"
    );
    let unchanged = web_deployment(&admin).await;
    assert_eq!(unchanged["spec"]["replicas"], 3, "{unchanged}");
    let value: Value = browser
        .eval("document.querySelectorAll('tr[data-kind=pod]').length")
        .await;
    assert!(value.as_u64().unwrap() >= 3, "viola sees the pods: {value}");
    drop(browser);
    cluster.cluster.shutdown().await;
}

/// With 10,000 pods the page still renders in a moment and follows changes cheaply: only the
/// rows in view are built. The figures (time to first render, render cost per change) are
/// printed; the bounds asserted are loose, for loaded CI machines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_stays_responsive_with_10000_pods() {
    let test = "the_dashboard_stays_responsive_with_10000_pods";
    let Some(mut browser) = Browser::launch(test).await else {
        return;
    };
    let cluster = TestCluster::start(0).await;
    let admin = cluster.http();
    let ada = cluster.kubeconfig_for("ada", &["system:masters"]);
    admin
        .create(
            "/api/v1/namespaces",
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "crowd"}}),
        )
        .await;
    // Pods no scheduler takes (schedulerName "none"): they stay Pending and cost nothing else.
    let pod = |i: usize| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("pod-{i:05}")},
            "spec": {"schedulerName": "none", "automountServiceAccountToken": false,
                "containers": [{"name": "web", "image": WEB_P2}]}})
    };
    let started = Instant::now();
    let mut batches = futures::stream::iter((0..10_000).map(|i| {
        let admin = &admin;
        let object = pod(i);
        async move {
            admin.create("/api/v1/namespaces/crowd/pods", &object).await;
        }
    }))
    .buffer_unordered(32);
    while batches.next().await.is_some() {}
    drop(batches);
    eprintln!("10,000 pods created in {:?}", started.elapsed());

    log_in(&mut browser, &session_url(&ada).await, "ada").await;
    let opened = Instant::now();
    choose_namespace(&mut browser, "crowd").await;
    browser
        .wait_for(
            "10,000 pods on the page",
            "document.querySelector('[data-count=pods]')?.textContent === '10000 in all'",
            Duration::from_secs(60),
        )
        .await;
    let first_render = opened.elapsed();
    let rows = browser
        .eval("document.querySelectorAll('tr[data-kind=pod]').length")
        .await;
    let rows = rows.as_u64().unwrap();
    assert!(
        rows > 0 && rows < 200,
        "only the rows in view are built, not {rows}"
    );
    // The rows not built still take their room (the scroller is as tall as 10,000 rows),
    // and scrolling to the end builds the last ones.
    let height = browser
        .eval("document.querySelector('[data-scroll=pods]').scrollHeight")
        .await;
    assert!(height.as_u64().unwrap() > 300_000, "scroll height {height}");
    browser
        .eval("(() => { const s = document.querySelector('[data-scroll=pods]'); s.scrollTop = s.scrollHeight; s.dispatchEvent(new Event('scroll')); return true; })()")
        .await;
    browser
        .wait_for(
            "the last pod built after scrolling to the end",
            "!!document.querySelector('tr[data-kind=pod][data-name=\"pod-09999\"]')",
            Duration::from_secs(5),
        )
        .await;
    browser
        .eval("(() => { const s = document.querySelector('[data-scroll=pods]'); s.scrollTop = 0; s.dispatchEvent(new Event('scroll')); return true; })()")
        .await;
    // Idle, the page does nothing: no render follows another by itself.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let renders = "window.shoal.state.stats.renders";
    let before = browser.eval(renders).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(browser.eval(renders).await, before, "renders while idle");
    let stats = browser
        .eval("JSON.stringify(window.shoal.state.stats)")
        .await;
    eprintln!("with 10,000 pods: first render {first_render:?} after choosing the namespace; {rows} rows built; render stats {stats}");

    // Changes: pods created one after another, each seen on the page before the next.
    browser
        .eval("window.shoal.state.stats = {renders: 0, totalMs: 0, lastMs: 0, maxMs: 0}; true")
        .await;
    let mut seen = Vec::new();
    for i in 0..20 {
        // Sorted before the others, so in view at the top.
        let name = format!("a-new-{i:02}");
        let object = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"schedulerName": "none", "automountServiceAccountToken": false,
                "containers": [{"name": "web", "image": WEB_P2}]}});
        let sent = Instant::now();
        admin.create("/api/v1/namespaces/crowd/pods", &object).await;
        browser
            .wait_for(
                "a new pod on the page",
                &format!("!!document.querySelector('tr[data-kind=pod][data-name=\"{name}\"]')"),
                Duration::from_secs(10),
            )
            .await;
        seen.push(sent.elapsed());
    }
    seen.sort();
    let stats: Value = serde_json::from_str(
        browser
            .eval("JSON.stringify(window.shoal.state.stats)")
            .await
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let renders = stats["renders"].as_f64().unwrap();
    let per_render = stats["totalMs"].as_f64().unwrap() / renders.max(1.0);
    eprintln!(
        "with 10,000 pods, a new pod is on the page in p50 {:?}, max {:?} after its create returned; {renders} renders, {per_render:.1} ms each on average, {:.1} ms at most",
        seen[seen.len() / 2],
        seen.last().unwrap(),
        stats["maxMs"].as_f64().unwrap()
    );
    assert!(per_render < 250.0, "a render costs {per_render} ms");
    assert!(
        *seen.last().unwrap() < Duration::from_secs(5),
        "a change took {:?} to show",
        seen.last().unwrap()
    );
    drop(browser);
    cluster.cluster.shutdown().await;
}
