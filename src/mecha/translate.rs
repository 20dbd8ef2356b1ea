//! A recipe as a merge graph: each instruction the result depends on becomes graph nodes, by
//! one table of methods (`METHODS`: sd-mecha's name → its translation).
//!
//! sd-mecha's formulas, and the graph nodes that compute them (in f32, rounded once, as
//! sd-mecha computes in its default f32 merge dtype):
//! - `weighted_sum(a, b, alpha)` = `lerp(a, b, alpha)` → ModelMergeSimple / CLIPMergeSimple
//!   with ratio `1 − alpha`;
//! - `n_average(m1 … mn)` = running `lerp(res, m_i, 1/i)` → a chain of those merges;
//! - `subtract(b, c)` = `b − c` (a difference, sd-mecha's `delta` merge space), `scale(d,
//!   alpha)` = `d·alpha`, `add_difference(a, d, alpha)` = `a + d·alpha` →
//!   ModelMergeSubtract(b, c, multiplier) then ModelMergeAdd(a, ·) (and the CLIP nodes);
//! - `fallback(a, b)` (keys missing from `a` taken from `b`) → `a`: a graph model has every
//!   key of its architecture;
//! - `convert_singleton(literal)` → the literal's number (or flag);
//! - the methods that need whole tensors (`slerp`, `geometric_median`, `clamp`, and the delta
//!   methods `perpendicular_component`, `train_difference_mask`, `ties_sum`, `model_stock`,
//!   `ties_sum_with_dropout`, `ties_sum_extended`, `dropout` as sd-mecha's wrappers combine them with `subtract` and
//!   `add_difference`) → method nodes over the denoisers and the text encoders ([`whole`]).

mod whole;

use std::collections::HashMap;

use super::{resolve_model, Command, Instruction, Recipe, TranslateOptions, Translated, Value};
use crate::error::{Error, Result};
use crate::merge::graph::{ClipOut, Graph, ModelOut, Node, Source, VaeOut, MAX_DEPTH};

/// A translation: the graph so far, the call, its bound arguments.
type Translate = fn(&mut Ctx<'_>, &Call<'_>) -> Result<Val>;

/// The methods this build runs: sd-mecha's identifier, its parameters (a leading `*` takes the
/// remaining positional arguments; `name=` has a default), and the translation.
const METHODS: &[(&str, &[&str], Translate)] = &[
    ("weighted_sum", &["a", "b", "alpha=0.5"], weighted_sum),
    ("n_average", &["*models"], n_average),
    ("subtract", &["a", "b"], subtract),
    ("scale", &["a", "alpha=1.0"], scale),
    ("add_difference", &["a", "b", "alpha=1.0"], add_difference),
    ("fallback", &["a", "b"], fallback),
    ("convert_singleton", &["a"], convert_singleton),
    ("slerp", &["a", "b", "alpha=0.5"], whole::slerp),
    (
        "geometric_median",
        &["*models", "eps=1e-6", "maxiter=100", "ftol=1e-20"],
        whole::geometric_median,
    ),
    ("clamp", &["a", "*bounds", "stiffness=0.0"], whole::clamp),
    (
        "perpendicular_component",
        &["a", "b"],
        whole::perpendicular_component,
    ),
    (
        "train_difference_mask",
        &["a", "b", "c", "alpha=1.0"],
        whole::train_difference_mask,
    ),
    (
        "ties_sum",
        &["*models", "k=1.0", "vote_sgn=false"],
        whole::ties_sum,
    ),
    (
        "model_stock",
        &["*deltas", "cos_eps=1e-6"],
        whole::model_stock,
    ),
    (
        "ties_sum_with_dropout",
        whole::DROPOUT,
        whole::ties_sum_with_dropout,
    ),
    (
        "ties_sum_extended",
        whole::EXTENDED,
        whole::ties_sum_extended,
    ),
    ("dropout", whole::SUPERMARIO, whole::dropout),
];

