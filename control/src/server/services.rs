//! Service admission: what the API server fills in when a Service is created. A ClusterIP
//! Service gets the first free address of the service range (10.96.0.0/16; headless Services,
//! `clusterIP: None`, get none); NodePort and LoadBalancer ports get the first free port of
//! 30000-32767 (from a random point) unless they ask for one, which must then be free. Allocation reads the existing
//! Services, so creations are serialised by a lock held until the Service is stored.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use serde_json::{json, Value};

use super::error::{ApiError, Result};
use super::ApiServer;
use crate::api::validation::Cause;

/// The first address of the service range (Kubernetes' default service CIDR starts here too).
const SERVICE_RANGE_START: u32 = u32::from_be_bytes([10, 96, 0, 0]);
const SERVICE_RANGE_SIZE: u32 = 1 << 16;
const NODE_PORTS: std::ops::RangeInclusive<i64> = 30000..=32767;

/// Fills in `spec.clusterIP(s)` and node ports of a new Service.
pub fn allocate(server: &ApiServer, service: &mut Value) -> Result<()> {
    let named = json!({"metadata": {"name": crate::api::object::name(service)}});
    let invalid = |field: &str, value: &str, why: &str| invalid(&named, field, value, why);
    let existing = server
        .store
        .list("services", None)
        .map_err(|e| ApiError::from_store(e, "services", ""))?
        .objects;
    let type_ = service
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    if type_ == "ExternalName" {
        return Ok(());
    }
    let requested_ip = service
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let taken_ips: HashSet<&str> = existing
        .iter()
        .filter_map(|s| s.pointer("/spec/clusterIP")?.as_str())
        .collect();
    let ip = match requested_ip.as_str() {
        "None" => "None".to_string(),
        "" => (0..SERVICE_RANGE_SIZE)
            // .0 is the network and .1 is kept for the API server's own Service.
            .skip(2)
            .map(|offset| Ipv4Addr::from(SERVICE_RANGE_START + offset).to_string())
            .find(|ip| !taken_ips.contains(ip.as_str()))
            .ok_or_else(|| invalid("spec.clusterIP", "", "the service range is full"))?,
        wanted => {
            let parsed: Ipv4Addr = wanted.parse().map_err(|_| {
                invalid(
                    "spec.clusterIP",
                    wanted,
                    "must be a valid IP address or None",
                )
            })?;
            let offset = u32::from(parsed).wrapping_sub(SERVICE_RANGE_START);
            if offset >= SERVICE_RANGE_SIZE {
                return Err(invalid(
                    "spec.clusterIP",
                    wanted,
                    "provided IP is not in the valid range. The range of valid IPs is 10.96.0.0/16",
                ));
            }
            if taken_ips.contains(wanted) {
                return Err(invalid(
                    "spec.clusterIP",
                    wanted,
                    "provided IP is already allocated",
                ));
            }
            wanted.to_string()
        }
    };
    crate::api::object::set_at(service, "/spec/clusterIP", json!(ip));
    crate::api::object::set_at(service, "/spec/clusterIPs", json!([ip]));
    if type_ == "NodePort" || type_ == "LoadBalancer" {
        let mut taken_ports: HashSet<i64> = existing
            .iter()
            .flat_map(|s| node_ports(s).into_iter())
            .collect();
        let ports = service
            .pointer_mut("/spec/ports")
            .and_then(Value::as_array_mut);
        for (i, port) in ports.into_iter().flatten().enumerate() {
            let field = format!("spec.ports[{i}].nodePort");
            match port.get("nodePort").and_then(Value::as_i64) {
                Some(wanted) if !NODE_PORTS.contains(&wanted) => {
                    return Err(invalid(
                        &field,
                        &wanted.to_string(),
                        "provided port is not in the valid range. The range of valid ports is 30000-32767",
                    ));
                }
                Some(wanted) if !taken_ports.insert(wanted) => {
                    return Err(invalid(
                        &field,
                        &wanted.to_string(),
                        "provided port is already allocated",
                    ));
                }
                Some(_) => {}
                None => {
                    // From a random point of the range, as Kubernetes does: two clusters on
                    // one host (dev clusters, tests) rarely want the same port.
                    let start = rand::Rng::gen_range(&mut rand::thread_rng(), NODE_PORTS);
                    let free = (start..=*NODE_PORTS.end())
                        .chain(*NODE_PORTS.start()..start)
                        .find(|p| !taken_ports.contains(p))
                        .ok_or_else(|| invalid(&field, "", "no node port is free"))?;
                    taken_ports.insert(free);
                    port["nodePort"] = json!(free);
                }
            }
        }
    }
    Ok(())
}

fn node_ports(service: &Value) -> Vec<i64> {
    service
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("nodePort").and_then(Value::as_i64))
        .collect()
}

fn invalid(service: &Value, field: &str, value: &str, why: &str) -> ApiError {
    ApiError::Invalid {
        kind: "Service".into(),
        name: crate::api::object::name(service).to_string(),
        causes: vec![Cause::invalid(field, value, why)],
    }
}

/// A named `targetPort` must name a port of the pods the Service selects, when some exist
/// (a Service created before its pods cannot be checked, and is accepted).
pub fn check_target_ports(server: &ApiServer, service: &Value) -> Result<()> {
    let Some(selector) = service.pointer("/spec/selector").and_then(Value::as_object) else {
        return Ok(());
    };
    if selector.is_empty() {
        return Ok(());
    }
    // The Service's selector is a label map: as a label selector, it is `k=v,...`.
    let query: Vec<String> = selector
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    let Ok(selects) = crate::api::selector::LabelSelector::parse(&query.join(",")) else {
        return Ok(());
    };
    let namespace = crate::api::object::namespace(service);
    let pods: Vec<Value> = server
        .store
        .list("pods", Some(namespace))
        .map_err(|e| ApiError::from_store(e, "pods", ""))?
        .objects
        .into_iter()
        .filter(|pod| selects.matches_object(pod))
        .collect();
    if pods.is_empty() {
        return Ok(());
    }
    let ports = service.pointer("/spec/ports").and_then(Value::as_array);
    for (i, port) in ports.into_iter().flatten().enumerate() {
        let Some(name) = port.get("targetPort").and_then(Value::as_str) else {
            continue;
        };
        let declared = pods.iter().any(|pod| {
            pod.pointer("/spec/containers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(|c| {
                    c.get("ports")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                })
                .any(|p| p.get("name").and_then(Value::as_str) == Some(name))
        });
        if !declared {
            return Err(invalid(
                service,
                &format!("spec.ports[{i}].targetPort"),
                name,
                "no container of the selected pods declares a port of this name",
            ));
        }
    }
    Ok(())
}
