//! ComfyUI's per-block merge nodes (`comfy_extras/nodes_model_merging_model_specific.py`,
//! `ModelMerge<Arch>`) as data: each node's inputs are key prefixes of the denoiser's ComfyUI
//! names, in the node's order, and the node merges with ModelMergeBlocks' rule (the longest
//! matching prefix's ratio; keys no prefix matches take the first input's). A family lists the
//! nodes made for it; `merge --block-ratios` takes a bare list of one ratio per input of one of
//! them, and the graphs of `run` resolve the nodes by name from the same table.

/// One input of a merge node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockInput {
    /// A key prefix as the node spells it (`time_embed.`, `guidance_in`, `scale_shift_table`).
    Prefix(&'static str),
    /// `{prefix}{n}{suffix}` for n = 0..count (`blocks.0.` … `blocks.39.`; ModelMergeSDXL
    /// spells its blocks without the final dot).
    Numbered {
        /// Before the number.
        prefix: &'static str,
        /// After the number (`.` or nothing).
        suffix: &'static str,
        /// How many.
        count: usize,
    },
}

/// One `ModelMerge<Arch>` node: its ComfyUI class name and inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergeNode {
    /// The node's class name (`ModelMergeWAN2_1`).
    pub node: &'static str,
    /// Other names ComfyUI registers for the same node (`ModelMergeSD2`).
    pub aliases: &'static [&'static str],
    /// Its ratio inputs, in the node's order.
    pub inputs: &'static [BlockInput],
}

impl MergeNode {
    /// Every input's key prefix, in the node's order (the first is ModelMergeBlocks' default).
    pub fn prefixes(&self) -> Vec<String> {
        let mut out = Vec::new();
        for input in self.inputs {
            match *input {
                BlockInput::Prefix(p) => out.push(p.to_string()),
                BlockInput::Numbered {
                    prefix,
                    suffix,
                    count,
                } => out.extend((0..count).map(|n| format!("{prefix}{n}{suffix}"))),
            }
        }
        out
    }

    /// How many ratio inputs the node has.
    pub fn len(&self) -> usize {
        self.inputs
            .iter()
            .map(|i| match i {
                BlockInput::Prefix(_) => 1,
                BlockInput::Numbered { count, .. } => *count,
            })
            .sum()
    }

    /// Whether the node has no ratio inputs (none of ComfyUI's).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `name` is this node's class name or an alias of it.
    pub fn is_named(&self, name: &str) -> bool {
        self.node == name || self.aliases.contains(&name)
    }
}

/// The `ModelMerge<Arch>` node of the family table called `name` (its class name or an alias),
/// for workflows that name the node.
pub fn node_named(name: &str) -> Option<&'static MergeNode> {
    crate::family::Family::all()
        .iter()
        .flat_map(|f| f.block_prefixes.iter())
        .find(|n| n.is_named(name))
}

const fn p(prefix: &'static str) -> BlockInput {
    BlockInput::Prefix(prefix)
}

const fn n(prefix: &'static str, count: usize) -> BlockInput {
    BlockInput::Numbered {
        prefix,
        suffix: ".",
        count,
    }
}

/// ModelMergeSDXL spells its numbered blocks without the final dot.
const fn n_bare(prefix: &'static str, count: usize) -> BlockInput {
    BlockInput::Numbered {
        prefix,
        suffix: "",
        count,
    }
}

/// ModelMergeSD1 (also registered as ModelMergeSD2: "SD1 and SD2 have the same blocks").
pub const SD1: MergeNode = MergeNode {
    node: "ModelMergeSD1",
    aliases: &["ModelMergeSD2"],
    inputs: &[
        p("time_embed."),
        p("label_emb."),
        n("input_blocks.", 12),
        n("middle_block.", 3),
        n("output_blocks.", 12),
        p("out."),
    ],
};

/// ModelMergeSDXL.
pub const SDXL: MergeNode = MergeNode {
    node: "ModelMergeSDXL",
    aliases: &[],
    inputs: &[
        p("time_embed."),
        p("label_emb."),
        n_bare("input_blocks.", 9),
        n_bare("middle_block.", 3),
        n_bare("output_blocks.", 9),
        p("out."),
    ],
};

