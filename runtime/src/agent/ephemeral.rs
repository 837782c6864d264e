//! Ephemeral containers: what `kubectl debug POD -it --image=toolbox` adds to a running pod
//! (through `pods/ephemeralcontainers`). Each runs once, never restarted, as one instance in
//! the pod's sandbox: the target container's volumes (`--target`), or every volume the pod's
//! containers mount, and the pod's loopback. The image `toolbox` is the toolbox built into
//! the agent; any other image is loaded as a pod's would be.
//!
//! Its stdio is kept for attaching ([`Attachable`], [`super::console`]), its output also
//! going to the container's log (`kubectl logs -c`).
//! Its status is written to `status.ephemeralContainerStatuses`: running, then terminated
//! with its exit code. It ends with the pod.

use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use k8s_openapi::api::core::v1::{EphemeralContainer, Pod};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use wasmtime_wasi::cli::{AsyncStdinStream, AsyncStdoutStream};

use super::console::Attachable;
use super::sandboxes::Sandbox;
use super::Shared;
use crate::pod::run::{self, Exit, Mount, SessionStdio, Stdio};

const PIPE_BYTES: usize = 64 * 1024;

/// Whether `image` names the built-in toolbox.
pub fn is_toolbox(image: &str) -> bool {
    let name = image.rsplit('/').next().unwrap_or(image);
    name == "toolbox" || name.starts_with("toolbox:")
}

/// Starts the ephemeral containers of `pod` that are not running yet.
pub fn sync(shared: &Arc<Shared>, pod: &Pod) {
    let key = format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or(""),
        pod.metadata.name.as_deref().unwrap_or("")
    );
    let wanted = pod
        .spec
        .as_ref()
        .and_then(|s| s.ephemeral_containers.clone())
        .unwrap_or_default();
    if wanted.is_empty() {
        return;
    }
    let Some(sandbox) = shared.sandboxes.get(&key) else {
        // Not prepared yet: the next event for the pod (its status) brings it back here.
        return;
    };
    for spec in wanted {
        let mut started = sandbox.ephemeral.lock().unwrap_or_else(|p| p.into_inner());
        if started.contains_key(&spec.name) {
            continue;
        }
        let (attachable, pipes) = console(&spec);
        started.insert(spec.name.clone(), attachable.clone());
        drop(started);
        let (shared, sandbox, pod) = (shared.clone(), sandbox.clone(), pod.clone());
        let ended = sandbox.ended.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = run(&shared, &pod, &sandbox, &spec, attachable, pipes) => {}
                _ = ended.cancelled() => {}
            }
        });
    }
}

/// The guest's ends of an ephemeral container's streams, and what feeds them.
struct Pipes {
    /// What attached sessions send to stdin.
    stdin: Option<mpsc::Receiver<Bytes>>,
    stdout: (tokio::io::DuplexStream, tokio::io::DuplexStream),
    exited: watch::Sender<bool>,
}

fn console(spec: &EphemeralContainer) -> (Arc<Attachable>, Pipes) {
    let wants_stdin = spec.stdin.unwrap_or(false);
    let (stdin_sender, stdin) = match wants_stdin {
        true => {
            let (sender, receiver) = mpsc::channel(16);
            (Some(sender), Some(receiver))
        }
        false => (None, None),
    };
    let (exited_sender, exited) = watch::channel(false);
    let attachable = Arc::new(Attachable::new(
        spec.tty.unwrap_or(false),
        stdin_sender,
        exited,
    ));
    let pipes = Pipes {
        stdin,
        stdout: tokio::io::duplex(PIPE_BYTES),
        exited: exited_sender,
    };
    (attachable, pipes)
}

