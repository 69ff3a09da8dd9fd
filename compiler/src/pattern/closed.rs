//! The closed form of a `tiles:` rule: a union of boxes whose per-axis bounds are
//! expressions of the query tile's coordinates, e.g. GRAT-B r=1 is one box
//! `kh in [qh - 1, qh + 1], kw in [qw - 1, qw + 1]`. Kernels loop over these bounds instead
//! of reading a table. Derived when every comparison is linear in one key coordinate with
//! coefficient +-1 (boxes, clamped windows, lines, planes, strips, causal, unions);
//! otherwise there is none and the schedule's table is used.

use crate::diagnostic::Span;
use crate::sema::eval::{self, EvalError};
use crate::sema::expr::{BinOp, Builtin, Expr, Kind, UnOp, Var};
use crate::sema::instantiate::fold;

use super::formula::Point;
use super::geometry::MAX_RANK;

/// Most boxes a closed form may have (after distributing `&&` over `||`).
const MAX_BOXES: usize = 64;

#[derive(Clone, Debug, PartialEq)]
pub struct ClosedForm {
    pub boxes: Vec<SymBox>,
}

/// `guards && for each axis: max(lo) <= k <= min(hi)`; bounds read query coordinates only.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct SymBox {
    pub guards: Vec<Expr>,
    pub lo: [Vec<Expr>; MAX_RANK],
    pub hi: [Vec<Expr>; MAX_RANK],
}

/// Inclusive ranges of key tile coordinates.
pub type TileBox = ([u32; MAX_RANK], [u32; MAX_RANK]);

#[derive(Clone, Debug)]
enum Nnf {
    Const(bool),
    Lit(Lin, BinOp),
    And(Vec<Nnf>),
    Or(Vec<Nnf>),
}

/// `sum coef[a] * k[a] + rest`, compared with 0.
#[derive(Clone, Debug)]
struct Lin {
    coef: [i64; MAX_RANK],
    rest: Expr,
}

pub fn derive(tiles: &Expr, rank: usize) -> Option<ClosedForm> {
    let nnf = to_nnf(tiles, false, rank)?;
    let dnf = to_dnf(&nnf)?;
    let mut boxes = vec![];
    for conj in dnf {
        let mut b = SymBox::default();
        let mut dead = false;
        for (lin, op) in conj {
            let axes: Vec<usize> = (0..MAX_RANK).filter(|a| lin.coef[*a] != 0).collect();
            match axes.as_slice() {
                [] => {
                    // Only query coordinates: a guard `rest op 0`.
                    let g = Expr::binary(op, canon(&lin.rest), zero(), lin.rest.span);
                    match fold(&g).ok()?.kind {
                        Kind::Bool(true) => {}
                        Kind::Bool(false) => dead = true,
                        _ => b.guards.push(fold(&g).ok()?),
                    }
                }
                [a] => {
                    let c = lin.coef[*a];
                    if c.abs() != 1 {
                        return None;
                    }
                    // c*k + rest op 0  ->  k op' bound
                    let (op, bound) = if c == 1 {
                        (op, neg(lin.rest.clone()))
                    } else {
                        (flip(op), lin.rest.clone())
                    };
                    let bound = canon(&fold(&bound).ok()?);
                    match op {
                        BinOp::Le => b.hi[*a].push(bound),
                        BinOp::Lt => b.hi[*a].push(canon(&add(bound, -1))),
                        BinOp::Ge => b.lo[*a].push(bound),
                        BinOp::Gt => b.lo[*a].push(canon(&add(bound, 1))),
                        BinOp::Eq => {
                            b.lo[*a].push(bound.clone());
                            b.hi[*a].push(bound);
                        }
                        _ => return None,
                    }
                }
                _ => return None,
            }
        }
        if !dead {
            boxes.push(b);
        }
    }
    Some(ClosedForm { boxes })
}

