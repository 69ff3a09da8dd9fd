//! Rule 8's combine: one block per (query head, sequence), one thread per channel. The
//! chunks' partial results `(max, sum, acc)` (base 2) are rescaled to their common maximum
//! and added; a list that selected nothing gives zeros.

use inkwell::values::{FloatValue, IntValue, PointerValue};
use inkwell::FloatPredicate;

use super::attend::anchor;
use super::Shape;
use crate::codegen::nvptx::gen::Gen;

/// Up to this many chunks the loads are unrolled.
const UNROLLED: u32 = 32;

pub fn emit<'c>(g: &Gen<'c>, s: &Shape, p: &[PointerValue<'c>]) {
    let (part, out) = (p[0], p[1]);
    let stride = s.d as i64 + 2;
    let t = g.sreg("tid.x");
    let h = g.sreg("ctaid.x");
    let b = g.sreg("ctaid.y");
    let row = g.add(g.muli(b, s.hq as i64), h);
    let base = g.muli(g.muli(row, s.chunks as i64), stride);
    let at = |g: &Gen<'c>, c: IntValue<'c>| g.add(base, g.muli(c, stride));
    let (l, acc) = if s.chunks <= UNROLLED {
        // Few chunks: every load issued at once (straight-line code, no loop).
        let cs: Vec<IntValue<'c>> = (0..s.chunks).map(|c| at(g, g.i32(c as i64))).collect();
        let ms: Vec<FloatValue<'c>> = cs.iter().map(|a| g.ld_f32(part, *a)).collect();
        let ls: Vec<FloatValue<'c>> = cs.iter().map(|a| g.ld_f32(part, g.addi(*a, 1))).collect();
        let accs: Vec<FloatValue<'c>> = cs
            .iter()
            .map(|a| g.ld_f32(part, g.add(g.addi(*a, 2), t)))
            .collect();
        let mx = ms
            .iter()
            .fold(g.f32(f64::NEG_INFINITY), |a, m| g.fmax(a, *m));
        let mu = anchor(g, mx);
        let (mut l, mut acc) = (g.f32(0.0), g.f32(0.0));
        for ((m, lc), a) in ms.iter().zip(&ls).zip(&accs) {
            let w = g.ex2(g.fsub(*m, mu));
            l = g.fma(*lc, w, l);
            acc = g.fma(*a, w, acc);
        }
        (l, acc)
    } else {
        let l = g.var(g.f32t.into(), g.f32(0.0).into());
        let acc = g.var(g.f32t.into(), g.f32(0.0).into());
        let n = g.i32(s.chunks as i64);
        let mx = g.var(g.f32t.into(), g.f32(f64::NEG_INFINITY).into());
        g.for_range(g.i32(0), n, &mut |g, c| {
            let m = g.ld_f32(part, at(g, c));
            g.set(mx, g.fmax(g.getf(mx), m));
        });
        let mu = anchor(g, g.getf(mx));
        g.for_range(g.i32(0), n, &mut |g, c| {
            let a0 = at(g, c);
            let w = g.ex2(g.fsub(g.ld_f32(part, a0), mu));
            let lc = g.ld_f32(part, g.addi(a0, 1));
            g.set(l, g.fma(lc, w, g.getf(l)));
            let a = g.ld_f32(part, g.add(g.addi(a0, 2), t));
            g.set(acc, g.fma(a, w, g.getf(acc)));
        });
        (g.getf(l), g.getf(acc))
    };
    let some = g.fcmp(FloatPredicate::OGT, l, g.f32(0.0));
    let o = g.self_f(some, g.fdiv(acc, l), g.f32(0.0));
    g.st_f32(out, g.add(g.muli(row, s.d as i64), t), o);
}
