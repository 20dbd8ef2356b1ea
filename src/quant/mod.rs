//! ComfyUI's quantized weight formats as bit-exact codecs, built for streaming.
//!
//! A quantized weight is one logical tensor stored as several tensors ("members") of one layer:
//! codes under `<layer>.weight` plus the scales that give them values and, for the current
//! layout, a description. This module knows every format's members, shapes and arithmetic; the
//! pipeline reads and writes the members' bytes range by range and asks this module which bytes
//! hold which values ([`QuantLayout::read_span`], [`QuantLayout::write_span`]), to turn them into
//! f32 values ([`QuantLayout::decode`]) and back ([`QuantLayout::encode`]).
//!
//! Everything is bit for bit what ComfyUI (`comfy/quant_ops.py`, `comfy/ops.py`,
//! `comfy/model_detection.py`, `comfy/utils.py`) and comfy-kitchen's eager backend
//! (`comfy_kitchen/backends/eager/quantization.py`, `float_utils.py`, `tensor/*.py`, version
//! 0.2.40) store and compute; `tests/fixtures/quant/` holds the oracle files kitchen made.
//!
//! # The formats
//! Shapes below are for a weight of logical shape `R × C` (mxfp8, nvfp4: 2-D only; the others
//! any shape `S`). All scalars are 0-dimensional tensors (ComfyUI also reads shape `[1]`).
//!
//! ## Legacy scaled fp8 ([`Format::ScaledFp8`])
//! - `weight`: `F8_E4M3` (or `F8_E5M2`), shape `S`: the codes.
//! - `scale_weight`: `F32` scalar `s`; value = `code · s`.
//! - `scale_input` (optional): `F32` scalar, the activation scale for fp8 matrix products; it
//!   does not change the weight's values. ComfyUI drops it when it is 1.0.
//! - no per-layer description: the model carries the marker `<prefix>scaled_fp8`
//!   ([`ScaledFp8Marker`]), an empty tensor whose dtype names the fp8 type (`F32` meaning e4m3fn);
//!   with two elements ComfyUI turns fp8 matrix products off (`full_precision_matrix_mult`).
//!   ComfyUI converts these layers to `float8_e4m3fn` descriptions on load (`convert_old_quants`:
//!   `scale_weight` → `weight_scale`, `scale_input` → `input_scale`), with the same arithmetic.
//!
//! ## `comfy_quant` layers
//! Each layer has `<layer>.comfy_quant`, a 1-D `U8` tensor holding the UTF-8 bytes of
//! `json.dumps({"format": NAME})` (plus `"full_precision_matrix_mult": true` when set); the header
//! metadata `_quantization_metadata` may collect them as `{"format_version": "1.0", "layers":
//! {LAYER: {...}}}`, and ComfyUI then takes the layers' descriptions from it
//! ([`QuantDescription`], [`parse_quantization_metadata`], [`quantization_metadata`]). Every
//! format may carry an `input_scale` (`F32` scalar) except int8; it never changes the weight.
//!
//! - **`float8_e4m3fn` / `float8_e5m2`** ([`Format::Float8`]): `weight` `F8_E4M3` / `F8_E5M2`
//!   shape `S`; `weight_scale` `F32` scalar `s`; value = `code · s`.
//! - **`int8_tensorwise`** ([`Format::Int8Tensorwise`]): `weight` `I8` shape `S`; `weight_scale`
//!   `F32` scalar, or `[R, 1]` (one per row: kitchen's `per_channel`, 2-D only); value =
//!   `code · s`. Layers marked `convrot` (Hadamard-rotated codes) are refused.
//! - **`mxfp8`** ([`Format::Mxfp8`]): `weight` `F8_E4M3` shape `[R', C']` with `R' = ⌈R/32⌉·32`,
//!   `C' = ⌈C/32⌉·32` (padding filled with zeros; ComfyUI pads both dimensions when either needs
//!   it); `weight_scale` `F8_E8M0` (or `U8`) shape `[⌈R'/128⌉·128, ⌈(C'/32)/4⌉·4]`: one e8m0
//!   byte per block of 32 values of a row, in the swizzled layout below; value =
//!   `code · 2^(e - 127)`, except that byte 0 stands for 0 (kitchen's `e8m0_to_f32`).
//! - **`nvfp4`** ([`Format::Nvfp4`]): `weight` `U8` shape `[R', C'/2]` with `R' = ⌈R/16⌉·16`,
//!   `C' = ⌈C/16⌉·16`: two e2m1 codes per byte, the even column in the high nibble;
//!   `weight_scale` `F8_E4M3` (or `U8`) shape `[⌈R'/128⌉·128, ⌈(C'/16)/4⌉·4]`: one e4m3 scale
//!   `b` per block of 16 values, swizzled; `weight_scale_2` `F32` scalar `t` =
//!   `amax / (448 · 6)`; value = `e2m1(code) · (t · b)`. Optional `pre_quant_scale` `[C]`:
//!   ComfyUI multiplies the layer's input by it, so the weight it applies is `value · p[col]`,
//!   which is what [`QuantLayout::decode`] returns.
//!
//! The logical shape is not stored: ComfyUI takes it from the model's layer
//! (`in_features`, `out_features`). A file alone cannot tell padding from data, so
//! [`QuantLayout::from_stored`] takes the logical shape when the caller knows it.
//!
//! ## The swizzled block-scale layout
//! cuBLAS's block-scaling layout, kitchen's `to_blocked`: the `[rows, blocks]` scale matrix is
//! padded with zeros to `[⌈rows/128⌉·128, ⌈blocks/4⌉·4]` and cut into tiles of 128 rows × 4
//! blocks (512 bytes), stored tile after tile along each band of 128 rows; inside a tile, scale
//! `(r, c)` is at `(r % 32) · 16 + (r / 32) · 4 + c`. A band's scales are contiguous, so a range
//! of rows reads or writes the whole bands it touches.
//!
//! # Arithmetic
//! Quantizing: the fp8 formats compute `x · (1/s).to(x.dtype)` in the source dtype (each product
//! rounded to it), clamp to ±fp8 max and convert (round to nearest even); int8 computes `x / s`
//! in the source dtype, rounds half to even and clamps to −128..127; mxfp8 picks the block scale
//! `2^⌈log2(max(amax/448, 2^-127))⌉` and divides in f32; nvfp4 rounds `amax/6/t` to e4m3 (≤ 448)
//! and divides by `t · b` in f32, then rounds to e2m1 (saturating at 6). Dequantizing multiplies
//! in the output dtype for fp8 and nvfp4 (scales rounded to it first), in f32 for int8 and mxfp8.
//! [`Precision`] carries the dtype these steps run in. Fresh scales follow ComfyUI's layouts with
//! `scale="recalculate"` ([`QuantLayout::fresh_scales`]), from the reductions an encoder needs
//! first ([`QuantLayout::reductions`], [`Reducer`]).
//!
//! Differences from kitchen, all on NaN: kitchen's bf16 arithmetic turns a NaN into `0x7FC0` or
//! `0xFFFF` depending on whether torch's vector loop or its scalar tail handles it, so a NaN's
//! sign (and the fp8 NaN code's sign bit) is not reproducible; here NaN keeps its sign.
//!
//! # Streaming
//! A span ([`Span`]) is a range of logical elements with the byte ranges of codes and block scales
//! that hold it, rounded out to whole blocks (reading) or whole rows (writing block formats, whose
//! last span also writes the padding rows). Decoders and encoders work on caller-provided buffers
//! and allocate nothing; their loops are per block, simple enough to vectorise.
//!
//! # ggml's block formats
//! The tensor types of GGUF files (F32, F16, BF16, Q4_0 … Q8_0, Q2_K … Q6_K) are
//! [`Format::Ggml`] formats of this same interface ([`ggml`] documents their blocks and
//! arithmetic): one member, `weight`, holding the blocks (their bytes, or the plain floats),
//! spans rounded out to whole blocks with an empty block-scale range, no scales to read and no
//! reductions, since each block carries its own scales. Their values are gguf-py's and ggml's
//! dequantization; their codes are ggml's reference quantizers'.

mod blocks;
mod codec;
pub(crate) mod describe;
mod format;
pub mod ggml;
mod layout;
mod numeric;
mod scales;
mod select;
mod tensorwise;
mod validate;

#[cfg(test)]
mod tests;

pub use describe::{
    parse_quantization_metadata, quantization_metadata, QuantDescription, ScaledFp8Marker,
};
pub use format::{Format, Fp8, Precision, Reduction};
pub use ggml::GgmlType;
pub use layout::{Member, QuantLayout, Role, Span, StoredMember, BAND_ROWS, COMPANIONS};
pub use scales::{Facts, MemberData, Reducer, Scales};
pub use select::{high_precision, LayerPattern, Quantize, Requantize};

/// The absolute maximum every quantizer takes (NaN if a value is NaN), for the reduction stage.
pub(crate) use numeric::abs_max;
/// The block-scale swizzle, for the device quantizer's tests.
#[cfg(test)]
pub(crate) use numeric::swizzled as numeric_swizzled;
/// The per-tensor quantizers' factors, which the device quantizer is given.
pub(crate) use tensorwise::{fp8_factor, int8_divisor};
