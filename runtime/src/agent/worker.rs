//! Drives one pod on this node from Pending to its end: prepare volumes, load images (retrying
//! with back-off), run init containers in order, then the main containers with the pod's
//! restart policy, writing the pod's status after every change. The pod's life is the
//! [`Stage`] enum advanced by [`PodWorker::step`]; stopping (pod deletion) drops the running
//! guests at once: a Wasm command has no signal to catch, so there is nothing to wait for.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::core::v1::{Container as ContainerSpec, Pod};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::status::{Container, PodView};
use super::Shared;
use crate::engine::Program;
use crate::pod::run::{self, Exit, Launch};
use crate::pod::volumes;

/// Restart back-off, as the kubelet's: 10 s doubling to 5 min.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(10);
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

enum Stage {
    Prepare { attempt: u32 },
    Init { index: usize },
    Run,
    Finished,
}

/// A message from a running container task to its pod worker.
enum Event {
    Started(usize),
    Exited(usize, Exit, chrono::DateTime<Utc>, chrono::DateTime<Utc>),
    BackingOff(usize, Duration),
    Done(usize),
}

pub struct PodWorker {
    shared: Arc<Shared>,
    pod: Pod,
    view: PodView,
    stop: watch::Receiver<bool>,
    programs: Vec<Arc<Program>>,
    volumes: HashMap<String, PathBuf>,
}

