//! Each node against its formula, computed here over the tensors' values in f32 (each operation
//! rounded, as PyTorch computes ComfyUI's patches), including chains, a merged model used as
//! `model2`, a LoRA between merges, block ratios and the CLIP nodes.

use candle_core::{DType, Device, Tensor};

use super::*;
pub(super) use crate::merge::tests::tiny;
use crate::merge::tests::{bits, get, values};
use crate::model::{ComponentKind, Components, InputTensor};

const Q: &str = "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight";
const OUT: &str = "out.2.weight";
const MID: &str = "middle_block.1.proj_in.weight";
const TE_Q: &str = "clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight";

fn mem(name: &str, c: &Components) -> Source {
    Source::Memory {
        name: name.into(),
        components: c.clone(),
    }
}

fn prefix() -> Target {
    Target::Prefix("checkpoints/ComfyUI".into())
}

/// The first file of the first save, compiled.
fn saved(g: &Graph) -> Components {
    let c = compile(g).unwrap();
    c.saves[0].files[0].components.clone()
}

fn model_values(c: &Components, key: &str) -> Vec<f32> {
    values(get(c, ComponentKind::Model, key))
}

/// `w·sm + s·v` per element, each operation rounded (the step `calculate_weight` takes).
fn patch(w: &[f32], v: &[f32], s: f64, sm: f64) -> Vec<f32> {
    let (s, sm) = (s as f32, sm as f32);
    w.iter()
        .zip(v)
        .map(|(w, v)| {
            let w = if sm != 1.0 { w * sm } else { *w };
            if s != 0.0 {
                w + s * v
            } else {
                w
            }
        })
        .collect()
}

#[test]
fn a_chain_of_simple_merges_patches_model1_in_order() {
    let (a, b, c) = (
        tiny(Arch::Sd15, 1),
        tiny(Arch::Sd15, 2),
        tiny(Arch::Sd15, 3),
    );
    let mut g = Graph::new();
    let (la, lb, lc) = (
        g.checkpoint(mem("a", &a)).unwrap(),
        g.checkpoint(mem("b", &b)).unwrap(),
        g.checkpoint(mem("c", &c)).unwrap(),
    );
    let ab = g.model_merge_simple(la.model, lb.model, 0.6).unwrap();
    let abc = g.model_merge_simple(ab, lc.model, 0.7).unwrap();
    g.save_checkpoint(abc, la.clip, la.vae, prefix()).unwrap();
    let out = saved(&g);
    for key in [Q, OUT, MID] {
        let (va, vb, vc) = (
            model_values(&a, key),
            model_values(&b, key),
            model_values(&c, key),
        );
        // [(1−0.6, B, 0.6), (1−0.7, C, 0.7)] on A: w = A; w·0.6 + 0.4·B; then ·0.7 + 0.3·C.
        let want = patch(&patch(&va, &vb, 1.0 - 0.6, 0.6), &vc, 1.0 - 0.7, 0.7);
        assert_eq!(bits(&model_values(&out, key)), bits(&want), "{key}");
    }
    // The text encoders and VAE are A's tensors, untouched.
    assert!(matches!(
        get(&out, ComponentKind::Clip, TE_Q),
        InputTensor::Candle(_)
    ));
}

