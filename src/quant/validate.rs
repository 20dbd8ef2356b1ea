//! A stored layer read back as a layout: its codes' dtype and shape checked against the format
//! (and the model's logical shape), and its companions (scales, description): which must be
//! there, which may, and their dtypes and shapes.

use crate::error::Result;
use crate::model::dtype::Dtype;

use super::format::{Format, Fp8};
use super::ggml::shapes as ggml_shapes;
use super::layout::{quant_error, QuantLayout, Role, StoredMember, BAND_ROWS, COMPANIONS};

/// Dtypes a stored f32 scale may have: ComfyUI converts any of them to f32 on load.
pub(crate) const SCALE_DTYPES: [Dtype; 4] = [Dtype::F32, Dtype::BF16, Dtype::F16, Dtype::F64];

impl QuantLayout {
    /// Validates the members found in a file for `format` and builds the layout they store.
    ///
    /// `members` are the layer's tensors (names relative to the layer; names other than `weight`
    /// and the [`COMPANIONS`] are ignored). `logical` is the shape the model gives the weight
    /// (ComfyUI takes it from the layer's `in_features`/`out_features`); `None` takes the stored
    /// shape, which for mxfp8 and nvfp4 includes any padding: a file alone cannot tell a padded
    /// weight from one whose size was already a multiple of the block.
    ///
    /// For the legacy layout the codes' own dtype decides between e4m3 and e5m2 (the marker's
    /// dtype is the model's, and ComfyUI would convert codes of the other type by value).
    ///
    /// # Errors
    /// [`Error::Quantized`](crate::error::Error::Quantized) naming the layer when the codes are
    /// missing or of the wrong dtype, a scale is missing, extra, of the wrong dtype or shape, the
    /// block scales do not fit the codes, the stored shape cannot hold the format (nvfp4 or mxfp8
    /// rows of a column count that is not a whole number of blocks, tensors that are not 2-D), or
    /// `logical` does not pad to the stored shape.
    pub fn from_stored(
        layer: &str,
        format: Format,
        members: &[StoredMember<'_>],
        logical: Option<&[usize]>,
    ) -> Result<Self> {
        let find = |name: &str| members.iter().find(|m| m.name == name);
        let codes =
            find("weight").ok_or_else(|| quant_error(layer, "the codes `weight` are missing"))?;
        let format = match format {
            Format::ScaledFp8(_) => match Fp8::from_dtype(codes.dtype) {
                Some(fp8) => Format::ScaledFp8(fp8),
                None => {
                    return Err(quant_error(
                        layer,
                        format!(
                            "scaled fp8 codes `{layer}.weight` are {}, not F8_E4M3 or F8_E5M2",
                            codes.dtype
                        ),
                    ))
                }
            },
            other => other,
        };
        if codes.dtype != format.code_dtype() {
            return Err(quant_error(
                layer,
                format!(
                    "{format} codes `{layer}.weight` must be {}, not {}",
                    format.code_dtype(),
                    codes.dtype
                ),
            ));
        }
        let stored = stored_logical(layer, format, codes.shape)?;
        let shape = match logical {
            Some(logical) => {
                check_logical(layer, format, logical, &stored)?;
                logical.to_vec()
            }
            None => stored.clone(),
        };
        let mut layout = QuantLayout::new(layer, format, &shape)?;
        if format.has_block_scales() {
            // The stored rows are the logical rows or those padded (kitchen pads only when one
            // dimension needs it, then both).
            layout.stored_rows = stored[0];
            layout.stored_cols = stored[1];
        }
        check_companions(&mut layout, members)?;
        Ok(layout)
    }
}

/// The shape of values the stored codes hold (the padded logical shape for block formats).
fn stored_logical(layer: &str, format: Format, codes: &[usize]) -> Result<Vec<usize>> {
    if let Format::Ggml(t) = format {
        return ggml_shapes::values_shape(layer, t, codes);
    }
    let Some(pad) = format.padding() else {
        return Ok(codes.to_vec());
    };
    let values_per_byte = if format == Format::Nvfp4 { 2 } else { 1 };
    let [rows, code_cols] = codes else {
        return Err(quant_error(
            layer,
            format!("{format} codes `{layer}.weight` must be 2-D, not of shape {codes:?}"),
        ));
    };
    let cols = code_cols.saturating_mul(values_per_byte);
    if *rows == 0 || cols == 0 || !cols.is_multiple_of(pad) {
        return Err(quant_error(
            layer,
            format!(
                "{format} codes `{layer}.weight` of shape {codes:?} hold rows of {cols} values, \
                 which is not a whole, non-zero number of {pad}-value blocks: the format cannot \
                 hold that column count (ComfyUI pads columns to a multiple of {pad})"
            ),
        ));
    }
    Ok(vec![*rows, cols])
}

/// Checks that the logical shape a model gives pads to the stored one.
fn check_logical(layer: &str, format: Format, logical: &[usize], stored: &[usize]) -> Result<()> {
    let fits = match format.padding() {
        None => logical == stored,
        Some(pad) => {
            logical.len() == 2
                && (stored[0] == logical[0]
                    || Some(stored[0]) == logical[0].checked_next_multiple_of(pad))
                && Some(stored[1]) == logical[1].checked_next_multiple_of(pad)
        }
    };
    if fits {
        return Ok(());
    }
    Err(quant_error(
        layer,
        format!(
            "the model's weight shape {logical:?} does not fit {format} codes holding {stored:?} \
             values"
        ),
    ))
}

/// The companions a format uses: (name, role, required).
fn companions(format: Format) -> &'static [(&'static str, Role, bool)] {
    match format {
        Format::ScaledFp8(_) => &[
            ("scale_weight", Role::TensorScale, true),
            ("scale_input", Role::InputScale, false),
        ],
        Format::Float8(_) => &[
            ("weight_scale", Role::TensorScale, true),
            ("input_scale", Role::InputScale, false),
            ("comfy_quant", Role::Description, false),
        ],
        Format::Int8Tensorwise => &[
            ("weight_scale", Role::TensorScale, true),
            ("comfy_quant", Role::Description, false),
        ],
        Format::Mxfp8 => &[
            ("weight_scale", Role::BlockScales, true),
            ("input_scale", Role::InputScale, false),
            ("comfy_quant", Role::Description, false),
        ],
        Format::Ggml(_) => &[],
        Format::Nvfp4 => &[
            ("weight_scale", Role::BlockScales, true),
            ("weight_scale_2", Role::TensorScale, true),
            ("input_scale", Role::InputScale, false),
            ("pre_quant_scale", Role::PreQuantScale, false),
            ("comfy_quant", Role::Description, false),
        ],
    }
}