/// The sd-mecha methods `run RECIPE.mecha` translates, in the table's order.
pub fn methods() -> Vec<&'static str> {
    METHODS.iter().map(|(n, _, _)| *n).collect()
}

/// A model's outputs in the graph (sd-mecha's `weight` space).
#[derive(Debug, Clone, Copy)]
struct Weights {
    model: ModelOut,
    clip: ClipOut,
    vae: VaeOut,
}

/// What an instruction evaluates to.
#[derive(Debug, Clone)]
enum Val {
    /// A model.
    Weights(Weights),
    /// `(plus − minus)·scale`: sd-mecha's `delta` space, kept symbolic until added to a model
    /// (the graph has no difference value of its own).
    Delta {
        plus: Weights,
        minus: Weights,
        scale: f64,
    },
    /// A number (a literal, `convert_singleton` of one).
    Number(f64),
    /// A flag.
    Bool(bool),
    /// `null` (a seed left to chance).
    Null,
    /// A delta method's result, kept symbolic until `add_difference` adds it to its base.
    Whole(whole::Pending),
    /// A dict (a literal's values).
    Dict(Vec<(String, Value)>),
}

impl Val {
    fn kind(&self) -> &'static str {
        match self {
            Val::Weights(_) => "a model",
            Val::Delta { .. } => "a difference (sd-mecha's delta space)",
            Val::Number(_) => "a number",
            Val::Bool(_) => "true/false",
            Val::Null => "null",
            Val::Whole(p) => p.kind(),
            Val::Dict(_) => "a dict",
        }
    }
}

struct Ctx<'a> {
    recipe: &'a Recipe,
    opts: &'a TranslateOptions,
    graph: Graph,
    done: HashMap<usize, Val>,
    /// Instructions being translated, each waiting on the next (see [`MAX_DEPTH`]).
    depth: usize,
    /// Notes for the user, from the methods' translations.
    notes: Vec<String>,
}

/// A merge call: its instruction and its arguments bound to the method's parameters.
struct Call<'a> {
    ins: &'a Instruction,
    method: &'a str,
    bound: Vec<(String, Vec<Val>)>,
}

impl Call<'_> {
    fn err(&self, what: String) -> Error {
        Error::InvalidInput(format!("line {}: `{}`: {what}", self.ins.line, self.method))
    }

    fn all(&self, name: &str) -> &[Val] {
        self.bound
            .iter()
            .find(|(n, _)| n == name)
            .map_or(&[], |(_, v)| v.as_slice())
    }

    fn one(&self, name: &str) -> Result<&Val> {
        self.all(name)
            .first()
            .ok_or_else(|| self.err(format!("argument `{name}` missing")))
    }

    fn weights(&self, name: &str) -> Result<Weights> {
        match self.one(name)? {
            Val::Weights(w) => Ok(*w),
            v => Err(self.err(format!("`{name}` is {}, and a model is taken", v.kind()))),
        }
    }

    fn flag(&self, name: &str) -> Result<bool> {
        match self.one(name)? {
            Val::Bool(b) => Ok(*b),
            v => Err(self.err(format!(
                "`{name}` is {}, and true or false is taken",
                v.kind()
            ))),
        }
    }

    fn number(&self, name: &str) -> Result<f64> {
        match self.one(name)? {
            Val::Number(x) => Ok(*x),
            v => Err(self.err(format!(
                "`{name}` is {}, and this build takes a number there (per-key values are \
                 not supported)",
                v.kind()
            ))),
        }
    }
}

