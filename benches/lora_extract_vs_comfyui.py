"""LoRA extraction against ComfyUI's LoraSave, by hand (not run by CI; needs torch and safetensors).

    python benches/lora_extract_vs_comfyui.py --bin target/release/checkpoint-save --work DIR [--rank 32]

In one sitting, on the same two full-size synthetic SD1.5 checkpoints (`save --synthetic sd15
--dtype f16`, seeds 1 and 2; written under DIR once):

1. ComfyUI's LoraSave, its torch calls reproduced (`comfy_extras/nodes_lora_extract.py`,
   `calc_lora_model` / `extract_lora`, denoiser only, CPU): ModelMergeSubtract with multiplier 1
   (`tuned·1 + base·(−1)` in f32, rounded to the weight's dtype f16), then per weight of two or
   more dimensions a full `torch.linalg.svd` of the f32 difference flattened after its first
   dimension, `U[:, :r]·diag(S[:r])` and `Vh[:r]`, both clamped at the 0.99 quantile of their
   entries together, f16; 1-D weights and biases as `.diff` / `.diff_b` (bias_diff on). Timed
   from the loaded state dicts to the dict of factors (loading and saving are not counted,
   which favours ComfyUI).
2. `checkpoint-save extract-lora TUNED BASE --rank R --bias-diff` (the release binary), timed
   end to end (reading, extracting, writing).
3. The reconstruction error per factored layer: `‖D − up·down‖_F / ‖D‖_F` of our factors, read
   back from our file, against that of ComfyUI's (the exact truncated SVD's), both after the
   clamp and the f16 rounding, as the files hold them: worst and median of the ratio ours /
   exact.

With `--skip-comfyui` (no torch needed; the ComfyUI time stands as measured once by hand), step 1
is not timed and its exact truncated SVDs come from numpy (`numpy.linalg.svd`, the same LAPACK
decomposition; thin, since only the first r vectors are kept), clamped and rounded the same way:
step 3's ratio is then measured as before.

Prints one Markdown block for benches/RESULTS.md (command, machine, date, figures).
"""
import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone

import numpy as np

CLAMP_QUANTILE = 0.99
PREFIX = "model.diffusion_model."


def make_inputs(binary: str, work: str) -> tuple[str, str]:
    paths = []
    for seed, name in ((1, "tuned"), (2, "base")):
        path = os.path.join(work, f"{name}.safetensors")
        if not os.path.exists(path):
            subprocess.run(
                [binary, "save", "--synthetic", "sd15", "--dtype", "f16", "--seed", str(seed),
                 "--output-dir", work, "--prefix", name, "-q"],
                check=True,
            )
            os.rename(os.path.join(work, f"{name}_00001_.safetensors"), path)
        paths.append(path)
    return paths[0], paths[1]


def comfyui_lora_save(tuned: dict, base: dict, rank: int) -> dict:
    """LoraSave's calls, denoiser only."""
    out = {}
    for k, t in tuned.items():
        if not k.startswith(PREFIX):
            continue
        # ModelMergeSubtract, multiplier 1: computed in f32, the patched weight in its dtype.
        diff = (t.float() * 1.0 + base[k].float() * -1.0).to(t.dtype)
        stem = "diffusion_model." + k[len(PREFIX):]
        if k.endswith(".weight") and diff.ndim >= 2:
            weight_diff = diff.float()
            out_dim, in_dim = weight_diff.shape[0], weight_diff.shape[1]
            conv2d = weight_diff.ndim == 4
            kernel = weight_diff.shape[2:] if conv2d else None
            r = min(rank, in_dim, out_dim)
            if conv2d:
                if kernel == (1, 1):
                    weight_diff = weight_diff.squeeze()
                else:
                    weight_diff = weight_diff.flatten(start_dim=1)
            u, s, vh = torch.linalg.svd(weight_diff)
            u = u[:, :r] @ torch.diag(s[:r])
            vh = vh[:r, :]
            dist = torch.cat([u.flatten(), vh.flatten()])
            hi = torch.quantile(dist, CLAMP_QUANTILE)
            u, vh = u.clamp(-hi, hi), vh.clamp(-hi, hi)
            if conv2d:
                u = u.reshape(out_dim, r, 1, 1)
                vh = vh.reshape(r, in_dim, *kernel)
            out[stem[:-7] + ".lora_up.weight"] = u.half()
            out[stem[:-7] + ".lora_down.weight"] = vh.half()
        elif k.endswith(".weight"):
            out[stem[:-7] + ".diff"] = diff.half()
        elif k.endswith(".bias"):
            out[stem[:-5] + ".diff_b"] = diff.half()
    return out


def numpy_lora_save(tuned: dict, base: dict, rank: int) -> dict:
    """The factored weights of `comfyui_lora_save`, in numpy (LAPACK's SVD, thin), untimed."""
    out = {}
    for k, t in tuned.items():
        if not (k.startswith(PREFIX) and k.endswith(".weight") and t.ndim >= 2):
            continue
        diff = (t.astype(np.float32) - base[k].astype(np.float32)).astype(t.dtype)
        d = diff.astype(np.float32).reshape(diff.shape[0], -1)
        r = min(rank, diff.shape[0], diff.shape[1])
        u, s, vh = np.linalg.svd(d, full_matrices=False)
        u, vh = u[:, :r] * s[:r], vh[:r]
        hi = np.quantile(np.concatenate([u.ravel(), vh.ravel()]), CLAMP_QUANTILE)
        stem = "diffusion_model." + k[len(PREFIX):-len(".weight")]
        out[stem + ".lora_up.weight"] = np.clip(u, -hi, hi).astype(np.float16)
        out[stem + ".lora_down.weight"] = np.clip(vh, -hi, hi).astype(np.float16)
    return out


