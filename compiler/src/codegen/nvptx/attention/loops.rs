//! The key loops (plain, overlapped, warp-specialised with its producer) and one chunk of
//! the loop body's ops on fragments.

use super::mask::PairScope;
use super::*;

impl<'a, 'c> Attention<'a, 'c> {
    pub(super) fn kv_loop(
        &self,
        region: crate::ir::RegionId,
        f: &mut Frags<'c>,
    ) -> Result<(), String> {
        match (self.cfg.shape.ws, self.cfg.shape.overlap) {
            (true, true) => return self.kv_loop_ws_overlapped(region, f),
            (true, false) => return self.kv_loop_ws(region, f),
            (false, true) => return self.kv_loop_overlapped(region, f),
            (false, false) => {}
        }
        let g = self.g;
        let KeyWalk {
            end,
            cur,
            next,
            has,
        } = self.key_walk();
        // Chunks computed so far: chunk n is in buffer n % 2 and, with tensor copies, its
        // buffer's barrier completes round n / 2 for it.
        let done = g.var(g.i32t.into(), g.i32(0).into());
        self.first_chunk(&cur, has);
        let body: Vec<NodeIndex> = self.k.region_nodes(region);
        let mut err = None;
        g.while_loop(&mut |g| g.lt(g.geti(cur.r), end), &mut |g| {
            let n = g.geti(done);
            let b = g.uremi(n, 2);
            let nb = g.sub(g.i32(1), b);
            self.copy_cursor(&cur, &next);
            self.advance(&next, end);
            let more = g.lt(g.geti(next.r), end);
            g.if_then(more, &mut |_| self.fill_kinfo(&next, nb));
            // cp.async reads every key's position; a tensor copy only the first, which its
            // issuing thread (0) wrote itself. Everyone's last reads of buffer and slot `nb`
            // were before the previous chunk's closing barrier.
            if !self.cfg.shape.tma {
                g.barrier();
            }
            g.if_then(more, &mut |_| self.issue_kv(&next, nb, nb));
            if self.cfg.shape.tma {
                self.wait_tma(b, g.udivi(n, 2));
            } else {
                ptx::cp_async_commit().emit(g.cx, &g.b, &[]);
                ptx::cp_async_wait(1).emit(g.cx, &g.b, &[]);
                if self.cfg.shape.wgmma {
                    ptx::fence_proxy_async().emit(g.cx, &g.b, &[]);
                }
                g.barrier();
            }
            if let Err(e) = self.chunk(&body, &cur, b, Step::Serial(b), f, &mut |_| {}) {
                err = Some(e);
            }
            g.barrier();
            self.copy_cursor(&next, &cur);
            g.set(done, g.addi(n, 1));
        });
        if !self.cfg.shape.tma {
            ptx::cp_async_wait(0).emit(g.cx, &g.b, &[]);
        }
        err.map_or(Ok(()), Err)
    }

    /// The plain key loop's prologue: the first chunk's key information into slot 0 and its
    /// K and V on their way into buffer 0 (when the query tile has a run, `has`).
    pub(super) fn first_chunk(&self, cur: &Cursor<'c>, has: IntValue<'c>) {
        let g = self.g;
        if self.cfg.shape.tma {
            // Q was staged where the tensor copies land: order those generic accesses
            // before the async proxy's writes (the barrier below completes the order).
            ptx::fence_proxy_async().emit(g.cx, &g.b, &[]);
        }
        g.if_then(has, &mut |g| {
            self.fill_kinfo(cur, g.i32(0));
            g.barrier();
            self.issue_kv(cur, g.i32(0), g.i32(0));
        });
        if !self.cfg.shape.tma {
            ptx::cp_async_commit().emit(g.cx, &g.b, &[]);
        }
    }

