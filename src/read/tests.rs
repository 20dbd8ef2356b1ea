use std::io::Write;
use std::os::unix::fs::FileExt;

use super::*;

/// A file with `header` as its JSON and `data` after it.
fn file_with(header: &str, data: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
    f.write_all(header.as_bytes()).unwrap();
    f.write_all(data).unwrap();
    f
}

fn open_err(header: &str, data: &[u8]) -> String {
    let f = file_with(header, data);
    SafetensorsFile::open(f.path()).unwrap_err().to_string()
}

#[test]
fn reads_what_safetensors_writes() {
    let a: Vec<u8> = (0..24).collect();
    let b = vec![7u8; 6];
    let views = [
        (
            "a",
            safetensors::tensor::TensorView::new(Dtype::F32, vec![2, 3], &a).unwrap(),
        ),
        (
            "b",
            safetensors::tensor::TensorView::new(Dtype::F4, vec![3, 4], &b).unwrap(),
        ),
    ];
    let meta = std::collections::HashMap::from([("k".to_string(), "v".to_string())]);
    let bytes = safetensors::serialize(views, Some(meta)).unwrap();
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&bytes).unwrap();
    let st = SafetensorsFile::open(f.path()).unwrap();
    assert_eq!(st.metadata()["k"], "v");
    let names: Vec<&str> = st.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a", "b"], "data-section order");
    let t = st.tensor("a").unwrap();
    assert_eq!(
        (t.dtype, t.shape.clone(), t.byte_len()),
        (Dtype::F32, vec![2, 3], 24)
    );
    assert_eq!(st.read_tensor(t).unwrap(), a);
    assert_eq!(st.read_tensor(st.tensor("b").unwrap()).unwrap(), b);
    let mut part = [0u8; 4];
    st.read_at(&mut part, 4).unwrap();
    assert_eq!(part, [4, 5, 6, 7]);
    st.check_unchanged().unwrap();
    assert_eq!(st.file_len(), bytes.len() as u64);
}

#[test]
fn every_kind_of_bad_header_is_a_clear_error() {
    let ok = r#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    assert!(SafetensorsFile::open(file_with(ok, &[0; 8]).path()).is_ok());
    for (header, data, want) in [
        ("{", &[][..], "not valid JSON"),
        ("[1,2]", &[], "not valid JSON"),
        (
            r#"{"t":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}}"#,
            &[0; 8][..],
            "unknown dtype `F33`",
        ),
        (
            r#"{"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
            &[0; 8],
            "span 8 bytes",
        ),
        (
            r#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            &[0; 4],
            "truncated",
        ),
        (
            r#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            &[0; 12],
            "extra bytes",
        ),
        (
            r#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            &[0; 12],
            "gap or an overlap",
        ),
        (
            r#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#,
            &[0; 8],
            "offsets [8, 0]",
        ),
        (
            r#"{"t":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}"#,
            &[0; 2],
            "not a whole number of bytes",
        ),
        (
            r#"{"t":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}}"#,
            &[0; 8],
            "too many elements",
        ),
        (
            r#"{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"t":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#,
            &[0; 16],
            "appears twice",
        ),
        (r#"{"__metadata__":{"k":1}}"#, &[], "invalid tensors"),
        (
            r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}"#,
            &[0; 3],
            "gap or an overlap",
        ),
    ] {
        let err = open_err(header, data);
        assert!(err.contains(want), "{header}: {err}");
    }
}

#[test]
fn lengths_the_file_merely_claims_are_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short");
    std::fs::write(&short, [1, 2, 3]).unwrap();
    let err = SafetensorsFile::open(&short).unwrap_err().to_string();
    assert!(err.contains("shorter than the 8-byte"), "{err}");
    // A header that claims 99 MB in a file of 16 bytes: refused by comparing with the file size.
    let liar = dir.path().join("liar");
    let mut bytes = 99_000_000u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}      ");
    std::fs::write(&liar, &bytes).unwrap();
    let err = SafetensorsFile::open(&liar).unwrap_err().to_string();
    assert!(err.contains("truncated or incomplete"), "{err}");
    let huge = dir.path().join("huge");
    std::fs::write(&huge, (MAX_HEADER_LEN + 1).to_le_bytes()).unwrap();
    assert!(matches!(
        SafetensorsFile::open(&huge),
        Err(Error::HeaderTooLarge { .. })
    ));
    let err = SafetensorsFile::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("is a folder"), "{err}");
}

