//! Running a kernel on the CPU: the Cranelift-compiled code, called once per (batch, head,
//! query tile), spread over all cores with rayon.

use attnc::codegen::cpu::{self, abi::Ctx, abi::SCRATCH_ALIGN, CpuModule};
use attnc::driver::Compiled;
use rayon::prelude::*;

use crate::{Error, Manifest, TensorRef};

/// A kernel compiled for the CPU, with the schedule tables it reads.
pub struct CpuKernel {
    manifest: Manifest,
    module: CpuModule,
    /// Per head variant: CSR rows and runs as (start, len, class) triples.
    rows: Vec<Vec<u32>>,
    runs: Vec<Vec<u32>>,
    head_variant: Vec<u32>,
    total_tiles: usize,
    compiled: Compiled,
}

impl std::fmt::Debug for CpuKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuKernel")
            .field("manifest", &self.manifest)
            .finish()
    }
}

/// A 64-byte aligned scratch buffer.
struct Scratch {
    buf: Vec<u8>,
    offset: usize,
}

impl Scratch {
    fn new(bytes: usize) -> Scratch {
        let buf = vec![0u8; bytes + SCRATCH_ALIGN];
        let offset = buf.as_ptr().align_offset(SCRATCH_ALIGN);
        Scratch { buf, offset }
    }

    fn ptr(&mut self) -> *mut u8 {
        self.buf[self.offset..].as_mut_ptr()
    }
}

/// The call context shared by the worker threads.
struct Shared(Ctx);
// SAFETY: the pointers in `Ctx` are read-only (inputs, tables) except `o` and `lse`, and
// every call writes the output rows of its own (batch, head, query tile), disjoint from
// all others.
unsafe impl Sync for Shared {}

impl CpuKernel {
    /// Compiles the optimised IR of `c` to machine code. `clif`: keep the Cranelift IR text.
    pub fn new(c: Compiled, clif: bool) -> Result<CpuKernel, Error> {
        let module =
            cpu::compile(&c.ir, &c.schedule.geom, &c.spec.inputs, clif).map_err(Error::Compile)?;
        let rows = c.schedule.variants.iter().map(|v| v.rows.clone()).collect();
        let runs = c
            .schedule
            .variants
            .iter()
            .map(|v| {
                v.runs
                    .iter()
                    .flat_map(|r| {
                        [
                            r.start,
                            r.len,
                            u32::from(r.class == attnc::pattern::TileClass::Partial),
                        ]
                    })
                    .collect()
            })
            .collect();
        Ok(CpuKernel {
            manifest: Manifest::from_compiled(&c),
            module,
            rows,
            runs,
            head_variant: c.schedule.head_variant.clone(),
            total_tiles: c.schedule.geom.total_tiles as usize,
            compiled: c,
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn compiled(&self) -> &Compiled {
        &self.compiled
    }

    /// The Cranelift IR, if kept.
    pub fn clif(&self) -> Option<&str> {
        self.module.clif.as_deref()
    }

    /// Checks every tensor against the manifest.
    pub fn check(
        &self,
        q: TensorRef,
        k: TensorRef,
        v: TensorRef,
        inputs: &[TensorRef],
        out_len: usize,
    ) -> Result<(), Error> {
        let m = &self.manifest;
        m.check(q, k, v, inputs)?;
        let want: usize = m.o_shape().iter().product();
        if out_len != want {
            return Err(Error::Shape(format!(
                "the output holds {out_len} values; expected {want} = {:?}",
                m.o_shape()
            )));
        }
        Ok(())
    }

    /// Runs the kernel: `out` is `[batch, heads, tokens, value_dim]`, fully overwritten.
    /// A kernel with `outputs lse;` needs [`CpuKernel::run_with_lse`].
    pub fn run(
        &self,
        q: TensorRef,
        k: TensorRef,
        v: TensorRef,
        inputs: &[TensorRef],
        out: &mut [f32],
    ) -> Result<(), Error> {
        self.run_with_lse(q, k, v, inputs, out, None)
    }

    /// As [`CpuKernel::run`], and for a kernel with `outputs lse;` each query row's
    /// log-sum-exp into `lse` (`[batch, heads, tokens]`, natural log, -inf for a row that
    /// sees no key), fully overwritten. `lse` must be given exactly when the kernel writes
    /// them.
    pub fn run_with_lse(
        &self,
        q: TensorRef,
        k: TensorRef,
        v: TensorRef,
        inputs: &[TensorRef],
        out: &mut [f32],
        lse: Option<&mut [f32]>,
    ) -> Result<(), Error> {
        self.check(q, k, v, inputs, out.len())?;
        self.manifest.check_lse(lse.as_ref().map(|l| l.len()))?;
        let m = &self.manifest;
        let rows: Vec<*const u32> = self.rows.iter().map(|r| r.as_ptr()).collect();
        let runs: Vec<*const u32> = self.runs.iter().map(|r| r.as_ptr()).collect();
        let ins: Vec<*const f32> = inputs.iter().map(|t| t.data.as_ptr()).collect();
        let shared = Shared(Ctx {
            q: q.data.as_ptr(),
            k: k.data.as_ptr(),
            v: v.data.as_ptr(),
            o: out.as_mut_ptr(),
            rows: rows.as_ptr(),
            runs: runs.as_ptr(),
            head_variant: self.head_variant.as_ptr(),
            inputs: ins.as_ptr(),
            lse: lse.map_or(std::ptr::null_mut(), |l| l.as_mut_ptr()),
        });
        let tiles = self.total_tiles;
        let jobs = m.batch * m.heads * tiles;
        let bytes = self.module.scratch_bytes;
        let shared = &shared;
        (0..jobs).into_par_iter().for_each_init(
            || Scratch::new(bytes),
            |scratch, job| {
                let t = job % tiles;
                let h = (job / tiles) % m.heads;
                let b = job / (tiles * m.heads);
                // SAFETY: `check` proved every tensor has the manifest's shape, which is the
                // shape the code was compiled for; the tables are this kernel's schedule
                // (one CSR row per tile, variants per head below the variant count);
                // (b, h, t) are in range; the scratch buffer is this thread's own, of
                // `scratch_bytes` bytes, 64-byte aligned; `lse` is null only when the
                // kernel writes none (`check_lse`); each job writes only the output (and
                // lse) rows of its own query tile, so concurrent jobs never overlap.
                unsafe {
                    self.module
                        .call(&shared.0, b as i64, h as i64, t as i64, scratch.ptr())
                };
            },
        );
        Ok(())
    }
}
