"""bf16 against float32 on real images: test AUROC of three seeds each, and the time.

    python benchmarks/precision.py [--npz ../shared/data/breastmnist.npz] [--epochs 10]

Runs ``experiments.run`` on BreastMNIST (546 / 78 / 156 ultrasound images)
with ``--precision fp32`` and ``--precision bf16`` (bf16 compute; float32
parameters, Adam state and BatchNorm statistics), seeds 0-2 each, ResNet-50,
32 px, batch 64, Adam 1e-3, early stopping with patience 5. It prints every
run's test AUROC and train seconds, and whether the bf16 runs' mean AUROC
lies within the float32 runs' spread (min to max), the issue's criterion.

``--weights`` defaults to ``auto`` (the ported ImageNet weights when present,
else random init, as the records' ``weights_used`` says). On a CPU, bf16 is
not faster (XLA's CPU backend computes it in float32 with conversions);
the speed rows that matter are ``benchmarks/models.py --precision bf16`` on
a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from medft_jax.config import check_value
from medft_jax.errors import (
    ArgumentParser,
    UserError,
    cli_main,
    did_you_mean,
    exit_as_child,
    exit_command,
)
from medft_jax.names import ARCHS, is_known_arch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "breastmnist.npz"


def run(data_dir: Path, out: Path, precision: str, args: argparse.Namespace) -> list[dict]:
    cmd = [
        sys.executable, "-m", "experiments.run", "--strategy", "ft", "--arch", args.arch,
        "--dataset", "medmnist/breastmnist", "--data-dir", str(data_dir),
        "--weights", args.weights, "--lr", "1e-3", "--epochs", str(args.epochs),
        "--patience", "5", "--batch-size", "64", "--image-size", str(args.image_size),
        "--seeds", "0", "1", "2", "--precision", precision, "--out", str(out), "--no-progress",
    ]  # fmt: skip
    done = subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL)
    exit_as_child(done.returncode)
    records = [json.loads(p.read_text()) for p in sorted(out.rglob("record.json"))]
    return [r for r in records if r["config"]["precision"] == precision]


def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--npz", type=Path, default=SHARED, help="BreastMNIST's MedMNIST .npz")
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--weights", default="auto")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--image-size", type=int, default=32)
    args = p.parse_args(argv)
    # experiments.run's own rules, here: a bad flag is refused before the first run starts
    if not is_known_arch(args.arch):
        raise UserError(
            f"--arch {args.arch!r} is unknown; valid: {', '.join(ARCHS)}"
            + did_you_mean(args.arch, ARCHS)
        )
    check_value("epochs", args.epochs, "--epochs")
    check_value("image_size", args.image_size, "--image-size")
    if not args.npz.is_file():
        raise UserError(f"--npz {args.npz}: no such file (expected BreastMNIST's .npz)")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        os.symlink(args.npz.resolve(), data_dir / "breastmnist.npz")
        for precision in ("fp32", "bf16"):
            t = time.perf_counter()
            rows[precision] = run(data_dir, Path(tmp) / "runs", precision, args)
            print(f"# {precision}: {time.perf_counter() - t:.0f} s for 3 runs", flush=True)
    weights = {r["weights_used"] for rs in rows.values() for r in rs}
    from medft_jax.environment import machine_line  # JAX in this process after the runs only

    print(machine_line())
    print(
        f"# BreastMNIST, {args.arch} ({', '.join(sorted(weights))}), "
        f"{args.image_size} px, batch 64, Adam 1e-3, <= {args.epochs} epochs, patience 5"
    )
    print("| precision | seed | best epoch | test AUROC | train s |")
    print("|---|---|---|---|---|")
    for precision, records in rows.items():
        for r in records:
            print(
                f"| {precision} | {r['config']['seed']} | {r['best_epoch'] + 1} | "
                f"{r['test']['auroc']:.3f} | {r['train_seconds']:.1f} |"
            )
    f32 = [r["test"]["auroc"] for r in rows["fp32"]]
    bf16 = statistics.mean(r["test"]["auroc"] for r in rows["bf16"])
    inside = min(f32) <= bf16 <= max(f32)
    print(
        f"bf16 mean test AUROC {bf16:.3f}; float32 runs {min(f32):.3f}-{max(f32):.3f} "
        f"(mean {statistics.mean(f32):.3f}): {'within' if inside else 'OUTSIDE'} their spread"
    )
    return 0


if __name__ == "__main__":
    exit_command(cli_main(main))