pub(super) fn translate(recipe: &Recipe, opts: &TranslateOptions) -> Result<Translated> {
    let mut ctx = Ctx {
        recipe,
        opts,
        graph: Graph::new(),
        done: HashMap::new(),
        depth: 0,
        notes: Vec::new(),
    };
    let last = recipe.instructions.len() - 1;
    let result = ctx.eval(last)?;
    let line = recipe.instructions[last].line;
    let Val::Weights(w) = result else {
        return Err(Error::InvalidInput(format!(
            "line {line}: the recipe's result is {}, and a model is what is written",
            result.kind()
        )));
    };
    let first = ctx.source_name(w.vae.0.node);
    ctx.graph
        .save_checkpoint(w.model, w.clip, w.vae, opts.target.clone())?;
    let mut notes = std::mem::take(&mut ctx.notes);
    if ctx.models() > 1 {
        notes.push(format!(
            "the autoencoder (VAE) is `{first}`'s: merge graphs merge the denoiser and the text \
             encoders (ComfyUI has no VAE merge node), where sd-mecha merges every key"
        ));
    }
    Ok(Translated {
        graph: ctx.graph,
        notes,
    })
}

impl Ctx<'_> {
    /// The value of instruction `i`, translated once.
    fn eval(&mut self, i: usize) -> Result<Val> {
        if let Some(v) = self.done.get(&i) {
            return Ok(v.clone());
        }
        let ins = &self.recipe.instructions[i];
        if self.depth >= MAX_DEPTH {
            return Err(Error::InvalidInput(format!(
                "line {}: the recipe nests more than {MAX_DEPTH} instructions, each the input \
                 of the next, deeper than this tool evaluates; write an intermediate model \
                 and merge from it in a second recipe",
                ins.line
            )));
        }
        self.depth += 1;
        let v = match ins.command {
            Command::Dict => Val::Dict(
                ins.args
                    .iter()
                    .filter_map(|a| a.key.clone().map(|k| (k, a.value.clone())))
                    .collect(),
            ),
            Command::Literal => self.literal(ins)?,
            Command::Model => self.model(ins)?,
            Command::Merge => self.merge(ins)?,
        };
        self.depth -= 1;
        self.done.insert(i, v.clone());
        Ok(v)
    }

    fn value(&mut self, v: &Value, ins: &Instruction) -> Result<Val> {
        let bad = |what: &str| {
            Error::InvalidInput(format!(
                "line {}: {what} is not a value this build takes there",
                ins.line
            ))
        };
        match v {
            Value::Ref(r) => self.eval(*r),
            Value::Int(x) => Ok(Val::Number(*x as f64)),
            Value::Float(x) => Ok(Val::Number(*x)),
            Value::Bool(b) => Ok(Val::Bool(*b)),
            Value::Null => Ok(Val::Null),
            Value::Str(s) => Err(bad(&format!("the string \"{s}\""))),
        }
    }

    fn literal(&mut self, ins: &Instruction) -> Result<Val> {
        let config = ins.keyword("model_config");
        match config {
            None | Some(Value::Null) => {}
            Some(Value::Str(c)) if c == "singleton-mecha" => {}
            Some(c) => {
                return Err(Error::InvalidInput(format!(
                    "line {}: a literal for model config {c}: per-key (per-block) values \
                     are not supported; this build takes one number for every key \
                     (model_config=\"singleton-mecha\")",
                    ins.line
                )))
            }
        }
        let v = ins.positional().next().cloned().unwrap_or(Value::Null);
        match self.value(&v, ins)? {
            Val::Number(x) => Ok(Val::Number(x)),
            Val::Bool(b) => Ok(Val::Bool(b)),
            Val::Dict(entries) => match entries.as_slice() {
                [(k, Value::Int(x))] if k == "key" => Ok(Val::Number(*x as f64)),
                [(k, Value::Float(x))] if k == "key" => Ok(Val::Number(*x)),
                [(k, Value::Bool(b))] if k == "key" => Ok(Val::Bool(*b)),
                _ => Err(Error::InvalidInput(format!(
                    "line {}: a literal of a dict other than one number under `key` (a \
                     singleton): per-key values are not supported",
                    ins.line
                ))),
            },
            v => Err(Error::InvalidInput(format!(
                "line {}: a literal of {}",
                ins.line,
                v.kind()
            ))),
        }
    }

    fn model(&mut self, ins: &Instruction) -> Result<Val> {
        let Some(Value::Str(path)) = ins.positional().next() else {
            return Err(Error::InvalidInput(format!(
                "line {}: `model` without a path",
                ins.line
            )));
        };
        match ins.keyword("merge_space") {
            None | Some(Value::Null) => {}
            Some(Value::Str(s)) if s == "weight" => {}
            Some(s) => {
                return Err(Error::InvalidInput(format!(
                    "line {}: model `{path}` in merge space {s}: this build reads models \
                     in the `weight` space (checkpoints), not differences or LoRAs",
                    ins.line
                )))
            }
        }
        let file = resolve_model(path, &self.opts.models_dirs)
            .map_err(|e| Error::InvalidInput(format!("line {}: {e}", ins.line)))?;
        let c = self.graph.checkpoint(Source::Path(file))?;
        Ok(Val::Weights(Weights {
            model: c.model,
            clip: c.clip,
            vae: c.vae,
        }))
    }

    fn merge(&mut self, ins: &Instruction) -> Result<Val> {
        let mut positional = ins.positional();
        let Some(Value::Str(method)) = positional.next() else {
            return Err(Error::InvalidInput(format!(
                "line {}: `merge` without a method name",
                ins.line
            )));
        };
        let Some((_, params, f)) = METHODS.iter().find(|(n, _, _)| n == method) else {
            return Err(Error::InvalidInput(format!(
                "line {}: merge method `{method}` is not run by this build; it runs: {}",
                ins.line,
                methods().join(", ")
            )));
        };
        let positional: Vec<Value> = positional.cloned().collect();
        let bad =
            |what: String| Error::InvalidInput(format!("line {}: `{method}`: {what}", ins.line));
        let mut bound: Vec<(String, Vec<Val>)> = Vec::new();
        let mut next = 0;
        for p in *params {
            if let Some(rest) = p.strip_prefix('*') {
                let mut vals = Vec::new();
                for v in &positional[next.min(positional.len())..] {
                    vals.push(self.value(v, ins)?);
                }
                next = positional.len();
                bound.push((rest.to_string(), vals));
                continue;
            }
            let (name, default) = match p.split_once('=') {
                Some((n, d)) => (n, Some(d)),
                None => (*p, None),
            };
            let given = match (positional.get(next), ins.keyword(name)) {
                (Some(_), Some(_)) => {
                    return Err(bad(format!(
                        "`{name}` is given twice (by position and name)"
                    )))
                }
                (Some(v), None) => {
                    next += 1;
                    Some(v.clone())
                }
                (None, k) => k.cloned(),
            };
            let val = match (given, default) {
                (Some(v), _) => self.value(&v, ins)?,
                (None, Some("true")) => Val::Bool(true),
                (None, Some("false")) => Val::Bool(false),
                (None, Some("null")) => Val::Null,
                (None, Some(d)) => Val::Number(d.parse().unwrap_or(0.0)),
                (None, None) => return Err(bad(format!("argument `{name}` missing"))),
            };
            bound.push((name.to_string(), vec![val]));
        }
        if next < positional.len() {
            return Err(bad(format!(
                "{} positional argument(s), and it takes {}",
                positional.len(),
                next
            )));
        }
        // Checked here, where the line and the name as written are known: the graph would
        // name its own node and parameter (`ratio -inf` for `alpha=1e999`).
        for (name, vals) in &bound {
            for v in vals {
                if let Val::Number(x) = v {
                    if !x.is_finite() {
                        return Err(bad(format!("{name} = {x} is not a finite number")));
                    }
                }
            }
        }
        let names: Vec<&str> = params
            .iter()
            .map(|p| p.trim_start_matches('*').split('=').next().unwrap_or(p))
            .collect();
        for a in &ins.args {
            if let Some(k) = &a.key {
                if !names.contains(&k.as_str()) {
                    return Err(bad(format!(
                        "unknown parameter `{k}` (it takes: {})",
                        names.join(", ")
                    )));
                }
            }
        }
        let call = Call { ins, method, bound };
        f(self, &call)
    }

    /// How many model files the graph reads.
    fn models(&self) -> usize {
        let loaders = self.graph.nodes().iter();
        loaders.filter(|n| n.node.links().is_empty()).count()
    }

    /// The file name of the loader behind a slot, for the notes.
    fn source_name(&self, node: usize) -> String {
        match self.graph.node(node).map(|n| &n.node) {
            Some(Node::Checkpoint(s)) => s.name(),
            Some(_) | None => format!("node {}", node + 1),
        }
    }

    /// `model1·ratio + model2·(1 − ratio)` on the denoiser and the text encoders.
    fn mix(&mut self, a: Weights, b: Weights, ratio: f64) -> Result<Weights> {
        Ok(Weights {
            model: self.graph.model_merge_simple(a.model, b.model, ratio)?,
            clip: self.graph.clip_merge_simple(a.clip, b.clip, ratio)?,
            vae: a.vae,
        })
    }
}

