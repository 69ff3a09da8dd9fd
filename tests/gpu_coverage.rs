//! Which selection kernels the CUDA backend takes, and the exact words for those it does
//! not (no GPU or ptxas needed: `gpu_support` and `compile` decide before any device);
//! attention kernels with their log-sum-exps.

use attnc::codegen::nvptx::decode::{self, Role};
use attnc::codegen::nvptx::Arch;
use attnc::driver::{self, Source, Stage};
use attnc::select::spec::SelectSpec;
use attnc_tests::select_spec;

fn snapkv(sets: &[&str]) -> SelectSpec {
    select_spec("kernels/snapkv.attn", "snapkv_select", sets)
}

fn refusal(s: &SelectSpec) -> String {
    decode::gpu_support(s).expect_err("a refusal")
}

#[test]
fn snapkv_runs_on_the_gpu_with_its_entries() {
    let s = snapkv(&[]);
    decode::gpu_support(&s).expect("the shipped SnapKV kernel");
    let m = decode::compile(&s, Arch::Sm90).expect("compiles");
    let roles: Vec<Role> = m.entries.iter().map(|e| e.role).collect();
    // Statistics, score, pooling, then the multi-block top-k's four entries (three radix
    // passes and the emission); no attention.
    assert_eq!(&roles[..3], &[Role::Logits, Role::Score, Role::Pool]);
    assert_eq!(roles.len(), 7, "{roles:?}");
    assert!(roles[3..].iter().all(|r| *r == Role::TopK));
    // 8 x 32 x 32 x 131072 logits (2^30): stored between the passes.
    assert_eq!(m.window_logits, 1 << 30);
}

#[test]
fn window_scoring_outside_the_gpu_kernels_is_refused_with_the_reason() {
    let mut s = snapkv(&[]);
    s.head_dim = 256;
    assert_eq!(
        refusal(&s),
        "`snapkv_select` runs on the CPU only so far: the CUDA backend has no `window` scoring at head dim 256 (16 to 128) yet (docs/kv-selection.md, \"GPU coverage\")"
    );
    // 4 heads x 512 window rows: more than the 1024 rows a list may have.
    let s = snapkv(&["WINDOW=512", "CONTEXT=65536"]);
    assert_eq!(
        refusal(&s),
        "`snapkv_select` runs on the CPU only so far: the CUDA backend has no `window` scoring of 2048 query rows per KV head (1024 at most) yet (docs/kv-selection.md, \"GPU coverage\")"
    );
}

#[test]
fn caches_beyond_32_bit_indices_are_refused() {
    // 8 x 8 x 262144 x 128 = 2^31 values: the last index still fits; twice the batch does not.
    let s = snapkv(&["CONTEXT=262144"]);
    decode::gpu_support(&s).expect("2^31 values fit");
    let s = snapkv(&["CONTEXT=262144", "BATCH=16"]);
    assert_eq!(
        refusal(&s),
        "`snapkv_select` runs on the CPU only so far: the CUDA backend has no caches of more than 2^31 values (4294967296 here: batch x KV heads x CONTEXT x head dim) yet (docs/kv-selection.md, \"GPU coverage\")"
    );
}

#[test]
fn key_norm_scores_run_on_the_cpu_only_and_say_so() {
    let s = select_spec(
        "tests/fixtures/ok/kv_selection_policies.attn",
        "norm_decode",
        &[],
    );
    assert_eq!(
        refusal(&s),
        "`norm_decode` runs on the CPU only so far: the CUDA backend has no `key_norm` scoring yet (docs/kv-selection.md, \"GPU coverage\")"
    );
}

#[test]
fn head_subsets_run_on_the_cpu_only_and_say_so() {
    let s = select_spec(
        "tests/fixtures/ok/kv_selection_policies.attn",
        "retrieval_decode",
        &[],
    );
    assert_eq!(
        refusal(&s),
        "`retrieval_decode` runs on the CPU only so far: the CUDA backend has no lists scored by a subset of the heads (`subset(...)`) yet (docs/kv-selection.md, \"GPU coverage\")"
    );
}

