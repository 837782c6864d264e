//! Recording Events: what the scheduler, controllers and agents did to an object, as
//! `kubectl describe` and `kubectl get events` show it. Recording is best effort: a failure to
//! record is logged, never returned.
//!
//! Like client-go's recorder, each recorder drops what is spam ([`SpamFilter`]): a source may
//! record 25 events about one object at once, then one more every 5 minutes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{Metadata, Resource};

use super::Client;
use crate::api::time;

#[derive(Clone)]
pub struct Recorder {
    client: Client,
    component: String,
    host: Option<String>,
    spam: Arc<SpamFilter>,
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
        Self {
            client,
            component: component.into(),
            host: host.map(str::to_string),
            spam: Arc::default(),
        }
    }

    /// Records a `Normal` event about `object`.
    pub async fn normal<K>(&self, object: &K, reason: &str, message: &str)
    where
        K: Resource + Metadata<Ty = ObjectMeta>,
    {
        self.record(object, "Normal", reason, message).await
    }

    /// Records a `Warning` event about `object`.
    pub async fn warning<K>(&self, object: &K, reason: &str, message: &str)
    where
        K: Resource + Metadata<Ty = ObjectMeta>,
    {
        self.record(object, "Warning", reason, message).await
    }

    async fn record<K>(&self, object: &K, type_: &str, reason: &str, message: &str)
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
        // The created Event is not needed back: skip decoding it.
        if let Err(e) = self
            .client
            .api::<Event>(Some(&namespace))
            .create_quietly(&event)
            .await
        {
            tracing::debug!("recording event {reason} for {}/{name}: {e}", K::KIND);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
