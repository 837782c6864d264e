//! Scoring: among the nodes a pod may go to, which one it goes to. Preferences the pod states
//! (preferred node affinity, preferred pod affinity and anti-affinity) rank first; the profile
//! breaks the remaining ties:
//! - [`Profile::Spread`] (the default): the node with the fewest pods, spreading load and
//!   failure impact;
//! - [`Profile::BinPack`] ("automated bin packing"): the node that will be most allocated
//!   (mean of its cpu, memory and pod-count fractions), so pods fill nodes one at a time and
//!   whole nodes stay free.
//!
//! A pod picks its profile with `spec.schedulerName`: `default-scheduler` (or none) uses the
//! scheduler's default profile, [`BIN_PACKING_SCHEDULER`] and [`SPREAD_SCHEDULER`] name one.

use super::Requests;

/// The `schedulerName` that selects bin packing.
pub const BIN_PACKING_SCHEDULER: &str = "shoal-bin-packing";
/// The `schedulerName` that selects spreading.
pub const SPREAD_SCHEDULER: &str = "shoal-spread";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Profile {
    #[default]
    Spread,
    BinPack,
}

/// A `--scheduler-profile` or `schedulerName` that names no profile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scheduling profile {0:?} (known: spread, bin-packing)")]
pub struct UnknownProfile(pub String);

impl std::str::FromStr for Profile {
    type Err = UnknownProfile;

    fn from_str(text: &str) -> Result<Self, UnknownProfile> {
        match text {
            "spread" => Ok(Profile::Spread),
            "bin-packing" => Ok(Profile::BinPack),
            other => Err(UnknownProfile(other.to_string())),
        }
    }
}

impl Profile {
    /// The profile for a pod's `schedulerName`, or `None` if another scheduler owns the pod.
    pub fn for_scheduler_name(name: Option<&str>, default: Profile) -> Option<Profile> {
        match name.unwrap_or("default-scheduler") {
            "" | "default-scheduler" => Some(default),
            BIN_PACKING_SCHEDULER => Some(Profile::BinPack),
            SPREAD_SCHEDULER => Some(Profile::Spread),
            _ => None,
        }
    }

    /// The node's score for a pod asking `wanted` with `used` already there out of `room`;
    /// higher is better.
    pub fn score(self, used: Requests, wanted: Requests, room: Requests) -> i64 {
        match self {
            Profile::Spread => -(used.pods as i64),
            Profile::BinPack => {
                let fraction = |used: u64, wanted: u64, room: u64| {
                    if room == 0 {
                        0.0
                    } else {
                        used.saturating_add(wanted) as f64 / room as f64
                    }
                };
                let mean = (fraction(used.cpu_millis, wanted.cpu_millis, room.cpu_millis)
                    + fraction(used.memory, wanted.memory, room.memory)
                    + fraction(used.pods, wanted.pods, room.pods))
                    / 3.0;
                (mean * 1_000_000.0) as i64
            }
        }
    }
}
