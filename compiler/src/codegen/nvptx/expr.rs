//! Mask and score expressions to LLVM values in the GPU kernel: integers as i64, booleans
//! as i1, floats as f32 (`tanh`, `exp`, `log` through ex2/lg2 approximations). Integer
//! semantics match `sema::eval` (floor division; a zero divisor gives 0).

use inkwell::module::Linkage;
use inkwell::values::{BasicValueEnum, FloatValue, IntValue};
use inkwell::{AddressSpace, FloatPredicate, IntPredicate};

use super::gen::{ok, Gen};
use crate::sema::expr::{BinOp, Builtin, DocOffsets, Expr, InputId, Kind, Ty, UnOp, Var};

/// The free names of an expression where it is compiled.
pub trait Scope<'c> {
    /// Coordinates, extents, positions, batch, head (i64); the score (f32).
    fn var(&mut self, g: &Gen<'c>, v: Var) -> BasicValueEnum<'c>;
    fn head(&mut self, g: &Gen<'c>) -> IntValue<'c>;
    /// An input element (f32); 0 when an index is out of range.
    fn input(&mut self, g: &Gen<'c>, id: InputId, idx: &[IntValue<'c>]) -> FloatValue<'c>;
}

pub fn gen<'c>(g: &Gen<'c>, e: &Expr, s: &mut dyn Scope<'c>) -> BasicValueEnum<'c> {
    match &e.kind {
        Kind::Int(v) => g.i64(*v).into(),
        Kind::Float(v) => g.f32(*v).into(),
        Kind::Bool(b) => g.cx.bool_type().const_int(u64::from(*b), false).into(),
        Kind::Var(v) => s.var(g, *v),
        Kind::Param(_) | Kind::Window { .. } => g.i64(0).into(),
        Kind::HeadTable(vals) => {
            // A constant table in global memory, indexed by the head.
            let arr = g
                .f32t
                .const_array(&vals.iter().map(|v| g.f32(*v)).collect::<Vec<_>>());
            let glob =
                g.m.add_global(arr.get_type(), Some(AddressSpace::from(1u16)), "head_table");
            glob.set_initializer(&arr);
            glob.set_constant(true);
            glob.set_linkage(Linkage::Internal);
            let h = s.head(g);
            let p = unsafe_gep(g, glob.as_pointer_value(), arr.get_type(), h);
            let x = ok(g.b.build_load(g.f32t, p, "")).into_float_value();
            if e.ty == Ty::Int {
                ok(g.b.build_float_to_signed_int(x, g.i64t, "")).into()
            } else {
                x.into()
            }
        }
        Kind::Unary(UnOp::Neg, a) => {
            let x = gen(g, a, s);
            if a.ty == Ty::Float {
                ok(g.b.build_float_neg(x.into_float_value(), "")).into()
            } else {
                ok(g.b.build_int_neg(x.into_int_value(), "")).into()
            }
        }
        Kind::Unary(UnOp::Not, a) => g.not(gen(g, a, s).into_int_value()).into(),
        Kind::Binary(op, a, b) => binary(g, *op, a, b, s),
        Kind::Call(f, args) => call(g, *f, args, e.ty, s),
        Kind::Doc { x, offsets } => {
            // Number of offsets <= x, minus one.
            let xv = gen(g, x, s).into_int_value();
            let mut acc = g.i64(-1);
            if let DocOffsets::Values(v) = offsets {
                for o in v.iter() {
                    let ge = g.icmp(IntPredicate::SGE, xv, g.i64(*o));
                    let one = ok(g.b.build_int_z_extend(ge, g.i64t, ""));
                    acc = g.add(acc, one);
                }
            }
            acc.into()
        }
        Kind::Input { id, indices } => {
            let idx: Vec<IntValue> = indices
                .iter()
                .map(|i| gen(g, i, s).into_int_value())
                .collect();
            s.input(g, *id, &idx).into()
        }
    }
}

/// GEP into a global constant array (the index is in range: a head below the head count).
fn unsafe_gep<'c>(
    g: &Gen<'c>,
    base: inkwell::values::PointerValue<'c>,
    arr: inkwell::types::ArrayType<'c>,
    i: IntValue<'c>,
) -> inkwell::values::PointerValue<'c> {
    // SAFETY: `i` is a query head index, below the table's length (one value per head).
    unsafe { ok(g.b.build_in_bounds_gep(arr, base, &[g.i64(0), i], "")) }
}

fn float<'c>(g: &Gen<'c>, e: &Expr, s: &mut dyn Scope<'c>) -> FloatValue<'c> {
    let v = gen(g, e, s);
    if e.ty == Ty::Int {
        ok(g.b.build_signed_int_to_float(v.into_int_value(), g.f32t, ""))
    } else {
        v.into_float_value()
    }
}

