//! `merge` with the real binary: weighted sums and LoRA bakes of files against their formulas,
//! computed here from the files' values; inputs in different layouts; bad inputs refused with
//! nothing written.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::cli::{assert_refused, ok_path, run};
use safetensors::tensor::TensorView;

/// A tiny synthetic checkpoint in f32, made by the binary.
fn tiny(dir: &Path, arch: &str, seed: &str) -> PathBuf {
    let out = dir.join(format!("{arch}-{seed}"));
    ok_path(
        dir,
        &[
            "save",
            "-q",
            "--synthetic",
            arch,
            "--tiny",
            "--seed",
            seed,
            "--dtype",
            "f32",
            "--output-dir",
            out.to_str().unwrap(),
        ],
    )
}

/// Every tensor of a file as f32 values (and its dtype), through safetensors itself.
fn read(path: &Path) -> BTreeMap<String, (String, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, v)| (k, (format!("{:?}", v.dtype()), values(&v))))
        .collect()
}

fn values(v: &TensorView) -> Vec<f32> {
    let dtype = match v.dtype() {
        safetensors::Dtype::F32 => DType::F32,
        safetensors::Dtype::F16 => DType::F16,
        safetensors::Dtype::BF16 => DType::BF16,
        safetensors::Dtype::I64 => DType::I64,
        d => panic!("{d:?}"),
    };
    let t = Tensor::from_raw_buffer(v.data(), dtype, v.shape(), &Device::Cpu).unwrap();
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// f32 values rounded to f16 and back (round to nearest even, as the save casts).
fn as_f16(v: Vec<f32>) -> Vec<f32> {
    let n = v.len();
    let t = Tensor::from_vec(v, n, &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F16)
        .unwrap();
    t.to_dtype(DType::F32).unwrap().to_vec1().unwrap()
}

fn metadata(path: &Path) -> BTreeMap<String, String> {
    let bytes = std::fs::read(path).unwrap();
    let (_, m) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    m.metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect()
}

const Q: &str = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight";
const TE: &str = "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight";
const VAE: &str = "first_stage_model.encoder.conv_in.weight";

#[test]
fn a_weighted_sum_of_two_files_is_the_formula_rounded_once() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (tiny(dir.path(), "sd15", "1"), tiny(dir.path(), "sd15", "2"));
    let o = dir.path().join("out");
    let r = run(
        dir.path(),
        &[
            "merge",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "--ratio",
            "0.3",
            "--clip-ratio",
            "0.6",
            "--dtype",
            "f16",
            "--output-dir",
            o.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let out = dir.path().join(r.stdout.trim());
    assert!(
        r.stderr.contains("merged ") && r.stderr.contains("copied"),
        "{}",
        r.stderr
    );
    let (va, vb, vo) = (read(&a), read(&b), read(&out));
    assert_eq!(va.keys().collect::<Vec<_>>(), vo.keys().collect::<Vec<_>>());
    let sum = |key: &str, r: f64| -> Vec<f32> {
        let (rf, sf) = (r as f32, (1.0 - r) as f32);
        va[key]
            .1
            .iter()
            .zip(&vb[key].1)
            .map(|(x, y)| x * rf + sf * y)
            .collect()
    };
    assert_eq!(vo[Q].0, "F16");
    assert_eq!(vo[Q].1, as_f16(sum(Q, 0.3)));
    assert_eq!(vo[TE].1, as_f16(sum(TE, 0.6)));
    // The VAE is A's.
    assert_eq!(vo[VAE].1, as_f16(va[VAE].1.clone()));
    let recipe: serde_json::Value =
        serde_json::from_str(&metadata(&out)["checkpoint_save.recipe"]).unwrap();
    assert_eq!(recipe["operation"], "weighted_sum");
    assert_eq!(recipe["ratio"], 0.3);
    assert_eq!(recipe["inputs"][0]["name"], "ComfyUI_00001_.safetensors");
    assert_eq!(
        recipe["inputs"][1]["bytes"],
        std::fs::metadata(&b).unwrap().len()
    );
    assert_eq!(
        recipe["inputs"][0]["header_sha256"].as_str().unwrap().len(),
        64
    );
    // Two models of one layout share a header; the data sample tells them apart.
    assert_eq!(
        recipe["inputs"][0]["header_sha256"],
        recipe["inputs"][1]["header_sha256"]
    );
    assert_ne!(
        recipe["inputs"][0]["sample_sha256"],
        recipe["inputs"][1]["sample_sha256"]
    );
}

#[test]
fn block_ratios_are_model_merge_blocks_unmatched_keys_take_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (tiny(dir.path(), "sd15", "1"), tiny(dir.path(), "sd15", "2"));
    let o = dir.path().join("out");
    let (a, b, o) = (
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        o.to_str().unwrap(),
    );
    let out = ok_path(
        dir.path(),
        &[
            "merge",
            a,
            b,
            "--block-ratios",
            "input=0.25,middle=0.5,out=0.75",
            "--output-dir",
            o,
        ],
    );
    let (va, vb, vo) = (read(Path::new(a)), read(Path::new(b)), read(&out));
    let sum = |key: &str, r: f64| -> Vec<f32> {
        let (rf, sf) = (r as f32, (1.0 - r) as f32);
        va[key]
            .1
            .iter()
            .zip(&vb[key].1)
            .map(|(x, y)| x * rf + sf * y)
            .collect()
    };
    let m = "model.diffusion_model.";
    for (key, r) in [
        ("input_blocks.0.0.weight", 0.25),
        ("middle_block.1.proj_in.weight", 0.5),
        ("output_blocks.2.0.in_layers.2.weight", 0.75),
        ("out.2.weight", 0.75),
        // No block names these: ModelMergeBlocks gives them its first argument, `input`.
        ("time_embed.0.weight", 0.25),
        ("time_embed.2.bias", 0.25),
    ] {
        let key = format!("{m}{key}");
        assert_eq!(vo[&key].1, sum(&key, r), "{key} at {r}");
    }
    let recipe: serde_json::Value =
        serde_json::from_str(&metadata(&out)["checkpoint_save.recipe"]).unwrap();
    assert_eq!(recipe["block_default"], 0.25);
    // --ratio beside --block-ratios would not be used: refused, saying why.
    let empty = dir.path().join("empty");
    let r = run(
        dir.path(),
        &[
            "merge",
            a,
            b,
            "--ratio",
            "0.4",
            "--block-ratios",
            "input=0.25",
            "--output-dir",
            empty.to_str().unwrap(),
        ],
    );
    assert_refused(&r, "first block's", &empty);
    let help = run(dir.path(), &["merge", "--help"]);
    assert!(
        help.stdout.contains("ModelMergeBlocks") && help.stdout.contains("FIRST entry's"),
        "{}",
        help.stdout
    );
}

#[test]
fn a_diffusers_folder_merges_with_a_single_file_of_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusers/sdxl");
    let (folder, file) = (fx.join("pipeline"), fx.join("checkpoint.safetensors"));
    let o = dir.path().join("out");
    let o = o.to_str().unwrap();
    // x·0.5 + 0.5·x = x exactly: the merge of a model with itself in another layout is the model.
    let merged = ok_path(
        dir.path(),
        &[
            "merge",
            folder.to_str().unwrap(),
            file.to_str().unwrap(),
            "--ratio",
            "0.5",
            "--clip-ratio",
            "0.5",
            "--output-dir",
            o,
        ],
    );
    let converted = ok_path(
        dir.path(),
        &["convert", folder.to_str().unwrap(), "--output-dir", o],
    );
    let (m, c) = (read(&merged), read(&converted));
    assert_eq!(m.keys().collect::<Vec<_>>(), c.keys().collect::<Vec<_>>());
    for (k, v) in &c {
        assert_eq!(&m[k], v, "{k}");
    }
}

