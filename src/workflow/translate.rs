//! An API prompt as a graph: the nodes the saves read, in an order where every link points
//! back, each checked as ComfyUI's `validate_prompt` checks it (required inputs, links, types,
//! widget limits, choices) and turned into a [`Node`].

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::models::ModelFolders;
use super::nodes::{block_prefixes, is_save, is_value, spec_of, Input, Spec, CLIP_TYPES};
use super::Translated;
use crate::error::{Error, Result};
use crate::merge::graph::{Graph, LoraSource, Node, Slot, Source, Target, MAX_DEPTH};
use crate::merge::LoraType;
use crate::model::Arch;

/// One node of the prompt.
struct PromptNode<'a> {
    class: &'a str,
    inputs: &'a Map<String, Value>,
}

fn err(msg: String) -> Error {
    Error::InvalidInput(msg)
}

/// A link value `["id", index]`.
fn as_link(v: &Value) -> Option<(String, usize)> {
    let a = v.as_array()?;
    if a.len() != 2 {
        return None;
    }
    let id = match &a[0] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    Some((id, usize::try_from(a[1].as_u64()?).ok()?))
}

pub(super) fn translate(prompt: &Map<String, Value>, models: &ModelFolders) -> Result<Translated> {
    let mut nodes: BTreeMap<&str, PromptNode<'_>> = BTreeMap::new();
    for (id, v) in prompt {
        let class = v.get("class_type").and_then(Value::as_str).ok_or_else(|| {
            err(format!(
                "not a ComfyUI workflow: node {id} has no `class_type` (API nodes are \
                 `{{\"class_type\": …, \"inputs\": {{…}}}}`)"
            ))
        })?;
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        let inputs = match v.get("inputs") {
            Some(Value::Object(o)) => o,
            None => EMPTY.get_or_init(Map::new),
            Some(_) => {
                return Err(err(format!(
                    "not a ComfyUI workflow: the `inputs` of node {id} ({class}) are not an object"
                )))
            }
        };
        nodes.insert(id, PromptNode { class, inputs });
    }
    let saves: Vec<&str> = prompt
        .keys()
        .map(String::as_str)
        .filter(|id| is_save(nodes[id].class))
        .collect();
    if saves.is_empty() {
        let classes: BTreeSet<&str> = nodes.values().map(|n| n.class).collect();
        return Err(err(format!(
            "the workflow has no save node this tool runs (CheckpointSave, ModelSave, CLIPSave, \
             VAESave, LoraSave); it has {}",
            classes.into_iter().collect::<Vec<_>>().join(", ")
        )));
    }
    let mut t = Translator {
        nodes: &nodes,
        models,
        order: Vec::new(),
        state: BTreeMap::new(),
        stack: Vec::new(),
    };
    for s in &saves {
        t.visit(s)?;
    }
    let mut graph = Graph::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    for id in t.order.clone() {
        let n = &nodes[id.as_str()];
        if is_value(n.class) {
            continue;
        }
        let node = t.node(&id, &index)?;
        let i = graph.add_with_id(&id, Some(n.class), node)?;
        index.insert(id, i);
    }
    let skipped = prompt
        .iter()
        .filter(|(id, _)| !t.state.contains_key(id.as_str()))
        .map(|(id, v)| {
            format!(
                "node {id} ({})",
                v.get("class_type").and_then(Value::as_str).unwrap_or("?")
            )
        })
        .collect();
    Ok(Translated { graph, skipped })
}

struct Translator<'a, 'b> {
    nodes: &'b BTreeMap<&'a str, PromptNode<'a>>,
    models: &'b ModelFolders,
    /// Nodes in an order where every link points back.
    order: Vec<String>,
    /// `false` while a node is being visited, `true` once done.
    state: BTreeMap<String, bool>,
    /// The nodes being visited, for the cycle's message.
    stack: Vec<String>,
}

impl Translator<'_, '_> {
    fn describe(&self, id: &str) -> String {
        format!("node {id} ({})", self.nodes[id].class)
    }

    fn spec(&self, id: &str) -> Result<Spec> {
        let class = self.nodes[id].class;
        spec_of(class).ok_or_else(|| {
            err(format!(
                "node {id} ({class}) is not a node this tool runs, and a save needs it; this \
                 tool runs model loaders, LoRA loaders, the model and CLIP merge nodes and \
                 the checkpoint, model, CLIP and VAE saves"
            ))
        })
    }

