//! Builds the guest programs of `examples-wasm/guests` for wasm32-wasip1 and wasm32-wasip2,
//! installing a missing target with rustup, and writes their paths into `$OUT_DIR/paths.rs`.
//! In the manner of wasmtime's test-programs artifacts crate: a fresh machine needs nothing
//! but the Rust toolchain.

use std::path::PathBuf;
use std::process::Command;

const TARGETS: [&str; 2] = ["wasm32-wasip1", "wasm32-wasip2"];
const GUESTS: [&str; 1] = ["hello"];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let guests_dir = manifest_dir.join("../guests").canonicalize().unwrap();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let target_dir = out_dir.join("guests-target");
    println!(
        "cargo:rerun-if-changed={}",
        guests_dir.join("Cargo.toml").display()
    );
    for guest in GUESTS {
        println!(
            "cargo:rerun-if-changed={}",
            guests_dir.join(guest).display()
        );
    }
    install_missing_targets();

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .arg("build")
        .arg("--release")
        .arg("--manifest-path")
        .arg(guests_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    for target in TARGETS {
        build.arg("--target").arg(target);
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
        "building the wasm guests in {} failed",
        guests_dir.display()
    );

    let mut paths = String::new();
    for guest in GUESTS {
        for (target, suffix) in TARGETS.iter().zip(["P1", "P2"]) {
            let wasm = target_dir
                .join(target)
                .join("release")
                .join(format!("{guest}.wasm"));
            assert!(wasm.exists(), "expected guest artifact {}", wasm.display());
            paths.push_str(&format!(
                "/// `{guest}` built for {target}.\npub const {}_{suffix}: &str = {:?};\n",
                guest.to_uppercase(),
                wasm.display().to_string()
            ));
        }
    }
    std::fs::write(out_dir.join("paths.rs"), paths).unwrap();
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
    for target in TARGETS {
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
