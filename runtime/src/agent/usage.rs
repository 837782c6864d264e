//! The resources this node's pods use, for `kubectl top` and autoscaling: each pod's worker
//! registers its containers' meters ([`Usage`], counted by their instances) for the pod's
//! life; a sampler reads the CPU counters every second so a CPU rate can be given over a
//! recent window; the gateway serves the figures as JSON (`/stats/resource`, read by the API
//! server's metrics API) and as Prometheus text (kubelet's metric names, in `/metrics`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use shoal_api::api::usage::{ContainerUsage, Figures, NodeUsage, PodUsage};

use crate::engine::meter::Usage;

/// How often CPU counters are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// One container's meter and its recent CPU samples.
struct ContainerMeter {
    name: String,
    usage: Arc<Usage>,
    /// (when, cumulative CPU nanoseconds), oldest first, within the window.
    samples: Mutex<VecDeque<(Instant, u64)>>,
}

/// A pod's containers, as registered by its worker.
pub struct PodMeters {
    namespace: String,
    name: String,
    uid: String,
    containers: Vec<ContainerMeter>,
}

impl PodMeters {
    /// Meters for `containers` (name and meter), starting from zero now.
    pub fn new(
        namespace: &str,
        name: &str,
        uid: &str,
        containers: Vec<(String, Arc<Usage>)>,
    ) -> Self {
        let now = Instant::now();
        let containers = (containers.into_iter())
            .map(|(name, usage)| {
                let start = usage.cpu_nanos();
                ContainerMeter {
                    name,
                    usage,
                    samples: Mutex::new(VecDeque::from([(now, start)])),
                }
            })
            .collect();
        Self {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
            containers,
        }
    }
}

/// The meters of every pod on this node.
pub struct ResourceUsage {
    by_pod: Mutex<HashMap<String, Arc<PodMeters>>>,
    /// What the CPU rates average over.
    window: Duration,
    /// CPU of pods that are gone, so the node's counter never goes back.
    retired_cpu_nanos: AtomicU64,
}

