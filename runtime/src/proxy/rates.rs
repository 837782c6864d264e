//! Request rates: how many requests per second (and of them, how many answered with a 5xx
//! status), and how many in flight, this proxy routes to each Service and to each backend pod,
//! over a recent window. The stack's metrics layer
//! counts each Service's requests, the dispatch each pod's; a sampler reads the counters once
//! a second; the agent's gateway serves the figures (`/stats/requests`) to the API server,
//! which adds up every node's and serves them as the custom metrics API the
//! HorizontalPodAutoscaler reads.
//!
//! Counting costs a map lookup under a read lock and two atomic operations per request; a
//! Service's or pod's counter is created on its first request and dropped once it has been
//! idle for a whole window.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use shoal_api::api::request_metrics::{RequestRate, RequestReport};

/// How often counters are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// One Service's or pod's counters.
#[derive(Default)]
struct Counter {
    answered: AtomicU64,
    /// Of those answered, the ones with a 5xx status.
    errors: AtomicU64,
    in_flight: AtomicU64,
    /// (when, answered then, errors then), oldest first, within the window.
    samples: Mutex<VecDeque<(Instant, u64, u64)>>,
}

/// A request being counted: in flight until dropped; [`Counting::answered`] counts it.
pub struct Counting(Option<Arc<Counter>>);