def relative_errors_np(ours: dict, exact: dict, tuned: dict, base: dict) -> list[float]:
    """`relative_errors` in numpy."""
    ratios = []
    for k in exact:
        if not k.endswith(".lora_up.weight"):
            continue
        stem = k[: -len(".lora_up.weight")]
        key = PREFIX + stem[len("diffusion_model."):] + ".weight"
        t = tuned[key]
        d = (t.astype(np.float32) - base[key].astype(np.float32)).astype(t.dtype)
        d = d.astype(np.float32).reshape(d.shape[0], -1)
        norm = np.linalg.norm(d)
        if norm == 0:
            continue

        def err(f):
            up = f[stem + ".lora_up.weight"].astype(np.float32).reshape(d.shape[0], -1)
            down = f[stem + ".lora_down.weight"].astype(np.float32).reshape(up.shape[1], -1)
            return float(np.linalg.norm(d - up @ down) / norm)

        ratios.append(err(ours) / err(exact))
    return ratios


def relative_errors(ours: dict, exact: dict, tuned: dict, base: dict) -> list[float]:
    """Per factored layer: our reconstruction error over the exact truncated SVD's."""
    ratios = []
    for k in exact:
        if not k.endswith(".lora_up.weight"):
            continue
        stem = k[: -len(".lora_up.weight")]
        key = PREFIX + stem[len("diffusion_model."):] + ".weight"
        d = (tuned[key].float() - base[key].float()).half().float().flatten(start_dim=1)
        norm = d.norm()
        if norm == 0:
            continue

        def err(f):
            up = f[stem + ".lora_up.weight"].float().flatten(start_dim=1)
            down = f[stem + ".lora_down.weight"].float().flatten(start_dim=1)
            return ((d - up @ down).norm() / norm).item()

        ratios.append(err(ours) / err(exact))
    return ratios


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--skip-comfyui", action="store_true",
                    help="do not time ComfyUI's calls; exact factors from numpy, untimed")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    tuned_path, base_path = make_inputs(a.bin, a.work)
    if a.skip_comfyui:
        from safetensors.numpy import load_file
        tuned, base = load_file(tuned_path), load_file(base_path)
    else:
        import torch
        from safetensors.torch import load_file
        tuned, base = load_file(tuned_path), load_file(base_path)
        start = time.perf_counter()
        exact = comfyui_lora_save(tuned, base, a.rank)
        comfy_s = time.perf_counter() - start
        comfy_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    out_dir = os.path.join(a.work, "ours")
    cmd = [a.bin, "extract-lora", tuned_path, base_path, "--rank", str(a.rank), "--bias-diff",
           "--output-dir", out_dir, "-q"]
    rss_file = os.path.join(a.work, "rss.txt")
    start = time.perf_counter()
    # GNU time's %M: the child's own peak (getrusage of children would count the fork of this
    # process, torch loaded).
    path = subprocess.run(["/usr/bin/time", "-f", "%U %S %M", "-o", rss_file] + cmd, check=True,
                          capture_output=True, text=True).stdout.strip()
    ours_s = time.perf_counter() - start
    user, system, rss = open(rss_file).read().split()[-3:]
    ours_rss, ours_cpu = int(rss) / 1024, float(user) + float(system)
    ours = load_file(path if os.path.isabs(path) else os.path.join(os.getcwd(), path))
    os.remove(path)

    if a.skip_comfyui:
        exact = numpy_lora_save(tuned, base, a.rank)
        ratios = relative_errors_np(ours, exact, tuned, base)
        engine = f"numpy {np.__version__} (exact factors, untimed)"
    else:
        ratios = relative_errors(ours, exact, tuned, base)
        engine = f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
    print(f"## LoRA extraction, rank {a.rank}, SD1.5 denoiser, CPU\n")
    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, {engine}\n")
    skip = " --skip-comfyui" if a.skip_comfyui else ""
    print(f"`python benches/lora_extract_vs_comfyui.py --bin {a.bin} --work {a.work} --rank {a.rank}{skip}`\n")
    print("| | time | CPU time | peak RSS |")
    print("|---|---|---|---|")
    if not a.skip_comfyui:
        print(f"| ComfyUI LoraSave (torch.linalg.svd, reproduced) | {comfy_s:.1f} s | | {comfy_rss:.0f} MiB |")
    print(f"| `{' '.join(cmd[1:2])} … --rank {a.rank} --bias-diff` | {ours_s:.1f} s | {ours_cpu:.1f} s | {ours_rss:.0f} MiB |")
    if not a.skip_comfyui:
        print(f"\nspeed-up: {comfy_s / ours_s:.1f}x\n")
    print(f"reconstruction error ours / exact truncated SVD over {len(ratios)} layers: "
          f"median {statistics.median(ratios):.4f}, worst {max(ratios):.4f}")


if __name__ == "__main__":
    sys.exit(main())
