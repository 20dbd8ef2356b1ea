//! A quantized tensor: ONE logical tensor of the model stored as several tensors ("members") of
//! one layer — codes under `<layer>.weight` plus their scales and description (see
//! [`crate::quant`] for the formats).
//!
//! Detection, layout and merges see its logical shape ([`TensorInfo::quantized`]); a job that
//! needs values reads them range by range through the codec, and a job that keeps it copies its
//! members byte for byte under the output's key names. The small scales are read once, when the
//! tensor is made; codes and block scales stay where they lie.

use std::fmt;
use std::sync::{Arc, OnceLock};

use super::InputTensor;
use crate::error::{Error, Result};
use crate::model::dtype::TensorInfo;
use crate::plan::Piece;
use crate::quant::{
    Format, MemberData, QuantDescription, QuantLayout, Role, ScaledFp8Marker, Scales, StoredMember,
};

/// Where a legacy scaled-fp8 layer's model marker lies, relative to the layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Legacy {
    /// The marker (`<prefix>scaled_fp8`) that made the layer's codes scaled.
    pub marker: ScaledFp8Marker,
    /// The codes' key after the marker's prefix (`input_blocks.1.1.proj_in.weight` under
    /// `model.diffusion_model.`): a key conversion that changes only the prefix keeps it, so the
    /// output's marker goes where the output key's prefix is.
    pub relative: String,
}

/// A quantized tensor: its layout, scales and stored members (see the [module docs](self)).
pub struct QuantTensor {
    layout: QuantLayout,
    scales: Scales,
    /// Members by name relative to the layer (`weight`, `weight_scale`, …), in the order
    /// [`QuantLayout::members`] lists them.
    members: Vec<(String, InputTensor)>,
    legacy: Option<Legacy>,
    /// How the codes and the block scales are read (raw bytes), planned once.
    pieces: OnceLock<[Vec<Piece>; 2]>,
}

impl fmt::Debug for QuantTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuantTensor")
            .field("layer", &self.layout.layer())
            .field("format", &self.layout.format())
            .field("shape", &self.layout.shape())
            .field("members", &self.members)
            .finish()
    }
}

impl QuantTensor {
    /// A quantized layer from its stored members (names relative to the layer: `weight` and the
    /// [`crate::quant::COMPANIONS`] the format has), in `format` as its description says.
    ///
    /// `logical` is the weight's shape when the caller knows it (ComfyUI takes it from the model's
    /// layer); `None` takes the stored shape (see [`QuantLayout::from_stored`]). The scales are
    /// read here, once. A `comfy_quant` member, if given, is kept as a member (its bytes are
    /// written back as they are); `description` carries what it (or the header metadata) says.
    ///
    /// # Errors
    /// [`Error::Quantized`] naming the layer for members that do not form the format (missing,
    /// extra, wrong dtype or shape, codes that do not fit their scales), and zero, negative or
    /// non-finite scales; read errors of the scales.
    pub fn new(
        layer: &str,
        description: QuantDescription,
        members: Vec<(String, InputTensor)>,
        logical: Option<&[usize]>,
    ) -> Result<QuantTensor> {
        let infos: Vec<(String, TensorInfo)> =
            members.iter().map(|(n, t)| (n.clone(), t.info())).collect();
        let stored: Vec<StoredMember<'_>> = infos
            .iter()
            .map(|(name, info)| StoredMember {
                name,
                dtype: info.dtype,
                shape: &info.shape,
            })
            .collect();
        if let Some((name, _)) = infos.iter().find(|(_, i)| i.quant.is_some()) {
            return Err(Error::Quantized {
                layer: layer.to_string(),
                reason: format!("member `{name}` is itself quantized"),
            });
        }
        let layout = QuantLayout::from_stored(layer, description.format, &stored, logical)?
            .with_full_precision_matrix_mult(description.full_precision_matrix_mult);
        let mut bytes = Vec::new();
        for m in layout.members() {
            if matches!(
                m.role,
                Role::TensorScale | Role::RowScales | Role::InputScale | Role::PreQuantScale
            ) {
                if let Some((_, t)) = members.iter().find(|(n, _)| n == m.name) {
                    bytes.push((m.name, t.info().dtype, crate::offload::host_bytes(t)?));
                }
            }
        }
        let data: Vec<MemberData<'_>> = bytes
            .iter()
            .map(|(name, dtype, b)| MemberData {
                name,
                dtype: *dtype,
                bytes: b,
            })
            .collect();
        let scales = layout.read_scales(&data)?;
        // Only the members the layout has, in its order (validation refused the others).
        let mut ordered = Vec::with_capacity(members.len());
        for m in layout.members() {
            if let Some((n, t)) = members.iter().find(|(n, _)| n == m.name) {
                ordered.push((n.clone(), t.clone()));
            }
        }
        Ok(QuantTensor {
            layout,
            scales,
            members: ordered,
            legacy: None,
            pieces: OnceLock::new(),
        })
    }

