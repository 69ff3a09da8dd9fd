//! The one place inline PTX is written. An instruction template names its operands by
//! role; the builder numbers them (`$0, $1, ...`, outputs first), derives the LLVM
//! constraints from the operand types (`h` 16-bit, `r` 32-bit, `f` f32, `l` 64-bit) and
//! emits the call, so that no format string with hand-counted operands exists elsewhere.

use inkwell::builder::Builder;
use inkwell::context::Context;
use inkwell::types::{BasicMetadataTypeEnum, BasicType, BasicTypeEnum};
use inkwell::values::{BasicMetadataValueEnum, BasicValueEnum};
use inkwell::InlineAsmDialect;

/// The register class of an operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reg {
    /// 32-bit integer (also packed bf16x2 / f16x2, shared addresses).
    R,
    /// f32.
    F,
    /// 64-bit integer (global addresses).
    L,
}

impl Reg {
    fn constraint(self) -> char {
        match self {
            Reg::R => 'r',
            Reg::F => 'f',
            Reg::L => 'l',
        }
    }

    fn ty<'c>(self, cx: &'c Context) -> BasicTypeEnum<'c> {
        match self {
            Reg::R => cx.i32_type().as_basic_type_enum(),
            Reg::F => cx.f32_type().as_basic_type_enum(),
            Reg::L => cx.i64_type().as_basic_type_enum(),
        }
    }
}

/// One PTX instruction (or a short sequence) with typed operands.
pub struct Asm {
    /// The text with `{out0}`-style placeholders replaced by `$n` at build time: outputs are
    /// written `{o0}`, `{o1}`, ...; inputs `{i0}`, `{i1}`, ...
    template: String,
    outputs: Vec<Reg>,
    inputs: Vec<Reg>,
    /// Outputs that are also read (an accumulator): their current values are passed after
    /// the inputs, each tied to its output's register (`"+f"` in C).
    tied: Vec<usize>,
    /// Has side effects (memory, barriers): never removed or reordered.
    volatile: bool,
}

impl Asm {
    pub fn new(template: impl Into<String>) -> Asm {
        Asm {
            template: template.into(),
            outputs: vec![],
            inputs: vec![],
            tied: vec![],
            volatile: false,
        }
    }

    pub fn outputs(mut self, n: usize, r: Reg) -> Asm {
        self.outputs.extend(std::iter::repeat_n(r, n));
        self
    }

    pub fn inputs(mut self, n: usize, r: Reg) -> Asm {
        self.inputs.extend(std::iter::repeat_n(r, n));
        self
    }

    /// `n` outputs of class `r` that are read as well as written (`{o..}` in the text).
    pub fn inouts(mut self, n: usize, r: Reg) -> Asm {
        let first = self.outputs.len();
        self.outputs.extend(std::iter::repeat_n(r, n));
        self.tied.extend(first..first + n);
        self
    }

    pub fn volatile(mut self) -> Asm {
        self.volatile = true;
        self
    }

    /// The PTX text with numbered operands.
    fn text(&self) -> String {
        let mut t = self.template.clone();
        // Replace longer names first so that {o1} does not eat part of {o10}.
        for i in (0..self.outputs.len()).rev() {
            t = t.replace(&format!("{{o{i}}}"), &format!("${i}"));
        }
        for i in (0..self.inputs.len()).rev() {
            t = t.replace(
                &format!("{{i{i}}}"),
                &format!("${}", self.outputs.len() + i),
            );
        }
        t
    }

    fn constraints(&self) -> String {
        let mut c: Vec<String> = self
            .outputs
            .iter()
            .map(|r| format!("={}", r.constraint()))
            .collect();
        c.extend(self.inputs.iter().map(|r| r.constraint().to_string()));
        c.extend(self.tied.iter().map(|o| o.to_string()));
        if self.volatile {
            c.push("~{memory}".into());
        }
        c.join(",")
    }

