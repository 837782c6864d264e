//! shoal-control: Shoal's API server and control plane (DESIGN.md §2).
//!
//! - [`store`]: the `Store` trait and its redb backend;
//! - [`auth`]: PKI, TLS serving, authentication and RBAC;
//! - [`server`]: the Kubernetes-compatible REST server (axum);
//! - [`scheduler`]: binds pending pods to nodes;
//! - [`controllers`]: the reconcile runtime and the workload controllers.
//!
//! The object model ([`api`]), the client ([`client`]) and task supervision ([`task`]) live in
//! `shoal-api`, shared with the node agent; they are re-exported here under their old paths.
//!
//! Nothing in this crate knows about wasmtime.

pub use shoal_api::{api, client, task};

pub mod auth;
pub mod controllers;
pub mod leader;
pub mod peers;
pub mod scheduler;
pub mod server;
pub mod store;

#[cfg(test)]
mod client_tests;
