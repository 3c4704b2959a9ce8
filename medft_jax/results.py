"""One JSON record per finished run: its name, its folder, writing and reading it.

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
    ``train_seconds`` (the train steps alone), ``images_per_s``,
    ``trainable_blocks`` (block names that trained), ``improved`` and ``stop``
    (the early-stopping decision).
``best_epoch``
    The epoch whose parameters were kept (best validation primary metric), 0-based
    as ``epoch`` and ``final_stage_epoch`` are; the console's lines count from 1
    ("best epoch 7 of 10" is ``best_epoch`` 6).
``val``
    The validation metrics of ``best_epoch``; ``aggregate.choose_lr`` reads
    ``record["val"][metric]``.
``test``
    The test metrics of the parameters of ``best_epoch``; ``aggregate.summarise``
    reads ``record["test"][name]``.
``final_stage_epoch``, ``compile_seconds``, ``train_seconds``, ``steps_per_epoch``,
``num_classes``, ``multilabel``, ``class_names``, ``weights_used``
    Run facts.
``num_compilations``
    Train-step programs compiled for the run, over every call of a resumed run; a
    cost like ``compile_seconds``: a sweep's runs that share compiled steps record 0.
``wall_seconds``, ``seconds``
    The run's wall time (every call of a resumed run) and where it went:
    ``train`` (the steps), ``compile``, ``setup``, ``data``, ``validation``,
    ``checkpoints``, ``features``, ``test`` and ``other`` (see
    :data:`medft_jax.fit.TIMED`). Records written before these existed lack them.
``features``
    Only when a head-only epoch asked for cached backbone features
    (:mod:`medft_jax.features`): ``used``, and the ``directory``, whether they
    were ``reused`` and the ``seconds`` spent computing or checking them, or
    the ``reason`` they were not used. Epochs trained from them carry
    ``from_features: true``.
``environment``
    :func:`medft_jax.environment.environment_info`: package versions, devices, git
    revision, host, of the call that finished the run. A run resumed in another
    environment (CPU threads, device, jax; :func:`medft_jax.environment.numerics_environment`)
    than it started in adds ``attempts``: that of each call that trained it in another, in
    order, each with ``from_step`` (the train steps done before it); absent otherwise.
``data_source``
    Only for a user's own data (``folder``, ``csv``; absent in older records): where
    it was read from and how (:func:`medft_jax.fit.data_source_of`): ``root`` (the
    folder, absolute), ``csv_file`` (absolute), ``options`` (the layout options given)
    and ``skip_bad_images``. Provenance, outside ``config``: the run's name and hash
    stay those of its data's content, and two folders of equal content are one run.
``finished_at``
    ISO 8601 UTC time the record was written (optional; readers must not need it).
    A report orders records on edited data by it (the older ones are superseded).

Non-finite floats (an undefined metric, NaN) are written as JSON ``null``,
so that every record is standard JSON that any tool reads; records read
back therefore hold ``None`` where the run had NaN, and the aggregation
over seeds (:mod:`medft_jax.report.aggregate`) reads ``None`` as NaN.
"""

from __future__ import annotations

import contextlib
import datetime
import glob
import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from medft_jax import locks
from medft_jax.atomic import write_bytes
from medft_jax.data.paths import not_listed  # the data listings' rule
from medft_jax.errors import UserError, json_loads
from medft_jax.names import ARCHS, STRATEGIES, TEST_ARCHS, recorded_dataset_error

RECORD_NAME = "record.json"
PREVIOUS_NAMES = ("previous", "previous.new")
CONFIRMED_NAME = "confirmed.json"
"""Beside a record: when a later run command last found it current (its settings and
data are the ones on disk then) and skipped it; :data:`CONFIRMED_KEY` to readers."""
CONFIRMED_KEY = "confirmed_at"
"""The key :func:`load_records_at` gives a record from its :data:`CONFIRMED_NAME`: the
report's ``--latest`` orders runs on other data by it too (data edited, then put back:
the run on the data now on disk was the oldest record, and the one on the edit won)."""


