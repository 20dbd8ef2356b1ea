//! A quantized output: one planned tensor written as codes and scales, encoded from its source's
//! values when the writer reaches its bytes.
//!
//! Its scales come first: given (a merged tensor requantized with the scales it had), or fresh,
//! from whole-tensor reductions of the same values ([`crate::reduce`]), computed once by the
//! first worker that needs them. Block scales (mxfp8, nvfp4) are a function of each block's
//! values and the tensor scale, so the block-scale member is encoded from its rows' values when
//! written, like the codes; nothing the size of the tensor is held.

use std::ops::Range;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::model::dtype::Dtype;
use crate::model::InputTensor;
use crate::offload::quant_device::{DeviceOutput, DevicePlan};
use crate::offload::scale_cache::BlockScaleCache;
use crate::offload::{cuda, Scratch};
use crate::plan::{operand_pieces, Piece};
use crate::quant::{Facts, Format, Precision, QuantLayout, Reduction as Needed, Scales};
use crate::reduce::{reduce, Computed, Reduction, Values};

/// A quantized output tensor (see the [module docs](self)).
pub struct QuantTarget {
    /// The output key of the codes, for messages.
    key: String,
    layout: QuantLayout,
    source: InputTensor,
    /// How the source's values are read (f32).
    values: Vec<Piece>,
    /// The dtype the quantizer computes in: the source's ([`Precision::of_source`]).
    precision: Precision,
    /// A merged source is stored in its base's dtype before it is quantized: its f32 result is
    /// rounded to it first (as saving it and quantizing the file would).
    round: bool,
    /// The values are also rounded to this dtype (that of the file a ggml quantizer reads).
    base: Option<Precision>,
    /// The source's values are all in `base` already (read from a tensor of that dtype): the
    /// rounding changes only NaNs, and only they are rounded.
    in_base: bool,
    /// The scales to encode with; `None`: fresh ones from the reductions.
    given: Option<Scales>,
    /// The activation scale carried into the output (the layer had one).
    input_scale: Option<f32>,
    scales: Computed<Scales>,
    /// The quantized bytes, when the device makes them ([`QuantTarget::device_source`]).
    device: DeviceOutput,
    /// Block scales kept from the encoding of the codes, for the block-scale member.
    block_scales: BlockScaleCache,
}

impl std::fmt::Debug for QuantTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QuantTarget({} as {})", self.key, self.layout.format())
    }
}

impl QuantTarget {
    /// `source` written in `layout` under the codes key `key`, with `given` scales (requantizing
    /// with the existing ones) or fresh ones; `input_scale` is carried when the layout has one.
    ///
    /// # Errors
    /// [`Error::Quantized`] for a source that is not floating point, a layout that cannot be
    /// requantized (smoothed nvfp4 weights), given scales the format cannot use, or a shape
    /// that is not the layout's; planning errors of the source.
    pub(crate) fn new(
        key: &str,
        layout: QuantLayout,
        source: InputTensor,
        given: Option<Scales>,
        input_scale: Option<f32>,
    ) -> Result<QuantTarget> {
        let info = source.info();
        let bad = |reason: String| Error::Quantized {
            layer: layout.layer().to_string(),
            reason,
        };
        let precision = Precision::of_source(layout.layer(), info.dtype)?;
        // ggml's blocks run along the row-major values: any shape of the same count holds them.
        let same = match layout.format() {
            Format::Ggml(_) => info.numel() as u64 == layout.numel(),
            _ => info.shape == layout.shape(),
        };
        if !same {
            return Err(bad(format!(
                "the values have shape {:?}, the layout {:?}",
                info.shape,
                layout.shape()
            )));
        }
        if layout.has_pre_quant_scale() {
            return Err(bad(
                "weights smoothed by a pre_quant_scale (ModelOpt AWQ) cannot be requantized: \
                 write this layer unquantized (--dtype bf16, or exclude it)"
                    .into(),
            ));
        }
        if layout.has_input_scale() && input_scale.is_none() {
            return Err(bad("its input scale is not known".into()));
        }
        if let Some(g) = &given {
            let fits = match layout.format() {
                Format::Mxfp8 => true,
                _ if layout.has_row_scales() => g.row_scales().is_some(),
                _ => g.tensor_scale().is_some(),
            };
            if !fits {
                return Err(bad(format!(
                    "its existing scales do not fit {}; requantize it with fresh scales",
                    layout.format()
                )));
            }
        }
        let values = operand_pieces(key, &source)?;
        let round = matches!(source, InputTensor::Merged(_)) && precision != Precision::F32;
        Ok(QuantTarget {
            key: key.to_string(),
            layout,
            source,
            values,
            precision,
            round,
            base: None,
            in_base: false,
            given,
            input_scale,
            scales: Computed::default(),
            device: DeviceOutput::default(),
            block_scales: BlockScaleCache::default(),
        })
    }

