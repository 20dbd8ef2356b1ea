//! The ComfyUI node classes this tool runs, as their `INPUT_TYPES` declare them: inputs in
//! order (links, and widgets with their defaults and ComfyUI's own limits), and output types.
//! Widget values of the UI format are positional in this order.

use crate::family::merge_nodes::node_named;

/// What an input takes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Input {
    /// A link carrying `MODEL`, `CLIP` or `VAE`.
    Link(&'static str),
    /// A FLOAT widget: default, min, max (inclusive, as ComfyUI validates).
    Float(f64, f64, f64),
    /// A file name in a models folder (`checkpoints`, `loras`…).
    Model(&'static str),
    /// One of these strings.
    Choice(&'static [&'static str]),
    /// A STRING widget with its default.
    Text(&'static str),
    /// An INT widget (the primitives; LoraSave's rank, whose range the extraction checks).
    Int,
    /// A BOOLEAN widget.
    Bool,
}

/// One input: its name, what it takes, and whether ComfyUI requires it.
#[derive(Debug, Clone)]
pub(crate) struct InputSpec {
    pub(crate) name: String,
    pub(crate) input: Input,
    pub(crate) required: bool,
}

/// One node class.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub(crate) inputs: Vec<InputSpec>,
    pub(crate) outputs: &'static [&'static str],
    /// The title ComfyUI's frontend shows (`_meta.title` of an exported prompt).
    pub(crate) title: &'static str,
}

impl Spec {
    /// The widget (non-link) inputs, in `INPUT_TYPES` order.
    pub(crate) fn widgets(&self) -> impl Iterator<Item = &InputSpec> {
        self.inputs
            .iter()
            .filter(|i| !matches!(i.input, Input::Link(_)))
    }

    /// The input named `name`.
    pub(crate) fn input(&self, name: &str) -> Option<&InputSpec> {
        self.inputs.iter().find(|i| i.name == name)
    }
}

const RATIO: Input = Input::Float(1.0, 0.0, 1.0);
const MULTIPLIER: Input = Input::Float(1.0, -10.0, 10.0);
const STRENGTH: Input = Input::Float(1.0, -100.0, 100.0);
const DEVICE: &[&str] = &["default", "cpu"];

/// The types of CLIPLoader and the architecture each means here (`None`: told by the file).
pub(crate) const CLIP_TYPES: &[&str] = &[
    "stable_diffusion",
    "stable_cascade",
    "sd3",
    "stable_audio",
    "mochi",
    "ltxv",
    "pixart",
    "cosmos",
    "lumina2",
    "wan",
    "hidream",
    "chroma",
    "ace",
    "omnigen2",
    "qwen_image",
    "hunyuan_image",
];

/// The types of DualCLIPLoader.
pub(crate) const DUAL_CLIP_TYPES: &[&str] = &[
    "sdxl",
    "sd3",
    "flux",
    "hunyuan_video",
    "hidream",
    "hunyuan_image",
];

/// UNETLoader's weight dtypes.
pub(crate) const WEIGHT_DTYPES: &[&str] = &["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"];

fn req(name: &str, input: Input) -> InputSpec {
    InputSpec {
        name: name.to_string(),
        input,
        required: true,
    }
}

fn opt(name: &str, input: Input) -> InputSpec {
    InputSpec {
        name: name.to_string(),
        input,
        required: false,
    }
}

fn spec(inputs: Vec<InputSpec>, outputs: &'static [&'static str], title: &'static str) -> Spec {
    Spec {
        inputs,
        outputs,
        title,
    }
}

/// The key prefixes of ModelMergeBlocks or of a model-specific block merge node, in its
/// `INPUT_TYPES` order: the nodes of the family table
/// (`comfy_extras/nodes_model_merging_model_specific.py`).
pub(crate) fn block_prefixes(class: &str) -> Option<Vec<String>> {
    if class == "ModelMergeBlocks" {
        return Some(vec!["input".into(), "middle".into(), "out".into()]);
    }
    node_named(class).map(|n| n.prefixes())
}

