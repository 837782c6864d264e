//! Exec sessions driven over in-memory message channels, with the real toolbox in a real
//! engine and a real volume.

use std::sync::Arc;

use axum::extract::ws::Message;
use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};

use super::*;
use crate::agent::sandboxes::{Sandbox, SandboxContainer};
use crate::engine::EngineOptions;
use crate::pod::network::PodNetwork;
use crate::pod::run::Mount;

struct Fixture {
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
    engine: Arc<Engine>,
    sandbox: Arc<Sandbox>,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::new(&EngineOptions {
        cache_dir: dir.path().join("cache"),
        max_instances: 8,
    })
    .unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("key"), "value-from-the-pod\n").unwrap();
    let template = crate::agent::launch::LaunchTemplate::for_tests(
        vec![("GREETING".into(), "Ahoy".into())],
        vec![Mount {
            host_path: data.clone(),
            guest_path: "/data".into(),
            read_only: false,
        }],
    );
    let containers = vec![SandboxContainer {
        name: "app".into(),
        program: crate::agent::toolbox::program(&engine).await.unwrap(),
        template,
    }];
    let sandbox = Arc::new(Sandbox::new(containers, PodNetwork::new()));
    Fixture {
        _dir: dir,
        data,
        engine,
        sandbox,
    }
}

/// What came back on each channel, and the decoded status.
#[derive(Default, Debug)]
struct Outcome {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: serde_json::Value,
}

impl Outcome {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    fn exit_code(&self) -> i64 {
        match self.status["status"].as_str() {
            Some("Success") => 0,
            _ => self.status["details"]["causes"][0]["message"]
                .as_str()
                .and_then(|m| m.parse().ok())
                .unwrap_or(-1),
        }
    }
}

