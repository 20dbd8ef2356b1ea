//! The formats, their names, and the precision a quantizer or dequantizer computes in.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::model::dtype::Dtype;

use super::ggml::GgmlType;
use super::numeric::{round_bf16, round_f16};

/// One of the two 8-bit float code types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fp8 {
    /// `float8_e4m3fn`: 4 exponent bits, 3 mantissa bits, no infinities, largest value 448.
    E4M3,
    /// `float8_e5m2`: 5 exponent bits, 2 mantissa bits, IEEE-like, largest value 57344.
    E5M2,
}

impl Fp8 {
    /// The file dtype of the codes.
    pub fn dtype(self) -> Dtype {
        match self {
            Fp8::E4M3 => Dtype::F8_E4M3,
            Fp8::E5M2 => Dtype::F8_E5M2,
        }
    }

    /// The fp8 type of a file dtype, if it is one of the two.
    pub fn from_dtype(dtype: Dtype) -> Option<Fp8> {
        match dtype {
            Dtype::F8_E4M3 => Some(Fp8::E4M3),
            Dtype::F8_E5M2 => Some(Fp8::E5M2),
            _ => None,
        }
    }

    /// The largest finite value (`torch.finfo(dtype).max`), the saturation bound of quantizers.
    pub fn max(self) -> f32 {
        match self {
            Fp8::E4M3 => 448.0,
            Fp8::E5M2 => 57344.0,
        }
    }

    /// The exact value of a code.
    #[inline(always)]
    pub(crate) fn decode(self, code: u8) -> f32 {
        match self {
            Fp8::E4M3 => crate::cast::f8e4m3_to_f32(code),
            Fp8::E5M2 => crate::cast::f8e5m2_to_f32(code),
        }
    }

    /// ComfyUI's name of the type (`float8_e4m3fn`, `float8_e5m2`).
    pub fn comfy_name(self) -> &'static str {
        match self {
            Fp8::E4M3 => "float8_e4m3fn",
            Fp8::E5M2 => "float8_e5m2",
        }
    }
}

/// A quantized storage format: how a layer's weight is stored as codes plus scales.
///
/// The module documentation ([`super`]) describes each one's members, shapes and arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    /// Legacy "scaled fp8": fp8 codes under `weight`, an f32 scalar `scale_weight`, an optional
    /// `scale_input`, and the model-level `scaled_fp8` marker instead of a per-layer description.
    ScaledFp8(Fp8),
    /// comfy_quant `float8_e4m3fn` / `float8_e5m2`: fp8 codes and one f32 `weight_scale`.
    Float8(Fp8),
    /// comfy_quant `int8_tensorwise`: int8 codes and an f32 `weight_scale`, one per tensor (or,
    /// as kitchen's `per_channel` option writes it, one per row).
    Int8Tensorwise,
    /// comfy_quant `mxfp8`: e4m3 codes, one e8m0 scale per 32 values in the swizzled layout.
    Mxfp8,
    /// comfy_quant `nvfp4`: e2m1 codes two per byte, one e4m3 scale per 16 values in the
    /// swizzled layout, and an f32 tensor scale `weight_scale_2`.
    Nvfp4,
    /// A ggml tensor type (what a GGUF file stores): blocks of values that carry their own
    /// scales, one member and no reductions ([`GgmlType`], [`super::ggml`]).
    Ggml(GgmlType),
}

/// ComfyUI formats this crate recognises but cannot decode, with the reason given to the user.
pub(crate) const UNSUPPORTED: [(&str, &str); 3] = [
    (
        "convrot_w4a4",
        "its 4-bit codes are stored after a Hadamard rotation",
    ),
    (
        "asym_w4a8_int8",
        "its packed int4 codes use per-group and per-channel scales and a codebook",
    ),
    ("awq_w4a16", "its packed uint4 codes use per-group zeros"),
];

impl Format {
    /// Every ComfyUI format, for help texts and tests (the ggml types are [`GgmlType::ALL`]).
    pub const ALL: [Format; 7] = [
        Format::ScaledFp8(Fp8::E4M3),
        Format::ScaledFp8(Fp8::E5M2),
        Format::Float8(Fp8::E4M3),
        Format::Float8(Fp8::E5M2),
        Format::Int8Tensorwise,
        Format::Mxfp8,
        Format::Nvfp4,
    ];

    /// The comfy_quant `format` names this crate reads and writes.
    pub const COMFY_NAMES: &'static str =
        "float8_e4m3fn, float8_e5m2, int8_tensorwise, mxfp8, nvfp4";

