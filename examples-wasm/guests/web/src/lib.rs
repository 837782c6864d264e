//! web: an HTTP workload, a `wasi:http/proxy` component. Each request gets a fresh instance.
//!
//! Routes (all answers are plain text):
//! - `/` greets: `$GREETING from $NAME` (defaults `Hello`, `web`), with the pod name if known;
//! - `/healthz` is 200 `ok`; `/flag/NAME` is 200 if the file `/data/NAME` exists, else 503
//!   (readiness and liveness probes that a test can flip);
//! - `/echo` answers the method and the request body; `/header/NAME` a request header's value
//!   (404 without it);
//! - `/env/NAME` answers an environment variable;
//! - `/file/PATH` answers the content of file `/PATH`; `PUT /file/PATH` writes the body there,
//!   `DELETE /file/PATH` removes it;
//! - `/call/AUTHORITY/PATH` makes an outgoing GET to `http://AUTHORITY/PATH` and answers the
//!   status and body it got (or 502 with the error), which is how a frontend reaches a backend;
//! - `/kube/PATH` GETs `https://kubernetes.default.svc/PATH` with the pod's ServiceAccount
//!   token (`/var/run/secrets/kubernetes.io/serviceaccount/token`) and answers the API's
//!   status and body: how a workload talks to the Kubernetes API;
//! - `/sleep/MS` answers after MS milliseconds (a slow request, for draining);
//! - `/work/MS` keeps the CPU busy for MS milliseconds (at most 10 s), for autoscaling;
//! - `/crash` panics, `/spin` never returns, `/alloc` allocates without bound.

use std::io::{Read, Write};

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};

wasip2::http::proxy::export!(Web);

struct Web;

impl wasip2::exports::http::incoming_handler::Guest for Web {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_else(|| "/".into());
        if let Some(name) = path.strip_prefix("/header/") {
            let values = request.headers().get(&name.to_ascii_lowercase());
            let (status, text) = match values.first() {
                Some(value) => (200, String::from_utf8_lossy(value).into_owned()),
                None => (404, format!("no header {name}\n")),
            };
            return respond(out, status, text.as_bytes());
        }
        let method = request.method();
        let body = read_request_body(&request);
        let (status, text) = route(&method, &path, body);
        respond(out, status, text.as_bytes());
    }
}

fn route(method: &Method, path: &str, body: Vec<u8>) -> (u16, String) {
    let path = path.split('?').next().unwrap_or("/");
    let env = |k: &str| std::env::var(k).ok();
    match path {
        "/" => {
            let greeting = env("GREETING").unwrap_or_else(|| "Hello".into());
            let name = env("NAME").unwrap_or_else(|| "web".into());
            let pod = env("POD_NAME")
                .map(|p| format!(" (pod {p})"))
                .unwrap_or_default();
            (200, format!("{greeting} from {name}{pod}\n"))
        }
        "/healthz" => (200, "ok\n".into()),
        _ if path.starts_with("/sleep/") => {
            let millis: u64 = path["/sleep/".len()..].parse().unwrap_or(0);
            std::thread::sleep(std::time::Duration::from_millis(millis));
            (200, format!("slept {millis} ms\n"))
        }
        "/echo" => (
            200,
            format!("{method:?} {}", String::from_utf8_lossy(&body)),
        ),
        "/crash" => panic!("crash requested"),
        _ if path.starts_with("/work/") => {
            // Busy for the given milliseconds: CPU load for autoscaling.
            let millis: u64 = path["/work/".len()..].parse().unwrap_or(0);
            let started = std::time::Instant::now();
            let mut x: u64 = 0;
            while started.elapsed() < std::time::Duration::from_millis(millis.min(10_000)) {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            (200, format!("worked {millis} ms\n"))
        }
        "/spin" => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "/alloc" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
            }
        }
        _ => {
            if let Some(flag) = path.strip_prefix("/flag/") {
                return match std::path::Path::new("/data").join(flag).exists() {
                    true => (200, format!("{flag} is set\n")),
                    false => (503, format!("{flag} is not set\n")),
                };
            }
            if let Some(name) = path.strip_prefix("/env/") {
                return match env(name) {
                    Some(value) => (200, value),
                    None => (404, format!("no variable {name}\n")),
                };
            }
            if let Some(file) = path.strip_prefix("/file") {
                return file_route(method, file, &body);
            }
            if let Some(target) = path.strip_prefix("/call/") {
                return call(target);
            }
            if let Some(api_path) = path.strip_prefix("/kube/") {
                return kube(api_path);
            }
            (404, format!("no route {path}\n"))
        }
    }
}

