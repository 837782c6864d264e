//! Two build steps:
//! - Compiles the Kubernetes .proto files vendored in `kubernetes/proto` (Kubernetes v1.33.1,
//!   see `kubernetes/README.md`) into a descriptor set, `$OUT_DIR/kubernetes.binpb`, with
//!   protox (a Rust protobuf compiler: no protoc). `server::protobuf` reads and writes
//!   protobuf bodies through it.
//! - Depending on protoc-bin-vendored makes cargo download it before any build script runs,
//!   so `tools/protoc` (PROTOC, from .cargo/config.toml) finds a protoc for etcd-client's
//!   build script on machines that have none.

use std::path::{Path, PathBuf};

use prost::Message;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kubernetes/proto");
    compile_kubernetes_protos();
    // Fails the build early and clearly if the vendored binary is not there.
    if let Err(e) = protoc_bin_vendored::protoc_bin_path() {
        println!("cargo:warning=protoc-bin-vendored has no protoc for this platform: {e}");
    }
}

fn compile_kubernetes_protos() {
    let root = Path::new("kubernetes/proto");
    let mut files = Vec::new();
    collect_protos(root, root, &mut files);
    files.sort();
    let mut set = protox::compile(&files, [root]).expect("compiling kubernetes/proto");
    // Comments and source positions are not needed at run time.
    for file in &mut set.file {
        file.source_code_info = None;
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    std::fs::write(out.join("kubernetes.binpb"), set.encode_to_vec())
        .expect("writing the descriptor set");
}

/// Every `.proto` under `dir`, as a path relative to `root` (how the files import each other).
fn collect_protos(root: &Path, dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("reading kubernetes/proto") {
        let path = entry.expect("reading kubernetes/proto").path();
        if path.is_dir() {
            collect_protos(root, &path, files);
        } else if path.extension().is_some_and(|e| e == "proto") {
            files.push(path.strip_prefix(root).expect("under root").to_path_buf());
        }
    }
}