/// Runs `command` with `input` sent on stdin (then closed, as v5 does).
async fn exec(fixture: &Fixture, command: &[&str], input: Option<&[u8]>, tty: bool) -> Outcome {
    let options = ExecOptions {
        command: command.iter().map(|s| s.to_string()).collect(),
        stdin: input.is_some(),
        stdout: true,
        stderr: !tty,
        tty,
    };
    let program = program_for(&fixture.engine, &fixture.sandbox, command[0])
        .await
        .unwrap();
    let session = Session {
        pod: "default/p".into(),
        sandbox: fixture.sandbox.clone(),
        container: "app".into(),
        program,
        engine: fixture.engine.clone(),
        options,
        close_signal: true,
    };
    let (to_server, from_client) = mpsc::unbounded::<Result<Message, std::convert::Infallible>>();
    let (to_client, mut from_server) = mpsc::unbounded::<Message>();
    let server = tokio::spawn(serve(to_client, from_client, session));
    if let Some(input) = input {
        let mut to_server = to_server.clone();
        let mut message = vec![STDIN];
        message.extend_from_slice(input);
        to_server
            .send(Ok(Message::Binary(message.into())))
            .await
            .unwrap();
        to_server
            .send(Ok(Message::Binary(vec![CLOSE, STDIN].into())))
            .await
            .unwrap();
    }
    let mut outcome = Outcome::default();
    let collect = async {
        while let Some(message) = from_server.next().await {
            let Message::Binary(bytes) = message else {
                continue;
            };
            match bytes[0] {
                STDOUT => outcome.stdout.extend_from_slice(&bytes[1..]),
                STDERR => outcome.stderr.extend_from_slice(&bytes[1..]),
                STATUS => outcome.status = serde_json::from_slice(&bytes[1..]).unwrap(),
                other => panic!("unexpected channel {other}"),
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), collect)
        .await
        .expect("the session ended");
    server.await.unwrap();
    drop(to_server);
    outcome
}

#[tokio::test]
async fn commands_see_the_pods_volumes_and_environment() {
    let fixture = fixture().await;
    let out = exec(&fixture, &["cat", "/data/key"], None, false).await;
    assert_eq!(
        (out.stdout(), out.exit_code()),
        ("value-from-the-pod\n".into(), 0)
    );
    assert_eq!(out.status["status"], "Success");
    let out = exec(
        &fixture,
        &["sh", "-c", "echo hi > /data/x && cat /data/x | wc -c"],
        None,
        false,
    )
    .await;
    assert_eq!(out.stdout(), "3\n", "{}", out.stderr());
    assert_eq!(
        std::fs::read_to_string(fixture.data.join("x")).unwrap(),
        "hi\n"
    );
    let out = exec(
        &fixture,
        &["sh", "-c", "echo $GREETING; env | grep -c GREETING"],
        None,
        false,
    )
    .await;
    assert_eq!(out.stdout(), "Ahoy\n1\n");
    let out = exec(&fixture, &["ls", "/"], None, false).await;
    assert_eq!(out.stdout(), "data\n");
}

#[tokio::test]
async fn exit_codes_and_unknown_commands() {
    let fixture = fixture().await;
    let out = exec(&fixture, &["sh", "-c", "exit 7"], None, false).await;
    assert_eq!(out.exit_code(), 7, "{}", out.status);
    assert_eq!(out.status["reason"], "NonZeroExitCode");
    let out = exec(&fixture, &["no-such-tool", "x"], None, false).await;
    assert_eq!(out.exit_code(), 127);
    assert!(
        out.stderr().contains("no-such-tool: command not found"),
        "{}",
        out.stderr()
    );
    let out = exec(
        &fixture,
        &["sh", "-c", "false || echo fell back; true && nope"],
        None,
        false,
    )
    .await;
    assert_eq!(out.stdout(), "fell back\n");
    assert_eq!(out.exit_code(), 127);
    assert!(out.stderr().contains("sh: nope: command not found"));
    let out = exec(
        &fixture,
        &[
            "sh",
            "-c",
            "echo gone > /dev/null; cat < /dev/null; echo kept",
        ],
        None,
        false,
    )
    .await;
    assert_eq!(
        (out.stdout(), out.stderr()),
        ("kept\n".into(), String::new())
    );
    let out = exec(&fixture, &["cat", "/data/missing"], None, false).await;
    assert_eq!(out.exit_code(), 1);
    assert!(
        out.stderr()
            .contains("cat: /data/missing: No such file or directory"),
        "{}",
        out.stderr()
    );
}

#[tokio::test]
async fn stdin_streams_into_the_command() {
    let fixture = fixture().await;
    let input: Vec<u8> = (0..200_000u32)
        .flat_map(|i| format!("line {i}\n").into_bytes())
        .collect();
    let out = exec(
        &fixture,
        &["sh", "-c", "cat > /data/in; wc -l < /data/in"],
        Some(&input),
        false,
    )
    .await;
    assert_eq!(out.stdout(), "200000\n", "{}", out.stderr());
    assert_eq!(std::fs::read(fixture.data.join("in")).unwrap(), input);
    // line 1999, 19990-19999, 199900-199999.
    let out = exec(&fixture, &["grep", "-c", "line 1999"], Some(&input), false).await;
    assert_eq!(out.stdout(), "111\n");
}

#[tokio::test]
async fn a_tty_echoes_prompts_and_reads_lines() {
    let fixture = fixture().await;
    let out = exec(
        &fixture,
        &["sh"],
        Some(b"echo one\recho tw\x7fwo\rexit 3\r"),
        true,
    )
    .await;
    // Typed ahead: the echo of all three lines comes first, then the shell's output (each
    // newline as CRLF), a prompt before each command.
    let text = out.stdout();
    let echo = "echo one\r\necho tw\x08 \x08wo\r\nexit 3\r\n";
    assert_eq!(text, format!("{echo}$ one\r\n$ two\r\n$ "));
    assert_eq!(out.exit_code(), 3);
}

#[tokio::test]
async fn tar_round_trips_a_directory() {
    let fixture = fixture().await;
    let tree = fixture.data.join("tree/sub");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(
        tree.join("a.bin"),
        (0..=255u8).cycle().take(100_000).collect::<Vec<_>>(),
    )
    .unwrap();
    std::fs::write(fixture.data.join("tree/b.txt"), "bee\n").unwrap();
    let out = exec(&fixture, &["tar", "cf", "-", "/data/tree"], None, false).await;
    assert_eq!(out.exit_code(), 0, "{}", out.stderr());
    assert!(
        out.stderr().contains("Removing leading `/'"),
        "{}",
        out.stderr()
    );
    let out = exec(
        &fixture,
        &[
            "sh",
            "-c",
            "mkdir -p /data/copy && tar -xmf - -C /data/copy",
        ],
        Some(&out.stdout),
        false,
    )
    .await;
    assert_eq!(out.exit_code(), 0, "{}", out.stderr());
    assert_eq!(
        std::fs::read(fixture.data.join("copy/data/tree/sub/a.bin")).unwrap(),
        std::fs::read(tree.join("a.bin")).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(fixture.data.join("copy/data/tree/b.txt")).unwrap(),
        "bee\n"
    );
}

#[tokio::test]
async fn a_client_that_goes_away_ends_the_command() {
    let fixture = fixture().await;
    let options = ExecOptions {
        command: vec!["sleep".into(), "600".into()],
        stdin: false,
        stdout: true,
        stderr: true,
        tty: false,
    };
    let session = Session {
        pod: "default/p".into(),
        sandbox: fixture.sandbox.clone(),
        container: "app".into(),
        program: crate::agent::toolbox::program(&fixture.engine)
            .await
            .unwrap(),
        engine: fixture.engine.clone(),
        options,
        close_signal: true,
    };
    let (to_server, from_client) = mpsc::unbounded::<Result<Message, std::convert::Infallible>>();
    let (to_client, _from_server) = mpsc::unbounded::<Message>();
    let server = tokio::spawn(serve(to_client, from_client, session));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let busy = fixture.engine.admission.in_use();
    assert_eq!(busy, 1, "the command holds an instance");
    drop(to_server);
    tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .expect("the session ends with its client")
        .unwrap();
    assert_eq!(fixture.engine.admission.in_use(), 0, "the instance is gone");
}

#[test]
fn options_are_read_from_the_query() {
    let query = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let options = ExecOptions::from_query(&query(&[
        ("command", "sh"),
        ("command", "-c"),
        ("command", "echo hi"),
        ("stdout", "true"),
        ("stderr", "true"),
    ]))
    .unwrap();
    assert_eq!(options.command, ["sh", "-c", "echo hi"]);
    assert!(options.stdout && options.stderr && !options.stdin && !options.tty);
    assert!(ExecOptions::from_query(&query(&[("stdout", "true")]))
        .unwrap_err()
        .contains("at least 1 command"));
    assert!(ExecOptions::from_query(&query(&[("command", "ls")]))
        .unwrap_err()
        .contains("at least one of stdin, stdout, stderr"));
    assert!(ExecOptions::from_query(&query(&[
        ("command", "sh"),
        ("tty", "true"),
        ("stderr", "true")
    ]))
    .is_err());
}

#[test]
fn statuses_say_how_the_command_ended() {
    let ok: serde_json::Value = serde_json::from_slice(&status_json(&Exit::Code(0), &[])).unwrap();
    assert_eq!(ok["status"], "Success");
    let failed: serde_json::Value = serde_json::from_slice(&status_json(
        &Exit::Code(7),
        &["sh".into(), "-c".into(), "exit 7".into()],
    ))
    .unwrap();
    assert_eq!(failed["reason"], "NonZeroExitCode");
    assert_eq!(
        failed["details"]["causes"][0],
        serde_json::json!({"reason": "ExitCode", "message": "7"})
    );
    assert!(failed["message"]
        .as_str()
        .unwrap()
        .contains("[sh -c exit 7], exit code 7"));
}

#[tokio::test]
async fn malformed_messages_are_ignored_and_the_command_still_runs() {
    let fixture = fixture().await;
    let options = ExecOptions {
        command: vec!["cat".into()],
        stdin: true,
        stdout: true,
        stderr: true,
        tty: false,
    };
    let session = Session {
        pod: "default/p".into(),
        sandbox: fixture.sandbox.clone(),
        container: "app".into(),
        program: crate::agent::toolbox::program(&fixture.engine)
            .await
            .unwrap(),
        engine: fixture.engine.clone(),
        options,
        close_signal: true,
    };
    let (mut to_server, from_client) =
        mpsc::unbounded::<Result<Message, std::convert::Infallible>>();
    let (to_client, mut from_server) = mpsc::unbounded::<Message>();
    let server = tokio::spawn(serve(to_client, from_client, session));
    for junk in [
        Message::Binary(Vec::new().into()),
        Message::Binary(vec![9, 1, 2, 3].into()),
        Message::Binary(vec![RESIZE, b'{', b'x'].into()),
        Message::Binary(vec![CLOSE].into()),
        Message::Binary(vec![CLOSE, 7].into()),
        Message::Text("not a channel".into()),
    ] {
        to_server.send(Ok(junk)).await.unwrap();
    }
    to_server
        .send(Ok(Message::Binary(vec![STDIN, b'o', b'k'].into())))
        .await
        .unwrap();
    to_server
        .send(Ok(Message::Binary(vec![CLOSE, STDIN].into())))
        .await
        .unwrap();
    let mut stdout = Vec::new();
    let mut status = serde_json::Value::Null;
    let collect = async {
        while let Some(Message::Binary(bytes)) = from_server.next().await {
            match bytes[0] {
                STDOUT => stdout.extend_from_slice(&bytes[1..]),
                STATUS => status = serde_json::from_slice(&bytes[1..]).unwrap(),
                _ => {}
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), collect)
        .await
        .expect("the session ended");
    server.await.unwrap();
    assert_eq!(
        (stdout.as_slice(), &status["status"]),
        (&b"ok"[..], &serde_json::json!("Success"))
    );
}
