//! The calling convention of a compiled CPU kernel.
//!
//! One function per kernel computes one (batch, head, query tile):
//! `extern "C" fn(ctx: *const Ctx, batch: i64, head: i64, query_tile: i64, scratch: *mut u8)`.
//! Tensors are f32, `[batch, heads, tokens, dim]`, contiguous, tokens in the layout's order.

/// Everything a call reads besides its indices; built by the runtime.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Ctx {
    pub q: *const f32,
    pub k: *const f32,
    pub v: *const f32,
    pub o: *mut f32,
    /// Per head variant: the schedule's CSR row offsets (`total_tiles + 1` u32).
    pub rows: *const *const u32,
    /// Per head variant: the runs, as `(start, len, class)` u32 triples (class 1 = partial).
    pub runs: *const *const u32,
    /// Per query head: its variant.
    pub head_variant: *const u32,
    /// Per declared input: its data (f32, row-major over the declared dims).
    pub inputs: *const *const f32,
    /// `[batch, heads, tokens]` f32, natural log: each query row's log-sum-exp, for a
    /// kernel with `outputs lse;` (null otherwise: such a kernel never reads it).
    pub lse: *mut f32,
}

pub const OFF_Q: i32 = 0;
pub const OFF_K: i32 = 8;
pub const OFF_V: i32 = 16;
pub const OFF_O: i32 = 24;
pub const OFF_ROWS: i32 = 32;
pub const OFF_RUNS: i32 = 40;
pub const OFF_HEAD_VARIANT: i32 = 48;
pub const OFF_INPUTS: i32 = 56;
pub const OFF_LSE: i32 = 64;

/// The kernel entry point.
pub type KernelFn =
    unsafe extern "C" fn(ctx: *const Ctx, batch: i64, head: i64, query_tile: i64, scratch: *mut u8);

/// Alignment of the scratch buffer (bytes).
pub const SCRATCH_ALIGN: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_match_the_struct() {
        let c = Ctx {
            q: std::ptr::null(),
            k: std::ptr::null(),
            v: std::ptr::null(),
            o: std::ptr::null_mut(),
            rows: std::ptr::null(),
            runs: std::ptr::null(),
            head_variant: std::ptr::null(),
            inputs: std::ptr::null(),
            lse: std::ptr::null_mut(),
        };
        let base = &c as *const Ctx as usize;
        assert_eq!(&c.k as *const _ as usize - base, OFF_K as usize);
        assert_eq!(&c.o as *const _ as usize - base, OFF_O as usize);
        assert_eq!(&c.runs as *const _ as usize - base, OFF_RUNS as usize);
        assert_eq!(&c.inputs as *const _ as usize - base, OFF_INPUTS as usize);
        assert_eq!(&c.lse as *const _ as usize - base, OFF_LSE as usize);
        assert_eq!(std::mem::size_of::<Ctx>(), 72);
        let _ = OFF_Q + OFF_V + OFF_ROWS + OFF_HEAD_VARIANT;
    }
}