    /// The format's name in a `comfy_quant` description; `None` for the legacy layout and the
    /// ggml types.
    pub fn comfy_name(self) -> Option<&'static str> {
        match self {
            Format::ScaledFp8(_) | Format::Ggml(_) => None,
            Format::Float8(fp8) => Some(fp8.comfy_name()),
            Format::Int8Tensorwise => Some("int8_tensorwise"),
            Format::Mxfp8 => Some("mxfp8"),
            Format::Nvfp4 => Some("nvfp4"),
        }
    }

    /// The format a `comfy_quant` name stands for, if this crate supports it.
    pub fn from_comfy_name(name: &str) -> Option<Format> {
        Some(match name {
            "float8_e4m3fn" => Format::Float8(Fp8::E4M3),
            "float8_e5m2" => Format::Float8(Fp8::E5M2),
            "int8_tensorwise" => Format::Int8Tensorwise,
            "mxfp8" => Format::Mxfp8,
            "nvfp4" => Format::Nvfp4,
            _ => return None,
        })
    }

    /// The dtype of the codes member (`weight`): for ggml's quantized types, the bytes of their
    /// blocks (`U8`); F32, F16 and BF16 are stored as themselves.
    pub fn code_dtype(self) -> Dtype {
        match self {
            Format::ScaledFp8(fp8) | Format::Float8(fp8) => fp8.dtype(),
            Format::Int8Tensorwise => Dtype::I8,
            Format::Mxfp8 => Dtype::F8_E4M3,
            Format::Nvfp4 => Dtype::U8,
            Format::Ggml(t) => t.plain_dtype().unwrap_or(Dtype::U8),
        }
    }

    /// Values per block: the unit that shares a block scale (1 for per-tensor formats; ggml's
    /// block length, whose scales are inside the block).
    pub fn block_len(self) -> usize {
        match self {
            Format::Mxfp8 => 32,
            Format::Nvfp4 => 16,
            Format::Ggml(t) => t.block_len(),
            _ => 1,
        }
    }

    /// Whether the format has a member of block scales (and so stores 2-D tensors padded to
    /// whole blocks): mxfp8 and nvfp4. ggml's blocks carry their scales inside the codes.
    pub fn has_block_scales(self) -> bool {
        matches!(self, Format::Mxfp8 | Format::Nvfp4)
    }

    /// The multiple rows and columns are padded to (`None` when the format stores the logical
    /// shape as it is). ComfyUI pads both whenever either needs it.
    pub fn padding(self) -> Option<usize> {
        match self {
            Format::Mxfp8 => Some(32),
            Format::Nvfp4 => Some(16),
            _ => None,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Format::ScaledFp8(fp8) => write!(f, "scaled fp8 ({})", fp8.comfy_name()),
            Format::Ggml(t) => write!(f, "ggml {t}"),
            other => f.write_str(other.comfy_name().unwrap_or("?")),
        }
    }
}

impl FromStr for Format {
    type Err = Error;

    /// The command-line spellings (`scaled-fp8`, `scaled-fp8-e5m2`, `fp8`, `fp8-e5m2`, `int8`,
    /// `mxfp8`, `nvfp4`) and the comfy_quant names.
    fn from_str(s: &str) -> Result<Self> {
        let lower = s.to_ascii_lowercase();
        Ok(match lower.as_str() {
            "scaled-fp8" | "scaled_fp8" | "scaled-fp8-e4m3" => Format::ScaledFp8(Fp8::E4M3),
            "scaled-fp8-e5m2" | "scaled_fp8_e5m2" => Format::ScaledFp8(Fp8::E5M2),
            "fp8" | "fp8-e4m3" | "fp8_e4m3" => Format::Float8(Fp8::E4M3),
            "fp8-e5m2" | "fp8_e5m2" => Format::Float8(Fp8::E5M2),
            "int8" => Format::Int8Tensorwise,
            _ => Format::from_comfy_name(&lower).ok_or_else(|| {
                Error::InvalidInput(format!(
                    "unknown quantization format `{s}`: choose scaled-fp8, scaled-fp8-e5m2, fp8, \
                     fp8-e5m2, int8, mxfp8 or nvfp4"
                ))
            })?,
        })
    }
}

/// The floating-point type comfy-kitchen computes in.
///
/// Quantizing, it is the dtype of the tensor handed to the quantizer: the fp8 and int8 quantizers
/// scale the values in that dtype (`x * (1 / scale).to(x.dtype)`, each product rounded to it),
/// and nvfp4's fresh tensor scale is divided in it. Dequantizing, it is the output dtype: the fp8
/// and nvfp4 dequantizers round the scales to it before multiplying. Values are passed as f32
/// either way; under [`Precision::Bf16`] and [`Precision::F16`] every value a decoder returns is
/// exactly representable in that dtype, so the cast that follows is exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Precision {
    /// 32-bit float (also what f64 and fp8 inputs are given as, after their exact or rounded
    /// conversion to f32).
    F32,
    /// bfloat16.
    Bf16,
    /// IEEE half.
    F16,
}

