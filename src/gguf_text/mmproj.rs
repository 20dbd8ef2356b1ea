//! Qwen2.5-VL's vision tower as llama.cpp's `mmproj` GGUF file, the file ComfyUI-GGUF's CLIP
//! loader pairs with a `qwen2vl` text encoder (`loader.py`, `gguf_mmproj_loader`) to give
//! Qwen-Image-Edit its `visual.*` tensors.
//!
//! - **Names**: llama.cpp's converter (`Qwen2VLVisionModel`, gguf-py's `tensor_mapping.py`)
//!   writes `v.blk.N.{attn_q,attn_k,attn_v,attn_out,ln1,ln2,ffn_gate,ffn_up,ffn_down}`,
//!   `v.patch_embd.weight` and `.weight.1` (the 3-D patch convolution's two temporal slices),
//!   `v.post_ln` (the merger's `ln_q`) and `mm.0`/`mm.2` (its MLP); the loader turns them back
//!   with `CLIP_VISION_SD_MAP` ([`to_hf`]), which [`to_gguf`] runs backwards as
//!   [`super::names`] does for text names.
//! - **Pairing**: the loader looks in the text encoder's folder for a `.gguf` whose name holds
//!   `mmproj` and the text encoder's lower-cased file stem without its quantization suffix
//!   (`strip_quant_suffix`, [`match_stem`]), and takes the first in `os.listdir` order; this
//!   tool takes the first in sorted order ([`candidates`]), which `os.listdir` does not promise.
//! - **Metadata**: what the converter writes for Qwen2.5-VL ([`metadata`]); the values that are
//!   not in the tensors' shapes are ComfyUI's (`qwen_vl.py`: 16 heads of 80, full attention
//!   every 8th block) and Qwen2.5-VL's preprocessor's (image size 560, CLIP's mean and std).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use regex::Regex;

use crate::error::{IoContext, Result};
use crate::read::gguf::{MetaArray, MetaValue};

/// Where ComfyUI keeps the vision tower inside a `qwen25_7b` encoder.
pub(crate) const VISUAL: &str = "visual.";

/// The 5-D patch embedding ComfyUI holds.
pub(crate) const PATCH: &str = "visual.patch_embed.proj.weight";

/// llama.cpp's two temporal slices of it.
pub(crate) const PATCH_GGUF: [&str; 2] = ["v.patch_embd.weight", "v.patch_embd.weight.1"];

/// The name of the mmproj file written beside a text encoder's: `<stem>-mmproj-F16.gguf`.
pub(crate) const NAME_SUFFIX: &str = "-mmproj-F16.gguf";

/// `loader.py`'s `CLIP_VISION_SD_MAP`, in its order.
const CLIP_VISION_SD_MAP: [(&str, &str); 10] = [
    ("mm.", "visual.merger.mlp."),
    ("v.post_ln.", "visual.merger.ln_q."),
    ("v.patch_embd", "visual.patch_embed.proj"),
    ("v.blk.", "visual.blocks."),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("attn_out.", "attn.proj."),
    ("ln1.", "norm1."),
    ("ln2.", "norm2."),
];

/// The name ComfyUI-GGUF's loader gives the mmproj tensor `name` (before it joins q, k, v).
pub(crate) fn to_hf(name: &str) -> String {
    CLIP_VISION_SD_MAP
        .iter()
        .fold(name.to_string(), |k, (s, d)| k.replace(s, d))
}

/// The llama.cpp name of the vision tensor `hf` (a `visual.*` name, not a fused `qkv`), or
/// `None` when the loader would not give `hf` back from the name this makes, or it is not one
/// of llama.cpp's vision names (`v.*`, `mm.*`).
pub(crate) fn to_gguf(hf: &str) -> Option<String> {
    let name = CLIP_VISION_SD_MAP
        .iter()
        .rev()
        .fold(hf.to_string(), |k, (s, d)| k.replace(d, s));
    let ours = name.starts_with("v.") || name.starts_with("mm.");
    (ours && to_hf(&name) == hf).then_some(name)
}

/// For a fused `….attn.qkv.{weight,bias}`, the block prefix and suffix (`visual.blocks.3`,
/// `weight`).
pub(crate) fn qkv_parts(hf: &str) -> Option<(&str, &str)> {
    let (block, suffix) = hf.rsplit_once(".attn.qkv.")?;
    block
        .starts_with("visual.blocks.")
        .then_some((block, suffix))
}

