//! attnc's runtime: compile (or load) a kernel, check the caller's tensors against its
//! manifest, run it. The CPU path runs Cranelift-compiled code on host slices; wrong shapes
//! or values are an `Err` with a message that says what was expected.

pub mod artefact;
pub mod cache;
pub mod cpu;
pub mod cuda;
pub mod decode;
pub mod error;
pub mod fidelity;
pub mod files;
pub mod manifest;
pub mod npy;
pub mod reference;
pub mod suite;
pub mod tensor;
pub mod tune;
pub mod work_list;

pub use cache::Runtime;
pub use cpu::CpuKernel;
pub use error::Error;
pub use manifest::Manifest;
pub use tensor::{Tensor, TensorRef};