/// Writes a LoRA file of f32 factors.
fn write_lora(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((k, s, _), b)| {
            (
                k.to_string(),
                TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn noise(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}

#[test]
fn a_kohya_lora_bakes_at_its_strengths() {
    let dir = tempfile::tempdir().unwrap();
    let a = tiny(dir.path(), "sd15", "1");
    let va = read(&a);
    let shape = |k: &str| {
        let bytes = std::fs::read(&a).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        st.tensor(k).unwrap().shape().to_vec()
    };
    let (q, te) = (shape(Q), shape(TE));
    let r = 2;
    let (up, down) = (noise(q[0] * r, 1), noise(r * q[1], 2));
    let (tup, tdown) = (noise(te[0] * r, 3), noise(r * te[1], 4));
    let lora = dir.path().join("style.safetensors");
    let unet = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";
    let text = "lora_te_text_model_encoder_layers_0_self_attn_q_proj";
    write_lora(
        &lora,
        &[
            (&format!("{unet}.lora_up.weight"), vec![q[0], r], up.clone()),
            (
                &format!("{unet}.lora_down.weight"),
                vec![r, q[1]],
                down.clone(),
            ),
            (&format!("{unet}.alpha"), vec![], vec![1.0]),
            (
                &format!("{text}.lora_up.weight"),
                vec![te[0], r],
                tup.clone(),
            ),
            (
                &format!("{text}.lora_down.weight"),
                vec![r, te[1]],
                tdown.clone(),
            ),
        ],
    );
    let o = dir.path().join("out");
    let spec = format!("{}:0.8:0.25", lora.display());
    let r2 = run(
        dir.path(),
        &[
            "merge",
            a.to_str().unwrap(),
            "--lora",
            &spec,
            "--output-dir",
            o.to_str().unwrap(),
        ],
    );
    assert_eq!(r2.code, 0, "{}", r2.stderr);
    assert!(
        r2.stderr
            .contains("LoRA style.safetensors: 2 module(s) baked"),
        "{}",
        r2.stderr
    );
    let out = read(&dir.path().join(r2.stdout.trim()));
    let check = |key: &str, up: &[f32], down: &[f32], cols: usize, scale: f64| {
        let w = &va[key].1;
        for (i, got) in out[key].1.iter().enumerate() {
            let (row, col) = (i / cols, i % cols);
            let d: f64 = (0..r)
                .map(|k| up[row * r + k] as f64 * down[k * cols + col] as f64)
                .sum();
            let want = w[i] as f64 + scale * d;
            assert!(
                (*got as f64 - want).abs() < 1e-5,
                "{key}[{i}]: {got} vs {want}"
            );
        }
    };
    // Model: strength 0.8, alpha 1 over rank 2. Text encoder: 0.25, no alpha.
    check(Q, &up, &down, q[1], (0.8f64 * 0.5) as f32 as f64);
    check(TE, &tup, &tdown, te[1], 0.25);
    // Everything else is A's.
    assert_eq!(out[VAE], va[VAE]);
}

#[test]
fn bad_merges_are_refused_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (tiny(dir.path(), "sd15", "1"), tiny(dir.path(), "sd15", "2"));
    let x = tiny(dir.path(), "sdxl", "1");
    let out = dir.path().join("out");
    let o = out.to_str().unwrap();
    let (a, b, x) = (
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        x.to_str().unwrap(),
    );
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["merge", a, x, "--ratio", "0.5"],
            "A is sd15 and B is sdxl",
        ),
        (vec!["merge", a, b, "--ratio", "nan"], "not a finite number"),
        (vec!["merge", a, b], "need an operation"),
        (
            vec!["merge", a, b, "--add-difference", "1"],
            "takes 3 input(s)",
        ),
        (vec!["merge", a], "nothing to merge or bake"),
        (
            vec!["merge", a, b, "--ratio", "0.5", "--block-ratios", "input=x"],
            "not a finite number",
        ),
    ];
    for (args, needle) in cases {
        let r = run(dir.path(), &[&args[..], &["--output-dir", o]].concat());
        assert_refused(&r, needle, &out);
    }
    let loha = dir.path().join("loha.safetensors");
    write_lora(
        &loha,
        &[("lora_unet_x.hada_w1_a", vec![2, 2], vec![0.0; 4])],
    );
    let r = run(
        dir.path(),
        &[
            "merge",
            a,
            "--lora",
            loha.to_str().unwrap(),
            "--output-dir",
            o,
        ],
    );
    assert_refused(&r, "LoHa", &out);
    let other = dir.path().join("other.safetensors");
    write_lora(
        &other,
        &[
            ("lora_unet_nothing.lora_up.weight", vec![2, 1], vec![0.0; 2]),
            (
                "lora_unet_nothing.lora_down.weight",
                vec![1, 2],
                vec![0.0; 2],
            ),
        ],
    );
    let r = run(
        dir.path(),
        &[
            "merge",
            a,
            "--lora",
            other.to_str().unwrap(),
            "--output-dir",
            o,
        ],
    );
    assert_refused(&r, "matches no tensor", &out);
}

