"""A sweep's grid: datasets x archs x strategies x learning rates x seeds, as run configs.

A grid is plain data (:class:`Grid`), written in a config file that
defines ``get_config() -> Grid`` (``experiments/configs/paper.py`` is the
paper's 8 x 3 x 8 x 3 x 3 = 1,728 runs). This module expands it into an
ordered list of :class:`~medft_jax.config.RunConfig` (dataset, arch,
strategy, lr, seed, with the seed varying fastest), filters it
(``--only dataset=bach,arch=vgg19``), and splits it into shards.

Sharding is a pure function of the list: sorted canonically (dataset, arch,
strategy, lr, seed, each sorted: :func:`shard_positions`), the run at
position ``k`` belongs to shard ``k mod N``. Processes given the same config
and filters therefore agree on the split without talking to each other,
their shards are disjoint and together they are the whole grid; on a whole
grid round-robin also spreads every dataset's (very different) cost evenly
over the shards. Every sweep writes the whole list as its plan
(:mod:`medft_jax.plans`), so that a shard that never ran is counted missing.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import numbers
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from medft_jax.config import OPTION_STRATEGIES, RunConfig, as_float32, check_config, run_lr
from medft_jax.data.options import (
    option_value_error,
    split_option_error,
    unknown_option,
)
from medft_jax.errors import UserError, did_you_mean, plain_number
from medft_jax.names import (
    ARCHS,
    LOCAL_KINDS,
    STRATEGIES,
    dataset_base,
    dataset_name_error,
    is_known_arch,
    same_data,
)
from medft_jax.results import settings_hash

AXES = ("dataset", "arch", "strategy", "lr", "seed")
"""The grid's axes, in the order its runs are listed (the last varies fastest)."""

SETTINGS = (
    "weights",
    "epochs",
    "patience",
    "batch_size",
    "image_size",
    "precision",
    "frozen_bn",
    "data_seed",
)
"""RunConfig fields a grid sets once for all its runs (``data_seed``: the val/test carving
of tasks without official splits, as ``experiments.prepare --seed`` prepared it)."""

NOMINAL_TRAIN_IMAGES: dict[str, int] = {
    "chexpert": 64_540,
    "mura_shoulder": 8_379,
    "mura_wrist": 9_752,
    "mura_humerus": 1_272,
    "t1w_mri": 2_522,
    "bach": 360,
    "isic2020": 26_160,
    "cholect50_instrument": 36_000,
    "demo": 192,
    "medmnist/breastmnist": 546,
}
"""Approximate training images per epoch, for cost estimates before any data is read.

From the paper's Table 2 and the datasets' releases (MURA counts images,
CholecT50 is the 6-frames-a-minute subsample, approximate). Only used by
``--dry-run`` estimates; the runs themselves count the real data.
"""


def nominal_train_images(dataset: str) -> int | None:
    """:data:`NOMINAL_TRAIN_IMAGES`, or a MedMNIST flag's published training split (every
    flag: only BreastMNIST's was listed, the others' cost "unknown"); None if unknown."""
    name = dataset.split("@")[0]
    if name in NOMINAL_TRAIN_IMAGES:
        return NOMINAL_TRAIN_IMAGES[name]
    if name.startswith("medmnist/"):
        from medft_jax.data.medmnist_info import N_SAMPLES  # names and sizes only

        sizes = N_SAMPLES.get(name.removeprefix("medmnist/"))
        return None if sizes is None else sizes[0]
    return None


BEST_BYTES: dict[str, float] = {"resnet50": 87.4e6, "densenet121": 26.7e6, "vgg19": 516e6}
"""A finished run's ``best/`` (float32 parameters and BatchNorm statistics, a small
head), measured: what a run keeps once its record is written. While it trains, its
resume checkpoint adds up to 3 times this (Adam's two moments), 4 times under L1-SP
and L2-SP (their anchor), and a save writes beside the last before replacing it."""

_RESUME_TIMES = {"l1_sp": 4.0, "l2_sp": 4.0, "lp": 1.0}


def disk_bytes(runs: Sequence[RunConfig]) -> tuple[float, float]:
    """(what ``runs`` keep once finished, the most one of them needs while it trains) in
    bytes: their ``best/`` checkpoints, and a running one's two ``best/`` and two resume
    checkpoints (the new beside the old); archs not measured count nothing."""
    kept = sum(BEST_BYTES.get(c.arch, 0.0) for c in runs)
    peak = max(
        (2 * BEST_BYTES.get(c.arch, 0.0) * (1 + _RESUME_TIMES.get(c.strategy, 3.0)) for c in runs),
        default=0.0,
    )
    return kept, peak


