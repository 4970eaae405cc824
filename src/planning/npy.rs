//! NumPy files: `.npz` inputs and `.npy` outputs.
//!
//! In: a path to an `.npz` archive (one array per variable, float32 or float64, C or Fortran
//! order), or a batch to write. Out: [`NamedArray`]s in C order as float64; `.npy` files of
//! float32 or float64. Invariants: every error names the file and, where there is one, the
//! array; an output file is written under a temporary name and renamed, so a failed write
//! never leaves a half-written file under the requested name.

use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

use npyz::WriterBuilder;

use crate::batch::NamedArray;

/// Why a NumPy file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("cannot open `{path}`: {source}")]
    Open { path: String, source: io::Error },
    #[error("`{path}` is not a readable .npz archive (corrupt or truncated?): {why}")]
    Archive { path: String, why: String },
    #[error("array `{name}` in `{path}` cannot be read (corrupt or truncated?): {why}")]
    Array {
        path: String,
        name: String,
        why: String,
    },
    #[error("array `{name}` in `{path}` has dtype {dtype}: expected float32 or float64")]
    Dtype {
        path: String,
        name: String,
        dtype: String,
    },
    #[error("cannot write `{path}`: {source}")]
    Write { path: String, source: io::Error },
}

/// Reads every array of an `.npz` archive, converted to float64 in C order.
pub fn read_npz(path: &Path) -> Result<Vec<NamedArray>, NpyError> {
    let shown = path.display().to_string();
    let file = File::open(path).map_err(|source| NpyError::Open {
        path: shown.clone(),
        source,
    })?;
    let mut archive =
        npyz::npz::NpzArchive::new(io::BufReader::new(file)).map_err(|e| NpyError::Archive {
            path: shown.clone(),
            why: e.to_string(),
        })?;
    let names: Vec<String> = archive.array_names().map(str::to_string).collect();
    let mut arrays = Vec::with_capacity(names.len());
    for name in names {
        let array_error = |why: String| NpyError::Array {
            path: shown.clone(),
            name: name.clone(),
            why,
        };
        let npy = archive
            .by_name(&name)
            .map_err(|e| array_error(e.to_string()))?
            .ok_or_else(|| array_error("listed but missing".into()))?;
        let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
        let order = npy.order();
        let descr = npy.dtype().descr();
        let data: Vec<f64> = match descr.trim_matches('\'') {
            "<f8" | ">f8" | "=f8" => npy
                .into_vec::<f64>()
                .map_err(|e| array_error(e.to_string()))?,
            "<f4" | ">f4" | "=f4" => npy
                .into_vec::<f32>()
                .map_err(|e| array_error(e.to_string()))?
                .into_iter()
                .map(f64::from)
                .collect(),
            other => {
                return Err(NpyError::Dtype {
                    path: shown.clone(),
                    name,
                    dtype: numpy_name(other),
                })
            }
        };
        let expected: usize = shape.iter().product();
        if data.len() != expected {
            return Err(array_error(format!(
                "{} values for shape {shape:?}",
                data.len()
            )));
        }
        let data = match order {
            npyz::Order::C => data,
            npyz::Order::Fortran => fortran_to_c(&data, &shape),
        };
        arrays.push(NamedArray { name, shape, data });
    }
    Ok(arrays)
}

/// The NumPy name of a dtype descriptor, for messages.
fn numpy_name(descr: &str) -> String {
    let kind = match descr.trim_start_matches(['<', '>', '=', '|']) {
        "i1" => "int8",
        "i2" => "int16",
        "i4" => "int32",
        "i8" => "int64",
        "u1" => "uint8",
        "u2" => "uint16",
        "u4" => "uint32",
        "u8" => "uint64",
        "b1" => "bool",
        "f2" => "float16",
        "c8" => "complex64",
        "c16" => "complex128",
        _ => return descr.to_string(),
    };
    kind.to_string()
}

/// Reorders a column-major array to row-major.
fn fortran_to_c(data: &[f64], shape: &[usize]) -> Vec<f64> {
    let total = data.len();
    let mut out = vec![0.0; total];
    let ndim = shape.len();
    let mut index = vec![0usize; ndim];
    for (c_pos, value) in out.iter_mut().enumerate() {
        // C position → multi-index → Fortran position.
        let mut rest = c_pos;
        for axis in (0..ndim).rev() {
            index[axis] = rest % shape[axis];
            rest /= shape[axis];
        }
        let mut f_pos = 0;
        for axis in (0..ndim).rev() {
            f_pos = f_pos * shape[axis] + index[axis];
        }
        *value = data[f_pos];
    }
    out
}

