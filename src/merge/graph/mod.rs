//! Merge graphs: recipes over any number of models, as ComfyUI's merge workflows are, written in
//! one streamed pass.
//!
//! A [`Graph`] is a DAG of loaders, merge and LoRA nodes, and saves, in ComfyUI's vocabulary
//! ([`Node`]). Merge nodes compute nothing when they run: as in ComfyUI, each adds patches to a
//! copy of its first input (`comfy/model_patcher.py` `add_patches`), and a model used as another
//! merge's second input contributes its base weight *and its own patches*, as a nested list
//! (`get_key_patches`). Compiling a graph ([`compile`]) turns every saved tensor into one
//! [`crate::model::merged::Merged`] expression of that shape: ComfyUI's `calculate_weight`,
//! evaluated in f32 range by range as the writer reaches it and rounded once to the output
//! dtype, however long the chain. Inputs are read where they lie, so memory follows the staging
//! budget, not the number of models.
//!
//! [`run`] writes every save of the graph in one run: each file is planned and validated
//! before any is created, all are written into temporary files, and they are published only
//! when every one is complete, so no output of a graph survives the failure of another.
//!
//! ```no_run
//! use checkpoint_save::merge::graph::{run, Graph, RunOptions, Source, Target};
//!
//! # fn main() -> checkpoint_save::Result<()> {
//! let mut g = Graph::new();
//! let a = g.checkpoint(Source::Path("a.safetensors".into()))?;
//! let b = g.checkpoint(Source::Path("b.safetensors".into()))?;
//! let c = g.checkpoint(Source::Path("c.safetensors".into()))?;
//! let ab = g.model_merge_simple(a.model, b.model, 0.6)?;
//! let abc = g.model_merge_simple(ab, c.model, 0.7)?;
//! g.save_checkpoint(abc, a.clip, a.vae, Target::Prefix("checkpoints/ComfyUI".into()))?;
//! let report = run(&g, &RunOptions::new("output"))?;
//! for w in &report.written {
//!     println!("{}", w.path.display());
//! }
//! # Ok(())
//! # }
//! ```

mod build;
mod compile;
mod method;
mod node;
mod outputs;
mod recipe;
mod values;

use crate::error::{Error, Result};
use crate::merge::Lora;
use crate::model::Arch;
pub use build::{Checkpoint, ClipOut, ModelOut, VaeOut};
pub use compile::{compile, Compiled, InputSummary, PlannedSave};
pub use node::{LoraSource, Node, Slot, Source, Target, ValueType};
pub use outputs::{
    file_jobs, plan, run, FileJob, GraphPlan, PlannedFile, RunOptions, RunReport, Written,
};

/// A merge graph: nodes in the order they were added, each reading only nodes added before it
/// (so a graph is acyclic by construction).
#[derive(Debug, Clone, Default)]
pub struct Graph {
    nodes: Vec<GraphNode>,
}

/// A node with the id and class name messages and the recipe use.
#[derive(Debug, Clone)]
pub struct GraphNode {
    /// The node's id (a workflow's node id, or its position from 1 for nodes added by
    /// [`Graph::add`]).
    pub id: String,
    /// The class as the workflow names it (`ModelMergeSD1` for a [`Node::ModelMergeBlocks`]
    /// made from one), if it differs from [`Node::class`].
    pub class: Option<String>,
    /// The node.
    pub node: Node,
}

impl GraphNode {
    /// The class name for messages and the recipe.
    pub fn class(&self) -> &str {
        self.class.as_deref().unwrap_or(self.node.class())
    }

    /// `node 4 (ModelMergeSimple)`, for messages.
    pub fn describe(&self) -> String {
        format!("node {} ({})", self.id, self.class())
    }
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Graph {
        Graph::default()
    }

    /// The nodes, in the order they were added.
    pub fn nodes(&self) -> &[GraphNode] {
        &self.nodes
    }

    /// Adds a node whose id is its position from 1; returns its index.
    ///
    /// # Errors
    /// As [`Graph::add_with_id`].
    pub fn add(&mut self, node: Node) -> Result<usize> {
        let id = (self.nodes.len() + 1).to_string();
        self.add_with_id(&id, None, node)
    }

