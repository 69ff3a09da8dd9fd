//! A plain f32 Rust loop over the same token pairs as a compiled kernel: the yardstick the
//! JIT must beat. Active keys per query row are listed before timing (from the schedule,
//! the mask from the oracle on partial tiles); the timed loop is a textbook online softmax
//! with scalar f32 dot products, parallel over (batch, head, row) like the JIT.

use attnc::driver::Compiled;
use attnc::pattern::brute::Oracle;
use attnc::pattern::TileClass;
use rayon::prelude::*;

/// Active key positions of every query position, per head variant (CSR).
pub struct Pairs {
    pub offsets: Vec<Vec<usize>>,
    pub keys: Vec<Vec<u32>>,
}

pub fn pairs(c: &Compiled) -> Pairs {
    let oracle = Oracle::new(&c.spec).expect("layout");
    let g = &c.schedule.geom;
    let n = g.total_tokens as usize;
    let mut offsets = vec![];
    let mut keys = vec![];
    for (vi, v) in c.schedule.variants.iter().enumerate() {
        let mut rows: Vec<Vec<u32>> = vec![vec![]; n];
        for qt in 0..g.total_tiles {
            let qpos = oracle.tile_positions(qt);
            for run in v.row(qt) {
                for kt in run.start..run.start + run.len {
                    let kpos = oracle.tile_positions(kt);
                    for &qp in &qpos {
                        for &kp in &kpos {
                            let on = run.class == TileClass::Full
                                || oracle.active(vi, qp, kp).unwrap_or(false);
                            if on {
                                rows[qp as usize].push(kp as u32);
                            }
                        }
                    }
                }
            }
        }
        let mut off = vec![0usize];
        let mut flat = vec![];
        for r in rows {
            flat.extend(r);
            off.push(flat.len());
        }
        offsets.push(off);
        keys.push(flat);
    }
    Pairs { offsets, keys }
}

/// `out = softmax(scale * q k^T) v` over the listed pairs, f32 throughout.
pub fn attention(c: &Compiled, p: &Pairs, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32]) {
    let s = &c.spec;
    let n = c.schedule.geom.total_tokens as usize;
    let (h_n, kvh, d, dv) = (
        s.heads as usize,
        s.kv_heads as usize,
        s.head_dim as usize,
        s.value_dim as usize,
    );
    let group = h_n / kvh;
    let scale = s.scale as f32;
    out.par_chunks_mut(dv).enumerate().for_each(|(row, o)| {
        let i = row % n;
        let h = (row / n) % h_n;
        let b = row / (n * h_n);
        let variant = s.head_variant[h] as usize;
        let kh = h / group;
        let qrow = &q[((b * h_n + h) * n + i) * d..][..d];
        let keys = &p.keys[variant][p.offsets[variant][i]..p.offsets[variant][i + 1]];
        let mut m = f32::NEG_INFINITY;
        let mut l = 0f32;
        o.fill(0.0);
        for &j in keys {
            let j = j as usize;
            let krow = &k[((b * kvh + kh) * n + j) * d..][..d];
            let mut dot = 0f32;
            for x in 0..d {
                dot += qrow[x] * krow[x];
            }
            let sc = dot * scale;
            let m_new = m.max(sc);
            let alpha = (m - m_new).exp();
            let pj = (sc - m_new).exp();
            l = l * alpha + pj;
            let vrow = &v[((b * kvh + kh) * n + j) * dv..][..dv];
            for x in 0..dv {
                o[x] = o[x] * alpha + pj * vrow[x];
            }
            m = m_new;
        }
        if l > 0.0 {
            for x in o.iter_mut() {
                *x /= l;
            }
        }
    });
}