/// The llama.cpp names of a fused qkv tensor's three parts.
pub(crate) fn split_names(block: &str, suffix: &str) -> [String; 3] {
    let blk = block.replacen("visual.blocks.", "v.blk.", 1);
    ["q", "k", "v"].map(|p| format!("{blk}.attn_{p}.{suffix}"))
}

/// `loader.py`'s `strip_quant_suffix`: `name` without a trailing quantization tag (`-Q8_0`,
/// `_Q4_K_M`, `-UD-IQ2_XXS` …), matched case-insensitively.
pub(crate) fn strip_quant_suffix(name: &str) -> &str {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| {
        Regex::new(r"(?i)[-_]?(?:ud-)?i?q[0-9]_[a-z0-9_\-]{1,8}$").expect("a valid pattern")
    });
    match re.find(name) {
        Some(m) => &name[..m.start()],
        None => name,
    }
}

/// What the loader looks for in an mmproj file's name for the text encoder at `text`: its
/// lower-cased file stem without its quantization suffix.
pub(crate) fn match_stem(text: &Path) -> String {
    let stem = text
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    strip_quant_suffix(&stem).to_string()
}

/// Whether the loader takes the file called `file_name` as an mmproj of a text encoder whose
/// [`match_stem`] is `stem`: a `.gguf` whose stem holds `mmproj` and `stem`.
pub(crate) fn pairs(file_name: &str, stem: &str) -> bool {
    let p = Path::new(file_name);
    let gguf = p
        .extension()
        .is_some_and(|e| e.to_string_lossy().to_lowercase() == "gguf");
    let name = p
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    gguf && name.contains("mmproj") && name.contains(stem)
}

/// The mmproj file this tool writes beside the text encoder at `text`.
pub(crate) fn file_for(text: &Path) -> PathBuf {
    let stem = text
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    text.with_file_name(format!("{stem}{NAME_SUFFIX}"))
}

