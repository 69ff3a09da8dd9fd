//! The on-disk cache of compiled decode modules, beside the attention kernels' artefacts
//! (`artefact::build_tuned`): a second load of the same selection kernel, target and
//! launch shapes by the same attnc build reads the PTX instead of generating it again
//! (0.1 to 0.4 s for the shipped kernels on the development machine).

use std::path::Path;

use attnc::codegen::nvptx::decode::{self as codegen, DecodeEntry, DecodeModule, Role, Tuning};
use attnc::codegen::nvptx::Arch;
use attnc::select::spec::SelectSpec;
use serde::{Deserialize, Serialize};

use crate::artefact::{self, write_whole};
use crate::Error;

/// What a module stores besides its PTX (which is in a file of its own).
#[derive(Serialize, Deserialize)]
struct Stored {
    arch: String,
    /// (role, entry name, grid, block threads), in launch order.
    entries: Vec<(String, String, [u32; 3], u32)>,
    chunks: u32,
    topk_work: usize,
    window_logits: usize,
}

/// `codegen::compile_tuned` through the cache in `artefact::cache_dir()`.
pub fn compile_tuned(spec: &SelectSpec, arch: Arch, tuning: Tuning) -> Result<DecodeModule, Error> {
    compile_tuned_in(artefact::cache_dir().as_deref(), spec, arch, tuning)
}

/// `compile_tuned` with the cache in `dir` (none: always compile). An entry that cannot be
/// read is compiled again; one that cannot be written is skipped. A cached module has no
/// LLVM IR (`--emit llvm` compiles).
pub fn compile_tuned_in(
    dir: Option<&Path>,
    spec: &SelectSpec,
    arch: Arch,
    tuning: Tuning,
) -> Result<DecodeModule, Error> {
    artefact::through_cache(
        dir.zip(module_key(spec, arch, tuning)),
        load,
        || codegen::compile_tuned(spec, arch, tuning).map_err(Error::Input),
        save,
    )
}

/// The cache name: the instantiated selection kernel (its debug form: every clause and
/// setting), the target, the launch shapes and the attnc build.
pub fn module_key(spec: &SelectSpec, arch: Arch, tuning: Tuning) -> Option<String> {
    let build = artefact::build_identity()?;
    let inputs = format!("{spec:?}\u{0}{tuning:?}");
    let key = artefact::hash_key(&[&build, arch.name(), &inputs]);
    Some(format!("decode-{key}"))
}

fn save(dir: &Path, key: &str, m: &DecodeModule) -> Result<(), Error> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::Io(format!("cannot create `{}`: {e}", dir.display())))?;
    let stored = Stored {
        arch: m.arch.name().to_string(),
        entries: m
            .entries
            .iter()
            .map(|e| (format!("{:?}", e.role), e.name.clone(), e.grid, e.block))
            .collect(),
        chunks: m.chunks,
        topk_work: m.topk_work,
        window_logits: m.window_logits,
    };
    let json = serde_json::to_string(&stored).map_err(|e| Error::Io(e.to_string()))?;
    // The PTX first: a reader that finds the JSON finds its PTX.
    write_whole(&dir.join(format!("{key}.ptx")), &m.ptx)?;
    write_whole(&dir.join(format!("{key}.json")), &json)
}

fn load(dir: &Path, key: &str) -> Option<DecodeModule> {
    let json = std::fs::read_to_string(dir.join(format!("{key}.json"))).ok()?;
    let s: Stored = serde_json::from_str(&json).ok()?;
    let ptx = std::fs::read_to_string(dir.join(format!("{key}.ptx"))).ok()?;
    let entries = s
        .entries
        .into_iter()
        .map(|(role, name, grid, block)| {
            let role = *Role::ALL.iter().find(|r| format!("{r:?}") == role)?;
            Some(DecodeEntry {
                role,
                name,
                grid,
                block,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(DecodeModule {
        arch: Arch::from_name(&s.arch)?,
        ptx,
        llvm: String::new(),
        entries,
        chunks: s.chunks,
        topk_work: s.topk_work,
        window_logits: s.window_logits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(file: &str, kernel: &str) -> SelectSpec {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../kernels")
            .join(file);
        let src = attnc::driver::Source::load(&path).expect("kernel file");
        let (fe, _) = attnc::driver::frontend(&src).expect("frontend");
        attnc::driver::select_spec(&fe, kernel, &[])
            .expect("spec")
            .0
    }

    #[test]
    fn a_cached_decode_module_is_the_compiled_one() {
        let dir = std::env::temp_dir().join(format!("attnc-decode-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (file, kernel) in [("quest.attn", "quest_decode"), ("h2o.attn", "h2o_decode")] {
            let s = spec(file, kernel);
            let t = Tuning::default();
            let fresh = compile_tuned_in(None, &s, Arch::Sm90, t).expect("compiles");
            let first = compile_tuned_in(Some(&dir), &s, Arch::Sm90, t).expect("compiles");
            let key = module_key(&s, Arch::Sm90, t).expect("a key");
            assert!(dir.join(format!("{key}.json")).is_file());
            let second = compile_tuned_in(Some(&dir), &s, Arch::Sm90, t).expect("loads");
            for m in [&first, &second] {
                assert_eq!(m.ptx, fresh.ptx, "{kernel}");
                assert_eq!(m.arch, fresh.arch);
                assert_eq!(
                    (m.chunks, m.topk_work, m.window_logits),
                    (fresh.chunks, fresh.topk_work, fresh.window_logits)
                );
                let shape = |m: &DecodeModule| -> Vec<(Role, String, [u32; 3], u32)> {
                    m.entries
                        .iter()
                        .map(|e| (e.role, e.name.clone(), e.grid, e.block))
                        .collect()
                };
                assert_eq!(shape(m), shape(&fresh), "{kernel}");
            }
            assert!(second.llvm.is_empty() && !fresh.llvm.is_empty());
            // Another target or launch shape is another entry; a damaged one is compiled
            // again.
            assert_ne!(module_key(&s, Arch::Sm80, t), Some(key.clone()));
            std::fs::write(dir.join(format!("{key}.json")), "[").expect("write");
            let again = compile_tuned_in(Some(&dir), &s, Arch::Sm90, t).expect("recompiles");
            assert_eq!(again.ptx, fresh.ptx);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
