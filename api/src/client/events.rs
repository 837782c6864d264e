//! Recording Events: what the scheduler, controllers and agents did to an object, as
//! `kubectl describe` and `kubectl get events` show it. Recording is best effort: a failure to
//! record is logged, never returned.

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
}

impl Recorder {
    /// A recorder for `component` (`default-scheduler`, `shoal-agent`), on `host` if any.
    pub fn new(client: Client, component: &str, host: Option<&str>) -> Self {
        Self {
            client,
            component: component.into(),
            host: host.map(str::to_string),
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
