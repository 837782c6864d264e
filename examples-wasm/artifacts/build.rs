//! Builds the guest programs of `examples-wasm/guests` for wasm32-wasip1 and wasm32-wasip2,
//! installing a missing target with rustup, and writes their paths into `$OUT_DIR/paths.rs`.
//! In the manner of wasmtime's test-programs artifacts crate: a fresh machine needs nothing
//! but the Rust toolchain.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Each guest with the targets it is built for, and whether it is a library (a component
/// exporting an interface, such as an HTTP handler) rather than a command.
const GUESTS: &[(&str, &[&str], bool)] = &[
    ("hello", &["wasm32-wasip1", "wasm32-wasip2"], false),
    ("misbehave", &["wasm32-wasip1", "wasm32-wasip2"], false),
    ("web", &["wasm32-wasip2"], true),
    ("guestbook", &["wasm32-wasip2"], true),
    ("toolbox", &["wasm32-wasip2"], false),
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let guests_dir = manifest_dir.join("../guests").canonicalize().unwrap();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let target_dir = out_dir.join("guests-target");
    println!(
        "cargo:rerun-if-changed={}",
        guests_dir.join("Cargo.toml").display()
    );
    for (guest, _, _) in GUESTS {
        println!(
            "cargo:rerun-if-changed={}",
            guests_dir.join(guest).display()
        );
    }
    install_missing_targets();
    for target in ["wasm32-wasip1", "wasm32-wasip2"] {
        let packages: Vec<&str> = GUESTS
            .iter()
            .filter(|(_, ts, _)| ts.contains(&target))
            .map(|(g, _, _)| *g)
            .collect();
        build(&guests_dir, &target_dir, target, &packages);
    }

    let mut paths = String::new();
    let mut embedded = String::from(
        "/// The bytes of each example, by file name.\npub const EMBEDDED: &[(&str, &[u8])] = &[\n",
    );
    for (guest, targets, _) in GUESTS {
        for target in *targets {
            let suffix = if *target == "wasm32-wasip1" {
                "p1"
            } else {
                "p2"
            };
            let wasm = target_dir
                .join(target)
                .join("release")
                .join(format!("{}.wasm", guest.replace('-', "_")));
            assert!(wasm.exists(), "expected guest artifact {}", wasm.display());
            let constant = format!(
                "{}_{}",
                guest.to_uppercase().replace('-', "_"),
                suffix.to_uppercase()
            );
            paths.push_str(&format!(
                "/// `{guest}` built for {target}.\npub const {constant}: &str = {:?};\n",
                wasm.display().to_string()
            ));
            embedded.push_str(&format!(
                "    (\"{guest}-{suffix}.wasm\", include_bytes!({:?})),\n",
                wasm.display().to_string()
            ));
        }
    }
    embedded.push_str("];\n");
    std::fs::write(out_dir.join("paths.rs"), paths + &embedded).unwrap();
}

fn build(guests_dir: &Path, target_dir: &Path, target: &str, packages: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .arg("build")
        .arg("--release")
        .arg("--manifest-path")
        .arg(guests_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        .arg("--target")
        .arg(target);
    for package in packages {
        build.arg("-p").arg(package);
    }
    // The outer build's flags are for the host; the guests must not inherit them.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_MAKEFLAGS",
    ] {
        build.env_remove(var);
    }
    let status = build.status().expect("run cargo to build the wasm guests");
    assert!(
        status.success(),
        "building the wasm guests for {target} in {} failed",
        guests_dir.display()
    );
}

fn install_missing_targets() {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    let Ok(installed) = installed else {
        // No rustup: assume the toolchain was set up by other means; cargo will say if not.
        return;
    };
    let installed = String::from_utf8_lossy(&installed.stdout);
    for target in ["wasm32-wasip1", "wasm32-wasip2"] {
        if !installed.lines().any(|line| line.trim() == target) {
            let status = Command::new("rustup")
                .args(["target", "add", target])
                .status();
            assert!(
                matches!(status, Ok(s) if s.success()),
                "`rustup target add {target}` failed; install it by hand"
            );
        }
    }
}
