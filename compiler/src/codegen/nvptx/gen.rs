//! Helpers over inkwell's builder for the GPU kernel: constants, arithmetic that reads like
//! the CPU emitter's, mutable variables (allocas that mem2reg promotes), structured loops
//! and branches, and the NVVM intrinsics the kernel needs. Builder calls fail only when the
//! builder has no insertion point, which these helpers always set: `ok` documents that.

use inkwell::basic_block::BasicBlock;
use inkwell::builder::Builder;
use inkwell::context::Context;
use inkwell::module::Module;
use inkwell::types::{BasicType, BasicTypeEnum, FloatType, IntType};
use inkwell::values::{
    BasicValue, BasicValueEnum, FloatValue, FunctionValue, IntValue, PointerValue,
};
use inkwell::{FloatPredicate, IntPredicate};

/// Unwraps a builder result: the builder is always positioned inside the kernel.
pub fn ok<T, E: std::fmt::Debug>(r: Result<T, E>) -> T {
    r.expect("LLVM builder is positioned in the kernel function")
}

pub struct Gen<'c> {
    pub cx: &'c Context,
    pub m: Module<'c>,
    pub b: Builder<'c>,
    pub f: FunctionValue<'c>,
    pub i32t: IntType<'c>,
    pub i64t: IntType<'c>,
    pub i8t: IntType<'c>,
    pub f32t: FloatType<'c>,
    /// The entry block, where allocas go.
    pub entry: BasicBlock<'c>,
}

/// A mutable variable.
#[derive(Clone, Copy)]
pub struct Var<'c> {
    pub ptr: PointerValue<'c>,
    pub ty: BasicTypeEnum<'c>,
}

