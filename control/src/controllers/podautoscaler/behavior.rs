//! From a metric-driven recommendation to the replica count set: stabilization windows and
//! scaling policies (`spec.behavior`), and the min/max bounds, as Kubernetes'
//! `normalizeDesiredReplicasWithBehaviors`. Pure: the controller keeps one [`History`] per
//! HPA and passes the time in, so the table tests below drive every rule.
//!
//! An HPA without `behavior` follows the default rules (`autoscaling::default_scale_up` and
//! `default_scale_down`: scale up by 4 pods or 100% per 15 s, whichever is more, at once;
//! scale down to the highest recommendation of the last 300 s). Kubernetes gives such an HPA
//! an older, similar path (scale up at most to twice the replicas or 4); Shoal has one.

use std::time::{Duration, Instant};

/// How a rule set chooses among its policies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Select {
    /// The policy allowing the biggest change.
    Max,
    /// The policy allowing the smallest change.
    Min,
    /// No change in this direction.
    Disabled,
}

/// One scaling policy: at most `value` pods, or `value` percent, per `period`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub percent: bool,
    pub value: i32,
    pub period: Duration,
}

/// The rules of one direction (`behavior.scaleUp` or `behavior.scaleDown`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    pub stabilization: Duration,
    pub select: Select,
    pub policies: Vec<Policy>,
}

/// What one HPA's past tells its next decision: recent recommendations (for the
/// stabilization windows) and recent changes (for the policies' periods).
#[derive(Debug, Default)]
pub struct History {
    recommendations: Vec<(Instant, i32)>,
    scale_ups: Vec<(Instant, i32)>,
    scale_downs: Vec<(Instant, i32)>,
}

/// A condition's verdict: status, reason, message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub status: bool,
    pub reason: &'static str,
    pub message: &'static str,
}

/// The replica count to set, and what the `AbleToScale` and `ScalingLimited` conditions say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub replicas: i32,
    pub able_to_scale: Verdict,
    pub limited: Verdict,
}

/// Whether `at` lies within `window` before `now`.
fn within(at: Instant, now: Instant, window: Duration) -> bool {
    now.checked_duration_since(at)
        .is_none_or(|age| age < window)
}

impl History {
    /// Decides the count for a recommendation of `desired` while the target has `current`,
    /// and records the recommendation.
    pub fn decide(
        &mut self,
        now: Instant,
        current: i32,
        desired: i32,
        bounds: (i32, i32),
        up: &Rules,
        down: &Rules,
    ) -> Decision {
        let stabilized = self.stabilize(now, current, desired, up, down);
        let able_to_scale = if stabilized != desired {
            if desired >= current {
                Verdict {
                    status: true,
                    reason: "ScaleUpStabilized",
                    message: "recent recommendations were lower than current one, applying the lowest recent recommendation",
                }
            } else {
                Verdict {
                    status: true,
                    reason: "ScaleDownStabilized",
                    message: "recent recommendations were higher than current one, applying the highest recent recommendation",
                }
            }
        } else {
            Verdict {
                status: true,
                reason: "ReadyForNewScale",
                message: "recommended size matches current size",
            }
        };
        let (replicas, reason, message) =
            self.limit_rate(now, current, stabilized, bounds, up, down);
        Decision {
            replicas,
            able_to_scale,
            limited: Verdict {
                status: replicas != stabilized,
                reason,
                message,
            },
        }
    }

    /// Records a change the controller made, for the policies' periods.
    pub fn record_change(&mut self, now: Instant, from: i32, to: i32, up: &Rules, down: &Rules) {
        let longest = |rules: &Rules| {
            rules
                .policies
                .iter()
                .map(|p| p.period)
                .max()
                .unwrap_or_default()
        };
        let (up_period, down_period) = (longest(up), longest(down));
        self.scale_ups.retain(|(at, _)| within(*at, now, up_period));
        self.scale_downs
            .retain(|(at, _)| within(*at, now, down_period));
        if to > from {
            self.scale_ups.push((now, to.saturating_sub(from)));
        } else if to < from {
            self.scale_downs.push((now, from.saturating_sub(to)));
        }
    }

    /// The recommendation bounded by the windows: no higher than the lowest recommendation of
    /// the scale-up window, no lower than the highest of the scale-down window.
    fn stabilize(
        &mut self,
        now: Instant,
        current: i32,
        desired: i32,
        up: &Rules,
        down: &Rules,
    ) -> i32 {
        let mut up_bound = desired;
        let mut down_bound = desired;
        for &(at, recommendation) in &self.recommendations {
            if within(at, now, up.stabilization) {
                up_bound = up_bound.min(recommendation);
            }
            if within(at, now, down.stabilization) {
                down_bound = down_bound.max(recommendation);
            }
        }
        let longest = up.stabilization.max(down.stabilization);
        self.recommendations
            .retain(|(at, _)| within(*at, now, longest));
        self.recommendations.push((now, desired));
        current.max(up_bound).min(down_bound)
    }

