//! Workflow files: the UI format converted as the frontend converts it (against the API export
//! of the same workflow), and every bad input refused with what is wrong.

use std::path::Path;

use serde_json::{json, Value};

use super::*;
use crate::merge::graph::Node;

fn fixture(name: &str) -> Value {
    let p = format!(
        "{}/tests/fixtures/workflows/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// A models folder holding empty files of these names (enough for name resolution).
fn models(names: &[&str]) -> (tempfile::TempDir, ModelFolders) {
    let dir = tempfile::tempdir().unwrap();
    for n in names {
        let p = dir.path().join(n);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"").unwrap();
    }
    let m = ModelFolders::new(dir.path());
    (dir, m)
}

#[test]
fn the_ui_format_converts_to_its_api_export() {
    let ui = Workflow::from_value(fixture("merge_ui.json")).unwrap();
    assert_eq!(ui.format, WorkflowFormat::Ui);
    let api = fixture("merge_api.json");
    // Same nodes, inputs and order: muted, bypassed, virtual nodes gone, the Reroute followed,
    // the PrimitiveNode's value in the widget it feeds, the bypassed LoRA's input passed on.
    assert_eq!(Value::Object(ui.prompt.clone()), api);
    assert_eq!(
        crate::plan::metadata::python_json(&Value::Object(ui.prompt.clone())),
        crate::plan::metadata::python_json(&api)
    );
    let keys: Vec<&String> = ui.prompt.keys().collect();
    assert_eq!(keys, ["1", "2", "3", "13", "4", "5", "6", "7", "8"]);
    let m = ui.metadata();
    assert!(m.extra_pnginfo.unwrap().contains_key("workflow"));
    let api = Workflow::from_value(api).unwrap();
    assert_eq!(api.format, WorkflowFormat::Api);
    assert!(api.metadata().extra_pnginfo.is_none());
}

/// Translates an API prompt with every model name resolving.
fn translate(prompt: Value) -> Result<Translated> {
    let (_dir, m) = models(&[
        "checkpoints/a.safetensors",
        "checkpoints/b.safetensors",
        "checkpoints/c.safetensors",
        "loras/detail.safetensors",
    ]);
    Workflow::from_value(prompt)?.to_graph(&m)
}

#[test]
fn an_api_prompt_becomes_the_graph_of_what_its_saves_read() {
    let mut p = fixture("merge_api.json");
    p["20"] = json!({"class_type": "KSampler", "inputs": {"model": ["6", 0], "seed": 1}});
    p["21"] = json!({"class_type": "PreviewImage", "inputs": {"images": ["20", 0]}});
    let t = translate(p).unwrap();
    assert_eq!(t.skipped, ["node 20 (KSampler)", "node 21 (PreviewImage)"]);
    let g = &t.graph;
    let ids: Vec<&str> = g.nodes().iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids.len(), 9);
    let blocks = g.nodes().iter().find(|n| n.id == "6").unwrap();
    match &blocks.node {
        Node::ModelMergeBlocks { ratios, .. } => assert_eq!(
            ratios,
            &[
                ("input".to_string(), 0.3),
                ("middle".to_string(), 0.5),
                ("out".to_string(), 0.7)
            ]
        ),
        other => panic!("{other:?}"),
    }
    let lora = g.nodes().iter().find(|n| n.id == "5").unwrap();
    assert!(matches!(
        lora.node,
        Node::Lora { strength_model, strength_clip, clip: Some(_), .. }
            if strength_model == 0.8 && strength_clip == 1.0
    ));
}

