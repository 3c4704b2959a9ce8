#!/usr/bin/env bash
# The GPU benchmarks, as one script for one short session on a GPU machine (about ten minutes).
#
#   OUT=/some/dir bash benchmarks/gpu.sh
#
# Where the GPU machine reaches no package registry, run `bash benchmarks/gpu_wheels.sh`
# first and copy `.whl/` along with the checkout (grain, tensorflow-datasets and their needs);
# they are installed under /tmp/site (without them models.py still runs; the
# steps needing them are skipped, and rows.md says so). The toolkit is read
# from this checkout. The whole script keeps within GPU_BUDGET seconds
# (default 560, setup included): each step's limit is the smaller of its own
# and what is left, and a step with too little left is skipped. Run it under an
# outer limit of 590 s or so. $OUT/rows.md is rewritten after every step (and
# at exit), so a kill at that limit still leaves the rows so far; at
# most 7 files are written under $OUT. The commit: git's where
# .git exists, else $GPU_COMMIT, else the one gpu_wheels.sh wrote in .whl/COMMIT.
#
# Runs, each under its own time limit so a slow step cannot starve the rest
# (every log is written under $OUT), what the 2026-12-04 session left
# unmeasured first. That session showed that compilation, not stepping, fills a
# session: each JAX program of these models compiles for seconds to tens of
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
# - models.py for ResNet-50 in bf16 again (the 4,000 img/s goal had three
#   timings, two under it; VGG-19 met its 1.2x AMP goal, so its time went to
#   grid_bill, which must time all three archs);
# - strategies.py for ResNet-50 (FT, LP, LP from cached features), if time is
#   left: measured in that session (0.002x FT), so it comes last.
# torch.compile (measured for the forward passes) and fp32 (earlier sessions)
# are left out. The quick sweep's cells were measured end to end on 2026-11-26.
# $OUT/rows.md gathers the tables, headed by the card, versions and commit, for
# RESULTS.md (benchmarks/gpu_rows.py). grid_bill also writes $OUT/grid_bill.json
# as it measures: `python benchmarks/grid_bill.py --from-json grid_bill.json`
# prints its report later, on any machine, if the step was killed outright.
#
# SMOKE=1 runs the same commands at 32 px, batch 4, one step, with longer limits:
# a check, on any machine, that every command and flag in this script still works.
set -uo pipefail
START=$SECONDS
OUT=${OUT:-/tmp/medft_gpu}
case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac  # the caller's folder, before the cd
cd "$(dirname "$0")/.."
SIZE=224 BATCH=64 STEPS=5 DATA_STEPS=20 SLOW=1
if [ "${SMOKE:-0}" = 1 ]; then SIZE=32 BATCH=4 STEPS=1 DATA_STEPS=2 SLOW=4; fi
TOTAL=${GPU_BUDGET:-$((560 * SLOW))}
mkdir -p "$OUT"
rm -f "$OUT"/{gpu,densenet,grid_bill,models,strategies}.txt "$OUT"/grid_bill.json "$OUT"/rows.md
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.5
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
META="$OUT/gpu.txt"
rows() { python3 benchmarks/gpu_rows.py "$OUT" 2>/dev/null || true; }
# At exit the rows go to stdout too: the log holds them if $OUT is lost.
trap 'rows; cat "$OUT/rows.md" 2>/dev/null' EXIT
left() { echo $((TOTAL - (SECONDS - START))); }
echo "date: $(date '+%F %H:%M %Z')" >> "$META"
commit=$(git rev-parse HEAD 2>/dev/null) \
    && { git diff --quiet HEAD 2>/dev/null || commit="$commit (uncommitted changes)"; }
commit=${commit:-${GPU_COMMIT:-}}
if [ -z "$commit" ] && [ -f .whl/COMMIT ]; then
    commit="$(tr '\n' ' ' < .whl/COMMIT)(when .whl was prepared)"
fi
echo "commit: ${commit:-commit not recorded}" >> "$META"
card=$(timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
    2>/dev/null | head -1)
echo "card: ${card:-no nvidia-smi}" >> "$META"
rows

# grain and tensorflow-datasets: grid_bill.py and strategies.py import them, models.py does not.
have_data() { timeout 60 python3 -c "import grain, tensorflow_datasets" 2>/dev/null; }
DATA=1
if ! have_data; then
    if [ -d .whl ] && timeout 90 python3 -m pip install -q --no-index --no-deps --no-compile \
        --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >/dev/null 2>&1; then
        export PYTHONPATH="$PYTHONPATH:/tmp/site"
    fi
    if ! have_data; then
        DATA=0
        echo "setup: grain or tensorflow-datasets missing (.whl not carried or not installable):" \
            "grid_bill and strategies skipped, models.py run" >> "$META"
    fi