    /// Replicas added (`ups`) or removed within `period` before `now`.
    fn changed_within(events: &[(Instant, i32)], now: Instant, period: Duration) -> i32 {
        events
            .iter()
            .filter(|(at, _)| within(*at, now, period))
            .fold(0i32, |sum, (_, change)| sum.saturating_add(*change))
    }

    /// The count each policy allows from where the period began, chosen by `select`.
    fn policy_limit(&self, now: Instant, current: i32, rules: &Rules, up: bool) -> i32 {
        let pick = |a: i32, b: i32| match (rules.select, up) {
            (Select::Max, true) | (Select::Min, false) => a.max(b),
            _ => a.min(b),
        };
        let mut result = match (rules.select, up) {
            (Select::Disabled, _) => return current,
            (Select::Max, true) | (Select::Min, false) => i32::MIN,
            _ => i32::MAX,
        };
        for policy in &rules.policies {
            let added = Self::changed_within(&self.scale_ups, now, policy.period);
            let removed = Self::changed_within(&self.scale_downs, now, policy.period);
            let start = current.saturating_sub(added).saturating_add(removed);
            let proposed = match (policy.percent, up) {
                (false, true) => start.saturating_add(policy.value),
                (false, false) => start.saturating_sub(policy.value),
                (true, true) => {
                    // Rounded up, or a small workload could never grow.
                    let grown = (f64::from(start) * (1.0 + f64::from(policy.value) / 100.0)).ceil();
                    grown.clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32
                }
                (true, false) => {
                    let shrunk = f64::from(start) * (1.0 - f64::from(policy.value) / 100.0);
                    shrunk.clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32
                }
            };
            result = pick(result, proposed);
        }
        result
    }

