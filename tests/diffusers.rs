//! diffusers folders in both directions, against an implementation other than ours: the tiny
//! pipelines in `tests/fixtures/diffusers/` were made by the diffusers library's own converters
//! from the checkpoints beside them (see its README). Every tensor must come back byte for byte,
//! except the keys the README lists as not carried by diffusers.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Device;
use checkpoint_save::layout::diffusers::Folder;
use checkpoint_save::{
    input::from_diffusers, load_tensors, open_input, save_to_path, split, Arch, Components,
    InputLayout, InputTensor, LayoutChoice, Prediction, SaveOptions, SplitTarget,
};

const ARCHS: [(&str, Arch); 6] = [
    ("sd15", Arch::Sd15),
    ("sd2", Arch::Sd2),
    ("sdxl", Arch::Sdxl),
    ("sdxl-refiner", Arch::SdxlRefiner),
    ("sd3", Arch::Sd3),
    ("flux", Arch::Flux),
];

fn fixture(arch: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/diffusers")
        .join(arch)
}

/// Every tensor of a file: dtype, shape, bytes.
type Tensors = BTreeMap<String, (String, Vec<usize>, Vec<u8>)>;

fn tensors(path: &Path) -> Tensors {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                (v.dtype().to_string(), v.shape().to_vec(), v.data().to_vec()),
            )
        })
        .collect()
}

/// Keys of a checkpoint of `arch` that diffusers does not carry (README, "Keys diffusers does
/// not carry"): every CLIP `logit_scale` (written back with ComfyUI's default), SD2's last text
/// encoder layer (dropped) and its projection, and the CLIP-L projection SD3's converter and
/// Flux's class replace (written back as the identity).
fn not_carried(arch: Arch, key: &str) -> bool {
    let sd2_last = key.starts_with("cond_stage_model.model.transformer.resblocks.2.");
    key.ends_with("logit_scale")
        || (arch == Arch::Sd2 && (sd2_last || key == "cond_stage_model.model.text_projection"))
        || (matches!(arch, Arch::Sd3 | Arch::Flux)
            && key == "text_encoders.clip_l.transformer.text_projection.weight")
}

fn options(dir: &Path) -> SaveOptions {
    let mut opts = SaveOptions {
        output_dir: dir.to_path_buf(),
        ..SaveOptions::default()
    };
    opts.metadata.disable = true;
    opts
}

/// Converts `input` (a file or a pipeline folder) with the library, as `convert` does.
fn convert(input: &Path, out: &Path) -> (PathBuf, checkpoint_save::Input) {
    let opened = open_input(input, None).unwrap();
    let mut opts = options(out);
    opts.layout = LayoutChoice::Arch(opened.arch.unwrap());
    opts.prediction = opened.prediction;
    let saved = checkpoint_save::save(&opened.components, &opts).unwrap();
    (saved.path, opened)
}

fn assert_same_except(arch: Arch, want: &Tensors, got: &Tensors, what: &str) {
    for (k, w) in want {
        if not_carried(arch, k) {
            continue;
        }
        let g = got
            .get(k)
            .unwrap_or_else(|| panic!("{what}: `{k}` is missing"));
        assert_eq!((&g.0, &g.1), (&w.0, &w.1), "{what}: `{k}`");
        assert!(g.2 == w.2, "{what}: `{k}` bytes differ");
    }
    for k in got.keys() {
        assert!(
            want.contains_key(k) || k.ends_with("logit_scale"),
            "{what}: extra `{k}`"
        );
    }
}

#[test]
fn pipelines_made_by_diffusers_convert_to_the_checkpoints_they_came_from() {
    let dir = tempfile::tempdir().unwrap();
    for (name, arch) in ARCHS {
        let (path, input) = convert(&fixture(name).join("pipeline"), &dir.path().join(name));
        assert_eq!(
            (input.arch, input.layout),
            (Some(arch), InputLayout::Diffusers),
            "{name}"
        );
        let want = tensors(&fixture(name).join("checkpoint.safetensors"));
        assert_same_except(arch, &want, &tensors(&path), name);
        // The prediction type comes from scheduler/scheduler_config.json.
        let v = arch == Arch::Sd2;
        assert_eq!(input.prediction == Some(Prediction::V), v, "{name}");
        assert_eq!(tensors(&path).contains_key("v_pred"), v, "{name}");
    }
}

