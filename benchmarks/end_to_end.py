"""A new user's first run, end to end, in the toolkit and in plain PyTorch.

    python benchmarks/end_to_end.py                    # synthetic PneumoniaMNIST-sized npz
    python benchmarks/end_to_end.py --npz ../shared/data/breastmnist.npz --flag breastmnist

The scenario: full fine-tuning of a randomly initialised ResNet-50 on a
28 px MedMNIST-format chest X-ray set (3,882 training images unless
``--npz`` is given), resized to 32 px, batch 64, Adam 1e-3, 5 epochs,
validation after every epoch, the test set scored with the best epoch's
weights. The toolkit runs it as a user would, ``python -m experiments.run``
(data preparation, compilation and checkpoints included); PyTorch runs the
same protocol as a short eager script a PyTorch user would write (images
resized once with the same PIL resize, a ``DataLoader``, torchvision's
``resnet50``). Each side is a fresh process, timed from start to exit, on the
same threads. Printed: wall seconds, the training loop's seconds and test
AUROC for each, and the JAX/PyTorch wall ratio (goal: <= 1.25).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medft_jax.config import check_value
from medft_jax.data.medmnist_info import FLAGS
from medft_jax.errors import (
    ArgumentParser,
    UserError,
    cli_main,
    did_you_mean,
    exit_as_child,
    exit_command,
)

SPLITS = {"train": 3882, "val": 524, "test": 624}  # the training-set size
FLAG = "pneumoniamnist"  # binary, grayscale, 28 px: the MedMNIST chest X-ray set


def make_npz(path: Path, seed: int = 0) -> None:
    """A MedMNIST-format npz with a learnable signal: class 1 carries a faint bright disc."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:28, :28]
    arrays = {}
    for split, n in SPLITS.items():
        labels = rng.integers(0, 2, n)
        images = rng.normal(110, 30, (n, 28, 28))
        cy, cx = rng.integers(8, 20, (2, n))
        disc = (yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2 < 16
        images += 40 * disc * labels[:, None, None]
        arrays[f"{split}_images"] = np.clip(images, 0, 255).astype(np.uint8)
        arrays[f"{split}_labels"] = labels.reshape(-1, 1).astype(np.uint8)
    np.savez(path, **arrays)


def child_ok(done: subprocess.CompletedProcess) -> None:
    """A failed side ends this script with its status: it printed why (one ``error:`` line
    from experiments.run), so no CalledProcessError traceback follows it."""
    exit_as_child(done.returncode)


def run_toolkit(data_dir: Path, out: Path, flag: str, epochs: int) -> dict:
    cmd = [
        sys.executable, "-m", "experiments.run", "--strategy", "ft", "--arch", "resnet50",
        "--dataset", f"medmnist/{flag}", "--data-dir", str(data_dir), "--weights", "none",
        "--lr", "1e-3", "--epochs", str(epochs), "--patience", "5", "--batch-size", "64",
        "--image-size", "32", "--seeds", "0", "--out", str(out), "--no-progress",
    ]  # fmt: skip
    # A new user's first run: no compiled programs cached from an earlier invocation.
    env = {**os.environ, "MEDFT_JAX_CACHE": str(out.parent / "fresh-cache")}
    start = time.perf_counter()
    child_ok(subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, env=env))
    wall = time.perf_counter() - start
    (record_file,) = out.rglob("record.json")
    record = json.loads(record_file.read_text())
    return {
        "wall": wall,
        "train": record["train_seconds"] + record["compile_seconds"],
        "auroc": record["test"]["auroc"],
        "best_epoch": record["best_epoch"] + 1,  # 1-based, as the PyTorch side counts
    }


