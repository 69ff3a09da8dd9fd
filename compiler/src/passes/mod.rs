//! IR passes, one per file. Each has a name and a one-line summary; the default pipeline
//! runs them in order with the verifier after every pass.

pub mod dce;
pub mod elide_masks;
pub mod fold_log2e;

use crate::ir::{verify::verify, Kernel};

pub trait Pass {
    fn name(&self) -> &'static str;
    fn summary(&self) -> &'static str;
    /// Rewrites the kernel; returns how many changes it made.
    fn run(&self, k: &mut Kernel) -> usize;
}

/// The default pipeline, in order.
pub fn default_pipeline() -> Vec<Box<dyn Pass>> {
    vec![
        Box::new(elide_masks::ElideMasks),
        Box::new(fold_log2e::FoldLog2e),
        Box::new(dce::Dce),
    ]
}

/// Verifies, then runs each pass and verifies again. Errors name the pass.
pub fn run_default(k: &mut Kernel) -> Result<(), String> {
    verify(k).map_err(|e| format!("lowering produced invalid IR: {}", e.join("; ")))?;
    for p in default_pipeline() {
        p.run(k);
        verify(k)
            .map_err(|e| format!("pass `{}` produced invalid IR: {}", p.name(), e.join("; ")))?;
    }
    Ok(())
}