/// Rewrites a sum of terms as `c1*t1 + c2*t2 + ... + const`, merging like terms, so that
/// bounds print as `qh + 1` rather than `-(-qh - 1)`.
fn canon(e: &Expr) -> Expr {
    fn walk(e: &Expr, m: i64, terms: &mut Vec<(String, Expr, i64)>, konst: &mut i64) -> Option<()> {
        match &e.kind {
            Kind::Int(c) => *konst = konst.checked_add(c.checked_mul(m)?)?,
            Kind::Unary(UnOp::Neg, a) => walk(a, m.checked_neg()?, terms, konst)?,
            Kind::Binary(BinOp::Add, a, b) => {
                walk(a, m, terms, konst)?;
                walk(b, m, terms, konst)?;
            }
            Kind::Binary(BinOp::Sub, a, b) => {
                walk(a, m, terms, konst)?;
                walk(b, m.checked_neg()?, terms, konst)?;
            }
            Kind::Binary(BinOp::Mul, a, b)
                if matches!(a.kind, Kind::Int(_)) || matches!(b.kind, Kind::Int(_)) =>
            {
                let (c, x) = if let Kind::Int(c) = a.kind {
                    (c, b)
                } else if let Kind::Int(c) = b.kind {
                    (c, a)
                } else {
                    return None;
                };
                walk(x, m.checked_mul(c)?, terms, konst)?;
            }
            _ => {
                let key = format!("{:?}", strip_spans(e));
                match terms.iter_mut().find(|t| t.0 == key) {
                    Some(t) => t.2 = t.2.checked_add(m)?,
                    None => terms.push((key, e.clone(), m)),
                }
            }
        }
        Some(())
    }
    if e.ty != crate::sema::expr::Ty::Int {
        return e.clone();
    }
    let mut terms = vec![];
    let mut konst = 0i64;
    if walk(e, 1, &mut terms, &mut konst).is_none() {
        return e.clone();
    }
    let span = e.span;
    let mut out: Option<Expr> = None;
    for (_, t, c) in terms.into_iter().filter(|t| t.2 != 0) {
        let term = if c.abs() == 1 {
            t
        } else {
            Expr::binary(BinOp::Mul, Expr::int(c.abs(), span), t, span)
        };
        out = Some(match out {
            None if c < 0 => neg(term),
            None => term,
            Some(acc) => Expr::binary(if c < 0 { BinOp::Sub } else { BinOp::Add }, acc, term, span),
        });
    }
    match out {
        None => Expr::int(konst, span),
        Some(acc) if konst > 0 => Expr::binary(BinOp::Add, acc, Expr::int(konst, span), span),
        Some(acc) if konst < 0 && konst != i64::MIN => {
            Expr::binary(BinOp::Sub, acc, Expr::int(-konst, span), span)
        }
        Some(acc) if konst < 0 => Expr::binary(BinOp::Add, acc, Expr::int(konst, span), span),
        Some(acc) => acc,
    }
}

fn strip_spans(e: &Expr) -> Expr {
    let mut c = crate::sema::instantiate::map_children::<()>(e, &mut |x| Ok(strip_spans(x)))
        .unwrap_or_else(|_| e.clone());
    c.span = Span::DUMMY;
    c
}

fn zero() -> Expr {
    Expr::int(0, Span::DUMMY)
}

fn neg(e: Expr) -> Expr {
    let span = e.span;
    Expr {
        ty: e.ty,
        kind: Kind::Unary(UnOp::Neg, Box::new(e)),
        span,
    }
}

fn add(e: Expr, v: i64) -> Expr {
    let span = e.span;
    Expr::binary(BinOp::Add, e, Expr::int(v, span), span)
}

/// The comparison that is true exactly when `op` is false.
fn negate(op: BinOp) -> BinOp {
    match op {
        BinOp::Lt => BinOp::Ge,
        BinOp::Le => BinOp::Gt,
        BinOp::Gt => BinOp::Le,
        BinOp::Ge => BinOp::Lt,
        BinOp::Eq => BinOp::Ne,
        BinOp::Ne => BinOp::Eq,
        o => o,
    }
}

/// `a op b` == `b flip(op) a`
fn flip(op: BinOp) -> BinOp {
    match op {
        BinOp::Lt => BinOp::Gt,
        BinOp::Le => BinOp::Ge,
        BinOp::Gt => BinOp::Lt,
        BinOp::Ge => BinOp::Le,
        o => o,
    }
}

