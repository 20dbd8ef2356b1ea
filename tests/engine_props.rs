//! Property test: random tensor sets written by the engine equal `safetensors::serialize`.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use checkpoint_save::{
    save_to_path, Backend, Components, EngineOptions, GenericPrefixes, LayoutChoice, Prediction,
    SaveOptions, TensorMap,
};
use proptest::prelude::*;

fn tensor(dtype: DType, shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let vals: Vec<f32> = (0..n)
        .map(|i| ((i as u64 * 2654435761 + seed) % 1000) as f32 / 7.0 - 60.0)
        .collect();
    let t = Tensor::from_vec(vals, shape, &Device::Cpu).unwrap();
    match dtype {
        DType::I64 | DType::U8 => t.abs().unwrap().to_dtype(dtype).unwrap(),
        d => t.to_dtype(d).unwrap(),
    }
}

fn shape_strategy() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        Just(vec![]),
        Just(vec![0]),
        Just(vec![3, 0, 2]),
        prop::collection::vec(1usize..40, 1..4),
        // Large enough to be written in place (≥ 1 MiB as f32).
        (300_000usize..400_000).prop_map(|n| vec![n]),
    ]
}

fn dtype_strategy() -> impl Strategy<Value = DType> {
    prop_oneof![
        Just(DType::F32),
        Just(DType::F16),
        Just(DType::BF16),
        Just(DType::I64),
        Just(DType::U8)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]
    #[test]
    fn engine_matches_safetensors(
        specs in prop::collection::vec(("[a-z]{1,6}(\\.[a-z0-9_]{1,5}){0,3}", dtype_strategy(), shape_strategy()), 1..12),
        chunk_kib in 4u64..512,
        mmap in any::<bool>(),
        threads in 1usize..4,
    ) {
        let mut map = TensorMap::new();
        for (i, (name, dtype, shape)) in specs.iter().enumerate() {
            map.insert(name.clone(), tensor(*dtype, shape, i as u64));
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        let mut opts = SaveOptions {
            layout: LayoutChoice::Generic(GenericPrefixes { model: String::new(), ..Default::default() }),
            prediction: Some(Prediction::Flow),
            writer: EngineOptions {
                chunk_size: chunk_kib * 1024,
                threads,
                backend: if mmap { Backend::Mmap } else { Backend::Pwrite },
                ..Default::default()
            },
            ..Default::default()
        };
        opts.metadata.disable = true;
        opts.metadata.provenance = false;
        save_to_path(&Components::new(map.clone()), &path, &opts).unwrap();
        let ours = std::fs::read(&path).unwrap();
        let theirs = safetensors::serialize(map.iter().map(|(k, v)| (k.clone(), v.clone())), Some(HashMap::new())).unwrap();
        prop_assert!(ours == theirs, "bytes differ ({} vs {} bytes)", ours.len(), theirs.len());
    }
}
