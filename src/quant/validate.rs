//! Checks a stored layer's companions (scales, description) against its format: which must be
//! there, which may, and their dtypes and shapes.

use crate::error::Result;
use crate::model::dtype::Dtype;

use super::format::Format;
use super::layout::{quant_error, QuantLayout, Role, StoredMember, BAND_ROWS, COMPANIONS};

/// Dtypes a stored f32 scale may have: ComfyUI converts any of them to f32 on load.
pub(crate) const SCALE_DTYPES: [Dtype; 4] = [Dtype::F32, Dtype::BF16, Dtype::F16, Dtype::F64];

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
