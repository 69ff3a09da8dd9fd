//! `.npy` files: float32 or float16 in, float32 out.

use std::path::Path;

use crate::{Error, Tensor};

/// Reads a C-order float32 or float16 array.
pub fn read(path: &Path) -> Result<Tensor, Error> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Io(format!("cannot read `{}`: {e}", path.display())))?;
    let npy = npyz::NpyFile::new(&bytes[..])
        .map_err(|e| Error::Io(format!("`{}` is not a .npy file: {e}", path.display())))?;
    if npy.order() != npyz::Order::C {
        return Err(Error::Input(format!(
            "`{}` is in Fortran order; save it in C order",
            path.display()
        )));
    }
    let shape: Vec<usize> = npy.shape().iter().map(|d| *d as usize).collect();
    let dtype = npy.dtype();
    let descr = match &dtype {
        npyz::DType::Plain(t) => t.to_string(),
        other => format!("{other:?}"),
    };
    let data: Vec<f32> = match descr.as_str() {
        "<f4" => npy
            .into_vec::<f32>()
            .map_err(|e| Error::Io(format!("`{}`: {e}", path.display())))?,
        "<f2" => npy
            .into_vec::<half::f16>()
            .map_err(|e| Error::Io(format!("`{}`: {e}", path.display())))?
            .into_iter()
            .map(f32::from)
            .collect(),
        other => {
            return Err(Error::Input(format!(
                "`{}` holds {other}; attnc reads float32 (<f4) or float16 (<f2)",
                path.display()
            )))
        }
    };
    Tensor::new(shape, data)
}

/// Writes a float32 array.
pub fn write(path: &Path, t: &Tensor) -> Result<(), Error> {
    use npyz::WriterBuilder;
    let shape: Vec<u64> = t.shape.iter().map(|d| *d as u64).collect();
    let file = std::fs::File::create(path)
        .map_err(|e| Error::Io(format!("cannot create `{}`: {e}", path.display())))?;
    let io = |e: std::io::Error| Error::Io(format!("cannot write `{}`: {e}", path.display()));
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&shape)
        .writer(std::io::BufWriter::new(file))
        .begin_nd()
        .map_err(io)?;
    w.extend(t.data.iter().copied()).map_err(io)?;
    w.finish().map_err(io)?;
    Ok(())
}
