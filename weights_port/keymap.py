"""torchvision state_dict keys <-> Flax parameter paths, strictly.

Because the Flax models use torchvision's module names, the map is
mechanical: ``layer1.0.bn1.running_mean`` <-> ``batch_stats/layer1/0/bn1/mean``,
``features.0.weight`` (OIHW) <-> ``params/features/0/kernel`` (HWIO),
``fc.weight`` (out, in) <-> ``params/fc/kernel`` (in, out). The expected keys
and shapes come from the Flax model itself (``jax.eval_shape``, no compute),
so the map cannot drift from the model definition.

Nothing here imports torch: arrays are numpy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from typing import Any

import numpy as np

from medft_jax.errors import UserError
from medft_jax.models import ARCHS, get_arch, variable_shapes
from medft_jax.models.blocks import flatten, unflatten

# Flax leaf name -> torch parameter/buffer name, per collection.
_PARAM_LEAF = {"kernel": "weight", "bias": "bias"}
_BN_PARAM_LEAF = {"scale": "weight", "bias": "bias"}
_STAT_LEAF = {"mean": "running_mean", "var": "running_var"}
_TRACKED = "num_batches_tracked"

# torchvision's DenseNet loader renames these pre-0.4 keys ("norm.1" -> "norm1");
# num_batches_tracked is included too, which torchvision's pattern leaves out.
_DENSENET_LEGACY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
    r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


class PortError(UserError):
    """A checkpoint that does not match the architecture it is ported to."""


def rename_legacy_keys(state: Mapping[str, Any]) -> dict[str, Any]:
    """Renames DenseNet's legacy ``norm.1``/``conv.2`` keys as torchvision does."""
    out = {}
    for key, value in state.items():
        m = _DENSENET_LEGACY.match(key)
        out[m.group(1) + m.group(2) if m else key] = value
    return out


@cache
def _template(arch: str, num_classes: int) -> dict[str, tuple[tuple[int, ...], str, str]]:
    """torch key -> (torch shape, flax collection, flax path) for ``arch``."""
    shapes = variable_shapes(arch, num_classes)
    out: dict[str, tuple[tuple[int, ...], str, str]] = {}
    params = flatten(shapes["params"])
    for path, leaf in params.items():
        module, name = path.rsplit("/", 1)
        is_bn = name == "scale" or (name == "bias" and f"{module}/scale" in params)
        torch_name = (_BN_PARAM_LEAF if is_bn else _PARAM_LEAF)[name]
        out[f"{module.replace('/', '.')}.{torch_name}"] = (
            _torch_shape(leaf.shape),
            "params",
            path,
        )
    for path, leaf in flatten(shapes.get("batch_stats", {})).items():
        module, name = path.rsplit("/", 1)
        out[f"{module.replace('/', '.')}.{_STAT_LEAF[name]}"] = (leaf.shape, "batch_stats", path)
    return out


def _torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) == 4:  # HWIO -> OIHW
        return (shape[3], shape[2], shape[0], shape[1])
    if len(shape) == 2:  # (in, out) -> (out, in)
        return (shape[1], shape[0])
    return tuple(shape)


def to_flax_array(value: np.ndarray) -> np.ndarray:
    """A torch tensor's array in the Flax layout (OIHW -> HWIO, (out, in) -> (in, out))."""
    if value.ndim == 4:
        return np.ascontiguousarray(value.transpose(2, 3, 1, 0))
    if value.ndim == 2:
        return np.ascontiguousarray(value.T)
    return value


def to_torch_array(value: np.ndarray) -> np.ndarray:
    """The inverse of :func:`to_flax_array`."""
    if value.ndim == 4:
        return np.ascontiguousarray(value.transpose(3, 2, 0, 1))
    if value.ndim == 2:
        return np.ascontiguousarray(value.T)
    return value


def head_key(arch: str) -> str:
    return get_arch(arch).partition.head.replace("/", ".") + ".weight"


def expected_keys(arch: str) -> set[str]:
    """The torchvision state_dict keys of ``arch``, ``num_batches_tracked`` left out."""
    return set(_template(arch, 1000))


def guess_arch(keys: set[str]) -> str | None:
    """The known arch whose key set equals ``keys``, if any."""
    for arch in ARCHS:
        if keys == expected_keys(arch):
            return arch
    return None


WRAPPER_PREFIXES = ("module.", "_orig_mod.")
"""What ``nn.DataParallel``/``DistributedDataParallel`` and ``torch.compile`` put in front of
every key of the model they wrap (a training framework's attribute, ``model.``, too)."""