#[test]
fn lora_forms_comfyui_loads_bake_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let a = tiny(dir.path(), "sdxl", "1");
    let va = read(&a);
    let shape = |k: &str| {
        let bytes = std::fs::read(&a).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        st.tensor(k).unwrap().shape().to_vec()
    };
    let m = "model.diffusion_model.";
    let te =
        "conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight";
    let q = format!("{m}input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight");
    let out_w = format!("{m}input_blocks.4.1.transformer_blocks.0.attn1.to_out.0.weight");
    let out_b = format!("{m}input_blocks.4.1.transformer_blocks.0.attn1.to_out.0.bias");
    let norm = format!("{m}out.0.weight");
    let (te_s, q_s, w_s, b_s, n_s) = (
        shape(te),
        shape(&q),
        shape(&out_w),
        shape(&out_b),
        shape(&norm),
    );
    let r = 2;
    let numel = |s: &[usize]| s.iter().product::<usize>();
    let (tup, tdown) = (noise(te_s[0] * r, 1), noise(r * te_s[1], 2));
    let (qa, qb) = (noise(r * q_s[1], 3), noise(q_s[0] * r, 4));
    let (dw, db, set) = (
        noise(numel(&w_s), 5),
        noise(numel(&b_s), 6),
        noise(numel(&n_s), 7),
    );
    let te_stem = "lora_te_text_model_encoder_layers_0_self_attn_q_proj";
    let q_stem = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q";
    let o_stem = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_out_0";
    let lora = dir.path().join("forms.safetensors");
    let k = |stem: &str, suffix: &str| format!("{stem}{suffix}");
    write_lora(
        &lora,
        &[
            // SDXL's `lora_te_` is CLIP-L, as ComfyUI maps it.
            (
                &k(te_stem, ".lora_up.weight"),
                vec![te_s[0], r],
                tup.clone(),
            ),
            (
                &k(te_stem, ".lora_down.weight"),
                vec![r, te_s[1]],
                tdown.clone(),
            ),
            // PEFT factors without `.weight`.
            (&k(q_stem, ".lora_A"), vec![r, q_s[1]], qa.clone()),
            (&k(q_stem, ".lora_B"), vec![q_s[0], r], qb.clone()),
            // Full differences of a weight and its bias, and a weight set outright.
            (&k(o_stem, ".diff"), w_s.clone(), dw.clone()),
            (&k(o_stem, ".diff_b"), b_s.clone(), db.clone()),
            ("diffusion_model.out.0.set_weight", n_s.clone(), set.clone()),
            ("lora_unet_nothing.lora_up.weight", vec![2, 1], vec![0.0; 2]),
            (
                "lora_unet_nothing.lora_down.weight",
                vec![1, 2],
                vec![0.0; 2],
            ),
        ],
    );
    let o = dir.path().join("out");
    let spec = format!("{}:0.5:0.75", lora.display());
    let args = [
        "merge",
        a.to_str().unwrap(),
        "--lora",
        &spec,
        "--output-dir",
        o.to_str().unwrap(),
    ];
    let r2 = run(dir.path(), &args);
    assert_eq!(r2.code, 0, "{}", r2.stderr);
    assert!(
        r2.stderr
            .contains("LoRA forms.safetensors: 4 module(s) baked, 1 key(s) not applied")
            && r2.stderr.contains("`lora_unet_nothing`: matches no tensor"),
        "{}",
        r2.stderr
    );
    let out = read(&dir.path().join(r2.stdout.trim()));
    let low_rank = |key: &str, up: &[f32], down: &[f32], scale: f64| {
        let w = &va[key].1;
        let cols = w.len() / (up.len() / r);
        for (i, got) in out[key].1.iter().enumerate() {
            let (row, col) = (i / cols, i % cols);
            let d: f64 = (0..r)
                .map(|j| up[row * r + j] as f64 * down[j * cols + col] as f64)
                .sum();
            let want = w[i] as f64 + scale * d;
            assert!(
                (*got as f64 - want).abs() < 1e-5,
                "{key}[{i}]: {got} vs {want}"
            );
        }
    };
    low_rank(te, &tup, &tdown, 0.75);
    low_rank(&q, &qb, &qa, 0.5);
    // `diff`: W + f32(0.5)·D, one multiply and one add in f32.
    let plus = |key: &str, d: &[f32]| -> Vec<f32> {
        va[key]
            .1
            .iter()
            .zip(d)
            .map(|(w, d)| w + 0.5f32 * d)
            .collect()
    };
    assert_eq!(out[&out_w].1, plus(&out_w, &dw));
    assert_eq!(out[&out_b].1, plus(&out_b, &db));
    assert_eq!(out[&norm].1, set);
    // With --strict the key that matches nothing refuses the LoRA, and nothing is written.
    let strict_out = dir.path().join("strict");
    let r3 = run(
        dir.path(),
        &[
            &args[..4],
            &["--strict", "--output-dir", strict_out.to_str().unwrap()],
        ]
        .concat(),
    );
    assert_refused(&r3, "lora_unet_nothing", &strict_out);
    // DoRA: refused by name until the weight norms it needs are computed.
    let dora = dir.path().join("dora.safetensors");
    write_lora(
        &dora,
        &[
            (&k(te_stem, ".lora_up.weight"), vec![te_s[0], r], tup),
            (&k(te_stem, ".lora_down.weight"), vec![r, te_s[1]], tdown),
            (
                &k(te_stem, ".dora_scale"),
                vec![1, te_s[1]],
                vec![1.0; te_s[1]],
            ),
        ],
    );
    let r4 = run(
        dir.path(),
        &[
            "merge",
            a.to_str().unwrap(),
            "--lora",
            dora.to_str().unwrap(),
            "--output-dir",
            strict_out.to_str().unwrap(),
        ],
    );
    assert_refused(&r4, "DoRA", &strict_out);
    assert!(r4.stderr.contains("not applied yet"), "{}", r4.stderr);
}

