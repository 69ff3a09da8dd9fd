//! A kernel compiled for the GPU, as the runtime loads it: the PTX, the manifest, the launch
//! geometry and the schedule tables. Written by `attnc compile --target sm_90 -o DIR` as
//! `DIR/KERNEL.ptx` and `DIR/KERNEL.json`, and kept in the on-disk cache of in-process
//! compilation, keyed by source, parameters, target and compiler version.

use std::path::{Path, PathBuf};

use attnc::codegen::nvptx::{self, Arch};
use attnc::driver::{Compiled, Source};
use attnc::pattern::TileClass;
use attnc::sema::instantiate::Binding;
use serde::{Deserialize, Serialize};

use crate::{Error, Manifest};

pub const FORMAT: u32 = 3;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GpuArtefact {
    pub format: u32,
    /// The attnc version that compiled it.
    pub compiler: String,
    pub manifest: Manifest,
    pub arch: String,
    /// The kernel's entry point in the PTX.
    pub entry: String,
    /// Blocks along x per (head, batch); threads per block; static shared memory.
    pub grid_x: u32,
    pub block: u32,
    pub smem_bytes: u32,
    /// The shared memory is dynamic (above 48 KiB): launch with it and opt in.
    pub dynamic_smem: bool,
    /// The launch shape (`Tuning::name`: rows, keys, wgmma, tensor copies, the overlapped
    /// or warp-specialised loop, blocks an SM), which the launcher also needs (tensor
    /// maps, carveout).
    pub shape: String,
    /// Per head variant the CSR row offsets (`total_tiles + 1` each, into `runs`); for an
    /// ordered shape (`-lpt`) after the launch order (`total_tiles` tile indices).
    pub rows: Vec<u32>,
    /// `(start, len, class)` triples, class 1 = partial.
    pub runs: Vec<u32>,
    pub head_variant: Vec<u32>,
    #[serde(skip)]
    pub ptx: String,
}

/// Compiles a kernel for `arch` with the default block shape.
pub fn build(c: &Compiled, arch: Arch) -> Result<GpuArtefact, Error> {
    build_tuned(c, arch, nvptx::attention::default_tuning(&c.ir))
}

/// Compiles a kernel for `gpu` with the shape it runs best without tuning
/// (`attention::gpu_default`: wgmma and tensor copies on compute capability 9.0).
pub fn build_for(c: &Compiled, gpu: &crate::cuda::Gpu) -> Result<GpuArtefact, Error> {
    let t = nvptx::attention::gpu_default(&c.ir, &c.schedule.geom, gpu.has_wgmma());
    build_tuned(c, gpu.arch(), t)
}

/// Compiles a kernel for `arch` with a block shape.
pub fn build_tuned(
    c: &Compiled,
    arch: Arch,
    tuning: nvptx::attention::Tuning,
) -> Result<GpuArtefact, Error> {
    let m = nvptx::compile_tuned(&c.ir, &c.schedule.geom, &c.spec.inputs, arch, tuning)
        .map_err(Error::Compile)?;
    let g = &c.schedule.geom;
    // Ordered shapes read their launch order first (`Tuning::ordered`).
    let mut rows = if tuning.ordered {
        launch_order(&c.schedule.variants, g.total_tiles)
    } else {
        vec![]
    };
    let mut runs = vec![];
    for v in &c.schedule.variants {
        let base = (runs.len() / 3) as u32;
        rows.extend(v.rows.iter().map(|r| r + base));
        for r in &v.runs {
            runs.extend([r.start, r.len, u32::from(r.class == TileClass::Partial)]);
        }
    }
    Ok(GpuArtefact {
        format: FORMAT,
        compiler: env!("CARGO_PKG_VERSION").to_string(),
        manifest: Manifest::from_compiled(c),
        arch: m.arch.name().to_string(),
        entry: m.entry,
        grid_x: g.total_tiles * m.config.blocks_per_tile,
        block: m.config.threads(),
        smem_bytes: m.config.smem_bytes,
        dynamic_smem: m.config.dynamic_smem,
        shape: tuning.name(),
        rows,
        runs,
        head_variant: c.schedule.head_variant.clone(),
        ptx: m.ptx,
    })
}

/// The query tiles, longest first: by the most key tiles any head variant gives them
/// (descending), ties in tile order (so that neighbours, which share keys in L2, stay
/// together). A permutation of `0..total_tiles`.
pub fn launch_order(variants: &[attnc::pattern::VariantSchedule], total_tiles: u32) -> Vec<u32> {
    let work = |t: usize| -> u32 {
        variants
            .iter()
            .map(|v| {
                let (lo, hi) = (v.rows[t] as usize, v.rows[t + 1] as usize);
                v.runs[lo..hi].iter().map(|r| r.len).sum::<u32>()
            })
            .max()
            .unwrap_or(0)
    };
    let mut order: Vec<u32> = (0..total_tiles).collect();
    order.sort_by_key(|t| std::cmp::Reverse(work(*t as usize)));
    order
}

