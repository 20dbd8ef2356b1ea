"""Writes a full-size synthetic denoiser as a bf16 safetensors file, streamed, for
`checkpoint-save bench --from-file --input FILE` where the model does not fit in memory (a
Flux-size denoiser is 23.8 GB; `bench --from-file` builds its input in memory first).

The keys and shapes are the tool's own synthetic model's, from its dry run:

    checkpoint-save save --synthetic flux --dtype bf16 --dry-run --json > flux.json
    python3 benches/large_input.py flux.json /disk/flux-bf16.safetensors

Only the denoiser is written, with bare keys, as a diffusion model file is published
(`flux1-dev.safetensors`). Values: weights and biases ~ N(0, 0.02), norm scales ~ 1 + N(0, 0.02),
taken from one pool of 2^26 values (each tensor a slice at its own random offset), rounded to
bf16; needs numpy only. The file is written under a temporary name and renamed when complete.
"""

import json
import os
import struct
import sys

import numpy as np

PREFIX = "model.diffusion_model."
POOL = 1 << 26


def bf16(x):
    """f32 to bf16 bits, rounded to nearest even (NaN cannot occur here)."""
    u = x.view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def main(plan_path, out):
    plan = json.load(open(plan_path))
    tensors = [
        (t["key"][len(PREFIX):], t["shape"])
        for t in plan["tensors"]
        if t["key"].startswith(PREFIX)
    ]
    if not tensors:
        sys.exit(f"{plan_path} names no `{PREFIX}` tensors (a dry run's --json of a save)")
    header, offset = {}, 0
    for key, shape in tensors:
        n = 2 * int(np.prod(shape, dtype=np.int64))
        header[key] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    rng = np.random.default_rng(0)
    pool = rng.standard_normal(POOL, dtype=np.float32) * np.float32(0.02)
    weights, scales = bf16(pool), bf16(pool + np.float32(1.0))
    tmp = out + ".partial"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for key, shape in tensors:
            n = int(np.prod(shape, dtype=np.int64))
            src = scales if key.endswith(".scale") else weights
            start = int(rng.integers(0, POOL))
            while n > 0:
                take = min(n, POOL - start)
                f.write(src[start:start + take].tobytes())
                n -= take
                start = 0
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, out)
    print(f"{out}: {len(tensors)} tensors, {offset / 1e9:.2f} GB of bf16 data")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: large_input.py PLAN.json OUT.safetensors")
    main(*sys.argv[1:])
