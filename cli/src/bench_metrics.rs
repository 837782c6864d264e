//! `shoal-bench metrics`: what resource metrics cost a node. An agent samples every
//! container's CPU counter once a second and builds a report (JSON) for each read of the
//! metrics API; this times both at `--pods` pods and gives their share of one core at one
//! sample and one read per second (more reads than `kubectl top` or an autoscaler make).

use std::time::{Duration, Instant};

use shoal_runtime::agent::usage::{PodMeters, ResourceUsage};
use shoal_runtime::engine::meter::Usage;

use super::Args;

pub fn metrics(args: &Args) -> anyhow::Result<()> {
    let registry = ResourceUsage::new(Duration::from_secs(10));
    let _registrations: Vec<_> = (0..args.pods)
        .map(|i| {
            registry.register(PodMeters::new(
                "bench",
                &format!("pod-{i}"),
                &format!("uid-{i}"),
                vec![("web".into(), Usage::new())],
            ))
        })
        .collect();
    // Fill each container's window of samples, as after ten seconds of running.
    for _ in 0..12 {
        registry.sample();
    }
    let rounds = 200u32;
    let started = Instant::now();
    for _ in 0..rounds {
        registry.sample();
    }
    let sample = started.elapsed() / rounds;
    let started = Instant::now();
    let mut bytes = 0;
    for _ in 0..rounds {
        bytes = serde_json::to_vec(&registry.report())?.len();
    }
    let report = started.elapsed() / rounds;
    let share = (sample + report).as_secs_f64() * 100.0;
    println!(
        "metrics, {} pods: sample {:.1} us, report {:.1} us ({} KiB JSON); at one of each per second {:.3}% of one core",
        args.pods,
        sample.as_secs_f64() * 1e6,
        report.as_secs_f64() * 1e6,
        bytes / 1024,
        share
    );
    Ok(())
}
