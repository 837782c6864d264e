//! Drives one pod on this node from Pending to its end: prepare volumes and environment,
//! load images (retrying with back-off), run init containers in order, then the main
//! containers: commands run to completion under the pod's restart policy, HTTP components
//! serve their ports on the pod's loopback until the pod stops. The pod's status is written
//! after every change. The pod's life is the [`Stage`] enum advanced by [`PodWorker::step`].
//!
//! Stopping (pod deletion): HTTP containers stop taking requests and finish the ones in
//! flight within the grace period; commands are dropped at once, since a Wasm command has no
//! signal to catch and nothing to wait for.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::core::v1::{Container as ContainerSpec, Pod};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::sources::Sources;
use super::status::{Container, PodView};
use super::{probe, volumes, Shared};
use crate::engine::Program;
use crate::pod::network::{HttpServer, PodNetwork};
use crate::pod::run::{self, Exit, Launch};
use crate::pod::volumes::{mounts, PreparedVolume};

/// Restart back-off, as the kubelet's: 10 s doubling to 5 min (30 times the first).
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF_FACTOR: u32 = 30;

/// What a worker is told by its supervisor: keep going (`None`) or stop within a grace period.
pub type StopSignal = watch::Receiver<Option<Duration>>;

enum Stage {
    Prepare { attempt: u32 },
    Init { index: usize },
    Run,
    Finished,
}

/// A message from a container's task (or its probes) to the pod worker.
pub(super) enum Event {
    Started(usize),
    Exited(usize, Exit, chrono::DateTime<Utc>, chrono::DateTime<Utc>),
    /// One instance of a long-running (HTTP) container ended badly; the container serves on.
    InstanceFailed(usize, Exit),
    BackingOff(usize, Duration),
    Done(usize),
    Ready(usize, bool),
    /// A liveness probe failed `failureThreshold` times.
    Unhealthy(usize, String),
}

pub struct PodWorker {
    shared: Arc<Shared>,
    pod: Pod,
    view: PodView,
    stop: StopSignal,
    programs: Vec<Arc<Program>>,
    volumes: HashMap<String, PreparedVolume>,
    env: Vec<Vec<(String, String)>>,
    network: Arc<PodNetwork>,
    /// Events to record with the next status write: (warning?, reason, message).
    events: Vec<(bool, &'static str, String)>,
}

impl PodWorker {
    pub fn new(
        shared: Arc<Shared>,
        pod: Pod,
        pod_ip: String,
        stop: StopSignal,
        network: Arc<PodNetwork>,
    ) -> Self {
        let spec = pod.spec.clone().unwrap_or_default();
        let to_record = |c: &ContainerSpec| {
            Container::new(&c.name, c.image.as_deref().unwrap_or(""))
                .with_readiness_probe(c.readiness_probe.is_some())
        };
        let view = PodView {
            init: spec
                .init_containers
                .iter()
                .flatten()
                .map(to_record)
                .collect(),
            main: spec.containers.iter().map(to_record).collect(),
            initialized: spec.init_containers.as_ref().is_none_or(Vec::is_empty),
            host_ip: shared.address.clone(),
            pod_ip,
            start_time: Utc::now(),
            failed_reason: None,
            transitions: Default::default(),
        };
        Self {
            shared,
            pod,
            view,
            stop,
            programs: Vec::new(),
            volumes: HashMap::new(),
            env: Vec::new(),
            network,
            events: Vec::new(),
        }
    }

    /// Runs the pod until it finishes, is told to stop, or outlives `activeDeadlineSeconds`.
    pub async fn run(mut self) {
        let deadline = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.active_deadline_seconds)
            .map(|s| Duration::from_secs(s.max(0) as u64));
        // No status is written until there is something to say (Running, or why not): a
        // status write is an fsync on the path from create to Running.
        let mut stage = Stage::Prepare { attempt: 0 };
        let started = tokio::time::Instant::now();
        // A deadline past what the clock can represent is no deadline.
        let deadline = deadline.and_then(|limit| Some((started.checked_add(limit)?, limit)));
        loop {
            let step = async { self.step(stage).await };
            let next = match deadline {
                Some((at, limit)) => match tokio::time::timeout_at(at, step).await {
                    Ok(next) => next,
                    Err(_) => {
                        self.deadline_exceeded(limit);
                        break;
                    }
                },
                None => step.await,
            };
            stage = match next {
                Some(Stage::Finished) => break,
                Some(next) => next,
                None => {
                    self.events
                        .push((false, "Killing", "Stopping the pod's containers".into()));
                    break;
                }
            };
        }
        self.publish().await;
    }