#[test]
fn a_flux_control_lora_grows_img_in_in_the_saved_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let a = tiny(dir.path(), "flux", "1");
    let va = read(&a);
    let key = "model.diffusion_model.img_in.weight";
    let bytes = std::fs::read(&a).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let s = st.tensor(key).unwrap().shape().to_vec();
    let scale = st
        .tensor("model.diffusion_model.single_blocks.0.norm.key_norm.scale")
        .unwrap()
        .shape()
        .to_vec();
    let (hidden, ch, r) = (s[0], s[1], 2);
    let (la, lb, norm) = (
        noise(r * 2 * ch, 1),
        noise(hidden * r, 2),
        noise(scale[0], 3),
    );
    let lora = dir.path().join("canny.safetensors");
    write_lora(
        &lora,
        &[
            ("img_in.lora_A.weight", vec![r, 2 * ch], la.clone()),
            ("img_in.lora_B.weight", vec![hidden, r], lb.clone()),
            (
                "single_blocks.0.norm.key_norm.scale",
                scale.clone(),
                norm.clone(),
            ),
        ],
    );
    let o = dir.path().join("out");
    let spec = format!("{}:0.5", lora.display());
    let out = ok_path(
        dir.path(),
        &[
            "merge",
            a.to_str().unwrap(),
            "--lora",
            &spec,
            "--output-dir",
            o.to_str().unwrap(),
        ],
    );
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    // BFL's control LoRAs feed the control image's latents too: img_in takes 2·ch inputs.
    assert_eq!(st.tensor(key).unwrap().shape(), [hidden, 2 * ch]);
    let vo = read(&out);
    for (i, got) in vo[key].1.iter().enumerate() {
        let (row, col) = (i / (2 * ch), i % (2 * ch));
        let base = if col < ch {
            va[key].1[row * ch + col] as f64
        } else {
            0.0
        };
        let d: f64 = (0..r)
            .map(|j| lb[row * r + j] as f64 * la[j * 2 * ch + col] as f64)
            .sum();
        let want = base + 0.5 * d;
        assert!(
            (*got as f64 - want).abs() < 1e-5,
            "{key}[{i}]: {got} vs {want}"
        );
    }
    assert_eq!(
        vo["model.diffusion_model.single_blocks.0.norm.key_norm.scale"].1,
        norm
    );
    let r = run(dir.path(), &["inspect", out.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}
