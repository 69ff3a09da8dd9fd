//! attnc: a compiler for tile-grouped sparse attention kernels.
//!
//! The pipeline, one module a stage:
//! `syntax` (parse) -> `sema` (check, instantiate a kernel) -> `pattern` (tile analysis)
//! -> `ir` (kernel IR) -> `passes` -> code generators. `driver` runs the stages.

// Coordinates are fixed-size arrays indexed by axis, several at once: index loops read
// better than zipped iterators there.
#![allow(clippy::needless_range_loop)]

pub mod codegen;
pub mod diagnostic;
pub mod driver;
pub mod ir;
pub mod passes;
pub mod pattern;
pub mod select;
pub mod sema;
pub mod syntax;

pub use diagnostic::Span;
