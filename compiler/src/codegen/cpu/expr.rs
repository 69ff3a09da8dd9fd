//! Mask and score expressions (sema `Expr`) to Cranelift values: integers as i64,
//! booleans as i8, floats as f64. Semantics match `sema::eval`: `/` and `%` round toward
//! negative infinity; a zero divisor gives 0 here instead of trapping (the analysis
//! reports it as an error wherever it evaluates the rule).

use std::collections::HashMap;

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, FuncRef, InstBuilder, Value};

use super::emit::{Em, F64, I64};
use crate::sema::expr::{BinOp, Builtin, DocOffsets, Expr, InputId, Kind, Ty, UnOp, Var};

/// Runtime helpers the generated code calls (see `libm.rs`).
#[derive(Clone, Copy)]
pub struct Libm {
    pub tanh: FuncRef,
    pub exp: FuncRef,
    pub exp2: FuncRef,
    pub log: FuncRef,
    pub doc: FuncRef,
}

/// Data the generated code reads through embedded pointers; owned by the compiled module.
#[derive(Default)]
pub struct Data {
    pub f64s: Vec<Box<[f64]>>,
    pub i64s: Vec<Box<[i64]>>,
}

impl Data {
    pub fn f64_ptr(&mut self, v: &[f64]) -> i64 {
        self.f64s.push(v.to_vec().into_boxed_slice());
        self.f64s.last().map(|b| b.as_ptr() as i64).unwrap_or(0)
    }

    pub fn i64_ptr(&mut self, v: &[i64]) -> i64 {
        self.i64s.push(v.to_vec().into_boxed_slice());
        self.i64s.last().map(|b| b.as_ptr() as i64).unwrap_or(0)
    }
}

/// What the free names of an expression are, where it is compiled.
pub trait Scope {
    /// A coordinate, extent or position (i64), or the score (f64), batch, head (i64).
    fn var(&mut self, em: &mut Em, v: Var) -> Value;
    /// The query head (i64), for per-head tables.
    fn head(&mut self, em: &mut Em) -> Value;
    /// An element of an input tensor as f64 (0 when an index is out of range).
    fn input(&mut self, em: &mut Em, id: InputId, idx: &[Value]) -> Value;
}

pub struct ExprGen<'d> {
    pub libm: Libm,
    pub data: &'d mut Data,
    /// Values of hoisted sub-expressions (by address), valid inside the current row.
    pub hoisted: HashMap<*const Expr, Value>,
}

/// True when `e` reads nothing of the key side (so it is constant along a row).
fn query_only(e: &Expr) -> bool {
    let mut ok = true;
    e.walk(&mut |x| match &x.kind {
        Kind::Var(Var::K(_) | Var::D(_) | Var::KI | Var::Score) | Kind::Input { .. } => ok = false,
        _ => {}
    });
    ok
}