    /// Visits `id` and, first, every node it links to.
    fn visit(&mut self, id: &str) -> Result<()> {
        match self.state.get(id) {
            Some(true) => return Ok(()),
            Some(false) => {
                let from = self.stack.iter().position(|s| s == id).unwrap_or(0);
                let mut cycle: Vec<String> = self.stack[from..]
                    .iter()
                    .map(|s| self.describe(s))
                    .collect();
                cycle.push(self.describe(id));
                return Err(err(format!(
                    "the workflow has a cycle: {}; a graph's links must not loop",
                    cycle.join(" → ")
                )));
            }
            None => {}
        }
        if self.stack.len() >= MAX_DEPTH {
            return Err(err(format!(
                "{}: the workflow chains more than {MAX_DEPTH} nodes from a save back to a \
                 loader, deeper than this tool evaluates; save an intermediate result and load \
                 it in a second workflow",
                self.describe(id)
            )));
        }
        let spec = self.spec(id)?;
        self.state.insert(id.to_string(), false);
        self.stack.push(id.to_string());
        let node = &self.nodes[id];
        for (name, v) in node.inputs {
            let Some((from, slot)) = as_link(v) else {
                continue;
            };
            let Some(f) = self.nodes.get(from.as_str()) else {
                return Err(err(format!(
                    "{}: input `{name}` links to node {from}, which is not in the workflow",
                    self.describe(id)
                )));
            };
            let fspec = spec_of(f.class).ok_or_else(|| {
                err(format!(
                    "{}: input `{name}` comes from node {from} ({}), which this tool does not \
                     run; only loaders, LoRA loaders and merge nodes can feed a save here",
                    self.describe(id),
                    f.class
                ))
            })?;
            if slot >= fspec.outputs.len() {
                return Err(err(format!(
                    "{}: input `{name}` links to output {slot} of {}, which has {} output(s)",
                    self.describe(id),
                    self.describe(&from),
                    fspec.outputs.len()
                )));
            }
            let want = match spec.input(name).map(|i| &i.input) {
                Some(Input::Link(t)) => *t,
                Some(Input::Float(..)) => "FLOAT",
                Some(Input::Int) => "INT",
                Some(Input::Bool) => "BOOLEAN",
                Some(Input::Text(_) | Input::Model(_) | Input::Choice(_)) => "STRING",
                None => {
                    return Err(err(format!(
                        "{}: `{name}` is not an input of {}",
                        self.describe(id),
                        node.class
                    )))
                }
            };
            let got = fspec.outputs[slot];
            let compatible = got == want || (want == "FLOAT" && got == "INT");
            if !compatible {
                return Err(err(format!(
                    "{}: input `{name}` takes a {want}, and output {slot} of {} is a {got}",
                    self.describe(id),
                    self.describe(&from)
                )));
            }
            self.visit(&from)?;
        }
        self.stack.pop();
        self.state.insert(id.to_string(), true);
        self.order.push(id.to_string());
        Ok(())
    }

    /// The value of widget `name` of node `id`: literal, or a value node's (checked the same
    /// way); `None` for a missing optional input.
    fn widget(&self, id: &str, name: &str) -> Result<Option<Value>> {
        let node = &self.nodes[id];
        let spec = self.spec(id)?;
        let Some(input) = spec.input(name) else {
            return Ok(None);
        };
        let Some(v) = node.inputs.get(name) else {
            if input.required {
                return Err(err(format!(
                    "{}: the required input `{name}` is missing",
                    self.describe(id)
                )));
            }
            return Ok(None);
        };
        let v = match as_link(v) {
            Some((from, _)) => match self.widget(&from, "value")? {
                Some(v) => v,
                None => {
                    return Err(err(format!(
                        "{}: `{name}` links to {}, which has no value",
                        self.describe(id),
                        self.describe(&from)
                    )))
                }
            },
            None => v.clone(),
        };
        let at = || format!("{}: {name}", self.describe(id));
        match &input.input {
            Input::Float(_, min, max) => {
                let x = v
                    .as_f64()
                    .ok_or_else(|| err(format!("{}: `{v}` is not a number", at())))?;
                if x < *min {
                    return Err(err(format!(
                        "{} {x} is smaller than ComfyUI's minimum of {min}",
                        at()
                    )));
                }
                if x > *max {
                    return Err(err(format!(
                        "{} {x} is bigger than ComfyUI's maximum of {max}",
                        at()
                    )));
                }
            }
            Input::Choice(list) => {
                let s = v.as_str().unwrap_or_default();
                if !list.contains(&s) {
                    return Err(err(format!(
                        "{} `{v}` is not one of {}",
                        at(),
                        list.join(", ")
                    )));
                }
            }
            Input::Text(_) | Input::Model(_) => {
                if !v.is_string() {
                    return Err(err(format!("{}: `{v}` is not text", at())));
                }
            }
            Input::Int => {
                if !v.is_i64() && !v.is_u64() {
                    return Err(err(format!("{}: `{v}` is not an integer", at())));
                }
            }
            Input::Bool => {
                if !v.is_boolean() {
                    return Err(err(format!("{}: `{v}` is not true or false", at())));
                }
            }
            Input::Link(_) => {}
        }
        Ok(Some(v))
    }