impl Counting {
    /// Counts the request as answered with `status` (its response head is back); a 5xx
    /// status counts as an error too.
    pub fn answered(self, status: http::StatusCode) {
        if let Some(counter) = &self.0 {
            counter.answered.fetch_add(1, Ordering::Relaxed);
            if status.is_server_error() {
                counter.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for Counting {
    fn drop(&mut self) {
        if let Some(counter) = &self.0 {
            counter.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[derive(Default)]
struct Counters(RwLock<HashMap<String, Arc<Counter>>>);

impl Counters {
    fn start(&self, key: &str) -> Counting {
        let found = read(&self.0).get(key).cloned();
        let counter = match found {
            Some(counter) => counter,
            None => write(&self.0).entry(key.to_string()).or_default().clone(),
        };
        counter.in_flight.fetch_add(1, Ordering::Relaxed);
        Counting(Some(counter))
    }

    fn sample(&self, now: Instant, window: Duration) {
        let mut idle = Vec::new();
        for (key, counter) in read(&self.0).iter() {
            let answered = counter.answered.load(Ordering::Relaxed);
            let errors = counter.errors.load(Ordering::Relaxed);
            let mut samples = lock(&counter.samples);
            samples.push_back((now, answered, errors));
            while samples.len() > 2
                && samples
                    .get(1)
                    .is_some_and(|(at, _, _)| now.duration_since(*at) >= window)
            {
                samples.pop_front();
            }
            let unchanged = samples.front().is_some_and(|(at, then, _)| {
                *then == answered && now.duration_since(*at) >= window
            });
            if unchanged && counter.in_flight.load(Ordering::Relaxed) == 0 {
                idle.push(key.clone());
            }
        }
        if !idle.is_empty() {
            let mut counters = write(&self.0);
            for key in idle {
                // Not if a request started meanwhile (it holds a clone).
                if counters
                    .get(&key)
                    .is_some_and(|c| Arc::strong_count(c) == 1)
                {
                    counters.remove(&key);
                }
            }
        }
    }

    fn report(&self, now: Instant, window: Duration) -> Vec<RequestRate> {
        read(&self.0)
            .iter()
            .map(|(key, counter)| {
                let answered = counter.answered.load(Ordering::Relaxed);
                let errors = counter.errors.load(Ordering::Relaxed);
                let (since, answered_then, errors_then) = lock(&counter.samples)
                    .iter()
                    .copied()
                    .find(|(at, _, _)| now.duration_since(*at) <= window + SAMPLE_EVERY)
                    .unwrap_or((now, answered, errors));
                let elapsed = now.duration_since(since).as_secs_f64();
                let rate = |now: u64, then: u64| {
                    if elapsed > 0.0 {
                        now.saturating_sub(then) as f64 / elapsed
                    } else {
                        0.0
                    }
                };
                let (namespace, name) = key.split_once('/').unwrap_or(("", key));
                RequestRate {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    per_second: rate(answered, answered_then),
                    errors_per_second: rate(errors, errors_then),
                    in_flight: counter.in_flight.load(Ordering::Relaxed),
                }
            })
            .collect()
    }
}

/// The request counters of one proxy.
pub struct RequestRates {
    window: Duration,
    services: Counters,
    pods: Counters,
}

impl RequestRates {
    /// Counters whose rates average over `window` (at least one sample period).
    pub fn new(window: Duration) -> Self {
        Self {
            window: window.max(SAMPLE_EVERY),
            services: Counters::default(),
            pods: Counters::default(),
        }
    }

    /// Starts counting a request to Service `key` (`namespace/name`).
    pub fn service(&self, key: &str) -> Counting {
        self.services.start(key)
    }

    /// Starts counting a request to pod `key` (`namespace/name`); a request to a bare pod IP
    /// (no name) is not counted.
    pub fn pod(&self, key: &str) -> Counting {
        if key.starts_with('/') || key.ends_with('/') {
            return Counting(None);
        }
        self.pods.start(key)
    }

    /// Takes one sample of every counter.
    pub fn sample(&self) {
        let now = Instant::now();
        self.services.sample(now, self.window);
        self.pods.sample(now, self.window);
    }

    /// Samples every [`SAMPLE_EVERY`] until the task is dropped.
    pub async fn run_sampler(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(SAMPLE_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.sample();
        }
    }

    /// The figures now.
    pub fn report(&self) -> RequestReport {
        let now = Instant::now();
        RequestReport {
            timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            window_seconds: self.window.as_secs_f64(),
            services: self.services.report(now, self.window),
            pods: self.pods.report(now, self.window),
        }
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find<'a>(rates: &'a [RequestRate], name: &str) -> Option<&'a RequestRate> {
        rates.iter().find(|r| r.name == name)
    }

    #[test]
    fn rates_and_in_flight_per_service_and_pod() {
        let rates = RequestRates::new(Duration::from_secs(1));
        rates.sample();
        std::thread::sleep(Duration::from_millis(200));
        for _ in 0..10 {
            rates.service("default/web").answered(http::StatusCode::OK);
            rates.pod("default/web-1").answered(http::StatusCode::OK);
        }
        let held = rates.service("default/web");
        let refused = rates.pod("default/web-2");
        drop(refused);
        let report = rates.report();
        let web = find(&report.services, "web").unwrap();
        assert_eq!((web.namespace.as_str(), web.in_flight), ("default", 1));
        // 10 answers in about 0.2 s (the counter was created after the first sample, so its
        // rate runs from its own first sample: none yet, so 0).
        assert_eq!(web.per_second, 0.0);
        rates.sample();
        std::thread::sleep(Duration::from_millis(100));
        for status in [200, 200, 404, 502, 503] {
            let status = http::StatusCode::from_u16(status).unwrap();
            rates.service("default/web").answered(status);
        }
        let report = rates.report();
        let web = find(&report.services, "web").unwrap();
        assert!(web.per_second > 20.0 && web.per_second <= 50.0, "{web:?}");
        // Two of the five were 5xx: errors are counted at that share of the rate.
        let share = web.errors_per_second / web.per_second;
        assert!((share - 0.4).abs() < 1e-9, "{web:?}");
        assert_eq!(find(&report.pods, "web-2").unwrap().in_flight, 0);
        drop(held);
        assert_eq!(find(&rates.report().services, "web").unwrap().in_flight, 0);
        // A bare pod IP has no name: not counted.
        drop(rates.pod("default/"));
        assert!(find(&rates.report().pods, "").is_none());
    }

    #[test]
    fn idle_counters_are_dropped_after_a_window() {
        let rates = RequestRates::new(Duration::from_secs(1));
        rates.service("default/web").answered(http::StatusCode::OK);
        rates.sample();
        assert_eq!(rates.report().services.len(), 1);
        std::thread::sleep(Duration::from_millis(1100));
        rates.sample();
        assert!(rates.report().services.is_empty());
    }
}
