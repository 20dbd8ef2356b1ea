//! What a patch of a merged tensor adds (another tensor, a LoRA's low-rank product, rows of a
//! value), and the checks that it fits the weight it patches.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use super::InputTensor;
use crate::model::dtype::{can_decode, TensorInfo};

/// One patch: `w = w · strength_model` (when ≠ 1), then `w += strength · value` (when ≠ 0).
#[derive(Debug, Clone)]
pub struct Patch {
    /// Factor of the value.
    pub strength: f32,
    /// Factor of the weight before the value is added.
    pub strength_model: f32,
    /// What is added.
    pub value: PatchValue,
}

/// What a patch adds.
#[derive(Debug, Clone)]
pub enum PatchValue {
    /// A tensor of the same shape (another model's weight, or a patched one).
    Tensor(InputTensor),
    /// A LoRA's low-rank product.
    Lora(Arc<LoraFactors>),
    /// ComfyUI's `diff` patch of a LoRA file (`.diff`, `.diff_b`, `.w_norm`, `.b_norm`): the
    /// value added to the rows it names, `w[rows] += strength · value`.
    Diff(RowValue),
    /// ComfyUI's `set` patch (`.set_weight`): the rows it names replaced by the value. The
    /// strength is not used, as ComfyUI's `weight.copy_(value)` does not use it.
    Set(RowValue),
}

/// A tensor laid on rows of the weight (all of them, or the part of a fused weight a LoRA
/// names apart): its row `i` lands on the target row `rows` maps it to.
#[derive(Debug, Clone)]
pub struct RowValue {
    /// The LoRA key, for messages.
    pub name: String,
    /// The value, of the shape of the rows it covers.
    pub value: InputTensor,
    /// Runs of value rows and where they land: `(value rows, first target row)`.
    pub rows: Vec<(Range<usize>, usize)>,
}

/// A LoRA module's factors, and which rows of the target its product lands on.
///
/// The product is `up [out, r] @ down [r, k]` with both flattened after their first dimension;
/// with a `mid` (LoCon's Tucker form) `down` is first replaced by the product of `down` and
/// `mid` ComfyUI computes. Row `i` of the product is added to target row `rows` maps it to.
pub struct LoraFactors {
    /// The LoRA module's name, for messages.
    pub name: String,
    /// `lora_up` / `lora_B`.
    pub up: InputTensor,
    /// `lora_down` / `lora_A`.
    pub down: InputTensor,
    /// `lora_mid`, when present.
    pub mid: Option<InputTensor>,
    /// Runs of product rows and where they land: `(product rows, first target row)`; one run
    /// covering every row for a whole target, several where the target fuses tensors the LoRA
    /// names apart (Flux's q/k/v).
    pub rows: Vec<(Range<usize>, usize)>,
}

impl fmt::Debug for LoraFactors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LoraFactors({}, rows {:?})", self.name, self.rows)
    }
}

impl LoraFactors {
    /// Rank of the factors.
    pub fn rank(&self) -> usize {
        self.down.info().shape.first().copied().unwrap_or(0)
    }

    /// Columns of the product: the target's elements per row.
    pub fn columns(&self) -> usize {
        let down = self.down.info();
        match &self.mid {
            // down [r, in, 1, 1] and mid [r, r, kh, kw]: in · kh · kw.
            Some(mid) => {
                let m = mid.info().shape;
                down.shape.get(1).copied().unwrap_or(0) * m.iter().skip(2).product::<usize>()
            }
            None => down.shape.iter().skip(1).product(),
        }
    }

    /// Rows of the product (`up`'s first dimension).
    pub fn product_rows(&self) -> usize {
        self.up.info().shape.first().copied().unwrap_or(0)
    }
}

/// Why LoRA factors do not fit a target of `target`'s shape, if they do not.
pub(super) fn check_lora(l: &LoraFactors, target: &TensorInfo) -> std::result::Result<(), String> {
    let (up, down) = (l.up.info(), l.down.info());
    let name = &l.name;
    for (what, t) in [("up", &up), ("down", &down)] {
        if !can_decode(t.dtype) || t.shape.len() < 2 {
            return Err(format!(
                "LoRA `{name}`: its {what} factor is {} {:?}, not a floating-point matrix",
                t.dtype, t.shape
            ));
        }
    }
    let rank = down.shape[0];
    if rank == 0 {
        // ComfyUI divides alpha by the rank (a ZeroDivisionError) or multiplies empty factors;
        // either way nothing meaningful: a broken file, refused before anything is written.
        return Err(format!(
            "LoRA `{name}` has rank 0 (down {:?}, up {:?}): its factors are empty, so the module \
             has nothing to add; the file is damaged or was saved without its weights",
            down.shape, up.shape
        ));
    }
    let up_cols: usize = up.shape.iter().skip(1).product();
    if up_cols != rank {
        return Err(format!(
            "LoRA `{name}`: up {:?} does not multiply down {:?} (rank {rank})",
            up.shape, down.shape
        ));
    }
    if let Some(mid) = &l.mid {
        let m = mid.info();
        if m.shape.len() != 4 || m.shape[0] != rank || m.shape[1] != rank || down.shape.len() != 4 {
            return Err(format!(
                "LoRA `{name}`: mid {:?} does not fit down {:?} (expected [{rank}, {rank}, kh, kw] \
                 and a 4-D down)",
                m.shape, down.shape
            ));
        }
    }
    let rows = target.shape.first().copied().unwrap_or(1);
    let cols = target.numel() / rows.max(1);
    if l.columns() != cols {
        return Err(format!(
            "LoRA `{name}` (rank {rank}, down {:?}) makes rows of {} elements; the weight's rows \
             have {cols}",
            down.shape,
            l.columns()
        ));
    }
    let covered: usize = l.rows.iter().map(|(r, _)| r.len()).sum();
    for (r, at) in &l.rows {
        if r.end > l.product_rows() || at + r.len() > rows {
            return Err(format!(
                "LoRA `{name}`: product rows {r:?} (of {}) do not land inside the weight's {rows} \
                 rows at {at}",
                l.product_rows()
            ));
        }
    }
    if covered != l.product_rows() {
        return Err(format!(
            "LoRA `{name}` makes {} rows (up {:?}); the weight it names has {rows}",
            l.product_rows(),
            up.shape
        ));
    }
    Ok(())
}

/// Why a row value does not fit a target of `target`'s shape, if it does not: it must have the
/// shape of the rows it covers (ComfyUI skips a `diff` of another shape with "WEIGHT NOT
/// MERGED"; this tool refuses it).
pub(super) fn check_rows(r: &RowValue, target: &TensorInfo) -> std::result::Result<(), String> {
    let rows = target.shape.first().copied().unwrap_or(1);
    let covered: usize = r.rows.iter().map(|(v, _)| v.len()).sum();
    let expected: Vec<usize> = match target.shape.split_first() {
        Some((_, rest)) => std::iter::once(covered)
            .chain(rest.iter().copied())
            .collect(),
        None => Vec::new(),
    };
    let shape = r.value.info().shape;
    if shape != expected {
        return Err(format!(
            "`{}` has shape {shape:?}, the weight's rows it patches {expected:?}: ComfyUI skips \
             such a patch (\"WEIGHT NOT MERGED\"); this tool refuses it",
            r.name
        ));
    }
    for (v, at) in &r.rows {
        if v.end > covered.max(1) || at + v.len() > rows {
            return Err(format!(
                "`{}`: rows {v:?} do not land inside the weight's {rows} rows at {at}",
                r.name
            ));
        }
    }
    Ok(())
}
