//! The replica calculator: how many replicas one metric asks for, from the pods' samples and
//! the target, as Kubernetes' `ReplicaCalculator` computes it. Pure: the controller gathers
//! the facts (pods, samples, requests) and this module only counts, so every rule is shown by
//! the table tests below.
//!
//! The rules, in Kubernetes' words: the proposal is `ceil(ratio * ready pods)` where `ratio`
//! is current over target, unless the ratio is within the tolerance of 1 (then nothing
//! changes). Pods being deleted or failed are ignored. Pending pods, and for CPU pods not yet
//! ready or still starting (their samples may include start-up work), are *unready*: they are
//! left out of the average, and when the others ask to scale up they count as using nothing.
//! Pods without a sample count, when the others ask to scale down, as using exactly their
//! target (100% of their request), and as using nothing on a scale-up: both damp the move.
//! A move that the damped figures would reverse does not happen.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// How far from 1 the ratio of current to target must be before the replica count changes
/// (Kubernetes' `--horizontal-pod-autoscaler-tolerance`).
pub const TOLERANCE: f64 = 0.1;
/// How long after its start a pod's CPU samples are only trusted once they were taken
/// entirely while the pod was ready (Kubernetes' `--horizontal-pod-autoscaler-cpu-initialization-period`).
pub const CPU_INITIALIZATION_PERIOD: Duration = Duration::from_secs(300);
/// A pod that turned unready within this long of its start is taken as never ready yet
/// (Kubernetes' `--horizontal-pod-autoscaler-initial-readiness-delay`).
pub const INITIAL_READINESS_DELAY: Duration = Duration::from_secs(30);

/// What the calculator needs to know about one pod the target's selector picks.
#[derive(Clone, Debug)]
pub struct PodFacts {
    pub name: String,
    /// `status.phase`.
    pub phase: String,
    /// Being deleted.
    pub deleting: bool,
    /// `status.startTime`.
    pub started: Option<DateTime<Utc>>,
    /// The Ready condition: whether True, and when it last changed.
    pub ready: Option<(bool, DateTime<Utc>)>,
}

/// One pod's sample: the metric's value (in thousandths of its unit: millicores, millibytes,
/// milli-requests per second) over `window`, taken at `timestamp`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    pub value: i64,
    pub timestamp: DateTime<Utc>,
    pub window: Duration,
}

/// Why a metric gives no replica count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CalcError {
    #[error("no pods returned by selector while calculating replica count")]
    NoPods,
    #[error("did not receive metrics for targeted pods (pods might be unready)")]
    NoMetrics,
    #[error("missing request for {resource} in container {container} of Pod {pod}")]
    MissingRequest {
        resource: String,
        container: String,
        pod: String,
    },
    #[error("no metrics returned matched known pods")]
    NoMatchingPods,
}

/// A metric's proposal and what it measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Proposal {
    pub replicas: i32,
    /// The average per pod (thousandths of the unit), over the pods with samples.
    pub average: i64,
    /// For utilization targets: the average as a percentage of requests.
    pub utilization: Option<i32>,
}

/// How a pod counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Ignored,
    Unready,
    Missing,
    Ready,
}

/// Kubernetes' `groupPods` for one pod. Only CPU looks at readiness beyond Pending: a
/// starting pod's CPU is its start-up, not its load.
fn classify(pod: &PodFacts, sample: Option<&Sample>, cpu: bool, now: DateTime<Utc>) -> Class {
    if pod.deleting || pod.phase == "Failed" {
        return Class::Ignored;
    }
    if pod.phase == "Pending" {
        return Class::Unready;
    }
    let Some(sample) = sample else {
        return Class::Missing;
    };
    if !cpu {
        return Class::Ready;
    }
    let (Some((ready, since)), Some(started)) = (pod.ready, pod.started) else {
        return Class::Unready;
    };
    let after = |at: DateTime<Utc>, by: Duration| {
        chrono::Duration::from_std(by)
            .ok()
            .and_then(|by| at.checked_add_signed(by))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    };
    let unready = if after(started, CPU_INITIALIZATION_PERIOD) > now {
        // Starting: only a sample taken wholly while ready counts.
        !ready || sample.timestamp < after(since, sample.window)
    } else {
        // Started long ago: unready only if it has never been ready.
        !ready && after(started, INITIAL_READINESS_DELAY) > since
    };
    if unready {
        Class::Unready
    } else {
        Class::Ready
    }
}

