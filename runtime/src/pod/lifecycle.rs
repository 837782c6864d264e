//! A pod's life on its node as one state machine: [`Lifecycle::step`] takes the state, an
//! [`Event`] and the time, and returns the next state and the [`Effect`]s to carry out. It does
//! no I/O and reads no clock, so every rule below is unit-tested on made-up times; the pod
//! worker (`agent/worker.rs`) only feeds it events and executes its effects.
//!
//! States and edges:
//!
//! ```text
//! Preparing --Prepared--> Initializing(0) --init 0 ok--> ... --last init ok--> Running
//!     |  PrepareFailed(retry): timer, Preparing again     |                      |
//!     |  PrepareFailed(fatal) ------------------------> Finished(Failed) <-------+ every main
//!     |                                                   ^  init failed and      container
//!     +-- Stop / deadline (from any state but Finished) --+  not restarted        done
//! ```
//!
//! Containers within `Initializing` and `Running`: `Starting` (asked to start) -> `Running`
//! -> `Exited` -> (restart per policy) `BackOff { until }` -> `Starting` ...; a failed liveness
//! or startup probe kills the container, which then counts as a failed exit. Restart back-off is
//! the kubelet's: the initial delay doubling to 30 times it (10 s to 5 min), reset when a run
//! lasted twice the maximum (10 min) before it ended. `activeDeadlineSeconds` stops every
//! container, HTTP ones included, and fails the pod with `DeadlineExceeded`.
//!
//! Native sidecars (Kubernetes 1.29+: an init container with `restartPolicy: Always`): the
//! sidecar takes its turn among the init containers, but the next one starts as soon as it
//! has *started* (its startup probe passed, if it has one) rather than finished. It is
//! restarted whenever it exits, whatever the pod's policy; it keeps running beside the main
//! containers and does not count toward the pod's end: once every main container is done the
//! pod ends and the sidecars are stopped (the worker stops them last on deletion too).

use std::time::{Duration, Instant};

use super::run::Exit;

/// `spec.restartPolicy`; validation admits only these three, and `Always` is the default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    /// The policy of a pod spec's `restartPolicy`; an unknown value (which validation refuses)
    /// is an error rather than a silent `Never`.
    pub fn parse(value: Option<&str>) -> Result<Self, UnknownRestartPolicy> {
        match value {
            None | Some("Always") => Ok(Self::Always),
            Some("OnFailure") => Ok(Self::OnFailure),
            Some("Never") => Ok(Self::Never),
            Some(other) => Err(UnknownRestartPolicy(other.to_string())),
        }
    }

    fn restarts(self, succeeded: bool) -> bool {
        match self {
            Self::Always => true,
            Self::OnFailure => !succeeded,
            Self::Never => false,
        }
    }

    /// Init containers run to success: they restart on failure unless the pod never restarts.
    fn for_init(self) -> Self {
        match self {
            Self::Never => Self::Never,
            _ => Self::OnFailure,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown restartPolicy {0:?}: supported values are Always, OnFailure, Never")]
pub struct UnknownRestartPolicy(pub String);

/// Which probe failed (readiness failures change only the Ready condition).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    Liveness,
    Startup,
}

/// How the pod ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// Every main container exited 0.
    Succeeded,
    /// A container failed and is not restarted (its own status says how).
    ContainersFailed,
    /// The pod as a whole failed: it could not be prepared, or outlived its deadline.
    PodFailed { reason: String, message: String },
    /// Deleted: stopped on request; the status no longer matters.
    Stopped,
}

/// What happens to the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Volumes, environments and programs are ready.
    Prepared,
    /// Preparing failed; `retry` when it may work later (an image or a ConfigMap may come).
    PrepareFailed {
        retry: bool,
        reason: String,
        message: String,
    },
    /// Container `index` (init containers first, then main ones) started running.
    Started(usize),
    /// Container `index`'s startup probe succeeded (what a sidecar with one waits for before
    /// the next init container starts).
    StartupSucceeded(usize),
    /// Container `index`'s run ended (a command's exit, or the end of a killed container).
    Exited { index: usize, exit: Exit },
    /// Container `index` cannot start at all (its configuration is unusable): it is done,
    /// failed, and not restarted.
    CannotStart(usize),
    /// A liveness or startup probe of container `index` failed `failureThreshold` times.
    ProbeFailed {
        index: usize,
        probe: Probe,
        message: String,
    },
    /// A timer set by [`Effect::Wake`] is due (or any wake-up: due work is done, early is
    /// harmless).
    Tick,
    /// The pod is being deleted.
    Stop,
}

