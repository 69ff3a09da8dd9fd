use attnc::driver::Source;
use attnc::sema::instantiate::Binding;
use attnc_runtime::{cache, reference, CpuKernel, Tensor};
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let text = std::fs::read_to_string(&a[1]).unwrap();
    let src = Source::new("dbg", text);
    let sets: Vec<Binding> = a[3..].iter().map(|s| Binding::parse(s).unwrap()).collect();
    let k = CpuKernel::new(cache::compile(&src, &a[2], &sets).unwrap(), std::env::var("CLIF").is_ok()).unwrap();
    if let Some(c) = k.clif() { std::fs::write("/tmp/dbg.clif", c).unwrap(); }
    let m = k.manifest().clone();
    let mut rng = fastrand::Rng::with_seed(1);
    let mut mk = |s: [usize; 4]| Tensor::new(s.to_vec(), (0..s.iter().product::<usize>()).map(|_| rng.f32() * 2.0 - 1.0).collect()).unwrap();
    let (q, kk, v) = (mk(m.q_shape()), mk(m.k_shape()), mk(m.v_shape()));
    let mut out = vec![f32::NAN; m.o_shape().iter().product()];
    eprintln!("running {:?}", m);
    k.run(q.view(), kk.view(), v.view(), &[], &mut out).unwrap();
    let r = reference::attention(&k.compiled().spec, q.view(), kk.view(), v.view(), &[]).unwrap();
    let dv = m.value_dim; let n = m.tokens;
    let mut bad = 0;
    for (row, (a, b)) in out.chunks(dv).zip(r.chunks(dv)).enumerate() {
        let e = a.iter().zip(b).map(|(x, y)| (*x as f64 - y).abs()).fold(0.0, f64::max);
        if !(e < 1e-5) { if bad < 10 { println!("row b{} h{} t{}: err {e:.3e} jit {:?} ref {:?}", row / (n * m.heads), (row / n) % m.heads, row % n, &a[..3.min(dv)], &b[..3.min(dv)]); } bad += 1; }
    }
    println!("{bad} bad rows of {}", out.len() / dv);
}