impl ExprGen<'_> {
    /// Emits, once per query row, every maximal sub-expression of `e` that does not read
    /// the key (window starts, per-head values); `gen` then reuses them inside the row.
    pub fn hoist(&mut self, em: &mut Em, e: &Expr, s: &mut dyn Scope) {
        let leaf = matches!(
            e.kind,
            Kind::Int(_) | Kind::Float(_) | Kind::Bool(_) | Kind::Var(_)
        );
        if !leaf && query_only(e) {
            let v = self.gen(em, e, s);
            self.hoisted.insert(e as *const Expr, v);
            return;
        }
        match &e.kind {
            Kind::Unary(_, a) => self.hoist(em, a, s),
            Kind::Binary(_, a, b) => {
                self.hoist(em, a, s);
                self.hoist(em, b, s);
            }
            Kind::Call(_, args) => args.iter().for_each(|a| self.hoist(em, a, s)),
            Kind::Doc { x, .. } => self.hoist(em, x, s),
            _ => {}
        }
    }

    /// Compiles `e`; the result has the expression's type (i64, i8 or f64).
    pub fn gen(&mut self, em: &mut Em, e: &Expr, s: &mut dyn Scope) -> Value {
        if let Some(v) = self.hoisted.get(&(e as *const Expr)) {
            return *v;
        }
        match &e.kind {
            Kind::Int(v) => em.i(*v),
            Kind::Float(v) => em.f64(*v),
            Kind::Bool(b) => em.b.ins().iconst(types::I8, i64::from(*b)),
            Kind::Var(v) => s.var(em, *v),
            Kind::Param(_) | Kind::Window { .. } => em.i(0), // gone after instantiation
            Kind::HeadTable(vals) => {
                let p = self.data.f64_ptr(vals);
                let base = em.i(p);
                let h = s.head(em);
                let addr = em.index(base, h, 8);
                let x = em.ld(F64, addr, 0);
                if e.ty == Ty::Int {
                    em.b.ins().fcvt_to_sint_sat(I64, x)
                } else {
                    x
                }
            }
            Kind::Unary(UnOp::Neg, a) => {
                let x = self.gen(em, a, s);
                if a.ty == Ty::Float {
                    em.b.ins().fneg(x)
                } else {
                    em.b.ins().ineg(x)
                }
            }
            Kind::Unary(UnOp::Not, a) => {
                let x = self.gen(em, a, s);
                em.b.ins().bxor_imm_s(x, 1)
            }
            Kind::Binary(op, a, b) => self.binary(em, *op, a, b, s),
            Kind::Call(f, args) => self.call(em, *f, args, e.ty, s),
            Kind::Doc { x, offsets } => {
                let xv = self.gen(em, x, s);
                let offs: Vec<i64> = match offsets {
                    DocOffsets::Values(v) => v.to_vec(),
                    DocOffsets::Param(_) => vec![],
                };
                let p = self.data.i64_ptr(&offs);
                let (pv, lv) = (em.i(p), em.i(offs.len() as i64));
                let call = em.b.ins().call(self.libm.doc, &[xv, pv, lv]);
                em.b.inst_results(call)[0]
            }
            Kind::Input { id, indices } => {
                let idx: Vec<Value> = indices.iter().map(|i| self.gen(em, i, s)).collect();
                s.input(em, *id, &idx)
            }
        }
    }

    fn float(&mut self, em: &mut Em, e: &Expr, s: &mut dyn Scope) -> Value {
        let v = self.gen(em, e, s);
        if e.ty == Ty::Int {
            em.b.ins().fcvt_from_sint(F64, v)
        } else {
            v
        }
    }

    fn binary(&mut self, em: &mut Em, op: BinOp, a: &Expr, b: &Expr, s: &mut dyn Scope) -> Value {
        if op.is_logical() {
            let (x, y) = (self.gen(em, a, s), self.gen(em, b, s));
            return if op == BinOp::And {
                em.b.ins().band(x, y)
            } else {
                em.b.ins().bor(x, y)
            };
        }
        if a.ty == Ty::Bool {
            let (x, y) = (self.gen(em, a, s), self.gen(em, b, s));
            let cc = if op == BinOp::Eq {
                IntCC::Equal
            } else {
                IntCC::NotEqual
            };
            return em.b.ins().icmp(cc, x, y);
        }
        let float = a.ty == Ty::Float || b.ty == Ty::Float;
        if float {
            let (x, y) = (self.float(em, a, s), self.float(em, b, s));
            let ins = em.b.ins();
            return match op {
                BinOp::Add => ins.fadd(x, y),
                BinOp::Sub => ins.fsub(x, y),
                BinOp::Mul => ins.fmul(x, y),
                BinOp::Div => ins.fdiv(x, y),
                BinOp::Rem => {
                    // x - trunc(x / y) * y, as Rust's % on floats.
                    let q = em.b.ins().fdiv(x, y);
                    let t = em.b.ins().trunc(q);
                    let m = em.b.ins().fmul(t, y);
                    em.b.ins().fsub(x, m)
                }
                BinOp::Eq => ins.fcmp(FloatCC::Equal, x, y),
                BinOp::Ne => ins.fcmp(FloatCC::NotEqual, x, y),
                BinOp::Lt => ins.fcmp(FloatCC::LessThan, x, y),
                BinOp::Le => ins.fcmp(FloatCC::LessThanOrEqual, x, y),
                BinOp::Gt => ins.fcmp(FloatCC::GreaterThan, x, y),
                BinOp::Ge => ins.fcmp(FloatCC::GreaterThanOrEqual, x, y),
                BinOp::And | BinOp::Or => x,
            };
        }
        let (x, y) = (self.gen(em, a, s), self.gen(em, b, s));
        match op {
            BinOp::Add => em.b.ins().iadd(x, y),
            BinOp::Sub => em.b.ins().isub(x, y),
            BinOp::Mul => em.b.ins().imul(x, y),
            BinOp::Div | BinOp::Rem => floor_divrem(em, x, y, op == BinOp::Div),
            BinOp::Eq => em.b.ins().icmp(IntCC::Equal, x, y),
            BinOp::Ne => em.b.ins().icmp(IntCC::NotEqual, x, y),
            BinOp::Lt => em.b.ins().icmp(IntCC::SignedLessThan, x, y),
            BinOp::Le => em.b.ins().icmp(IntCC::SignedLessThanOrEqual, x, y),
            BinOp::Gt => em.b.ins().icmp(IntCC::SignedGreaterThan, x, y),
            BinOp::Ge => em.b.ins().icmp(IntCC::SignedGreaterThanOrEqual, x, y),
            BinOp::And | BinOp::Or => x,
        }
    }

    fn call(&mut self, em: &mut Em, f: Builtin, args: &[Expr], ty: Ty, s: &mut dyn Scope) -> Value {
        let float = ty == Ty::Float;
        let vals: Vec<Value> = args
            .iter()
            .map(|a| {
                if float {
                    self.float(em, a, s)
                } else {
                    self.gen(em, a, s)
                }
            })
            .collect();
        let libcall = |em: &mut Em, f: FuncRef, x: Value| em.call_f64(f, x);
        match f {
            Builtin::Abs if float => em.b.ins().fabs(vals[0]),
            Builtin::Abs => {
                let n = em.b.ins().ineg(vals[0]);
                em.b.ins().smax(vals[0], n)
            }
            Builtin::Min if float => em.b.ins().fmin(vals[0], vals[1]),
            Builtin::Min => em.b.ins().smin(vals[0], vals[1]),
            Builtin::Max if float => em.b.ins().fmax(vals[0], vals[1]),
            Builtin::Max => em.b.ins().smax(vals[0], vals[1]),
            Builtin::Clamp if float => {
                let m = em.b.ins().fmin(vals[0], vals[2]);
                em.b.ins().fmax(vals[1], m)
            }
            Builtin::Clamp => {
                let m = em.b.ins().smin(vals[0], vals[2]);
                em.b.ins().smax(vals[1], m)
            }
            Builtin::Sqrt => em.b.ins().sqrt(vals[0]),
            Builtin::Float => vals[0],
            Builtin::Tanh => libcall(em, self.libm.tanh, vals[0]),
            Builtin::Exp => libcall(em, self.libm.exp, vals[0]),
            Builtin::Exp2 => libcall(em, self.libm.exp2, vals[0]),
            Builtin::Log => libcall(em, self.libm.log, vals[0]),
        }
    }
}

