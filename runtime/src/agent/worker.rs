//! Drives one pod on this node from Pending to its end by executing the decisions of the
//! pod's state machine ([`crate::pod::lifecycle`]): the worker feeds it events (a container
//! started or exited, a probe failed, a timer is due, the pod is being deleted) and carries
//! out its effects (prepare volumes, environments and images; start or kill a container;
//! record a back-off; finish). It also keeps the pod's status view and writes it when it
//! changed. No restart, deadline or probe rule lives here.
//!
//! A command container's run is one task that reports its exit; an HTTP container serves its
//! ports on the pod's loopback until it is killed. Stopping (pod deletion): HTTP containers
//! stop taking requests and finish the ones in flight within the grace period; commands are
//! dropped at once, since a Wasm command has no signal to catch and nothing to wait for.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::core::v1::{Container as ContainerSpec, Pod, PodStatus};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::launch::LaunchTemplate;
use super::probe::{self, ProbeReport};
use super::sources::Sources;
use super::status::{Container, PodView};
use super::{volumes, Shared};
use crate::engine::meter::Usage;
use crate::engine::oci::{self, PullOptions, PullPolicy};
use crate::engine::Program;
use crate::pod::lifecycle::{self, Effect, End, Lifecycle, RestartPolicy, Timing};
use crate::pod::network::{HttpServer, PodNetwork};
use crate::pod::run::{self, Exit};
use crate::pod::volumes::{mounts, PreparedVolume};
use shoal_api::api::pod_requests::is_sidecar;

/// Restart back-off, as the kubelet's: 10 s doubling to 5 min (30 times the first).
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(10);

/// What a worker is told by its supervisor: keep going (`None`) or stop within a grace period.
pub type StopSignal = watch::Receiver<Option<Duration>>;

/// What a container's tasks tell the pod worker. `run` numbers a container's runs, so that a
/// late report of a run that was killed is told apart from the current one.
#[derive(Debug)]
pub(super) enum Report {
    Started {
        index: usize,
        run: u64,
    },
    Exited {
        index: usize,
        run: u64,
        exit: Exit,
        started: chrono::DateTime<Utc>,
        finished: chrono::DateTime<Utc>,
    },
    /// One instance of a long-running (HTTP) container ended badly; the container serves on.
    InstanceFailed(usize, Exit),
    Probe(ProbeReport),
    /// Someone else wrote the pod's status (the node lifecycle controller, while this node
    /// was unreachable): write ours again, even though it has not changed.
    Republish,
}

impl From<ProbeReport> for Report {
    fn from(report: ProbeReport) -> Self {
        Report::Probe(report)
    }
}

/// A started container: its tasks (the run or the failure forwarder, and its probes; dropping
/// the set aborts them) and, for an HTTP container, the ports it serves.
struct Active {
    _tasks: JoinSet<()>,
    http: Option<(Vec<u16>, Arc<HttpServer>)>,
}

