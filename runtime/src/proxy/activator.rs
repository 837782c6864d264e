//! Scale from zero: a request for a Service with no ready endpoints is held here, in a
//! bounded per-Service queue, while the workload behind the Service is woken (the API
//! server's `POST /shoal/v1/wake/{namespace}/{service}` sets an autoscaled workload at zero
//! to one replica), and goes on as soon as an endpoint is ready. A Service with nothing to
//! wake (no HorizontalPodAutoscaler with `minReplicas: 0` behind it) is answered 503 at once,
//! as before, and remembered for [`NOTHING_TO_WAKE_FOR`] so such requests cost no API call.
//!
//! Each held request is sent exactly once, when its Service has a ready endpoint; one that
//! waits longer than the hold timeout, or finds the queue full, gets 503 with `Retry-After`.
//! One wake call is made per Service at a time, however many requests wait.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use shoal_api::client::Client;
use wasmtime_wasi_http::WasiBody;

use super::table::{Route, Table};
use super::text_response;

/// How long a Service found to have nothing to wake is answered 503 without asking again.
pub const NOTHING_TO_WAKE_FOR: Duration = Duration::from_secs(5);
/// How often a waiting request looks again besides endpoint changes (to notice a failed wake).
const RECHECK_EVERY: Duration = Duration::from_millis(50);

/// How requests are held.
#[derive(Clone, Copy, Debug)]
pub struct HoldOptions {
    /// The longest a request waits for its Service to wake.
    pub timeout: Duration,
    /// Requests held per Service; more get 503 at once.
    pub max_held: usize,
}

impl Default for HoldOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            max_held: 1000,
        }
    }
}

#[derive(Default)]
struct ServiceState {
    held: usize,
    /// A wake call is under way or has woken something that is not ready yet.
    waking: bool,
    nothing_to_wake_until: Option<Instant>,
}

pub struct Activator {
    client: Client,
    options: HoldOptions,
    services: Arc<Mutex<HashMap<String, ServiceState>>>,
    /// Ticks when any Service's endpoints change.
    endpoints_changed: tokio::sync::watch::Receiver<u64>,
}

/// Gives a held slot back when the request stops waiting.
struct Slot<'a> {
    services: &'a Mutex<HashMap<String, ServiceState>>,
    service: &'a str,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Some(state) = lock(self.services).get_mut(self.service) {
            state.held = state.held.saturating_sub(1);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn unavailable(text: String, retry_after: Option<u64>) -> http::Response<WasiBody> {
    let mut response = text_response(http::StatusCode::SERVICE_UNAVAILABLE, text);
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, seconds.into());
    }
    response
}

impl Activator {
    pub fn new(
        client: Client,
        options: HoldOptions,
        endpoints_changed: tokio::sync::watch::Receiver<u64>,
    ) -> Self {
        Self {
            client,
            options,
            services: Arc::default(),
            endpoints_changed,
        }
    }

    /// Holds a request for `route`'s Service, which has no ready endpoint, until one is ready
    /// (its route then) or the answer the caller must get (503).
    pub async fn hold(
        &self,
        route: &Route,
        table: &RwLock<Table>,
    ) -> Result<Route, http::Response<WasiBody>> {
        let service = route.service.as_str();
        let no_endpoints = || {
            unavailable(
                format!(
                    "service {service} has no ready endpoints for port {}\n",
                    route.port
                ),
                None,
            )
        };
        let start_wake = {
            let mut services = lock(&self.services);
            let state = services.entry(service.to_string()).or_default();
            if state
                .nothing_to_wake_until
                .is_some_and(|until| Instant::now() < until)
            {
                return Err(no_endpoints());
            }
            if state.held >= self.options.max_held {
                return Err(unavailable(
                    format!(
                        "service {service}: {} requests are already waiting for it to wake\n",
                        state.held
                    ),
                    Some(1),
                ));
            }
            state.held += 1;
            let start = !state.waking;
            state.waking = true;
            start
        };
        let _slot = Slot {
            services: &self.services,
            service,
        };
        if start_wake {
            self.spawn_wake(service);
        }
        let deadline = tokio::time::Instant::now() + self.options.timeout;
        let mut changed = self.endpoints_changed.clone();
        loop {
            let current = table
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .route(service, Some(route.port));
            if let Some(current) = current.filter(|r| !r.backends.is_empty()) {
                if let Some(state) = lock(&self.services).get_mut(service) {
                    state.waking = false;
                }
                return Ok(current);
            }
            let nothing = lock(&self.services)
                .get(service)
                .and_then(|s| s.nothing_to_wake_until)
                .is_some_and(|until| Instant::now() < until);
            if nothing {
                return Err(no_endpoints());
            }
            tokio::select! {
                _ = changed.changed() => {}
                _ = tokio::time::sleep(RECHECK_EVERY) => {}
                _ = tokio::time::sleep_until(deadline) => {
                    if let Some(state) = lock(&self.services).get_mut(service) {
                        // The next request asks again.
                        state.waking = false;
                    }
                    return Err(unavailable(
                        format!(
                            "service {service} did not become ready within {:?}\n",
                            self.options.timeout
                        ),
                        Some(1),
                    ));
                }
            }
        }
    }

    /// Asks the API server to wake what is behind `service`; if nothing is, the Service's
    /// waiting requests get 503.
    fn spawn_wake(&self, service: &str) {
        let (client, services, key) = (
            self.client.clone(),
            self.services.clone(),
            service.to_string(),
        );
        tokio::spawn(async move {
            let (namespace, name) = key.split_once('/').unwrap_or(("", &key));
            let path = format!("/shoal/v1/wake/{namespace}/{name}");
            let woken = match client
                .json(http::Method::POST, &path, "application/json", None)
                .await
            {
                Ok(answer) => answer["woken"].as_array().is_some_and(|w| !w.is_empty()),
                Err(e) => {
                    tracing::warn!("cannot wake service {key}: {e}");
                    false
                }
            };
            if !woken {
                let mut services = lock(&services);
                let state = services.entry(key).or_default();
                state.waking = false;
                state.nothing_to_wake_until = Some(Instant::now() + NOTHING_TO_WAKE_FOR);
            }
        });
    }
}
