//! ComfyUI workflow files as merge graphs: the API format ("Export (API)", what the server runs
//! and passes to save nodes as `prompt`) and the UI format (what "Save" writes and ComfyUI
//! embeds in its outputs as `workflow`), from a `.json` file, a ComfyUI `.png` or a
//! `.safetensors` file ComfyUI wrote (its `prompt`/`workflow` metadata).
//!
//! A workflow is translated into a [`Graph`] of the nodes its saves read; every other node
//! (samplers, previews) is skipped and listed. Widget values are checked against ComfyUI's own
//! limits (a ratio in [0, 1]), model names resolved as ComfyUI resolves them
//! ([`ModelFolders`]), and a save fed by a node this tool does not run is refused naming it.

mod embedded;
mod models;
mod nodes;
mod prefix;
mod subgraph;
#[cfg(test)]
mod tests;
mod translate;
mod ui;
mod yaml;

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Error, IoContext, Result};
use crate::merge::graph::Graph;
use crate::plan::metadata::MetadataOptions;
pub use models::ModelFolders;

/// The format a workflow was given in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkflowFormat {
    /// The API format.
    Api,
    /// The UI format, converted as the frontend converts it before queueing.
    Ui,
}

/// A workflow: the API prompt to run, and the UI graph when one was given.
#[derive(Debug, Clone)]
pub struct Workflow {
    /// The prompt in the API format (`{id: {class_type, inputs}}`), in the file's node order.
    pub prompt: Map<String, Value>,
    /// The UI-format graph, written as the `workflow` metadata, when the file had one.
    pub ui: Option<Value>,
    /// What the file held.
    pub format: WorkflowFormat,
}

/// A workflow as a graph.
#[derive(Debug, Clone)]
pub struct Translated {
    /// The nodes the saves read.
    pub graph: Graph,
    /// Nodes no save reads, not run: `node 3 (KSampler)`.
    pub skipped: Vec<String>,
}