REFERENCE_IMAGES_PER_S: dict[str, float] = {
    "resnet50": 3000.0,
    "densenet121": 2000.0,
    "vgg19": 1200.0,
}
"""Assumed fp32 training throughput at 224 px on one H100, when no record measured it.

ResNet-50's figure is the one the data spec quotes; DenseNet-121 and
VGG-19 are scaled by their relative cost. Estimates from the records of
finished runs (same arch and image size) replace these when present.
"""


class GridError(UserError):
    """A config file, filter or shard spec that cannot be used; the message names it."""


@dataclasses.dataclass(frozen=True)
class Grid:
    """The runs of a sweep: every combination of the five axes, with shared settings.

    Attributes:
      name: a label for listings and reports.
      datasets, archs, strategies, lrs, seeds: the axes.
      settings: RunConfig fields shared by every run (``epochs``,
        ``batch_size``, ``image_size``, ``weights``, ...); see :data:`SETTINGS`.
      strategy_options: per strategy id, extra arguments of
        :func:`medft_jax.strategies.make` (e.g. ``{"lp_ft": {"lp_epochs": 2}}``).
      data_dir: where prepared datasets live (None: TFDS's default).
      dataset_options: per dataset, extra options of :func:`medft_jax.data.load`
        (e.g. ``{"folder": {"manual_dir": "/data/mine"}}``); not part of a
        run's identity.
    """

    name: str
    datasets: tuple[str, ...]
    archs: tuple[str, ...]
    strategies: tuple[str, ...]
    lrs: tuple[float, ...]
    seeds: tuple[int, ...]
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    strategy_options: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    data_dir: str | None = None
    dataset_options: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise GridError(f"grid name must be a non-empty string, got {self.name!r}")
        where = f"grid {self.name!r}:"
        # A path as a string (or a Path): 5 passed --dry-run, then every run crashed.
        if self.data_dir is not None and not isinstance(self.data_dir, str | Path):
            raise GridError(
                f"{where} data_dir must be a folder path (a string) or None, got {self.data_dir!r}"
            )
        for axis in AXES:
            values = getattr(self, plural(axis))
            # A string is a sequence too: seeds="01" would be the seeds 0 and 1.
            if isinstance(values, (str, bytes)) or not isinstance(values, (tuple, list)):
                raise GridError(f"{where} {plural(axis)} must be a tuple, got {values!r}")
            if not values:
                raise GridError(f"{where} {plural(axis)} is empty")
            for value in values:
                _check_axis_value(where, axis, value)
            # As the runs see them: 1e-3 and "0.001", or 0 and 0.0, are one run twice; two
            # lrs one float32 apart train alike (the step computes in float32).
            seen = _AS_STEP.get(axis, _AS_RUN.get(axis, str))
            first: dict[Any, Any] = {}
            for i, v in enumerate(values):
                j, other = first.setdefault(seen(v), (i, v))
                if j != i:
                    alike = " (equal in float32, where the step computes)" if axis == "lr" else ""
                    raise GridError(
                        f"{where} {plural(axis)} lists a value twice: {other!r} and {v!r}{alike}"
                    )
        for field in ("settings", "strategy_options", "dataset_options"):
            if not isinstance(getattr(self, field), Mapping):
                raise GridError(f"{where} {field} must be a dict")
        for field in ("strategy_options", "dataset_options"):
            for key, options in getattr(self, field).items():
                if not isinstance(options, Mapping):
                    raise GridError(f"{where} {field}[{key!r}] must be a dict of option: value")

        # Datasets as their runs name them (RunConfig's): a filter or a report names them so.
        def same(d: Any) -> Any:  # a name that is no string is refused below, as given
            return same_data(d) if isinstance(d, str) else d

        object.__setattr__(self, "datasets", tuple(map(same, self.datasets)))
        object.__setattr__(
            self, "dataset_options", {same(k): v for k, v in self.dataset_options.items()}
        )
        unknown = sorted(set(self.settings) - set(SETTINGS))
        if unknown:
            raise GridError(
                f"grid {self.name!r}: settings {', '.join(unknown)} unknown; "
                f"expected some of {', '.join(SETTINGS)}" + _elsewhere(unknown)
            )
        self._check_names()
        for field, runs in (
            ("strategy_options", self.strategies),
            ("dataset_options", self.datasets),
        ):
            stray = sorted(map(str, set(getattr(self, field)) - set(runs)))
            if stray:
                raise GridError(
                    f"{where} {field} for {', '.join(stray)}, which the grid does not run"
                )
        for dataset, options in self.dataset_options.items():
            if options and (dataset == "demo" or dataset_base(dataset) == "medmnist"):
                raise GridError(
                    f"{where} dataset_options[{dataset!r}]: {dataset} takes no options, "
                    f"got {sorted(options)[0]!r}"
                )
            unknown = unknown_option(dataset, options)
            if unknown:
                raise GridError(f"{where} dataset_options[{dataset!r}]: {unknown}")
            for option, value in options.items():
                bad = option_value_error(option, value)
                if bad:
                    raise GridError(f"{where} dataset_options[{dataset!r}]: {bad}")
            fixed = split_option_error(dataset, "val_fraction", options.get("val_fraction"), None)
            if fixed:
                raise GridError(f"{where} dataset_options[{dataset!r}]: {fixed}")

    def check_manual_dirs(self, datasets: Iterable[str], config: str | Path) -> None:
        """Refuses a ``manual_dir`` of ``datasets``' options that is no folder, and a
        ``csv_file`` that is no file (before any run, a dry run's too), naming the grid
        file ``config``. A relative folder is from the folder the command runs in, a
        relative CSV from its ``manual_dir``."""
        try:
            self._check_paths(datasets)
        except GridError as e:
            raise GridError(_naming(Path(config), e)) from None

    def _check_paths(self, datasets: Iterable[str]) -> None:
        for dataset in sorted(set(datasets)):
            options = self.dataset_options.get(dataset, {})
            folder = options.get("manual_dir")
            needs = ("manual_dir", "csv_file") if dataset == "csv" else ("manual_dir",)
            for key in needs if dataset in LOCAL_KINDS else ():
                if options.get(key) is None:
                    raise GridError(
                        f"grid {self.name!r}: dataset {dataset} needs "
                        f"dataset_options[{dataset!r}][{key!r}]"
                    )
            if folder is not None and not Path(folder).expanduser().is_dir():
                where = f"grid {self.name!r}: dataset_options[{dataset!r}]['manual_dir'] {folder}"
                if Path(folder).expanduser().exists():
                    raise GridError(f"{where}: is a file, expected the images' folder")
                raise GridError(
                    f"{where}: no such folder (a relative path is from where the command runs, "
                    f"{Path.cwd()})"
                )
            csv_file = options.get("csv_file") if dataset == "csv" else None
            if csv_file is not None and folder is not None:
                path = Path(folder).expanduser() / str(csv_file)  # as the loader joins them
                if not path.is_file():
                    what = "is a folder" if path.is_dir() else "no such file"
                    raise GridError(
                        f"grid {self.name!r}: dataset_options['csv']['csv_file'] {csv_file}: "
                        f"{what}, expected the labels CSV (a relative path is from its "
                        f"manual_dir, {folder})"
                    )

    @property
    def size(self) -> int:
        return math.prod(len(getattr(self, plural(a))) for a in AXES)

    def axis(self, name: str) -> tuple[Any, ...]:
        """The values of axis ``name`` (one of :data:`AXES`)."""
        return getattr(self, plural(name))

    def configs(self) -> list[RunConfig]:
        """Every run, in grid order: dataset, arch, strategy, lr, seed (seed fastest)."""
        return [
            self.config(dataset, arch, strategy, lr, seed)
            for dataset in self.datasets
            for arch in self.archs
            for strategy in self.strategies
            for lr in self.lrs
            for seed in self.seeds
        ]

    def config(self, dataset: str, arch: str, strategy: str, lr: float, seed: int) -> RunConfig:
        options = tuple(sorted(dict(self.strategy_options.get(strategy, {})).items()))
        return RunConfig(
            strategy=strategy,
            arch=arch,
            dataset=dataset,
            lr=_AS_RUN["lr"](lr),
            seed=_AS_RUN["seed"](seed),
            strategy_options=options,
            **dict(self.settings),
        )

    def validate(self) -> None:
        """Checks every axis value names something the toolkit has (before any work)."""
        self._check_names()
        for config in self.configs():
            try:
                check_config(config, lambda f, s=config.strategy: self._key_name(f, s))
            except UserError as e:
                raise GridError(str(e)) from None

    def _check_names(self) -> None:
        """Refuses a dataset, arch or strategy the toolkit does not have. Run before the
        options' checks too: a typo'd strategy is the error to name, not the options of
        the strategy it was meant to be."""
        for d in self.datasets:
            error = dataset_name_error(d)
            if error:
                raise GridError(f"grid {self.name!r}: datasets value {d!r}: {error}")
        for a in self.archs:
            if not is_known_arch(a):
                raise GridError(
                    f"grid {self.name!r}: arch {a!r} unknown; known: {', '.join(ARCHS)}"
                    + did_you_mean(a, ARCHS)
                )
        for s in self.strategies:
            if s not in STRATEGIES:
                raise GridError(
                    f"grid {self.name!r}: strategy {s!r} unknown; known: {', '.join(STRATEGIES)}"
                    + did_you_mean(s, STRATEGIES)
                )

    def _key_name(self, field: str, strategy: str) -> str:
        """How a grid file spells ``field``, for an error naming the key at fault."""
        prefix = f"grid {self.name!r}:"
        if field in ("lr", "seed", "strategy", "arch", "dataset"):
            return f"{prefix} {plural(field)} value"
        if field in SETTINGS:
            return f"{prefix} settings[{field!r}]"
        return f"{prefix} strategy_options[{strategy!r}][{field!r}]"


