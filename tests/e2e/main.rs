//! End-to-end tests: real clusters (in this process, or as `shoal` processes) on loopback
//! sockets, driven through the real API with kubectl, the shoal client and plain HTTP.

mod autoscaling;
mod bad_input;
mod benchmarks;
mod cli;
mod controllers;
mod crds;
mod dashboard;
mod durability;
mod examples;
mod generators;
mod ha;
mod healing;
mod http_api;
mod images;
mod into_pods;
mod kubectl;
mod multi_process;
mod node_join;
mod operator;
mod paging;
mod pods;
mod registry;
mod security;
mod services;
mod sharing;
mod statefulsets;
mod store;