    /// Emits the call; `args` are the inputs, then the current values of the tied outputs.
    /// Returns the outputs in order.
    pub fn emit<'c>(
        &self,
        cx: &'c Context,
        b: &Builder<'c>,
        args: &[BasicValueEnum<'c>],
    ) -> Vec<BasicValueEnum<'c>> {
        assert_eq!(
            args.len(),
            self.inputs.len() + self.tied.len(),
            "asm `{}`: operand count",
            self.template
        );
        let params: Vec<BasicMetadataTypeEnum> = self
            .inputs
            .iter()
            .chain(self.tied.iter().map(|o| &self.outputs[*o]))
            .map(|r| r.ty(cx).into())
            .collect();
        let fn_ty = match self.outputs.len() {
            0 => cx.void_type().fn_type(&params, false),
            1 => self.outputs[0].ty(cx).fn_type(&params, false),
            _ => {
                let fields: Vec<BasicTypeEnum> = self.outputs.iter().map(|r| r.ty(cx)).collect();
                cx.struct_type(&fields, false).fn_type(&params, false)
            }
        };
        let asm = cx.create_inline_asm(
            fn_ty,
            self.text(),
            self.constraints(),
            self.volatile,
            false,
            Some(InlineAsmDialect::ATT),
            false,
        );
        let margs: Vec<BasicMetadataValueEnum> = args.iter().map(|a| (*a).into()).collect();
        let call = b
            .build_indirect_call(fn_ty, asm, &margs, "")
            .expect("inline asm call");
        match self.outputs.len() {
            0 => vec![],
            1 => vec![call.try_as_basic_value().basic().expect("asm result")],
            n => {
                let s = call
                    .try_as_basic_value()
                    .basic()
                    .expect("asm result")
                    .into_struct_value();
                (0..n as u32)
                    .map(|i| b.build_extract_value(s, i, "").expect("asm field"))
                    .collect()
            }
        }
    }
}

/// The instructions the attention kernel uses.
pub mod ptx {
    use super::{Asm, Reg};

    /// `d = a x b + c` on m16n8k16 tiles, bf16 or f16 inputs, f32 accumulators.
    pub fn mma_m16n8k16(elem: &str) -> Asm {
        Asm::new(
            "mma.sync.aligned.m16n8k16.row.col.f32.ELEM.ELEM.f32 {{o0}, {o1}, {o2}, {o3}}, {{i0}, {i1}, {i2}, {i3}}, {{i4}, {i5}}, {{i6}, {i7}, {i8}, {i9}};"
                .replace("ELEM", elem),
        )
        .outputs(4, Reg::F)
        .inputs(4, Reg::R)
        .inputs(2, Reg::R)
        .inputs(4, Reg::F)
    }

    /// Four 8x8 b16 matrices from shared memory (`trans` for the B operand of `p v`).
    pub fn ldmatrix_x4(trans: bool) -> Asm {
        let t = if trans { ".trans" } else { "" };
        Asm::new(
            "ldmatrix.sync.aligned.m8n8.x4TRANS.shared.b16 {{o0}, {o1}, {o2}, {o3}}, [{i0}];"
                .replace("TRANS", t),
        )
        .outputs(4, Reg::R)
        .inputs(1, Reg::R)
        .volatile()
    }

    /// 16 bytes global -> shared, asynchronously; `size` 0 zero-fills (no read).
    pub fn cp_async_16() -> Asm {
        Asm::new("cp.async.cg.shared.global [{i0}], [{i1}], 16, {i2};")
            .inputs(1, Reg::R)
            .inputs(1, Reg::L)
            .inputs(1, Reg::R)
            .volatile()
    }

    pub fn cp_async_commit() -> Asm {
        Asm::new("cp.async.commit_group;").volatile()
    }

    /// Waits until at most `n` groups are in flight.
    pub fn cp_async_wait(n: u32) -> Asm {
        Asm::new(format!("cp.async.wait_group {n};")).volatile()
    }

