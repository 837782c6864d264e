//! A pod sandbox: its containers' programs, volumes, logs and limits. For now a pod's
//! containers are commands that share the pod's volumes; the in-process loopback and HTTP
//! workloads come with the pods issue and plug in here.

pub mod log;
pub mod run;
pub mod volumes;