impl<'c> Gen<'c> {
    pub fn i32(&self, v: i64) -> IntValue<'c> {
        self.i32t.const_int(v as u64, true)
    }

    pub fn i64(&self, v: i64) -> IntValue<'c> {
        self.i64t.const_int(v as u64, true)
    }

    pub fn f32(&self, v: f64) -> FloatValue<'c> {
        self.f32t.const_float(v)
    }

    pub fn add(&self, a: IntValue<'c>, b: IntValue<'c>) -> IntValue<'c> {
        ok(self.b.build_int_add(a, b, ""))
    }

    pub fn sub(&self, a: IntValue<'c>, b: IntValue<'c>) -> IntValue<'c> {
        ok(self.b.build_int_sub(a, b, ""))
    }

    pub fn mul(&self, a: IntValue<'c>, b: IntValue<'c>) -> IntValue<'c> {
        ok(self.b.build_int_mul(a, b, ""))
    }

    pub fn addi(&self, a: IntValue<'c>, k: i64) -> IntValue<'c> {
        let c = a.get_type().const_int(k as u64, true);
        self.add(a, c)
    }

    pub fn muli(&self, a: IntValue<'c>, k: i64) -> IntValue<'c> {
        let c = a.get_type().const_int(k as u64, true);
        self.mul(a, c)
    }

    /// Unsigned division and remainder by a positive constant.
    pub fn udivi(&self, a: IntValue<'c>, k: i64) -> IntValue<'c> {
        let c = a.get_type().const_int(k as u64, false);
        ok(self.b.build_int_unsigned_div(a, c, ""))
    }

    pub fn uremi(&self, a: IntValue<'c>, k: i64) -> IntValue<'c> {
        let c = a.get_type().const_int(k as u64, false);
        ok(self.b.build_int_unsigned_rem(a, c, ""))
    }

    pub fn icmp(&self, p: IntPredicate, a: IntValue<'c>, b: IntValue<'c>) -> IntValue<'c> {
        ok(self.b.build_int_compare(p, a, b, ""))
    }

    pub fn lt(&self, a: IntValue<'c>, b: IntValue<'c>) -> IntValue<'c> {
        self.icmp(IntPredicate::SLT, a, b)
    }

    pub fn eqi(&self, a: IntValue<'c>, k: i64) -> IntValue<'c> {
        let c = a.get_type().const_int(k as u64, true);
        self.icmp(IntPredicate::EQ, a, c)
    }

    pub fn and(&self, a: IntValue<'c>, b: IntValue<'c>) -> IntValue<'c> {
        ok(self.b.build_and(a, b, ""))
    }

    pub fn or(&self, a: IntValue<'c>, b: IntValue<'c>) -> IntValue<'c> {
        ok(self.b.build_or(a, b, ""))
    }

    pub fn not(&self, a: IntValue<'c>) -> IntValue<'c> {
        ok(self.b.build_not(a, ""))
    }

    pub fn select<V: BasicValue<'c>>(&self, c: IntValue<'c>, a: V, b: V) -> BasicValueEnum<'c> {
        ok(self.b.build_select(c, a, b, ""))
    }

    pub fn seli(&self, c: IntValue<'c>, a: IntValue<'c>, b: IntValue<'c>) -> IntValue<'c> {
        self.select(c, a, b).into_int_value()
    }

    pub fn self_f(&self, c: IntValue<'c>, a: FloatValue<'c>, b: FloatValue<'c>) -> FloatValue<'c> {
        self.select(c, a, b).into_float_value()
    }

    pub fn smin(&self, a: IntValue<'c>, b: IntValue<'c>) -> IntValue<'c> {
        let c = self.lt(a, b);
        self.seli(c, a, b)
    }

    pub fn smax(&self, a: IntValue<'c>, b: IntValue<'c>) -> IntValue<'c> {
        let c = self.lt(a, b);
        self.seli(c, b, a)
    }

    pub fn sext64(&self, a: IntValue<'c>) -> IntValue<'c> {
        if a.get_type().get_bit_width() == 64 {
            return a;
        }
        ok(self.b.build_int_s_extend(a, self.i64t, ""))
    }

    pub fn zext64(&self, a: IntValue<'c>) -> IntValue<'c> {
        if a.get_type().get_bit_width() == 64 {
            return a;
        }
        ok(self.b.build_int_z_extend(a, self.i64t, ""))
    }

    pub fn trunc32(&self, a: IntValue<'c>) -> IntValue<'c> {
        if a.get_type().get_bit_width() == 32 {
            return a;
        }
        ok(self.b.build_int_truncate(a, self.i32t, ""))
    }

    pub fn fadd(&self, a: FloatValue<'c>, b: FloatValue<'c>) -> FloatValue<'c> {
        ok(self.b.build_float_add(a, b, ""))
    }

    pub fn fsub(&self, a: FloatValue<'c>, b: FloatValue<'c>) -> FloatValue<'c> {
        ok(self.b.build_float_sub(a, b, ""))
    }

    pub fn fmul(&self, a: FloatValue<'c>, b: FloatValue<'c>) -> FloatValue<'c> {
        ok(self.b.build_float_mul(a, b, ""))
    }

    pub fn fdiv(&self, a: FloatValue<'c>, b: FloatValue<'c>) -> FloatValue<'c> {
        ok(self.b.build_float_div(a, b, ""))
    }

    pub fn fcmp(&self, p: FloatPredicate, a: FloatValue<'c>, b: FloatValue<'c>) -> IntValue<'c> {
        ok(self.b.build_float_compare(p, a, b, ""))
    }

    pub fn fmax(&self, a: FloatValue<'c>, b: FloatValue<'c>) -> FloatValue<'c> {
        let c = self.fcmp(FloatPredicate::OGT, a, b);
        self.self_f(c, a, b)
    }

    // ---- variables and control flow ----------------------------------------------------

    /// A variable in the entry block (promoted to registers by mem2reg).
    pub fn var(&self, ty: BasicTypeEnum<'c>, init: BasicValueEnum<'c>) -> Var<'c> {
        let here = self.b.get_insert_block();
        let tmp = self.cx.create_builder();
        match self.entry.get_first_instruction() {
            Some(i) => tmp.position_before(&i),
            None => tmp.position_at_end(self.entry),
        }
        let ptr = ok(tmp.build_alloca(ty, ""));
        if let Some(h) = here {
            self.b.position_at_end(h);
        }
        ok(self.b.build_store(ptr, init));
        Var { ptr, ty }
    }

    pub fn get(&self, v: Var<'c>) -> BasicValueEnum<'c> {
        ok(self.b.build_load(v.ty, v.ptr, ""))
    }

    pub fn geti(&self, v: Var<'c>) -> IntValue<'c> {
        self.get(v).into_int_value()
    }

    pub fn getf(&self, v: Var<'c>) -> FloatValue<'c> {
        self.get(v).into_float_value()
    }

    pub fn set<V: BasicValue<'c>>(&self, v: Var<'c>, x: V) {
        ok(self.b.build_store(v.ptr, x));
    }

    pub fn block(&self, name: &str) -> BasicBlock<'c> {
        self.cx.append_basic_block(self.f, name)
    }

    /// `if cond { then }`
    pub fn if_then(&self, cond: IntValue<'c>, then: &mut dyn FnMut(&Gen<'c>)) {
        let t = self.block("then");
        let done = self.block("endif");
        ok(self.b.build_conditional_branch(cond, t, done));
        self.b.position_at_end(t);
        then(self);
        ok(self.b.build_unconditional_branch(done));
        self.b.position_at_end(done);
    }

    /// `while cond() { body() }`
    pub fn while_loop(
        &self,
        cond: &mut dyn FnMut(&Gen<'c>) -> IntValue<'c>,
        body: &mut dyn FnMut(&Gen<'c>),
    ) {
        let head = self.block("while");
        let bodyb = self.block("do");
        let exit = self.block("wend");
        ok(self.b.build_unconditional_branch(head));
        self.b.position_at_end(head);
        let c = cond(self);
        ok(self.b.build_conditional_branch(c, bodyb, exit));
        self.b.position_at_end(bodyb);
        body(self);
        ok(self.b.build_unconditional_branch(head));
        self.b.position_at_end(exit);
    }

    /// `for i in lo..hi` (i32).
    pub fn for_range(
        &self,
        lo: IntValue<'c>,
        hi: IntValue<'c>,
        body: &mut dyn FnMut(&Gen<'c>, IntValue<'c>),
    ) {
        self.for_step(lo, hi, 1, body)
    }

    // ---- intrinsics --------------------------------------------------------------------

    fn intrinsic(
        &self,
        name: &str,
        ret: BasicTypeEnum<'c>,
        params: &[BasicTypeEnum<'c>],
    ) -> FunctionValue<'c> {
        if let Some(f) = self.m.get_function(name) {
            return f;
        }
        let p: Vec<_> = params.iter().map(|t| (*t).into()).collect();
        self.m.add_function(name, ret.fn_type(&p, false), None)
    }

    fn call(&self, f: FunctionValue<'c>, args: &[BasicValueEnum<'c>]) -> BasicValueEnum<'c> {
        let a: Vec<_> = args.iter().map(|x| (*x).into()).collect();
        ok(self.b.build_call(f, &a, ""))
            .try_as_basic_value()
            .basic()
            .expect("intrinsic returns a value")
    }

    /// `threadIdx.x`, `blockIdx.{x,y,z}`
    pub fn sreg(&self, name: &str) -> IntValue<'c> {
        let f = self.intrinsic(
            &format!("llvm.nvvm.read.ptx.sreg.{name}"),
            self.i32t.into(),
            &[],
        );
        self.call(f, &[]).into_int_value()
    }

    /// A call of the intrinsic `name` that takes nothing and returns nothing.
    fn call_void(&self, name: &str) {
        let f = self.m.get_function(name).unwrap_or_else(|| {
            self.m
                .add_function(name, self.cx.void_type().fn_type(&[], false), None)
        });
        ok(self.b.build_call(f, &[], ""));
    }

    /// `__syncthreads()` (LLVM 19's name for it).
    pub fn barrier(&self) {
        self.call_void("llvm.nvvm.barrier0");
    }

    /// `__shfl_xor_sync(0xffffffff, x, lane_mask)` on f32.
    pub fn shfl_xor(&self, x: FloatValue<'c>, lane_mask: i64) -> FloatValue<'c> {
        let f = self.intrinsic(
            "llvm.nvvm.shfl.sync.bfly.f32",
            self.f32t.into(),
            &[
                self.i32t.into(),
                self.f32t.into(),
                self.i32t.into(),
                self.i32t.into(),
            ],
        );
        let all = self.i32(-1);
        self.call(
            f,
            &[
                all.into(),
                x.into(),
                self.i32(lane_mask).into(),
                self.i32(31).into(),
            ],
        )
        .into_float_value()
    }

    /// `2^x`, approximate (ex2.approx.ftz.f32): -inf gives +0.
    pub fn ex2(&self, x: FloatValue<'c>) -> FloatValue<'c> {
        let f = self.intrinsic(
            "llvm.nvvm.ex2.approx.ftz.f",
            self.f32t.into(),
            &[self.f32t.into()],
        );
        self.call(f, &[x.into()]).into_float_value()
    }

    /// `log2(x)`, approximate.
    pub fn lg2(&self, x: FloatValue<'c>) -> FloatValue<'c> {
        let f = self.intrinsic(
            "llvm.nvvm.lg2.approx.f",
            self.f32t.into(),
            &[self.f32t.into()],
        );
        self.call(f, &[x.into()]).into_float_value()
    }

    pub fn sqrt(&self, x: FloatValue<'c>) -> FloatValue<'c> {
        let f = self.intrinsic("llvm.sqrt.f32", self.f32t.into(), &[self.f32t.into()]);
        self.call(f, &[x.into()]).into_float_value()
    }
}

// ---- memory and warp-level helpers for the decode kernels ------------------------------

impl<'c> Gen<'c> {
    /// `&base[index]` with elements of type `ty` (index i32 or i64, sign-extended).
    pub fn gep(
        &self,
        ty: BasicTypeEnum<'c>,
        base: PointerValue<'c>,
        index: IntValue<'c>,
    ) -> PointerValue<'c> {
        let i = self.sext64(index);
        // SAFETY (LLVM): an in-bounds address is the caller's contract: indices come from
        // the schedule tables uploaded with the kernel, or are clamped to the buffer's
        // extent before they are formed (inputs, the decode kernels).
        unsafe { ok(self.b.build_gep(ty, base, &[i], "")) }
    }

    /// `base[index]` for an i32 buffer.
    pub fn ld_i32(&self, base: PointerValue<'c>, index: IntValue<'c>) -> IntValue<'c> {
        let p = self.gep(self.i32t.into(), base, index);
        ok(self.b.build_load(self.i32t, p, "")).into_int_value()
    }

    /// `base[index]` for an f32 buffer.
    pub fn ld_f32(&self, base: PointerValue<'c>, index: IntValue<'c>) -> FloatValue<'c> {
        let p = self.gep(self.f32t.into(), base, index);
        ok(self.b.build_load(self.f32t, p, "")).into_float_value()
    }

    /// `base[index..index + 4]` as one volatile 16-byte load (`index` a multiple of 4 on a
    /// 16-byte aligned buffer): LLVM neither hoists it out of a loop nor merges it with
    /// another, so that a loop body's loads of a shared-memory tile stay in the body.
    pub fn ld_f32x4_volatile(
        &self,
        base: PointerValue<'c>,
        index: IntValue<'c>,
    ) -> [FloatValue<'c>; 4] {
        let p = self.gep(self.f32t.into(), base, index);
        let load = ok(self.b.build_load(self.f32t.vec_type(4), p, ""));
        if let Some(inst) = load.as_instruction_value() {
            let _ = inst.set_alignment(16);
            let _ = inst.set_volatile(true);
        }
        let v = load.into_vector_value();
        std::array::from_fn(|e| {
            ok(self.b.build_extract_element(v, self.i32(e as i64), "")).into_float_value()
        })
    }

    /// `base[index]` for a 16-bit buffer (bf16 or f16 bits).
    pub fn ld_i16(&self, base: PointerValue<'c>, index: IntValue<'c>) -> IntValue<'c> {
        let t = self.cx.i16_type();
        let p = self.gep(t.into(), base, index);
        ok(self.b.build_load(t, p, "")).into_int_value()
    }

    pub fn st_i16(&self, base: PointerValue<'c>, index: IntValue<'c>, v: IntValue<'c>) {
        let p = self.gep(self.cx.i16_type().into(), base, index);
        ok(self.b.build_store(p, v));
    }

    pub fn st_i32(&self, base: PointerValue<'c>, index: IntValue<'c>, v: IntValue<'c>) {
        let p = self.gep(self.i32t.into(), base, index);
        ok(self.b.build_store(p, v));
    }

    pub fn st_f32(&self, base: PointerValue<'c>, index: IntValue<'c>, v: FloatValue<'c>) {
        let p = self.gep(self.f32t.into(), base, index);
        ok(self.b.build_store(p, v));
    }

    /// `n` consecutive 16-bit elements from `base[index..]` (aligned to `2n` bytes when `n`
    /// is a power of two), widened to f32: bf16 when `bf16`, else f16.
    pub fn ld_half_vec(
        &self,
        base: PointerValue<'c>,
        index: IntValue<'c>,
        n: u32,
        bf16: bool,
    ) -> Vec<FloatValue<'c>> {
        let i16t = self.cx.i16_type();
        let p = self.gep(i16t.into(), base, index);
        if bf16 && n % 2 == 0 && n.is_power_of_two() {
            // bf16 pairs as 32-bit words: the low value is `w << 16`, the high one
            // `w & 0xffff0000`, one instruction each (no 16-bit moves).
            let vt = self.i32t.vec_type(n / 2);
            let load = ok(self.b.build_load(vt, p, ""));
            if let Some(inst) = load.as_instruction_value() {
                let _ = inst.set_alignment(2 * n);
            }
            let vec = load.into_vector_value();
            return (0..n / 2)
                .flat_map(|e| {
                    let w = ok(self.b.build_extract_element(vec, self.i32(e as i64), ""))
                        .into_int_value();
                    let lo = ok(self.b.build_left_shift(w, self.i32(16), ""));
                    let hi = self.and(w, self.i32(0xffff_0000u32 as i64));
                    [self.f32_from_bits(lo), self.f32_from_bits(hi)]
                })
                .collect();
        }
        let vt = i16t.vec_type(n);
        let load = ok(self.b.build_load(vt, p, ""));
        let align = if n.is_power_of_two() { 2 * n } else { 2 };
        if let Some(inst) = load.as_instruction_value() {
            let _ = inst.set_alignment(align);
        }
        let vec = load.into_vector_value();
        (0..n)
            .map(|e| {
                let x =
                    ok(self.b.build_extract_element(vec, self.i32(e as i64), "")).into_int_value();
                self.half_to_f32(x, bf16)
            })
            .collect()
    }

    /// A 16-bit value (bf16 or f16 bits) as f32, exactly.
    pub fn half_to_f32(&self, bits: IntValue<'c>, bf16: bool) -> FloatValue<'c> {
        if bf16 {
            let w = ok(self.b.build_int_z_extend(bits, self.i32t, ""));
            let w = ok(self.b.build_left_shift(w, self.i32(16), ""));
            ok(self.b.build_bit_cast(w, self.f32t, "")).into_float_value()
        } else {
            let h = ok(self.b.build_bit_cast(bits, self.cx.f16_type(), "")).into_float_value();
            ok(self.b.build_float_ext(h, self.f32t, ""))
        }
    }

    pub fn f32_bits(&self, x: FloatValue<'c>) -> IntValue<'c> {
        ok(self.b.build_bit_cast(x, self.i32t, "")).into_int_value()
    }

    /// A shared-memory array of `n` elements of `ty`, uninitialised at launch.
    pub fn shared_array(&self, name: &str, ty: BasicTypeEnum<'c>, n: u32) -> PointerValue<'c> {
        let at = ty.array_type(n);
        let g = self
            .m
            .add_global(at, Some(inkwell::AddressSpace::from(3u16)), name);
        g.set_linkage(inkwell::module::Linkage::Internal);
        g.set_initializer(&at.get_undef());
        g.set_alignment(16);
        g.as_pointer_value()
    }

    /// `__threadfence()` (membar.gl): this thread's global writes are seen by the whole GPU
    /// before its later ones.
    pub fn fence_gpu(&self) {
        self.call_void("llvm.nvvm.membar.gl");
    }

    /// `atomicAdd(p, v)` on a u32; the old value (unused, it becomes a reduction).
    pub fn atomic_add_i32(&self, p: PointerValue<'c>, v: IntValue<'c>) -> IntValue<'c> {
        ok(self.b.build_atomicrmw(
            inkwell::AtomicRMWBinOp::Add,
            p,
            v,
            inkwell::AtomicOrdering::Monotonic,
        ))
    }

    /// The sum of `v` over aligned groups of `lanes` lanes (a power of two), by a butterfly
    /// with offsets `lanes/2, ..., 2, 1`; every lane gets its group's sum.
    pub fn lane_sum(&self, v: FloatValue<'c>, lanes: u32) -> FloatValue<'c> {
        self.lane_fold(v, lanes, &|g, a, b| g.fadd(a, b))
    }

    /// The maximum (maxNum: NaN ignored) of `v` over aligned groups of `lanes` lanes, in
    /// every lane.
    pub fn lane_max(&self, v: FloatValue<'c>, lanes: u32) -> FloatValue<'c> {
        self.lane_fold(v, lanes, &|g, a, b| g.maxnum(a, b))
    }

    /// `op` over aligned groups of `lanes` lanes by a butterfly (offsets `lanes/2, ..., 1`).
    fn lane_fold(
        &self,
        mut v: FloatValue<'c>,
        lanes: u32,
        op: &dyn Fn(&Gen<'c>, FloatValue<'c>, FloatValue<'c>) -> FloatValue<'c>,
    ) -> FloatValue<'c> {
        let mut off = lanes / 2;
        while off >= 1 {
            v = op(self, v, self.shfl_xor(v, off as i64));
            off /= 2;
        }
        v
    }

    /// `__shfl_up_sync(0xffffffff, x, delta)` on i32: lanes below `delta` keep their own.
    pub fn shfl_up_i32(&self, x: IntValue<'c>, delta: i64) -> IntValue<'c> {
        let f = self.intrinsic(
            "llvm.nvvm.shfl.sync.up.i32",
            self.i32t.into(),
            &[self.i32t.into(); 4],
        );
        let args = [self.i32(-1), x, self.i32(delta), self.i32(0)];
        let a: Vec<BasicValueEnum> = args.iter().map(|v| (*v).into()).collect();
        self.call(f, &a).into_int_value()
    }

    /// `__shfl_sync(0xffffffff, x, lane)` on i32.
    pub fn shfl_idx_i32(&self, x: IntValue<'c>, lane: IntValue<'c>) -> IntValue<'c> {
        let f = self.intrinsic(
            "llvm.nvvm.shfl.sync.idx.i32",
            self.i32t.into(),
            &[self.i32t.into(); 4],
        );
        let args = [self.i32(-1), x, lane, self.i32(31)];
        let a: Vec<BasicValueEnum> = args.iter().map(|v| (*v).into()).collect();
        self.call(f, &a).into_int_value()
    }

    /// `__ballot_sync(0xffffffff, p)`: bit `l` set where lane `l` holds `p`.
    pub fn ballot(&self, p: IntValue<'c>) -> IntValue<'c> {
        let f = self.intrinsic(
            "llvm.nvvm.vote.ballot.sync",
            self.i32t.into(),
            &[self.i32t.into(), self.cx.bool_type().into()],
        );
        self.call(f, &[self.i32(-1).into(), p.into()])
            .into_int_value()
    }

    /// The index of the lowest set bit of `x` (32 for 0).
    pub fn ctz(&self, x: IntValue<'c>) -> IntValue<'c> {
        let f = self.intrinsic(
            "llvm.cttz.i32",
            self.i32t.into(),
            &[self.i32t.into(), self.cx.bool_type().into()],
        );
        let no = self.cx.bool_type().const_int(0, false);
        self.call(f, &[x.into(), no.into()]).into_int_value()
    }

    /// `base[index]` read past the L1 (a volatile load): sees what other blocks wrote
    /// (after their fence).
    pub fn ld_i32_volatile(&self, base: PointerValue<'c>, index: IntValue<'c>) -> IntValue<'c> {
        let p = self.gep(self.i32t.into(), base, index);
        let v = ok(self.b.build_load(self.i32t, p, ""));
        if let Some(i) = v.as_instruction_value() {
            let _ = i.set_volatile(true);
        }
        v.into_int_value()
    }

    /// `__nanosleep(ns)`: a waiting thread gives its issue slots up for about `ns`.
    pub fn nanosleep(&self, ns: u32) {
        super::asm::Asm::new(format!("nanosleep.u32 {ns};"))
            .volatile()
            .emit(self.cx, &self.b, &[]);
    }

    /// `__match_any_sync(0xffffffff, x)`: the lanes holding the same value.
    pub fn match_any(&self, x: IntValue<'c>) -> IntValue<'c> {
        let f = self.intrinsic(
            "llvm.nvvm.match.any.sync.i32",
            self.i32t.into(),
            &[self.i32t.into(), self.i32t.into()],
        );
        self.call(f, &[self.i32(-1).into(), x.into()])
            .into_int_value()
    }

    pub fn popc(&self, x: IntValue<'c>) -> IntValue<'c> {
        let f = self.intrinsic("llvm.ctpop.i32", self.i32t.into(), &[self.i32t.into()]);
        self.call(f, &[x.into()]).into_int_value()
    }

    /// `a * b + c` rounded once (fma.rn.f32).
    pub fn fma(&self, a: FloatValue<'c>, b: FloatValue<'c>, c: FloatValue<'c>) -> FloatValue<'c> {
        let f = self.intrinsic("llvm.fma.f32", self.f32t.into(), &[self.f32t.into(); 3]);
        self.call(f, &[a.into(), b.into(), c.into()])
            .into_float_value()
    }

    /// `floor(x)` (cvt.rmi.f32.f32, exact).
    pub fn floor(&self, x: FloatValue<'c>) -> FloatValue<'c> {
        let f = self.intrinsic("llvm.floor.f32", self.f32t.into(), &[self.f32t.into()]);
        self.call(f, &[x.into()]).into_float_value()
    }

    /// The f32 whose bits are `x`.
    pub fn f32_from_bits(&self, x: IntValue<'c>) -> FloatValue<'c> {
        ok(self.b.build_bit_cast(x, self.f32t, "")).into_float_value()
    }

    /// IEEE maxNum: a NaN operand yields the other (Rust's `f32::max`).
    pub fn maxnum(&self, a: FloatValue<'c>, b: FloatValue<'c>) -> FloatValue<'c> {
        let f = self.intrinsic(
            "llvm.maxnum.f32",
            self.f32t.into(),
            &[self.f32t.into(), self.f32t.into()],
        );
        self.call(f, &[a.into(), b.into()]).into_float_value()
    }

    /// `if cond { then } else { other }`
    pub fn if_else(
        &self,
        cond: IntValue<'c>,
        then: &mut dyn FnMut(&Gen<'c>),
        other: &mut dyn FnMut(&Gen<'c>),
    ) {
        let t = self.block("then");
        let e = self.block("else");
        let done = self.block("endif");
        ok(self.b.build_conditional_branch(cond, t, e));
        self.b.position_at_end(t);
        then(self);
        ok(self.b.build_unconditional_branch(done));
        self.b.position_at_end(e);
        other(self);
        ok(self.b.build_unconditional_branch(done));
        self.b.position_at_end(done);
    }

    /// `for i in (lo..hi).step_by(step)` (i32, `step` > 0).
    pub fn for_step(
        &self,
        lo: IntValue<'c>,
        hi: IntValue<'c>,
        step: i64,
        body: &mut dyn FnMut(&Gen<'c>, IntValue<'c>),
    ) {
        let i = self.var(lo.get_type().as_basic_type_enum(), lo.into());
        self.while_loop(
            &mut |g| {
                let x = g.geti(i);
                g.lt(x, hi)
            },
            &mut |g| {
                let x = g.geti(i);
                body(g, x);
                let n = g.addi(x, step);
                g.set(i, n);
            },
        );
    }
}
