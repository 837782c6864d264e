//! toolbox: what `kubectl exec` and `kubectl debug` run inside a Wasm pod. One wasip2
//! component holding a small shell and the usual commands, chosen by the name it is called
//! by (`argv[0]`, as busybox; `toolbox NAME ARGS` works too): `sh`, `ls`, `cat`, `echo`,
//! `env`, `mkdir`, `rm`, `mv`, `cp`, `tar`, `wc`, `grep`, `head`, `tail`, `touch`, `test`,
//! `get`/`curl` (HTTP on the pod's loopback) and a few more (`help` lists them).
//!
//! It sees what the pod's container sees: its preopened volumes, its environment and its
//! loopback. A name it does not know exits 127 with `command not found`.

mod archive;
mod commands;
mod http;
mod io;
mod sh;

fn main() {
    let mut args: Vec<String> = std::env::args().collect();
    if args.is_empty() {
        args.push("sh".into());
    }
    let mut name = basename(&args[0]).to_string();
    if name == "toolbox" {
        args.remove(0);
        name = args
            .first()
            .map_or("help".into(), |a| basename(a).to_string());
        if args.is_empty() {
            args.push(name.clone());
        }
    }
    let mut io = io::Io::standard();
    let code = if name == "sh" {
        sh::main(&args[1..], &mut io)
    } else {
        match commands::run(&name, &args[1..], &mut io) {
            Some(code) => code,
            None => {
                io.error(&format!("{name}: command not found"));
                127
            }
        }
    };
    io.flush();
    exit(code);
}

/// Ends the instance with `code`. Rust's `process::exit` uses wasi:cli/exit's `exit`, which
/// carries only success or failure (7 is reported as 1); `exit-with-code` (WASI 0.2.12)
/// keeps the number, as `sh -c 'exit 7'` must.
fn exit(code: i32) -> ! {
    if code == 0 {
        std::process::exit(0);
    }
    wasip2::cli::exit::exit_with_code(u8::try_from(code & 0xff).unwrap_or(1));
    std::process::exit(code)
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}
