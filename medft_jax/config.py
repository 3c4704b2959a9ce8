"""A run's configuration and the one place its values are checked (no JAX imported here).

:class:`RunConfig` is what defines a run: its record's name is a hash of it.
:func:`check_config` validates every field against the documented ranges in
:data:`LIMITS` before any work starts, so ``--lr -1`` or a grid with
``epochs=0`` is one line naming the flag or config key, not gradient ascent or
a ``ZeroDivisionError`` an hour later. The command lines and grid files name
fields differently (``--batch-size`` vs ``settings['batch_size']``), so the
caller passes how to name a field.

Two fields are not chosen by the user but found out: ``data_fingerprint``
(the prepared data's content hash) and ``weights_fingerprint`` (the starting
weights' content hash, or ``none``). :func:`medft_jax.fit.identify` fills
them in once the data is loaded and the weights located, so two runs on
different images or different starting weights never share a record.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import struct
from collections.abc import Callable, Mapping
from typing import Any

from medft_jax.errors import UserError, did_you_mean
from medft_jax.names import (
    ARCHS,
    ARCHS_WITHOUT_BATCHNORM,
    BLOCKS,
    HEAD_ALONE_BLOCK,
    STRATEGIES,
    TEST_ARCHS,
    WEIGHTS_CHOICES,
    is_known_arch,
    same_data,
)

PRECISIONS = ("fp32", "bf16")
NUMERICS_VERSION = 7
"""The version of what a run computes from its settings, data and weights.

