"""Forward and train-step throughput of the Flax models against torchvision.

    python benchmarks/models.py [--archs resnet50 densenet121 vgg19] [--steps 5]

For each arch and setting (64 px batch 32; 224 px batch 16) it measures
images/s of an inference forward pass and of one training step (forward in
train mode, cross-entropy, backward, Adam update) in JAX (jit-compiled,
donated buffers) and in PyTorch (eager, the same threads; on the GPU when
torch sees one), side by side in
one process, and prints the JAX/PyTorch ratio. Compilation and warm-up are
excluded; the median over ``--steps`` timed repetitions is reported.

``--xla-baseline`` adds a column: the same JAX step with XLA's own
convolution and max pool (``lax.conv_general_dilated``, ``reduce_window``)
in place of the toolkit's CPU formulations (``medft_jax/models/conv.py``,
``pool.py``), i.e. the models as they were before those; on a GPU or TPU
both columns run the same program.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import time

import jax
import optax

from medft_jax.models import create, layers, vgg
from medft_jax.models.conv import lax_conv
from medft_jax.models.pool import lax_max_pool

SETTINGS = ((64, 32), (224, 16))  # (image size, batch)
NUM_CLASSES = 10


def median_seconds(fn, steps: int) -> float:
    fn()  # warm-up (and compilation)
    fn()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


@contextlib.contextmanager
def xla_ops():
    """Traces the models with XLA's own convolution and max pool (the baseline)."""
    saved = layers.conv2d, layers.max_pool2d, vgg.max_pool2d
    layers.conv2d = lambda x, w, stride=1, padding=0: lax_conv(x, w, stride, padding)
    layers.max_pool2d = vgg.max_pool2d = lambda x, k, s, p=0: lax_max_pool(x, k, s, p)
    try:
        yield
    finally:
        layers.conv2d, layers.max_pool2d, vgg.max_pool2d = saved


def jax_fns(arch: str, size: int, batch: int):
    model = create(arch, NUM_CLASSES)
    x = jax.random.normal(jax.random.key(0), (batch, size, size, 3))
    y = jax.random.randint(jax.random.key(1), (batch,), 0, NUM_CLASSES)
    variables = jax.jit(model.init)(jax.random.key(2), x)
    params, stats = variables["params"], variables.get("batch_stats", {})
    tx = optax.adam(1e-4)
    opt_state = tx.init(params)

    @jax.jit
    def forward(params, stats, x):
        return model.apply({"params": params, "batch_stats": stats}, x)

    def loss_fn(params, stats, x, y, rng):
        logits, new = model.apply(
            {"params": params, "batch_stats": stats},
            x,
            bn_train=True,
            deterministic=False,
            rngs={"dropout": rng},
            mutable=["batch_stats"],
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, new.get("batch_stats", {})

    def train_step(params, stats, opt_state, x, y, rng):
        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, x, y, rng)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, loss

    train_step = jax.jit(train_step, donate_argnums=(0, 1, 2))
    state = {"p": params, "s": stats, "o": opt_state}

    def run_forward():
        forward(state["p"], state["s"], x).block_until_ready()

    def run_train():
        p, s, o, loss = train_step(state["p"], state["s"], state["o"], x, y, jax.random.key(3))
        loss.block_until_ready()
        state.update(p=p, s=s, o=o)

    return run_forward, run_train


def torch_fns(arch: str, size: int, batch: int):
    import torch
    import torchvision

    # The same kind of device JAX runs on: a GPU when torch sees one.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    model = getattr(torchvision.models, arch)(num_classes=NUM_CLASSES).to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def run_forward():
        model.eval()
        with torch.inference_mode():
            model(x)
        sync()

    def run_train():
        model.train()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        sync()

    return run_forward, run_train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--archs", nargs="+", default=["resnet50", "densenet121", "vgg19"])
    p.add_argument("--steps", type=int, default=5, help="timed repetitions (median reported)")
    p.add_argument(
        "--settings", nargs="+", default=[f"{s}x{b}" for s, b in SETTINGS], help="SIZExBATCH pairs"
    )
    p.add_argument(
        "--xla-baseline",
        action="store_true",
        help="also time JAX with XLA's own convolution and max pool (the models before)",
    )
    args = p.parse_args()
    try:
        import torch
    except ImportError:
        raise SystemExit("benchmarks/models.py needs torch: pip install -e '.[port]'") from None
    print(
        f"# {time.strftime('%Y-%m-%d')} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, jax {jax.__version__} on {jax.devices()[0].device_kind}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads, "
        f"{'cuda' if torch.cuda.is_available() else 'cpu'}, "
        f"cudnn tf32 {torch.backends.cudnn.allow_tf32})"
    )
    base = "| XLA-ops JAX img/s | XLA-ops/PyTorch " if args.xla_baseline else ""
    print(f"| arch | px | batch | mode {base}| JAX img/s | PyTorch img/s | JAX/PyTorch |")
    print("|---" * (7 + 2 * args.xla_baseline) + "|")
    for arch in args.archs:
        for setting in args.settings:
            size, batch = (int(v) for v in setting.split("x"))
            jf, jt = jax_fns(arch, size, batch)
            tf, tt = torch_fns(arch, size, batch)
            bf, bt = jax_fns(arch, size, batch) if args.xla_baseline else (None, None)
            for mode, jfn, tfn, bfn in (("forward", jf, tf, bf), ("train step", jt, tt, bt)):
                cells = ""
                if bfn is not None:
                    with xla_ops():  # traced (at the warm-up) with XLA's ops
                        b = batch / median_seconds(bfn, args.steps)
                j = batch / median_seconds(jfn, args.steps)
                t = batch / median_seconds(tfn, args.steps)
                if bfn is not None:
                    cells = f"| {b:.1f} | {b / t:.2f} "
                row = f"| {arch} | {size} | {batch} | {mode} {cells}"
                print(f"{row}| {j:.1f} | {t:.1f} | {j / t:.2f} |", flush=True)


if __name__ == "__main__":
    main()
