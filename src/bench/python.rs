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
    let mut child = Command::new(python)
        .arg("-")
        .arg(input)
        .arg(out)
        .arg(program_format(format))
        .arg(&list)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .ctx(|| format!("starting {}", python.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin
            .write_all(PROGRAM.as_bytes())
            .ctx(|| "writing the Python program".to_string())?;
    }
    let output = child
        .wait_with_output()
        .ctx(|| format!("running {}", python.display()))?;
    let _ = std::fs::remove_file(&list);
    if !output.status.success() {
        return Err(Error::InvalidInput(format!(
            "the Python quantizer failed: {}",
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
