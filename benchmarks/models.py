"""Forward and train-step throughput of the Flax models against torchvision.

    python benchmarks/models.py [--archs resnet50 densenet121 vgg19] [--steps 5]
        [--precision {fp32,bf16,both}] [--torch-compile]

For each arch and setting (64 px batch 32; 224 px batch 16) it measures
images/s of an inference forward pass and of one training step (forward in
train mode, cross-entropy, backward, Adam update) in JAX (jit-compiled,
donated buffers) and in PyTorch (eager, the same threads; on the GPU when
torch sees one), side by side in
one process, and prints the JAX/PyTorch ratio. Compilation and warm-up are
excluded; the median over ``--steps`` timed repetitions is reported.

``--precision bf16`` (or ``both``: the fp32 table, then the bf16 one)
measures mixed precision the way each side's users run it: JAX with the
model built for bfloat16 compute (``create(arch, n, dtype=jnp.bfloat16)``;
parameters, optimizer state and BatchNorm statistics stay float32, as the
toolkit's ``--precision bf16`` trains) against PyTorch AMP
(``torch.autocast(..., dtype=torch.bfloat16)`` with model and input in
``channels_last``, the fastest eager setting). ``--torch-compile`` adds a
column to the bf16 table: the same AMP model under ``torch.compile``, or
``n/a (reason)`` where it does not build on the machine. The first line
names the card and the jax, torch and (on a GPU) CUDA versions.

``--xla-baseline`` adds a column: the same JAX step with XLA's own
convolution and max pool (``lax.conv_general_dilated``, ``reduce_window``)
in place of the toolkit's CPU formulations (``medft_jax/models/conv.py``,
``pool.py``), i.e. the models as they were before those; on a GPU or TPU
both columns run the same program.

``--host`` (default ``toolkit``) sets up the process as the toolkit's
command lines do (``medft_jax.runtime.tune_cpu_host``: CPU steps on the
calling thread, glibc keeping freed memory). The allocator part applies to
the whole process, PyTorch included, so the ratio does not credit JAX with
it. ``--host default`` leaves the process as started, for the comparison
before that setting. ``--host split`` compares each framework as its users
run it: JAX here with the toolkit's settings, PyTorch timed in a child
process as started (fp32 table only).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from medft_jax.errors import ArgumentParser, UserError, cli_main, exit_command, one_line
from medft_jax.models import ARCHS, create, init_variables, layers, vgg
from medft_jax.models.conv import lax_conv
from medft_jax.models.pool import lax_max_pool
from medft_jax.names import is_known_arch
from medft_jax.runtime import tune_cpu_host

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


def jax_fns(arch: str, size: int, batch: int, dtype: Any = jnp.float32):
    """(forward, train step) closures; ``dtype`` is the compute dtype (params stay float32)."""
    model = create(arch, NUM_CLASSES, dtype=dtype)
    # The input in the compute dtype, as the Trainer's normalize() gives it.
    x = jax.random.normal(jax.random.key(0), (batch, size, size, 3)).astype(dtype)
    y = jax.random.randint(jax.random.key(1), (batch,), 0, NUM_CLASSES)
    # Initialised at 32 px (torchvision's initialisers, as the toolkit's runs): the
    # parameters depend on neither size nor batch, and a full-size init is one more
    # compilation of the whole model.
    variables = init_variables(model, 2, 32)
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
        # The loss in float32 whatever the compute dtype (a no-op in fp32).
        logits = logits.astype(jnp.float32)
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


def torch_device() -> str:
    """The kind of device JAX runs on, for torch: a ratio of JAX on the CPU to torch on a
    GPU (a jaxlib without CUDA beside a CUDA torch) would be no comparison, so JAX on the
    CPU puts torch there too, and JAX on a GPU torch cannot see is refused."""
    import torch

    backend = jax.default_backend()
    if backend == "gpu" and not torch.cuda.is_available():
        raise UserError("JAX runs on a GPU that torch cannot see (a CPU-only torch?): no ratio")
    return "cuda" if backend == "gpu" else "cpu"


def torch_fns(arch: str, size: int, batch: int):
    import torch
    import torchvision

    device = torch_device()
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


def torch_amp_fns(arch: str, size: int, batch: int, *, compiled: bool = False):
    """PyTorch AMP: bf16 autocast, model and input ``channels_last``; ``torch.compile`` if asked.

    Parameters and Adam's state stay float32 (autocast casts per op), like
    the JAX side. A ``torch.compile`` that fails to build raises at the
    first call (the warm-up), where the caller catches it.
    """
    import torch
    import torchvision

    device = torch_device()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":  # cuDNN picks each convolution's fastest algorithm for its shape
        torch.backends.cudnn.benchmark = True
    model = getattr(torchvision.models, arch)(num_classes=NUM_CLASSES)
    model = model.to(device, memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    opt = amp_adam(model.parameters(), device)
    run = torch.compile(model) if compiled else model

    def autocast():
        return torch.autocast(device_type=device, dtype=torch.bfloat16)

    def run_forward():
        model.eval()
        with torch.inference_mode(), autocast():
            run(x)
        sync()

    def run_train():
        model.train()
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = torch.nn.functional.cross_entropy(run(x), y)
        loss.backward()
        opt.step()
        sync()

    return run_forward, run_train


def amp_adam(params: Any, device: str) -> Any:
    """Adam as a fast eager PyTorch user runs it: one fused kernel on CUDA where supported."""
    import torch

    if device == "cuda":
        try:
            return torch.optim.Adam(params, lr=1e-4, fused=True)
        except (TypeError, RuntimeError, ValueError):  # a torch without fused Adam
            pass
    return torch.optim.Adam(params, lr=1e-4)


def images_per_s_or_reason(fn: Callable[[], None], batch: int, steps: int) -> float | str:
    """Images/s of ``fn``, or ``'n/a (reason)'`` when it fails (a torch.compile not building).

    For the PyTorch cells of the bf16 table: whatever stops one (for
    torch.compile no C++ compiler or Triton, an unsupported op, a dynamo
    error; for eager AMP an out-of-memory or a cuDNN error) is the cell's
    content, not the end of the benchmark.
    """
    try:
        return batch / median_seconds(fn, steps)
    except Exception as e:  # any build failure of torch.compile: reported in the cell
        reason = one_line(f"{type(e).__name__}: {e}")
        return f"n/a ({reason[:120]})"


def header(precisions: list[str], host: str) -> str:
    """The first line: date, machine, card, jax / torch / CUDA versions, precisions."""
    import torch

    jax_dev = jax.devices()[0]
    versions = f"jax {jax.__version__} (jaxlib {importlib.metadata.version('jaxlib')})"
    for plugin in ("jax-cuda12-plugin", "jax-cuda13-plugin"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions += f", {plugin} {importlib.metadata.version(plugin)}"
    on_gpu = torch.cuda.is_available()
    card = torch.cuda.get_device_name(0) if on_gpu else jax_dev.device_kind
    torch_part = f"torch {torch.__version__} ({torch.get_num_threads()} threads, "
    if on_gpu:
        torch_part += (
            f"cuda {torch.version.cuda}, cudnn {torch.backends.cudnn.version()}, "
            f"cudnn tf32 {torch.backends.cudnn.allow_tf32}; AMP side: cudnn.benchmark on, "
            "Adam fused where supported)"
        )
    else:
        torch_part += f"cpu, cudnn tf32 {torch.backends.cudnn.allow_tf32})"
    return (
        f"# {time.strftime('%Y-%m-%d')} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, card {card}; {versions} on {jax.device_count()}x "
        f"{jax_dev.device_kind}; {torch_part}; precision {' '.join(precisions)}; "
        f"host {host}"
    )


def fp32_table(args: argparse.Namespace) -> None:
    """JAX float32 (TF32 where the GPU uses it) against eager PyTorch: today's table."""
    base = "| XLA-ops JAX img/s | XLA-ops/PyTorch " if args.xla_baseline else ""
    print(f"| arch | px | batch | mode {base}| JAX img/s | PyTorch img/s | JAX/PyTorch |")
    print("|---" * (7 + 2 * args.xla_baseline) + "|")
    for arch in args.archs:
        for setting in args.settings:
            size, batch = parse_setting(setting)
            child = torch_in_child(arch, size, batch, args.steps) if args.host == "split" else None
            jf, jt = jax_fns(arch, size, batch)
            tf, tt = (None, None) if child else torch_fns(arch, size, batch)
            bf, bt = jax_fns(arch, size, batch) if args.xla_baseline else (None, None)
            for mode, jfn, tfn, bfn in (("forward", jf, tf, bf), ("train step", jt, tt, bt)):
                cells = ""
                if bfn is not None:
                    with xla_ops():  # traced (at the warm-up) with XLA's ops
                        b = batch / median_seconds(bfn, args.steps)
                j = batch / median_seconds(jfn, args.steps)
                t = child[mode] if child else batch / median_seconds(tfn, args.steps)
                if bfn is not None:
                    cells = f"| {b:.1f} | {b / t:.2f} "
                row = f"| {arch} | {size} | {batch} | {mode} {cells}"
                print(f"{row}| {j:.1f} | {t:.1f} | {j / t:.2f} |", flush=True)


