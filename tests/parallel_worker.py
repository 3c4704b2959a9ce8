"""Trains a few data-parallel steps and saves the result; run by test_parallel.py.

    python -m tests.parallel_worker OUT.npz --devices N            # N devices, then 1 of them
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

    from medft_jax.models import create, init_variables
    from medft_jax.train import make_mesh

    # A ResNet-50 with one bottleneck per layer: the same layers (BatchNorm included)
    # as the toolkit's models, at a quarter of the compile time.
    model = create("resnet_tiny", 3)
    variables = init_variables(model, 0, 32)
    meshes = [make_mesh()]
    if jax.process_count() == 1 and jax.device_count() > 1:
        meshes.append(make_mesh(jax.devices()[:1]))  # the reference: the same, on one device
    results = {}
    for mesh in meshes:
        results[mesh.devices.size] = _train(model, variables, mesh)
    if jax.process_index() == 0:
        np.savez(args.out, **{f"{n}/{k}": v for n, r in results.items() for k, v in r.items()})
    sys.stdout.flush()


def _train(model, variables, mesh):
    """Phase 1: one step with BatchNorm on batch statistics (loss, running statistics).
    Phase 2: one step with BatchNorm on running statistics (loss, parameter update,
    eval probabilities). Gradients through train-mode BatchNorm of a random-init
    ResNet on small batches are ill-conditioned (reordering the batch on one device
    moves them by ~1%), so the update comparison runs in eval mode, where it
    isolates what data parallelism changes: the gradient all-reduce. Phase 1
    trains the head only (LP under the paper's BatchNorm mode): its loss and
    statistics come from the same forward pass as FT's, and the program has no
    backward convolutions to compile.
    """
    import jax
    import numpy as np
    import optax

    from medft_jax.models.blocks import flatten
    from medft_jax.train import Trainer

    rng = np.random.default_rng(0)
    batch = 16
    trainer = Trainer(model, optax.sgd(1e-2), multilabel=False, mesh=mesh)
    everything = jax.tree.map(lambda _: True, variables["params"])
    head_only = jax.tree_util.tree_map_with_path(
        lambda path, _: path[0].key == "fc", variables["params"]
    )
    rows = slice(
        jax.process_index() * batch // jax.process_count(),
        (jax.process_index() + 1) * batch // jax.process_count(),
    )
    out = {}
    for phase, bn_train, trainable in (("bn", True, head_only), ("eval", False, everything)):
        state = trainer.init_state(variables)
        x = rng.integers(0, 256, (batch, 64, 64, 3), dtype=np.uint8)
        y = rng.integers(0, 3, (batch,)).astype(np.int32)
        state, loss = trainer.train_step(
            state,
            trainer.shard_batch(x[rows]),
            trainer.shard_batch(y[rows]),
            trainable=trainable,
            bn_train=bn_train,
        )
        out[f"{phase}/losses"] = np.asarray([float(loss)])
        if bn_train:
            for k, v in flatten(state.batch_stats).items():
                out[f"bn/stats/{k}"] = np.asarray(v)
        else:
            start = flatten(variables["params"])
            for k, v in flatten(state.params).items():
                out[f"eval/delta/{k}"] = np.asarray(v) - np.asarray(start[k])
            mask = np.ones(batch, bool)[rows]
            out["eval/logits"] = trainer.predict(state, [{"image": x[rows], "mask": mask}])
    return out


if __name__ == "__main__":
    main()
