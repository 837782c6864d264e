//! `kubectl exec` into a pod: the agent's end of `pods/exec`, the kubelet's remote command
//! protocol over a WebSocket (`v5.channel.k8s.io`, and `v4.channel.k8s.io` for older
//! clients). Every binary message starts with its channel: 0 stdin, 1 stdout, 2 stderr,
//! 3 the final status (a `metav1.Status`), 4 terminal resize; v5 adds 255, a client's
//! "this stream is closed" (`[255, 0]`: end of stdin).
//!
//! The command runs inside the pod's sandbox as one fresh instance: the container's
//! environment, volumes (preopens), memory limit and loopback. A command naming one of the
//! pod's command modules (by container name) runs that module; anything else runs in the
//! toolbox ([`toolbox`]), which answers 127 `command not found` to a name it does not know.
//! With a tty, the agent is the terminal's line discipline ([`tty`]).
//!
//! Nothing outlives the session: a client that goes away aborts the instance, and the pod
//! ending ([`super::sandboxes::Sandbox::ended`]) ends the session.

pub mod attach;
pub mod tty;

use std::sync::Arc;

use axum::extract::ws::Message;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;
use wasmtime_wasi::cli::{AsyncStdinStream, AsyncStdoutStream};

use super::sandboxes::Sandbox;
use crate::engine::{Engine, ImageError, Program};
use crate::pod::run::{self, Exit, SessionStdio, Stdio};

pub const V5: &str = "v5.channel.k8s.io";
pub const V4: &str = "v4.channel.k8s.io";

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// The pipes between the session and the guest's streams.
const PIPE_BYTES: usize = 64 * 1024;
/// Messages waiting for the socket: past this, the guest's output waits.
const OUTGOING_MESSAGES: usize = 64;

/// What the client asked for (the query of `pods/exec`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOptions {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl ExecOptions {
    /// Reads the query as kube-apiserver and the kubelet spell it (`stdin`/`input`,
    /// `stdout`/`output`, `stderr`/`error`, `tty`, `command` once per argument).
    pub fn from_query(query: &[(String, String)]) -> Result<Self, String> {
        let flag = |names: &[&str]| {
            query
                .iter()
                .any(|(k, v)| names.contains(&k.as_str()) && matches!(v.as_str(), "true" | "1"))
        };
        let options = ExecOptions {
            command: (query.iter())
                .filter(|(k, _)| k == "command")
                .map(|(_, v)| v.clone())
                .collect(),
            stdin: flag(&["stdin", "input"]),
            stdout: flag(&["stdout", "output"]),
            stderr: flag(&["stderr", "error"]),
            tty: flag(&["tty"]),
        };
        if options.command.is_empty() || options.command[0].is_empty() {
            return Err("you must specify at least 1 command".into());
        }
        if !(options.stdin || options.stdout || options.stderr) {
            return Err("you must specify at least one of stdin, stdout, stderr".into());
        }
        if options.tty && options.stderr {
            return Err("stderr cannot be requested with a tty: a terminal has one output".into());
        }
        Ok(options)
    }
}

/// The program a command runs: the pod's command module of that name, or the toolbox.
pub async fn program_for(
    engine: &Arc<Engine>,
    sandbox: &Sandbox,
    command: &str,
) -> Result<Arc<Program>, ImageError> {
    let name = command.rsplit('/').next().unwrap_or(command);
    match sandbox.container(name) {
        Some(module) if !module.program.is_http() => Ok(module.program.clone()),
        _ => super::toolbox::program(engine).await,
    }
}

/// One exec session, ready to serve once the socket is upgraded.
pub struct Session {
    pub pod: String,
    pub sandbox: Arc<Sandbox>,
    /// The container whose settings the command runs with.
    pub container: String,
    pub program: Arc<Program>,
    pub engine: Arc<Engine>,
    pub options: ExecOptions,
    /// Whether the client may close its stdin with `[255, 0]` (v5).
    pub close_signal: bool,
}

