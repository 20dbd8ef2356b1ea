//! Per-block ratios: ComfyUI's ModelMergeBlocks (the ratio of the longest key prefix that
//! matches, over ComfyUI's denoiser names) and the per-block lists of A1111-era block mergers.
//!
//! A spec is comma-separated entries, each `NAME=RATIO`:
//! - `input`, `middle`, `out` — ModelMergeBlocks' three inputs (`input_blocks.`, `middle_block.`,
//!   `out`, which also covers `output_blocks.` and `out.`);
//! - `IN00`…`IN11`, `M00`, `OUT00`…`OUT11` — one UNet block (`input_blocks.N.`,
//!   `middle_block.`, `output_blocks.N.`);
//! - any other name is taken as a key prefix as it is (`joint_blocks.3.`, `double_blocks.`);
//!
//! or a bare list of numbers, placed once the family is known ([`BlockRatios::placed`]): one per
//! input of a ComfyUI `ModelMerge<Arch>` node of the family, in the node's order (the family
//! table's `block_prefixes`: 46 for ModelMergeWAN2_1, 66 for ModelMergeQwenImage, 30 for
//! ModelMergeSD1 …), or A1111's lists, 25 for SD1/SD2 (`IN00`…`IN11`, `M00`, `OUT00`…`OUT11`)
//! or 19 for SDXL (`IN00`…`IN08`, `M00`, `OUT00`…`OUT08`).
//!
//! As ModelMergeBlocks (`comfy_extras/nodes_model_merging.py`) and its model-specific variants
//! compute it, a key takes the ratio of the longest entry that is a prefix of it, and a key no
//! entry matches (`time_embed.`, `label_emb.` under `input=,middle=,out=`) the ratio of the
//! **first** entry (the node's `default_ratio = next(iter(kwargs.values()))`); for a list that is
//! `IN00`'s. Every ratio is in ComfyUI's convention (1 keeps A).

use crate::error::{Error, Result};
use crate::family::Family;
use crate::model::Arch;

/// Ratios by key prefix, in the order given (the first is the ratio of keys no prefix matches).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BlockRatios {
    entries: Vec<(String, f64)>,
    /// A bare list not yet placed on a family's blocks.
    list: Option<Vec<f64>>,
}

impl BlockRatios {
    /// Parses a spec: `NAME=RATIO` entries, or a bare list of ratios that
    /// [`BlockRatios::placed`] puts on the family's blocks.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an entry without `=`, a ratio that is not a finite number, or
    /// a name given twice.
    pub fn parse(spec: &str) -> Result<BlockRatios> {
        let items: Vec<&str> = spec
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let mut entries = Vec::new();
        if items.iter().all(|s| !s.contains('=')) {
            let values = items
                .iter()
                .map(|s| ratio(s, s))
                .collect::<Result<Vec<f64>>>()?;
            return Ok(BlockRatios {
                entries,
                list: Some(values),
            });
        } else {
            for item in items {
                let (name, value) = item.split_once('=').ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "block ratio `{item}` is not NAME=RATIO (e.g. input=0.3,middle=0.5,out=0.7)"
                    ))
                })?;
                let prefix = prefix_of(name.trim());
                if entries.iter().any(|(p, _)| *p == prefix) {
                    return Err(Error::InvalidInput(format!(
                        "block `{name}` is given twice"
                    )));
                }
                entries.push((prefix, ratio(value.trim(), item)?));
            }
        }
        Ok(BlockRatios {
            entries,
            list: None,
        })
    }

    /// The ratios with a bare list placed on `family`'s blocks (`None`: the generic layout,
    /// which has none): one ratio per input of one of the family's `ModelMerge<Arch>` nodes,
    /// or A1111's 25 (SD1, SD2, the SDXL refiner) or 19 (SDXL) UNet blocks. Named entries are
    /// returned as they are.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a list whose length fits no node of the family (naming the
    /// lengths that do), or a list without a family.
    pub fn placed(&self, family: Option<&Family>) -> Result<BlockRatios> {
        let Some(values) = &self.list else {
            return Ok(self.clone());
        };
        let unet = family.map(|f| f.arch);
        let a1111 = match (unet, values.len()) {
            (Some(Arch::Sd15 | Arch::Sd2 | Arch::SdxlRefiner), 25) => Some(12),
            (Some(Arch::Sdxl), 19) => Some(9),
            _ => None,
        };
        let prefixes: Vec<String> = match (a1111, family) {
            (Some(per_side), _) => (0..values.len())
                .map(|i| match i {
                    i if i < per_side => format!("input_blocks.{i}."),
                    i if i == per_side => "middle_block.".to_string(),
                    i => format!("output_blocks.{}.", i - per_side - 1),
                })
                .collect(),
            (None, Some(f)) => match f.block_prefixes.iter().find(|n| n.len() == values.len()) {
                Some(node) => node.prefixes(),
                None => return Err(list_fits_nothing(values.len(), f)),
            },
            (None, None) => {
                return Err(Error::InvalidInput(format!(
                    "a bare list of {} block ratios needs a family to place them on; with \
                     --arch generic give PREFIX=RATIO entries (e.g. blocks.0.=0.3)",
                    values.len()
                )))
            }
        };
        Ok(BlockRatios {
            entries: prefixes.into_iter().zip(values.iter().copied()).collect(),
            list: None,
        })
    }

    /// Ratios by raw key prefix, in the order given (a ModelMergeBlocks node's inputs: their
    /// names are the prefixes, the first is the default).
    pub fn from_entries(entries: Vec<(String, f64)>) -> BlockRatios {
        BlockRatios {
            entries,
            list: None,
        }
    }

    /// The ratio of `key` (ComfyUI's denoiser name) as ModelMergeBlocks gives it: that of the
    /// longest matching prefix, or the first entry's where none matches; `None` only when there
    /// are no entries.
    pub fn ratio(&self, key: &str) -> Option<f64> {
        let mut best: Option<&(String, f64)> = None;
        for e in &self.entries {
            // Strictly longer, as the node compares: among equal lengths the first given wins.
            if key.starts_with(e.0.as_str()) && best.is_none_or(|b| b.0.len() < e.0.len()) {
                best = Some(e);
            }
        }
        best.or(self.entries.first()).map(|(_, r)| *r)
    }

    /// The ratio of keys no prefix matches: the first entry's (a list's first value).
    pub fn default_ratio(&self) -> Option<f64> {
        match &self.list {
            Some(values) => values.first().copied(),
            None => self.entries.first().map(|(_, r)| *r),
        }
    }

    /// Whether there are no entries (every key takes the operation's own ratio).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.list.as_ref().is_none_or(Vec::is_empty)
    }

    /// The entries (key prefix, ratio), in the order given.
    pub fn entries(&self) -> &[(String, f64)] {
        &self.entries
    }
}

