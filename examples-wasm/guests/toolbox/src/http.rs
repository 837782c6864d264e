//! `curl` and `get`: HTTP requests through wasi-http, which in a Shoal pod reach the pod's
//! loopback (`localhost:PORT`, the pod's other modules) and, where the node allows it, the
//! cluster's Services. `curl [-s] [-i] [-f] [-X METHOD] [-H 'Name: value'] [-d DATA] URL`
//! prints the body (`-i`: status line and headers first; `-f`: exit 22 on a status >= 400,
//! as curl); `get URL` is `curl -f URL`.

use std::io::{Read, Write};

use wasip2::http::outgoing_handler;
use wasip2::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};

use crate::io::Io;

pub fn get(args: &[String], io: &mut Io) -> i32 {
    let mut with_fail = vec!["-f".to_string()];
    with_fail.extend(args.iter().cloned());
    curl(&with_fail, io)
}

pub fn curl(args: &[String], io: &mut Io) -> i32 {
    let mut method = None;
    let mut headers = Vec::new();
    let mut data: Option<String> = None;
    let (mut include, mut fail) = (false, false);
    let mut url = None;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "-s" | "--silent" | "-S" | "-sS" | "-L" => {}
            "-i" | "--include" => include = true,
            "-f" | "--fail" => fail = true,
            "-X" | "--request" | "-H" | "--header" | "-d" | "--data" => {
                let Some(value) = rest.next() else {
                    io.error(&format!("curl: option {arg}: requires parameter"));
                    return 2;
                };
                match arg.as_str() {
                    "-X" | "--request" => method = Some(value.clone()),
                    "-H" | "--header" => headers.push(value.clone()),
                    _ => data = Some(value.clone()),
                }
            }
            other if other.starts_with('-') => {
                io.error(&format!("curl: option {other}: is unknown"));
                return 2;
            }
            other => url = Some(other.to_string()),
        }
    }
    let Some(url) = url else {
        io.error("curl: no URL specified");
        return 2;
    };
    let method = method.unwrap_or_else(|| if data.is_some() { "POST" } else { "GET" }.into());
    match request(&method, &url, &headers, data.as_deref()) {
        Ok((status, response_headers, body)) => {
            if include {
                let _ = writeln!(io.stdout, "HTTP/1.1 {status}");
                for (name, value) in &response_headers {
                    let _ = writeln!(io.stdout, "{name}: {value}");
                }
                let _ = writeln!(io.stdout);
            }
            if fail && status >= 400 {
                io.error(&format!(
                    "curl: (22) The requested URL returned error: {status}"
                ));
                return 22;
            }
            let _ = io.stdout.write_all(&body);
            0
        }
        Err(e) => {
            io.error(&format!("curl: (7) {url}: {e}"));
            7
        }
    }
}

type Response = (u16, Vec<(String, String)>, Vec<u8>);

fn request(
    method: &str,
    url: &str,
    headers: &[String],
    body: Option<&str>,
) -> Result<Response, String> {
    let (scheme, rest) = match url.split_once("://") {
        Some(("http", rest)) => (Scheme::Http, rest),
        Some(("https", rest)) => (Scheme::Https, rest),
        Some((other, _)) => return Err(format!("scheme {other} is not supported")),
        None => (Scheme::Http, url),
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    let fields = Fields::new();
    for header in headers {
        let Some((name, value)) = header.split_once(':') else {
            return Err(format!("bad header {header:?} (want 'Name: value')"));
        };
        fields
            .append(&name.trim().to_ascii_lowercase(), value.trim().as_bytes())
            .map_err(|e| format!("header {name}: {e:?}"))?;
    }
    let request = OutgoingRequest::new(fields);
    let method = match method.to_ascii_uppercase().as_str() {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "HEAD" => Method::Head,
        "PATCH" => Method::Patch,
        "OPTIONS" => Method::Options,
        other => Method::Other(other.to_string()),
    };
    let _ = request.set_method(&method);
    let _ = request.set_scheme(Some(&scheme));
    let _ = request.set_authority(Some(authority));
    let _ = request.set_path_with_query(Some(path));
    let outgoing = request.body().map_err(|_| "the request body")?;
    let future = outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
    {
        let stream = outgoing.write().map_err(|_| "the request body stream")?;
        if let Some(body) = body {
            for chunk in body.as_bytes().chunks(4096) {
                stream
                    .blocking_write_and_flush(chunk)
                    .map_err(|e| format!("sending the body: {e:?}"))?;
            }
        }
    }
    OutgoingBody::finish(outgoing, None).map_err(|e| format!("{e:?}"))?;
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => return Err(format!("{code:?}")),
        other => return Err(format!("{other:?}")),
    };
    let status = response.status();
    let response_headers = response
        .headers()
        .entries()
        .into_iter()
        .map(|(n, v)| (n, String::from_utf8_lossy(&v).into_owned()))
        .collect();
    let mut bytes = Vec::new();
    if let Ok(incoming) = response.consume() {
        if let Ok(mut stream) = incoming.stream() {
            stream.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
        }
    }
    Ok((status, response_headers, bytes))
}