pub struct PodWorker {
    shared: Arc<Shared>,
    pod: Pod,
    view: PodView,
    stop: StopSignal,
    programs: Vec<Arc<Program>>,
    volumes: HashMap<String, PreparedVolume>,
    /// Replace the tokens of projected volumes before they expire, for as long as the
    /// worker lives.
    token_refreshers: Vec<tokio_util::task::AbortOnDropHandle<()>>,
    env: Vec<Vec<(String, String)>>,
    network: Arc<PodNetwork>,
    /// Events to record with the next status write: (warning?, reason, message).
    events: Vec<(bool, &'static str, String)>,
    /// Every container's spec, init containers first (the lifecycle's indices).
    specs: Vec<ContainerSpec>,
    active: HashMap<usize, Active>,
    /// Each container's current run number.
    runs: Vec<u64>,
    /// The container preparation last failed on (its status shows the retry).
    failing: usize,
    reports: mpsc::Sender<Report>,
    inbox: mpsc::Receiver<Report>,
    last_published: Option<PodStatus>,
    /// The pod's place among the node's sandboxes (exec), once prepared.
    sandbox: Option<super::sandboxes::Registration>,
    /// Each container's meter (by the lifecycle's index), counted by all its instances.
    meters: Vec<Arc<Usage>>,
    /// The main containers' meters in the node's figures, for the pod's life.
    _metered: super::usage::Registration,
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
        let to_record = |c: &ContainerSpec, sidecar: bool| {
            Container::new(&c.name, c.image.as_deref().unwrap_or(""))
                .with_readiness_probe(c.readiness_probe.is_some())
                .as_sidecar(sidecar)
        };
        let view = PodView {
            init: spec
                .init_containers
                .iter()
                .flatten()
                .map(|c| to_record(c, is_sidecar(c)))
                .collect(),
            main: spec
                .containers
                .iter()
                .map(|c| to_record(c, false))
                .collect(),
            initialized: spec.init_containers.as_ref().is_none_or(Vec::is_empty),
            host_ip: shared.address.clone(),
            pod_ip,
            start_time: Utc::now(),
            failed_reason: None,
            transitions: Default::default(),
        };
        let specs: Vec<ContainerSpec> = spec
            .init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
            .cloned()
            .collect();
        let (reports, inbox) = mpsc::channel(256);
        let meters: Vec<Arc<Usage>> = specs.iter().map(|_| Usage::new()).collect();
        // Main containers only, as metrics-server reports them.
        let main_meters = (specs.iter().zip(&meters))
            .skip(view.init.len())
            .map(|(spec, usage)| (spec.name.clone(), usage.clone()))
            .collect();
        let metadata = &pod.metadata;
        let _metered = shared.usage.register(super::usage::PodMeters::new(
            metadata.namespace.as_deref().unwrap_or(""),
            metadata.name.as_deref().unwrap_or(""),
            metadata.uid.as_deref().unwrap_or(""),
            main_meters,
        ));
        Self {
            meters,
            _metered,
            shared,
            pod,
            view,
            stop,
            programs: Vec::new(),
            volumes: HashMap::new(),
            token_refreshers: Vec::new(),
            env: Vec::new(),
            runs: vec![0; specs.len()],
            specs,
            active: HashMap::new(),
            failing: 0,
            reports,
            inbox,
            last_published: None,
            network,
            events: Vec::new(),
            sandbox: None,
        }
    }

    /// Where the worker's reports go: the supervisor sends [`Report::Republish`] there.
    pub(super) fn reports(&self) -> mpsc::Sender<Report> {
        self.reports.clone()
    }

