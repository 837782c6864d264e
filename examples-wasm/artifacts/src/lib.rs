//! Paths and bytes of the guest programs in `examples-wasm/guests`, built by this crate's
//! build script: `HELLO_P1`, `HELLO_P2`, `MISBEHAVE_P1`, `MISBEHAVE_P2`, `WEB_P2`, `GUESTBOOK_P2`, `TOOLBOX_P2` (the toolbox `kubectl exec` runs), and
//! [`EMBEDDED`] (file name, bytes) so a `shoal` binary can install them anywhere
//! (`shoal dev` writes them to `<data-dir>/examples/`). Tests, benchmarks and
//! `shoal dev --demo` use them as pod images.

include!(concat!(env!("OUT_DIR"), "/paths.rs"));

/// The toolbox component (`examples-wasm/guests/toolbox`): the shell and commands
/// `kubectl exec` runs in a pod, built into every agent.
pub fn toolbox() -> &'static [u8] {
    EMBEDDED
        .iter()
        .find(|(name, _)| *name == "toolbox-p2.wasm")
        .map_or(&[], |(_, bytes)| *bytes)
}
