//! The UI format (what ComfyUI's "Save" writes and embeds as `workflow`) turned into the API
//! format, as the frontend's `graphToPrompt` does: muted nodes (mode 2) left out, bypassed
//! ones (mode 4) passing the input of the linked type through, `Reroute` nodes followed,
//! `PrimitiveNode` values put into the widgets they feed, and every other node's widget values
//! named positionally in its `INPUT_TYPES` order, and the `%date:…%` / `%Node.widget%` tokens of
//! the save prefixes the frontend rewrites replaced ([`super::prefix`]). Subgraphs are expanded
//! first ([`super::subgraph`]).

use std::cell::OnceCell;
use std::collections::{BTreeMap, VecDeque};

use serde_json::{json, Map, Value};

use super::nodes::spec_of;
use super::prefix::{self, Named};
use crate::error::{Error, Result};
use crate::naming::LocalTime;

/// Node modes of the UI format.
const MUTED: i64 = 2;
const BYPASSED: i64 = 4;

/// Nodes the frontend never sends to the server.
fn is_virtual(class: &str) -> bool {
    matches!(
        class,
        "Reroute" | "PrimitiveNode" | "Note" | "MarkdownNote" | "GetNode" | "SetNode"
    )
}

/// One link: where it starts.
#[derive(Debug, Clone)]
struct Link {
    from: String,
    slot: usize,
}

/// A node of the UI file, as far as the conversion needs it.
#[derive(Debug, Clone)]
struct UiNode {
    id: String,
    class: String,
    mode: i64,
    title: Option<String>,
    /// Its "Node name for S&R" property, what `%Node.widget%` prefix tokens name first.
    sr_name: String,
    /// `(name, type, link id, widget name)` per input slot.
    inputs: Vec<(String, String, Option<i64>, Option<String>)>,
    widgets: Value,
}

fn bad(msg: String) -> Error {
    Error::InvalidInput(format!("not a ComfyUI workflow this tool can read: {msg}"))
}

/// An id as text (UI files write numbers; subgraph ids are strings).
fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// Converts a UI-format workflow into the API prompt the frontend would queue.
///
/// # Errors
/// [`Error::InvalidInput`] for a file whose nodes or links are not in the UI format, a link to
/// a node or output slot that is not there, a subgraph whose links do not add up.
pub(crate) fn to_api(ui: &Value) -> Result<Map<String, Value>> {
    let ui = &super::subgraph::flatten(ui)?;
    let nodes = ui
        .get("nodes")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no `nodes` list".into()))?;
    let mut by_id: BTreeMap<String, UiNode> = BTreeMap::new();
    let mut order = Vec::new();
    for n in nodes {
        let id = n
            .get("id")
            .and_then(id_text)
            .ok_or_else(|| bad("a node without an id".into()))?;
        let class = n
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("node {id} has no `type`")))?
            .to_string();
        let mut inputs = Vec::new();
        for i in n
            .get("inputs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            inputs.push((
                i.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                i.get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                i.get("link").and_then(Value::as_i64),
                i.pointer("/widget/name")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            ));
        }
        // The frontend gives every node this property, its class, unless the file sets it.
        let sr_name = n
            .pointer("/properties/Node name for S&R")
            .and_then(Value::as_str)
            .unwrap_or(&class)
            .to_string();
        let node = UiNode {
            id: id.clone(),
            class,
            mode: n.get("mode").and_then(Value::as_i64).unwrap_or(0),
            title: n.get("title").and_then(Value::as_str).map(str::to_string),
            sr_name,
            inputs,
            widgets: n.get("widgets_values").cloned().unwrap_or(Value::Null),
        };
        if by_id.insert(id.clone(), node).is_some() {
            return Err(bad(format!("two nodes have the id {id}")));
        }
        order.push(id);
    }
    let links = read_links(ui)?;
    let named: Vec<Named<'_>> = order.iter().map(|id| named(&by_id[id])).collect();
    // One clock reading for every `%date:…%` of the queue, taken only if one is there.
    let clock = OnceCell::new();
    let now = || *clock.get_or_init(LocalTime::now);
    let mut out = Map::new();
    for id in execution_order(&order, &by_id, &links) {
        let n = &by_id[&id];
        if n.mode == MUTED || n.mode == BYPASSED || is_virtual(&n.class) {
            continue;
        }
        let mut inputs = Map::new();
        let spec = spec_of(&n.class);
        // Widget values first, in INPUT_TYPES order (or by name where the file keeps a map).
        if let Some(spec) = &spec {
            let names: Vec<&str> = spec.widgets().map(|w| w.name.as_str()).collect();
            for (k, name) in names.iter().enumerate() {
                let v = match &n.widgets {
                    Value::Array(a) => a.get(k).cloned(),
                    Value::Object(o) => o.get(*name).cloned(),
                    _ => None,
                };
                // A widget turned into an input takes the linked value instead.
                let linked = n
                    .inputs
                    .iter()
                    .find(|(iname, _, link, w)| {
                        link.is_some() && (w.as_deref() == Some(*name) || iname == name)
                    })
                    .and_then(|(_, _, link, _)| *link);
                match linked {
                    Some(l) => {
                        if let Some(v) = linked_value(&by_id, &links, l, n, name)? {
                            inputs.insert(name.to_string(), v);
                        }
                    }
                    None => {
                        if let Some(v) = v {
                            inputs.insert(name.to_string(), v);
                        }
                    }
                }
            }
        }
        // Then the links of the other inputs.
        for (name, kind, link, widget) in &n.inputs {
            let is_widget = widget.is_some()
                || spec
                    .as_ref()
                    .and_then(|s| s.input(name))
                    .is_some_and(|i| !matches!(i.input, super::nodes::Input::Link(_)));
            let Some(l) = link else { continue };
            if is_widget {
                continue;
            }
            if let Some((from, slot)) = resolve(&by_id, &links, *l, kind, &n.id, name)? {
                inputs.insert(name.clone(), json!([from, slot]));
            }
        }
        if prefix::SUBSTITUTED.contains(&n.class.as_str()) {
            if let Some(Value::String(p)) = inputs.get_mut("filename_prefix") {
                *p = prefix::apply(p, &named, now);
            }
        }
        let title = shown_title(n);
        out.insert(
            id.clone(),
            json!({"inputs": inputs, "class_type": n.class, "_meta": {"title": title}}),
        );
    }
    Ok(out)
}