/// The pods grouped, and the samples of those that count.
struct Grouped {
    ready: usize,
    unready: Vec<String>,
    missing: Vec<String>,
    samples: BTreeMap<String, i64>,
}

fn group(
    pods: &[PodFacts],
    samples: &BTreeMap<String, Sample>,
    cpu: bool,
    now: DateTime<Utc>,
) -> Result<Grouped, CalcError> {
    if pods.is_empty() {
        return Err(CalcError::NoPods);
    }
    let mut grouped = Grouped {
        ready: 0,
        unready: Vec::new(),
        missing: Vec::new(),
        samples: BTreeMap::new(),
    };
    for pod in pods {
        let sample = samples.get(&pod.name);
        match classify(pod, sample, cpu, now) {
            Class::Ignored => {}
            Class::Unready => grouped.unready.push(pod.name.clone()),
            Class::Missing => grouped.missing.push(pod.name.clone()),
            Class::Ready => {
                grouped.ready += 1;
                if let Some(sample) = sample {
                    grouped.samples.insert(pod.name.clone(), sample.value);
                }
            }
        }
    }
    if grouped.samples.is_empty() {
        return Err(CalcError::NoMetrics);
    }
    Ok(grouped)
}

fn ceil_replicas(ratio: f64, pods: usize) -> i32 {
    let replicas = (ratio * pods as f64).ceil();
    if replicas.is_finite() {
        replicas.clamp(0.0, f64::from(i32::MAX)) as i32
    } else {
        i32::MAX
    }
}

/// The second look when pods are missing samples or unready on a scale-up: fill in their
/// assumed values, and keep the current count if the damped ratio is within tolerance,
/// reverses the move, or would move the other way.
fn damped(
    current_replicas: i32,
    ratio: f64,
    grouped: &mut Grouped,
    assumed_when_down: impl Fn(&str) -> i64,
    ratio_of: impl Fn(&BTreeMap<String, i64>) -> Result<f64, CalcError>,
) -> Result<i32, CalcError> {
    let scale_up_with_unready = !grouped.unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && grouped.missing.is_empty() {
        if (1.0 - ratio).abs() <= TOLERANCE {
            return Ok(current_replicas);
        }
        return Ok(ceil_replicas(ratio, grouped.ready));
    }
    for pod in &grouped.missing {
        let assumed = if ratio < 1.0 {
            assumed_when_down(pod)
        } else {
            0
        };
        grouped.samples.insert(pod.clone(), assumed);
    }
    if scale_up_with_unready {
        for pod in &grouped.unready {
            grouped.samples.insert(pod.clone(), 0);
        }
    }
    let new_ratio = ratio_of(&grouped.samples)?;
    if (1.0 - new_ratio).abs() <= TOLERANCE
        || (ratio < 1.0 && new_ratio > 1.0)
        || (ratio > 1.0 && new_ratio < 1.0)
    {
        return Ok(current_replicas);
    }
    let replicas = ceil_replicas(new_ratio, grouped.samples.len());
    if (new_ratio < 1.0 && replicas > current_replicas)
        || (new_ratio > 1.0 && replicas < current_replicas)
    {
        return Ok(current_replicas);
    }
    Ok(replicas)
}