/// What the worker must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Prepare volumes, environments and programs, then report `Prepared` or `PrepareFailed`.
    Prepare,
    /// Start container `index` (run a command, or serve an HTTP component), with its probes.
    Start(usize),
    /// Stop container `index` now and report its end as `Exited` with `exit` (a command's run
    /// is dropped; an HTTP container stops taking requests).
    Kill { index: usize, exit: Exit },
    /// Container `index` waits `delay` before it starts again (CrashLoopBackOff).
    BackOff { index: usize, delay: Duration },
    /// Preparing is retried after `delay`.
    RetryPrepare {
        delay: Duration,
        reason: String,
        message: String,
    },
    /// Init containers are all done: the pod is initialized.
    Initialized,
    /// Send a `Tick` at this time (the earliest pending timer).
    Wake(Instant),
    /// The pod is over: stop everything still running (draining HTTP containers on `Stopped`).
    Finish(End),
}

/// Timing rules, from the agent's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// The first restart back-off (the kubelet's 10 s).
    pub initial_backoff: Duration,
}

impl Timing {
    fn max_backoff(self) -> Duration {
        self.initial_backoff.saturating_mul(30)
    }

    /// A run that lasted this long resets the back-off (the kubelet: 10 min for 5 min max).
    fn healthy_reset(self) -> Duration {
        self.max_backoff().saturating_mul(2)
    }

    fn prepare_backoff(attempt: u32) -> Duration {
        Duration::from_secs(1)
            .saturating_mul(1u32 << attempt.min(5))
            .min(Duration::from_secs(30))
    }
}

/// One container's part of the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Container {
    /// Not started yet (its turn has not come).
    Pending,
    /// Asked to start, not yet running.
    Starting,
    Running {
        since: Instant,
    },
    /// Waiting to start again.
    BackOff {
        until: Instant,
    },
    /// Ended for good.
    Done {
        succeeded: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Slot {
    state: Container,
    /// The next back-off delay.
    backoff: Duration,
    /// A native sidecar (an init container with `restartPolicy: Always`).
    sidecar: Option<Sidecar>,
}

/// How a sidecar's turn among the init containers ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sidecar {
    /// The turn ends when its startup probe succeeds, not when it starts.
    awaits_startup_probe: bool,
}

/// Where the pod is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stage {
    Preparing {
        attempt: u32,
        retry_at: Option<Instant>,
    },
    Initializing(usize),
    Running,
    Finished(End),
}

/// The whole state of one pod's life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lifecycle {
    stage: Stage,
    policy: RestartPolicy,
    timing: Timing,
    init_count: usize,
    slots: Vec<Slot>,
    /// When `activeDeadlineSeconds` runs out, if set and representable.
    deadline: Option<Instant>,
    deadline_seconds: u64,
}

impl Lifecycle {
    /// A pod with `init` init containers and `main` main ones, started at `now`.
    pub fn new(
        policy: RestartPolicy,
        timing: Timing,
        init: usize,
        main: usize,
        active_deadline_seconds: Option<i64>,
        now: Instant,
    ) -> Self {
        let slot = Slot {
            state: Container::Pending,
            backoff: timing.initial_backoff,
            sidecar: None,
        };
        let deadline_seconds = active_deadline_seconds
            .and_then(|s| u64::try_from(s).ok())
            .unwrap_or(0);
        Self {
            stage: Stage::Preparing {
                attempt: 0,
                retry_at: None,
            },
            policy,
            timing,
            init_count: init,
            slots: vec![slot; init.saturating_add(main)],
            // A deadline past what the clock holds is no deadline.
            deadline: active_deadline_seconds
                .and_then(|s| u64::try_from(s).ok())
                .and_then(|s| now.checked_add(Duration::from_secs(s))),
            deadline_seconds,
        }
    }

    /// Marks init container `index` as a native sidecar; `awaits_startup_probe` when it has
    /// a startup probe (the next init container waits for it to pass). Other indices are
    /// ignored: only init containers can be sidecars.
    pub fn with_sidecar(mut self, index: usize, awaits_startup_probe: bool) -> Self {
        if index < self.init_count {
            self.slots[index].sidecar = Some(Sidecar {
                awaits_startup_probe,
            });
        }
        self
    }

    fn is_sidecar(&self, index: usize) -> bool {
        self.slots.get(index).is_some_and(|s| s.sidecar.is_some())
    }

    pub fn stage(&self) -> &Stage {
        &self.stage
    }

