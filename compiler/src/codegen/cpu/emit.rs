//! A thin layer over Cranelift's `FunctionBuilder`: constants, loads and stores with the
//! right memory flags, structured loops and branches, and the f32x4 helpers the kernel
//! lowering needs (horizontal sums, exp2).

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    types, Block, BlockArg, Endianness, FuncRef, InstBuilder, MemFlagsData, Type, Value,
};
use cranelift_frontend::{FunctionBuilder, Variable};

pub const I64: Type = types::I64;
pub const F32: Type = types::F32;
pub const F64: Type = types::F64;
pub const F32X4: Type = types::F32X4;
pub const I32X4: Type = types::I32X4;

/// A loop opened by [`Em::loop_begin`].
pub struct OpenLoop {
    header: Block,
    exit: Block,
    pub i: Value,
}

/// Emits instructions into one function.
pub struct Em<'a> {
    pub b: FunctionBuilder<'a>,
}

/// Scratch memory: aligned and never trapping (the runtime allocates it).
fn scratch() -> MemFlagsData {
    MemFlagsData::trusted()
}

/// Caller memory (tensors): never trapping (the runtime checks sizes), alignment unknown.
fn user() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

fn lanes() -> MemFlagsData {
    MemFlagsData::new().with_endianness(Endianness::Little)
}