    /// The same target reading its values rounded to `base` first (after the rounding of a
    /// merge to its own dtype), as a quantizer reading them from a file in `base` does.
    pub(crate) fn through(mut self, base: Precision) -> Self {
        self.base = (base != Precision::F32).then_some(base);
        self.in_base = stored_dtype(&self.source)
            .is_some_and(|d| d != Dtype::F32 && Precision::of_output(d) == base);
        self
    }

    /// The output layout.
    pub(crate) fn layout(&self) -> &QuantLayout {
        &self.layout
    }

    /// The source of the values.
    pub(crate) fn source(&self) -> &InputTensor {
        &self.source
    }

    /// The precision the quantizer computes in.
    pub(crate) fn precision(&self) -> Precision {
        self.precision
    }

    /// The activation scale carried into the output.
    pub(crate) fn input_scale(&self) -> Option<f32> {
        self.input_scale
    }

    /// The CUDA tensor whose device reduces and quantizes it (`kernels/quantize.cu`): a candle
    /// source the kernels read, in a format they write; `None` where the CPU encodes.
    pub(crate) fn device_source(&self) -> Option<&candle_core::Tensor> {
        let InputTensor::Candle(t) = &self.source else {
            return None;
        };
        let kernels = !self.round
            && !self.layout.has_row_scales()
            && !self.layout.has_pre_quant_scale()
            && matches!(
                self.layout.format(),
                Format::ScaledFp8(_)
                    | Format::Float8(_)
                    | Format::Int8Tensorwise
                    | Format::Mxfp8
                    | Format::Nvfp4
            );
        (kernels && cuda::quantizes_on_device(t)).then_some(t)
    }

    /// The contiguous CUDA tensor whose device encodes this ggml target's blocks
    /// (`kernels/ggml_quantize.cu`), with the precision of the file the quantizer reads; `None`
    /// where the host encodes (CPU and Metal tensors, strided views, other sources and dtypes).
    pub(crate) fn ggml_device_source(&self) -> Option<(&candle_core::Tensor, Precision)> {
        let InputTensor::Candle(t) = &self.source else {
            return None;
        };
        let quantized = matches!(self.layout.format(), Format::Ggml(g) if g.is_quantized());
        (quantized && !self.round && t.is_contiguous() && cuda::quantizes_on_device(t))
            .then(|| (t, self.base.unwrap_or(Precision::F32)))
    }

    /// Units `units` of member `role` (codes or block scales) as the device quantized them with
    /// `scales`; returns the non-finite count of the values those bytes encode (the whole
    /// tensor's with its first code byte).
    ///
    /// # Errors
    /// Device errors; [`Error::InvalidInput`] when the source is not quantized on a device.
    pub(crate) fn fill_from_device(
        &self,
        scales: &Scales,
        role: crate::quant::Role,
        units: Range<usize>,
        out: &mut [u8],
    ) -> Result<u64> {
        let t = self.device_source().ok_or_else(|| {
            Error::InvalidInput(format!("{} is not quantized on a device", self.key))
        })?;
        self.device.serve(role, units, out, || {
            let dtype = crate::model::dtype::file_dtype(t.dtype());
            let plan =
                DevicePlan::new(&self.layout, dtype, self.precision, scales).ok_or_else(|| {
                    Error::Quantized {
                        layer: self.layout.layer().to_string(),
                        reason: "the device quantizer cannot write this layout".into(),
                    }
                })?;
            cuda::device_quantize(t, &plan)
        })
    }

    /// The block scales kept from the encoding of the codes.
    pub(crate) fn kept_block_scales(&self) -> &BlockScaleCache {
        &self.block_scales
    }

    /// Whether the scales are computed from the values (a reduction pass) rather than given.
    pub(crate) fn needs_reduction(&self) -> bool {
        self.given.is_none() && !self.layout.reductions().is_empty()
    }