#[test]
fn a_merged_model_used_as_model2_brings_its_base_and_its_patches() {
    let (a, b, c) = (
        tiny(Arch::Sd15, 1),
        tiny(Arch::Sd15, 2),
        tiny(Arch::Sd15, 3),
    );
    let mut g = Graph::new();
    let (la, lb, lc) = (
        g.checkpoint(mem("a", &a)).unwrap(),
        g.checkpoint(mem("b", &b)).unwrap(),
        g.checkpoint(mem("c", &c)).unwrap(),
    );
    let ab = g.model_merge_simple(la.model, lb.model, 0.25).unwrap();
    // C patched by the nested list [A, (0.75, B, 0.25)].
    let c_ab = g.model_merge_simple(lc.model, ab, 0.4).unwrap();
    g.save_model(c_ab, prefix()).unwrap();
    let out = saved(&g);
    for key in [Q, OUT] {
        let (va, vb, vc) = (
            model_values(&a, key),
            model_values(&b, key),
            model_values(&c, key),
        );
        let nested = patch(&va, &vb, 1.0 - 0.25, 0.25);
        let want = patch(&vc, &nested, 1.0 - 0.4, 0.4);
        assert_eq!(bits(&model_values(&out, key)), bits(&want), "{key}");
    }
    // The model alone: ModelSave's file has no text encoders or VAE.
    assert!(out.get(ComponentKind::Clip).is_none() && out.get(ComponentKind::Vae).is_none());
}

#[test]
fn subtract_then_add_is_the_add_difference_and_add_is_a_plus_b() {
    let (a, b, c) = (
        tiny(Arch::Sd15, 1),
        tiny(Arch::Sd15, 2),
        tiny(Arch::Sd15, 3),
    );
    let mut g = Graph::new();
    let (la, lb, lc) = (
        g.checkpoint(mem("a", &a)).unwrap(),
        g.checkpoint(mem("b", &b)).unwrap(),
        g.checkpoint(mem("c", &c)).unwrap(),
    );
    let diff = g.model_subtract(lb.model, lc.model, 0.8).unwrap();
    let sum = g.model_add(la.model, diff).unwrap();
    g.save_model(sum, prefix()).unwrap();
    let plain = g.model_add(la.model, lb.model).unwrap();
    g.save_model(plain, prefix()).unwrap();
    let compiled = compile(&g).unwrap();
    let out = &compiled.saves[0].files[0].components;
    let out_plain = &compiled.saves[1].files[0].components;
    let (va, vb, vc) = (
        model_values(&a, Q),
        model_values(&b, Q),
        model_values(&c, Q),
    );
    let d = patch(&vb, &vc, -0.8, 0.8);
    assert_eq!(bits(&model_values(out, Q)), bits(&patch(&va, &d, 1.0, 1.0)));
    let want: Vec<f32> = va.iter().zip(&vb).map(|(x, y)| x + y).collect();
    assert_eq!(bits(&model_values(out_plain, Q)), bits(&want));
}

/// A rank-1 LoRA on `Q` (alpha 1): its product is `up[i]·down[j]`, one rounding per element, so
/// the expected value does not depend on a summation order.
fn rank_one_lora(model: &Components) -> (Lora, Vec<f32>) {
    let shape = get(model, ComponentKind::Model, Q).info().shape;
    let dev = Device::Cpu;
    let up = Tensor::randn(0f32, 0.5, (shape[0], 1), &dev).unwrap();
    let down = Tensor::randn(0f32, 0.5, (1, shape[1]), &dev).unwrap();
    let (u, d): (Vec<f32>, Vec<f32>) = (
        up.flatten_all().unwrap().to_vec1().unwrap(),
        down.flatten_all().unwrap().to_vec1().unwrap(),
    );
    let product: Vec<f32> = u
        .iter()
        .flat_map(|x| d.iter().map(move |y| x * y))
        .collect();
    let stem = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q";
    let mut map = crate::model::InputMap::new();
    map.insert(format!("{stem}.lora_up.weight"), InputTensor::Candle(up));
    map.insert(
        format!("{stem}.lora_down.weight"),
        InputTensor::Candle(down),
    );
    map.insert(
        format!("{stem}.alpha"),
        InputTensor::Candle(Tensor::new(1f32, &dev).unwrap()),
    );
    (Lora::from_tensors("q.safetensors", map).unwrap(), product)
}

