//! httpGet probes over the pod's loopback (DESIGN.md §3.2): a startup probe gates the other
//! two; readiness drives the container's (and so the pod's) Ready condition; a liveness probe
//! that fails `failureThreshold` times in a row restarts the container. Probes are requests
//! served in-process, like any other request to the pod.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::pod::lifecycle::Probe as ProbeKind;
use crate::pod::network::{self, PodNetwork};

/// What a container's probes tell its pod worker; the index is the container's in the pod's
/// lifecycle (init containers first).
#[derive(Debug)]
pub enum ProbeReport {
    /// The readiness probe's verdict changed.
    Ready(usize, bool),
    /// The startup probe succeeded (a sidecar's turn among the init containers ends).
    StartupSucceeded(usize),
    /// A liveness or startup probe failed `failureThreshold` times; the probe stops (the
    /// container is restarted with fresh probes, or not at all).
    Failed(usize, ProbeKind, String),
}

/// Starts the container's probes as tasks in `tasks` (aborted with it); reports go to
/// `reports`.
pub(super) fn spawn<R>(
    tasks: &mut JoinSet<()>,
    spec: &Container,
    index: usize,
    network: Arc<PodNetwork>,
    reports: mpsc::Sender<R>,
) where
    R: From<ProbeReport> + Send + 'static,
{
    let (started_tx, started) = watch::channel(spec.startup_probe.is_none());
    if let Some(probe) = spec.startup_probe.clone() {
        let (spec, network, reports) = (spec.clone(), network.clone(), reports.clone());
        tasks.spawn(async move {
            match run_until_success(&probe, &spec, &network).await {
                Ok(()) => {
                    let _ = started_tx.send(true);
                    let report = ProbeReport::StartupSucceeded(index);
                    let _ = reports.send(report.into()).await;
                }
                Err(message) => {
                    let message = format!("Startup probe failed: {message}");
                    let report = ProbeReport::Failed(index, ProbeKind::Startup, message);
                    let _ = reports.send(report.into()).await;
                }
            }
        });
    }
    if let Some(probe) = spec.readiness_probe.clone() {
        let (spec, network, reports, mut started) = (
            spec.clone(),
            network.clone(),
            reports.clone(),
            started.clone(),
        );
        tasks.spawn(async move {
            let _ = started.wait_for(|s| *s).await;
            let mut checker = Checker::new(&probe);
            let mut ready = None;
            loop {
                let ok = check(&probe, &spec, &network).await.is_ok();
                if let Some(now) = checker.observe(ok) {
                    if ready != Some(now) {
                        ready = Some(now);
                        let report = ProbeReport::Ready(index, now);
                        if reports.send(report.into()).await.is_err() {
                            return;
                        }
                    }
                }
                tokio::time::sleep(checker.period).await;
            }
        });
    }
    if let Some(probe) = spec.liveness_probe.clone() {
        let (spec, mut started) = (spec.clone(), started);
        tasks.spawn(async move {
            let _ = started.wait_for(|s| *s).await;
            // Liveness needs failureThreshold failures in a row, even at first: only
            // readiness takes its first result as the verdict.
            let mut checker = Checker::new(&probe);
            checker.first = false;
            loop {
                let result = check(&probe, &spec, &network).await;
                if checker.observe(result.is_ok()) == Some(false) {
                    let message = format!(
                        "Liveness probe failed: {}",
                        result.err().map(|e| e.to_string()).unwrap_or_default()
                    );
                    let report = ProbeReport::Failed(index, ProbeKind::Liveness, message);
                    let _ = reports.send(report.into()).await;
                    return;
                }
                tokio::time::sleep(checker.period).await;
            }
        });
    }
}

/// Consecutive successes and failures against a probe's thresholds.
struct Checker {
    period: Duration,
    success_threshold: i32,
    failure_threshold: i32,
    successes: i32,
    failures: i32,
    first: bool,
}