def plural(axis: str) -> str:
    return {"lr": "lrs", "seed": "seeds", "strategy": "strategies"}.get(axis, axis + "s")


# --- config files ------------------------------------------------------------------------------


_AS_RUN = {"lr": run_lr, "seed": int}
"""How a run holds an axis value that a grid file may write otherwise (``1`` for ``1.0``,
``np.float32(1e-3)`` for ``0.001``)."""


_AS_STEP = {
    "lr": as_float32,
    "dataset": lambda d: same_data(d) if isinstance(d, str) else str(d),
}
"""An lr as the train step holds it (float32); a dataset by the data it names."""


def _check_axis_value(where: str, axis: str, value: Any) -> None:
    """An lr is a number, a seed an integer (not a bool, a string or 0.5 made 0)."""
    if axis == "lr" and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
        raise GridError(f"{where} lrs value must be a number, got {value!r}")
    if axis == "seed" and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
        raise GridError(f"{where} seeds value must be an integer, got {value!r}")


_BUNDLED = Path(__file__).resolve().parents[1] / "experiments" / "configs"
"""The grid files that come with the toolkit (in site-packages, for an installed wheel)."""


def _bundled() -> str:
    """The grid files that come with the toolkit, by absolute path, for an error run from
    another folder than the checkout (``experiments/configs/quick.py`` is then no file)."""
    found = sorted(str(f) for f in _BUNDLED.glob("*.py") if not f.name.startswith("_"))
    if not found:
        return ""
    return f"; the toolkit's grids: {', '.join(found)} (or by name: --config quick)"