    /// One wgmma product: `D (+)= A B` on a warpgroup, A from registers, B by one matrix
    /// descriptor a k step.
    #[derive(Clone, Copy)]
    pub struct Wgmma<'a> {
        pub elem: &'a str,
        pub n: u32,
        pub ksteps: u32,
        /// D is read (tied in/out); else the first step overwrites it.
        pub accumulate: bool,
        /// B is stored MN-major.
        pub trans_b: bool,
        /// A is read from shared memory by descriptor (K-major), one a k step, instead of
        /// four registers a k step.
        pub a_desc: bool,
    }

    impl Wgmma<'_> {
        /// Inputs a k step: A's (four words, or a descriptor) and B's descriptor.
        fn inputs_per_step(&self) -> u32 {
            if self.a_desc {
                2
            } else {
                5
            }
        }
    }

    /// Products issued in one asm block, each committed as a group of its own, then a wait
    /// until at most `pending` groups are in flight (`None`: no wait; the registers of the
    /// groups in flight stay the tensor cores' until a later wait). Fence, issue, commit
    /// and wait in one block, so that nothing the compiler places between them can touch
    /// registers the tensor cores own.
    ///
    /// Inputs: per product its A words (or descriptors) and B descriptors, then the
    /// predicate word (`WGMMA_ACCUMULATE`, or `WGMMA_FRESH` for accumulating products that
    /// start from 0: their first k step ignores D), then the current D of each
    /// accumulating product. Outputs: every product's D, in order.
    pub fn wgmma_block(ps: &[Wgmma], pending: Option<usize>) -> Asm {
        let one: u32 = ps.iter().map(|w| w.inputs_per_step() * w.ksteps).sum();
        // p: bit 0 (set: true), z: its negation (false), a: bit 1.
        let mut t = format!(
            "{{\n.reg .pred p, z, a;\n.reg .b32 w;\nand.b32 w, {{i{one}}}, 1;\nsetp.ne.b32 p, w, 0;\nsetp.eq.b32 z, w, 0;\nand.b32 w, {{i{one}}}, 2;\nsetp.ne.b32 a, w, 0;\nwgmma.fence.sync.aligned;\n"
        );
        let (mut i0, mut o0) = (0, 0);
        for w in ps {
            let d: Vec<String> = (o0..o0 + w.n / 2).map(|i| format!("{{o{i}}}")).collect();
            let d = d.join(", ");
            let a_words = w.inputs_per_step() - 1;
            for k in 0..w.ksteps {
                let scale = match (w.accumulate, k) {
                    (_, 1..) => "p",
                    (true, 0) => "a",
                    (false, 0) => "z",
                };
                // A's descriptor is K-major (imm-trans-a 0).
                let (a, trans_a) = if w.a_desc {
                    (format!("{{i{}}}", i0 + k), "0, ")
                } else {
                    let a: Vec<String> =
                        (0..4).map(|j| format!("{{i{}}}", i0 + 4 * k + j)).collect();
                    (format!("{{{}}}", a.join(", ")), "")
                };
                t += &format!(
                    "wgmma.mma_async.sync.aligned.m64n{}k16.f32.{e}.{e} {{{d}}}, {a}, {{i{}}}, {scale}, 1, 1, {trans_a}{};\n",
                    w.n,
                    i0 + a_words * w.ksteps + k,
                    u32::from(w.trans_b),
                    e = w.elem,
                );
            }
            t += "wgmma.commit_group.sync.aligned;\n";
            i0 += w.inputs_per_step() * w.ksteps;
            o0 += w.n / 2;
        }
        if let Some(n) = pending {
            t += &format!("wgmma.wait_group.sync.aligned {n};\n");
        }
        t += "}";
        let mut a = Asm::new(t);
        for w in ps {
            a = if w.a_desc {
                a.inputs(w.ksteps as usize, Reg::L)
            } else {
                a.inputs(4 * w.ksteps as usize, Reg::R)
            };
            a = a.inputs(w.ksteps as usize, Reg::L);
        }
        a = a.inputs(1, Reg::R).volatile();
        for w in ps {
            a = if w.accumulate {
                a.inouts((w.n / 2) as usize, Reg::F)
            } else {
                a.outputs((w.n / 2) as usize, Reg::F)
            };
        }
        a
    }

    /// `wgmma_block`'s predicate word: accumulating products add to D...
    pub const WGMMA_ACCUMULATE: i64 = 3;
    /// ... or start from 0.
    pub const WGMMA_FRESH: i64 = 1;

    /// Waits until no wgmma group is in flight. The accumulators of the groups in flight
    /// (`carry` f32 registers) pass through tied, so that their readers come after it; the
    /// A words they read (`held`) are inputs, so that their registers stay theirs until then.
    pub fn wgmma_wait(held: usize, carry: usize) -> Asm {
        Asm::new("wgmma.wait_group.sync.aligned 0;")
            .inputs(held, Reg::R)
            .inouts(carry, Reg::F)
            .volatile()
    }

    /// `tid.x` read where it stands: volatile, so that nothing computed from it is hoisted
    /// out of the loop it is read in (where a value kept from before the loop would hold a
    /// register through it).
    pub fn thread_index_here() -> Asm {
        Asm::new("mov.u32 {o0}, %tid.x;")
            .outputs(1, Reg::R)
            .volatile()
    }

    /// Makes this thread's generic-proxy writes to shared memory (cp.async included)
    /// visible to the async proxy (`wgmma` operands).
    pub fn fence_proxy_async() -> Asm {
        Asm::new("fence.proxy.async.shared::cta;").volatile()
    }

    /// `mbarrier.init` of the barrier at a shared address with an arrival count.
    pub fn mbarrier_init() -> Asm {
        Asm::new("mbarrier.init.shared::cta.b64 [{i0}], {i1};")
            .inputs(2, Reg::R)
            .volatile()
    }

    /// Makes barrier initialisations visible to the async proxy (the tensor copies).
    pub fn fence_mbarrier_init() -> Asm {
        Asm::new("fence.mbarrier_init.release.cluster;").volatile()
    }

    /// One arrival on the barrier that also expects `{i1}` bytes of asynchronous copies.
    pub fn mbarrier_arrive_expect_tx() -> Asm {
        Asm::new("mbarrier.arrive.expect_tx.shared::cta.b64 _, [{i0}], {i1};")
            .inputs(2, Reg::R)
            .volatile()
    }

    /// Moves this warpgroup's registers per thread to `n` (a multiple of 8 in 24..=256):
    /// the warp-specialised producer gives registers up, the consumers take them.
    pub fn setmaxnreg(inc: bool, n: u32) -> Asm {
        let dir = if inc { "inc" } else { "dec" };
        Asm::new(format!("setmaxnreg.{dir}.sync.aligned.u32 {n};")).volatile()
    }

    /// `bar.sync id, threads` with the id in a register (named barriers 1 to 15).
    pub fn bar_sync() -> Asm {
        Asm::new("bar.sync {i0}, {i1};")
            .inputs(2, Reg::R)
            .volatile()
    }

    /// `bar.arrive id, threads` where `{i2}` is not 0 (predicated: no branch).
    pub fn bar_arrive_if() -> Asm {
        Asm::new("{\n.reg .pred q;\nsetp.ne.b32 q, {i2}, 0;\n@q bar.arrive {i0}, {i1};\n}")
            .inputs(3, Reg::R)
            .volatile()
    }

    /// One arrival on the barrier (release: this thread's earlier writes are visible to
    /// whoever's wait sees the phase complete).
    pub fn mbarrier_arrive() -> Asm {
        Asm::new("mbarrier.arrive.shared::cta.b64 _, [{i0}];")
            .inputs(1, Reg::R)
            .volatile()
    }

    /// 1 when the barrier's phase with parity `{i1}` has completed, else 0 (returns after a
    /// bounded wait; the caller loops).
    pub fn mbarrier_try_wait() -> Asm {
        Asm::new(
            "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [{i0}], {i1};\nselp.b32 {o0}, 1, 0, p;\n}",
        )
        .outputs(1, Reg::R)
        .inputs(2, Reg::R)
        .volatile()
    }

    /// A 2-D box of a tensor (TMA): tensor map at generic address `{i1}`, coordinates
    /// (`{i2}` inner, `{i3}` outer), into shared memory at `{i0}`, completing bytes on the
    /// barrier at `{i4}`.
    pub fn tma_load_2d() -> Asm {
        Asm::new(
            "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [{i0}], [{i1}, {{i2}, {i3}}], [{i4}];",
        )
        .inputs(1, Reg::R)
        .inputs(1, Reg::L)
        .inputs(3, Reg::R)
        .volatile()
    }

    /// Two f32 -> packed bf16x2 / f16x2 (`lo` in the low half).
    pub fn pack2(elem: &str) -> Asm {
        // cvt puts its first source in the upper half.
        Asm::new("cvt.rn.ELEMx2.f32 {o0}, {i1}, {i0};".replace("ELEM", elem))
            .outputs(1, Reg::R)
            .inputs(2, Reg::F)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operands_are_numbered_outputs_first() {
        let a = ptx::mma_m16n8k16("bf16");
        assert_eq!(
            a.text(),
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {$0, $1, $2, $3}, {$4, $5, $6, $7}, {$8, $9}, {$10, $11, $12, $13};"
        );
        assert_eq!(a.constraints(), "=f,=f,=f,=f,r,r,r,r,r,r,f,f,f,f");
        let c = ptx::cp_async_16();
        assert_eq!(c.text(), "cp.async.cg.shared.global [$0], [$1], 16, $2;");
        assert_eq!(c.constraints(), "r,l,r,~{memory}");
        let p = ptx::pack2("bf16");
        assert_eq!(p.text(), "cvt.rn.bf16x2.f32 $0, $2, $1;");
    }

    #[test]
    fn wgmma_ties_accumulators_and_numbers_steps() {
        let w = |accumulate, trans_b| ptx::Wgmma {
            elem: "bf16",
            n: 16,
            ksteps: 2,
            accumulate,
            trans_b,
            a_desc: false,
        };
        let a = ptx::wgmma_block(&[w(true, true)], Some(0));
        // 8 accumulators, 8 A words, 2 descriptors, the predicate word, 8 tied inputs.
        assert_eq!(
            a.constraints(),
            "=f,=f,=f,=f,=f,=f,=f,=f,r,r,r,r,r,r,r,r,l,l,r,0,1,2,3,4,5,6,7,~{memory}"
        );
        let t = a.text();
        assert!(
            t.contains("and.b32 w, $18, 1;\nsetp.ne.b32 p, w, 0;"),
            "{t}"
        );
        assert!(
            t.contains("and.b32 w, $18, 2;\nsetp.ne.b32 a, w, 0;"),
            "{t}"
        );
        assert!(
            t.contains("wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {$0, $1, $2, $3, $4, $5, $6, $7}, {$8, $9, $10, $11}, $16, a, 1, 1, 1;"),
            "{t}"
        );
        assert!(t.contains("{$12, $13, $14, $15}, $17, p, 1, 1, 1;"), "{t}");
        // Without accumulation the first step ignores D.
        let s = ptx::wgmma_block(&[w(false, false)], Some(0)).text();
        assert!(s.contains("{$8, $9, $10, $11}, $16, z, 1, 1, 0;"), "{s}");
        assert!(s.contains("{$12, $13, $14, $15}, $17, p, 1, 1, 0;"), "{s}");
        assert!(s.contains("wgmma.wait_group.sync.aligned 0;"), "{s}");
        // Two products: S's D is $0-$7, the accumulating one's $8-$15; inputs from $16 (S's
        // A words and descriptors, then the second's), the predicate word $36, the second's
        // D tied after it; each product its own group, the wait leaves the second running.
        let c = ptx::wgmma_block(&[w(false, false), w(true, true)], Some(1));
        let t = c.text();
        assert!(
            t.contains("{$0, $1, $2, $3, $4, $5, $6, $7}, {$16, $17, $18, $19}, $24, z, 1, 1, 0;"),
            "{t}"
        );
        assert!(
            t.contains(
                "{$8, $9, $10, $11, $12, $13, $14, $15}, {$26, $27, $28, $29}, $34, a, 1, 1, 1;"
            ),
            "{t}"
        );
        assert!(t.contains("{$30, $31, $32, $33}, $35, p, 1, 1, 1;"), "{t}");
        assert!(t.contains("and.b32 w, $36, 1;"), "{t}");
        assert_eq!(t.matches("commit_group").count(), 2, "{t}");
        assert!(t.contains("wgmma.wait_group.sync.aligned 1;"), "{t}");
        assert!(
            c.constraints()
                .ends_with(",l,l,r,8,9,10,11,12,13,14,15,~{memory}"),
            "{}",
            c.constraints()
        );
        // No wait at all.
        assert!(!ptx::wgmma_block(&[w(false, false)], None)
            .text()
            .contains("wait_group"));
        // The wait holds A words as inputs and ties the accumulators.
        assert_eq!(
            ptx::wgmma_wait(2, 2).constraints(),
            "=f,=f,r,r,0,1,~{memory}"
        );
        // A by descriptor: one 64-bit input a k step before B's, imm-trans-a 0; S's A
        // descriptors $8-$9, B's $10-$11, the predicate word $12.
        let sd = ptx::wgmma_block(
            &[ptx::Wgmma {
                a_desc: true,
                ..w(false, false)
            }],
            Some(0),
        );
        let t = sd.text();
        assert!(
            t.contains("{$0, $1, $2, $3, $4, $5, $6, $7}, $8, $10, z, 1, 1, 0, 0;"),
            "{t}"
        );
        assert!(t.contains("$9, $11, p, 1, 1, 0, 0;"), "{t}");
        assert!(t.contains("and.b32 w, $12, 1;"), "{t}");
        assert_eq!(
            sd.constraints(),
            "=f,=f,=f,=f,=f,=f,=f,=f,l,l,l,l,r,~{memory}"
        );
    }
}
