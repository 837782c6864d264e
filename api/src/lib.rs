//! shoal-api: what every part of Shoal shares, and nothing that serves or stores (DESIGN.md §2).
//!
//! - [`api`]: the object model: selectors, validation, defaults, patches, tables, quantities,
//!   cron schedules, the Kubernetes version Shoal reports;
//! - [`client`]: the typed client on kube-rs (in-process over any tower service, or HTTP(S)
//!   from a URL or kubeconfig) everything talks to the API through;
//! - [`task`]: long-lived tasks restarted when they panic;
//! - [`tls`]: client identities and the gateways' mTLS client side.
//!
//! The node agent and the CLI's client commands depend on this crate and on `kube`, never on
//! the API server or the store (`shoal-control`).

pub mod api;
pub mod client;
pub mod task;
pub mod tls;
