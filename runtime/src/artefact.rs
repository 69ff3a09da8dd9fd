//! A kernel compiled for the GPU, as the runtime loads it: the PTX, the manifest, the launch
//! geometry and the schedule tables. Written by `attnc compile --target sm_90 -o DIR` as
//! `DIR/KERNEL.ptx` and `DIR/KERNEL.json`, and kept in the on-disk cache of in-process
//! compilation (`build_tuned`), keyed by what the code generator reads, the target, the
//! block shape and the attnc build.

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
    /// Per head variant the CSR row offsets (`total_tiles + 1` each, into `runs`); for a
    /// shape with a launch order (`-lpt`, not persistent: `Tuning::launch_order`) after
    /// that order (`total_tiles` tile indices).
    pub rows: Vec<u32>,
    /// `(start, len, class)` triples, class 1 = partial.
    pub runs: Vec<u32>,
    pub head_variant: Vec<u32>,
    #[serde(skip)]
    pub ptx: String,
}

/// Compiles a kernel for `arch` with the default block shape (`attnc compile`, which
/// writes the artefact where it is told: not through the cache).
pub fn build(c: &Compiled, arch: Arch) -> Result<GpuArtefact, Error> {
    compile_artefact(c, arch, nvptx::attention::default_tuning(&c.ir))
}

/// Compiles a kernel for `gpu` with the shape it runs best without tuning
/// (`attention::gpu_default`: wgmma and tensor copies on compute capability 9.0).
pub fn build_for(c: &Compiled, gpu: &crate::cuda::Gpu) -> Result<GpuArtefact, Error> {
    let t = nvptx::attention::gpu_default(&c.ir, &c.schedule.geom, gpu.has_wgmma());
    build_tuned(c, gpu.arch(), t)
}

/// Compiles a kernel for `arch` with a block shape, through the on-disk cache
/// (`cache_dir`): a second call with the same kernel, target and shape from the same
/// attnc build loads the PTX instead of generating it again.
pub fn build_tuned(
    c: &Compiled,
    arch: Arch,
    tuning: nvptx::attention::Tuning,
) -> Result<GpuArtefact, Error> {
    build_tuned_in(cache_dir().as_deref(), c, arch, tuning)
}

/// `build_tuned` with the cache in `dir` (none: always compile). A cache entry that cannot
/// be read is compiled again; one that cannot be written is skipped, not an error.
pub fn build_tuned_in(
    dir: Option<&Path>,
    c: &Compiled,
    arch: Arch,
    tuning: nvptx::attention::Tuning,
) -> Result<GpuArtefact, Error> {
    through_cache(
        dir.zip(artefact_key(c, arch, tuning)),
        |dir, key| GpuArtefact::load(dir, key).ok(),
        || compile_artefact(c, arch, tuning),
        |dir, key, a| a.save(dir, key),
    )
}

/// `make`, or the entry `key` in `dir` when `load` finds it (`cached` none: always
/// `make`); what `make` gives is saved there, and a save that fails is skipped.
pub fn through_cache<T>(
    cached: Option<(&Path, String)>,
    load: impl FnOnce(&Path, &str) -> Option<T>,
    make: impl FnOnce() -> Result<T, Error>,
    save: impl FnOnce(&Path, &str, &T) -> Result<(), Error>,
) -> Result<T, Error> {
    if let Some((dir, key)) = &cached {
        if let Some(x) = load(dir, key) {
            return Ok(x);
        }
    }
    let x = make()?;
    if let Some((dir, key)) = &cached {
        let _ = save(dir, key, &x);
    }
    Ok(x)
}

/// Which attnc build is running: its version and the running executable's size and
/// modification time, so that a rebuilt compiler never loads an older one's PTX from the
/// cache. None when the executable cannot be inspected: then nothing is cached.
pub fn build_identity() -> Option<String> {
    let exe = std::env::current_exe().ok()?;
    let meta = std::fs::metadata(exe).ok()?;
    let modified = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    Some(format!("{VERSION} {} {}", meta.len(), modified.as_nanos()))
}

/// The cache name of a compilation: everything the code generator reads (the spec, the
/// schedule and the IR, in their debug form), the target, the shape, and which attnc
/// build compiles ([`build_identity`]).
pub fn artefact_key(c: &Compiled, arch: Arch, tuning: nvptx::attention::Tuning) -> Option<String> {
    let build = build_identity()?;
    let inputs = format!("{:?}\u{0}{:?}\u{0}{:?}", c.spec, c.schedule, c.ir);
    let key = hash_key(&[&build, arch.name(), &tuning.name(), &inputs]);
    Some(format!("gpu-{key}"))
}

