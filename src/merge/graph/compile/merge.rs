//! The merge nodes of a compile: two models or two sets of text encoders merged by ComfyUI's
//! coefficients, and the method nodes (SLERP, TIES, …) over any number of them.

use std::collections::BTreeMap;

use candle_core::Device;

use super::super::values::{merge_chains, ClipValue, MergeStep, ModelValue, Value};
use super::super::{mergeable, Slot};
use super::Compiler;
use crate::error::{Error, Result};

impl Compiler<'_> {
    /// A two-model merge node (ModelMergeSimple, ModelMergeBlocks, …): each key of `first`
    /// merged with `second`'s by the key's `coefficients`; keys `second` lacks stay `first`'s.
    pub(super) fn merge_models(
        &mut self,
        me: &str,
        first: Slot,
        second: Slot,
        coefficients: &dyn Fn(&str) -> (f64, f64),
        device: Option<&Device>,
    ) -> Result<Value> {
        let (a, b) = (self.model(first)?, self.model(second)?);
        if !mergeable(a.arch, b.arch) {
            return Err(Error::InvalidInput(format!(
                "{me}: model1 is {} ({}) and model2 is {} ({}); models of different \
                 architectures cannot be merged",
                a.arch, a.origin, b.arch, b.origin
            )));
        }
        let step = MergeStep {
            node: me,
            takes: &|_| true,
            coefficients,
            device,
        };
        let (chains, notes) = merge_chains(&a.chains, &a.origin, &b.chains, &b.origin, &step)?;
        self.missing(me, "model1", "model2", &notes.not_in_second)?;
        Ok(Value::Model(ModelValue { chains, ..a }))
    }

    /// A method node (see [`super::super::method::method_value`]).
    pub(super) fn method(
        &mut self,
        me: &str,
        name: &str,
        models: &[Slot],
        params: &BTreeMap<String, crate::merge::methods::Param>,
    ) -> Result<Value> {
        let values = models
            .iter()
            .map(|s| self.model(*s))
            .collect::<Result<Vec<_>>>()?;
        let device = self.opts.device.as_ref();
        let (value, merged, missing) =
            super::super::method::method_value(me, name, &values, params, device)?;
        self.out.merged += merged;
        self.missing(me, "the first model", "every other model", &missing)?;
        Ok(value)
    }

    /// A method node over text encoders.
    pub(super) fn clip_method(
        &mut self,
        me: &str,
        name: &str,
        clips: &[Slot],
        params: &BTreeMap<String, crate::merge::methods::Param>,
    ) -> Result<Value> {
        let values = clips
            .iter()
            .map(|s| self.clip(*s))
            .collect::<Result<Vec<_>>>()?;
        let device = self.opts.device.as_ref();
        let (value, merged, missing) =
            super::super::method::clip_method_value(me, name, &values, params, device)?;
        self.out.merged += merged;
        self.missing(me, "the first text encoders", "every other", &missing)?;
        Ok(value)
    }

    /// A two-encoder merge node (CLIPMergeSimple and its kin), as [`Self::merge_models`] but
    /// for text encoders.
    pub(super) fn merge_clips(
        &mut self,
        me: &str,
        first: Slot,
        second: Slot,
        coefficients: &dyn Fn(&str) -> (f64, f64),
        device: Option<&Device>,
    ) -> Result<Value> {
        let (a, b) = (self.clip(first)?, self.clip(second)?);
        if let (Some(x), Some(y)) = (a.arch, b.arch) {
            if !mergeable(x, y) {
                return Err(Error::InvalidInput(format!(
                    "{me}: clip1 is for {x} ({}) and clip2 for {y} ({}); text encoders of \
                     different architectures cannot be merged",
                    a.origin, b.origin
                )));
            }
        }
        // CLIPMergeSimple and its kin leave these as clip1 has them.
        let takes = |k: &str| !(k.ends_with(".position_ids") || k.ends_with(".logit_scale"));
        let step = MergeStep {
            node: me,
            takes: &takes,
            coefficients,
            device,
        };
        let (chains, notes) = merge_chains(&a.chains, &a.origin, &b.chains, &b.origin, &step)?;
        self.missing(me, "clip1", "clip2", &notes.not_in_second)?;
        Ok(Value::Clip(ClipValue { chains, ..a }))
    }
}
