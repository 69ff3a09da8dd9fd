//! The IR verifier: operand counts and types per op, values used only where they are
//! visible (same or enclosing region), loops well formed, no cycles. Runs after lowering
//! and after every pass.

use petgraph::algo::is_cyclic_directed;

use super::*;

pub fn verify(k: &Kernel) -> Result<(), Vec<String>> {
    let mut errs = vec![];
    if is_cyclic_directed(&k.graph) {
        errs.push("the graph has a cycle".to_string());
    }
    for n in k.graph.node_indices() {
        if let Err(e) = node(k, n) {
            errs.push(format!("%{} ({}): {e}", n.index(), k.node(n).op.name()));
        }
    }
    for (i, r) in k.regions.iter().enumerate().skip(1) {
        match r.owner {
            Some(o) if k.graph.contains_node(o) => {
                let yields = k
                    .region_nodes(RegionId(i as u32))
                    .into_iter()
                    .filter(|n| k.node(*n).op == Op::Yield)
                    .count();
                if yields != 1 {
                    errs.push(format!("region {i} has {yields} yields (needs exactly 1)"));
                }
            }
            _ => {
                if !k.region_nodes(RegionId(i as u32)).is_empty() {
                    errs.push(format!("region {i} has nodes but no owner"));
                }
            }
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}

fn tile(t: Option<Type>) -> Result<(Scope, Elem, u32, u32), String> {
    match t {
        Some(Type::Tile {
            scope,
            elem,
            rows,
            cols,
        }) => Ok((scope, elem, rows, cols)),
        other => Err(format!("expected a tile, found {other:?}")),
    }
}

fn expect(cond: bool, msg: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(msg())
    }
}

/// The loop whose body (or an enclosing body) holds region `r`.
fn enclosing_loop(k: &Kernel, r: RegionId) -> Option<NodeIndex> {
    let mut cur = Some(r);
    while let Some(x) = cur {
        let reg = k.regions.get(x.0 as usize)?;
        if let Some(o) = reg.owner {
            return Some(o);
        }
        cur = reg.parent;
    }
    None
}

fn node(k: &Kernel, n: NodeIndex) -> Result<(), String> {
    let nd = k.node(n);
    let ops = k.operands(n);
    let tys: Vec<Option<Type>> = ops.iter().map(|v| k.ty(*v)).collect();
    // Each operand exists and is visible from this region.
    for (i, v) in ops.iter().enumerate() {
        let src = k
            .graph
            .node_weight(v.node)
            .ok_or_else(|| format!("operand {i} refers to a removed node"))?;
        expect(tys[i].is_some(), || {
            format!("operand {i} reads result #{} that does not exist", v.result)
        })?;
        expect(k.region_within(nd.region, src.region), || {
            format!(
                "operand {i} (%{}) is defined in region {}, not visible from region {}",
                v.node.index(),
                src.region.0,
                nd.region.0
            )
        })?;
    }
    let arity = |n: usize| {
        expect(ops.len() == n, || {
            format!("expects {n} operands, has {}", ops.len())
        })
    };
    let results = |n: usize| {
        expect(nd.results.len() == n, || {
            format!("expects {n} results, has {}", nd.results.len())
        })
    };
    let index = |i: usize| {
        expect(tys[i] == Some(Type::Index), || {
            format!("operand {i} must be an index")
        })
    };
    match &nd.op {
        Op::Arg(_) => {
            arity(0)?;
            results(1)?;
            expect(matches!(nd.results[0], Type::Tensor { .. }), || {
                "an argument is a tensor".into()
            })
        }
        Op::ProgramId => {
            arity(0)?;
            results(3)
        }
        Op::KvHead => {
            arity(1)?;
            index(0)
        }
        Op::Load(t) => {
            arity(4)?;
            results(1)?;
            let Some(Type::Tensor { dim, .. }) = tys[0] else {
                return Err("operand 0 must be a tensor".into());
            };
            expect(k.node(ops[0].node).op == Op::Arg(*t), || {
                format!("loads of {} read the {} argument", t.name(), t.name())
            })?;
            (1..4).try_for_each(index)?;
            let (scope, _, rows, cols) = tile(Some(nd.results[0]))?;
            expect(scope != Scope::Global, || {
                "a loaded tile lives in shared memory or registers".into()
            })?;
            expect(cols == dim, || {
                format!("tile has {cols} columns, tensor has dim {dim}")
            })?;
            expect(rows == k.info.tile_q || rows == k.info.tile_k, || {
                format!("tile has {rows} rows, not a tile size")
            })
        }
        Op::Store => {
            arity(5)?;
            results(0)?;
            let Some(Type::Tensor { elem, dim, .. }) = tys[0] else {
                return Err("operand 0 must be a tensor".into());
            };
            (1..4).try_for_each(index)?;
            if let Some(Type::Rows { rows, .. }) = tys[4] {
                expect(elem == Elem::F32 && dim == 1, || {
                    "rows are stored into an f32 tensor of dim 1".into()
                })?;
                return expect(rows == k.info.tile_q, || {
                    format!("storing {rows} rows of a {}-row query tile", k.info.tile_q)
                });
            }
            let (scope, _, _, cols) = tile(tys[4])?;
            expect(scope == Scope::Register, || {
                "stores write register tiles".into()
            })?;
            expect(cols == dim, || {
                format!("storing {cols} columns into dim {dim}")
            })
        }
        Op::Const(_) => {
            arity(0)?;
            results(1)
        }
        Op::Dot { transpose_b } => {
            arity(2)?;
            results(1)?;
            let (sa, _, ar, ac) = tile(tys[0])?;
            let (sb, _, br, bc) = tile(tys[1])?;
            expect(sa == Scope::Register && sb != Scope::Global, || {
                "dot reads a register tile and a shared or register tile".into()
            })?;
            let (inner, cols) = if *transpose_b { (bc, br) } else { (br, bc) };
            expect(ac == inner, || {
                format!("inner dimensions differ: {ac} and {inner}")
            })?;
            let (_, e, r, c) = tile(Some(nd.results[0]))?;
            expect(e == Elem::F32 && r == ar && c == cols, || {
                format!("result must be f32[{ar}x{cols}]")
            })
        }
        Op::Scale(_) | Op::Convert(_) => {
            arity(1)?;
            results(1)?;
            let (_, _, r, c) = tile(tys[0])?;
            let (_, _, r2, c2) = tile(Some(nd.results[0]))?;
            expect(r == r2 && c == c2, || "shape must not change".into())
        }
        Op::ScoreMod(f) => {
            arity(5)?;
            (1..5).try_for_each(index)?;
            expect(
                matches!(k.elem_fns.get(f.0 as usize), Some(ElemFn::Score(_))),
                || "needs a score function".into(),
            )?;
            expect(tys[0] == Some(nd.results[0]), || {
                "result type must equal the scores' type".into()
            })
        }
        Op::Mask(fs) => {
            arity(5)?;
            (1..4).try_for_each(index)?;
            expect(tys[4] == Some(Type::Class), || {
                "operand 4 must be a tile class".into()
            })?;
            expect(!fs.is_empty(), || {
                "a mask needs at least one function".into()
            })?;
            for f in fs {
                expect(
                    matches!(k.elem_fns.get(f.0 as usize), Some(ElemFn::Mask { .. })),
                    || "needs mask functions".into(),
                )?;
            }
            expect(tys[0] == Some(nd.results[0]), || {
                "result type must equal the scores' type".into()
            })
        }
        Op::RowMax | Op::RowSum => {
            arity(1)?;
            let (_, _, r, _) = tile(tys[0])?;
            expect(
                nd.results
                    == vec![Type::Rows {
                        elem: Elem::F32,
                        rows: r,
                    }],
                || format!("result must be rows f32[{r}]"),
            )
        }
        Op::SoftmaxUpdate { .. } => {
            arity(3)?;
            results(3)?;
            let (_, _, r, _) = tile(tys[0])?;
            let rows = Some(Type::Rows {
                elem: Elem::F32,
                rows: r,
            });
            expect(tys[1] == rows && tys[2] == rows, || {
                "max operands must be rows of the tile".into()
            })?;
            expect(
                Some(nd.results[1]) == rows && Some(nd.results[2]) == rows,
                || "results 1 and 2 are rows".into(),
            )
        }
        Op::RescaleAdd => {
            arity(3)?;
            expect(
                tys[0] == tys[2] && tys[0] == nd.results.first().copied(),
                || "a, b and the result share a type".into(),
            )?;
            expect(matches!(tys[1], Some(Type::Rows { .. })), || {
                "alpha is a row vector".into()
            })
        }
        Op::Normalize => {
            arity(2)?;
            let (_, _, r, _) = tile(tys[0])?;
            expect(
                tys[1]
                    == Some(Type::Rows {
                        elem: Elem::F32,
                        rows: r,
                    }),
                || "l must be rows of the tile".into(),
            )
        }
        Op::LogSumExp { exp2 } => {
            arity(2)?;
            let Some(
                rows @ Type::Rows {
                    elem: Elem::F32, ..
                },
            ) = tys[0]
            else {
                return Err("m must be f32 rows".into());
            };
            expect(tys[1] == Some(rows) && nd.results == vec![rows], || {
                "l and the result are rows like m".into()
            })?;
            match k.yielded_by(ops[0]) {
                Some(Op::SoftmaxUpdate { exp2: base2 }) => expect(*base2 == *exp2, || {
                    "its units (exp or exp2) differ from those of the softmax update that gives m"
                        .into()
                }),
                _ => Ok(()),
            }
        }
        Op::KvLoop { region, .. } => {
            expect(!ops.is_empty(), || "a loop needs the query tile".into())?;
            index(0)?;
            expect(ops.len() == nd.results.len() + 1, || {
                "one init per carried result".into()
            })?;
            for (i, t) in nd.results.iter().enumerate() {
                expect(tys[i + 1] == Some(*t), || {
                    format!("init {i} has the wrong type")
                })?;
            }
            let owner = k.regions.get(region.0 as usize).and_then(|r| r.owner);
            expect(owner == Some(n), || {
                "the loop does not own its region".into()
            })?;
            for b in k.region_nodes(*region) {
                match k.node(b).op {
                    Op::Yield => {
                        let yt: Vec<Option<Type>> =
                            k.operands(b).iter().map(|v| k.ty(*v)).collect();
                        let want: Vec<Option<Type>> = nd.results.iter().map(|t| Some(*t)).collect();
                        expect(yt == want, || {
                            "yield types differ from the loop's results".into()
                        })?;
                    }
                    Op::Carry(i) => {
                        let t = nd.results.get(i as usize).copied();
                        expect(
                            t.is_some() && k.node(b).results.first().copied() == t,
                            || format!("carry {i} has the wrong type"),
                        )?;
                    }
                    _ => {}
                }
            }
            Ok(())
        }
        Op::KvTile | Op::Carry(_) | Op::Yield => {
            expect(enclosing_loop(k, nd.region).is_some(), || {
                "must be inside a kv_loop body".into()
            })?;
            if nd.op == Op::KvTile {
                expect(nd.results == vec![Type::Index, Type::Class], || {
                    "kv_tile yields an index and a class".into()
                })?;
            }
            Ok(())
        }
    }
}