/// Why a bare list fits none of `family`'s blocks.
fn list_fits_nothing(len: usize, family: &Family) -> Error {
    let mut fits: Vec<String> = family
        .block_prefixes
        .iter()
        .map(|n| format!("{} for {}", n.len(), n.node))
        .collect();
    match family.arch {
        Arch::Sd15 | Arch::Sd2 | Arch::SdxlRefiner => {
            fits.push("25 for A1111's IN00-IN11, M00, OUT00-OUT11".into())
        }
        Arch::Sdxl => fits.push("19 for A1111's IN00-IN08, M00, OUT00-OUT08".into()),
        _ => {}
    }
    let hint = match fits.is_empty() {
        true => format!(
            "ComfyUI has no ModelMerge node for {} ({})",
            family.name, family.title
        ),
        false => format!("a list for {} has {}", family.name, fits.join(", or ")),
    };
    Error::InvalidInput(format!(
        "a bare list of {len} block ratios fits no block list of this model: {hint}; or give \
         PREFIX=RATIO entries (any key prefix, e.g. blocks.3.=0.5)"
    ))
}

/// The key prefix a block name stands for.
fn prefix_of(name: &str) -> String {
    let upper = name.to_ascii_uppercase();
    let num = |s: &str| s.parse::<usize>().ok();
    match name {
        "input" => return "input_blocks.".into(),
        "middle" => return "middle_block.".into(),
        "out" => return "out".into(),
        _ => {}
    }
    if let Some(n) = upper.strip_prefix("IN").and_then(num) {
        return format!("input_blocks.{n}.");
    }
    if let Some(n) = upper.strip_prefix("OUT").and_then(num) {
        return format!("output_blocks.{n}.");
    }
    if upper == "M00" || upper == "MID" {
        return "middle_block.".into();
    }
    name.to_string()
}