def confirm_current(run_dir: Path) -> None:
    """Notes that ``run_dir``'s record was just found to be of the data on disk
    (:data:`CONFIRMED_NAME`); a folder that cannot be written (read-only results) is left
    as it is, since nothing but ``--latest``'s order depends on it."""
    stamp = {CONFIRMED_KEY: datetime.datetime.now(datetime.UTC).isoformat()}
    with contextlib.suppress(OSError):
        write_bytes(run_dir / CONFIRMED_NAME, json.dumps(stamp).encode())


def _confirmed_at(run_dir: Path) -> str | None:
    """The time in ``run_dir``'s :data:`CONFIRMED_NAME`; None if absent or unreadable
    (it orders runs only: a damaged one is no reason to refuse a report)."""
    try:
        value = json_loads((run_dir / CONFIRMED_NAME).read_text()).get(CONFIRMED_KEY)
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


"""Sub-folders of a run folder where ``--force`` keeps the last finished ``record.json``
and ``best/`` until the new ones are written (a forced run that is interrupted loses no
result); their records are not the run's and are never loaded."""
FAILURE_NAME = "failed.json"
"""A run that ended without a result (e.g. its loss diverged) leaves this beside its checkpoints."""
HASH_CHARS = 16


class EpochEntry(TypedDict):
    """One trained epoch of a record's ``epochs`` (see the module docstring)."""

    epoch: int
    train_loss: float | None
    val: dict[str, float | None]
    seconds: float
    train_seconds: float
    images_per_s: float | None
    trainable_blocks: list[str]
    improved: bool
    stop: bool


class RunRecord(TypedDict, total=False):
    """A finished run's ``record.json``, as :func:`medft_jax.fit.run_one` writes it.

    ``dataset_options`` is there only for tasks with split or label options,
    ``data_source`` only for a user's own ``folder``/``csv`` data,
    ``skipped_bad_images`` (split -> count) only when ``--skip-bad-images``
    left files out, ``split_fingerprint`` (which example is in which split, not the
    pixels: :meth:`medft_jax.data.Dataset.split_fingerprint`; absent in older
    records), ``order_fingerprint`` (the ids in the splits' order:
    :meth:`medft_jax.data.Dataset.order_fingerprint`; absent in older records),
    ``source_fingerprint`` (the images before the arch's resize, for folder,
    CSV and MedMNIST data; absent for others and in older records), ``decoding_version``
    (beside it for folder and CSV data: the rules' version those pixels were decoded by;
    absent in records before 2026-12-07), ``decoding`` only
    for ``--bits-stored``/``--dicom-window`` runs, ``eval_copies_of_train`` (split ->
    count) only when val or test images are pixel-identical to training images of
    their label,
    ``split_sizes`` (split -> images; absent in older records), ``scored_units``
    (``{"unit": "study", "val": n, "test": n}`` where metrics are per study), ``medmnist_file``
    (``{"md5", "official"}``: whether a MedMNIST ``.npz`` is the published file),
    ``ranked_by`` (what AUROC and AP ranked by, :data:`medft_jax.metrics.RANKED_BY`;
    absent in older records, which ranked by float32 probabilities), ``finished_at``
    is optional; the module docstring says what each key holds.
    """

    config: dict[str, Any]
    run: str
    weights_used: str
    primary_metric: str
    num_classes: int
    multilabel: bool
    class_names: list[str]
    dataset_options: dict[str, str]
    data_source: dict[str, Any]
    split_fingerprint: str
    order_fingerprint: str
    source_fingerprint: str
    decoding_version: int
    decoding: dict[str, Any]
    skipped_bad_images: dict[str, int]
    eval_copies_of_train: dict[str, int]
    split_sizes: dict[str, int]
    scored_units: dict[str, Any]
    medmnist_file: dict[str, Any]
    steps_per_epoch: int
    epochs: list[EpochEntry]
    best_epoch: int
    val: dict[str, float | None]
    test: dict[str, float | None]
    ranked_by: str
    final_stage_epoch: int
    compile_seconds: float
    num_compilations: int
    train_seconds: float
    wall_seconds: float
    seconds: dict[str, float]
    features: dict[str, Any]
    environment: dict[str, Any]
    finished_at: str


