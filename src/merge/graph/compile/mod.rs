//! Compiling a graph: loaders opened (headers only), merge and LoRA nodes evaluated into patch
//! lists, and each save node turned into the components of the file(s) it writes, every tensor
//! one expression of its inputs' tensors.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::Device;

use super::values::{Chains, ClipValue, ModelValue, VaeValue, Value};
use super::{mergeable, open_lora, Graph, GraphNode, Node, Slot, Source, Target};
use crate::error::{Error, Result};
use crate::input::{open as open_input, open_component};
use crate::layout::detect::detect_model;
use crate::layout::GenericPrefixes;
use crate::merge::bake::lora_patches;
use crate::merge::{
    extract_lora_from_difference, BlockRatios, ExtractOptions, InputRecord, KeyFormat, LoraBake,
    LoraReport, LoraType, MergeReport, Recipe,
};
use crate::model::{Arch, ComponentKind, Components, InputMap, Prediction};
use crate::save::LayoutChoice;

mod load;
mod merge;

/// One loader of the graph, as opened: what the recipe and the dry run say about it.
#[derive(Debug, Clone)]
pub struct InputSummary {
    /// The loader node's id.
    pub node: String,
    /// The loader's class.
    pub class: String,
    /// The file or folder name (or the in-memory name).
    pub name: String,
    /// The files its tensors lie in.
    pub files: Vec<PathBuf>,
    /// Bytes of tensor data in those files (0 for tensors held in memory).
    pub bytes: u64,
    /// The architecture its denoiser is, for model loaders.
    pub arch: Option<Arch>,
}

/// One save node, compiled: the files it writes and their components.
#[derive(Debug, Clone)]
pub struct PlannedSave {
    /// The node's index in the graph.
    pub node: usize,
    /// The files, in the order ComfyUI writes them.
    pub files: Vec<SaveFile>,
}

/// One file a save writes.
#[derive(Debug, Clone)]
pub struct SaveFile {
    /// The tensors.
    pub components: Components,
    /// How their keys are laid out.
    pub layout: LayoutChoice,
    /// The prediction the file says (markers, `modelspec.predict_key`).
    pub prediction: Option<Prediction>,
    /// Where it goes.
    pub target: Target,
    /// Metadata keys the save node adds (CLIPSave's `format: pt`).
    pub extra_metadata: Vec<(String, String)>,
    /// The component whose dtype choice the file's tensors take (a text-encoder or VAE file
    /// holds its tensors as the plain layout's one part).
    pub dtype_of: ComponentKind,
    /// The architecture whose `modelspec.*` keys the file gets when its layout is not that
    /// architecture's own (ModelSave's denoiser-only file).
    pub modelspec: Option<Arch>,
}

/// A compiled graph.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// Every save node, in graph order.
    pub saves: Vec<PlannedSave>,
    /// Every loader some save reads, in graph order.
    pub inputs: Vec<InputSummary>,
    /// Nodes no save reads (they are not run), by index.
    pub unused: Vec<usize>,
    /// What each LoRA node applied, in graph order.
    pub loras: Vec<(String, LoraReport)>,
    /// Notes about merges (keys of the first input the second lacks, kept as they are).
    pub notes: Vec<String>,
    /// Tensors computed from more than one source, over all files.
    pub merged: usize,
}

/// How compiling treats what the graph leaves open.
#[derive(Debug, Clone, Default)]
pub(super) struct CompileOptions {
    /// Refuse a LoRA any of whose keys is not applied.
    pub(super) strict: bool,
    /// Refuse keys of a merge's first model its others lack, instead of keeping the first's.
    pub(super) refuse_missing: bool,
    /// Where merged tensors are computed.
    pub(super) device: Option<Device>,
}

/// Compiles `graph`: opens every loader a save reads and builds each saved tensor's expression.
///
/// # Errors
/// [`Error::InvalidInput`] for a graph without a save, merged models of different architectures
/// (naming both), a text encoder or VAE a checkpoint save cannot lay out with its model; the
/// readers' errors for inputs (missing files, invalid headers); LoRA and shape errors as
/// [`crate::merge::merge`] gives them.
pub fn compile(graph: &Graph) -> Result<Compiled> {
    compile_with(graph, &CompileOptions::default())
}