/// A node's title as the frontend shows it: its own, else its class's display name.
fn shown_title(n: &UiNode) -> String {
    n.title
        .clone()
        .or_else(|| {
            spec_of(&n.class)
                .map(|s| s.title.to_string())
                .filter(|t| !t.is_empty())
        })
        .unwrap_or_else(|| n.class.clone())
}

/// What a prefix's `%Node.widget%` can name of `n`: its names and its widgets' values (by the
/// `INPUT_TYPES` order the conversion names them in; none for a class this tool does not know).
fn named(n: &UiNode) -> Named<'_> {
    let mut widgets = Vec::new();
    if let Some(spec) = spec_of(&n.class) {
        for (k, w) in spec.widgets().enumerate() {
            let v = match &n.widgets {
                Value::Array(a) => a.get(k),
                Value::Object(o) => o.get(w.name.as_str()),
                _ => None,
            };
            if let Some(v) = v {
                widgets.push((w.name.clone(), v));
            }
        }
    }
    Named {
        sr_name: Some(&n.sr_name),
        title: shown_title(n),
        widgets,
    }
}

/// The links by id, from the array form (`[id, from, slot, to, to_slot, type]`) or the object
/// form of newer files.
fn read_links(ui: &Value) -> Result<BTreeMap<i64, Link>> {
    let mut out = BTreeMap::new();
    for l in ui
        .get("links")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (id, from, slot) = match l {
            Value::Array(a) => (
                a.first().and_then(Value::as_i64),
                a.get(1).and_then(id_text),
                a.get(2).and_then(Value::as_u64),
            ),
            Value::Object(o) => (
                o.get("id").and_then(Value::as_i64),
                o.get("origin_id").and_then(id_text),
                o.get("origin_slot").and_then(Value::as_u64),
            ),
            _ => (None, None, None),
        };
        let (Some(id), Some(from), Some(slot)) = (id, from, slot) else {
            return Err(bad(format!(
                "a link that is not `[id, from, slot, to, slot, type]`: {l}"
            )));
        };
        out.insert(
            id,
            Link {
                from,
                slot: slot as usize,
            },
        );
    }
    Ok(out)
}