#[test]
fn block_ratios_follow_the_prompts_order_and_primitives_supply_values() {
    let p = json!({
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
        "2": {"class_type": "PrimitiveFloat", "inputs": {"value": 0.2}},
        "3": {"class_type": "ModelMergeBlocks", "inputs": {
            "out": 0.9, "model1": ["1", 0], "model2": ["1", 0], "input": ["2", 0], "middle": 0.5}},
        "4": {"class_type": "ModelSave", "inputs": {"model": ["3", 0], "filename_prefix": "x"}},
    });
    let t = translate(p).unwrap();
    let n = t.graph.nodes().iter().find(|n| n.id == "3").unwrap();
    // ComfyUI's kwargs are in the prompt's order: `out` first, so it is the default ratio.
    let Node::ModelMergeBlocks { ratios, .. } = &n.node else {
        panic!()
    };
    let names: Vec<(&str, f64)> = ratios.iter().map(|(p, r)| (p.as_str(), *r)).collect();
    assert_eq!(names, [("out", 0.9), ("input", 0.2), ("middle", 0.5)]);
}

#[test]
fn the_later_families_merge_nodes_come_from_the_family_table() {
    // ModelMergeWAN2_1: 5 embedders, 40 blocks, the head, each a widget named by its prefix.
    let prefixes = crate::family::merge_nodes::WAN2_1.prefixes();
    let mut inputs = serde_json::Map::new();
    inputs.insert("model1".into(), json!(["1", 0]));
    inputs.insert("model2".into(), json!(["1", 0]));
    for (i, p) in prefixes.iter().enumerate() {
        inputs.insert(p.clone(), json!(i as f64 / 64.0));
    }
    let prompt = |inputs: &serde_json::Map<String, Value>| {
        json!({
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
            "2": {"class_type": "ModelMergeWAN2_1", "inputs": inputs},
            "3": {"class_type": "ModelSave", "inputs": {"model": ["2", 0], "filename_prefix": "x"}},
        })
    };
    let t = translate(prompt(&inputs)).unwrap();
    let n = t.graph.nodes().iter().find(|n| n.id == "2").unwrap();
    let Node::ModelMergeBlocks { ratios, .. } = &n.node else {
        panic!("{:?}", n.node)
    };
    assert_eq!(ratios.len(), 46);
    assert_eq!(ratios[0], ("patch_embedding.".to_string(), 0.0));
    assert_eq!(ratios[5], ("blocks.0.".to_string(), 5.0 / 64.0));
    assert_eq!(ratios[45], ("head.".to_string(), 45.0 / 64.0));
    // A block's ratio left out is an error naming it, as for the classic nodes.
    inputs.remove("blocks.39.");
    let e = translate(prompt(&inputs)).unwrap_err().to_string();
    assert!(e.contains("blocks.39."), "{e}");
}

