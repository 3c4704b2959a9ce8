#!/usr/bin/env bash
# The GPU benchmarks, as one script for a single lease of a GPU machine.
#
#   OUT=/some/dir bash benchmarks/gpu.sh
#
# Runs the models benchmark at the paper's 224 px / batch 64 for the three
# archs, the strategies benchmark for ResNet-50 at the same size, and two
# cells of the quick sweep end to end, each under its own time limit so a
# slow step cannot starve the rest; every log is written under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/medft_gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.5
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import jax, flax, optax, grain; print('jax', jax.__version__, 'flax', flax.__version__, \
'optax', optax.__version__, jax.devices())" 2>&1 | tee -a "$OUT/gpu.txt"
timeout 220 python3 benchmarks/models.py --settings 224x64 --steps 10 2>&1 | tee "$OUT/models.txt"
timeout 170 python3 benchmarks/strategies.py --arch resnet50 --image-size 224 --batch 64 \
    --steps 10 --strategies lp lp_ft l2_sp auto_rgn 2>&1 | tee "$OUT/strategies.txt"
timeout 100 python3 -m experiments.sweep --config experiments/configs/quick.py \
    --only "arch=resnet50,strategy=ft|lp,seed=0,lr=0.001" --out /tmp/medft_gpu_runs 2>&1 \
    | tee "$OUT/sweep.txt"