    /// Runs the pod until it finishes or is told to stop.
    ///
    /// The worker lives in one box for the pod's life and the run's future holds only that
    /// pointer and the machine: at 10,000 idle pods on a node every byte of a waiting pod's
    /// future counts (an `async fn run(self)` keeps two copies of the worker, ~6 KiB).
    pub fn run(self) -> impl std::future::Future<Output = ()> + Send + 'static {
        Box::new(self).drive()
    }

    async fn drive(mut self: Box<Self>) {
        let spec = self.pod.spec.as_ref();
        let restart_policy = spec.and_then(|s| s.restart_policy.clone());
        let active_deadline_seconds = spec.and_then(|s| s.active_deadline_seconds);
        let policy = match RestartPolicy::parse(restart_policy.as_deref()) {
            Ok(policy) => policy,
            Err(e) => {
                // Validation refuses it; a pod stored before that rule still gets a reason.
                self.view.failed_reason = Some(("InvalidRestartPolicy".into(), e.to_string()));
                self.publish().await;
                return;
            }
        };
        let timing = Timing {
            initial_backoff: self.shared.restart_backoff,
        };
        let mut life = Lifecycle::new(
            policy,
            timing,
            self.view.init.len(),
            self.view.main.len(),
            active_deadline_seconds,
            Instant::now().into_std(),
        );
        for (index, spec) in self.specs[..self.view.init.len()].iter().enumerate() {
            if is_sidecar(spec) {
                life = life.with_sidecar(index, spec.startup_probe.is_some());
            }
        }
        let (mut life, effects) = life.begin(Instant::now().into_std());
        let mut pending: VecDeque<Effect> = effects.into();
        let mut wake: Option<Instant> = None;
        let mut stop = self.stop.clone();
        loop {
            // Carry out what the machine decided; some effects produce the next event at once.
            let mut finished = false;
            while let Some(effect) = pending.pop_front() {
                let event = match effect {
                    Effect::Wake(at) => {
                        wake = Some(Instant::from_std(at));
                        None
                    }
                    Effect::Finish(end) => {
                        self.finish(&end).await;
                        finished = true;
                        None
                    }
                    Effect::Prepare => {
                        // Preparing may wait on images or sources: a stop or a due timer
                        // (the deadline) interrupts it.
                        let timer = sleep_until(wake);
                        // Boxed: preparing's future is large and runs once per pod.
                        let prepare = Box::pin(self.prepare());
                        tokio::select! {
                            outcome = prepare => Some(self.prepared(outcome).await),
                            _ = stop.changed() => Some(lifecycle::Event::Stop),
                            _ = timer => Some(lifecycle::Event::Tick),
                        }
                    }
                    other => self.execute(other),
                };
                if let Some(event) = event {
                    let (next, effects) = life.step(event, Instant::now().into_std());
                    life = next;
                    pending.extend(effects);
                }
            }
            // A stopped pod keeps the status it had: stopping (a deletion, or the agent
            // shutting down) is not a failure of its containers.
            if !matches!(life.stage(), lifecycle::Stage::Finished(End::Stopped)) {
                self.sync_done(&life);
            }
            self.publish().await;
            if finished {
                return;
            }
            let timer = sleep_until(wake);
            let event = tokio::select! {
                report = self.inbox.recv() => match report.and_then(|r| self.take_report(r)) {
                    Some(event) => event,
                    None => continue,
                },
                _ = timer => {
                    wake = None;
                    lifecycle::Event::Tick
                }
                _ = stop.changed() => lifecycle::Event::Stop,
            };
            let (next, effects) = life.step(event, Instant::now().into_std());
            life = next;
            pending.extend(effects);
        }
    }

    /// The outcome of preparing, as the machine's event (and the status it shows).
    async fn prepared(&mut self, outcome: Result<(), PrepareError>) -> lifecycle::Event {
        match outcome {
            Ok(()) => {
                self.register_sandbox();
                lifecycle::Event::Prepared
            }
            Err(Fatal(reason, message)) => {
                self.events.push((true, "Failed", message.clone()));
                for container in self.view.init.iter_mut().chain(self.view.main.iter_mut()) {
                    container.waiting(&reason, message.clone());
                }
                lifecycle::Event::PrepareFailed {
                    retry: false,
                    reason,
                    message,
                }
            }
            Err(Retry(index, reason, message)) => {
                self.failing = index;
                lifecycle::Event::PrepareFailed {
                    retry: true,
                    reason,
                    message,
                }
            }
        }
    }

    /// Offers the prepared pod to exec: every container whose settings can be made.
    fn register_sandbox(&mut self) {
        use super::sandboxes::{Sandbox, SandboxContainer};
        let containers = (self.specs.iter().enumerate())
            .filter_map(|(index, spec)| {
                Some(SandboxContainer {
                    name: spec.name.clone(),
                    program: self.programs.get(index)?.clone(),
                    template: self.launch_template(spec, index).ok()?,
                })
            })
            .collect();
        let sandbox = Sandbox::new(containers, self.network.clone());
        // The previous registration (a pod prepared again) is withdrawn first.
        self.sandbox = None;
        self.sandbox = Some(self.shared.sandboxes.register(self.pod_key(), sandbox));
    }

    /// Carries out one effect; returns the event it produces at once, if any.
    fn execute(&mut self, effect: Effect) -> Option<lifecycle::Event> {
        match effect {
            Effect::Start(index) => self.start(index),
            Effect::Kill { index, exit } => {
                self.kill(index);
                let (init, local) = self.locate(index);
                let record = self.record(init, local);
                let started = match record.state {
                    super::status::State::Running { started } => started,
                    _ => Utc::now(),
                };
                record.exited(&exit, started, Utc::now());
                if let Exit::Killed {
                    reason, message, ..
                } = &exit
                {
                    if *reason != "DeadlineExceeded" {
                        let name = record.name.clone();
                        self.events.push((true, "Unhealthy", message.clone()));
                        self.events.push((
                            false,
                            "Killing",
                            format!("Stopping container {name}: {message}"),
                        ));
                    }
                }
                Some(lifecycle::Event::Exited { index, exit })
            }
            Effect::BackOff { index, delay } => {
                let (init, local) = self.locate(index);
                let name = self.record(init, local).name.clone();
                let pod = self.pod.metadata.name.clone().unwrap_or_default();
                let message = format!(
                    "back-off {}s restarting failed container={name} pod={pod}",
                    delay.as_secs()
                );
                self.record(init, local).backing_off(message.clone());
                self.events.push((true, "BackOff", message));
                None
            }
            Effect::RetryPrepare {
                delay,
                reason,
                message,
            } => {
                self.events.push((true, "Failed", message.clone()));
                // As the kubelet: the first failed pull shows ErrImagePull, the waits between
                // later ones ImagePullBackOff.
                let pulling_again = reason == "ErrImagePull" && {
                    let (init, local) = self.locate(self.failing);
                    matches!(&self.record(init, local).state,
                        super::status::State::Waiting { reason, .. }
                            if reason == "ErrImagePull" || reason == "ImagePullBackOff")
                };
                let reason = if pulling_again {
                    let (init, local) = self.locate(self.failing);
                    let image = self.record(init, local).image.clone();
                    self.events.push((
                        true,
                        "BackOff",
                        format!("Back-off pulling image {image:?}"),
                    ));
                    "ImagePullBackOff".to_string()
                } else {
                    reason
                };
                self.container_waiting(
                    self.failing,
                    &reason,
                    format!("{message} (retrying in {}s)", delay.as_secs()),
                );
                None
            }
            Effect::Initialized => {
                self.view.initialized = true;
                None
            }
            // Handled by the loop.
            Effect::Prepare | Effect::Wake(_) | Effect::Finish(_) => None,
        }
    }

    /// Starts container `index`: runs a command, or serves an HTTP component, with its probes.
    fn start(&mut self, index: usize) -> Option<lifecycle::Event> {
        let (init, _) = self.locate(index);
        let spec = self.specs[index].clone();
        let program = self.programs[index].clone();
        let template = match self.launch_template(&spec, index) {
            Ok(template) => template,
            Err(e) => return Some(self.cannot_start(index, e.to_string())),
        };
        self.runs[index] = self.runs[index].wrapping_add(1);
        let run = self.runs[index];
        let mut tasks = JoinSet::new();
        let reports = self.reports.clone();
        let mut http = None;
        if let Program::Http(pre) = &*program {
            let ports = http_ports(&spec);
            if ports.is_empty() {
                let message = format!(
                    "container {:?} is an HTTP component but declares no containerPort to serve",
                    spec.name
                );
                return Some(self.cannot_start(index, message));
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
                self.shared.server_limits,
                failures,
            );
            for port in &ports {
                self.network.register(*port, server.clone());
            }
            http = Some((ports, server));
            let reports = reports.clone();
            tasks.spawn(async move {
                let _ = reports.send(Report::Started { index, run }).await;
                while let Some(exit) = failed.recv().await {
                    let _ = reports.send(Report::InstanceFailed(index, exit)).await;
                }
            });
        } else {
            let (shared, network) = (self.shared.clone(), self.network.clone());
            let log = shared.logs.start_run(&self.pod_key(), &spec.name);
            let reports = reports.clone();
            tasks.spawn(async move {
                let launch = template.launch(log, &network);
                drop(network);
                let started = Utc::now();
                let _ = reports.send(Report::Started { index, run }).await;
                let exit = run::run(&shared.engine, &program, launch).await;
                let finished = Utc::now();
                let _ = reports
                    .send(Report::Exited {
                        index,
                        run,
                        exit,
                        started,
                        finished,
                    })
                    .await;
            });
        }
        // Regular init containers have no probes (validation refuses them); sidecars do.
        if !init || is_sidecar(&spec) {
            probe::spawn(&mut tasks, &spec, index, self.network.clone(), reports);
        }
        self.active.insert(
            index,
            Active {
                _tasks: tasks,
                http,
            },
        );
        None
    }

    /// A container whose configuration cannot work: shown waiting with the reason, and done.
    fn cannot_start(&mut self, index: usize, message: String) -> lifecycle::Event {
        self.events.push((true, "Failed", message.clone()));
        let (init, local) = self.locate(index);
        self.record(init, local)
            .waiting("CreateContainerConfigError", message);
        lifecycle::Event::CannotStart(index)
    }

    /// Stops container `index` at once: its run is dropped, its ports unregistered.
    fn kill(&mut self, index: usize) {
        if let Some(active) = self.active.remove(&index) {
            if let Some((ports, _)) = &active.http {
                ports.iter().for_each(|p| self.network.unregister(*p));
            }
        }
    }

    /// The pod is over: stop what still runs (draining HTTP containers within the grace
    /// period when the pod is deleted) and record why it failed, if it did.
    ///
    /// As the kubelet, main containers stop first and sidecars after them, the last started
    /// first, so a main container finishing its requests can still call its sidecars.
    async fn finish(&mut self, end: &End) {
        let mut active: Vec<(usize, Active)> = self.active.drain().collect();
        let init_len = self.view.init.len();
        // Main containers (index >= init_len) first, then sidecars from the last to the first.
        active.sort_by_key(|(index, _)| (*index < init_len, std::cmp::Reverse(*index)));
        match end {
            End::Stopped => {
                self.events
                    .push((false, "Killing", "Stopping the pod's containers".into()));
                let grace = (*self.stop.borrow()).unwrap_or_default();
                let deadline = Instant::now() + grace;
                let mut rest = active.as_slice();
                while let Some(((first, _), _)) = rest.split_first() {
                    // One step: every main container together, or one sidecar.
                    let step_len = if *first >= init_len {
                        rest.iter().take_while(|(i, _)| *i >= init_len).count()
                    } else {
                        1
                    };
                    let (step, later) = rest.split_at(step_len);
                    let servers = self.unregister(step);
                    let drained = futures::future::join_all(servers.iter().map(|s| s.drained()));
                    let _ = tokio::time::timeout_at(deadline, drained).await;
                    rest = later;
                }
            }
            End::PodFailed { reason, message } => {
                self.unregister(&active);
                self.view.failed_reason = Some((reason.clone(), message.clone()));
                let event = if reason == "DeadlineExceeded" {
                    (false, "DeadlineExceeded", message.clone())
                } else {
                    (true, "Failed", message.clone())
                };
                self.events.push(event);
            }
            End::Succeeded | End::ContainersFailed => {
                // What still runs is a sidecar: stopped because the main containers ended,
                // its normal end (the kubelet's SIGTERM; a Wasm module has no signal to
                // catch, so it is stopped where it is).
                self.unregister(&active);
                let now = Utc::now();
                for (index, _) in &active {
                    let (init, local) = self.locate(*index);
                    let record = self.record(init, local);
                    if let super::status::State::Running { started } = record.state {
                        record.exited(&Exit::Code(0), started, now);
                    }
                }
            }
        }
        drop(active);
    }

    /// Takes the ports of these containers off the pod's loopback; returns their servers.
    fn unregister(&self, containers: &[(usize, Active)]) -> Vec<Arc<HttpServer>> {
        containers
            .iter()
            .filter_map(|(_, a)| a.http.as_ref())
            .map(|(ports, server)| {
                ports.iter().for_each(|p| self.network.unregister(*p));
                server.clone()
            })
            .collect()
    }

    /// A report from a container's task, as the machine's event (`None`: status only, or a
    /// late report of an earlier run).
    fn take_report(&mut self, report: Report) -> Option<lifecycle::Event> {
        match report {
            Report::Started { index, run } if self.runs[index] == run => {
                let (init, local) = self.locate(index);
                let record = self.record(init, local);
                record.started(Utc::now());
                let message = format!("Started container {}", record.name);
                self.events.push((false, "Started", message));
                Some(lifecycle::Event::Started(index))
            }
            Report::Exited {
                index,
                run,
                exit,
                started,
                finished,
            } if self.runs[index] == run && self.active.remove(&index).is_some() => {
                let (init, local) = self.locate(index);
                self.record(init, local).exited(&exit, started, finished);
                Some(lifecycle::Event::Exited { index, exit })
            }
            Report::Started { .. } | Report::Exited { .. } => None,
            Report::InstanceFailed(index, exit) => {
                let (init, local) = self.locate(index);
                let record = self.record(init, local);
                record.instance_failed(&exit);
                let message = format!(
                    "An instance of container {} failed: {}",
                    record.name,
                    describe(&exit)
                );
                self.events.push((true, "InstanceFailed", message));
                None
            }
            Report::Probe(ProbeReport::Ready(index, ready)) => {
                let (init, local) = self.locate(index);
                self.record(init, local).probe_ready = Some(ready);
                None
            }
            Report::Republish => {
                self.last_published = None;
                None
            }
            Report::Probe(ProbeReport::StartupSucceeded(index)) => {
                Some(lifecycle::Event::StartupSucceeded(index))
            }
            Report::Probe(ProbeReport::Failed(index, probe, message)) => {
                Some(lifecycle::Event::ProbeFailed {
                    index,
                    probe,
                    message,
                })
            }
        }
    }

    /// The view's `done` flags follow the machine's verdicts.
    fn sync_done(&mut self, life: &Lifecycle) {
        let records = self.view.init.iter_mut().chain(self.view.main.iter_mut());
        for (index, record) in records.enumerate() {
            record.done = matches!(
                life.container(index),
                Some(lifecycle::Container::Done { .. })
            );
        }
    }

    /// (is an init container, index within its list) of a lifecycle index.
    fn locate(&self, index: usize) -> (bool, usize) {
        let init_len = self.view.init.len();
        if index < init_len {
            (true, index)
        } else {
            (false, index - init_len)
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
        let projected_dir = self
            .shared
            .token_dir(self.pod.metadata.uid.as_deref().unwrap_or("unknown"));
        let host = volumes::VolumeHost {
            pod_dir: &pod_dir,
            claims_dir: &claims_dir,
            host_path_allow: &self.shared.host_path_allow,
            client: &self.shared.client,
            namespace: &namespace,
            projected_dir: &projected_dir,
            projection: super::projected::Projection {
                pod: &self.pod,
                client: &self.shared.client,
                cluster_ca: self.shared.api.as_ref().map(|(_, ca)| ca.as_str()),
            },
        };
        let prepared = volumes::prepare(&spec, &host, &mut sources)
            .await
            .map_err(|e| Retry(0, "CreateContainerConfigError".into(), e.to_string()))?;
        self.volumes = prepared.volumes;
        self.token_refreshers = prepared
            .tokens
            .into_iter()
            .map(|file| {
                let refresh = super::projected::keep_fresh(
                    self.shared.client.clone(),
                    self.pod.clone(),
                    file,
                    self.shared.token_refresh,
                );
                tokio_util::task::AbortOnDropHandle::new(tokio::spawn(refresh))
            })
            .collect();
        let all = self.specs.clone();
        self.env.clear();
        for (index, container) in all.iter().enumerate() {
            let env =
                super::env::container_env(&self.pod, container, &self.view.pod_ip, &mut sources)
                    .await
                    .map_err(|e| {
                        Retry(index, "CreateContainerConfigError".into(), e.to_string())
                    })?;
            self.env.push(env);
        }
        let credentials = self.pull_credentials(&spec, &mut sources).await;
        let mut programs = Vec::with_capacity(all.len());
        for (index, container) in all.iter().enumerate() {
            let image = container.image.as_deref().unwrap_or("");
            let options = PullOptions {
                policy: Some(PullPolicy::of(
                    container.image_pull_policy.as_deref(),
                    image,
                )),
                credentials: credentials.clone(),
            };
            let registry = oci::is_reference(image);
            if registry {
                self.events
                    .push((false, "Pulling", format!("Pulling image {image:?}")));
            }
            let began = std::time::Instant::now();
            match self.shared.engine.load_with(image, &options).await {
                Ok(loaded) => {
                    let message = match loaded.downloaded {
                        Some(size) => format!(
                            "Successfully pulled image {image:?} in {:.3}s. Image size: {size} bytes.",
                            began.elapsed().as_secs_f64()
                        ),
                        None => format!("Container image {image:?} already present on machine"),
                    };
                    if registry {
                        // Kubernetes says "Pulled" either way.
                        self.events.push((false, "Pulled", message));
                    }
                    let (init, local) = self.locate(index);
                    self.record(init, local).image_id = loaded.image_id;
                    programs.push(loaded.program);
                }
                Err(e) => return Err(Retry(index, e.reason().into(), e.to_string())),
            }
        }
        // A sidecar may serve (that is what it is for); an init container that must finish
        // cannot be a server.
        if let Some((index, c)) = spec
            .init_containers
            .iter()
            .flatten()
            .enumerate()
            .find(|(i, c)| programs[*i].is_http() && !is_sidecar(c))
        {
            return Err(Fatal("CreateContainerConfigError".into(), format!("init container {:?} (#{index}) is an HTTP component; init containers must be commands (or sidecars, with restartPolicy: Always)", c.name)));
        }
        self.programs = programs;
        Ok(())
    }

    /// Registry credentials from the pod's `imagePullSecrets`. As the kubelet, a Secret that
    /// is missing or unreadable is reported and the pull goes on without it.
    async fn pull_credentials(
        &mut self,
        spec: &k8s_openapi::api::core::v1::PodSpec,
        sources: &mut Sources,
    ) -> oci::Credentials {
        let mut credentials = Vec::new();
        for reference in spec.image_pull_secrets.iter().flatten() {
            let name = reference.name.as_str();
            let found = match sources.secret(name).await {
                Ok(Some(data)) => data
                    .get(".dockerconfigjson")
                    .ok_or_else(|| "it has no .dockerconfigjson key".to_string())
                    .and_then(|json| oci::docker_config_credentials(json)),
                Ok(None) => Err("it does not exist".to_string()),
                Err(e) => Err(e.to_string()),
            };
            match found {
                Ok(found) => credentials.extend(found),
                Err(why) => self.events.push((
                    true,
                    "FailedToRetrieveImagePullSecret",
                    format!(
                        "Unable to retrieve image pull secret {name:?}: {why}; pulling without it"
                    ),
                )),
            }
        }
        credentials
    }

    fn record(&mut self, init: bool, index: usize) -> &mut Container {
        if init {
            &mut self.view.init[index]
        } else {
            &mut self.view.main[index]
        }
    }

    /// argv, env, mounts and limits of a container; the log is made fresh for each run.
    fn launch_template(
        &self,
        spec: &ContainerSpec,
        index: usize,
    ) -> Result<LaunchTemplate, super::config::ConfigError> {
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
            usage: self.meters[index].clone(),
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

    /// Before anything has happened (every container still being created, no event), a
    /// status write would only cost an fsync on the path from create to Running.
    fn nothing_to_say_yet(&self) -> bool {
        self.last_published.is_none()
            && self.events.is_empty()
            && self.view.failed_reason.is_none()
            && self.view.init.iter().chain(&self.view.main).all(|c| {
                matches!(&c.state, super::status::State::Waiting { reason, .. } if reason == "ContainerCreating")
            })
    }

    fn pod_dir(&self) -> PathBuf {
        self.shared
            .pod_dir(self.pod.metadata.uid.as_deref().unwrap_or("unknown"))
    }

    /// Writes the pod's status when it changed, then records the pending events (off the
    /// pod's critical path: the status is what clients wait for).
    async fn publish(&mut self) {
        let status = self.view.to_status();
        if self.last_published.as_ref() != Some(&status) && !self.nothing_to_say_yet() {
            let name = self.pod.metadata.name.clone().unwrap_or_default();
            let namespace = self.pod.metadata.namespace.clone();
            let pods = self.shared.client.api::<Pod>(namespace.as_deref());
            let patch = serde_json::json!({"status": status});
            self.last_published = Some(status);
            // Boxed, so that the worker's idle future does not keep room for a request.
            if let Err(e) = Box::pin(pods.patch_status_strategic(&name, &patch)).await {
                if !e.is_not_found() {
                    tracing::warn!("pod {}: writing status failed: {e}", self.pod_key());
                }
            }
        }
        let events = std::mem::take(&mut self.events);
        for (warning, reason, message) in events {
            if warning {
                self.shared.recorder.warning(&self.pod, reason, &message);
            } else {
                self.shared.recorder.normal(&self.pod, reason, &message);
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

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    fn future_size<A, F: std::future::Future>(_: impl FnOnce(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// A node holds one worker future per pod for the pod's whole life (10,000 on one node in
    /// `shoal-bench density`); it keeps the worker and any large step boxed. An
    /// `async fn run(self)` holding the worker inline was 12 KiB.
    #[test]
    fn a_pod_workers_future_stays_small() {
        let size = future_size(super::PodWorker::run);
        assert!(size <= 2048, "a pod worker's future takes {size} bytes");
    }
}
