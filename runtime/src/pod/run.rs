//! Runs one container instance to completion: builds its WASI context (argv, env, preopens,
//! stdout/stderr into the container log), instantiates the pre-linked program in a fresh store
//! with its memory limit and epoch deadline, and reports how it ended. A trap, an exhausted
//! memory limit or a host error ends this instance only.

use std::path::PathBuf;
use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime::{Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use super::log::ContainerLog;
use crate::engine::{Engine, P1Host, P2Host, Program};

/// A directory the guest sees at `guest_path`.
#[derive(Clone, Debug)]
pub struct Mount {
    pub host_path: PathBuf,
    pub guest_path: String,
    pub read_only: bool,
}

/// Everything one run of a container needs besides its program.
pub struct Launch {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    pub log: Arc<ContainerLog>,
    /// Bytes of linear memory the instance may use.
    pub memory_limit: usize,
}

/// How an instance ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The guest returned or called exit.
    Code(i32),
    /// The runtime ended the guest: `reason` as Kubernetes names it (`Error`, `OOMKilled`),
    /// `message` says why, `code` is the exit code reported.
    Killed { reason: &'static str, message: String, code: i32 },
}

pub async fn run(engine: &Engine, program: &Program, launch: Launch) -> Exit {
    let outcome = match program {
        Program::Module(pre) => run_module(engine, pre, &launch).await,
        Program::Component(pre) => run_component(engine, pre, &launch).await,
    };
    let exit = match outcome {
        Ok(code) => Exit::Code(code),
        Err(error) => classify(error),
    };
    launch.log.close();
    exit
}

fn wasi_builder(launch: &Launch) -> wasmtime::Result<WasiCtxBuilder> {
    let mut builder = WasiCtxBuilder::new();
    builder.args(&launch.argv);
    for (key, value) in &launch.env {
        builder.env(key, value);
    }
    builder.stdout(launch.log.writer()).stderr(launch.log.writer());
    for mount in &launch.mounts {
        let perms = if mount.read_only { FsPerms::ReadOnly } else { FsPerms::ReadWrite };
        builder.preopened_dir(&mount.host_path, &mount.guest_path, perms)?;
    }
    Ok(builder)
}

fn limits(launch: &Launch) -> StoreLimits {
    StoreLimitsBuilder::new().memory_size(launch.memory_limit).trap_on_grow_failure(true).build()
}

async fn run_module(engine: &Engine, pre: &wasmtime::InstancePre<P1Host>, launch: &Launch) -> wasmtime::Result<i32> {
    let host = P1Host { wasi: wasi_builder(launch)?.build_p1(), limits: limits(launch) };
    let mut store = Store::new(&engine.wasmtime, host);
    store.limiter(|host| &mut host.limits);
    // Yield to the scheduler every epoch tick, so a spinning guest never holds a thread.
    store.set_epoch_deadline(1);
    store.epoch_deadline_async_yield_and_update(1);
    let instance = pre.instantiate_async(&mut store).await?;
    let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
    start.call_async(&mut store, ()).await?;
    Ok(0)
}

async fn run_component(engine: &Engine, pre: &wasmtime_wasi::p2::bindings::CommandPre<P2Host>, launch: &Launch) -> wasmtime::Result<i32> {
    let host = P2Host { wasi: wasi_builder(launch)?.build(), table: ResourceTable::new(), limits: limits(launch) };
    let mut store = Store::new(&engine.wasmtime, host);
    store.limiter(|host| &mut host.limits);
    store.set_epoch_deadline(1);
    store.epoch_deadline_async_yield_and_update(1);
    let command = pre.instantiate_async(&mut store).await?;
    match command.wasi_cli_run().call_run(&mut store).await? {
        Ok(()) => Ok(0),
        Err(()) => Ok(1),
    }
}

/// Sorts an error that ended a guest: an explicit exit, running out of memory, or a trap.
fn classify(error: wasmtime::Error) -> Exit {
    if let Some(I32Exit(code)) = error.downcast_ref::<I32Exit>() {
        return Exit::Code(*code);
    }
    let message = format!("{error:#}");
    let out_of_memory = message.contains("memory") && (message.contains("grow") || message.contains("limit"));
    if out_of_memory {
        return Exit::Killed { reason: "OOMKilled", message, code: 137 };
    }
    Exit::Killed { reason: "Error", message, code: 128 }
}
