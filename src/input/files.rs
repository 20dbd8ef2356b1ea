//! Opening the files an input is made of: one model file (`.safetensors`, a PyTorch
//! checkpoint read without running it: `.ckpt`, `.pt`, `.pth`, `.bin`, or a GGUF denoiser read
//! as ComfyUI-GGUF reads it: [`super::gguf`]), or the shards an index
//! lists (`*.index.json`, `weight_map`: tensor name → shard file), or the weights of a
//! diffusers/transformers model folder (`model.safetensors`, `diffusion_pytorch_model.safetensors`,
//! their `.bin` forms, or their index). Every tensor becomes a [`FileTensor`] — nothing is read
//! but headers (and a PyTorch file's pickle) — and the members of each quantized layer become
//! one quantized tensor ([`super::group`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::error::{Error, IoContext, Result};
use crate::model::{FileTensor, InputTensor, TensorInfo};
use crate::read::SafetensorsFile;

/// The tensors of one model, whatever number of files hold them.
#[derive(Debug, Clone)]
pub(crate) struct TensorSet {
    /// What was opened (a file, an index, a folder), for messages.
    pub path: PathBuf,
    /// Every tensor by name: a tensor of a file, or a quantized layer's members grouped as one
    /// tensor under the codes' name.
    pub tensors: BTreeMap<String, InputTensor>,
    /// The `__metadata__` of the first file.
    pub metadata: BTreeMap<String, String>,
    /// Bytes of tensor data.
    pub bytes: u64,
    /// Entries of PyTorch checkpoints that are not tensors of their state dicts (and of a
    /// GGUF file, the tensors outside its denoiser's prefix).
    pub left_out: Vec<String>,
    /// For a GGUF file: its `general.architecture` (`None` inside when it has none).
    pub gguf_architecture: Option<Option<String>>,
}

impl TensorSet {
    /// Names, shapes and dtypes (a quantized tensor's logical shape).
    pub fn infos(&self) -> BTreeMap<String, TensorInfo> {
        self.tensors
            .iter()
            .map(|(k, t)| (k.clone(), t.info()))
            .collect()
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<InputTensor> {
        self.tensors.get(name).cloned()
    }
}

/// The index of a sharded checkpoint.
#[derive(Deserialize)]
struct Index {
    weight_map: BTreeMap<String, String>,
}

/// Weight files a diffusers or transformers folder may hold, preferred first: safetensors, then
/// the PyTorch `.bin` files older pipelines ship (read without running their pickle).
const WEIGHTS: [&str; 8] = [
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.safetensors",
    "model.safetensors.index.json",
    "model.safetensors",
    "diffusion_pytorch_model.bin.index.json",
    "diffusion_pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
];

/// Opens a `.safetensors` file, a `*.safetensors.index.json` with its shards, or a model folder
/// holding one of those.
///
/// # Errors
/// [`Error::Io`] naming a missing file or shard; [`Error::InvalidCheckpoint`] for a file that is
/// not a valid safetensors file or an index that is not one; [`Error::InvalidInput`] for a folder
/// with no weights, weights only in other formats (`.bin`, `.ckpt`), or a tensor listed in two
/// shards.
pub(crate) fn open_set(path: &Path) -> Result<TensorSet> {
    if path.is_dir() {
        return open_folder(path);
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.ends_with(".index.json") {
        return open_index(path);
    }
    let file = Arc::new(SafetensorsFile::open(path)?);
    let mut set = TensorSet {
        path: path.to_path_buf(),
        tensors: BTreeMap::new(),
        metadata: file.metadata().clone(),
        bytes: file.data_len(),
        left_out: file.left_out().to_vec(),
        gguf_architecture: None,
    };
    add(&mut set, &file)?;
    if file.gguf().is_some() {
        super::gguf::group(&mut set, &file)?;
    } else {
        super::group::group(&mut set)?;
    }
    Ok(set)
}

fn open_folder(dir: &Path) -> Result<TensorSet> {
    if let Some(w) = WEIGHTS.iter().map(|w| dir.join(w)).find(|p| p.is_file()) {
        return open_set(&w);
    }
    Err(Error::InvalidInput(format!(
        "{} holds no model weights: expected one of {}",
        dir.display(),
        WEIGHTS.join(", ")
    )))
}

fn open_index(path: &Path) -> Result<TensorSet> {
    let text = std::fs::read_to_string(path).ctx(|| format!("cannot read {}", path.display()))?;
    let index: Index = serde_json::from_str(&text).map_err(|e| Error::InvalidCheckpoint {
        path: path.to_path_buf(),
        reason: format!("not a sharded-checkpoint index (a JSON object with `weight_map`): {e}"),
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut shards: Vec<&String> = index.weight_map.values().collect();
    shards.sort();
    shards.dedup();
    let mut set = TensorSet {
        path: path.to_path_buf(),
        tensors: BTreeMap::new(),
        metadata: BTreeMap::new(),
        bytes: 0,
        left_out: Vec::new(),
        gguf_architecture: None,
    };
    for shard in shards {
        if shard.contains('/') || shard.contains("..") {
            return Err(Error::InvalidCheckpoint {
                path: path.to_path_buf(),
                reason: format!("shard `{shard}` is not a file name next to the index"),
            });
        }
        let shard_path = dir.join(shard);
        if !shard_path.is_file() {
            return Err(Error::io(
                format!(
                    "shard {} listed in {} is missing: the download is incomplete; fetch it again",
                    shard_path.display(),
                    path.display()
                ),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        let file = Arc::new(SafetensorsFile::open(&shard_path)?);
        if file.gguf().is_some() {
            return Err(Error::InvalidCheckpoint {
                path: path.to_path_buf(),
                reason: format!(
                    "shard {shard} is a GGUF file; an index lists safetensors shards (open a \
                     GGUF file by itself)"
                ),
            });
        }
        if set.metadata.is_empty() {
            set.metadata = file.metadata().clone();
        }
        set.bytes += file.data_len();
        set.left_out.extend(file.left_out().iter().cloned());
        add(&mut set, &file)?;
    }
    for (name, shard) in &index.weight_map {
        let Some(InputTensor::File(t)) = set.tensors.get(name) else {
            return Err(Error::InvalidCheckpoint {
                path: path.to_path_buf(),
                reason: format!("`{name}` is listed in shard {shard}, which does not hold it"),
            });
        };
        if t.path()
            .file_name()
            .is_none_or(|n| n.to_string_lossy() != shard.as_str())
        {
            return Err(Error::InvalidCheckpoint {
                path: path.to_path_buf(),
                reason: format!("`{name}` is listed in shard {shard} but lies in another"),
            });
        }
    }
    if set.tensors.len() != index.weight_map.len() {
        return Err(Error::InvalidCheckpoint {
            path: path.to_path_buf(),
            reason: "the shards hold tensors the index does not list".into(),
        });
    }
    super::group::group(&mut set)?;
    Ok(set)
}

fn add(set: &mut TensorSet, file: &Arc<SafetensorsFile>) -> Result<()> {
    for (i, t) in file.tensors().iter().enumerate() {
        let tensor = InputTensor::File(FileTensor::new(Arc::clone(file), i));
        if set.tensors.insert(t.name.clone(), tensor).is_some() {
            return Err(Error::InvalidInput(format!(
                "`{}` appears in two files of {}",
                t.name,
                set.path.display()
            )));
        }
    }
    Ok(())
}
