//! The `shoal` binary's library: its memory allocator ([`allocator`]), cluster wiring
//! ([`cluster`]), kubeconfig files, a node's
//! join and certificate renewal ([`join`]), and one
//! module per subcommand under [`commands`]. `main.rs` only parses arguments and dispatches.

pub mod allocator;
pub mod cluster;
pub mod commands;
pub mod join;
pub mod kubeconfig;
