//! Evaluation of resolved expressions. Integer arithmetic is checked (overflow and
//! division by zero are errors with a span, never a panic); `/` rounds toward negative
//! infinity and `%` takes the sign of the divisor, so that `(x / n) * n + x % n == x`.

use super::expr::*;
use crate::diagnostic::Span;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Value {
    pub fn as_f64(self) -> f64 {
        match self {
            Value::Int(v) => v as f64,
            Value::Float(v) => v,
            Value::Bool(b) => f64::from(u8::from(b)),
        }
    }

    pub fn as_bool(self) -> bool {
        match self {
            Value::Bool(b) => b,
            Value::Int(v) => v != 0,
            Value::Float(v) => v != 0.0,
        }
    }

    pub fn as_int(self) -> Option<i64> {
        match self {
            Value::Int(v) => Some(v),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct EvalError {
    pub span: Span,
    pub message: String,
}

fn err<T>(span: Span, message: impl Into<String>) -> Result<T, EvalError> {
    Err(EvalError {
        span,
        message: message.into(),
    })
}

/// What an expression's free names evaluate to.
pub trait Env {
    fn var(&self, v: Var, span: Span) -> Result<Value, EvalError>;
    fn param(&self, id: ParamId, span: Span) -> Result<Value, EvalError> {
        let _ = id;
        err(span, "parameter used where none is bound")
    }
    fn doc_offsets(&self, id: ParamId, span: Span) -> Result<std::sync::Arc<[i64]>, EvalError> {
        let _ = id;
        err(span, "list parameter used where none is bound")
    }
    fn head(&self) -> Option<usize> {
        None
    }
    fn input(&self, id: InputId, idx: &[i64], span: Span) -> Result<f64, EvalError> {
        let _ = (id, idx);
        err(span, "inputs cannot be read here")
    }
}

/// An environment with no variables: constant expressions.
pub struct NoVars;
impl Env for NoVars {
    fn var(&self, _: Var, span: Span) -> Result<Value, EvalError> {
        err(span, "a coordinate cannot be used here")
    }
}

pub fn floor_div(a: i64, b: i64) -> Option<i64> {
    if b == 0 {
        return None;
    }
    let q = a.checked_div(b)?;
    if (a % b != 0) && ((a < 0) != (b < 0)) {
        q.checked_sub(1)
    } else {
        Some(q)
    }
}

pub fn floor_rem(a: i64, b: i64) -> Option<i64> {
    let q = floor_div(a, b)?;
    a.checked_sub(q.checked_mul(b)?)
}

/// `doc(x, offsets)`: the number of offsets `<= x`, minus one.
pub fn doc_index(x: i64, offsets: &[i64]) -> i64 {
    offsets.partition_point(|o| *o <= x) as i64 - 1
}

pub fn eval<E: Env + ?Sized>(e: &Expr, env: &E) -> Result<Value, EvalError> {
    let span = e.span;
    Ok(match &e.kind {
        Kind::Int(v) => Value::Int(*v),
        Kind::Float(v) => Value::Float(*v),
        Kind::Bool(b) => Value::Bool(*b),
        Kind::Var(v) => env.var(*v, span)?,
        Kind::Param(p) => env.param(*p, span)?,
        Kind::HeadTable(vals) => match env.head() {
            Some(h) if h < vals.len() => {
                let v = vals[h];
                if e.ty == Ty::Int {
                    Value::Int(v as i64)
                } else {
                    Value::Float(v)
                }
            }
            _ => return err(span, "per-head value used outside a head"),
        },
        Kind::Unary(op, a) => {
            let a = eval(a, env)?;
            match (op, a) {
                (UnOp::Neg, Value::Int(v)) => match v.checked_neg() {
                    Some(v) => Value::Int(v),
                    None => return err(span, "integer overflow"),
                },
                (UnOp::Neg, Value::Float(v)) => Value::Float(-v),
                (UnOp::Not, Value::Bool(b)) => Value::Bool(!b),
                _ => return err(span, "operand of the wrong type"),
            }
        }
        Kind::Binary(op, a, b) => {
            // Short-circuit the logical operators.
            if op.is_logical() {
                let l = eval(a, env)?.as_bool();
                return Ok(Value::Bool(match op {
                    BinOp::And => l && eval(b, env)?.as_bool(),
                    _ => l || eval(b, env)?.as_bool(),
                }));
            }
            let l = eval(a, env)?;
            let r = eval(b, env)?;
            binary(*op, l, r, span)?
        }
        Kind::Call(b, args) => {
            let mut vals = [Value::Int(0); 3];
            for (i, a) in args.iter().enumerate().take(3) {
                vals[i] = eval(a, env)?;
            }
            call(*b, &vals[..args.len().min(3)], span)?
        }
        Kind::Doc { x, offsets } => {
            let x = eval(x, env)?.as_int().unwrap_or(0);
            match offsets {
                DocOffsets::Values(v) => Value::Int(doc_index(x, v)),
                DocOffsets::Param(p) => Value::Int(doc_index(x, &env.doc_offsets(*p, span)?)),
            }
        }
        Kind::Window { .. } => return err(span, "`window` was not expanded (internal error)"),
        Kind::Input { id, indices } => {
            let mut idx = [0i64; 4];
            for (i, a) in indices.iter().enumerate().take(4) {
                idx[i] = eval(a, env)?.as_int().unwrap_or(0);
            }
            Value::Float(env.input(*id, &idx[..indices.len().min(4)], span)?)
        }
    })
}

pub fn binary(op: BinOp, l: Value, r: Value, span: Span) -> Result<Value, EvalError> {
    use Value::*;
    Ok(match (l, r) {
        (Int(a), Int(b)) => match op {
            BinOp::Add => Int(a.checked_add(b).ok_or_else(|| overflow(span))?),
            BinOp::Sub => Int(a.checked_sub(b).ok_or_else(|| overflow(span))?),
            BinOp::Mul => Int(a.checked_mul(b).ok_or_else(|| overflow(span))?),
            BinOp::Div => {
                if b == 0 {
                    return err(span, "division by zero");
                }
                Int(floor_div(a, b).ok_or_else(|| overflow(span))?)
            }
            BinOp::Rem => {
                if b == 0 {
                    return err(span, "remainder by zero");
                }
                Int(floor_rem(a, b).ok_or_else(|| overflow(span))?)
            }
            BinOp::Eq => Bool(a == b),
            BinOp::Ne => Bool(a != b),
            BinOp::Lt => Bool(a < b),
            BinOp::Le => Bool(a <= b),
            BinOp::Gt => Bool(a > b),
            BinOp::Ge => Bool(a >= b),
            BinOp::And | BinOp::Or => return err(span, "logical operator on integers"),
        },
        (Bool(a), Bool(b)) => match op {
            BinOp::Eq => Bool(a == b),
            BinOp::Ne => Bool(a != b),
            BinOp::And => Bool(a && b),
            BinOp::Or => Bool(a || b),
            _ => return err(span, "arithmetic on booleans"),
        },
        (a, b) => {
            if matches!(a, Bool(_)) || matches!(b, Bool(_)) {
                return err(span, "operands of the wrong type");
            }
            let (a, b) = (a.as_f64(), b.as_f64());
            match op {
                BinOp::Add => Float(a + b),
                BinOp::Sub => Float(a - b),
                BinOp::Mul => Float(a * b),
                BinOp::Div => Float(a / b),
                BinOp::Rem => Float(a % b),
                BinOp::Eq => Bool(a == b),
                BinOp::Ne => Bool(a != b),
                BinOp::Lt => Bool(a < b),
                BinOp::Le => Bool(a <= b),
                BinOp::Gt => Bool(a > b),
                BinOp::Ge => Bool(a >= b),
                BinOp::And | BinOp::Or => return err(span, "logical operator on numbers"),
            }
        }
    })
}

fn overflow(span: Span) -> EvalError {
    EvalError {
        span,
        message: "integer overflow".into(),
    }
}

pub fn call(b: Builtin, args: &[Value], span: Span) -> Result<Value, EvalError> {
    use Value::*;
    let all_int = args.iter().all(|a| matches!(a, Int(_)));
    Ok(match b {
        Builtin::Abs => match args[0] {
            Int(v) => Int(v.checked_abs().ok_or_else(|| overflow(span))?),
            v => Float(v.as_f64().abs()),
        },
        Builtin::Min | Builtin::Max => {
            if all_int {
                let (a, c) = (args[0].as_int().unwrap_or(0), args[1].as_int().unwrap_or(0));
                Int(if b == Builtin::Min {
                    a.min(c)
                } else {
                    a.max(c)
                })
            } else {
                let (a, c) = (args[0].as_f64(), args[1].as_f64());
                Float(if b == Builtin::Min {
                    a.min(c)
                } else {
                    a.max(c)
                })
            }
        }
        Builtin::Clamp => {
            // clamp(x, lo, hi) = max(lo, min(x, hi)); never panics when lo > hi.
            if all_int {
                let (x, lo, hi) = (
                    args[0].as_int().unwrap_or(0),
                    args[1].as_int().unwrap_or(0),
                    args[2].as_int().unwrap_or(0),
                );
                Int(lo.max(x.min(hi)))
            } else {
                let (x, lo, hi) = (args[0].as_f64(), args[1].as_f64(), args[2].as_f64());
                Float(lo.max(x.min(hi)))
            }
        }
        Builtin::Tanh => Float(args[0].as_f64().tanh()),
        Builtin::Exp => Float(args[0].as_f64().exp()),
        Builtin::Exp2 => Float(args[0].as_f64().exp2()),
        Builtin::Log => Float(args[0].as_f64().ln()),
        Builtin::Sqrt => Float(args[0].as_f64().sqrt()),
        Builtin::Float => Float(args[0].as_f64()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_division_matches_python() {
        assert_eq!(floor_div(-7, 2), Some(-4));
        assert_eq!(floor_rem(-7, 2), Some(1));
        assert_eq!(floor_div(7, -2), Some(-4));
        assert_eq!(floor_rem(7, -2), Some(-1));
        assert_eq!(floor_div(i64::MIN, -1), None);
        assert_eq!(floor_div(1, 0), None);
    }

    #[test]
    fn doc_index_buckets() {
        let offs = [0, 10, 25];
        assert_eq!(doc_index(0, &offs), 0);
        assert_eq!(doc_index(9, &offs), 0);
        assert_eq!(doc_index(10, &offs), 1);
        assert_eq!(doc_index(100, &offs), 2);
        assert_eq!(doc_index(-1, &offs), -1);
    }
}