    fn float(&self, id: &str, name: &str) -> Result<f64> {
        Ok(self
            .widget(id, name)?
            .and_then(|v| v.as_f64())
            .unwrap_or_default())
    }

    fn text(&self, id: &str, name: &str) -> Result<String> {
        Ok(self
            .widget(id, name)?
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default())
    }

    /// The model file widget `name` names, in folder kind `kind`.
    fn model(&self, id: &str, name: &str, kind: &str) -> Result<Source> {
        let n = self.text(id, name)?;
        let p = self
            .models
            .resolve(kind, &n)
            .map_err(|e| err(format!("{}: {e}", self.describe(id))))?;
        Ok(Source::Path(p))
    }

    /// The slot input `name` links to.
    fn link(&self, id: &str, name: &str, index: &BTreeMap<String, usize>) -> Result<Slot> {
        let v = self.nodes[id].inputs.get(name).ok_or_else(|| {
            err(format!(
                "{}: the required input `{name}` is not connected",
                self.describe(id)
            ))
        })?;
        let (from, output) = as_link(v).ok_or_else(|| {
            err(format!(
                "{}: input `{name}` must be a link `[\"node id\", output]`, not `{v}`",
                self.describe(id)
            ))
        })?;
        let node = *index.get(&from).ok_or_else(|| {
            err(format!(
                "{}: input `{name}` links to {}, which is not a node of the graph",
                self.describe(id),
                self.describe(&from)
            ))
        })?;
        Ok(Slot { node, output })
    }