fn weighted_sum(ctx: &mut Ctx<'_>, call: &Call<'_>) -> Result<Val> {
    let (a, b, alpha) = (
        call.weights("a")?,
        call.weights("b")?,
        call.number("alpha")?,
    );
    Ok(Val::Weights(ctx.mix(a, b, 1.0 - alpha)?))
}

fn n_average(ctx: &mut Ctx<'_>, call: &Call<'_>) -> Result<Val> {
    let models = call.all("models");
    let mut res: Option<Weights> = None;
    for (i, m) in models.iter().enumerate() {
        let Val::Weights(w) = m else {
            return Err(call.err(format!("model {} is {}", i + 1, m.kind())));
        };
        res = Some(match res {
            None => *w,
            Some(r) => ctx.mix(r, *w, 1.0 - 1.0 / (i + 1) as f64)?,
        });
    }
    res.map(Val::Weights)
        .ok_or_else(|| call.err("no model to average".into()))
}

fn subtract(_: &mut Ctx<'_>, call: &Call<'_>) -> Result<Val> {
    Ok(Val::Delta {
        plus: call.weights("a")?,
        minus: call.weights("b")?,
        scale: 1.0,
    })
}

fn scale(_: &mut Ctx<'_>, call: &Call<'_>) -> Result<Val> {
    let alpha = call.number("alpha")?;
    match call.one("a")? {
        Val::Delta { plus, minus, scale } => Ok(Val::Delta {
            plus: *plus,
            minus: *minus,
            scale: scale * alpha,
        }),
        v => Err(call.err(format!(
            "`a` is {}; this build scales differences (subtract's results)",
            v.kind()
        ))),
    }
}

