//! shoal-runtime: everything that runs on a node (DESIGN.md §2).
//!
//! - [`engine`]: the wasmtime Engine, image fetch, compile and on-disk cache;
//! - [`pod`]: a pod sandbox: running its modules, volumes, logs, limits;
//! - [`agent`]: the node agent: Node registration, Lease, pod workers, gateway.
//!
//! The runtime uses only `shoal_api::api` types and `shoal_api::client`, never the
//! store or the server.

pub mod agent;
pub mod engine;
pub mod pod;
pub mod proxy;
mod tls_serve;
