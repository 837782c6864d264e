//! The per-instance host state a guest's store holds: its WASI context and resource limits.
//! One type per WASI flavour, since preview 1 keeps its own resource table.

use wasmtime::component::ResourceTable;
use wasmtime::StoreLimits;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

pub struct P1Host {
    pub wasi: WasiP1Ctx,
    pub limits: StoreLimits,
}

pub struct P2Host {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limits: StoreLimits,
}

impl WasiView for P2Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