    fn deadline_exceeded(&mut self, limit: Duration) {
        let message = format!(
            "Pod was active on the node longer than the specified deadline ({}s)",
            limit.as_secs()
        );
        let now = Utc::now();
        for container in self.view.init.iter_mut().chain(self.view.main.iter_mut()) {
            if let super::status::State::Running { started } = container.state {
                container.exited(
                    &Exit::Killed {
                        reason: "DeadlineExceeded",
                        message: message.clone(),
                        code: 137,
                    },
                    started,
                    now,
                );
            }
            container.done = true;
        }
        self.view.failed_reason = Some(("DeadlineExceeded".into(), message.clone()));
        self.events.push((false, "DeadlineExceeded", message));
    }

    /// Advances one stage; `None` when told to stop.
    async fn step(&mut self, stage: Stage) -> Option<Stage> {
        match stage {
            Stage::Prepare { attempt } => match self.prepare().await {
                Ok(()) => Some(Stage::Init { index: 0 }),
                Err(Fatal(reason, message)) => {
                    self.events.push((true, "Failed", message.clone()));
                    for container in self.view.init.iter_mut().chain(self.view.main.iter_mut()) {
                        container.waiting(&reason, message.clone());
                        container.done = true;
                    }
                    self.view.failed_reason = Some((reason, message));
                    Some(Stage::Finished)
                }
                Err(Retry(index, reason, message)) => {
                    let delay = backoff(attempt);
                    self.events.push((true, "Failed", message.clone()));
                    self.container_waiting(
                        index,
                        &reason,
                        format!("{message} (retrying in {}s)", delay.as_secs()),
                    );
                    self.publish().await;
                    self.sleep(delay).await?;
                    Some(Stage::Prepare {
                        attempt: attempt + 1,
                    })
                }
            },
            Stage::Init { index } if index < self.view.init.len() => {
                let spec = self.pod.spec.clone().unwrap_or_default();
                let policy = match spec.restart_policy.as_deref() {
                    Some("Never") => "Never",
                    _ => "OnFailure",
                };
                let container = spec.init_containers.unwrap_or_default()[index].clone();
                let succeeded = self
                    .run_containers(vec![(index, container)], policy, true)
                    .await?;
                Some(if succeeded {
                    Stage::Init { index: index + 1 }
                } else {
                    Stage::Finished
                })
            }
            Stage::Init { .. } => {
                self.view.initialized = true;
                Some(Stage::Run)
            }
            Stage::Run => {
                let spec = self.pod.spec.clone().unwrap_or_default();
                let policy = spec
                    .restart_policy
                    .clone()
                    .unwrap_or_else(|| "Always".into());
                let containers = spec.containers.iter().cloned().enumerate().collect();
                self.run_containers(containers, &policy, false).await?;
                Some(Stage::Finished)
            }
            Stage::Finished => Some(Stage::Finished),
        }
    }

