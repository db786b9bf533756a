#!/usr/bin/env bash
# The accelerator check of issue 21: the paper-size AllCNN train step, the ISPF generator-student loop
# and the 10-class vmapped ISPF sweep against sequential runs, on the GPU/TPU JAX sees, written as one
# JSON (img/s, GFLOP/s and fraction of the device's measured f32 matmul peak per workload, the sweep
# speed-up, device kind, JAX version). No PyTorch side: the point is the device, not the comparison.
#
#   bench/device_check.sh [OUT_DIR]        # default $OUT, else the current directory
#
# Budget: 470 s for the benchmark itself (one warm-up + 2 timed repetitions per workload), so the
# whole check stays under 8 minutes with JAX's start-up. Exit 2 with one line when JAX sees no
# accelerator (jax.default_backend() == "cpu"), 124 when the budget ran out (the JSON is then absent).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-.}}"
py="${PYTHON:-python}"
backend="$("$py" -c 'import jax; print(jax.default_backend())' 2>/dev/null || echo none)"
if [[ "$backend" == "cpu" || "$backend" == "none" ]]; then
  echo "error: JAX sees no accelerator (backend: $backend); run this on a GPU/TPU machine with jax[cuda12] or jax[tpu] installed" >&2
  exit 2
fi
mkdir -p "$out"
"$py" -c 'import jax; print("devices:", jax.devices())'
timeout 470 "$py" -m launch.bench --size=paper --notorch --reps=2 --compile_cache=none \
  --out="$out/device_check.json"
echo "written: $out/device_check.json"
