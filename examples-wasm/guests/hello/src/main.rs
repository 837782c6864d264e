//! hello: the smallest Shoal workload, a command that greets and exits.
//!
//! Built both as a WASI preview 1 core module and as a preview 2 component, so one manifest
//! per flavour exercises both runtimes. Flags (all optional, in any order):
//! - `NAME` (a bare word): who to greet, default `world`;
//! - `--sleep-ms N`: stay alive N ms before exiting (keeps the pod Running for a while);
//! - `--lines N`: print N numbered lines after the greeting (log tests);
//! - `--exit N`: exit with code N;
//! - `--write PATH`: also write the greeting to PATH (a volume shared with other containers);
//! - `--read PATH`: print PATH's content (waiting up to 10 s for it to appear);
//! - env `GREETING` replaces "Hello";
//! - if a directory is preopened at `/data`, append the greeting to `/data/hello.txt`.

use std::io::Write;

fn main() {
    let mut name = String::from("world");
    let mut sleep_ms = 0u64;
    let mut lines = 0u64;
    let mut exit_code = 0i32;
    let mut write_to = None;
    let mut read_from = None;
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
            "--exit" => exit_code = number("--exit") as i32,
            "--write" => write_to = args.next(),
            "--read" => read_from = args.next(),
            other => name = other.to_string(),
        }
    }
    let greeting = std::env::var("GREETING").unwrap_or_else(|_| "Hello".into());
    let flavour = if cfg!(target_env = "p2") { "wasip2 component" } else { "wasip1 module" };
    let line = format!("{greeting}, {name}! (from a {flavour})");
    println!("{line}");
    for i in 1..=lines {
        println!("line {i}");
    }
    if std::path::Path::new("/data").is_dir() {
        match std::fs::OpenOptions::new().create(true).append(true).open("/data/hello.txt") {
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
                Err(_) if std::time::Instant::now() < deadline => std::thread::sleep(std::time::Duration::from_millis(50)),
                Err(e) => {
                    eprintln!("hello: cannot read {path}: {e}");
                    std::process::exit(1);
                }
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