    fn node(&self, id: &str, index: &BTreeMap<String, usize>) -> Result<Node> {
        let class = self.nodes[id].class;
        let link = |name: &str| self.link(id, name, index);
        let prefix = || -> Result<Target> { Ok(Target::Prefix(self.text(id, "filename_prefix")?)) };
        if let Some(prefixes) = block_prefixes(class) {
            // ComfyUI passes the ratios as keyword arguments in the prompt's order, and the
            // first is the default of keys no prefix matches.
            let mut names: Vec<&String> = self.nodes[id]
                .inputs
                .keys()
                .filter(|k| prefixes.contains(k))
                .collect();
            for p in &prefixes {
                if !names.contains(&p) {
                    self.widget(id, p)?;
                    names.push(p);
                }
            }
            let ratios = names
                .into_iter()
                .map(|p| Ok((p.clone(), self.float(id, p)?)))
                .collect::<Result<Vec<_>>>()?;
            return Ok(Node::ModelMergeBlocks {
                model1: link("model1")?,
                model2: link("model2")?,
                ratios,
            });
        }
        Ok(match class {
            "CheckpointLoaderSimple" => {
                Node::Checkpoint(self.model(id, "ckpt_name", "checkpoints")?)
            }
            "UNETLoader" => {
                let dtype = self.text(id, "weight_dtype")?;
                if dtype != "default" {
                    return Err(err(format!(
                        "{}: weight_dtype `{dtype}` makes ComfyUI round the weights to fp8 as it \
                         loads them; this tool reads them as stored: set weight_dtype to \
                         `default` and pass --model-dtype f8_e4m3 (or f8_e5m2) to write fp8",
                        self.describe(id)
                    )));
                }
                Node::DiffusionModel(self.model(id, "unet_name", "diffusion_models")?)
            }
            "CLIPLoader" => {
                let kind = self.text(id, "type")?;
                let arch = match kind.as_str() {
                    "stable_diffusion" => None,
                    "sd3" => Some(Arch::Sd3),
                    other => return Err(self.no_layout(id, other, CLIP_TYPES)),
                };
                Node::TextEncoders {
                    sources: vec![self.model(id, "clip_name", "text_encoders")?],
                    arch,
                }
            }
            "DualCLIPLoader" => {
                let kind = self.text(id, "type")?;
                let arch = match kind.as_str() {
                    "sdxl" => Arch::Sdxl,
                    "sd3" => Arch::Sd3,
                    "flux" => Arch::Flux,
                    other => return Err(self.no_layout(id, other, &["sdxl", "sd3", "flux"])),
                };
                Node::TextEncoders {
                    sources: vec![
                        self.model(id, "clip_name1", "text_encoders")?,
                        self.model(id, "clip_name2", "text_encoders")?,
                    ],
                    arch: Some(arch),
                }
            }
            "TripleCLIPLoader" => Node::TextEncoders {
                sources: vec![
                    self.model(id, "clip_name1", "text_encoders")?,
                    self.model(id, "clip_name2", "text_encoders")?,
                    self.model(id, "clip_name3", "text_encoders")?,
                ],
                arch: Some(Arch::Sd3),
            },
            "VAELoader" => Node::Vae(self.model(id, "vae_name", "vae")?),
            "LoraLoader" | "LoraLoaderModelOnly" => {
                let Source::Path(p) = self.model(id, "lora_name", "loras")? else {
                    return Err(err(format!("{}: no LoRA file", self.describe(id))));
                };
                let with_clip = class == "LoraLoader";
                Node::Lora {
                    model: link("model")?,
                    clip: with_clip.then(|| link("clip")).transpose()?,
                    lora: LoraSource::Path(p),
                    strength_model: self.float(id, "strength_model")?,
                    strength_clip: match with_clip {
                        true => self.float(id, "strength_clip")?,
                        false => 0.0,
                    },
                }
            }
            "ModelMergeSimple" => Node::ModelMergeSimple {
                model1: link("model1")?,
                model2: link("model2")?,
                ratio: self.float(id, "ratio")?,
            },
            "ModelMergeSubtract" => Node::ModelSubtract {
                model1: link("model1")?,
                model2: link("model2")?,
                multiplier: self.float(id, "multiplier")?,
            },
            "ModelMergeAdd" => Node::ModelAdd {
                model1: link("model1")?,
                model2: link("model2")?,
            },
            "CLIPMergeSimple" => Node::ClipMergeSimple {
                clip1: link("clip1")?,
                clip2: link("clip2")?,
                ratio: self.float(id, "ratio")?,
            },
            "CLIPMergeSubtract" => Node::ClipSubtract {
                clip1: link("clip1")?,
                clip2: link("clip2")?,
                multiplier: self.float(id, "multiplier")?,
            },
            "CLIPMergeAdd" => Node::ClipAdd {
                clip1: link("clip1")?,
                clip2: link("clip2")?,
            },
            "CheckpointSave" => Node::SaveCheckpoint {
                model: link("model")?,
                clip: link("clip")?,
                vae: link("vae")?,
                target: prefix()?,
            },
            "ModelSave" => Node::SaveModel {
                model: link("model")?,
                target: prefix()?,
            },
            "CLIPSave" => Node::SaveClip {
                clip: link("clip")?,
                target: prefix()?,
            },
            "VAESave" => Node::SaveVae {
                vae: link("vae")?,
                target: prefix()?,
            },
            "LoraSave" => {
                let optional = |name: &str| match self.nodes[id].inputs.contains_key(name) {
                    true => link(name).map(Some),
                    false => Ok(None),
                };
                let rank = self
                    .widget(id, "rank")?
                    .and_then(|v| v.as_i64())
                    .unwrap_or(0);
                // A negative rank has no `usize`: refused here with the value given; the rest
                // of the range (ComfyUI: 1 to 4096) is checked by the extraction, naming it.
                let rank = usize::try_from(rank).map_err(|_| {
                    err(format!(
                        "{}: rank {rank} is outside 1..=4096 (LoraSave's range)",
                        self.describe(id)
                    ))
                })?;
                Node::SaveLora {
                    model: optional("model_diff")?,
                    clip: optional("text_encoder_diff")?,
                    rank,
                    lora_type: match self.text(id, "lora_type")?.as_str() {
                        "full_diff" => LoraType::FullDiff,
                        _ => LoraType::Standard,
                    },
                    bias_diff: self
                        .widget(id, "bias_diff")?
                        .and_then(|v| v.as_bool())
                        .unwrap_or(true),
                    target: prefix()?,
                }
            }
            other => {
                return Err(err(format!(
                    "node {id} ({other}) is not a node this tool runs, and a save needs it"
                )))
            }
        })
    }

    fn no_layout(&self, id: &str, kind: &str, known: &[&str]) -> Error {
        err(format!(
            "{}: type `{kind}` is for a model this tool has no layout for; it writes {} text \
             encoders",
            self.describe(id),
            known
                .iter()
                .filter(|k| matches!(**k, "stable_diffusion" | "sd3" | "sdxl" | "flux"))
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}
