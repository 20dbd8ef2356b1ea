"""sd-mecha's wall time and peak memory for the merges of issue 19's bench, by hand (not run by CI).

    python benches/sd_mecha_reference.py --bin CHECKPOINT_SAVE --work DIR [--only weighted_sum,slerp,ties]

On three full-size synthetic SD1.5 checkpoints (`save --synthetic sd15 --dtype f16`, seeds 1–3,
written under DIR once), each recipe runs in a fresh Python process (so that peak RSS is that
merge's), as `sd_mecha.merge(recipe, output=FILE)` with its defaults (f32 merge dtype, f16
output, CPU): a weighted sum of two, a SLERP of two, and TIES (`add_difference_ties`' graph:
`ties_sum` of the two differences to the base, added back) of three. Prints one Markdown table
for benches/RESULTS.md; `checkpoint-save bench` gives this tool's side of the comparison.
"""
import argparse
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone

RECIPES = {
    "weighted_sum": "sd_mecha.weighted_sum(a, b, alpha=0.5)",
    "slerp": "sd_mecha.slerp(a, b, alpha=0.5)",
    "ties": "resolve('add_difference')(a, sd_mecha.ties_sum(sd_mecha.subtract(b, a), "
            "sd_mecha.subtract(c, a), k=0.5), alpha=1.0)",
}

CHILD = """
import sys, sd_mecha, torch
from sd_mecha.extensions.merge_methods import resolve
work, expr, out = sys.argv[1:4]
sd_mecha.extensions.model_dirs.add_path(work)
a, b, c = (sd_mecha.model(f"{n}.safetensors", "sd1-ldm") for n in ("a", "b", "c"))
sd_mecha.merge(eval(expr), output=out)
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--only", default=",".join(RECIPES))
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    for seed, name in ((1, "a"), (2, "b"), (3, "c")):
        path = os.path.join(a.work, f"{name}.safetensors")
        if not os.path.exists(path):
            subprocess.run([a.bin, "save", "--synthetic", "sd15", "--dtype", "f16", "--seed",
                            str(seed), "--output-dir", a.work, "--prefix", name, "-q"], check=True)
            os.rename(os.path.join(a.work, f"{name}_00001_.safetensors"), path)
    import sd_mecha  # noqa: F401 (the version is reported)
    from importlib.metadata import version
    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} "
          f"CPUs, sd-mecha {version('sd-mecha')}, torch {version('torch')}\n")
    print("| sd-mecha recipe | wall s | peak RSS MiB |")
    print("|---|---|---|")
    for name in a.only.split(","):
        out = os.path.join(a.work, f"out_{name}.safetensors")
        if os.path.exists(out):
            os.remove(out)
        rss = os.path.join(a.work, "rss.txt")
        start = time.perf_counter()
        subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss, sys.executable, "-c", CHILD,
                        a.work, RECIPES[name], out], check=True, capture_output=True)
        wall = time.perf_counter() - start
        peak = int(open(rss).read().split()[-1]) / 1024
        os.remove(out)
        print(f"| {name} | {wall:.1f} | {peak:.0f} |")


if __name__ == "__main__":
    main()
