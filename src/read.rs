//! The crate's one reader of model files downloaded from anywhere: safetensors files,
//! PyTorch checkpoints (`.ckpt`, `.pt`, `.pth`, `.bin`, read by [`torch`] without running their
//! pickle) and GGUF files ([`gguf`]: their blocks, each tensor's ggml type beside it), told
//! apart by their first bytes. All become the same list of tensors, each a byte range of the
//! file read where it lies.
//!
//! [`SafetensorsFile::open`] reads and validates the header before anything else: the 8-byte
//! length against the file's real size and the 100,000,000-byte limit (so a file cannot make us
//! allocate what it merely claims), the JSON against the format (known dtypes, shapes whose
//! element counts fit, byte lengths that match dtype × shape — the packed F4/F6 rule included —
//! offsets that tile the data section exactly, no duplicate names). Tensor bytes are then read
//! with `pread` where they lie ([`SafetensorsFile::read_at`]), never through a memory map, so a
//! file truncated while it is read gives an error, not a `SIGBUS`; and
//! [`SafetensorsFile::check_unchanged`] tells whether the file was modified or replaced since it
//! was opened.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::error::{Error, IoContext, Result};
use crate::model::dtype::{self, Dtype};
pub(crate) use gguf::{gguf_header, is_gguf};

/// Largest header readers accept (safetensors' `MAX_HEADER_SIZE`): the reader refuses a longer
/// one, and the plan never writes one.
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// One tensor of a safetensors file, as its header describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    /// The tensor's name.
    pub name: String,
    /// Its dtype.
    pub dtype: Dtype,
    /// Its shape.
    pub shape: Vec<usize>,
    /// `[begin, end)` in the data section.
    pub offsets: (u64, u64),
}

impl TensorEntry {
    /// Bytes of the tensor.
    pub fn byte_len(&self) -> u64 {
        self.offsets.1 - self.offsets.0
    }
}

/// What identifies the file's contents: if any of these change, the bytes may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Whether `file`, opened as `path`, is still the file this stamp was taken of.
    fn check(&self, file: &File, path: &Path) -> Result<()> {
        let open = file
            .metadata()
            .ctx(|| format!("cannot inspect {}", path.display()))?;
        let named = std::fs::metadata(path)
            .ctx(|| format!("{} disappeared during the job", path.display()))?;
        if Stamp::of(&open) != *self || Stamp::of(&named) != *self {
            return Err(Error::InvalidCheckpoint {
                path: path.to_path_buf(),
                reason: "it was modified or replaced while the job read it; nothing was written \
                         from it: run the job again once the file is complete"
                    .into(),
            });
        }
        Ok(())
    }
}

/// Opens an input file for reading, refusing anything but a regular file or a folder (which the
/// caller reports) *before* opening it: opening a FIFO blocks until a writer comes, and a device
/// such as `/dev/zero` has no size, so both would otherwise hang or be called "0 bytes long".
///
/// # Errors
/// [`Error::Io`] naming the path when it is missing or cannot be opened;
/// [`Error::InvalidInput`] when it is a FIFO, a socket or a device.
pub(crate) fn open_input(path: &Path) -> Result<File> {
    let meta = std::fs::metadata(path).ctx(|| format!("cannot open {}", path.display()))?;
    if !(meta.is_file() || meta.is_dir()) {
        return Err(Error::InvalidInput(format!(
            "{} is not a regular file (a FIFO, socket or device); give a checkpoint file",
            path.display()
        )));
    }
    File::open(path).ctx(|| format!("cannot open {}", path.display()))
}

/// What kind of file an input is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// A `.safetensors` file.
    Safetensors,
    /// A PyTorch zip checkpoint (`torch.save`: `.ckpt`, `.pt`, `.pth`, `.bin`), read without
    /// running its pickle.
    PyTorch,
    /// A GGUF file (llama.cpp's container; ComfyUI-GGUF's models), read by [`gguf::GgufFile`].
    Gguf,
}