def torch_main(npz: str, epochs: int, seed: int = 0) -> None:
    """The PyTorch side, run in its own process; prints its result as JSON."""
    start = time.perf_counter()
    import torch
    import torchvision
    from PIL import Image
    from sklearn.metrics import roc_auc_score

    torch.manual_seed(seed)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def load(split):
        with np.load(npz) as data:
            images, labels = data[f"{split}_images"], data[f"{split}_labels"].reshape(-1)
        rgb = [Image.fromarray(im).convert("RGB") for im in images]
        resized = np.stack([np.asarray(im.resize((32, 32), Image.BILINEAR)) for im in rgb])
        x = torch.from_numpy(resized).permute(0, 3, 1, 2).float().div(255)
        return (x - mean) / std, torch.from_numpy(labels.astype(np.int64))

    data = {split: load(split) for split in ("train", "val", "test")}
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(*data["train"]),
        batch_size=64,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    model = torchvision.models.resnet50(num_classes=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def auroc(split):
        model.eval()
        x, y = data[split]
        with torch.inference_mode():
            # Ranked as the toolkit ranks (float64 log-probabilities): float32 softmax
            # rounds confident scores to 1.0 and ties them.
            scores = torch.cat([model(b).double().log_softmax(-1)[:, 1] for b in x.split(256)])
        return float(roc_auc_score(y.numpy(), scores.numpy()))

    train_start = time.perf_counter()
    best, best_state, best_epoch = -1.0, None, 0
    for epoch in range(1, epochs + 1):
        model.train()
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        score = auroc("val")
        if score > best:
            best, best_epoch = score, epoch
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
    train = time.perf_counter() - train_start  # the epochs and their validation, as JAX's
    model.load_state_dict(best_state)
    test = auroc("test")
    print(json.dumps({"train": train, "auroc": test, "best_epoch": best_epoch,
                      "in_process": time.perf_counter() - start}))  # fmt: skip


def run_torch(npz: Path, epochs: int) -> dict:
    cmd = [sys.executable, __file__, "--torch-only", "--npz", str(npz), "--epochs", str(epochs)]
    start = time.perf_counter()
    done = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)  # why, as it said it
    child_ok(done)
    out = done.stdout
    result = json.loads(out.strip().splitlines()[-1])
    result["wall"] = time.perf_counter() - start
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--npz", type=Path, help="a MedMNIST-format .npz (default: make one)")
    p.add_argument("--flag", default=FLAG, help="its MedMNIST flag (default: pneumoniamnist)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--torch-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.flag not in FLAGS:  # experiments.run refused it only after the PyTorch side ran
        raise UserError(
            f"--flag {args.flag!r}: unknown MedMNIST flag; known: {', '.join(sorted(FLAGS))}"
            + did_you_mean(args.flag, FLAGS)
        )
    check_value("epochs", args.epochs, "--epochs")
    if args.npz and not args.npz.is_file():
        raise UserError(f"--npz {args.npz}: no such file (expected a MedMNIST-format .npz)")
    if args.torch_only:
        torch_main(str(args.npz), args.epochs)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        npz = data_dir / f"{args.flag}.npz"
        if args.npz:
            os.symlink(args.npz.resolve(), npz)
        else:
            make_npz(npz)
        with np.load(npz) as data:
            sizes = {s: len(data[f"{s}_labels"]) for s in ("train", "val", "test")}
        torch_result = run_torch(npz, args.epochs)
        jax_result = run_toolkit(data_dir, Path(tmp) / "runs", args.flag, args.epochs)
    from medft_jax.environment import machine_line  # JAX in this process after the runs only

    print(f"{machine_line()}; torch {importlib.metadata.version('torch')}")
    print(
        f"# {args.flag} "
        f"{'(' + str(args.npz) + ')' if args.npz else '(synthetic)'} {sizes}; ResNet-50 "
        f"from random init, 32 px, batch 64, Adam 1e-3, {args.epochs} epochs"
    )
    print("| framework | wall s | train loop s | best epoch | test AUROC |")
    print("|---|---|---|---|---|")
    for name, r in (("JAX (medft-jax)", jax_result), ("PyTorch (eager)", torch_result)):
        row = (name, f"{r['wall']:.1f}", f"{r['train']:.1f}", r["best_epoch"], f"{r['auroc']:.3f}")
        print("| " + " | ".join(map(str, row)) + " |")
    print(f"JAX/PyTorch wall: {jax_result['wall'] / torch_result['wall']:.2f} (goal <= 1.25)")
    return 0


if __name__ == "__main__":
    exit_command(cli_main(main))
