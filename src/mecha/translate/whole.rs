//! sd-mecha's methods that need whole tensors, as method nodes over the denoisers and the text
//! encoders ([`crate::merge::methods`]).
//!
//! `slerp`, `geometric_median` and `clamp` take models and give one. The delta methods
//! (`perpendicular_component`, `ties_sum`, `model_stock`, `ties_sum_with_dropout`) and the
//! parameter `train_difference_mask` are kept symbolic ([`Pending`]) until the `add_difference`
//! that adds them to a model, and the pair becomes one method node, as sd-mecha's wrappers
//! build them:
//! - `add_difference(a, perpendicular_component(a − c, b − c), alpha)` → `add_perpendicular(a,
//!   b, c)`;
//! - `add_difference(a, b − c, alpha=train_difference_mask(a, b, c, m))` →
//!   `train_difference(a, b, c, alpha=m)`;
//! - `add_difference(base, ties_sum(m₁ − base, …), alpha)` → `add_difference_ties(base, m₁, …)`;
//! - `add_difference(base, model_stock(m₁ − base, …), 1)` → `n_model_stock(base, m₁, …)`;
//! - `add_difference(base, ties_sum_with_dropout(m₁ − base, …), alpha)` →
//!   `add_ties_with_dare(base, m₁, …)`;
//! - `add_difference(base, ties_sum_extended(m₁ − base, …), alpha)` →
//!   `add_difference_ties_extended(base, m₁, …)`;
//! - `add_difference(a, dropout(m₁ − a, …), alpha)` → `dropout(a, m₁, …)`.
//!
//! `apply_stock` of `ties_sum_extended` and `ties_sum_with_dropout` is run as sd-mecha 1.1.8
//! runs it, which applies model stock's `t` when the flag is *false* (`t = 1.0 if apply_stock
//! else get_model_stock_t(…)`): the method node gets the flag inverted, and the run says so.
//!
//! Other compositions (a delta method's result scaled, or over differences from other bases)
//! are refused, saying which form is run.

use std::collections::BTreeMap;

use super::{Call, Ctx, Val, Weights};
use crate::error::{Error, Result};
use crate::merge::methods::Param;

/// `(plus − minus)·scale`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Diff {
    plus: Weights,
    minus: Weights,
    scale: f64,
}

/// A delta method's result (or train difference's mask), waiting for its `add_difference`.
#[derive(Debug, Clone)]
pub(super) enum Pending {
    /// `perpendicular_component(onto, of)`: `of` less its projection on `onto`.
    Perp { onto: Diff, of: Diff },
    /// `train_difference_mask(a, b, c, alpha)`.
    Mask {
        a: Weights,
        b: Weights,
        c: Weights,
        alpha: f64,
    },
    /// `ties_sum` (`add_difference_ties`), `ties_sum_with_dropout` (`add_ties_with_dare`),
    /// `ties_sum_extended` (`add_difference_ties_extended`) or `dropout` of `deltas`, with the
    /// method's parameters other than `alpha`.
    Ties {
        sd_mecha: &'static str,
        method: &'static str,
        deltas: Vec<Diff>,
        params: BTreeMap<String, Param>,
    },
    /// `model_stock(deltas, cos_eps)`.
    Stock { deltas: Vec<Diff>, cos_eps: f64 },
}

impl Pending {
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Pending::Perp { .. } => "a difference (perpendicular_component's)",
            Pending::Mask { .. } => "a mask (train_difference_mask's)",
            Pending::Ties { sd_mecha, .. } => match *sd_mecha {
                "dropout" => "a difference (dropout's)",
                _ => "a difference (a TIES sum)",
            },
            Pending::Stock { .. } => "a difference (model_stock's)",
        }
    }
}

/// `ties_sum_with_dropout`'s parameters and defaults (sd-mecha 1.1.8).
pub(super) const DROPOUT: &[&str] = &[
    "*deltas",
    "probability=0.9",
    "della_eps=0.0",
    "rescale=true",
    "k=0.2",
    "vote_sgn=false",
    "apply_stock=false",
    "cos_eps=1e-6",
    "apply_median=false",
    "eps=1e-6",
    "maxiter=100",
    "ftol=1e-20",
    "seed=null",
];

/// `ties_sum_extended`'s parameters and defaults (sd-mecha 1.1.8).
pub(super) const EXTENDED: &[&str] = &[
    "*models",
    "k=0.2",
    "vote_sgn=false",
    "apply_stock=false",
    "apply_median=false",
    "cos_eps=1e-6",
    "eps=1e-6",
    "maxiter=100",
    "ftol=1e-20",
];