#[test]
fn bad_workflows_say_what_is_wrong() {
    let base = fixture("merge_api.json");
    let with = |f: &dyn Fn(&mut Value)| {
        let mut p = base.clone();
        f(&mut p);
        p
    };
    let cases: Vec<(Value, &str)> = vec![
        (
            with(&|p| p["4"]["inputs"]["model2"] = json!(["99", 0])),
            "node 4 (ModelMergeSimple): input `model2` links to node 99, which is not in the workflow",
        ),
        (
            with(&|p| p["4"]["inputs"]["model2"] = json!(["2", 5])),
            "links to output 5 of node 2 (CheckpointLoaderSimple), which has 3 output(s)",
        ),
        (
            with(&|p| p["4"]["inputs"]["model2"] = json!(["2", 1])),
            "input `model2` takes a MODEL, and output 1 of node 2 (CheckpointLoaderSimple) is a CLIP",
        ),
        (
            with(&|p| p["4"]["inputs"]["model1"] = json!(["6", 0])),
            "the workflow has a cycle: node 6 (ModelMergeBlocks) → node 5 (LoraLoader) → node 4 \
             (ModelMergeSimple) → node 6 (ModelMergeBlocks)",
        ),
        (
            with(&|p| p["4"]["inputs"]["ratio"] = json!(1.5)),
            "node 4 (ModelMergeSimple): ratio 1.5 is bigger than ComfyUI's maximum of 1",
        ),
        (
            with(&|p| p["5"]["inputs"]["strength_model"] = json!(-101)),
            "strength_model -101 is smaller than ComfyUI's minimum of -100",
        ),
        (
            with(&|p| {
                p["30"] = json!({"class_type": "ModelSamplingDiscrete", "inputs": {"model": ["6", 0]}});
                p["8"]["inputs"]["model"] = json!(["30", 0]);
            }),
            "input `model` comes from node 30 (ModelSamplingDiscrete), which this tool does not run",
        ),
        (
            with(&|p| p["1"]["inputs"]["ckpt_name"] = json!("nope.safetensors")),
            "node 1 (CheckpointLoaderSimple): checkpoints `nope.safetensors` not found; searched",
        ),
        (
            with(&|p| {
                p["7"]["inputs"].as_object_mut().unwrap().remove("ratio");
            }),
            "node 7 (CLIPMergeSimple): the required input `ratio` is missing",
        ),
        (
            with(&|p| {
                for id in ["8", "13"] {
                    p.as_object_mut().unwrap().remove(id);
                }
            }),
            "no save node",
        ),
    ];
    for (p, needle) in cases {
        let e = translate(p).unwrap_err().to_string();
        assert!(e.contains(needle), "`{needle}` in: {e}");
    }
    for (text, needle) in [
        ("{\"nodes\": ", "not JSON"),
        ("[1, 2]", "not a ComfyUI workflow"),
        ("{\"a\": {\"inputs\": {}}}", "not a ComfyUI workflow"),
    ] {
        let e = Workflow::from_json(text).unwrap_err().to_string();
        assert!(e.contains(needle), "`{needle}` in: {e}");
    }
    // A UI link that is not in the links list.
    let mut ui = fixture("merge_ui.json");
    ui["links"].as_array_mut().unwrap().retain(|l| l[0] != 4);
    let e = Workflow::from_value(ui).unwrap_err().to_string();
    assert!(
        e.contains("uses link 4, which is not in the workflow's links"),
        "{e}"
    );
    let e = Workflow::open(Path::new("/nonexistent/w.json"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/w.json"), "{e}");
}

#[test]
fn loader_options_this_tool_cannot_honour_are_refused() {
    let (_dir, m) = models(&["unet/u.safetensors", "clip/t.safetensors"]);
    let p = json!({
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "u.safetensors", "weight_dtype": "fp8_e4m3fn"}},
        "2": {"class_type": "ModelSave", "inputs": {"model": ["1", 0], "filename_prefix": "x"}},
    });
    let e = Workflow::from_value(p)
        .unwrap()
        .to_graph(&m)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--model-dtype f8_e4m3"), "{e}");
    let p = json!({
        "1": {"class_type": "CLIPLoader", "inputs": {"clip_name": "t.safetensors", "type": "wan"}},
        "2": {"class_type": "CLIPSave", "inputs": {"clip": ["1", 0], "filename_prefix": "x"}},
    });
    let e = Workflow::from_value(p)
        .unwrap()
        .to_graph(&m)
        .unwrap_err()
        .to_string();
    assert!(e.contains("type `wan`"), "{e}");
    let p = json!({
        "1": {"class_type": "CLIPLoader", "inputs": {"clip_name": "t.safetensors", "type": "nonsense"}},
        "2": {"class_type": "CLIPSave", "inputs": {"clip": ["1", 0], "filename_prefix": "x"}},
    });
    let e = Workflow::from_value(p)
        .unwrap()
        .to_graph(&m)
        .unwrap_err()
        .to_string();
    assert!(e.contains("is not one of stable_diffusion"), "{e}");
}

