use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::model::dtype::Dtype;
use crate::read::zip::ZipEntry;
use crate::read::{FileFormat, SafetensorsFile, TensorEntry};

use super::state_dict;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/torch")
        .join(name)
}

/// Values of `bytes` of `dtype`, as f64.
fn values(bytes: &[u8], dtype: Dtype) -> Vec<f64> {
    let w = dtype.bitsize() / 8;
    bytes
        .chunks_exact(w.max(1))
        .map(|c| match dtype {
            Dtype::F32 => f32::from_le_bytes(c.try_into().unwrap()) as f64,
            Dtype::F64 => f64::from_le_bytes(c.try_into().unwrap()),
            Dtype::F16 => half::f16::from_le_bytes(c.try_into().unwrap()).to_f64(),
            Dtype::BF16 => half::bf16::from_le_bytes(c.try_into().unwrap()).to_f64(),
            Dtype::F8_E4M3 => float8::F8E4M3::from_bits(c[0]).to_f64(),
            Dtype::I64 => i64::from_le_bytes(c.try_into().unwrap()) as f64,
            Dtype::I32 => i32::from_le_bytes(c.try_into().unwrap()) as f64,
            Dtype::U8 | Dtype::BOOL => c[0] as f64,
            other => panic!("no decoder for {other}"),
        })
        .collect()
}

fn dtype_of(torch: &str) -> Dtype {
    match torch {
        "float32" => Dtype::F32,
        "float64" => Dtype::F64,
        "float16" => Dtype::F16,
        "bfloat16" => Dtype::BF16,
        "float8_e4m3fn" => Dtype::F8_E4M3,
        "int64" => Dtype::I64,
        "int32" => Dtype::I32,
        "uint8" => Dtype::U8,
        "bool" => Dtype::BOOL,
        other => panic!("unexpected dtype {other}"),
    }
}

#[test]
fn every_kind_of_tensor_reads_as_torch_wrote_it() {
    let f = SafetensorsFile::open(&fixture("kinds.pt")).unwrap();
    assert_eq!(f.format(), FileFormat::PyTorch);
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("kinds.json")).unwrap()).unwrap();
    let expected = expected.as_object().unwrap();
    assert_eq!(f.tensors().len(), expected.len());
    for (name, want) in expected {
        let t = f.tensor(name).unwrap_or_else(|| panic!("`{name}` missing"));
        let dtype = dtype_of(want["dtype"].as_str().unwrap());
        assert_eq!(t.dtype, dtype, "{name}");
        let shape: Vec<usize> = want["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t.shape, shape, "{name}");
        let got = values(&f.read_tensor(t).unwrap(), dtype);
        let want: Vec<f64> = want["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        // JSON's decimal floats come back within an f64 ulp: compare f64 tensors that closely,
        // the others exactly at their own precision.
        assert_eq!(got.len(), want.len(), "{name}");
        for (g, w) in got.iter().zip(&want) {
            match dtype {
                Dtype::F64 => assert!((g - w).abs() <= w.abs() * 4.0 * f64::EPSILON, "{name}"),
                _ => assert_eq!(*g as f32, *w as f32, "{name}"),
            }
        }
    }
    // The view lies inside its base's storage, 8 elements in.
    let (view, big) = (f.tensor("view").unwrap(), f.tensor("big").unwrap());
    assert_eq!(view.offsets.0, big.offsets.0 + 8 * 4);
    let mut left = f.left_out().to_vec();
    left.sort();
    assert_eq!(left, ["blob", "lr", "optimizer_name", "step", "tags"]);
}

#[test]
fn a_lightning_checkpoint_yields_its_state_dict() {
    let f = SafetensorsFile::open(&fixture("sd15.ckpt")).unwrap();
    let st = SafetensorsFile::open(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/diffusers/sd15/checkpoint.safetensors"),
    )
    .unwrap();
    assert_eq!(f.tensors().len(), st.tensors().len());
    for t in st.tensors() {
        let c = f
            .tensor(&t.name)
            .unwrap_or_else(|| panic!("`{}` missing", t.name));
        assert_eq!((c.dtype, &c.shape), (t.dtype, &t.shape), "{}", t.name);
        assert_eq!(
            f.read_tensor(c).unwrap(),
            st.read_tensor(t).unwrap(),
            "{}",
            t.name
        );
    }
    let mut left = f.left_out().to_vec();
    left.sort();
    assert_eq!(left, ["epoch", "global_step"]);
    assert!(f.header_len() > 0 && f.raw_header().unwrap().len() as u64 == f.header_len());
}

fn open_err(path: &Path) -> String {
    match SafetensorsFile::open(path) {
        Ok(_) => panic!("{} opened", path.display()),
        Err(e) => {
            assert!(matches!(e, Error::InvalidCheckpoint { .. }), "{e:?}");
            e.to_string()
        }
    }
}

#[test]
fn hostile_pickles_are_refused_by_name_and_nothing_runs() {
    let cwd = std::env::current_dir().unwrap();
    for (file, global) in [
        ("hostile_system.ckpt", "posix.system"),
        ("hostile_exec.ckpt", "builtins.exec"),
        ("hostile_popen.ckpt", "subprocess.Popen"),
        ("hostile_class.ckpt", "__main__.Unknown"),
    ] {
        let err = open_err(&fixture(file));
        assert!(err.contains(&format!("refused global `{global}`")), "{err}");
        assert!(err.contains("nothing was run"), "{err}");
    }
    assert!(!cwd.join("pwned").exists());
}

#[test]
fn unread_forms_are_named() {
    let err = open_err(&fixture("strided.pt"));
    assert!(err.contains("strided view") && err.contains("`w`"), "{err}");
    let err = open_err(&fixture("legacy.pt"));
    assert!(err.contains("legacy (pre-1.6)"), "{err}");
}

fn copy_with(dir: &Path, name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = std::fs::read(fixture("kinds.pt")).unwrap();
    edit(&mut bytes);
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn replace_all(bytes: &mut [u8], from: &[u8], to: &[u8]) {
    let mut i = 0;
    while i + from.len() <= bytes.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
        }
        i += 1;
    }
}

