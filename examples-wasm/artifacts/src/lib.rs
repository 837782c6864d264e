//! Paths of the guest programs in `examples-wasm/guests`, built by this crate's build script.
//! Tests, benchmarks and `shoal dev --demo` use them as pod images.

include!(concat!(env!("OUT_DIR"), "/paths.rs"));
