//! Synthetic models against the reference fixtures: keys, shapes, values, determinism.

use super::expand::*;
use super::*;
use crate::model::Dtype;
use std::time::Instant;

/// Human-readable differences between generated and expected layouts (empty when equal).
fn diff(
    what: &str,
    got: &BTreeMap<String, TensorInfo>,
    want: &BTreeMap<String, TensorInfo>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (k, w) in want {
        match got.get(k) {
            None => out.push(format!("{what}: missing {k} {:?} {}", w.shape, w.dtype)),
            Some(g) if g != w => out.push(format!(
                "{what}: {k}: got {:?} {}, want {:?} {}",
                g.shape, g.dtype, w.shape, w.dtype
            )),
            Some(_) => {}
        }
    }
    for (k, g) in got {
        if !want.contains_key(k) {
            out.push(format!("{what}: extra {k} {:?} {}", g.shape, g.dtype));
        }
    }
    out
}

fn params(m: &BTreeMap<String, TensorInfo>) -> u64 {
    m.values().map(|i| i.numel() as u64).sum()
}

#[test]
fn shapes_match_reference_fixtures() {
    let mut problems = Vec::new();
    for (name, arch, _) in crate::testutil::FIXTURES {
        let fx = crate::testutil::expected(&format!("{name}.components"));
        let reference = crate::testutil::component_shapes(name);
        let got = shapes(arch);
        for (field, kind) in [
            ("unet", ComponentKind::Model),
            ("clip", ComponentKind::Clip),
            ("vae", ComponentKind::Vae),
        ] {
            let want = reference.get(kind).cloned().unwrap_or_default();
            let g = got.get(kind).cloned().unwrap_or_default();
            let d = diff(&format!("{name}/{field}"), &g, &want);
            if !d.is_empty() {
                problems.push(format!(
                    "{name}/{field}: {} difference(s), first ones:",
                    d.len()
                ));
                problems.extend(d.into_iter().take(15).map(|l| format!("  {l}")));
            }
            // `<field>_params` is the element count of that fixture list (not the saved
            // file's count in SUMMARY.json, which differs for clip after conversion).
            let want_params = fx[format!("{field}_params")].as_u64().unwrap();
            assert_eq!(params(&want), want_params, "{name}/{field}: fixture count");
            if params(&g) != want_params {
                problems.push(format!(
                    "{name}/{field}: {} params, reference {want_params}",
                    params(&g)
                ));
            }
        }
        assert!(got.get(ComponentKind::ClipVision).is_none());
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// The key with every number replaced by `#`: its kind, whatever the repeat it belongs to.
fn pattern(key: &str) -> String {
    key.split('.')
        .map(|p| {
            if p.bytes().all(|b| b.is_ascii_digit()) {
                "#"
            } else {
                p
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[test]
fn tiny_models_have_every_kind_of_key_and_consistent_shapes() {
    use crate::layout::{self, detect, LayoutKind};
    for arch in Arch::ALL {
        let tiny = tiny_shapes(arch);
        let full = shapes(arch);
        let model = tiny.get(ComponentKind::Model).unwrap();
        assert_eq!(detect::detect_model(model).unwrap(), arch);
        layout::layout(&LayoutKind::Arch(arch), &tiny, arch.default_prediction()).unwrap();
        let mut bytes = 0;
        for kind in ComponentKind::ALL {
            let kinds = |s: &ComponentShapes| -> std::collections::BTreeSet<String> {
                s.get(kind)
                    .into_iter()
                    .flat_map(|m| m.keys())
                    .map(|k| pattern(k))
                    .collect()
            };
            assert_eq!(kinds(&tiny), kinds(&full), "{arch}/{kind}");
            for (k, info) in tiny.get(kind).into_iter().flatten() {
                bytes += info.numel() * info.dtype.bitsize() / 8;
                // Every fused projection splits into q of the width and equal k and v (equal
                // thirds but for grouped-query attention, Lumina 2's).
                if k.ends_with("qkv.weight") {
                    let (rows, width) = (info.shape[0], info.shape[1]);
                    let kv = rows.saturating_sub(width);
                    assert!(
                        kv > 0 && kv % 2 == 0 && kv / 2 <= width,
                        "{k}: {rows}×{width}"
                    );
                    if arch != Arch::Lumina2 {
                        assert_eq!(rows, 3 * width, "{k}");
                    }
                }
            }
        }
        assert!(bytes < 2 << 20, "{arch}: {bytes} bytes");
    }
    let flux = tiny_shapes(Arch::Flux);
    let m = flux.get(ComponentKind::Model).unwrap();
    assert_eq!(
        m["single_blocks.0.linear1.weight"].shape,
        vec![3 * 32 + 4 * 32, 32]
    );
    assert_eq!(
        m["double_blocks.0.img_attn.norm.query_norm.scale"].shape,
        vec![16]
    );
}

#[test]
fn schnell_is_flux_without_guidance() {
    let dev = shapes(Arch::Flux);
    let schnell = shapes(Arch::FluxSchnell);
    assert_eq!(
        dev.get(ComponentKind::Clip),
        schnell.get(ComponentKind::Clip)
    );
    assert_eq!(dev.get(ComponentKind::Vae), schnell.get(ComponentKind::Vae));
    let mut expected = dev.get(ComponentKind::Model).cloned().unwrap();
    let removed: Vec<String> = expected
        .keys()
        .filter(|k| k.starts_with("guidance_in."))
        .cloned()
        .collect();
    assert_eq!(removed.len(), 4, "{removed:?}");
    for k in removed {
        expected.remove(&k);
    }
    assert_eq!(schnell.get(ComponentKind::Model), Some(&expected));
}

#[test]
fn shrink_keeps_keys_and_caps_dims() {
    for arch in Arch::ALL {
        let full = shapes(arch);
        let tiny = shrink(&full, 8);
        for kind in ComponentKind::ALL {
            let (Some(f), Some(t)) = (full.get(kind), tiny.get(kind)) else {
                assert_eq!(full.get(kind).is_some(), tiny.get(kind).is_some());
                continue;
            };
            assert!(f.keys().eq(t.keys()), "{arch}/{kind}: keys differ");
            for (k, fi) in f {
                let ti = &t[k];
                assert_eq!(ti.dtype, fi.dtype, "{k}");
                assert_eq!(ti.shape.len(), fi.shape.len(), "{k}");
                for (&a, &b) in ti.shape.iter().zip(&fi.shape) {
                    assert_eq!(a, b.min(8), "{k}: {:?} -> {:?}", fi.shape, ti.shape);
                    assert!(a >= 1, "{k}");
                }
            }
        }
    }
    // A cap of 0 behaves as 1: no tensor becomes empty.
    let one = shrink(&shapes(Arch::Sd15), 0);
    let m = one.get(ComponentKind::Model).unwrap();
    assert!(m.values().all(|i| i.numel() == 1));
}

fn tensor_values(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn all_values(c: &Components) -> Vec<(ComponentKind, String, Vec<f32>)> {
    c.iter()
        .flat_map(|(kind, m)| {
            m.iter()
                .map(move |(k, t)| (kind, k.clone(), tensor_values(t.as_candle().unwrap())))
        })
        .collect()
}

#[test]
fn tiny_sd15_builds_fast_with_all_keys_and_no_zero_tensor() {
    let opts = SyntheticOptions::new(Arch::Sd15)
        .with_max_dim(8)
        .with_seed(7);
    let start = Instant::now();
    let c = build(&opts, &Device::Cpu).unwrap();
    let took = start.elapsed();
    assert!(took.as_secs_f64() < 5.0, "tiny sd15 took {took:?}");
    assert_eq!(c.shapes(), shrink(&shapes(Arch::Sd15), 8));
    for (kind, key, vals) in all_values(&c) {
        assert!(vals.iter().any(|&v| v != 0.0), "{kind}/{key} is all zero");
        assert!(vals.iter().all(|v| v.is_finite()), "{kind}/{key}");
        match init_for(&key) {
            Init::LogitScale => assert!(vals.iter().all(|&v| v == LOGIT_SCALE), "{key}"),
            Init::NormWeight => assert!(vals.iter().all(|v| (v - 1.0).abs() <= 0.051), "{key}"),
            Init::Weight => assert!(vals.iter().all(|v| v.abs() <= 0.051), "{key}"),
        }
    }
    let ls = c.candle(ComponentKind::Clip, "clip_l.logit_scale").unwrap();
    assert_eq!(ls.dims(), &[] as &[usize]);
    assert_eq!(ls.dtype(), DType::F32);
}

#[test]
fn same_seed_same_values_other_seed_other_values() {
    let base = SyntheticOptions::new(Arch::Sdxl).with_max_dim(6);
    let a = all_values(&build(&base.clone().with_seed(1), &Device::Cpu).unwrap());
    let b = all_values(&build(&base.clone().with_seed(1), &Device::Cpu).unwrap());
    let c = all_values(&build(&base.with_seed(2), &Device::Cpu).unwrap());
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.0, y.0);
        assert_eq!(x.1, y.1);
        let (xb, yb): (Vec<u32>, Vec<u32>) = (
            x.2.iter().map(|v| v.to_bits()).collect(),
            y.2.iter().map(|v| v.to_bits()).collect(),
        );
        assert_eq!(xb, yb, "{}: differs for the same seed", x.1);
    }
    let differing = a
        .iter()
        .zip(&c)
        .filter(|(x, y)| !x.1.ends_with("logit_scale") && x.2 != y.2)
        .count();
    let comparable = a.iter().filter(|x| !x.1.ends_with("logit_scale")).count();
    assert_eq!(
        differing, comparable,
        "another seed must change every random tensor"
    );
    // Tensors of one model differ from each other too (the key is part of the seed).
    let q = &a
        .iter()
        .find(|x| x.1.ends_with("attn1.to_q.weight"))
        .unwrap()
        .2;
    let k = &a
        .iter()
        .find(|x| x.1.ends_with("attn1.to_k.weight"))
        .unwrap()
        .2;
    assert_ne!(q, k);
}

#[test]
fn chunked_large_tensor_is_deterministic() {
    let mut m = BTreeMap::new();
    m.insert(
        "big.weight".to_string(),
        TensorInfo::new(vec![3, CHUNK + 17], Dtype::F16),
    );
    let mut s = ComponentShapes::default();
    s.set(ComponentKind::Model, m);
    let a = build_from_shapes(&s, 5, None, &Device::Cpu).unwrap();
    let b = build_from_shapes(&s, 5, None, &Device::Cpu).unwrap();
    assert_eq!(all_values(&a), all_values(&b));
    let v = &all_values(&a)[0].2;
    // Chunks have their own streams: the first and second chunk must not repeat each other.
    assert_ne!(&v[..64], &v[CHUNK..CHUNK + 64]);
    assert!(v.iter().all(|&x| x != 0.0));
}

#[test]
fn dtype_override_applies_to_floats_only() {
    let mut s = shrink(&shapes(Arch::Sd15), 4);
    let mut clip = s.get(ComponentKind::Clip).cloned().unwrap();
    clip.insert(
        "clip_l.transformer.text_model.embeddings.position_ids".into(),
        TensorInfo::new(vec![1, 4], Dtype::I64),
    );
    s.set(ComponentKind::Clip, clip);
    let c = build_from_shapes(&s, 3, Some(DType::BF16), &Device::Cpu).unwrap();
    for (kind, m) in c.iter() {
        for (k, t) in m {
            let t = t.as_candle().unwrap();
            if k.ends_with("position_ids") {
                assert_eq!(t.dtype(), DType::I64, "{kind}/{k}");
                let v = t.flatten_all().unwrap().to_vec1::<i64>().unwrap();
                assert!(v.iter().all(|&x| (1..=16).contains(&x)), "{v:?}");
            } else {
                assert_eq!(t.dtype(), DType::BF16, "{kind}/{k}");
            }
        }
    }
    // Through the options too.
    let opts = SyntheticOptions::new(Arch::Sd3)
        .with_max_dim(3)
        .with_dtype(DType::F16);
    let c = build(&opts, &Device::Cpu).unwrap();
    assert!(c.iter().all(|(_, m)| m
        .values()
        .all(|t| t.as_candle().unwrap().dtype() == DType::F16)));
}

#[test]
fn bad_options_are_errors() {
    let opts = SyntheticOptions::new(Arch::Sd15).with_max_dim(0);
    assert!(matches!(
        build(&opts, &Device::Cpu),
        Err(Error::InvalidInput(_))
    ));
    let opts = SyntheticOptions::new(Arch::Sd15)
        .with_max_dim(2)
        .with_dtype(DType::U8);
    assert!(matches!(
        build(&opts, &Device::Cpu),
        Err(Error::InvalidInput(_))
    ));
}

#[test]
fn default_options() {
    let o = SyntheticOptions::new(Arch::Flux);
    assert_eq!(o.arch, Arch::Flux);
    assert_eq!(o.seed, 0);
    assert_eq!(o.max_dim, None);
    assert_eq!(o.dtype, None);
}

/// Full-size SD1.5 (1.07 B parameters, ~4.3 GB): run with
/// `cargo test --release --lib synthetic -- --ignored --nocapture`.
#[test]
#[ignore = "allocates a full-size model; run explicitly in release mode"]
fn full_sd15_build_time() {
    let start = Instant::now();
    let c = build(&SyntheticOptions::new(Arch::Sd15), &Device::Cpu).unwrap();
    let took = start.elapsed();
    let params: usize = c
        .iter()
        .flat_map(|(_, m)| m.values())
        .map(|t| t.info().numel())
        .sum();
    println!(
        "full sd15: {params} params, {} bytes, built in {took:?}",
        c.byte_len()
    );
    assert_eq!(params, 859_520_964 + 123_650_305 + 83_653_863);
}

#[test]
fn placeholders_have_the_shapes_and_dtypes_in_one_element_each() {
    // A full-size model that would need gigabytes as values.
    let opts = SyntheticOptions::named("ltx2").unwrap();
    let shapes = synthetic_shapes(&opts).unwrap();
    let c = placeholders(&shapes, Some(DType::BF16)).unwrap();
    let mut n = 0;
    for kind in ComponentKind::ALL {
        let (Some(want), Some(got)) = (shapes.get(kind), c.get(kind)) else {
            assert!(shapes.get(kind).is_none() && c.get(kind).is_none());
            continue;
        };
        assert_eq!(want.len(), got.len(), "{kind}");
        for (k, info) in want {
            let crate::model::InputTensor::Candle(t) = &got[k] else {
                panic!("{k} is a candle tensor")
            };
            assert_eq!(t.dims(), info.shape.as_slice(), "{k}");
            let held = crate::model::dtype::candle_dtype(info.dtype).unwrap();
            let dt = if held.is_float() { DType::BF16 } else { held };
            assert_eq!(t.dtype(), dt, "{k}");
            let (storage, layout) = t.storage_and_layout();
            assert!(layout.stride().iter().all(|&s| s == 0), "{k} is broadcast");
            drop(storage);
            n += 1;
        }
    }
    assert!(n > 1000, "{n} tensors");
    assert!(placeholders(&shapes, Some(DType::U8)).is_err());
}
