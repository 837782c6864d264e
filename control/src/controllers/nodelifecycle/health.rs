//! What the node lifecycle controller knows of each node's health, and the pure decision of
//! what to do about it ([`assess`]): the clock is a parameter, so the rules are tested on
//! made-up instants.
//!
//! A node's lease is judged by this controller's own clock: a renewal counts when it is seen
//! (a new `resourceVersion` of the Lease), never by the `renewTime` the agent wrote, so skewed
//! clocks between machines cause no eviction. A node whose renewal is late by the grace
//! period is *suspect* and probed (a TCP connection to its agent); it is unreachable when the
//! probe is refused or times out (the agent's process is gone, or the machine is), or,
//! whatever the probe says, once the lease itself has run out (an agent that accepts
//! connections but renews nothing: stopped, starved or stuck). A slow node whose agent still
//! accepts connections thus gets the whole lease before anything happens to its pods.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::api::fencing::FENCE_MARGIN;

/// The controller's timings.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// How late a renewal may be before the node is probed (`--node-monitor-grace-period`).
    pub grace: Duration,
    /// How long a node may stay unreachable before all its remaining pods are deleted.
    pub eviction_timeout: Duration,
}

/// How often a suspect node is probed again while its probes are answered.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// What the controller knows of one node.
#[derive(Clone, Debug)]
pub struct Health {
    /// When this controller last saw the lease renewed, and its `resourceVersion` then.
    renewed_at: Instant,
    lease_version: String,
    /// Whether a renewal has been seen since the controller started (a node tainted by an
    /// earlier controller is only untainted on one).
    renewal_seen: bool,
    /// How long the agent says its lease stands.
    lease_duration: Duration,
    /// The last probe's end and whether the agent accepted the connection.
    probe: Option<(Instant, bool)>,
    probing: bool,
    unreachable_since: Option<Instant>,
    /// What was done in this episode of unreachability.
    pods_disrupted: bool,
    unique_replaced: bool,
    evicted: bool,
}

/// What the controller does about a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Act {
    /// Its renewal is late: try to connect to its agent.
    Probe,
    /// Ready=Unknown and the unreachable taint, saying why.
    MarkUnreachable(String),
    /// Its pods are marked Ready=False with a DisruptionTarget condition, and those of
    /// controllers that may run twice for a moment are deleted gracefully (replaced at once).
    DisruptPods,
    /// The agent has certainly fenced itself: its unique pods are deleted and replaced.
    ReplaceUniquePods,
    /// Unreachable for the eviction timeout: every pod left is deleted.
    Evict,
    /// Its lease is renewed again: Ready and untainted.
    MarkReachable,
}

impl Health {
    pub fn new(now: Instant, lease_version: &str, lease_duration: Duration) -> Self {
        Self {
            renewed_at: now,
            lease_version: lease_version.to_string(),
            renewal_seen: false,
            lease_duration,
            probe: None,
            probing: false,
            unreachable_since: None,
            pods_disrupted: false,
            unique_replaced: false,
            evicted: false,
        }
    }

    /// The lease as it is now: a new version is a renewal, seen at `now`.
    pub fn lease_seen(&mut self, lease_version: &str, lease_duration: Duration, now: Instant) {
        self.lease_duration = lease_duration;
        if self.lease_version != lease_version {
            self.lease_version = lease_version.to_string();
            self.renewed_at = now;
            self.renewal_seen = true;
            self.probe = None;
        }
    }

    /// A probe ended at `now`: `answered` when the agent accepted the connection.
    pub fn probed(&mut self, answered: bool, now: Instant) {
        self.probing = false;
        self.probe = Some((now, answered));
    }

    /// The controller itself stood still (its process paused or starved): what it did not
    /// see in that time says nothing about the nodes, so each gets its grace again.
    pub fn forgive(&mut self, now: Instant) {
        if self.unreachable_since.is_none() {
            self.renewed_at = now;
            self.probe = None;
        }
    }

    /// How late the renewal is at `now`.
    pub fn late(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.renewed_at)
    }
}