EPOCH_WORK = ("train", "data", "validation")
"""The parts of a record's ``seconds`` that grow with the epochs; the rest is per-run overhead."""


def run_overhead(record: Mapping[str, Any]) -> tuple[float, dict[str, float]] | None:
    """``(overhead seconds, its parts)`` of a record: its wall time outside the epochs' work.

    Setup, compilation, checkpoints, cached features, the test pass and the
    rest; None for a record written before ``seconds`` was recorded.
    """
    seconds = record.get("seconds")
    if not isinstance(seconds, Mapping) or "wall" not in seconds:
        return None
    parts = {k: float(v) for k, v in seconds.items() if k != "wall" and k not in EPOCH_WORK}
    return sum(parts.values()), parts


class RecordError(UserError):
    """A record file that cannot be read, or records that cannot be aggregated together."""


# --- names and paths ---------------------------------------------------------------------------


def best_epoch_text(record: Mapping[str, Any]) -> str:
    """``best epoch 5 of 6 (stopped early, of at most 50)``: a run whose patience ended it
    read as one given 6 epochs ("5 of 6" of a run given 12)."""
    ran, best = len(record["epochs"]), record["best_epoch"] + 1
    most = (record.get("config") or {}).get("epochs")
    early = f" (stopped early, of at most {most})" if isinstance(most, int) and ran < most else ""
    return f"best epoch {best} of {ran}{early}"


def config_hash(config: dict[str, Any]) -> str:
    """A stable short hex hash of ``config``: SHA-256 of its canonical JSON, 16 characters.

    Canonical: keys sorted, no whitespace, tuples as lists, numpy scalars as
    Python numbers, paths as strings. Floats are written by ``repr`` (so
    ``1e-4`` and ``0.0001`` hash the same), but an int and a float differ
    (``1`` vs ``1.0``); configurations built by the same code agree.
    """
    text = json.dumps(jsonable(config), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:HASH_CHARS]


def content_hash(value: Any) -> str:
    """SHA-256 of ``value`` as canonical JSON (sorted keys, no spaces; NaN allowed): what a
    read-back ``json.loads`` gives again, whatever the writer's layout. For files that
    decide numbers and carry no checksum of their own (a resume's progress, a selection's
    kept validations), so a flipped bit is refused rather than believed."""
    # As read back first: int keys become strings (and so sort as strings), tuples lists.
    read_back = json.loads(json.dumps(value, allow_nan=True))
    text = json.dumps(read_back, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


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


def same_name_runs(run_dir: str | Path) -> list[Path]:
    """The folders beside ``run_dir`` of the same run name but another hash (the same
    dataset, arch, strategy, lr and seed on other data, weights or settings), in name
    order: one glob, whose matches are checked for the exact stem."""
    run_dir = Path(run_dir)
    stem = run_dir.name.rpartition("-")[0]
    return [
        other
        for other in sorted(run_dir.parent.glob(f"{glob.escape(stem)}-*"))
        if other != run_dir and other.name.rpartition("-")[0] == stem
    ]


def recorded_config(run_dir: str | Path) -> dict[str, Any] | None:
    """The config of ``run_dir``'s record, or None where it has none readable (a record
    the report names, not this look-up)."""
    config = recorded_field(run_dir, "config")
    return config if isinstance(config, dict) else None


def recorded_field(run_dir: str | Path, key: str) -> Any:
    """The top-level ``key`` of ``run_dir``'s record, or None where it has no readable
    record or no such field."""
    try:
        record = json_loads((Path(run_dir) / RECORD_NAME).read_text())
    except (OSError, ValueError, TypeError):
        return None
    return record.get(key) if isinstance(record, dict) else None


def record_path(out_dir: str | Path, config: dict[str, Any]) -> Path:
    """Where the finished run's record lives: ``run_dir(out_dir, config) / "record.json"``."""
    return run_dir(out_dir, config) / RECORD_NAME


def record_path_of(record: dict[str, Any], out_dir: str | Path) -> Path:
    """The path of a record (read back or just written) under ``out_dir``, from its config."""
    return record_path(out_dir, record["config"])


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._]+", "_", text).strip("_") or "_"