/// Floor division or remainder of i64 values; a zero divisor gives 0.
fn floor_divrem(em: &mut Em, x: Value, y: Value, div: bool) -> Value {
    let zero = em.i(0);
    let one = em.i(1);
    let is_zero = em.b.ins().icmp_imm_s(IntCC::Equal, y, 0);
    let safe_y = em.b.ins().select(is_zero, one, y);
    // i64::MIN / -1 overflows: divide by 1 instead (the value wraps like Rust's wrapping_div).
    let minus_one = em.b.ins().icmp_imm_s(IntCC::Equal, safe_y, -1);
    let safe_y = em.b.ins().select(minus_one, one, safe_y);
    let q0 = em.b.ins().sdiv(x, safe_y);
    let q0 = {
        let neg = em.b.ins().ineg(x);
        em.b.ins().select(minus_one, neg, q0)
    };
    let r0 = {
        let m = em.b.ins().imul(q0, y);
        let r = em.b.ins().isub(x, m);
        em.b.ins().select(minus_one, zero, r)
    };
    // Adjust toward -inf when the remainder is non-zero and the signs differ.
    let r_nz = em.b.ins().icmp_imm_s(IntCC::NotEqual, r0, 0);
    let xr = em.b.ins().bxor(r0, y);
    let signs_differ = em.b.ins().icmp_imm_s(IntCC::SignedLessThan, xr, 0);
    let adjust = em.b.ins().band(r_nz, signs_differ);
    let out = if div {
        let q1 = em.b.ins().iadd_imm_s(q0, -1);
        em.b.ins().select(adjust, q1, q0)
    } else {
        let r1 = em.b.ins().iadd(r0, y);
        em.b.ins().select(adjust, r1, r0)
    };
    em.b.ins().select(is_zero, zero, out)
}
