"""Stops a run mid-epoch, then resumes it, under jax.distributed; run by test_parallel.py.

    python -m tests.resume_worker OUT --process I --of K --port P [--frozen-bn MODE ...]

Each ``--frozen-bn`` mode's run goes into ``OUT/<mode>``, one after the other in the
same job (one start of JAX's distributed runtime for all).

Process 0 alone writes the run's progress, so every process resumes from
process 0's saved iterator state.
"""

from __future__ import annotations

import argparse
import os


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--process", type=int, required=True)
    p.add_argument("--of", type=int, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--frozen-bn", nargs="+", default=["update"])
    args = p.parse_args()
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"localhost:{args.port}",
        num_processes=args.of,
        process_id=args.process,
    )
    from medft_jax import fit

    for mode in args.frozen_bn:
        config, ds = run_config(mode)
        out = os.path.join(args.out, mode)
        stopped = fit.run_one(config, out, dataset=ds, progress=False, stop_after_steps=9)
        assert stopped == {}, stopped  # 6 steps an epoch: stopped inside epoch 1
        fit.run_one(config, out, dataset=ds, progress=False)


def run_config(frozen_bn: str = "update"):
    """LP on a small demo whose val and test sizes do not divide the batch.

    ``frozen_bn="freeze"``: one process trains from cached features, two from the images.
    """
    from medft_jax.config import RunConfig
    from medft_jax.data.demo import load_demo

    ds = load_demo(seed=0, image_size=32, sizes={"train": 100, "val": 37, "test": 53})
    config = RunConfig(
        strategy="lp", arch="resnet_tiny", dataset="demo", weights="none", lr=1e-2,
        epochs=2, patience=5, batch_size=16, image_size=32, frozen_bn=frozen_bn,
    )  # fmt: skip
    return config, ds


if __name__ == "__main__":
    main()
