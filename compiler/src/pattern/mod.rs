//! Stage 3: tile-level analysis. For every query tile, which key tiles are full, partial or
//! empty; exact active-pair counts; the closed form of the tile rule when it has one.
//! Nothing here is ever of size tokens^2 (or tiles^2, unless a rule mixes axes).

pub mod axis;
pub mod brute;
pub mod classify;
pub mod closed;
pub mod formula;
pub mod geometry;
pub mod interval;
pub mod print;
pub mod schedule;

use crate::diagnostic::Diagnostic;
use crate::sema::eval::EvalError;
use crate::sema::spec::Spec;
pub use geometry::Geometry;
pub use schedule::{KvRun, Schedule, Stats, VariantSchedule};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TileClass {
    /// Every token pair is active and every key exists: no mask.
    Full,
    /// Some pairs are masked (rule, ragged edge or padding): the kernel applies the mask.
    Partial,
}

/// Default cap on analysis work, so that no input can make analysis run long (a few
/// seconds at most on one core; real patterns use a tiny fraction).
pub const DEFAULT_BUDGET: u64 = 1 << 29;
/// Budget units one interpreted evaluation of a comparison costs.
pub const EVAL_COST: u64 = 8;

#[derive(Clone, Debug, PartialEq)]
pub enum AnalysisError {
    Eval(EvalError),
    Budget(u64),
    TooComplex(String),
}

/// A work counter: every loop of the analysis spends from it.
#[derive(Clone, Debug)]
pub struct Budget {
    pub left: u64,
    pub limit: u64,
}

impl Budget {
    pub fn new(limit: u64) -> Budget {
        Budget { left: limit, limit }
    }

    pub fn spend(&mut self, n: u64) -> Result<(), AnalysisError> {
        match self.left.checked_sub(n) {
            Some(l) => {
                self.left = l;
                Ok(())
            }
            None => Err(AnalysisError::Budget(self.limit)),
        }
    }
}

/// Analyses every head variant of a spec. Errors point into the pattern.
pub fn analyse(spec: &Spec) -> Result<Schedule, Vec<Diagnostic>> {
    analyse_with_budget(spec, DEFAULT_BUDGET)
}

pub fn analyse_with_budget(spec: &Spec, limit: u64) -> Result<Schedule, Vec<Diagnostic>> {
    let geom = Geometry::from_spec(spec).map_err(|m| {
        vec![Diagnostic::error(
            "E0401",
            format!("cannot lay out kernel `{}`: {m}", spec.kernel),
        )
        .with_label(spec.kernel_span, "here")]
    })?;
    let mut budget = Budget::new(limit);
    let sched =
        schedule::build(spec, &geom, &mut budget).map_err(|(_, e)| vec![analysis_diag(spec, e)])?;
    let mut diags = vec![];
    for v in &sched.variants {
        if v.stats.active_pairs == 0 {
            let heads = if sched.variants.len() > 1 {
                format!(" for heads {}", crate::sema::spec::ranges(&v.heads))
            } else {
                String::new()
            };
            diags.push(
                Diagnostic::error("E0402", format!("pattern `{}` selects no token pairs{heads}", spec.pattern))
                    .with_label(spec.pattern_span, "density 0 with these parameters")
                    .with_note(param_note(spec))
                    .with_hint("check the comparisons and the parameter values; an attention with no keys outputs zeros"),
            );
        }
    }
    if diags.is_empty() {
        Ok(sched)
    } else {
        Err(diags)
    }
}

fn param_note(spec: &Spec) -> String {
    let p: Vec<String> = spec
        .params
        .iter()
        .map(|b| format!("{} = {}", b.name, crate::sema::spec::format_bound(&b.value)))
        .collect();
    format!("parameters: {}", p.join(", "))
}

fn analysis_diag(spec: &Spec, e: AnalysisError) -> Diagnostic {
    match e {
        AnalysisError::Eval(e) => Diagnostic::error(
            "E0403",
            format!("evaluating the rule failed: {}", e.message),
        )
        .with_label(e.span, e.message)
        .with_note(param_note(spec)),
        AnalysisError::Budget(limit) => Diagnostic::error(
            "E0404",
            format!(
                "analysing pattern `{}` needs more than {limit} evaluations",
                spec.pattern
            ),
        )
        .with_label(spec.pattern_span, "too costly at this size")
        .with_hint(
            "use larger tiles, a smaller canvas, or rules that read one axis per comparison",
        ),
        AnalysisError::TooComplex(m) => Diagnostic::error(
            "E0405",
            format!("pattern `{}` is too complex: {m}", spec.pattern),
        )
        .with_label(spec.pattern_span, "here"),
    }
}
