//! A container's instance settings (argv, environment, mounts, memory limit) as the pod's
//! worker made them once, and the launches made from them: each run of a command, each
//! request of an HTTP component, each exec in the pod's sandbox.

use std::sync::Arc;

use crate::engine::meter::Usage;
use crate::pod::network::PodNetwork;
use crate::pod::run::{self, Launch};

/// A container's instance settings, reused for every run (commands) or request (HTTP).
pub struct LaunchTemplate {
    pub(crate) argv: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) mounts: Vec<run::Mount>,
    pub(crate) memory_limit: usize,
    /// The container's meter, shared by all its instances (exec sessions included, as a
    /// process exec'd into a container counts in its cgroup).
    pub(crate) usage: Arc<Usage>,
}

impl LaunchTemplate {
    pub(crate) fn launch(
        &self,
        log: Arc<crate::pod::log::ContainerLog>,
        network: &Arc<PodNetwork>,
    ) -> Launch {
        self.launch_with(run::Stdio::Log(log), network)
    }

    #[cfg(test)]
    pub(crate) fn for_tests(env: Vec<(String, String)>, mounts: Vec<run::Mount>) -> Self {
        Self {
            argv: vec!["test".into()],
            env,
            mounts,
            memory_limit: 64 << 20,
            usage: Usage::new(),
        }
    }

    pub(crate) fn mounts(&self) -> &[run::Mount] {
        &self.mounts
    }

    /// A launch of this container's settings with other streams (an exec session).
    pub(crate) fn launch_with(&self, stdio: run::Stdio, network: &Arc<PodNetwork>) -> Launch {
        Launch {
            argv: self.argv.clone(),
            env: self.env.clone(),
            mounts: self.mounts.clone(),
            stdio,
            memory_limit: self.memory_limit,
            outgoing: network.outgoing(),
            usage: self.usage.clone(),
        }
    }
}