/// `dropout`'s parameters and defaults (sd-mecha 1.1.8's `ties.dropout`).
pub(super) const SUPERMARIO: &[&str] = &[
    "*deltas",
    "probability=0.9",
    "rescale=1.0",
    "overlap=1.0",
    "overlap_emphasis=0.0",
    "seed=null",
];

/// Two models that are the same graph value (the same `model` line, or the same merge).
fn same(a: &Weights, b: &Weights) -> bool {
    a.model == b.model && a.clip == b.clip
}

impl Ctx<'_> {
    /// Method `name` over `models`' denoisers and text encoders; the VAE is the first's.
    fn method(
        &mut self,
        call: &Call<'_>,
        name: &str,
        models: &[Weights],
        params: &[(&str, Param)],
    ) -> Result<Val> {
        let params: BTreeMap<String, Param> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        self.method_map(call, name, models, &params)
    }

    /// As [`Ctx::method`], the parameters checked first against `call`'s line.
    fn method_map(
        &mut self,
        call: &Call<'_>,
        name: &str,
        models: &[Weights],
        params: &BTreeMap<String, Param>,
    ) -> Result<Val> {
        call.check(name, models.len(), params)?;
        let m: Vec<_> = models.iter().map(|w| w.model).collect();
        let c: Vec<_> = models.iter().map(|w| w.clip).collect();
        Ok(Val::Weights(Weights {
            model: self.graph.method(name, &m, params)?,
            clip: self.graph.clip_method(name, &c, params)?,
            vae: models[0].vae,
        }))
    }
}

impl Call<'_> {
    fn models(&self, name: &str) -> Result<Vec<Weights>> {
        let all = self.all(name);
        let mut out = Vec::with_capacity(all.len());
        for (i, v) in all.iter().enumerate() {
            match v {
                Val::Weights(w) => out.push(*w),
                v => {
                    return Err(self.err(format!(
                        "model {} is {}, and a model is taken",
                        i + 1,
                        v.kind()
                    )))
                }
            }
        }
        if out.is_empty() {
            return Err(self.err("no model given".into()));
        }
        Ok(out)
    }

    fn diff(&self, v: &Val, what: &str) -> Result<Diff> {
        match v {
            Val::Delta { plus, minus, scale } => Ok(Diff {
                plus: *plus,
                minus: *minus,
                scale: *scale,
            }),
            v => Err(self.err(format!(
                "{what} is {}; this build takes a difference of two models there (sd-mecha's \
                 `subtract`)",
                v.kind()
            ))),
        }
    }

    fn diffs(&self, name: &str) -> Result<Vec<Diff>> {
        let all = self.all(name);
        if all.is_empty() {
            return Err(self.err("no difference given".into()));
        }
        all.iter()
            .enumerate()
            .map(|(i, v)| self.diff(v, &format!("argument {}", i + 1)))
            .collect()
    }

    /// Checks `params` as method node `method` over `inputs` models will, now: a value out of
    /// range is then reported at this line, under the method as the recipe names it (the graph
    /// node is built later, at another line for the delta methods, under its own name).
    fn check(&self, method: &str, inputs: usize, params: &BTreeMap<String, Param>) -> Result<()> {
        match crate::merge::methods::method(method, inputs, params) {
            Ok(_) => Ok(()),
            Err(Error::InvalidInput(m)) => {
                let own = m.strip_prefix(method).and_then(|r| r.strip_prefix(": "));
                Err(self.err(own.unwrap_or(&m).to_string()))
            }
            Err(e) => Err(e),
        }
    }

    fn int(&self, name: &str) -> Result<i64> {
        let x = self.number(name)?;
        if x.fract() != 0.0 || x.abs() > 9.0e15 {
            return Err(self.err(format!("`{name}` is {x}, and a whole number is taken")));
        }
        Ok(x as i64)
    }
}

pub(super) fn slerp(ctx: &mut Ctx<'_>, call: &Call<'_>) -> Result<Val> {
    let (a, b) = (call.weights("a")?, call.weights("b")?);
    let alpha = Param::Float(call.number("alpha")?);
    ctx.method(call, "slerp", &[a, b], &[("alpha", alpha)])
}

pub(super) fn geometric_median(ctx: &mut Ctx<'_>, call: &Call<'_>) -> Result<Val> {
    let models = call.models("models")?;
    let params = [
        ("eps", Param::Float(call.number("eps")?)),
        ("maxiter", Param::Int(call.int("maxiter")?)),
        ("ftol", Param::Float(call.number("ftol")?)),
    ];
    ctx.method(call, "geometric_median", &models, &params)
}

