//! The GGUF reader on hand-made files: every version, every value kind, and every lie a file can
//! tell (one test per refusal), plus truncations and random corruptions that must never panic.
//! Files made by gguf-py are read in `tests/gguf.rs`.

use rand::{Rng, SeedableRng};

use super::*;

/// A GGUF file under construction, written as `version` lays it out.
struct Gguf {
    version: u32,
    kvs: Vec<(String, u32, Vec<u8>)>,
    infos: Vec<(String, Vec<u64>, u32, u64)>,
    align: usize,
    data: usize,
}

impl Gguf {
    fn new(version: u32) -> Self {
        Gguf {
            version,
            kvs: Vec::new(),
            infos: Vec::new(),
            align: 32,
            data: 0,
        }
    }

    fn len_bytes(&self, n: u64) -> Vec<u8> {
        if self.version == 1 {
            (n as u32).to_le_bytes().to_vec()
        } else {
            n.to_le_bytes().to_vec()
        }
    }

    fn string(&self, s: &str) -> Vec<u8> {
        let mut out = self.len_bytes(s.len() as u64);
        out.extend_from_slice(s.as_bytes());
        out
    }

    fn kv(mut self, key: &str, kind: u32, value: Vec<u8>) -> Self {
        self.kvs.push((key.into(), kind, value));
        self
    }

    fn tensor(mut self, name: &str, dims: &[u64], type_id: u32, offset: u64) -> Self {
        self.infos
            .push((name.into(), dims.to_vec(), type_id, offset));
        self
    }

    fn data(mut self, n: usize) -> Self {
        self.data = n;
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend(self.len_bytes(self.infos.len() as u64));
        out.extend(self.len_bytes(self.kvs.len() as u64));
        for (k, kind, v) in &self.kvs {
            out.extend(self.string(k));
            out.extend_from_slice(&kind.to_le_bytes());
            out.extend_from_slice(v);
        }
        for (name, dims, t, off) in &self.infos {
            out.extend(self.string(name));
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for &d in dims {
                out.extend(self.len_bytes(d));
            }
            out.extend_from_slice(&t.to_le_bytes());
            out.extend_from_slice(&off.to_le_bytes());
        }
        out.resize(out.len().next_multiple_of(self.align), 0);
        out.resize(out.len() + self.data, 0x5A);
        out
    }

    fn parse(&self) -> std::result::Result<Parsed, String> {
        let b = self.bytes();
        parse_bytes(&b)
    }

    fn error(&self) -> String {
        match self.parse() {
            Ok(p) => panic!("parsed: {p:?}"),
            Err(e) => e,
        }
    }
}

fn u32v(v: u32) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

/// A small valid file of `version`: metadata of every kind, a Q8_0 tensor and an F32 one.
fn sample(version: u32) -> Gguf {
    let g = Gguf::new(version);
    let s = |x: &str| g.string(x);
    let arch = s("flux");
    let mut strings = u32v(8);
    strings.extend(g.len_bytes(2));
    strings.extend(s("a"));
    strings.extend(s("ü"));
    let mut nested = u32v(9);
    nested.extend(g.len_bytes(2));
    for inner in [&[1i32, 2][..], &[3][..]] {
        nested.extend(u32v(5));
        nested.extend(g.len_bytes(inner.len() as u64));
        inner.iter().for_each(|v| nested.extend(v.to_le_bytes()));
    }
    let mut empty = u32v(11);
    empty.extend(g.len_bytes(0));
    g.kv("general.architecture", 8, arch)
        .kv("u8", 0, vec![200])
        .kv("i8", 1, vec![0x9C])
        .kv("u16", 2, 60000u16.to_le_bytes().to_vec())
        .kv("i16", 3, (-3i16).to_le_bytes().to_vec())
        .kv("u32", 4, u32v(7))
        .kv("i32", 5, (-7i32).to_le_bytes().to_vec())
        .kv("f32", 6, 0.5f32.to_le_bytes().to_vec())
        .kv("bool", 7, vec![1])
        .kv("strings", 9, strings)
        .kv("nested", 9, nested)
        .kv("empty", 9, empty)
        .kv("u64", 10, u64::MAX.to_le_bytes().to_vec())
        .kv("i64", 11, i64::MIN.to_le_bytes().to_vec())
        .kv("f64", 12, 1e300f64.to_le_bytes().to_vec())
        .tensor("w", &[64, 2], 8, 0)
        .tensor("b", &[3], 0, 160)
        .data(172)
}

