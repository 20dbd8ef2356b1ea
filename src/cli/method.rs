//! `merge A B [C…] --method NAME --param k=v …`: one of sd-mecha's merge methods over the
//! inputs' denoisers, as a method node of a merge graph, written in one pass.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};

use crate::args::{ArchArg, MergeArgs};
use crate::commands::save_options;
use checkpoint_save::merge::graph::ModelOut;
use checkpoint_save::merge::methods::{self, Param};

/// `--param` values by name.
///
/// # Errors
/// For a value without `=`, an empty name, or a name given twice.
pub(crate) fn parse_params(specs: &[String]) -> Result<BTreeMap<String, Param>> {
    let mut out = BTreeMap::new();
    for spec in specs {
        let Some((name, value)) = spec.split_once('=') else {
            bail!("--param `{spec}`: write NAME=VALUE (for example --param alpha=0.3)");
        };
        let name = name.trim();
        if name.is_empty() {
            bail!("--param `{spec}`: the parameter has no name; write NAME=VALUE");
        }
        if out
            .insert(name.to_string(), Param::Str(value.trim().to_string()))
            .is_some()
        {
            bail!("--param {name} is given twice; give each parameter once");
        }
    }
    Ok(out)
}

/// `merge … --method NAME`: the graph built, run, its one checkpoint's path printed.
pub(crate) fn merge_method(args: &MergeArgs, name: &str, cancel: &Arc<AtomicBool>) -> Result<()> {
    let start = Instant::now();
    let params = parse_params(&args.params)?;
    // Name, count and parameters are checked before any input is opened.
    methods::method(name, args.inputs.len(), &params)?;
    if args.out.arch != ArchArg::Auto {
        bail!("--method detects the inputs' architecture (they must all be one); leave --arch out");
    }
    if args.block_ratios.is_some() || args.clip_ratio.is_some() {
        bail!("--method merges every denoiser tensor with the method; --block-ratios and --clip-ratio cannot be added to it");
    }
    let opts = save_options(&args.out, cancel)?;
    let (mut g, loaded) = crate::weights::load_inputs(args)?;
    let models: Vec<ModelOut> = loaded.iter().map(|l| l.model).collect();
    let model = g.method(name, &models, &params)?;
    let clip = if args.clip_method {
        let clips = crate::weights::clips(args, &loaded, "--clip-method")?;
        Some(g.clip_method(name, &clips, &params)?)
    } else {
        loaded[0].clip
    };
    let shown: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let what = match shown.is_empty() {
        true => format!("method {name}"),
        false => format!("method {name} ({})", shown.join(", ")),
    };
    crate::weights::save_graph(args, &opts, g, &loaded, model, clip, start, &what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_name_value_pairs_given_once() {
        let p = parse_params(&["alpha=0.3".into(), " k = 1 ".into()]).unwrap();
        assert_eq!(p["alpha"], Param::Str("0.3".into()));
        assert_eq!(p["k"], Param::Str("1".into()));
        for bad in [vec!["alpha"], vec!["=1"], vec!["a=1", "a=2"]] {
            let specs: Vec<String> = bad.into_iter().map(String::from).collect();
            assert!(parse_params(&specs).is_err());
        }
    }
}
