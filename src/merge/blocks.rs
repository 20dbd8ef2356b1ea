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
//! or a bare list of numbers: 25 for SD1/SD2 (`IN00`…`IN11`, `M00`, `OUT00`…`OUT11`) or 19 for
//! SDXL (`IN00`…`IN08`, `M00`, `OUT00`…`OUT08`), in that order.
//!
//! As ModelMergeBlocks (`comfy_extras/nodes_model_merging.py`) and its model-specific variants
//! compute it, a key takes the ratio of the longest entry that is a prefix of it, and a key no
//! entry matches (`time_embed.`, `label_emb.` under `input=,middle=,out=`) the ratio of the
//! **first** entry (the node's `default_ratio = next(iter(kwargs.values()))`); for a list that is
//! `IN00`'s. Every ratio is in ComfyUI's convention (1 keeps A).

use crate::error::{Error, Result};

/// Ratios by key prefix, in the order given (the first is the ratio of keys no prefix matches).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BlockRatios {
    entries: Vec<(String, f64)>,
}

impl BlockRatios {
    /// Parses a spec: `NAME=RATIO` entries or a bare list of 25 or 19 ratios, in the order given.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an entry without `=`, a ratio that is not a finite number, a
    /// list of the wrong length, or a name given twice.
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
            let per_side = match values.len() {
                25 => 12,
                19 => 9,
                n => {
                    return Err(Error::InvalidInput(format!(
                        "a block-ratio list has 25 values (SD1/SD2: IN00-IN11, M00, OUT00-OUT11) \
                         or 19 (SDXL: IN00-IN08, M00, OUT00-OUT08), not {n}; or give NAME=RATIO \
                         entries"
                    )))
                }
            };
            for (i, v) in values.into_iter().enumerate() {
                let prefix = match i {
                    i if i < per_side => format!("input_blocks.{i}."),
                    i if i == per_side => "middle_block.".to_string(),
                    i => format!("output_blocks.{}.", i - per_side - 1),
                };
                entries.push((prefix, v));
            }
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
        Ok(BlockRatios { entries })
    }

    /// Ratios by raw key prefix, in the order given (a ModelMergeBlocks node's inputs: their
    /// names are the prefixes, the first is the default).
    pub fn from_entries(entries: Vec<(String, f64)>) -> BlockRatios {
        BlockRatios { entries }
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

    /// The ratio of keys no prefix matches: the first entry's.
    pub fn default_ratio(&self) -> Option<f64> {
        self.entries.first().map(|(_, r)| *r)
    }

    /// Whether there are no entries (every key takes the operation's own ratio).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries (key prefix, ratio), in the order given.
    pub fn entries(&self) -> &[(String, f64)] {
        &self.entries
    }
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
        let b = BlockRatios::parse(&sd1.join(",")).unwrap();
        assert_eq!(b.ratio("input_blocks.0.0.weight"), Some(0.0));
        assert_eq!(b.ratio("input_blocks.11.0.weight"), Some(0.11));
        assert_eq!(b.ratio("middle_block.0.x"), Some(0.12));
        assert_eq!(b.ratio("output_blocks.0.0.x"), Some(0.13));
        assert_eq!(b.ratio("output_blocks.11.0.x"), Some(0.24));
        // input_blocks.1. must not take input_blocks.11.'s ratio, nor the reverse.
        assert_eq!(b.ratio("input_blocks.1.0.x"), Some(0.01));
        // Keys outside every block take IN00's, the list's first.
        assert_eq!(b.ratio("time_embed.0.weight"), Some(0.0));
        let sdxl = vec!["0.5"; 19].join(",");
        assert_eq!(BlockRatios::parse(&sdxl).unwrap().entries().len(), 19);
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (spec, needle) in [
            ("0.1,0.2", "25 values"),
            ("input=nan", "not a finite number"),
            ("input=0.1,input=0.2", "given twice"),
            ("input=0.1,foo", "NAME=RATIO"),
        ] {
            let e = BlockRatios::parse(spec).unwrap_err().to_string();
            assert!(e.contains(needle), "{spec}: {e}");
        }
    }
}
