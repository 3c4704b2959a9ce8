#!/usr/bin/env bash
# The GPU benchmarks, as one script for a single lease of a GPU machine (about ten minutes).
#
#   OUT=/some/dir bash benchmarks/gpu.sh
#
# The machine lent has no package registry: run `bash benchmarks/gpu_wheels.sh`
# here first and carry `.whl` (grain, tensorflow-datasets and their needs);
# they are installed under /tmp/site. The toolkit is read from this checkout.
# Every step's limit sums to about nine and a half minutes at worst.
#
# Runs, each under its own time limit so a slow step cannot starve the rest
# (every log is written under $OUT):
# - models.py at the paper's 224 px / batch 64, fp32 and bf16 (JAX bf16 vs
#   PyTorch AMP channels_last, and torch.compile where it builds), one
#   process per arch so a slow torch.compile costs only its own arch;
# - strategies.py for ResNet-50 at the same size (LP from cached features too);
# - grid_bill.py at the grid's real size: the paper grid's projected
#   device-hours, bf16 then fp32, measuring within --time-budget (it still
#   reports if `timeout` stops it: SIGTERM ends only the measuring);
# - two cells of the quick sweep end to end (into a fresh folder: nothing skipped).
# Then $OUT/rows.md gathers the tables, headed by the card and versions, for RESULTS.md.
#
# SMOKE=1 runs the same commands at 32 px, batch 4, one step, with longer limits:
# a check, on any machine, that every command and flag in this script still works.
set -uo pipefail
OUT=${OUT:-/tmp/medft_gpu}
case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac  # the caller's folder, before the cd
cd "$(dirname "$0")/.."
SIZE=224 BATCH=64 STEPS=5 DATA_STEPS=20 SLOW=1
if [ "${SMOKE:-0}" = 1 ]; then SIZE=32 BATCH=4 STEPS=1 DATA_STEPS=2 SLOW=4; fi
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.5
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! python3 -c "import grain, tensorflow_datasets" 2>/dev/null && [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site" || exit 2
fi
python3 -c "import grain, tensorflow_datasets" 2>/dev/null || {
    echo "error: grain or tensorflow-datasets missing; run benchmarks/gpu_wheels.sh and carry .whl"
    exit 2
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi"; } \
    2>&1 | tee "$OUT/gpu.txt"
python3 -c "import jax, flax, optax, grain, torch; print('jax', jax.__version__, 'flax', \
flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, jax.devices())" 2>&1 \
    | tee -a "$OUT/gpu.txt"
: > "$OUT/models.txt"
for arch in resnet50 densenet121 vgg19; do
    timeout -k 10 $((75 * SLOW)) python3 benchmarks/models.py --archs "$arch" \
        --settings "${SIZE}x${BATCH}" --steps "$STEPS" \
        --precision both --torch-compile 2>&1 | tee -a "$OUT/models.txt"
done
timeout -k 10 $((55 * SLOW)) python3 benchmarks/strategies.py --arch resnet50 \
    --image-size "$SIZE" --batch "$BATCH" --steps "$STEPS" --strategies lp lp_ft l2_sp auto_rgn \
    2>&1 | tee "$OUT/strategies.txt"
timeout -k 20 $((170 * SLOW)) python3 benchmarks/grid_bill.py --image-size "$SIZE" \
    --batch "$BATCH" --steps "$STEPS" --data-steps "$DATA_STEPS" --precisions bf16 fp32 \
    --time-budget $((95 * SLOW)) 2>&1 | tee "$OUT/grid_bill.txt"
RUNS=$(mktemp -d)  # fresh: a run found done would be skipped, not timed
timeout -k 10 $((45 * SLOW)) python3 -m experiments.sweep --config experiments/configs/quick.py \
    --only "arch=resnet50,strategy=ft|lp,seed=0,lr=0.001" --out "$RUNS" 2>&1 \
    | tee "$OUT/sweep.txt"
mkdir -p "$OUT/sweep_records"
(cd "$RUNS" && find . -name record.json -exec cp --parents {} "$OUT/sweep_records" \;)
rm -rf "$RUNS"
{
    echo "## GPU: $(head -2 "$OUT/gpu.txt" | tail -1) (\`benchmarks/gpu.sh\`, $(date +%F))"
    echo
    tail -1 "$OUT/gpu.txt"
    for f in models strategies grid_bill sweep; do
        echo
        echo "### $f"
        echo
        grep -E '^(\||#|- |finished)' "$OUT/$f.txt"
    done
} > "$OUT/rows.md"