/// The nodes in the order the frontend executes them (LiteGraph's `computeExecutionOrder`:
/// nodes whose inputs are all ready, in file order), nodes in a cycle last in file order (the
/// translation refuses the cycle with its members).
fn execution_order(
    order: &[String],
    nodes: &BTreeMap<String, UiNode>,
    links: &BTreeMap<i64, Link>,
) -> Vec<String> {
    let mut pending: BTreeMap<&str, usize> = BTreeMap::new();
    let mut users: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for id in order {
        let n = &nodes[id];
        let froms: Vec<&str> = n
            .inputs
            .iter()
            .filter_map(|(_, _, l, _)| links.get(&(*l)?))
            .filter(|l| nodes.contains_key(&l.from))
            .map(|l| l.from.as_str())
            .collect();
        pending.insert(id.as_str(), froms.len());
        for f in froms {
            users.entry(f).or_default().push(id.as_str());
        }
    }
    let mut queue: VecDeque<&str> = order
        .iter()
        .map(String::as_str)
        .filter(|id| pending[id] == 0)
        .collect();
    let mut out = Vec::new();
    while let Some(id) = queue.pop_front() {
        out.push(id.to_string());
        for u in users.get(id).into_iter().flatten() {
            if let Some(p) = pending.get_mut(u) {
                *p -= 1;
                if *p == 0 {
                    queue.push_back(u);
                }
            }
        }
    }
    for id in order {
        if !out.contains(id) {
            out.push(id.clone());
        }
    }
    out
}

/// Where link `l` (into input `input` of node `to`, of type `kind`) really starts: through
/// `Reroute` nodes and bypassed nodes; `None` when it starts at a muted node or a bypassed node
/// with nothing to pass (the input is then missing, as in the frontend).
fn resolve(
    nodes: &BTreeMap<String, UiNode>,
    links: &BTreeMap<i64, Link>,
    mut l: i64,
    kind: &str,
    to: &str,
    input: &str,
) -> Result<Option<(String, usize)>> {
    for _ in 0..=nodes.len() {
        let link = links.get(&l).ok_or_else(|| {
            bad(format!(
                "input `{input}` of node {to} uses link {l}, which is not in the workflow's links"
            ))
        })?;
        let from = nodes.get(&link.from).ok_or_else(|| {
            bad(format!(
                "input `{input}` of node {to} is linked to node {}, which is not in the workflow",
                link.from
            ))
        })?;
        if from.class == "Reroute" {
            match from.inputs.first().and_then(|i| i.2) {
                Some(next) => {
                    l = next;
                    continue;
                }
                None => return Ok(None),
            }
        }
        match from.mode {
            MUTED => return Ok(None),
            BYPASSED => {
                // The input at the output's index if its type fits, else the first that does.
                let fits = |i: &(String, String, Option<i64>, Option<String>)| {
                    i.1 == kind || i.1 == "*" || kind == "*"
                };
                let same = from.inputs.get(link.slot).filter(|i| fits(i));
                let pick = same.or_else(|| from.inputs.iter().find(|i| fits(i)));
                match pick.and_then(|i| i.2) {
                    Some(next) => {
                        l = next;
                        continue;
                    }
                    None => return Ok(None),
                }
            }
            _ => return Ok(Some((from.id.clone(), link.slot))),
        }
    }
    Err(bad(format!(
        "input `{input}` of node {to} is linked through a loop of Reroute or bypassed nodes"
    )))
}

/// The value a linked widget input gets: a `PrimitiveNode`'s value, or a link to the node that
/// makes it.
fn linked_value(
    nodes: &BTreeMap<String, UiNode>,
    links: &BTreeMap<i64, Link>,
    l: i64,
    to: &UiNode,
    name: &str,
) -> Result<Option<Value>> {
    let Some((from, slot)) = resolve(nodes, links, l, "*", &to.id, name)? else {
        return Ok(None);
    };
    let n = &nodes[&from];
    if n.class == "PrimitiveNode" {
        let v = match &n.widgets {
            Value::Array(a) => a.first().cloned(),
            other => Some(other.clone()),
        };
        return Ok(v);
    }
    Ok(Some(json!([from, slot])))
}