impl<'a> Em<'a> {
    pub fn new(b: FunctionBuilder<'a>) -> Em<'a> {
        Em { b }
    }

    pub fn i(&mut self, v: i64) -> Value {
        self.b.ins().iconst(I64, v)
    }

    pub fn f32(&mut self, v: f32) -> Value {
        self.b.ins().f32const(v)
    }

    pub fn f64(&mut self, v: f64) -> Value {
        self.b.ins().f64const(v)
    }

    pub fn splat(&mut self, v: f32) -> Value {
        let s = self.f32(v);
        self.b.ins().splat(F32X4, s)
    }

    /// `base + index * scale`
    pub fn index(&mut self, base: Value, index: Value, scale: i64) -> Value {
        let off = if scale == 1 {
            index
        } else {
            self.b.ins().imul_imm_s(index, scale)
        };
        self.b.ins().iadd(base, off)
    }

    pub fn add(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().iadd(a, b)
    }

    pub fn addi(&mut self, a: Value, k: i64) -> Value {
        self.b.ins().iadd_imm_s(a, k)
    }

    pub fn muli(&mut self, a: Value, k: i64) -> Value {
        self.b.ins().imul_imm_s(a, k)
    }

    // ---- memory ------------------------------------------------------------------------

    pub fn ld(&mut self, ty: Type, p: Value, off: i32) -> Value {
        self.b.ins().load(ty, scratch(), p, off)
    }

    pub fn st(&mut self, v: Value, p: Value, off: i32) {
        self.b.ins().store(scratch(), v, p, off);
    }

    pub fn ld_user(&mut self, ty: Type, p: Value, off: i32) -> Value {
        self.b.ins().load(ty, user(), p, off)
    }

    pub fn st_user(&mut self, v: Value, p: Value, off: i32) {
        self.b.ins().store(user(), v, p, off);
    }

    pub fn ld_u32(&mut self, p: Value, off: i32) -> Value {
        self.b.ins().uload32(user(), p, off)
    }

    // ---- control flow ------------------------------------------------------------------

    /// `for i in (lo..hi).step_by(step) { body(i) }`
    pub fn for_range(
        &mut self,
        lo: Value,
        hi: Value,
        step: i64,
        body: &mut dyn FnMut(&mut Em<'a>, Value),
    ) {
        let header = self.b.create_block();
        let bodyb = self.b.create_block();
        let exit = self.b.create_block();
        self.b.append_block_param(header, I64);
        self.b.ins().jump(header, &[BlockArg::Value(lo)]);
        self.b.switch_to_block(header);
        let i = self.b.block_params(header)[0];
        let go = self.b.ins().icmp(IntCC::SignedLessThan, i, hi);
        self.b.ins().brif(go, bodyb, &[], exit, &[]);
        self.b.switch_to_block(bodyb);
        self.b.seal_block(bodyb);
        body(self, i);
        let next = self.b.ins().iadd_imm_s(i, step);
        self.b.ins().jump(header, &[BlockArg::Value(next)]);
        self.b.seal_block(header);
        self.b.switch_to_block(exit);
        self.b.seal_block(exit);
    }

    /// Opens a loop `for i in lo..hi` whose body the caller emits next; close it with
    /// [`Em::loop_end`]. For bodies that need more than the emitter.
    pub fn loop_begin(&mut self, lo: Value, hi: Value) -> OpenLoop {
        let header = self.b.create_block();
        let body = self.b.create_block();
        let exit = self.b.create_block();
        self.b.append_block_param(header, I64);
        self.b.ins().jump(header, &[BlockArg::Value(lo)]);
        self.b.switch_to_block(header);
        let i = self.b.block_params(header)[0];
        let go = self.b.ins().icmp(IntCC::SignedLessThan, i, hi);
        self.b.ins().brif(go, body, &[], exit, &[]);
        self.b.switch_to_block(body);
        self.b.seal_block(body);
        OpenLoop { header, exit, i }
    }

    pub fn loop_end(&mut self, l: OpenLoop, step: i64) {
        let next = self.b.ins().iadd_imm_s(l.i, step);
        self.b.ins().jump(l.header, &[BlockArg::Value(next)]);
        self.b.seal_block(l.header);
        self.b.switch_to_block(l.exit);
        self.b.seal_block(l.exit);
    }

    /// Opens `if cond { ... }`; close it with [`Em::if_end`].
    pub fn if_begin(&mut self, cond: Value) -> Block {
        let t = self.b.create_block();
        let done = self.b.create_block();
        self.b.ins().brif(cond, t, &[], done, &[]);
        self.b.switch_to_block(t);
        self.b.seal_block(t);
        done
    }

    pub fn if_end(&mut self, done: Block) {
        self.b.ins().jump(done, &[]);
        self.b.switch_to_block(done);
        self.b.seal_block(done);
    }

    /// `for i in 0..n` with a constant bound.
    pub fn for_n(&mut self, n: i64, step: i64, body: &mut dyn FnMut(&mut Em<'a>, Value)) {
        let lo = self.i(0);
        let hi = self.i(n);
        self.for_range(lo, hi, step, body);
    }

    /// `if cond { then }`
    pub fn if_then(&mut self, cond: Value, then: &mut dyn FnMut(&mut Em<'a>)) {
        let t = self.b.create_block();
        let done = self.b.create_block();
        self.b.ins().brif(cond, t, &[], done, &[]);
        self.b.switch_to_block(t);
        self.b.seal_block(t);
        then(self);
        self.b.ins().jump(done, &[]);
        self.b.switch_to_block(done);
        self.b.seal_block(done);
    }

    /// `if cond { then } else { other }`
    pub fn if_else(
        &mut self,
        cond: Value,
        then: &mut dyn FnMut(&mut Em<'a>),
        other: &mut dyn FnMut(&mut Em<'a>),
    ) {
        let t = self.b.create_block();
        let e = self.b.create_block();
        let done = self.b.create_block();
        self.b.ins().brif(cond, t, &[], e, &[]);
        self.b.switch_to_block(t);
        self.b.seal_block(t);
        then(self);
        self.b.ins().jump(done, &[]);
        self.b.switch_to_block(e);
        self.b.seal_block(e);
        other(self);
        self.b.ins().jump(done, &[]);
        self.b.switch_to_block(done);
        self.b.seal_block(done);
    }

    pub fn var(&mut self, ty: Type, init: Value) -> Variable {
        let v = self.b.declare_var(ty);
        self.b.def_var(v, init);
        v
    }

    pub fn get(&mut self, v: Variable) -> Value {
        self.b.use_var(v)
    }

    pub fn set(&mut self, v: Variable, x: Value) {
        self.b.def_var(v, x);
    }

    pub fn block(&mut self) -> Block {
        self.b.create_block()
    }

    /// Calls a helper of one f64 (`libm.rs`) and returns its f64 result.
    pub fn call_f64(&mut self, f: FuncRef, x: Value) -> Value {
        let c = self.b.ins().call(f, &[x]);
        self.b.inst_results(c)[0]
    }

    // ---- comparisons -------------------------------------------------------------------

    pub fn lt(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().icmp(IntCC::SignedLessThan, a, b)
    }

    pub fn eqi(&mut self, a: Value, k: i64) -> Value {
        self.b.ins().icmp_imm_s(IntCC::Equal, a, k)
    }

    pub fn fcmp(&mut self, cc: FloatCC, a: Value, b: Value) -> Value {
        self.b.ins().fcmp(cc, a, b)
    }

    // ---- vectors -----------------------------------------------------------------------

    /// The sum of the four lanes.
    pub fn hsum(&mut self, v: Value) -> Value {
        let l: Vec<Value> = (0..4u8).map(|i| self.b.ins().extractlane(v, i)).collect();
        let a = self.b.ins().fadd(l[0], l[1]);
        let c = self.b.ins().fadd(l[2], l[3]);
        self.b.ins().fadd(a, c)
    }

    /// The maximum of the four lanes.
    pub fn hmax(&mut self, v: Value) -> Value {
        let l: Vec<Value> = (0..4u8).map(|i| self.b.ins().extractlane(v, i)).collect();
        let a = self.b.ins().fmax(l[0], l[1]);
        let c = self.b.ins().fmax(l[2], l[3]);
        self.b.ins().fmax(a, c)
    }

    /// `2^x` for each lane with `x <= 0` (scores minus their running maximum), relative
    /// error about 2e-7; lanes below -126 (including -inf) give exactly 0.
    ///
    /// Range reduction `x = n + f`, `n = round(x)`, `f in [-0.5, 0.5]`; `2^f` by its Taylor
    /// polynomial of degree 7 in `f ln 2`; `2^n` built in the exponent bits.
    pub fn exp2_v(&mut self, x: Value) -> Value {
        let lo = self.splat(-126.0);
        let keep = self.b.ins().fcmp(FloatCC::GreaterThanOrEqual, x, lo);
        let xc = self.b.ins().fmax(x, lo);
        let n = self.b.ins().nearest(xc);
        let f = self.b.ins().fsub(xc, n);
        // 2^f = sum_k (f ln2)^k / k!
        let ln2 = std::f64::consts::LN_2;
        let mut coef = [0f32; 8];
        let mut c = 1.0f64;
        for (k, slot) in coef.iter_mut().enumerate() {
            if k > 0 {
                c *= ln2 / k as f64;
            }
            *slot = c as f32;
        }
        let mut p = self.splat(coef[7]);
        for k in (0..7).rev() {
            let ck = self.splat(coef[k]);
            let t = self.b.ins().fmul(p, f);
            p = self.b.ins().fadd(t, ck);
        }
        let ni = self.b.ins().fcvt_to_sint_sat(I32X4, n);
        let bias = self.b.ins().iconst(types::I32, 127);
        let bias = self.b.ins().splat(I32X4, bias);
        let e = self.b.ins().iadd(ni, bias);
        let e = self.b.ins().ishl_imm_s(e, 23);
        let scale = self.b.ins().bitcast(F32X4, lanes(), e);
        let r = self.b.ins().fmul(p, scale);
        // Zero the lanes that were below the range (their mask lanes are all zeros).
        let rb = self.b.ins().bitcast(I32X4, lanes(), r);
        let masked = self.b.ins().band(rb, keep);
        self.b.ins().bitcast(F32X4, lanes(), masked)
    }

    /// Scalar `2^x` through the vector routine (lane 0).
    pub fn exp2_s(&mut self, x: Value) -> Value {
        let v = self.b.ins().splat(F32X4, x);
        let r = self.exp2_v(v);
        self.b.ins().extractlane(r, 0)
    }
}