/// The spec of a class this tool runs, or of a value node (`PrimitiveFloat`…).
pub(crate) fn spec_of(class: &str) -> Option<Spec> {
    let link = Input::Link;
    if let Some(prefixes) = block_prefixes(class) {
        let mut inputs = vec![req("model1", link("MODEL")), req("model2", link("MODEL"))];
        inputs.extend(prefixes.iter().map(|p| req(p, RATIO)));
        return Some(spec(inputs, &["MODEL"], static_title(class)));
    }
    Some(match class {
        "CheckpointLoaderSimple" => spec(
            vec![req("ckpt_name", Input::Model("checkpoints"))],
            &["MODEL", "CLIP", "VAE"],
            "Load Checkpoint",
        ),
        "UNETLoader" => spec(
            vec![
                req("unet_name", Input::Model("diffusion_models")),
                req("weight_dtype", Input::Choice(WEIGHT_DTYPES)),
            ],
            &["MODEL"],
            "Load Diffusion Model",
        ),
        "CLIPLoader" => spec(
            vec![
                req("clip_name", Input::Model("text_encoders")),
                req("type", Input::Choice(CLIP_TYPES)),
                opt("device", Input::Choice(DEVICE)),
            ],
            &["CLIP"],
            "Load CLIP",
        ),
        "DualCLIPLoader" => spec(
            vec![
                req("clip_name1", Input::Model("text_encoders")),
                req("clip_name2", Input::Model("text_encoders")),
                req("type", Input::Choice(DUAL_CLIP_TYPES)),
                opt("device", Input::Choice(DEVICE)),
            ],
            &["CLIP"],
            "DualCLIPLoader",
        ),
        "TripleCLIPLoader" => spec(
            vec![
                req("clip_name1", Input::Model("text_encoders")),
                req("clip_name2", Input::Model("text_encoders")),
                req("clip_name3", Input::Model("text_encoders")),
            ],
            &["CLIP"],
            "TripleCLIPLoader",
        ),
        "VAELoader" => spec(
            vec![req("vae_name", Input::Model("vae"))],
            &["VAE"],
            "Load VAE",
        ),
        "LoraLoader" => spec(
            vec![
                req("model", link("MODEL")),
                req("clip", link("CLIP")),
                req("lora_name", Input::Model("loras")),
                req("strength_model", STRENGTH),
                req("strength_clip", STRENGTH),
            ],
            &["MODEL", "CLIP"],
            "Load LoRA",
        ),
        "LoraLoaderModelOnly" => spec(
            vec![
                req("model", link("MODEL")),
                req("lora_name", Input::Model("loras")),
                req("strength_model", STRENGTH),
            ],
            &["MODEL"],
            "LoraLoaderModelOnly",
        ),
        "ModelMergeSimple" | "CLIPMergeSimple" | "ModelMergeSubtract" | "CLIPMergeSubtract"
        | "ModelMergeAdd" | "CLIPMergeAdd" => {
            let (t, a, b) = match class.starts_with("CLIP") {
                true => ("CLIP", "clip1", "clip2"),
                false => ("MODEL", "model1", "model2"),
            };
            let mut inputs = vec![req(a, link(t)), req(b, link(t))];
            if class.ends_with("Simple") {
                inputs.push(req("ratio", RATIO));
            } else if class.ends_with("Subtract") {
                inputs.push(req("multiplier", MULTIPLIER));
            }
            let outputs: &'static [&'static str] = match t {
                "CLIP" => &["CLIP"],
                _ => &["MODEL"],
            };
            spec(inputs, outputs, static_title(class))
        }
        "CheckpointSave" => spec(
            vec![
                req("model", link("MODEL")),
                req("clip", link("CLIP")),
                req("vae", link("VAE")),
                req("filename_prefix", Input::Text("checkpoints/ComfyUI")),
            ],
            &[],
            "Save Checkpoint",
        ),
        "ModelSave" => spec(
            vec![
                req("model", link("MODEL")),
                req("filename_prefix", Input::Text("diffusion_models/ComfyUI")),
            ],
            &[],
            "ModelSave",
        ),
        "CLIPSave" => spec(
            vec![
                req("clip", link("CLIP")),
                req("filename_prefix", Input::Text("clip/ComfyUI")),
            ],
            &[],
            "CLIPSave",
        ),
        "VAESave" => spec(
            vec![
                req("vae", link("VAE")),
                req("filename_prefix", Input::Text("vae/ComfyUI_vae")),
            ],
            &[],
            "VAESave",
        ),
        "LoraSave" => spec(
            vec![
                req(
                    "filename_prefix",
                    Input::Text("loras/ComfyUI_extracted_lora"),
                ),
                req("rank", Input::Int),
                req("lora_type", Input::Choice(&["standard", "full_diff"])),
                req("bias_diff", Input::Bool),
                opt("model_diff", link("MODEL")),
                opt("text_encoder_diff", link("CLIP")),
            ],
            &[],
            "Extract and Save Lora",
        ),
        "PrimitiveFloat" => spec(
            vec![req(
                "value",
                Input::Float(0.0, -(i64::MAX as f64), i64::MAX as f64),
            )],
            &["FLOAT"],
            "Float",
        ),
        "PrimitiveInt" => spec(vec![req("value", Input::Int)], &["INT"], "Int"),
        "PrimitiveString" | "PrimitiveStringMultiline" => {
            spec(vec![req("value", Input::Text(""))], &["STRING"], "String")
        }
        _ => return None,
    })
}

