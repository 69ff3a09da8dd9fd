//! The persistent overlapped warp-specialised kernel (`-ws-ovl-pers`,
//! docs/persistent-overlap.md): the overlapped loop's pipeline carried across work items.
//!
//! K and V come in rings of their own (two stages each; chunk `n` in stage `n % 2`, its
//! copies in the phase of parity `n / 2 % 2`, `n` counted across the block's items) and Q
//! in two buffers (item `i` of the block in buffer `i % 2`), all by tensor copies that the
//! producer issues as soon as the computing warpgroups release a stage or buffer
//! (`Ring`'s barriers). The computing warpgroups walk every chunk of the block's items in
//! one loop (`consume_items`): a work item's first `Q K^T` goes out with the previous
//! item's last `P V`, whose completion stores that item's rows, so that a block pays for
//! one unpaired product at its start and one at its end, not at every item's.

use super::*;

/// The computing warpgroups' walk over the block's work items: one loop over all their
/// chunks, so that the accumulators only ever cross that loop's back edge (carried across
/// an outer loop over items, with `P V` in flight beside the softmax, they made ptxas
/// serialise every wgmma, C7511).
pub(super) struct Carry<'c> {
    /// Work items the block has taken, the open one included (Q buffer `taken % 2` is
    /// the next one's)...
    taken: Var<'c>,
    /// ... the next item to take, the launch's count and the block's stride.
    item: Var<'c>,
    items: IntValue<'c>,
    stride: IntValue<'c>,
    /// The open item (the last one taken, with keys) while `live` is 1.
    open_item: Var<'c>,
    live: Var<'c>,
    /// Items with keys opened so far: carried slot `opened % 2` is the next one's.
    opened: Var<'c>,
    /// 1 when the `P V` in flight is a finished item's last: its rows are stored once it
    /// completes, from the row sums `l` and carried slot `closed`.
    closing: Var<'c>,
    closed: Var<'c>,
    /// The open item's first chunk (counted across items): its `P V` starts the
    /// accumulators afresh (`ptx::WGMMA_FRESH`: clearing them instead made ptxas
    /// serialise every wgmma).
    first: Var<'c>,
    /// The closing item's thread-partial row sums...
    l: [Var<'c>; 2],
    /// ... and, for a kernel with `outputs lse;`, its running maxima.
    m: Option<[Var<'c>; 2]>,
    /// The P words of the previous chunk (its `P V` is issued with the next `Q K^T`).
    p: KeptP<'c>,
    /// The chunk cursor of the open item and the end of its runs.
    cur: Cursor<'c>,
    end: Var<'c>,
}

impl<'a, 'c> Attention<'a, 'c> {
    pub(super) fn new_carry(
        &self,
        taken: Var<'c>,
        item: Var<'c>,
        items: IntValue<'c>,
        stride: IntValue<'c>,
    ) -> Carry<'c> {
        let g = self.g;
        let int = || g.var(g.i32t.into(), g.i32(0).into());
        let float = || g.var(g.f32t.into(), g.f32(0.0).into());
        Carry {
            taken,
            item,
            items,
            stride,
            open_item: int(),
            live: int(),
            opened: int(),
            closing: int(),
            closed: int(),
            first: int(),
            l: [float(), float()],
            m: self.params.lse.map(|_| [float(), float()]),
            p: self.kept_p(),
            cur: self.new_cursor(),
            end: int(),
        }
    }

    fn carry(&self) -> &Carry<'c> {
        self.carry
            .as_ref()
            .expect("the computing warpgroups made the carry")
    }

    /// Mbarrier `which` of stage or Q buffer `i` (0 or 1).
    fn ring_bar(&self, which: Ring, i: IntValue<'c>) -> IntValue<'c> {
        self.mbar_addr(self.g.addi(i, which.base()))
    }

    fn ring_wait(&self, which: Ring, i: IntValue<'c>, round: IntValue<'c>) {
        self.wait_tma(self.g.addi(i, which.base()), round);
    }

    fn ring_arrive(&self, which: Ring, i: IntValue<'c>) {
        let g = self.g;
        ptx::mbarrier_arrive().emit(g.cx, &g.b, &[self.ring_bar(which, i).into()]);
    }

    /// Shared offsets of Q buffer `b` and of its rows' information.
    fn q_buffer(&self, b: IntValue<'c>) -> (IntValue<'c>, IntValue<'c>) {
        let (g, cfg) = (self.g, self.cfg);
        (
            g.addi(
                g.muli(b, i64::from(cfg.q_bytes())),
                i64::from(cfg.q_stage()),
            ),
            g.addi(
                g.muli(b, i64::from(cfg.shape.bm * 16)),
                i64::from(cfg.qinfo()),
            ),
        )
    }

    /// Shared offset of Q buffer `b`'s key-walk start (see `Config::walks`).
    fn walk_slot(&self, b: IntValue<'c>) -> IntValue<'c> {
        let g = self.g;
        g.addi(g.muli(b, 32), i64::from(self.cfg.walks()))
    }

    /// The key walk of Q buffer `b`'s item as the producer left it (its first chunk's
    /// cursor and the end of its runs), read after the buffer's "full" barrier.
    fn walk_at(&self, b: IntValue<'c>) -> KeyWalk<'c> {
        let g = self.g;
        let at = self.walk_slot(b);
        let cur = self.new_cursor();
        for (k, v) in [cur.r, cur.kt, cur.kend, cur.class].into_iter().enumerate() {
            g.set(v, self.ld_shared_i32(g.addi(at, 4 * k as i64)));
        }
        let end = self.ld_shared_i32(g.addi(at, 16));
        KeyWalk {
            end,
            cur,
            next: self.new_cursor(),
            has: g.lt(g.geti(cur.r), end),
        }
    }

    /// Shared offset of this thread's carried slot `slot`: its two rows' positions (-1
    /// for a row past the tile) and the item's `batch * heads + head`.
    fn carried_at(&self, slot: IntValue<'c>) -> IntValue<'c> {
        let (g, cfg) = (self.g, self.cfg);
        let at = g.add(g.muli(slot, i64::from(cfg.compute_threads())), self.tid);
        g.addi(g.muli(at, 16), i64::from(cfg.carried()))
    }

    /// The producer's start of a work item (the `taken`-th of the block): once Q buffer
    /// `taken % 2` is free (from the third item on), the rows' information (a thread a
    /// row) and the rows by tensor copies of 64-element boxes (Q as `[batch * heads *
    /// tokens, dim]`: a query block's rows are consecutive; rows past the tile are
    /// finite, and never stored); then the item's key walk, which it returns and whose
    /// start thread 1 leaves beside the buffer. The threads other than the issuing one
    /// arrive on the buffer's "full" barrier after the walk's loads, which so run while
    /// the copy does (walked before the copy was issued, they delayed the next item's Q
    /// by their latency: run 39).
    pub(super) fn produce_q(&self, taken: Var<'c>) -> KeyWalk<'c> {
        let g = self.g;
        let cfg = self.cfg;
        let tmaps = self.params.tmaps.expect("tensor copies have their maps");
        let i = g.geti(taken);
        let b = g.uremi(i, 2);
        let reused = g.icmp(IntPredicate::UGE, i, g.i32(2));
        let this = self;
        g.if_then(reused, &mut |g| {
            this.ring_wait(Ring::QEmpty, b, g.sub(g.udivi(i, 2), g.i32(1)))
        });
        let (stage, info_at) = self.q_buffer(b);
        let tid = self.kv_tid;
        let full = self.ring_bar(Ring::QFull, b);
        let in_block = g.lt(tid, g.i32(i64::from(cfg.shape.bm)));
        let (row0, qt, geo) = (self.row0, self.qt, self.geo);
        g.if_then(in_block, &mut |g| {
            let info = tokens::row(g, geo, qt, g.add(row0, tid));
            let off = g.add(g.muli(tid, 16), info_at);
            this.st_shared_i32(off, info.pos);
            for a in 0..3 {
                this.st_shared_i32(g.addi(off, 4 + 4 * a as i64), info.coords[a]);
            }
        });
        let first = g.eqi(tid, 0);
        g.if_then(first, &mut |g| {
            let pos0 = this.ld_shared_i32(info_at);
            let heads = i64::from(this.k.info.heads);
            let bh = g.add(g.muli(this.batch, heads), this.head);
            let row = g.add(g.muli(bh, this.k.info.tokens as i64), pos0);
            let bytes = g.i32(i64::from(cfg.q_bytes()));
            ptx::mbarrier_arrive_expect_tx().emit(g.cx, &g.b, &[full.into(), bytes.into()]);
            let map = g.add(this.global_addr(tmaps), g.i64(2 * 128));
            for half in 0..cfg.d / 64 {
                let dst = this.saddr(g.addi(stage, i64::from(half * cfg.shape.bm * 128)));
                let col = g.i32(i64::from(half * 64));
                ptx::tma_load_2d().emit(
                    g.cx,
                    &g.b,
                    &[dst.into(), map.into(), col.into(), row.into(), full.into()],
                );
            }
        });
        let walk = self.key_walk();
        g.if_then(g.eqi(tid, 1), &mut |g| {
            let at = this.walk_slot(b);
            let c = &walk.cur;
            for (k, v) in [c.r, c.kt, c.kend, c.class].into_iter().enumerate() {
                this.st_shared_i32(g.addi(at, 4 * k as i64), g.geti(v));
            }
            this.st_shared_i32(g.addi(at, 16), walk.end);
        });
        let others = ok(g.b.build_not(first, ""));
        g.if_then(others, &mut |g| {
            ptx::mbarrier_arrive().emit(g.cx, &g.b, &[full.into()]);
        });
        g.set(taken, g.addi(i, 1));
        walk
    }

    /// The producer's walk over a work item's chunks: chunk `n` waits for K stage `n % 2`
    /// to be released (from chunk 2 on), writes the keys' information into slot `n % 2`
    /// and arrives on "K full" (its first thread expecting K's copy, which it issues);
    /// then the first thread waits for V stage `n % 2` and copies V onto "V full".
    pub(super) fn produce_rings(&self, walk: &KeyWalk<'c>) {
        let g = self.g;
        let (end, cur) = (walk.end, walk.cur);
        let n_var = self.chunk_counter();
        let first = g.eqi(self.kv_tid, 0);
        g.while_loop(&mut |g| g.lt(g.geti(cur.r), end), &mut |g| {
            let n = g.geti(n_var);
            let s = g.uremi(n, 2);
            let before = g.sub(g.udivi(n, 2), g.i32(1));
            let reused = g.icmp(IntPredicate::UGE, n, g.i32(2));
            g.if_then(reused, &mut |_| self.ring_wait(Ring::KEmpty, s, before));
            self.fill_kinfo(&cur, s);
            let k_full = self.ring_bar(Ring::KFull, s);
            g.if_else(
                first,
                &mut |_| self.tma_copies(Operands::K, s, s, k_full),
                &mut |g| {
                    ptx::mbarrier_arrive().emit(g.cx, &g.b, &[k_full.into()]);
                },
            );
            g.if_then(first, &mut |g| {
                g.if_then(reused, &mut |_| self.ring_wait(Ring::VEmpty, s, before));
                self.tma_copies(Operands::V, s, s, self.ring_bar(Ring::VFull, s));
            });
            self.advance(&cur, end);
            g.set(n_var, g.addi(n, 1));
        });
    }

    /// The computing warpgroups: every chunk of the block's work items in one loop.
    /// Chunk `n` waits for K(n) and V(n-1), issues `Q K^T(n)` with `P(n-1) V(n-1)` and
    /// releases both stages once `P V` completed (the mask read the keys' information
    /// before); the block's first chunk issues `Q K^T` alone and its last `P V` runs
    /// alone after the loop. When an item's keys run out, its row sums are kept, its Q
    /// buffer released, and the next item with keys opened (items without keys store
    /// zeros on the way); its rows are stored when the `P V` of its last chunk, issued
    /// with the next item's first `Q K^T`, completes.
    pub(super) fn consume_items(
        &mut self,
        region: crate::ir::RegionId,
        f: &mut Frags<'c>,
    ) -> Result<(), String> {
        let g = self.g;
        let body: Vec<NodeIndex> = self.k.region_nodes(region);
        let n_var = self.chunk_counter();
        let (c_cur, c_end, c_live, c_closing, c_closed) = {
            let c = self.carry();
            (c.cur, c.end, c.live, c.closing, c.closed)
        };
        let acc = f.acc.clone();
        let mut err = None;
        self.open_next(f);
        let live = |g: &Gen<'c>| g.icmp(IntPredicate::NE, g.geti(c_live), g.i32(0));
        let started = live(g);
        let t = &mut *self;
        g.if_then(started, &mut |g| {
            // The block's first chunk: `Q K^T` alone.
            t.enter_open_item();
            let n0 = g.geti(n_var);
            let k0 = g.uremi(n0, 2);
            t.ring_wait(Ring::KFull, k0, g.udivi(n0, 2));
            let r = t.chunk(&body, &c_cur, k0, Step::First(k0), f, &mut |t| {
                t.ring_arrive(Ring::KEmpty, k0)
            });
            t.chunk_done(r, &mut err, f, n0);
            g.while_loop(&mut |g| live(g), &mut |g| {
                let finished = g.icmp(IntPredicate::SGE, g.geti(c_cur.r), g.geti(c_end));
                g.if_then(finished, &mut |_| t.close_item(f));
                g.if_then(live(g), &mut |g| {
                    t.enter_open_item();
                    let n = g.geti(n_var);
                    let k = g.uremi(n, 2);
                    let prev = g.addi(n, -1);
                    let v = g.uremi(prev, 2);
                    t.ring_wait(Ring::KFull, k, g.udivi(n, 2));
                    t.ring_wait(Ring::VFull, v, g.udivi(prev, 2));
                    t.carry().p.restore(g, f);
                    let step = Step::Steady {
                        k,
                        v_prev: t.v_buf(v),
                        word: t.pv_word(prev),
                    };
                    let r = t.chunk(&body, &c_cur, k, step, f, &mut |t| {
                        t.ring_arrive(Ring::KEmpty, k);
                        t.ring_arrive(Ring::VEmpty, v);
                        let closing = g.icmp(IntPredicate::NE, g.geti(c_closing), g.i32(0));
                        g.if_then(closing, &mut |g| t.store_closed(&acc, g.geti(c_closed)));
                    });
                    t.chunk_done(r, &mut err, f, n);
                });
            });
            // The last item's last P V alone, then its rows.
            t.thread_fields_here();
            let last = g.addi(g.geti(n_var), -1);
            let v = g.uremi(last, 2);
            t.ring_wait(Ring::VFull, v, g.udivi(last, 2));
            t.carry().p.restore(g, f);
            t.pv_wgmma(t.v_buf(v), t.pv_word(last), f);
            t.ring_arrive(Ring::VEmpty, v);
            t.store_closed(&acc, g.geti(c_closed));
        });
        err.map_or(Ok(()), Err)
    }

    /// After chunk `n` (`r`, its lowering's result, kept in `err` when it failed): its P
    /// words kept for its `P V`, the cursor and the count moved on.
    fn chunk_done(
        &self,
        r: Result<(), String>,
        err: &mut Option<String>,
        f: &Frags<'c>,
        n: IntValue<'c>,
    ) {
        let g = self.g;
        let c = self.carry();
        if let Err(e) = r {
            *err = Some(e);
        }
        c.p.keep(g, f);
        self.advance(&c.cur, g.geti(c.end));
        g.set(self.chunk_counter(), g.addi(n, 1));
    }

    /// The predicate word of chunk `n`'s `P V`: fresh when it was its item's first.
    fn pv_word(&self, n: IntValue<'c>) -> IntValue<'c> {
        let g = self.g;
        let first = g.icmp(IntPredicate::EQ, n, g.geti(self.carry().first));
        g.seli(first, g.i32(ptx::WGMMA_FRESH), g.i32(ptx::WGMMA_ACCUMULATE))
    }

    /// Takes work items from `item` on until one has keys (it becomes the open item, its
    /// cursor at its first chunk, its rows noted in carried slot `opened % 2`) or none is
    /// left (`live` 0). Each taken item's Q buffer is waited for; an item without keys
    /// stores zeros and releases its buffer at once.
    fn open_next(&mut self, f: &mut Frags<'c>) {
        let g = self.g;
        let (item, items, stride, live, taken, open_item, opened, first, cur, end) = {
            let c = self.carry();
            (
                c.item,
                c.items,
                c.stride,
                c.live,
                c.taken,
                c.open_item,
                c.opened,
                c.first,
                c.cur,
                c.end,
            )
        };
        let chunks = self.chunk_counter();
        g.set(live, g.i32(0));
        let t = &mut *self;
        let searching = |g: &Gen<'c>| {
            let idle = g.eqi(g.geti(live), 0);
            g.and(idle, g.lt(g.geti(item), items))
        };
        g.while_loop(&mut |g| searching(g), &mut |g| {
            let it = g.geti(item);
            t.thread_fields_here();
            t.begin_item_at(it);
            let i = g.geti(taken);
            let b = g.uremi(i, 2);
            t.ring_wait(Ring::QFull, b, g.udivi(i, 2));
            g.set(taken, g.addi(i, 1));
            let (_, info) = t.q_buffer(b);
            t.q_rows_at(info);
            t.restart_rows(f);
            let walk = t.walk_at(b);
            g.if_then(walk.has, &mut |g| {
                t.copy_cursor(&walk.cur, &cur);
                g.set(end, walk.end);
                g.set(open_item, it);
                g.set(live, g.i32(1));
                // The next chunk computed is its first.
                g.set(first, g.geti(chunks));
                // Slot `opened % 2` was last read by the store of the item opened two
                // before, when this one's predecessor's first chunk completed.
                let k = g.geti(opened);
                let at = t.carried_at(g.uremi(k, 2));
                for (r, (exists, pos)) in t.my_rows().into_iter().enumerate() {
                    let kept = g.seli(exists, pos, g.i32(-1));
                    t.st_shared_i32(g.addi(at, 4 * r as i64), kept);
                }
                t.st_shared_i32(g.addi(at, 8), t.bh());
                g.set(opened, g.addi(k, 1));
            });
            let empty = ok(g.b.build_not(walk.has, ""));
            g.if_then(empty, &mut |g| {
                let l = [g.f32(0.0); 2];
                t.store_rows(None, l, t.my_rows(), t.bh());
                t.store_lse(None, l, t.my_rows(), t.bh());
                t.ring_arrive(Ring::QEmpty, b);
            });
            g.set(item, g.add(it, stride));
        });
    }

    /// The open item's fields, made again each chunk from its index (kept from before
    /// the loop they would hold registers through it): the thread's, the item's, its Q
    /// buffer (read by descriptor) and its rows' information.
    fn enter_open_item(&mut self) {
        let g = self.g;
        let (open_item, taken) = {
            let c = self.carry();
            (c.open_item, c.taken)
        };
        self.thread_fields_here();
        self.begin_item_at(g.geti(open_item));
        let b = g.uremi(g.addi(g.geti(taken), -1), 2);
        let (stage, info) = self.q_buffer(b);
        self.q_smem = Some(stage);
        self.q_rows_at(info);
    }

    /// The open item's keys ran out (every `Q K^T` of it completed): keep its row sums,
    /// mark its rows for the store after its last `P V`, release its Q buffer, and open
    /// the next item.
    fn close_item(&mut self, f: &mut Frags<'c>) {
        let g = self.g;
        let (l, m, closing, closed, opened, taken) = {
            let c = self.carry();
            (c.l, c.m, c.closing, c.closed, c.opened, c.taken)
        };
        for r in 0..2 {
            g.set(l[r], g.getf(f.l[r]));
            if let Some(m) = m {
                g.set(m[r], g.getf(f.m[r]));
            }
        }
        g.set(closing, g.i32(1));
        g.set(closed, g.uremi(g.addi(g.geti(opened), -1), 2));
        self.ring_arrive(Ring::QEmpty, g.uremi(g.addi(g.geti(taken), -1), 2));
        self.open_next(f);
    }

    /// The closed item's rows (carried slot `slot`) normalised by the kept row sums and
    /// stored from the accumulators `acc` (the next item's first `P V` overwrites them).
    fn store_closed(&self, acc: &[[Var<'c>; 4]], slot: IntValue<'c>) {
        let g = self.g;
        let c = self.carry();
        let at = self.carried_at(slot);
        let rows = [0, 4].map(|o| {
            let pos = self.ld_shared_i32(g.addi(at, o));
            (g.icmp(IntPredicate::SGE, pos, g.i32(0)), pos)
        });
        let l = c.l.map(|v| g.getf(v));
        let bh = self.ld_shared_i32(g.addi(at, 8));
        let sums = self.store_rows(Some(acc), l, rows, bh);
        self.store_lse(c.m, sums, rows, bh);
        g.set(c.closing, g.i32(0));
    }
}
