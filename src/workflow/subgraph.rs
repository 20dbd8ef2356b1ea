//! Subgraphs of the UI format (`definitions.subgraphs`), expanded into one flat graph as the
//! frontend expands them before queueing: each node inside an instance gets the id
//! `<instance id>:<inner id>` (nested instances add one more part), a link from the subgraph's
//! input node (id −10) takes the instance's input (or the value of the instance's widget for it),
//! and a link from an instance's output takes what the subgraph's output node (id −20) receives.
//! Nodes inside a muted or bypassed instance take its mode.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::error::{Error, Result};

/// The node id a subgraph's inputs come from, and its outputs go to.
const INPUT_NODE: i64 = -10;
const OUTPUT_NODE: i64 = -20;

/// Where a link really starts: a node id and output, or nowhere (an unconnected input).
type Origin = Option<(String, u64)>;

fn bad(msg: String) -> Error {
    Error::InvalidInput(format!("not a ComfyUI workflow this tool can read: {msg}"))
}

fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// A link of one level: `(id, origin node, origin slot, target node, target slot, type)`.
fn read_link(l: &Value) -> Option<(i64, Value, u64, Value, u64, Value)> {
    match l {
        Value::Array(a) => Some((
            a.first()?.as_i64()?,
            a.get(1)?.clone(),
            a.get(2)?.as_u64()?,
            a.get(3)?.clone(),
            a.get(4)?.as_u64()?,
            a.get(5).cloned().unwrap_or(Value::Null),
        )),
        Value::Object(o) => Some((
            o.get("id")?.as_i64()?,
            o.get("origin_id")?.clone(),
            o.get("origin_slot")?.as_u64()?,
            o.get("target_id")?.clone(),
            o.get("target_slot")?.as_u64()?,
            o.get("type").cloned().unwrap_or(Value::Null),
        )),
        _ => None,
    }
}

/// `ui` with every subgraph instance expanded (unchanged when it has none).
///
/// # Errors
/// [`Error::InvalidInput`] for a subgraph whose links or slots do not add up, or that contains
/// itself.
pub(super) fn flatten(ui: &Value) -> Result<Value> {
    let defs: BTreeMap<String, &Value> = ui
        .pointer("/definitions/subgraphs")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| Some((id_text(s.get("id")?)?, s)))
                .collect()
        })
        .unwrap_or_default();
    if defs.is_empty() {
        return Ok(ui.clone());
    }
    let mut f = Flattener {
        defs,
        nodes: Vec::new(),
        links: Vec::new(),
        next_link: 1,
        depth: 0,
    };
    let empty = Vec::new();
    let nodes = ui.get("nodes").and_then(Value::as_array).unwrap_or(&empty);
    let links = ui.get("links").and_then(Value::as_array).unwrap_or(&empty);
    f.level(nodes, links, "", &[], 0)?;
    let mut out = ui.clone();
    out["nodes"] = Value::Array(f.nodes);
    out["links"] = Value::Array(f.links);
    if let Some(d) = out.get_mut("definitions").and_then(Value::as_object_mut) {
        d.remove("subgraphs");
    }
    Ok(out)
}

struct Flattener<'a> {
    defs: BTreeMap<String, &'a Value>,
    nodes: Vec<Value>,
    links: Vec<Value>,
    next_link: i64,
    depth: usize,
}

impl<'a> Flattener<'a> {
    /// Emits one level's nodes under `scope`; `inputs` are where the level's input slots come
    /// from; returns where its output slots come from.
    fn level(
        &mut self,
        nodes: &'a [Value],
        links: &'a [Value],
        scope: &str,
        inputs: &[Origin],
        mode: i64,
    ) -> Result<Vec<Origin>> {
        self.depth += 1;
        if self.depth > 32 {
            return Err(bad(
                "subgraphs nested more than 32 deep (does one contain itself?)".into(),
            ));
        }
        let by_id: BTreeMap<String, &Value> = nodes
            .iter()
            .filter_map(|n| Some((id_text(n.get("id")?)?, n)))
            .collect();
        let link_list: Vec<_> = links.iter().filter_map(read_link).collect();
        let link_of: BTreeMap<i64, &(i64, Value, u64, Value, u64, Value)> =
            link_list.iter().map(|l| (l.0, l)).collect();
        // Instances' outputs, expanded on first use.
        let mut expanded: BTreeMap<String, Vec<Origin>> = BTreeMap::new();
        let mut order: Vec<&String> = by_id.keys().collect();
        order.sort_by_key(|id| {
            nodes
                .iter()
                .position(|n| id_text(&n["id"]).as_ref() == Some(id))
        });
        // Instances first, in file order, each after the instances it reads.
        for id in &order {
            self.instance(id, &by_id, &link_of, scope, inputs, mode, &mut expanded)?;
        }
        for id in order {
            let n = by_id[id];
            let class = n.get("type").and_then(Value::as_str).unwrap_or("");
            if self.defs.contains_key(class) {
                continue;
            }
            let mut n = n.clone();
            let new_id = format!("{scope}{id}");
            n["id"] = json!(new_id);
            if mode != 0 {
                n["mode"] = json!(mode);
            }
            if let Some(ins) = n.get_mut("inputs").and_then(Value::as_array_mut) {
                for (slot, i) in ins.iter_mut().enumerate() {
                    let Some(l) = i.get("link").and_then(Value::as_i64) else {
                        continue;
                    };
                    let origin = self.origin(l, &link_of, scope, inputs, &expanded)?;
                    i["link"] = match origin {
                        Some((from, s)) => {
                            let fresh = self.next_link;
                            self.next_link += 1;
                            let kind = i.get("type").cloned().unwrap_or(Value::Null);
                            self.links.push(json!([fresh, from, s, new_id, slot, kind]));
                            json!(fresh)
                        }
                        None => Value::Null,
                    };
                }
            }
            self.nodes.push(n);
        }
        // The level's outputs: what reaches the output node.
        let mut outs: Vec<Origin> = Vec::new();
        for l in &link_list {
            if l.3.as_i64() == Some(OUTPUT_NODE) {
                let slot = l.4 as usize;
                if outs.len() <= slot {
                    outs.resize(slot + 1, None);
                }
                outs[slot] = self.origin(l.0, &link_of, scope, inputs, &expanded)?;
            }
        }
        self.depth -= 1;
        Ok(outs)
    }