    /// The scales to encode with: given, or computed once from the values' reductions by the
    /// first caller (the others wait for it).
    ///
    /// # Errors
    /// Read errors of the values; [`Error::Quantized`] when the fresh scale cannot be computed
    /// (an all-zero tensor, NaN or Inf values).
    pub(crate) fn scales(&self, scratch: &mut Scratch) -> Result<Arc<Scales>> {
        self.scales.get_or_compute(|| {
            let scales = match &self.given {
                Some(g) => g.clone(),
                None => self.fresh(scratch)?,
            };
            match self.input_scale.filter(|_| self.layout.has_input_scale()) {
                Some(s) => scales.with_input_scale(self.layout.layer(), s),
                None => Ok(scales),
            }
        })
    }

    /// How many times the scales were computed (once, whatever the number of askers).
    #[cfg(test)]
    pub(crate) fn scale_runs(&self) -> usize {
        self.scales.runs()
    }

    fn fresh(&self, scratch: &mut Scratch) -> Result<Scales> {
        let wants: Vec<Reduction> = self
            .layout
            .reductions()
            .iter()
            .map(|r| match r {
                Needed::AbsMax => Reduction::AbsMax,
                Needed::RowAbsMax => Reduction::RowAbsMax,
            })
            .collect();
        let facts = if wants.is_empty() {
            Facts::default()
        } else if let (Some(t), [Reduction::AbsMax]) = (self.device_source(), wants.as_slice()) {
            // Reduced where the values are: nothing crosses to the host but the maximum.
            Facts {
                abs_max: Some(cuda::device_abs_max(t)?),
                row_abs_max: None,
            }
        } else {
            let r = reduce(self, &[], &wants, scratch)?;
            Facts {
                abs_max: r.abs_max,
                row_abs_max: r.row_abs_max,
            }
        };
        self.layout.fresh_scales(&facts, self.precision)
    }
}

/// The dtype every value of `t` is stored in, where they are read as stored (not computed).
fn stored_dtype(t: &InputTensor) -> Option<Dtype> {
    match t {
        InputTensor::Candle(_) | InputTensor::File(_) => Some(t.info().dtype),
        InputTensor::Transposed(inner) => stored_dtype(inner),
        InputTensor::Joined(j) => {
            let mut dtypes = j.parts().iter().map(|(p, _)| stored_dtype(p));
            let first = dtypes.next()??;
            dtypes.all(|d| d == Some(first)).then_some(first)
        }
        InputTensor::Merged(_) | InputTensor::Quantized(_) => None,
    }
}

impl Values for QuantTarget {
    fn len(&self) -> usize {
        self.layout.numel() as usize
    }

    fn cols(&self) -> usize {
        let rows = self.layout.shape().first().copied().unwrap_or(1).max(1);
        self.len() / rows
    }

    /// The values the quantizer sees: the source's, rounded to its stored dtype when it is
    /// computed in f32 (a merge).
    fn read(&self, range: Range<usize>, out: &mut [f32], scratch: &mut Scratch) -> Result<()> {
        self.read_values(range, out, scratch, false).map(drop)
    }
}

impl QuantTarget {
    /// [`Values::read`], and how many of the values read are NaN or infinite (the count the
    /// encoders report).
    pub(crate) fn read_counted(
        &self,
        range: Range<usize>,
        out: &mut [f32],
        scratch: &mut Scratch,
    ) -> Result<u64> {
        self.read_values(range, out, scratch, true)
    }