    pub fn container(&self, index: usize) -> Option<&Container> {
        self.slots.get(index).map(|s| &s.state)
    }

    /// The first effects: prepare, and wake for the deadline.
    pub fn begin(self, now: Instant) -> (Self, Vec<Effect>) {
        let mut effects = vec![Effect::Prepare];
        let state = self;
        if let Some(wake) = state.next_wake(now) {
            effects.push(Effect::Wake(wake));
        }
        (state, effects)
    }

    /// Advances the machine by one event.
    pub fn step(mut self, event: Event, now: Instant) -> (Self, Vec<Effect>) {
        let mut effects = Vec::new();
        if matches!(self.stage, Stage::Finished(_)) {
            return (self, effects);
        }
        match event {
            Event::Stop => {
                self.finish(End::Stopped, &mut effects);
                return (self, effects);
            }
            _ if self.deadline.is_some_and(|d| now >= d) => {
                self.deadline_exceeded(&mut effects);
                return (self, effects);
            }
            Event::Prepared => {
                if matches!(self.stage, Stage::Preparing { .. }) {
                    self.enter_init(0, &mut effects);
                }
            }
            Event::PrepareFailed {
                retry,
                reason,
                message,
            } => {
                if let Stage::Preparing { attempt, .. } = self.stage {
                    if retry {
                        let delay = Timing::prepare_backoff(attempt);
                        self.stage = Stage::Preparing {
                            attempt: attempt.saturating_add(1),
                            retry_at: now.checked_add(delay),
                        };
                        effects.push(Effect::RetryPrepare {
                            delay,
                            reason,
                            message,
                        });
                    } else {
                        self.finish(End::PodFailed { reason, message }, &mut effects);
                    }
                }
            }
            Event::Started(index) => {
                if let Some(slot) = self.slots.get_mut(index) {
                    if slot.state == Container::Starting {
                        slot.state = Container::Running { since: now };
                        let turn_ends = slot.sidecar.is_some_and(|s| !s.awaits_startup_probe);
                        if turn_ends && self.stage == Stage::Initializing(index) {
                            self.enter_init(index + 1, &mut effects);
                        }
                    }
                }
            }
            Event::StartupSucceeded(index) => {
                // Starting counts: the probe's report may overtake the start's.
                let running = self.slots.get(index).is_some_and(|s| {
                    matches!(s.state, Container::Running { .. } | Container::Starting)
                });
                if running && self.is_sidecar(index) && self.stage == Stage::Initializing(index) {
                    self.enter_init(index + 1, &mut effects);
                }
            }
            Event::Exited { index, exit } => self.exited(index, &exit, now, &mut effects),
            Event::CannotStart(index) => {
                if let Some(slot) = self.slots.get_mut(index) {
                    slot.state = Container::Done { succeeded: false };
                    self.after_done(index, &mut effects);
                }
            }
            Event::ProbeFailed { index, message, .. } => {
                // Starting counts: the probe may report before the start does.
                let running = self.slots.get(index).is_some_and(|s| {
                    matches!(s.state, Container::Running { .. } | Container::Starting)
                });
                // Liveness and startup failures have the same consequence: the container is
                // killed and restarted per policy (the message says which probe).
                if running {
                    effects.push(Effect::Kill {
                        index,
                        exit: Exit::Killed {
                            reason: "Error",
                            message,
                            code: 137,
                        },
                    });
                }
            }
            Event::Tick => {}
        }
        self.due(now, &mut effects);
        if let Some(wake) = self.next_wake(now) {
            effects.push(Effect::Wake(wake));
        }
        (self, effects)
    }

