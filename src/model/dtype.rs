//! Dtypes as they appear in the file, and the cast a user can ask for.
//!
//! The file speaks safetensors' [`Dtype`]; candle tensors speak [`candle_core::DType`]. The file's
//! dtype set is larger (`F8_E5M2` has no candle counterpart), so casts to it are done by this crate's
//! own conversion code rather than by candle.

use std::fmt;
use std::str::FromStr;

use candle_core::DType;
pub use safetensors::Dtype;

use crate::error::{Error, Result};

/// The dtype a component is saved in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TargetDtype {
    /// Every tensor keeps the dtype it has in memory (the reference behaviour).
    #[default]
    Keep,
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// 8-bit float, 4 exponent bits, 3 mantissa bits, finite-only (`float8_e4m3fn`), saturating.
    F8E4M3,
    /// 8-bit float, 5 exponent bits, 2 mantissa bits (`float8_e5m2`), saturating.
    F8E5M2,
}

impl TargetDtype {
    /// All accepted spellings, for help texts.
    pub const NAMES: &'static str = "keep, f32, f16, bf16, f8_e4m3, f8_e5m2";

    /// The file dtype a tensor stored as `source` gets under this choice.
    ///
    /// Only floating-point tensors are cast; integer and byte tensors (`position_ids`, tokenizer
    /// blobs) keep their dtype whatever the choice, as a user of `--dtype f16` expects.
    ///
    /// # Errors
    /// [`Error::ImpossibleCast`] when `source` is a float format this crate cannot decode
    /// (the sub-byte and scale-only formats F4, F6_*, F8_E8M0) and a different dtype is asked for.
    pub fn resolve(self, key: &str, source: Dtype) -> Result<Dtype> {
        let Some(target) = self.file_dtype() else {
            return Ok(source);
        };
        if !is_float(source) || source == target {
            return Ok(source);
        }
        if !can_decode(source) {
            return Err(Error::ImpossibleCast {
                key: key.to_string(),
                from: source.to_string(),
                to: target.to_string(),
                reason: "that packed format cannot be decoded; save it with --dtype keep".into(),
            });
        }
        Ok(target)
    }

    /// The file dtype, `None` for [`TargetDtype::Keep`].
    pub fn file_dtype(self) -> Option<Dtype> {
        match self {
            TargetDtype::Keep => None,
            TargetDtype::F32 => Some(Dtype::F32),
            TargetDtype::F16 => Some(Dtype::F16),
            TargetDtype::BF16 => Some(Dtype::BF16),
            TargetDtype::F8E4M3 => Some(Dtype::F8_E4M3),
            TargetDtype::F8E5M2 => Some(Dtype::F8_E5M2),
        }
    }
}

impl FromStr for TargetDtype {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "keep" => TargetDtype::Keep,
            "f32" | "fp32" | "float32" => TargetDtype::F32,
            "f16" | "fp16" | "float16" | "half" => TargetDtype::F16,
            "bf16" | "bfloat16" => TargetDtype::BF16,
            "f8_e4m3" | "fp8" | "fp8_e4m3" | "fp8_e4m3fn" | "float8_e4m3fn" => TargetDtype::F8E4M3,
            "f8_e5m2" | "fp8_e5m2" | "float8_e5m2" => TargetDtype::F8E5M2,
            _ => {
                return Err(Error::UnsupportedDtype {
                    dtype: s.to_string(),
                    hint: format!("choose one of {}", Self::NAMES),
                })
            }
        })
    }
}

impl fmt::Display for TargetDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            TargetDtype::Keep => "keep",
            TargetDtype::F32 => "f32",
            TargetDtype::F16 => "f16",
            TargetDtype::BF16 => "bf16",
            TargetDtype::F8E4M3 => "f8_e4m3",
            TargetDtype::F8E5M2 => "f8_e5m2",
        };
        f.write_str(s)
    }
}

/// The file dtype of a candle dtype.
pub fn file_dtype(dtype: DType) -> Dtype {
    dtype.into()
}

/// The candle dtype of a file dtype, if candle has one.
pub fn candle_dtype(dtype: Dtype) -> Option<DType> {
    DType::try_from(dtype).ok()
}

/// Whether the dtype is a floating-point format (the ones a cast applies to).
pub fn is_float(dtype: Dtype) -> bool {
    matches!(
        dtype,
        Dtype::F4
            | Dtype::F6_E2M3
            | Dtype::F6_E3M2
            | Dtype::F8_E5M2
            | Dtype::F8_E4M3
            | Dtype::F8_E8M0
            | Dtype::F8_E4M3FNUZ
            | Dtype::F8_E5M2FNUZ
            | Dtype::F16
            | Dtype::BF16
            | Dtype::F32
            | Dtype::F64
    )
}

