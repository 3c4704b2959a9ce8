"""The CPU convolution's passes against XLA's own, one layer shape at a time.

    python benchmarks/conv.py [--steps 5]

For convolution shapes the three models meet in ``benchmarks/models.py``
(batch and size as there), it times the forward pass, the input gradient and
the weight gradient of ``lax.conv_general_dilated`` (what XLA's CPU backend
runs by itself) and of :func:`medft_jax.models.conv.cpu_conv` (the formulation
its rules pick), each jit-compiled on its own, side by side in one run, and
prints milliseconds and the speed-up. This is the evidence behind the rules
in ``medft_jax/models/conv.py``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

from medft_jax.errors import ArgumentParser, cli_main, exit_command

# (name, batch, size, in channels, out channels, kernel, stride, padding)
SHAPES = (
    ("resnet50 stem @64", 32, 64, 3, 64, 7, 2, 3),
    ("resnet50 layer1 1x1 @64", 32, 16, 256, 64, 1, 1, 0),
    ("resnet50 layer1 3x3 @64", 32, 16, 64, 64, 3, 1, 1),
    ("resnet50 layer4 3x3/2 @64", 32, 4, 512, 512, 3, 2, 1),
    ("resnet50 layer1 1x1 @224", 16, 56, 64, 256, 1, 1, 0),
    ("resnet50 layer1 3x3 @224", 16, 56, 64, 64, 3, 1, 1),
    ("densenet121 block1 3x3 @64", 32, 16, 128, 32, 3, 1, 1),
    ("densenet121 block4 3x3 @64", 32, 2, 128, 32, 3, 1, 1),
    ("vgg19 conv 3x3 @64", 32, 16, 256, 256, 3, 1, 1),
    ("vgg19 conv 3x3 @224", 16, 56, 256, 256, 3, 1, 1),
)


def median_ms(fn, *args, steps: int) -> float:
    import jax

    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def passes(conv, stride: int, padding: int):
    """jit-compiled forward, input-gradient and weight-gradient functions of ``conv``."""
    import jax

    fwd = jax.jit(lambda x, w: conv(x, w, stride, padding))
    dx = jax.jit(lambda x, w, g: jax.vjp(lambda x_: conv(x_, w, stride, padding), x)[1](g)[0])
    dw = jax.jit(lambda x, w, g: jax.vjp(lambda w_: conv(x, w_, stride, padding), w)[1](g)[0])
    return fwd, dx, dw


def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=5, help="timed repetitions (median reported)")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error(f"--steps must be >= 1, got {args.steps}")

    import jax  # after the flags: a bad one is refused without loading JAX
    import jax.numpy as jnp

    from medft_jax.environment import machine_line
    from medft_jax.models.conv import cpu_conv, lax_conv

    print(machine_line())
    print("| layer | pass | XLA ms | toolkit ms | speed-up |")
    print("|---|---|---|---|---|")
    for name, n, size, c, o, k, s, pad in SHAPES:
        x = jax.random.normal(jax.random.key(0), (n, size, size, c))
        w = jax.random.normal(jax.random.key(1), (k, k, c, o)) * 0.05
        g = jnp.ones_like(lax_conv(x, w, s, pad))
        ours, xla = passes(cpu_conv, s, pad), passes(lax_conv, s, pad)
        for label, ours_fn, xla_fn, fn_args in zip(
            ("forward", "input grad", "weight grad"),
            ours,
            xla,
            ((x, w), (x, w, g), (x, w, g)),
            strict=True,
        ):
            t_xla = median_ms(xla_fn, *fn_args, steps=args.steps)
            t_ours = median_ms(ours_fn, *fn_args, steps=args.steps)
            print(f"| {name} | {label} | {t_xla:.1f} | {t_ours:.1f} | {t_xla / t_ours:.2f} |")
    return 0


if __name__ == "__main__":
    exit_command(cli_main(main))