/// Generates the PTX and the manifest of a kernel for `arch` with a block shape.
fn compile_artefact(
    c: &Compiled,
    arch: Arch,
    tuning: nvptx::attention::Tuning,
) -> Result<GpuArtefact, Error> {
    let m = nvptx::compile_tuned(&c.ir, &c.schedule.geom, &c.spec.inputs, arch, tuning)
        .map_err(Error::Compile)?;
    let g = &c.schedule.geom;
    // Ordered shapes read their launch order first (`Tuning::ordered`).
    let mut rows = if tuning.launch_order() {
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
    /// Writes `DIR/NAME.ptx`, then `DIR/NAME.json`, each whole or not at all (written
    /// beside and renamed), so that a reader that finds the JSON finds its PTX.
    pub fn save(&self, dir: &Path, name: &str) -> Result<(), Error> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Io(format!("cannot create `{}`: {e}", dir.display())))?;
        let json = serde_json::to_string(self).map_err(|e| Error::Io(e.to_string()))?;
        write_whole(&dir.join(format!("{name}.ptx")), &self.ptx)?;
        write_whole(&dir.join(format!("{name}.json")), &json)
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

/// Writes `text` to `path` whole or not at all: beside it first, then renamed over it.
pub fn write_whole(path: &Path, text: &str) -> Result<(), Error> {
    let fail = |e: std::io::Error| Error::Io(format!("cannot write `{}`: {e}", path.display()));
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, text).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

/// The cache folder: `$ATTNC_CACHE_DIR` (set and empty: no cache), else
/// `$XDG_CACHE_HOME/attnc`, else `~/.cache/attnc`. Anything in it may be deleted at any time.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("ATTNC_CACHE_DIR") {
        return (!d.is_empty()).then(|| PathBuf::from(d));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn compiled(sets: &[(&str, i64)]) -> Compiled {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernels/grat.attn");
        let src = Source::load(&path).expect("grat.attn");
        let sets: Vec<Binding> = sets
            .iter()
            .map(|(n, v)| Binding::parse(&format!("{n}={v}")).expect("binding"))
            .collect();
        crate::cache::compile(&src, "grat_b_2d", &sets).expect("compiles")
    }

    #[test]
    fn the_gpu_cache_returns_what_was_compiled_and_tells_compilations_apart() {
        let dir = std::env::temp_dir().join(format!("attnc-gpu-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let t = nvptx::attention::Tuning::parse("64x64-wgmma-tma-x3").expect("shape");
        let c = compiled(&[("TEXT", 0)]);
        let key = artefact_key(&c, Arch::Sm90, t).expect("a key");
        // The same kernel compiled again (its own analyses' maps) has the same key.
        assert_eq!(
            artefact_key(&compiled(&[("TEXT", 0)]), Arch::Sm90, t),
            Some(key.clone())
        );
        let fresh = build_tuned_in(None, &c, Arch::Sm90, t).expect("compiles");
        let first = build_tuned_in(Some(&dir), &c, Arch::Sm90, t).expect("compiles");
        assert!(
            dir.join(format!("{key}.json")).is_file() && dir.join(format!("{key}.ptx")).is_file()
        );
        let second = build_tuned_in(Some(&dir), &c, Arch::Sm90, t).expect("loads");
        assert_eq!(first, fresh);
        assert_eq!(second, fresh);
        assert_eq!(second.ptx, fresh.ptx);
        // Another shape, target or parameter is another entry.
        let other = nvptx::attention::Tuning::parse("128x128-wgmma-tma-ws-ovl").expect("shape");
        let keys = [
            artefact_key(&c, Arch::Sm90, other),
            artefact_key(&c, Arch::Sm80, t),
            artefact_key(&compiled(&[("TEXT", 0), ("R", 2)]), Arch::Sm90, t),
        ];
        for k in keys {
            assert_ne!(k, Some(key.clone()));
        }
        // A damaged entry is compiled again, and replaced.
        std::fs::write(dir.join(format!("{key}.json")), "{").expect("write");
        let again = build_tuned_in(Some(&dir), &c, Arch::Sm90, t).expect("recompiles");
        assert_eq!(again, fresh);
        assert_eq!(GpuArtefact::load(&dir, &key).expect("rewritten"), fresh);
        let _ = std::fs::remove_dir_all(&dir);
    }

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
        let a = build_tuned_in(None, &c, Arch::Sm90, t).expect("artefact");
        assert_eq!(&a.rows[..tiles as usize], &order[..]);
        let unordered = nvptx::attention::Tuning {
            ordered: false,
            ..t
        };
        let plain = build_tuned_in(None, &c, Arch::Sm90, unordered).expect("plain");
        assert_eq!(&a.rows[tiles as usize..], &plain.rows[..]);
    }
}