def _unwrapped(state: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """``state``, then ``state`` without each successive prefix that every key carries
    (``module._orig_mod.``: DDP over ``torch.compile``; ``model.``: a Lightning module)."""
    out = [dict(state)]
    for _ in range(3):
        heads = {k.split(".", 1)[0] for k in out[-1]}
        if len(heads) != 1 or not all("." in k for k in out[-1]):
            break
        prefix = heads.pop() + "."
        out.append({k[len(prefix) :]: v for k, v in out[-1].items()})
    return out


def _refuse_two_spellings(state: Mapping[str, Any], source: str) -> None:
    """Refuses a file holding one DenseNet tensor under its legacy name (``norm.1``) and
    its current one (``norm1``): renamed, one would replace the other without a word
    (which one, file order decided; torchvision's loader keeps the legacy one)."""
    named: dict[str, str] = {}
    for key in sorted(state, key=lambda k: _DENSENET_LEGACY.match(k) is not None):
        m = _DENSENET_LEGACY.match(key)
        new = m.group(1) + m.group(2) if m else key
        if new in named:
            raise PortError(
                f"{source}: keys {named[new]!r} and {key!r} are one parameter, {new!r}, "
                "spelt in DenseNet's current and legacy forms; keep one of them"
            )
        named[new] = key


def _names(state: Mapping[str, np.ndarray]) -> set[str]:
    return {k for k in rename_legacy_keys(state) if not k.endswith("." + _TRACKED)}


def _strip_wrapper_prefix(state: Mapping[str, np.ndarray], arch: str) -> dict[str, np.ndarray]:
    """``state`` without its wrappers' prefixes, when every key has them and the rest is
    exactly ``arch``'s keys.

    Only then: a file whose keys would still not match is left for the strict
    check to name, not half-renamed.
    """
    expected = expected_keys(arch)
    for candidate in _unwrapped(state):
        if _names(candidate) == expected:
            return candidate
    return dict(state)


def torch_to_flax(
    state: Mapping[str, np.ndarray], arch: str, source: str = "checkpoint"
) -> tuple[dict[str, Any], dict[str, int]]:
    """Maps a torchvision state_dict onto ``arch``'s Flax variables, strictly.

    Every torch key must be consumed and every Flax leaf filled with the right
    shape; anything else raises :class:`PortError` with a one-line message
    that names ``source``, the key, and what was expected.

    Returns:
      ``({'params': ..., 'batch_stats': ...}, num_batches_tracked)``; the head
      size is taken from the checkpoint.
    """
    state = _strip_wrapper_prefix(state, arch)
    _refuse_two_spellings(state, source)
    state = rename_legacy_keys(state)
    expected = expected_keys(arch)
    tracked = {}
    for key in [k for k in state if k.endswith("." + _TRACKED)]:
        if key.removesuffix(_TRACKED) + "running_mean" not in expected:
            continue  # not one of arch's BatchNorm layers: named below as unexpected
        tracked[key] = _tracked_count(np.asarray(state.pop(key)), key, source)
    keys = set(state)
    if keys != expected:
        for candidate in _unwrapped(state):  # a wrapped model of another arch, named as such
            other = guess_arch(_names(candidate))
            if other is not None and other != arch:
                raise PortError(f"{source}: file looks like {other}, not {arch}")
        _refuse_held_under_a_prefix(state, arch, source)
        missing, extra = sorted(expected - keys), sorted(keys - expected)
        if missing:
            raise PortError(
                f"{source}: missing key {missing[0]!r} expected by {arch} "
                f"({len(missing)} missing, {len(extra)} unexpected"
                + (f", e.g. {extra[0]!r}" if extra else "")
                + ")"
                + _sequential_head_hint(arch, missing, extra)
            )
        raise PortError(
            f"{source}: unexpected key {extra[0]!r}, not in {arch} ({len(extra)} unexpected)"
        )
    hk = head_key(arch)
    head = np.asarray(state[hk])
    if head.ndim != 2:
        raise PortError(
            f"{source}: key {hk!r} has shape {head.shape}, expected (classes, features)"
        )
    num_classes = int(head.shape[0])
    if num_classes < 1:
        raise PortError(f"{source}: key {hk!r} has shape {head.shape}, expected at least one class")
    template = _template(arch, num_classes)
    flat: dict[str, dict[str, np.ndarray]] = {"params": {}, "batch_stats": {}}
    for key, (shape, collection, path) in template.items():
        value = np.asarray(state[key])
        if tuple(value.shape) != shape:
            raise PortError(
                f"{source}: key {key!r} has shape {tuple(value.shape)}, expected {shape} for {arch}"
            )
        flat[collection][path] = to_flax_array(_float32(value, key, source))
    return {c: unflatten(v) for c, v in flat.items()}, tracked


RESAVE_AS_FLOAT32 = "{k: v.float() if v.is_floating_point() else v for k, v in sd.items()}"
"""The re-save that makes a state_dict's floats float32 and leaves its integers
(``num_batches_tracked``) as they are; ``v.float()`` on every value made those float too."""


def _float32(value: np.ndarray, key: str, source: str) -> np.ndarray:
    """``value`` as float32: a float16 one widened (exact, as a bfloat16 one is when read);
    a float64 one refused, since narrowing it rounds, and the user should choose that."""
    if value.dtype == np.float16:
        return value.astype(np.float32)
    if value.dtype.kind not in "f":  # the float re-save leaves integers as they are
        raise PortError(
            f"{source}: key {key!r} has dtype {value.dtype}, expected float32: a weight "
            "stored as integers or booleans (a quantised model, or not a trained model's "
            "state_dict?); port a float checkpoint"
        )
    if value.dtype != np.float32:
        raise PortError(
            f"{source}: key {key!r} has dtype {value.dtype}, expected float32; re-save the "
            f"state_dict sd as {RESAVE_AS_FLOAT32} (this rounds float64 to float32)"
        )
    return value


def _tracked_count(value: np.ndarray, key: str, source: str) -> int:
    """A BatchNorm's ``num_batches_tracked`` as an int. A float holding an integer (what the
    re-save ``{k: v.float() ...}`` this port once suggested made of it) is that integer."""
    integral = value.dtype.kind in "iu" or (
        value.dtype.kind == "f" and value.shape == () and float(value).is_integer()
    )
    if value.shape != () or not integral:
        raise PortError(
            f"{source}: key {key!r} has shape {value.shape} and dtype {value.dtype}, "
            "expected one integer"
        )
    if int(value) < 0:  # refused later as "the flags given" when no flag was
        raise PortError(f"{source}: key {key!r} is {int(value)}, expected a count >= 0")
    return int(value)


def _refuse_held_under_a_prefix(state: Mapping[str, np.ndarray], arch: str, source: str) -> None:
    """Names a file that holds ``arch``'s whole state_dict under one prefix (``model.``, a
    Lightning module's attribute) beside other keys (its loss's ``criterion.pos_weight``):
    it was told as hundreds of missing keys. Not ported silently: the other keys could be a
    second model (an EMA, a teacher) that the user meant."""
    for head in sorted({k.split(".", 1)[0] for k in state if "." in k}):
        prefix = head + "."
        inner = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        others = sorted(k for k in state if not k.startswith(prefix))
        for candidate in _unwrapped(inner):
            if others and _names(candidate) == expected_keys(arch):
                full = prefix + next(iter(inner))[: -len(next(iter(candidate)))]
                raise PortError(
                    f"{source}: holds {arch}'s state_dict under {full!r} beside "
                    f"{len(others)} other key(s) (e.g. {others[0]!r}); re-save the model's "
                    f"keys of its state_dict sd alone: torch.save({{k[{len(full)}:]: v for "
                    f"k, v in sd.items() if k.startswith({full!r})}}, FILE)"
                )


def _sequential_head_hint(arch: str, missing: list[str], extra: list[str]) -> str:
    """``; a Sequential head ...`` where the only keys amiss are the head's, nested one level
    (``fc.1.weight`` for ``fc = nn.Sequential(nn.Dropout(p), nn.Linear(...))``, the common
    fine-tuning head): what the file would need. Not mapped silently: what else the
    Sequential holds (a ReLU and a second Linear, a Sigmoid) is not in the state_dict."""
    head = head_key(arch).removesuffix(".weight")
    if not missing or not extra or any(not k.startswith(f"{head}.") for k in (*missing, *extra)):
        return ""  # no nested key (a head's bias missing alone): no Sequential to speak of
    linears = sorted({k.removeprefix(f"{head}.").split(".")[0] for k in extra})
    if len(linears) != 1:
        return (
            f"; its head {head} is a Sequential of {len(linears)} layers with weights; a "
            "ported model's head is one Linear"
        )
    i = linears[0]
    return (
        f"; its head {head} is a Sequential ({head}.{i}.*): re-save the state_dict with "
        f"{head}.{i}.weight and {head}.{i}.bias renamed {head}.weight and {head}.bias, if the "
        "Sequential's other layers have no weights and change nothing in eval (Dropout)"
    )


def flax_to_torch(
    variables: Mapping[str, Any], arch: str, num_batches_tracked: Mapping[str, int] | None = None
) -> dict[str, np.ndarray]:
    """Flax variables of ``arch`` -> a torchvision state_dict of numpy arrays.

    BatchNorm's ``num_batches_tracked`` buffers (which torchvision's strict
    ``load_state_dict`` expects) are restored from ``num_batches_tracked``, 0
    where unknown.
    """
    num_batches_tracked = num_batches_tracked or {}
    params = flatten(variables["params"])
    stats = flatten(variables.get("batch_stats") or {})
    head = params[get_arch(arch).partition.head + "/kernel"]
    template = _template(arch, int(head.shape[-1]))
    out: dict[str, np.ndarray] = {}
    for key, (shape, collection, path) in template.items():
        source = params if collection == "params" else stats
        if path not in source:
            raise PortError(f"{arch} checkpoint lacks {collection}/{path} (torch key {key!r})")
        value = to_torch_array(np.asarray(source[path], np.float32))
        if value.shape != shape:
            raise PortError(f"{collection}/{path} has shape {value.shape}, expected {shape}")
        out[key] = value
        if key.endswith(".running_var"):
            tracked = key[: -len("running_var")] + _TRACKED
            out[tracked] = np.asarray(num_batches_tracked.get(tracked, 0), np.int64)
    return out
