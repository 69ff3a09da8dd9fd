//! The steps of a selection kernel in execution order, each with the tensor it produces and
//! the bytes it moves at a full cache (`len = CONTEXT`). `--emit plan` prints it and
//! `attnc explain` summarises it: it is where the cost of a selection policy shows.

use std::fmt::Write;

use super::spec::{
    reduce_name, source_name, Budget, HeadReduce, KernelKind, Output, Pool, SelectSpec, Source,
};

#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// Short name: `score`, `reduce`, `pool`, `pages`, `topk`, `attend`, `combine`, `update`.
    pub name: &'static str,
    /// What it computes, in words with shapes.
    pub what: String,
    /// Bytes read from and written to memory (cache, metadata, scores, indices).
    pub read: u64,
    pub written: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SelectPlan {
    pub steps: Vec<Step>,
    /// Bytes a dense decode step reads (all of K and V), the yardstick.
    pub dense_bytes: u64,
    /// Tokens the attention reads per sequence and selection head at most.
    pub attended_tokens: u64,
}

impl SelectPlan {
    pub fn total_bytes(&self) -> u64 {
        self.steps.iter().map(|s| s.read + s.written).sum()
    }
}

pub fn plan(s: &SelectSpec) -> SelectPlan {
    let b = s.batch as u64;
    let hq = s.q_heads as u64;
    let hkv = s.kv_heads as u64;
    let hsel = s.sel_heads() as u64;
    let d = s.head_dim as u64;
    let c = s.context as u64;
    let e = s.dtype.bytes() as u64;
    let units = s.units() as u64;
    let cap = s.capacity() as u64;
    let rows = s.q_rows() as u64;
    let f32b = 4u64;
    let q_bytes = b * hq * rows * d * e;
    // The query heads whose scores are computed: a subset's, else every head.
    let hs = match s.heads {
        HeadReduce::Subset(_, set) => set.heads().len() as u64,
        _ => hq,
    };
    let mut steps = vec![];
    let per_query_heads = matches!(
        s.source,
        Source::Exact
            | Source::Window { .. }
            | Source::Normalized { .. }
            | Source::PageBound
            | Source::PageMean
            | Source::KeyNorm
    );
    // A score for every cached token from the queries against all keys.
    let from_keys = |what: String| Step {
        name: "score",
        what,
        read: q_bytes + b * hkv * c * d * e,
        written: b * hs * c * f32b,
    };
    match s.source {
        Source::None => {}
        Source::Exact => steps.push(from_keys(format!(
            "softmax(scale * q . k) of the current query over all cached tokens: [{b}, {hs}, {c}] f32"
        ))),
        Source::Window { rows: w, lse } => steps.push(from_keys(format!(
            "causal softmax of the last {w} queries over the prefix{}, {} over rows, never a {w} x {c} matrix in memory: [{b}, {hs}, {c}] f32",
            if lse {
                " (each row's log-sum-exp an input)"
            } else {
                ""
            },
            reduce_name(s.rows)
        ))),
        Source::Normalized { rows: w } => steps.push(from_keys(format!(
            "causal softmax of the last {w} queries over all tokens, each token's sum divided by the queries that see it, never a {w} x {c} matrix in memory: [{b}, {hs}, {c}] f32"
        ))),
        Source::PageBound => steps.push(Step {
            name: "score",
            what: format!(
                "page bound sum_d max(q_d * kmax_d, q_d * kmin_d) over {units} pages of {}: [{b}, {hs}, {units}] f32",
                s.page
            ),
            read: q_bytes + 2 * b * hkv * units * d * e,
            written: b * hs * units * f32b,
        }),
        Source::PageMean => steps.push(Step {
            name: "score",
            what: format!(
                "q . mean(k) over each of {units} pages of {} (its representative key): [{b}, {hs}, {units}] f32",
                s.page
            ),
            read: q_bytes + b * hkv * c * d * e,
            written: b * hs * units * f32b,
        }),
        Source::Accumulated => steps.push(Step {
            name: "score",
            what: format!(
                "accumulated attention ({} state): [{b}, {hsel}, {c}] f32",
                if s.gumbel.is_some() { "Keyformer" } else { "H2O" }
            ),
            read: b * hsel * c * f32b,
            written: 0,
        }),
        Source::External => steps.push(Step {
            name: "score",
            what: format!("external scores: [{b}, {hsel}, {c}] f32"),
            read: b * hsel * c * f32b,
            written: 0,
        }),
        Source::KeyNorm => steps.push(Step {
            name: "score",
            what: format!(
                "-|k|^2 of every cached key (each query head takes its KV head's), the query unused: [{b}, {hs}, {c}] f32"
            ),
            read: b * hkv * c * d * e,
            written: b * hs * c * f32b,
        }),
    }
    let scored = if s.source.scores_pages() { units } else { c };
    if per_query_heads {
        let (scope, op) = match s.heads {
            HeadReduce::PerKvGroup(r) => {
                (format!("the {} query heads of each KV head", s.group()), r)
            }
            HeadReduce::Shared(r) => (format!("all {hq} heads"), r),
            HeadReduce::Subset(r, set) => (
                format!("the query heads {} (one list for all heads)", set.listing()),
                r,
            ),
        };
        steps.push(Step {
            name: "reduce",
            what: format!(
                "{} over {scope}: [{b}, {hsel}, {scored}] f32",
                reduce_name(op)
            ),
            read: b * hs * scored * f32b,
            written: b * hsel * scored * f32b,
        });
    }
    match s.pool {
        Pool::None => {}
        Pool::Avg { size } | Pool::Max { size } => {
            let kind = if matches!(s.pool, Pool::Avg { .. }) {
                "avg"
            } else {
                "max"
            };
            steps.push(Step {
                name: "pool",
                what: format!("{kind} pool of {size}, same padding: [{b}, {hsel}, {c}] f32"),
                read: b * hsel * c * f32b,
                written: b * hsel * c * f32b,
            });
        }
    }
    if s.page > 1 && !s.source.scores_pages() && s.source != Source::None {
        steps.push(Step {
            name: "pages",
            what: format!(
                "sum of token scores per page of {}: [{b}, {hsel}, {units}] f32",
                s.page
            ),
            read: b * hsel * c * f32b,
            written: b * hsel * units * f32b,
        });
    }
    let unit = if s.page == 1 { "tokens" } else { "pages" };
    let mut budget = match s.budget {
        Budget::Tokens(n) => format!("{n} tokens"),
        Budget::Ratio(f) => format!("{f} of each sequence"),
    };
    if let Some(f) = s.adaptive {
        budget = format!(
            "{budget} a list on average, the {hsel} lists sharing theirs, each at least {f} of it (Ada-KV)"
        );
    }
    steps.push(Step {
        name: "topk",
        what: format!(
            "keep sinks {}, recent {}{}, then the best of the rest up to {budget} (ties to the lower index{}), ascending, padded with -1: [{b}, {hsel}, {cap}] i32 {unit}",
            s.sinks,
            s.recent,
            if s.page > 1 { ", the partial last page" } else { "" },
            if s.adaptive.is_some() { ", then the lower list" } else { "" },
        ),
        read: if s.source == Source::None { 0 } else { b * hsel * units * f32b },
        written: b * hsel * cap * 4,
    });
    // Tokens a list names (on average, when the lists share their budgets).
    let attended = (s.budget_units() as u64 * s.page as u64).min(c);
    if s.output == Output::Compacted {
        steps.push(Step {
            name: "gather",
            what: format!(
                "the listed keys and values, in order, into a cache of {attended} tokens: k, v [{b}, {hkv}, {attended}, {d}] {}, lengths [{b}]",
                s.dtype.name()
            ),
            read: b * hsel * cap * 4 + b * hkv * attended * d * e * 2,
            written: b * hkv * attended * d * e * 2 + b * 4,
        });
    }
    if s.kind == KernelKind::Decode {
        let chunks = cap.div_ceil(s.split as u64);
        steps.push(Step {
            name: "attend",
            what: format!(
                "split-K decode over the list, {} {unit} a chunk ({chunks} chunks), the {} query heads of a KV head together: partials [{b}, {hq}, {chunks}, {}] f32",
                s.split,
                s.group(),
                d + 2
            ),
            read: b * hsel * cap * 4 + b * hkv * attended * d * e * 2 + b * hq * d * e,
            written: b * hq * chunks * (d + 2) * f32b,
        });
        steps.push(Step {
            name: "combine",
            what: format!(
                "rescale and sum the chunks: o [{b}, {hq}, {d}] {}",
                s.dtype.name()
            ),
            read: b * hq * chunks * (d + 2) * f32b,
            written: b * hq * d * e,
        });
        if s.source == Source::Accumulated {
            steps.push(Step {
                name: "update",
                what: match s.gumbel {
                    None => format!(
                        "add the step's attention probabilities ({} over a KV head's query heads) to the state at the selected tokens",
                        reduce_name(s.heads.op())
                    ),
                    Some(g) => format!(
                        "add the Gumbel softmax of the step's logits at temperature {} rising to {} over {} steps ({} over a KV head's query heads) to the state at the selected tokens (Keyformer)",
                        g.tau,
                        g.tau_end,
                        g.steps,
                        reduce_name(s.heads.op())
                    ),
                },
                read: b * hsel * attended * f32b,
                written: b * hsel * attended * f32b,
            });
        }
    }
    SelectPlan {
        steps,
        dense_bytes: b * hkv * c * d * e * 2,
        attended_tokens: attended,
    }
}