impl Workflow {
    /// Reads a workflow from JSON text: the API format, the UI format, or the body the frontend
    /// posts to `/prompt` (`{"prompt": …, "extra_data": {"extra_pnginfo": {"workflow": …}}}`).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for text that is not JSON (with the position), or JSON that is
    /// none of those forms.
    pub fn from_json(text: &str) -> Result<Workflow> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| Error::InvalidInput(format!("the workflow is not JSON: {e}")))?;
        Workflow::from_value(v)
    }

    /// As [`Workflow::from_json`], from parsed JSON.
    ///
    /// # Errors
    /// As [`Workflow::from_json`].
    pub fn from_value(v: Value) -> Result<Workflow> {
        if let Some(prompt) = v.get("prompt").filter(|p| is_api(p)) {
            let ui = v.pointer("/extra_data/extra_pnginfo/workflow").cloned();
            return Workflow::from_parts(Some(prompt.clone()), ui);
        }
        if v.get("nodes").is_some_and(Value::is_array) {
            return Workflow::from_parts(None, Some(v));
        }
        if is_api(&v) {
            return Workflow::from_parts(Some(v), None);
        }
        Err(Error::InvalidInput(
            "not a ComfyUI workflow: expected the API format (`{\"1\": {\"class_type\": …, \
             \"inputs\": {…}}}`, \"Export (API)\") or the UI format (`{\"nodes\": […], \
             \"links\": […]}`, \"Save\")"
                .into(),
        ))
    }

    /// A workflow from a prompt (API) and/or a UI graph, as a ComfyUI output holds them: the
    /// prompt is what ComfyUI ran, so it is taken when both are there.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when neither is usable.
    pub fn from_parts(prompt: Option<Value>, ui: Option<Value>) -> Result<Workflow> {
        match (prompt, ui) {
            (Some(Value::Object(p)), ui) if is_api(&Value::Object(p.clone())) => Ok(Workflow {
                prompt: p,
                ui,
                format: WorkflowFormat::Api,
            }),
            (_, Some(u)) => Ok(Workflow {
                prompt: ui::to_api(&u)?,
                ui: Some(u),
                format: WorkflowFormat::Ui,
            }),
            _ => Err(Error::InvalidInput(
                "not a ComfyUI workflow: no API prompt and no UI graph".into(),
            )),
        }
    }

    /// Reads a workflow file: JSON (either format), a PNG ComfyUI wrote (its `prompt` and
    /// `workflow` text chunks), or a `.safetensors` file ComfyUI wrote (the same metadata keys).
    /// What a file is, is told by its first bytes.
    ///
    /// # Errors
    /// [`Error::Io`] when it cannot be read; [`Error::InvalidInput`] as [`Workflow::from_json`],
    /// or for a PNG or safetensors file that holds no workflow.
    pub fn open(path: &Path) -> Result<Workflow> {
        let head = embedded::head(path)?;
        if head.starts_with(embedded::PNG_SIGNATURE) {
            let bytes = std::fs::read(path)
                .ctx(|| format!("cannot read the workflow {}", path.display()))?;
            let (prompt, ui) = embedded::png_workflow(&bytes)
                .map_err(|e| Error::InvalidInput(format!("{}: {e}", path.display())))?;
            return Workflow::embedded(path, prompt, ui);
        }
        if embedded::looks_like_safetensors(&head) {
            let (prompt, ui) = embedded::safetensors_workflow(path)?;
            return Workflow::embedded(path, prompt, ui);
        }
        let text = std::fs::read_to_string(path)
            .ctx(|| format!("cannot read the workflow {}", path.display()))?;
        Workflow::from_json(&text)
            .map_err(|e| Error::InvalidInput(format!("{}: {e}", path.display())))
    }

    fn embedded(path: &Path, prompt: Option<String>, ui: Option<String>) -> Result<Workflow> {
        let parse = |what: &str, s: Option<String>| -> Result<Option<Value>> {
            s.map(|s| {
                serde_json::from_str(&s).map_err(|e| {
                    Error::InvalidInput(format!(
                        "{}: its `{what}` metadata is not JSON: {e}",
                        path.display()
                    ))
                })
            })
            .transpose()
        };
        let (prompt, ui) = (parse("prompt", prompt)?, parse("workflow", ui)?);
        if prompt.is_none() && ui.is_none() {
            return Err(Error::InvalidInput(format!(
                "{} holds no workflow (no `prompt` or `workflow` metadata): was it written by \
                 ComfyUI with metadata enabled?",
                path.display()
            )));
        }
        Workflow::from_parts(prompt, ui)
    }

    /// The metadata ComfyUI's save nodes write for this workflow: `prompt` = the API prompt,
    /// and `workflow` when the UI graph is known.
    pub fn metadata(&self) -> MetadataOptions {
        let mut m = MetadataOptions {
            prompt: Some(Value::Object(self.prompt.clone())),
            ..MetadataOptions::default()
        };
        if let Some(ui) = &self.ui {
            let mut extra = Map::new();
            extra.insert("workflow".into(), ui.clone());
            m.extra_pnginfo = Some(extra);
        }
        m
    }

    /// The graph of the nodes the workflow's saves read, model names resolved in `models`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a workflow without a save node, a link to a missing node or
    /// output slot, a cycle, a save fed by a node this tool does not run (naming its id and
    /// class), a missing required input, a widget value outside ComfyUI's limits, a model file
    /// not found (naming the folders searched), a loader option this tool cannot honour.
    pub fn to_graph(&self, models: &ModelFolders) -> Result<Translated> {
        crate::merge::graph::with_deep_stack(|| translate::translate(&self.prompt, models))
    }
}

/// Whether `v` looks like an API prompt: an object of node objects with a `class_type`.
fn is_api(v: &Value) -> bool {
    match v {
        Value::Object(o) => {
            !o.is_empty()
                && o.values()
                    .all(|n| n.get("class_type").is_some_and(Value::is_string))
        }
        _ => false,
    }
}