def _by_name(path: Path) -> Path:
    """``--config paper``, a bare name (no ``.py``, no folder) where no such file is here, is
    the toolkit's own grid of that name, said in a note: outside a checkout (an installed
    wheel) the README's ``experiments/configs/paper.py`` is no path, and the grids'
    site-packages path is long. ``paper.py`` names a file: the user's own copy, elsewhere,
    is not silently replaced by the toolkit's."""
    if path.is_file() or len(path.parts) != 1 or path.suffix or path.name.startswith("_"):
        return path  # a folder named so here is no grid file: the toolkit's grid is meant
    bundled = _BUNDLED / f"{path.name}.py"
    if not bundled.is_file():
        return path
    print(f"note: --config {path}: the toolkit's grid {bundled}", file=sys.stderr)
    return bundled


def _exited(path: Path, where: str, e: SystemExit) -> str:
    """A grid file that called ``sys.exit`` (or parsed a command line of its own, whose
    argparse exits): the command ended with that status and not a word."""
    return (
        f"--config {path}: exited {where} (SystemExit: {e.code!r}); a grid file only "
        "defines get_config(), returning a Grid"
    )


def load_grid(path: str | Path) -> Grid:
    """The :class:`Grid` a config file's ``get_config()`` returns (the file is Python); a bare
    name of one of the toolkit's grids (``paper``, ``quick``, ``own_folder``) is that grid."""
    path = _by_name(Path(path))
    if path.is_dir():
        raise GridError(
            f"--config {path}: is a folder, expected a grid file (a Python file with get_config())"
        )
    if not path.is_file():
        raise GridError(
            f"--config {path}: no such file (expected a Python file with get_config()){_bundled()}"
        )
    spec = importlib.util.spec_from_file_location(f"medft_grid_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise GridError(f"--config {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    # The grid file's own folder first: a helper module beside it (``from common import
    # SETTINGS``) was looked up from where the command ran, and a same-named one there
    # gave its settings without a word.
    sys.path.insert(0, str(path.resolve().parent))
    try:
        grid = _run_grid_file(path, spec, module)
    finally:
        sys.path.remove(str(path.resolve().parent))
    if not isinstance(grid, Grid):
        raise GridError(
            f"--config {path}: get_config() returned a {type(grid).__name__}, expected a Grid"
        )
    try:
        grid.validate()
    except UserError as e:
        raise GridError(_naming(path, e)) from None
    return grid


def _elsewhere(unknown: Sequence[str]) -> str:
    """Where a setting the grid's ``settings`` do not take belongs: an axis (``lr`` is
    ``lrs``) or a strategy option (``lp_epochs`` in ``strategy_options['lp_ft']``), else
    the near setting's name; ``lp_epochs`` was told "did you mean epochs?"."""
    if len(unknown) != 1:
        return ""
    key = unknown[0]
    axis = next((a for a in AXES if key in (a, plural(a))), None)
    if axis is not None:
        return f"; {key} is an axis: give it as {plural(axis)}=(...) beside settings"
    if key in OPTION_STRATEGIES:
        first = OPTION_STRATEGIES[key][0]
        where = f"strategy_options={{{first!r}: {{{key!r}: ...}}}}"
        return f"; {key} is a strategy option: give it as {where}"
    if key in ("data_dir", "name"):  # "did you mean data_seed?"
        return f"; {key} is the grid's own: give it as Grid({key}=...) beside settings"
    if key in ("manual_dir", "csv_file", "patient_folders", "dicom_window", "bits_stored"):
        where = f"dataset_options={{'folder': {{{key!r}: ...}}}}"
        return f"; {key} is a dataset option: give it as {where} (or 'csv')"
    return did_you_mean(key, SETTINGS)


def _run_grid_file(path: Path, spec: Any, module: Any) -> Any:
    """Executes a grid file and calls its ``get_config()``; each failure one line."""
    try:
        spec.loader.exec_module(module)
    except SystemExit as e:  # sys.exit(0) there ended a sweep with 0, having done nothing
        raise GridError(_exited(path, "while loading", e)) from None
    except Exception as e:
        raise GridError(f"--config {path}: cannot be imported ({type(e).__name__}: {e})") from e
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise GridError(f"--config {path}: defines no get_config() function")
    try:
        return get_config()
    except UserError as e:  # a Grid's own check (or the file's): which file, as BUILD.md's
        # "copy quick.py" keeps the grid's name, which alone does not say
        raise GridError(_naming(path, e)) from None
    except SystemExit as e:
        raise GridError(_exited(path, "in get_config()", e)) from None
    except Exception as e:
        raise GridError(f"--config {path}: get_config() failed ({type(e).__name__}: {e})") from e


def _naming(path: Path, err: UserError) -> str:
    text = str(err)
    return text if text.startswith("--config ") else f"--config {path}: {text}"


# --- filters -------------------------------------------------------------------------------------


Filters = dict[str, set[str]]


def parse_only(specs: Iterable[str] | None) -> Filters:
    """``["dataset=bach,arch=vgg19", "strategy=ft|lp"]`` -> ``{axis: {values}}``.

    Keys are :data:`AXES`; ``|`` separates alternatives of one key; a key
    given twice keeps the values both allow (the filters are ANDed).
    """
    out: Filters = {}
    given: dict[str, list[str]] = {}
    for spec in specs or ():
        parts = [p.strip() for p in spec.split(",") if p.strip()]
        if not parts:  # an empty shell variable: not "no filter", which would run the grid
            raise GridError(f"--only {spec!r}: expected key=value, e.g. dataset=bach")
        before = None  # the key=value part before this one, in this --only
        for part in parts:
            key, sep, value = part.partition("=")
            key = key.strip()
            if not sep and before is not None and key not in AXES:  # strategy=lp,bitfit
                raise GridError(
                    f"--only {spec!r}: {part!r} is no key=value; several values of one key "
                    f"are written with |, e.g. {before}|{part}"
                )
            before = part
            if not sep or not value.strip():
                raise GridError(f"--only {part!r}: expected key=value, e.g. dataset=bach")
            if key not in AXES:
                raise GridError(f"--only {part!r}: unknown key {key!r}; keys: {', '.join(AXES)}")
            if any(not v.strip() for v in value.split("|")):  # "ft|": a value left out?
                raise GridError(
                    f"--only {part!r}: an empty alternative; expected values between the |, "
                    f"e.g. {key}=a|b"
                )
            values = {_canonical(key, v.strip()) for v in value.split("|")}
            out[key] = out[key] & values if key in out else values
            given.setdefault(key, []).append(part)
            if not out[key]:
                raise GridError(
                    f"--only {' and '.join(given[key])}: no {key} passes both (a key given "
                    f"twice keeps the values both allow); for either, write "
                    f"{key}={'|'.join(v.partition('=')[2] for v in given[key])}"
                )
    return out


def _canonical(key: str, value: str) -> str:
    """Numbers compare by value: ``lr=0.0001`` and ``lr=1e-4`` are the same filter;
    datasets by the data they name (``medmnist/x@28`` is ``medmnist/x``)."""
    if key == "dataset":
        return same_data(value)
    if key == "lr":
        try:
            if not plain_number(value):
                raise ValueError(value)
            return repr(run_lr(float(value)))
        except ValueError:
            raise GridError(f"--only lr={value}: not a number") from None
    if key == "seed":
        try:
            if not plain_number(value):
                raise ValueError(value)
            return str(int(value))
        except ValueError:
            raise GridError(f"--only seed={value}: not an integer") from None
    return value


def matches(config: Mapping[str, Any] | RunConfig, filters: Filters) -> bool:
    """Whether a run (RunConfig or a record's ``config``) passes every filter."""
    get = (lambda k: getattr(config, k)) if isinstance(config, RunConfig) else config.get
    return all(_canonical(k, str(get(k))) in allowed for k, allowed in filters.items())


def select(grid: Grid, filters: Filters) -> list[RunConfig]:
    """The runs that pass ``filters``, in grid order; a filter value not in the grid is an error."""
    # As the runs hold them (a float32 lr of 1e-3 is 0.0010000000474974513), so that a
    # value that passes this check also matches a run.
    held = {key: [_AS_RUN.get(key, str)(v) for v in grid.axis(key)] for key in filters}
    check_filter_values(filters, held, f"not in grid {grid.name!r} (its")
    return [c for c in grid.configs() if matches(c, filters)]


def check_filter_values(filters: Filters, held: Mapping[str, Iterable[Any]], where: str) -> None:
    """Refuses a filter value that no run holds: a typo would drop runs without a word.

    ``held``: each filtered key's values as the runs hold them, in the order to list
    them; ``where`` starts the message's tail, e.g. ``"not in grid 'paper' (its"``.
    """
    for key, allowed in filters.items():
        values = list(dict.fromkeys(held.get(key, ())))
        missing = sorted(allowed - {_canonical(key, str(v)) for v in values})
        if missing:
            raise GridError(
                f"--only {key}={'|'.join(missing)}: {where} {plural(key)}: "
                f"{', '.join(map(str, values)) or 'none'})"
            )


# --- shards --------------------------------------------------------------------------------------


def parse_shard(spec: str) -> tuple[int, int]:
    """``"i/N"`` (0-based i) -> ``(i, N)``."""
    index, sep, count = spec.partition("/")
    # Plain digits only: int() also took "1_0" (as 10), " 1 " and "+1".
    plain = re.fullmatch(r"[0-9]+", index) and re.fullmatch(r"[0-9]+", count)
    i, n = (int(index), int(count)) if plain else (-1, -1)
    if not sep or n < 1 or not 0 <= i < n:
        raise GridError(f"--shard {spec!r}: expected i/N with 0 <= i < N, e.g. 0/4")
    return i, n


def shard_positions(runs: Sequence[RunConfig], index: int, count: int) -> list[int]:
    """The grid positions of shard ``index`` of ``count``, in grid order.

    Runs are dealt out round-robin in a canonical order (dataset, arch, strategy, lr,
    seed, each sorted), not the order the grid lists them: N processes must agree on
    who runs what without talking, and a grid file may list an axis in an order that
    differs between processes (``tuple(some_set)`` of strings under Python's
    per-process hash seed). Dealt by listed position, shards would then skip some runs
    and repeat others. Round-robin keeps the shards within one run of each other and
    gives each a like share of every task's runs, whose costs differ a hundredfold.
    """
    if not 0 <= index < count:
        raise GridError(f"shard {index}/{count}: expected 0 <= index < count")
    return sorted(canonical_order(runs)[index::count])


def canonical_order(runs: Sequence[RunConfig]) -> list[int]:
    """The grid positions of ``runs`` in the canonical order shards are dealt from
    (:func:`shard_positions`): the same in every process, whatever order the grid lists."""

    def canonical(k: int) -> tuple[Any, ...]:
        c = runs[k]
        return (c.dataset, c.arch, c.strategy, c.lr, c.seed, settings_hash(c.to_dict()))

    return sorted(range(len(runs)), key=canonical)


def shard(runs: Sequence[RunConfig], index: int, count: int) -> list[RunConfig]:
    """Shard ``index`` of ``count``, in grid order (see :func:`shard_positions`)."""
    return [runs[k] for k in shard_positions(runs, index, count)]


# --- cost estimates ------------------------------------------------------------------------------


ThroughputKey = tuple[str, int, str, str, str]
"""(arch, image size, strategy, precision, frozen BN): what sets a run's images/s."""


def throughput_key(config: Mapping[str, Any]) -> ThroughputKey:
    """A run's :data:`ThroughputKey` from its config (a record's, or ``RunConfig.to_dict()``)."""
    return (
        config["arch"],
        int(config["image_size"]),
        config["strategy"],
        config.get("precision", RunConfig.precision),  # older records: the defaults
        config.get("frozen_bn", RunConfig.frozen_bn),
    )


def estimate_seconds(
    config: RunConfig,
    measured: Mapping[ThroughputKey, float] | None = None,
    train_images: int | None = None,
) -> float | None:
    """Upper-bound device-seconds of one run (every epoch run, no early stop); None if unknown.

    ``epochs x training images / images per second``; the training images are
    ``train_images`` where given (a user's folder or CSV, as its listing counts them),
    else the dataset's published size (:func:`nominal_train_images`); the throughput is
    ``measured[throughput_key(config)]`` (from finished runs' records)
    when given. Without any measurement of the arch and size, it is
    :data:`REFERENCE_IMAGES_PER_S` scaled by pixel count; with only other
    strategies, precisions or BatchNorm modes measured there, unknown: LP's
    speed would be no bound for FT's, nor bf16's for float32's, and the
    reference device is not the one measured.
    """
    images = train_images if train_images is not None else nominal_train_images(config.dataset)
    if images is None:
        return None
    measured = measured or {}
    rate = measured.get(throughput_key(config.to_dict()))
    if rate is None:
        if any(k[:2] == (config.arch, config.image_size) for k in measured):
            return None
        reference = REFERENCE_IMAGES_PER_S.get(config.arch)
        if reference is None:
            return None
        rate = reference * (224 / config.image_size) ** 2
    return config.epochs * images / rate


def measured_throughput(records: Iterable[Mapping[str, Any]]) -> dict[ThroughputKey, float]:
    """Training images/s per :data:`ThroughputKey` over finished runs' epochs: their images
    over their train seconds, so that a time estimate from it is the time they took (a
    mean of the epochs' rates would give the fast epochs the slow ones' weight). Epochs
    of records without ``train_seconds`` count one second each.

    Epochs trained from cached features are left out: a head step on stored
    features is hundreds of times faster than one on images, so it bounds
    no run, and a run that finds no cache trains every epoch on images.
    """
    per: dict[ThroughputKey, list[float]] = {}  # [images, seconds]
    for r in records:
        total = per.setdefault(throughput_key(r["config"]), [0.0, 0.0])
        for e in r.get("epochs", []):
            if e.get("images_per_s") and not e.get("from_features"):
                seconds = float(e.get("train_seconds") or 1.0)
                total[0] += float(e["images_per_s"]) * seconds
                total[1] += seconds
    return {k: images / seconds for k, (images, seconds) in per.items() if seconds}
