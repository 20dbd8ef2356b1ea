use candle_core::{DType, Device};

use super::*;
use crate::layout::{layout, LayoutKind};
use crate::model::Arch;
use crate::read::MAX_HEADER_LEN;
use crate::synthetic::{self, SyntheticOptions};
use crate::testutil::{self, FIXTURES};

fn tiny(arch: Arch) -> Components {
    synthetic::build(&SyntheticOptions::new(arch).with_max_dim(4), &Device::Cpu).unwrap()
}

fn plan_of(
    c: &Components,
    arch: Arch,
    opts: &PlanOptions,
    meta: &BTreeMap<String, String>,
) -> Result<Plan> {
    let l = layout(
        &LayoutKind::Arch(arch),
        &c.shapes(),
        arch.default_prediction(),
    )?;
    Plan::new(&l, c, meta, opts)
}

#[test]
fn file_order_matches_the_reference() {
    for (name, arch, prediction) in FIXTURES {
        let shapes = synthetic::shrink(&testutil::component_shapes(name), 2);
        let c = synthetic::build_from_shapes(&shapes, 1, None, &Device::Cpu).unwrap();
        let l = layout(&LayoutKind::Arch(arch), &c.shapes(), prediction).unwrap();
        let plan = Plan::new(&l, &c, &BTreeMap::new(), &PlanOptions::default()).unwrap();
        let got: Vec<&str> = plan.tensors().iter().map(|t| t.name.as_str()).collect();
        let want: Vec<String> =
            serde_json::from_value(testutil::expected(name)["file_order"].clone()).unwrap();
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn pieces_tile_the_data_section() {
    let c = tiny(Arch::Sdxl);
    let plan = plan_of(&c, Arch::Sdxl, &PlanOptions::default(), &BTreeMap::new()).unwrap();
    let mut at = 0;
    for p in plan.pieces() {
        assert_eq!(p.start, at);
        at = p.end();
    }
    assert_eq!(at, plan.data_len());
    for t in plan.tensors() {
        let numel: usize = t.shape.iter().product();
        assert_eq!(
            t.offsets.1 - t.offsets.0,
            (numel * t.dtype.bitsize() / 8) as u64,
            "{}",
            t.name
        );
    }
    // Fused q/k/v are three pieces of one tensor.
    let fused = plan
        .tensors()
        .iter()
        .position(|t| t.name.ends_with("in_proj_weight"))
        .unwrap();
    assert_eq!(
        plan.pieces().iter().filter(|p| p.tensor == fused).count(),
        3
    );
}

#[test]
fn header_is_padded_and_aligned() {
    let c = tiny(Arch::Sd15);
    for align in [8u64, 4096] {
        let opts = PlanOptions {
            data_alignment: align,
            ..Default::default()
        };
        let plan = plan_of(&c, Arch::Sd15, &opts, &BTreeMap::new()).unwrap();
        let h = plan.header();
        assert_eq!(plan.data_offset() % align, 0);
        let n = u64::from_le_bytes(h[..8].try_into().unwrap());
        assert_eq!(n + 8, h.len() as u64);
        assert_eq!(n % 8, 0);
        let text = std::str::from_utf8(&h[8..]).unwrap();
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(v.as_object().unwrap().len(), plan.tensors().len() + 1);
        assert!(text.starts_with("{\"__metadata__\":{}"));
    }
    let bad = PlanOptions {
        data_alignment: 12,
        ..Default::default()
    };
    assert!(matches!(
        plan_of(&c, Arch::Sd15, &bad, &BTreeMap::new()),
        Err(Error::InvalidInput(_))
    ));
}

#[test]
fn casts_apply_per_component_and_spare_integers() {
    let c = tiny(Arch::Sdxl);
    let opts = PlanOptions {
        dtypes: ComponentDtypes {
            model: TargetDtype::BF16,
            clip: TargetDtype::F16,
            vae: TargetDtype::F8E5M2,
            ..Default::default()
        },
        ..Default::default()
    };
    let plan = plan_of(&c, Arch::Sdxl, &opts, &BTreeMap::new()).unwrap();
    for t in plan.tensors() {
        let want = if t.name.ends_with("position_ids") {
            Dtype::I64
        } else if t.name.starts_with("model.") {
            Dtype::BF16
        } else if t.name.starts_with("first_stage_model.") {
            Dtype::F8_E5M2
        } else {
            Dtype::F16
        };
        assert_eq!(t.dtype, want, "{}", t.name);
    }
    assert_eq!(
        plan.tensors()[0].name,
        "conditioner.embedders.0.transformer.text_model.embeddings.position_ids"
    );
}

#[test]
fn impossible_cast_is_refused() {
    let mut c = tiny(Arch::Sd15);
    let mut model = c.take(ComponentKind::Model).unwrap();
    let packed = Tensor::from_raw_buffer(&[0x12u8; 4], DType::F4, &[8], &Device::Cpu).unwrap();
    model.insert("out.2.weight".into(), packed.into());
    c.set_inputs(ComponentKind::Model, model);
    let opts = PlanOptions {
        dtypes: ComponentDtypes::all(TargetDtype::F16),
        ..Default::default()
    };
    let err = plan_of(&c, Arch::Sd15, &opts, &BTreeMap::new()).unwrap_err();
    assert!(
        matches!(&err, Error::ImpossibleCast { key, .. } if key == "model.diffusion_model.out.2.weight"),
        "{err}"
    );
}

#[test]
fn oversized_header_is_refused() {
    let c = tiny(Arch::Sd15);
    let meta = BTreeMap::from([("workflow".to_string(), "x".repeat(MAX_HEADER_LEN as usize))]);
    let err = plan_of(&c, Arch::Sd15, &PlanOptions::default(), &meta).unwrap_err();
    assert!(matches!(err, Error::HeaderTooLarge { .. }), "{err}");
    assert!(err.to_string().contains("--disable-metadata"));
}