    /// Volumes, environments and programs for every container. Missing images are retried;
    /// a volume or environment that cannot be made is retried too (the ConfigMap may come).
    async fn prepare(&mut self) -> Result<(), PrepareError> {
        let spec = self.pod.spec.clone().unwrap_or_default();
        let namespace = self.pod.metadata.namespace.clone().unwrap_or_default();
        let mut sources = Sources::new(self.shared.client.clone(), &namespace);
        let pod_dir = self.pod_dir();
        let claims_dir = self.shared.claims_dir.clone();
        let host = volumes::VolumeHost {
            pod_dir: &pod_dir,
            claims_dir: &claims_dir,
            host_path_allow: &self.shared.host_path_allow,
            client: &self.shared.client,
            namespace: &namespace,
        };
        self.volumes = volumes::prepare(&spec, &host, &mut sources)
            .await
            .map_err(|m| Retry(0, "CreateContainerConfigError".into(), m))?;
        let all: Vec<ContainerSpec> = spec
            .init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
            .cloned()
            .collect();
        self.env.clear();
        for (index, container) in all.iter().enumerate() {
            let env =
                super::env::container_env(&self.pod, container, &self.view.pod_ip, &mut sources)
                    .await
                    .map_err(|m| Retry(index, "CreateContainerConfigError".into(), m))?;
            self.env.push(env);
        }
        let mut programs = Vec::with_capacity(all.len());
        for (index, container) in all.iter().enumerate() {
            let image = container.image.as_deref().unwrap_or("");
            match self.shared.engine.load(image).await {
                Ok(program) => programs.push(program),
                Err(e) => return Err(Retry(index, e.reason().into(), e.to_string())),
            }
        }
        if let Some((index, c)) = spec
            .init_containers
            .iter()
            .flatten()
            .enumerate()
            .find(|(i, _)| programs[*i].is_http())
        {
            return Err(Fatal("CreateContainerConfigError".into(), format!("init container {:?} (#{index}) is an HTTP component; init containers must be commands", c.name)));
        }
        self.programs = programs;
        Ok(())
    }

    /// Runs `containers` (index within their list, spec) until each is done, restarting
    /// commands per `policy`; returns whether all succeeded, or `None` when told to stop.
    async fn run_containers(
        &mut self,
        containers: Vec<(usize, ContainerSpec)>,
        policy: &str,
        init: bool,
    ) -> Option<bool> {
        let (events, mut inbox) = mpsc::channel(256);
        let mut tasks = JoinSet::new();
        let mut servers: Vec<(Vec<u16>, Arc<HttpServer>)> = Vec::new();
        for (index, spec) in containers {
            let offset = if init { 0 } else { self.view.init.len() };
            let program = self.programs[offset + index].clone();
            let template = match self.launch_template(&spec, offset + index) {
                Ok(template) => template,
                Err(message) => {
                    self.events.push((true, "Failed", message.clone()));
                    let record = self.record(init, index);
                    record.waiting("CreateContainerConfigError", message);
                    record.done = true;
                    continue;
                }
            };
            if let Program::Http(pre) = &*program {
                let ports = http_ports(&spec);
                if ports.is_empty() {
                    let message = format!("container {:?} is an HTTP component but declares no containerPort to serve", spec.name);
                    self.events.push((true, "Failed", message.clone()));
                    let record = self.record(init, index);
                    record.waiting("CreateContainerConfigError", message);
                    record.done = true;
                    continue;
                }
                let (failures, mut failed) = mpsc::unbounded_channel();
                let launch = template.launch(
                    self.shared.logs.start_run(&self.pod_key(), &spec.name),
                    &self.network,
                );
                let server = HttpServer::new(
                    self.shared.engine.clone(),
                    pre.clone(),
                    launch,
                    self.shared.request_deadline,
                    failures,
                );
                for port in &ports {
                    self.network.register(*port, server.clone());
                }
                servers.push((ports, server));
                let events = events.clone();
                tasks.spawn(async move {
                    let _ = events.send(Event::Started(index)).await;
                    while let Some(exit) = failed.recv().await {
                        let _ = events.send(Event::InstanceFailed(index, exit)).await;
                    }
                });
            } else {
                let shared = self.shared.clone();
                let context = (
                    self.pod_key(),
                    spec.name.clone(),
                    Arc::downgrade(&self.network),
                );
                let (events, policy) = (events.clone(), policy.to_string());
                tasks.spawn(container_loop(
                    shared, context, index, program, template, policy, events,
                ));
            }
            if !init {
                probe::spawn(
                    &mut tasks,
                    &spec,
                    index,
                    self.network.clone(),
                    events.clone(),
                );
            }
        }
        drop(events);
        let outcome = loop {
            tokio::select! {
                event = inbox.recv() => {
                    let Some(event) = event else { break Some(()) };
                    self.apply(event, init);
                    while let Ok(event) = inbox.try_recv() {
                        self.apply(event, init);
                    }
                    self.publish().await;
                    // Probes of finished commands keep running; the pod is done when every
                    // container is.
                    let list = if init { &self.view.init } else { &self.view.main };
                    if list.iter().all(|c| c.done) {
                        break Some(());
                    }
                }
                _ = self.stop.changed() => break None,
            }
        };
        if outcome.is_none() {
            let grace = (*self.stop.borrow()).unwrap_or_default();
            for (ports, _) in &servers {
                ports.iter().for_each(|p| self.network.unregister(*p));
            }
            let drained = futures::future::join_all(servers.iter().map(|(_, s)| s.drained()));
            let _ = tokio::time::timeout(grace, drained).await;
        }
        tasks.abort_all();
        outcome?;
        let list = if init {
            &self.view.init
        } else {
            &self.view.main
        };
        Some(
            list.iter()
                .all(|c| matches!(c.state, super::status::State::Terminated { code: 0, .. })),
        )
    }

