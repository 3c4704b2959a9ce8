#!/usr/bin/env bash
# The GPU benchmarks, as one script for a single lease of a GPU machine (about ten minutes).
#
#   OUT=/some/dir bash benchmarks/gpu.sh
#
# The machine lent has no package registry: run `bash benchmarks/gpu_wheels.sh`
# here first and carry `.whl` (grain, tensorflow-datasets and their needs);
# they are installed under /tmp/site. The toolkit is read from this checkout.
# The steps' limits (kill grace included) sum to 560 s: run it with a
# `timeout_s` of 590 or so.
#
# Runs, each under its own time limit so a slow step cannot starve the rest
# (every log is written under $OUT), what the 2026-12-04 lease left
# unmeasured first. That lease showed that compilation, not stepping, fills a
# lease: each JAX program of these models compiles for seconds to tens of
# seconds on the H200 and torch.compile for longer, so each step asks for the
# fewest programs:
# - models.py at the paper's 224 px / batch 64 for DenseNet-121: JAX bf16
#   against PyTorch AMP (eager, channels_last), the one arch whose train step
#   was not measured;
# - grid_bill.py at the grid's real size in bf16 within --time-budget, timing
#   the strategies that share FT's and LP's gradient programs (each adds only
#   its small update program); the gradual strategies' stages, a gradient
#   program each, are bounded by FT's step, as its table says. `timeout`'s
#   SIGTERM ends only the measuring, given time to finish a compilation;
# - models.py for ResNet-50 and VGG-19 in bf16 again (the 4,000 img/s goal
#   had three timings, two under it);
# - strategies.py for ResNet-50 (FT, LP, LP from cached features), if time is
#   left: measured on that lease (0.002x FT), so it comes last.
# torch.compile (measured for the forward passes) and fp32 (earlier leases)
# are left out. The quick sweep's cells were measured end to end on 2026-11-26.
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
timeout -k 10 $((120 * SLOW)) python3 benchmarks/models.py --archs densenet121 \
    --settings "${SIZE}x${BATCH}" --steps "$STEPS" --precision bf16 2>&1 | tee "$OUT/densenet.txt"
timeout -k 40 $((220 * SLOW)) python3 benchmarks/grid_bill.py --image-size "$SIZE" \
    --batch "$BATCH" --steps "$STEPS" --data-steps "$DATA_STEPS" --precisions bf16 \
    --strategies ft lp lp_ft l2_sp l1_sp auto_rgn --time-budget $((180 * SLOW)) 2>&1 \
    | tee "$OUT/grid_bill.txt"
timeout -k 10 $((100 * SLOW)) python3 benchmarks/models.py --archs resnet50 vgg19 \
    --settings "${SIZE}x${BATCH}" --steps "$STEPS" --precision bf16 2>&1 | tee "$OUT/models.txt"
timeout -k 10 $((50 * SLOW)) python3 benchmarks/strategies.py --arch resnet50 \
    --image-size "$SIZE" --batch "$BATCH" --steps "$STEPS" --strategies lp \
    2>&1 | tee "$OUT/strategies.txt"
{
    echo "## GPU: $(head -2 "$OUT/gpu.txt" | tail -1) (\`benchmarks/gpu.sh\`, $(date +%F))"
    echo
    tail -1 "$OUT/gpu.txt"
    for f in densenet grid_bill models strategies; do
        echo
        echo "### $f"
        echo
        grep -E '^(\||#|- |finished)' "$OUT/$f.txt"
    done
} > "$OUT/rows.md"
