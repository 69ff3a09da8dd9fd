//! Stage 2: name resolution, typing, and instantiation of one kernel with its parameter
//! values into a [`spec::Spec`].

pub mod eval;
pub mod expr;
pub mod instantiate;
pub mod program;
pub mod resolve;
pub mod spec;

pub use resolve::resolve;