fn to_nnf(e: &Expr, negated: bool, rank: usize) -> Option<Nnf> {
    match &e.kind {
        Kind::Bool(b) => Some(Nnf::Const(*b != negated)),
        Kind::Unary(UnOp::Not, a) => to_nnf(a, !negated, rank),
        Kind::Binary(op @ (BinOp::And | BinOp::Or), a, b) => {
            let (x, y) = (to_nnf(a, negated, rank)?, to_nnf(b, negated, rank)?);
            let and = (*op == BinOp::And) != negated;
            Some(if and {
                Nnf::And(vec![x, y])
            } else {
                Nnf::Or(vec![x, y])
            })
        }
        Kind::Binary(op, a, b) if op.is_comparison() && a.ty != crate::sema::expr::Ty::Bool => {
            let op = if negated { negate(*op) } else { *op };
            comparison(a, op, b, rank)
        }
        _ => None,
    }
}

/// `a op b` as literals over linear forms; `abs` and `!=` become two comparisons.
fn comparison(a: &Expr, op: BinOp, b: &Expr, rank: usize) -> Option<Nnf> {
    // Put a key-dependent abs() on the left.
    if let Kind::Call(Builtin::Abs, args) = &b.kind {
        if has_key(&args[0]) && !has_key(a) {
            return comparison(b, flip(op), a, rank);
        }
    }
    if let Kind::Call(Builtin::Abs, args) = &a.kind {
        if has_key(&args[0]) {
            if has_key(b) {
                return None;
            }
            let x = &args[0];
            let minus_b = neg(b.clone());
            let lit = |l: &Expr, op, r: &Expr| comparison(l, op, r, rank);
            return Some(match op {
                BinOp::Le | BinOp::Lt => {
                    Nnf::And(vec![lit(x, op, b)?, lit(x, flip(op), &minus_b)?])
                }
                BinOp::Ge | BinOp::Gt => Nnf::Or(vec![lit(x, op, b)?, lit(x, flip(op), &minus_b)?]),
                _ => return None,
            });
        }
    }
    if op == BinOp::Ne {
        return Some(Nnf::Or(vec![
            comparison(a, BinOp::Lt, b, rank)?,
            comparison(a, BinOp::Gt, b, rank)?,
        ]));
    }
    let la = lin(a, rank)?;
    let lb = lin(b, rank)?;
    let mut coef = [0i64; MAX_RANK];
    for i in 0..MAX_RANK {
        coef[i] = la.coef[i].checked_sub(lb.coef[i])?;
    }
    let span = a.span.to(b.span);
    let rest = Expr::binary(BinOp::Sub, la.rest, lb.rest, span);
    Some(Nnf::Lit(Lin { coef, rest }, op))
}

fn has_key(e: &Expr) -> bool {
    let mut k = false;
    e.walk(&mut |x| k |= matches!(x.kind, Kind::Var(Var::K(_) | Var::D(_) | Var::KI)));
    k
}

fn lin(e: &Expr, rank: usize) -> Option<Lin> {
    let span = e.span;
    if !has_key(e) {
        return Some(Lin {
            coef: [0; MAX_RANK],
            rest: e.clone(),
        });
    }
    match &e.kind {
        Kind::Var(Var::K(a)) => {
            let mut coef = [0; MAX_RANK];
            coef[*a as usize % MAX_RANK] = 1;
            Some(Lin {
                coef,
                rest: Expr::int(0, span),
            })
        }
        Kind::Var(Var::D(a)) => {
            let mut coef = [0; MAX_RANK];
            coef[*a as usize % MAX_RANK] = 1;
            Some(Lin {
                coef,
                rest: neg(Expr::var(Var::Q(*a), span)),
            })
        }
        Kind::Var(Var::KI) if rank == 1 => Some(Lin {
            coef: [1, 0, 0],
            rest: Expr::int(0, span),
        }),
        Kind::Unary(UnOp::Neg, a) => {
            let l = lin(a, rank)?;
            Some(Lin {
                coef: l.coef.map(|c| -c),
                rest: neg(l.rest),
            })
        }
        Kind::Binary(op @ (BinOp::Add | BinOp::Sub), a, b) => {
            let (x, y) = (lin(a, rank)?, lin(b, rank)?);
            let mut coef = [0; MAX_RANK];
            for i in 0..MAX_RANK {
                coef[i] = if *op == BinOp::Add {
                    x.coef[i].checked_add(y.coef[i])?
                } else {
                    x.coef[i].checked_sub(y.coef[i])?
                };
            }
            Some(Lin {
                coef,
                rest: Expr::binary(*op, x.rest, y.rest, span),
            })
        }
        Kind::Binary(BinOp::Mul, a, b) => {
            let (c, other) = match (&a.kind, &b.kind) {
                (Kind::Int(c), _) => (*c, b),
                (_, Kind::Int(c)) => (*c, a),
                _ => return None,
            };
            let l = lin(other, rank)?;
            let mut coef = [0; MAX_RANK];
            for i in 0..MAX_RANK {
                coef[i] = l.coef[i].checked_mul(c)?;
            }
            Some(Lin {
                coef,
                rest: Expr::binary(BinOp::Mul, Expr::int(c, span), l.rest, span),
            })
        }
        _ => None,
    }
}

