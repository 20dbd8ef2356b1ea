//! A GGUF target: a denoiser planned as the file ComfyUI-GGUF's `tools/convert.py` writes (and
//! `fix_5d_tensors.py` completes), as one [`Plan`] whose header is [`gguf_header`]'s and whose
//! pieces fill each tensor where the header places it, zero padding between them; the writer,
//! staging and publish are every save's.
//!
//! What convert.py decides, per tensor of the denoiser (keys in ComfyUI's in-memory names,
//! sorted, as `safetensors.load_file` gives them):
//! - the type: the file's type ([`GgufType`]), except that a tensor whose source is f32 or bf16
//!   is stored F32 when it is 1-D, has at most 1024 elements (`QUANTIZATION_THRESHOLD`), or
//!   matches its architecture's high-precision list (`keys_hiprec`: Wan's `.modulation`, LTX-V's
//!   `scale_shift_table`, HiDream's `.ff_i.gate.weight` and `img_emb.emb_pos`); an f16 (or fp8)
//!   source keeps the file's type, as convert.py keeps it;
//! - SD1 and SDXL tensors of more than one dimension, at least 512 elements, a multiple of 256
//!   of them and rows that are not, stored as rows of 256 with their shape in
//!   `comfy.gguf.orig_shape.<key>` (INT32 array);
//! - tensors of more than 4 dimensions (Wan's and HunyuanVideo's patch embeddings), which
//!   convert.py sets aside and `fix_5d_tensors.py` adds back as F32, in F32 at their place;
//! - the metadata: `general.architecture`, `general.quantization_version` (2),
//!   `general.file_type` (1 for F16, 32 for BF16), then the original shapes in tensor order.
//!
//! For a quantized [`GgufType`], that file is then quantized as llama-quantize (with
//! ComfyUI-GGUF's `lcpp.patch`) quantizes it ([`super::gguf_quantize`]): each tensor it quantizes
//! is planned as ggml blocks encoded when written ([`QuantTarget`]), the others keep convert.py's
//! type.
//!
//! Values are cast once from the source (a quantized input's decoded values included), as
//! gguf-py's `quantize` casts numpy's f32 (round to nearest even).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::gguf::{gguf_header, GgufTensorInfo};
use super::gguf_quantize::{written_shape, Quantizer};
use super::target::QuantTarget;
use super::{runs, HostBytes, Piece, PieceSource, Plan, PlannedTensor};
use crate::error::{Error, Result};
use crate::model::dtype::Dtype;
use crate::model::{Arch, InputMap, InputTensor};
use crate::quant::{Format, GgmlType, Precision, QuantLayout, Role};
use crate::read::gguf::{MetaArray, MetaValue};
use crate::read::SafetensorsFile;

pub use super::gguf_quantize::GgufTarget;
pub use super::gguf_type::GgufType;

/// convert.py's `QUANTIZATION_THRESHOLD`: tensors with at most this many elements stay F32.
const QUANTIZATION_THRESHOLD: usize = 1024;
/// convert.py's `REARRANGE_THRESHOLD`: SD1/SDXL tensors from this many elements are reshaped.
const REARRANGE_THRESHOLD: usize = 512;
/// convert.py's `MAX_TENSOR_NAME_LENGTH` (ggml's `GGML_MAX_NAME` less its terminator).
const MAX_NAME: usize = 127;
/// convert.py's `MAX_TENSOR_DIMS`: more dimensions go through `fix_5d_tensors.py` (F32).
const MAX_TENSOR_DIMS: usize = 4;

/// ComfyUI-GGUF's architecture string (convert.py's `arch`) of `arch`.
pub(crate) fn gguf_arch(arch: Arch) -> &'static str {
    match arch {
        Arch::Sd15 | Arch::Sd2 => "sd1",
        Arch::Sdxl | Arch::SdxlRefiner => "sdxl",
        Arch::Sd3 => "sd3",
        Arch::Flux | Arch::FluxSchnell | Arch::Chroma | Arch::Flux2 => "flux",
        Arch::Wan21 | Arch::Wan22 => "wan",
        Arch::QwenImage => "qwen_image",
        // Not in ComfyUI-GGUF's `IMG_ARCH_LIST` (2025-12): the string the released Qwen-Image 2.1
        // GGUF files carry and users patch the loader to accept.
        Arch::QwenImage21 => "qwen_image21",
        Arch::HiDream => "hidream",
        Arch::Lumina2 | Arch::ZImage => "lumina2",
        Arch::HunyuanVideo | Arch::HunyuanVideo15 => "hyvid",
        Arch::Ltxv | Arch::Ltx2 => "ltxv",
    }
}

