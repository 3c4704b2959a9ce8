"""Trains a few data-parallel steps and saves the result; run by test_parallel.py.

    python -m tests.parallel_worker OUT.npz --devices N            # one process, N CPU devices
    python -m tests.parallel_worker OUT.npz --process I --of K --port P   # jax.distributed

Every process feeds its own rows of the same global batch; the result must
not depend on how the batch is split across devices or processes.
"""

from __future__ import annotations

import argparse
import os
import sys


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--process", type=int)
    p.add_argument("--of", type=int)
    p.add_argument("--port", type=int)
    args = p.parse_args()
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    import jax

    if args.process is not None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=f"localhost:{args.port}",
            num_processes=args.of,
            process_id=args.process,
        )
    import numpy as np
    import optax

    from medft_jax.models import create, init_variables
    from medft_jax.models.blocks import flatten
    from medft_jax.train import Trainer

    model = create("resnet50", 3)
    variables = init_variables(model, 0, 32)
    rng = np.random.default_rng(0)
    batch = 8
    trainer = Trainer(model, optax.sgd(0.05), multilabel=False)
    state = trainer.init_state(variables)
    trainable = jax.tree.map(lambda _: True, variables["params"])
    rows = slice(
        jax.process_index() * batch // jax.process_count(),
        (jax.process_index() + 1) * batch // jax.process_count(),
    )
    losses = []
    for _ in range(2):
        x = rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
        y = rng.integers(0, 3, (batch,)).astype(np.int32)
        state, loss = trainer.train_step(
            state,
            trainer.shard_batch(x[rows]),
            trainer.shard_batch(y[rows]),
            trainable=trainable,
            bn_train=True,
        )
        losses.append(float(loss))
    probs = trainer.predict(state, [{"image": x[rows], "mask": np.ones(batch, bool)[rows]}])
    if jax.process_index() == 0:
        out = {f"params/{k}": np.asarray(v) for k, v in flatten(state.params).items()}
        out |= {f"stats/{k}": np.asarray(v) for k, v in flatten(state.batch_stats).items()}
        np.savez(
            args.out, losses=np.asarray(losses), probs=probs, devices=jax.device_count(), **out
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