#[test]
fn damaged_archives_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let len = std::fs::metadata(fixture("kinds.pt")).unwrap().len() as usize;
    // Cut anywhere: the end record, the directory, or data the directory points at is missing.
    for cut in [10, 100, len / 2, len - 30, len - 1] {
        let p = copy_with(dir.path(), "cut.pt", |b| b.truncate(cut));
        let err = open_err(&p);
        assert!(
            err.contains("truncated") || err.contains("corrupt"),
            "{cut}: {err}"
        );
    }
    // A storage renamed away from what the pickle refers to.
    let p = copy_with(dir.path(), "renamed.pt", |b| {
        replace_all(b, b"kinds/data/12", b"kinds/data/zz")
    });
    let err = open_err(&p);
    assert!(err.contains("`kinds/data/12` is missing"), "{err}");
    // A storage whose data is compressed (method 8), which PyTorch never writes.
    let p = copy_with(dir.path(), "deflated.pt", |b| {
        let mut i = 0;
        while i + 4 <= b.len() {
            if &b[i..i + 4] == b"PK\x01\x02" {
                b[i + 10] = 8;
            }
            i += 1;
        }
    });
    let err = open_err(&p);
    assert!(err.contains("compressed"), "{err}");
    // A directory claiming more entries than it can hold.
    let p = copy_with(dir.path(), "liar.pt", |b| {
        let at = b.windows(4).rposition(|w| w == b"PK\x05\x06").unwrap();
        b[at + 10..at + 12].copy_from_slice(&0xfff0u16.to_le_bytes());
    });
    let err = open_err(&p);
    assert!(err.contains("claims"), "{err}");
}

/// A pickle's BINUNICODE of `s`.
fn text(s: &str) -> Vec<u8> {
    [&[b'X'][..], &(s.len() as u32).to_le_bytes(), s.as_bytes()].concat()
}

