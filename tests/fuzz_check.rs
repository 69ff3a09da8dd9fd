//! Fuzz-style test on stable Rust: at least 10,000 inputs (the fixtures, the shipped kernels
//! and the docs' examples, mutated at random with a fixed seed) go through `check`. None
//! may panic, and every diagnostic's span must lie inside its file. A failing input is
//! written to `target/fuzz-failure.attn` for reproduction. For a longer run:
//! `ATTNC_FUZZ_INPUTS=200000 ATTNC_FUZZ_SEED=7 cargo test -p attnc-tests --test fuzz_check`
//! (`ATTNC_FUZZ_TRACE=1` writes each input to `target/fuzz-current.attn` first, to catch
//! one that hangs).

use std::panic::{catch_unwind, AssertUnwindSafe};

use attnc::driver::{self, Source};
use attnc_tests::{attn_files, kernel_files, root, spans_inside};

const INPUTS: usize = 10_000;
/// Analysis work per input: small, so that mutated sizes fail fast instead of running long.
const BUDGET: u64 = 1 << 22;

const VOCAB: &[&str] = &[
    "layout",
    "pattern",
    "kernel",
    "param",
    "per_head",
    "canvas",
    "tile",
    "order",
    "tiled",
    "raster",
    "segment",
    "prefix",
    "suffix",
    "valid",
    "on",
    "tiles:",
    "tokens:",
    "see",
    "->",
    "attention",
    "dtype",
    "score:",
    "input",
    "heads",
    "kv_heads",
    "head_dim",
    "value_dim",
    "batch",
    "scale",
    "window",
    "abs",
    "min",
    "max",
    "clamp",
    "doc",
    "tanh",
    "(",
    ")",
    "{",
    "}",
    "[",
    "]",
    ";",
    ",",
    ":",
    "=",
    "==",
    "!=",
    "<=",
    ">=",
    "<",
    ">",
    "&&",
    "||",
    "!",
    "+",
    "-",
    "*",
    "/",
    "%",
    "0",
    "1",
    "-1",
    "7",
    "64",
    "4096",
    "99999999999",
    "9223372036854775807",
    "1.5",
    "1e400",
    "qh",
    "kh",
    "dh",
    "nh",
    "qw",
    "kw",
    "dw",
    "qt",
    "dt",
    "qx",
    "kx",
    "qi",
    "ki",
    "h",
    "b",
    "score",
    "R",
    "H",
    "W",
    "T",
    "TEXT",
    "HEADS",
    "all",
    "canvas",
    "text",
    "bf16",
    "f16",
    "f32",
    "stride:",
    "dilation:",
    // Attention outputs and the selection language.
    "outputs",
    "lse",
    "select",
    "decode",
    "source",
    "exact",
    "window_lse",
    "accumulated",
    "page_bound",
    "external",
    "key_norm",
    "reduce",
    "rows:",
    "heads:",
    "per_kv_group",
    "shared",
    "sum",
    "mean",
    "pool",
    "avg",
    "granularity",
    "token",
    "page",
    "budget",
    "tokens",
    "ratio",
    "keep",
    "sinks",
    "recent",
    "output",
    "indices",
    "compacted",
    "BUDGET",
    "CONTEXT",
    "PAGE",
    "//",
    "/*",
    "*/",
    "\n",
    " ",
    "é",
    "\u{0}",
];

fn mutate(rng: &mut fastrand::Rng, text: &str) -> String {
    let mut s: Vec<char> = text.chars().collect();
    for _ in 0..rng.usize(1..=4) {
        let len = s.len();
        let at = if len == 0 { 0 } else { rng.usize(0..=len) };
        match rng.u8(0..7) {
            0 if len > 0 => {
                let end = (at + rng.usize(1..=12)).min(len);
                s.drain(at.min(len)..end);
            }
            1 | 2 => {
                let w = VOCAB[rng.usize(0..VOCAB.len())];
                let piece = if rng.bool() {
                    format!(" {w} ")
                } else {
                    w.to_string()
                };
                s.splice(at..at, piece.chars());
            }
            3 if len > 0 => {
                // Duplicate a slice.
                let start = rng.usize(0..len);
                let end = (start + rng.usize(1..=40)).min(len);
                let copy: Vec<char> = s[start..end].to_vec();
                s.splice(at..at, copy);
            }
            4 => {
                // Replace a number with an extreme one.
                let nums = [
                    "0",
                    "1",
                    "-3",
                    "100000",
                    "1048577",
                    "2147483648",
                    "-9223372036854775808",
                ];
                if let Some(pos) = (0..len)
                    .map(|i| (i + at) % len.max(1))
                    .find(|i| s.get(*i).is_some_and(|c| c.is_ascii_digit()))
                {
                    let mut end = pos;
                    while end < len && s[end].is_ascii_digit() {
                        end += 1;
                    }
                    let n = nums[rng.usize(0..nums.len())];
                    s.splice(pos..end, n.chars());
                }
            }
            5 if len > 1 => {
                // Swap two single characters.
                let (i, j) = (rng.usize(0..len), rng.usize(0..len));
                s.swap(i, j);
            }
            _ => {
                let c = char::from(rng.u8(32..127));
                s.insert(at.min(s.len()), c);
            }
        }
    }
    s.into_iter().collect()
}