/// Whether this crate can decode values of the dtype (and so cast them).
pub fn can_decode(dtype: Dtype) -> bool {
    matches!(
        dtype,
        Dtype::F8_E5M2 | Dtype::F8_E4M3 | Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64
    )
}

/// Bytes taken by `numel` elements of `dtype`, `None` when that is not a whole number of bytes
/// (safetensors' rule for the packed sub-byte formats F4 and F6: readers refuse such a tensor)
/// or does not fit in `usize`.
pub fn byte_len(dtype: Dtype, numel: usize) -> Option<usize> {
    let bits = numel.checked_mul(dtype.bitsize())?;
    bits.is_multiple_of(8).then_some(bits / 8)
}

/// Whether elements of the dtype are smaller than a byte (F4, F6_*): such tensors are copied as
/// raw bytes, never cast, sliced by element, transposed or fused.
pub fn is_packed(dtype: Dtype) -> bool {
    !dtype.bitsize().is_multiple_of(8)
}

/// Shape and dtype of one tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Dimensions, outermost first; empty for a 0-dim scalar. For a quantized tensor, its
    /// logical shape (the values the codes stand for, without padding).
    pub shape: Vec<usize>,
    /// Dtype as held; a quantized tensor's values are read as `F32`.
    pub dtype: Dtype,
    /// The quantized format when the tensor is stored as codes with scales
    /// ([`crate::quant`]), `None` for a plain tensor.
    pub quant: Option<crate::quant::Format>,
}

impl TensorInfo {
    /// A new description of a plain tensor.
    pub fn new(shape: Vec<usize>, dtype: Dtype) -> Self {
        Self {
            shape,
            dtype,
            quant: None,
        }
    }

    /// A quantized tensor of logical shape `shape`: its values are read as `F32`.
    pub fn quantized(shape: Vec<usize>, format: crate::quant::Format) -> Self {
        Self {
            shape,
            dtype: Dtype::F32,
            quant: Some(format),
        }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_never_casts() {
        for d in [Dtype::F32, Dtype::I64, Dtype::U8, Dtype::F4] {
            assert_eq!(TargetDtype::Keep.resolve("k", d).unwrap(), d);
        }
    }

    #[test]
    fn integers_are_never_cast() {
        assert_eq!(
            TargetDtype::F16.resolve("k", Dtype::I64).unwrap(),
            Dtype::I64
        );
        assert_eq!(
            TargetDtype::BF16.resolve("k", Dtype::U8).unwrap(),
            Dtype::U8
        );
    }

    #[test]
    fn floats_are_cast() {
        assert_eq!(
            TargetDtype::F16.resolve("k", Dtype::F32).unwrap(),
            Dtype::F16
        );
        assert_eq!(
            TargetDtype::F8E5M2.resolve("k", Dtype::BF16).unwrap(),
            Dtype::F8_E5M2
        );
    }

    #[test]
    fn packed_formats_cannot_be_cast() {
        let err = TargetDtype::F16.resolve("w", Dtype::F4).unwrap_err();
        assert!(matches!(err, Error::ImpossibleCast { .. }), "{err}");
        assert!(err.to_string().contains("--dtype keep"));
    }

    #[test]
    fn packed_sizes_follow_the_safetensors_rule() {
        assert_eq!(byte_len(Dtype::F4, 6), Some(3));
        assert_eq!(byte_len(Dtype::F4, 5), None, "half a byte is not a tensor");
        assert_eq!(byte_len(Dtype::F6_E2M3, 4), Some(3));
        assert_eq!(byte_len(Dtype::F6_E2M3, 3), None);
        assert_eq!(byte_len(Dtype::F32, 3), Some(12));
        assert_eq!(byte_len(Dtype::F64, usize::MAX / 4), None, "overflow");
        assert!(is_packed(Dtype::F4) && is_packed(Dtype::F6_E3M2) && !is_packed(Dtype::U8));
    }

    #[test]
    fn parses_common_spellings() {
        assert_eq!("fp16".parse::<TargetDtype>().unwrap(), TargetDtype::F16);
        assert_eq!("BF16".parse::<TargetDtype>().unwrap(), TargetDtype::BF16);
        assert_eq!(
            "fp8_e4m3fn".parse::<TargetDtype>().unwrap(),
            TargetDtype::F8E4M3
        );
        let err = "int4".parse::<TargetDtype>().unwrap_err().to_string();
        assert!(err.contains("keep, f32"), "{err}");
    }
}