    /// The same legacy scaled-fp8 layer with the marker that made it one.
    pub fn with_legacy(mut self, legacy: Legacy) -> QuantTensor {
        self.legacy = Some(legacy);
        self
    }

    /// The layout: format, logical shape, members.
    pub fn layout(&self) -> &QuantLayout {
        &self.layout
    }

    /// The format.
    pub fn format(&self) -> Format {
        self.layout.format()
    }

    /// The scales, read once.
    pub fn scales(&self) -> &Scales {
        &self.scales
    }

    /// The stored members, by name relative to the layer.
    pub fn members(&self) -> &[(String, InputTensor)] {
        &self.members
    }

    /// The member called `name` (relative to the layer).
    pub fn member(&self, name: &str) -> Option<&InputTensor> {
        self.members.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// The member holding `role` (the codes, the block scales).
    pub(crate) fn member_of(&self, role: Role) -> Option<&InputTensor> {
        let name = self
            .layout
            .members()
            .into_iter()
            .find(|m| m.role == role)?
            .name;
        self.member(name)
    }

    /// The legacy marker and where it lies, for a legacy scaled-fp8 layer.
    pub fn legacy(&self) -> Option<&Legacy> {
        self.legacy.as_ref()
    }

    /// Shape (logical) and format; the values are read as F32.
    pub fn info(&self) -> TensorInfo {
        TensorInfo::quantized(self.layout.shape().to_vec(), self.format())
    }

    /// The raw pieces of the codes (`0`) and block scales (`1`, empty without them), planned on
    /// first use. Both members are 1-byte dtypes, so a unit is a byte.
    ///
    /// # Errors
    /// Planning errors of a member.
    pub(crate) fn raw_pieces(&self) -> Result<&[Vec<Piece>; 2]> {
        if self.pieces.get().is_none() {
            let plan = |role: Role| -> Result<Vec<Piece>> {
                match self.member_of(role) {
                    Some(t) => {
                        let dtype = t.info().dtype;
                        if dtype.bitsize() != 8 {
                            return Err(Error::Quantized {
                                layer: self.layout.layer().to_string(),
                                reason: format!("the {role:?} member is {dtype}, not one byte"),
                            });
                        }
                        crate::plan::raw_pieces(self.layout.layer(), t)
                    }
                    None => Ok(Vec::new()),
                }
            };
            let both = [plan(Role::Codes)?, plan(Role::BlockScales)?];
            // Another worker may have planned them meanwhile: the same pieces either way.
            let _ = self.pieces.set(both);
        }
        self.pieces.get().ok_or_else(|| {
            Error::InvalidInput(format!(
                "the pieces of `{}` could not be planned",
                self.layout.layer()
            ))
        })
    }
}

/// A quantized tensor as an input tensor.
impl From<QuantTensor> for InputTensor {
    fn from(q: QuantTensor) -> Self {
        InputTensor::Quantized(Arc::new(q))
    }
}
