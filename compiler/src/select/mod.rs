//! KV selection kernels: `select` declarations and the `decode(...)` / `select(...)`
//! kernels built on them. `docs/kv-selection.md` holds the contract.
//!
//! `resolve` checks and instantiates a kernel into a [`spec::SelectSpec`] (`params` gives
//! it its parameter values); `plan` lays out its steps with sizes and bytes.

pub mod params;
pub mod plan;
pub mod resolve;
pub mod softmax;
pub mod spec;

pub use spec::SelectSpec;