#[test]
fn reads_every_version_and_value_kind() {
    for version in 1..=3 {
        let p = sample(version).parse().unwrap();
        assert_eq!(p.version, version);
        assert_eq!(p.alignment, 32);
        let get = |k: &str| &p.metadata.iter().find(|(key, _)| key == k).unwrap().1;
        assert_eq!(
            get("general.architecture"),
            &MetaValue::String("flux".into())
        );
        assert_eq!(get("u8"), &MetaValue::U8(200));
        assert_eq!(get("i8"), &MetaValue::I8(-100));
        assert_eq!(get("u16"), &MetaValue::U16(60000));
        assert_eq!(get("i16"), &MetaValue::I16(-3));
        assert_eq!(get("u32"), &MetaValue::U32(7));
        assert_eq!(get("i32"), &MetaValue::I32(-7));
        assert_eq!(get("f32"), &MetaValue::F32(0.5));
        assert_eq!(get("bool"), &MetaValue::Bool(true));
        assert_eq!(
            get("strings"),
            &MetaValue::Array(MetaArray::String(vec!["a".into(), "ü".into()]))
        );
        assert_eq!(
            get("nested"),
            &MetaValue::Array(MetaArray::Array(vec![
                MetaArray::I32(vec![1, 2]),
                MetaArray::I32(vec![3])
            ]))
        );
        assert_eq!(get("empty"), &MetaValue::Array(MetaArray::I64(vec![])));
        assert_eq!(get("u64"), &MetaValue::U64(u64::MAX));
        assert_eq!(get("i64"), &MetaValue::I64(i64::MIN));
        assert_eq!(get("f64"), &MetaValue::F64(1e300));
        let w = &p.tensors[0];
        assert_eq!(w.name, "w");
        assert_eq!(w.stored_shape, vec![2, 64]);
        assert_eq!(w.shape, w.stored_shape);
        assert_eq!(w.ggml_type(), Some(GgmlType::Q8_0));
        assert_eq!(w.offsets, (p.data_start, p.data_start + 136));
        assert_eq!(p.tensors[1].offsets.0, p.data_start + 160);
        assert_eq!(p.tensors[1].byte_len(), 12);
    }
}

#[test]
fn candle_reads_the_same_tensors() {
    // candle-core's GGUF reader, an independent oracle for versions 1 to 3.
    for version in 1..=3 {
        let bytes = sample(version).bytes();
        let ours = parse_bytes(&bytes).unwrap();
        let mut cursor = std::io::Cursor::new(bytes);
        let content = candle_core::quantized::gguf_file::Content::read(&mut cursor).unwrap();
        assert_eq!(content.tensor_data_offset, ours.data_start);
        for t in &ours.tensors {
            let info = &content.tensor_infos[&t.name];
            assert_eq!(info.shape.dims(), t.stored_shape.as_slice());
            assert_eq!(info.offset + content.tensor_data_offset, t.offsets.0);
        }
        let arch = content.metadata["general.architecture"]
            .to_string()
            .unwrap();
        assert_eq!(arch, "flux");
    }
}

#[test]
fn alignment_comes_from_general_alignment() {
    let mut g = Gguf::new(3)
        .kv("general.alignment", 4, u32v(64))
        .tensor("a", &[4], 0, 0)
        .tensor("c", &[256], 12, 64)
        .data(208);
    g.align = 64;
    let p = g.parse().unwrap();
    assert_eq!(p.alignment, 64);
    assert_eq!(p.data_start % 64, 0);
    assert_eq!(p.tensors[1].ggml_type(), Some(GgmlType::Q4_K));
    assert_eq!(p.tensors[1].offsets.0, p.data_start + 64);
    g.infos[1].3 = 32;
    assert!(g.error().contains("multiple of the alignment 64"));
}

#[test]
fn orig_shape_restores_the_shape_comfyui_gguf_gives() {
    let mut shape = u32v(5);
    shape.extend(3u64.to_le_bytes());
    [4i32, 4, 8]
        .iter()
        .for_each(|d| shape.extend(d.to_le_bytes()));
    let p = sample(3)
        .kv("comfy.gguf.orig_shape.w", 9, shape)
        .kv("comfy.gguf.orig_shape.gone", 9, {
            let mut v = u32v(5);
            v.extend(1u64.to_le_bytes());
            v.extend(7i32.to_le_bytes());
            v
        })
        .parse()
        .unwrap();
    let w = &p.tensors[0];
    assert_eq!(w.shape, vec![4, 4, 8]);
    assert_eq!(w.stored_shape, vec![2, 64]);
    assert!(w.is_reshaped());
}

fn orig_shape_error(value: Vec<u8>, kind: u32) -> String {
    sample(3).kv("comfy.gguf.orig_shape.w", kind, value).error()
}