#[test]
fn subgraphs_expand_into_the_ids_the_frontend_gives_them() {
    // Two loaders, then an instance (20) of a subgraph holding a ModelMergeSimple whose ratio is
    // a widget of the instance, then a ModelSave of the instance's output.
    let ui = json!({
        "nodes": [
            {"id": 1, "type": "CheckpointLoaderSimple", "mode": 0, "inputs": [], "widgets_values": ["a.safetensors"]},
            {"id": 2, "type": "CheckpointLoaderSimple", "mode": 0, "inputs": [], "widgets_values": ["b.safetensors"]},
            {"id": 20, "type": "5a0d-sub", "mode": 0,
             "inputs": [{"name": "model1", "type": "MODEL", "link": 1},
                        {"name": "model2", "type": "MODEL", "link": 2},
                        {"name": "ratio", "type": "FLOAT", "link": null, "widget": {"name": "ratio"}}],
             "widgets_values": [0.3]},
            {"id": 8, "type": "ModelSave", "mode": 0,
             "inputs": [{"name": "model", "type": "MODEL", "link": 3}], "widgets_values": ["merged"]}
        ],
        "links": [[1, 1, 0, 20, 0, "MODEL"], [2, 2, 0, 20, 1, "MODEL"], [3, 20, 0, 8, 0, "MODEL"]],
        "definitions": {"subgraphs": [{
            "id": "5a0d-sub", "name": "merge",
            "inputNode": {"id": -10}, "outputNode": {"id": -20},
            "inputs": [{"name": "model1", "type": "MODEL", "linkIds": [1]},
                       {"name": "model2", "type": "MODEL", "linkIds": [2]},
                       {"name": "ratio", "type": "FLOAT", "linkIds": [3]}],
            "outputs": [{"name": "MODEL", "type": "MODEL", "linkIds": [4]}],
            "widgets": [],
            "nodes": [{"id": 4, "type": "ModelMergeSimple", "mode": 0,
                       "inputs": [{"name": "model1", "type": "MODEL", "link": 1},
                                  {"name": "model2", "type": "MODEL", "link": 2},
                                  {"name": "ratio", "type": "FLOAT", "link": 3, "widget": {"name": "ratio"}}],
                       "widgets_values": [1.0]}],
            "links": [
                {"id": 1, "origin_id": -10, "origin_slot": 0, "target_id": 4, "target_slot": 0, "type": "MODEL"},
                {"id": 2, "origin_id": -10, "origin_slot": 1, "target_id": 4, "target_slot": 1, "type": "MODEL"},
                {"id": 3, "origin_id": -10, "origin_slot": 2, "target_id": 4, "target_slot": 2, "type": "FLOAT"},
                {"id": 4, "origin_id": 4, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "MODEL"}
            ]
        }]}
    });
    let w = Workflow::from_value(ui).unwrap();
    assert_eq!(w.prompt["20:4"]["class_type"], "ModelMergeSimple");
    assert_eq!(w.prompt["20:4"]["inputs"]["ratio"], json!(0.3));
    assert_eq!(w.prompt["20:4"]["inputs"]["model1"], json!(["1", 0]));
    assert_eq!(w.prompt["20:4"]["inputs"]["model2"], json!(["2", 0]));
    assert_eq!(w.prompt["8"]["inputs"]["model"], json!(["20:4", 0]));
    assert!(!w.prompt.contains_key("20"));
    let t = translate(Value::Object(w.prompt)).unwrap();
    assert_eq!(t.graph.nodes().len(), 4);
}

/// A chain of `n` merge nodes from two loaders to a save.
fn chain(n: usize) -> Value {
    let mut p = json!({
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
        "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "b.safetensors"}},
    });
    let mut prev = "1".to_string();
    for i in 0..n {
        let id = (10 + i).to_string();
        p[&id] = json!({"class_type": "ModelMergeSimple",
            "inputs": {"model1": [prev, 0], "model2": ["2", 0], "ratio": 0.5}});
        prev = id;
    }
    p["9"] = json!({"class_type": "CheckpointSave", "inputs": {"model": [prev, 0],
        "clip": ["1", 1], "vae": ["1", 2], "filename_prefix": "x"}});
    p
}

