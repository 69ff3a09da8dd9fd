//! Shared by the CPU tests against the f64 reference (`cpu_vs_reference.rs`,
//! `attention_lse.rs`): the shipped kernels' sources in either token order, random
//! tensors, the comparison, and the shapes every shipped kernel is run with.

use attnc_runtime::Tensor;

/// Largest max-norm relative error of a kernel's output against the reference.
pub const TOLERANCE: f64 = 1e-5;

/// The shipped kernels' folder.
pub fn kernels_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernels")
}

/// The shipped file `file` with its token order set to `order` (`tiled` or `raster`).
pub fn shipped_text(file: &str, order: &str) -> String {
    let text = std::fs::read_to_string(kernels_dir().join(file)).expect("shipped kernel");
    text.replace("order tiled;", &format!("order {order};"))
        .replace("order raster;", &format!("order {order};"))
}

/// Uniform values in [-1, 1).
pub fn random(shape: &[usize], rng: &mut fastrand::Rng) -> Tensor {
    let n = shape.iter().product();
    Tensor::new(
        shape.to_vec(),
        (0..n).map(|_| rng.f32() * 2.0 - 1.0).collect(),
    )
    .expect("tensor")
}

/// Random `q`, `k` and `v` of a kernel's shapes, drawn from `rng` in that order.
pub fn random_qkv(
    m: &attnc_runtime::Manifest,
    rng: &mut fastrand::Rng,
) -> (Tensor, Tensor, Tensor) {
    (
        random(&m.q_shape(), rng),
        random(&m.k_shape(), rng),
        random(&m.v_shape(), rng),
    )
}

/// The max-norm relative error of `out` against the reference `r`, asserted below
/// `TOLERANCE`; an element never written (NaN) fails.
pub fn compare(out: &[f32], r: &[f64], what: &str) -> f64 {
    assert_eq!(out.len(), r.len());
    let scale = r.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-30);
    let mut worst = (0f64, 0usize);
    for (i, (a, b)) in out.iter().zip(r).enumerate() {
        assert!(
            a.is_finite(),
            "{what}: element {i} is {a} (never written, or NaN)"
        );
        let e = (f64::from(*a) - b).abs() / scale;
        if e > worst.0 {
            worst = (e, i);
        }
    }
    assert!(
        worst.0 < TOLERANCE,
        "{what}: relative error {:.3e} at element {} (jit {}, reference {})",
        worst.0,
        worst.1,
        out[worst.1],
        r[worst.1]
    );
    worst.0
}

/// Per kernel: shapes with ragged tiles, padded text, GQA and unusual dims.
pub fn cases() -> Vec<(&'static str, &'static str, Vec<&'static str>)> {
    let gqa = ["HEADS=8", "KV_HEADS=2"];
    let mut v = vec![];
    for k in ["grat_b_2d", "grat_x_2d"] {
        v.push((
            "grat.attn",
            k,
            [
                &[
                    "H=18",
                    "W=20",
                    "TILE_H=4",
                    "TILE_W=8",
                    "TEXT=40",
                    "TEXT_VALID=29",
                    "HEAD_DIM=64",
                    "VALUE_DIM=48",
                    "BATCH=2",
                ][..],
                &gqa,
            ]
            .concat(),
        ));
        let r = if k == "grat_b_2d" { "R=2" } else { "W=24" };
        v.push((
            "grat.attn",
            k,
            vec![
                "H=16",
                "W=16",
                "TILE_H=4",
                "TILE_W=8",
                "TEXT=0",
                "HEADS=2",
                "HEAD_DIM=128",
                r,
            ],
        ));
    }
    for k in ["grat_b_3d", "grat_x_3d"] {
        v.push((
            "grat.attn",
            k,
            [
                &[
                    "T=5",
                    "H=6",
                    "W=9",
                    "TILE_T=2",
                    "TILE_H=4",
                    "TILE_W=4",
                    "TEXT=24",
                    "TEXT_VALID=13",
                    "HEAD_DIM=64",
                    "VALUE_DIM=80",
                ][..],
                &gqa,
            ]
            .concat(),
        ));
    }
    v.push((
        "sta.attn",
        "sta_3d",
        [
            &[
                "T=7",
                "H=9",
                "W=10",
                "TILE_T=3",
                "TILE_H=3",
                "TILE_W=4",
                "TEXT=30",
                "TEXT_VALID=25",
                "HEAD_DIM=64",
                "VALUE_DIM=32",
            ][..],
            &gqa,
        ]
        .concat(),
    ));
    v.push((
        "sta.attn",
        "sta_3d",
        vec![
            "T=6",
            "H=8",
            "W=8",
            "TILE_T=2",
            "TILE_H=2",
            "TILE_W=2",
            "TEXT=0",
            "HEADS=2",
            "HEAD_DIM=128",
            "R=1",
        ],
    ));
    v.push((
        "natten.attn",
        "na_2d",
        [
            &[
                "H=20",
                "W=22",
                "TILE_H=4",
                "TILE_W=8",
                "R=3",
                "TEXT=16",
                "TEXT_VALID=10",
                "HEAD_DIM=64",
                "VALUE_DIM=96",
            ][..],
            &gqa,
        ]
        .concat(),
    ));
    v.push((
        "natten.attn",
        "na_2d",
        vec![
            "H=17",
            "W=13",
            "TILE_H=3",
            "TILE_W=5",
            "R_H=2",
            "R_W=4",
            "HEADS=2",
            "HEAD_DIM=128",
        ],
    ));
    v.push((
        "dense.attn",
        "dense",
        [
            &["N=300", "TILE=64", "HEAD_DIM=64", "VALUE_DIM=40", "BATCH=2"][..],
            &gqa,
        ]
        .concat(),
    ));
    v.push((
        "dense.attn",
        "causal",
        [&["N=257", "TILE=32", "HEAD_DIM=128"][..], &gqa].concat(),
    ));
    v
}
