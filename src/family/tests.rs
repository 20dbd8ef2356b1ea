//! The family table against the reference fixtures and its own consistency.

use std::collections::BTreeMap;

use super::*;
use crate::model::{ComponentKind, TensorInfo};
use crate::synthetic::expand::expand;
use crate::testutil::{self, FAMILY_FIXTURES};

/// Differences between two component maps, for messages (empty when equal).
fn diff(got: &BTreeMap<String, TensorInfo>, want: &BTreeMap<String, TensorInfo>) -> Vec<String> {
    let mut out = Vec::new();
    for (k, w) in want {
        match got.get(k) {
            None => out.push(format!("missing {k} {:?} {}", w.shape, w.dtype)),
            Some(g) if g != w => out.push(format!(
                "{k}: got {:?} {}, want {:?} {}",
                g.shape, g.dtype, w.shape, w.dtype
            )),
            Some(_) => {}
        }
    }
    for (k, g) in got {
        if !want.contains_key(k) {
            out.push(format!("extra {k} {:?} {}", g.shape, g.dtype));
        }
    }
    out
}

#[test]
fn synthetic_models_are_the_reference_components() {
    let mut problems = Vec::new();
    for (name, arch, variant) in FAMILY_FIXTURES {
        let (a, v) = variant_named(variant).unwrap();
        assert_eq!(a, arch, "{variant}");
        let want = testutil::component_shapes(name);
        let got = expand(v.full);
        for kind in [
            ComponentKind::Model,
            ComponentKind::Clip,
            ComponentKind::Vae,
        ] {
            let d = diff(
                got.get(kind).unwrap_or(&BTreeMap::new()),
                want.get(kind).unwrap(),
            );
            if !d.is_empty() {
                problems.push(format!("{name}/{kind}: {} difference(s)", d.len()));
                problems.extend(d.into_iter().take(12).map(|l| format!("  {l}")));
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn table_is_in_arch_order_and_names_are_unique() {
    let mut names = std::collections::BTreeSet::new();
    for (i, f) in Family::all().iter().enumerate() {
        assert_eq!(f.arch, Arch::ALL[i], "{}", f.name);
        assert_eq!(f.arch.family().name, f.name);
        let all = std::iter::once(f.name)
            .chain(f.aliases.iter().copied())
            .chain(
                f.variants
                    .iter()
                    .flat_map(|v| std::iter::once(v.name).chain(v.aliases.iter().copied())),
            );
        // A family may share its name with one of its variants (sd15); nothing else repeats.
        let mut own = std::collections::BTreeSet::new();
        for n in all {
            let key = normalise(n);
            let shared = normalise(f.name) == key && own.contains(&key);
            assert!(
                own.insert(key.clone()) || shared,
                "`{n}` is used twice in {}",
                f.name
            );
        }
        for key in own {
            assert!(names.insert(key.clone()), "`{key}` names two families");
        }
        assert!(!f.tells.is_empty(), "{}: no tells", f.name);
        assert!(
            matches!(f.tells[0], Tell::Key(_) | Tell::Either(_)),
            "{}: the first tell names a key that must be present",
            f.name
        );
        for p in f.placed {
            assert!(
                f.params.iter().any(|q| q.name == *p),
                "{}: placed {p} is no param",
                f.name
            );
        }
    }
}

#[test]
fn names_find_families_and_variants() {
    assert_eq!(family_named("Wan2.1").unwrap().arch, Arch::Wan21);
    assert_eq!(family_named("wan21-14b").unwrap().arch, Arch::Wan21);
    assert_eq!(family_named("SD3.5").unwrap().arch, Arch::Sd3);
    let (arch, v) = variant_named("wan22-14b").unwrap();
    assert_eq!((arch, v.name), (Arch::Wan21, "wan21-14b"));
    let (arch, v) = variant_named("wan22").unwrap();
    assert_eq!((arch, v.name), (Arch::Wan22, "wan22-5b"));
    let err = variant_named("wan23").unwrap_err().to_string();
    assert!(
        err.contains("`wan23` is not a model name") && err.contains("wan21-1.3b"),
        "{err}"
    );
}

/// The layout of each later family's reference components is the reference's saved file: every
/// key, shape and dtype, each tensor renamed from its component tensor, the same count, the same
/// metadata; and no marker (these families predict flow).
#[test]
fn later_families_lay_out_as_the_reference_saves() {
    use crate::layout::{layout, LayoutKind, Source};
    use crate::model::Prediction;
    use crate::plan::metadata::{build, MetadataOptions};
    for (name, arch, _) in FAMILY_FIXTURES {
        let shapes = testutil::component_shapes(name);
        let want = testutil::expected(name);
        let got = layout(&LayoutKind::Arch(arch), &shapes, arch.default_prediction()).unwrap();
        let tensors = want["tensors"].as_array().unwrap();
        assert_eq!(got.entries.len(), tensors.len(), "{name}");
        assert!(got.dropped.is_empty(), "{name}: {:?}", got.dropped);
        for t in tensors {
            let (key, info) = testutil::info(t);
            let e = got.get(&key).unwrap_or_else(|| panic!("{name}: no {key}"));
            assert_eq!(
                (&e.shape, e.dtype),
                (&info.shape, info.dtype),
                "{name}: {key}"
            );
            let origin = &t["origin"];
            match &e.source {
                Source::Copy {
                    component,
                    key: src,
                } => {
                    assert_eq!(
                        *component,
                        testutil::component(origin["component"].as_str().unwrap()),
                        "{key}"
                    );
                    assert_eq!(src, origin["key"].as_str().unwrap(), "{key}");
                }
                other => panic!("{name}: {key} from {other:?}"),
            }
        }
        // The prefixes the reference reports.
        let p = &want["prefixes"];
        let f = arch.family();
        assert_eq!(f.prefixes.model, p["unet"].as_str().unwrap(), "{name}");
        assert_eq!(
            f.prefixes.clip,
            p["text_encoder"].as_str().unwrap(),
            "{name}"
        );
        assert_eq!(f.prefixes.vae, p["vae"].as_str().unwrap(), "{name}");
        let opts = MetadataOptions {
            provenance: false,
            ..Default::default()
        };
        let meta = build(Some(arch), Prediction::Flow, "ComfyUI 1", &opts);
        let want_meta: BTreeMap<String, String> =
            serde_json::from_value(want["metadata"].clone()).unwrap();
        assert_eq!(meta, want_meta, "{name}");
        assert_eq!(arch.default_prediction(), Prediction::Flow, "{name}");
    }
}

/// The VAE of each reference model is told as the autoencoder its family uses, and its text
/// encoders are the family's.
#[test]
fn reference_vaes_and_encoders_are_the_families_own() {
    use crate::family::parts::{check_clip, check_vae, vae_kind};
    for (name, arch, _) in FAMILY_FIXTURES {
        let shapes = testutil::component_shapes(name);
        let vae = shapes.get(ComponentKind::Vae).unwrap();
        assert_eq!(vae_kind(vae), Some(arch.family().vae), "{name}");
        check_vae(arch.family(), vae).unwrap();
        check_clip(arch.family(), shapes.get(ComponentKind::Clip).unwrap()).unwrap();
    }
}

#[test]
fn every_family_checks_its_synthetic_components() {
    use crate::family::parts::{check_clip, check_vae, vae_kind};
    for f in Family::all() {
        for v in f.variants {
            for spec in [v.full, v.tiny] {
                let shapes = expand(spec);
                let vae = shapes.get(ComponentKind::Vae).unwrap();
                assert_eq!(vae_kind(vae), Some(f.vae), "{}", v.name);
                check_vae(f, vae).unwrap();
                check_clip(f, shapes.get(ComponentKind::Clip).unwrap())
                    .unwrap_or_else(|e| panic!("{}: {e}", v.name));
            }
        }
    }
}

/// A component of another family is refused naming both.
#[test]
fn components_of_another_family_are_refused() {
    use crate::family::parts::{check_clip, check_vae};
    let wan = expand(&crate::synthetic::models::WAN21_TINY);
    let flux = expand(&crate::synthetic::models::FLUX_TINY_SPEC);
    let e = check_vae(Arch::Wan21.family(), flux.get(ComponentKind::Vae).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("SD3/Flux autoencoder") && e.contains("wan21 uses the Wan 2.1 video VAE"),
        "{e}"
    );
    let mut clip = wan.get(ComponentKind::Clip).unwrap().clone();
    clip.extend(flux.get(ComponentKind::Clip).unwrap().clone());
    let e = check_clip(Arch::Wan21.family(), &clip)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`clip_l.…`") && e.contains("wan21 does not use"),
        "{e}"
    );
    let e = check_clip(Arch::Wan21.family(), flux.get(ComponentKind::Clip).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs text encoder `umt5xxl`"), "{e}");
    // LTX-2's Gemma without the text projection `LTXAVTEModel` holds beside it.
    let ltx2 = expand(&crate::synthetic::models::LTX2_19B_TINY);
    let mut gemma = ltx2.get(ComponentKind::Clip).unwrap().clone();
    check_clip(Arch::Ltx2.family(), &gemma).unwrap();
    gemma.remove("text_embedding_projection.weight");
    let e = check_clip(Arch::Ltx2.family(), &gemma)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ltx2 needs `text_embedding_projection.weight`"),
        "{e}"
    );
}

/// The families without reference fixtures, against what ComfyUI's code says: the checkpoint
/// prefixes (`supported_models.py`: `text_encoder_key_prefix`, `vae_key_prefix`,
/// `process_unet_state_dict_for_saving`), the text encoders' names in the clip component
/// (`text_encoders/`: the attribute each TE model holds its encoder under) and the autoencoder
/// (`sd.py`).
#[test]
fn later_families_without_fixtures_follow_the_reference_code() {
    use crate::family::VaeKind;
    let facts: [(Arch, [&str; 3], &[&str], VaeKind); 7] = [
        (
            Arch::Flux2,
            ["model.diffusion_model.", "text_encoders.", "vae."],
            &["mistral3_24b", "qwen3_4b", "qwen3_8b"],
            VaeKind::Flux2,
        ),
        (
            Arch::ZImage,
            ["model.diffusion_model.", "text_encoders.", "vae."],
            &["qwen3_4b"],
            VaeKind::Flux,
        ),
        (
            Arch::HunyuanVideo,
            ["model.model.", "text_encoders.", "vae."],
            &["clip_l", "llama"],
            VaeKind::HunyuanVideo,
        ),
        (
            Arch::HunyuanVideo15,
            ["model.model.", "text_encoders.", "vae."],
            &["qwen25_7b", "byt5_small"],
            VaeKind::HunyuanVideo15,
        ),
        (
            Arch::Ltxv,
            ["model.diffusion_model.", "text_encoders.", "vae."],
            &["t5xxl"],
            VaeKind::Ltx,
        ),
        // Qwen-Image 2.1: `QwenImage21`, `QwenImage21TEModel.qwen3vl_8b`, its own VAE.
        (
            Arch::QwenImage21,
            ["model.diffusion_model.", "text_encoders.", "vae."],
            &["qwen3vl_8b"],
            VaeKind::QwenImage21,
        ),
        // LTX-2: `LTXAV(LTXV)`, `LTXAVTEModel.gemma3_12b`, the same `VideoVAE` class.
        (
            Arch::Ltx2,
            ["model.diffusion_model.", "text_encoders.", "vae."],
            &["gemma3_12b"],
            VaeKind::Ltx,
        ),
    ];
    for (arch, [model, clip, vae], encoders, kind) in facts {
        let f = arch.family();
        assert_eq!(
            [f.prefixes.model, f.prefixes.clip, f.prefixes.vae],
            [model, clip, vae],
            "{arch}"
        );
        assert_eq!(f.encoders(), encoders, "{arch}");
        assert_eq!(f.vae, kind, "{arch}");
        assert_eq!(
            f.modelspec, None,
            "{arch}: ComfyUI writes modelspec for SDXL and SD3 only"
        );
        // diffusers has a transformer class for each but HunyuanVideo 1.5's, and the mirrored
        // diffusers has no Qwen-Image 2.1.
        assert_eq!(
            f.diffusers,
            !matches!(arch, Arch::HunyuanVideo15 | Arch::QwenImage21),
            "{arch}"
        );
    }
    // Detection's derived values for the released configurations (model_detection.py).
    let values = |name: &str| {
        let (arch, v) = variant_named(name).unwrap();
        let shapes = expand(v.full);
        crate::family::detect::derive(arch.family(), shapes.get(ComponentKind::Model).unwrap())
    };
    let flux2 = values("flux2-dev");
    for p in [
        ("hidden_size", 6144),
        ("in_channels", 128),
        ("context_in_dim", 15360),
        ("depth", 8),
        ("depth_single_blocks", 48),
        ("guidance_embed", 1),
    ] {
        assert!(flux2.contains(&p), "flux2-dev {p:?}: {flux2:?}");
    }
    let klein = values("flux2-klein-4b");
    assert!(klein.contains(&("hidden_size", 3072)) && klein.contains(&("context_in_dim", 7680)));
    let hv = values("hunyuan-video");
    assert!(
        hv.contains(&("depth", 20))
            && hv.contains(&("depth_single_blocks", 40))
            && hv.contains(&("in_channels", 16))
    );
    let hv15 = values("hunyuan-video-1.5");
    assert!(
        hv15.contains(&("hidden_size", 2048))
            && hv15.contains(&("depth", 54))
            && hv15.contains(&("in_channels", 65))
    );
    let ltx = values("ltxv-2b");
    assert!(
        ltx.contains(&("num_layers", 28))
            && ltx.contains(&("attention_head_dim", 64))
            && ltx.contains(&("cross_attention_dim", 2048))
    );
    let ltx2 = values("ltx2-19b");
    assert!(
        ltx2.contains(&("num_layers", 48))
            && ltx2.contains(&("attention_head_dim", 128))
            && ltx2.contains(&("cross_attention_dim", 4096)),
        "{ltx2:?}"
    );
    let z = values("z-image-6b");
    assert!(
        z.contains(&("dim", 3840))
            && z.contains(&("cap_feat_dim", 2560))
            && z.contains(&("n_layers", 30))
    );
}

/// LTX-2's components at full size against published counts: Gemma 3 12B with its SigLIP
/// tower and projector is 12,187,325,040 parameters (`google/gemma-3-12b-it`), the 19B DiT
/// between 19 and 20 billion, and the text projection takes every Gemma hidden state (49 ×
/// 3840) to 3840 as `LTXAVTEModel` builds it.
#[test]
fn ltx2_components_have_the_released_sizes() {
    let (arch, v) = variant_named("ltx2-19b").unwrap();
    assert_eq!(arch, Arch::Ltx2);
    let shapes = expand(v.full);
    let count = |kind: ComponentKind, prefix: &str| -> u64 {
        shapes
            .get(kind)
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, i)| i.shape.iter().product::<usize>() as u64)
            .sum()
    };
    assert_eq!(
        count(ComponentKind::Clip, "gemma3_12b.transformer."),
        12_187_325_040
    );
    let clip = shapes.get(ComponentKind::Clip).unwrap();
    assert_eq!(
        clip["text_embedding_projection.weight"].shape,
        [3840, 188_160]
    );
    assert!(clip.contains_key("gemma3_12b.logit_scale") && clip.contains_key("spiece_model"));
    let dit = count(ComponentKind::Model, "");
    assert!((19_000_000_000..20_000_000_000).contains(&dit), "{dit}");
    let model = shapes.get(ComponentKind::Model).unwrap();
    // Audio-to-video attention: video queries into the audio stream's 32 × 64 heads.
    assert_eq!(
        model["transformer_blocks.47.audio_to_video_attn.to_q.weight"].shape,
        [2048, 4096]
    );
    assert_eq!(
        model["video_embeddings_connector.learnable_registers"].shape,
        [128, 3840]
    );
    assert_eq!(model["audio_proj_out.weight"].shape, [128, 2048]);
    // The video VAE: ComfyUI's version 2 of `VideoVAE` (a 1024-wide first decoder stage, the
    // residual downsamplers' biased convolutions), without a timestep-conditioned decoder
    // (diffusers' LTX-2 converter: `timestep_conditioning` off).
    let vae = shapes.get(ComponentKind::Vae).unwrap();
    assert_eq!(
        vae["decoder.up_blocks.0.res_blocks.0.conv1.conv.weight"].shape,
        [1024, 1024, 3, 3, 3]
    );
    assert!(vae.contains_key("encoder.down_blocks.1.conv.conv.bias"));
    assert!(
        !vae.keys().any(|k| k.contains("time_embedder")
            || k.contains("scale_shift_table")
            || k.contains("timestep_scale_multiplier")),
        "no timestep conditioning"
    );
}

/// Qwen-Image 2.1's DiT and VAE at full size against ComfyUI's modules, counted by hand:
/// per block 13 × 4096² (q, k, v, out; `gate_up` 2 × 3 × 4096 rows; `out`) and two 128-wide
/// norms; besides the blocks the timestep MLP (256 × 4096 + 4096²), the text norm and
/// projection (4096 + 2 × 4096²), `img_in` and `proj_out` (64 × 4096 each), the shared
/// modulation (4 × 4096²) and `norm_out` (4096²) — 7,115,124,736 parameters. The VAE's shapes are
/// `sd.py`'s (`decoder.head.0.gamma` 144 wide, `encoder.conv1` 96, 64 latent channels, RGBA);
/// the text encoder is Qwen3-VL 8B at its published size less the output head.
#[test]
fn qwen_image21_components_have_the_reference_sizes() {
    let (arch, v) = variant_named("qwen-image-21").unwrap();
    assert_eq!(arch, Arch::QwenImage21);
    let shapes = expand(v.full);
    let model = shapes.get(ComponentKind::Model).unwrap();
    let params: u64 = model
        .values()
        .map(|i| i.shape.iter().product::<usize>() as u64)
        .sum();
    let d2: u64 = 4096 * 4096;
    let blocks = 32 * (13 * d2 + 2 * 128);
    let rest = 256 * 4096 + d2 + 4096 + 2 * d2 + 2 * 64 * 4096 + 4 * d2 + d2;
    assert_eq!(blocks + rest, 7_115_124_736);
    assert_eq!(params, blocks + rest);
    assert_eq!(
        model["transformer_blocks.0.img_mlp.gate_up.weight"].shape,
        [24576, 4096]
    );
    assert_eq!(model["modulation.1.weight"].shape, [16384, 4096]);
    assert_eq!(model["txt_in.text_norm.weight"].shape, [4096]);
    let vae = shapes.get(ComponentKind::Vae).unwrap();
    assert_eq!(vae["decoder.head.2.weight"].shape, [4, 144, 1, 3, 3]);
    assert_eq!(vae["decoder.head.0.gamma"].shape, [144, 1, 1, 1]);
    assert_eq!(vae["encoder.conv1.weight"].shape, [96, 4, 1, 3, 3]);
    assert_eq!(vae["encoder.head.2.weight"].shape, [128, 768, 1, 3, 3]);
    assert_eq!(vae["conv2.weight"].shape, [64, 64, 1, 1, 1]);
    assert_eq!(vae["decoder.conv1.weight"].shape, [1152, 64, 1, 3, 3]);
    assert_eq!(
        vae["decoder.upsamples.0.upsamples.3.time_conv.weight"].shape,
        [2304, 1152, 1, 1, 1]
    );
    assert_eq!(
        crate::family::parts::vae_kind(vae),
        Some(crate::family::VaeKind::QwenImage21)
    );
    // Wan 2.2's VAE has the same layout with 3-frame-deep convolutions: still Wan 2.2's.
    let (_, wan22) = variant_named("wan22-5b").unwrap();
    let wan = expand(wan22.full);
    assert_eq!(
        crate::family::parts::vae_kind(wan.get(ComponentKind::Vae).unwrap()),
        Some(crate::family::VaeKind::Wan22)
    );
    // Qwen3-VL 8B: `Qwen/Qwen3-VL-8B-Instruct` is 8,767,123,696 parameters with its output head
    // (151,936 × 4096 = 622,329,856), which ComfyUI's `Llama2_` does not hold.
    let clip = shapes.get(ComponentKind::Clip).unwrap();
    let te: u64 = clip
        .iter()
        .filter(|(k, _)| k.starts_with("qwen3vl_8b.transformer."))
        .map(|(_, i)| i.shape.iter().product::<usize>() as u64)
        .sum();
    assert_eq!(te, 8_767_123_696 - 622_329_856);
    assert_eq!(
        clip["qwen3vl_8b.transformer.visual.deepstack_merger_list.0.linear_fc2.weight"].shape,
        [4096, 4608]
    );
    assert_eq!(
        clip["qwen3vl_8b.transformer.visual.patch_embed.proj.weight"].shape,
        [1152, 3, 2, 16, 16]
    );
    assert!(!clip.keys().any(|k| k.contains("lm_head")));
}