impl FileFormat {
    /// A short name, for scripts (`inspect --json`).
    pub fn name(self) -> &'static str {
        match self {
            FileFormat::Safetensors => "safetensors",
            FileFormat::PyTorch => "pytorch",
            FileFormat::Gguf => "gguf",
        }
    }
}

impl fmt::Display for FileFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileFormat::Safetensors => "safetensors",
            FileFormat::PyTorch => "PyTorch checkpoint (zip + pickle, read without running it)",
            FileFormat::Gguf => "GGUF",
        })
    }
}

impl serde::Serialize for FileFormat {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// An open, validated input file: a safetensors file or a PyTorch checkpoint (see the module
/// docs). Tensor offsets count from its data section (a safetensors file's bytes after the
/// header; a PyTorch file's first byte).
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    file: File,
    stamp: Stamp,
    format: FileFormat,
    /// Where the bytes that describe the file lie: the length prefix and JSON header of a
    /// safetensors file, the pickle of a PyTorch one.
    description: (u64, u64),
    /// Where the data section starts.
    data_start: u64,
    metadata: BTreeMap<String, String>,
    /// In data-section order.
    tensors: Vec<TensorEntry>,
    index: HashMap<String, usize>,
    /// Entries of a PyTorch checkpoint that are not tensors of its state dict.
    left_out: Vec<String>,
    /// A GGUF file's tensor types, logical shapes and architecture.
    gguf: Option<Box<gguf::GgufSide>>,
}

