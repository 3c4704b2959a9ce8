"""A CPU-sized grid: every strategy, two archs, the demo task, small images, two epochs.

    python -m experiments.sweep --config experiments/configs/quick.py --out runs/quick
    python -m experiments.report --runs runs/quick --out report/quick

64 runs (1 task x 2 archs x 8 strategies x 2 learning rates x 2 seeds):
26 minutes on a 2-core CPU with a cold compilation cache, 7.6 of them
compiling train steps (benchmarks/RESULTS.md). It is
enough to see the whole pipeline, tables and figures work, not to rank
strategies (random-init weights unless ported ImageNet weights are cached,
synthetic images, 2 epochs). LP-FT's head-only phase is shortened to one
epoch, so that it fine-tunes in the second; the gradual strategies unfreeze a
block an epoch, so in two epochs they train their first two stages only (each
run says so as it starts, and the report marks their cells ¶).
"""

from medft_jax.grid import Grid
from medft_jax.names import PAPER_STRATEGIES


def get_config() -> Grid:
    return Grid(
        name="quick",
        datasets=("demo",),
        archs=("resnet50", "densenet121"),
        strategies=tuple(PAPER_STRATEGIES),
        lrs=(1e-3, 1e-4),
        seeds=(0, 1),
        settings={
            "weights": "auto",
            "epochs": 2,
            "patience": 1,
            "batch_size": 32,
            "image_size": 32,
        },
        strategy_options={"lp_ft": {"lp_epochs": 1}},
    )
