"""One JSON record per finished run, written atomically, and their aggregation over seeds.

Layout: every run has a folder ``<out>/<run name>/`` (:func:`run_dir`)
holding its orbax checkpoints (best parameters, latest training state) and,
once it has finished, ``record.json`` (:func:`record_path`). The run name
is readable and ends in a hash of the whole configuration
(:func:`config_hash`), so two configurations never share a folder, e.g.
``medmnist_breastmnist_64-resnet50-g_lf-lr0.0001-s0-3f2a9c0d1e4b5a6f``.
A record exists only for a finished run: it is written to a temporary file
in the same folder, fsynced and renamed over ``record.json``
(:func:`write_record`), so a killed run never leaves a half-written or
finished-looking record.

Record schema (``medft_jax.fit.run_one`` writes it; keys a reader relies on):

``config``
    The run configuration, the input of :func:`config_hash`: ``dataset``,
    ``arch``, ``strategy``, ``lr``, ``seed``, ``epochs`` (maximum),
    ``patience``, ``batch_size``, ``image_size``, ``precision``,
    ``weights``, ``frozen_bn``, ``data_seed``, ``strategy_options``, ...
``run``
    The run folder's name.
``primary_metric``
    The metric early stopping and the LR choice used (:mod:`medft_jax.metrics`).
``epochs``
    One dict per trained epoch, in order: ``epoch`` (0-based),
    ``train_loss``, ``val`` (the metrics dict of
    :func:`medft_jax.metrics.compute_metrics` on the validation split),
    ``seconds`` (training and validation, compilation excluded),
    ``images_per_s``, ``trainable_blocks`` (block names that trained),
    ``improved`` and ``stop`` (the early-stopping decision).
``best_epoch``
    The epoch whose parameters were kept (best validation primary metric).
``val``
    The validation metrics of ``best_epoch``; :func:`choose_lr` reads
    ``record["val"][metric]``.
``test``
    The test metrics of the parameters of ``best_epoch``; :func:`summarise`
    reads ``record["test"][name]``.
``final_stage_epoch``, ``compile_seconds``, ``train_seconds``, ``steps_per_epoch``,
``num_classes``, ``multilabel``, ``class_names``, ``weights_used``
    Run facts.
``environment``
    :func:`environment_info`: package versions, devices, git revision, host.
``finished_at``
    ISO 8601 UTC time the record was written (optional; readers must not need it).

Non-finite floats (an undefined metric, NaN) are written as JSON ``null``,
so that every record is standard JSON that any tool reads; records read
back therefore hold ``None`` where the run had NaN, and :func:`mean_se`,
:func:`choose_lr` and :func:`summarise` read ``None`` as NaN.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import re
import socket
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medft_jax.errors import UserError

RECORD_NAME = "record.json"
FAILURE_NAME = "failed.json"
"""A run that ended without a result (e.g. its loss diverged) leaves this beside its checkpoints."""
HASH_CHARS = 16
PACKAGES = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "grain",
    "numpy",
    "scikit-learn",
    "tensorflow-datasets",
)
"""Distributions whose versions a record keeps (``None`` when not installed)."""
_ALTERNATIVE_NAMES = {"grain": ("grain-nightly",)}
_SEED_KEYS = ("lr", "seed")
"""Config keys that vary inside one LR-selection group; every other key must agree."""


class RecordError(UserError):
    """A record file that cannot be read, or records that cannot be aggregated together."""


# --- names and paths ---------------------------------------------------------------------------


def config_hash(config: dict[str, Any]) -> str:
    """A stable short hex hash of ``config``: SHA-256 of its canonical JSON, 16 characters.

    Canonical: keys sorted, no whitespace, tuples as lists, numpy scalars as
    Python numbers, paths as strings. Floats are written by ``repr`` (so
    ``1e-4`` and ``0.0001`` hash the same), but an int and a float differ
    (``1`` vs ``1.0``); configurations built by the same code agree.
    """
    text = json.dumps(_jsonable(config), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:HASH_CHARS]


IDENTITY_KEYS = ("data_fingerprint", "weights_fingerprint")
"""Config keys found out at run time (content hashes of the data and the starting
weights), not chosen: a grid's configs lack them, its records have them."""