/// The reader's error for the `data.pkl` `data`, in an archive with no storages.
fn pickle_err(data: &[u8]) -> String {
    match crate::read::torch_state_dict(data) {
        Ok(_) => panic!("read"),
        Err(e) => e,
    }
}

#[test]
fn names_from_the_file_are_clipped_in_messages() {
    const BIG: usize = 1 << 20;
    // A state-dict key of a MiB of bytes (it was shown as `Bytes([65, 65, ...])`, 4 MB).
    let key = [
        &b"\x80\x03}(B"[..],
        &(BIG as u32).to_le_bytes(),
        &vec![b'A'; BIG],
        b"K\x01u.",
    ]
    .concat();
    let err = pickle_err(&key);
    assert!(err.contains("not a name but the bytes b\"AAA"), "{err}");
    assert!(
        err.contains(&format!("({BIG} bytes)")) && err.len() < 300,
        "{err}"
    );
    // A GLOBAL whose module name is a MiB long.
    let global = [&b"\x80\x02c"[..], &vec![b'm'; BIG], b"\nsystem\n."].concat();
    let err = pickle_err(&global);
    assert!(err.contains("refused global `mmm"), "{err}");
    assert!(
        err.contains(&format!("({} bytes)", BIG + 7)) && err.len() < 600,
        "{err}"
    );
    // A tensor name a MiB long, in the tensor's own error.
    let mut name = b"\x80\x02}(".to_vec();
    name.extend(text(&"n".repeat(BIG)));
    name.extend(tensor("FloatStorage", "0"));
    name.extend(b"u.");
    let err = pickle_err(&name);
    assert!(
        err.contains("tensor `nnn") && err.contains("is missing"),
        "{err}"
    );
    assert!(
        err.contains(&format!("({BIG} bytes)")) && err.len() < 600,
        "{err}"
    );
}

/// A pickle's `_rebuild_tensor_v2` of 4 elements of the storage `key` of class `torch.<kind>`.
fn tensor(kind: &str, key: &str) -> Vec<u8> {
    let mut b = b"ctorch._utils\n_rebuild_tensor_v2\n((".to_vec();
    b.extend(text("storage"));
    b.extend(format!("ctorch\n{kind}\n").as_bytes());
    b.extend(text(key));
    b.extend(text("cpu"));
    b.extend(b"K\x04tQK\x00K\x04\x85K\x01\x85\x89ccollections\nOrderedDict\n)RtR");
    b
}

/// The state dict of `data`, in an archive whose storages `0` to `9` hold 16 bytes each.
fn read_pickle(data: &[u8]) -> Result<(Vec<TensorEntry>, Vec<String>), String> {
    let storages: Vec<ZipEntry> = (0..10)
        .map(|i| ZipEntry {
            name: format!("archive/data/{i}"),
            method: 0,
            encrypted: false,
            data_start: 100 * i,
            stored_len: 16,
            len: 16,
        })
        .collect();
    let entries = storages.iter().map(|e| (e.name.as_str(), e)).collect();
    state_dict(data, "archive/", &entries)
}

#[test]
fn the_tensor_helper_builds_what_the_reader_reads() {
    let mut data = b"\x80\x02}(".to_vec();
    data.extend(text("w"));
    data.extend(tensor("FloatStorage", "3"));
    data.extend(b"u.");
    let (tensors, left_out) = read_pickle(&data).unwrap();
    assert_eq!(tensors.len(), 1);
    assert_eq!(
        (
            tensors[0].name.as_str(),
            tensors[0].dtype,
            &tensors[0].shape
        ),
        ("w", Dtype::F32, &vec![4])
    );
    assert_eq!(tensors[0].offsets, (300, 316));
    assert!(left_out.is_empty());
}