async fn run(
    shared: &Arc<Shared>,
    pod: &Pod,
    sandbox: &Arc<Sandbox>,
    spec: &EphemeralContainer,
    attachable: Arc<Attachable>,
    pipes: Pipes,
) {
    let image = spec.image.clone().unwrap_or_default();
    let loaded = if is_toolbox(&image) {
        super::toolbox::program(&shared.engine).await
    } else {
        shared.engine.load(&image).await
    };
    let program = match loaded {
        Ok(program) if !program.is_http() => program,
        Ok(_) => {
            let message = format!(
                "image {image:?} is an HTTP component; an ephemeral container runs a command"
            );
            report(
                shared,
                pod,
                sandbox,
                spec,
                waiting("CreateContainerError", &message),
            )
            .await;
            return;
        }
        Err(e) => {
            report(
                shared,
                pod,
                sandbox,
                spec,
                waiting(e.reason(), &e.to_string()),
            )
            .await;
            return;
        }
    };
    let Some(base) = target_template(sandbox, spec) else {
        let message = "the pod has no container to share settings with";
        report(
            shared,
            pod,
            sandbox,
            spec,
            waiting("CreateContainerError", message),
        )
        .await;
        return;
    };
    let pod_key = format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or(""),
        pod.metadata.name.as_deref().unwrap_or("")
    );
    let log = shared.logs.start_run(&pod_key, &spec.name);

    // Streams: stdin fed by attached sessions, output to them and to the log.
    let (stdin_guest, mut stdin_feed) = match pipes.stdin {
        Some(receiver) => {
            let (guest, host) = tokio::io::duplex(PIPE_BYTES);
            (Some(AsyncStdinStream::new(guest)), Some((host, receiver)))
        }
        None => (None, None),
    };
    if let Some((mut host, mut receiver)) = stdin_feed.take() {
        tokio::spawn(async move {
            while let Some(bytes) = receiver.recv().await {
                if host.write_all(&bytes).await.is_err() {
                    return;
                }
            }
        });
    }
    let (stdout_guest, mut stdout_host) = pipes.stdout;
    let forwarder = {
        let (attachable, log) = (attachable.clone(), log.clone());
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 16 * 1024];
            while let Ok(n @ 1..) = stdout_host.read(&mut buffer).await {
                attachable.publish(&buffer[..n]);
                log.write(&buffer[..n]);
            }
        })
    };
    let stdio = SessionStdio {
        stdin: stdin_guest,
        stdout: AsyncStdoutStream::new(PIPE_BYTES, stdout_guest),
        stderr: None,
        tty: attachable.tty,
    };
    let mut launch = base
        .0
        .launch_with(Stdio::Session(Arc::new(stdio)), &sandbox.network);
    launch.mounts = base.1;
    let mut argv: Vec<String> = spec.command.clone().unwrap_or_default();
    argv.extend(spec.args.clone().unwrap_or_default());
    if argv.is_empty() {
        argv.push("sh".into());
    }
    launch.argv = argv;
    launch.env = (spec.env.iter().flatten())
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect();
    if attachable.tty {
        launch.env.push(("TERM".into(), "xterm".into()));
    }

    let started = Utc::now();
    let running = json!({"running": {"startedAt": started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)}});
    report(shared, pod, sandbox, spec, running).await;
    let exit = run::run(&shared.engine, &program, launch).await;
    let _ = forwarder.await;
    log.close();
    let _ = pipes.exited.send(true);
    let (code, reason, message) = match &exit {
        Exit::Code(0) => (0, "Completed", None),
        Exit::Code(code) => (*code, "Error", None),
        Exit::Killed {
            reason,
            message,
            code,
        } => (*code, *reason, Some(message.clone())),
    };
    let mut terminated = json!({"exitCode": code, "reason": reason,
        "startedAt": started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "finishedAt": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)});
    if let Some(message) = message {
        terminated["message"] = json!(message);
    }
    report(
        shared,
        pod,
        sandbox,
        spec,
        json!({"terminated": terminated}),
    )
    .await;
}

/// The settings an ephemeral container shares: its target's (`--target`), or the first
/// container's with every volume any of the pod's containers mounts.
fn target_template<'a>(
    sandbox: &'a Sandbox,
    spec: &EphemeralContainer,
) -> Option<(&'a super::launch::LaunchTemplate, Vec<Mount>)> {
    if let Some(target) = spec.target_container_name.as_deref() {
        let container = sandbox.container(target)?;
        return Some((&container.template, container.template.mounts().to_vec()));
    }
    let first = sandbox.containers.first()?;
    let mut mounts: Vec<Mount> = Vec::new();
    for container in &sandbox.containers {
        for mount in container.template.mounts() {
            if !mounts.iter().any(|m| m.guest_path == mount.guest_path) {
                mounts.push(mount.clone());
            }
        }
    }
    Some((&first.template, mounts))
}

fn waiting(reason: &str, message: &str) -> serde_json::Value {
    json!({"waiting": {"reason": reason, "message": message}})
}

/// Writes the container's state into the pod's `ephemeralContainerStatuses` (the whole
/// list: it is replaced, not merged).
async fn report(
    shared: &Arc<Shared>,
    pod: &Pod,
    sandbox: &Sandbox,
    spec: &EphemeralContainer,
    state: serde_json::Value,
) {
    let mut statuses = sandbox.ephemeral_statuses.lock().await;
    let status = json!({"name": spec.name, "image": spec.image.clone().unwrap_or_default(),
        "imageID": "", "ready": false, "restartCount": 0, "state": state});
    match statuses
        .iter_mut()
        .find(|s| s["name"] == spec.name.as_str())
    {
        Some(existing) => *existing = status,
        None => statuses.push(status),
    }
    let patch = json!({"status": {"ephemeralContainerStatuses": *statuses}});
    let name = pod.metadata.name.clone().unwrap_or_default();
    let pods = shared.client.api::<Pod>(pod.metadata.namespace.as_deref());
    if let Err(e) = pods.patch_status_strategic(&name, &patch).await {
        if !e.is_not_found() {
            tracing::warn!("pod {name}: writing ephemeral container {}: {e}", spec.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_toolbox_is_named_plainly_or_with_a_tag() {
        assert!(is_toolbox("toolbox"));
        assert!(is_toolbox("toolbox:latest"));
        assert!(is_toolbox("shoal/toolbox"));
        assert!(!is_toolbox("busybox"));
        assert!(!is_toolbox("/images/my-toolbox.wasm"));
    }
}
