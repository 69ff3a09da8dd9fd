//! Shared setup for the benchmarks.

pub mod plain;

use attnc::driver::{self, Compiled, Source};
use attnc::sema::instantiate::Binding;

/// Compiles a kernel of a shipped .attn file with `--set` bindings.
pub fn compile(file: &str, kernel: &str, sets: &[&str]) -> Result<Compiled, String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(file);
    let src = Source::load(&path)?;
    let (fe, _) = driver::frontend(&src).map_err(|d| src.render(&d, false))?;
    let k = driver::find_kernel(&fe.program, kernel).map_err(|d| src.render(&[d], false))?;
    let sets: Vec<Binding> = sets
        .iter()
        .map(|s| Binding::parse(s))
        .collect::<Result<_, _>>()?;
    driver::compile_kernel(&fe.program, k, &sets).map_err(|d| src.render(&d, false))
}

/// The 512x512 GRAT cases of the issue (8x16 tiles, no text).
pub const CANVAS_512: &[&str] = &["H=512", "W=512", "TEXT=0"];
