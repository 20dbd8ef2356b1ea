//! Packed sub-byte dtypes (F4, F6): written as the raw bytes they are, by every backend and unit
//! size, and refused with a clear error where safetensors would refuse the file or where a cast,
//! a fusion or a view would need to address single elements.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use checkpoint_save::{
    save_to_path, Backend, ComponentDtypes, Components, EngineOptions, Error, GenericPrefixes,
    LayoutChoice, SaveOptions, TargetDtype,
};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

fn packed(dtype: DType, elements: usize, seed: u8) -> (Tensor, Vec<u8>) {
    let bits = if dtype == DType::F4 { 4 } else { 6 };
    let bytes: Vec<u8> = (0..elements * bits / 8)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    let t = Tensor::from_raw_buffer(&bytes, dtype, &[elements], &Device::Cpu).unwrap();
    (t, bytes)
}

fn plain() -> SaveOptions {
    let mut opts = SaveOptions {
        layout: LayoutChoice::Generic(GenericPrefixes {
            model: String::new(),
            ..Default::default()
        }),
        ..Default::default()
    };
    opts.metadata.disable = true;
    opts.metadata.provenance = false;
    opts
}

#[test]
fn packed_tensors_larger_than_a_unit_are_written_once_by_every_backend() {
    // 3 MiB of F4 and 1.5 MiB of F6 (more than a 64 KiB unit and than the 1 MiB in-place
    // threshold), between ordinary tensors.
    let (f4, f4_bytes) = packed(DType::F4, 6 << 20, 1);
    let (f6, f6_bytes) = packed(DType::F6E2M3, 2 << 20, 2);
    let ones = Tensor::ones(1000, DType::F32, &Device::Cpu).unwrap();
    let ids = Tensor::arange(0u8, 200, &Device::Cpu).unwrap();
    let mut map = HashMap::new();
    map.insert("a.f4".to_string(), f4);
    map.insert("b.f6".to_string(), f6);
    map.insert("c.ones".to_string(), ones.clone());
    map.insert("d.ids".to_string(), ids.clone());
    let ones_bytes: Vec<u8> = vec![1f32; 1000]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let ids_bytes: Vec<u8> = (0u8..200).collect();
    let views = [
        (
            "a.f4",
            TensorView::new(Dtype::F4, vec![6 << 20], &f4_bytes).unwrap(),
        ),
        (
            "b.f6",
            TensorView::new(Dtype::F6_E2M3, vec![2 << 20], &f6_bytes).unwrap(),
        ),
        (
            "c.ones",
            TensorView::new(Dtype::F32, vec![1000], &ones_bytes).unwrap(),
        ),
        (
            "d.ids",
            TensorView::new(Dtype::U8, vec![200], &ids_bytes).unwrap(),
        ),
    ];
    let want = safetensors::serialize(views, Some(HashMap::new())).unwrap();
    let c = Components::new(map);
    let dir = tempfile::tempdir().unwrap();
    for backend in [Backend::Pwrite, Backend::Mmap, Backend::Direct] {
        for chunk_size in [4096, 64 << 10, 32 << 20] {
            let opts = SaveOptions {
                writer: EngineOptions {
                    backend,
                    chunk_size,
                    threads: 2,
                    ..Default::default()
                },
                ..plain()
            };
            let path = dir
                .path()
                .join(format!("{backend:?}-{chunk_size}.safetensors"));
            save_to_path(&c, &path, &opts).unwrap();
            let got = std::fs::read(&path).unwrap();
            let st = safetensors::SafeTensors::deserialize(&got).unwrap();
            assert_eq!(
                st.tensor("a.f4").unwrap().data(),
                f4_bytes.as_slice(),
                "{backend:?} {chunk_size}"
            );
            assert_eq!(
                st.tensor("b.f6").unwrap().data(),
                f6_bytes.as_slice(),
                "{backend:?} {chunk_size}"
            );
            if backend != Backend::Direct {
                assert!(
                    got == want,
                    "{backend:?} {chunk_size}: differs from safetensors"
                );
            }
        }
    }
}

#[test]
fn packed_tensors_that_readers_would_refuse_are_refused_before_any_file() {
    let dir = tempfile::tempdir().unwrap();
    // 5 elements of 4 bits: two and a half bytes, which safetensors refuses to read.
    let odd = Tensor::from_raw_buffer(&[0u8; 3], DType::F4, &[5], &Device::Cpu);
    let t = odd.expect("candle holds packed tensors as their bytes");
    let c = Components::new(HashMap::from([("odd".to_string(), t)]));
    let path = dir.path().join("odd.safetensors");
    let err = save_to_path(&c, &path, &plain()).unwrap_err();
    assert!(matches!(err, Error::BadShape { .. }), "{err}");
    assert!(
        err.to_string().contains("not a whole number of bytes"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn casts_and_views_of_packed_tensors_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let (f4, _) = packed(DType::F4, 64, 3);
    // A cast: packed formats cannot be decoded.
    let c = Components::new(HashMap::from([("w".to_string(), f4.clone())]));
    let opts = SaveOptions {
        dtypes: ComponentDtypes::all(TargetDtype::F16),
        ..plain()
    };
    let err = save_to_path(&c, &dir.path().join("cast.safetensors"), &opts).unwrap_err();
    assert!(matches!(err, Error::ImpossibleCast { .. }), "{err}");
    assert!(err.to_string().contains("--dtype keep"), "{err}");
    // A view that starts inside the storage cannot be addressed by bytes.
    let view = f4.narrow(0, 2, 32).expect("a view of a packed tensor");
    let c = Components::new(HashMap::from([("v".to_string(), view)]));
    let err = save_to_path(&c, &dir.path().join("view.safetensors"), &plain()).unwrap_err();
    assert!(matches!(err, Error::Conversion { .. }), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