impl Checker {
    fn new(probe: &Probe) -> Self {
        Self {
            period: Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64),
            success_threshold: probe.success_threshold.unwrap_or(1).max(1),
            failure_threshold: probe.failure_threshold.unwrap_or(3).max(1),
            successes: 0,
            failures: 0,
            first: true,
        }
    }

    /// Records one result; `Some(verdict)` when a threshold is crossed (or on the first
    /// result, so readiness is known at once).
    fn observe(&mut self, ok: bool) -> Option<bool> {
        let first = std::mem::replace(&mut self.first, false);
        if ok {
            self.failures = 0;
            self.successes += 1;
            (self.successes >= self.success_threshold).then_some(true)
        } else {
            self.successes = 0;
            self.failures += 1;
            (first || self.failures >= self.failure_threshold).then_some(false)
        }
    }
}

/// Why one probe failed, in the kubelet's words where it has them.
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error("only httpGet probes are supported")]
    NotHttpGet,
    #[error("HTTPS probes are not supported on the pod loopback")]
    Https,
    #[error("probe port {0} is out of range")]
    PortOutOfRange(i32),
    #[error("the container declares no port named {0:?}")]
    NoSuchPort(String),
    #[error("bad probe request: {0}")]
    Request(#[from] http::Error),
    #[error("HTTP probe failed with statuscode: {0}")]
    Status(u16),
    #[error("Get \"{url}\": {error}")]
    Unreachable {
        url: String,
        error: network::ServeError,
    },
    #[error("Get \"{url}\": timed out after {after:?}")]
    TimedOut { url: String, after: Duration },
}

async fn run_until_success(
    probe: &Probe,
    spec: &Container,
    network: &PodNetwork,
) -> Result<(), ProbeError> {
    tokio::time::sleep(Duration::from_secs(
        probe.initial_delay_seconds.unwrap_or(0).max(0) as u64,
    ))
    .await;
    let checker = Checker::new(probe);
    let mut failures = 0;
    loop {
        match check(probe, spec, network).await {
            Ok(()) => return Ok(()),
            Err(error) => {
                failures += 1;
                if failures >= checker.failure_threshold {
                    return Err(error);
                }
            }
        }
        tokio::time::sleep(checker.period).await;
    }
}

/// One probe: `Ok` for a 2xx or 3xx answer within `timeoutSeconds`.
async fn check(probe: &Probe, spec: &Container, network: &PodNetwork) -> Result<(), ProbeError> {
    let Some(action) = &probe.http_get else {
        return Err(ProbeError::NotHttpGet);
    };
    let port = resolve_port(action, spec)?;
    if action.scheme.as_deref().is_some_and(|s| s != "HTTP") {
        return Err(ProbeError::Https);
    }
    let path = action.path.clone().unwrap_or_else(|| "/".into());
    let url = format!("http://localhost:{port}{path}");
    let mut request = http::Request::get(&url);
    for header in action.http_headers.iter().flatten() {
        request = request.header(&header.name, &header.value);
    }
    let request = request.body(Empty::<Bytes>::new())?;
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    match tokio::time::timeout(timeout, network.serve(port, network::request(request))).await {
        Ok(Ok(response)) if response.status().as_u16() < 400 => Ok(()),
        Ok(Ok(response)) => Err(ProbeError::Status(response.status().as_u16())),
        Ok(Err(error)) => Err(ProbeError::Unreachable { url, error }),
        Err(_) => Err(ProbeError::TimedOut {
            url,
            after: timeout,
        }),
    }
}

fn resolve_port(action: &HTTPGetAction, spec: &Container) -> Result<u16, ProbeError> {
    match &action.port {
        IntOrString::Int(port) => {
            u16::try_from(*port).map_err(|_| ProbeError::PortOutOfRange(*port))
        }
        IntOrString::String(name) => spec
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| ProbeError::NoSuchPort(name.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        let probe = Probe {
            failure_threshold: Some(2),
            success_threshold: Some(1),
            ..Default::default()
        };
        let mut checker = Checker::new(&probe);
        assert_eq!(
            checker.observe(false),
            Some(false),
            "the first result decides readiness"
        );
        assert_eq!(checker.observe(true), Some(true));
        assert_eq!(checker.observe(false), None);
        assert_eq!(checker.observe(false), Some(false));
        // Liveness: no verdict from the first failure alone.
        let mut liveness = Checker::new(&probe);
        liveness.first = false;
        assert_eq!(liveness.observe(false), None);
        assert_eq!(liveness.observe(false), Some(false));
    }
}