/// convert.py's `keys_hiprec` of `arch` (substrings of keys kept in F32).
fn high_precision(arch: Arch) -> &'static [&'static str] {
    match arch {
        Arch::Wan21 | Arch::Wan22 => &[".modulation"],
        Arch::Ltxv | Arch::Ltx2 => &["scale_shift_table"],
        Arch::HiDream => &[".ff_i.gate.weight", "img_emb.emb_pos"],
        _ => &[],
    }
}

/// One tensor of the target: its type, stored shape and logical shape.
fn place(
    arch: Arch,
    ty: GgufType,
    key: &str,
    src: Dtype,
    shape: &[usize],
) -> (GgmlType, Vec<usize>) {
    let n: usize = shape.iter().product();
    if shape.len() > MAX_TENSOR_DIMS {
        return (GgmlType::F32, shape.to_vec());
    }
    let wide = matches!(src, Dtype::F32 | Dtype::BF16);
    let ggml = if wide
        && (shape.len() <= 1
            || n <= QUANTIZATION_THRESHOLD
            || high_precision(arch).iter().any(|h| key.contains(h)))
    {
        GgmlType::F32
    } else {
        ty.ggml()
    };
    let shape_fix = matches!(
        arch,
        Arch::Sd15 | Arch::Sd2 | Arch::Sdxl | Arch::SdxlRefiner
    );
    let last = shape.last().copied().unwrap_or(1);
    if shape_fix
        && shape.len() > 1
        && n >= REARRANGE_THRESHOLD
        && n.is_multiple_of(256)
        && !last.is_multiple_of(256)
    {
        return (ggml, vec![n / 256, 256]);
    }
    (ggml, shape.to_vec())
}

/// One tensor's place in a GGUF target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placed {
    /// The type convert.py writes it in (llama-quantize's input).
    pub base: GgmlType,
    /// The type written.
    pub ggml: GgmlType,
    /// The shape written (row-major).
    pub shape: Vec<usize>,
    /// Whether convert.py stored it reshaped to rows of 256 (`comfy.gguf.orig_shape`).
    pub reshaped: bool,
}

/// Places tensor `key` (of `dtype` and `shape`) in a GGUF target of `ty`; `quantizer` is the
/// file's, called in file order.
pub(crate) fn decide(
    arch: Arch,
    ty: GgufType,
    quantizer: &mut Quantizer,
    key: &str,
    dtype: Dtype,
    shape: &[usize],
) -> Placed {
    // convert.py's file: the type asked, or for llama-quantize's input the one convert.py
    // picks per tensor (BF16 from bf16, F16 from anything else).
    let base_ty = match ty {
        _ if !ty.is_quantized() => ty,
        _ if dtype == Dtype::BF16 => GgufType::BF16,
        _ => GgufType::F16,
    };
    let (base, stored) = place(arch, base_ty, key, dtype, shape);
    let reshaped = stored != shape;
    // llama-quantize never sees the tensors fix_5d_tensors.py adds back.
    if ty.is_quantized() && stored.len() <= MAX_TENSOR_DIMS {
        let ggml = quantizer.decide(key, base, &stored);
        let shape = written_shape(arch, key, &stored);
        return Placed {
            base,
            ggml,
            shape,
            reshaped,
        };
    }
    Placed {
        base,
        ggml: base,
        shape: stored,
        reshaped,
    }
}