    /// The stabilized recommendation within the policies' rates and the HPA's bounds.
    fn limit_rate(
        &self,
        now: Instant,
        current: i32,
        desired: i32,
        (min, max): (i32, i32),
        up: &Rules,
        down: &Rules,
    ) -> (i32, &'static str, &'static str) {
        if desired > current {
            let rate = self.policy_limit(now, current, up, true).max(current);
            let (ceiling, reason, message) = if max > rate {
                (
                    rate,
                    "ScaleUpLimit",
                    "the desired replica count is increasing faster than the maximum scale rate",
                )
            } else {
                (
                    max,
                    "TooManyReplicas",
                    "the desired replica count is more than the maximum replica count",
                )
            };
            if desired > ceiling {
                return (ceiling, reason, message);
            }
        } else if desired < current {
            let rate = self.policy_limit(now, current, down, false).min(current);
            let (floor, reason, message) = if min < rate {
                (
                    rate,
                    "ScaleDownLimit",
                    "the desired replica count is decreasing faster than the maximum scale rate",
                )
            } else {
                (
                    min,
                    "TooFewReplicas",
                    "the desired replica count is less than the minimum replica count",
                )
            };
            if desired < floor {
                return (floor, reason, message);
            }
        }
        (
            desired,
            "DesiredWithinRange",
            "the desired count is within the acceptable range",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(stabilization: u64, select: Select, policies: &[(bool, i32, u64)]) -> Rules {
        Rules {
            stabilization: Duration::from_secs(stabilization),
            select,
            policies: policies
                .iter()
                .map(|&(percent, value, period)| Policy {
                    percent,
                    value,
                    period: Duration::from_secs(period),
                })
                .collect(),
        }
    }

    /// Kubernetes' defaults: up by 4 pods or 100% per 15 s (the larger), down 100% per 15 s
    /// after 300 s of stabilization.
    fn defaults() -> (Rules, Rules) {
        (
            rules(0, Select::Max, &[(false, 4, 15), (true, 100, 15)]),
            rules(300, Select::Max, &[(true, 100, 15)]),
        )
    }

    #[test]
    fn scale_up_is_limited_by_the_larger_policy_and_max() {
        let (up, down) = defaults();
        let t0 = Instant::now();
        let mut history = History::default();
        // From 1: +4 pods beats +100% -> at most 5.
        let d = history.decide(t0, 1, 20, (1, 10), &up, &down);
        assert_eq!(d.replicas, 5);
        assert_eq!(d.limited.reason, "ScaleUpLimit");
        assert!(d.limited.status);
        assert_eq!(d.able_to_scale.reason, "ReadyForNewScale");
        history.record_change(t0, 1, 5, &up, &down);
        // 5 s later the period that began at 1 still holds: 1 + 4 = 5, 1 * 2 = 2 -> no more.
        let d = history.decide(t0 + Duration::from_secs(5), 5, 20, (1, 10), &up, &down);
        assert_eq!(d.replicas, 5);
        // After the period: from 5, +100% = 10, also the max.
        let d = history.decide(t0 + Duration::from_secs(16), 5, 20, (1, 10), &up, &down);
        assert_eq!((d.replicas, d.limited.reason), (10, "TooManyReplicas"));
        // Within range.
        let d = history.decide(t0 + Duration::from_secs(17), 5, 7, (1, 10), &up, &down);
        assert_eq!(
            (d.replicas, d.limited.status, d.limited.reason),
            (7, false, "DesiredWithinRange")
        );
    }

    #[test]
    fn scale_down_waits_for_the_stabilization_window() {
        let (up, _) = defaults();
        let down = rules(10, Select::Max, &[(true, 100, 15)]);
        let t0 = Instant::now();
        let mut history = History::default();
        assert_eq!(history.decide(t0, 4, 4, (1, 10), &up, &down).replicas, 4);
        // Load gone: the highest recommendation of the last 10 s is still 4.
        let at = |s: u64| t0 + Duration::from_secs(s);
        let d = history.decide(at(3), 4, 1, (1, 10), &up, &down);
        assert_eq!(
            (d.replicas, d.able_to_scale.reason),
            (4, "ScaleDownStabilized")
        );
        assert_eq!(history.decide(at(9), 4, 2, (1, 10), &up, &down).replicas, 4);
        // 4 fell out of the window; the highest left is 2 (from 9 s).
        assert_eq!(
            history.decide(at(11), 4, 1, (1, 10), &up, &down).replicas,
            2
        );
        assert_eq!(
            history.decide(at(20), 2, 1, (1, 10), &up, &down).replicas,
            1
        );
        // Never below min.
        let d = history.decide(at(40), 3, 0, (2, 10), &up, &down);
        assert_eq!((d.replicas, d.limited.reason), (2, "TooFewReplicas"));
    }

    #[test]
    fn scale_down_policies_and_selection() {
        let up = defaults().0;
        let t0 = Instant::now();
        // At most 1 pod per 60 s, or 50%: Min picks the smaller change.
        let down = rules(0, Select::Min, &[(false, 1, 60), (true, 50, 60)]);
        let mut history = History::default();
        let d = history.decide(t0, 10, 2, (1, 20), &up, &down);
        assert_eq!((d.replicas, d.limited.reason), (9, "ScaleDownLimit"));
        history.record_change(t0, 10, 9, &up, &down);
        // Within the period the pod already removed counts: 10 - 1 = 9.
        assert_eq!(
            history
                .decide(t0 + Duration::from_secs(30), 9, 2, (1, 20), &up, &down)
                .replicas,
            9
        );
        // Max picks the larger change: 50% of 10 -> 5.
        let down = rules(0, Select::Max, &[(false, 1, 60), (true, 50, 60)]);
        let mut history = History::default();
        assert_eq!(history.decide(t0, 10, 2, (1, 20), &up, &down).replicas, 5);
        // Disabled: never down; up stays possible.
        let down = rules(0, Select::Disabled, &[(true, 100, 15)]);
        let mut history = History::default();
        assert_eq!(history.decide(t0, 10, 2, (1, 20), &up, &down).replicas, 10);
        assert_eq!(history.decide(t0, 10, 12, (1, 20), &up, &down).replicas, 12);
    }

    #[test]
    fn scale_up_stabilization_takes_the_lowest_recent_recommendation() {
        let up = rules(60, Select::Max, &[(true, 100, 15)]);
        let down = defaults().1;
        let t0 = Instant::now();
        let mut history = History::default();
        assert_eq!(history.decide(t0, 2, 2, (1, 10), &up, &down).replicas, 2);
        let d = history.decide(t0 + Duration::from_secs(10), 2, 4, (1, 10), &up, &down);
        assert_eq!(
            (d.replicas, d.able_to_scale.reason),
            (2, "ScaleUpStabilized")
        );
        let d = history.decide(t0 + Duration::from_secs(61), 2, 4, (1, 10), &up, &down);
        assert_eq!(d.replicas, 4);
    }
}
