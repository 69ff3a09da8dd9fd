//! `exact`'s logits entry on sm_90: the keys come by bulk copies (`cp.async.bulk`, the
//! copy engine, no registers) through a ring of [`STAGES`] shared-memory stages, so that
//! the bytes in flight no longer depend on the registers a thread holds; the arithmetic
//! is `exact::Lanes`' (the same bits as the sm_80 entry, `exact::emit_logits`).
//!
//! A block walks chunks `n = ctaid.x, ctaid.x + nctaid.x, ...` of the `chunks x Hkv x B`
//! chunks (a block a chunk, or about two blocks an SM of a 132-SM GPU: [`grid`]), each in stages
//! of [`STAGE_BYTES`] of keys. One thread (tid 0) issues the copies, [`STAGES`] stages
//! ahead, across chunk boundaries: before it refills a stage it waits on that stage's
//! "empty" barrier (every thread arrives once it has read it); the others wait on its
//! "full" barrier (the copy's bytes). A stage past a sequence's end has no copy: its
//! "full" barrier completes on the issuer's arrival alone, and nobody reads it. At each
//! chunk's end the block writes the chunk's logits and statistics as the sm_80 entry
//! does (`exact::Chunk::write`).

use inkwell::values::{IntValue, PointerValue};
use inkwell::AddressSpace;

use super::exact::{chunks, Chunk, Lanes, WARPS};
use super::Shape;
use crate::codegen::nvptx::asm::ptx;
use crate::codegen::nvptx::gen::{ok, Gen};
use crate::select::softmax::CHUNK;

/// Stages of the ring.
pub const STAGES: u32 = 6;
/// Bytes of keys a stage holds (64 tokens at head dim 128).
pub const STAGE_BYTES: u32 = 16 * 1024;
/// Blocks the grid aims at: two an SM on 132 SMs (any number is correct).
const BLOCKS: u32 = 264;
const THREADS: u32 = WARPS * 32;
const CH: u32 = CHUNK as u32;

/// Tokens a stage holds.
fn stage_tokens(s: &Shape) -> u32 {
    (STAGE_BYTES / (2 * s.d)).min(CH)
}

/// Dynamic shared memory of a block: the stages, the chunk's logits, the barriers.
pub fn smem_bytes(s: &Shape) -> u32 {
    STAGES * STAGE_BYTES + s.g * CH * 4 + 2 * STAGES * 8
}

/// Blocks of the grid: a block a chunk (`Tuning::bulk_logits` 1), or as many as evens out
/// the chunks over about [`BLOCKS`] (2).
pub fn grid(s: &Shape) -> u32 {
    let total = chunks(s) * s.hkv * s.b;
    if s.tuning.bulk_logits == 1 {
        return total;
    }
    total.div_ceil(total.div_ceil(BLOCKS).max(1)).max(1)
}

/// The module's dynamic shared memory (`extern .shared`), declared once.
fn dynamic_smem<'c>(g: &Gen<'c>) -> PointerValue<'c> {
    const NAME: &str = "attnc_decode_dsmem";
    let gl = g.m.get_global(NAME).unwrap_or_else(|| {
        let ty = g.i8t.array_type(0);
        let gl = g.m.add_global(ty, Some(AddressSpace::from(3u16)), NAME);
        gl.set_linkage(inkwell::module::Linkage::External);
        gl.set_alignment(128);
        gl
    });
    gl.as_pointer_value()
}

/// Waits until the barrier at shared address `bar` has completed its phase of parity
/// `parity`.
fn wait<'c>(g: &Gen<'c>, bar: IntValue<'c>, parity: IntValue<'c>) {
    let ready = g.var(g.i32t.into(), g.i32(0).into());
    g.while_loop(&mut |g| g.eqi(g.geti(ready), 0), &mut |g| {
        let r = ptx::mbarrier_try_wait().emit(g.cx, &g.b, &[bar.into(), parity.into()]);
        g.set(ready, r[0]);
    });
}