/// Translation recurses once per node of a chain: a chain deeper than the limit is refused
/// with a message (it overflowed the stack, an abort, at a few thousand nodes), one within it
/// translates on any thread (this test's has the default 2 MiB).
#[test]
fn a_chain_deeper_than_the_limit_is_refused_and_one_within_it_translates() {
    let e = translate(chain(600)).unwrap_err().to_string();
    assert!(
        e.contains("the workflow chains more than 500 nodes from a save back to a loader"),
        "{e}"
    );
    assert!(translate(chain(480)).is_ok());
}

#[test]
fn a_negative_lora_rank_is_reported_as_given() {
    let mut p = fixture("merge_api.json");
    p["40"] = json!({"class_type": "ModelMergeSubtract",
        "inputs": {"model1": ["1", 0], "model2": ["2", 0], "multiplier": 1.0}});
    p["41"] = json!({"class_type": "LoraSave", "inputs": {"filename_prefix": "loras/x",
        "rank": -5, "lora_type": "standard", "bias_diff": true, "model_diff": ["40", 0]}});
    let e = translate(p).unwrap_err().to_string();
    assert!(
        e.contains("node 41 (LoraSave): rank -5 is outside 1..=4096"),
        "{e}"
    );
}

/// The frontend's `%date:…%` and `%Node.widget%` in a UI ModelSave's prefix are replaced as
/// queueing from the UI replaces them; a CheckpointSave's prefix, and the API format, stay as
/// written.
#[test]
fn ui_save_prefixes_get_the_frontends_replacements() {
    let prefix = "%date:yyyy-MM-dd%/m_%CheckpointLoaderSimple.ckpt_name%_%Mix.ratio%";
    let ui = json!({
        "nodes": [
            {"id": 1, "type": "CheckpointLoaderSimple", "mode": 0, "inputs": [],
             "widgets_values": ["sub/a.safetensors"]},
            {"id": 3, "type": "ModelMergeSimple", "mode": 0, "title": "Mix",
             "properties": {"Node name for S&R": "ModelMergeSimple"},
             "inputs": [{"name": "model1", "type": "MODEL", "link": 1},
                        {"name": "model2", "type": "MODEL", "link": 2}],
             "widgets_values": [0.25]},
            {"id": 4, "type": "ModelSave", "mode": 0,
             "inputs": [{"name": "model", "type": "MODEL", "link": 3}],
             "widgets_values": [prefix]},
            {"id": 5, "type": "CheckpointSave", "mode": 0,
             "inputs": [{"name": "model", "type": "MODEL", "link": 4},
                        {"name": "clip", "type": "CLIP", "link": 5},
                        {"name": "vae", "type": "VAE", "link": 6}],
             "widgets_values": [prefix]}
        ],
        "links": [[1, 1, 0, 3, 0, "MODEL"], [2, 1, 0, 3, 1, "MODEL"], [3, 3, 0, 4, 0, "MODEL"],
                  [4, 1, 0, 5, 0, "MODEL"], [5, 1, 1, 5, 1, "CLIP"], [6, 1, 2, 5, 2, "VAE"]],
        "version": 0.4
    });
    let w = Workflow::from_value(ui).unwrap();
    let got = w.prompt["4"]["inputs"]["filename_prefix"].as_str().unwrap();
    let re = regex::Regex::new(r"^\d{4}-\d{2}-\d{2}/m_sub_a\.safetensors_0\.25$").unwrap();
    assert!(re.is_match(got), "{got}");
    assert_eq!(w.prompt["5"]["inputs"]["filename_prefix"], prefix);
    // The API format is what the server runs: no replacement.
    let api = Workflow::from_value(Value::Object(w.prompt.clone())).unwrap();
    let mut p = w.prompt.clone();
    p["4"]["inputs"]["filename_prefix"] = json!(prefix);
    let api2 = Workflow::from_value(Value::Object(p)).unwrap();
    assert_eq!(api.prompt["4"]["inputs"]["filename_prefix"], got);
    assert_eq!(api2.prompt["4"]["inputs"]["filename_prefix"], prefix);
}