impl PodWorker {
    pub fn new(shared: Arc<Shared>, pod: Pod, pod_ip: String, stop: watch::Receiver<bool>) -> Self {
        let spec = pod.spec.clone().unwrap_or_default();
        let to_record =
            |c: &ContainerSpec| Container::new(&c.name, c.image.as_deref().unwrap_or(""));
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
        };
        Self {
            shared,
            pod,
            view,
            stop,
            programs: Vec::new(),
            volumes: HashMap::new(),
        }
    }

    /// Runs the pod until it finishes or the worker is told to stop.
    pub async fn run(mut self) {
        let mut stage = Stage::Prepare { attempt: 0 };
        self.publish().await;
        loop {
            stage = match self.step(stage).await {
                Some(Stage::Finished) | None => break,
                Some(next) => next,
            };
        }
        self.publish().await;
    }

    /// Advances one stage; `None` when told to stop.
    async fn step(&mut self, stage: Stage) -> Option<Stage> {
        match stage {
            Stage::Prepare { attempt } => match self.prepare().await {
                Ok(()) => Some(Stage::Init { index: 0 }),
                Err(Fatal(reason, message)) => {
                    self.view.failed_reason = Some((reason, message));
                    Some(Stage::Finished)
                }
                Err(Retry(index, reason, message)) => {
                    let delay = backoff(attempt);
                    self.all_waiting(
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
                    .run_containers(
                        vec![(index, container, self.programs[index].clone())],
                        policy,
                        true,
                    )
                    .await?;
                if succeeded {
                    Some(Stage::Init { index: index + 1 })
                } else {
                    Some(Stage::Finished)
                }
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
                let offset = self.view.init.len();
                let containers = spec
                    .containers
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (i, c.clone(), self.programs[offset + i].clone()))
                    .collect();
                self.run_containers(containers, &policy, false).await?;
                Some(Stage::Finished)
            }
            Stage::Finished => Some(Stage::Finished),
        }
    }

    async fn prepare(&mut self) -> Result<(), PrepareError> {
        let spec = self.pod.spec.clone().unwrap_or_default();
        self.volumes = volumes::prepare(&spec, &self.pod_dir())
            .map_err(|m| Fatal("CreateContainerConfigError".into(), m))?;
        let all: Vec<&ContainerSpec> = spec
            .init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
            .collect();
        let mut programs = Vec::with_capacity(all.len());
        for (index, container) in all.iter().enumerate() {
            let image = container.image.as_deref().unwrap_or("");
            match self.shared.engine.load(image).await {
                Ok(program) => programs.push(program),
                Err(e) => return Err(Retry(index, e.reason().into(), e.to_string())),
            }
        }
        self.programs = programs;
        Ok(())
    }

    /// Runs `containers` (index within their list, spec, program) until each is done, restarting
    /// per `policy`; returns whether all succeeded, or `None` when told to stop.
    async fn run_containers(
        &mut self,
        containers: Vec<(usize, ContainerSpec, Arc<Program>)>,
        policy: &str,
        init: bool,
    ) -> Option<bool> {
        let (events, mut inbox) = mpsc::channel(64);
        let mut tasks = JoinSet::new();
        for (index, spec, program) in containers {
            let launch = match self.launch_template(&spec) {
                Ok(launch) => launch,
                Err(message) => {
                    let record = self.record(init, index);
                    record.waiting("CreateContainerConfigError", message);
                    record.done = true;
                    continue;
                }
            };
            let shared = self.shared.clone();
            let pod_key = self.pod_key();
            let (events, policy) = (events.clone(), policy.to_string());
            tasks.spawn(container_loop(
                shared,
                pod_key,
                spec.name.clone(),
                index,
                program,
                launch,
                policy,
                events,
            ));
        }
        drop(events);
        loop {
            tokio::select! {
                event = inbox.recv() => {
                    let Some(event) = event else { break };
                    self.apply(event, init);
                    while let Ok(event) = inbox.try_recv() {
                        self.apply(event, init);
                    }
                    self.publish().await;
                }
                _ = self.stop.changed() => {
                    tasks.abort_all();
                    return None;
                }
            }
        }
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
            Event::Started(i) => self.record(init, i).started(Utc::now()),
            Event::Exited(i, exit, started, finished) => {
                self.record(init, i).exited(&exit, started, finished)
            }
            Event::BackingOff(i, delay) => {
                let name = self.record(init, i).name.clone();
                let pod = self.pod.metadata.name.clone().unwrap_or_default();
                let message = format!(
                    "back-off {}s restarting failed container={name} pod={pod}",
                    delay.as_secs()
                );
                self.record(init, i).backing_off(message);
            }
            Event::Done(i) => self.record(init, i).done = true,
        }
    }

    /// argv, env and mounts for a container; the log is made fresh for each run.
    fn launch_template(&self, spec: &ContainerSpec) -> Result<LaunchTemplate, String> {
        let mut argv: Vec<String> = spec.command.clone().unwrap_or_default();
        if argv.is_empty() {
            argv.push(spec.name.clone());
        }
        argv.extend(spec.args.clone().unwrap_or_default());
        let env = super::env::container_env(&self.pod, spec, &self.view.pod_ip)?;
        let mounts = volumes::mounts(spec, &self.volumes)?;
        let memory_limit =
            super::env::memory_limit(spec)?.unwrap_or(self.shared.default_memory_limit);
        Ok(LaunchTemplate {
            argv,
            env,
            mounts,
            memory_limit,
        })
    }

    fn all_waiting(&mut self, failing: usize, reason: &str, message: String) {
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

    async fn publish(&self) {
        let name = self.pod.metadata.name.clone().unwrap_or_default();
        let namespace = self.pod.metadata.namespace.clone();
        let pods = self.shared.client.api::<Pod>(namespace.as_deref());
        let patch = serde_json::json!({"status": self.view.to_status()});
        if let Err(e) = pods.patch_status(&name, &patch).await {
            if !e.is_not_found() {
                tracing::warn!("pod {}: writing status failed: {e}", self.pod_key());
            }
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

fn backoff(attempt: u32) -> Duration {
    let grown = INITIAL_BACKOFF.saturating_mul(1u32 << attempt.min(8));
    grown.min(MAX_BACKOFF) / 10
}

pub struct LaunchTemplate {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    mounts: Vec<run::Mount>,
    memory_limit: usize,
}

#[allow(clippy::too_many_arguments)]
async fn container_loop(
    shared: Arc<Shared>,
    pod_key: String,
    name: String,
    index: usize,
    program: Arc<Program>,
    template: LaunchTemplate,
    policy: String,
    events: mpsc::Sender<Event>,
) {
    let mut delay = INITIAL_BACKOFF;
    loop {
        let log = shared.logs.start_run(&pod_key, &name);
        let launch = Launch {
            argv: template.argv.clone(),
            env: template.env.clone(),
            mounts: template.mounts.clone(),
            log,
            memory_limit: template.memory_limit,
        };
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
        delay = (delay * 2).min(MAX_BACKOFF);
    }
}
