//! The object model: which resources exist, and the rules every object passes through on its
//! way into the store (defaults, validation), plus selectors, patches and table rendering.
//! Types are k8s-openapi's; nothing here does I/O.

pub mod cron;
pub mod defaults;
pub mod intstr;
pub mod object;
pub mod patch;
#[cfg(test)]
mod proptests;
pub mod quantity;
pub mod resources;
pub mod selector;
pub mod table;
pub mod validation;