def torch_in_child(arch: str, size: int, batch: int, steps: int) -> dict[str, float]:
    """PyTorch's images/s for ``forward`` and ``train step``, timed in a process as started."""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import models; "
        "f, t = models.torch_fns(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])); "
        "n, k = int(sys.argv[4]), int(sys.argv[5]); "
        "print(json.dumps({'forward': n / models.median_seconds(f, k), "
        "'train step': n / models.median_seconds(t, k)}))"
    )
    here = os.path.dirname(os.path.abspath(__file__))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", code, here, arch, str(size), str(batch), str(steps)],
        capture_output=True,
        text=True,
        env=env,
    )
    if out.returncode != 0:  # the child's own last line says why
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"error: --host split: PyTorch's child process for {arch} failed: {last}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bf16_table(args: argparse.Namespace) -> None:
    """JAX bf16 compute against PyTorch AMP; then torch.compile'd AMP when asked.

    Every eager row first: torch.compile can take minutes to build, and a
    caller's time limit must not cost the comparison the issue's goals name.
    """
    print("| arch | px | batch | mode | JAX bf16 img/s | PyTorch AMP img/s | JAX/AMP |")
    print("|---" * 7 + "|")
    jax_speed = {}
    for arch in args.archs:
        for setting in args.settings:
            size, batch = parse_setting(setting)
            jf, jt = jax_fns(arch, size, batch, dtype=jnp.bfloat16)
            jax_rows = {}
            for mode, jfn in (("forward", jf), ("train step", jt)):
                j = jax_rows[mode] = jax_speed[arch, size, batch, mode] = batch / median_seconds(
                    jfn, args.steps
                )
                # Out at once: a PyTorch failure or a time limit later keeps it.
                print(
                    f"- measured JAX bf16 {arch} {size}x{batch} {mode}: {j:.1f} img/s", flush=True
                )
            del jf, jt
            torch_rows = torch_amp_speeds(arch, size, batch, args.steps)
            for mode, j in jax_rows.items():
                t = torch_rows[mode]
                cells = f"{t} | n/a" if isinstance(t, str) else f"{t:.1f} | {j / t:.2f}"
                print(f"| {arch} | {size} | {batch} | {mode} | {j:.1f} | {cells} |", flush=True)
    if not args.torch_compile:
        return
    print("\n| arch | px | batch | mode | torch.compile AMP img/s | JAX bf16/compile |")
    print("|---" * 6 + "|", flush=True)
    for arch in args.archs:
        for setting in args.settings:
            size, batch = parse_setting(setting)
            cf, ct = torch_amp_fns(arch, size, batch, compiled=True)
            for mode, cfn in (("forward", cf), ("train step", ct)):
                j, c = (
                    jax_speed[arch, size, batch, mode],
                    images_per_s_or_reason(cfn, batch, args.steps),
                )
                cells = f"{c} | n/a" if isinstance(c, str) else f"{c:.1f} | {j / c:.2f}"
                print(f"| {arch} | {size} | {batch} | {mode} | {cells} |", flush=True)


