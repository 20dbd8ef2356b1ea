//! Detection from a header alone, for every family and variant, and its refusals.

use std::collections::BTreeMap;

use super::*;
use crate::model::{ComponentKind, Dtype};
use crate::synthetic::{synthetic_shapes, SyntheticOptions};
use crate::testutil::{self, FAMILY_FIXTURES, FIXTURES};

fn model_of(spec: &crate::synthetic::spec::Spec) -> BTreeMap<String, TensorInfo> {
    expand(spec).get(ComponentKind::Model).unwrap().clone()
}

#[test]
fn every_variant_is_detected_from_its_synthetic_header() {
    for f in Family::all() {
        for v in f.variants {
            for (spec, tiny) in [(v.full, false), (v.tiny, true)] {
                let d = detect(&model_of(spec)).unwrap_or_else(|e| panic!("{}: {e}", v.name));
                assert_eq!(d.arch, f.arch, "{}", v.name);
                let placed = d
                    .variant
                    .unwrap_or_else(|| panic!("{}: not placed", v.name));
                // Variants whose denoisers have the same keys and shapes (Kontext,
                // Qwen-Image-Edit, LTX-2's release) place as the first.
                let same = if tiny { placed.tiny } else { placed.full };
                assert!(
                    model_of(same) == model_of(spec),
                    "{} placed as {}",
                    v.name,
                    placed.name
                );
                assert_eq!(d.test_size, tiny, "{}", v.name);
            }
            // Capped models keep what detection reads, so they place like full-size ones
            // (where detection places by values: the classic families are not placed).
            let mut opts = SyntheticOptions::named(v.name).unwrap();
            opts.max_dim = Some(3);
            let capped = synthetic_shapes(&opts).unwrap();
            let d = detect(capped.get(ComponentKind::Model).unwrap()).unwrap();
            assert_eq!(d.arch, f.arch, "{} capped", v.name);
            if !f.placed.is_empty() {
                assert!(
                    model_of(d.variant.unwrap().full) == model_of(v.full),
                    "{} capped",
                    v.name
                );
            }
        }
    }
}

#[test]
fn every_fixture_is_detected_from_its_keys_and_shapes() {
    for (name, arch, _) in FIXTURES {
        let shapes = testutil::component_shapes(name);
        let d = detect(shapes.get(ComponentKind::Model).unwrap()).unwrap();
        assert_eq!(d.arch, arch, "{name}");
    }
    for (name, arch, variant) in FAMILY_FIXTURES {
        let shapes = testutil::component_shapes(name);
        let d = detect(shapes.get(ComponentKind::Model).unwrap()).unwrap();
        assert_eq!(d.arch, arch, "{name}");
        assert_eq!(d.variant.map(|v| v.name), Some(variant), "{name}");
        assert!(!d.test_size);
        // The values ComfyUI's detection derived for the reference model.
        let cfg = &testutil::expected(name)["comfyui_info"]["unet_config"];
        for (k, v) in &d.params {
            if let Some(want) = cfg[*k].as_u64() {
                assert_eq!(*v as u64, want, "{name}: {k}");
            }
        }
    }
}

#[test]
fn wan_sizes_and_image_to_video_are_told_apart() {
    let d = detect(&model_of(&crate::synthetic::models::WAN21_I2V_14B)).unwrap();
    assert_eq!(d.variant.unwrap().name, "wan21-i2v-14b");
    assert!(d.params.contains(&("img_emb", 1)) && d.params.contains(&("in_dim", 36)));
    assert!(
        d.summary().contains("image-to-video 14B"),
        "{}",
        d.summary()
    );
    let d = detect(&model_of(&crate::synthetic::models::WAN22_I2V_14B)).unwrap();
    assert_eq!(d.variant.unwrap().name, "wan22-i2v-14b");
    assert!(
        d.evidence.iter().any(|e| e.contains("head.modulation")),
        "{:?}",
        d.evidence
    );
}