#[test]
fn a_lora_between_merges_patches_the_merged_model_in_order() {
    let (a, b, c) = (
        tiny(Arch::Sd15, 1),
        tiny(Arch::Sd15, 2),
        tiny(Arch::Sd15, 3),
    );
    let (lora, product) = rank_one_lora(&a);
    let mut g = Graph::new();
    let (la, lb, lc) = (
        g.checkpoint(mem("a", &a)).unwrap(),
        g.checkpoint(mem("b", &b)).unwrap(),
        g.checkpoint(mem("c", &c)).unwrap(),
    );
    let ab = g.model_merge_simple(la.model, lb.model, 0.5).unwrap();
    let (l, clip) = g
        .lora(
            ab,
            Some(la.clip),
            LoraSource::Memory(lora.clone()),
            0.8,
            1.0,
        )
        .unwrap();
    let abc = g.model_merge_simple(l, lc.model, 0.9).unwrap();
    g.save_checkpoint(abc, clip.unwrap(), la.vae, prefix())
        .unwrap();
    // The same LoRA on model2 of a merge: it travels in the nested list.
    let (lb2, _) = g
        .lora(lb.model, None, LoraSource::Memory(lora), -1.5, 0.0)
        .unwrap();
    let c_lb = g.model_merge_simple(lc.model, lb2, 0.3).unwrap();
    g.save_model(c_lb, prefix()).unwrap();
    let compiled = compile(&g).unwrap();
    let (va, vb, vc) = (
        model_values(&a, Q),
        model_values(&b, Q),
        model_values(&c, Q),
    );
    // strength · alpha / rank = 0.8 · 1 / 1.
    let merged = patch(&va, &vb, 0.5, 0.5);
    let lora_ab = patch(&merged, &product, 0.8, 1.0);
    let want = patch(&lora_ab, &vc, 1.0 - 0.9, 0.9);
    let out = &compiled.saves[0].files[0].components;
    assert_eq!(bits(&model_values(out, Q)), bits(&want));
    // Keys the LoRA does not name are the merges alone.
    let want_out = patch(
        &patch(&model_values(&a, OUT), &model_values(&b, OUT), 0.5, 0.5),
        &model_values(&c, OUT),
        1.0 - 0.9,
        0.9,
    );
    assert_eq!(bits(&model_values(out, OUT)), bits(&want_out));
    let lb2 = patch(&vb, &product, -1.5, 1.0);
    let want2 = patch(&vc, &lb2, 1.0 - 0.3, 0.3);
    let out2 = &compiled.saves[1].files[0].components;
    assert_eq!(bits(&model_values(out2, Q)), bits(&want2));
    assert_eq!(compiled.loras.len(), 2);
    assert_eq!(compiled.loras[0].1.matched, 1);
}

#[test]
fn block_ratios_take_the_longest_prefix_and_the_first_for_the_rest() {
    let (a, b) = (tiny(Arch::Sd15, 1), tiny(Arch::Sd15, 2));
    let mut g = Graph::new();
    let (la, lb) = (
        g.checkpoint(mem("a", &a)).unwrap(),
        g.checkpoint(mem("b", &b)).unwrap(),
    );
    // ModelMergeSD1's inputs, a few of them: the widget names are the prefixes.
    let ratios = vec![
        ("time_embed.".to_string(), 0.1),
        ("input_blocks.1.".to_string(), 0.2),
        ("middle_block.1.".to_string(), 0.3),
        ("out.".to_string(), 0.4),
    ];
    let m = g.model_merge_blocks(la.model, lb.model, ratios).unwrap();
    g.save_model(m, prefix()).unwrap();
    let out = saved(&g);
    for (key, r) in [
        (Q, 0.2),
        (MID, 0.3),
        (OUT, 0.4),
        ("time_embed.0.weight", 0.1),
    ] {
        let want = patch(&model_values(&a, key), &model_values(&b, key), 1.0 - r, r);
        assert_eq!(bits(&model_values(&out, key)), bits(&want), "{key}");
    }
    // No prefix matches `output_blocks.…` (`out.` has its dot): the first ratio, 0.1.
    let key = "output_blocks.0.0.in_layers.2.weight";
    let want = patch(&model_values(&a, key), &model_values(&b, key), 0.9, 0.1);
    assert_eq!(bits(&model_values(&out, key)), bits(&want));
}

