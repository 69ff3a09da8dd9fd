//! Functions the generated code calls, registered with the JIT by name.

/// `(name, address)` of every helper.
pub fn symbols() -> Vec<(&'static str, *const u8)> {
    vec![
        ("attnc_tanh", attnc_tanh as *const u8),
        ("attnc_exp", attnc_exp as *const u8),
        ("attnc_exp2", attnc_exp2 as *const u8),
        ("attnc_log", attnc_log as *const u8),
        ("attnc_doc", attnc_doc as *const u8),
    ]
}

extern "C" fn attnc_tanh(x: f64) -> f64 {
    x.tanh()
}

extern "C" fn attnc_exp(x: f64) -> f64 {
    x.exp()
}

extern "C" fn attnc_exp2(x: f64) -> f64 {
    x.exp2()
}

extern "C" fn attnc_log(x: f64) -> f64 {
    x.ln()
}

/// `doc(x, offsets)`: the number of offsets `<= x`, minus one.
extern "C" fn attnc_doc(x: i64, offsets: *const i64, len: i64) -> i64 {
    if offsets.is_null() || len <= 0 {
        return -1;
    }
    // SAFETY: `offsets` points at `len` i64 values owned by the compiled module
    // (`expr::Data`), which outlives every call of its code.
    let offs = unsafe { std::slice::from_raw_parts(offsets, len as usize) };
    crate::sema::eval::doc_index(x, offs)
}
