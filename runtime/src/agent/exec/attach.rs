//! `kubectl attach` (and the attach of `kubectl debug -it`): the same channels as exec, to
//! a container that is already running. An ephemeral container's console is attached both
//! ways (its stdin, its output from the last 64 KiB on; with a tty the agent is the line
//! discipline of this session); a command module's output is followed from its log.
//! Detaching leaves the container running; when it ends, the session closes (attach reports
//! no exit code, as the kubelet's does not).

use std::sync::Arc;

use axum::extract::ws::Message;
use futures::{SinkExt, StreamExt};
use tokio::sync::{broadcast, mpsc};

use super::tty;
use super::{close_normally, STDIN, STDOUT};
use crate::agent::console::Attachable;
use crate::pod::log::ContainerLog;

/// What the client asked to attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttachOptions {
    pub stdin: bool,
    pub stdout: bool,
    pub tty: bool,
}

impl AttachOptions {
    pub fn from_query(query: &[(String, String)]) -> Self {
        let flag = |names: &[&str]| {
            query
                .iter()
                .any(|(k, v)| names.contains(&k.as_str()) && matches!(v.as_str(), "true" | "1"))
        };
        AttachOptions {
            stdin: flag(&["stdin", "input"]),
            stdout: flag(&["stdout", "output", "stderr", "error"]),
            tty: flag(&["tty"]),
        }
    }
}

/// Attaches a session to an ephemeral container's console.
pub async fn console<Si, So, E>(
    sink: Si,
    mut source: So,
    console: Arc<Attachable>,
    options: AttachOptions,
) where
    Si: futures::Sink<Message> + Unpin + Send + 'static,
    So: futures::Stream<Item = Result<Message, E>> + Unpin,
{
    let (outgoing, writer) = spawn_writer(sink);
    let tty = options.tty && console.tty;
    let output = |bytes: &[u8]| {
        let mut message = vec![STDOUT];
        if tty {
            tty::output(bytes, &mut message);
        } else {
            message.extend_from_slice(bytes);
        }
        Message::Binary(message.into())
    };
    let (backlog, mut rest) = console.subscribe();
    if options.stdout && !backlog.is_empty() {
        let _ = outgoing.send(output(&backlog)).await;
    }
    let stdin = console.stdin().filter(|_| options.stdin);
    let mut exited = console.exited();
    let mut discipline = tty::LineDiscipline::default();
    loop {
        tokio::select! {
            chunk = rest.recv() => match chunk {
                Ok(bytes) if options.stdout => {
                    let _ = outgoing.send(output(&bytes)).await;
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = async { let _ = exited.wait_for(|done| *done).await; } => {
                while let Ok(bytes) = rest.try_recv() {
                    if options.stdout {
                        let _ = outgoing.send(output(&bytes)).await;
                    }
                }
                break;
            }
            message = source.next() => {
                let bytes = match message {
                    Some(Ok(Message::Binary(bytes))) => bytes,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => continue,
                };
                let (Some(stdin), Some((&STDIN, data))) = (&stdin, bytes.split_first()) else {
                    continue;
                };
                let input = if tty {
                    let keys = discipline.input(data);
                    if !keys.echo.is_empty() {
                        let mut echo = vec![STDOUT];
                        echo.extend_from_slice(&keys.echo);
                        let _ = outgoing.send(Message::Binary(echo.into())).await;
                    }
                    if keys.end == Some(tty::End::Eof) {
                        // Detaching, not closing: others may attach again.
                        break;
                    }
                    keys.to_guest
                } else {
                    data.to_vec()
                };
                if !input.is_empty() && stdin.send(input.into()).await.is_err() {
                    break;
                }
            }
        }
    }
    drop(outgoing);
    let _ = writer.await;
}

/// Attaches a session to a command module's output: its log, from now until it ends.
pub async fn log<Si, So, E>(
    sink: Si,
    mut source: So,
    log: Arc<ContainerLog>,
    options: AttachOptions,
) where
    Si: futures::Sink<Message> + Unpin + Send + 'static,
    So: futures::Stream<Item = Result<Message, E>> + Unpin,
{
    let (outgoing, writer) = spawn_writer(sink);
    let mut next = log.tail_start(0);
    loop {
        let (lines, closed) = log.read_from(next);
        if let Some(last) = lines.last() {
            next = last.seq + 1;
        }
        if options.stdout && !lines.is_empty() {
            let mut message = vec![STDOUT];
            for line in lines {
                message.extend_from_slice(line.text.as_bytes());
                message.extend_from_slice(if options.tty { b"\r\n" } else { b"\n" });
            }
            let _ = outgoing.send(Message::Binary(message.into())).await;
        }
        if closed {
            break;
        }
        tokio::select! {
            _ = log.wait_past(next) => {}
            message = source.next() => match message {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                // Its stdin is closed: what the client types goes nowhere.
                Some(Ok(_)) => {}
            },
        }
    }
    drop(outgoing);
    let _ = writer.await;
}

fn spawn_writer<Si>(sink: Si) -> (mpsc::Sender<Message>, tokio::task::JoinHandle<()>)
where
    Si: futures::Sink<Message> + Unpin + Send + 'static,
{
    let (outgoing, mut messages) = mpsc::channel::<Message>(64);
    let writer = tokio::spawn(async move {
        let mut sink = sink;
        while let Some(message) = messages.recv().await {
            if sink.send(message).await.is_err() {
                return;
            }
        }
        close_normally(&mut sink).await;
    });
    (outgoing, writer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::channel::mpsc as channel;

    #[tokio::test]
    async fn a_command_modules_output_is_followed_from_now_until_it_ends() {
        let log = ContainerLog::new(1 << 16);
        log.write(b"before attaching\n");
        let (_to_server, from_client) =
            channel::unbounded::<Result<Message, std::convert::Infallible>>();
        let (to_client, mut from_server) = channel::unbounded::<Message>();
        let options = AttachOptions {
            stdin: false,
            stdout: true,
            tty: false,
        };
        let session = tokio::spawn(super::log(to_client, from_client, log.clone(), options));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        log.write(b"one\ntwo\n");
        log.write(b"partial");
        log.close();
        let mut seen = Vec::new();
        let mut closed = false;
        while let Some(message) = from_server.next().await {
            match message {
                Message::Binary(bytes) => {
                    assert_eq!(bytes[0], STDOUT);
                    seen.extend_from_slice(&bytes[1..]);
                }
                Message::Close(frame) => {
                    closed = frame.is_some_and(|f| f.code == axum::extract::ws::close_code::NORMAL);
                }
                _ => {}
            }
        }
        session.await.unwrap();
        assert_eq!(String::from_utf8_lossy(&seen), "one\ntwo\npartial\n");
        assert!(closed, "a normal close when the container ends");
    }

    #[test]
    fn options_are_read_from_the_query() {
        let query = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let options = AttachOptions::from_query(&query(&[
            ("stdin", "true"),
            ("stdout", "1"),
            ("tty", "true"),
        ]));
        assert_eq!(
            options,
            AttachOptions {
                stdin: true,
                stdout: true,
                tty: true
            }
        );
        let options = AttachOptions::from_query(&query(&[("stderr", "true")]));
        assert_eq!(
            options,
            AttachOptions {
                stdin: false,
                stdout: true,
                tty: false
            }
        );
    }
}