/// `logits(q, k, lens, logits, stats)`, as `exact::emit_logits`.
pub fn emit_logits<'c>(g: &Gen<'c>, s: &Shape, p: &[PointerValue<'c>]) {
    let (q, k, lens, logits, stats) = (p[0], p[1], p[2], p[3], p[4]);
    let ln = Lanes::new(g, s);
    let (tid, warp) = (ln.grid.tid, ln.grid.warp);
    let smem = dynamic_smem(g);
    let byte = |g: &Gen<'c>, off: IntValue<'c>| g.gep(g.i8t.into(), smem, off);
    let saddr =
        |g: &Gen<'c>, off: IntValue<'c>| g.add(ok(g.b.build_ptr_to_int(smem, g.i32t, "")), off);
    let sh = byte(g, g.i32((STAGES * STAGE_BYTES) as i64));
    let bars = (STAGES * STAGE_BYTES + s.g * CH * 4) as i64;
    let full = |g: &Gen<'c>, slot: IntValue<'c>| saddr(g, g.addi(g.muli(slot, 8), bars));
    let empty = |g: &Gen<'c>, slot: IntValue<'c>| {
        saddr(g, g.addi(g.muli(slot, 8), bars + 8 * STAGES as i64))
    };
    let st_tok = stage_tokens(s);
    let spc = CH / st_tok;
    let nch = chunks(s);
    let total = nch * s.hkv * s.b;
    let n0 = g.sreg("ctaid.x");
    let nblocks = g.sreg("nctaid.x");
    // Chunks of this block, and stages of them.
    let ahead = g.sub(g.i32(total as i64), n0);
    let per =
        ok(g.b.build_int_unsigned_div(g.add(ahead, g.addi(nblocks, -1)), nblocks, ""));
    let count = g.seli(g.lt(n0, g.i32(total as i64)), per, g.i32(0));
    let nst = g.muli(count, spc as i64);
    let at = |g: &Gen<'c>, i: IntValue<'c>| {
        let n = g.add(n0, g.mul(i, nblocks));
        let c = g.uremi(n, nch as i64);
        let kvh = g.uremi(g.udivi(n, nch as i64), s.hkv as i64);
        let b = g.udivi(n, (nch * s.hkv) as i64);
        (c, kvh, b)
    };
    let first = g.eqi(tid, 0);
    g.if_then(first, &mut |g| {
        for slot in 0..STAGES {
            let slot = g.i32(slot as i64);
            ptx::mbarrier_init().emit(g.cx, &g.b, &[full(g, slot).into(), g.i32(1).into()]);
            let n = g.i32(THREADS as i64);
            ptx::mbarrier_init().emit(g.cx, &g.b, &[empty(g, slot).into(), n.into()]);
        }
        ptx::fence_mbarrier_init().emit(g.cx, &g.b, &[]);
    });
    g.barrier();
    // Stage `it` of this block into its slot (tid 0 only).
    let issue = |g: &Gen<'c>, it: IntValue<'c>| {
        let ck = Chunk::new(g, s, lens, at(g, g.udivi(it, spc as i64)));
        let tok0 = g.add(ck.start, g.muli(g.uremi(it, spc as i64), st_tok as i64));
        let left = g.sub(ck.len, tok0);
        let ntok = g.smin(g.smax(left, g.i32(0)), g.i32(st_tok as i64));
        let slot = g.uremi(it, STAGES as i64);
        let bar = full(g, slot);
        g.if_else(
            g.lt(g.i32(0), ntok),
            &mut |g| {
                let bytes = g.muli(ntok, 2 * s.d as i64);
                ptx::mbarrier_arrive_expect_tx().emit(g.cx, &g.b, &[bar.into(), bytes.into()]);
                let src = g.gep(
                    g.cx.i16_type().into(),
                    k,
                    g.muli(g.add(ck.kbase, tok0), s.d as i64),
                );
                let src = ok(g.b.build_ptr_to_int(src, g.i64t, ""));
                let dst = saddr(g, g.muli(slot, STAGE_BYTES as i64));
                ptx::bulk_copy_g2s().emit(
                    g.cx,
                    &g.b,
                    &[dst.into(), src.into(), bytes.into(), bar.into()],
                );
            },
            &mut |g| {
                ptx::mbarrier_arrive().emit(g.cx, &g.b, &[bar.into()]);
            },
        );
    };
    // Stages issued so far (tid 0's count).
    let issued = g.var(g.i32t.into(), g.smin(nst, g.i32(STAGES as i64)).into());
    g.if_then(first, &mut |g| {
        g.for_range(g.i32(0), g.geti(issued), &mut |g, it| issue(g, it));
    });
    // The parity of the previous use of stage `n`'s slot (`n >= STAGES`).
    let before =
        |g: &Gen<'c>, n: IntValue<'c>| g.and(g.addi(g.udivi(n, STAGES as i64), 1), g.i32(1));
    let slot_of = |g: &Gen<'c>, n: IntValue<'c>| g.uremi(n, STAGES as i64);
    let rows = st_tok / (WARPS * ln.per_row);
    g.for_range(g.i32(0), count, &mut |g, i| {
        let ck = Chunk::new(g, s, lens, at(g, i));
        let qv = ln.query(g, s, q, ck.h0);
        g.for_range(g.i32(0), g.i32(spc as i64), &mut |g, st| {
            let it = g.add(g.muli(i, spc as i64), st);
            let slot = slot_of(g, it);
            let parity = g.and(g.udivi(it, STAGES as i64), g.i32(1));
            // tid 0: stage `it` must be issued before anyone waits for it (waiting for
            // its slot to be read if need be); then, without waiting, every later stage
            // up to `it + STAGES - 1` whose slot every thread has read.
            g.if_then(first, &mut |g| {
                g.while_loop(&mut |g| g.lt(g.geti(issued), g.addi(it, 1)), &mut |g| {
                    let n = g.geti(issued);
                    wait(g, empty(g, slot_of(g, n)), before(g, n));
                    issue(g, n);
                    g.set(issued, g.addi(n, 1));
                });
                let more = g.var(g.i32t.into(), g.i32(1).into());
                let end = g.smin(g.addi(it, STAGES as i64), nst);
                let go = |g: &Gen<'c>| g.and(g.eqi(g.geti(more), 1), g.lt(g.geti(issued), end));
                g.while_loop(&mut |g| go(g), &mut |g| {
                    let n = g.geti(issued);
                    let bar = empty(g, slot_of(g, n));
                    let r = ptx::mbarrier_test_wait().emit(
                        g.cx,
                        &g.b,
                        &[bar.into(), before(g, n).into()],
                    );
                    g.if_else(
                        g.eqi(r[0].into_int_value(), 1),
                        &mut |g| {
                            issue(g, n);
                            g.set(issued, g.addi(n, 1));
                        },
                        &mut |g| g.set(more, g.i32(0)),
                    );
                });
            });
            wait(g, full(g, slot), parity);
            let first_tok = g.muli(st, st_tok as i64);
            let live = g.lt(g.add(ck.start, first_tok), ck.len);
            g.if_else(
                live,
                &mut |g| {
                    let stage = byte(g, g.muli(slot, STAGE_BYTES as i64));
                    // Stage-local token of row r: (r * WARPS + warp) * per_row + sub.
                    let locals: Vec<IntValue<'c>> = (0..rows)
                        .map(|r| {
                            let row = g.addi(warp, (r * WARPS) as i64);
                            g.add(g.muli(row, ln.per_row as i64), ln.sub)
                        })
                        .collect();
                    let keys: Vec<_> = locals
                        .iter()
                        .map(|t| ln.keys(g, s, stage, g.muli(*t, s.d as i64)))
                        .collect();
                    for (t, kv) in locals.iter().zip(&keys) {
                        let t = g.add(first_tok, *t);
                        let valid = g.lt(g.add(ck.start, t), ck.len);
                        ln.token(g, s, &qv, kv, (t, valid), sh);
                    }
                },
                &mut |g| {
                    // No keys (past the sequence's end): the stage's logits are `-inf`, as
                    // the sm_80 entry writes them (the chunk's statistics read all of them).
                    let n = g.i32((s.g * st_tok) as i64);
                    g.for_step(tid, n, THREADS as i64, &mut |g, e| {
                        let h = g.udivi(e, st_tok as i64);
                        let t = g.add(first_tok, g.uremi(e, st_tok as i64));
                        g.st_f32(sh, g.add(g.muli(h, CH as i64), t), g.f32(f64::NEG_INFINITY));
                    });
                },
            );
            ptx::mbarrier_arrive().emit(g.cx, &g.b, &[empty(g, slot).into()]);
        });
        g.barrier();
        g.if_then(g.lt(ck.start, ck.len), &mut |g| {
            ck.write(g, s, &ln.grid, sh, (logits, stats));
        });
        g.barrier();
    });
}