#[test]
fn clip_merges_leave_position_ids_and_logit_scale_to_clip1() {
    let (a, b) = (tiny(Arch::Sd15, 1), tiny(Arch::Sd15, 2));
    let mut g = Graph::new();
    let (la, lb) = (
        g.checkpoint(mem("a", &a)).unwrap(),
        g.checkpoint(mem("b", &b)).unwrap(),
    );
    let cm = g.clip_merge_simple(la.clip, lb.clip, 0.3).unwrap();
    let cs = g.clip_subtract(cm, lb.clip, 0.5).unwrap();
    let ca = g.clip_add(cs, la.clip).unwrap();
    g.save_checkpoint(la.model, ca, la.vae, prefix()).unwrap();
    let out = saved(&g);
    let clip = |c: &Components, k: &str| values(get(c, ComponentKind::Clip, k));
    let (va, vb) = (clip(&a, TE_Q), clip(&b, TE_Q));
    let want = patch(
        &patch(&patch(&va, &vb, 0.7, 0.3), &vb, -0.5, 0.5),
        &va,
        1.0,
        1.0,
    );
    assert_eq!(bits(&clip(&out, TE_Q)), bits(&want));
    let kept: Vec<&String> = out
        .get(ComponentKind::Clip)
        .unwrap()
        .keys()
        .filter(|k| k.ends_with(".logit_scale") || k.ends_with(".position_ids"))
        .collect();
    assert!(!kept.is_empty());
    for k in kept {
        assert!(
            !matches!(get(&out, ComponentKind::Clip, k), InputTensor::Merged(_)),
            "{k}"
        );
    }
    // The model and VAE were not merged: A's own tensors.
    assert!(matches!(
        get(&out, ComponentKind::Model, Q),
        InputTensor::Candle(_)
    ));
}

#[test]
fn merging_models_of_different_architectures_names_both() {
    let (a, x) = (tiny(Arch::Sd15, 1), tiny(Arch::Sdxl, 2));
    let mut g = Graph::new();
    let (la, lx) = (
        g.checkpoint(mem("sd15-model", &a)).unwrap(),
        g.checkpoint(mem("sdxl-model", &x)).unwrap(),
    );
    let m = g.model_merge_simple(la.model, lx.model, 0.5).unwrap();
    g.save_model(m, prefix()).unwrap();
    let e = compile(&g).unwrap_err().to_string();
    for needle in [
        "node 3 (ModelMergeSimple)",
        "sd15",
        "sdxl",
        "sd15-model",
        "sdxl-model",
    ] {
        assert!(e.contains(needle), "{needle}: {e}");
    }
}

#[test]
fn links_of_the_wrong_type_to_missing_outputs_and_bad_numbers_are_refused() {
    let a = tiny(Arch::Sd15, 1);
    let mut g = Graph::new();
    let la = g.checkpoint(mem("a", &a)).unwrap();
    let bad = Node::ModelMergeSimple {
        model1: la.model.0,
        model2: la.clip.0,
        ratio: 0.5,
    };
    let e = g.add(bad).unwrap_err().to_string();
    assert!(
        e.contains("takes a MODEL") && e.contains("is a CLIP"),
        "{e}"
    );
    let bad = Node::SaveModel {
        model: Slot { node: 0, output: 7 },
        target: prefix(),
    };
    assert!(g.add(bad).unwrap_err().to_string().contains("3 output(s)"));
    let bad = Node::SaveModel {
        model: Slot { node: 9, output: 0 },
        target: prefix(),
    };
    assert!(g
        .add(bad)
        .unwrap_err()
        .to_string()
        .contains("not in the graph"));
    let e = g
        .model_merge_simple(la.model, la.model, f64::NAN)
        .unwrap_err()
        .to_string();
    assert!(e.contains("ratio NaN is not a finite number"), "{e}");
    let e = compile(&g).unwrap_err().to_string();
    assert!(e.contains("no save node"), "{e}");
}

