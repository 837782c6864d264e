//! The per-instance host state a guest's store holds: its WASI context, its HTTP context and
//! hooks (the pod's loopback), and its resource limits (which also meter its memory). One type per WASI flavour, since
//! preview 1 keeps its own resource table and has no HTTP.

use wasmtime::component::ResourceTable;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use super::meter::MeteredLimits;

pub struct P1Host {
    pub wasi: WasiP1Ctx,
    pub limits: MeteredLimits,
}

pub struct P2Host {
    pub wasi: WasiCtx,
    pub http: WasiHttpCtx,
    /// Where the guest's outgoing requests go (the pod's network decides; the engine does
    /// not know it).
    pub hooks: Box<dyn WasiHttpHooks + Send>,
    pub table: ResourceTable,
    pub limits: MeteredLimits,
}

impl WasiView for P2Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for P2Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut *self.hooks,
        }
    }
}