# --- writing and reading -------------------------------------------------------------------------


SEAL_KEY = "record_sha256"
"""A run record's and failure note's checksum of the rest (:func:`content_hash`): a digit
changed by hand or by the disk (test accuracy 0.5469 to 0.99) is in range and well
formed, and would flow into a report's tables, the worst kind of wrong number. Records
without it (written before 2026-12-05) are read as they were."""


def write_record(
    path: str | Path, record: dict[str, Any], *, sealed: bool = False
) -> dict[str, Any]:
    """Writes ``record`` as JSON at ``path`` atomically; returns what was written.

    ``sealed``: a run's record or failure note, written with :data:`SEAL_KEY`, which
    :func:`read_record` checks (and leaves out of what it returns, as here).

    The text goes to a temporary file in the same folder (same filesystem,
    so the rename is atomic), is flushed and fsynced, then ``os.replace``-d
    over ``path``: a reader sees the old record whole or the new one whole,
    never part of one. Any failure removes the temporary file, and an
    OSError of the write itself (a full disk) is raised naming ``path``. NaN and ±inf
    are written as ``null`` (the returned dict has ``None`` there, i.e. is
    what :func:`read_record` will return).
    """
    path = Path(path)
    data = jsonable(record)
    if not isinstance(data, dict):
        raise TypeError(f"a record is a dict; got {type(record).__name__}")
    data.pop(SEAL_KEY, None)  # a record read back and written again is sealed anew
    on_disk = {**data, SEAL_KEY: content_hash(data)} if sealed else data
    text = json.dumps(on_disk, indent=1, allow_nan=False, ensure_ascii=False) + "\n"
    write_bytes(path, text.encode("utf-8"))
    return data


def read_record(path: str | Path) -> dict[str, Any]:
    """Reads one record; an unreadable or malformed file raises :class:`RecordError` naming it.

    Also failure notes; a finished run's record is checked further by
    :func:`check_finished`.
    """
    return _read_record(Path(path))[0]


def _read_record(path: Path) -> tuple[dict[str, Any], bool]:
    """:func:`read_record`, and whether the file carried :data:`SEAL_KEY`."""
    try:
        record = json_loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecordError(f"{path}: not a readable run record ({e})") from e
    except ValueError as e:  # NaN or Infinity: never written (they are null), so edited
        raise RecordError(f"{path}: not a readable run record ({e})") from None
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise RecordError(f"{path}: not a run record (expected a JSON object with a 'config')")
    _check_folder(path, record["config"])
    _check_vocabulary(path, record["config"])
    _check_name(path, record)
    seal = record.pop(SEAL_KEY, None)
    if seal is not None and seal != content_hash(record):
        raise RecordError(
            f"{path}: its contents do not match its {SEAL_KEY}; the record was edited or "
            "damaged on disk: restore it, or delete it to run it again"
        )
    return record, seal is not None