impl ResourceUsage {
    pub fn new(window: Duration) -> Arc<Self> {
        Arc::new(Self {
            by_pod: Mutex::default(),
            window: window.max(SAMPLE_EVERY),
            retired_cpu_nanos: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<PodMeters>>> {
        self.by_pod.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pods(&self) -> Vec<Arc<PodMeters>> {
        let mut pods: Vec<_> = self.lock().values().cloned().collect();
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        pods
    }

    /// Registers a pod's meters until the returned registration is dropped.
    pub fn register(self: &Arc<Self>, meters: PodMeters) -> Registration {
        let key = format!("{}/{}", meters.namespace, meters.name);
        let meters = Arc::new(meters);
        self.lock().insert(key.clone(), meters.clone());
        Registration {
            registry: self.clone(),
            key,
            meters,
        }
    }

    /// Takes one sample of every container's CPU counter, dropping those older than the
    /// window (the oldest kept is the first at or before the window's start).
    pub fn sample(&self) {
        let now = Instant::now();
        for pod in self.pods() {
            for container in &pod.containers {
                let mut samples = lock(&container.samples);
                samples.push_back((now, container.usage.cpu_nanos()));
                while samples.len() > 2
                    && samples
                        .get(1)
                        .is_some_and(|(at, _)| now.duration_since(*at) >= self.window)
                {
                    samples.pop_front();
                }
            }
        }
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

    /// The figures now: each pod's containers and the node's totals.
    pub fn report(&self) -> NodeUsage {
        let now = Instant::now();
        let mut node = Figures::default();
        let mut pods = Vec::new();
        for pod in self.pods() {
            let mut window_seconds: f64 = 0.0;
            let containers: Vec<ContainerUsage> = (pod.containers.iter())
                .map(|container| {
                    let figures = self.figures(container, now);
                    window_seconds = window_seconds.max(figures.window_seconds);
                    ContainerUsage {
                        name: container.name.clone(),
                        usage: figures,
                    }
                })
                .collect();
            for container in &containers {
                node.cpu_nanocores = node
                    .cpu_nanocores
                    .saturating_add(container.usage.cpu_nanocores);
                node.memory_bytes = node
                    .memory_bytes
                    .saturating_add(container.usage.memory_bytes);
            }
            node.window_seconds = node.window_seconds.max(window_seconds);
            pods.push(PodUsage {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                uid: pod.uid.clone(),
                window_seconds,
                containers,
            });
        }
        if node.window_seconds == 0.0 {
            node.window_seconds = self.window.as_secs_f64();
        }
        NodeUsage {
            timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            usage: node,
            pods,
        }
    }

    /// A container's CPU rate from its oldest sample in the window to now, and its memory.
    fn figures(&self, container: &ContainerMeter, now: Instant) -> Figures {
        let cpu_now = container.usage.cpu_nanos();
        let (since, cpu_then) = lock(&container.samples)
            .iter()
            .copied()
            .find(|(at, _)| now.duration_since(*at) <= self.window + SAMPLE_EVERY)
            .unwrap_or((now, cpu_now));
        let elapsed = now.duration_since(since);
        let cpu_nanocores = if elapsed.is_zero() {
            0
        } else {
            let used = u128::from(cpu_now.saturating_sub(cpu_then));
            // nanoseconds of CPU per second of time, in billionths of a core.
            let rate = used.saturating_mul(1_000_000_000) / elapsed.as_nanos().max(1);
            u64::try_from(rate).unwrap_or(u64::MAX)
        };
        Figures {
            cpu_nanocores,
            memory_bytes: container.usage.memory_bytes(),
            window_seconds: elapsed.as_secs_f64(),
        }
    }

    /// The node's CPU counter: every live container's plus what departed pods used.
    fn node_cpu_nanos(&self) -> u64 {
        let live: u64 = (self.pods().iter())
            .flat_map(|p| p.containers.iter())
            .map(|c| c.usage.cpu_nanos())
            .fold(0, u64::saturating_add);
        live.saturating_add(self.retired_cpu_nanos.load(Ordering::Relaxed))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// A pod's place in the registry; dropping it withdraws the pod's meters.
pub struct Registration {
    registry: Arc<ResourceUsage>,
    key: String,
    meters: Arc<PodMeters>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut by_pod = self.registry.lock();
        if by_pod
            .get(&self.key)
            .is_some_and(|m| Arc::ptr_eq(m, &self.meters))
        {
            by_pod.remove(&self.key);
        }
        drop(by_pod);
        let used: u64 = (self.meters.containers.iter())
            .map(|c| c.usage.cpu_nanos())
            .fold(0, u64::saturating_add);
        self.registry
            .retired_cpu_nanos
            .fetch_add(used, Ordering::Relaxed);
    }
}

/// The figures as Prometheus metrics, with kubelet's names (`/metrics/resource`).
#[derive(Debug)]
pub struct UsageCollector(pub Arc<ResourceUsage>);

impl std::fmt::Debug for ResourceUsage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResourceUsage").finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ContainerLabels {
    namespace: String,
    pod: String,
    container: String,
}

impl Collector for UsageCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let pods = self.0.pods();
        let seconds = |nanos: u64| nanos as f64 / 1e9;
        let labels = |pod: &PodMeters, container: &ContainerMeter| ContainerLabels {
            namespace: pod.namespace.clone(),
            pod: pod.name.clone(),
            container: container.name.clone(),
        };
        let counter = ConstCounter::new(0.0f64);
        let mut family = encoder.encode_descriptor(
            "container_cpu_usage_seconds",
            "Cumulative CPU time a container's instances spent executing",
            None,
            counter.metric_type(),
        )?;
        for pod in &pods {
            for container in &pod.containers {
                let labels = labels(pod, container);
                let value = ConstCounter::new(seconds(container.usage.cpu_nanos()));
                value.encode(family.encode_family(&labels)?)?;
            }
        }
        let gauge = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "container_memory_working_set_bytes",
            "Bytes a container's live instances hold (linear memories, tables, store overhead)",
            None,
            gauge.metric_type(),
        )?;
        for pod in &pods {
            for container in &pod.containers {
                let labels = labels(pod, container);
                let bytes = i64::try_from(container.usage.memory_bytes()).unwrap_or(i64::MAX);
                ConstGauge::new(bytes).encode(family.encode_family(&labels)?)?;
            }
        }
        let total = ConstCounter::new(seconds(self.0.node_cpu_nanos()));
        total.encode(encoder.encode_descriptor(
            "node_cpu_usage_seconds",
            "Cumulative CPU time of all pods' instances on the node",
            None,
            total.metric_type(),
        )?)?;
        let memory: u64 = (pods.iter())
            .flat_map(|p| p.containers.iter())
            .map(|c| c.usage.memory_bytes())
            .fold(0, u64::saturating_add);
        let memory = ConstGauge::new(i64::try_from(memory).unwrap_or(i64::MAX));
        memory.encode(encoder.encode_descriptor(
            "node_memory_working_set_bytes",
            "Bytes all pods' live instances hold on the node",
            None,
            memory.metric_type(),
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cpu_rates_come_from_samples_and_departed_pods_stay_in_the_node_counter() {
        let registry = ResourceUsage::new(Duration::from_secs(10));
        let busy = Usage::new();
        let idle = Usage::new();
        let registration = registry.register(PodMeters::new(
            "default",
            "busy",
            "u1",
            vec![("spin".into(), busy.clone())],
        ));
        let _idle = registry.register(PodMeters::new(
            "default",
            "idle",
            "u2",
            vec![("web".into(), idle.clone())],
        ));
        // Half a core for 200 ms: 100 ms of CPU.
        busy.metered(async {
            let started = Instant::now();
            while started.elapsed() < Duration::from_millis(100) {
                std::hint::spin_loop();
            }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        registry.sample();
        let report = registry.report();
        let by_name = |name: &str| {
            report
                .pods
                .iter()
                .find(|p| p.name == name)
                .unwrap()
                .containers[0]
                .usage
        };
        let busy_cores = by_name("busy").cpu_nanocores as f64 / 1e9;
        assert!((0.2..0.9).contains(&busy_cores), "{busy_cores} cores");
        assert_eq!(by_name("idle").cpu_nanocores, 0);
        assert_eq!(report.usage.cpu_nanocores, by_name("busy").cpu_nanocores);

        let mut registry_text = prometheus_client::registry::Registry::default();
        registry_text.register_collector(Box::new(UsageCollector(registry.clone())));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry_text).unwrap();
        assert!(
            text.contains(r#"container_cpu_usage_seconds_total{namespace="default",pod="busy",container="spin"} 0.1"#),
            "{text}"
        );
        let node_line = |text: &str| {
            text.lines()
                .find(|l| l.starts_with("node_cpu_usage_seconds_total "))
                .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
                .unwrap()
        };
        let before = node_line(&text);
        drop(registration);
        let mut after = String::new();
        prometheus_client::encoding::text::encode(&mut after, &registry_text).unwrap();
        assert!(!after.contains("pod=\"busy\""), "{after}");
        assert_eq!(
            node_line(&after),
            before,
            "a departed pod's CPU stays counted"
        );
    }
}
