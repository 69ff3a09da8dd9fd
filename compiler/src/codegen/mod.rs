//! Code generators. Each reads the kernel IR (after passes).

pub mod cpu;
pub mod nvptx;
