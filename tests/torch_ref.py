"""Seeded random torchvision models and their forward hooks, for parity tests."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import numpy as np
import pytest

if importlib.util.find_spec("torch") is None or importlib.util.find_spec("torchvision") is None:
    pytest.skip(
        "parity tests need torch and torchvision (pip install -e '.[test]')",
        allow_module_level=True,
    )


class _ImportedOnFirstUse(types.ModuleType):
    """Stands for a module and imports it at its first attribute access.

    Importing torch and torchvision costs each test worker about 4 s; at
    module level that is paid at collection, by every worker, even when no
    test that runs uses them (the fast tier's workers, a ``-k`` selection).
    """

    def __getattr__(self, name: str):
        # Collection probes every module-level object for dunder attributes
        # (``__test__``, unittest's checks): answering those must not import.
        if name.startswith("__") and name.endswith("__") and self.__name__ not in sys.modules:
            raise AttributeError(name)
        return getattr(importlib.import_module(self.__name__), name)


torch = _ImportedOnFirstUse("torch")
torchvision = _ImportedOnFirstUse("torchvision")


def randomise_batchnorm(model: torch.nn.Module, seed: int) -> None:
    """Draws every BatchNorm's statistics and affine parameters (the torch RNG's next draws)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(1.0, 2.0)
                m.weight.uniform_(0.2, 0.5)
                m.bias.uniform_(-0.1, 0.1)
                m.num_batches_tracked.fill_(seed + 7)


def random_torchvision(arch: str, num_classes: int = 10, seed: int = 0) -> torch.nn.Module:
    """torchvision ``arch`` with seeded weights and non-trivial BN statistics.

    BN running statistics and affine parameters are drawn at random (a fresh
    model has mean 0 / var 1, which would hide a swapped mean and variance),
    in ranges that keep activations bounded through 50+ layers.
    """
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(num_classes=num_classes)
    randomise_batchnorm(model, seed)
    with torch.no_grad():
        head = {"resnet50": "fc", "densenet121": "classifier"}.get(arch)
        head = getattr(model, head) if head else model.classifier[6]
        head.weight.mul_(30.0)  # logits of order 1, as a trained model's
    return model.eval()


def block_modules(arch: str, model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The torch module whose output is each block's output."""
    if arch == "resnet50":
        names = ["layer1", "layer2", "layer3", "layer4", "fc"]
        return {"stem": model.maxpool, **{n: getattr(model, n) for n in names}}
    if arch == "densenet121":
        f = model.features
        out = {"stem": f.pool0}
        for i in range(1, 5):
            out[f"denseblock{i}"] = getattr(f, f"denseblock{i}")
            if i < 4:
                out[f"transition{i}"] = getattr(f, f"transition{i}")
        return {**out, "classifier": model.classifier}
    pools = [i for i, m in enumerate(model.features) if isinstance(m, torch.nn.MaxPool2d)]
    out = {f"stage{k + 1}": model.features[i] for k, i in enumerate(pools)}
    return {**out, "classifier": model.classifier}


def run_with_hooks(
    arch: str, model: torch.nn.Module, x_nchw: np.ndarray
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Logits and each block's output (NHWC) of ``model`` on ``x_nchw``."""
    outputs: dict[str, np.ndarray] = {}
    hooks = []
    for name, module in block_modules(arch, model).items():

        def hook(_m, _i, out, name=name):
            a = out.detach().numpy()
            outputs[name] = a.transpose(0, 2, 3, 1) if a.ndim == 4 else a

        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            logits = model(torch.from_numpy(x_nchw)).numpy()
    finally:
        for h in hooks:
            h.remove()
    return logits, outputs


def state_dict_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
