#!/usr/bin/env bash
# The GPU benchmark in one command: ResNet-50 at 224 x 224 in bfloat16 on one GPU.
#
#   bash launch/gpu_bench.sh [WORKDIR]           # a machine with an NVIDIA GPU, CUDA build of JAX
#   bash launch/gpu_bench.sh --smoke [WORKDIR]   # any machine: the same code path, tiny sizes (CI)
#
# Writes WORKDIR/bench.json and WORKDIR/bench.md (default runs/gpu_bench):
#   - PGD with EOT-10, image-gradients/s, against randomized smoothing (sigma
#     0.25) and BaRT-6, batch 32, 5 steps, bfloat16 compute, with the fraction
#     of the GPU's bfloat16 peak (datasheet and a measured matmul);
#   - torchattacks EOTPGD on the same weights and smoothing (when torch,
#     torchvision and torchattacks are installed: requirements-bench.txt);
#   - votes of 100 draws (defended forward passes/s), both engines;
#   - every distinct convolution of ResNet-50 at 224 alone, against PyTorch;
#   - BaRT-1 and BaRT-6 draws/s at 224 x 224, batch 32, and each transform alone.
# Budget: under 8 minutes on one H100/H200. Uses .venv/bin/python (PYTHON=... overrides).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}

smoke=0
if [[ "${1:-}" == "--smoke" ]]; then
  smoke=1
  shift
fi
workdir=${1:-runs/gpu_bench}

if [[ $smoke == 0 ]]; then
  platform=$("$python" -c "import jax; print(jax.devices()[0].platform)")
  if [[ $platform != gpu ]]; then
    echo "gpu_bench: JAX sees no GPU (its first device is '$platform'). Install a CUDA build of" \
         "JAX matching the installed one (e.g. .venv/bin/pip install \"jax[cuda13]==\$(.venv/bin/python" \
         "-c 'import jax; print(jax.__version__)')\"), or run 'bash launch/gpu_bench.sh --smoke'" \
         "to check the code path on this machine." >&2
    exit 2
  fi
  sizes=(--resnets=50@224 --resnet_mode=full --resnet_batch=32 --bfloat16=only
         --defense=smoothing --defense=bart --eot=10 --steps=5 --votes=100
         --bart_rates_sizes=224x32 --bart_rates_kappas=1,6)
else
  # ResNet-18 at 32 pixels, one image, one step, EOT-2; BaRT rates at 28 x 28.
  sizes=(--resnets=18@32 --resnet_mode=smoke --bfloat16=off --defense=smoothing --eot=2
         --steps=1 --votes=4 --bart_rates_sizes=28x2 --bart_rates_kappas=1 --repeats=1
         --row_budget_s=0.1)
fi

exec "$python" -m launch.bench --workdir="$workdir" --widths= --nostudy --bart_rates=on \
  "${sizes[@]}"
