//! Stage 1: source text -> typed AST. The grammar is `attn.pest`.

pub mod ast;
pub mod parse;
pub mod print;

pub use parse::parse;
