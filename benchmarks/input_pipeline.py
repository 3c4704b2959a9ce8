"""Images/s the input pipeline delivers from prepared 224 px data, against raw decoding.

    python benchmarks/input_pipeline.py [--images 2000] [--workdir /tmp/medft_bench]

Writes a synthetic prepared cache (uint8 224×224×3, as ``experiments.prepare``
leaves it), warms the page cache with one pass, then times
``Dataset.train_iter`` (seeded shuffle, sorted memmap gathers, grain
prefetch) at several batch sizes and thread/worker settings, and, for
comparison, decoding + Resize(232) + CenterCrop(224) of raw JPEG/PNG files
(what a pipeline without the preparation step would do every epoch, and what
building a folder's cache does once), with one thread and with the threads a
cache build uses (``MEDFT_JAX_DECODE_THREADS``, default the CPUs up to 4). Prints
a Markdown table. The goal is >= 5,000 images/s (one H100 trains ResNet-50
at about 3,000 images/s).
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from medft_jax.errors import ArgumentParser, cli_main, exit_command, writable_dir

if TYPE_CHECKING:
    from medft_jax.data.dataset import Dataset


def make_cache(workdir: Path, n: int, size: int = 224) -> Dataset:
    """A prepared-looking cache of ``n`` smooth random images (compressibility is moot: raw)."""
    import numpy as np

    from medft_jax.data import cache
    from medft_jax.data.dataset import Dataset

    target = workdir / "cache"
    if not cache.is_complete(target):
        rng = np.random.default_rng(0)
        ids = np.asarray([f"im{i}" for i in range(n)])
        fields = {
            "labels": (np.arange(n) % 2).astype(np.int32),
            "ids": ids,
            "groups": ids,
            "patients": ids,
        }

        def chunks():
            for start in range(0, n, 256):
                k = min(256, n - start)
                yield rng.integers(0, 256, (k, size, size, 3), dtype=np.uint8), np.ones(k, bool)

        plan = cache.SplitPlan(n, (size, size, 3), chunks, fields)
        meta = {"class_names": ["a", "b"], "multilabel": False, "eval_grouping": "image"}
        before = peak_rss_mb()
        cache.write_cache(target, {"train": plan}, meta, progress=False)
        if before is not None:  # bounded: the rows are written, not mapped (RESULTS.md)
            grown = peak_rss_mb() - before
            print(
                f"cache write: peak RSS grew {grown:.0f} MB for {n * size * size * 3 / 1e6:.0f} MB"
            )
    splits, meta = cache.read_cache(target)
    return Dataset("bench", splits, tuple(meta["class_names"]))


def peak_rss_mb() -> float | None:
    """This process's peak resident memory in MB (Linux ``VmHWM``), else None."""
    try:
        with open("/proc/self/status") as f:
            line = next(x for x in f if x.startswith("VmHWM"))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1]) / 1024


def time_pipeline(ds: Dataset, batch_size: int, epochs: int, **options: int) -> float:
    """Images/s over ``epochs`` epochs (each a fresh, seeded shuffle)."""
    images = 0
    start = time.perf_counter()
    for epoch in range(epochs):
        it = ds.train_iter(batch_size, seed=0, epoch=epoch, shard_index=0, shard_count=1, **options)
        for batch in it:
            images += len(batch["image"])
    return images / (time.perf_counter() - start)


def time_raw(
    workdir: Path, n: int, fmt: str, size: tuple[int, int] = (512, 512), threads: int = 1
) -> float:
    """Images/s decoding + resizing + cropping ``n`` raw files of ``size`` (and hashing them,
    as a cache build does), in chunks of 64 as a cache build reads them, ``threads`` at
    once (:meth:`~medft_jax.data.images.ImageReader.read_many`)."""
    import numpy as np
    from PIL import Image

    from medft_jax.data.images import ImageReader

    folder = workdir / f"raw_{fmt}"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    picture = Image.fromarray(base).resize(size, Image.BICUBIC)  # photo-like, compressible
    paths = []
    for i in range(n):
        path = folder / f"{i}.{fmt}"
        if not path.exists():
            picture.rotate(i % 360).save(path)
        paths.append(path)
    reader = ImageReader(232, 224, threads=threads)
    start = time.perf_counter()
    for first in range(0, n, 64):
        reader.read_many(paths[first : first + 64])
    return n / (time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2000, help="at least 256, the largest batch")
    p.add_argument("--raw-images", type=int, default=100)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--workdir", default="/tmp/medft_bench_input")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    for flag in ("images", "raw_images", "epochs"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.images < 256:
        p.error(f"--images must be >= 256 (the largest batch timed), got {args.images}")
    parent = Path(args.workdir)
    made_parent = not parent.exists()
    writable_dir(parent, "--workdir")  # a file there: one line, not a FileExistsError
    from medft_jax.environment import machine_line  # after the flags: refused without JAX

    # A folder of its own: --workdir may hold the user's files (~, /tmp), never removed.
    workdir = Path(tempfile.mkdtemp(prefix="medft_bench_input_", dir=parent))
    try:
        ds = make_cache(workdir, args.images)
        time_pipeline(ds, 256, 1, num_threads=0)  # warm the page cache
        rows = []
        for batch_size in (64, 256):
            for label, options in (
                ("grain, no prefetch", {"num_threads": 0}),
                ("grain, 2 threads", {"num_threads": 2, "prefetch": 4}),
                ("grain, 2 worker processes", {"num_workers": 2}),
            ):
                rate = time_pipeline(ds, batch_size, args.epochs, **options)
                rows.append((f"prepared 224 px cache, batch {batch_size}, {label}", rate))
        from medft_jax.data.images import decode_threads

        threads = decode_threads()
        for fmt in ("jpg", "png"):
            time_raw(workdir, min(args.raw_images, 16), fmt)  # writes the files, warms the cache
            for n_threads in sorted({1, threads}):  # a cache build, one thread against its own
                rate = time_raw(workdir, args.raw_images, fmt, threads=n_threads)
                what = f"{n_threads} thread{'s' * (n_threads > 1)}"
                rows.append(
                    (
                        f"raw 512×512 {fmt.upper()}: decode + Resize(232) + CenterCrop(224), "
                        f"{what}",
                        rate,
                    )
                )
        print(machine_line())
        print(
            f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
            f"{args.images} images, page cache warm\n"
        )
        print("| reading | images/s |\n|---|---|")
        for name, rate in rows:
            print(f"| {name} | {rate:,.0f} |")
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            if made_parent:
                with contextlib.suppress(OSError):  # only if nothing else was put there
                    parent.rmdir()
    return 0


if __name__ == "__main__":
    exit_command(cli_main(main))