    fn record(&mut self, init: bool, index: usize) -> &mut Container {
        if init {
            &mut self.view.init[index]
        } else {
            &mut self.view.main[index]
        }
    }

    fn apply(&mut self, event: Event, init: bool) {
        match event {
            Event::Started(i) => {
                let record = self.record(init, i);
                record.started(Utc::now());
                let message = format!("Started container {}", record.name);
                self.events.push((false, "Started", message));
            }
            Event::Exited(i, exit, started, finished) => {
                self.record(init, i).exited(&exit, started, finished)
            }
            Event::InstanceFailed(i, exit) => {
                let record = self.record(init, i);
                record.instance_failed(&exit);
                let message = format!(
                    "An instance of container {} failed: {}",
                    record.name,
                    describe(&exit)
                );
                self.events.push((true, "InstanceFailed", message));
            }
            Event::BackingOff(i, delay) => {
                let name = self.record(init, i).name.clone();
                let pod = self.pod.metadata.name.clone().unwrap_or_default();
                let message = format!(
                    "back-off {}s restarting failed container={name} pod={pod}",
                    delay.as_secs()
                );
                self.record(init, i).backing_off(message.clone());
                self.events.push((true, "BackOff", message));
            }
            Event::Done(i) => self.record(init, i).done = true,
            Event::Ready(i, ready) => self.record(init, i).probe_ready = Some(ready),
            Event::Unhealthy(i, message) => {
                let record = self.record(init, i);
                record.instance_failed(&Exit::Killed {
                    reason: "Error",
                    message: message.clone(),
                    code: 137,
                });
                let name = record.name.clone();
                self.events.push((true, "Unhealthy", message));
                self.events.push((
                    false,
                    "Killing",
                    format!("Container {name} failed liveness probe, will be restarted"),
                ));
            }
        }
    }

    /// argv, env, mounts and limits of a container; the log is made fresh for each run.
    fn launch_template(
        &self,
        spec: &ContainerSpec,
        index: usize,
    ) -> Result<LaunchTemplate, String> {
        let mut argv: Vec<String> = spec.command.clone().unwrap_or_default();
        if argv.is_empty() {
            argv.push(spec.name.clone());
        }
        argv.extend(spec.args.clone().unwrap_or_default());
        let mounts = mounts(spec, &self.volumes)?;
        let memory_limit =
            super::env::memory_limit(spec)?.unwrap_or(self.shared.default_memory_limit);
        Ok(LaunchTemplate {
            argv,
            env: self.env[index].clone(),
            mounts,
            memory_limit,
        })
    }

    fn container_waiting(&mut self, failing: usize, reason: &str, message: String) {
        let init_len = self.view.init.len();
        let record = if failing < init_len {
            &mut self.view.init[failing]
        } else {
            &mut self.view.main[failing - init_len]
        };
        record.waiting(reason, message);
    }

    fn pod_key(&self) -> String {
        format!(
            "{}/{}",
            self.pod.metadata.namespace.as_deref().unwrap_or(""),
            self.pod.metadata.name.as_deref().unwrap_or("")
        )
    }

