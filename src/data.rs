//! Reading and writing NumPy `.npy` files (version 1 and 2 headers, little-endian, C order;
//! `f4`, `f8`, `i8`): the format of the bundled data sets and of the CLI's inputs and
//! outputs.
//!
//! Written here rather than taken from `ndarray-npy`, whose header parser pulls in a C build
//! (`psm` through `stacker`). Input is untrusted: the header length is bounded and the data
//! length must equal the product of the shape times the item size before anything is
//! allocated.

use std::path::Path;

use ndarray::{ArrayD, IxDyn};

/// Errors of the `.npy` reader and writer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NpyError {
    /// I/O error, with the path.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Not a `.npy` file or an unsupported variant of the format.
    #[error("invalid .npy data: {0}")]
    Format(String),
    /// The element type is not the one requested.
    #[error("element type {found} where {expected} was expected")]
    Dtype {
        /// The type in the file.
        found: String,
        /// The type requested.
        expected: &'static str,
    },
}

const MAX_HEADER: usize = 1 << 16;

/// A parsed `.npy` array.
#[derive(Debug, Clone, PartialEq)]
pub enum NpyArray {
    /// `<f4`.
    F32(ArrayD<f32>),
    /// `<f8`.
    F64(ArrayD<f64>),
    /// `<i8`.
    I64(ArrayD<i64>),
}

impl NpyArray {
    /// The array as `f64` (integers converted).
    pub fn to_f64(&self) -> ArrayD<f64> {
        match self {
            NpyArray::F32(a) => a.mapv(f64::from),
            NpyArray::F64(a) => a.clone(),
            NpyArray::I64(a) => a.mapv(|v| v as f64),
        }
    }

    /// The array as `i64`, if it holds integers.
    pub fn into_i64(self) -> Result<ArrayD<i64>, NpyError> {
        match self {
            NpyArray::I64(a) => Ok(a),
            NpyArray::F32(_) => Err(NpyError::Dtype {
                found: "<f4".into(),
                expected: "<i8",
            }),
            NpyArray::F64(_) => Err(NpyError::Dtype {
                found: "<f8".into(),
                expected: "<i8",
            }),
        }
    }
}

fn field<'a>(header: &'a str, key: &str) -> Result<&'a str, NpyError> {
    let pat = format!("'{key}':");
    let start = header
        .find(&pat)
        .ok_or_else(|| NpyError::Format(format!("header lacks {key}")))?
        + pat.len();
    Ok(header[start..].trim_start())
}

/// Parses `.npy` bytes.
pub fn parse_npy(bytes: &[u8]) -> Result<NpyArray, NpyError> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(NpyError::Format("bad magic".into()));
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize,
            12,
        ),
        v => return Err(NpyError::Format(format!("unsupported version {v}"))),
    };
    if hlen > MAX_HEADER || start + hlen > bytes.len() {
        return Err(NpyError::Format(format!("header length {hlen}")));
    }
    let header = std::str::from_utf8(&bytes[start..start + hlen])
        .map_err(|_| NpyError::Format("header is not UTF-8".into()))?;
    let descr = field(header, "descr")?;
    let descr = descr
        .strip_prefix('\'')
        .and_then(|d| d.split('\'').next())
        .ok_or_else(|| NpyError::Format("descr".into()))?;
    if !field(header, "fortran_order")?.starts_with("False") {
        return Err(NpyError::Format("Fortran order is not supported".into()));
    }
    let shape_s = field(header, "shape")?;
    let shape_s = shape_s
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| NpyError::Format("shape".into()))?;
    let shape = shape_s
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| NpyError::Format(format!("shape entry {s:?}")))
        })
        .collect::<Result<Vec<usize>, _>>()?;
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| NpyError::Format("shape overflows".into()))?;
    let data = &bytes[start + hlen..];
    let item = match descr {
        "<f4" => 4,
        "<f8" | "<i8" => 8,
        other => {
            return Err(NpyError::Dtype {
                found: other.into(),
                expected: "<f4, <f8 or <i8",
            })
        }
    };
    if count.checked_mul(item) != Some(data.len()) {
        return Err(NpyError::Format(format!(
            "{} data bytes for shape {shape:?} of {descr}",
            data.len()
        )));
    }
    let dim = IxDyn(&shape);
    let arr = match descr {
        "<f4" => NpyArray::F32(
            ArrayD::from_shape_vec(
                dim,
                data.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                    .collect(),
            )
            .expect("length checked"),
        ),
        "<f8" => NpyArray::F64(
            ArrayD::from_shape_vec(
                dim,
                data.chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect(),
            )
            .expect("length checked"),
        ),
        _ => NpyArray::I64(
            ArrayD::from_shape_vec(
                dim,
                data.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect(),
            )
            .expect("length checked"),
        ),
    };
    Ok(arr)
}