/// LTX-2 and LTX-Video share the LTX branch of `detect_unet_config`; the audio stream's adaLN
/// (`image_model: ltxav`) tells them apart, and each is placed by its values.
#[test]
fn ltx2_is_told_from_ltx_video_by_its_audio_stream() {
    use crate::synthetic::models::{LTX2_19B, LTXV_13B};
    let d = detect(&model_of(&LTX2_19B)).unwrap();
    assert_eq!(d.arch, Arch::Ltx2);
    assert_eq!(d.variant.unwrap().name, "ltx2-19b");
    assert_eq!(
        d.params,
        [
            ("num_layers", 48),
            ("attention_head_dim", 128),
            ("cross_attention_dim", 4096)
        ]
    );
    assert!(
        d.evidence
            .iter()
            .any(|e| e.contains("audio_adaln_single.linear.weight")),
        "{:?}",
        d.evidence
    );
    // The same video stream without the audio one is LTX-Video (13B: 48 blocks of 4096).
    let mut video = model_of(&LTX2_19B);
    video.retain(|k, _| !k.contains("audio"));
    let d = detect(&video).unwrap();
    assert_eq!((d.arch, d.variant.unwrap().name), (Arch::Ltxv, "ltxv-13b"));
    // LTX-Video with an audio adaLN is LTX-2, refused when its block count is no release's.
    let mut m = model_of(&LTXV_13B);
    m.insert(
        "audio_adaln_single.linear.weight".into(),
        info(&[12288, 2048]),
    );
    assert_eq!(detect(&m).unwrap().arch, Arch::Ltx2);
    m.retain(|k, _| !k.starts_with("transformer_blocks.47."));
    let e = detect(&m).unwrap_err().to_string();
    assert!(
        e.contains("num_layers 47") && e.contains("--arch ltx2"),
        "{e}"
    );
}

/// Qwen-Image 2.1 and Qwen-Image: ComfyUI tells 2.1 by all of `txt_in.text_norm`,
/// `modulation.1`, `attn.norm_q`, `img_in`, `proj_out` and a fused or split feed-forward, and
/// takes Qwen-Image by `txt_norm` after it; each is placed by its own values.
#[test]
fn qwen_image21_is_told_from_qwen_image_both_ways() {
    use crate::synthetic::models::{QWEN_IMAGE, QWEN_IMAGE21};
    let d = detect(&model_of(&QWEN_IMAGE21)).unwrap();
    assert_eq!(d.arch, Arch::QwenImage21);
    assert_eq!(d.variant.unwrap().name, "qwen-image-21");
    assert_eq!(
        d.params,
        [
            ("num_layers", 32),
            ("attention_head_dim", 128),
            ("in_channels", 64),
            ("out_channels", 64),
            ("context_in_dim", 4096),
            ("fused_mlp", 1)
        ]
    );
    for k in ["txt_in.text_norm.weight", "img_mlp.gate_up.weight"] {
        assert!(d.evidence.iter().any(|e| e.contains(k)), "{:?}", d.evidence);
    }
    // The split feed-forward diffusers' layout keeps (`gate_layer`, `proj`) is 2.1 as well.
    let mut split = model_of(&QWEN_IMAGE21);
    let fused: Vec<String> = split
        .keys()
        .filter(|k| k.ends_with("img_mlp.gate_up.weight"))
        .cloned()
        .collect();
    for k in fused {
        split.remove(&k);
        for part in ["gate_layer", "proj"] {
            split.insert(k.replace("gate_up", part), info(&[12288, 4096]));
        }
    }
    let d = detect(&split).unwrap();
    assert_eq!(d.arch, Arch::QwenImage21);
    assert!(d.params.contains(&("fused_mlp", 0)), "{:?}", d.params);
    // Qwen-Image is not 2.1, and 2.1 without its shared modulation is not Qwen-Image.
    let d = detect(&model_of(&QWEN_IMAGE)).unwrap();
    assert_eq!(
        (d.arch, d.variant.unwrap().name),
        (Arch::QwenImage, "qwen-image")
    );
    let mut m = model_of(&QWEN_IMAGE21);
    m.remove("modulation.1.weight");
    assert!(
        detect(&m).is_err(),
        "2.1 without `modulation.1` is no family"
    );
    // A 2.1 with a layer count no release has is refused naming the value.
    let mut m = model_of(&QWEN_IMAGE21);
    m.retain(|k, _| !k.starts_with("transformer_blocks.31."));
    let e = detect(&m).unwrap_err().to_string();
    assert!(
        e.contains("num_layers 31") && e.contains("--arch qwen-image-21"),
        "{e}"
    );
}

