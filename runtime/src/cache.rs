//! The entry point: source + kernel name + parameters -> a compiled kernel, cached in
//! memory so that asking twice compiles once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use attnc::driver::{self, Source};
use attnc::sema::instantiate::Binding;

use crate::{CpuKernel, Error};

#[derive(Default)]
pub struct Runtime {
    cpu: Mutex<HashMap<String, Arc<CpuKernel>>>,
}

impl Runtime {
    pub fn new() -> Runtime {
        Runtime::default()
    }

    /// Compiles `kernel` of `src` with `sets` for the CPU, or returns the cached one.
    pub fn cpu_kernel(
        &self,
        src: &Source,
        kernel: &str,
        sets: &[Binding],
    ) -> Result<Arc<CpuKernel>, Error> {
        let mut key = format!("{}\u{0}{kernel}", src.text);
        for b in sets {
            key.push_str(&format!("\u{0}{}={}", b.name, b.value));
        }
        if let Some(k) = self
            .cpu
            .lock()
            .map_err(|_| Error::Compile("kernel cache poisoned".into()))?
            .get(&key)
        {
            return Ok(k.clone());
        }
        let compiled = compile(src, kernel, sets)?;
        let k = Arc::new(CpuKernel::new(compiled, false)?);
        self.cpu
            .lock()
            .map_err(|_| Error::Compile("kernel cache poisoned".into()))?
            .insert(key, k.clone());
        Ok(k)
    }
}

/// Source to optimised IR, diagnostics rendered into the error.
pub fn compile(src: &Source, kernel: &str, sets: &[Binding]) -> Result<driver::Compiled, Error> {
    let (fe, _) = driver::frontend(src).map_err(|d| Error::Compile(src.render(&d, false)))?;
    let k = driver::find_kernel(&fe.program, kernel)
        .map_err(|d| Error::Compile(src.render(&[d], false)))?;
    driver::compile_kernel(&fe.program, k, sets).map_err(|d| Error::Compile(src.render(&d, false)))
}
