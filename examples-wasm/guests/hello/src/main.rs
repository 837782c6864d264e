//! hello: the smallest Shoal workload, a command that greets and exits.
//!
//! Built both as a WASI preview 1 core module and as a preview 2 component, so one manifest
//! per flavour exercises both runtimes. Flags (all optional, in any order):
//! - `NAME` (a bare word): who to greet, default `world`;
//! - `--sleep-ms N`: stay alive N ms before exiting (keeps the pod Running for a while);
//! - `--lines N`: print N numbered lines after the greeting (log tests);
//! - `--every-ms N`: wait N ms before each of those lines (a log that grows while one reads it);
//! - `--exit N`: exit with code N;
//! - `--write PATH`: also write the greeting to PATH (a volume shared with other containers);
//! - `--read PATH`: print PATH's content (waiting up to 10 s for it to appear);
//! - `--get URL` (the wasip2 component only): GET `http://AUTHORITY/PATH` once, print the
//!   status and body, and exit 1 unless the answer was a 2xx (a sidecar on the pod's
//!   loopback: `--get localhost:9090/healthz`);
//! - env `GREETING` replaces "Hello";
//! - if a directory is preopened at `/data`, append the greeting to `/data/hello.txt`.

use std::io::Write;

fn main() {
    let mut name = String::from("world");
    let mut sleep_ms = 0u64;
    let mut lines = 0u64;
    let mut every_ms = 0u64;
    let mut exit_code = 0i32;
    let mut write_to = None;
    let mut read_from = None;
    let mut get = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |flag: &str| -> u64 {
            let value = args.next().unwrap_or_default();
            value.parse().unwrap_or_else(|_| {
                eprintln!("hello: {flag} needs a number, got {value:?}");
                std::process::exit(2)
            })
        };
        match arg.as_str() {
            "--sleep-ms" => sleep_ms = number("--sleep-ms"),
            "--lines" => lines = number("--lines"),
            "--every-ms" => every_ms = number("--every-ms"),
            "--exit" => exit_code = number("--exit") as i32,
            "--write" => write_to = args.next(),
            "--read" => read_from = args.next(),
            "--get" => get = args.next(),
            other => name = other.to_string(),
        }
    }
    let greeting = std::env::var("GREETING").unwrap_or_else(|_| "Hello".into());
    let flavour = if cfg!(target_env = "p2") {
        "wasip2 component"
    } else {
        "wasip1 module"
    };
    let line = format!("{greeting}, {name}! (from a {flavour})");
    println!("{line}");
    for i in 1..=lines {
        if every_ms > 0 {
            std::io::stdout().flush().ok();
            std::thread::sleep(std::time::Duration::from_millis(every_ms));
        }
        println!("line {i}");
    }
    if std::path::Path::new("/data").is_dir() {
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open("/data/hello.txt")
        {
            Ok(mut file) => {
                let _ = writeln!(file, "{line}");
            }
            Err(e) => eprintln!("hello: cannot write /data/hello.txt: {e}"),
        }
    }
    if let Some(path) = write_to {
        if let Err(e) = std::fs::write(&path, format!("{line}\n")) {
            eprintln!("hello: cannot write {path}: {e}");
            std::process::exit(1);
        }
    }
    if let Some(path) = read_from {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    print!("read {path}: {text}");
                    break;
                }
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50))
                }
                Err(e) => {
                    eprintln!("hello: cannot read {path}: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
    if let Some(target) = get {
        match http_get(&target) {
            Ok((status, body)) => {
                println!("GET {target}: {status} {body}");
                if !(200..300).contains(&status) {
                    std::process::exit(1);
                }
            }
            Err(e) => {
                eprintln!("hello: GET {target} failed: {e}");
                std::process::exit(1);
            }
        }
    }
    if sleep_ms > 0 {
        std::thread::sleep(std::time::Duration::from_millis(sleep_ms));
    }
    std::io::stdout().flush().ok();
    if exit_code != 0 {
        eprintln!("hello: exiting with code {exit_code}");
        std::process::exit(exit_code);
    }
}

/// GET `http://AUTHORITY/PATH` for a target written `AUTHORITY/PATH`: (status, body).
#[cfg(target_env = "p2")]
fn http_get(target: &str) -> Result<(u16, String), String> {
    use std::io::Read;
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{Fields, OutgoingRequest, Scheme};
    let (authority, path) = match target.split_once('/') {
        Some((a, p)) => (a, format!("/{p}")),
        None => (target, "/".to_string()),
    };
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_scheme(Some(&Scheme::Http));
    let _ = request.set_authority(Some(authority));
    let _ = request.set_path_with_query(Some(&path));
    let future = outgoing_handler::handle(request, None).map_err(|code| format!("{code:?}"))?;
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(Ok(response))) => response,
        other => return Err(format!("{other:?}")),
    };
    let status = response.status();
    let mut body = String::new();
    if let Ok(incoming) = response.consume() {
        if let Ok(mut stream) = incoming.stream() {
            let _ = stream.read_to_string(&mut body);
        }
    }
    Ok((status, body.trim_end().to_string()))
}

#[cfg(not(target_env = "p2"))]
fn http_get(_target: &str) -> Result<(u16, String), String> {
    Err("--get needs the wasip2 component (a wasip1 module has no HTTP)".into())
}
