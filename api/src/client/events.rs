//! Recording Events: what the scheduler, controllers and agents did to an object, as
//! `kubectl describe` and `kubectl get events` show it. Recording is best effort: a failure to
//! record is logged, never returned.
//!
//! Like client-go's recorder, recording never waits for the write: each recorder queues its
//! events for one writer task of its own, which writes them one at a time in the order they
//! were recorded ([`QUEUED`] may wait; beyond that they are dropped and counted, as
//! client-go's broadcaster drops when its queue is full). The work an event reports on does
//! not wait for the event, and a burst of a thousand events is written by one writer beside
//! that work instead of by a thousand requests competing with it. The writer keeps a pace
//! ([`Pace`]: 50 events a second after a burst of 100, the kubelet's `eventRecordQPS` and
//! `eventBurst`), so that a node losing a thousand pods spends its CPU on replacing them, and
//! their events follow. Each recorder also drops what is spam ([`SpamFilter`]): a source may
//! record 25 events about one object at once, then one more every 5 minutes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{Metadata, Resource};

use tokio::sync::mpsc;

use super::Client;
use crate::api::time;

/// How many recorded events may wait for a recorder's writer (client-go's broadcaster queues
/// 1,000 too).
pub const QUEUED: usize = 1000;

/// How fast a recorder writes its events, unless told otherwise ([`Recorder::paced`]).
pub const DEFAULT_PACE: Pace = Pace {
    per_second: 50.0,
    burst: 100.0,
};

/// A token bucket: `burst` events at once, then `per_second`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pace {
    pub per_second: f64,
    pub burst: f64,
}

#[derive(Clone)]
pub struct Recorder {
    component: String,
    host: Option<String>,
    spam: Arc<SpamFilter>,
    queue: Arc<Queue>,
}

/// A recorder's events on their way to its writer.
struct Queue {
    sender: mpsc::Sender<Event>,
    /// The writer's end and its client until the first event starts the writer (a recorder
    /// may be made outside a runtime).
    idle_writer: Mutex<Option<(Client, mpsc::Receiver<Event>, Pace)>>,
    /// Events dropped since the writer last said so.
    dropped: Arc<AtomicU64>,
}

/// client-go's `EventSourceObjectSpamFilter`: a token bucket per object a recorder reports on,
/// [`SpamFilter::BURST`] events at once and one more every [`SpamFilter::REFILL`]; events
/// beyond it are dropped. A ReplicaSet creating a thousand pods records 25 `SuccessfulCreate`
/// events, not a thousand writes beside the thousand pods (each pod's own events are about
/// the pod, and pass).
#[derive(Default)]
pub struct SpamFilter {
    /// Object key -> (tokens, when counted).
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl SpamFilter {
    pub const BURST: f64 = 25.0;
    pub const REFILL: Duration = Duration::from_secs(300);
    /// How many objects are tracked at most (client-go keeps an LRU of 4,096).
    const TRACKED: usize = 4096;

    /// Whether one more event about `object` may be recorded now.
    pub fn allows(&self, object: &str, now: Instant) -> bool {
        let refilled = |(tokens, at): (f64, Instant)| {
            let earned =
                now.saturating_duration_since(at).as_secs_f64() / Self::REFILL.as_secs_f64();
            (tokens + earned).min(Self::BURST)
        };
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= Self::TRACKED && !buckets.contains_key(object) {
            // A full bucket is what an untracked object gets: forget those first.
            buckets.retain(|_, bucket| refilled(*bucket) < Self::BURST);
            if buckets.len() >= Self::TRACKED {
                buckets.clear();
            }
        }
        let bucket = buckets
            .entry(object.to_string())
            .or_insert((Self::BURST, now));
        let tokens = refilled(*bucket);
        let allowed = tokens >= 1.0;
        *bucket = (if allowed { tokens - 1.0 } else { tokens }, now);
        allowed
    }
}

impl Recorder {
    /// A recorder for `component` (`default-scheduler`, `shoal-agent`), on `host` if any.
    pub fn new(client: Client, component: &str, host: Option<&str>) -> Self {
        let (sender, receiver) = mpsc::channel(QUEUED);
        Self {
            component: component.into(),
            host: host.map(str::to_string),
            spam: Arc::default(),
            queue: Arc::new(Queue {
                sender,
                idle_writer: Mutex::new(Some((client, receiver, DEFAULT_PACE))),
                dropped: Arc::default(),
            }),
        }
    }

    /// The recorder, writing at `pace` instead of [`DEFAULT_PACE`] (before its first event).
    pub fn paced(self, pace: Pace) -> Self {
        let mut idle = (self.queue.idle_writer.lock()).unwrap_or_else(|p| p.into_inner());
        if let Some((_, _, writer_pace)) = idle.as_mut() {
            *writer_pace = pace;
        }
        drop(idle);
        self
    }

    /// Records a `Normal` event about `object`.
    pub fn normal<K>(&self, object: &K, reason: &str, message: &str)
    where
        K: Resource + Metadata<Ty = ObjectMeta>,
    {
        self.record(object, "Normal", reason, message)
    }

    /// Records a `Warning` event about `object`.
    pub fn warning<K>(&self, object: &K, reason: &str, message: &str)
    where
        K: Resource + Metadata<Ty = ObjectMeta>,
    {
        self.record(object, "Warning", reason, message)
    }