/// A pipeline folder's tensors by sub-folder, with transformers 5's bare `CLIPTextModel` names
/// written as every earlier version (and candle-transformers) names them.
fn folder_tensors(root: &Path) -> BTreeMap<String, Tensors> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(root).unwrap() {
        let sub = e.unwrap().path();
        if !sub.is_dir() || sub.ends_with("scheduler") {
            continue;
        }
        let mut all = Tensors::new();
        for f in std::fs::read_dir(&sub).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|x| x == "safetensors") {
                all.extend(tensors(&f));
            }
        }
        let bare = all.contains_key("embeddings.token_embedding.weight");
        let all = all
            .into_iter()
            .map(|(k, v)| match bare && k != "text_projection.weight" {
                true => (format!("text_model.{k}"), v),
                false => (k, v),
            })
            .collect();
        out.insert(sub.file_name().unwrap().to_string_lossy().into_owned(), all);
    }
    out
}

#[test]
fn split_to_diffusers_writes_what_diffusers_writes() {
    let dir = tempfile::tempdir().unwrap();
    for (name, arch) in ARCHS {
        let input = open_input(&fixture(name).join("checkpoint.safetensors"), None).unwrap();
        let out = dir.path().join(name);
        let done = split(
            &input,
            &out,
            SplitTarget::Diffusers,
            &SaveOptions::default(),
        )
        .unwrap();
        assert!(
            done.files
                .iter()
                .all(|f| f.starts_with(&out) && f.is_file()),
            "{name}"
        );
        let ours = folder_tensors(&out);
        let theirs = folder_tensors(&fixture(name).join("pipeline"));
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            theirs.keys().collect::<Vec<_>>(),
            "{name}"
        );
        for (sub, t) in &theirs {
            for (k, w) in t {
                let g = &ours[sub][k];
                assert_eq!((&g.0, &g.1), (&w.0, &w.1), "{name}/{sub}: `{k}`");
                // diffusers' SD3 converter replaces CLIP-L's projection with the identity; ours
                // keeps the checkpoint's.
                let replaced =
                    arch == Arch::Sd3 && sub == "text_encoder" && k == "text_projection.weight";
                assert!(g.2 == w.2 || replaced, "{name}/{sub}: `{k}` bytes differ");
            }
            assert_eq!(ours[sub].len(), t.len(), "{name}/{sub}");
        }
        // The folder is complete: diffusers' index, a config per model, the scheduler's.
        for f in ["model_index.json", "scheduler/scheduler_config.json"] {
            assert!(out.join(f).is_file(), "{name}: {f}");
        }
    }
}

#[test]
fn checkpoint_to_diffusers_and_back_is_the_same_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    for (name, arch) in ARCHS {
        let original = fixture(name).join("checkpoint.safetensors");
        let input = open_input(&original, None).unwrap();
        let folder = dir.path().join(format!("{name}-pipeline"));
        split(
            &input,
            &folder,
            SplitTarget::Diffusers,
            &SaveOptions::default(),
        )
        .unwrap();
        let (back, reread) = convert(&folder, &dir.path().join(name));
        assert_eq!(
            reread.prediction, input.prediction,
            "{name}: prediction survives"
        );
        assert_same_except(arch, &tensors(&original), &tensors(&back), name);
    }
}