/// `{'state_dict': D0}` where `D_k = {'a': D_k+1, 'b': D_k+1}` (one dict, shared through the
/// memo), `depth` levels over the leaf `leaf` (a pickled dict, stored as memo 1000).
fn doubling_dag(depth: u32, leaf: &[u8]) -> Vec<u8> {
    let put = |i: u32| [&[b'r'][..], &i.to_le_bytes()].concat();
    let get = |i: u32| [&[b'j'][..], &i.to_le_bytes()].concat();
    let mut p = b"\x80\x02}(".to_vec();
    p.extend(text("state_dict"));
    p.extend(leaf);
    p.extend(put(1000));
    p.push(b'0');
    for k in 0..depth {
        p.extend(b"}(");
        for key in ["a", "b"] {
            p.extend(text(key));
            p.extend(get(1000 + k));
        }
        p.push(b'u');
        p.extend(put(1001 + k));
        p.push(b'0');
    }
    p.extend(get(1000 + depth));
    p.extend(b"u.");
    p
}

#[test]
fn a_dict_shared_from_several_places_is_refused_at_once() {
    // 2^30 paths through a 1 KB pickle: walked per path, it took all memory.
    let start = std::time::Instant::now();
    let mut with_tensor = b"}(".to_vec();
    with_tensor.extend(text("w"));
    with_tensor.extend(tensor("FloatStorage", "0"));
    with_tensor.push(b'u');
    for leaf in [&b"}(X\x01\x00\x00\x00xK\x01u"[..], &with_tensor] {
        let data = doubling_dag(30, leaf);
        assert!(data.len() < 2000);
        let err = read_pickle(&data).unwrap_err();
        assert!(
            err.contains("reaches one dict from several places (again as `a.a.a.")
                && err.contains(".a.b`)")
                && err.contains("corrupt or hostile"),
            "{err}"
        );
    }
    assert!(start.elapsed().as_secs() < 5, "{:?}", start.elapsed());
    // A tree of the same dicts, none shared, reads.
    let mut tree = b"\x80\x02}(".to_vec();
    for key in ["a", "b"] {
        tree.extend(text(key));
        tree.extend(&with_tensor);
    }
    tree.extend(b"u.");
    let (tensors, _) = read_pickle(&tree).unwrap();
    let names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a.w", "b.w"]);
}

#[test]
fn a_dtype_not_read_is_named_not_refused_as_a_global() {
    for (storage, dtype) in [
        ("ComplexFloatStorage", "complex64"),
        ("QInt8Storage", "qint8"),
    ] {
        let mut data = b"\x80\x02}(".to_vec();
        data.extend(text("z"));
        data.extend(tensor(storage, "0"));
        data.extend(b"u.");
        let err = read_pickle(&data).unwrap_err();
        assert!(
            err.contains(&format!(
                "tensor `z`: it has dtype {dtype} (`torch.{storage}`), which this tool does not read"
            )) && err.contains("drop the tensor or convert it"),
            "{err}"
        );
        assert!(!err.contains("refused global"), "{err}");
    }
    // `_rebuild_tensor_v3` names the dtype as its seventh argument.
    let mut data = b"\x80\x02}(".to_vec();
    data.extend(text("z"));
    data.extend(b"ctorch._utils\n_rebuild_tensor_v3\n((");
    data.extend(text("storage"));
    data.extend(b"ctorch\nUntypedStorage\n");
    data.extend(text("0"));
    data.extend(text("cpu"));
    data.extend(
        b"K\x10tQK\x00K\x02\x85K\x01\x85\x89ccollections\nOrderedDict\n)Rctorch\ncomplex64\ntRu.",
    );
    let err = read_pickle(&data).unwrap_err();
    assert!(
        err.contains("it has dtype complex64 (`torch.complex64`)"),
        "{err}"
    );
    // Another global is still refused as one.
    let mut data = b"\x80\x02}(".to_vec();
    data.extend(text("z"));
    data.extend(tensor("EvilStorage", "0"));
    data.extend(b"u.");
    assert!(read_pickle(&data)
        .unwrap_err()
        .contains("refused global `torch.EvilStorage`"));
}