    /// Starts the timers that are due: back-offs ended, preparation retries.
    fn due(&mut self, now: Instant, effects: &mut Vec<Effect>) {
        if let Stage::Preparing {
            attempt,
            retry_at: Some(at),
        } = self.stage
        {
            if now >= at {
                self.stage = Stage::Preparing {
                    attempt,
                    retry_at: None,
                };
                effects.push(Effect::Prepare);
            }
        }
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if let Container::BackOff { until } = slot.state {
                if now >= until {
                    slot.state = Container::Starting;
                    effects.push(Effect::Start(index));
                }
            }
        }
    }

    /// The earliest time something is due, if anything waits on time.
    fn next_wake(&self, now: Instant) -> Option<Instant> {
        let retry = match self.stage {
            Stage::Preparing { retry_at, .. } => retry_at,
            Stage::Finished(_) => return None,
            _ => None,
        };
        let backoffs = self.slots.iter().filter_map(|s| match s.state {
            Container::BackOff { until } => Some(until),
            _ => None,
        });
        retry
            .into_iter()
            .chain(backoffs)
            .chain(self.deadline)
            .filter(|t| *t > now)
            .min()
    }

    fn enter_init(&mut self, index: usize, effects: &mut Vec<Effect>) {
        if index < self.init_count {
            self.stage = Stage::Initializing(index);
            self.slots[index].state = Container::Starting;
            effects.push(Effect::Start(index));
        } else {
            self.stage = Stage::Running;
            effects.push(Effect::Initialized);
            for index in self.init_count..self.slots.len() {
                self.slots[index].state = Container::Starting;
                effects.push(Effect::Start(index));
            }
            if self.slots.len() == self.init_count {
                self.check_done(effects);
            }
        }
    }

    fn exited(&mut self, index: usize, exit: &Exit, now: Instant, effects: &mut Vec<Effect>) {
        let Some(slot) = self.slots.get_mut(index) else {
            return;
        };
        let ran_for = match slot.state {
            Container::Running { since } => now.saturating_duration_since(since),
            Container::Starting => Duration::ZERO,
            // Not running: a late report of a run already accounted for.
            _ => return,
        };
        let succeeded = *exit == Exit::Code(0);
        let policy = if slot.sidecar.is_some() {
            RestartPolicy::Always
        } else if index < self.init_count {
            self.policy.for_init()
        } else {
            self.policy
        };
        // A long healthy run forgets earlier crashes (the kubelet's back-off reset).
        if ran_for >= self.timing.healthy_reset() {
            slot.backoff = self.timing.initial_backoff;
        }
        if policy.restarts(succeeded) {
            let delay = slot.backoff;
            slot.backoff = slot
                .backoff
                .saturating_mul(2)
                .min(self.timing.max_backoff());
            slot.state = match now.checked_add(delay) {
                Some(until) => Container::BackOff { until },
                // No representable restart time: the container stays down.
                None => Container::Done { succeeded },
            };
            if matches!(slot.state, Container::BackOff { .. }) {
                effects.push(Effect::BackOff { index, delay });
            }
        } else {
            slot.state = Container::Done { succeeded };
        }
        self.after_done(index, effects);
    }

    /// After container `index` ended: the next init container, or the end of the pod.
    fn after_done(&mut self, index: usize, effects: &mut Vec<Effect>) {
        if self.is_sidecar(index) {
            // A sidecar restarts on any exit; done means it can never run again (it cannot
            // start at all), which the pod cannot do without.
            if matches!(self.slots[index].state, Container::Done { .. }) {
                self.finish(End::ContainersFailed, effects);
            }
        } else if index < self.init_count {
            match self.slots[index].state {
                Container::Done { succeeded: true } => self.enter_init(index + 1, effects),
                Container::Done { succeeded: false } => self.finish(End::ContainersFailed, effects),
                _ => {}
            }
        } else {
            self.check_done(effects);
        }
    }

    /// The pod ends when every main container is done (sidecars are stopped then).
    fn check_done(&mut self, effects: &mut Vec<Effect>) {
        let main = &self.slots[self.init_count..];
        let all_done = main
            .iter()
            .all(|s| matches!(s.state, Container::Done { .. }));
        if !all_done {
            return;
        }
        let end = if main
            .iter()
            .all(|s| s.state == Container::Done { succeeded: true })
        {
            End::Succeeded
        } else {
            End::ContainersFailed
        };
        self.finish(end, effects);
    }

    fn deadline_exceeded(&mut self, effects: &mut Vec<Effect>) {
        let message = format!(
            "Pod was active on the node longer than the specified deadline ({}s)",
            self.deadline_seconds
        );
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if matches!(slot.state, Container::Running { .. } | Container::Starting) {
                effects.push(Effect::Kill {
                    index,
                    exit: Exit::Killed {
                        reason: "DeadlineExceeded",
                        message: message.clone(),
                        code: 137,
                    },
                });
            }
        }
        self.finish(
            End::PodFailed {
                reason: "DeadlineExceeded".into(),
                message,
            },
            effects,
        );
    }

    fn finish(&mut self, end: End, effects: &mut Vec<Effect>) {
        for slot in &mut self.slots {
            if !matches!(slot.state, Container::Done { .. } | Container::Pending) {
                slot.state = Container::Done { succeeded: false };
            }
        }
        self.stage = Stage::Finished(end.clone());
        effects.push(Effect::Finish(end));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEN: Duration = Duration::from_secs(10);

    fn timing() -> Timing {
        Timing {
            initial_backoff: TEN,
        }
    }

    /// A test pod's machine and its clock.
    struct Pod {
        life: Option<Lifecycle>,
        start: Instant,
        now: Instant,
    }

    impl Pod {
        fn new(policy: RestartPolicy, init: usize, main: usize, deadline: Option<i64>) -> Self {
            Self::with_sidecars(policy, init, main, deadline, &[])
        }

        /// A pod whose init containers at `sidecars` (index, has a startup probe) are sidecars.
        fn with_sidecars(
            policy: RestartPolicy,
            init: usize,
            main: usize,
            deadline: Option<i64>,
            sidecars: &[(usize, bool)],
        ) -> Self {
            let start = Instant::now();
            let mut life = Lifecycle::new(policy, timing(), init, main, deadline, start);
            for &(index, probe) in sidecars {
                life = life.with_sidecar(index, probe);
            }
            let (life, effects) = life.begin(start);
            assert_eq!(effects[0], Effect::Prepare);
            Self {
                life: Some(life),
                start,
                now: start,
            }
        }

        fn at(&mut self, seconds: u64) -> &mut Self {
            self.now = self.start + Duration::from_secs(seconds);
            self
        }

        fn send(&mut self, event: Event) -> Vec<Effect> {
            let (life, effects) = self.life.take().unwrap().step(event, self.now);
            self.life = Some(life);
            effects
        }

        fn stage(&self) -> &Stage {
            self.life.as_ref().unwrap().stage()
        }

        fn container(&self, index: usize) -> Container {
            self.life
                .as_ref()
                .unwrap()
                .container(index)
                .unwrap()
                .clone()
        }
    }

    fn exit(index: usize, code: i32) -> Event {
        Event::Exited {
            index,
            exit: Exit::Code(code),
        }
    }

    fn starts(effects: &[Effect]) -> Vec<usize> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Start(i) => Some(*i),
                _ => None,
            })
            .collect()
    }

    fn backoffs(effects: &[Effect]) -> Vec<(usize, u64)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::BackOff { index, delay } => Some((*index, delay.as_secs())),
                _ => None,
            })
            .collect()
    }

    fn ended(effects: &[Effect]) -> Option<End> {
        effects.iter().find_map(|e| match e {
            Effect::Finish(end) => Some(end.clone()),
            _ => None,
        })
    }

    #[test]
    fn restart_policy_parses_and_refuses_unknown_values() {
        let table = [
            (None, Ok(RestartPolicy::Always)),
            (Some("Always"), Ok(RestartPolicy::Always)),
            (Some("OnFailure"), Ok(RestartPolicy::OnFailure)),
            (Some("Never"), Ok(RestartPolicy::Never)),
            (
                Some("Sometimes"),
                Err(UnknownRestartPolicy("Sometimes".into())),
            ),
        ];
        for (value, expected) in table {
            assert_eq!(RestartPolicy::parse(value), expected, "{value:?}");
        }
    }

    #[test]
    fn init_containers_run_in_order_then_the_main_ones_together() {
        let mut pod = Pod::new(RestartPolicy::Always, 2, 2, None);
        assert_eq!(starts(&pod.send(Event::Prepared)), [0]);
        pod.send(Event::Started(0));
        assert_eq!(starts(&pod.at(1).send(exit(0, 0))), [1]);
        pod.send(Event::Started(1));
        let effects = pod.at(2).send(exit(1, 0));
        assert!(effects.contains(&Effect::Initialized));
        assert_eq!(starts(&effects), [2, 3]);
        assert_eq!(*pod.stage(), Stage::Running);
    }

    #[test]
    fn a_failed_init_container_restarts_unless_the_pod_never_restarts() {
        for (policy, restarted) in [
            (RestartPolicy::Always, true),
            (RestartPolicy::OnFailure, true),
            (RestartPolicy::Never, false),
        ] {
            let mut pod = Pod::new(policy, 1, 1, None);
            pod.send(Event::Prepared);
            pod.send(Event::Started(0));
            let effects = pod.at(1).send(exit(0, 3));
            assert_eq!(
                backoffs(&effects).len(),
                usize::from(restarted),
                "{policy:?}"
            );
            assert_eq!(ended(&effects).is_some(), !restarted, "{policy:?}");
        }
    }

    /// Each row: policy, exit code, whether the command restarts, how the pod ends otherwise.
    #[test]
    fn commands_follow_the_restart_policy() {
        let failed = Some(End::ContainersFailed);
        let table = [
            (RestartPolicy::Always, 0, true, None),
            (RestartPolicy::Always, 1, true, None),
            (RestartPolicy::OnFailure, 0, false, Some(End::Succeeded)),
            (RestartPolicy::OnFailure, 1, true, None),
            (RestartPolicy::Never, 0, false, Some(End::Succeeded)),
            (RestartPolicy::Never, 1, false, failed),
        ];
        for (policy, code, restarts, end) in table {
            let mut pod = Pod::new(policy, 0, 1, None);
            assert_eq!(starts(&pod.send(Event::Prepared)), [0]);
            pod.send(Event::Started(0));
            let effects = pod.at(5).send(exit(0, code));
            assert_eq!(
                !backoffs(&effects).is_empty(),
                restarts,
                "{policy:?} exit {code}"
            );
            assert_eq!(ended(&effects), end, "{policy:?} exit {code}");
        }
    }

    #[test]
    fn trap_oom_and_deadline_exits_are_failures() {
        for reason in ["Error", "OOMKilled", "DeadlineExceeded"] {
            let mut pod = Pod::new(RestartPolicy::OnFailure, 0, 1, None);
            pod.send(Event::Prepared);
            pod.send(Event::Started(0));
            let effects = pod.at(1).send(Event::Exited {
                index: 0,
                exit: Exit::Killed {
                    reason,
                    message: "guest trapped".into(),
                    code: 137,
                },
            });
            assert_eq!(
                backoffs(&effects),
                [(0, 10)],
                "{reason} is a failure: restarted"
            );
        }
    }

    #[test]
    fn back_off_doubles_to_five_minutes_and_resets_after_ten_healthy_minutes() {
        let mut pod = Pod::new(RestartPolicy::Always, 0, 1, None);
        pod.send(Event::Prepared);
        let mut t = 0;
        let mut delays = Vec::new();
        for _ in 0..8 {
            pod.at(t).send(Event::Started(0));
            t += 1;
            let effects = pod.at(t).send(exit(0, 1));
            let (_, delay) = backoffs(&effects)[0];
            delays.push(delay);
            // Nothing starts before the back-off ends; the wake-up is set for it.
            assert!(effects.contains(&Effect::Wake(pod.start + Duration::from_secs(t + delay))));
            assert!(starts(&pod.at(t + delay - 1).send(Event::Tick)).is_empty());
            t += delay;
            assert_eq!(starts(&pod.at(t).send(Event::Tick)), [0]);
        }
        assert_eq!(delays, [10, 20, 40, 80, 160, 300, 300, 300]);
        // Ten minutes of healthy running: the next crash waits the initial delay again.
        pod.at(t).send(Event::Started(0));
        t += 600;
        assert_eq!(backoffs(&pod.at(t).send(exit(0, 1))), [(0, 10)]);
    }

    #[test]
    fn a_failed_liveness_or_startup_probe_restarts_the_container_per_policy() {
        for probe in [Probe::Liveness, Probe::Startup] {
            for (policy, restarts) in [
                (RestartPolicy::Always, true),
                (RestartPolicy::OnFailure, true),
                (RestartPolicy::Never, false),
            ] {
                // Commands and HTTP containers alike: the worker kills and reports.
                {
                    let mut pod = Pod::new(policy, 0, 1, None);
                    pod.send(Event::Prepared);
                    pod.send(Event::Started(0));
                    let effects = pod.at(30).send(Event::ProbeFailed {
                        index: 0,
                        probe,
                        message: "HTTP probe failed with statuscode: 500".into(),
                    });
                    let Some(Effect::Kill { index: 0, exit }) = effects.first().cloned() else {
                        panic!("{probe:?} {policy:?}: no kill in {effects:?}");
                    };
                    // The worker stops the container and reports its end.
                    let effects = pod.send(Event::Exited { index: 0, exit });
                    assert_eq!(
                        !backoffs(&effects).is_empty(),
                        restarts,
                        "{probe:?} {policy:?}"
                    );
                    assert_eq!(ended(&effects).is_some(), !restarts, "{probe:?} {policy:?}");
                }
            }
        }
    }

    #[test]
    fn a_probe_failure_before_the_start_is_reported_still_kills() {
        let mut pod = Pod::new(RestartPolicy::Always, 0, 1, None);
        pod.send(Event::Prepared);
        let effects = pod.send(Event::ProbeFailed {
            index: 0,
            probe: Probe::Liveness,
            message: "Liveness probe failed: early".into(),
        });
        assert!(
            matches!(effects[0], Effect::Kill { index: 0, .. }),
            "{effects:?}"
        );
    }

    #[test]
    fn a_probe_failure_of_a_container_not_running_is_ignored() {
        let mut pod = Pod::new(RestartPolicy::Always, 0, 1, None);
        pod.send(Event::Prepared);
        pod.send(Event::Started(0));
        pod.at(1).send(exit(0, 1));
        let effects = pod.send(Event::ProbeFailed {
            index: 0,
            probe: Probe::Liveness,
            message: "late".into(),
        });
        assert!(!effects.iter().any(|e| matches!(e, Effect::Kill { .. })));
    }

    #[test]
    fn the_active_deadline_stops_http_containers_too() {
        let mut pod = Pod::new(RestartPolicy::Always, 0, 2, Some(30));
        pod.send(Event::Prepared);
        pod.send(Event::Started(0));
        let effects = pod.send(Event::Started(1));
        assert!(effects.contains(&Effect::Wake(pod.start + Duration::from_secs(30))));
        assert!(ended(&pod.at(29).send(Event::Tick)).is_none());
        let effects = pod.at(30).send(Event::Tick);
        let killed: Vec<usize> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Kill {
                    index,
                    exit:
                        Exit::Killed {
                            reason: "DeadlineExceeded",
                            ..
                        },
                } => Some(*index),
                _ => None,
            })
            .collect();
        assert_eq!(killed, [0, 1], "the HTTP container is stopped as well");
        assert!(
            matches!(ended(&effects), Some(End::PodFailed { reason, .. }) if reason == "DeadlineExceeded")
        );
        assert!(
            pod.at(31).send(exit(1, 0)).is_empty(),
            "a finished pod takes no more events"
        );
        // A deadline no clock can hold is no deadline.
        let mut forever = Pod::new(RestartPolicy::Always, 0, 1, Some(i64::MAX));
        forever.send(Event::Prepared);
        assert!(ended(&forever.at(1_000_000).send(Event::Tick)).is_none());
    }

    #[test]
    fn preparing_retries_with_back_off_or_fails_for_good() {
        let mut pod = Pod::new(RestartPolicy::Always, 0, 1, None);
        let failed = |retry| Event::PrepareFailed {
            retry,
            reason: "ErrImagePull".into(),
            message: "no such file".into(),
        };
        let effects = pod.send(failed(true));
        assert!(
            matches!(effects[0], Effect::RetryPrepare { delay, .. } if delay == Duration::from_secs(1))
        );
        assert!(!pod.at(0).send(Event::Tick).contains(&Effect::Prepare));
        assert!(pod.at(1).send(Event::Tick).contains(&Effect::Prepare));
        let effects = pod.send(failed(true));
        assert!(
            matches!(effects[0], Effect::RetryPrepare { delay, .. } if delay == Duration::from_secs(2))
        );
        let effects = pod.send(failed(false));
        assert!(
            matches!(ended(&effects), Some(End::PodFailed { reason, .. }) if reason == "ErrImagePull")
        );
    }

    #[test]
    fn a_container_that_cannot_start_fails_the_pod_without_restarts() {
        let mut pod = Pod::new(RestartPolicy::Always, 0, 2, None);
        pod.send(Event::Prepared);
        assert!(
            ended(&pod.send(Event::CannotStart(0))).is_none(),
            "the other one still runs"
        );
        assert_eq!(pod.container(0), Container::Done { succeeded: false });
        pod.send(Event::Started(1));
        let effects = pod.at(1).send(exit(1, 0));
        assert_eq!(
            backoffs(&effects),
            [(1, 10)],
            "the other container restarts as usual"
        );
    }

    #[test]
    fn deletion_stops_from_any_stage() {
        let mut preparing = Pod::new(RestartPolicy::Always, 0, 1, None);
        assert_eq!(ended(&preparing.send(Event::Stop)), Some(End::Stopped));
        let mut running = Pod::new(RestartPolicy::Always, 1, 1, None);
        running.send(Event::Prepared);
        running.send(Event::Started(0));
        running.at(1).send(exit(0, 0));
        running.send(Event::Started(1));
        assert_eq!(ended(&running.send(Event::Stop)), Some(End::Stopped));
        assert_eq!(running.container(1), Container::Done { succeeded: false });
    }

    #[test]
    fn a_sidecar_lets_the_next_init_container_start_once_it_runs_and_outlives_the_job() {
        // Init 0 is a sidecar, init 1 a regular one, then one main command; the pod never
        // restarts (a Job's pod).
        let mut pod = Pod::with_sidecars(RestartPolicy::Never, 2, 1, None, &[(0, false)]);
        assert_eq!(starts(&pod.send(Event::Prepared)), [0]);
        assert_eq!(
            starts(&pod.send(Event::Started(0))),
            [1],
            "the next init container starts beside the running sidecar"
        );
        pod.send(Event::Started(1));
        let effects = pod.at(1).send(exit(1, 0));
        assert!(effects.contains(&Effect::Initialized));
        assert_eq!(starts(&effects), [2]);
        pod.send(Event::Started(2));
        // The sidecar crashes: restarted although the pod never restarts its containers.
        let effects = pod.at(2).send(exit(0, 1));
        assert_eq!(backoffs(&effects), [(0, 10)]);
        assert_eq!(ended(&effects), None);
        assert_eq!(starts(&pod.at(12).send(Event::Tick)), [0]);
        pod.send(Event::Started(0));
        // The main container's end is the pod's end, the sidecar still running.
        let effects = pod.at(13).send(exit(2, 0));
        assert_eq!(ended(&effects), Some(End::Succeeded));
        assert_eq!(pod.container(0), Container::Done { succeeded: false });
    }

    #[test]
    fn a_sidecar_with_a_startup_probe_holds_the_next_init_container_until_it_passes() {
        let mut pod = Pod::with_sidecars(RestartPolicy::Always, 1, 1, None, &[(0, true)]);
        pod.send(Event::Prepared);
        assert!(starts(&pod.send(Event::Started(0))).is_empty());
        assert_eq!(*pod.stage(), Stage::Initializing(0));
        let effects = pod.send(Event::StartupSucceeded(0));
        assert!(effects.contains(&Effect::Initialized));
        assert_eq!(starts(&effects), [1]);
        // A late or repeated success (after a restart) changes nothing.
        assert!(starts(&pod.send(Event::StartupSucceeded(0))).is_empty());

        // The probe's success may overtake the start's report.
        let mut raced = Pod::with_sidecars(RestartPolicy::Always, 1, 1, None, &[(0, true)]);
        raced.send(Event::Prepared);
        assert_eq!(starts(&raced.send(Event::StartupSucceeded(0))), [1]);
        assert!(starts(&raced.send(Event::Started(0))).is_empty());

        // A regular init container's startup success (it cannot have one) moves nothing.
        let mut plain = Pod::new(RestartPolicy::Always, 1, 1, None);
        plain.send(Event::Prepared);
        plain.send(Event::Started(0));
        assert!(starts(&plain.send(Event::StartupSucceeded(0))).is_empty());
    }

    #[test]
    fn a_sidecar_restarts_beside_serving_containers_and_only_main_ones_end_the_pod() {
        let mut pod = Pod::with_sidecars(RestartPolicy::OnFailure, 1, 1, None, &[(0, false)]);
        pod.send(Event::Prepared);
        pod.send(Event::Started(0));
        pod.send(Event::Started(1));
        // Exiting 0 is no end for a sidecar.
        let effects = pod.at(1).send(exit(0, 0));
        assert_eq!(backoffs(&effects), [(0, 10)]);
        assert_eq!(*pod.stage(), Stage::Running);
        // A main container failing under OnFailure restarts; the sidecar changes nothing.
        let effects = pod.at(2).send(exit(1, 1));
        assert_eq!(backoffs(&effects), [(1, 10)]);
        // A failed main container under Never fails the pod even with a sidecar running.
        let mut never = Pod::with_sidecars(RestartPolicy::Never, 1, 1, None, &[(0, false)]);
        never.send(Event::Prepared);
        never.send(Event::Started(0));
        never.send(Event::Started(1));
        assert_eq!(
            ended(&never.at(1).send(exit(1, 3))),
            Some(End::ContainersFailed)
        );
    }

    #[test]
    fn a_sidecar_that_cannot_start_fails_the_pod() {
        let mut pod = Pod::with_sidecars(RestartPolicy::Always, 1, 1, None, &[(0, false)]);
        pod.send(Event::Prepared);
        assert_eq!(
            ended(&pod.send(Event::CannotStart(0))),
            Some(End::ContainersFailed)
        );
        // Only init containers can be sidecars.
        let life = Lifecycle::new(RestartPolicy::Always, timing(), 0, 1, None, Instant::now())
            .with_sidecar(0, false);
        assert!(!life.is_sidecar(0));
    }
}
