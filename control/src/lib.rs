//! shoal-control: Shoal's API and control plane (DESIGN.md §2).
//!
//! - [`api`]: the object model, selectors, validation, defaults, patches, tables;
//! - [`store`]: the `Store` trait and its redb backend;
//! - [`server`]: the Kubernetes-compatible REST server (axum);
//! - [`client`]: the typed client (in-process or HTTP) everything else talks through;
//! - [`scheduler`]: binds pending pods to nodes;
//! - [`controllers`]: the reconcile runtime and the workload controllers;
//! - [`task`]: long-lived tasks restarted when they panic.
//!
//! Nothing in this crate knows about wasmtime.

pub mod api;
pub mod client;
pub mod controllers;
pub mod scheduler;
pub mod server;
pub mod store;
pub mod task;