def _check_vocabulary(path: Path, config: dict[str, Any]) -> None:
    """Refuses a config whose dataset, arch or strategy no run writes (a run's config
    without them fails its folder's hash): the report puts them
    into file names, Markdown, LaTeX and figure titles and legends (a ``$`` in a
    hand-made record's dataset or arch crashed the figures with a traceback, a newline
    in an arch split the Markdown tables)."""
    dataset, strategy, arch = config.get("dataset"), config.get("strategy"), config.get("arch")
    error = recorded_dataset_error(dataset) if "dataset" in config else None
    if error:
        raise RecordError(f"{path}: config dataset {dataset!r}: {error}; {_EDITED}")
    if "strategy" in config and strategy not in STRATEGIES:
        raise RecordError(
            f"{path}: config strategy {strategy!r} is not one of {', '.join(STRATEGIES)}; {_EDITED}"
        )
    if "arch" in config and arch not in (*ARCHS, *TEST_ARCHS):
        raise RecordError(
            f"{path}: config arch {arch!r} is not one of {', '.join(ARCHS)}; {_EDITED}"
        )


def _check_name(path: Path, record: dict[str, Any]) -> None:
    """Refuses a record whose config is not the run it names in its ``run`` field.

    A run folder copied by hand to a name without the hash (``seed2-copy/``)
    escapes :func:`_check_folder`; with its config edited (``seed`` 0 -> 2) it
    would count as a seed that never ran. The ``run`` field was written from
    the config that trained, so the two must agree.
    """
    named = record.get("run")
    if named is None:
        return
    try:
        actual = run_name(record["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise RecordError(f"{path}: config cannot name a run ({e}); {_EDITED}") from None
    if named != actual:
        raise RecordError(
            f"{path}: its config is run {actual}, not the {named} it records; the record "
            "was edited or copied: restore it, or delete it to run it again"
        )


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON; a record writes a non-finite number as null")


_EDITED = "the record was edited: restore it, or delete it to run it again"


def check_finished(path: str | Path, record: dict[str, Any]) -> None:
    """Refuses, naming ``path``, a run's record without what every reader of it reads."""
    for key, kind, what in _RECORD_FIELDS:
        if not isinstance(record.get(key), kind) or isinstance(record.get(key), bool):
            raise RecordError(f"{path}: record has no {key!r} ({what}); {_EDITED}")
    problem = numbers_problem(record)
    if problem:
        raise RecordError(f"{path}: {problem}; {_EDITED}")


def numbers_problem(record: dict[str, Any]) -> str | None:
    """What is wrong with a finished record's numbers (its ``val``/``test`` dicts and
    ``primary_metric`` given), or None.

    The same metric names for val and test, each null (undefined) or a finite
    number in [-1, 1] (κ can be negative), and a finite train time (and cached
    features' times, where recorded). A missing
    test metric would read as an undefined one, a 57.0 as the best cell, a
    deleted train time as a cheaper strategy: only an edit makes them.
    """
    val, test = record["val"], record["test"]
    if set(val) != set(test):
        odd = sorted(set(val) ^ set(test))[0]
        return f"metric {odd!r} is in {'val' if odd in val else 'test'} only"
    if record["primary_metric"] not in val:
        return f"primary_metric {record['primary_metric']!r} is not among its metrics"
    for split, metrics in (("val", val), ("test", test)):
        for name, value in metrics.items():
            if value is not None and not (_finite(value) and -1 <= value <= 1):
                return (
                    f"{split}.{name} is {json.dumps(value)}, expected null or a number in [-1, 1]"
                )
    seconds = record.get("train_seconds")
    if seconds is None:
        return "no train_seconds (seconds of training)"
    if not (_finite(seconds) and seconds >= 0):
        return f"train_seconds is {json.dumps(seconds)}, expected seconds >= 0"
    features = record.get("features")  # cached features' seconds: a run's cost with them
    for key in ("seconds", "extract_seconds"):
        value = features.get(key) if isinstance(features, dict) else None
        if value is not None and not (_finite(value) and value >= 0):
            return f"features.{key} is {json.dumps(value)}, expected seconds >= 0"
    return None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_RECORD_FIELDS = (
    ("val", dict, "validation metrics"),
    ("test", dict, "test metrics"),
    ("primary_metric", str, "a metric name"),
    ("epochs", list, "a list of epochs"),
    ("best_epoch", int, "an epoch number"),
)
"""What every reader of a finished run's record reads (the run and sweep summaries, selection)."""


_HASHED_FOLDER = re.compile(rf"-([0-9a-f]{{{HASH_CHARS}}})$")


def named_as_a_run(folder: str | Path) -> bool:
    """Whether ``folder`` is named as a run's folder is (ending in its config's hash): a
    user's own folder holding a ``best/`` is not one."""
    return _HASHED_FOLDER.search(Path(folder).name) is not None


def _check_folder(path: Path, config: dict[str, Any]) -> None:
    """Refuses a record whose config is not the run its folder is named after.

    A run's folder ends in its config's hash; an edited config (another lr,
    more epochs) would otherwise be reported, and skipped by ``run``, as
    the run it no longer is. A folder not named by a hash (a record copied
    elsewhere by hand) is not checked.
    """
    named = _HASHED_FOLDER.search(path.parent.name)
    if named is None:
        return
    try:
        actual = config_hash(config)
    except (TypeError, ValueError) as e:
        raise RecordError(f"{path}: config cannot be hashed ({e})") from None
    if actual != named.group(1):
        raise RecordError(
            f"{path}: its config hashes to {actual}, not the {named.group(1)} its folder is "
            "named after; the record was edited or moved: restore it, or delete it to run it "
            "again"
        )


def load_records(
    out_dir: str | Path,
    *,
    finished: bool = False,
    damaged: list[RecordError] | None = None,
) -> list[dict[str, Any]]:
    """Every finished run's record under ``out_dir`` (any depth), in path order.

    Only files named ``record.json`` are read, so temporary files of a
    write in progress (``.record.json.*.tmp``) are never picked up, nor the
    results ``--force`` set aside (:data:`PREVIOUS_NAMES`). A
    corrupt record raises :class:`RecordError` naming the file (a results
    table silently missing a run would be worse). ``finished``: each is
    also checked by :func:`check_finished`, for readers that take its
    numbers as they are. ``damaged``: a list that collects those errors instead, the
    other records read on (a listing, which says so, not a table of numbers).
    """
    return [r for _, r in load_records_at(out_dir, finished=finished, damaged=damaged)]


def load_records_at(
    out_dir: str | Path,
    *,
    finished: bool = False,
    damaged: list[RecordError] | None = None,
    unsealed: list[Path] | None = None,
) -> list[tuple[Path, dict[str, Any]]]:
    """:func:`load_records`, each record with the file it was read from (for errors that
    must name two files: one run's record found twice). ``unsealed``: a list that collects
    the files without :data:`SEAL_KEY` (written before it, or edited with it removed),
    whose numbers are checked against nothing, which a report says."""
    records = []
    for path in _find_files(out_dir, RECORD_NAME):
        if path.parent.name in PREVIOUS_NAMES:
            continue
        try:
            record, sealed = _read_record(path)
            if finished:
                check_finished(path, record)
        except RecordError as e:
            if damaged is None:
                raise
            e.path = path  # type: ignore[attr-defined]  # which run a listing skips
            damaged.append(e)
            continue
        if not sealed and unsealed is not None:
            unsealed.append(path)
        confirmed = _confirmed_at(path.parent)
        if confirmed is not None:
            record[CONFIRMED_KEY] = confirmed
        records.append((path, record))
    return records


def one_record_per_run(
    found: Iterable[tuple[Path, dict[str, Any]]],
    where: str,
    key: Callable[[dict[str, Any]], str] = config_hash,
    what: str = "records",
) -> list[dict[str, Any]]:
    """The records of :func:`load_records_at`, refusing a run whose record is found twice
    (a run folder copied by hand, a backup kept inside): counted twice in a mean or a
    cell's cost. The one line names both files, which in a grid's 1,728 folders, or a
    copy nested deeper, the user would otherwise hunt for. ``key``: what one run is
    (:func:`config_hash`; :func:`settings_hash` for records matched to a grid); ``what``
    the files are (``"failure notes"``)."""
    seen: dict[str, Path] = {}
    records = []
    for path, record in found:
        k = key(record["config"])
        if k in seen:
            raise RecordError(
                f"{where}: {run_name(record['config'])} has two {what}, {seen[k]} and "
                f"{path}; expected one per run: move the copy out"
            )
        seen[k] = path
        records.append(record)
    return records


def _walk_once(out_dir: str | Path) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk`` of ``out_dir`` following links, each real folder once (a loop, or a link
    to a folder already inside, is not walked again), sub-folders in name order; the
    caller may prune ``dirs`` as with ``os.walk``.

    Hidden folders and a file system's own (``.Trash-1000``, ``$RECYCLE.BIN``) are left
    out, as every data listing leaves them out: a run folder deleted from a file manager
    lands there, and came back into the tables (a trashed one-seed run the best of its
    dataset). A link below ``out_dir`` that leads nowhere is refused
    (:func:`_refuse_broken_links`)."""
    seen: set[str] = set()
    for root, dirs, names in os.walk(out_dir, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        if RECORD_NAME not in names and FAILURE_NAME not in names:  # a run's own links: no run
            _refuse_broken_links(root, names)
        dirs[:] = [d for d in dirs if not not_listed(d)]
        if RECORD_NAME in names or FAILURE_NAME in names:  # a run folder: its checkpoints
            dirs[:] = [d for d in dirs if d not in _CHECKPOINT_FOLDERS]  # hold no runs
        dirs.sort()
        yield root, dirs, names


def _refuse_broken_links(root: str, names: list[str]) -> None:
    """Refuse a link in ``root`` that leads nowhere (``os.walk`` lists it among the files).

    Why: a run folder linked in from another disk is a run like the others; with the disk
    unmounted its link dangles, and its runs vanished from every table, the grid expected
    worked out from the records left (a whole LR gone, every cell "complete")."""
    for name in names:
        path = os.path.join(root, name)
        if name in (RECORD_NAME, FAILURE_NAME) or not_listed(name):
            continue  # a run's own file: named as such by _find_files
        if os.path.islink(path) and not os.path.exists(path):
            raise RecordError(
                f"{path}: a link that leads nowhere or loops (to {os.readlink(path)}); "
                "expected a run folder or file it holds: its runs would vanish from every "
                "table (a disk not mounted?); mount it, or remove the link"
            )


_CHECKPOINT_FOLDERS = ("best", "checkpoints")
"""A run folder's orbax checkpoints: dozens of folders each (1,728 runs: 14,000), which
every walk of a results folder descended into, three walks a report."""


def _find_files(out_dir: str | Path, name: str) -> list[Path]:
    """Every file called ``name`` under ``out_dir``, following linked folders, in path order.

    Run folders linked in from another disk are runs like the others (the
    runner, which checks ``record.json`` through the link, counts them as
    done), so the walk follows links; a folder reached twice (a loop, or a
    link to a folder already inside) is read once.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise RecordError(f"{out_dir}: no such results folder")
    found = []
    for root, dirs, names in _walk_once(out_dir):
        if (name in names or name in dirs) and Path(root).name not in PREVIOUS_NAMES:
            path = Path(root) / name
            if not path.is_file():  # skipped, its run would vanish from every table
                what = (
                    "a folder"
                    if path.is_dir()
                    else "a broken or looping link"
                    if path.is_symlink()
                    else "not a regular file"
                )
                raise RecordError(f"{path}: {what}, expected the run's {name}")
            found.append(path)
    return sorted(found)


def unfinished_runs(
    out_dir: str | Path, set_aside: list[Path] | None = None
) -> list[tuple[Path, int]]:
    """The run folders under ``out_dir`` that hold resume checkpoints or a ``best/`` but
    neither a record nor a failure note, each with the bytes it holds: killed runs, runs
    in progress, and runs whose settings changed since (a sweep edited after a kill),
    which nothing else names and whose checkpoints stay on disk.

    ``set_aside``: a list that collects the run folders whose only record is one ``--force``
    set aside (:data:`PREVIOUS_NAMES`: a rerun going on, or killed), which no table reads
    until the rerun ends, and which a report with nothing else to read must name rather
    than say the folder holds no record."""
    found = []
    for root, dirs, names in _walk_once(out_dir):
        if Path(root).name in PREVIOUS_NAMES:
            dirs[:] = []
            continue
        if RECORD_NAME in names or FAILURE_NAME in names:
            continue
        checkpoints = Path(root) / "checkpoints"
        started = named_as_a_run(root) and (
            (checkpoints.is_dir() and any(checkpoints.iterdir()))
            or "best" in dirs
            # held, before its first checkpoint (setup, compile, epoch 1): not "not run yet"
            or (locks.LOCK_NAME in names and locks.maybe_running(root))
        )  # a run's folder ends in its hash: a user's folder holding a best/ is not one
        forced = any((Path(root) / n / RECORD_NAME).is_file() for n in PREVIOUS_NAMES)
        if forced and set_aside is not None:
            set_aside.append(Path(root))
        if started and not forced:  # a forced rerun is named once, by set_aside
            found.append((Path(root), _tree_bytes(Path(root))))
        if started or forced:
            dirs[:] = []  # a run folder: nothing below it is another run
    return found


def folder_bytes(folder: str | Path) -> int:
    """The bytes of the files under ``folder`` (a run folder's checkpoints, say)."""
    return _tree_bytes(Path(folder))


def _tree_bytes(folder: Path) -> int:
    total = 0
    for root, _, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(OSError):  # removed meanwhile (a run tidying up)
                total += (Path(root) / name).lstat().st_size
    return total


def failure_path(out_dir: str | Path, config: dict[str, Any]) -> Path:
    """Where a failed run's failure note lives: ``run_dir(out_dir, config) / "failed.json"``."""
    return run_dir(out_dir, config) / FAILURE_NAME


def write_failure(
    out_dir: str | Path,
    config: dict[str, Any],
    kind: str,
    error: str,
    dataset_options: Mapping[str, Any] | None = None,
    decoding: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Notes that a run ended without a record: ``{"config", "run", "kind", "error"}``.

    ``kind`` is a short label (``"nonfinite"``: the loss diverged, a
    deterministic outcome of that learning rate, so a sweep does not retry
    it unless asked). Reports count such runs as done but without a value.
    ``dataset_options``: the task-specific options, as a record carries them.
    ``decoding``: the declared decoding rules, as a record carries them (``{}``:
    the default rule, said so that a report can tell it from an older note).
    """
    note = {"config": config, "run": run_name(config), "kind": kind, "error": error}
    if dataset_options:
        note["dataset_options"] = dict(dataset_options)
    if decoding is not None:
        note["decoding"] = dict(decoding)
    return write_record(failure_path(out_dir, config), note, sealed=True)


def load_failures(out_dir: str | Path) -> list[dict[str, Any]]:
    """Every failure note under ``out_dir`` whose run has no record (a later success wins)."""
    return [note for _, note in load_failures_at(out_dir)]


def load_failures_at(out_dir: str | Path) -> list[tuple[Path, dict[str, Any]]]:
    """:func:`load_failures`, each note with its path (for refusals naming the file)."""
    return [
        (p, read_record(p))
        for p in _find_files(out_dir, FAILURE_NAME)
        if not (p.parent / RECORD_NAME).exists()
    ]


def jsonable(value: Any, where: str = "record") -> Any:
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
        return jsonable(value.tolist(), where)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"{where}: cannot write a {type(value).__name__} to JSON")