def settings_hash(config: dict[str, Any]) -> str:
    """:func:`config_hash` of the chosen settings alone (without :data:`IDENTITY_KEYS`).

    How a grid's configuration finds its records: the records of one grid
    cell run on the same data share it, whatever the data's fingerprint.
    """
    return config_hash({k: v for k, v in config.items() if k not in IDENTITY_KEYS})


def run_name(config: dict[str, Any]) -> str:
    """``<dataset>-<arch>-<strategy>-lr<lr>-s<seed>-<hash>``, safe as a folder name anywhere."""
    missing = [k for k in ("dataset", "arch", "strategy", "lr", "seed") if k not in config]
    if missing:
        raise KeyError(f"run configuration lacks {', '.join(missing)}")
    parts = (
        _slug(str(config["dataset"])),
        _slug(str(config["arch"])),
        _slug(str(config["strategy"])),
        f"lr{float(config['lr']):g}",
        f"s{config['seed']}",
        config_hash(config),
    )
    return "-".join(parts)


def run_dir(out_dir: str | Path, config: dict[str, Any]) -> Path:
    """The run's folder (checkpoints and record) under ``out_dir``; not created here."""
    return Path(out_dir) / run_name(config)


def record_path(out_dir: str | Path, config: dict[str, Any]) -> Path:
    """Where the finished run's record lives: ``run_dir(out_dir, config) / "record.json"``."""
    return run_dir(out_dir, config) / RECORD_NAME


def record_path_of(record: dict[str, Any], out_dir: str | Path) -> Path:
    """The path of a record (read back or just written) under ``out_dir``, from its config."""
    return record_path(out_dir, record["config"])


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._]+", "_", text).strip("_") or "_"


# --- writing and reading -------------------------------------------------------------------------


def write_record(path: str | Path, record: dict[str, Any]) -> dict[str, Any]:
    """Writes ``record`` as JSON at ``path`` atomically; returns what was written.

    The text goes to a temporary file in the same folder (same filesystem,
    so the rename is atomic), is flushed and fsynced, then ``os.replace``-d
    over ``path``: a reader sees the old record whole or the new one whole,
    never part of one. Any failure removes the temporary file, and an
    OSError of the write itself (a full disk) is raised naming ``path``. NaN and ±inf
    are written as ``null`` (the returned dict has ``None`` there, i.e. is
    what :func:`read_record` will return).
    """
    path = Path(path)
    data = _jsonable(record)
    if not isinstance(data, dict):
        raise TypeError(f"a record is a dict; got {type(record).__name__}")
    text = json.dumps(data, indent=1, allow_nan=False, ensure_ascii=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)  # mkstemp's 0600 would hide records from a shared group
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:  # a failed write names no file
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    _fsync_dir(path.parent)
    return data


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()
"""What ``open()`` would have given a new file: the process's umask applies."""


def _fsync_dir(folder: Path) -> None:
    """Makes the rename itself durable (best effort: not every OS allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_record(path: str | Path) -> dict[str, Any]:
    """Reads one record; an unreadable or malformed file raises :class:`RecordError` naming it."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecordError(f"{path}: not a readable run record ({e})") from e
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise RecordError(f"{path}: not a run record (expected a JSON object with a 'config')")
    return record


def load_records(out_dir: str | Path) -> list[dict[str, Any]]:
    """Every finished run's record under ``out_dir`` (any depth), in path order.

    Only files named ``record.json`` are read, so temporary files of a
    write in progress (``.record.json.*.tmp``) are never picked up. A
    corrupt record raises :class:`RecordError` naming the file (a results
    table silently missing a run would be worse).
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise RecordError(f"{out_dir}: no such results folder")
    return [read_record(p) for p in sorted(out_dir.rglob(RECORD_NAME)) if p.is_file()]


def failure_path(out_dir: str | Path, config: dict[str, Any]) -> Path:
    """Where a failed run's failure note lives: ``run_dir(out_dir, config) / "failed.json"``."""
    return run_dir(out_dir, config) / FAILURE_NAME