#[test]
fn page_means_run_on_the_cpu_only_and_say_so() {
    let s = select_spec(
        "tests/fixtures/ok/kv_selection_policies.attn",
        "centroid_decode",
        &[],
    );
    assert_eq!(
        refusal(&s),
        "`centroid_decode` runs on the CPU only so far: the CUDA backend has no `page_mean` scoring yet (docs/kv-selection.md, \"GPU coverage\")"
    );
}

/// An attention kernel with `outputs lse;` compiles for the GPU with one parameter more
/// (the log-sum-exps, after the inputs) and writes them through `lg2`, on every candidate
/// shape (the persistent overlapped kernel keeps a finished item's running maxima beside
/// its row sums until its store).
#[test]
fn attention_log_sum_exps_compile_for_the_gpu() {
    use attnc::codegen::nvptx::attention::candidates;
    let src = Source::new(
        "lse.attn",
        "layout sequence { param N = 256; canvas (N); tile (64); order tiled; }
pattern full on sequence {}
kernel plain = attention(full) { head_dim 128; }
kernel with_lse = attention(full) { head_dim 128; outputs lse; }
",
    );
    let (ptx, _) = driver::emit(&src, Stage::Ptx, None, &[]).expect("both kernels");
    let params = |entry: &str| {
        let at = ptx.find(&format!(".entry {entry}(")).expect(entry);
        let end = at + ptx[at..].find(')').expect("parameter list");
        ptx[at..end].matches(".param").count()
    };
    assert_eq!(params("attnc_with_lse"), params("attnc_plain") + 1);
    assert!(ptx.contains("lg2.approx.f32"), "{ptx}");
    let (fe, _) = driver::frontend(&src).expect("frontend");
    let k = driver::find_kernel(&fe.program, "with_lse").expect("kernel");
    let c = driver::compile_kernel(&fe.program, k, &[]).expect("compiles");
    let shapes = candidates(&c.ir, &c.schedule.geom, true);
    assert!(
        shapes.iter().any(|t| t.persistent && t.overlap),
        "{shapes:?}"
    );
    assert!(shapes.iter().any(|t| t.ws && t.overlap), "{shapes:?}");
    for t in shapes {
        attnc::codegen::nvptx::compile_tuned(&c.ir, &c.schedule.geom, &[], Arch::Sm90, t)
            .unwrap_or_else(|e| panic!("{}: {e}", t.name()));
    }
}

/// The persistent kernel with work lists (`-pers-lpt`) takes one parameter more than the
/// one that walks the items in turn (the lists, last) and reads its block's range of them
/// by `%ctaid.x` and its entries after the `%nctaid.x + 1` offsets; the one in turn takes
/// no lists. (That the runtime deals and passes them: runtime/src/work_list.rs and the
/// GPU suite.)
#[test]
fn work_lists_are_the_persistent_kernels_last_parameter() {
    use attnc::codegen::nvptx::{attention::Tuning, compile_tuned, Arch};
    let src = Source::new(
        "pers.attn",
        "layout sequence { param N = 1024; canvas (N); tile (128); order tiled; }
pattern causal on sequence { tiles: kx <= qx; tokens: kx <= qx; }
kernel k = attention(causal) { dtype bf16; head_dim 128; }
",
    );
    let (fe, _) = driver::frontend(&src).expect("frontend");
    let k = driver::find_kernel(&fe.program, "k").expect("kernel");
    let c = driver::compile_kernel(&fe.program, k, &[]).expect("compiles");
    let ptx = |shape: &str| {
        let t = Tuning::parse(shape).expect(shape);
        compile_tuned(&c.ir, &c.schedule.geom, &[], Arch::Sm90, t)
            .unwrap_or_else(|e| panic!("{shape}: {e}"))
            .ptx
    };
    let params = |ptx: &str| {
        let at = ptx.find(".entry ").expect("entry");
        let end = at + ptx[at..].find(')').expect("parameter list");
        ptx[at..end].matches(".param").count()
    };
    let in_turn = ptx("128x128-wgmma-tma-ws-ovl-pers");
    let lists = ptx("128x128-wgmma-tma-ws-ovl-pers-lpt");
    assert_eq!(params(&lists), params(&in_turn) + 1);
    let last = format!("_param_{}]", params(&lists) - 1);
    assert!(lists.contains(&last), "the lists are read");
    assert!(!in_turn.contains(&last));
}