    /// Expands instance `id` (after the instances its inputs come from) into `expanded`.
    #[allow(clippy::too_many_arguments)]
    fn instance(
        &mut self,
        id: &str,
        by_id: &BTreeMap<String, &'a Value>,
        link_of: &BTreeMap<i64, &(i64, Value, u64, Value, u64, Value)>,
        scope: &str,
        inputs: &[Origin],
        mode: i64,
        expanded: &mut BTreeMap<String, Vec<Origin>>,
    ) -> Result<()> {
        let Some(n) = by_id.get(id) else {
            return Ok(());
        };
        let class = n.get("type").and_then(Value::as_str).unwrap_or("");
        let Some(def) = self.defs.get(class).copied() else {
            return Ok(());
        };
        if expanded.contains_key(id) {
            return Ok(());
        }
        // The instances this one reads come first.
        let ins: Vec<&Value> = n
            .get("inputs")
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        for i in &ins {
            if let Some(l) = i
                .get("link")
                .and_then(Value::as_i64)
                .and_then(|l| link_of.get(&l))
            {
                if let Some(from) = id_text(&l.1) {
                    if from != id {
                        self.instance(&from, by_id, link_of, scope, inputs, mode, expanded)?;
                    }
                }
            }
        }
        let inner_scope = format!("{scope}{id}:");
        let widgets = n.get("widgets_values").and_then(Value::as_array);
        let mut widget_index = 0;
        let mut origins = Vec::with_capacity(ins.len());
        for (k, i) in ins.iter().enumerate() {
            let origin = match i.get("link").and_then(Value::as_i64) {
                Some(l) => self.origin(l, link_of, scope, inputs, expanded)?,
                None if i.get("widget").is_some() => {
                    // A widget of the instance: its value, as a primitive the inner node reads.
                    let v = widgets.and_then(|w| w.get(widget_index)).cloned();
                    widget_index += 1;
                    v.map(|v| {
                        let pid = format!("{inner_scope}in{k}");
                        self.nodes.push(json!({
                            "id": pid, "type": "PrimitiveNode", "mode": 0,
                            "inputs": [], "outputs": [], "widgets_values": [v],
                        }));
                        (pid, 0)
                    })
                }
                None => None,
            };
            origins.push(origin);
        }
        let inner_nodes = def
            .get("nodes")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        let inner_links = def
            .get("links")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        let own_mode = n.get("mode").and_then(Value::as_i64).unwrap_or(0);
        let outs = self.level(
            inner_nodes,
            inner_links,
            &inner_scope,
            &origins,
            if own_mode != 0 { own_mode } else { mode },
        )?;
        expanded.insert(id.to_string(), outs);
        Ok(())
    }

    /// Where link `l` of the current level starts.
    fn origin(
        &self,
        l: i64,
        link_of: &BTreeMap<i64, &(i64, Value, u64, Value, u64, Value)>,
        scope: &str,
        inputs: &[Origin],
        expanded: &BTreeMap<String, Vec<Origin>>,
    ) -> Result<Origin> {
        let link = link_of
            .get(&l)
            .ok_or_else(|| bad(format!("link {l} of a subgraph is not in its links")))?;
        if link.1.as_i64() == Some(INPUT_NODE) {
            return Ok(inputs.get(link.2 as usize).cloned().flatten());
        }
        let from = id_text(&link.1).ok_or_else(|| bad(format!("link {l} has no origin")))?;
        if let Some(outs) = expanded.get(&from) {
            return Ok(outs.get(link.2 as usize).cloned().flatten());
        }
        Ok(Some((format!("{scope}{from}"), link.2)))
    }
}