fn info(shape: &[usize]) -> TensorInfo {
    TensorInfo::new(shape.to_vec(), Dtype::F32)
}

#[test]
fn an_unknown_layer_count_is_refused_naming_the_value() {
    let mut m = model_of(&crate::synthetic::models::WAN21_1_3B);
    for i in 30..35 {
        m.insert(format!("blocks.{i}.modulation"), info(&[1, 6, 1536]));
    }
    let e = detect(&m).unwrap_err();
    assert!(matches!(e, Error::UnknownArchitecture { .. }), "{e}");
    let e = e.to_string();
    assert!(
        e.contains("num_layers 35") && e.contains("--arch wan21"),
        "{e}"
    );
    assert!(e.contains("wan21-1.3b (dim 1536, num_layers 30)"), "{e}");
    // A missing block reads as a shorter model: refused too, with the count up to the gap.
    let mut m = model_of(&crate::synthetic::models::WAN21_1_3B);
    m.retain(|k, _| !k.starts_with("blocks.17."));
    let e = detect(&m).unwrap_err().to_string();
    assert!(e.contains("num_layers 17"), "{e}");
}

#[test]
fn keys_of_two_families_are_refused_naming_both() {
    let mut m = model_of(&crate::synthetic::models::WAN21_TINY);
    m.extend(model_of(&crate::synthetic::models::QWEN_IMAGE_TINY));
    let e = detect(&m).unwrap_err();
    assert!(matches!(e, Error::FamilyMismatch { .. }), "{e}");
    let e = e.to_string();
    assert!(
        e.contains("wan21 (`head.modulation`)") && e.contains("qwen-image (`txt_norm.weight`)"),
        "{e}"
    );
    assert!(e.contains("--arch generic"), "{e}");
}

#[test]
fn an_unknown_family_names_the_evidence() {
    let m: BTreeMap<String, TensorInfo> = [
        ("foo.blocks.0.attn.weight", info(&[4, 4])),
        ("foo.embed.weight", info(&[4, 4])),
    ]
    .into_iter()
    .map(|(k, i)| (k.to_string(), i))
    .collect();
    let e = detect(&m).unwrap_err().to_string();
    assert!(
        e.contains("`foo.blocks.0.attn.weight`") && e.contains("--arch generic"),
        "{e}"
    );
    // A family ComfyUI knows but this tool does not lay out is named.
    let mochi: BTreeMap<String, TensorInfo> =
        [("t5_yproj.weight".to_string(), info(&[4, 4]))].into();
    let e = detect(&mochi).unwrap_err().to_string();
    assert!(e.contains("Mochi"), "{e}");
    // Near misses say which tell failed.
    let mut unet = model_of(&crate::synthetic::models::SD15_TINY);
    unet.retain(|k, _| !k.starts_with("input_blocks.11."));
    let e = detect(&unet).unwrap_err().to_string();
    assert!(e.contains("11 `input_blocks.N.` blocks, not 12"), "{e}");
    let mut svd = model_of(&crate::synthetic::models::SD15_TINY);
    svd.insert(
        "input_blocks.1.1.time_stack.0.attn1.to_q.weight".into(),
        info(&[4, 4]),
    );
    let e = detect(&svd).unwrap_err().to_string();
    assert!(e.contains("keys contain `.time_stack.`"), "{e}");
}