/// Replicas for a resource utilization target (`target_percent` of requests), as
/// Kubernetes' `GetResourceReplicas`. `requests` holds each pod's summed request (every
/// container must have one: the caller reports the first that lacks it).
pub fn utilization(
    current_replicas: i32,
    target_percent: i32,
    pods: &[PodFacts],
    samples: &BTreeMap<String, Sample>,
    requests: &BTreeMap<String, i64>,
    cpu: bool,
    now: DateTime<Utc>,
) -> Result<Proposal, CalcError> {
    let mut grouped = group(pods, samples, cpu, now)?;
    let target = f64::from(target_percent.max(1));
    let figures = |samples: &BTreeMap<String, i64>| -> Result<(f64, i32, i64), CalcError> {
        let (mut used, mut requested, mut counted) = (0i128, 0i128, 0i128);
        for (pod, value) in samples {
            if let Some(request) = requests.get(pod) {
                used += i128::from(*value);
                requested += i128::from(*request);
                counted += 1;
            }
        }
        if requested == 0 {
            return Err(CalcError::NoMatchingPods);
        }
        let percent = i32::try_from(used * 100 / requested).unwrap_or(i32::MAX);
        let average = i64::try_from(used / counted).unwrap_or(i64::MAX);
        Ok((f64::from(percent) / target, percent, average))
    };
    let (ratio, percent, average) = figures(&grouped.samples)?;
    // On a scale-down, a pod without a sample counts as using its whole request (or the
    // target, for targets above 100%).
    let fallback = i64::from(target_percent.max(100));
    let replicas = damped(
        current_replicas,
        ratio,
        &mut grouped,
        |pod| {
            requests
                .get(pod)
                .copied()
                .unwrap_or(0)
                .saturating_mul(fallback)
                / 100
        },
        |samples| figures(samples).map(|f| f.0),
    )?;
    Ok(Proposal {
        replicas,
        average,
        utilization: Some(percent),
    })
}

/// Replicas for an average value per pod (`target` in thousandths), as Kubernetes'
/// `GetMetricReplicas` (Pods metrics, and Resource metrics with an `AverageValue` target).
pub fn average_value(
    current_replicas: i32,
    target: i64,
    pods: &[PodFacts],
    samples: &BTreeMap<String, Sample>,
    cpu: bool,
    now: DateTime<Utc>,
) -> Result<Proposal, CalcError> {
    let mut grouped = group(pods, samples, cpu, now)?;
    let target = target.max(1);
    let average_of = |samples: &BTreeMap<String, i64>| {
        let total: i128 = samples.values().map(|v| i128::from(*v)).sum();
        let count = i128::try_from(samples.len()).unwrap_or(i128::MAX).max(1);
        i64::try_from(total / count).unwrap_or(i64::MAX)
    };
    let average = average_of(&grouped.samples);
    let ratio = average as f64 / target as f64;
    let replicas = damped(
        current_replicas,
        ratio,
        &mut grouped,
        |_| target,
        |samples| Ok(average_of(samples) as f64 / target as f64),
    )?;
    Ok(Proposal {
        replicas,
        average,
        utilization: None,
    })
}

/// Replicas for one object's value against a target value, as Kubernetes'
/// `GetObjectMetricReplicas`: the ready pods scaled by the ratio; from zero replicas, the
/// ratio itself rounded up (a workload at zero wakes when its object's metric appears).
pub fn object_value(current_replicas: i32, value: i64, target: i64, ready_pods: usize) -> i32 {
    let ratio = value as f64 / target.max(1) as f64;
    if current_replicas == 0 {
        return ceil_replicas(ratio, 1);
    }
    if (1.0 - ratio).abs() <= TOLERANCE {
        return current_replicas;
    }
    ceil_replicas(ratio, ready_pods)
}

