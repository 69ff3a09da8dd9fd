//! The decode tuner's choices on disk: `attnc bench --backend cuda --tune` records the
//! fastest launch shapes per (instantiated kernel, architecture, compiler version, GPU),
//! next to the compile cache, and [`GpuDecode::load`](super::gpu::GpuDecode::load) uses a
//! recorded choice for the same GPU before the default.

use std::path::PathBuf;

use attnc::codegen::nvptx::decode::Tuning;
use attnc::codegen::nvptx::Arch;
use attnc::select::spec::SelectSpec;
use serde::{Deserialize, Serialize};

use crate::artefact;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Choice {
    gpu: String,
    score_rows: u32,
    unroll: u32,
    target_blocks: u32,
    /// Absent in choices recorded before it existed: the update in one entry.
    #[serde(default)]
    split_update: bool,
    /// The candidates' step times (ms), as the tuner printed them.
    trials: Vec<(String, f64)>,
}

/// The file of `spec` compiled for `arch`: the spec's printed form (every clause and
/// setting) names it.
fn path(spec: &SelectSpec, arch: Arch) -> Option<PathBuf> {
    let key = artefact::hash_key(&[spec.print().as_str(), arch.name(), artefact::VERSION]);
    artefact::cache_dir().map(|d| d.join(format!("tune-decode-{key}.json")))
}

/// The recorded choice for `spec` on the GPU named `gpu`, if any.
pub fn load(spec: &SelectSpec, arch: Arch, gpu: &str) -> Option<Tuning> {
    let text = std::fs::read_to_string(path(spec, arch)?).ok()?;
    let ch: Choice = serde_json::from_str(&text).ok()?;
    (ch.gpu == gpu).then_some(Tuning {
        score_rows: ch.score_rows,
        unroll: ch.unroll,
        target_blocks: ch.target_blocks,
        split_update: ch.split_update,
    })
}

/// Records `best` for `spec` on `gpu`; a cache that cannot be written is skipped (the
/// choice only saves the next run a tuning).
pub fn save(spec: &SelectSpec, arch: Arch, gpu: &str, best: Tuning, trials: &[(Tuning, f64)]) {
    let Some(p) = path(spec, arch) else { return };
    let ch = Choice {
        gpu: gpu.to_string(),
        score_rows: best.score_rows,
        unroll: best.unroll,
        target_blocks: best.target_blocks,
        split_update: best.split_update,
        trials: trials.iter().map(|(t, ms)| (t.label(), *ms)).collect(),
    };
    if let Ok(text) = serde_json::to_string(&ch) {
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = std::fs::write(&p, text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quest() -> SelectSpec {
        let src = attnc::driver::Source::load(
            &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../kernels/quest.attn"),
        )
        .expect("quest.attn");
        let (fe, _) = attnc::driver::frontend(&src).expect("frontend");
        attnc::driver::select_spec(&fe, "quest_decode", &[])
            .expect("spec")
            .0
    }

    #[test]
    fn a_recorded_choice_comes_back_for_the_same_gpu_only() {
        let dir = std::env::temp_dir().join(format!("attnc-tuned-{}", std::process::id()));
        std::env::set_var("ATTNC_CACHE_DIR", &dir);
        let s = quest();
        assert_eq!(load(&s, Arch::Sm90, "H200"), None);
        let best = Tuning {
            score_rows: 4,
            unroll: 2,
            target_blocks: 2048,
            split_update: true,
        };
        save(&s, Arch::Sm90, "H200", best, &[(best, 0.17)]);
        assert_eq!(load(&s, Arch::Sm90, "H200"), Some(best));
        assert_eq!(load(&s, Arch::Sm90, "H100"), None, "another GPU");
        assert_eq!(load(&s, Arch::Sm80, "H200"), None, "another architecture");
        let mut other = s.clone();
        other.context /= 2;
        assert_eq!(load(&other, Arch::Sm90, "H200"), None, "another shape");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