#[test]
fn nodes_no_save_reads_are_not_run_and_listed() {
    let (a, b) = (tiny(Arch::Sd15, 1), tiny(Arch::Sd15, 2));
    let mut g = Graph::new();
    let (la, lb) = (
        g.checkpoint(mem("a", &a)).unwrap(),
        g.checkpoint(mem("b", &b)).unwrap(),
    );
    // An unused merge of different shapes would fail if it were run.
    g.model_merge_simple(la.model, lb.model, 0.5).unwrap();
    g.save_vae(la.vae, Target::Prefix("vae/ComfyUI_vae".into()))
        .unwrap();
    let c = compile(&g).unwrap();
    assert_eq!(c.unused, vec![1, 2]);
    assert_eq!(c.inputs.len(), 1);
    assert_eq!(c.merged, 0);
}

#[test]
fn clip_save_writes_one_file_per_encoder_in_transformers_names() {
    let x = tiny(Arch::Sdxl, 1);
    let files = outputs::clip_files(
        "node 1",
        x.get(ComponentKind::Clip).unwrap().clone(),
        &Target::Prefix("clip/ComfyUI".into()),
    )
    .unwrap();
    let names: Vec<Target> = files.iter().map(|f| f.target.clone()).collect();
    assert_eq!(
        names,
        vec![
            Target::Prefix("clip/ComfyUI_clip_l".into()),
            Target::Prefix("clip/ComfyUI_clip_g".into())
        ]
    );
    let l = files[0].components.get(ComponentKind::Model).unwrap();
    assert!(l.contains_key("text_model.encoder.layers.0.self_attn.q_proj.weight"));
    assert!(l
        .keys()
        .all(|k| !k.starts_with("clip_l.") && !k.starts_with("transformer.")));
    let total: usize = files
        .iter()
        .map(|f| f.components.get(ComponentKind::Model).unwrap().len())
        .sum();
    assert_eq!(total, x.get(ComponentKind::Clip).unwrap().len());
    assert_eq!(
        files[1].extra_metadata,
        vec![("format".into(), "pt".into())]
    );
    let f = outputs::clip_files(
        "node 1",
        x.get(ComponentKind::Clip).unwrap().clone(),
        &Target::File("/x/te.safetensors".into()),
    )
    .unwrap();
    assert_eq!(f[1].target, Target::File("/x/te_clip_g.safetensors".into()));
}

#[test]
fn inputs_in_f16_merge_in_f32_and_keep_their_dtype() {
    let (a, b) = (tiny_f16(1), tiny_f16(2));
    let mut g = Graph::new();
    let (la, lb) = (
        g.checkpoint(mem("a", &a)).unwrap(),
        g.checkpoint(mem("b", &b)).unwrap(),
    );
    let m = g.model_merge_simple(la.model, lb.model, 0.3).unwrap();
    g.save_model(m, prefix()).unwrap();
    let out = saved(&g);
    let t = get(&out, ComponentKind::Model, Q);
    assert_eq!(t.info().dtype, crate::model::Dtype::F16);
    let want = patch(&model_values(&a, Q), &model_values(&b, Q), 0.7, 0.3);
    assert_eq!(bits(&values(t)), bits(&want));
}

/// A tiny SD1.5 model in f16.
pub(super) fn tiny_f16(seed: u64) -> Components {
    let o = crate::synthetic::SyntheticOptions::new(Arch::Sd15)
        .tiny()
        .with_seed(seed)
        .with_dtype(DType::F16);
    crate::synthetic::build(&o, &Device::Cpu).unwrap()
}
