//! What the agent knows of a pod it runs, and how that reads as a Kubernetes `PodStatus`:
//! per-container state, restart counts, the pod phase and its conditions.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, PodCondition, PodIP, PodStatus,
};

use shoal_api::api::time;

use crate::pod::run::Exit;

#[derive(Clone, Debug, PartialEq)]
pub enum State {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started: DateTime<Utc>,
    },
    Terminated {
        code: i32,
        reason: String,
        message: Option<String>,
        started: DateTime<Utc>,
        finished: DateTime<Utc>,
    },
}

#[derive(Clone, Debug)]
pub struct Container {
    pub name: String,
    pub image: String,
    /// What the image resolved to (set once loaded).
    pub image_id: String,
    pub state: State,
    pub last_state: Option<State>,
    pub restart_count: i32,
    /// The container has ended and will not run again.
    pub done: bool,
    /// The readiness probe's verdict, if the container has one.
    pub probe_ready: Option<bool>,
    /// A native sidecar (an init container with `restartPolicy: Always`): its readiness
    /// counts toward the pod's.
    pub sidecar: bool,
}

impl Container {
    pub fn new(name: &str, image: &str) -> Self {
        Self {
            name: name.into(),
            image: image.into(),
            image_id: String::new(),
            state: State::Waiting {
                reason: "ContainerCreating".into(),
                message: None,
            },
            last_state: None,
            restart_count: 0,
            done: false,
            probe_ready: None,
            sidecar: false,
        }
    }

    pub fn as_sidecar(mut self, sidecar: bool) -> Self {
        self.sidecar = sidecar;
        self
    }

    /// A container with a readiness probe starts unready.
    pub fn with_readiness_probe(mut self, has_probe: bool) -> Self {
        self.probe_ready = has_probe.then_some(false);
        self
    }

    /// One instance of a serving container ended badly: it shows as the last termination and
    /// counts as a restart, while the container keeps serving.
    pub fn instance_failed(&mut self, exit: &Exit) {
        let now = Utc::now();
        let started = match self.state {
            State::Running { started } => started,
            _ => now,
        };
        let mut ended = self.clone();
        ended.exited(exit, started, now);
        self.last_state = Some(ended.state);
        self.restart_count += 1;
    }

    fn ready(&self) -> bool {
        matches!(self.state, State::Running { .. }) && self.probe_ready != Some(false)
    }

    pub fn started(&mut self, at: DateTime<Utc>) {
        if matches!(self.state, State::Terminated { .. }) {
            self.restart_count += 1;
        }
        if let State::Terminated { .. } = &self.state {
            self.last_state = Some(self.state.clone());
        }
        self.state = State::Running { started: at };
    }

    pub fn exited(&mut self, exit: &Exit, started: DateTime<Utc>, finished: DateTime<Utc>) {
        let (code, reason, message) = match exit {
            Exit::Code(0) => (0, "Completed".to_string(), None),
            Exit::Code(code) => (*code, "Error".to_string(), None),
            Exit::Killed {
                reason,
                message,
                code,
            } => (*code, reason.to_string(), Some(message.clone())),
        };
        self.state = State::Terminated {
            code,
            reason,
            message,
            started,
            finished,
        };
    }

    /// Waiting to be restarted after a back-off; the last run stays visible as `lastState`.
    pub fn backing_off(&mut self, message: String) {
        if let State::Terminated { .. } = &self.state {
            self.last_state = Some(self.state.clone());
            self.restart_count += 1;
        }
        self.state = State::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: Some(message),
        };
    }

    pub fn waiting(&mut self, reason: &str, message: String) {
        self.state = State::Waiting {
            reason: reason.into(),
            message: Some(message),
        };
    }

    fn has_run(&self) -> bool {
        !matches!(self.state, State::Waiting { .. }) || self.last_state.is_some()
    }

    fn succeeded(&self) -> bool {
        matches!(self.state, State::Terminated { code: 0, .. })
    }

    fn to_status(&self) -> ContainerStatus {
        let ready = self.ready();
        ContainerStatus {
            name: self.name.clone(),
            image: self.image.clone(),
            image_id: self.image_id.clone(),
            container_id: None,
            ready,
            started: Some(matches!(self.state, State::Running { .. })),
            restart_count: self.restart_count,
            state: Some(state_to_k8s(&self.state)),
            last_state: self.last_state.as_ref().map(state_to_k8s),
            ..Default::default()
        }
    }
}

