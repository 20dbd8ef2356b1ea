//! The Python program a user writes today to quantize a checkpoint, timed beside ours:
//! `safetensors.torch.load_file`, comfy-kitchen's quantizers (its eager backend, on the CPU) for
//! the layers ours quantizes, `save_file`, fsync. It holds the whole model in memory.
//!
//! It runs where a Python with `torch`, `safetensors` and `comfy_kitchen` is found: the
//! interpreter `CHECKPOINT_SAVE_PYTHON` names, else `python3` on the `PATH`. Otherwise the
//! benchmark says why it was skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, IoContext, Result};
use crate::quant::Format;

/// The program: `python3 - IN OUT FORMAT KEYS.json` with this on standard input.
const PROGRAM: &str = r#"
import json, os, sys
import torch
from safetensors.torch import load_file, save_file
import comfy_kitchen as ck
from comfy_kitchen.tensor import TensorCoreMXFP8Layout, TensorCoreNVFP4Layout, TensorWiseINT8Layout

src, out, fmt, keys = sys.argv[1:5]
keys = json.load(open(keys))
sd = load_file(src)
layers = {}
fp8 = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2,
       "scaled": torch.float8_e4m3fn}
blocks = {"mxfp8": TensorCoreMXFP8Layout, "nvfp4": TensorCoreNVFP4Layout,
          "int8_tensorwise": TensorWiseINT8Layout}
with ck.registry.use_backend("eager"):
    for k in keys:
        x = sd.pop(k)
        layer = k[: -len(".weight")]
        if fmt in fp8:
            t = fp8[fmt]
            scale = torch.amax(x.abs()).to(torch.float32) / torch.finfo(t).max
            sd[k] = ck.quantize_per_tensor_fp8(x, scale, t)
            sd[layer + (".scale_weight" if fmt == "scaled" else ".weight_scale")] = scale
        else:
            q, params = blocks[fmt].quantize(x)
            for suffix, v in blocks[fmt].state_dict_tensors(q, params).items():
                sd[k + suffix] = v
        if fmt != "scaled":
            conf = json.dumps({"format": fmt}).encode("utf-8")
            sd[layer + ".comfy_quant"] = torch.tensor(list(conf), dtype=torch.uint8)
            layers[layer] = {"format": fmt}
meta = {"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers})}
save_file(sd, out, metadata=meta if layers else None)
fd = os.open(out, os.O_RDONLY)
os.fsync(fd)
os.close(fd)
"#;

/// A Python that can run [`PROGRAM`], or why there is none.
pub(super) fn find() -> std::result::Result<PathBuf, String> {
    let python = std::env::var_os("CHECKPOINT_SAVE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"));
    let check = Command::new(&python)
        .args([
            "-c",
            "import torch, safetensors.torch, comfy_kitchen.tensor",
        ])
        .output();
    match check {
        Ok(o) if o.status.success() => Ok(python),
        Ok(o) => Err(format!(
            "{} cannot import torch, safetensors and comfy_kitchen ({}); set \
             CHECKPOINT_SAVE_PYTHON to an interpreter that can",
            python.display(),
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("no message")
        )),
        Err(e) => Err(format!(
            "no Python found ({}: {e}); set CHECKPOINT_SAVE_PYTHON",
            python.display()
        )),
    }
}

/// The name kitchen's program gives `format`.
fn program_format(format: Format) -> &'static str {
    match format {
        Format::ScaledFp8(_) => "scaled",
        other => other.comfy_name().unwrap_or("float8_e4m3fn"),
    }
}

/// Runs the program on `input` into `out`, quantizing the layers whose codes `keys` names (the
/// ones ours quantized), with its list written beside `out`.
///
/// # Errors
/// [`Error::InvalidInput`] when the program fails (its last line of stderr); I/O errors.
pub(super) fn run(
    python: &Path,
    input: &Path,
    out: &Path,
    format: Format,
    keys: &[String],
) -> Result<()> {
    let list = out.with_extension("keys.json");
    let text = serde_json::to_string(keys)
        .map_err(|e| Error::InvalidInput(format!("cannot list the layers: {e}")))?;
    std::fs::write(&list, text).ctx(|| format!("writing {}", list.display()))?;
    let result = run_program(
        python,
        PROGRAM,
        &[
            input.as_os_str(),
            out.as_os_str(),
            program_format(format).as_ref(),
            list.as_os_str(),
        ],
        "quantizer",
    );
    let _ = std::fs::remove_file(&list);
    result
}

/// Runs `program` (Python source, fed on stdin) with `args`; its last stderr line is the error.
pub(super) fn run_program(
    python: &Path,
    program: &str,
    args: &[&std::ffi::OsStr],
    what: &str,
) -> Result<()> {
    let mut child = Command::new(python)
        .arg("-")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .ctx(|| format!("starting {}", python.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin
            .write_all(program.as_bytes())
            .ctx(|| "writing the Python program".to_string())?;
    }
    let output = child
        .wait_with_output()
        .ctx(|| format!("running {}", python.display()))?;
    if !output.status.success() {
        return Err(Error::InvalidInput(format!(
            "the Python {what} failed: {}",
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .last()
                .unwrap_or("no message")
        )));
    }
    Ok(())
}

/// The highest resident memory of any child process so far, in bytes.
pub(super) fn children_peak_rss() -> u64 {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to an rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } != 0 {
        return 0;
    }
    (usage.ru_maxrss.max(0) as u64) * 1024
}

