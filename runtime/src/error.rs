//! Errors of the runtime: every failure is a value with a message that says what was
//! expected, never a panic.

use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// The kernel does not compile (rendered diagnostics).
    Compile(String),
    /// A tensor's shape or length does not match the kernel's manifest.
    Shape(String),
    /// Bad values (NaN, infinity) or an unsupported dtype.
    Input(String),
    /// Reading or writing a file.
    Io(String),
    /// The CUDA driver reported an error (its text is in the message), or there is none.
    Cuda(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Compile(m) => write!(f, "{m}"),
            Error::Shape(m) => write!(f, "shape mismatch: {m}"),
            Error::Input(m) => write!(f, "bad input: {m}"),
            Error::Io(m) => write!(f, "{m}"),
            Error::Cuda(m) => write!(f, "CUDA: {m}"),
        }
    }
}

impl std::error::Error for Error {}