fn add_difference(ctx: &mut Ctx<'_>, call: &Call<'_>) -> Result<Val> {
    let a = call.weights("a")?;
    if let Some(v) = whole::add_difference(ctx, call, a)? {
        return Ok(v);
    }
    let alpha = call.number("alpha")?;
    let Val::Delta { plus, minus, scale } = call.one("b")? else {
        return Err(call.err(format!(
            "`b` is {}, and a difference is taken (sd-mecha's `subtract` of two models)",
            call.one("b")?.kind()
        )));
    };
    let m = scale * alpha;
    let g = &mut ctx.graph;
    let dm = g.model_subtract(plus.model, minus.model, m)?;
    let dc = g.clip_subtract(plus.clip, minus.clip, m)?;
    Ok(Val::Weights(Weights {
        model: g.model_add(a.model, dm)?,
        clip: g.clip_add(a.clip, dc)?,
        vae: a.vae,
    }))
}

fn fallback(_: &mut Ctx<'_>, call: &Call<'_>) -> Result<Val> {
    call.weights("b")?;
    Ok(Val::Weights(call.weights("a")?))
}

fn convert_singleton(_: &mut Ctx<'_>, call: &Call<'_>) -> Result<Val> {
    match call.one("a")? {
        Val::Bool(b) => Ok(Val::Bool(*b)),
        _ => Ok(Val::Number(call.number("a")?)),
    }
}