pub(super) fn compile_with(graph: &Graph, opts: &CompileOptions) -> Result<Compiled> {
    let nodes = graph.nodes();
    let saves: Vec<usize> = (0..nodes.len())
        .filter(|&i| nodes[i].node.is_save())
        .collect();
    if saves.is_empty() {
        return Err(Error::InvalidInput(
            "the graph has no save node (CheckpointSave, ModelSave, CLIPSave, VAESave or LoraSave): \
             nothing would be written"
                .into(),
        ));
    }
    // Nodes some save reads, found by walking links back from the saves.
    let mut used = BTreeSet::new();
    let mut stack = saves.clone();
    while let Some(i) = stack.pop() {
        if used.insert(i) {
            stack.extend(nodes[i].node.links().into_iter().map(|(_, s, _)| s.node));
        }
    }
    let mut c = Compiler {
        graph,
        opts,
        opened: BTreeMap::new(),
        values: BTreeMap::new(),
        out: Compiled {
            saves: Vec::new(),
            inputs: Vec::new(),
            unused: (0..nodes.len()).filter(|i| !used.contains(i)).collect(),
            loras: Vec::new(),
            notes: Vec::new(),
            merged: 0,
        },
    };
    // Links only point backwards, so graph order is an evaluation order. A node's outputs are
    // dropped after their last reader ran: a long chain holds one patch list per key, not one
    // per node.
    let mut readers: BTreeMap<usize, usize> = BTreeMap::new();
    for &i in &used {
        for (_, s, _) in nodes[i].node.links() {
            *readers.entry(s.node).or_default() += 1;
        }
    }
    for &i in &used {
        c.evaluate(i)?;
        for (_, s, _) in nodes[i].node.links() {
            if let Some(n) = readers.get_mut(&s.node) {
                *n -= 1;
                if *n == 0 {
                    c.values.remove(&s.node);
                }
            }
        }
    }
    Ok(c.out)
}

/// A checkpoint as opened: its components, shared by every loader of the file.
struct Opened {
    model: Arc<InputMap>,
    clip: Arc<InputMap>,
    vae: Arc<InputMap>,
    audio: Option<Arc<InputMap>>,
    arch: Arch,
    prediction: Option<Prediction>,
    files: Vec<PathBuf>,
    bytes: u64,
}

struct Compiler<'a> {
    graph: &'a Graph,
    opts: &'a CompileOptions,
    /// Checkpoints opened so far, by canonical path: two loaders of one file share its
    /// tensors, so an expression reading both reads each range once.
    opened: BTreeMap<PathBuf, Arc<Opened>>,
    /// Outputs of evaluated nodes, by node index.
    values: BTreeMap<usize, Vec<Value>>,
    out: Compiled,
}