/// Serves `session` over a socket's messages until the command ends (then the status and
/// a close) or the client goes away (then the instance is aborted).
pub async fn serve<Si, So, E>(mut sink: Si, mut source: So, session: Session)
where
    Si: futures::Sink<Message> + Unpin + Send + 'static,
    So: futures::Stream<Item = Result<Message, E>> + Unpin,
{
    let Session {
        pod,
        sandbox,
        container,
        program,
        engine,
        options,
        close_signal,
    } = session;
    let Some(settings) = sandbox.container(&container) else {
        return;
    };
    let (outgoing, mut messages) = mpsc::channel::<Message>(OUTGOING_MESSAGES);
    let writer = tokio::spawn(async move {
        while let Some(message) = messages.recv().await {
            if sink.send(message).await.is_err() {
                return;
            }
        }
        close_normally(&mut sink).await;
    });

    let tty = options.tty;
    let (stdin_guest, mut stdin_host) = match options.stdin {
        true => {
            let (guest, host) = tokio::io::duplex(PIPE_BYTES);
            (Some(AsyncStdinStream::new(guest)), Some(host))
        }
        false => (None, None),
    };
    let (stdout_guest, stdout_host) = tokio::io::duplex(PIPE_BYTES);
    let stderr = (!tty).then(|| tokio::io::duplex(PIPE_BYTES));
    let forward_out = tokio::spawn(forward(
        stdout_host,
        STDOUT,
        tty,
        options.stdout,
        outgoing.clone(),
    ));
    let (stderr_guest, forward_err) = match stderr {
        Some((guest, host)) => (
            Some(AsyncStdoutStream::new(PIPE_BYTES, guest)),
            Some(tokio::spawn(forward(
                host,
                STDERR,
                false,
                options.stderr,
                outgoing.clone(),
            ))),
        ),
        None => (None, None),
    };
    let stdio = SessionStdio {
        stdin: stdin_guest,
        stdout: AsyncStdoutStream::new(PIPE_BYTES, stdout_guest),
        stderr: stderr_guest,
        tty,
    };
    let mut launch = settings
        .template
        .launch_with(Stdio::Session(Arc::new(stdio)), &sandbox.network);
    launch.argv = options.command.clone();
    if tty {
        // As container runtimes do for a tty (the toolbox's shell prompts when it is set).
        launch.env.retain(|(k, _)| k != "TERM");
        launch.env.push(("TERM".into(), "xterm".into()));
    }
    // The exit is published on a watch, so that waiting for it is never cancelled away.
    let (exited, mut exit_seen) = tokio::sync::watch::channel(None::<Exit>);
    let run = AbortOnDropHandle::new(tokio::spawn(async move {
        let exit = run::run(&engine, &program, launch).await;
        let _ = exited.send(Some(exit));
    }));
    let ended = |seen: &tokio::sync::watch::Receiver<Option<Exit>>| {
        seen.borrow().clone().unwrap_or_else(|| Exit::Killed {
            reason: "Error",
            message: "the command's task ended without an exit".into(),
            code: 128,
        })
    };

    let mut discipline = tty::LineDiscipline::default();
    let exit = loop {
        tokio::select! {
            _ = exit_seen.changed() => break ended(&exit_seen),
            _ = sandbox.ended.cancelled() => break pod_stopped(&pod),
            message = source.next() => {
                let bytes = match message {
                    Some(Ok(Message::Binary(bytes))) => bytes,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                        // The client is gone: the instance ends with the session.
                        tracing::debug!("exec in {pod}: the client went away");
                        drop(run);
                        drop(outgoing);
                        let _ = writer.await;
                        return;
                    }
                    // Text, ping and pong carry nothing (tungstenite answers pings).
                    Some(Ok(_)) => continue,
                };
                let Some((&channel, data)) = bytes.split_first() else { continue };
                match channel {
                    STDIN => {
                        let Some(pipe) = stdin_host.as_mut() else { continue };
                        let input = if tty {
                            let keys = discipline.input(data);
                            if !keys.echo.is_empty() {
                                let mut echo = vec![STDOUT];
                                echo.extend_from_slice(&keys.echo);
                                let _ = outgoing.send(Message::Binary(echo.into())).await;
                            }
                            match keys.end {
                                Some(tty::End::Interrupt) => break Exit::Code(130),
                                Some(tty::End::Eof) => {
                                    let _ = pipe.write_all(&keys.to_guest).await;
                                    stdin_host = None;
                                    continue;
                                }
                                None => Bytes::from(keys.to_guest),
                            }
                        } else {
                            Bytes::copy_from_slice(data)
                        };
                        // A guest that exited no longer reads (its pipe is closed); one that
                        // never reads must not keep the session from seeing its end.
                        tokio::select! {
                            written = pipe.write_all(&input) => if written.is_err() {
                                stdin_host = None;
                            },
                            _ = exit_seen.changed() => break ended(&exit_seen),
                            _ = sandbox.ended.cancelled() => break pod_stopped(&pod),
                        }
                    }
                    CLOSE if close_signal && data.first() == Some(&STDIN) => stdin_host = None,
                    // The guest has no terminal size to change.
                    RESIZE | CLOSE => {}
                    _ => {}
                }
            }
        }
    };
    drop(run);
    drop(stdin_host);
    // The instance is gone: its ends of the pipes are closed, so the forwarders drain what
    // it wrote and stop; the status comes after all output.
    let _ = forward_out.await;
    if let Some(forward_err) = forward_err {
        let _ = forward_err.await;
    }
    let mut status = vec![STATUS];
    status.extend_from_slice(&status_json(&exit, &options.command));
    let _ = outgoing.send(Message::Binary(status.into())).await;
    drop(outgoing);
    let _ = writer.await;
}

