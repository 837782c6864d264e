//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's `leaderelection`
//! does it for kube-controller-manager: with several API servers on one etcd, the scheduler
//! and the controllers run in one of them at a time.
//!
//! A candidate takes the Lease when nobody holds it or its holder has not renewed it for
//! `lease_duration`, measured on this process's clock from when it last saw the record change
//! (never by comparing another machine's timestamps, so clock skew does not matter). The
//! leader renews every `retry_period`; if it cannot renew for `renew_deadline`, or finds
//! someone else holding the Lease, it stops what it leads and becomes a candidate again.
//! Every write is a compare-and-swap on the Lease's `resourceVersion`, so two candidates never
//! both win.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use shoal_api::client::{Api, Client, Error};
use shoal_api::task::Tasks;

/// The Lease and the timings (kube-controller-manager's flags and defaults).
#[derive(Clone, Debug)]
pub struct ElectionOptions {
    pub namespace: String,
    pub lease_name: String,
    /// Who this candidate is (unique per process: host name and a random suffix).
    pub identity: String,
    /// How long a Lease not renewed still stands (`--leader-elect-lease-duration`, 15 s).
    pub lease_duration: Duration,
    /// How long a leader goes on without renewing before it steps down
    /// (`--leader-elect-renew-deadline`, 10 s).
    pub renew_deadline: Duration,
    /// How often a leader renews and a candidate tries (`--leader-elect-retry-period`, 2 s).
    pub retry_period: Duration,
}

impl ElectionOptions {
    pub fn new(identity: &str) -> Self {
        Self {
            namespace: "kube-system".into(),
            lease_name: "shoal-controller-manager".into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// The Lease record as last seen, and when this process saw it change.
struct Observed {
    holder: String,
    renew_time: Option<MicroTime>,
    at: Instant,
}

/// Campaigns for the Lease forever: while this process holds it, what `lead` started in the
/// set it is given runs; when the Lease is lost, that set is cancelled. Ends (with everything
/// it started) when `tasks` shuts down.
pub async fn run<F>(client: Client, options: ElectionOptions, tasks: Tasks, lead: F)
where
    F: Fn(&Tasks) + Send + Sync + 'static,
{
    let leases = client.api::<Lease>(Some(&options.namespace));
    let mut observed = None;
    loop {
        match try_acquire_or_renew(&leases, &options, &mut observed).await {
            Ok(true) => {}
            Ok(false) => {
                tokio::time::sleep(options.retry_period).await;
                continue;
            }
            Err(e) => {
                tracing::debug!("leader election: {e}");
                tokio::time::sleep(options.retry_period).await;
                continue;
            }
        }
        tracing::info!(
            "{} leads (Lease {}/{}): starting the scheduler and controllers",
            options.identity,
            options.namespace,
            options.lease_name
        );
        let leading = tasks.child();
        lead(&leading);
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(options.retry_period).await;
            match try_acquire_or_renew(&leases, &options, &mut observed).await {
                Ok(true) => renewed = Instant::now(),
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!("leader election: renewing: {e}");
                    if renewed.elapsed() > options.renew_deadline {
                        break;
                    }
                }
            }
        }
        tracing::warn!(
            "{} lost the Lease {}/{}: stopping the scheduler and controllers",
            options.identity,
            options.namespace,
            options.lease_name
        );
        leading.cancel();
    }
}

/// Takes or renews the Lease; `false` when someone else holds it (or won a race for it).
async fn try_acquire_or_renew(
    leases: &Api<Lease>,
    options: &ElectionOptions,
    observed: &mut Option<Observed>,
) -> Result<bool, Error> {
    let now = MicroTime(jiff::Timestamp::now());
    let duration_seconds = i32::try_from(options.lease_duration.as_secs()).unwrap_or(i32::MAX);
    let Some(mut lease) = leases.get_opt(&options.lease_name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(options.lease_name.clone()),
                namespace: Some(options.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(options.identity.clone()),
                lease_duration_seconds: Some(duration_seconds),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return won(leases.create(&lease).await);
    };
    let mut spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let changed = observed
        .as_ref()
        .is_none_or(|seen| seen.holder != holder || seen.renew_time != spec.renew_time);
    if changed {
        *observed = Some(Observed {
            holder: holder.clone(),
            renew_time: spec.renew_time.clone(),
            at: Instant::now(),
        });
    }
    let stands_for = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(options.lease_duration, Duration::from_secs);
    let seen_at = observed.as_ref().map_or_else(Instant::now, |seen| seen.at);
    let mine = holder == options.identity;
    let expired = holder.is_empty() || seen_at.elapsed() > stands_for;
    if !mine && !expired {
        return Ok(false);
    }
    if !mine {
        spec.holder_identity = Some(options.identity.clone());
        spec.acquire_time = Some(now.clone());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
    }
    spec.renew_time = Some(now);
    spec.lease_duration_seconds = Some(duration_seconds);
    lease.spec = Some(spec);
    // The read's resourceVersion makes this a compare-and-swap.
    won(leases.replace(&options.lease_name, &lease).await)
}

/// A write of the Lease: won, lost a race (409), or failed.
fn won(result: Result<Lease, Error>) -> Result<bool, Error> {
    match result {
        Ok(_) => Ok(true),
        Err(e) if e.is_conflict() => Ok(false),
        Err(e) => Err(e),
    }
}
