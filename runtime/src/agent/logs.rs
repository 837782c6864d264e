//! The agent's container logs by pod and container: the current run's and the previous one's
//! (`logs --previous`). Entries are dropped when the pod leaves the node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::pod::log::{ContainerLog, DEFAULT_LOG_CAPACITY};

#[derive(Default)]
pub struct LogStore {
    logs: Mutex<HashMap<(String, String), Runs>>,
}

struct Runs {
    current: Arc<ContainerLog>,
    previous: Option<Arc<ContainerLog>>,
}

impl LogStore {
    /// A fresh log for a new run of `container` of pod `pod_key` (`ns/name`); the current one
    /// becomes the previous.
    pub fn start_run(&self, pod_key: &str, container: &str) -> Arc<ContainerLog> {
        let log = ContainerLog::new(DEFAULT_LOG_CAPACITY);
        let mut logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        let key = (pod_key.to_string(), container.to_string());
        let previous = logs.remove(&key).map(|runs| runs.current);
        logs.insert(
            key,
            Runs {
                current: log.clone(),
                previous,
            },
        );
        log
    }

    pub fn get(&self, pod_key: &str, container: &str, previous: bool) -> Option<Arc<ContainerLog>> {
        let logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        let runs = logs.get(&(pod_key.to_string(), container.to_string()))?;
        if previous {
            runs.previous.clone()
        } else {
            Some(runs.current.clone())
        }
    }

    pub fn forget_pod(&self, pod_key: &str) {
        self.logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(pod, _), _| pod != pod_key);
    }
}
