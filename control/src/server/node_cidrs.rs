//! Pod CIDRs for new Nodes, as kube-controller-manager's range allocator hands them out:
//! the first free range of the cluster's, one per node, never two nodes the same.
//!
//! The ranges taken are kept in memory, read from the stored Nodes at most once a second and
//! whenever none is left (which reclaims the ranges of deleted Nodes): reading them for every
//! new Node would cost a decode of every Node per registration, quadratic in the size of the
//! cluster. One API server allocates one range at a time (the caller holds the lock until the
//! Node is stored); several API servers on one etcd see each other's ranges once a second, so
//! two Nodes registered at the same moment on two servers could still meet (Kubernetes keeps
//! the allocator in one leader-elected controller instead).

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::error::{ApiError, Result};
use crate::api::object;

/// How stale the ranges taken may be before a new Node's allocation reads them again.
const REREAD_AFTER: Duration = Duration::from_secs(1);

/// The ranges taken (their first addresses), and when they were last read from the store.
#[derive(Default)]
pub struct Allocator {
    taken: HashSet<u32>,
    read_at: Option<Instant>,
}

/// The cluster's node ranges of prefix length `mask`: their first addresses, in the order
/// they are handed out. /24 ranges start at 10.244.0.0 (Kubernetes' default cluster CIDR)
/// and continue up to 10.255.255.0, 3,072 of them; shorter prefixes tile 10.0.0.0/8
/// (/16: 256 nodes).
fn ranges(mask: u8) -> impl Iterator<Item = u32> {
    let base = if mask >= 24 {
        u32::from_be_bytes([10, 244, 0, 0])
    } else {
        u32::from_be_bytes([10, 0, 0, 0])
    };
    let size = 1u64 << (32 - u32::from(mask.clamp(8, 30)));
    let end = u64::from(u32::from_be_bytes([10, 255, 255, 255])) + 1;
    (u64::from(base)..end)
        .step_by(size as usize)
        .filter_map(|start| u32::try_from(start).ok())
}

fn cidr(start: u32, mask: u8) -> String {
    format!("{}/{mask}", Ipv4Addr::from(start))
}

/// The first address of a Node's pod CIDR, if it has a valid one.
fn range_of(node: &Value) -> Option<u32> {
    let net: ipnet::Ipv4Net = node.pointer("/spec/podCIDR")?.as_str()?.parse().ok()?;
    Some(u32::from(net.network()))
}

impl Allocator {
    /// Gives `node` the first free range of prefix length `mask` as its pod CIDR, unless it
    /// names one already. `stored_nodes` reads every stored Node.
    pub fn assign(
        &mut self,
        node: &mut Value,
        mask: u8,
        stored_nodes: impl Fn() -> Result<Vec<Value>>,
    ) -> Result<()> {
        if let Some(start) = range_of(node) {
            self.taken.insert(start);
            return Ok(());
        }
        if self.read_at.is_none_or(|at| at.elapsed() >= REREAD_AFTER) {
            self.reread(&stored_nodes()?);
        }
        let mut free = ranges(mask).find(|r| !self.taken.contains(r));
        if free.is_none() {
            // Deleted Nodes' ranges are free again once the store says so.
            self.reread(&stored_nodes()?);
            free = ranges(mask).find(|r| !self.taken.contains(r));
        }
        let start = free.ok_or_else(|| {
            ApiError::Forbidden(format!(
                "no free pod CIDR left for a new node: all {} /{mask} ranges of the cluster are taken (a longer --node-cidr-mask-size, such as 26, gives more and smaller ones)",
                ranges(mask).count()
            ))
        })?;
        self.taken.insert(start);
        let cidr = cidr(start, mask);
        object::set_at(node, "/spec/podCIDR", json!(cidr));
        object::set_at(node, "/spec/podCIDRs", json!([cidr]));
        Ok(())
    }

    fn reread(&mut self, nodes: &[Value]) {
        self.taken = nodes.iter().filter_map(range_of).collect();
        self.read_at = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(cidr: Option<&str>) -> Value {
        match cidr {
            Some(c) => json!({"metadata": {"name": "n"}, "spec": {"podCIDR": c}}),
            None => json!({"metadata": {"name": "n"}}),
        }
    }

    fn assign(allocator: &mut Allocator, mask: u8, stored: &[Value]) -> Result<String> {
        let mut new = node(None);
        allocator.assign(&mut new, mask, || Ok(stored.to_vec()))?;
        assert_eq!(new["spec"]["podCIDRs"], json!([new["spec"]["podCIDR"]]));
        Ok(object::str_at(&new, "/spec/podCIDR").to_string())
    }

    #[test]
    fn the_cluster_ranges_tile_from_kubernetes_default() {
        assert_eq!(ranges(24).count(), 3072);
        assert_eq!(ranges(16).count(), 256);
        assert_eq!(ranges(26).count(), 12288);
        assert_eq!(cidr(ranges(24).next().unwrap(), 24), "10.244.0.0/24");
        assert_eq!(cidr(ranges(24).last().unwrap(), 24), "10.255.255.0/24");
        assert_eq!(cidr(ranges(16).last().unwrap(), 16), "10.255.0.0/16");
        assert_eq!(ranges(8).count(), 1);
    }

    #[test]
    fn nodes_take_the_first_free_ranges_in_turn_and_never_the_same() {
        let mut allocator = Allocator::default();
        let stored = [node(Some("10.244.0.0/24")), node(Some("10.244.2.0/24"))];
        assert_eq!(
            assign(&mut allocator, 24, &stored).unwrap(),
            "10.244.1.0/24"
        );
        // Within the second the store is not read again: what was handed out counts.
        assert_eq!(
            assign(&mut allocator, 24, &stored).unwrap(),
            "10.244.3.0/24"
        );
        let mut own = node(Some("10.244.4.0/24"));
        allocator
            .assign(&mut own, 24, || {
                panic!("a node naming its range reads nothing")
            })
            .unwrap();
        assert_eq!(own["spec"]["podCIDR"], "10.244.4.0/24");
        assert_eq!(
            assign(&mut allocator, 24, &stored).unwrap(),
            "10.244.5.0/24"
        );
    }

    #[test]
    fn a_full_cluster_refuses_until_a_node_is_gone() {
        let mut allocator = Allocator::default();
        let all: Vec<Value> = ranges(16).map(|r| node(Some(&cidr(r, 16)))).collect();
        let refused = assign(&mut allocator, 16, &all).unwrap_err().to_string();
        assert!(refused.contains("all 256 /16 ranges"), "{refused}");
        assert!(refused.contains("--node-cidr-mask-size"), "{refused}");
        // A deleted node's range is found again when the store is read on exhaustion.
        let fewer: Vec<Value> = all[..200].iter().chain(&all[201..]).cloned().collect();
        assert_eq!(assign(&mut allocator, 16, &fewer).unwrap(), "10.200.0.0/16");
    }
}