def torch_amp_speeds(arch: str, size: int, batch: int, steps: int) -> dict[str, float | str]:
    """PyTorch AMP's images/s per mode, or ``'n/a (reason)'`` for each mode it could not time
    (an out-of-memory, a cuDNN error): the next arch is still measured."""
    try:
        tf, tt = torch_amp_fns(arch, size, batch)
    except Exception as e:  # building the model or its input failed: both cells say why
        reason = f"n/a ({one_line(f'{type(e).__name__}: {e}')[:120]})"
        return {"forward": reason, "train step": reason}
    out = {
        mode: images_per_s_or_reason(fn, batch, steps)
        for mode, fn in (("forward", tf), ("train step", tt))
    }
    with contextlib.suppress(Exception):  # free the card for the next arch
        import torch

        del tf, tt
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return out


def parse_setting(setting: str) -> tuple[int, int]:
    """``224x64`` -> (224, 64); anything else refused in one line naming ``--settings``."""
    try:
        size, batch = (int(v) for v in setting.split("x"))
    except ValueError:
        size = batch = 0
    if size < 1 or batch < 1:
        raise UserError(f"--settings {setting!r}: expected SIZExBATCH, e.g. 224x64")
    return size, batch


def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--archs", nargs="+", default=["resnet50", "densenet121", "vgg19"])
    p.add_argument("--steps", type=int, default=5, help="timed repetitions (median reported)")
    p.add_argument(
        "--settings", nargs="+", default=[f"{s}x{b}" for s, b in SETTINGS], help="SIZExBATCH pairs"
    )
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16", "both"),
        default="fp32",
        help="fp32: JAX float32 vs eager PyTorch; bf16: JAX bf16 compute vs PyTorch AMP "
        "(channels_last); both: the two tables",
    )
    p.add_argument(
        "--torch-compile",
        action="store_true",
        help="bf16 table: also a torch.compile'd AMP column ('n/a (reason)' if it does not build)",
    )
    p.add_argument(
        "--xla-baseline",
        action="store_true",
        help="fp32 table only: also time JAX with XLA's own convolution and max pool (the "
        "models before)",
    )
    p.add_argument(
        "--host",
        choices=("toolkit", "default", "split"),
        default="toolkit",
        help="toolkit: the command lines' process settings (tune_cpu_host), for both "
        "frameworks; default: the process as started; split (fp32 table only): JAX with "
        "them, PyTorch in a child process as started",
    )
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error(f"--steps must be >= 1, got {args.steps}")
    if args.precision == "bf16":  # the bf16 table has neither: refused, not ignored
        if args.xla_baseline:
            p.error("--xla-baseline applies to the fp32 table (--precision fp32 or both)")
        if args.host == "split":
            p.error("--host split applies to the fp32 table (--precision fp32 or both)")
    if args.torch_compile and args.precision == "fp32":
        p.error("--torch-compile applies to the bf16 table (--precision bf16 or both)")
    unknown = [a for a in args.archs if not is_known_arch(a)]
    if unknown:
        p.error(f"--archs {unknown[0]!r}: unknown arch; known: {', '.join(ARCHS)}")
    for setting in args.settings:
        parse_setting(setting)
    host = "default"
    if args.host != "default":  # before anything creates JAX's CPU client
        host = f"{args.host} (allocator kept)" if tune_cpu_host() else args.host
    try:
        import torch  # noqa: F401
    except ImportError:
        raise SystemExit(
            "error: benchmarks/models.py needs torch: pip install -e '.[port]'"
        ) from None
    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    print(header(precisions, host))
    for i, precision in enumerate(precisions):
        if i:
            print()
        if precision == "fp32":
            fp32_table(args)
        else:
            bf16_table(args)
    return 0


if __name__ == "__main__":
    exit_command(cli_main(main))
