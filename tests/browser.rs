//! A real browser for the dashboard's tests: headless Chromium (Debian's `chromium` package,
//! which `scripts/test` installs), driven over the Chrome DevTools Protocol on a WebSocket. It
//! is a few commands (open a page, evaluate JavaScript in it, wait until an expression holds),
//! so a small client here does it rather than a CDP crate with thousands of generated types.
//! Clicks are the page's own `click()` on the element, which runs its real event handlers.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The Chromium on the PATH, if there is one.
fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser"].iter().find_map(|name| {
        Command::new(name)
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|_| PathBuf::from(name))
    })
}

/// One headless Chromium with one page; killed on drop.
pub struct Browser {
    _child: tokio::process::Child,
    socket: Socket,
    session: String,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium, or returns `None` with a SKIPPED line when it is not installed
    /// (under `CI=true` that is a failure).
    pub async fn launch(test: &str) -> Option<Self> {
        let Some(program) = chromium() else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "chromium is required under CI=true but is not on the PATH (apt-get install chromium)"
            );
            eprintln!("SKIPPED {test}: chromium is not on the PATH (apt-get install chromium; CI=true makes this a failure)");
            return None;
        };
        let profile = tempfile::tempdir().unwrap();
        let mut child = tokio::process::Command::new(program)
            .args([
                "--headless=new",
                // Tests run as root in CI, where Chromium's sandbox cannot start.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                // The test cluster's API serves a certificate from its own new CA.
                "--ignore-certificate-errors",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "about:blank",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium starts");
        let stderr = child.stderr.take().unwrap();
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let url = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    return url.trim().to_string();
                }
            }
            panic!("chromium exited without a DevTools address");
        })
        .await
        .expect("chromium printed its DevTools address within 30 s");
        // Keep reading its stderr, so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let (socket, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("the DevTools WebSocket opens");
        let mut browser = Self {
            _child: child,
            socket,
            session: String::new(),
            next_id: 0,
            _profile: profile,
        };
        let target = browser
            .command("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let attached = browser
            .command(
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        browser.session = attached["sessionId"].as_str().unwrap().to_string();
        browser.command("Page.enable", json!({})).await;
        browser.command("Runtime.enable", json!({})).await;
        Some(browser)
    }

    /// Sends a DevTools command (to the page once attached) and returns its result.
    async fn command(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        self.socket
            .send(Message::Text(message.to_string().into()))
            .await
            .unwrap();
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(30), self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method} within 30 s"))
                .expect("the DevTools connection stays open")
                .unwrap();
            let Message::Text(text) = frame else { continue };
            let answer: Value = serde_json::from_str(&text).unwrap();
            if answer["id"] == json!(id) {
                if let Some(error) = answer.get("error") {
                    panic!("{method} failed: {error}");
                }
                return answer["result"].clone();
            }
        }
    }

    /// Opens `url` in the page and waits until it has loaded.
    pub async fn open(&mut self, url: &str) {
        self.command("Page.navigate", json!({"url": url})).await;
        self.wait_for(
            "the page to load",
            "document.readyState === 'complete'",
            Duration::from_secs(15),
        )
        .await;
    }

    /// The value of JavaScript `expression` in the page (a promise is awaited); an exception
    /// it throws fails the test.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .command(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression}: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Evaluates `expression` until it is truthy (not false, null, 0 or ""), and returns its
    /// value; fails the test after `timeout`, showing the page's text.
    pub async fn wait_for(&mut self, what: &str, expression: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.eval(expression).await;
            let truthy = match &value {
                Value::Null | Value::Bool(false) => false,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return value;
            }
            if Instant::now() >= deadline {
                let text = self
                    .eval("document.body ? document.body.innerText : ''")
                    .await;
                panic!("{what}: not within {timeout:?} ({expression} is {value}); the page shows:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
