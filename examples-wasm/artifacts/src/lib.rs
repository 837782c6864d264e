//! Paths of the guest programs in `examples-wasm/guests`, built by this crate's build script.
//! Tests, benchmarks and `shoal dev --demo` use them as pod images.

include!(concat!(env!("OUT_DIR"), "/paths.rs"));

/// The bytes of each example, by file name, so a `shoal` binary can install them anywhere
/// (`shoal dev` writes them to `<data-dir>/examples/`).
pub const EMBEDDED: &[(&str, &[u8])] = &[
    (
        "hello-p1.wasm",
        include_bytes!(concat!(
            env!("OUT_DIR"),
            "/guests-target/wasm32-wasip1/release/hello.wasm"
        )),
    ),
    (
        "hello-p2.wasm",
        include_bytes!(concat!(
            env!("OUT_DIR"),
            "/guests-target/wasm32-wasip2/release/hello.wasm"
        )),
    ),
];
