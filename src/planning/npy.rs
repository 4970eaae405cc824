//! NumPy files: `.npz` inputs and `.npy` outputs.
//!
//! In: a path to an `.npz` archive (one array per variable, float32 or float64, C or Fortran
//! order), or a batch to write. Out: [`NamedArray`]s in C order as float64; `.npy` files of
//! float32 or float64. Invariants: every error names the file and, where there is one, the
//! array; a header's shape is checked (overflow, the bytes the archive holds, memory) before
//! anything is allocated for it; an output file is written under a temporary name and
//! renamed, so a failed write never leaves a half-written file under the requested name, and
//! a path that is not a regular file (a directory, a device, a link) is never replaced.

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
    #[error("cannot write `{path}`: {why}")]
    Output { path: String, why: String },
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
        let claimed = check_header(archive.zip_archive(), &name).map_err(array_error)?;
        let npy = archive
            .by_name(&name)
            .map_err(|e| array_error(e.to_string()))?
            .ok_or_else(|| array_error("listed but missing".into()))?;
        let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
        if shape != claimed {
            return Err(array_error(format!(
                "header shape {shape:?} read twice as {claimed:?}"
            )));
        }
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

/// The largest `.npy` header this reader accepts (NumPy writes well under a kilobyte; version
/// 2 headers may be longer for structured dtypes, which are refused anyway).
const MAX_HEADER_BYTES: usize = 1 << 20;

/// Deflate expands at most about 1032 to 1: a compressed entry cannot hold more bytes than that.
const DEFLATE_MAX_RATIO: u64 = 1032;

/// Reads array `name`'s `.npy` header straight from the archive and checks, before anything is
/// allocated, that its shape's element count does not overflow, that the bytes it implies are
/// present in the archive, and that the array fits in memory once read as float64. Returns the
/// shape. This runs before `npyz` sees the header, so a hostile shape never reaches its
/// arithmetic.
fn check_header<R: io::Read + io::Seek>(
    zip: &mut npyz::zip::ZipArchive<R>,
    name: &str,
) -> Result<Vec<usize>, String> {
    use io::Read;
    let mut entry = zip
        .by_name(&npyz::npz::file_name_from_array_name(name))
        .map_err(|e| e.to_string())?;
    let stored = entry.compression() == npyz::zip::CompressionMethod::Stored;
    let (claimed_size, compressed_size) = (entry.size(), entry.compressed_size());
    let mut prefix = [0u8; 10];
    entry
        .read_exact(&mut prefix[..8])
        .map_err(|_| "not a .npy array: shorter than its magic string".to_string())?;
    if &prefix[..6] != b"\x93NUMPY" {
        return Err("not a .npy array: no \\x93NUMPY magic string".into());
    }
    let (header_len, prefix_len) = match prefix[6] {
        1 => {
            entry
                .read_exact(&mut prefix[8..10])
                .map_err(|_| "truncated header".to_string())?;
            (u16::from_le_bytes([prefix[8], prefix[9]]) as usize, 10)
        }
        2 | 3 => {
            let mut len = [0u8; 4];
            entry
                .read_exact(&mut len)
                .map_err(|_| "truncated header".to_string())?;
            (u32::from_le_bytes(len) as usize, 12)
        }
        version => return Err(format!("unknown .npy format version {version}")),
    };
    if header_len > MAX_HEADER_BYTES {
        return Err(format!(
            "its header claims {header_len} bytes (at most {MAX_HEADER_BYTES} are accepted)"
        ));
    }
    let mut header = vec![0u8; header_len];
    entry
        .read_exact(&mut header)
        .map_err(|_| "truncated header".to_string())?;
    let header = String::from_utf8_lossy(&header);
    let shape = header_shape(&header)?;
    let count = shape
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d))
        .filter(|&n| usize::try_from(n).is_ok())
        .ok_or_else(|| {
            format!("shape {shape:?} has more elements than this machine can address")
        })?;
    let item_size = header_item_size(&header);
    let data_bytes = count
        .checked_mul(item_size)
        .ok_or_else(|| format!("shape {shape:?} has more bytes than this machine can address"))?;
    let present = if stored {
        claimed_size.min(compressed_size)
    } else {
        claimed_size.min(compressed_size.saturating_mul(DEFLATE_MAX_RATIO))
    }
    .saturating_sub((prefix_len + header_len) as u64);
    if data_bytes > present {
        return Err(format!(
            "shape {shape:?} needs {data_bytes} bytes of data and the archive holds only {present}"
        ));
    }
    crate::batch::fits_in_memory(count as f64 * 8.0, &format!("shape {shape:?}"))?;
    Ok(shape.iter().map(|&d| d as usize).collect())
}

/// The `shape` tuple of a `.npy` header's dictionary, e.g. `{'descr': '<f4', 'fortran_order':
/// False, 'shape': (3, 4), }`.
fn header_shape(header: &str) -> Result<Vec<u64>, String> {
    let malformed = || format!("malformed header (no readable shape): {}", header.trim());
    let key = header
        .find("'shape'")
        .or_else(|| header.find("\"shape\""))
        .ok_or_else(malformed)?;
    let rest = header[key + 7..].trim_start();
    let rest = rest.strip_prefix(':').ok_or_else(malformed)?.trim_start();
    let rest = rest.strip_prefix('(').ok_or_else(malformed)?;
    let inside = &rest[..rest.find(')').ok_or_else(malformed)?];
    inside
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| {
            d.trim_end_matches('L')
                .parse::<u64>()
                .map_err(|_| format!("malformed header: `{d}` is not a dimension"))
        })
        .collect()
}

/// The size in bytes of one element by the header's `descr` (`'<f4'` is 4); 1 when it cannot be
/// read, so that the size checks stay conservative and the dtype is refused later by name.
fn header_item_size(header: &str) -> u64 {
    let Some(key) = header.find("descr") else {
        return 1;
    };
    let digits: String = header[key..]
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().unwrap_or(1).max(1)
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

/// Runs `write` on a new temporary file beside `path`; the file is removed if it fails. A path
/// that exists and is not a regular file (a directory, a device, a pipe) is refused: renaming
/// over it would replace it.
fn stage(path: &Path, write: impl FnOnce(File) -> io::Result<()>) -> Result<Staged, NpyError> {
    let refuse = |why: String| NpyError::Output {
        path: path.display().to_string(),
        why,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => return Err(refuse("it is a directory".into())),
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(refuse(
                "it is a symbolic link (an output replaces its file; name the target itself)"
                    .into(),
            ))
        }
        Ok(meta) if !meta.is_file() => {
            return Err(refuse(
                "it is not a regular file (a device, a pipe or a socket); outputs are written \
                 under a temporary name and renamed into place"
                    .into(),
            ))
        }
        _ => {}
    }
    let temporary = temporary_name(path);
    let file = File::create(&temporary).map_err(|source| {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.display().to_string(),
            _ => ".".to_string(),
        };
        refuse(format!(
            "cannot create a file in `{parent}` ({source}); outputs are written there under a \
             temporary name and renamed into place"
        ))
    })?;
    let staged = Staged {
        temporary,
        path: path.to_path_buf(),
        committed: false,
    };
    write(file).map_err(|source| NpyError::Write {
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
