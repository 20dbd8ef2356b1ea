#!/usr/bin/env bash
# Builds the CUDA test binary and CLI here (no GPU needed) and packs them for a GPU machine.
#
#   scripts/gpu-run.sh            # -> .gpu/tests.xz, .gpu/checkpoint-save.xz, .gpu/on-device.sh
#
# Then, on the GPU machine, from the repository root:
#   CHECKPOINT_SAVE_REQUIRE_GPU=1 .gpu/on-device.sh .gpu/tests.xz --test-threads=1
#   .gpu/on-device.sh .gpu/checkpoint-save.xz bench --synthetic sdxl --device cuda:0 --dtype f16
#   .gpu/on-device.sh .gpu/checkpoint-save.xz bench --synthetic sdxl --gguf Q4_K --device cuda:0 --max-dim 640
# `.gpu/` is git-ignored. Set CARGO_TARGET_DIR to reuse a target folder kept elsewhere, and
# SHARED_DIR where `shared/gpu/` is not beside the clone (or beside its main worktree).
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${SHARED_DIR:-}
if [ -z "$shared" ]; then
  # Beside this checkout, or beside the main worktree when this is a linked one.
  main=$(dirname "$(git rev-parse --path-format=absolute --git-common-dir)")
  for candidate in ../shared "$main/../shared"; do
    if [ -d "$candidate/gpu" ]; then shared=$candidate; break; fi
  done
fi
[ -n "$shared" ] || { echo "gpu-run: shared/gpu not found; set SHARED_DIR" >&2; exit 1; }
# shellcheck source=/dev/null
source "$shared/gpu/cuda-toolchain.sh"
cargo build --release --features cuda --bin checkpoint-save
# The path of the `gpu` integration-test binary, from cargo's JSON messages.
tests=$(cargo test --release --features cuda --test gpu --no-run --message-format=json \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "gpu" and m.get("executable"):
        print(m["executable"])')
[ -n "$tests" ] || { echo "gpu-run: test binary not found" >&2; exit 1; }
target=${CARGO_TARGET_DIR:-target}
mkdir -p .gpu
cp "$shared/gpu/on-device.sh" .gpu/
chmod +x .gpu/on-device.sh
xz -T2 -6 -c "$tests" > .gpu/tests.xz
xz -T2 -6 -c "$target/release/checkpoint-save" > .gpu/checkpoint-save.xz
ls -l .gpu
