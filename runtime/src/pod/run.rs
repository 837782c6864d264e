//! Runs one container instance to completion: builds its WASI context (argv, env, preopens,
//! stdout/stderr into the container log, or an exec session's streams), instantiates the pre-linked program in a fresh store
//! with its memory limit and epoch deadline, and reports how it ended. A trap, an exhausted
//! memory limit or a host error ends this instance only.

use std::path::PathBuf;
use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime::{Store, StoreLimitsBuilder};
use wasmtime_wasi::cli::{
    AsyncStdinStream, AsyncStdoutStream, IsTerminal, StdinStream, StdoutStream,
};
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use super::log::ContainerLog;
use crate::engine::meter::{MeteredLimits, Usage};
use crate::engine::{Engine, P1Host, P2Host, Program};

/// A directory the guest sees at `guest_path`.
#[derive(Clone, Debug)]
pub struct Mount {
    pub host_path: PathBuf,
    pub guest_path: String,
    pub read_only: bool,
}

/// Everything one run of a container needs besides its program.
#[derive(Clone)]
pub struct Launch {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    pub stdio: Stdio,
    /// Bytes of linear memory the instance may use.
    pub memory_limit: usize,
    /// The guest's outgoing HTTP (the pod's loopback: [`super::network::PodNetwork::outgoing`]).
    pub outgoing: OutgoingHttp,
    /// The container's CPU and memory, which this instance adds to while it runs.
    pub usage: Arc<Usage>,
}

/// Where an instance's standard streams go.
#[derive(Clone)]
pub enum Stdio {
    /// stdout and stderr into the container's log; stdin is empty.
    Log(Arc<ContainerLog>),
    /// The streams of an exec session.
    Session(Arc<SessionStdio>),
}

/// An exec session's ends of the guest's streams (pipes the session reads and writes).
pub struct SessionStdio {
    pub stdin: Option<AsyncStdinStream>,
    pub stdout: AsyncStdoutStream,
    /// `None`: stderr goes to stdout, as on a terminal.
    pub stderr: Option<AsyncStdoutStream>,
    /// Whether the guest is told its streams are a terminal.
    pub tty: bool,
}

/// One of a session's streams, as WASI takes it (the handles are shared, not cloned).
struct SessionStream {
    session: Arc<SessionStdio>,
    which: u8,
}

impl IsTerminal for SessionStream {
    fn is_terminal(&self) -> bool {
        self.session.tty
    }
}

impl StdinStream for SessionStream {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncRead + Send + Sync> {
        match &self.session.stdin {
            Some(stdin) => stdin.async_stream(),
            None => Box::new(tokio::io::empty()),
        }
    }

    fn p2_stream(&self) -> Box<dyn wasmtime_wasi::p2::InputStream> {
        match &self.session.stdin {
            Some(stdin) => stdin.p2_stream(),
            None => Box::new(wasmtime_wasi::p2::pipe::ClosedInputStream),
        }
    }
}

impl StdoutStream for SessionStream {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        self.stream().async_stream()
    }

    fn p2_stream(&self) -> Box<dyn wasmtime_wasi::p2::OutputStream> {
        self.stream().p2_stream()
    }
}

impl SessionStream {
    fn stream(&self) -> &AsyncStdoutStream {
        match (&self.session.stderr, self.which) {
            (Some(stderr), 2) => stderr,
            _ => &self.session.stdout,
        }
    }
}

/// Makes the wasi-http hooks each instance sends its outgoing requests through.
pub type OutgoingHttp =
    Arc<dyn Fn() -> Box<dyn wasmtime_wasi_http::WasiHttpHooks + Send> + Send + Sync>;

/// How an instance ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The guest returned or called exit.
    Code(i32),
    /// The runtime ended the guest: `reason` as Kubernetes names it (`Error`, `OOMKilled`),
    /// `message` says why, `code` is the exit code reported.
    Killed {
        reason: &'static str,
        message: String,
        code: i32,
    },
}

pub async fn run(engine: &Engine, program: &Program, launch: Launch) -> Exit {
    // A slot of the node's instance pool first: a command waits for one rather than failing
    // on a full pool.
    let _slot = engine.admission.admit().await;
    let outcome = match program {
        Program::Module(pre) => run_module(engine, pre, &launch).await,
        Program::Component(pre) => run_component(engine, pre, &launch).await,
        Program::Http(_) => Err(wasmtime::format_err!(
            "an HTTP component is served, not run to completion"
        )),
    };
    let exit = match outcome {
        Ok(code) => Exit::Code(code),
        Err(error) => classify(error),
    };
    if let Stdio::Log(log) = &launch.stdio {
        log.close();
    }
    exit
}