#[test]
fn malformed_orig_shapes_are_refused() {
    let e = orig_shape_error(u32v(5), 4);
    assert!(e.contains("orig_shape.w") && e.contains("UINT32"), "{e}");
    let mut v = u32v(4);
    v.extend(1u64.to_le_bytes());
    v.extend(128u32.to_le_bytes());
    let e = orig_shape_error(v, 9);
    assert!(e.contains("ARRAY of UINT32"), "{e}");
    let mut v = u32v(5);
    v.extend(2u64.to_le_bytes());
    v.extend((-2i32).to_le_bytes());
    v.extend((-64i32).to_le_bytes());
    let e = orig_shape_error(v, 9);
    assert!(e.contains("negative"), "{e}");
    let mut v = u32v(5);
    v.extend(2u64.to_le_bytes());
    v.extend(3i32.to_le_bytes());
    v.extend(64i32.to_le_bytes());
    let e = orig_shape_error(v, 9);
    assert!(e.contains("128 elements"), "{e}");
    let mut v = u32v(5);
    v.extend(0u64.to_le_bytes());
    let e = orig_shape_error(v, 9);
    assert!(e.contains("empty array"), "{e}");
}

#[test]
fn refuses_files_that_are_not_gguf_or_not_readable_versions() {
    let b = b"GGUX\x03\0\0\0".to_vec();
    assert!(parse_bytes(&b).unwrap_err().contains("`GGUF`"));
    let e = Gguf::new(4).error();
    assert!(e.contains("version 4") && e.contains("1 to 3"), "{e}");
    let mut b = sample(3).bytes();
    b[4..8].copy_from_slice(&3u32.to_be_bytes());
    let e = parse_bytes(&b).unwrap_err();
    assert!(e.contains("big-endian"), "{e}");
}

#[test]
fn every_truncation_is_an_error_never_a_panic() {
    let b = sample(3).bytes();
    for cut in 0..b.len() {
        let e = parse_bytes(&b[..cut]).unwrap_err();
        assert!(
            e.contains("truncated") || e.contains("`GGUF`") || e.contains("corrupt"),
            "cut at {cut}: {e}"
        );
    }
    let e = parse_bytes(&b[..b.len() - 1]).unwrap_err();
    assert!(
        e.contains("tensor `b`") && e.contains("past the end"),
        "{e}"
    );
}

#[test]
fn claimed_counts_and_lengths_beyond_the_file_are_refused_before_allocating() {
    let mut b = sample(3).bytes();
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    let e = parse_bytes(&b).unwrap_err();
    assert!(e.contains("18446744073709551615 tensors"), "{e}");
    let e = Gguf::new(3)
        .kv("s", 8, u64::MAX.to_le_bytes().to_vec())
        .error();
    assert!(e.contains("string of 18446744073709551615 bytes"), "{e}");
    let mut arr = u32v(6);
    arr.extend((1u64 << 62).to_le_bytes());
    let e = Gguf::new(3).kv("a", 9, arr).error();
    assert!(e.contains("array of 4611686018427387904 FLOAT32"), "{e}");
    let mut arr = u32v(9);
    arr.extend(1_000_000u64.to_le_bytes());
    let e = Gguf::new(3).kv("a", 9, arr).error();
    assert!(e.contains("ARRAY values"), "{e}");
}

#[test]
fn bad_metadata_is_refused_naming_the_key() {
    let e = Gguf::new(3).kv("k", 13, vec![0]).error();
    assert!(
        e.contains("`k`") && e.contains("unknown value type 13"),
        "{e}"
    );
    let e = Gguf::new(3).kv("k", 7, vec![2]).error();
    assert!(e.contains("`k`") && e.contains("bool byte 2"), "{e}");
    let mut s = 2u64.to_le_bytes().to_vec();
    s.extend([0xC3, 0x28]);
    let e = Gguf::new(3).kv("k", 8, s).error();
    assert!(e.contains("`k`") && e.contains("not UTF-8"), "{e}");
    let e = Gguf::new(3).kv("k", 0, vec![1]).kv("k", 0, vec![2]).error();
    assert!(e.contains("`k` appears twice"), "{e}");
    let mut deep = Vec::new();
    for _ in 0..9 {
        deep.extend(u32v(9));
        deep.extend(1u64.to_le_bytes());
    }
    deep.extend(u32v(0));
    deep.extend(0u64.to_le_bytes());
    let e = Gguf::new(3).kv("k", 9, deep).error();
    assert!(e.contains("more than 8 deep"), "{e}");
    let e = sample(3).kv("general.alignment", 4, u32v(48)).error();
    assert!(e.contains("48") && e.contains("power of two"), "{e}");
    let e = sample(3)
        .kv("general.alignment", 10, 64u64.to_le_bytes().to_vec())
        .error();
    assert!(e.contains("UINT64, not a UINT32"), "{e}");
}