/// `--emit plan`.
pub fn print(s: &SelectSpec, p: &SelectPlan) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "plan {} (source {}, {} list(s) per sequence, capacity {})",
        s.kernel,
        source_name(s.source),
        s.sel_heads(),
        s.capacity()
    );
    for (i, st) in p.steps.iter().enumerate() {
        let _ = writeln!(
            out,
            "  {i}. {:<8} {}\n     reads {}, writes {}",
            st.name,
            st.what,
            bytes(st.read),
            bytes(st.written)
        );
    }
    let _ = writeln!(
        out,
        "  total {} per step at a full cache; dense decode reads {} ({:.1}x)",
        bytes(p.total_bytes()),
        bytes(p.dense_bytes),
        p.dense_bytes as f64 / p.total_bytes().max(1) as f64
    );
    out
}

/// `attnc explain` for a selection kernel: what it keeps, what it reads, against dense.
pub fn explain(s: &SelectSpec) -> String {
    let p = plan(s);
    let mut out = String::new();
    let unit = if s.page == 1 {
        "tokens".to_string()
    } else {
        format!("pages of {} tokens", s.page)
    };
    let _ = writeln!(
        out,
        "{}: {} over `{}`, {} list(s) of {} {unit} per sequence",
        s.kernel,
        match s.kind {
            KernelKind::Decode => "decode step",
            KernelKind::Select => "selection",
        },
        s.select,
        s.sel_heads(),
        s.capacity()
    );
    // With an adaptive budget a list may take more than its share; their mean is the
    // budget.
    let reads = if s.adaptive.is_some() {
        "reads on average"
    } else {
        "reads at most"
    };
    let per = if s.adaptive.is_some() {
        "a list"
    } else {
        "per sequence"
    };
    let _ = writeln!(
        out,
        "  {reads} {} of {} cached tokens {per} ({:.2}%), always {} sinks and {} recent",
        p.attended_tokens,
        s.context,
        100.0 * p.attended_tokens as f64 / s.context as f64,
        s.sinks,
        s.recent
    );
    out.push_str(&print(s, &p));
    let gpu = crate::codegen::nvptx::decode::gpu_support(s);
    let _ = match &gpu {
        Ok(()) => writeln!(
            out,
            "  GPU: the CUDA backend runs it (attnc bench --backend cuda; docs/kv-selection.md, \"GPU coverage\")"
        ),
        Err(why) => writeln!(out, "  GPU: {}", why.trim_start_matches(&format!("`{}` ", s.kernel))),
    };
    if gpu.is_ok() {
        if let Source::Window { rows, .. } = s.source {
            let _ = match crate::codegen::nvptx::decode::window_logits(s) {
                0 => writeln!(
                    out,
                    "  GPU memory: the {rows} window rows' logits are computed twice (more than 2^31 of them)"
                ),
                n => writeln!(
                    out,
                    "  GPU memory: the {rows} window rows' logits are kept between two passes: {} of device memory",
                    bytes(n as u64 * 4)
                ),
            };
        }
    }
    out
}

/// Bytes in binary units with three significant digits.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else if v >= 100.0 {
        format!("{v:.0} {}", UNITS[u])
    } else if v >= 10.0 {
        format!("{v:.1} {}", UNITS[u])
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}