/// The files of the text encoder's folder the loader would take as its mmproj, sorted by name.
///
/// # Errors
/// [`crate::Error::Io`] when the folder cannot be listed.
pub(crate) fn candidates(text: &Path) -> Result<Vec<PathBuf>> {
    let dir = crate::publish::folder_of(text).to_path_buf();
    let stem = match_stem(text);
    let own = text.file_name();
    let entries =
        std::fs::read_dir(&dir).ctx(|| format!("cannot list {} for an mmproj", dir.display()))?;
    let mut out: Vec<PathBuf> = Vec::new();
    for e in entries {
        let e = e.ctx(|| format!("cannot list {} for an mmproj", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        // The text encoder itself is no mmproj, whatever its name.
        if pairs(&name, &stem) && Some(e.file_name().as_os_str()) != own {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

/// The shapes an mmproj's metadata is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VisionShape {
    /// The tower's width (`clip.vision.embedding_length`).
    pub width: usize,
    /// The MLP's width.
    pub ffn: usize,
    /// Blocks.
    pub blocks: usize,
    /// The patch's side.
    pub patch: usize,
    /// The language model's width the merger projects into.
    pub projection: usize,
}

/// Qwen2.5-VL's attention heads are 80 wide (1280 / 16).
const HEAD_WIDTH: usize = 80;

/// The metadata llama.cpp's converter writes for a Qwen2.5-VL mmproj of `shape` in F16, in its
/// order.
// The image mean and std as Qwen2.5-VL's `preprocessor_config.json` states them (stored f32).
#[allow(clippy::excessive_precision)]
pub(crate) fn metadata(shape: &VisionShape) -> Vec<(String, MetaValue)> {
    let u = |v: usize| MetaValue::U32(u32::try_from(v).unwrap_or(u32::MAX));
    let s = |v: &str| MetaValue::String(v.to_string());
    let f = |v: [f32; 3]| MetaValue::Array(MetaArray::F32(v.to_vec()));
    // Heads of 80; a tower too narrow for one (a test model) has one head.
    let heads = match shape.width / HEAD_WIDTH {
        n if n > 0 && shape.width.is_multiple_of(HEAD_WIDTH) => n,
        _ => 1,
    };
    [
        ("general.architecture", s("clip")),
        ("general.type", s("mmproj")),
        // LlamaFileType.MOSTLY_F16.
        ("general.file_type", u(1)),
        ("clip.has_vision_encoder", MetaValue::Bool(true)),
        ("clip.vision.projection_dim", u(shape.projection)),
        ("clip.vision.image_size", u(560)),
        ("clip.vision.patch_size", u(shape.patch)),
        ("clip.vision.embedding_length", u(shape.width)),
        ("clip.vision.feed_forward_length", u(shape.ffn)),
        ("clip.vision.block_count", u(shape.blocks)),
        ("clip.vision.attention.head_count", u(heads)),
        (
            "clip.vision.image_mean",
            f([0.481_454_66, 0.457_827_5, 0.408_210_73]),
        ),
        (
            "clip.vision.image_std",
            f([0.268_629_54, 0.261_302_58, 0.275_777_11]),
        ),
        ("clip.projector_type", s("qwen2.5vl_merger")),
        ("clip.use_silu", MetaValue::Bool(true)),
        // `fullatt_block_indexes` [7, 15, 23, 31]: the first + 1.
        ("clip.vision.n_wa_pattern", u(8)),
        (
            "clip.vision.attention.layer_norm_epsilon",
            MetaValue::F32(1e-6),
        ),
        ("general.quantization_version", u(2)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vision_names_are_llama_cpps_and_come_back() {
        for (hf, gguf) in [
            ("visual.merger.mlp.0.weight", "mm.0.weight"),
            ("visual.merger.mlp.2.bias", "mm.2.bias"),
            ("visual.merger.ln_q.weight", "v.post_ln.weight"),
            ("visual.blocks.3.norm1.weight", "v.blk.3.ln1.weight"),
            ("visual.blocks.3.norm2.weight", "v.blk.3.ln2.weight"),
            ("visual.blocks.3.attn.proj.bias", "v.blk.3.attn_out.bias"),
            (
                "visual.blocks.31.mlp.up_proj.weight",
                "v.blk.31.ffn_up.weight",
            ),
            (
                "visual.blocks.0.mlp.down_proj.bias",
                "v.blk.0.ffn_down.bias",
            ),
            (
                "visual.blocks.0.mlp.gate_proj.weight",
                "v.blk.0.ffn_gate.weight",
            ),
        ] {
            assert_eq!(to_gguf(hf).as_deref(), Some(gguf), "{hf}");
            assert_eq!(to_hf(gguf), hf);
        }
        assert_eq!(to_hf("v.patch_embd.weight"), PATCH);
        assert_eq!(to_gguf("visual.unknown.weight"), None);
        assert_eq!(
            qkv_parts("visual.blocks.7.attn.qkv.bias"),
            Some(("visual.blocks.7", "bias"))
        );
        assert_eq!(
            split_names("visual.blocks.7", "weight"),
            [
                "v.blk.7.attn_q.weight",
                "v.blk.7.attn_k.weight",
                "v.blk.7.attn_v.weight"
            ]
        );
    }

    #[test]
    fn quantization_suffixes_are_stripped_as_the_loader_does() {
        for (name, want) in [
            ("qwen2.5-vl-7b-instruct-q4_k_m", "qwen2.5-vl-7b-instruct"),
            ("Qwen2.5-VL-7B-Instruct-Q8_0", "Qwen2.5-VL-7B-Instruct"),
            ("qwen_2.5_vl_7b_q5_k_s", "qwen_2.5_vl_7b"),
            ("qwen-ud-iq2_xxs", "qwen"),
            // Longer than 8 after `q4_`: no tag.
            ("model-q4_k_m_long_tail", "model-q4_k_m_long_tail"),
            ("comfyui_qwen25_7b_00001_", "comfyui_qwen25_7b_00001_"),
        ] {
            assert_eq!(strip_quant_suffix(name), want, "{name}");
        }
        let text = Path::new("/m/Qwen2.5-VL-7B-Q4_K_M.gguf");
        assert_eq!(match_stem(text), "qwen2.5-vl-7b");
        assert!(pairs("Qwen2.5-VL-7B-mmproj-F16.GGUF", "qwen2.5-vl-7b"));
        assert!(!pairs("Qwen2.5-VL-7B-F16.gguf", "qwen2.5-vl-7b"));
        assert!(!pairs("Qwen2.5-VL-7B-mmproj.safetensors", "qwen2.5-vl-7b"));
        let ours = file_for(Path::new("/m/ComfyUI_qwen25_7b_00001_.gguf"));
        assert_eq!(
            ours,
            Path::new("/m/ComfyUI_qwen25_7b_00001_-mmproj-F16.gguf")
        );
        let name = ours.file_name().unwrap().to_str().unwrap();
        assert!(pairs(
            name,
            &match_stem(Path::new("ComfyUI_qwen25_7b_00001_.gguf"))
        ));
        assert!(!pairs(
            name,
            &match_stem(Path::new("ComfyUI_qwen25_7b_00002_.gguf"))
        ));
    }
}
