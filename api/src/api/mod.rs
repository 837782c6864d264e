//! The object model: which resources exist, and the rules every object passes through on its
//! way into the store (defaults, validation), plus selectors, patches and table rendering.
//! Types are k8s-openapi's; nothing here does I/O.

pub mod autoscaling;
pub mod cron;
pub mod custom;
pub mod defaults;
pub mod disruption;
pub mod events;
pub mod fencing;
pub mod intstr;
pub mod limits;
pub mod object;
pub mod patch;
pub mod pod_requests;
pub mod priority;
#[cfg(test)]
mod proptests;
pub mod quantity;
pub mod quota;
pub mod request_metrics;
pub mod resources;
pub mod selector;
pub mod table;
pub mod time;
pub mod usage;
pub mod validation;

/// The Kubernetes minor version whose API Shoal serves (`/version`, nodes' kubelet version,
/// the OpenAPI document): one constant, so the three never disagree. kubectl dispatchers pick
/// their client by it.
pub const KUBERNETES_MINOR: u32 = 33;

/// `v1.<minor>.0`.
pub fn kubernetes_version() -> String {
    format!("v1.{KUBERNETES_MINOR}.0")
}
