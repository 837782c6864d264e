//! The toolbox: the shell and commands `kubectl exec` and `kubectl debug` run in a pod, a
//! wasip2 component built from `examples-wasm/guests/toolbox` and embedded in the agent.

use std::sync::{Arc, OnceLock};

use sha2::{Digest, Sha256};

use crate::engine::{Engine, ImageError, Program};

/// The toolbox's program on this node's engine (compiled on first use, then cached).
pub async fn program(engine: &Arc<Engine>) -> Result<Arc<Program>, ImageError> {
    static DIGEST: OnceLock<String> = OnceLock::new();
    let bytes = shoal_examples::toolbox();
    let digest = DIGEST.get_or_init(|| hex::encode(Sha256::digest(bytes)));
    engine.load_embedded("shoal-toolbox", digest, bytes).await
}