impl Compiler<'_> {
    fn node(&self, i: usize) -> &GraphNode {
        &self.graph.nodes()[i]
    }

    fn value(&self, slot: Slot) -> Result<&Value> {
        self.values
            .get(&slot.node)
            .and_then(|v| v.get(slot.output))
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "output {} of {} was not computed",
                    slot.output,
                    self.node(slot.node).describe()
                ))
            })
    }

    fn model(&self, slot: Slot) -> Result<ModelValue> {
        match self.value(slot)? {
            Value::Model(m) => Ok(m.clone()),
            _ => Err(self.wrong(slot, "MODEL")),
        }
    }

    fn clip(&self, slot: Slot) -> Result<ClipValue> {
        match self.value(slot)? {
            Value::Clip(c) => Ok(c.clone()),
            _ => Err(self.wrong(slot, "CLIP")),
        }
    }

    fn vae(&self, slot: Slot) -> Result<VaeValue> {
        match self.value(slot)? {
            Value::Vae(v) => Ok(v.clone()),
            _ => Err(self.wrong(slot, "VAE")),
        }
    }

    fn wrong(&self, slot: Slot, wants: &str) -> Error {
        Error::InvalidInput(format!(
            "output {} of {} is not a {wants}",
            slot.output,
            self.node(slot.node).describe()
        ))
    }

    fn evaluate(&mut self, i: usize) -> Result<()> {
        let gn = self.node(i).clone();
        let me = gn.describe();
        let device = self.opts.device.as_ref();
        let values = match &gn.node {
            Node::Checkpoint(source) => self.load_checkpoint(&gn, source)?,
            Node::DiffusionModel(source) => vec![self.load_model(&gn, source)?],
            Node::TextEncoders { sources, arch } => vec![self.load_clip(&gn, sources, *arch)?],
            Node::Vae(source) => vec![self.load_vae(&gn, source)?],
            Node::Lora {
                model,
                clip,
                lora,
                strength_model,
                strength_clip,
            } => {
                let mut m = self.model(*model)?;
                let mut c = clip.map(|s| self.clip(s)).transpose()?;
                let opened = open_lora(lora)?;
                self.lora_summary(&gn, &opened);
                let bake = LoraBake {
                    lora: opened,
                    strength_model: *strength_model,
                    strength_clip: if c.is_some() { *strength_clip } else { 0.0 },
                };
                let mut target = parts(vec![(ComponentKind::Model, m.chains.base().clone())]);
                if let Some(c) = &c {
                    target.set_inputs(ComponentKind::Clip, c.chains.base().clone());
                }
                let recipe = Recipe {
                    loras: vec![bake],
                    strict: self.opts.strict,
                    ..Recipe::default()
                };
                let mut report = MergeReport::default();
                let steps = lora_patches(Some(m.arch), &target, &recipe, &mut report)
                    .map_err(|e| in_node(&me, e))?;
                for ((kind, key), s) in steps {
                    match (kind, &mut c) {
                        (ComponentKind::Model, _) => m.chains.extend(&key, s),
                        (ComponentKind::Clip, Some(c)) => c.chains.extend(&key, s),
                        _ => {}
                    }
                }
                for r in report.loras {
                    self.out.loras.push((gn.id.clone(), r));
                }
                let mut v = vec![Value::Model(m)];
                v.extend(c.map(Value::Clip));
                v
            }
            Node::ModelMergeSimple {
                model1,
                model2,
                ratio,
            } => {
                let r = *ratio;
                vec![self.merge_models(&me, *model1, *model2, &|_| (1.0 - r, r), device)?]
            }
            Node::ModelMergeBlocks {
                model1,
                model2,
                ratios,
            } => {
                let blocks = BlockRatios::from_entries(ratios.clone());
                let coef = |k: &str| {
                    let r = blocks.ratio(k).unwrap_or(1.0);
                    (1.0 - r, r)
                };
                vec![self.merge_models(&me, *model1, *model2, &coef, device)?]
            }
            Node::ModelSubtract {
                model1,
                model2,
                multiplier,
            } => {
                let m = *multiplier;
                vec![self.merge_models(&me, *model1, *model2, &|_| (-m, m), device)?]
            }
            Node::ModelAdd { model1, model2 } => {
                vec![self.merge_models(&me, *model1, *model2, &|_| (1.0, 1.0), device)?]
            }
            Node::Method {
                name,
                models,
                params,
            } => vec![self.method(&me, name, models, params)?],
            Node::ClipMethod {
                name,
                clips,
                params,
            } => vec![self.clip_method(&me, name, clips, params)?],
            Node::ClipMergeSimple {
                clip1,
                clip2,
                ratio,
            } => {
                let r = *ratio;
                vec![self.merge_clips(&me, *clip1, *clip2, &|_| (1.0 - r, r), device)?]
            }
            Node::ClipSubtract {
                clip1,
                clip2,
                multiplier,
            } => {
                let m = *multiplier;
                vec![self.merge_clips(&me, *clip1, *clip2, &|_| (-m, m), device)?]
            }
            Node::ClipAdd { clip1, clip2 } => {
                vec![self.merge_clips(&me, *clip1, *clip2, &|_| (1.0, 1.0), device)?]
            }
            Node::SaveCheckpoint {
                model,
                clip,
                vae,
                target,
            } => {
                let (m, c, v) = (self.model(*model)?, self.clip(*clip)?, self.vae(*vae)?);
                if let Some(a) = c.arch.filter(|a| !mergeable(*a, m.arch)) {
                    return Err(Error::InvalidInput(format!(
                        "{me}: the model is {} ({}) and the text encoders are for {a} ({}); a \
                         checkpoint holds the text encoders of its model's architecture",
                        m.arch, m.origin, c.origin
                    )));
                }
                let mut components = vec![
                    (ComponentKind::Model, self.materialize(&m.chains)?),
                    (ComponentKind::Clip, self.materialize(&c.chains)?),
                    (ComponentKind::Vae, (*v.tensors).clone()),
                ];
                if let Some(audio) = &v.audio {
                    components.push((ComponentKind::AudioVae, (**audio).clone()));
                }
                let components = parts(components);
                self.out.saves.push(PlannedSave {
                    node: i,
                    files: vec![SaveFile {
                        components,
                        layout: LayoutChoice::Arch(m.arch),
                        prediction: m.prediction,
                        target: target.clone(),
                        extra_metadata: Vec::new(),
                        modelspec: None,
                        dtype_of: ComponentKind::Model,
                    }],
                });
                Vec::new()
            }
            Node::SaveModel { model, target } => {
                let m = self.model(*model)?;
                let components = parts(vec![(ComponentKind::Model, self.materialize(&m.chains)?)]);
                self.out.saves.push(PlannedSave {
                    node: i,
                    files: vec![SaveFile {
                        components,
                        // What `comfy.sd.save_checkpoint` writes without clip and VAE: the
                        // denoiser under its checkpoint prefix, the markers and modelspec.
                        layout: LayoutChoice::Generic(GenericPrefixes::default()),
                        prediction: Some(m.prediction.unwrap_or(m.arch.default_prediction())),
                        target: target.clone(),
                        extra_metadata: Vec::new(),
                        modelspec: Some(m.arch),
                        dtype_of: ComponentKind::Model,
                    }],
                });
                Vec::new()
            }
            Node::SaveClip { clip, target } => {
                let c = self.clip(*clip)?;
                let tensors = self.materialize(&c.chains)?;
                let files = super::outputs::clip_files(&me, tensors, target)?;
                self.out.saves.push(PlannedSave { node: i, files });
                Vec::new()
            }
            Node::SaveLora {
                model,
                clip,
                rank,
                lora_type,
                bias_diff,
                target,
            } => {
                let files = self.save_lora(&me, *model, *clip, *rank, *lora_type, *bias_diff)?;
                self.out.saves.push(PlannedSave {
                    node: i,
                    files: vec![SaveFile {
                        components: files,
                        layout: LayoutChoice::plain(),
                        prediction: None,
                        target: target.clone(),
                        extra_metadata: Vec::new(),
                        modelspec: None,
                        dtype_of: ComponentKind::Model,
                    }],
                });
                Vec::new()
            }
            Node::SaveVae { vae, target } => {
                let v = self.vae(*vae)?;
                let components = parts(vec![(ComponentKind::Model, (*v.tensors).clone())]);
                self.out.saves.push(PlannedSave {
                    node: i,
                    files: vec![SaveFile {
                        components,
                        layout: LayoutChoice::plain(),
                        prediction: None,
                        target: target.clone(),
                        extra_metadata: Vec::new(),
                        modelspec: None,
                        dtype_of: ComponentKind::Vae,
                    }],
                });
                Vec::new()
            }
        };
        self.values.insert(i, values);
        Ok(())
    }

    /// LoraSave: the differences it is fed, factored now (an SVD needs each whole tensor, so
    /// the LoRA is computed when the graph is compiled, and held until it is written).
    fn save_lora(
        &mut self,
        me: &str,
        model: Option<Slot>,
        clip: Option<Slot>,
        rank: usize,
        lora_type: LoraType,
        bias_diff: bool,
    ) -> Result<Components> {
        let mut diff = Vec::new();
        if let Some(m) = model {
            let m = self.model(m)?;
            diff.push((ComponentKind::Model, self.materialize(&m.chains)?));
        }
        if let Some(c) = clip {
            let c = self.clip(c)?;
            diff.push((ComponentKind::Clip, self.materialize(&c.chains)?));
        }
        let opts = ExtractOptions {
            rank,
            clip: clip.is_some(),
            bias_diff,
            lora_type,
            format: KeyFormat::Comfy,
            device: self.opts.device.clone(),
        };
        let (lora, _) =
            extract_lora_from_difference(&parts(diff), &opts).map_err(|e| in_node(me, e))?;
        Ok(Components::new(lora))
    }

    /// Every tensor of `chains` as written, counting the merged ones.
    fn materialize(&mut self, chains: &Chains) -> Result<InputMap> {
        self.out.merged += chains.patched();
        chains.tensors(self.opts.device.as_ref())
    }

    /// Keys of a merge's first input the others lack: kept, with a note (ComfyUI's way), or
    /// refused with [`RunOptions::refuse_missing`](super::RunOptions::refuse_missing).
    fn missing(&mut self, me: &str, first: &str, second: &str, keys: &[String]) -> Result<()> {
        let Some(k) = keys.first() else {
            return Ok(());
        };
        if self.opts.refuse_missing {
            return Err(Error::InvalidInput(format!(
                "{me}: {} key(s) of {first} are not in {second} (first: `{k}`); give \
                 --allow-missing (RunOptions::refuse_missing false) to keep {first}'s tensors there",
                keys.len()
            )));
        }
        self.out.notes.push(format!(
            "{me}: {} key(s) of {first} are not in {second} and stay {first}'s, as ComfyUI \
             leaves them (first: `{k}`)",
            keys.len()
        ));
        Ok(())
    }
}

/// Components made of these parts.
fn parts(parts: Vec<(ComponentKind, InputMap)>) -> Components {
    let mut c = Components::default();
    for (kind, map) in parts {
        c.set_inputs(kind, map);
    }
    c
}

/// `e`, said to be about `node`.
pub(super) fn in_node(node: &str, e: Error) -> Error {
    match e {
        Error::InvalidInput(m) => Error::InvalidInput(format!("{node}: {m}")),
        other => other,
    }
}

/// The record of an input for the recipe.
pub(super) fn record(s: &InputSummary) -> Result<InputRecord> {
    if s.files.is_empty() {
        return Ok(InputRecord::in_memory(&s.name));
    }
    let refs: Vec<&std::path::Path> = s.files.iter().map(PathBuf::as_path).collect();
    InputRecord::of_files(&s.name, &refs)
}