fn binary<'c>(
    g: &Gen<'c>,
    op: BinOp,
    a: &Expr,
    b: &Expr,
    s: &mut dyn Scope<'c>,
) -> BasicValueEnum<'c> {
    if op.is_logical() {
        let (x, y) = (gen(g, a, s).into_int_value(), gen(g, b, s).into_int_value());
        return if op == BinOp::And {
            g.and(x, y)
        } else {
            g.or(x, y)
        }
        .into();
    }
    if a.ty == Ty::Bool {
        let (x, y) = (gen(g, a, s).into_int_value(), gen(g, b, s).into_int_value());
        let p = if op == BinOp::Eq {
            IntPredicate::EQ
        } else {
            IntPredicate::NE
        };
        return g.icmp(p, x, y).into();
    }
    if a.ty == Ty::Float || b.ty == Ty::Float {
        let (x, y) = (float(g, a, s), float(g, b, s));
        let cmp = |p| g.fcmp(p, x, y).into();
        return match op {
            BinOp::Add => g.fadd(x, y).into(),
            BinOp::Sub => g.fsub(x, y).into(),
            BinOp::Mul => g.fmul(x, y).into(),
            BinOp::Div => g.fdiv(x, y).into(),
            BinOp::Rem => ok(g.b.build_float_rem(x, y, "")).into(),
            BinOp::Eq => cmp(FloatPredicate::OEQ),
            BinOp::Ne => cmp(FloatPredicate::UNE),
            BinOp::Lt => cmp(FloatPredicate::OLT),
            BinOp::Le => cmp(FloatPredicate::OLE),
            BinOp::Gt => cmp(FloatPredicate::OGT),
            BinOp::Ge => cmp(FloatPredicate::OGE),
            BinOp::And | BinOp::Or => x.into(),
        };
    }
    let (x, y) = (gen(g, a, s).into_int_value(), gen(g, b, s).into_int_value());
    match op {
        BinOp::Add => g.add(x, y).into(),
        BinOp::Sub => g.sub(x, y).into(),
        BinOp::Mul => g.mul(x, y).into(),
        BinOp::Div | BinOp::Rem => floor_divrem(g, x, y, op == BinOp::Div).into(),
        BinOp::Eq => g.icmp(IntPredicate::EQ, x, y).into(),
        BinOp::Ne => g.icmp(IntPredicate::NE, x, y).into(),
        BinOp::Lt => g.icmp(IntPredicate::SLT, x, y).into(),
        BinOp::Le => g.icmp(IntPredicate::SLE, x, y).into(),
        BinOp::Gt => g.icmp(IntPredicate::SGT, x, y).into(),
        BinOp::Ge => g.icmp(IntPredicate::SGE, x, y).into(),
        BinOp::And | BinOp::Or => x.into(),
    }
}

fn floor_divrem<'c>(g: &Gen<'c>, x: IntValue<'c>, y: IntValue<'c>, div: bool) -> IntValue<'c> {
    let zero = g.i64(0);
    let one = g.i64(1);
    let is_zero = g.eqi(y, 0);
    let minus_one = g.eqi(y, -1);
    let safe = g.seli(g.or(is_zero, minus_one), one, y);
    let q0 = ok(g.b.build_int_signed_div(x, safe, ""));
    let q0 = g.seli(minus_one, ok(g.b.build_int_neg(x, "")), q0);
    let r0 = g.sub(x, g.mul(q0, y));
    let r0 = g.seli(minus_one, zero, r0);
    let r_nz = g.icmp(IntPredicate::NE, r0, zero);
    let differ = g.icmp(IntPredicate::SLT, ok(g.b.build_xor(r0, y, "")), zero);
    let adjust = g.and(r_nz, differ);
    let out = if div {
        g.seli(adjust, g.addi(q0, -1), q0)
    } else {
        g.seli(adjust, g.add(r0, y), r0)
    };
    g.seli(is_zero, zero, out)
}

fn call<'c>(
    g: &Gen<'c>,
    f: Builtin,
    args: &[Expr],
    ty: Ty,
    s: &mut dyn Scope<'c>,
) -> BasicValueEnum<'c> {
    let is_float = ty == Ty::Float;
    if is_float {
        let v: Vec<FloatValue> = args.iter().map(|a| float(g, a, s)).collect();
        let log2e = std::f64::consts::LOG2_E;
        let ln2 = std::f64::consts::LN_2;
        return match f {
            Builtin::Abs => g
                .self_f(
                    g.fcmp(FloatPredicate::OLT, v[0], g.f32(0.0)),
                    ok(g.b.build_float_neg(v[0], "")),
                    v[0],
                )
                .into(),
            Builtin::Min => g
                .self_f(g.fcmp(FloatPredicate::OLT, v[0], v[1]), v[0], v[1])
                .into(),
            Builtin::Max => g.fmax(v[0], v[1]).into(),
            Builtin::Clamp => {
                let m = g.self_f(g.fcmp(FloatPredicate::OLT, v[0], v[2]), v[0], v[2]);
                g.fmax(v[1], m).into()
            }
            Builtin::Sqrt => g.sqrt(v[0]).into(),
            Builtin::Float => v[0].into(),
            Builtin::Exp => g.ex2(g.fmul(v[0], g.f32(log2e))).into(),
            Builtin::Exp2 => g.ex2(v[0]).into(),
            Builtin::Log => g.fmul(g.lg2(v[0]), g.f32(ln2)).into(),
            Builtin::Tanh => {
                // tanh(x) = 1 - 2 / (exp(2x) + 1), with x clamped so exp cannot overflow.
                let x = g.fmax(
                    g.f32(-15.0),
                    g.self_f(
                        g.fcmp(FloatPredicate::OLT, v[0], g.f32(15.0)),
                        v[0],
                        g.f32(15.0),
                    ),
                );
                let e2x = g.ex2(g.fmul(x, g.f32(2.0 * log2e)));
                let d = g.fadd(e2x, g.f32(1.0));
                g.fsub(g.f32(1.0), g.fdiv(g.f32(2.0), d)).into()
            }
        };
    }
    let v: Vec<IntValue> = args.iter().map(|a| gen(g, a, s).into_int_value()).collect();
    match f {
        Builtin::Abs => g.smax(v[0], ok(g.b.build_int_neg(v[0], ""))).into(),
        Builtin::Min => g.smin(v[0], v[1]).into(),
        Builtin::Max => g.smax(v[0], v[1]).into(),
        Builtin::Clamp => g.smax(v[1], g.smin(v[0], v[2])).into(),
        _ => v[0].into(),
    }
}