#[test]
fn truncation_and_changes_while_reading_are_errors() {
    let ok = r#"{"t":{"dtype":"U8","shape":[4096],"data_offsets":[0,4096]}}"#;
    let f = file_with(ok, &[5; 4096]);
    let st = SafetensorsFile::open(f.path()).unwrap();
    let t = st.tensor("t").unwrap().clone();
    std::fs::OpenOptions::new()
        .write(true)
        .open(f.path())
        .unwrap()
        .set_len(100)
        .unwrap();
    let err = st.read_tensor(&t).unwrap_err().to_string();
    assert!(err.contains("truncated or replaced"), "{err}");
    assert!(st.check_unchanged().is_err());

    // Same size, new contents: the modification time tells (set explicitly, as a later write
    // would, so the test does not depend on the clock's granularity).
    let g = file_with(ok, &[5; 4096]);
    let st = SafetensorsFile::open(g.path()).unwrap();
    let w = std::fs::OpenOptions::new()
        .write(true)
        .open(g.path())
        .unwrap();
    w.write_all_at(&[0; 8], 100).unwrap();
    w.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1000))
        .unwrap();
    drop(w);
    let err = st.check_unchanged().unwrap_err().to_string();
    assert!(err.contains("modified or replaced"), "{err}");
    // Replaced by another file under the same name.
    let h = file_with(ok, &[5; 4096]);
    let st = SafetensorsFile::open(h.path()).unwrap();
    let other = file_with(ok, &[6; 4096]);
    std::fs::rename(other.path(), h.path()).unwrap();
    assert!(st.check_unchanged().is_err());
}

#[test]
fn pickles_of_every_protocol_are_named_not_read_as_safetensors() {
    const MAGIC: [u8; 12] = [
        0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
    ];
    let frame = |proto: u8| {
        let mut b = vec![0x80, proto, 0x95];
        b.extend_from_slice(&40u64.to_le_bytes());
        b
    };
    let with_magic = |mut b: Vec<u8>| {
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(b".");
        b
    };
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            with_magic(vec![0x80, 0x02]),
            "legacy (pre-1.6) pickle format (protocol 2)",
        ),
        (
            with_magic(vec![0x80, 0x03]),
            "legacy (pre-1.6) pickle format (protocol 3)",
        ),
        (
            with_magic(frame(4)),
            "legacy (pre-1.6) pickle format (protocol 4)",
        ),
        (
            with_magic(frame(5)),
            "legacy (pre-1.6) pickle format (protocol 5)",
        ),
        (
            b"\x80\x02}q\x00.".to_vec(),
            "bare Python pickle (protocol 2)",
        ),
        (
            [frame(4), b"}\x94.".to_vec()].concat(),
            "bare Python pickle (protocol 4)",
        ),
    ];
    for (bytes, want) in cases {
        let path = dir.path().join("f.pt");
        std::fs::write(&path, &bytes).unwrap();
        let err = SafetensorsFile::open(&path).unwrap_err().to_string();
        assert!(err.contains(want), "{bytes:x?}: {err}");
        assert!(
            !err.contains("  "),
            "a literal's line break left spaces: {err}"
        );
    }
    // A safetensors header of 640 bytes has the same first two bytes (0x280 = 80 02 ...).
    let ok = format!(
        "{:<640}",
        r#"{"t":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}"#
    );
    let f = file_with(&ok, &[1, 2]);
    assert_eq!(std::fs::read(f.path()).unwrap()[..2], [0x80, 0x02]);
    assert_eq!(SafetensorsFile::open(f.path()).unwrap().tensors().len(), 1);
}

#[test]
fn the_tar_message_reads_as_one_sentence() {
    let mut bytes = vec![0u8; 512];
    bytes[257..262].copy_from_slice(b"ustar");
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), &bytes).unwrap();
    let err = SafetensorsFile::open(f.path()).unwrap_err().to_string();
    assert!(err.contains("tar archive"), "{err}");
    assert!(
        !err.contains("  "),
        "a literal's line break left spaces: {err}"
    );
}

/// A FIFO blocks `open` until a writer comes and a device has no size: both are refused from
/// their metadata, before anything is opened (this test would hang otherwise).
#[test]
fn fifos_and_devices_are_refused_before_opening() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a NUL-terminated path that lives across the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    for path in [fifo.as_path(), Path::new("/dev/null")] {
        for err in [
            SafetensorsFile::open(path).err().unwrap(),
            gguf::GgufFile::open(path).err().unwrap(),
        ] {
            assert!(matches!(err, Error::InvalidInput(_)), "{err}");
            assert!(err.to_string().contains("not a regular file"), "{err}");
        }
    }
}