impl SafetensorsFile {
    /// Opens `path` and validates its header (see the module docs).
    ///
    /// # Errors
    /// - [`Error::Io`] naming the path when it is missing, a folder, or unreadable;
    /// - [`Error::InvalidInput`] for a FIFO, socket or device (refused before opening it);
    /// - [`Error::HeaderTooLarge`] when the header length exceeds 100,000,000 bytes;
    /// - [`Error::InvalidCheckpoint`] saying what is wrong: shorter than 8 bytes, a header longer
    ///   than the file, not UTF-8 JSON, an unknown dtype, a size that does not match dtype × shape,
    ///   gaps or overlaps between tensors, a duplicate name, data missing at the end (truncated)
    ///   or trailing bytes.
    pub fn open(path: &Path) -> Result<Self> {
        let file = open_input(path)?;
        let meta = file
            .metadata()
            .ctx(|| format!("cannot read the size of {}", path.display()))?;
        if meta.is_dir() {
            return Err(Error::io(
                format!("{} is a folder, not a safetensors file", path.display()),
                std::io::Error::from(std::io::ErrorKind::IsADirectory),
            ));
        }
        let file_len = meta.len();
        let bad = |reason: String| Error::InvalidCheckpoint {
            path: path.to_path_buf(),
            reason,
        };
        let mut head = [0u8; 32];
        let head_len = file_len.min(32) as usize;
        file.read_exact_at(&mut head[..head_len], 0)
            .ctx(|| format!("cannot read {}", path.display()))?;
        if head[..head_len].starts_with(b"GGUF") {
            return Self::open_gguf(path, file, &meta);
        }
        if let Some(why) = foreign::foreign_format(&file, &head[..head_len], file_len) {
            return Err(bad(why));
        }
        if zip::is_zip(&head[..head_len]) {
            return Self::open_torch(path, file, &meta);
        }
        let mut prefix = [0u8; 8];
        if file_len < 8 {
            return Err(bad(format!(
                "the file is {file_len} bytes long, shorter than the 8-byte header length of every safetensors file; it is empty or truncated"
            )));
        }
        file.read_exact_at(&mut prefix, 0)
            .ctx(|| format!("cannot read {}", path.display()))?;
        let header_len = u64::from_le_bytes(prefix);
        if header_len > MAX_HEADER_LEN {
            return Err(Error::HeaderTooLarge {
                size: header_len,
                limit: MAX_HEADER_LEN,
            });
        }
        if header_len > file_len - 8 {
            return Err(bad(format!(
                "the header claims {header_len} bytes but only {} follow the length prefix: the file is truncated or incomplete (an interrupted download or copy?); fetch or save it again",
                file_len - 8
            )));
        }
        // Bounded by the file's real size (checked above), not by what the file claims.
        let mut header = vec![0u8; header_len as usize];
        file.read_exact_at(&mut header, 8)
            .ctx(|| format!("cannot read the header of {}", path.display()))?;
        let parsed = parse_header(&header).map_err(bad)?;
        let data_len = file_len - 8 - header_len;
        let tensors = validate(parsed.tensors, data_len).map_err(bad)?;
        let index = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            file,
            stamp: Stamp::of(&meta),
            format: FileFormat::Safetensors,
            description: (0, 8 + header_len),
            data_start: 8 + header_len,
            metadata: parsed.metadata,
            tensors,
            index,
            left_out: Vec::new(),
            gguf: None,
        })
    }

    /// Opens a PyTorch zip checkpoint: its tensors, in file order, as ranges of the file.
    fn open_torch(path: &Path, file: File, meta: &std::fs::Metadata) -> Result<Self> {
        let read = torch::read(&file, meta.len()).map_err(|reason| Error::InvalidCheckpoint {
            path: path.to_path_buf(),
            reason: format!("it is a PyTorch checkpoint (a zip archive) and {reason}"),
        })?;
        let mut tensors = read.tensors;
        tensors.sort_by_key(|t| (t.offsets, t.name.clone()));
        let mut left_out = read.left_out;
        left_out.sort();
        let mut index = HashMap::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            if index.insert(t.name.clone(), i).is_some() {
                return Err(Error::InvalidCheckpoint {
                    path: path.to_path_buf(),
                    reason: format!(
                        "`{}` appears twice in its state dict",
                        pickle::clipped(&t.name)
                    ),
                });
            }
        }
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            file,
            stamp: Stamp::of(meta),
            format: FileFormat::PyTorch,
            description: read.pickle,
            data_start: 0,
            metadata: BTreeMap::new(),
            tensors,
            index,
            left_out,
            gguf: None,
        })
    }

    /// What kind of file it is.
    pub fn format(&self) -> FileFormat {
        self.format
    }

    /// Entries of a PyTorch checkpoint that are not tensors of its state dict (an epoch, a
    /// global step, optimizer states...): read past, not carried.
    pub fn left_out(&self) -> &[String] {
        &self.left_out
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What a GGUF input carries besides its tensors' bytes (`None` for other files).
    pub(crate) fn gguf(&self) -> Option<&gguf::GgufSide> {
        self.gguf.as_deref()
    }

    /// The header's `__metadata__`.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Tensors in data-section order.
    pub fn tensors(&self) -> &[TensorEntry] {
        &self.tensors
    }

    /// Every tensor's shape and dtype, by name: what layouts and architectures are told from.
    pub fn infos(&self) -> BTreeMap<String, crate::model::dtype::TensorInfo> {
        self.tensors
            .iter()
            .map(|t| {
                let info = crate::model::dtype::TensorInfo::new(t.shape.clone(), t.dtype);
                (t.name.clone(), info)
            })
            .collect()
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorEntry> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// Length of what describes the file: a safetensors file's JSON header (without the
    /// 8-byte length prefix), a PyTorch file's pickle.
    pub fn header_len(&self) -> u64 {
        let (begin, end) = self.description;
        match self.format {
            FileFormat::Safetensors => end - begin - 8,
            FileFormat::PyTorch | FileFormat::Gguf => end - begin,
        }
    }

    /// Bytes of tensor data: a safetensors file's data section, a PyTorch file's tensors.
    pub fn data_len(&self) -> u64 {
        match self.format {
            FileFormat::Safetensors => self.stamp.len - self.data_start,
            FileFormat::PyTorch | FileFormat::Gguf => {
                self.tensors.iter().map(TensorEntry::byte_len).sum()
            }
        }
    }

    /// Length of the file when it was opened.
    pub fn file_len(&self) -> u64 {
        self.stamp.len
    }

    /// The bytes that describe the file as they are (what a recipe hashes): a safetensors
    /// file's length prefix and header JSON, a PyTorch file's pickle; bounded by their
    /// validated length.
    ///
    /// # Errors
    /// [`Error::Io`] when they cannot be read again.
    pub fn raw_header(&self) -> Result<Vec<u8>> {
        let (begin, end) = self.description;
        let mut buf = vec![0u8; (end - begin) as usize];
        self.file
            .read_exact_at(&mut buf, begin)
            .ctx(|| format!("cannot read the header of {}", self.path.display()))?;
        Ok(buf)
    }

    /// Fills `buf` with the bytes at data-section offset `at`.
    ///
    /// # Errors
    /// [`Error::InvalidCheckpoint`] when the file ends early (truncated while being read);
    /// [`Error::Io`] for other read errors.
    pub fn read_at(&self, buf: &mut [u8], at: u64) -> Result<()> {
        read_exact_at(&self.file, &self.path, buf, self.data_start + at)
    }

    /// The bytes of one tensor, in a new buffer of exactly its (validated) size.
    ///
    /// # Errors
    /// As [`SafetensorsFile::read_at`], plus an allocation failure as [`Error::InvalidInput`].
    pub fn read_tensor(&self, t: &TensorEntry) -> Result<Vec<u8>> {
        let mut buf = tensor_buffer(&t.name, t.byte_len())?;
        self.read_at(&mut buf, t.offsets.0)?;
        Ok(buf)
    }

    /// Whether the file is still the one that was opened, unmodified.
    ///
    /// # Errors
    /// [`Error::InvalidCheckpoint`] when it was modified, truncated, extended or replaced since
    /// it was opened (its bytes may have changed under the job); [`Error::Io`] when it is gone.
    pub fn check_unchanged(&self) -> Result<()> {
        self.stamp.check(&self.file, &self.path)
    }
}

/// Fills `buf` with the bytes of `file` (opened from `path`) at file offset `pos`: a file that
/// ends early was truncated or replaced while the job read it.
pub(crate) fn read_exact_at(file: &File, path: &Path, buf: &mut [u8], pos: u64) -> Result<()> {
    match file.read_exact_at(buf, pos) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(Error::InvalidCheckpoint {
            path: path.to_path_buf(),
            reason: format!(
                "it ended before byte {} while being read: it was truncated or replaced during \
                 the job; nothing was written from it",
                pos + buf.len() as u64
            ),
        }),
        Err(e) => Err(Error::io(format!("cannot read {}", path.display()), e)),
    }
}