/// The class name as a `'static` title (the frontend shows the class for these nodes).
fn static_title(class: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "ModelMergeBlocks",
        "ModelMergeSimple",
        "CLIPMergeSimple",
        "ModelMergeSubtract",
        "CLIPMergeSubtract",
        "ModelMergeAdd",
        "CLIPMergeAdd",
    ];
    if let Some(k) = KNOWN.iter().find(|k| **k == class) {
        return k;
    }
    node_named(class)
        .and_then(|n| {
            std::iter::once(&n.node)
                .chain(n.aliases)
                .find(|k| **k == class)
        })
        .copied()
        .unwrap_or("")
}

/// Whether a class saves files.
pub(crate) fn is_save(class: &str) -> bool {
    matches!(
        class,
        "CheckpointSave" | "ModelSave" | "CLIPSave" | "VAESave" | "LoraSave"
    )
}

/// Whether a class only supplies a value to other nodes' widgets.
pub(crate) fn is_value(class: &str) -> bool {
    class.starts_with("Primitive") && spec_of(class).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_specific_nodes_have_comfyuis_inputs_in_order() {
        let count = |c: &str| block_prefixes(c).unwrap().len();
        // time_embed, label_emb, 12 input, 3 middle, 12 output, out.
        assert_eq!(count("ModelMergeSD1"), 30);
        assert_eq!(count("ModelMergeSD2"), 30);
        assert_eq!(count("ModelMergeSDXL"), 24);
        assert_eq!(count("ModelMergeSD3_2B"), 5 + 24 + 1);
        assert_eq!(count("ModelMergeSD35_Large"), 5 + 38 + 1);
        assert_eq!(count("ModelMergeFlux1"), 5 + 19 + 38 + 1);
        let sdxl = block_prefixes("ModelMergeSDXL").unwrap();
        assert_eq!(&sdxl[..3], &["time_embed.", "label_emb.", "input_blocks.0"]);
        assert_eq!(sdxl.last().unwrap(), "out.");
        let sd1 = spec_of("ModelMergeSD1").unwrap();
        assert_eq!(sd1.inputs[0].name, "model1");
        assert_eq!(sd1.widgets().next().unwrap().name, "time_embed.");
        assert_eq!(sd1.title, "ModelMergeSD1");
        // The later families' nodes, from the family table.
        assert_eq!(count("ModelMergeWAN2_1"), 5 + 40 + 1);
        assert_eq!(count("ModelMergeQwenImage"), 5 + 60 + 1);
        assert_eq!(spec_of("ModelMergeSD2").unwrap().title, "ModelMergeSD2");
        assert!(block_prefixes("ModelMergeCosmos7B").is_none());
    }

    #[test]
    fn widgets_are_the_non_link_inputs_in_order() {
        let l = spec_of("LoraLoader").unwrap();
        let w: Vec<&str> = l.widgets().map(|i| i.name.as_str()).collect();
        assert_eq!(w, ["lora_name", "strength_model", "strength_clip"]);
        assert_eq!(l.outputs, &["MODEL", "CLIP"]);
        assert!(is_save("CLIPSave") && !is_save("KSampler"));
        assert!(is_value("PrimitiveFloat") && !is_value("PrimitiveNode"));
        assert!(spec_of("KSampler").is_none());
    }
}