fi
timeout 60 python3 - >> "$META" 2>/dev/null <<'PY' || echo "versions: not recorded" >> "$META"
import importlib
parts = []
for name in ("jax", "flax", "optax", "grain", "torch"):
    try:
        parts.append(f"{name} {importlib.import_module(name).__version__}")
    except Exception as e:  # noqa: BLE001  (a missing or broken package: said, not fatal)
        parts.append(f"{name} missing ({type(e).__name__})")
try:
    import jax
    parts.append(str(jax.devices()))
except Exception as e:  # noqa: BLE001
    parts.append(f"jax.devices() failed ({type(e).__name__})")
print("versions:", ", ".join(parts))
PY
# Timings on a CPU under a "GPU" heading (or JAX on the CPU against torch on the GPU) would
# be wrong rows: without a GPU backend nothing is timed. SMOKE=1 runs anywhere.
if [ "${SMOKE:-0}" != 1 ]; then
    backend=$(timeout 120 python3 -c "import jax; print(jax.default_backend())" 2>/dev/null)
    if [ "$backend" != gpu ]; then
        echo "setup: JAX's backend is ${backend:-unknown}, not gpu: nothing timed" >> "$META"
        echo "gpu.sh: JAX's backend is ${backend:-unknown}, expected gpu (a CUDA jaxlib);" \
            "SMOKE=1 runs the commands on any machine" >&2
        exit 1
    fi
fi
rows

# step NAME WANT GRACE MIN CMD...: CMD under `timeout`, its limit the smaller of WANT and
# what is left (less GRACE and a 5 s reserve for rows.md); skipped below MIN seconds.
# The limit is passed to CMD as $LIMIT (grid_bill's --time-budget). Output to $OUT/NAME.txt.
step() {
    local name=$1 want=$2 grace=$3 min=$4
    shift 4
    local limit=$(( $(left) - grace - 5 ))
    [ "$limit" -gt "$want" ] && limit=$want
    if [ "$limit" -lt "$min" ]; then
        echo "step $name: skipped ($(left) s of the ${TOTAL} s budget left)" >> "$META"
        rows
        return
    fi
    local t0=$SECONDS
    LIMIT=$limit timeout -k "$grace" "$limit" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    local how="rc $rc"
    [ "$rc" = 124 ] && how="stopped at its limit (SIGTERM)"
    [ "$rc" = 137 ] && how="killed at its limit + ${grace} s grace"
    echo "step $name: $how, limit ${limit} s, wall $((SECONDS - t0)) s" >> "$META"
    rows
}
skip() { echo "step $1: skipped ($2)" >> "$META"; rows; }

step densenet $((120 * SLOW)) 10 30 python3 benchmarks/models.py --archs densenet121 \
    --settings "${SIZE}x${BATCH}" --steps "$STEPS" --precision bf16
if [ "$DATA" = 1 ]; then
    # The budget ends 10 s before the SIGTERM; the report needs under a second after it.
    step grid_bill $((250 * SLOW)) 15 60 bash -c 'exec python3 benchmarks/grid_bill.py \
        --image-size "$0" --batch "$1" --steps "$2" --data-steps "$3" --precisions bf16 \
        --strategies ft lp lp_ft l2_sp l1_sp auto_rgn --time-budget $((LIMIT - 10)) \
        --out "$4/grid_bill.json"' "$SIZE" "$BATCH" "$STEPS" "$DATA_STEPS" "$OUT"
else
    skip grid_bill "grain or tensorflow-datasets missing"
fi
# VGG-19 met its goal in the last session (1.25x AMP): its time goes to grid_bill, which
# must time all three archs for the grid's bill (its VGG-19 was not started in 220 s).
step models $((70 * SLOW)) 10 30 python3 benchmarks/models.py --archs resnet50 \
    --settings "${SIZE}x${BATCH}" --steps "$STEPS" --precision bf16
if [ "$DATA" = 1 ]; then
    step strategies $((50 * SLOW)) 10 20 python3 benchmarks/strategies.py \
        --arch resnet50 --image-size "$SIZE" --batch "$BATCH" --steps "$STEPS" --strategies lp
else
    skip strategies "grain or tensorflow-datasets missing"
fi
echo "total: finished in $((SECONDS - START)) s of the ${TOTAL} s budget" >> "$META"