/// A zeroed buffer for the `len` bytes of tensor `name`, allocated fallibly (the length comes
/// from a file).
pub(crate) fn tensor_buffer(name: &str, len: u64) -> Result<Vec<u8>> {
    let len = usize::try_from(len)
        .map_err(|_| Error::InvalidInput(format!("`{name}` does not fit in memory")))?;
    let mut buf = Vec::new();
    buf.try_reserve_exact(len).map_err(|_| {
        Error::InvalidInput(format!("out of memory reading `{name}` ({len} bytes)"))
    })?;
    buf.resize(len, 0);
    Ok(buf)
}

/// The parsed header, before the offsets are checked.
struct Parsed {
    metadata: BTreeMap<String, String>,
    tensors: Vec<TensorEntry>,
}

/// The header entry of one tensor, as written.
#[derive(Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

/// Parses the JSON header: every key is a tensor except `__metadata__` (string → string).
fn parse_header(bytes: &[u8]) -> std::result::Result<Parsed, String> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| format!("not a safetensors file: the header is not UTF-8 text ({e})"))?;
    if !text.trim_start().starts_with('{') {
        return Err("not a safetensors file: the header is not valid JSON (not an object)".into());
    }
    let mut de = serde_json::Deserializer::from_str(text.trim_end_matches(' '));
    let parsed = (&mut de).deserialize_map(HeaderVisitor).map_err(|e| {
        if e.is_data() {
            format!("the header describes invalid tensors ({e}); the file is corrupt")
        } else {
            format!("not a safetensors file: the header is not valid JSON ({e})")
        }
    })?;
    de.end()
        .map_err(|e| format!("not a safetensors file: text after the header's JSON ({e})"))?;
    Ok(parsed)
}