    fn pod_dir(&self) -> PathBuf {
        self.shared
            .pod_dir(self.pod.metadata.uid.as_deref().unwrap_or("unknown"))
    }

    async fn sleep(&mut self, delay: Duration) -> Option<()> {
        tokio::select! {
            _ = tokio::time::sleep(delay) => Some(()),
            _ = self.stop.changed() => None,
        }
    }

    /// Writes the pod's status, then records the pending events (off the pod's critical path:
    /// the status is what clients wait for).
    async fn publish(&mut self) {
        let name = self.pod.metadata.name.clone().unwrap_or_default();
        let namespace = self.pod.metadata.namespace.clone();
        let pods = self.shared.client.api::<Pod>(namespace.as_deref());
        let patch = serde_json::json!({"status": self.view.to_status()});
        if let Err(e) = pods.patch_status(&name, &patch).await {
            if !e.is_not_found() {
                tracing::warn!("pod {}: writing status failed: {e}", self.pod_key());
            }
        }
        let events = std::mem::take(&mut self.events);
        if !events.is_empty() {
            let (recorder, pod) = (self.shared.recorder.clone(), self.pod.clone());
            tokio::spawn(async move {
                for (warning, reason, message) in events {
                    if warning {
                        recorder.warning(&pod, reason, &message).await;
                    } else {
                        recorder.normal(&pod, reason, &message).await;
                    }
                }
            });
        }
    }
}

use PrepareError::{Fatal, Retry};

enum PrepareError {
    /// The pod cannot run at all (reason, message).
    Fatal(String, String),
    /// Container `index` cannot start yet; try again later.
    Retry(usize, String, String),
}

/// Retry delay of image pulls and configuration: 1 s doubling to 30 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1)
        .saturating_mul(1u32 << attempt.min(5))
        .min(Duration::from_secs(30))
}

fn describe(exit: &Exit) -> String {
    match exit {
        Exit::Code(code) => format!("exit code {code}"),
        Exit::Killed {
            reason, message, ..
        } => format!("{reason}: {message}"),
    }
}

/// The TCP ports an HTTP container serves.
fn http_ports(spec: &ContainerSpec) -> Vec<u16> {
    spec.ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| u16::try_from(p.container_port).ok())
        .collect()
}

/// A container's instance settings, reused for every run (commands) or request (HTTP).
pub struct LaunchTemplate {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    mounts: Vec<run::Mount>,
    memory_limit: usize,
}

impl LaunchTemplate {
    fn launch(&self, log: Arc<crate::pod::log::ContainerLog>, network: &Arc<PodNetwork>) -> Launch {
        Launch {
            argv: self.argv.clone(),
            env: self.env.clone(),
            mounts: self.mounts.clone(),
            log,
            memory_limit: self.memory_limit,
            network: Arc::downgrade(network),
        }
    }
}

/// Runs a command container, restarting it per `policy` with back-off.
async fn container_loop(
    shared: Arc<Shared>,
    (pod_key, name, network): (String, String, std::sync::Weak<PodNetwork>),
    index: usize,
    program: Arc<Program>,
    template: LaunchTemplate,
    policy: String,
    events: mpsc::Sender<Event>,
) {
    let mut delay = shared.restart_backoff;
    let max = shared.restart_backoff * MAX_BACKOFF_FACTOR;
    loop {
        let Some(network) = network.upgrade() else {
            return;
        };
        let launch = template.launch(shared.logs.start_run(&pod_key, &name), &network);
        drop(network);
        let started = Utc::now();
        let _ = events.send(Event::Started(index)).await;
        let exit = run::run(&shared.engine, &program, launch).await;
        let failed = exit != Exit::Code(0);
        let _ = events
            .send(Event::Exited(index, exit, started, Utc::now()))
            .await;
        let restart = match policy.as_str() {
            "Always" => true,
            "OnFailure" => failed,
            _ => false,
        };
        if !restart {
            let _ = events.send(Event::Done(index)).await;
            return;
        }
        let _ = events.send(Event::BackingOff(index, delay)).await;
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(max);
    }
}