fn to_dnf(n: &Nnf) -> Option<Vec<Vec<(Lin, BinOp)>>> {
    Some(match n {
        Nnf::Const(true) => vec![vec![]],
        Nnf::Const(false) => vec![],
        Nnf::Lit(l, op) => vec![vec![(l.clone(), *op)]],
        Nnf::Or(v) => {
            let mut out = vec![];
            for x in v {
                out.extend(to_dnf(x)?);
                if out.len() > MAX_BOXES {
                    return None;
                }
            }
            out
        }
        Nnf::And(v) => {
            let mut acc: Vec<Vec<(Lin, BinOp)>> = vec![vec![]];
            for x in v {
                let d = to_dnf(x)?;
                let mut next = vec![];
                for a in &acc {
                    for b in &d {
                        let mut c = a.clone();
                        c.extend(b.iter().cloned());
                        next.push(c);
                    }
                }
                if next.len() > MAX_BOXES {
                    return None;
                }
                acc = next;
            }
            acc
        }
    })
}

impl ClosedForm {
    /// The boxes for the query tile at grid coordinates `q` (possibly overlapping, clipped
    /// to the grid, empty ones dropped).
    pub fn eval_at(
        &self,
        q: &[u32; MAX_RANK],
        grid: &[u32; MAX_RANK],
        rank: usize,
    ) -> Result<Vec<TileBox>, EvalError> {
        let mut p = Point::default();
        for a in 0..rank {
            p.q[a] = i64::from(q[a]);
            p.n[a] = i64::from(grid[a]);
        }
        let p = p.with_linear(rank);
        let mut out = vec![];
        'boxes: for b in &self.boxes {
            for g in &b.guards {
                if !eval::eval(g, &p)?.as_bool() {
                    continue 'boxes;
                }
            }
            let mut lo = [0u32; MAX_RANK];
            let mut hi = [0u32; MAX_RANK];
            for a in 0..rank {
                let mut l = 0i64;
                let mut h = i64::from(grid[a]) - 1;
                for e in &b.lo[a] {
                    l = l.max(eval::eval(e, &p)?.as_int().unwrap_or(i64::MAX));
                }
                for e in &b.hi[a] {
                    h = h.min(eval::eval(e, &p)?.as_int().unwrap_or(i64::MIN));
                }
                if l > h {
                    continue 'boxes;
                }
                lo[a] = l as u32;
                hi[a] = h as u32;
            }
            out.push((lo, hi));
        }
        Ok(out)
    }

    pub fn print(&self, axes: &[&str], grid: &[u32; MAX_RANK]) -> String {
        let mut s = String::new();
        for (i, b) in self.boxes.iter().enumerate() {
            let mut parts = vec![];
            if !b.guards.is_empty() {
                let g: Vec<String> = b
                    .guards
                    .iter()
                    .map(|g| crate::sema::expr::print_plain(g, axes))
                    .collect();
                parts.push(format!("if {}", g.join(" && ")));
            }
            for (a, name) in axes.iter().enumerate() {
                let mut lo: Vec<String> = b.lo[a]
                    .iter()
                    .map(|e| crate::sema::expr::print_plain(e, axes))
                    .collect();
                let mut hi: Vec<String> = b.hi[a]
                    .iter()
                    .map(|e| crate::sema::expr::print_plain(e, axes))
                    .collect();
                lo.insert(0, "0".into());
                hi.push(format!("{}", grid[a].saturating_sub(1)));
                let f = |name: &str, v: Vec<String>| {
                    if v.len() == 1 {
                        v[0].clone()
                    } else {
                        format!("{name}({})", v.join(", "))
                    }
                };
                parts.push(format!("k{name} in [{}, {}]", f("max", lo), f("min", hi)));
            }
            s.push_str(&format!("  box {i}: {}\n", parts.join(", ")));
        }
        s
    }
}
