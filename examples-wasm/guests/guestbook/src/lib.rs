//! guestbook: the two tiers of a guestbook, one `wasi:http/proxy` component, the tier chosen
//! by the `ROLE` environment variable (see `examples-wasm/manifests/guestbook.yaml`).
//!
//! - `ROLE=backend` keeps the entries in the file `$DATA/entries.txt` (`DATA` defaults to
//!   `/data`, a volume): `GET /entries` lists them, one per line; `POST /entries` appends
//!   the body as one entry (201).
//! - `ROLE=frontend` calls the backend Service by name (`BACKEND`, default
//!   `guestbook-backend`): `GET /` renders the entries as HTML with a form, `POST /sign`
//!   (a form, `message=...`) adds one and redirects to `/`, `GET /entries` passes the list
//!   through as text.
//! - Both answer `GET /healthz`.

use std::io::{Read, Write};

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};

wasip2::http::proxy::export!(Guestbook);

struct Guestbook;

/// An answer: status, content type, extra headers and body.
struct Answer {
    status: u16,
    content_type: &'static str,
    location: Option<&'static str>,
    body: String,
}

impl Answer {
    fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            location: None,
            body: body.into(),
        }
    }
}

impl wasip2::exports::http::incoming_handler::Guest for Guestbook {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_else(|| "/".into());
        let path = path.split('?').next().unwrap_or("/").to_string();
        let method = request.method();
        let body = read_body(&request);
        let role = std::env::var("ROLE").unwrap_or_default();
        let answer = match (role.as_str(), &method, path.as_str()) {
            (_, Method::Get, "/healthz") => Answer::text(200, "ok\n"),
            ("backend", method, "/entries") => backend(method, &body),
            ("frontend", Method::Get, "/") => page(),
            ("frontend", Method::Get, "/entries") => match call(Method::Get, "/entries", b"") {
                Ok((200, text)) => Answer::text(200, text),
                Ok((status, text)) => {
                    Answer::text(502, format!("the backend answered {status}: {text}"))
                }
                Err(e) => Answer::text(502, e),
            },
            ("frontend", Method::Post, "/sign") => sign(&body),
            ("backend" | "frontend", _, _) => {
                Answer::text(404, format!("no route {method:?} {path}\n"))
            }
            _ => Answer::text(500, "set ROLE to frontend or backend\n"),
        };
        respond(out, answer);
    }
}

fn entries_file() -> std::path::PathBuf {
    let data = std::env::var("DATA").unwrap_or_else(|_| "/data".into());
    std::path::Path::new(&data).join("entries.txt")
}

fn backend(method: &Method, body: &[u8]) -> Answer {
    let file = entries_file();
    match method {
        Method::Get => match std::fs::read_to_string(&file) {
            Ok(text) => Answer::text(200, text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Answer::text(200, ""),
            Err(e) => Answer::text(500, format!("reading {}: {e}\n", file.display())),
        },
        Method::Post => {
            let entry = String::from_utf8_lossy(body).replace(['\n', '\r'], " ");
            let entry = entry.trim();
            if entry.is_empty() {
                return Answer::text(400, "an entry needs some text\n");
            }
            let appended = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&file)
                .and_then(|mut f| writeln!(f, "{entry}"));
            match appended {
                Ok(()) => Answer::text(201, format!("signed: {entry}\n")),
                Err(e) => Answer::text(500, format!("writing {}: {e}\n", file.display())),
            }
        }
        _ => Answer::text(405, "GET or POST\n"),
    }
}

fn page() -> Answer {
    let entries = match call(Method::Get, "/entries", b"") {
        Ok((200, text)) => text,
        Ok((status, text)) => {
            return Answer::text(502, format!("the backend answered {status}: {text}"))
        }
        Err(e) => return Answer::text(502, e),
    };
    let items: String = entries
        .lines()
        .map(|line| format!("<li>{}</li>\n", escape(line)))
        .collect();
    let pod = std::env::var("POD_NAME").unwrap_or_default();
    Answer {
        status: 200,
        content_type: "text/html; charset=utf-8",
        location: None,
        body: format!(
            "<!doctype html>\n<title>Guestbook</title>\n<h1>Guestbook</h1>\n<ul>\n{items}</ul>\n\
             <form method=post action=/sign><input name=message><button>Sign</button></form>\n\
             <p><small>served by {}</small></p>\n",
            escape(&pod)
        ),
    }
}

fn sign(form: &[u8]) -> Answer {
    let form = String::from_utf8_lossy(form);
    let message = form
        .split('&')
        .find_map(|pair| pair.strip_prefix("message="))
        .map(url_decode)
        .unwrap_or_default();
    match call(Method::Post, "/entries", message.as_bytes()) {
        Ok((201, _)) => Answer {
            status: 303,
            content_type: "text/plain",
            location: Some("/"),
            body: "signed\n".into(),
        },
        Ok((status, text)) => Answer::text(if status == 400 { 400 } else { 502 }, text),
        Err(e) => Answer::text(502, e),
    }
}

/// A request to the backend Service, by name: the status and body it answered.
fn call(method: Method, path: &str, body: &[u8]) -> Result<(u16, String), String> {
    let backend = std::env::var("BACKEND").unwrap_or_else(|_| "guestbook-backend".into());
    let headers = Fields::from_list(&[("content-type".to_string(), b"text/plain".to_vec())])
        .map_err(|e| format!("{e:?}"))?;
    let request = OutgoingRequest::new(headers);
    let _ = request.set_method(&method);
    let _ = request.set_scheme(Some(&Scheme::Http));
    let _ = request.set_authority(Some(&backend));
    let _ = request.set_path_with_query(Some(path));
    let outgoing = request
        .body()
        .map_err(|()| "the request has no body".to_string())?;
    {
        let mut stream = outgoing
            .write()
            .map_err(|()| "the body has no stream".to_string())?;
        stream.write_all(body).map_err(|e| e.to_string())?;
        stream.flush().map_err(|e| e.to_string())?;
    }
    OutgoingBody::finish(outgoing, None).map_err(|e| format!("{e:?}"))?;
    let future = outgoing_handler::handle(request, None)
        .map_err(|code| format!("calling {backend}: {code:?}\n"))?;
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => return Err(format!("calling {backend}: {code:?}\n")),
        other => return Err(format!("calling {backend}: {other:?}\n")),
    };
    let status = response.status();
    let mut text = String::new();
    if let Ok(body) = response.consume() {
        if let Ok(mut stream) = body.stream() {
            let _ = stream.read_to_string(&mut text);
        }
    }
    Ok((status, text))
}

fn url_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn read_body(request: &IncomingRequest) -> Vec<u8> {
    let mut bytes = Vec::new();
    if let Ok(body) = request.consume() {
        if let Ok(mut stream) = body.stream() {
            let _ = stream.read_to_end(&mut bytes);
        }
    }
    bytes
}

fn respond(out: ResponseOutparam, answer: Answer) {
    let mut headers = vec![(
        "content-type".to_string(),
        answer.content_type.as_bytes().to_vec(),
    )];
    if let Some(location) = answer.location {
        headers.push(("location".to_string(), location.as_bytes().to_vec()));
    }
    let headers = Fields::from_list(&headers).unwrap_or_else(|_| Fields::new());
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(answer.status);
    let outgoing = response.body().expect("a new response has a body");
    ResponseOutparam::set(out, Ok(response));
    let mut stream = outgoing.write().expect("a new body has a stream");
    let _ = stream.write_all(answer.body.as_bytes());
    let _ = stream.flush();
    drop(stream);
    let _ = OutgoingBody::finish(outgoing, None);
}