#[test]
fn bad_tensor_infos_are_refused_naming_the_tensor() {
    let e = sample(3).tensor("w", &[32], 0, 192).data(400).error();
    assert!(e.contains("`w` appears twice"), "{e}");
    let e = Gguf::new(3).tensor("x", &[1; 9], 0, 0).data(4).error();
    assert!(e.contains("`x`") && e.contains("9 dimensions"), "{e}");
    let e = Gguf::new(3)
        .tensor("x", &[1 << 40, 1 << 40], 0, 0)
        .data(4)
        .error();
    assert!(e.contains("`x`") && e.contains("overflows"), "{e}");
    let e = Gguf::new(3).tensor("x", &[32], 99, 0).data(64).error();
    assert!(e.contains("`x`") && e.contains("type number 99"), "{e}");
    let e = Gguf::new(3).tensor("x", &[32], 4, 0).data(64).error();
    assert!(e.contains("`x`") && e.contains("Q4_2"), "{e}");
    let e = Gguf::new(3).tensor("x", &[100], 8, 0).data(128).error();
    assert!(
        e.contains("`x`") && e.contains("rows of 100") && e.contains("32-value"),
        "{e}"
    );
    let e = Gguf::new(3).tensor("x", &[8], 0, 16).data(64).error();
    assert!(
        e.contains("`x`") && e.contains("multiple of the alignment 32"),
        "{e}"
    );
    let e = Gguf::new(3).tensor("x", &[64], 0, 0).data(200).error();
    assert!(e.contains("`x`") && e.contains("past the end"), "{e}");
    let e = Gguf::new(3)
        .tensor("x", &[u64::MAX / 2], 0, 0)
        .data(64)
        .error();
    assert!(e.contains("`x`") && e.contains("overflows"), "{e}");
    let e = Gguf::new(3)
        .tensor("x", &[1], 0, u64::MAX - 31)
        .data(64)
        .error();
    assert!(e.contains("`x`") && e.contains("past the end"), "{e}");
    let e = Gguf::new(3)
        .tensor("a", &[16], 0, 0)
        .tensor("b", &[8], 0, 32)
        .data(96)
        .error();
    assert!(e.contains("`a` and `b` overlap"), "{e}");
}

/// A name as long as the header allows is quoted clipped: the message stays one short line.
#[test]
fn long_names_are_clipped_in_messages() {
    let long = "n".repeat(100_000);
    let clip = format!("`{}… (100000 bytes)`", "n".repeat(200));
    let e = Gguf::new(3)
        .tensor(&long, &[32], 0, 0)
        .tensor(&long, &[32], 0, 64)
        .data(128)
        .error();
    assert!(e.contains(&format!("tensor {clip} appears twice")), "{e}");
    assert!(e.len() < 400, "{} bytes", e.len());
    let e = Gguf::new(3).tensor(&long, &[64], 0, 0).data(32).error();
    assert!(e.contains(&clip) && e.len() < 600, "{e}");
    let e = Gguf::new(3)
        .kv(&long, 4, u32v(1))
        .kv(&long, 4, u32v(1))
        .error();
    assert!(
        e.contains(&format!("metadata key {clip} appears twice")),
        "{e}"
    );
    let p = Gguf::new(3)
        .tensor(&long, &[256], 23, 0)
        .data(160)
        .parse()
        .unwrap();
    let e = p.tensors[0].layout().unwrap_err().to_string();
    assert!(e.contains(&clip) && e.len() < 1000, "{e}");
}

#[test]
fn undecodable_types_are_listed_and_refused_by_name_when_decoded() {
    // IQ4_XS (23): ggml sizes it (136 bytes per 256), this crate does not decode it.
    let p = Gguf::new(3)
        .tensor("q", &[256], 23, 0)
        .data(160)
        .parse()
        .unwrap();
    let t = &p.tensors[0];
    assert_eq!(
        (t.type_name(), t.byte_len(), t.ggml_type()),
        ("IQ4_XS", 136, None)
    );
    let e = t.layout().unwrap_err().to_string();
    assert!(
        e.contains("`q`") && e.contains("IQ4_XS") && e.contains("Q4_K"),
        "{e}"
    );
}

#[test]
fn corrupted_files_give_errors_not_panics() {
    let good = {
        let mut shape = u32v(5);
        shape.extend(2u64.to_le_bytes());
        [2i32, 64]
            .iter()
            .for_each(|d| shape.extend(d.to_le_bytes()));
        sample(3).kv("comfy.gguf.orig_shape.w", 9, shape).bytes()
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(23);
    for _ in 0..4000 {
        let mut b = good.clone();
        for _ in 0..rng.random_range(1..4) {
            let i = rng.random_range(0..b.len());
            b[i] = match rng.random_range(0..4) {
                0 => rng.random(),
                1 => 0xFF,
                2 => 0,
                _ => b[i] ^ (1 << rng.random_range(0..8)),
            };
        }
        let cut = if rng.random_bool(0.2) {
            rng.random_range(0..b.len())
        } else {
            b.len()
        };
        let _ = parse_bytes(&b[..cut]);
    }
}