impl Plan {
    /// Plans `model` (a denoiser of `arch` in ComfyUI's in-memory names) as the GGUF file
    /// convert.py writes for it in the target's type, quantized as llama-quantize would for a
    /// quantized type (see the [module docs](self) and [`super::gguf_quantize`]).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an empty model, a key longer than 127 bytes, or a tensor that
    /// is not floating point; planning errors of the sources and of the header.
    pub(crate) fn gguf(model: &InputMap, arch: Arch, target: &GgufTarget) -> Result<Plan> {
        if model.is_empty() {
            return Err(Error::InvalidInput(
                "a GGUF file holds a denoiser; this model has no tensors".into(),
            ));
        }
        let ty = target.ty;
        let mut metadata = vec![
            (
                "general.architecture".to_string(),
                MetaValue::String(gguf_arch(arch).to_string()),
            ),
            (
                "general.quantization_version".to_string(),
                MetaValue::U32(2),
            ),
            (
                "general.file_type".to_string(),
                MetaValue::U32(ty.file_type()),
            ),
        ];
        let mut quantizer = Quantizer::new(target, arch);
        let mut infos = Vec::with_capacity(model.len());
        for (key, t) in model {
            if key.len() > MAX_NAME {
                return Err(Error::InvalidInput(format!(
                    "`{key}` is {} bytes long; GGUF tensor names hold at most {MAX_NAME}",
                    key.len()
                )));
            }
            let info = t.info();
            if !crate::model::dtype::is_float(info.dtype) {
                return Err(Error::InvalidInput(format!(
                    "`{key}` is {}, not floating point: a GGUF denoiser holds float weights",
                    info.dtype
                )));
            }
            let placed = decide(arch, ty, &mut quantizer, key, info.dtype, &info.shape);
            if placed.reshaped {
                let dims = info
                    .shape
                    .iter()
                    .map(|&d| i32::try_from(d))
                    .collect::<std::result::Result<Vec<i32>, _>>()
                    .map_err(|_| {
                        Error::InvalidInput(format!("`{key}` has a dimension beyond INT32"))
                    })?;
                metadata.push((
                    format!("comfy.gguf.orig_shape.{key}"),
                    MetaValue::Array(MetaArray::I32(dims)),
                ));
            }
            infos.push((
                GgufTensorInfo {
                    name: key.clone(),
                    shape: placed.shape,
                    ggml_type: placed.ggml,
                },
                placed.base,
            ));
        }
        let items = infos
            .into_iter()
            .zip(model)
            .map(|((info, base), (_, t))| (info, base, t.clone()))
            .collect();
        assemble(&metadata, items)
    }
}

/// The plan of a GGUF file: `metadata` and the header of `items` (each tensor as written, the
/// type convert.py wrote it in, and its source), then each tensor's pieces where the header
/// places it, zero padding after each.
///
/// # Errors
/// Header planning errors; planning errors of the sources.
pub(super) fn assemble(
    metadata: &[(String, MetaValue)],
    items: Vec<(GgufTensorInfo, GgmlType, InputTensor)>,
) -> Result<Plan> {
    let header = gguf_header(
        metadata,
        &items.iter().map(|(i, _, _)| i.clone()).collect::<Vec<_>>(),
    )?;
    let mut tensors = Vec::with_capacity(items.len());
    let mut pieces = Vec::new();
    let mut targets = Vec::new();
    let mut kept_blocks = Vec::new();
    let zeros: HostBytes = Arc::new(vec![0u8; header.alignment as usize]);
    for (i, ((info, base, t), (begin, end))) in items.iter().zip(&header.offsets).enumerate() {
        let key = &info.name;
        let dst = info.ggml_type.plain_dtype().unwrap_or(Dtype::U8);
        let mut at = *begin;
        let sources = match info.ggml_type.plain_dtype() {
            Some(_) => runs(key, t)?,
            None => match kept(t, info) {
                Some(codes) => {
                    kept_blocks.resize(i + 1, None);
                    kept_blocks[i] = Some(info.ggml_type);
                    runs(key, codes)?
                }
                None => blocks(key, t, info, *base, &mut targets)?,
            },
        };
        for (source, src_dtype, units) in sources {
            let p = Piece {
                source,
                src_dtype,
                dst_dtype: dst,
                start: at,
                units,
                tensor: i,
            };
            at = p.end();
            pieces.push(p);
        }
        if at != *end {
            return Err(Error::InvalidInput(format!(
                "`{key}`: {} bytes planned for a {}-byte GGUF tensor",
                at - begin,
                end - begin
            )));
        }
        let pad = end.next_multiple_of(header.alignment) - end;
        // Zeros to the next tensor; after the last one too (gguf-py writes them).
        if pad > 0 {
            pieces.push(Piece {
                source: PieceSource::Host {
                    bytes: Arc::clone(&zeros),
                    offset: 0,
                },
                src_dtype: Dtype::U8,
                dst_dtype: Dtype::U8,
                start: *end,
                units: pad as usize,
                tensor: i,
            });
        }
        tensors.push(PlannedTensor {
            name: key.clone(),
            dtype: dst,
            shape: info.shape.clone(),
            offsets: (*begin, *end),
        });
    }
    let mut inputs: Vec<Arc<SafetensorsFile>> = Vec::new();
    for (_, _, t) in &items {
        t.input_files(&mut |f| {
            if !inputs.iter().any(|g| Arc::ptr_eq(g, f)) {
                inputs.push(Arc::clone(f));
            }
        });
    }
    let text: BTreeMap<String, String> = metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect();
    Ok(Plan {
        header: header.bytes,
        tensors,
        pieces,
        data_len: header.data_len,
        inputs,
        metadata: text,
        targets,
        kept_blocks,
    })
}