Raised by a change that alters a run's numbers (an initialisation, a strategy's
rule); it is part of the run's identity (:attr:`RunConfig.numerics`), so a record
written before is another run's, not a finished one: a sweep into the same
``--out`` runs the grid again, and a report refuses to mix the two. Records
without the field are version 1; version 2 (2026-12-02) brought torchvision's
``nn.Linear`` init to the new DenseNet-121/VGG-19 heads and multiplier 1 for a
zero-norm tensor in Auto-RGN; version 3 (2026-12-02) computes eq. 6 accuracy as
one division, so epochs of equal top-1 tie exactly in early stopping (BACH, T1w);
version 4 (2026-12-05) computes a bf16 run's new head in float32, so its logits (and its
AUROC, mAP) are not rounded to bfloat16's 8 bits, which tied test scores, and rounds the
features it reads to bfloat16 as the feature cache stores them; version 5 (2026-12-06)
ranks AUROC and mAP, validation's included (early stopping, the LR choice), by float64
log-probabilities made from the logits, where float32 probabilities rounded to 1.0 past
a logit margin of 16.6 and tied every confident example; version 6 (2026-12-07) adds a
bf16 run's BatchNorm affine step and its conv and VGG-19 hidden-layer biases in float32,
whose gradients (sums over the batch's pixels) bfloat16 had summed up to 90% wrong;
version 7 (2026-12-07) converts a bf16 BatchNorm's input once and averages DenseNet-121's
transition pools and VGG-19's adaptive pool in float32 (a commit under version 6 had
already; the bf16 records of version 6's first commits are other runs).

A change may alter the runs of some precisions only (:data:`NUMERICS_CHANGES`): a run
records :func:`numerics_version` of its precision, so a float32 run kept its version 3
and its name across version 4, and a sweep did not train it again.
"""
NUMERICS_CHANGES: dict[int, tuple[str, ...]] = {
    2: PRECISIONS,
    3: PRECISIONS,
    4: ("bf16",),
    5: PRECISIONS,
    6: ("bf16",),
    7: ("bf16",),
}
"""The precisions whose runs each :data:`NUMERICS_VERSION` after 1 changed."""
FORWARD_CHANGES: dict[int, tuple[str, ...]] = {4: ("bf16",), 6: ("bf16",), 7: ("bf16",)}
"""The precisions whose forward pass (what a checkpoint's evaluation, and ``predict``,
computes from its parameters) each :data:`NUMERICS_VERSION` changed: the others changed
training alone (an initialisation, a rule, a ranking)."""


def may_cache_features(config: RunConfig) -> bool:
    """Whether some epoch of ``config``'s run may train its head from cached features: a
    strategy that freezes blocks, with the frozen layers a function of the image (frozen
    BatchNorm, or none at all)."""
    return config.strategy not in BN_TRAINS_THROUGHOUT and (
        config.frozen_bn == "freeze" or config.arch in ARCHS_WITHOUT_BATCHNORM
    )


def numerics_version(precision: str, of: int = NUMERICS_VERSION) -> int:
    """The numerics version a ``precision`` run computes with under toolkit version ``of``.

    The latest change up to ``of`` that altered that precision's numbers: a float32 run
    is version 3 under version 4, which changed bf16 runs only. Why not ``of`` itself:
    the version is part of a run's identity, and a change that leaves a run's numbers
    alone must not send a sweep to train it again.
    """
    return _latest(NUMERICS_CHANGES, precision, of)


def forward_version(precision: str, of: int = NUMERICS_VERSION) -> int:
    """The latest numerics version up to ``of`` that changed a ``precision`` checkpoint's
    forward pass (:data:`FORWARD_CHANGES`), 1 for none: two checkpoints of one forward
    version give the same probabilities from the same parameters."""
    return _latest(FORWARD_CHANGES, precision, of)


def _latest(changes: dict[int, tuple[str, ...]], precision: str, of: int) -> int:
    changed = [v for v in range(2, of + 1) if precision in changes.get(v, ())]
    return max(changed, default=1)


FROZEN_BN = ("update", "freeze")
BN_TRAINS_THROUGHOUT = ("ft", "l1_sp", "l2_sp", "auto_rgn", "llrd", "bitfit")
"""Strategies under which every block with a BatchNorm has a trainable parameter in every
epoch (BitFit trains the norms' scale and bias), on every arch: ``frozen_bn='freeze'``
freezes no BatchNorm there, so it is the run ``'update'`` names (a test holds this against
each arch's schedule)."""

LIMITS: dict[str, tuple[float, float]] = {
    "lr": (0.0, 1.0),
    "seed": (0, 2**31 - 1),
    "data_seed": (0, 2**31 - 1),
    "epochs": (1, 10_000),
    "patience": (0, 10_000),
    "batch_size": (1, 8_192),
    "image_size": (32, 1_024),
    "resize_size": (32, 2_048),  # an arch's rule makes 1,170 of the largest crop
    "lp_epochs": (1, 10_000),  # 0: FT under LP-FT's name, refused saying so
    "epochs_per_stage": (1, 10_000),
    "alpha": (0.0, 1e6),
    "beta": (0.0, 1e6),
    "rgn_estimate_steps": (1, 1_000_000),
    "rgn_eps": (0.0, 1.0),
    "lr_decay": (0.0, 1.0),
}
"""Allowed ranges, inclusive except the limits of :data:`OPEN_LOW` and :data:`OPEN_HIGH`. Why these
bounds: an Adam step above 1 or at 0 is never a fine-tuning rate; the models need 32 px
or more (five stride-2 stages), and above 1,024 px a batch of ResNet-50 activations
no longer fits a 141 GB accelerator; seeds are 31-bit for every RNG in use."""
OPEN_LOW = ("lr", "lr_decay")
"""Fields whose lower limit is excluded: a learning rate of 0, or a layer-wise decay
factor of 0 (every block but the head at rate 0), trains nothing."""
OPEN_HIGH = ("lr_decay",)
"""Fields whose upper limit is excluded: LLRD at decay 1 is FT (said so by name), and a
range that offered 1 sent the user to that refusal."""

FLOAT32_MAX = 3.4028234663852886e38
"""float32's largest finite number."""
FLOAT32_TINY = 2.0**-126
"""float32's smallest normal number: a rate below it is 0, or nearly, where the step computes."""

INT_FIELDS = (
    "resize_size",
    "seed",
    "data_seed",
    "epochs",
    "patience",
    "batch_size",
    "image_size",
    "lp_epochs",
    "epochs_per_stage",
    "rgn_estimate_steps",
)
RGN_MODES = ("stream", "prepass")
"""Auto-RGN's modes (``strategies.rgn.RGN_MODES``; repeated here, which imports no JAX)."""
OPTION_STRATEGIES = {
    "lp_epochs": ("lp_ft",),
    "epochs_per_stage": ("g_lf", "g_fl"),
    "alpha": ("l1_sp", "l2_sp"),
    "beta": ("l1_sp", "l2_sp"),
    "sp_half": ("l2_sp",),
    "kernels_only": ("l1_sp", "l2_sp"),
    "rgn_estimate_steps": ("auto_rgn",),
    "rgn_mode": ("auto_rgn",),
    "rgn_per_step": ("auto_rgn",),
    "rgn_eps": ("auto_rgn",),
    "surgical_block": ("surgical",),
    "lr_decay": ("llrd",),
}
"""The strategies that read each option: given to another, it would be ignored silently."""
STRATEGY_OPTIONS = tuple(OPTION_STRATEGIES)
"""Keys a run's ``strategy_options`` may hold (arguments of ``strategies.make``)."""
LP_EPOCHS_DEFAULT = 5
"""``strategies.make``'s default ``lp_epochs`` (repeated here, which imports no JAX).

A shorter gradual unfreezing (G-LF, G-FL) is allowed: it is the same strategy
cut short (the record's epochs name the blocks each trained), as in the
quick grid's two epochs, but one that ends within its first stage unfreezes
nothing and is refused. An LP-FT that never leaves its head-only phase is
another strategy, LP, and is refused."""


BOOL_OPTIONS = ("sp_half", "kernels_only", "rgn_per_step")
"""Strategy options that are switches: ``"no"`` would otherwise read as true."""
OPTION_DEFAULTS: dict[str, Any] = {
    "lp_epochs": LP_EPOCHS_DEFAULT,
    "epochs_per_stage": 1,
    "alpha": 0.01,
    "beta": 0.01,
    "sp_half": True,
    "kernels_only": False,
    "rgn_estimate_steps": 5,
    "rgn_mode": "stream",
    "rgn_per_step": False,
    "rgn_eps": 1e-8,
    "lr_decay": 0.7,
}
"""``strategies.make``'s defaults of the options (repeated here, which imports no JAX;
a test holds them equal). An option given at its default is the same run as one left out."""


PAPER_STRATEGY_OPTIONS: dict[str, dict[str, Any]] = {
    # The paper's eq. 3: L2-SP without the ½ of Li et al. (the toolkit's default).
    "l2_sp": {"sp_half": False},
    # The reference code's order: 5 gradient evaluations before each epoch.
    "auto_rgn": {"rgn_mode": "prepass"},
}
"""The paper's strategy options where they are not the toolkit's defaults (the paper grid's,
``experiments/configs/paper.py``; a report names a strategy run otherwise)."""


def effective_options(strategy: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Every option ``strategy`` reads, at ``options``' value or its default, in
    :data:`OPTION_DEFAULTS` order (an option without a default only where given)."""
    given = dict(options or {})
    reads = [k for k, users in OPTION_STRATEGIES.items() if strategy in users]
    if given.get("rgn_per_step") is True:  # each step's own RGN: no window, no mode read
        reads = [k for k in reads if k not in ("rgn_estimate_steps", "rgn_mode")]
    return {
        k: given.get(k, OPTION_DEFAULTS.get(k)) for k in reads if k in given or k in OPTION_DEFAULTS
    }


FLOAT32_OPTIONS = ("alpha", "beta", "rgn_eps")
"""Options the step computes with in float32: held as their float32's short decimal, as a
learning rate is (:func:`run_lr`), so two spellings of one float32 are one run. Not
``lr_decay``: its powers are taken in float64 (0.7 and 0.700000015, one float32, give
other factors from the third block down)."""


def canonical_options(
    strategy: str, options: tuple[tuple[str, Any], ...]
) -> tuple[tuple[str, Any], ...]:
    """``options`` as one run names them, whichever way they were written.

    A number option written as an integer (``alpha: 1`` in a grid file) is
    the float the command line would give (``--alpha 1``), and an option
    given at its default for ``strategy`` is left out: ``--lp-epochs 5`` is
    the run without it, not a second cell with the same numbers. Anything
    else (a wrong type, an option of another strategy) is left for
    :func:`check_config` to refuse, as is a pair that conflicts at any value:
    ``rgn_estimate_steps`` beside ``rgn_per_step`` is kept at its default too (dropped,
    the pair refused at 4 ran at 5, the estimate the user asked for silently not made).
    """
    conflicting = {"rgn_estimate_steps"} if dict(options).get("rgn_per_step") is True else set()
    out = []
    for key, value in options:
        value = _plain(value)
        if type(value) is int and isinstance(OPTION_DEFAULTS.get(key), float):
            with contextlib.suppress(OverflowError):  # too large: check_config says so
                value = float(value)
        if isinstance(value, float):  # numpy's float64 is a float; -0.0 is 0.0: one run
            value = float(value) + 0.0
            if key in FLOAT32_OPTIONS:  # 0.010000000000000002 is 0.01 where it computes
                value = run_lr(value)
        default = OPTION_DEFAULTS.get(key, _NO_DEFAULT)
        if (
            strategy in OPTION_STRATEGIES.get(key, ())
            and type(value) is type(default)
            and value == default
            and key not in conflicting
        ):
            continue
        out.append((key, value))
    return tuple(sorted(out, key=lambda kv: kv[0]))


_NO_DEFAULT = object()


def _plain(value: Any) -> Any:
    """numpy's scalars (``np.int64(2)`` from a grid file's arithmetic, ``np.float32(0.7)``,
    ``np.True_``) as the Python ``int``, ``float`` or ``bool`` they are; anything else as it
    is (a bool stays a bool, refused where a count is meant)."""
    if type(value) in (bool, int, float) or not hasattr(value, "dtype"):
        return value
    as_python = {"b": bool, "i": int, "u": int, "f": float}.get(getattr(value.dtype, "kind", ""))
    return as_python(value) if as_python is not None and getattr(value, "ndim", 1) == 0 else value


def as_float32(x: float) -> float:
    """``x`` as float32 holds it (the value the train step computes with)."""
    return struct.unpack("f", struct.pack("f", float(x)))[0]


def run_lr(lr: float) -> float:
    """A learning rate (a grid's, ``--lr``) as its run holds it: its float32's short decimal.

    The step computes in float32, so ``np.logspace(-5, -3, 3)[0]`` (9.999999999999999e-06)
    and ``np.float32(1e-3)`` (0.0010000000474974513) train as ``1e-05`` and ``0.001`` do;
    held raw, they were runs of other names, the finished ``1e-05`` run listed "todo" and
    trained again. Only a float32 whose shortest decimal has at most six significant
    digits is rewritten: a decimal of up to six digits is its own (the rates a grid writes,
    1e-3 or 3e-4, keep their runs' names), and a rate no short decimal names
    (``np.logspace(-5, -4, 3)[1]``, 3.1622776601683795e-05, or ``2**-13``) stays as written,
    as its runs were named before. Outside float32's normal range the value is left for
    the range check to name as written.
    """
    value = float(lr)
    if not FLOAT32_TINY <= abs(value) <= FLOAT32_MAX:
        return value
    held = as_float32(value)
    for digits in range(1, 7):
        shortest = float(f"{held:.{digits}g}")
        if as_float32(shortest) == held:
            return shortest
    return value


def same_in_float32(a: float, b: float) -> bool:
    """Whether two rates are one in float32, where Adam's step computes with them:
    ``np.logspace(-5, -3, 3)[0]`` (9.999999999999999e-06) and 1e-05, or
    ``np.float32(1e-3)`` and 0.001, train alike."""
    try:
        return as_float32(a) == as_float32(b)
    except OverflowError:  # beyond float32: refused by the range check
        return float(a) == float(b)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run (its record's name is a hash of this)."""

    strategy: str
    arch: str = "resnet50"
    dataset: str = "demo"
    weights: str = "auto"
    lr: float = 1e-4
    seed: int = 0
    epochs: int = 50
    patience: int = 5
    batch_size: int = 64
    image_size: int = 224
    precision: str = "fp32"
    frozen_bn: str = "update"
    data_seed: int = 0
    """Seed of the dataset's own randomness (val carving, demo images): fixed across runs."""
    strategy_options: tuple[tuple[str, Any], ...] = ()
    """Extra arguments of :func:`medft_jax.strategies.make` (e.g. ``lp_epochs``)."""
    data_fingerprint: str = ""
    """Content hash of the prepared data (filled in by :func:`medft_jax.fit.identify`)."""
    weights_fingerprint: str = ""
    """Content hash of the starting weights, or ``none`` (filled in by ``identify``)."""
    numerics: int | None = None
    """The :func:`numerics_version` of ``precision`` the run computes with (not a choice;
    None: this toolkit's, filled in)."""

    def __post_init__(self) -> None:
        for field in INT_FIELDS:  # np.int64(2) epochs: "must be an integer, got np.int64(2)"
            if hasattr(self, field):  # (the options among them are canonical_options')
                object.__setattr__(self, field, _plain(getattr(self, field)))
        if self.numerics is None and self.precision in PRECISIONS:
            object.__setattr__(self, "numerics", numerics_version(self.precision))
        # One run, one name: freezing the BatchNorm of frozen blocks where no block is
        # ever frozen is the run that updates them.
        if self.frozen_bn == "freeze" and self.strategy in BN_TRAINS_THROUGHOUT:
            object.__setattr__(self, "frozen_bn", "update")
        # One folder, one spelling: "w/best/" and "w/best" (a shell's tab completion) are
        # one checkpoint, and were two runs' names and a report's "different settings";
        # so are a relative path, an absolute one and one through a link (three runs, each
        # trained, a grid's dry run and report --config then matching one). A path that
        # does not exist stays as typed, for the refusal to name it so.
        if isinstance(self.weights, str) and self.weights and self.weights not in WEIGHTS_CHOICES:
            spelt = os.path.normpath(self.weights)
            object.__setattr__(
                self, "weights", os.path.realpath(spelt) if os.path.exists(spelt) else spelt
            )
        # One dataset, one name: "medmnist/breastmnist@28" is "medmnist/breastmnist" (28 px
        # is the default), which was trained twice and reported as two datasets.
        if isinstance(self.dataset, str):
            object.__setattr__(self, "dataset", same_data(self.dataset))
        # A mapping, as a record holds them (RunConfig(**record["config"])) and as one
        # writes them: its pairs (it was unpacked later as pairs: "too many values").
        if isinstance(self.strategy_options, Mapping):
            object.__setattr__(self, "strategy_options", tuple(self.strategy_options.items()))
        # An option at its default, or an int for a float, is not another run either.
        if isinstance(self.strategy_options, tuple) and all(
            isinstance(kv, tuple) and len(kv) == 2 for kv in self.strategy_options
        ):
            object.__setattr__(
                self, "strategy_options", canonical_options(self.strategy, self.strategy_options)
            )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["strategy_options"] = dict(self.strategy_options)
        return d

    @property
    def identified(self) -> bool:
        """Whether the data and weights fingerprints are filled in."""
        return bool(self.data_fingerprint and self.weights_fingerprint)


def flag_name(field: str) -> str:
    """How a command line names ``field``: ``--batch-size``."""
    return "--" + field.replace("_", "-")


def check_value(field: str, value: Any, name: str) -> None:
    """Refuses ``value`` for ``field`` outside :data:`LIMITS`, naming it ``name``."""
    if field not in LIMITS:
        return
    low, high = LIMITS[field]
    is_int = field in INT_FIELDS
    open_low, open_high = field in OPEN_LOW, field in OPEN_HIGH
    span = (
        f"[{low}, {high}]"
        if is_int
        else f"{'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
    )
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "an integer" if is_int else "a number"
        raise UserError(f"{name} must be {kind} in {span}, got {value!r}")
    if is_int and not isinstance(value, int):  # 5.0 would be another run's hash than 5
        raise UserError(f"{name} must be an integer in {span}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):  # an int is finite (and
        # may be too large for a float: OverflowError was a traceback)
        raise UserError(f"{name} must be a finite number in {span}, got {value!r}")
    if not (low < value if open_low else low <= value) or not (
        value < high if open_high else value <= high
    ):
        shown = (  # a 401-digit number made a 400-character line
            f"{'a negative' if value < 0 else 'an'} integer of {len(str(abs(value)))} digits"
            if isinstance(value, int) and abs(value) > 10**18
            else repr(value)
        )
        raise UserError(f"{name} must be in {span}, got {shown}")


def check_config(config: RunConfig, name: Callable[[str], str] = flag_name) -> None:
    """Checks every field of ``config``; ``name(field)`` says how to name a field at fault."""
    if config.strategy not in STRATEGIES:
        raise UserError(
            f"{name('strategy')} {config.strategy!r} is unknown; valid: {', '.join(STRATEGIES)}"
            + did_you_mean(config.strategy, STRATEGIES)
        )
    if not is_known_arch(config.arch):
        known = [*ARCHS, *TEST_ARCHS]  # the test archs run too: --help offers them
        raise UserError(
            f"{name('arch')} {config.arch!r} is unknown; valid: {', '.join(known)}"
            + did_you_mean(config.arch, known)
        )
    if config.precision not in PRECISIONS:
        raise UserError(f"{name('precision')} must be one of {', '.join(PRECISIONS)}")
    expected = numerics_version(config.precision)
    if config.numerics != expected or isinstance(config.numerics, bool):
        raise UserError(
            f"{name('numerics')} {config.numerics!r}: this medft-jax computes {config.precision} "
            f"runs at numerics version {expected} only; leave it out"
        )
    if config.frozen_bn not in FROZEN_BN:
        raise UserError(f"{name('frozen_bn')} must be one of {', '.join(FROZEN_BN)}")
    if not isinstance(config.weights, str) or not config.weights:
        raise UserError(f"{name('weights')} must be auto, imagenet, none or a checkpoint folder")
    # A path is looked up only when the run loads its weights, after its data: checked here,
    # a typo fails a grid's --dry-run too, naming the key the user wrote, not a flag.
    if config.weights not in WEIGHTS_CHOICES and os.path.isfile(os.path.expanduser(config.weights)):
        raise UserError(
            f"{name('weights')} {config.weights}: a file, expected a model checkpoint folder; "
            f"a torch .pth or .safetensors is ported into one first: python -m weights_port "
            f"--arch {config.arch} --torch-weights FILE --out DIR"
        )
    if config.weights not in WEIGHTS_CHOICES and not os.path.isdir(
        os.path.expanduser(config.weights)
    ):
        raise UserError(
            f"{name('weights')} {config.weights}: no such checkpoint folder; expected auto, "
            "imagenet, none or a model checkpoint folder"
        )
    for field in ("lr", "seed", "data_seed", "epochs", "patience", "batch_size", "image_size"):
        check_value(field, getattr(config, field), name(field))
    for key, value in config.strategy_options:
        if key not in STRATEGY_OPTIONS:
            raise UserError(
                f"{name(key)}: unknown strategy option; expected some of "
                f"{', '.join(STRATEGY_OPTIONS)}" + did_you_mean(key, STRATEGY_OPTIONS)
            )
        if config.strategy not in OPTION_STRATEGIES[key]:
            raise UserError(
                f"{name(key)} applies to {', '.join(OPTION_STRATEGIES[key])} only, "
                f"not {config.strategy}"
            )
        if key in BOOL_OPTIONS and not isinstance(value, bool):
            raise UserError(f"{name(key)} must be True or False, got {value!r}")
        if key == "surgical_block" and value not in BLOCKS[config.arch]:
            raise UserError(
                f"{name(key)} must be one of {', '.join(surgical_blocks(config.arch))} "
                f"(the blocks of {config.arch}{_but_the_head(config.arch)}), got {value!r}"
                + did_you_mean(value, surgical_blocks(config.arch))
            )
        if key == "rgn_mode" and value not in RGN_MODES:
            raise UserError(f"{name(key)} must be one of {', '.join(RGN_MODES)}, got {value!r}")
        if key == "lr_decay" and type(value) in (int, float) and value == 1:
            raise UserError(
                f"{name(key)} 1: LLRD without decay is FT under LLRD's name; expected "
                "a factor below 1"
            )
        if key == "lp_epochs" and type(value) is int and value == 0:
            raise UserError(
                f"{name('lp_epochs')} 0: LP-FT without head-only epochs is FT under "
                "LP-FT's name; expected at least 1"
            )
        check_value(key, value, name(key))
    _refuse_another_strategy(config, name)
    given = dict(config.strategy_options)
    if given.get("rgn_per_step") and given.get("rgn_mode") == "prepass":
        raise UserError(
            f"{name('rgn_per_step')} is a stream variant (each step's own RGN), and "
            f"{name('rgn_mode')} prepass holds a prepass's for the epoch; give one of them"
        )
    if given.get("rgn_per_step") and "rgn_estimate_steps" in given:
        raise UserError(
            f"{name('rgn_per_step')} applies each step's own RGN, and "
            f"{name('rgn_estimate_steps')} averages an epoch's first steps; give one of them"
        )
    lp_epochs = dict(config.strategy_options).get("lp_epochs", LP_EPOCHS_DEFAULT)
    if config.strategy == "lp_ft" and lp_epochs < 1:
        raise UserError(
            f"{name('lp_epochs')} {lp_epochs}: LP-FT without head-only epochs is FT under "
            "LP-FT's name; expected at least 1"
        )
    if config.strategy == "lp_ft" and config.epochs <= lp_epochs:
        raise UserError(
            f"{name('epochs')} {config.epochs} ends within LP-FT's {lp_epochs} head-only "
            f"epochs ({name('lp_epochs')}): the run would be LP under LP-FT's name; give more "
            "epochs, or fewer head-only ones"
        )
    if config.strategy == "surgical" and "surgical_block" not in dict(config.strategy_options):
        raise UserError(
            f"{name('strategy')} surgical needs {name('surgical_block')}: the one block to "
            f"train, one of {', '.join(surgical_blocks(config.arch))}"
        )


def surgical_blocks(arch: str) -> tuple[str, ...]:
    """The blocks ``--surgical-block`` offers: all of ``arch``'s but a head-alone block
    (:data:`HEAD_ALONE_BLOCK`), whose surgical fine-tuning is LP and is refused."""
    return tuple(b for b in BLOCKS[arch] if b != HEAD_ALONE_BLOCK.get(arch))


def _but_the_head(arch: str) -> str:
    head = HEAD_ALONE_BLOCK.get(arch)
    return f" but {head}, the new head alone (LP)" if head else ""


def _refuse_another_strategy(config: RunConfig, name: Callable[[str], str]) -> None:
    """Refuses settings that train nothing, or train another strategy under this one's name
    (as LP-FT without head-only epochs would be FT): the table would credit the wrong one."""
    options = {**OPTION_DEFAULTS, **dict(config.strategy_options)}
    strategy, tiny = config.strategy, f"{FLOAT32_TINY:.2g}"
    if config.lr < FLOAT32_TINY:
        raise UserError(
            f"{name('lr')} {config.lr:g} is 0 in float32, where the step computes; expected at "
            f"least {tiny}"
        )
    if strategy == "llrd":
        decay, blocks = options["lr_decay"], len(BLOCKS[config.arch])
        first = config.lr * decay ** (blocks - 1)
        if first < FLOAT32_TINY:
            raise UserError(
                f"{name('lr_decay')} {decay:g}: the first block's rate, {name('lr')} × "
                f"{decay:g}^{blocks - 1} = {first:.3g}, is 0 in float32; expected a factor "
                f"that leaves it at least {tiny}"
            )
    alpha, beta = options["alpha"], options["beta"]
    if strategy in ("l1_sp", "l2_sp") and alpha == beta == 0:
        raise UserError(
            f"{name('alpha')} 0 and {name('beta')} 0: {strategy} without its penalty is FT "
            "under its name; expected a coefficient above 0"
        )
    if strategy in ("l1_sp", "l2_sp") and max(alpha, beta) < FLOAT32_TINY:  # 1e-300: 0 there
        raise UserError(
            f"{name('alpha')} {alpha:g} and {name('beta')} {beta:g} are 0 in float32, where the "
            f"penalty computes: {strategy} without its penalty is FT under its name; expected "
            f"a coefficient of at least {tiny}"
        )
    if strategy in ("g_lf", "g_fl") and config.epochs <= options["epochs_per_stage"]:
        only = "last block" if strategy == "g_lf" else "first block and the head"
        raise UserError(
            f"{name('epochs')} {config.epochs} ends within {strategy}'s first stage "
            f"({name('epochs_per_stage')} {options['epochs_per_stage']}): only its {only} "
            "would ever train, no gradual unfreezing; give more epochs, or shorter stages"
        )
    block = options.get("surgical_block")
    if strategy == "surgical" and block is not None and block == HEAD_ALONE_BLOCK.get(config.arch):
        raise UserError(
            f"{name('surgical_block')} {block}: {config.arch}'s {block} is the new head "
            "alone, so this is LP under surgical's name; expected another block"
        )