/// Validates the companions among `members` and records the optional ones in `layout`.
pub(crate) fn check_companions(
    layout: &mut QuantLayout,
    members: &[StoredMember<'_>],
) -> Result<()> {
    let layer = layout.layer.clone();
    let format = layout.format;
    let allowed = companions(format);
    for member in members.iter().filter(|m| COMPANIONS.contains(&m.name)) {
        if !allowed.iter().any(|(name, _, _)| *name == member.name) {
            return Err(quant_error(
                &layer,
                format!(
                    "`{layer}.{}` does not belong to a {format} layer (its members are `weight` \
                     and {}); the file mixes two quantization layouts",
                    member.name,
                    allowed
                        .iter()
                        .map(|(n, _, _)| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    for &(name, role, required) in allowed {
        let Some(member) = members.iter().find(|m| m.name == name) else {
            if required {
                return Err(quant_error(
                    &layer,
                    format!("{format} needs `{layer}.{name}`, which is missing"),
                ));
            }
            continue;
        };
        check_member(layout, member, role)?;
        match role {
            Role::InputScale => layout.input_scale = true,
            Role::PreQuantScale => layout.pre_quant_scale = true,
            _ => {}
        }
    }
    Ok(())
}

fn check_member(layout: &mut QuantLayout, member: &StoredMember<'_>, role: Role) -> Result<()> {
    let layer = layout.layer.clone();
    let key = format!("{layer}.{}", member.name);
    let numel: usize = member.shape.iter().product();
    let wrong_dtype = |expected: &str| {
        quant_error(
            &layer,
            format!("`{key}` is {}, but must be {expected}", member.dtype),
        )
    };
    let wrong_shape = |expected: String| {
        quant_error(
            &layer,
            format!(
                "`{key}` has shape {:?}, but must be {expected}",
                member.shape
            ),
        )
    };
    match role {
        Role::TensorScale | Role::InputScale => {
            if !SCALE_DTYPES.contains(&member.dtype) {
                return Err(wrong_dtype("a float scale (F32)"));
            }
            let row_scales = layout.format == Format::Int8Tensorwise
                && role == Role::TensorScale
                && layout.shape().len() == 2
                && numel == layout.rows
                && (member.shape == [layout.rows] || member.shape == [layout.rows, 1]);
            if row_scales && numel != 1 {
                layout.row_scales = true;
            } else if numel != 1 {
                let rows = if layout.format == Format::Int8Tensorwise && layout.shape().len() == 2 {
                    format!(" (or [{0}, 1], one per row)", layout.rows)
                } else {
                    String::new()
                };
                return Err(wrong_shape(format!(
                    "a scalar, one value for the tensor{rows}"
                )));
            }
        }
        Role::PreQuantScale => {
            if !SCALE_DTYPES.contains(&member.dtype) {
                return Err(wrong_dtype("a float tensor (F32)"));
            }
            if member.shape != [layout.cols] {
                return Err(wrong_shape(format!(
                    "[{}], one factor per column",
                    layout.cols
                )));
            }
        }
        Role::BlockScales => {
            let dtype = if layout.format == Format::Nvfp4 {
                Dtype::F8_E4M3
            } else {
                Dtype::F8_E8M0
            };
            if member.dtype != dtype && member.dtype != Dtype::U8 {
                return Err(wrong_dtype(&format!("{dtype} (or U8 holding its bytes)")));
            }
            let expect = [
                layout.stored_rows.div_ceil(BAND_ROWS) * BAND_ROWS,
                layout.scale_cols(),
            ];
            if member.shape != expect {
                return Err(quant_error(
                    &layer,
                    format!(
                        "block scales `{key}` of shape {:?} do not fit codes holding {} × {} \
                         values: blocks of {} need scales of shape {expect:?} (rows padded to \
                         {BAND_ROWS}, blocks per row to 4)",
                        member.shape,
                        layout.stored_rows,
                        layout.stored_cols,
                        layout.format.block_len()
                    ),
                ));
            }
        }
        Role::Description => {
            if member.dtype != Dtype::U8 || member.shape.len() != 1 {
                return Err(quant_error(
                    &layer,
                    format!(
                        "`{key}` is {} of shape {:?}, but a description is a 1-D U8 tensor of \
                         JSON bytes",
                        member.dtype, member.shape
                    ),
                ));
            }
        }
        Role::Codes | Role::RowScales => {}
    }
    Ok(())
}