    /// The key loop with each warpgroup's softmax overlapped with its previous `P V`
    /// (tensor copies, `overlap`; FlashAttention-3's intra-warpgroup pipelining). Chunk `n`
    /// uses K buffer `n % 2`, V buffer `n % 2`, key-information slot `n % 3`; K buffer `b`
    /// completes on mbarrier `b`, V buffer `b` on mbarrier `2 + b`, chunk `n`'s copies in the
    /// phase of parity `n / 2 % 2`.
    ///
    /// Chunk 0: `S` waited for, softmax, P kept. Chunk `n > 0`: wait for K(n) and V(n-1);
    /// one block issues `S = Q K^T(n)` and `P(n-1) V(n-1)` and waits for `S`; the softmax of
    /// `n`; then the wait for `P V` (ptxas moves it ahead of the exponentials: run 42),
    /// after which K(n) and V(n-1) are
    /// read by nobody in this warpgroup: the key information of chunk `n + 2`, the one
    /// barrier a chunk, and one thread issues K(n+2) into K buffer `n % 2` and V(n+1) into
    /// V buffer `(n+1) % 2` (each lands a whole chunk before it is read). The slot filled,
    /// `(n+2) % 3`, was last read by chunk `n - 1`'s softmax, before the previous barrier.
    /// After the loop, the last chunk's `P V`. Three cursors: the chunk being computed
    /// (masking), the next (its V), the one after (its key information and K).
    pub(super) fn kv_loop_overlapped(
        &self,
        region: crate::ir::RegionId,
        f: &mut Frags<'c>,
    ) -> Result<(), String> {
        let g = self.g;
        let KeyWalk {
            end,
            cur,
            next: mid,
            has,
        } = self.key_walk();
        let ahead = self.new_cursor();
        let body: Vec<NodeIndex> = self.k.region_nodes(region);
        let kept = self.kept_p();
        // Q was staged where the tensor copies land: order those generic accesses before
        // the async proxy's writes (the barrier below completes the order).
        ptx::fence_proxy_async().emit(g.cx, &g.b, &[]);
        let mut err = None;
        let t = self;
        g.if_then(has, &mut |g| {
            t.copy_cursor(&cur, &mid);
            t.advance(&mid, end);
            t.copy_cursor(&mid, &ahead);
            t.advance(&ahead, end);
            let exists = |c: &Cursor<'c>| g.lt(g.geti(c.r), end);
            let second = exists(&mid);
            t.fill_kinfo(&cur, g.i32(0));
            g.if_then(second, &mut |g| t.fill_kinfo(&mid, g.i32(1)));
            g.barrier();
            let (k0, k1, v0) = (g.i32(0), g.i32(1), g.i32(2));
            t.tma_copies(Operands::K, k0, k0, t.mbar_addr(k0));
            t.tma_copies(Operands::V, k0, k0, t.mbar_addr(v0));
            g.if_then(second, &mut |_| {
                t.tma_copies(Operands::K, k1, k1, t.mbar_addr(k1))
            });
            // After chunk n's wait for P V: chunk n+2's key information, the barrier, K(n+2)
            // and V(n+1).
            let prefetch = |t: &Self, n: IntValue<'c>, mid: &Cursor<'c>, ahead: &Cursor<'c>| {
                let (more1, more2) = (exists(mid), exists(ahead));
                let slot2 = g.uremi(g.addi(n, 2), 3);
                let slot1 = g.uremi(g.addi(n, 1), 3);
                g.if_then(more2, &mut |_| t.fill_kinfo(ahead, slot2));
                g.barrier();
                let kb = g.uremi(n, 2);
                let vb = g.uremi(g.addi(n, 1), 2);
                g.if_then(more2, &mut |_| {
                    t.tma_copies(Operands::K, kb, slot2, t.mbar_addr(kb))
                });
                g.if_then(more1, &mut |g| {
                    t.tma_copies(Operands::V, vb, slot1, t.mbar_addr(g.addi(vb, 2)))
                });
            };
            let shift = |t: &Self| {
                t.copy_cursor(&mid, &cur);
                t.copy_cursor(&ahead, &mid);
                t.advance(&ahead, end);
            };
            // Chunk 0.
            t.wait_tma(k0, k0);
            let zero = g.i32(0);
            let r = t.chunk(&body, &cur, zero, Step::First(k0), f, &mut |t| {
                prefetch(t, zero, &mid, &ahead)
            });
            if let Err(e) = r {
                err = Some(e);
            }
            kept.keep(g, f);
            shift(t);
            let n_var = g.var(g.i32t.into(), g.i32(1).into());
            g.while_loop(&mut |_| exists(&cur), &mut |g| {
                let n = g.geti(n_var);
                let kb = g.uremi(n, 2);
                let prev = g.sub(n, g.i32(1));
                let vb = g.uremi(prev, 2);
                t.wait_tma(kb, g.udivi(n, 2));
                t.wait_tma(g.addi(vb, 2), g.udivi(prev, 2));
                kept.restore(g, f);
                let step = Step::Steady {
                    k: kb,
                    v_prev: t.v_buf(vb),
                    word: t.accumulate(),
                };
                let slot = g.uremi(n, 3);
                let r = t.chunk(&body, &cur, slot, step, f, &mut |t| {
                    prefetch(t, n, &mid, &ahead)
                });
                if let Err(e) = r {
                    err = Some(e);
                }
                kept.keep(g, f);
                shift(t);
                g.set(n_var, g.addi(n, 1));
            });
            // The last chunk's P V (V(last) was never waited for).
            let last = g.sub(g.geti(n_var), g.i32(1));
            let vb = g.uremi(last, 2);
            t.wait_tma(g.addi(vb, 2), g.udivi(last, 2));
            kept.restore(g, f);
            t.pv_wgmma(t.v_buf(vb), t.accumulate(), f);
        });
        err.map_or(Ok(()), Err)
    }

    /// The warp-specialised key loop of the computing warpgroups: chunk `n` is in stage
    /// `n % S` (S = `stages()`); wait for the stage's "full" barrier (phase parity
    /// `n / S % 2`: the producer's key information and the tensor copies have landed),
    /// compute the chunk with both products waited for, and arrive on its "empty" barrier
    /// (every computing thread is past its reads of the stage: K, V and the key
    /// information). The cursor walks the same chunks as the producer's, for the masks.
    pub(super) fn kv_loop_ws(
        &self,
        region: crate::ir::RegionId,
        f: &mut Frags<'c>,
    ) -> Result<(), String> {
        let g = self.g;
        let stages = i64::from(self.cfg.stages());
        let KeyWalk {
            end,
            cur,
            next,
            has,
        } = self.key_walk();
        let body: Vec<NodeIndex> = self.k.region_nodes(region);
        let n_var = self.chunk_counter();
        // Ping-pong: computing warpgroup `w` issues its `Q K^T` after the barrier `1 + w`
        // and then opens `2 - w` for the other. Warpgroup 1 opens 1 once before the first
        // chunk and not after its last, so that every arrival has its wait.
        let wg = g.udivi(self.warp, 4);
        let turns = self.cfg.shape.pingpong.then(|| {
            let threads = g.i32(i64::from(self.cfg.compute_threads()));
            let first_turn = g.and(has, g.eqi(wg, 1));
            let open = g.seli(first_turn, g.i32(1), g.i32(0));
            ptx::bar_arrive_if().emit(g.cx, &g.b, &[g.i32(1).into(), threads.into(), open.into()]);
            (g.addi(wg, 1), g.sub(g.i32(2), wg))
        });
        let mut err = None;
        g.while_loop(&mut |g| g.lt(g.geti(cur.r), end), &mut |g| {
            let n = g.geti(n_var);
            let stage = g.uremi(n, stages);
            self.wait_tma(stage, g.udivi(n, stages));
            let step = if let Some((mine, other)) = turns {
                self.copy_cursor(&cur, &next);
                self.advance(&next, end);
                let last = g.icmp(IntPredicate::SGE, g.geti(next.r), end);
                let quiet = g.and(last, g.eqi(wg, 1));
                Step::Turn {
                    buf: stage,
                    mine,
                    other,
                    arrive: g.seli(quiet, g.i32(0), g.i32(1)),
                }
            } else {
                Step::Serial(stage)
            };
            if let Err(e) = self.chunk(&body, &cur, stage, step, f, &mut |_| {}) {
                err = Some(e);
            }
            let empty = self.mbar_addr(g.addi(stage, stages));
            ptx::mbarrier_arrive().emit(g.cx, &g.b, &[empty.into()]);
            self.advance(&cur, end);
            g.set(n_var, g.addi(n, 1));
        });
        err.map_or(Ok(()), Err)
    }

    /// The warp-specialised key loop with each warpgroup's softmax overlapped with its
    /// previous `P V` (`-ws-ovl`: FlashAttention-3's producer, consumers and
    /// intra-warpgroup pipelining): chunk `n` in stage `n % S` as in `kv_loop_ws`; the
    /// first chunk's `S` waited for and its P kept; chunk `n > 0` issues `S = Q K^T(n)`
    /// with `P(n-1) V(n-1)` and its softmax before the wait for `P V` (which ptxas moves
    /// ahead of the exponentials: run 42); once `P V` completed,
    /// stage `n - 1` is released (its "empty" barrier). After the loop, the last chunk's
    /// `P V`, and its stage released. The computing warpgroups hold two stages at once.
    pub(super) fn kv_loop_ws_overlapped(
        &self,
        region: crate::ir::RegionId,
        f: &mut Frags<'c>,
    ) -> Result<(), String> {
        let g = self.g;
        let stages = i64::from(self.cfg.stages());
        let KeyWalk { end, cur, has, .. } = self.key_walk();
        let body: Vec<NodeIndex> = self.k.region_nodes(region);
        let n_var = self.chunk_counter();
        let kept = self.kept_p();
        let release = |t: &Self, stage: IntValue<'c>| {
            let empty = t.mbar_addr(g.addi(stage, stages));
            ptx::mbarrier_arrive().emit(g.cx, &g.b, &[empty.into()]);
        };
        let mut err = None;
        let t = self;
        g.if_then(has, &mut |g| {
            let n0 = g.geti(n_var);
            let s0 = g.uremi(n0, stages);
            t.wait_tma(s0, g.udivi(n0, stages));
            if let Err(e) = t.chunk(&body, &cur, s0, Step::First(s0), f, &mut |_| {}) {
                err = Some(e);
            }
            kept.keep(g, f);
            t.advance(&cur, end);
            g.set(n_var, g.addi(n0, 1));
            g.while_loop(&mut |g| g.lt(g.geti(cur.r), end), &mut |g| {
                let n = g.geti(n_var);
                let stage = g.uremi(n, stages);
                let prev = g.uremi(g.addi(n, -1), stages);
                t.wait_tma(stage, g.udivi(n, stages));
                kept.restore(g, f);
                let step = Step::Steady {
                    k: stage,
                    v_prev: t.v_buf(prev),
                    word: t.accumulate(),
                };
                if let Err(e) = t.chunk(&body, &cur, stage, step, f, &mut |t| release(t, prev)) {
                    err = Some(e);
                }
                kept.keep(g, f);
                t.advance(&cur, end);
                g.set(n_var, g.addi(n, 1));
            });
            // The last chunk's P V, then its stage is free.
            let last = g.uremi(g.addi(g.geti(n_var), -1), stages);
            kept.restore(g, f);
            t.pv_wgmma(t.v_buf(last), t.accumulate(), f);
            release(t, last);
        });
        err.map_or(Ok(()), Err)
    }

    /// The warp-specialised producer (warpgroup 0): walks this block's chunks; for chunk
    /// `n` in stage `s = n % S`, once the computing warpgroups have released the stage's
    /// previous chunk (its "empty" barrier, phase parity `(n / S - 1) % 2`, from chunk
    /// `S` on), its first `bn` threads write the keys' information into slot `s` and
    /// arrive on the "full" barrier (release: the consumers' wait sees the writes); thread
    /// 0 instead arrives expecting the copies' bytes and issues them (it reads only key 0's
    /// position, which it wrote itself).
    pub(super) fn produce(&self) {
        let g = self.g;
        let cfg = self.cfg;
        let stages = i64::from(cfg.stages());
        let KeyWalk { end, cur, .. } = self.key_walk();
        let n_var = self.chunk_counter();
        let first = g.eqi(self.kv_tid, 0);
        g.while_loop(&mut |g| g.lt(g.geti(cur.r), end), &mut |g| {
            let n = g.geti(n_var);
            let stage = g.uremi(n, stages);
            let round = g.udivi(n, stages);
            let reused = g.icmp(IntPredicate::UGE, n, g.i32(stages));
            g.if_then(reused, &mut |g| {
                self.wait_tma(g.addi(stage, stages), g.sub(round, g.i32(1)));
            });
            self.fill_kinfo(&cur, stage);
            let full = self.mbar_addr(stage);
            g.if_else(
                first,
                &mut |_| self.tma_copies(Operands::KV, stage, stage, full),
                &mut |g| {
                    ptx::mbarrier_arrive().emit(g.cx, &g.b, &[full.into()]);
                },
            );
            self.advance(&cur, end);
            g.set(n_var, g.addi(n, 1));
        });
    }

    /// Variables for the P words an overlapped loop keeps across its back edge.
    pub(super) fn kept_p(&self) -> KeptP<'c> {
        let g = self.g;
        KeptP(
            (0..self.cfg.shape.bn / 16)
                .map(|_| [0; 4].map(|_| g.var(g.i32t.into(), g.i32(0).into())))
                .collect(),
        )
    }

    /// The count of chunks walked, which the stages' barrier phases follow: the persistent
    /// kernel's (across work items), or a new one from 0.
    pub(super) fn chunk_counter(&self) -> Var<'c> {
        let g = self.g;
        self.chunks
            .unwrap_or_else(|| g.var(g.i32t.into(), g.i32(0).into()))
    }

    /// One chunk: the loop body's ops on fragments. The keys' information is in slot
    /// `slot`; `step` says where K and V are and how the products are issued; `at_pv` runs
    /// where `P V` is (after the overlapped loop's wait).
    pub(super) fn chunk(
        &self,
        body: &[NodeIndex],
        cur: &Cursor<'c>,
        slot: IntValue<'c>,
        step: Step<'c>,
        f: &mut Frags<'c>,
        at_pv: &mut dyn FnMut(&Self),
    ) -> Result<(), String> {
        let g = self.g;
        let cfg = self.cfg;
        let kt = g.geti(cur.kt);
        let ktile = tokens::tile(g, self.geo, kt);
        let chunk0 = g.muli(g.geti(cur.chunk), i64::from(cfg.shape.bn));
        // Keys of this chunk that can be attended to.
        let kval = g.smin(
            g.smax(g.sub(ktile.valid, chunk0), g.i32(0)),
            g.i32(i64::from(cfg.shape.bn)),
        );
        // The IR masks partial key tiles; a chunk that is not a whole tile (the tile is not a
        // multiple of `bn`) also holds padding keys, masked here when the IR has no mask.
        let has_mask = body
            .iter()
            .any(|n| matches!(self.k.node(*n).op, Op::Mask(_)));
        // A positive scale commutes with the row max and masking (-inf stays -inf), so it
        // can wait for the exponent's multiply-add: one multiply less a score. A score
        // modifier must see scaled scores.
        let fold_scale = !body
            .iter()
            .any(|n| matches!(self.k.node(*n).op, Op::ScoreMod(_)));
        f.scale = None;
        for n in body {
            let node = self.k.node(*n);
            if matches!(node.op, Op::RowMax) && !has_mask && !cfg.exact {
                let ninf = g.f32(f64::NEG_INFINITY);
                self.elementwise(slot, f, &mut |_, s, _, j, _| {
                    g.self_f(g.lt(j, kval), s, ninf)
                });
            }
            match &node.op {
                Op::KvTile | Op::Carry(_) | Op::Load(_) | Op::Yield => {}
                Op::Dot { transpose_b: true } => match step {
                    Step::Serial(buf) | Step::First(buf) => self.qk(buf, f),
                    Step::Steady { k, v_prev, word } => self.qk_with_pv(k, v_prev, word, f),
                    Step::Turn {
                        buf,
                        mine,
                        other,
                        arrive,
                    } => self.qk_turn(buf, (mine, other, arrive), f),
                },
                Op::Scale(c) if fold_scale && *c > 0.0 => f.scale = Some(*c),
                Op::Scale(c) => {
                    let c = g.f32(*c);
                    for t in &f.s {
                        for v in t {
                            g.set(*v, g.fmul(g.getf(*v), c));
                        }
                    }
                }
                Op::ScoreMod(id) => {
                    if let Some(ElemFn::Score(e)) = self.k.elem_fns.get(id.0 as usize).cloned() {
                        self.elementwise(slot, f, &mut |this, s, q, _j, k| {
                            let mut sc = PairScope {
                                a: this,
                                q,
                                k,
                                score: Some(s),
                                tile: false,
                            };
                            let v = expr::gen(g, &e, &mut sc);
                            if e.ty == crate::sema::expr::Ty::Int {
                                ok(g.b.build_signed_int_to_float(v.into_int_value(), g.f32t, ""))
                            } else {
                                v.into_float_value()
                            }
                        });
                    }
                }
                Op::Mask(fs) => self.mask(fs, slot, cur, kval, ktile, f),
                Op::RowMax => self.row_max(f),
                Op::SoftmaxUpdate { exp2 } => self.softmax(f, *exp2),
                Op::RowSum => {}
                Op::RescaleAdd => {
                    // Either the running sum (rows) or the accumulator (tile).
                    match node.results.first() {
                        Some(Type::Rows { .. }) => self.update_l(f),
                        _ => match step {
                            Step::Serial(buf) | Step::Turn { buf, .. } => self.pv(buf, f),
                            Step::First(_) => {
                                self.rescale_deferred(f);
                                at_pv(self);
                            }
                            // `at_pv` before the rescale: the persistent overlapped kernel
                            // stores a finished item's rows there, before the next item's
                            // first rescale touches the accumulators (whose values that
                            // item's first `P V` then overwrites, `ptx::WGMMA_FRESH`).
                            Step::Steady { .. } => {
                                self.pv_complete(f);
                                at_pv(self);
                                self.rescale_deferred(f);
                            }
                        },
                    }
                }
                Op::Convert(_) => self.pack_p(f),
                Op::Dot { transpose_b: false } => {} // fused into the accumulator update
                other => {
                    return Err(format!(
                        "the CUDA backend cannot lower `{}` in the key loop",
                        other.name()
                    ))
                }
            }
        }
        Ok(())
    }
}
