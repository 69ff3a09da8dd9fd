//! Append on the GPU: one block per sequence writes the new key and value of every KV head
//! at position `lens[b]` (bits already in the dtype) and, with pages, updates that page's
//! per-channel maximum and minimum (a page's first token sets them), then advances
//! `lens[b]`. The host checks that no sequence is full before it launches; the kernel
//! also leaves a full sequence alone (a replayed CUDA graph could not be checked).

use inkwell::values::PointerValue;
use inkwell::{FloatPredicate, IntPredicate};

use super::Shape;
use crate::codegen::nvptx::gen::Gen;

pub const THREADS: u32 = 256;

pub fn emit<'c>(g: &Gen<'c>, s: &Shape, p: &[PointerValue<'c>]) {
    let (knew, vnew, k, v, kmax, kmin, lens) = (p[0], p[1], p[2], p[3], p[4], p[5], p[6]);
    let tid = g.sreg("tid.x");
    let b = g.sreg("ctaid.x");
    let pos = g.ld_i32(lens, b);
    let d = s.d as i64;
    // A full sequence gets nothing (block-uniform: every thread read the same length).
    let room = g.icmp(IntPredicate::ULT, pos, g.i32(s.c as i64));
    let per = g.seli(room, g.i32((s.hkv * s.d) as i64), g.i32(0));
    g.for_step(tid, per, THREADS as i64, &mut |g, x| {
        let kvh = g.udivi(x, d);
        let t = g.uremi(x, d);
        let row = g.add(g.muli(b, s.hkv as i64), kvh);
        let src = g.add(g.muli(row, d), t);
        let kb = g.ld_i16(knew, src);
        let vb = g.ld_i16(vnew, src);
        let tok = g.add(g.muli(g.sext64(row), s.c as i64), g.sext64(pos));
        let dst = g.add(g.muli(tok, d), g.sext64(t));
        g.st_i16(k, dst, kb);
        g.st_i16(v, dst, vb);
        if s.p > 1 {
            let page = g.udivi(pos, s.p as i64);
            let m = g.add(g.muli(g.add(g.muli(row, s.units as i64), page), d), t);
            let fresh = g.icmp(IntPredicate::EQ, g.uremi(pos, s.p as i64), g.i32(0));
            g.if_else(
                fresh,
                &mut |g| {
                    g.st_i16(kmax, m, kb);
                    g.st_i16(kmin, m, kb);
                },
                &mut |g| {
                    let x = g.half_to_f32(kb, s.bf16);
                    let hi = g.ld_i16(kmax, m);
                    let lo = g.ld_i16(kmin, m);
                    let above = g.fcmp(FloatPredicate::OGT, x, g.half_to_f32(hi, s.bf16));
                    let below = g.fcmp(FloatPredicate::OLT, x, g.half_to_f32(lo, s.bf16));
                    g.st_i16(kmax, m, g.seli(above, kb, hi));
                    g.st_i16(kmin, m, g.seli(below, kb, lo));
                },
            );
        }
    });
    g.barrier();
    let t0 = g.and(g.eqi(tid, 0), room);
    g.if_then(t0, &mut |g| g.st_i32(lens, b, g.addi(pos, 1)));
}