    fn record<K>(&self, object: &K, type_: &str, reason: &str, message: &str)
    where
        K: Resource + Metadata<Ty = ObjectMeta>,
    {
        let meta = object.metadata();
        let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
        let name = meta.name.clone().unwrap_or_default();
        let object_key = format!(
            "{}/{}/{namespace}/{name}/{}",
            K::API_VERSION,
            K::KIND,
            meta.uid.as_deref().unwrap_or_default()
        );
        if !self.spam.allows(&object_key, Instant::now()) {
            tracing::debug!("dropping event {reason} for {}/{name}: spam", K::KIND);
            return;
        }
        let now = chrono::Utc::now();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!(
                    "{name}.{:x}",
                    now.timestamp_nanos_opt().unwrap_or_default()
                )),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some(K::API_VERSION.into()),
                kind: Some(K::KIND.into()),
                name: Some(name.clone()),
                namespace: meta.namespace.clone(),
                uid: meta.uid.clone(),
                resource_version: meta.resource_version.clone(),
                ..Default::default()
            },
            type_: Some(type_.into()),
            reason: Some(reason.into()),
            message: Some(message.into()),
            source: Some(EventSource {
                component: Some(self.component.clone()),
                host: self.host.clone(),
            }),
            first_timestamp: Some(time::time(now)),
            last_timestamp: Some(time::time(now)),
            count: Some(1),
            reporting_component: Some(self.component.clone()),
            reporting_instance: self.host.clone(),
            ..Default::default()
        };
        self.queue.push(event);
    }
}

impl Queue {
    fn push(&self, event: Event) {
        self.start_writer();
        if let Err(e) = self.sender.try_send(event) {
            let event = match e {
                mpsc::error::TrySendError::Full(event) => event,
                mpsc::error::TrySendError::Closed(event) => event,
            };
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                "dropping event {} for {}: its recorder's queue is full (or its writer gone)",
                event.reason.unwrap_or_default(),
                event.involved_object.name.unwrap_or_default()
            );
        }
    }

    /// Starts the writer on the first event, on the runtime of the code that records it.
    fn start_writer(&self) {
        let mut idle = self.idle_writer.lock().unwrap_or_else(|p| p.into_inner());
        if idle.is_none() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if let Some((client, receiver, pace)) = idle.take() {
            runtime.spawn(write_events(client, receiver, pace, self.dropped.clone()));
        }
    }
}

/// The writer of one recorder: its events one at a time, in order, at `pace`, until every
/// clone of the recorder is gone and the queue is empty.
async fn write_events(
    client: Client,
    mut queue: mpsc::Receiver<Event>,
    pace: Pace,
    dropped: Arc<AtomicU64>,
) {
    let mut bucket = Bucket::full(pace, Instant::now());
    while let Some(event) = queue.recv().await {
        let wait = bucket.take(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            tracing::warn!(
                "{lost} events were dropped: they came faster than they could be written"
            );
        }
        let namespace = event.metadata.namespace.clone().unwrap_or_default();
        // The created Event is not needed back: skip decoding it.
        if let Err(e) = client
            .api::<Event>(Some(&namespace))
            .create_quietly(&event)
            .await
        {
            tracing::debug!(
                "recording event {} for {}: {e}",
                event.reason.as_deref().unwrap_or_default(),
                event.involved_object.name.as_deref().unwrap_or_default()
            );
        }
    }
}

/// What is left of a [`Pace`] at a moment: tokens below zero are time to wait.
struct Bucket {
    pace: Pace,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(pace: Pace, now: Instant) -> Self {
        Self {
            pace,
            tokens: pace.burst,
            at: now,
        }
    }

    /// Takes a token for one write at `now`: how long to wait before writing.
    fn take(&mut self, now: Instant) -> Duration {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * self.pace.per_second;
        self.tokens = (self.tokens + earned).min(self.pace.burst) - 1.0;
        self.at = now;
        if self.tokens >= 0.0 || self.pace.per_second <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.pace.per_second)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pace_is_a_burst_then_a_rate() {
        let start = Instant::now();
        let mut bucket = Bucket::full(DEFAULT_PACE, start);
        for _ in 0..100 {
            assert_eq!(bucket.take(start), Duration::ZERO);
        }
        assert_eq!(
            bucket.take(start),
            Duration::from_millis(20),
            "one more waits 1/50 s"
        );
        assert_eq!(bucket.take(start), Duration::from_millis(40));
        // A second later, 50 tokens were earned: the two owed, then 48 free.
        let later = start + Duration::from_secs(1);
        for _ in 0..48 {
            assert_eq!(bucket.take(later), Duration::ZERO);
        }
        assert_eq!(bucket.take(later), Duration::from_millis(20));
        // An idle minute fills the bucket up to the burst, no more.
        let idle = later + Duration::from_secs(60);
        for _ in 0..100 {
            assert_eq!(bucket.take(idle), Duration::ZERO);
        }
        assert!(!bucket.take(idle).is_zero());
    }

    #[test]
    fn an_object_gets_25_events_at_once_then_one_per_5_minutes() {
        let filter = SpamFilter::default();
        let start = Instant::now();
        let allowed = (0..100).filter(|_| filter.allows("rs/web", start)).count();
        assert_eq!(allowed, 25);
        assert!(
            filter.allows("rs/other", start),
            "each object has its own bucket"
        );
        assert!(!filter.allows("rs/web", start + Duration::from_secs(299)));
        let later = start + Duration::from_secs(600);
        let allowed = (0..10).filter(|_| filter.allows("rs/web", later)).count();
        assert_eq!(allowed, 2, "two refilled in 10 minutes");
    }

    #[test]
    fn tracking_stays_bounded() {
        let filter = SpamFilter::default();
        let now = Instant::now();
        for i in 0..10_000 {
            assert!(filter.allows(&format!("pod/{i}"), now));
        }
        let tracked = filter.buckets.lock().unwrap().len();
        assert!(tracked <= SpamFilter::TRACKED, "{tracked} tracked");
    }
}