/// The input's own blocks when it holds `info.ggml_type` already (`--dtype keep`: copied byte
/// for byte, as llama-quantize copies a tensor already in the type it chose), read as any shape
/// (an SD1/SDXL tensor the input's `orig_shape` reshapes): blocks run along the values in
/// order, so their bytes are the same for every stored shape whose rows are whole blocks.
fn kept<'a>(t: &'a InputTensor, info: &GgufTensorInfo) -> Option<&'a InputTensor> {
    match t {
        InputTensor::Quantized(q) if q.layout().format() == Format::Ggml(info.ggml_type) => {
            q.member_of(Role::Codes)
        }
        InputTensor::Joined(j) => match j.parts() {
            [(whole, range)] if range.start == 0 && range.end == whole.info().numel() => {
                kept(whole, info)
            }
            _ => None,
        },
        _ => None,
    }
}

/// The sources of a tensor stored in ggml's blocks of `info.ggml_type`, encoded when written
/// from the values as convert.py's file holds them (rounded to `base`).
fn blocks(
    key: &str,
    t: &InputTensor,
    info: &GgufTensorInfo,
    base: GgmlType,
    targets: &mut Vec<Arc<QuantTarget>>,
) -> Result<Vec<super::Pending>> {
    let layout = QuantLayout::new(key, Format::Ggml(info.ggml_type), &info.shape)?;
    let units = layout.members()[0].shape.iter().product();
    let base = Precision::of_output(base.plain_dtype().unwrap_or(Dtype::F32));
    let target = Arc::new(QuantTarget::new(key, layout, t.clone(), None, None)?.through(base));
    targets.push(Arc::clone(&target));
    let source = PieceSource::Encoded {
        target,
        role: Role::Codes,
        offset: 0,
    };
    Ok(vec![(source, Dtype::U8, units)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn convert_py_keeps_small_one_dimensional_and_listed_tensors_in_f32() {
        let f = GgufType::F16;
        assert_eq!(
            place(Arch::Flux, f, "a.bias", Dtype::BF16, &[3072]).0,
            GgmlType::F32
        );
        assert_eq!(
            place(Arch::Flux, f, "a.w", Dtype::F32, &[32, 32]).0,
            GgmlType::F32
        );
        assert_eq!(
            place(Arch::Flux, f, "a.w", Dtype::F32, &[32, 33]).0,
            GgmlType::F16
        );
        // An f16 source keeps F16, whatever its size (convert.py looks at f32/bf16 only).
        assert_eq!(
            place(Arch::Flux, f, "a.bias", Dtype::F16, &[8]).0,
            GgmlType::F16
        );
        let w = place(
            Arch::Wan21,
            GgufType::BF16,
            "blocks.0.modulation",
            Dtype::BF16,
            &[1, 6, 1536],
        );
        assert_eq!(w.0, GgmlType::F32);
        let p = place(
            Arch::Wan21,
            GgufType::BF16,
            "patch_embedding.weight",
            Dtype::BF16,
            &[1536, 16, 1, 2, 2],
        );
        assert_eq!(p, (GgmlType::F32, vec![1536, 16, 1, 2, 2]));
        assert_eq!(
            place(
                Arch::Wan21,
                GgufType::BF16,
                "x.weight",
                Dtype::BF16,
                &[64, 64]
            )
            .0,
            GgmlType::BF16
        );
    }

    #[test]
    fn sd1_and_sdxl_rows_are_rearranged_to_256() {
        let f = GgufType::F16;
        // A 3×3 convolution: 320·4·9 = 11520 = 45·256 elements, rows of 3.
        let (_, s) = place(
            Arch::Sd15,
            f,
            "input_blocks.0.0.weight",
            Dtype::F16,
            &[320, 4, 3, 3],
        );
        assert_eq!(s, vec![45, 256]);
        // Rows already of 256, too few elements, or a count not a multiple of 256: kept.
        assert_eq!(
            place(Arch::Sdxl, f, "a", Dtype::F16, &[4, 512]).1,
            vec![4, 512]
        );
        assert_eq!(
            place(Arch::Sdxl, f, "a", Dtype::F16, &[2, 128]).1,
            vec![2, 128]
        );
        assert_eq!(
            place(Arch::Sdxl, f, "a", Dtype::F16, &[3, 100]).1,
            vec![3, 100]
        );
        // Never for the transformers.
        assert_eq!(
            place(Arch::Flux, f, "a", Dtype::F16, &[320, 4, 3, 3]).1,
            vec![320, 4, 3, 3]
        );
    }
}