/// The GGUF program: `python3 - IN OUT PLAN.json`. It does what ComfyUI-GGUF's `convert.py`
/// does: the whole file read into memory (as `load_file` does; its tensors taken with numpy, so
/// that torch is not needed: bf16 widened to f32 as `x.to(torch.float32)` does), its prefix
/// stripped, each tensor quantized by gguf-py (`gguf.quants.quantize`) into the type and shape
/// ours chose, then gguf-py's writer and fsync. It holds the whole model in memory.
const GGUF_PROGRAM: &str = r#"
import json, os, struct, sys
import numpy as np
import gguf

src, out, plan = sys.argv[1:4]
plan = json.load(open(plan))
with open(src, "rb") as f:
    data = f.read()
n = struct.unpack("<Q", data[:8])[0]
header = json.loads(data[8:8 + n])
header.pop("__metadata__", None)
base = 8 + n
kinds = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": np.uint16}
def tensor(info):
    a, b = info["data_offsets"]
    x = np.frombuffer(data, dtype=kinds[info["dtype"]], count=(b - a) // np.dtype(kinds[info["dtype"]]).itemsize, offset=base + a)
    if info["dtype"] == "BF16":
        x = (x.astype(np.uint32) << 16).view(np.float32)
    return x.reshape(info["shape"])
pfx = "model.diffusion_model."
if any(k.startswith(pfx) for k in header):
    header = {k.replace(pfx, ""): v for k, v in header.items() if pfx in k}
w = gguf.GGUFWriter(path=None, arch=plan["arch"])
w.add_quantization_version(gguf.GGML_QUANT_VERSION)
w.add_file_type(plan["file_type"])
for name, ty, dims in plan["tensors"]:
    x = tensor(header[name])
    qt = gguf.GGMLQuantizationType[ty]
    w.add_tensor(name, gguf.quants.quantize(x.reshape(dims), qt), raw_dtype=qt)
w.write_header_to_file(path=out)
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
fd = os.open(out, os.O_RDONLY)
os.fsync(fd)
os.close(fd)
"#;

/// Whether gguf-py quantizes every type of `ty`'s files (its quantizers: F16, BF16, Q8_0,
/// Q5_1, Q5_0, Q4_1, Q4_0; not the K-quants).
pub(super) fn gguf_py_quantizes(ty: crate::GgufType) -> bool {
    use crate::GgufType as T;
    matches!(
        ty,
        T::F16 | T::BF16 | T::Q8_0 | T::Q5_1 | T::Q5_0 | T::Q4_1 | T::Q4_0
    )
}

/// A Python that can run [`GGUF_PROGRAM`], or why there is none.
pub(super) fn find_gguf() -> std::result::Result<PathBuf, String> {
    let python = std::env::var_os("CHECKPOINT_SAVE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"));
    match Command::new(&python)
        .args(["-c", "import gguf, numpy"])
        .output()
    {
        Ok(o) if o.status.success() => Ok(python),
        Ok(_) => Err(format!(
            "{} cannot import gguf (gguf-py) and numpy; set CHECKPOINT_SAVE_PYTHON to an \
             interpreter that can",
            python.display()
        )),
        Err(e) => Err(format!(
            "no Python found ({}: {e}); set CHECKPOINT_SAVE_PYTHON",
            python.display()
        )),
    }
}

/// The plan of the GGUF file at `path` for [`run_gguf`]: one JSON document (architecture, file
/// type, each tensor's name, type and stored shape).
///
/// # Errors
/// Read errors of the file.
pub(super) fn gguf_types(path: &Path) -> Result<Vec<String>> {
    let file = crate::read::gguf::GgufFile::open(path)?;
    let tensors: Vec<serde_json::Value> = file
        .tensors()
        .iter()
        .map(|t| serde_json::json!([t.name, t.type_name(), t.stored_shape]))
        .collect();
    let file_type = match file.get("general.file_type") {
        Some(crate::read::gguf::MetaValue::U32(n)) => *n,
        _ => 1,
    };
    let plan = serde_json::json!({
        "arch": file.architecture().unwrap_or_default(),
        "file_type": file_type,
        "tensors": tensors,
    });
    Ok(vec![plan.to_string()])
}

/// Runs [`GGUF_PROGRAM`] on `input` into `out` with the plan [`gguf_types`] made (`plan[0]`).
///
/// # Errors
/// [`Error::InvalidInput`] when the program fails (its last line of stderr); I/O errors.
pub(super) fn run_gguf(python: &Path, input: &Path, out: &Path, plan: &[String]) -> Result<()> {
    let list = out.with_extension("plan.json");
    std::fs::write(&list, plan.first().map_or("{}", String::as_str))
        .ctx(|| format!("writing {}", list.display()))?;
    let result = run_program(
        python,
        GGUF_PROGRAM,
        &[input.as_os_str(), out.as_os_str(), list.as_os_str()],
        "GGUF program",
    );
    let _ = std::fs::remove_file(&list);
    result
}