const SD3_EMBEDDERS: [BlockInput; 5] = [
    p("pos_embed."),
    p("x_embedder."),
    p("context_embedder."),
    p("y_embedder."),
    p("t_embedder."),
];

/// ModelMergeSD3_2B (SD3 Medium; its 24 joint blocks are SD3.5 Medium's count too).
pub const SD3_2B: MergeNode = MergeNode {
    node: "ModelMergeSD3_2B",
    aliases: &[],
    inputs: &[
        SD3_EMBEDDERS[0],
        SD3_EMBEDDERS[1],
        SD3_EMBEDDERS[2],
        SD3_EMBEDDERS[3],
        SD3_EMBEDDERS[4],
        n("joint_blocks.", 24),
        p("final_layer."),
    ],
};

/// ModelMergeSD35_Large.
pub const SD35_LARGE: MergeNode = MergeNode {
    node: "ModelMergeSD35_Large",
    aliases: &[],
    inputs: &[
        SD3_EMBEDDERS[0],
        SD3_EMBEDDERS[1],
        SD3_EMBEDDERS[2],
        SD3_EMBEDDERS[3],
        SD3_EMBEDDERS[4],
        n("joint_blocks.", 38),
        p("final_layer."),
    ],
};

/// ModelMergeFlux1.
pub const FLUX1: MergeNode = MergeNode {
    node: "ModelMergeFlux1",
    aliases: &[],
    inputs: &[
        p("img_in."),
        p("time_in."),
        p("guidance_in"),
        p("vector_in."),
        p("txt_in."),
        n("double_blocks.", 19),
        n("single_blocks.", 38),
        p("final_layer."),
    ],
};

/// ModelMergeLTXV.
pub const LTXV: MergeNode = MergeNode {
    node: "ModelMergeLTXV",
    aliases: &[],
    inputs: &[
        p("patchify_proj."),
        p("adaln_single."),
        p("caption_projection."),
        n("transformer_blocks.", 28),
        p("scale_shift_table"),
        p("proj_out."),
    ],
};

/// ModelMergeWAN2_1 (40 blocks: the 14B's; the 1.3B's and the 5B's 30 are its first 30).
pub const WAN2_1: MergeNode = MergeNode {
    node: "ModelMergeWAN2_1",
    aliases: &[],
    inputs: &[
        p("patch_embedding."),
        p("time_embedding."),
        p("time_projection."),
        p("text_embedding."),
        p("img_emb."),
        n("blocks.", 40),
        p("head."),
    ],
};

/// ModelMergeQwenImage.
pub const QWEN_IMAGE: MergeNode = MergeNode {
    node: "ModelMergeQwenImage",
    aliases: &[],
    inputs: &[
        p("pos_embeds."),
        p("img_in."),
        p("txt_norm."),
        p("txt_in."),
        p("time_text_embed."),
        n("transformer_blocks.", 60),
        p("proj_out."),
    ],
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_list_comfyuis_inputs_in_order() {
        // Input counts of the nodes' INPUT_TYPES (model1 and model2 aside).
        for (node, count, first, last) in [
            (SD1, 30, "time_embed.", "out."),
            (SDXL, 24, "time_embed.", "out."),
            (SD3_2B, 30, "pos_embed.", "final_layer."),
            (SD35_LARGE, 44, "pos_embed.", "final_layer."),
            (FLUX1, 63, "img_in.", "final_layer."),
            (LTXV, 33, "patchify_proj.", "proj_out."),
            (WAN2_1, 46, "patch_embedding.", "head."),
            (QWEN_IMAGE, 66, "pos_embeds.", "proj_out."),
        ] {
            let p = node.prefixes();
            assert_eq!((p.len(), node.len()), (count, count), "{}", node.node);
            assert_eq!(
                (p[0].as_str(), p[count - 1].as_str()),
                (first, last),
                "{}",
                node.node
            );
        }
        assert!(SDXL.prefixes().contains(&"input_blocks.8".to_string()));
        assert!(WAN2_1.prefixes().contains(&"blocks.39.".to_string()));
        assert!(SD1.is_named("ModelMergeSD2") && !SD1.is_named("ModelMergeSDXL"));
    }
}