pub(super) fn clamp(ctx: &mut Ctx<'_>, call: &Call<'_>) -> Result<Val> {
    let mut models = vec![call.weights("a")?];
    models.extend(call.models("bounds")?);
    let stiffness = Param::Float(call.number("stiffness")?);
    ctx.method(call, "clamp", &models, &[("stiffness", stiffness)])
}

pub(super) fn perpendicular_component(_: &mut Ctx<'_>, call: &Call<'_>) -> Result<Val> {
    Ok(Val::Whole(Pending::Perp {
        onto: call.diff(call.one("a")?, "`a`")?,
        of: call.diff(call.one("b")?, "`b`")?,
    }))
}

pub(super) fn train_difference_mask(_: &mut Ctx<'_>, call: &Call<'_>) -> Result<Val> {
    Ok(Val::Whole(Pending::Mask {
        a: call.weights("a")?,
        b: call.weights("b")?,
        c: call.weights("c")?,
        alpha: call.number("alpha")?,
    }))
}

pub(super) fn ties_sum(_: &mut Ctx<'_>, call: &Call<'_>) -> Result<Val> {
    let params = BTreeMap::from([
        ("k".to_string(), Param::Float(call.number("k")?)),
        ("vote_sgn".to_string(), Param::Bool(call.flag("vote_sgn")?)),
    ]);
    ties(
        call,
        "ties_sum",
        "add_difference_ties",
        call.diffs("models")?,
        params,
    )
}

pub(super) fn model_stock(_: &mut Ctx<'_>, call: &Call<'_>) -> Result<Val> {
    Ok(Val::Whole(Pending::Stock {
        deltas: call.diffs("deltas")?,
        cos_eps: call.number("cos_eps")?,
    }))
}

/// sd-mecha's `ties_sum_with_dropout` (DARE, and DELLA with `della_eps` ≠ 0): this build's
/// masks are its own seeded generator's, not torch's; `seed=null` (sd-mecha: a new seed each
/// run) takes seed 0.
pub(super) fn ties_sum_with_dropout(ctx: &mut Ctx<'_>, call: &Call<'_>) -> Result<Val> {
    let seed = seed(call)?;
    let mut params = extended(ctx, call)?;
    params.insert(
        "probability".into(),
        Param::Float(call.number("probability")?),
    );
    params.insert("rescale".into(), Param::Bool(call.flag("rescale")?));
    // sd-mecha's DELLA when ≠ 0: keep probabilities moved by each element's magnitude rank
    // over the whole tensor (a non-finite value is refused with the method's parameters).
    params.insert("della_eps".into(), Param::Float(call.number("della_eps")?));
    params.insert("seed".into(), Param::Int(seed));
    ties(
        call,
        "ties_sum_with_dropout",
        "add_ties_with_dare",
        call.diffs("deltas")?,
        params,
    )
}

/// sd-mecha's `ties_sum_extended`.
pub(super) fn ties_sum_extended(ctx: &mut Ctx<'_>, call: &Call<'_>) -> Result<Val> {
    let params = extended(ctx, call)?;
    ties(
        call,
        "ties_sum_extended",
        "add_difference_ties_extended",
        call.diffs("models")?,
        params,
    )
}

/// sd-mecha's `dropout` (n-supermario), with this build's seeded masks; `seed=null` takes 0.
pub(super) fn dropout(_: &mut Ctx<'_>, call: &Call<'_>) -> Result<Val> {
    let mut params = BTreeMap::new();
    for p in ["probability", "rescale", "overlap", "overlap_emphasis"] {
        params.insert(p.to_string(), Param::Float(call.number(p)?));
    }
    params.insert("seed".into(), Param::Int(seed(call)?));
    ties(call, "dropout", "dropout", call.diffs("deltas")?, params)
}

/// A delta method's pending result, its parameters checked now (at the line that gives
/// them) as the method node that `add_difference` makes of it over `deltas`' models will check
/// them.
fn ties(
    call: &Call<'_>,
    sd_mecha: &'static str,
    method: &'static str,
    deltas: Vec<Diff>,
    params: BTreeMap<String, Param>,
) -> Result<Val> {
    call.check(method, deltas.len() + 1, &params)?;
    Ok(Val::Whole(Pending::Ties {
        sd_mecha,
        method,
        deltas,
        params,
    }))
}

/// A `seed` argument: `null` (sd-mecha: a new seed each run) takes 0.
fn seed(call: &Call<'_>) -> Result<i64> {
    match call.one("seed")? {
        Val::Null => Ok(0),
        _ => call.int("seed"),
    }
}