/// A numpy float64 scalar as numpy pickles it at protocol 2: `scalar(dtype('f8'), bytes)`.
fn numpy_scalar(module: &str) -> Vec<u8> {
    let mut b = format!("c{module}\nscalar\ncnumpy\ndtype\n").into_bytes();
    b.extend(text("f8"));
    b.extend(b"\x89\x88\x87R(K\x03");
    b.extend(text("<"));
    b.extend(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tbc_codecs\nencode\n");
    b.extend(text("\u{b8}\u{1e}\u{85}\u{eb}Q\u{b8}\u{be}?"));
    b.extend(text("latin1"));
    b.extend(b"\x86R\x86R");
    b
}

#[test]
fn a_lightning_checkpoint_with_numpy_metadata_reads() {
    // {'state_dict': {'w': tensor}, 'global_step': 470000, 'callbacks': {'ModelCheckpoint':
    // {'best_model_score': np.float64(0.12), 'monitor': None}}, 'callback': ModelCheckpoint()},
    // as torch.save wrote it (the numpy 2 module name, then numpy 1's).
    for module in ["numpy._core.multiarray", "numpy.core.multiarray"] {
        let mut data = b"\x80\x02}(".to_vec();
        data.extend(text("state_dict"));
        data.extend(b"}(");
        data.extend(text("w"));
        data.extend(tensor("FloatStorage", "0"));
        data.extend(b"u");
        data.extend(text("global_step"));
        data.extend(b"J\xf0+\x07\x00");
        data.extend(text("callbacks"));
        data.extend(b"}(");
        data.extend(text("ModelCheckpoint"));
        data.extend(b"}(");
        data.extend(text("best_model_score"));
        data.extend(numpy_scalar(module));
        data.extend(text("monitor"));
        data.extend(b"Nuu");
        data.extend(text("callback"));
        data.extend(b"cpytorch_lightning.callbacks.model_checkpoint\nModelCheckpoint\n)\x81}(");
        data.extend(text("monitor"));
        data.extend(b"Nubu.");
        let (tensors, mut left_out) = read_pickle(&data).unwrap();
        assert_eq!(tensors.len(), 1);
        assert_eq!(tensors[0].name, "w");
        left_out.sort();
        assert_eq!(left_out, ["callback", "callbacks", "global_step"]);
    }
}

#[test]
fn lightning_globals_build_no_tensor_and_no_state_dict() {
    let model_checkpoint = b"cpytorch_lightning.callbacks.model_checkpoint\nModelCheckpoint\n)\x81";
    // The saved object, or its `state_dict`, as a callback object: no state dict.
    let root = [&b"\x80\x02"[..], model_checkpoint, b"."].concat();
    assert!(read_pickle(&root)
        .unwrap_err()
        .contains("not a dict of tensors"));
    let mut nested = b"\x80\x02}(".to_vec();
    nested.extend(text("state_dict"));
    nested.extend(model_checkpoint);
    nested.extend(b"u.");
    assert!(read_pickle(&nested)
        .unwrap_err()
        .contains("holds no tensors"));
    // A numpy scalar as a tensor's offset, or numpy's dtype as its storage: refused.
    let scalar = numpy_scalar("numpy.core.multiarray");
    let mut offset = b"\x80\x02}(".to_vec();
    offset.extend(text("w"));
    let t = tensor("FloatStorage", "0");
    let at = t.windows(4).position(|w| w == b"tQK\x00").unwrap() + 2;
    offset.extend(&t[..at]);
    offset.extend(&scalar);
    offset.extend(&t[at + 2..]);
    offset.extend(b"u.");
    let err = read_pickle(&offset).unwrap_err();
    assert!(
        err.contains("tensor `w`: its storage offset is not a count"),
        "{err}"
    );
    let t = tensor("FloatStorage", "0");
    let at = t.windows(7).position(|w| w == b"ctorch\n").unwrap();
    let end = at + b"ctorch\nFloatStorage\n".len();
    let mut kind = b"\x80\x02}(".to_vec();
    kind.extend(text("w"));
    kind.extend([&t[..at], b"cnumpy\ndtype\n", &t[end..]].concat());
    kind.extend(b"u.");
    let err = read_pickle(&kind).unwrap_err();
    assert!(
        err.contains("tensor `w`: its storage has a dtype this reader does not know"),
        "{err}"
    );
}