    /// The values, and their non-finite count where `counted` asks for it or the NaN
    /// re-rounding below needs it (it looks for NaNs with the same pass); 0 otherwise.
    fn read_values(
        &self,
        range: Range<usize>,
        out: &mut [f32],
        scratch: &mut Scratch,
        counted: bool,
    ) -> Result<u64> {
        crate::offload::read_f32(&self.values, range, out, scratch)?;
        if self.round {
            let p = self.precision;
            out.iter_mut().for_each(|v| *v = p.round(*v));
        }
        match self.base {
            Some(b) if !self.in_base => out.iter_mut().for_each(|v| *v = b.round(*v)),
            _ => {}
        }
        let renan = self.in_base && self.base.is_some();
        let count = match counted || renan {
            true => crate::cast::count_non_finite(crate::offload::as_bytes(out), Dtype::F32),
            false => 0,
        };
        // f16 and bf16 values round to themselves, but a NaN may come back quieted; NaNs are
        // rare, and there are none unless the count found a non-finite value.
        match self.base {
            Some(b) if renan && count > 0 => out
                .iter_mut()
                .filter(|v| v.is_nan())
                .for_each(|v| *v = b.round(*v)),
            _ => {}
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// Values read for a ggml quantizer through a file of their own dtype equal the fully
    /// rounded ones bit for bit, NaNs of every kind included; an f32 source is rounded.
    #[test]
    fn values_already_in_the_base_dtype_read_as_rounded() {
        let bits: Vec<u16> = (0..256u32)
            .map(|i| ((i * 0x0101) ^ 0x5a5a) as u16)
            .chain([
                0x7f80, 0xff80, 0x7f81, 0xffc1, 0x7c00, 0x7c01, 0xfe01, 0x0001, 0x8000,
            ])
            .collect();
        let read = |t: Tensor, base: Precision| {
            let n = t.elem_count();
            let layout = QuantLayout::new(
                "x",
                Format::Ggml(crate::quant::GgmlType::Q8_0),
                &[n / 32, 32],
            )
            .unwrap();
            let target = QuantTarget::new("x.weight", layout, InputTensor::Candle(t), None, None)
                .unwrap()
                .through(base);
            let mut out = vec![0f32; n];
            target
                .read(0..n, &mut out, &mut Scratch::default())
                .unwrap();
            (target.in_base, out)
        };
        let n = bits.len() / 32 * 32;
        for base in [Precision::Bf16, Precision::F16] {
            let t = match base {
                Precision::Bf16 => {
                    let v: Vec<half::bf16> = bits[..n]
                        .iter()
                        .map(|&b| half::bf16::from_bits(b))
                        .collect();
                    Tensor::from_vec(v, n, &Device::Cpu).unwrap()
                }
                _ => {
                    let v: Vec<half::f16> =
                        bits[..n].iter().map(|&b| half::f16::from_bits(b)).collect();
                    Tensor::from_vec(v, n, &Device::Cpu).unwrap()
                }
            };
            let wide: Vec<f32> = t
                .to_dtype(candle_core::DType::F32)
                .unwrap()
                .to_vec1()
                .unwrap();
            let (in_base, got) = read(t, base);
            assert!(in_base, "{base:?}");
            let want: Vec<u32> = wide.iter().map(|&v| base.round(v).to_bits()).collect();
            let got: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
            assert_eq!(got, want, "{base:?}");
        }
        let x: Vec<f32> = (0..64).map(|i| 1.0 + i as f32 * 1e-4).collect();
        let (in_base, got) = read(
            Tensor::from_vec(x.clone(), 64, &Device::Cpu).unwrap(),
            Precision::Bf16,
        );
        assert!(!in_base);
        assert_ne!(got, x);
        assert!(got
            .iter()
            .zip(&x)
            .all(|(g, v)| *g == Precision::Bf16.round(*v)));
    }

    /// Several workers asking for a fresh per-tensor scale at once: computed once, equal to
    /// `amax / 448` (f32, e4m3's largest finite value) from the whole tensor's values.
    #[test]
    fn fresh_scales_are_computed_once_for_all_askers() {
        let values: Vec<f32> = (0..64 * 48)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 8.0)
            .collect();
        let amax = values.iter().fold(0f32, |m, v| m.max(v.abs()));
        let t = Tensor::from_vec(values, (64, 48), &Device::Cpu).unwrap();
        let layout = QuantLayout::new(
            "blocks.0.lin",
            Format::Float8(crate::quant::Fp8::E4M3),
            &[64, 48],
        )
        .unwrap();
        let target = QuantTarget::new(
            "blocks.0.lin.weight",
            layout,
            InputTensor::Candle(t),
            None,
            None,
        )
        .unwrap();
        assert!(target.needs_reduction());
        let got: Vec<f32> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        let mut scratch = Scratch::default();
                        target.scales(&mut scratch).unwrap().tensor_scale().unwrap()
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        assert_eq!(target.scale_runs(), 1);
        assert!(got.iter().all(|s| *s == amax / 448.0), "{got:?} vs {amax}");
    }
}