/// Values that can be written to `.npy`.
pub trait Element: npyz::AutoSerialize + Copy {}
impl Element for f32 {}
impl Element for f64 {}

/// Writes a C-order array of `shape` to `path` (through a temporary file and a rename).
pub fn write_npy<T: Element>(path: &Path, shape: &[usize], data: &[T]) -> Result<(), NpyError> {
    stage_npy(path, shape, data)?.commit()
}

/// A column of an `.npz` archive written by [`stage_npz`].
pub enum Column<'a> {
    F64(&'a [f64]),
    I32(&'a [i32]),
}

/// An output written under a temporary name: [`Staged::commit`] renames it into place, and
/// dropping it uncommitted removes it. Several staged outputs committed together are all
/// written or none is (a failure to write any of them happens before the first rename).
#[must_use = "a staged output is removed unless committed"]
pub struct Staged {
    temporary: PathBuf,
    path: PathBuf,
    committed: bool,
}

impl Staged {
    pub fn commit(mut self) -> Result<(), NpyError> {
        self.committed = true;
        std::fs::rename(&self.temporary, &self.path).map_err(|source| {
            let _ = std::fs::remove_file(&self.temporary);
            NpyError::Write {
                path: self.path.display().to_string(),
                source,
            }
        })
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temporary);
        }
    }
}

/// [`write_npy`] up to the rename: the data is in a temporary file beside `path`.
pub fn stage_npy<T: Element>(path: &Path, shape: &[usize], data: &[T]) -> Result<Staged, NpyError> {
    stage(path, |file| {
        let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
        let mut writer = npyz::WriteOptions::new()
            .default_dtype()
            .shape(&shape)
            .writer(BufWriter::new(file))
            .begin_nd()?;
        writer.extend(data.iter().copied())?;
        writer.finish()
    })
}

/// One array of an `.npz` archive: its name, its shape and its values in C order.
pub type NpzEntry<'a> = (&'a str, &'a [usize], Column<'a>);

/// Writes an `.npz` archive (through a temporary file and a rename).
pub fn write_npz(path: &Path, entries: &[NpzEntry<'_>]) -> Result<(), NpyError> {
    stage_npz(path, entries)?.commit()
}

/// An `.npz` archive, staged like [`stage_npy`].
pub fn stage_npz(path: &Path, entries: &[NpzEntry<'_>]) -> Result<Staged, NpyError> {
    stage(path, |file| {
        let mut archive = npyz::npz::NpzWriter::new(BufWriter::new(file));
        for (name, shape, column) in entries {
            let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
            let options = npyz::zip::write::FileOptions::default();
            match column {
                Column::F64(values) => {
                    let mut w = archive
                        .array::<f64>(name, options)?
                        .default_dtype()
                        .shape(&shape)
                        .begin_nd()?;
                    w.extend(values.iter().copied())?;
                    w.finish()?;
                }
                Column::I32(values) => {
                    let mut w = archive
                        .array::<i32>(name, options)?
                        .default_dtype()
                        .shape(&shape)
                        .begin_nd()?;
                    w.extend(values.iter().copied())?;
                    w.finish()?;
                }
            }
        }
        archive.zip_writer().finish().map_err(io::Error::other)?;
        Ok(())
    })
}

/// Runs `write` on a new temporary file beside `path`; the file is removed if it fails.
fn stage(path: &Path, write: impl FnOnce(File) -> io::Result<()>) -> Result<Staged, NpyError> {
    let temporary = temporary_name(path);
    let staged = Staged {
        temporary: temporary.clone(),
        path: path.to_path_buf(),
        committed: false,
    };
    File::create(&temporary)
        .and_then(write)
        .map_err(|source| NpyError::Write {
            path: path.display().to_string(),
            source,
        })?;
    Ok(staged)
}

fn temporary_name(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".partial-{}", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fortran_order_is_converted() {
        // [[1,2,3],[4,5,6]] stored column by column.
        let f = [1.0, 4.0, 2.0, 5.0, 3.0, 6.0];
        assert_eq!(
            fortran_to_c(&f, &[2, 3]),
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        );
    }

    #[test]
    fn dtype_names() {
        assert_eq!(numpy_name("<i8"), "int64");
        assert_eq!(numpy_name("|b1"), "bool");
    }
}