impl GpuArtefact {
    /// Writes `DIR/NAME.ptx` and `DIR/NAME.json`.
    pub fn save(&self, dir: &Path, name: &str) -> Result<(), Error> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Io(format!("cannot create `{}`: {e}", dir.display())))?;
        let json = serde_json::to_string(self).map_err(|e| Error::Io(e.to_string()))?;
        let write = |p: PathBuf, s: &str| {
            std::fs::write(&p, s)
                .map_err(|e| Error::Io(format!("cannot write `{}`: {e}", p.display())))
        };
        write(dir.join(format!("{name}.ptx")), &self.ptx)?;
        write(dir.join(format!("{name}.json")), &json)
    }

    /// Reads `DIR/NAME.ptx` and `DIR/NAME.json`.
    pub fn load(dir: &Path, name: &str) -> Result<GpuArtefact, Error> {
        let read = |p: PathBuf| {
            std::fs::read_to_string(&p)
                .map_err(|e| Error::Io(format!("cannot read `{}`: {e}", p.display())))
        };
        let json = read(dir.join(format!("{name}.json")))?;
        let mut a: GpuArtefact = serde_json::from_str(&json).map_err(|e| {
            Error::Io(format!(
                "`{}/{name}.json` is not an attnc manifest: {e}",
                dir.display()
            ))
        })?;
        if a.format != FORMAT {
            return Err(Error::Io(format!(
                "`{}/{name}.json` has format {}; this attnc reads {FORMAT}",
                dir.display(),
                a.format
            )));
        }
        a.ptx = read(dir.join(format!("{name}.ptx")))?;
        Ok(a)
    }
}

/// The cache folder: `$ATTNC_CACHE_DIR`, else `$XDG_CACHE_HOME/attnc`, else `~/.cache/attnc`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("ATTNC_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("attnc"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/attnc"))
}

/// The cache key of a compilation.
pub fn cache_key(src: &Source, kernel: &str, sets: &[Binding], arch: Arch) -> String {
    let sets: Vec<String> = sets
        .iter()
        .map(|b| format!("{}={}", b.name, b.value))
        .collect();
    let mut parts = vec![src.text.as_str(), kernel, arch.name(), VERSION];
    parts.extend(sets.iter().map(String::as_str));
    hash_key(&parts)
}

/// The compiler version, part of every cache key.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A cache key: the hash of `parts`, each ended by a NUL byte (32 hex digits).
pub fn hash_key(parts: &[&str]) -> String {
    let mut h = blake3::Hasher::new();
    for part in parts {
        h.update(part.as_bytes());
        h.update(&[0]);
    }
    h.finalize().to_hex()[..32].to_string()
}

/// Compiles for the GPU through the on-disk cache (a cache that cannot be written is
/// skipped, not an error).
pub fn build_cached(
    src: &Source,
    kernel: &str,
    sets: &[Binding],
    arch: Arch,
) -> Result<GpuArtefact, Error> {
    let key = cache_key(src, kernel, sets, arch);
    if let Some(dir) = cache_dir() {
        if let Ok(a) = GpuArtefact::load(&dir, &key) {
            return Ok(a);
        }
    }
    let c = crate::cache::compile(src, kernel, sets)?;
    let a = build(&c, arch)?;
    if let Some(dir) = cache_dir() {
        let _ = a.save(&dir, &key);
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_launch_order_puts_the_longest_tiles_first() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernels/grat.attn");
        let src = Source::load(&path).expect("grat.attn");
        let (fe, _) = attnc::driver::frontend(&src).expect("frontend");
        let k = attnc::driver::find_kernel(&fe.program, "grat_b_2d").expect("kernel");
        let c = attnc::driver::compile_kernel(&fe.program, k, &[]).expect("compiled");
        let tiles = c.schedule.geom.total_tiles;
        let order = launch_order(&c.schedule.variants, tiles);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..tiles).collect::<Vec<_>>(), "every tile once");
        let v = &c.schedule.variants[0];
        let work = |t: u32| -> u32 {
            let (lo, hi) = (v.rows[t as usize] as usize, v.rows[t as usize + 1] as usize);
            v.runs[lo..hi].iter().map(|r| r.len).sum()
        };
        assert!(order.windows(2).all(|w| work(w[0]) >= work(w[1])));
        assert!(
            work(order[0]) > work(order[tiles as usize - 1]),
            "the edge tiles see fewer keys"
        );
        // Ties keep the tile order.
        assert!(order
            .windows(2)
            .all(|w| work(w[0]) != work(w[1]) || w[0] < w[1]));
        // An ordered shape's row table starts with the order, then the plain one's.
        let t = nvptx::attention::Tuning::parse("64x64-wgmma-tma-lpt-x3").expect("shape");
        let a = build_tuned(&c, Arch::Sm90, t).expect("artefact");
        assert_eq!(&a.rows[..tiles as usize], &order[..]);
        let unordered = nvptx::attention::Tuning {
            ordered: false,
            ..t
        };
        let plain = build_tuned(&c, Arch::Sm90, unordered).expect("plain");
        assert_eq!(&a.rows[tiles as usize..], &plain.rows[..]);
    }
}