fn pod_stopped(pod: &str) -> Exit {
    Exit::Killed {
        reason: "Error",
        message: format!("pod {pod} stopped"),
        code: 137,
    }
}

/// Ends a session with a normal closure (1000): client-go reads any other close, even one
/// without a code, as an error of the stream.
pub(crate) async fn close_normally<Si: futures::Sink<Message> + Unpin>(sink: &mut Si) {
    let normal = axum::extract::ws::CloseFrame {
        code: axum::extract::ws::close_code::NORMAL,
        reason: "".into(),
    };
    let _ = sink.send(Message::Close(Some(normal))).await;
    let _ = sink.close().await;
}

/// Copies a guest's stream to its channel (or drops it when the client did not ask for it).
async fn forward(
    mut from: DuplexStream,
    channel: u8,
    tty: bool,
    wanted: bool,
    to: mpsc::Sender<Message>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if !wanted {
            continue;
        }
        let mut message = Vec::with_capacity(n + 1 + if tty { n / 8 } else { 0 });
        message.push(channel);
        if tty {
            tty::output(&buffer[..n], &mut message);
        } else {
            message.extend_from_slice(&buffer[..n]);
        }
        if to.send(Message::Binary(message.into())).await.is_err() {
            return;
        }
    }
}

/// The `metav1.Status` the kubelet writes on the status channel at the end of a command.
pub fn status_json(exit: &Exit, command: &[String]) -> Vec<u8> {
    let (code, why) = match exit {
        Exit::Code(0) => {
            return serde_json::to_vec(&serde_json::json!({"metadata": {}, "status": "Success"}))
                .unwrap_or_default();
        }
        Exit::Code(code) => (*code, None),
        Exit::Killed {
            reason,
            message,
            code,
        } => (*code, Some(format!("{reason}: {message}"))),
    };
    let mut message = format!(
        "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
        command.join(" ")
    );
    if let Some(why) = why {
        message.push_str(&format!(" ({why})"));
    }
    serde_json::to_vec(&serde_json::json!({
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    }))
    .unwrap_or_default()
}

#[cfg(test)]
mod tests;