    /// Adds a node under `id` (and the class name the workflow gives it); returns its index.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the node for an id already used, a link to a node not added
    /// yet or to an output it does not have, a link of the wrong type (`MODEL` where `CLIP` is
    /// taken), a ratio, multiplier or strength that is not a finite number, or a block merge
    /// without ratios.
    pub fn add_with_id(&mut self, id: &str, class: Option<&str>, node: Node) -> Result<usize> {
        let this = GraphNode {
            id: id.to_string(),
            class: class.filter(|c| *c != node.class()).map(str::to_string),
            node,
        };
        let bad = |reason: String| Error::InvalidInput(format!("{}: {reason}", this.describe()));
        if self.nodes.iter().any(|n| n.id == id) {
            return Err(bad(format!("the id `{id}` is used by another node")));
        }
        for (name, slot, wants) in this.node.links() {
            let Some(from) = self.nodes.get(slot.node) else {
                return Err(bad(format!(
                    "input `{name}` links to node index {}, which is not in the graph (yet)",
                    slot.node
                )));
            };
            let outs = from.node.outputs();
            match outs.get(slot.output) {
                None => {
                    return Err(bad(format!(
                        "input `{name}` links to output {} of {}, which has {} output(s)",
                        slot.output,
                        from.describe(),
                        outs.len()
                    )))
                }
                Some(t) if *t != wants => {
                    return Err(bad(format!(
                        "input `{name}` takes a {wants}, and output {} of {} is a {t}",
                        slot.output,
                        from.describe()
                    )))
                }
                Some(_) => {}
            }
        }
        for (what, v) in numbers(&this.node) {
            if !v.is_finite() {
                return Err(bad(format!("{what} {v} is not a finite number")));
            }
        }
        if let Node::Method {
            name,
            models: inputs,
            params,
        }
        | Node::ClipMethod {
            name,
            clips: inputs,
            params,
        } = &this.node
        {
            crate::merge::methods::method(name, inputs.len(), params)
                .map_err(|e| bad(e.to_string()))?;
        }
        if let Node::ModelMergeBlocks { ratios, .. } = &this.node {
            if ratios.is_empty() {
                return Err(bad("a block merge needs at least one ratio".into()));
            }
        }
        self.nodes.push(this);
        Ok(self.nodes.len() - 1)
    }

    /// The node at `index`.
    pub fn node(&self, index: usize) -> Option<&GraphNode> {
        self.nodes.get(index)
    }
}

/// The numbers a node takes, named for messages.
fn numbers(node: &Node) -> Vec<(String, f64)> {
    match node {
        Node::Lora {
            strength_model,
            strength_clip,
            ..
        } => vec![
            ("strength_model".into(), *strength_model),
            ("strength_clip".into(), *strength_clip),
        ],
        Node::ModelMergeSimple { ratio, .. } | Node::ClipMergeSimple { ratio, .. } => {
            vec![("ratio".into(), *ratio)]
        }
        Node::ModelSubtract { multiplier, .. } | Node::ClipSubtract { multiplier, .. } => {
            vec![("multiplier".into(), *multiplier)]
        }
        Node::ModelMergeBlocks { ratios, .. } => ratios
            .iter()
            .map(|(p, r)| (format!("the ratio of `{p}`"), *r))
            .collect(),
        _ => Vec::new(),
    }
}

/// The longest chain of nodes a graph may have, from a save back to a loader. Translating,
/// planning and evaluating a graph recurse once per node of a chain, so a deeper graph
/// (thousands of nodes, far beyond the workflows and recipes people write) is refused with a
/// message rather than overflowing a thread's stack.
pub(crate) const MAX_DEPTH: usize = 500;

/// Runs `f` (a translation into a graph, which recurses once per node of a chain) on a thread
/// whose stack holds [`MAX_DEPTH`] levels whatever thread the caller is on: a test's or a
/// runtime's threads have 2 MiB, a few hundred levels of a debug build.
///
/// # Errors
/// `f`'s; [`Error::Io`] when the thread cannot be started.
pub(crate) fn with_deep_stack<T: Send>(f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        let thread = std::thread::Builder::new()
            .name("checkpoint-save-graph".into())
            .stack_size(crate::offload::EVAL_STACK)
            .spawn_scoped(s, f)
            .map_err(|e| Error::io("starting a thread to read the graph", e))?;
        thread
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Whether two architectures can be merged: the same, or Flux dev and schnell (one model
/// class in ComfyUI; schnell lacks the guidance embedder, whose keys then stay model1's).
pub(crate) fn mergeable(a: Arch, b: Arch) -> bool {
    a == b
        || matches!(
            (a, b),
            (
                Arch::Flux | Arch::FluxSchnell,
                Arch::Flux | Arch::FluxSchnell
            )
        )
}

/// The LoRA of a source, opened (headers only).
fn open_lora(source: &LoraSource) -> Result<Lora> {
    match source {
        LoraSource::Path(p) => Lora::open(p),
        LoraSource::Memory(l) => Ok(l.clone()),
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_run;