/// Decides, at `now`, what each node needs. `tainted` says whether a node carries the
/// unreachable taint; nodes without a lease yet (agents still starting) have no `Health` and
/// are left alone.
pub fn assess(
    health: &mut HashMap<String, Health>,
    tainted: impl Fn(&str) -> bool,
    timing: Timing,
    now: Instant,
) -> Vec<(String, Act)> {
    let mut acts = Vec::new();
    for (name, node) in health.iter_mut() {
        let late = node.late(now);
        let refused = matches!(node.probe, Some((at, false)) if at >= node.renewed_at);
        let expired = late > node.lease_duration;
        let suspect = late > timing.grace;
        if expired || (suspect && refused) {
            let since = *node.unreachable_since.get_or_insert(now);
            if !tainted(name) {
                let why = if expired {
                    format!(
                        "its lease expired ({:.1} s without renewal)",
                        late.as_secs_f64()
                    )
                } else {
                    format!(
                        "its lease is {:.1} s late and its agent refuses connections",
                        late.as_secs_f64()
                    )
                };
                acts.push((name.clone(), Act::MarkUnreachable(why)));
            }
            if !node.pods_disrupted {
                node.pods_disrupted = true;
                acts.push((name.clone(), Act::DisruptPods));
            }
            let fenced = late >= node.lease_duration.saturating_add(FENCE_MARGIN);
            if fenced && !node.unique_replaced {
                node.unique_replaced = true;
                acts.push((name.clone(), Act::ReplaceUniquePods));
            }
            let due = now.saturating_duration_since(since) >= timing.eviction_timeout;
            if due && !node.evicted {
                node.evicted = true;
                acts.push((name.clone(), Act::Evict));
            }
            continue;
        }
        let recovered = node.unreachable_since.take().is_some();
        (node.pods_disrupted, node.unique_replaced, node.evicted) = (false, false, false);
        if (recovered || tainted(name)) && node.renewal_seen && !suspect {
            acts.push((name.clone(), Act::MarkReachable));
        }
        let probe_due = node
            .probe
            .is_none_or(|(at, _)| now.saturating_duration_since(at) >= PROBE_INTERVAL);
        if suspect && !node.probing && probe_due {
            node.probing = true;
            acts.push((name.clone(), Act::Probe));
        }
    }
    acts
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMING: Timing = Timing {
        grace: Duration::from_secs(2),
        eviction_timeout: Duration::from_secs(60),
    };
    const LEASE: Duration = Duration::from_secs(4);

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    fn acts_of(acts: Vec<(String, Act)>) -> Vec<Act> {
        acts.into_iter().map(|(_, a)| a).collect()
    }

    /// An agent killed just after renewing: probed once the renewal is 2 s late, refused, and
    /// at once unreachable with its replaceable pods disrupted; its unique pods go only after
    /// the lease and the fencing margin; the rest after the eviction timeout.
    #[test]
    fn a_dead_agent_is_unreachable_once_its_late_lease_meets_a_refused_connection() {
        let t0 = Instant::now();
        let mut health = HashMap::from([("n1".to_string(), Health::new(t0, "1", LEASE))]);
        health
            .get_mut("n1")
            .unwrap()
            .lease_seen("2", LEASE, ms(t0, 10));
        let untainted = |_: &str| false;
        assert!(assess(&mut health, untainted, TIMING, ms(t0, 1500)).is_empty());
        let acts = acts_of(assess(&mut health, untainted, TIMING, ms(t0, 2100)));
        assert_eq!(acts, [Act::Probe]);
        assert!(
            assess(&mut health, untainted, TIMING, ms(t0, 2200)).is_empty(),
            "one probe at a time"
        );
        health.get_mut("n1").unwrap().probed(false, ms(t0, 2201));
        let acts = acts_of(assess(&mut health, untainted, TIMING, ms(t0, 2202)));
        assert!(
            matches!(&acts[..], [Act::MarkUnreachable(why), Act::DisruptPods] if why.contains("refuses connections")),
            "{acts:?}"
        );
        let tainted = |_: &str| true;
        assert!(assess(&mut health, tainted, TIMING, ms(t0, 4000)).is_empty());
        // Renewed at 10 ms: the agent fenced itself by 4.01 s, the margin ends at 5.01 s.
        assert!(assess(&mut health, tainted, TIMING, ms(t0, 5000)).is_empty());
        let acts = acts_of(assess(&mut health, tainted, TIMING, ms(t0, 5010)));
        assert_eq!(acts, [Act::ReplaceUniquePods]);
        let acts = acts_of(assess(&mut health, tainted, TIMING, ms(t0, 62_202)));
        assert_eq!(acts, [Act::Evict]);
        assert!(assess(&mut health, tainted, TIMING, ms(t0, 70_000)).is_empty());

        // It comes back: ready, untainted, and a later loss is a new episode.
        health
            .get_mut("n1")
            .unwrap()
            .lease_seen("3", LEASE, ms(t0, 80_000));
        let acts = acts_of(assess(&mut health, tainted, TIMING, ms(t0, 80_001)));
        assert_eq!(acts, [Act::MarkReachable]);
        let acts = acts_of(assess(&mut health, untainted, TIMING, ms(t0, 84_001)));
        assert!(
            matches!(&acts[..], [Act::MarkUnreachable(why), Act::DisruptPods] if why.contains("expired"))
        );
    }

    /// An agent paused (SIGSTOP) or starved: its kernel still accepts connections, so its
    /// late renewal only leads to probes, and it keeps its pods while the lease stands.
    #[test]
    fn a_paused_agent_that_accepts_connections_keeps_its_lease() {
        let t0 = Instant::now();
        let mut health = HashMap::from([("n1".to_string(), Health::new(t0, "1", LEASE))]);
        let untainted = |_: &str| false;
        assert_eq!(
            acts_of(assess(&mut health, untainted, TIMING, ms(t0, 2001))),
            [Act::Probe]
        );
        health.get_mut("n1").unwrap().probed(true, ms(t0, 2002));
        assert!(assess(&mut health, untainted, TIMING, ms(t0, 2300)).is_empty());
        assert_eq!(
            acts_of(assess(&mut health, untainted, TIMING, ms(t0, 2502))),
            [Act::Probe],
            "probed again after the interval"
        );
        health.get_mut("n1").unwrap().probed(true, ms(t0, 2503));
        // It resumes and renews: nothing happened, nothing to undo.
        health
            .get_mut("n1")
            .unwrap()
            .lease_seen("2", LEASE, ms(t0, 2600));
        assert!(assess(&mut health, untainted, TIMING, ms(t0, 2601)).is_empty());
        // Never renewing again: unreachable once the lease itself runs out.
        let acts = acts_of(assess(&mut health, untainted, TIMING, ms(t0, 6601)));
        assert!(matches!(
            &acts[..],
            [Act::MarkUnreachable(_), Act::DisruptPods]
        ));
    }

    /// A controller that stood still for longer than the grace judges nobody on it; a node
    /// tainted by an earlier controller is untainted only once a renewal is seen.
    #[test]
    fn a_stalled_or_new_controller_accuses_no_node() {
        let t0 = Instant::now();
        let mut health = HashMap::from([("n1".to_string(), Health::new(t0, "1", LEASE))]);
        for node in health.values_mut() {
            node.forgive(ms(t0, 10_000));
        }
        assert!(assess(&mut health, |_| false, TIMING, ms(t0, 10_001)).is_empty());
        assert!(
            assess(&mut health, |_| true, TIMING, ms(t0, 10_002)).is_empty(),
            "no renewal seen yet: the taint stays"
        );
        health
            .get_mut("n1")
            .unwrap()
            .lease_seen("2", LEASE, ms(t0, 10_500));
        assert_eq!(
            acts_of(assess(&mut health, |_| true, TIMING, ms(t0, 10_501))),
            [Act::MarkReachable]
        );
    }

    #[test]
    fn absurd_durations_do_not_panic() {
        let t0 = Instant::now();
        let mut health = HashMap::from([("n1".to_string(), Health::new(t0, "1", Duration::MAX))]);
        let timing = Timing {
            grace: Duration::MAX,
            eviction_timeout: Duration::MAX,
        };
        assert!(assess(&mut health, |_| false, timing, ms(t0, 1_000_000)).is_empty());
        let mut health = HashMap::from([("n1".to_string(), Health::new(t0, "1", Duration::ZERO))]);
        let acts = acts_of(assess(&mut health, |_| false, timing, ms(t0, 1)));
        assert!(
            matches!(&acts[..], [Act::MarkUnreachable(_), Act::DisruptPods]),
            "{acts:?}"
        );
    }
}
