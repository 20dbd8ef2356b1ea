"""ComfyUI-GGUF's own loader as a test oracle, outside ComfyUI.

Loads GGUF files with a ComfyUI-GGUF checkout's `loader.py` (`gguf_sd_loader` for a denoiser,
`gguf_clip_loader` for a text encoder) and prints, as one JSON object per file, what the loader
gives: for every key its shape, torch dtype (a vision tower's stacked and joined tensors are
plain tensors the loader made), ggml type and the SHA-256 of its values dequantized by the
loader's own `dequantize_tensor` to float32 (`dequant_dtype=float32`), little-endian; byte
tensors (`spiece_model`) hashed as bytes. `tests/gguf_text.rs` compares it with the tool's own
reading of the same files.

`loader.py` imports `comfy.*` through `ops.py`; the stand-ins below give only what importing it
needs (nothing of them runs while loading a state dict).

Run (Python with torch, numpy < 2.4 (the loader's `int()` of one-element arrays fails on 2.4),
gguf >= 0.13, sentencepiece and protobuf):
    python comfyui_gguf_loader.py COMFYUI_GGUF_DIR (sd|clip|tokenizer|tekken) FILE...
`tokenizer` prints the sentencepiece model `gguf_tokenizer_loader` builds from a file's
metadata (as for umT5-XXL), hex-encoded, whatever the file's embedding shape; `tekken` the tekken
JSON `gguf_tekken_tokenizer_loader` builds (as for Mistral 3), hex-encoded. That function imports
`bytes_to_unicode` from transformers; where transformers is not installed, the standard GPT-2
function below stands in for it (`stub_transformers`).
"""

import hashlib
import importlib.util
import json
import os
import sys
import types

import torch


def stub_comfy():
    comfy = types.ModuleType("comfy")
    ops = types.ModuleType("comfy.ops")

    class manual_cast:
        class Linear(torch.nn.Linear):
            pass

        class Conv2d(torch.nn.Conv2d):
            pass

        class Embedding(torch.nn.Embedding):
            pass

        class LayerNorm(torch.nn.LayerNorm):
            pass

        class GroupNorm(torch.nn.GroupNorm):
            pass

    ops.manual_cast = manual_cast
    ops.cast_to = lambda t, *a, **k: t
    lora = types.ModuleType("comfy.lora")
    lora.calculate_weight = lambda patches, weight, key, *a, **k: weight
    mm = types.ModuleType("comfy.model_management")
    mm.device_supports_non_blocking = lambda device: False
    comfy.ops, comfy.lora, comfy.model_management = ops, lora, mm
    for name, mod in [("comfy", comfy), ("comfy.ops", ops), ("comfy.lora", lora),
                      ("comfy.model_management", mm)]:
        sys.modules[name] = mod


def stub_transformers():
    """`transformers.convert_slow_tokenizer.bytes_to_unicode`, if transformers is absent."""
    try:
        import transformers.convert_slow_tokenizer  # noqa: F401
        return
    except ImportError:
        pass

    def bytes_to_unicode():
        bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
              + list(range(ord("®"), ord("ÿ") + 1)))
        cs = bs[:]
        n = 0
        for b in range(256):
            if b not in bs:
                bs.append(b)
                cs.append(256 + n)
                n += 1
        return dict(zip(bs, [chr(c) for c in cs]))

    tf = types.ModuleType("transformers")
    cst = types.ModuleType("transformers.convert_slow_tokenizer")
    cst.bytes_to_unicode = bytes_to_unicode
    tf.convert_slow_tokenizer = cst
    sys.modules["transformers"] = tf
    sys.modules["transformers.convert_slow_tokenizer"] = cst


def import_loader(repo):
    stub_comfy()
    spec = importlib.util.spec_from_file_location(
        "comfyui_gguf", os.path.join(repo, "__init__.py"), submodule_search_locations=[repo])
    pkg = importlib.util.module_from_spec(spec)
    sys.modules["comfyui_gguf"] = pkg
    spec.loader.exec_module(pkg)
    from comfyui_gguf import dequant, loader
    return loader, dequant


def describe(sd, dequant):
    out = {}
    for key, t in sorted(sd.items()):
        qtype = getattr(t, "tensor_type", None)
        if t.dtype == torch.uint8 and qtype is None:
            out[key] = {"shape": list(t.shape), "type": "U8",
                        "sha256": hashlib.sha256(bytes(t.tolist())).hexdigest()}
            continue
        values = dequant.dequantize_tensor(t, dtype=torch.float32, dequant_dtype=torch.float32)
        shape = list(getattr(t, "tensor_shape", t.shape))
        values = values.reshape(shape).contiguous()
        out[key] = {
            "dtype": str(t.dtype),
            "shape": shape,
            "type": getattr(qtype, "name", "F32" if qtype is None else repr(qtype)),
            "sha256": hashlib.sha256(values.numpy().astype("<f4").tobytes()).hexdigest(),
        }
    return out


def main():
    repo, mode, files = sys.argv[1], sys.argv[2], sys.argv[3:]
    loader, dequant = import_loader(os.path.abspath(repo))
    result = {}
    for path in files:
        if mode == "sd":
            sd, arch = loader.gguf_sd_loader(path, return_arch=True)
            result[path] = {"arch": arch, "tensors": describe(sd, dequant)}
        elif mode == "clip":
            result[path] = {"tensors": describe(loader.gguf_clip_loader(path), dequant)}
        elif mode == "tekken":
            stub_transformers()
            model = loader.gguf_tekken_tokenizer_loader(path, (131072, 5120))
            result[path] = {"tekken_model": bytes(model.tolist()).hex()}
        elif mode == "tokenizer":
            model = loader.gguf_tokenizer_loader(path, (256384, 4096))
            result[path] = {"spiece_model": bytes(model.tolist()).hex()}
        else:
            sys.exit(f"unknown mode {mode}")
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
