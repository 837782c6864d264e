//! The node's one wasmtime [`Engine`]: async, pooling allocator, epoch interruption
//! (DESIGN.md §4), the linkers for WASI preview 1 modules and preview 2 components, and the
//! image cache that turns an image reference into a pre-instantiated program, compiled once.

pub mod admission;
pub(crate) mod fetch;
mod host;
mod image;
pub mod meter;
pub mod oci;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::component;
use wasmtime::{Config, InstanceAllocationStrategy, PoolingAllocationConfig};

pub use fetch::TlsSetupError;
pub use host::{P1Host, P2Host};
pub use image::{ImageError, ModuleRecord, Program};

/// How often the epoch advances: the CPU time slice after which a busy guest yields.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Bytes of each pooled linear memory kept resident between instances: what a request to a
/// typical Rust, Python or JavaScript HTTP handler dirties (its stack, heap and data). RSS
/// grows by at most this per warm slot, and only by the pages guests actually touched.
pub const KEEP_RESIDENT: usize = 1 << 20;

/// Bytes of each pooled table kept resident between instances.
const TABLE_KEEP_RESIDENT: usize = 64 << 10;

/// Sizing of an engine.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Where compiled artifacts are kept, keyed by engine and digest.
    pub cache_dir: PathBuf,
    /// How many guest instances may be alive at once.
    pub max_instances: u32,
}

pub struct Engine {
    pub(crate) wasmtime: wasmtime::Engine,
    /// Slots of the instance pool: every instance takes one first, so the pool never runs out.
    pub admission: admission::Admission,
    pub(crate) p1_linker: wasmtime::Linker<P1Host>,
    pub(crate) p2_linker: component::Linker<P2Host>,
    cache_dir: PathBuf,
    programs: Mutex<HashMap<String, Arc<Program>>>,
    /// Extra CA certificates (PEM) trusted for `https://` images (set by the agent).
    image_ca: std::sync::OnceLock<PathBuf>,
    /// The directories file images may come from (unset: any file).
    image_dirs: std::sync::OnceLock<Vec<PathBuf>>,
    image_client: std::sync::OnceLock<fetch::ImageClient>,
    /// The cluster whose module store serves `sha256:` images (set by the agent).
    cluster: std::sync::OnceLock<shoal_api::client::Client>,
    /// OCI registries: settings and what this node resolved references to.
    pub registries: oci::Registries,
    /// A gate per digest being compiled, so each image compiles once.
    compiling: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// What was loaded of each module, by digest (hex).
    modules: Mutex<HashMap<String, ModuleRecord>>,
    /// The digests of file images already hashed, while their files stay unchanged.
    file_digests: fetch::FileDigests,
}

impl Engine {
    pub fn new(options: &EngineOptions) -> anyhow::Result<Arc<Self>> {
        let mut pool = PoolingAllocationConfig::new();
        // A Rust wasip2 component holds three core instances and two memories
        // (wasmtime-notes.md §6); each pooled memory reserves ~4 GiB of address space, so the
        // pool is sized to what the node may run, not to the maximum.
        let instances = options.max_instances.max(1);
        pool.total_component_instances(instances)
            .total_core_instances(instances * 3)
            .total_memories(instances * 2)
            .total_tables(instances * 3)
            .total_stacks(instances)
            .max_core_instances_per_component(16)
            .max_memories_per_component(4)
            .max_tables_per_component(4)
            // A request's instance lives for microseconds, so resetting its slot dominated:
            // `madvise` on release, then a copy-on-write fault per page the next request
            // touches, each one a TLB shootdown across cores. Keeping the first
            // [`KEEP_RESIDENT`] bytes resident and restoring only the pages the guest
            // dirtied (found with Linux's PAGEMAP_SCAN, 6.7+; a plain `memset` elsewhere)
            // makes a warm slot cost no system call and no fault (docs/performance.md).
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(TABLE_KEEP_RESIDENT)
            .pagemap_scan(wasmtime::Enabled::Auto);
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let wasmtime = wasmtime::Engine::new(&config)?;
        spawn_epoch_ticker(&wasmtime);

        let mut p1_linker = wasmtime::Linker::new(&wasmtime);
        wasmtime_wasi::p1::add_to_linker_async(&mut p1_linker, |host: &mut P1Host| &mut host.wasi)?;
        let mut p2_linker = component::Linker::new(&wasmtime);
        wasmtime_wasi::p2::add_to_linker_async(&mut p2_linker)?;
        // Full WASI plus http (not the proxy world alone): Rust wasip2 components import
        // wasi:cli and wasi:filesystem even when they are HTTP handlers (wasmtime-notes.md §4).
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut p2_linker)?;

        let cache_dir = options.cache_dir.join(image::engine_key(&wasmtime));
        std::fs::create_dir_all(&cache_dir)?;
        let slots = instances as usize;
        Ok(Arc::new(Self {
            wasmtime,
            admission: admission::Admission::new(slots, slots.saturating_mul(4)),
            p1_linker,
            p2_linker,
            cache_dir,
            programs: Mutex::new(HashMap::new()),
            compiling: Mutex::new(HashMap::new()),
            modules: Mutex::new(HashMap::new()),
            file_digests: fetch::FileDigests::default(),
            cluster: std::sync::OnceLock::new(),
            image_ca: std::sync::OnceLock::new(),
            image_dirs: std::sync::OnceLock::new(),
            image_client: std::sync::OnceLock::new(),
            registries: oci::Registries::default(),
        }))
    }
}

impl Engine {
    /// What this node has loaded of each module, by digest.
    pub fn modules(&self) -> Vec<ModuleRecord> {
        let mut records: Vec<ModuleRecord> = self
            .modules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        records.sort_by(|a, b| a.digest.cmp(&b.digest));
        records
    }

    /// Lets `sha256:` images be fetched from this cluster's module store.
    pub fn use_cluster(&self, client: shoal_api::client::Client) {
        let _ = self.cluster.set(client);
    }

    /// Trusts the CA certificates in this PEM file (as well as the system's) for `https://`
    /// images; call before the first image is fetched.
    pub fn trust_image_ca(&self, pem: PathBuf) {
        let _ = self.image_ca.set(pem);
    }

    /// Allows file images only under `dirs` (none: no file images at all), like hostPath
    /// volumes; call before the first image is fetched.
    pub fn allow_image_dirs(&self, dirs: Vec<PathBuf>) {
        let dirs = dirs
            .into_iter()
            .map(|d| std::fs::canonicalize(&d).unwrap_or(d))
            .collect();
        let _ = self.image_dirs.set(dirs);
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until the engine is dropped.
fn spawn_epoch_ticker(engine: &wasmtime::Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("epoch-ticker".into())
        .spawn(move || loop {
            std::thread::sleep(EPOCH_TICK);
            match weak.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => return,
            }
        })
        .expect("spawning the epoch thread");
}
