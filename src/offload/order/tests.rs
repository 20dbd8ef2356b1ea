use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, TensorId};

use super::seam::{self, Event};
use super::*;
use crate::layout::{self, GenericPrefixes, LayoutKind};
use crate::model::merged::{Merged, Patch, PatchValue};
use crate::model::{ComponentKind, Components, InputMap, Prediction};
use crate::plan::PlanOptions;
use crate::progress::Progress;
use crate::write::{self, EngineOptions, Method};

fn seeded(n: usize, seed: f32) -> Tensor {
    let v: Vec<f32> = (0..n).map(|i| (i as f32 * seed).sin()).collect();
    Tensor::from_vec(v, n, &Device::Cpu).unwrap()
}

fn add(base: &Tensor, other: &Tensor) -> Merged {
    let patch = Patch {
        strength: 0.25,
        strength_model: 0.75,
        value: PatchValue::Tensor(InputTensor::Candle(other.clone())),
    };
    Merged::new("m", InputTensor::Candle(base.clone()), vec![patch]).unwrap()
}

/// Components whose tensors are read every way a save reads a held tensor: as held, as parts
/// of a join, transposed, and as a merge's operands on either evaluator.
fn every_kind_of_read() -> (Components, Vec<TensorId>) {
    let mut ts: Vec<Tensor> = (0..7).map(|i| seeded(4096, 0.1 + i as f32)).collect();
    ts[2] = ts[2].reshape((64, 64)).unwrap();
    let joined = InputTensor::joined(
        "j",
        vec![
            (InputTensor::Candle(ts[0].clone()), 0..2048),
            (InputTensor::Candle(ts[1].clone()), 2048..4096),
        ],
        vec![4096],
    )
    .unwrap();
    let mut model = InputMap::new();
    model.insert("held".into(), InputTensor::Candle(ts[3].clone()));
    model.insert("joined".into(), joined);
    model.insert(
        "proj".into(),
        InputTensor::Candle(ts[2].clone()).transposed(),
    );
    let on_host = add(&ts[4], &ts[5]);
    model.insert("host_merge".into(), InputTensor::Merged(Arc::new(on_host)));
    let on_device = add(&ts[6], &ts[5]).on(Device::Cpu);
    model.insert(
        "device_merge".into(),
        InputTensor::Merged(Arc::new(on_device)),
    );
    let mut c = Components::default();
    c.set_inputs(ComponentKind::Model, model);
    (c, ts.iter().map(Tensor::id).collect())
}

fn plan_of(c: &Components, dtype: crate::model::dtype::TargetDtype) -> Plan {
    let kind = LayoutKind::Generic(GenericPrefixes::default());
    let l = layout::layout(&kind, &c.shapes(), Prediction::Flow).unwrap();
    let opts = PlanOptions {
        dtypes: crate::plan::ComponentDtypes::all(dtype),
        ..PlanOptions::default()
    };
    Plan::new(&l, c, &BTreeMap::new(), &opts).unwrap()
}

/// Regression (issue 20): the workers read the tensors on their own streams with nothing
/// ordering those reads after the caller's work; only the CUDA fast path synchronized.
#[test]
fn a_write_waits_for_every_tensor_it_reads_before_the_first_read() {
    let (c, ids) = every_kind_of_read();
    seam::watch(ids.iter().copied());
    let plan = plan_of(&c, crate::model::dtype::TargetDtype::F16);
    let held: HashSet<TensorId> = plan_tensors(&plan).iter().map(|t| t.id()).collect();
    let want: HashSet<TensorId> = ids.iter().copied().collect();
    assert_eq!(held, want, "every tensor, nested ones included");
    let file = tempfile::tempfile().unwrap();
    let engine = EngineOptions {
        threads: 2,
        ..EngineOptions::default()
    };
    let never = AtomicBool::new(false);
    write::write(
        &plan,
        &file,
        Method::Pwrite,
        &engine,
        &Progress::hidden(),
        &never,
    )
    .unwrap();
    seam::assert_waited_before_read(&ids);
}

#[test]
fn whole_tensor_reads_wait_first() {
    let (a, b) = (seeded(16, 0.3), seeded(16, 0.7));
    seam::watch([a.id(), b.id()]);
    let joined = InputTensor::joined(
        "j",
        vec![
            (InputTensor::Candle(a.clone()), 0..8),
            (InputTensor::Candle(b.clone()), 8..16),
        ],
        vec![16],
    )
    .unwrap();
    let bytes = crate::offload::host_bytes(&joined).unwrap();
    assert_eq!(bytes.len(), 64);
    seam::assert_waited_before_read(&[a.id(), b.id()]);
}

#[test]
fn a_fence_is_waited_for_the_tensors_it_was_recorded_after() {
    let t = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
    seam::watch([t.id()]);
    let fence = Fence::after([&t]).unwrap();
    assert_eq!(seam::events(&[t.id()]), vec![Event::Fenced(t.id())]);
    fence.wait().unwrap();
    assert_eq!(
        seam::events(&[t.id()]),
        vec![Event::Fenced(t.id()), Event::FenceWaited(t.id())]
    );
}

#[test]
fn cpu_tensors_need_no_device_call() {
    // The CPU has nothing to synchronize; CUDA and Metal devices are synchronized once each.
    let ts: Vec<Tensor> = (0..3).map(|i| seeded(8, i as f32)).collect();
    wait_for_producers(ts.iter()).unwrap();
    assert!(Fence::after(ts.iter()).unwrap().produced.is_empty());
}
