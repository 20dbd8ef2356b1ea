//! The recipe a graph records in each file it writes (`checkpoint_save.recipe`): the nodes that
//! file depends on, in ComfyUI's API form (`class_type` and `inputs`, links as `[id, output]`),
//! and each loader's input by name, size and hashes. It reads as a ComfyUI prompt of the merge.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use super::{Graph, LoraSource, Node, Slot, Source, Target};
use crate::merge::{InputRecord, LoraType};

/// The recipe of the file(s) save node `save` writes, as JSON.
pub(super) fn describe(
    graph: &Graph,
    save: usize,
    records: &BTreeMap<String, InputRecord>,
) -> String {
    let nodes = graph.nodes();
    let mut needed = BTreeSet::new();
    let mut stack = vec![save];
    while let Some(i) = stack.pop() {
        if needed.insert(i) {
            stack.extend(nodes[i].node.links().into_iter().map(|(_, s, _)| s.node));
        }
    }
    let link = |s: Slot| json!([nodes[s.node].id, s.output]);
    let mut out = Map::new();
    let mut inputs = Map::new();
    for &i in &needed {
        let gn = &nodes[i];
        let mut v = Map::new();
        for (name, slot, _) in gn.node.links() {
            v.insert(name.into(), link(slot));
        }
        if let Node::Method { models: all, .. } | Node::ClipMethod { clips: all, .. } = &gn.node {
            let name = gn.node.links().first().map_or("models", |l| l.0);
            let all: Vec<Value> = all.iter().map(|s| link(*s)).collect();
            v.insert(name.into(), Value::Array(all));
        }
        params(&gn.node, &mut v);
        out.insert(
            gn.id.clone(),
            json!({"class_type": gn.class(), "inputs": Value::Object(v)}),
        );
        if let Some(r) = records.get(&gn.id) {
            inputs.insert(
                gn.id.clone(),
                json!({
                    "name": r.name,
                    "bytes": r.bytes,
                    "header_sha256": r.header_sha256,
                    "sample_sha256": r.sample_sha256,
                }),
            );
        }
    }
    json!({
        "tool": format!("checkpoint-save {}", env!("CARGO_PKG_VERSION")),
        "format": "graph",
        "convention": "ComfyUI's nodes: ModelMergeSimple is model1*ratio + model2*(1-ratio); every \
                       tensor is its patch list evaluated in f32 and rounded once",
        "output": nodes[save].id,
        "nodes": Value::Object(out),
        "inputs": Value::Object(inputs),
    })
    .to_string()
}

/// A node's widget values, under ComfyUI's input names.
fn params(node: &Node, v: &mut Map<String, Value>) {
    let name = |s: &Source| json!(s.name());
    match node {
        Node::Checkpoint(s) => {
            v.insert("ckpt_name".into(), name(s));
        }
        Node::DiffusionModel(s) => {
            v.insert("unet_name".into(), name(s));
        }
        Node::TextEncoders { sources, arch } => {
            if let [one] = sources.as_slice() {
                v.insert("clip_name".into(), name(one));
            } else {
                for (i, s) in sources.iter().enumerate() {
                    v.insert(format!("clip_name{}", i + 1), name(s));
                }
            }
            if let Some(a) = arch {
                v.insert("architecture".into(), json!(a.to_string()));
            }
        }
        Node::Vae(s) => {
            v.insert("vae_name".into(), name(s));
        }
        Node::Lora {
            lora,
            strength_model,
            strength_clip,
            clip,
            ..
        } => {
            let n = match lora {
                LoraSource::Path(p) => Source::Path(p.clone()).name(),
                LoraSource::Memory(l) => l.name.clone(),
            };
            v.insert("lora_name".into(), json!(n));
            v.insert("strength_model".into(), json!(strength_model));
            if clip.is_some() {
                v.insert("strength_clip".into(), json!(strength_clip));
            }
        }
        Node::ModelMergeSimple { ratio, .. } | Node::ClipMergeSimple { ratio, .. } => {
            v.insert("ratio".into(), json!(ratio));
        }
        Node::ModelSubtract { multiplier, .. } | Node::ClipSubtract { multiplier, .. } => {
            v.insert("multiplier".into(), json!(multiplier));
        }
        Node::ModelMergeBlocks { ratios, .. } => {
            for (p, r) in ratios {
                v.insert(p.clone(), json!(r));
            }
        }
        Node::ModelAdd { .. } | Node::ClipAdd { .. } => {}
        Node::SaveLora {
            rank,
            lora_type,
            bias_diff,
            target,
            ..
        } => {
            v.insert("rank".into(), json!(rank));
            let t = match lora_type {
                LoraType::Standard => "standard",
                LoraType::FullDiff => "full_diff",
            };
            v.insert("lora_type".into(), json!(t));
            v.insert("bias_diff".into(), json!(bias_diff));
            target_param(target, v);
        }
        Node::Method { name, params, .. } | Node::ClipMethod { name, params, .. } => {
            v.insert("method".into(), json!(name));
            for (p, value) in params {
                let j = match value {
                    crate::merge::methods::Param::Float(x) => json!(x),
                    crate::merge::methods::Param::Int(x) => json!(x),
                    crate::merge::methods::Param::Bool(x) => json!(x),
                    crate::merge::methods::Param::Str(x) => json!(x),
                };
                v.insert(p.clone(), j);
            }
        }
        Node::SaveCheckpoint { target, .. }
        | Node::SaveModel { target, .. }
        | Node::SaveClip { target, .. }
        | Node::SaveVae { target, .. } => target_param(target, v),
    }
}

/// A save's target, as its `filename_prefix` (or the exact file's name).
fn target_param(target: &Target, v: &mut Map<String, Value>) {
    match target {
        Target::Prefix(p) => {
            v.insert("filename_prefix".into(), json!(p));
        }
        Target::File(p) => {
            v.insert("file".into(), json!(Source::Path(p.clone()).name()));
        }
    }
}
