"""Resume checkpoints every epoch against every 60 s: one run, side by side.

    python benchmarks/checkpoints.py [--strategy g_lf] [--epochs 8]

Runs ``experiments.run --strategy S`` on the demo task (ResNet-50, 32 px,
its CPU-sized defaults) twice in fresh folders, with
``MEDFT_JAX_CHECKPOINT_SECONDS=0`` (a resume checkpoint and a best save after
every epoch, as before) and with the default (60), and prints each run's wall
and checkpoint seconds from its record, their ratio, and whether the two
records' test metrics are equal (they must be). A first run, discarded, warms
the persistent compilation cache and the demo data for both: the side run first
paid the cold start (two thirds of the gap the ratio showed was that, not
checkpoints).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from medft_jax.config import check_value
from medft_jax.errors import ArgumentParser, cli_main, exit_as_child, exit_command
from medft_jax.names import STRATEGIES

ROOT = Path(__file__).resolve().parents[1]


def run(out: Path, seconds: str, strategy: str, epochs: int) -> dict:
    cmd = [sys.executable, "-m", "experiments.run", "--strategy", strategy,
           "--epochs", str(epochs), "--out", str(out), "--no-progress"]  # fmt: skip
    env = {**os.environ, "MEDFT_JAX_CHECKPOINT_SECONDS": seconds}
    done = subprocess.run(cmd, check=False, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    exit_as_child(done.returncode)
    (record,) = out.rglob("record.json")
    return json.loads(record.read_text())


def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--strategy", default="g_lf", choices=STRATEGIES)
    p.add_argument("--epochs", type=int, default=8)
    args = p.parse_args(argv)
    check_value("epochs", args.epochs, "--epochs")  # experiments.run's rule, before any run
    if args.epochs < 2:
        p.error(
            f"--epochs must be >= 2 (a resume point needs an epoch after it), got {args.epochs}"
        )
    with tempfile.TemporaryDirectory() as tmp:
        run(Path(tmp) / "warm-up", "", args.strategy, args.epochs)  # discarded: see above
        every = run(Path(tmp) / "every", "0", args.strategy, args.epochs)
        timed = run(Path(tmp) / "timed", "", args.strategy, args.epochs)
    from medft_jax.environment import machine_line  # JAX in this process after the runs only

    print(machine_line())
    print(f"# demo, ResNet-50, {args.strategy}, {args.epochs} epochs")
    print("| MEDFT_JAX_CHECKPOINT_SECONDS | wall s | checkpoints s |")
    print("|---|---|---|")
    for label, r in (("0 (every epoch)", every), ("60 (default)", timed)):
        print(f"| {label} | {r['wall_seconds']:.1f} | {r['seconds']['checkpoints']:.1f} |")
    print(f"wall, default / every epoch: {timed['wall_seconds'] / every['wall_seconds']:.2f}")
    saved = every["seconds"]["checkpoints"] - timed["seconds"]["checkpoints"]
    print(f"checkpoint seconds saved by the default: {saved:.1f}")
    print(f"same test metrics: {every['test'] == timed['test']}")
    return 0


if __name__ == "__main__":
    exit_command(cli_main(main))