fn file_route(method: &Method, file: &str, body: &[u8]) -> (u16, String) {
    let result = match method {
        Method::Put | Method::Post => {
            std::fs::write(file, body).map(|()| format!("wrote {} bytes to {file}\n", body.len()))
        }
        Method::Delete => std::fs::remove_file(file).map(|()| format!("removed {file}\n")),
        _ => std::fs::read_to_string(file),
    };
    match result {
        Ok(text) => (200, text),
        Err(e) => (403, format!("{file}: {e}\n")),
    }
}

/// GET `/PATH` of the Kubernetes API as the pod's ServiceAccount.
fn kube(api_path: &str) -> (u16, String) {
    let token_file = "/var/run/secrets/kubernetes.io/serviceaccount/token";
    let token = match std::fs::read_to_string(token_file) {
        Ok(token) => token,
        Err(e) => return (500, format!("{token_file}: {e}\n")),
    };
    let headers = Fields::new();
    let _ = headers.append(
        "authorization",
        format!("Bearer {}", token.trim()).as_bytes(),
    );
    get(
        Scheme::Https,
        "kubernetes.default.svc",
        &format!("/{api_path}"),
        headers,
    )
}

/// GET `http://AUTHORITY/PATH` for a target written `AUTHORITY/PATH`.
fn call(target: &str) -> (u16, String) {
    let (authority, path) = match target.split_once('/') {
        Some((a, p)) => (a, format!("/{p}")),
        None => (target, "/".to_string()),
    };
    get(Scheme::Http, authority, &path, Fields::new())
}

/// GET `SCHEME://AUTHORITY/PATH` and answer 200 with the status and body it got (502 if it
/// got nothing).
fn get(scheme: Scheme, authority: &str, path: &str, headers: Fields) -> (u16, String) {
    let request = OutgoingRequest::new(headers);
    let _ = request.set_scheme(Some(&scheme));
    let _ = request.set_authority(Some(authority));
    let _ = request.set_path_with_query(Some(path));
    let response = match outgoing_handler::handle(request, None) {
        Ok(future) => {
            future.subscribe().block();
            match future.get() {
                Some(Ok(Ok(response))) => response,
                Some(Ok(Err(code))) => {
                    return (502, format!("call to {authority} failed: {code:?}\n"))
                }
                other => return (502, format!("call to {authority} failed: {other:?}\n")),
            }
        }
        Err(code) => return (502, format!("call to {authority} refused: {code:?}\n")),
    };
    let status = response.status();
    let mut text = String::new();
    if let Ok(body) = response.consume() {
        if let Ok(mut stream) = body.stream() {
            let _ = stream.read_to_string(&mut text);
        }
    }
    (200, format!("{status} {text}"))
}

fn read_request_body(request: &IncomingRequest) -> Vec<u8> {
    let mut bytes = Vec::new();
    if let Ok(body) = request.consume() {
        if let Ok(mut stream) = body.stream() {
            let _ = stream.read_to_end(&mut bytes);
        }
    }
    bytes
}

fn respond(out: ResponseOutparam, status: u16, body: &[u8]) {
    let headers = Fields::from_list(&[("content-type".to_string(), b"text/plain".to_vec())])
        .unwrap_or_else(|_| Fields::new());
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let outgoing = response.body().expect("a new response has a body");
    ResponseOutparam::set(out, Ok(response));
    let mut stream = outgoing.write().expect("a new body has a stream");
    let _ = stream.write_all(body);
    let _ = stream.flush();
    drop(stream);
    let _ = OutgoingBody::finish(outgoing, None);
}
