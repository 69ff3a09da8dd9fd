//! The walk over a query tile's keys: cursors over the schedule's runs, each chunk's key
//! information, and K and V brought into shared memory (cp.async, or tensor copies on
//! mbarriers).

use super::*;

impl<'a, 'c> Attention<'a, 'c> {
    /// The walk over this query tile's runs of key tiles: the end of its runs in the run
    /// table, the current chunk's cursor (at the first run, when there is one) and one for
    /// the next chunk.
    pub(super) fn key_walk(&self) -> KeyWalk<'c> {
        let g = self.g;
        let total_tiles = i64::from(self.geo.total_tiles);
        let mut row_at = g.add(g.muli(self.variant, total_tiles + 1), self.qt);
        if self.cfg.shape.launch_order() {
            // The row offsets follow the launch order's `total_tiles` entries.
            row_at = g.addi(row_at, total_tiles);
        }
        let start = g.ld_i32(self.params.rows, row_at);
        let end = g.ld_i32(self.params.rows, g.addi(row_at, 1));
        let cur = self.new_cursor();
        let next = self.new_cursor();
        g.set(cur.r, start);
        let has = g.lt(start, end);
        g.if_then(has, &mut |_| self.cursor_load_run(&cur, start));
        KeyWalk {
            end,
            cur,
            next,
            has,
        }
    }

    pub(super) fn cursor_load_run(&self, c: &Cursor<'c>, r: IntValue<'c>) {
        let g = self.g;
        let base = g.muli(r, 3);
        let start = g.ld_i32(self.params.runs, base);
        let len = g.ld_i32(self.params.runs, g.addi(base, 1));
        let class = g.ld_i32(self.params.runs, g.addi(base, 2));
        g.set(c.kt, start);
        g.set(c.kend, g.add(start, len));
        g.set(c.class, class);
        g.set(c.chunk, g.i32(0));
    }

    /// Moves a cursor to the next chunk (into the next tile, the next run).
    pub(super) fn advance(&self, c: &Cursor<'c>, end: IntValue<'c>) {
        let g = self.g;
        let ch = g.addi(g.geti(c.chunk), 1);
        g.set(c.chunk, ch);
        let tile_done = g.eqi(ch, i64::from(self.cfg.chunks));
        let this = self;
        g.if_then(tile_done, &mut |g| {
            g.set(c.chunk, g.i32(0));
            let kt = g.addi(g.geti(c.kt), 1);
            g.set(c.kt, kt);
            let run_done = g.icmp(IntPredicate::EQ, kt, g.geti(c.kend));
            g.if_then(run_done, &mut |g| {
                let r = g.addi(g.geti(c.r), 1);
                g.set(c.r, r);
                let more = g.lt(r, end);
                g.if_then(more, &mut |_| this.cursor_load_run(c, r));
            });
        });
    }

    pub(super) fn new_cursor(&self) -> Cursor<'c> {
        let g = self.g;
        let z = || g.var(g.i32t.into(), g.i32(0).into());
        Cursor {
            r: z(),
            kt: z(),
            kend: z(),
            chunk: z(),
            class: z(),
        }
    }

    pub(super) fn copy_cursor(&self, from: &Cursor<'c>, to: &Cursor<'c>) {
        let g = self.g;
        for (a, b) in [
            (from.r, to.r),
            (from.kt, to.kt),
            (from.kend, to.kend),
            (from.chunk, to.chunk),
            (from.class, to.class),
        ] {
            g.set(b, g.geti(a));
        }
    }

    /// Row information of a chunk's keys into `kinfo[slot]` (one thread per key).
    pub(super) fn fill_kinfo(&self, c: &Cursor<'c>, slot: IntValue<'c>) {
        let g = self.g;
        let cfg = self.cfg;
        let tid = self.kv_tid;
        let in_chunk = g.lt(tid, g.i32(i64::from(cfg.shape.bn)));
        let this = self;
        g.if_then(in_chunk, &mut |g| {
            let kt = g.geti(c.kt);
            let r = g.add(g.muli(g.geti(c.chunk), i64::from(cfg.shape.bn)), tid);
            let info = tokens::row(g, this.geo, kt, r);
            let off = this.kinfo_off(slot, tid);
            this.st_shared_i32(off, info.pos);
            for a in 0..3 {
                this.st_shared_i32(g.addi(off, 4 + 4 * a as i64), info.coords[a]);
            }
        });
    }

    /// Waits until mbarrier `buf` has completed its phase of `round` (counted from 0: the
    /// `round`-th use of the buffer it guards; phases alternate in parity).
    pub(super) fn wait_tma(&self, buf: IntValue<'c>, round: IntValue<'c>) {
        let g = self.g;
        let bar = self.mbar_addr(buf);
        let parity = g.and(round, g.i32(1));
        let ready = g.var(g.i32t.into(), g.i32(0).into());
        g.while_loop(&mut |g| g.eqi(g.geti(ready), 0), &mut |g| {
            let r = ptx::mbarrier_try_wait().emit(g.cx, &g.b, &[bar.into(), parity.into()]);
            g.set(ready, r[0]);
        });
    }

    /// Tensor copies of K, V or both of the chunk whose key information is in `slot` into
    /// buffer `buf`, completing on the barrier at `bar` (one thread, `kv_tid` 0, issues
    /// them): the chunk's rows are consecutive in the tensor of `[batch * kv_heads *
    /// tokens, dim]` rows, from the position of its first row; 64-element boxes of `bn`
    /// rows land 128-byte-swizzled in the layout of `kv_off`. Rows past the tile are the
    /// next tokens' (masked) or past the tensor's end (zero-filled); either way finite.
    pub(super) fn tma_copies(
        &self,
        which: Operands,
        buf: IntValue<'c>,
        slot: IntValue<'c>,
        bar: IntValue<'c>,
    ) {
        let g = self.g;
        let cfg = self.cfg;
        let Some(tmaps) = self.params.tmaps else {
            return;
        };
        let mut parts = vec![];
        if which != Operands::V {
            parts.push((0u32, cfg.d, self.k_buf(buf)));
        }
        if which != Operands::K {
            parts.push((1, cfg.dv, self.v_buf(buf)));
        }
        let first = g.eqi(self.kv_tid, 0);
        let this = self;
        g.if_then(first, &mut |g| {
            let pos0 = this.ld_shared_i32(this.kinfo_off(slot, g.i32(0)));
            let kvheads = i64::from(this.k.info.kv_heads);
            let bh = g.add(g.muli(this.batch, kvheads), this.kvh);
            let row = g.add(g.muli(bh, this.k.info.tokens as i64), pos0);
            let bytes: u32 = parts.iter().map(|(_, dim, _)| cfg.shape.bn * dim * 2).sum();
            ptx::mbarrier_arrive_expect_tx().emit(
                g.cx,
                &g.b,
                &[bar.into(), g.i32(i64::from(bytes)).into()],
            );
            let maps = this.global_addr(tmaps);
            for (map, dim, base) in &parts {
                let map = g.add(maps, g.i64(i64::from(map * 128)));
                for half in 0..dim / 64 {
                    let dst = this.saddr(g.addi(*base, i64::from(half * cfg.shape.bn * 128)));
                    let col = g.i32(i64::from(half * 64));
                    ptx::tma_load_2d().emit(
                        g.cx,
                        &g.b,
                        &[dst.into(), map.into(), col.into(), row.into(), bar.into()],
                    );
                }
            }
        });
    }

    /// A chunk's K and V rows into buffer `buf`, their positions from key-information slot
    /// `slot`: by cp.async (rows past the tile zero-filled), or by tensor copies.
    pub(super) fn issue_kv(&self, c: &Cursor<'c>, buf: IntValue<'c>, slot: IntValue<'c>) {
        let g = self.g;
        let cfg = self.cfg;
        if cfg.shape.tma {
            return self.tma_copies(Operands::KV, buf, slot, self.mbar_addr(buf));
        }
        let kt = g.geti(c.kt);
        let tile = tokens::tile(g, self.geo, kt);
        let chunk0 = g.muli(g.geti(c.chunk), i64::from(cfg.shape.bn));
        let kvheads = i64::from(self.k.info.kv_heads);
        let tokens_n = self.k.info.tokens as i64;
        let bh = g.add(g.muli(g.zext64(self.batch), kvheads), g.zext64(self.kvh));
        for (ptr, dim, is_v) in [(self.params.k, cfg.d, false), (self.params.v, cfg.dv, true)] {
            let base = self.global_addr(ptr);
            let bh_off = g.muli(bh, tokens_n * i64::from(dim) * 2);
            let per_row = dim / 8;
            let total = cfg.shape.bn * per_row;
            let buf_off = if is_v {
                self.v_buf(buf)
            } else {
                self.k_buf(buf)
            };
            let threads = cfg.compute_threads();
            for it in 0..total.div_ceil(threads) {
                let idx = g.addi(self.tid, i64::from(it * threads));
                let inside = g.lt(idx, g.i32(i64::from(total)));
                let this = self;
                g.if_then(inside, &mut |g| {
                    let row = g.udivi(idx, i64::from(per_row));
                    let ch = g.uremi(idx, i64::from(per_row));
                    let exists = g.lt(g.add(chunk0, row), tile.len);
                    let pos = this.ld_shared_i32(this.kinfo_off(slot, row));
                    let elem = g.add(
                        g.muli(g.zext64(pos), i64::from(dim) * 2),
                        g.muli(g.zext64(ch), 16),
                    );
                    let src = g.add(g.add(base, bh_off), elem);
                    let src = g.seli(exists, src, base);
                    let size = g.seli(exists, g.i32(16), g.i32(0));
                    let dst = this.saddr(g.add(buf_off, this.kv_off(row, ch, dim)));
                    ptx::cp_async_16().emit(g.cx, &g.b, &[dst.into(), src.into(), size.into()]);
                });
            }
        }
    }
}