/// Reads a `.npy` file.
pub fn read_npy(path: impl AsRef<Path>) -> Result<NpyArray, NpyError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| NpyError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse_npy(&bytes)
}

/// Encodes an `f32` array as `.npy` (version 1).
pub fn npy_bytes_f32(a: &ArrayD<f32>) -> Vec<u8> {
    let shape: Vec<String> = a.shape().iter().map(|d| d.to_string()).collect();
    let shape = if shape.len() == 1 {
        format!("({},)", shape[0])
    } else {
        format!("({})", shape.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad so that the data starts at a multiple of 64 bytes, ending with a newline.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in a.iter() {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Writes an `f32` array to a `.npy` file.
pub fn write_npy_f32(path: impl AsRef<Path>, a: &ArrayD<f32>) -> Result<(), NpyError> {
    let path = path.as_ref();
    std::fs::write(path, npy_bytes_f32(a)).map_err(|source| NpyError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// The directory of the bundled data sets (`data/` at the workspace root).
pub fn data_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_data_sets_parse_with_their_documented_shapes() {
        let x = read_npy(data_dir().join("cancer_test_x.npy")).unwrap();
        assert_eq!(x.to_f64().shape(), &[114, 30]);
        let y = read_npy(data_dir().join("cancer_test_y.npy"))
            .unwrap()
            .into_i64()
            .unwrap();
        assert_eq!(y.shape(), &[114]);
        assert!(y.iter().all(|&v| v == 0 || v == 1));
        let d = read_npy(data_dir().join("digits_test_x.npy")).unwrap();
        assert!(matches!(d, NpyArray::F32(_)));
        assert_eq!(d.to_f64().shape(), &[360, 1, 8, 8]);
        assert!(d.to_f64().iter().all(|&v| (0.0..=1.0).contains(&v)));
    }

    #[test]
    fn round_trip_and_hostile_inputs() {
        let a = ArrayD::from_shape_fn(IxDyn(&[3, 4]), |i| (i[0] * 4 + i[1]) as f32 * 0.5);
        let bytes = npy_bytes_f32(&a);
        assert_eq!(parse_npy(&bytes).unwrap(), NpyArray::F32(a.clone()));
        let v = ArrayD::from_shape_fn(IxDyn(&[5]), |i| i[0] as f32);
        assert_eq!(parse_npy(&npy_bytes_f32(&v)).unwrap(), NpyArray::F32(v));
        // Truncated data, bad magic, a huge shape, a wrong dtype.
        assert!(parse_npy(&bytes[..bytes.len() - 1]).is_err());
        assert!(parse_npy(b"NOTNUMPY").is_err());
        let replace = |from: &[u8], to: &[u8]| {
            let mut b = bytes.clone();
            let i = b.windows(from.len()).position(|w| w == from).unwrap();
            b.splice(i..i + from.len(), to.iter().copied());
            b
        };
        let huge = replace(b"(3, 4)", b"(99999999999, 99999999999)");
        assert!(parse_npy(&huge).is_err());
        let wrong = replace(b"<f4", b"<u2");
        assert!(matches!(parse_npy(&wrong), Err(NpyError::Dtype { .. })));
        for len in 0..80 {
            let _ = parse_npy(&bytes[..len.min(bytes.len())]);
        }
    }
}