/// The parameters `ties_sum_extended` shares with `ties_sum_with_dropout`, with `apply_stock`
/// as sd-mecha 1.1.8 runs it (see the [module docs](self)).
fn extended(ctx: &mut Ctx<'_>, call: &Call<'_>) -> Result<BTreeMap<String, Param>> {
    let mut params = BTreeMap::new();
    for p in ["k", "cos_eps", "eps", "ftol"] {
        params.insert(p.to_string(), Param::Float(call.number(p)?));
    }
    params.insert("maxiter".into(), Param::Int(call.int("maxiter")?));
    let median = call.flag("apply_median")?;
    let stock = call.flag("apply_stock")?;
    for (p, v) in [
        ("vote_sgn", call.flag("vote_sgn")?),
        ("apply_median", median),
        ("apply_stock", !stock),
    ] {
        params.insert(p.to_string(), Param::Bool(v));
    }
    if !median {
        let does = if stock {
            "does not apply model stock's t, though apply_stock is true"
        } else {
            "applies model stock's t (per run of the last dimension), though apply_stock is false"
        };
        ctx.notes.push(format!(
            "line {}: `{}` {does}, as sd-mecha 1.1.8 runs it (`t = 1.0 if apply_stock else \
             get_model_stock_t(…)`)",
            call.ins.line, call.method
        ));
    }
    Ok(params)
}

/// `add_difference(a, b, alpha)` when `b` or `alpha` is a pending whole-tensor value: the
/// method node it makes; `None` when neither is (a plain difference).
pub(super) fn add_difference(
    ctx: &mut Ctx<'_>,
    call: &Call<'_>,
    a: Weights,
) -> Result<Option<Val>> {
    let (b, alpha) = (call.one("b")?, call.one("alpha")?);
    if let Val::Whole(Pending::Mask {
        a: ma,
        b: mb,
        c: mc,
        alpha: m,
    }) = alpha
    {
        let d = call.diff(b, "`b`")?;
        if !(same(ma, &a) && same(mb, &d.plus) && same(mc, &d.minus)) {
            return Err(call.err(
                "train_difference_mask(a, b, c) is run as the alpha of add_difference(a, \
                 subtract(b, c)) over the same a, b and c (sd-mecha's train_difference)"
                    .into(),
            ));
        }
        let params = [("alpha", Param::Float(m * d.scale))];
        return ctx
            .method(call, "train_difference", &[a, d.plus, d.minus], &params)
            .map(Some);
    }
    let Val::Whole(pending) = b else {
        return Ok(None);
    };
    let alpha = call.number("alpha")?;
    match pending {
        Pending::Perp { onto, of } => {
            let form = "perpendicular_component(subtract(a, c), subtract(b, c)) added to that \
                        same a (sd-mecha's add_perpendicular)";
            if !(same(&onto.plus, &a) && same(&onto.minus, &of.minus) && onto.scale != 0.0) {
                return Err(call.err(format!("this build runs {form}")));
            }
            let params = [("alpha", Param::Float(alpha * of.scale))];
            ctx.method(call, "add_perpendicular", &[a, of.plus, of.minus], &params)
                .map(Some)
        }
        Pending::Ties {
            sd_mecha,
            method,
            deltas,
            params,
        } => {
            let models = over_base(call, a, deltas, sd_mecha)?;
            let mut params = params.clone();
            params.insert("alpha".into(), Param::Float(alpha));
            ctx.method_map(call, method, &models, &params).map(Some)
        }
        Pending::Stock { deltas, cos_eps } => {
            let models = over_base(call, a, deltas, "model_stock")?;
            if alpha != 1.0 {
                return Err(call.err(format!(
                    "model_stock's result is added with alpha 1 by this build (sd-mecha's \
                     n_model_stock); alpha {alpha} given"
                )));
            }
            let params = [("cos_eps", Param::Float(*cos_eps))];
            ctx.method(call, "n_model_stock", &models, &params)
                .map(Some)
        }
        Pending::Mask { .. } => Err(call.err(format!(
            "`b` is {}; a mask is add_difference's alpha",
            pending.kind()
        ))),
    }
}

/// `[base, m₁, …]` when every delta is `subtract(mᵢ, base)` of add_difference's own `base`.
fn over_base(
    call: &Call<'_>,
    base: Weights,
    deltas: &[Diff],
    method: &str,
) -> Result<Vec<Weights>> {
    let mut models = vec![base];
    for d in deltas {
        if !same(&d.minus, &base) || d.scale != 1.0 {
            return Err(call.err(format!(
                "this build runs {method} over differences subtract(model, base) of the model \
                 it is added to (add_difference(base, {method}(subtract(m1, base), …))), unscaled"
            )));
        }
        models.push(d.plus);
    }
    Ok(models)
}
