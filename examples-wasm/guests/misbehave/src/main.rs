//! misbehave: a command that does one bad thing, so tests can show the agent survives it.
//! The first argument picks the behaviour:
//! - `crash`: panics (a trap);
//! - `exit N`: exits with code N;
//! - `spin`: loops forever;
//! - `hog`: allocates 1 MiB blocks (touching them) without bound;
//! - `grow N`: allocates 1 MiB every 100 ms up to N MiB, then holds it, idle;
//! - `overflow`: recurses until the stack runs out;
//! - `flood`: prints lines forever;
//! - `escape`: tries to read files outside its mounts and reports what it could read.

use std::io::Write;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("");
    println!("misbehave: {mode}");
    match mode {
        "crash" => panic!("crashing on purpose"),
        "exit" => std::process::exit(args.get(1).and_then(|c| c.parse().ok()).unwrap_or(1)),
        "spin" => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "hog" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![7u8; 1 << 20]);
                if hoard.len() % 16 == 0 {
                    println!("holding {} MiB", hoard.len());
                }
            }
        }
        "grow" => {
            let target: usize = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(16);
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            while hoard.len() < target {
                hoard.push(vec![7u8; 1 << 20]);
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            println!("holding {} MiB", hoard.len());
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
                std::hint::black_box(&hoard);
            }
        }
        "overflow" => println!("{}", recurse(std::hint::black_box(1))),
        "flood" => {
            let mut out = std::io::stdout();
            for i in 0u64.. {
                let _ = writeln!(
                    out,
                    "flood line {i} ........................................................"
                );
            }
        }
        "escape" => {
            for path in [
                "/data/../etc/passwd",
                "/etc/passwd",
                "../etc/passwd",
                "/data/link/passwd",
                "/data/escape-link",
            ] {
                match std::fs::read_to_string(path) {
                    Ok(text) => println!("READ {path}: {} bytes", text.len()),
                    Err(e) => println!("DENIED {path}: {e}"),
                }
            }
        }
        other => {
            eprintln!("misbehave: unknown mode {other:?}");
            std::process::exit(2);
        }
    }
}

#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    let padding = std::hint::black_box([n; 64]);
    recurse(n + padding[3]) + 1
}