def write_failure(
    out_dir: str | Path,
    config: dict[str, Any],
    kind: str,
    error: str,
    dataset_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Notes that a run ended without a record: ``{"config", "run", "kind", "error"}``.

    ``kind`` is a short label (``"nonfinite"``: the loss diverged, a
    deterministic outcome of that learning rate, so a sweep does not retry
    it unless asked). Reports count such runs as done but without a value.
    ``dataset_options``: the task-specific options, as a record carries them.
    """
    note = {"config": config, "run": run_name(config), "kind": kind, "error": error}
    if dataset_options:
        note["dataset_options"] = dict(dataset_options)
    return write_record(failure_path(out_dir, config), note)


def load_failures(out_dir: str | Path) -> list[dict[str, Any]]:
    """Every failure note under ``out_dir`` whose run has no record (a later success wins)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise RecordError(f"{out_dir}: no such results folder")
    return [
        read_record(p)
        for p in sorted(out_dir.rglob(FAILURE_NAME))
        if p.is_file() and not (p.parent / RECORD_NAME).exists()
    ]


def _jsonable(value: Any, where: str = "record") -> Any:
    """``value`` as plain JSON types; non-finite floats become None."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, np.bool_):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist(), where)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"{where}: cannot write a {type(value).__name__} to JSON")


# --- aggregation ---------------------------------------------------------------------------------


def mean_se(values: Iterable[float | None]) -> tuple[float, float]:
    """Mean and standard error (sample std with ddof=1, over sqrt(n)) of the finite values.

    NaN, ±inf and None (a metric undefined for that seed) are left out, and
    ``n`` counts the rest: a seed without a value cannot pull the mean. With
    n = 1 the SE is NaN (one seed says nothing about spread); with n = 0
    both are NaN.
    """
    v = np.array([x for x in (_as_float(x) for x in values) if math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else math.nan
    return float(v.mean()), se


def group_key(record: dict[str, Any]) -> str:
    """The hash of the record's config without ``lr`` and ``seed``: one LR-selection group."""
    return config_hash({k: v for k, v in record["config"].items() if k not in _SEED_KEYS})


def group_records(records: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Records split into LR-selection groups (same config up to ``lr`` and ``seed``)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(group_key(r), []).append(r)
    return groups


def lr_means(records: Sequence[dict[str, Any]], metric: str | None = None) -> dict[float, float]:
    """Mean validation ``metric`` (best-epoch ``record["val"]``) per LR, over the seeds."""
    _check_one_group(records)
    metric = metric or _primary(records)
    per_lr: dict[float, list[float]] = {}
    for r in records:
        per_lr.setdefault(float(r["config"]["lr"]), []).append(_as_float(r["val"].get(metric)))
    return {lr: mean_se(v)[0] for lr, v in sorted(per_lr.items())}


def choose_lr(records: Sequence[dict[str, Any]], metric: str | None = None) -> float:
    """The LR with the highest mean validation ``metric`` over its seeds.

    ``records`` are the runs of one configuration at several LRs and seeds
    (everything but ``lr`` and ``seed`` equal, else :class:`RecordError`).
    ``metric`` defaults to the records' ``primary_metric``. Each record
    contributes its best epoch's validation value, ``record["val"][metric]``;
    seeds whose value is NaN/None are left out of their LR's mean, and an
    LR with no finite value is never chosen. An exact tie goes to the
    smaller LR: it stays closer to the pretrained weights, and the choice
    does not depend on record order.
    """
    means = lr_means(records, metric)
    finite = {lr: m for lr, m in means.items() if math.isfinite(m)}
    if not finite:
        raise RecordError(
            f"no finite validation {metric or _primary(records)} in the {len(records)} records "
            f"of {_describe(records[0])}"
        )
    best = max(finite.values())
    return min(lr for lr, m in finite.items() if m == best)


def summarise(
    records: Sequence[dict[str, Any]],
    metric_names: Sequence[str] | None = None,
    *,
    metric: str | None = None,
) -> dict[str, Any]:
    """Mean ± SE over seeds of the test metrics at the chosen LR, for one group of runs.

    The LR is :func:`choose_lr`'s (``records`` may hold one LR only, which
    is then the choice). ``metric_names`` defaults to every test metric of
    the first record. Returns::

        {"dataset", "arch", "strategy", "lr", "metric", "seeds": [...],
         "lr_means": {lr: mean val metric},
         "val": {name: (mean, se)}, "test": {name: (mean, se)}, "n": {name: n}}

    where ``n`` counts the seeds with a finite test value of each metric.
    """
    lr = choose_lr(records, metric)
    metric = metric or _primary(records)
    chosen = [r for r in records if float(r["config"]["lr"]) == lr]
    names = list(metric_names) if metric_names is not None else list(chosen[0]["test"])

    def stat(split: str) -> dict[str, tuple[float, float]]:
        return {n: mean_se(_as_float(r[split].get(n)) for r in chosen) for n in names}

    cfg = chosen[0]["config"]
    return {
        "dataset": cfg["dataset"],
        "arch": cfg["arch"],
        "strategy": cfg["strategy"],
        "lr": lr,
        "metric": metric,
        "seeds": sorted(r["config"]["seed"] for r in chosen),
        "lr_means": lr_means(records, metric),
        "val": stat("val"),
        "test": stat("test"),
        "n": {n: sum(math.isfinite(_as_float(r["test"].get(n))) for r in chosen) for n in names},
    }


def _as_float(x: Any) -> float:
    return math.nan if x is None else float(x)


def _primary(records: Sequence[dict[str, Any]]) -> str:
    names = {r.get("primary_metric") for r in records}
    if len(names) != 1 or None in names:
        raise RecordError(
            f"records disagree on or lack the primary metric: {sorted(map(str, names))}"
        )
    return names.pop()


def _check_one_group(records: Sequence[dict[str, Any]]) -> None:
    if not records:
        raise RecordError("no records to choose an LR from")
    first = {k: v for k, v in records[0]["config"].items() if k not in _SEED_KEYS}
    for r in records[1:]:
        other = {k: v for k, v in r["config"].items() if k not in _SEED_KEYS}
        if _jsonable(other) != _jsonable(first):
            diff = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
            raise RecordError(
                f"records of different configurations ({', '.join(diff)} differ) "
                "cannot share an LR choice; use group_records first"
            )
    seen: set[tuple[float, Any]] = set()
    for r in records:
        key = (float(r["config"]["lr"]), r["config"]["seed"])
        if key in seen:
            raise RecordError(f"two records for lr {key[0]:g}, seed {key[1]} of {_describe(r)}")
        seen.add(key)


def _describe(record: dict[str, Any]) -> str:
    c = record["config"]
    return f"{c.get('dataset')}/{c.get('arch')}/{c.get('strategy')}"


# --- environment -------------------------------------------------------------------------------


def environment_info() -> dict[str, Any]:
    """Where and with what a run ran: versions, devices, processes, git revision, host.

    Enough to tell two records' conditions apart later (a jax upgrade, a
    different GPU, uncommitted code). Calls ``jax.devices()``, so it
    initialises the backend if nothing has yet.
    """
    import jax

    devices = jax.devices()
    return {
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES},
        "platform": platform.platform(),
        "backend": devices[0].platform if devices else None,
        "device_kind": devices[0].device_kind if devices else None,
        "device_count": len(devices),
        "local_device_count": jax.local_device_count(),
        "process_count": jax.process_count(),
        "hostname": socket.gethostname(),
        **git_info(),
    }


def _version(dist: str) -> str | None:
    for name in (dist, *_ALTERNATIVE_NAMES.get(dist, ())):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def git_info(package_dir: Path | None = None) -> dict[str, Any]:
    """``git_revision`` (HEAD) and ``git_dirty`` of the checkout this package runs from.

    Both None when the package is not in a git checkout (an installed
    wheel), when git is missing, or when the enclosing repository is not
    this project's (a virtual environment inside some other repository).
    """
    pkg = (package_dir or Path(__file__).resolve().parent).resolve()
    top = _git(pkg, "rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() / pkg.name != pkg:
        return {"git_revision": None, "git_dirty": None}
    status = _git(pkg, "status", "--porcelain", "--untracked-files=no")
    return {
        "git_revision": _git(pkg, "rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
    }


def _git(cwd: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()