fn wasi_builder(launch: &Launch) -> wasmtime::Result<WasiCtxBuilder> {
    let mut builder = WasiCtxBuilder::new();
    builder.args(&launch.argv);
    for (key, value) in &launch.env {
        builder.env(key, value);
    }
    match &launch.stdio {
        Stdio::Log(log) => {
            builder.stdout(log.writer()).stderr(log.writer());
        }
        Stdio::Session(session) => {
            let stream = |which| SessionStream {
                session: session.clone(),
                which,
            };
            builder.stdin(stream(0)).stdout(stream(1)).stderr(stream(2));
        }
    }
    for mount in &launch.mounts {
        let perms = if mount.read_only {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        builder.preopened_dir(&mount.host_path, &mount.guest_path, perms)?;
    }
    Ok(builder)
}

fn limits(launch: &Launch) -> MeteredLimits {
    let limits = StoreLimitsBuilder::new()
        .memory_size(launch.memory_limit)
        .trap_on_grow_failure(true)
        .build();
    MeteredLimits::new(limits, launch.usage.clone())
}

/// The host state of a preview 2 instance (command or HTTP handler) of `launch`.
pub(crate) fn p2_host(launch: &Launch) -> wasmtime::Result<P2Host> {
    Ok(P2Host {
        wasi: wasi_builder(launch)?.build(),
        http: wasmtime_wasi_http::WasiHttpCtx::new(),
        hooks: (launch.outgoing)(),
        table: ResourceTable::new(),
        limits: limits(launch),
    })
}

async fn run_module(
    engine: &Engine,
    pre: &wasmtime::InstancePre<P1Host>,
    launch: &Launch,
) -> wasmtime::Result<i32> {
    let host = P1Host {
        wasi: wasi_builder(launch)?.build_p1(),
        limits: limits(launch),
    };
    let mut store = Store::new(&engine.wasmtime, host);
    store.limiter(|host| &mut host.limits);
    // Yield to the scheduler every epoch tick, so a spinning guest never holds a thread.
    store.set_epoch_deadline(1);
    store.epoch_deadline_async_yield_and_update(1);
    let run = async {
        let instance = pre.instantiate_async(&mut store).await?;
        let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
        start.call_async(&mut store, ()).await
    };
    launch.usage.metered(run).await?;
    Ok(0)
}

async fn run_component(
    engine: &Engine,
    pre: &wasmtime_wasi::p2::bindings::CommandPre<P2Host>,
    launch: &Launch,
) -> wasmtime::Result<i32> {
    let mut store = Store::new(&engine.wasmtime, p2_host(launch)?);
    store.limiter(|host| &mut host.limits);
    store.set_epoch_deadline(1);
    store.epoch_deadline_async_yield_and_update(1);
    let run = async {
        let command = pre.instantiate_async(&mut store).await?;
        command.wasi_cli_run().call_run(&mut store).await
    };
    match launch.usage.metered(run).await? {
        Ok(()) => Ok(0),
        Err(()) => Ok(1),
    }
}

/// Sorts an error that ended a guest: an explicit exit, running out of memory, or a trap.
pub(crate) fn classify(error: wasmtime::Error) -> Exit {
    if let Some(I32Exit(code)) = error.downcast_ref::<I32Exit>() {
        return Exit::Code(*code);
    }
    // The trap itself says what happened; the wasm backtrace is noise in a status message.
    let message = match error.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => trap.to_string(),
        None => format!("{error:#}")
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_string(),
    };
    let full = format!("{error:#}");
    let out_of_memory =
        full.contains("forcing trap when growing memory") || full.contains("memory allocation of");
    if out_of_memory {
        return Exit::Killed {
            reason: "OOMKilled",
            message: format!("the instance exceeded its memory limit ({message})"),
            code: 137,
        };
    }
    Exit::Killed {
        reason: "Error",
        message,
        code: 128,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineOptions;
    use crate::pod::log::ContainerLog;

    async fn run_hello(
        engine: &Arc<Engine>,
        image: &str,
        args: &[&str],
        mounts: Vec<Mount>,
    ) -> (Exit, String) {
        let program = engine.load(image).await.unwrap();
        let log = ContainerLog::new(1 << 16);
        let mut argv = vec!["hello".to_string()];
        argv.extend(args.iter().map(|a| a.to_string()));
        let launch = Launch {
            argv,
            env: vec![("GREETING".into(), "Ahoy".into())],
            mounts,
            stdio: Stdio::Log(log.clone()),
            memory_limit: 64 << 20,
            outgoing: crate::pod::network::PodNetwork::new().outgoing(),
            usage: Usage::new(),
        };
        (run(engine, &program, launch).await, log.text())
    }

    #[tokio::test]
    async fn runs_p1_modules_and_p2_components() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::new(&EngineOptions {
            cache_dir: dir.path().join("cache"),
            max_instances: 8,
        })
        .unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let mount = Mount {
            host_path: data.clone(),
            guest_path: "/data".into(),
            read_only: false,
        };
        for (image, flavour) in [
            (shoal_examples::HELLO_P1, "wasip1 module"),
            (shoal_examples::HELLO_P2, "wasip2 component"),
        ] {
            let (exit, log) = run_hello(
                &engine,
                image,
                &["shoal", "--lines", "2"],
                vec![mount.clone()],
            )
            .await;
            assert_eq!(exit, Exit::Code(0));
            assert_eq!(
                log,
                format!("Ahoy, shoal! (from a {flavour})\nline 1\nline 2\n")
            );
        }
        let written = std::fs::read_to_string(data.join("hello.txt")).unwrap();
        assert_eq!(written.lines().count(), 2, "{written}");
        // p1 keeps the full exit code; Rust std on wasip2 reports any failure as 1.
        assert_eq!(
            run_hello(&engine, shoal_examples::HELLO_P1, &["--exit", "3"], vec![])
                .await
                .0,
            Exit::Code(3)
        );
        assert_eq!(
            run_hello(&engine, shoal_examples::HELLO_P2, &["--exit", "3"], vec![])
                .await
                .0,
            Exit::Code(1)
        );
    }

    #[tokio::test]
    async fn read_only_mounts_reject_writes() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::new(&EngineOptions {
            cache_dir: dir.path().join("cache"),
            max_instances: 8,
        })
        .unwrap();
        let mount = Mount {
            host_path: dir.path().to_path_buf(),
            guest_path: "/data".into(),
            read_only: true,
        };
        let (exit, log) = run_hello(&engine, shoal_examples::HELLO_P1, &[], vec![mount]).await;
        assert_eq!(exit, Exit::Code(0));
        assert!(log.contains("cannot write /data/hello.txt"), "{log}");
        assert!(!dir.path().join("hello.txt").exists());
    }

    #[tokio::test]
    async fn compiled_artifacts_are_cached_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let options = EngineOptions {
            cache_dir: dir.path().join("cache"),
            max_instances: 8,
        };
        let first = Engine::new(&options).unwrap();
        first.load(shoal_examples::HELLO_P2).await.unwrap();
        let cached: Vec<_> = walk(&options.cache_dir);
        assert_eq!(cached.len(), 1, "{cached:?}");
        let modified = std::fs::metadata(&cached[0]).unwrap().modified().unwrap();
        // A second engine (an agent restart) loads the artifact instead of compiling again.
        let second = Engine::new(&options).unwrap();
        second.load(shoal_examples::HELLO_P2).await.unwrap();
        assert_eq!(
            std::fs::metadata(&cached[0]).unwrap().modified().unwrap(),
            modified
        );
        // Each engine says what it holds of the module, and how it got it.
        let size = std::fs::metadata(shoal_examples::HELLO_P2).unwrap().len();
        for (engine, state) in [(&first, "compiled"), (&second, "cached")] {
            let records = engine.modules();
            assert_eq!(records.len(), 1, "{records:?}");
            let record = &records[0];
            assert_eq!(
                (record.kind, record.compile_state, record.wasm_bytes),
                ("command", state, Some(size)),
                "{record:?}"
            );
            assert!(record.images.contains(shoal_examples::HELLO_P2));
            assert!(record.image_ids.contains(&record.digest), "{record:?}");
            assert!(record.compiled_bytes.is_some_and(|b| b > 0));
        }
    }

    #[tokio::test]
    async fn bad_images_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::new(&EngineOptions {
            cache_dir: dir.path().join("cache"),
            max_instances: 8,
        })
        .unwrap();
        let text = dir.path().join("not.wasm");
        std::fs::write(&text, "hello, I am text").unwrap();
        let err = engine.load(text.to_str().unwrap()).await.err().unwrap();
        assert_eq!(err.reason(), "CreateContainerError");
        assert!(
            err.to_string().contains("not a WebAssembly module"),
            "{err}"
        );
        let missing = engine.load("/no/such/file.wasm").await.err().unwrap();
        assert_eq!(missing.reason(), "ErrImagePull");
        assert!(missing.to_string().contains("/no/such/file.wasm"));
    }

    fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            if entry.path().is_dir() {
                found.extend(walk(&entry.path()));
            } else {
                found.push(entry.path());
            }
        }
        found
    }
}