struct HeaderVisitor;

impl<'de> Visitor<'de> for HeaderVisitor {
    type Value = Parsed;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object of tensors")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Parsed, A::Error> {
        let mut metadata = None;
        let mut tensors = Vec::new();
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format!("`{key}` appears twice")));
            }
            if key == "__metadata__" {
                let m: Option<BTreeMap<String, String>> = map.next_value()?;
                metadata = m;
                continue;
            }
            let raw: RawEntry = map.next_value()?;
            let dtype: Dtype = serde_json::from_value(serde_json::Value::String(raw.dtype.clone()))
                .map_err(|_| {
                    de::Error::custom(format!("`{key}` has the unknown dtype `{}`", raw.dtype))
                })?;
            let shape = raw
                .shape
                .iter()
                .map(|&d| usize::try_from(d))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|_| de::Error::custom(format!("`{key}` has a dimension too large")))?;
            tensors.push(TensorEntry {
                name: key,
                dtype,
                shape,
                offsets: raw.data_offsets,
            });
        }
        Ok(Parsed {
            metadata: metadata.unwrap_or_default(),
            tensors,
        })
    }
}

/// Checks sizes and offsets; returns the tensors in data-section order.
fn validate(
    mut tensors: Vec<TensorEntry>,
    data_len: u64,
) -> std::result::Result<Vec<TensorEntry>, String> {
    for t in &tensors {
        let numel = t
            .shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| format!("`{}` has shape {:?}, too many elements", t.name, t.shape))?;
        let len = dtype::byte_len(t.dtype, numel).ok_or_else(|| {
            format!(
                "`{}`: {numel} elements of {} are not a whole number of bytes",
                t.name, t.dtype
            )
        })?;
        let (begin, end) = t.offsets;
        if end < begin || end - begin != len as u64 {
            return Err(format!(
                "`{}` is {} of shape {:?} ({len} bytes) but its offsets [{begin}, {end}] span {} bytes; the file is corrupt",
                t.name,
                t.dtype,
                t.shape,
                end.wrapping_sub(begin) as i64
            ));
        }
    }
    tensors.sort_by_key(|t| (t.offsets, t.name.clone()));
    let mut at = 0u64;
    for t in &tensors {
        if t.offsets.0 != at {
            return Err(format!(
                "`{}` starts at byte {} of the data section where {at} was expected (a gap or an overlap); the file is corrupt",
                t.name, t.offsets.0
            ));
        }
        at = t.offsets.1;
    }
    match at.cmp(&data_len) {
        std::cmp::Ordering::Equal => Ok(tensors),
        std::cmp::Ordering::Greater => Err(format!(
            "the header describes {at} bytes of tensor data but the file holds {data_len}: the file is truncated or incomplete (an interrupted download or copy?); fetch or save it again"
        )),
        std::cmp::Ordering::Less => Err(format!(
            "the file holds {data_len} bytes of tensor data but the header describes only {at}: extra bytes at the end; the file is corrupt"
        )),
    }
}

mod foreign;
pub(crate) mod gguf;
mod pickle;
mod torch;
mod zip;

/// The tensors a PyTorch `data.pkl` names, located in an archive with no storages: every tensor
/// is an error, so this exercises the pickle parser and the state-dict rules alone.
pub(crate) fn torch_state_dict(
    data: &[u8],
) -> std::result::Result<(Vec<TensorEntry>, Vec<String>), String> {
    torch::state_dict(data, "archive/", &HashMap::new())
}

#[cfg(test)]
mod tests;