/// Replicas for one object's value against a target per pod, as Kubernetes'
/// `GetObjectPerPodMetricReplicas`: `ceil(value / target)`, unless within tolerance of the
/// current `status_replicas`.
pub fn object_average(status_replicas: i32, value: i64, target: i64) -> i32 {
    let target = target.max(1) as f64;
    let ratio = value as f64 / (target * f64::from(status_replicas.max(0)));
    if ratio.is_finite() && (1.0 - ratio).abs() <= TOLERANCE {
        return status_replicas;
    }
    ceil_replicas(value as f64 / target, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        "2026-12-06T12:00:00Z".parse().unwrap()
    }

    fn ago(seconds: i64) -> DateTime<Utc> {
        now() - chrono::Duration::seconds(seconds)
    }

    /// A running pod, ready for an hour.
    fn running(name: &str) -> PodFacts {
        PodFacts {
            name: name.into(),
            phase: "Running".into(),
            deleting: false,
            started: Some(ago(3600)),
            ready: Some((true, ago(3590))),
        }
    }

    fn sample(value: i64) -> Sample {
        Sample {
            value,
            timestamp: now(),
            window: Duration::from_secs(15),
        }
    }

    fn samples(values: &[(&str, i64)]) -> BTreeMap<String, Sample> {
        values
            .iter()
            .map(|(p, v)| (p.to_string(), sample(*v)))
            .collect()
    }

    fn requests(pods: &[&str], each: i64) -> BTreeMap<String, i64> {
        pods.iter().map(|p| (p.to_string(), each)).collect()
    }

    fn cpu(
        current: i32,
        target: i32,
        pods: &[PodFacts],
        used: &[(&str, i64)],
    ) -> Result<Proposal, CalcError> {
        let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
        utilization(
            current,
            target,
            pods,
            &samples(used),
            &requests(&names, 1000),
            true,
            now(),
        )
    }

    /// Kubernetes' replica calculator cases: (what, current, target %, pods, samples in
    /// millicores of 1000m requests, expected replicas).
    #[test]
    fn resource_utilization_as_kubernetes_computes_it() {
        let three = [running("a"), running("b"), running("c")];
        // (name, target %, current replicas, pods, their CPU millicores, expected replicas)
        type Case<'a> = (&'a str, i32, i32, Vec<PodFacts>, Vec<(&'a str, i64)>, i32);
        let cases: &[Case] = &[
            (
                "scale up",
                3,
                30,
                three.to_vec(),
                vec![("a", 300), ("b", 500), ("c", 700)],
                5,
            ),
            (
                "scale down",
                5,
                50,
                (0..5).map(|i| running(&format!("p{i}"))).collect(),
                vec![
                    ("p0", 100),
                    ("p1", 300),
                    ("p2", 500),
                    ("p3", 250),
                    ("p4", 250),
                ],
                3,
            ),
            (
                "within tolerance",
                3,
                100,
                three.to_vec(),
                vec![("a", 1050), ("b", 1050), ("c", 1050)],
                3,
            ),
            (
                "just beyond tolerance",
                3,
                100,
                three.to_vec(),
                vec![("a", 1150), ("b", 1150), ("c", 1150)],
                4,
            ),
            // A failed or deleted pod is ignored: it neither counts nor dampens.
            (
                "ignored pods",
                2,
                50,
                vec![
                    running("a"),
                    PodFacts {
                        phase: "Failed".into(),
                        ..running("f")
                    },
                    PodFacts {
                        deleting: true,
                        ..running("d")
                    },
                ],
                vec![("a", 1000)],
                2,
            ),
            // Unready (pending) pods count as using nothing on a scale-up: 3 ready at 100%
            // of a 50% target would be 6; with the pending pod at 0, ratio 300/200=1.5 -> 6?
            // Kubernetes: new ratio (1000*3+0)/(4*1000) = 75% -> 1.5 -> ceil(1.5*4) = 6.
            (
                "scale up with a pending pod",
                4,
                50,
                vec![
                    running("a"),
                    running("b"),
                    running("c"),
                    PodFacts {
                        phase: "Pending".into(),
                        ready: None,
                        ..running("p")
                    },
                ],
                vec![("a", 1000), ("b", 1000), ("c", 1000)],
                6,
            ),
            // A pod without a sample counts as using its whole request on a scale-down: 2 at
            // 10% with a 50% target would go to 1; with the missing one at 100%, the average
            // is 40%, ratio 0.8 -> ceil(0.8 * 3) = 3: no move.
            (
                "scale down with a missing pod",
                3,
                50,
                three.to_vec(),
                vec![("a", 100), ("b", 100)],
                3,
            ),
            // ...and as using nothing on a scale-up: 2 at 150% of a 50% target would be 6;
            // with the missing one at 0 the average is 100%: ceil(2 * 3) = 6.
            (
                "scale up with a missing pod",
                3,
                50,
                three.to_vec(),
                vec![("a", 1500), ("b", 1500)],
                6,
            ),
            // If filling in a missing pod flips the direction, nothing changes.
            (
                "missing pod flips the move",
                2,
                100,
                vec![running("a"), running("b")],
                vec![("a", 1300)],
                2,
            ),
        ];
        for (what, current, target, pods, used, expected) in cases {
            let got = cpu(*current, *target, pods, used).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(got.replicas, *expected, "{what}: {got:?}");
        }
        let got = cpu(3, 30, &three, &[("a", 300), ("b", 500), ("c", 700)]).unwrap();
        assert_eq!((got.utilization, got.average), (Some(50), 500));
    }

    #[test]
    fn a_starting_pods_cpu_counts_only_once_sampled_while_ready() {
        // Started 60 s ago, ready for 5 s, 15 s window: its sample includes start-up work.
        let starting = PodFacts {
            started: Some(ago(60)),
            ready: Some((true, ago(5))),
            ..running("s")
        };
        let got = cpu(
            2,
            50,
            &[running("a"), starting.clone()],
            &[("a", 1000), ("s", 1000)],
        )
        .unwrap();
        // "s" is unready: 1 ready pod at 200% -> ratio 2; with "s" at 0 -> 1.0: no move.
        assert_eq!(got.replicas, 2);
        // Ready for longer than the window: it counts, and both at 200% give 4.
        let settled = PodFacts {
            ready: Some((true, ago(20))),
            ..starting
        };
        assert_eq!(
            cpu(2, 50, &[running("a"), settled], &[("a", 1000), ("s", 1000)])
                .unwrap()
                .replicas,
            4
        );
        // Memory does not look at readiness.
        let never_ready = PodFacts {
            ready: Some((false, ago(3599))),
            ..running("n")
        };
        let got = utilization(
            1,
            50,
            std::slice::from_ref(&never_ready),
            &samples(&[("n", 1000)]),
            &requests(&["n"], 1000),
            false,
            now(),
        )
        .unwrap();
        assert_eq!(got.replicas, 2);
        // A CPU pod that has never been ready (it turned unready right after starting) is unready.
        assert_eq!(
            cpu(1, 50, &[never_ready], &[("n", 1000)]),
            Err(CalcError::NoMetrics)
        );
    }

    #[test]
    fn errors_say_what_is_missing() {
        assert_eq!(cpu(1, 50, &[], &[]), Err(CalcError::NoPods));
        assert_eq!(
            cpu(
                1,
                50,
                &[PodFacts {
                    phase: "Pending".into(),
                    ..running("p")
                }],
                &[]
            ),
            Err(CalcError::NoMetrics)
        );
        let got = utilization(
            1,
            50,
            &[running("a")],
            &samples(&[("a", 10)]),
            &BTreeMap::new(),
            true,
            now(),
        );
        assert_eq!(got, Err(CalcError::NoMatchingPods));
    }

    #[test]
    fn average_values_and_objects() {
        let pods: Vec<PodFacts> = (0..4).map(|i| running(&format!("p{i}"))).collect();
        let rps = samples(&[
            ("p0", 20_000),
            ("p1", 20_000),
            ("p2", 20_000),
            ("p3", 20_000),
        ]);
        // 20 req/s each against 10 per pod: double.
        assert_eq!(
            average_value(4, 10_000, &pods, &rps, false, now()).unwrap(),
            Proposal {
                replicas: 8,
                average: 20_000,
                utilization: None
            }
        );
        // A missing pod on a scale-down counts at the target: 3 at 2 and 1 at 10 -> 3.5 of 10.
        let low = samples(&[("p0", 2_000), ("p1", 2_000), ("p2", 2_000)]);
        assert_eq!(
            average_value(4, 10_000, &pods, &low, false, now())
                .unwrap()
                .replicas,
            2
        );
        // Objects: 150 against 100 with 2 ready pods -> 3; from zero, the ratio itself.
        assert_eq!(object_value(2, 150_000, 100_000, 2), 3);
        assert_eq!(object_value(2, 105_000, 100_000, 2), 2);
        assert_eq!(object_value(0, 1, 100_000, 0), 1);
        assert_eq!(object_value(0, 0, 100_000, 0), 0);
        assert_eq!(object_average(2, 500_000, 100_000), 5);
        assert_eq!(object_average(5, 520_000, 100_000), 5);
        assert_eq!(object_average(0, 0, 100_000), 0);
    }
}