/// A ratio: a finite number.
pub(crate) fn ratio(value: &str, item: &str) -> Result<f64> {
    match value.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(Error::InvalidInput(format!(
            "`{item}`: the ratio `{value}` is not a finite number"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_matching_prefix_wins_and_others_take_the_first_entrys() {
        let b = BlockRatios::parse("input=0.1, out=0.9, IN04=0.4, output_blocks.1.1.=0.7").unwrap();
        assert_eq!(b.ratio("input_blocks.4.1.proj_in.weight"), Some(0.4));
        assert_eq!(b.ratio("input_blocks.5.0.skip.weight"), Some(0.1));
        assert_eq!(b.ratio("output_blocks.1.1.norm.weight"), Some(0.7));
        assert_eq!(b.ratio("output_blocks.1.0.norm.weight"), Some(0.9));
        assert_eq!(b.ratio("out.2.weight"), Some(0.9));
        // ModelMergeBlocks: `default_ratio = next(iter(kwargs.values()))`, the first argument.
        assert_eq!(b.ratio("time_embed.0.weight"), Some(0.1));
        assert_eq!(b.ratio("middle_block.1.norm.weight"), Some(0.1));
        assert_eq!(b.default_ratio(), Some(0.1));
        // The first given, whatever its length or name.
        let b = BlockRatios::parse("out=0.75,input=0.25").unwrap();
        assert_eq!(b.ratio("label_emb.0.0.weight"), Some(0.75));
        assert_eq!(b.entries()[0], ("out".to_string(), 0.75));
        assert_eq!(BlockRatios::default().ratio("time_embed.0.weight"), None);
    }

    #[test]
    fn lists_name_every_unet_block() {
        let sd1: Vec<String> = (0..25).map(|i| format!("{}", i as f64 / 100.0)).collect();
        let b = BlockRatios::parse(&sd1.join(","))
            .unwrap()
            .placed(Some(Arch::Sd15.family()))
            .unwrap();
        assert_eq!(b.ratio("input_blocks.0.0.weight"), Some(0.0));
        assert_eq!(b.ratio("input_blocks.11.0.weight"), Some(0.11));
        assert_eq!(b.ratio("middle_block.0.x"), Some(0.12));
        assert_eq!(b.ratio("output_blocks.0.0.x"), Some(0.13));
        assert_eq!(b.ratio("output_blocks.11.0.x"), Some(0.24));
        // input_blocks.1. must not take input_blocks.11.'s ratio, nor the reverse.
        assert_eq!(b.ratio("input_blocks.1.0.x"), Some(0.01));
        // Keys outside every block take IN00's, the list's first.
        assert_eq!(b.ratio("time_embed.0.weight"), Some(0.0));
        let sdxl = BlockRatios::parse(&vec!["0.5"; 19].join(",")).unwrap();
        assert_eq!(sdxl.default_ratio(), Some(0.5));
        let placed = sdxl.placed(Some(Arch::Sdxl.family())).unwrap();
        assert_eq!(placed.entries().len(), 19);
        assert_eq!(placed.entries()[9].0, "middle_block.");
        // A1111's SDXL list is not SD1's.
        assert!(sdxl.placed(Some(Arch::Sd15.family())).is_err());
    }

    #[test]
    fn lists_take_the_inputs_of_the_familys_merge_node() {
        // ModelMergeWAN2_1: 5 embedders, 40 blocks, the head.
        let values: Vec<String> = (0..46).map(|i| format!("{}", i as f64 / 64.0)).collect();
        let b = BlockRatios::parse(&values.join(","))
            .unwrap()
            .placed(Some(Arch::Wan21.family()))
            .unwrap();
        assert_eq!(b.ratio("patch_embedding.weight"), Some(0.0));
        assert_eq!(b.ratio("img_emb.proj.0.bias"), Some(4.0 / 64.0));
        assert_eq!(b.ratio("blocks.0.self_attn.q.weight"), Some(5.0 / 64.0));
        assert_eq!(b.ratio("blocks.1.ffn.0.weight"), Some(6.0 / 64.0));
        assert_eq!(b.ratio("blocks.10.ffn.0.weight"), Some(15.0 / 64.0));
        assert_eq!(b.ratio("head.head.weight"), Some(45.0 / 64.0));
        // Keys of no input take the first input's, as ModelMergeBlocks does.
        assert_eq!(b.ratio("unknown.weight"), Some(0.0));
        // SD3: the node whose input count is the list's.
        let sd3 = |n: usize| {
            BlockRatios::parse(&vec!["0.5"; n].join(","))
                .unwrap()
                .placed(Some(Arch::Sd3.family()))
        };
        assert_eq!(sd3(30).unwrap().entries()[29].0, "final_layer.");
        assert_eq!(sd3(44).unwrap().entries()[42].0, "joint_blocks.37.");
        let e = sd3(31).unwrap_err().to_string();
        assert!(
            e.contains("30 for ModelMergeSD3_2B, or 44 for ModelMergeSD35_Large"),
            "{e}"
        );
        // A family ComfyUI has no node for, and the generic layout, take named entries.
        let list = BlockRatios::parse("0.1,0.2").unwrap();
        let e = list
            .placed(Some(Arch::HiDream.family()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ComfyUI has no ModelMerge node for hidream"),
            "{e}"
        );
        let e = list.placed(None).unwrap_err().to_string();
        assert!(e.contains("PREFIX=RATIO"), "{e}");
        let named = BlockRatios::parse("double_stream_blocks.1.=0.25").unwrap();
        assert_eq!(named.placed(None).unwrap(), named);
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let e = BlockRatios::parse("0.1,0.2")
            .unwrap()
            .placed(Some(Arch::Sd15.family()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("30 for ModelMergeSD1, or 25 for A1111's"), "{e}");
        for (spec, needle) in [
            ("0.1,nan", "not a finite number"),
            ("input=nan", "not a finite number"),
            ("input=0.1,input=0.2", "given twice"),
            ("input=0.1,foo", "NAME=RATIO"),
        ] {
            let e = BlockRatios::parse(spec).unwrap_err().to_string();
            assert!(e.contains(needle), "{spec}: {e}");
        }
    }
}
