//! Interval evaluation of a mask atom over a block of the pair space (a range of query
//! coordinates times a range of key coordinates). `Some(b)` means the atom is `b` at every
//! point of the block; `None` means it may differ (or the evaluator cannot tell), and the
//! caller enumerates. Sound, not always tight.

use crate::sema::eval::{doc_index, floor_div};
use crate::sema::expr::{BinOp, Builtin, Expr, Kind, UnOp, Var};

use super::geometry::MAX_RANK;

#[derive(Clone, Copy, Debug, Default)]
pub struct Block {
    pub q: [(i64, i64); MAX_RANK],
    pub k: [(i64, i64); MAX_RANK],
    pub n: [i64; MAX_RANK],
    /// Linear indices, when known (one-axis canvases); `None` = unknown.
    pub qi: Option<(i64, i64)>,
    pub ki: Option<(i64, i64)>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum I {
    Int(i64, i64),
    /// (can be false, can be true)
    Bool(bool, bool),
    Unknown,
}

pub fn decide(e: &Expr, b: &Block) -> Option<bool> {
    match ev(e, b) {
        I::Bool(f, t) if f != t => Some(t),
        _ => None,
    }
}

fn sat(x: i128) -> i64 {
    x.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

fn ev(e: &Expr, b: &Block) -> I {
    use I::*;
    match &e.kind {
        Kind::Int(v) => Int(*v, *v),
        Kind::Bool(v) => Bool(!v, *v),
        Kind::Var(v) => {
            let a = |x: u8| x as usize % MAX_RANK;
            match v {
                Var::Q(x) => Int(b.q[a(*x)].0, b.q[a(*x)].1),
                Var::K(x) => Int(b.k[a(*x)].0, b.k[a(*x)].1),
                Var::D(x) => {
                    let (q, k) = (b.q[a(*x)], b.k[a(*x)]);
                    Int(k.0.saturating_sub(q.1), k.1.saturating_sub(q.0))
                }
                Var::N(x) => Int(b.n[a(*x)], b.n[a(*x)]),
                Var::QI => b.qi.map(|(l, h)| Int(l, h)).unwrap_or(Unknown),
                Var::KI => b.ki.map(|(l, h)| Int(l, h)).unwrap_or(Unknown),
                _ => Unknown,
            }
        }
        Kind::Unary(UnOp::Neg, a) => match ev(a, b) {
            Int(l, h) => Int(h.saturating_neg(), l.saturating_neg()),
            _ => Unknown,
        },
        Kind::Unary(UnOp::Not, a) => match ev(a, b) {
            Bool(f, t) => Bool(t, f),
            _ => Unknown,
        },
        Kind::Binary(op, x, y) => binary(*op, ev(x, b), ev(y, b)),
        Kind::Call(f, args) => {
            let v: Vec<I> = args.iter().map(|a| ev(a, b)).collect();
            match (f, v.as_slice()) {
                (Builtin::Abs, [Int(l, h)]) => {
                    if *l >= 0 {
                        Int(*l, *h)
                    } else if *h <= 0 {
                        Int(h.saturating_neg(), l.saturating_neg())
                    } else {
                        Int(0, l.saturating_neg().max(*h))
                    }
                }
                (Builtin::Min, [Int(a, b2), Int(c, d)]) => Int(*a.min(c), *b2.min(d)),
                (Builtin::Max, [Int(a, b2), Int(c, d)]) => Int(*a.max(c), *b2.max(d)),
                (Builtin::Clamp, [Int(xl, xh), Int(ll, lh), Int(hl, hh)]) => {
                    // max(lo, min(x, hi)) is monotone in each argument.
                    let (ml, mh) = (*xl.min(hl), *xh.min(hh));
                    Int(*ll.max(&ml), *lh.max(&mh))
                }
                _ => Unknown,
            }
        }
        Kind::Doc {
            x,
            offsets: crate::sema::expr::DocOffsets::Values(offs),
        } => match ev(x, b) {
            Int(l, h) => Int(doc_index(l, offs), doc_index(h, offs)),
            _ => Unknown,
        },
        _ => Unknown,
    }
}

fn binary(op: BinOp, x: I, y: I) -> I {
    use I::*;
    match (x, y) {
        (Int(a, b), Int(c, d)) => match op {
            BinOp::Add => Int(a.saturating_add(c), b.saturating_add(d)),
            BinOp::Sub => Int(a.saturating_sub(d), b.saturating_sub(c)),
            BinOp::Mul => {
                let p = [
                    a as i128 * c as i128,
                    a as i128 * d as i128,
                    b as i128 * c as i128,
                    b as i128 * d as i128,
                ];
                Int(
                    sat(*p.iter().min().unwrap_or(&0)),
                    sat(*p.iter().max().unwrap_or(&0)),
                )
            }
            BinOp::Div if c == d && c > 0 => match (floor_div(a, c), floor_div(b, c)) {
                (Some(l), Some(h)) => Int(l, h),
                _ => Unknown,
            },
            BinOp::Rem if c == d && c > 0 => match (floor_div(a, c), floor_div(b, c)) {
                (Some(l), Some(h)) if l == h => Int(a - l * c, b - h * c),
                _ => Int(0, c - 1),
            },
            BinOp::Eq => {
                let can_t = a <= d && c <= b;
                let can_f = !(a == b && c == d && a == c);
                Bool(can_f, can_t)
            }
            BinOp::Ne => {
                let can_t = !(a == b && c == d && a == c);
                let can_f = a <= d && c <= b;
                Bool(can_f, can_t)
            }
            BinOp::Lt => Bool(b >= c, a < d),
            BinOp::Le => Bool(b > c, a <= d),
            BinOp::Gt => Bool(a <= d, b > c),
            BinOp::Ge => Bool(a < d, b >= c),
            _ => Unknown,
        },
        (Bool(f1, t1), Bool(f2, t2)) => match op {
            BinOp::And => Bool(f1 || f2, t1 && t2),
            BinOp::Or => Bool(f1 && f2, t1 || t2),
            BinOp::Eq => Bool((t1 && f2) || (f1 && t2), (t1 && t2) || (f1 && f2)),
            BinOp::Ne => Bool((t1 && t2) || (f1 && f2), (t1 && f2) || (f1 && t2)),
            _ => Unknown,
        },
        _ => Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostic::Span;

    fn v(x: Var) -> Expr {
        Expr::var(x, Span::DUMMY)
    }

    #[test]
    fn abs_window_decides_far_blocks() {
        // abs(dh) <= 1
        let e = Expr::binary(
            BinOp::Le,
            Expr::call(Builtin::Abs, vec![v(Var::D(0))], Span::DUMMY),
            Expr::int(1, Span::DUMMY),
            Span::DUMMY,
        );
        let mut b = Block::default();
        b.q[0] = (0, 7);
        b.k[0] = (16, 23);
        assert_eq!(decide(&e, &b), Some(false));
        b.k[0] = (0, 7);
        assert_eq!(decide(&e, &b), None);
        b.q[0] = (3, 3);
        b.k[0] = (2, 4);
        assert_eq!(decide(&e, &b), Some(true));
    }
}
