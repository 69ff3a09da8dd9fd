//! `.npy` files: float32 or float16 in, float32 out; integers in (lengths), int32 out
//! (index lists).

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
    write_array(path, &t.shape, &t.data)
}

/// Reads an integer array (`<i4`, `<i8`, or floats holding whole numbers), for lengths.
pub fn read_ints(path: &Path) -> Result<(Vec<usize>, Vec<i64>), Error> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Io(format!("cannot read `{}`: {e}", path.display())))?;
    let npy = npyz::NpyFile::new(&bytes[..])
        .map_err(|e| Error::Io(format!("`{}` is not a .npy file: {e}", path.display())))?;
    let shape: Vec<usize> = npy.shape().iter().map(|d| *d as usize).collect();
    let descr = match &npy.dtype() {
        npyz::DType::Plain(t) => t.to_string(),
        other => format!("{other:?}"),
    };
    let io = |e: std::io::Error| Error::Io(format!("`{}`: {e}", path.display()));
    let data: Vec<i64> = match descr.as_str() {
        "<i4" => npy
            .into_vec::<i32>()
            .map_err(io)?
            .into_iter()
            .map(i64::from)
            .collect(),
        "<i8" => npy.into_vec::<i64>().map_err(io)?,
        "<f4" | "<f2" => {
            let t = read(path)?;
            let mut out = Vec::with_capacity(t.data.len());
            for x in t.data {
                if x.fract() != 0.0 || !x.is_finite() {
                    return Err(Error::Input(format!(
                        "`{}` holds {x}, not a whole number",
                        path.display()
                    )));
                }
                out.push(x as i64);
            }
            out
        }
        other => {
            return Err(Error::Input(format!(
                "`{}` holds {other}; expected integers (<i4 or <i8)",
                path.display()
            )))
        }
    };
    Ok((shape, data))
}

/// Writes an int32 array (index lists).
pub fn write_i32(path: &Path, shape: &[usize], data: &[i32]) -> Result<(), Error> {
    write_array(path, shape, data)
}

fn write_array<T: npyz::AutoSerialize + Copy>(
    path: &Path,
    shape: &[usize],
    data: &[T],
) -> Result<(), Error> {
    use npyz::WriterBuilder;
    let shape: Vec<u64> = shape.iter().map(|d| *d as u64).collect();
    let file = std::fs::File::create(path)
        .map_err(|e| Error::Io(format!("cannot create `{}`: {e}", path.display())))?;
    let io = |e: std::io::Error| Error::Io(format!("cannot write `{}`: {e}", path.display()));
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&shape)
        .writer(std::io::BufWriter::new(file))
        .begin_nd()
        .map_err(io)?;
    w.extend(data.iter().copied()).map_err(io)?;
    w.finish().map_err(io)?;
    Ok(())
}