#[test]
fn candle_tensors_in_diffusers_names_are_renamed_without_copies() {
    let dir = tempfile::tempdir().unwrap();
    for (name, arch) in ARCHS {
        // What a candle-transformers program holds: each model's tensors, loaded from its folder.
        let pipeline = fixture(name).join("pipeline");
        let mut models = Vec::new();
        let mut held = std::collections::HashMap::new();
        for folder in [
            Folder::Unet,
            Folder::Transformer,
            Folder::Vae,
            Folder::TextEncoder,
            Folder::TextEncoder2,
            Folder::TextEncoder3,
        ] {
            let sub = pipeline.join(folder.name());
            if !sub.is_dir() {
                continue;
            }
            let mut map = BTreeMap::new();
            for f in std::fs::read_dir(&sub).unwrap() {
                let f = f.unwrap().path();
                if f.extension().is_some_and(|x| x == "safetensors") {
                    map.extend(load_tensors(&f, &Device::Cpu).unwrap());
                }
            }
            held.extend(map.values().map(|t| (t.id(), t.clone())));
            models.push((folder, map));
        }
        let components: Components = from_diffusers(arch, models).unwrap();
        // Renamed tensors are the very tensors held (same id); fused ones are views of them.
        let mut same = 0;
        for t in components.tensors() {
            match t {
                InputTensor::Candle(c) if held.contains_key(&c.id()) => same += 1,
                // Made up: `logit_scale` (a scalar) or a CLIP's missing projection (the identity).
                InputTensor::Candle(c) => assert!(
                    c.rank() <= 2 && c.dims().iter().all(|&d| d <= 64),
                    "{name}: a new tensor {:?}",
                    c.dims()
                ),
                InputTensor::Joined(_) => {}
                other => panic!("{name}: unexpected {other:?}"),
            }
        }
        assert!(
            same > components.tensors().count() / 2,
            "{name}: {same} renamed in place"
        );
        let mut opts = options(&dir.path().join(name));
        opts.layout = LayoutChoice::Arch(arch);
        // The prediction type is the scheduler's, which a program passes on its own.
        opts.prediction = (arch == Arch::Sd2).then_some(Prediction::V);
        let saved = checkpoint_save::save(&components, &opts).unwrap();
        let want = tensors(&fixture(name).join("checkpoint.safetensors"));
        assert_same_except(arch, &want, &tensors(&saved.path), name);
    }
}

#[test]
fn single_files_convert_to_themselves_and_leave_out_what_comfyui_does_not_hold() {
    let dir = tempfile::tempdir().unwrap();
    let original = fixture("sd15").join("checkpoint.safetensors");
    // An A1111-era file: the same checkpoint plus EMA copies, schedule buffers and a float
    // position buffer.
    let mut with_extras = tensors(&original);
    let f32s = |n: usize| ("F32".to_string(), vec![n], vec![0u8; 4 * n]);
    with_extras.insert("model_ema.decay".into(), f32s(1));
    with_extras.insert("model_ema.diffusion_modelout2bias".into(), f32s(4));
    with_extras.insert("alphas_cumprod".into(), f32s(1000));
    with_extras.insert(
        "cond_stage_model.transformer.text_model.embeddings.position_ids".into(),
        ("F32".into(), vec![1, 77], vec![0u8; 4 * 77]),
    );
    let views: Vec<(String, safetensors::tensor::TensorView)> = with_extras
        .iter()
        .map(|(k, (d, s, b))| {
            let dtype: safetensors::Dtype =
                serde_json::from_value(serde_json::Value::String(d.clone())).unwrap();
            (
                k.clone(),
                safetensors::tensor::TensorView::new(dtype, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let a1111 = dir.path().join("a1111.safetensors");
    std::fs::write(&a1111, safetensors::serialize(views, None).unwrap()).unwrap();
    let (path, input) = convert(&a1111, &dir.path().join("out"));
    assert_eq!(input.layout, InputLayout::SingleFile);
    assert_eq!(input.left_out.len(), 4, "{:?}", input.left_out);
    assert_same_except(Arch::Sd15, &tensors(&original), &tensors(&path), "a1111");
    assert_eq!(tensors(&path).len(), tensors(&original).len());
    // f16 on the way: every float halves, nothing else changes.
    let opened = open_input(&original, None).unwrap();
    let mut opts = options(&dir.path().join("f16"));
    opts.dtypes = checkpoint_save::ComponentDtypes::all(checkpoint_save::TargetDtype::F32);
    let saved = save_to_path(
        &opened.components,
        &dir.path().join("f32.safetensors"),
        &opts,
    )
    .unwrap();
    let f32 = tensors(&saved.path);
    assert!(f32.values().all(|(d, _, _)| d == "F32" || d == "I64"));
    assert_eq!(f32.len(), tensors(&original).len());
}
