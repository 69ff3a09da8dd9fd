use attnc::driver::Source;
use attnc_runtime::{reference, Runtime, Tensor};

#[test]
fn smoke() {
    let src = Source::new("t.attn", "layout l { canvas (8, 8); tile (4, 4); }\npattern p on l { tiles: abs(dh) <= 1 && abs(dw) <= 1; }\nkernel k = attention(p) { heads 1; head_dim 8; }\n");
    let rt = Runtime::new();
    let k = rt.cpu_kernel(&src, "k", &[]).unwrap();
    let m = k.manifest().clone();
    let mut rng = fastrand::Rng::with_seed(1);
    let mk = |s: [usize; 4], rng: &mut fastrand::Rng| {
        Tensor::new(
            s.to_vec(),
            (0..s.iter().product::<usize>())
                .map(|_| rng.f32() * 2.0 - 1.0)
                .collect(),
        )
        .unwrap()
    };
    let (q, kk, v) = (
        mk(m.q_shape(), &mut rng),
        mk(m.k_shape(), &mut rng),
        mk(m.v_shape(), &mut rng),
    );
    let mut out = vec![f32::NAN; m.o_shape().iter().product()];
    k.run(q.view(), kk.view(), v.view(), &[], &mut out).unwrap();
    let r = reference::attention(&k.compiled().spec, q.view(), kk.view(), v.view(), &[]).unwrap();
    let err = out
        .iter()
        .zip(&r)
        .map(|(a, b)| ((*a as f64) - b).abs())
        .fold(0.0, f64::max);
    println!(
        "max abs err {err}; out[0..4] {:?} ref {:?}",
        &out[..4],
        &r[..4]
    );
    assert!(err < 1e-5);
}