fn state_to_k8s(state: &State) -> ContainerState {
    match state {
        State::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: message.clone(),
            }),
            ..Default::default()
        },
        State::Running { started } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(time::time(*started)),
            }),
            ..Default::default()
        },
        State::Terminated {
            code,
            reason,
            message,
            started,
            finished,
        } => ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: *code,
                reason: Some(reason.clone()),
                message: message.clone(),
                started_at: Some(time::time(*started)),
                finished_at: Some(time::time(*finished)),
                ..Default::default()
            }),
            ..Default::default()
        },
    }
}

/// The agent's view of one pod.
pub struct PodView {
    pub init: Vec<Container>,
    pub main: Vec<Container>,
    pub initialized: bool,
    pub host_ip: String,
    pub pod_ip: String,
    pub start_time: DateTime<Utc>,
    /// Set when the pod can make no progress at all (for example its volumes cannot be made).
    pub failed_reason: Option<(String, String)>,
    /// Each condition's last status and when it took it: `lastTransitionTime` moves only when
    /// the status flips, as controllers measure `minReadySeconds` from the Ready transition.
    pub transitions: BTreeMap<&'static str, (bool, DateTime<Utc>)>,
}

impl PodView {
    /// `Pending` until a main container has run; `Succeeded`/`Failed` once every main container
    /// is done (all exit 0 or not); `Running` otherwise.
    pub fn phase(&self) -> &'static str {
        if self.failed_reason.is_some() || self.init.iter().any(|c| c.done && !c.succeeded()) {
            return "Failed";
        }
        if !self.main.is_empty() && self.main.iter().all(|c| c.done) {
            return if self.main.iter().all(Container::succeeded) {
                "Succeeded"
            } else {
                "Failed"
            };
        }
        if self.initialized && self.main.iter().any(Container::has_run) {
            return "Running";
        }
        "Pending"
    }

    pub fn to_status(&mut self) -> PodStatus {
        let now = Utc::now();
        // Sidecars serve beside the main containers: the pod is ready when they all are.
        let ready = !self.main.is_empty()
            && self.main.iter().all(Container::ready)
            && self.init.iter().filter(|c| c.sidecar).all(Container::ready);
        let mut condition = |type_: &'static str, ok: bool| {
            let (_, since) = *self
                .transitions
                .entry(type_)
                .and_modify(|(was, since)| {
                    if *was != ok {
                        (*was, *since) = (ok, now);
                    }
                })
                .or_insert((ok, now));
            PodCondition {
                type_: type_.into(),
                status: if ok { "True" } else { "False" }.into(),
                last_transition_time: Some(time::time(since)),
                ..Default::default()
            }
        };
        let conditions = vec![
            condition("PodScheduled", true),
            condition("Initialized", self.initialized),
            condition("ContainersReady", ready),
            condition("Ready", ready),
        ];
        let phase = self.phase();
        PodStatus {
            phase: Some(phase.into()),
            host_ip: Some(self.host_ip.clone()),
            host_ips: None,
            pod_ip: Some(self.pod_ip.clone()),
            pod_ips: Some(vec![PodIP {
                ip: self.pod_ip.clone(),
            }]),
            start_time: Some(time::time(self.start_time)),
            qos_class: Some("BestEffort".into()),
            reason: self.failed_reason.as_ref().map(|(r, _)| r.clone()),
            message: self.failed_reason.as_ref().map(|(_, m)| m.clone()),
            conditions: Some(conditions),
            init_container_statuses: if self.init.is_empty() {
                None
            } else {
                Some(self.init.iter().map(Container::to_status).collect())
            },
            container_statuses: Some(self.main.iter().map(Container::to_status).collect()),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(main: Vec<Container>) -> PodView {
        PodView {
            init: vec![],
            main,
            initialized: true,
            host_ip: "h".into(),
            pod_ip: "p".into(),
            start_time: Utc::now(),
            failed_reason: None,
            transitions: BTreeMap::new(),
        }
    }

    #[test]
    fn condition_times_move_only_when_the_status_flips() {
        let ready_since = |v: &mut PodView| {
            let status = v.to_status();
            let ready = status
                .conditions
                .unwrap()
                .into_iter()
                .find(|c| c.type_ == "Ready")
                .unwrap();
            (ready.status, ready.last_transition_time.unwrap().0)
        };
        let mut a = Container::new("a", "a.wasm");
        a.started(Utc::now());
        let mut v = view(vec![a]);
        let (status, first) = ready_since(&mut v);
        assert_eq!(status, "True");
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(ready_since(&mut v), ("True".to_string(), first));
        v.main[0].exited(&Exit::Code(1), Utc::now(), Utc::now());
        let (status, flipped) = ready_since(&mut v);
        assert_eq!(status, "False");
        assert!(flipped > first);
    }

    #[test]
    fn phases_follow_containers() {
        let mut a = Container::new("a", "a.wasm");
        let mut b = Container::new("b", "b.wasm");
        assert_eq!(view(vec![a.clone(), b.clone()]).phase(), "Pending");
        a.started(Utc::now());
        assert_eq!(view(vec![a.clone(), b.clone()]).phase(), "Running");
        a.exited(&Exit::Code(0), Utc::now(), Utc::now());
        a.done = true;
        b.started(Utc::now());
        b.exited(&Exit::Code(3), Utc::now(), Utc::now());
        b.done = true;
        let mut v = view(vec![a.clone(), b.clone()]);
        assert_eq!(v.phase(), "Failed");
        let status = v.to_status();
        let b_status = &status.container_statuses.unwrap()[1];
        assert_eq!(
            b_status
                .state
                .as_ref()
                .unwrap()
                .terminated
                .as_ref()
                .unwrap()
                .exit_code,
            3
        );
        assert_eq!(view(vec![a]).phase(), "Succeeded");
    }

    #[test]
    fn restarts_count_and_keep_last_state() {
        let mut c = Container::new("c", "c.wasm");
        c.started(Utc::now());
        c.exited(
            &Exit::Killed {
                reason: "OOMKilled",
                message: "m".into(),
                code: 137,
            },
            Utc::now(),
            Utc::now(),
        );
        c.backing_off("back-off 10s restarting failed container".into());
        assert_eq!(c.restart_count, 1);
        assert!(
            matches!(c.state, State::Waiting { ref reason, .. } if reason == "CrashLoopBackOff")
        );
        assert!(matches!(
            c.last_state,
            Some(State::Terminated { code: 137, .. })
        ));
        c.started(Utc::now());
        assert_eq!(c.restart_count, 1);
    }

    #[test]
    fn a_sidecars_readiness_counts_and_its_stop_does_not_fail_the_pod() {
        let ready = |v: &mut PodView| {
            let conditions = v.to_status().conditions.unwrap();
            conditions
                .iter()
                .find(|c| c.type_ == "Ready")
                .map(|c| c.status.clone())
                .unwrap()
        };
        let mut app = Container::new("app", "a.wasm");
        app.started(Utc::now());
        let mut sidecar = Container::new("cache", "c.wasm")
            .with_readiness_probe(true)
            .as_sidecar(true);
        sidecar.started(Utc::now());
        let mut v = view(vec![app]);
        v.init = vec![sidecar];
        assert_eq!(ready(&mut v), "False", "the sidecar's probe has not passed");
        v.init[0].probe_ready = Some(true);
        assert_eq!(ready(&mut v), "True");
        // The app finishes; the sidecar is stopped with it (exit 0): the pod succeeded.
        v.main[0].exited(&Exit::Code(0), Utc::now(), Utc::now());
        v.main[0].done = true;
        v.init[0].exited(&Exit::Code(0), Utc::now(), Utc::now());
        v.init[0].done = true;
        assert_eq!(v.phase(), "Succeeded");
    }
}