fn corpus() -> Vec<String> {
    let mut files = kernel_files();
    files.extend(attn_files(&root().join("tests/fixtures/ok")));
    files.extend(attn_files(&root().join("tests/fixtures/err")));
    let mut texts: Vec<String> = files
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect();
    // Small, sized-down seeds so that mutations also reach analysis quickly.
    texts.push("layout l { canvas (16, 16); tile (4, 4); segment text prefix 8 valid 5; }\npattern p on l { tiles: abs(dh) <= 1 || dw == 0; tokens: kh <= qh; see text -> all; see all -> text; }\nkernel k = attention(p) { heads 4; kv_heads 2; score: tanh(score / 30.0) * 30.0; }\n".into());
    // Found by a 400,000-input run (seed 11): a segment of 121 million tokens made the
    // schedule visit every one of its key tiles for every query tile, unbudgeted, for
    // minutes; now the budget stops it.
    texts.push("layout l { param H = 32, W = 32; canvas (H, W); tile (8, 8); segment text prefix 121048577 valid 77; }\npattern p on l { tiles: abs(dh) <= 1 && abs(dw) <= 1; see text -> all; see all -> text; }\nkernel k = attention(p) { heads 8; }\n".into());
    texts.push("param N = 64;\nlayout s { canvas (N); tile (8); order raster; }\npattern c on s { tiles: window(x, 1, stride: 2); tokens: kx <= qx; }\nkernel k = attention(c) { R = 1; }\n".into());
    texts
}

#[test]
fn ten_thousand_mutated_inputs_never_panic() {
    let corpus = corpus();
    assert!(!corpus.is_empty());
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let inputs = env("ATTNC_FUZZ_INPUTS").map_or(INPUTS, |n| n as usize);
    let mut rng = fastrand::Rng::with_seed(env("ATTNC_FUZZ_SEED").unwrap_or(0x5eed_a77c));
    let trace = std::env::var_os("ATTNC_FUZZ_TRACE").is_some();
    let mut errors = 0usize;
    for i in 0..inputs {
        let base = &corpus[i % corpus.len()];
        let text = if i < corpus.len() {
            base.clone()
        } else {
            mutate(&mut rng, base)
        };
        if trace {
            // The input under test, for one that hangs (ATTNC_FUZZ_TRACE=1).
            let _ = std::fs::write(root().join("target/fuzz-current.attn"), &text);
        }
        let src = Source::new("fuzz.attn", text.clone());
        let result = catch_unwind(AssertUnwindSafe(|| {
            driver::check_with_budget(&src, &[], BUDGET)
        }));
        let diags = match result {
            Ok(d) => d,
            Err(_) => {
                let _ = std::fs::write(root().join("target/fuzz-failure.attn"), &text);
                panic!("input {i} panicked (written to target/fuzz-failure.attn):\n{text}");
            }
        };
        if let Err(e) = spans_inside(&diags, text.len()) {
            let _ = std::fs::write(root().join("target/fuzz-failure.attn"), &text);
            panic!("input {i}: {e}\n{text}");
        }
        // Rendering must not panic either.
        let _ = src.render(&diags, false);
        errors += usize::from(attnc::diagnostic::has_errors(&diags));
    }
    // The mutations must actually exercise the error paths.
    assert!(
        errors > inputs / 4,
        "only {errors} of {inputs} inputs had errors"
    );
}