impl Precision {
    /// The precision a tensor stored as `dtype` is quantized in.
    ///
    /// F32 and F64 (converted to f32 first: kitchen would compute in f64) and the fp8 types
    /// (exact in f32; torch has no fp8 arithmetic) quantize in f32.
    ///
    /// # Errors
    /// [`Error::Quantized`] when `dtype` is not floating point (integers, bool) or is a packed or
    /// scale-only float (F4, F6_*, F8_E8M0) whose values cannot be read.
    pub fn of_source(layer: &str, dtype: Dtype) -> Result<Precision> {
        match dtype {
            Dtype::F32 | Dtype::F64 | Dtype::F8_E4M3 | Dtype::F8_E5M2 => Ok(Precision::F32),
            Dtype::BF16 => Ok(Precision::Bf16),
            Dtype::F16 => Ok(Precision::F16),
            other => Err(Error::Quantized {
                layer: layer.to_string(),
                reason: format!(
                    "cannot quantize a {other} tensor: only floating-point weights (F32, F16, \
                     BF16, F64, F8) can be quantized; leave it out of the quantized layers"
                ),
            }),
        }
    }

    /// The precision a dequantizer computes in when its values are written as `dtype`: BF16 and
    /// F16 as themselves, every other dtype (f32, f64, a re-encoding to fp8) from f32 values.
    pub fn of_output(dtype: Dtype) -> Precision {
        match dtype {
            Dtype::BF16 => Precision::Bf16,
            Dtype::F16 => Precision::F16,
            _ => Precision::F32,
        }
    }

    /// `x` rounded to this precision (f32 is unchanged).
    #[inline(always)]
    pub(crate) fn round(self, x: f32) -> f32 {
        match self {
            Precision::F32 => x,
            Precision::Bf16 => round_bf16(x),
            Precision::F16 => round_f16(x),
        }
    }
}

/// A whole-tensor fact an encoder needs before its first block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reduction {
    /// The largest absolute value of the tensor (NaN if it holds one).
    AbsMax,
    /// The largest absolute value of each row (int8 with row scales).
    RowAbsMax,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for format in Format::ALL {
            if let Some(name) = format.comfy_name() {
                assert_eq!(Format::from_comfy_name(name), Some(format));
                assert_eq!(name.parse::<Format>().unwrap(), format);
            }
        }
        assert_eq!(
            "scaled-fp8".parse::<Format>().unwrap(),
            Format::ScaledFp8(Fp8::E4M3)
        );
        assert_eq!(
            "FP8-E5M2".parse::<Format>().unwrap(),
            Format::Float8(Fp8::E5M2)
        );
        assert_eq!("int8".parse::<Format>().unwrap(), Format::Int8Tensorwise);
        let err = "q4_k".parse::<Format>().unwrap_err().to_string();
        assert!(err.contains("`q4_k`") && err.contains("nvfp4"), "{err}");
    }

    #[test]
    fn non_float_sources_cannot_be_quantized() {
        for dtype in [
            Dtype::I64,
            Dtype::U8,
            Dtype::BOOL,
            Dtype::F4,
            Dtype::F8_E8M0,
        ] {
            let err = Precision::of_source("blocks.0.lin", dtype).unwrap_err();
            assert!(matches!(err, Error::Quantized { .. }), "{err}");
            let text = err.to_string();
            assert!(
                text.contains("blocks.0.lin") && text.contains(&dtype.to_string()),
                "{text}"
            );
        }
        assert_eq!(
            Precision::of_source("l", Dtype::BF16).unwrap(),
            Precision::Bf16
        );
        assert_eq!(
            Precision::of_source("l", Dtype::F64).unwrap(),
            Precision::F32
        );
    }

    #[test]
    fn code_dtypes_are_comfyuis_storage_types() {
        assert_eq!(Format::Nvfp4.code_dtype(), Dtype::U8);
        assert_eq!(Format::Mxfp8.code_dtype(), Dtype::F8_E4M3);
        assert_eq!(Format::Int8Tensorwise.code_dtype(), Dtype::I8);
        assert_eq!(Format::Float8(Fp8::E5M2).code_dtype(), Dtype::F8_E5M2);
        assert_eq!(
            Format::ScaledFp8(Fp8::E4M3).to_string(),
            "scaled fp8 (float8_e4m3fn)"
        );
        assert_eq!(Format::Ggml(GgmlType::Q4_K).code_dtype(), Dtype::U8);
        assert_eq!(Format::Ggml(GgmlType::BF16).code_dtype(), Dtype::BF16);
        assert_eq!(Format::Ggml(GgmlType::Q4_K).to_string(), "ggml Q4_K");
        assert_eq!(Format::Ggml(GgmlType::Q8_0).block_len(), 32);
        assert!(!Format::Ggml(GgmlType::Q6_K).has_block_scales());
        assert_eq!(Format::Ggml(GgmlType::Q6_K).comfy_name(), None);
    }
}
