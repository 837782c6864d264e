//! Pod admission by policy objects. LimitRanges (`LimitRanger`): defaults and limits from
//! [`crate::api::limits`]. Priority (Kubernetes' `Priority` plugin): a new pod gets `spec.priority` (and
//! its preemption policy) from its `priorityClassName`, or from the class marked
//! `globalDefault` when it names none; naming a class that does not exist, or a priority that
//! disagrees with its class, is refused with 403. At most one class may be the global
//! default. The two system classes exist from the server's first start.

use serde_json::{json, Value};

use super::error::{ApiError, Result};
use super::ApiServer;
use crate::api::object::{self, str_at};
use crate::api::priority::{system_class, SYSTEM_CLASSES};
use crate::store::ObjectKey;

const CLASSES: &str = "priorityclasses.scheduling.k8s.io";

/// Creates the system classes that are missing.
pub async fn ensure_system_classes(server: &ApiServer) -> anyhow::Result<()> {
    let resource = crate::api::resources::lookup("scheduling.k8s.io", "v1", "priorityclasses")
        .expect("priority classes are served");
    for (name, value, description) in SYSTEM_CLASSES {
        let key = ObjectKey::new(CLASSES, "", name);
        if server.store.get(&key)?.is_none() {
            let mut class = system_class(name, value, description);
            resource.prepare_for_create(&mut class);
            match server.store.create(key, class).await {
                Ok(_) | Err(crate::store::Error::AlreadyExists(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

impl ApiServer {
    /// Gives a new pod its priority; refuses an unknown class or a contradicting priority.
    pub(super) fn admit_priority(&self, pod: &mut Value) -> Result<()> {
        let pod_name = object::name(pod).to_string();
        let forbidden =
            |why: String| ApiError::Forbidden(format!("pods {pod_name:?} is forbidden: {why}"));
        let named = str_at(pod, "/spec/priorityClassName").to_string();
        let class = if named.is_empty() {
            self.default_class()?
        } else {
            let key = ObjectKey::new(CLASSES, "", &named);
            let found = self
                .store
                .get(&key)
                .map_err(|e| ApiError::from_store(e, CLASSES, &named))?;
            Some(found.ok_or_else(|| {
                forbidden(format!("no PriorityClass with name {named} was found"))
            })?)
        };
        let (value, policy) = match &class {
            Some(class) => (
                class.get("value").and_then(Value::as_i64).unwrap_or(0),
                str_at(class, "/preemptionPolicy").to_string(),
            ),
            None => (0, "PreemptLowerPriority".to_string()),
        };
        if let Some(given) = pod.pointer("/spec/priority").and_then(Value::as_i64) {
            if given != value {
                return Err(forbidden(format!(
                    "the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"
                )));
            }
        }
        if let Some(class) = &class {
            object::set_at(pod, "/spec/priorityClassName", json!(object::name(class)));
        }
        object::set_at(pod, "/spec/priority", json!(value));
        if pod.pointer("/spec/preemptionPolicy").is_none() && !policy.is_empty() {
            object::set_at(pod, "/spec/preemptionPolicy", json!(policy));
        }
        Ok(())
    }

    /// Applies the namespace's LimitRanges to a new pod (defaults, then min, max and ratio;
    /// 403 naming the limit).
    pub(super) fn admit_limit_ranges(&self, namespace: &str, pod: &mut Value) -> Result<()> {
        let ranges = self
            .store
            .list("limitranges", Some(namespace))
            .map_err(|e| ApiError::from_store(e, "limitranges", ""))?;
        if ranges.objects.is_empty() {
            return Ok(());
        }
        crate::api::limits::admit_pod(&ranges.objects, pod).map_err(|why| {
            ApiError::Forbidden(format!("pods {:?} is forbidden: {why}", object::name(pod)))
        })
    }

    /// The class marked `globalDefault`, if any.
    fn default_class(&self) -> Result<Option<Value>> {
        let classes = self
            .store
            .list(CLASSES, None)
            .map_err(|e| ApiError::from_store(e, CLASSES, ""))?;
        Ok(classes
            .objects
            .into_iter()
            .find(|c| c.get("globalDefault") == Some(&Value::Bool(true))))
    }

    /// Refuses a second global default.
    pub(super) fn check_single_default(&self, class: &Value) -> Result<()> {
        if class.get("globalDefault") != Some(&Value::Bool(true)) {
            return Ok(());
        }
        match self.default_class()? {
            Some(other) if object::name(&other) != object::name(class) => {
                Err(ApiError::Forbidden(format!(
                    "PriorityClass {} is marked as default. Only one default can exist",
                    object::name(&other)
                )))
            }
            _ => Ok(()),
        }
    }
}
