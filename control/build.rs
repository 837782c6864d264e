//! Nothing is generated here. Depending on protoc-bin-vendored makes cargo download it before
//! any build script runs, so `tools/protoc` (PROTOC, from .cargo/config.toml) finds a protoc
//! for etcd-client's build script on machines that have none.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // Fails the build early and clearly if the vendored binary is not there.
    if let Err(e) = protoc_bin_vendored::protoc_bin_path() {
        println!("cargo:warning=protoc-bin-vendored has no protoc for this platform: {e}");
    }
}
