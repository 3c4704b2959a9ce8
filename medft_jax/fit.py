"""One run, end to end: load data and weights, train with early stopping, test, record.

:func:`run_one` is what every run goes through (``experiments.run``,
``experiments.sweep`` and ``experiments.select``, by way of
:class:`medft_jax.session.Session`), for each (dataset, arch, strategy, lr,
seed). It is idempotent: a run whose record exists is skipped unless
``force``; a run killed half-way resumes from its latest checkpoint and
writes the record an uninterrupted run writes; a failed run leaves no
record. It is three named steps:

- :func:`_prepare`: the model, the strategy, the compiled steps and the
  train state, restored from the run's latest checkpoint when there is one;
- :func:`_train_epochs`: epochs (each: an Auto-RGN prepass where the
  strategy asks for one, the batches, validation, early stopping, the best
  and resume checkpoints) until early stopping, the last epoch or a step
  budget;
- :func:`_finish`: the test pass of the best epoch, and the record.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import datetime
import glob
import itertools
import math
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from medft_jax import data, locks, metrics, results, strategies
from medft_jax import features as features_lib
from medft_jax.checkpoints import model as model_checkpoint
from medft_jax.checkpoints import pretrained
from medft_jax.checkpoints.run import START_OVER, ResumeError, RunCheckpoints
from medft_jax.config import OPTION_DEFAULTS, RunConfig, check_config
from medft_jax.data.cache import copies_rule, duplicate_counts, skipped_counts
from medft_jax.data.images import DECODING_VERSION
from medft_jax.data.options import task_options
from medft_jax.early_stopping import EarlyStopping
from medft_jax.environment import environment_changes, environment_info, numerics_environment
from medft_jax.errors import (
    Interrupted,
    UserError,
    bars_hidden,
    deferred_stops,
    env_seconds,
    one_line,
    raise_if_stopped,
    stop_requested,
)
from medft_jax.models import COMPUTE_DTYPES, ArchSpec, get_arch, init_variables
from medft_jax.names import LOCAL_KINDS, dataset_base, same_data
from medft_jax.results import RunRecord
from medft_jax.runtime import process_0_says
from medft_jax.strategies import Schedule
from medft_jax.strategies.rgn import ZERO_TENSORS_WARNING
from medft_jax.train import (
    NonFiniteLossError,
    NonFiniteOutputError,
    Trainer,
    TrainState,
    check_finite,
    diverged_hint,
)


def resize_for(arch: str, image_size: int) -> int:
    """The resize size of ``arch``'s runs at crop ``image_size`` (its weights' ratio)."""
    return get_arch(arch).resize_for(image_size)


def load_dataset(config: RunConfig, data_dir: str | None = None, **options: Any) -> data.Dataset:
    """The dataset of ``config``, prepared at its arch's resize size for its crop. A run's
    load gives ``batch_size=config.batch_size`` among ``options``: a user's folder/csv whose
    listed training split (a MedMNIST dataset's published one) is under the batch is refused
    before any image is decoded."""
    return data.load(
        config.dataset,
        data_dir=data_dir,
        resize_size=resize_for(config.arch, config.image_size),
        crop_size=config.image_size,
        seed=config.data_seed,
        **options,
    )


def data_state(
    config: RunConfig, data_dir: str | None = None, **options: Any
) -> data.LocalState | None:
    """:func:`medft_jax.data.data_state` of the data :func:`load_dataset` would load."""
    return data.data_state(
        config.dataset,
        data_dir=data_dir,
        resize_size=resize_for(config.arch, config.image_size),
        crop_size=config.image_size,
        seed=config.data_seed,
        **options,
    )


def weights_fingerprint(weights: str, arch: str) -> str:
    """The content hash of the weights a run starts from, or ``none`` for random init.

    ``auto`` resolves to what it will use (ported ImageNet weights, or none
    when they are unavailable), so a run trained offline from random
    initialisation is never mistaken for one trained from ImageNet.
    """
    path = pretrained.locate(weights, arch, warn=False)  # warned when a run trains from it
    return "none" if path is None else model_checkpoint.content_hash(path)


def _check_image_size(ds: data.Dataset, config: RunConfig) -> None:
    """Refuses images of another size than ``config.image_size``, in any split: the
    convolutions take any size, so 64-px arrays given with ``image_size=32`` trained
    (or were tested) at 64 px while the record and the checkpoint (which predict
    resizes by) said 32."""
    for split, arrays in ds.splits.items():
        height, width = arrays.image_shape[:2]
        if (height, width) != (config.image_size, config.image_size):
            raise UserError(
                f"dataset {ds.name!r}: its {split} images are {height}x{width} pixels, but "
                f"RunConfig.image_size is {config.image_size}: resize them "
                "(medft_jax.data.preprocess.resize_and_crop) or set image_size to their size"
            )


def identify(config: RunConfig, ds: data.Dataset) -> RunConfig:
    """``config`` with the fingerprints of its data and starting weights filled in.

    They are part of the run's identity (its record's name): a run on other
    images, or from other weights, is another run, never a skip. A config
    identified already must have been identified on ``ds``: given other data,
    it would name (and skip as done) the other data's run.
    """
    fingerprint = ds.metadata.get("fingerprint")
    if not fingerprint:
        raise RuntimeError(f"dataset {ds.name!r} was loaded without a content fingerprint")
    if config.identified:
        if config.data_fingerprint != str(fingerprint):
            raise UserError(
                f"the run's config was identified on data {config.data_fingerprint}, and the "
                f"dataset given is {ds.name} with data {fingerprint}; identify it on this "
                "dataset (leave data_fingerprint and weights_fingerprint empty)"
            )
        return config
    return dataclasses.replace(
        config,
        data_fingerprint=str(fingerprint),
        weights_fingerprint=weights_fingerprint(config.weights, config.arch),
    )


# --- what a resume checkpoint holds besides the train state ------------------------------------


TIMED = ("setup", "data", "validation", "checkpoints", "features", "test")
"""Where a run's wall time goes besides the train steps and compilation: building
the model and state (and restoring a checkpoint), waiting for batches, the
validation passes, checkpoint writes and copies, computing cached features,
and the test pass. A record's ``seconds`` holds these, ``train`` (the steps),
``compile``, ``wall`` and ``other`` (the rest: metrics, logging, Python)."""


@dataclasses.dataclass
class PartialEpoch:
    """An epoch that a mid-epoch stop left unfinished: where it goes on, and what it has so far.

    Its validation never counts for early stopping or the best epoch.
    """

    epoch: int
    steps: int
    iterator: dict[str, Any]
    losses: list[float]
    train_seconds: float
    seconds: float
    val: dict[str, float]


@dataclasses.dataclass
class Progress:
    """Finished epochs, early stopping, compile time and a partial epoch: the resume JSON."""

    epochs: list[dict[str, Any]]
    stopper: EarlyStopping
    compile_seconds: float = 0.0
    compilations: int = 0
    """Train-step programs compiled for the run by earlier calls (a resumed run's)."""
    partial: PartialEpoch | None = None
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    """Wall seconds so far by where they went (:data:`TIMED`), across resumed calls."""
    features: dict[str, Any] | None = None
    """How the first head-only epoch had its cached features (the record's ``features``),
    kept across resumed calls: a run resumed after its head-only epochs has none itself."""
    attempts: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """The :func:`~medft_jax.environment.numerics_environment` of the call that started the
    run, and of each resumed call whose environment differed from the one before, each with
    ``from_step`` (the train steps done before it). Empty in a save from before it was kept
    (2026-12-06): its environment is unknown, and nothing is compared."""

    def add(self, part: str, seconds: float) -> None:
        self.seconds[part] = self.seconds.get(part, 0.0) + seconds

    def to_dict(self) -> dict[str, Any]:
        out = {
            "epochs": self.epochs,
            "early_stopping": self.stopper.state_dict(),
            "compile_seconds": self.compile_seconds,
            "compilations": self.compilations,
            "seconds": self.seconds,
        }
        if self.partial is not None:
            out["partial"] = dataclasses.asdict(self.partial)
        if self.features is not None:
            out["features"] = self.features
        if self.attempts:
            out["attempts"] = self.attempts
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Progress:
        partial = d.get("partial")
        return cls(
            epochs=list(d["epochs"]),
            stopper=EarlyStopping.from_state(d["early_stopping"]),
            compile_seconds=float(d["compile_seconds"]),
            compilations=int(d.get("compilations", 0)),  # 0: saved before it was kept
            partial=PartialEpoch(**partial) if partial else None,
            seconds={k: float(v) for k, v in (d.get("seconds") or {}).items()},
            features=d.get("features"),
            attempts=[dict(a) for a in d.get("attempts") or []],
        )

    def check(self, step: int, steps_per_epoch: int) -> None:
        """Raises ``ValueError`` unless this progress is the state's of ``step`` train steps:
        one entry per finished epoch, in order, as early stopping last saw them."""
        for i, entry in enumerate(self.epochs):
            if not isinstance(entry, dict) or entry.get("epoch") != i:
                raise ValueError(f"epochs[{i}] is not the entry of epoch {i}")
            if not isinstance(entry.get("val"), dict):
                raise ValueError(f"epochs[{i}] has no 'val' metrics")
        last = len(self.epochs) - 1 if self.epochs else None
        if self.stopper.last_epoch != last:
            raise ValueError(
                f"{len(self.epochs)} epochs, but early stopping's last epoch is "
                f"{self.stopper.last_epoch}"
            )
        for i, attempt in enumerate(self.attempts):
            if not isinstance(attempt.get("from_step"), int):
                raise ValueError(f"attempts[{i}] has no 'from_step' count")
        if self.steps_done(steps_per_epoch) != step:
            raise ValueError(
                f"{self.steps_done(steps_per_epoch)} train steps of {steps_per_epoch} an epoch, "
                f"but the saved state has taken {step}"
            )

    def steps_done(self, steps_per_epoch: int) -> int:
        return len(self.epochs) * steps_per_epoch + (self.partial.steps if self.partial else 0)

    @property
    def stopped(self) -> bool:
        """Whether early stopping ended the run at its last finished epoch."""
        return bool(self.epochs) and bool(self.epochs[-1].get("stop"))


# --- the run's compiled steps -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainerKey:
    """What a :class:`Trainer`'s compiled steps depend on.

    Runs equal in it (a sweep's runs that differ in learning rate, seed or
    starting weights only) share one Trainer and compile nothing again.
    """

    arch: str
    strategy: str
    strategy_options: tuple[tuple[str, Any], ...]
    frozen_bn: str
    precision: str
    batch_size: int
    image_size: int
    eval_batch_size: int | None
    num_classes: int
    multilabel: bool
    steps_per_epoch: int
    device_count: int


@dataclasses.dataclass
class _Run:
    """A prepared run: everything the epochs and the finish read and update."""

    config: RunConfig
    ds: data.Dataset
    spec: ArchSpec
    schedule: Schedule
    trainer: Trainer
    params: Any
    """The host initial parameters (the tree the schedule's masks are built on)."""
    state: TrainState
    progress: Progress
    steps_per_epoch: int
    eval_batch_size: int
    weights_used: str
    best_variables: Any = None
    """Device copy of the best epoch's variables when trained in this call."""
    best_meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The best checkpoint's metadata (:func:`_best_metadata`), its ``epoch`` included."""
    best_unsaved: bool = False
    """Whether :attr:`best_variables` is newer than ``best/`` on disk: written with the
    next resume checkpoint, or at the finish, never later (see :func:`_train_epochs`)."""
    last_save: float = 0.0
    """``time.perf_counter()`` of this call's last resume checkpoint (or its start)."""
    compiled_at_save: float = 0.0
    """The trainer's compile seconds at :attr:`last_save`: compiling is no training a kill
    would lose (:func:`_save_due`)."""
    feature_roots: tuple[Path, ...] = ()
    """Where head-only epochs may cache the backbone's features, in order (empty: never)."""
    features: Any = None
    """The :class:`medft_jax.features.FeatureSet` once read or computed."""
    feature_info: dict[str, Any] | None = None
    """How this call had the features; None until a head-only epoch asks (the record's
    entry is the run's first: :attr:`Progress.features`)."""
    started: float = 0.0
    """``time.perf_counter()`` when this call began."""
    wall_before: float = 0.0
    """Wall seconds of earlier calls (a resumed run)."""
    compilations_before: int = 0
    """Train-step programs earlier calls compiled (a resumed run)."""

    def wall(self) -> float:
        """Wall seconds of the run so far, this call included."""
        return self.wall_before + time.perf_counter() - self.started

    def compilations(self) -> int:
        """Train-step programs compiled for the run so far, this call's included (a sweep's
        later runs share the first's and compile none: a cost, like compile seconds)."""
        return self.compilations_before + self.trainer.num_compilations

    @property
    def primary(self) -> str:
        return metrics.primary_metric(self.config.dataset, self.ds.multilabel)

    @property
    def shard(self) -> dict[str, int]:
        return {"shard_index": jax.process_index(), "shard_count": jax.process_count()}


# --- run_one --------------------------------------------------------------------------------------


def run_one(
    config: RunConfig,
    out_dir: str | Path = "runs",
    *,
    dataset: data.Dataset | None = None,
    data_dir: str | None = None,
    force: bool = False,
    progress: bool = True,
    eval_batch_size: int | None = None,
    stop_after_steps: int | None = None,
    trainers: dict[TrainerKey, Trainer] | None = None,
    feature_cache: bool = True,
    on_start: Callable[[], None] | None = None,
    on_diverged: Callable[[NonFiniteLossError], None] | None = None,
    skip_failed: bool = False,
    said: set[str] | None = None,
) -> dict[str, Any]:
    """Trains, evaluates and records one configuration; returns its record.

    ``said``: a set the caller keeps across runs (a sweep, a selection): a note
    about the settings (a final stage past ``--epochs``) is printed once for
    all the runs that share it, not once per learning rate and seed.

    ``on_diverged(error)`` is called when the loss turns non-finite, while this
    process still holds the run, and ``skip_failed`` raises :class:`FailedBefore`
    when the run has a failure note (checked under the same lock): a second
    process can then never train a diverged run again between the divergence and
    its note.

    ``on_start()`` is called once this process holds the run (its lock taken,
    no record found), before anything of it is prepared: a sweep's "running"
    line is then never said of a run another process holds.

    ``feature_cache``: head-only epochs under ``frozen_bn='freeze'`` (a model
    without BatchNorm, VGG-19: either mode) train from the backbone's features computed
    once (:mod:`medft_jax.features`),
    kept beside the prepared images, or under ``out_dir/features`` for a
    dataset held in memory or prepared data that cannot be written. The
    record is the same either way, to float rounding; False always runs
    the backbone.

    ``trainers``: a dict the caller keeps across runs (a sweep): runs that
    differ only in seed, learning rate or initial weights then share one
    :class:`Trainer` and its compiled steps, instead of tracing them again.

    ``stop_after_steps`` ends this call once the run has trained that many
    steps in all, as if it had been killed there, and returns ``{}`` (no
    record is written): the budgets of successive halving, and tests of
    resuming. A stop inside an epoch validates first and saves the partial
    epoch (its batches seen, losses, clocks and that validation, under
    ``progress["partial"]`` of the resume checkpoint); the next call
    finishes the epoch where it stopped, so the run still ends with the
    record an uninterrupted run writes. A partial epoch's validation never
    counts for early stopping or the best epoch.
    """
    started = time.perf_counter()
    check_config(config, lambda field: f"RunConfig.{field}")
    checkpoint_seconds()  # a malformed value refused before the run's folder exists
    ds = (
        dataset
        if dataset is not None
        else load_dataset(config, data_dir, batch_size=config.batch_size)
    )
    _check_image_size(ds, config)
    if dataset is not None and same_data(ds.name) != same_data(config.dataset):
        # The run's folder, record and report name the config's dataset: arrays of
        # another named so were grouped with that dataset's runs without a word.
        raise data.DataError(
            f"RunConfig.dataset is {config.dataset!r}, but the dataset given is {ds.name!r}; "
            "expected the config to name the data it trains on"
        )
    config = identify(config, ds)
    loading = time.perf_counter() - started
    cfg = config.to_dict()
    run_dir = results.run_dir(out_dir, cfg)
    record_file = results.record_path(out_dir, cfg)
    if not force and process_0_says(record_file.exists()):  # every process decides alike
        record = results.read_record(record_file)
        found_done(run_dir)
        return record
    ds.check_scorable()  # before the run's folder exists
    # One process per run (another gets RunLocked); the lock is released, and this
    # process's background checkpoint writes end, whatever ends the run (a Ctrl-C then
    # names the run, once its last checkpoint is written).
    with (
        _naming_an_interrupt(run_dir, record_file, force),
        locks.run_lock(run_dir, results.settings_hash(cfg)) as lock,
        RunCheckpoints(run_dir, exclusive=True) as ckpts,
    ):
        if not force and process_0_says(record_file.exists()):  # another finished it meanwhile
            return results.read_record(record_file)
        if (
            skip_failed
            and not force
            and process_0_says(results.failure_path(out_dir, cfg).exists())
        ):
            raise FailedBefore(f"{run_dir.name}: failed before")
        _say_tried_before(results.failure_path(out_dir, cfg), force)
        if on_start is not None:
            on_start()
        if force:
            if jax.process_index() == 0:
                _set_aside_finished(run_dir)
            lock.clear_folder(keep=results.PREVIOUS_NAMES)
        t = time.perf_counter()
        metrics.import_sklearn()  # set-up's second, not the first validation's
        stop_at = math.inf if stop_after_steps is None else stop_after_steps
        run = _prepare(
            config,
            ds,
            ckpts,
            eval_batch_size=eval_batch_size,
            trainers=trainers,
            said=said,
            stop_at=stop_at,
        )
        run.started, run.wall_before = started, run.progress.seconds.get("wall", 0.0)
        run.compilations_before = run.progress.compilations
        run.progress.add("setup", time.perf_counter() - t + loading)
        if feature_cache:
            run.feature_roots = features_lib.roots_for(ds, out_dir)
        try:
            trained = _train_epochs(run, ckpts, run_dir.name, progress=progress, stop_at=stop_at)
        except NonFiniteLossError as e:
            if on_diverged is not None:
                on_diverged(e)
            raise
        if not trained:
            ckpts.close()
            raise_if_stopped()  # stopped by a signal, its resume point saved
            return {}
        return _finish(run, ckpts, run_dir.name, record_file)


@contextlib.contextmanager
def _naming_an_interrupt(run_dir: Path, record_file: Path, force: bool) -> Iterator[None]:
    """A Ctrl-C inside is an :class:`Interrupted` naming the run and what rerunning does:
    skip it (its record was written), start it over (``--force`` clears its folder, or it
    has no checkpoint yet) or resume it from its last checkpoint."""
    try:
        yield
    except Interrupted:  # a run inside this one's (a caller's own loop): named already
        raise
    except KeyboardInterrupt:
        latest = run_dir / "checkpoints"
        if record_file.exists() and force:  # the last record, set aside or not yet
            what = (
                "a record of it is on disk: rerunning the same command (--force) starts it "
                "over; without --force it skips it"
            )
        elif record_file.exists():
            what = "its record is written: rerunning the same command skips it"
        elif force:
            what = (
                "rerunning the same command (--force) starts it over; without --force it "
                "resumes from its last checkpoint, if it has one"
            )
        elif latest.is_dir() and any(p.name.isdigit() for p in latest.iterdir()):
            what = "rerunning the same command resumes it from its last checkpoint"
        else:
            what = "it has no checkpoint yet: rerunning the same command starts it again"
        raise Interrupted(f"{run_dir}: {what}") from None


class FailedBefore(RuntimeError):
    """The run has a failure note, found once its lock was held (another process's)."""


def _set_aside_finished(run_dir: Path) -> None:
    """Moves the finished record and best parameters into ``previous/`` (``--force``).

    A folder without a record (an interrupted forced run) keeps the ``previous/``
    it has: the last finished result. Every step is a rename, the record first:
    a crash between them leaves the record in ``previous.new/``, which the next
    ``--force`` completes and no step deletes, and never a record without its
    ``best/`` in the run folder.
    """
    record, best = run_dir / results.RECORD_NAME, run_dir / "best"
    previous, new = (run_dir / name for name in results.PREVIOUS_NAMES)
    if not record.exists() and not new.exists():
        return
    new.mkdir(exist_ok=True)
    if record.exists():
        os.replace(record, new / results.RECORD_NAME)
    if best.exists() and not (new / "best").exists():
        os.replace(best, new / "best")
    if (new / results.RECORD_NAME).exists():
        if previous.exists():
            shutil.rmtree(previous)
        os.replace(new, previous)


def _drop_previous(run_dir: Path) -> None:
    """Deletes what ``--force`` set aside, once the new record is written (never raises)."""
    for name in results.PREVIOUS_NAMES:
        shutil.rmtree(run_dir / name, ignore_errors=True)


DROPPED_NOTE_SHARE = 0.1
"""The share of the training images an epoch leaves out (the last partial batch) above
which the run says so: BACH's 1.2 % is the protocol's; a small folder's 29 % is not."""


def _say_what_the_run_cannot_do(
    config: RunConfig,
    final: int,
    steps_per_epoch: int,
    said: set[str] | None = None,
    train_images: int | None = None,
) -> None:
    """One note line each, as the run starts, for settings that run but are not quite their
    strategy: a staged run whose epochs end before its final stage (a report marks its cell
    ¶), Auto-RGN's stream estimate on epochs no longer than its window, and its prepass
    on epochs shorter than its estimate steps; and an epoch that leaves out more than
    :data:`DROPPED_NOTE_SHARE` of the ``train_images`` (a small dataset)."""
    notes = []
    dropped = 0 if train_images is None else train_images - steps_per_epoch * config.batch_size
    if train_images and dropped > DROPPED_NOTE_SHARE * train_images:
        notes.append(
            f"{dropped} of the {train_images} training images ({100 * dropped / train_images:.0f}"
            f" %) sit out each epoch: the last partial batch of --batch-size {config.batch_size} "
            "is dropped (other images each epoch, as the order is reshuffled); a batch size "
            f"that divides {train_images} trains on them all"
        )
    if config.epochs <= final:
        notes.append(
            f"{config.strategy}'s final stage begins at epoch {final + 1}, past --epochs "
            f"{config.epochs}: the blocks it unfreezes last never train (a report marks such "
            "cells ¶)"
        )
    rgn = {**OPTION_DEFAULTS, **dict(config.strategy_options)}
    stream = not rgn["rgn_per_step"] and rgn["rgn_mode"] == "stream"
    window = rgn["rgn_estimate_steps"]
    if config.strategy == "auto_rgn" and stream and steps_per_epoch <= window:
        notes.append(
            f"auto_rgn estimates each epoch's RGN over its first {window} steps and an epoch "
            f"here has {steps_per_epoch}: epoch 1 applies each step's own RGN (as "
            "--rgn-per-step), every later epoch the previous one's estimate (--rgn-mode "
            "prepass estimates it before the epoch trains)"
        )
    prepass = not rgn["rgn_per_step"] and rgn["rgn_mode"] == "prepass"
    if config.strategy == "auto_rgn" and prepass and steps_per_epoch < window:
        notes.append(
            f"auto_rgn's prepass averages at most an epoch's batches: {steps_per_epoch} here, "
            f"not the {window} of its estimate steps"
        )
    for note in notes:
        if said is not None:  # once per session: the same words for every LR and seed
            if note in said:
                continue
            said.add(note)
        print(f"note: {note}", file=sys.stderr, flush=True)


def _prepare(
    config: RunConfig,
    ds: data.Dataset,
    ckpts: RunCheckpoints,
    *,
    eval_batch_size: int | None,
    trainers: dict[TrainerKey, Trainer] | None,
    said: set[str] | None = None,
    stop_at: float = math.inf,
) -> _Run:
    """The model, strategy, trainer and state of a run, resumed from its checkpoint if any
    (``stop_at``: this call's step budget, :func:`run_one`'s ``stop_after_steps``)."""
    spec = get_arch(config.arch)
    start, weights_used = pretrained.resolve(config.weights, config.arch)
    model = spec.build(num_classes=ds.num_classes, dtype=COMPUTE_DTYPES[config.precision])
    variables = jax.device_get(init_variables(model, config.seed, image_size=32))
    if start is not None:
        variables = pretrained.merge(variables, start, spec.partition)
    steps_per_epoch = ds.steps_per_epoch(config.batch_size)
    if steps_per_epoch < 1:
        source = data_source_of(ds)
        where = f" {source.get('csv_file', source['root'])}" if source else ""
        raise data.DataError(
            f"--batch-size {config.batch_size} is larger than the {ds.num_examples('train')} "
            f"training examples of {config.dataset}{where}"
        )
    with warnings.catch_warnings():
        # Auto-RGN's all-zero tensors (a random init's BatchNorm biases) are handled as the
        # reference does (multiplier 1 until they move); the warning is for one's own model.
        warnings.filterwarnings("ignore", message=ZERO_TENSORS_WARNING)
        strategy = strategies.make(
            config.strategy,
            variables["params"],
            spec.partition,
            learning_rate=1.0,  # the trainer applies config.lr (one compilation for every lr)
            steps_per_epoch=steps_per_epoch,
            frozen_bn=config.frozen_bn,
            **dict(config.strategy_options),
        )
    trainer = _trainer(config, ds, model, strategy.tx, steps_per_epoch, eval_batch_size, trainers)
    n_dev = jax.device_count()
    if config.batch_size % n_dev:
        raise data.DataError(
            f"--batch-size {config.batch_size} must be a multiple of {n_dev} devices"
        )
    eval_bs = eval_batch_size or max(n_dev, config.batch_size)
    state = trainer.init_state(variables)
    restored = ckpts.restore_latest(trainer.abstract_state(variables))
    final = strategy.schedule.final_stage_epoch
    if jax.process_index() == 0:
        _say_what_the_run_cannot_do(
            config, final, steps_per_epoch, said, train_images=ds.num_examples("train")
        )
    if restored is None:
        stopper = EarlyStopping(patience=config.patience, start_epoch=final)
        progress = Progress([], stopper, attempts=[{"from_step": 0, **numerics_environment()}])
        if jax.process_index() == 0:
            for line in (
                _left_by_other_data(ckpts.run_dir),
                _recorded_on_other_data(ckpts.run_dir, config),
            ):
                if line:
                    print(line, file=sys.stderr, flush=True)
    else:
        state, saved = restored
        try:
            progress = Progress.from_dict(saved)
            progress.check(int(jax.device_get(state.step)), steps_per_epoch)
        except KeyError as e:  # valid JSON, not what this toolkit saves: edited, or damaged
            raise ckpts.damaged_progress(f"no {e.args[0]!r} field") from None
        except (TypeError, ValueError, AttributeError) as e:
            raise ckpts.damaged_progress(str(e)) from None
        ckpts.check_best_kept(progress.stopper.best_epoch, len(progress.epochs))
        # A kill or a step budget: not trained from scratch. Unsaid where this call's budget
        # is spent already (a selection re-run reading its arms: nothing resumes).
        if jax.process_index() == 0 and not _budget_spent(progress, steps_per_epoch, stop_at):
            print(_resuming(progress, ckpts), file=sys.stderr, flush=True)
        changed = _environment_changed(progress, progress.steps_done(steps_per_epoch))
        if changed and jax.process_index() == 0:
            print(changed, file=sys.stderr, flush=True)
    return _Run(
        config=config,
        ds=ds,
        spec=spec,
        schedule=strategy.schedule,
        trainer=trainer,
        params=variables["params"],
        state=state,
        progress=progress,
        steps_per_epoch=steps_per_epoch,
        eval_batch_size=-(-eval_bs // n_dev) * n_dev,  # up: padded rows are masked
        weights_used=weights_used,
    )


def _left_by_other_data(run_dir: Path) -> str | None:
    """The note a run starting from scratch says when a folder of its name with another
    hash (same dataset, arch, strategy, lr and seed; other data, weights or settings)
    holds resume checkpoints and no record: a run killed, then its data edited, is
    another run (its hash covers the data's contents), so rerunning the command did not
    resume it, and its checkpoints stay on disk until deleted. One glob of the run's
    siblings; None when there is no such folder.

    Not named: a sibling a live process may be running now (a bf16 run of the same name
    in another process, say: :func:`locks.maybe_running`), and one holding a record
    ``--force`` set aside (a forced rerun, going on or killed, that the report names).
    """
    left = []
    for other in results.same_name_runs(run_dir):
        done = (results.RECORD_NAME, results.FAILURE_NAME, *results.PREVIOUS_NAMES)
        if any((other / name).exists() for name in done) or locks.maybe_running(other):
            continue
        latest = other / "checkpoints"
        with contextlib.suppress(OSError):
            if latest.is_dir() and any(p.name.isdigit() for p in latest.iterdir()):
                left.append(other)
    if not left:
        return None
    size = results.folder_bytes(left[0])
    more = f" (and {len(left) - 1} more such folder(s))" if len(left) > 1 else ""
    return (
        f"note: {left[0]} ({size / 1e6:.1f} MB) holds the resume checkpoints of a stopped run "
        f"of the same name on other data, weights or settings (the data edited since it "
        f"stopped, say){more}: it is not resumed, {run_dir.name} starts from scratch; unless "
        "you mean to finish it under its own settings, delete it to free the space"
    )


def _recorded_on_other_data(run_dir: Path, config: RunConfig) -> str | None:
    """The note a run starting from scratch says when a folder of its name with another
    hash holds a finished record of the same settings: the data (or the weights) changed
    since, so the run is another one, trained anew under a new name; nothing said so (a
    sweep over an edited MedMNIST file trained every run again in silence). One glob of
    the run's siblings; None when there is no such record."""
    settings = results.settings_hash(config.to_dict())
    found = [
        (other, recorded)
        for other in results.same_name_runs(run_dir)
        if (recorded := results.recorded_config(other)) is not None
        and results.settings_hash(recorded) == settings
    ]
    if not found:
        return None
    other, recorded = found[0]
    what = [
        word
        for key, word in (("data_fingerprint", "data"), ("weights_fingerprint", "weights"))
        if recorded.get(key) != getattr(config, key)
    ]
    then = results.recorded_field(other, "decoding_version")
    if what == ["data"] and isinstance(then, int) and then < DECODING_VERSION:
        # Not an edit: this toolkit decodes some of the files otherwise now (each run said
        # "the data changed since", a sweep's every run of the dataset).
        said = (config.dataset, then)
        if said in _UPGRADES_SAID:
            return None
        _UPGRADES_SAID.add(said)
        return (
            f"note: {other} holds a finished record of these settings on images decoded by "
            f"decoding version {then}; version {DECODING_VERSION} decodes some of "
            f"{config.dataset}'s files otherwise (an upgrade of medft-jax, whether or not "
            f"the data was edited too), so {run_dir.name} trains from scratch, as will its "
            "other runs so recorded (the report takes one of each two: --latest, or move "
            "the older folders out)"
        )
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    return (
        f"note: {other} holds a finished record of these settings on other "
        f"{' and '.join(what) or 'data'}{more}: the {' and '.join(what) or 'data'} changed since, "
        f"so {run_dir.name} is another run and trains from scratch (the report takes one "
        "of the two: --latest, once the dataset's other runs are rerun on it too, or move "
        "the older folder out)"
    )


_UPGRADES_SAID: set[tuple[str, int]] = set()
"""(dataset, decoding version of the older records) this process said an upgrade of."""


def _environment_changed(progress: Progress, steps_done: int) -> str | None:
    """Notes this call's environment in ``progress`` if it differs from the last attempt's
    (another CPU thread count, device or jax): the note line to print, else None.

    The run goes on (the steps so far are sound, each in its own environment), but its
    numbers are then those of neither environment's uninterrupted run, and the record
    lists every attempt's environment (``environment.attempts``), not only the last.
    """
    if not progress.attempts:  # saved before attempts were kept: nothing to compare with
        return None
    now = numerics_environment()
    last = {k: v for k, v in progress.attempts[-1].items() if k != "from_step"}
    changes = environment_changes(last, now)
    if not changes:
        return None
    progress.attempts.append({"from_step": steps_done, **now})
    return (
        f"note: resuming after step {steps_done} in another environment than before "
        f"({', '.join(changes)}): the run's numbers will be those of neither's uninterrupted "
        "run, and its record lists each (environment.attempts); --force trains it over here"
    )


def _budget_spent(progress: Progress, steps_per_epoch: int, stop_at: float) -> bool:
    """Whether a call with step budget ``stop_at`` has nothing left to do: the budget's
    steps trained and validated. A Ctrl-C or SIGTERM in the budget's last step saved it
    unvalidated: validated now (a select rung scored without it, and the same call
    returning at once, kept it so)."""
    part = progress.partial
    unvalidated = part is not None and part.steps > 0 and not part.val
    return progress.steps_done(steps_per_epoch) >= stop_at and not unvalidated


def _resuming(progress: Progress, ckpts: RunCheckpoints) -> str:
    """The line a resumed run says: where it goes on from, and from which checkpoint."""
    done, part = len(progress.epochs), progress.partial
    where = f"{done} epoch{'s' * (done != 1)}"
    if part is not None:
        steps = f"{part.steps} step{'s' * (part.steps != 1)} of epoch {part.epoch + 1}"
        where = f"{where} and {steps}" if done else steps  # not "0 epochs and 1 steps"
    return f"note: resuming after {where}, from {ckpts.latest_dir}"


def _trainer(
    config: RunConfig,
    ds: data.Dataset,
    model: Any,
    tx: Any,
    steps_per_epoch: int,
    eval_batch_size: int | None,
    trainers: dict[TrainerKey, Trainer] | None,
) -> Trainer:
    """The run's :class:`Trainer`: the one in ``trainers`` with the same key, else a new one."""
    key = TrainerKey(
        config.arch,
        config.strategy,
        config.strategy_options,
        config.frozen_bn,
        config.precision,
        config.batch_size,
        config.image_size,
        eval_batch_size,
        ds.num_classes,
        ds.multilabel,
        steps_per_epoch,
        jax.device_count(),
    )
    if trainers is not None and key in trainers:
        return trainers[key].with_hyper(seed=config.seed, learning_rate=config.lr)
    trainer = Trainer(
        model,
        tx,
        multilabel=ds.multilabel,
        compute_dtype=COMPUTE_DTYPES[config.precision],
        seed=config.seed,
        learning_rate=config.lr,
    )
    if trainers is not None:
        trainers[key] = trainer
    return trainer


def _train_epochs(
    run: _Run, ckpts: RunCheckpoints, name: str, *, progress: bool, stop_at: float
) -> bool:
    """Trains epochs from where the run stands; False when a step budget ended this call."""
    p, spe = run.progress, run.steps_per_epoch
    if _budget_spent(p, spe, stop_at):
        return False
    run.best_meta = _best_metadata(run, name)
    run.last_save, run.compiled_at_save = time.perf_counter(), run.trainer.compile_seconds
    for epoch in range(len(p.epochs), run.config.epochs):
        if p.stopped:
            break
        entry = _train_epoch(run, epoch, progress=progress, stop_at=stop_at)
        if entry is None:  # a mid-epoch stop: validated and saved, not an epoch for stopping
            step = epoch * spe + p.partial.steps
            # A signal before this call's first step: the resume point is the one on disk
            # (or none: the run starts again).
            if not (stop_requested() and (ckpts.latest_step() or 0) == step):
                _save_latest(run, ckpts, step)
            return False
        decision = p.stopper.update(epoch, entry["val"][run.primary])
        entry.update(improved=bool(decision.improved), stop=bool(decision.stop))
        p.epochs.append(entry)
        if progress and jax.process_index() == 0:
            print(
                f"epoch {epoch + 1}: loss {entry['train_loss']:.4f}  val "
                f"{metrics.metric_name(run.primary, run.ds.multilabel, run.ds.num_classes)} "
                f"{entry['val'][run.primary]:.4f}{'  *' if decision.improved else ''}",
                flush=True,
            )
        if decision.improved:
            # A device copy for the test pass and for best/ (the next step donates ``state``).
            run.best_variables = _copy(run.state.variables)
            run.best_meta["epoch"], run.best_unsaved = epoch, True
        if decision.stop or epoch + 1 >= run.config.epochs:
            break  # finishing: no resume point needed (a kill now redoes only this epoch)
        budget_spent = (epoch + 1) * spe >= stop_at
        # Process 0's clock decides for every process: the save is collective.
        due = process_0_says(_save_due(run))
        # A stop already requested (one a gc callback swallowed during validation) saves
        # too: this epoch is the resume point, not one trained again. One process only: a
        # multi-host job's save is collective, and the others did not see this signal.
        alone = jax.process_count() == 1
        if budget_spent or due or (alone and stop_requested()):
            _save_latest(run, ckpts, (epoch + 1) * spe)
        if budget_spent or (alone and stop_requested()):  # or one deferred while it saved
            return False
    return True


def _best_metadata(run: _Run, name: str) -> dict[str, Any]:
    """The metadata of the run's ``best/`` checkpoint (its ``epoch`` added when saved)."""
    meta = {
        "arch": run.config.arch,
        "num_classes": run.ds.num_classes,
        "multilabel": run.ds.multilabel,
        "class_names": list(run.ds.class_names),
        # The demo's images are made at the crop size, never resized: predict does as they were.
        "resize_size": run.config.image_size
        if run.ds.metadata.get("synthetic")
        else run.spec.resize_for(run.config.image_size),
        "crop_size": run.config.image_size,
        "precision": run.config.precision,  # predict computes as the run evaluated
        "source": f"run {name}",
        # Which decoding rules turned files into pixels: predict under a later version
        # says so (a 16-bit, float or DICOM file may reach the model unlike in training).
        "decoding_version": DECODING_VERSION,
        # What its run computed with: predict under another forward pass says so.
        "numerics": run.config.numerics,
    }
    # How 16-bit files were decoded (folder/csv --bits-stored): predict decodes alike.
    if run.ds.metadata.get("bits_stored") is not None:
        meta["bits_stored"] = int(run.ds.metadata["bits_stored"])
    if run.ds.metadata.get("dicom_window") is not None:  # --dicom-window: likewise
        meta["dicom_window"] = [float(v) for v in run.ds.metadata["dicom_window"]]
    if run.ds.name in model_checkpoint.DECODERS:  # files read by the task's own reader (T1w's .mat)
        meta["decoder"] = run.ds.name
    meta.update(_data_source(run.ds))  # which folder trained it: provenance, read by no one
    return meta


def _save_due(run: _Run) -> bool:
    """Whether :func:`checkpoint_seconds` of training passed since the last resume
    checkpoint: the wall clock less the compiling in it (a cold CPU run's first epochs
    compiled for over a minute, and saved a checkpoint the finish then deleted)."""
    interval = checkpoint_seconds()
    compiled = run.trainer.compile_seconds - run.compiled_at_save
    return interval <= 0 or time.perf_counter() - run.last_save - compiled >= interval


def checkpoint_seconds() -> float:
    """Seconds of training between resume checkpoints: ``MEDFT_JAX_CHECKPOINT_SECONDS``,
    default 60 (0: after every epoch).

    An epoch ends with a resume checkpoint only when this long has passed
    since the last one: a save of ResNet-50's train state (its Adam moments
    too) takes about a second, more than a whole epoch of a small dataset on
    a GPU. A killed run loses at most this long and the epoch in flight; a
    step budget's end (:func:`run_one`'s ``stop_after_steps``) always saves.
    """
    return env_seconds(CHECKPOINT_SECONDS)


CHECKPOINT_SECONDS = "MEDFT_JAX_CHECKPOINT_SECONDS"


def _save_latest(run: _Run, ckpts: RunCheckpoints, step: int) -> None:
    """The resume checkpoint, its progress carrying the wall clock up to now.

    A best epoch not yet on disk is written first: a resume from this
    checkpoint finds in ``best/`` the epoch its progress calls best, unless a
    kill came between the two (``best/`` is then newer, and the finish refuses
    it unless the epochs trained again write it again).
    """
    with _saving():
        _save_best(run, ckpts)
        t = time.perf_counter()
        run.progress.seconds["wall"] = run.wall()
        run.progress.compilations = run.compilations()
        ckpts.save_latest(step, run.state, run.progress.to_dict())
    run.last_save, run.compiled_at_save = time.perf_counter(), run.trainer.compile_seconds
    run.progress.add("checkpoints", run.last_save - t)


def _saving() -> contextlib.AbstractContextManager[None]:
    """A Ctrl-C or SIGTERM while a checkpoint is written is deferred until it is written
    (one process; a multi-host job's save is collective): raised inside, it deleted
    ``best/``'s unfinished folder under orbax's writer threads, whose tracebacks (30 lines)
    came before the run's one line; the caller stops once it is written."""
    return deferred_stops() if jax.process_count() == 1 else contextlib.nullcontext()


def _save_best(run: _Run, ckpts: RunCheckpoints) -> None:
    """Writes ``best/`` from the best epoch's device copy, if it is newer than the disk's."""
    if not run.best_unsaved:
        return
    t = time.perf_counter()
    ckpts.save_best(run.best_variables, run.best_meta)
    run.best_unsaved = False
    run.progress.add("checkpoints", time.perf_counter() - t)


def _train_epoch(run: _Run, epoch: int, *, progress: bool, stop_at: float) -> dict[str, Any] | None:
    """One epoch (or what is left of it) and its validation: its record entry.

    Returns None when the step budget ends it early; ``run.progress.partial``
    then holds where it stands.
    """
    p, config = run.progress, run.config
    trainable = run.schedule.trainable_mask(run.params, epoch)
    bn_train = run.schedule.bn_train(epoch)
    compiled_before = run.trainer.compile_seconds
    source, from_features = _epoch_source(run, epoch)
    p.compile_seconds += run.trainer.compile_seconds - compiled_before  # the feature extractor
    it = source.train_iter(config.batch_size, seed=config.seed, epoch=epoch, **run.shard)
    # A resumed partial epoch continues its batches, losses and clocks.
    part = p.partial or PartialEpoch(epoch, 0, {}, [], 0.0, 0.0, {})
    if p.partial is not None:
        it.set_state(part.iterator)
        p.partial = None
    t_epoch = time.perf_counter()
    compiled_before = run.trainer.compile_seconds
    if run.schedule.prepass is not None and part.steps == 0:
        part.train_seconds += _rgn_prepass(run, epoch, trainable, bn_train)
    part.steps, part.train_seconds = _run_batches(
        run,
        it,
        part,
        epoch,
        (trainable, bn_train, from_features),
        progress=progress,
        stop_at=stop_at,
    )
    if stop_requested():  # a Ctrl-C or SIGTERM between steps: saved as it stands, unvalidated
        seconds = part.seconds + time.perf_counter() - t_epoch
        seconds -= run.trainer.compile_seconds - compiled_before
        p.compile_seconds += run.trainer.compile_seconds - compiled_before
        p.partial = dataclasses.replace(part, iterator=it.get_state(), seconds=seconds, val={})
        return None
    if not run.trainer.state_finite(run.state):  # the loss may not say it: state_finite
        raise NonFiniteLossError(
            f"the model's weights or BatchNorm statistics became NaN or infinite in epoch "
            f"{epoch + 1}, its training loss finite; {diverged_hint(run.config.precision)}",
            step=int(run.state.step),
        )
    t_val, c_val = time.perf_counter(), run.trainer.compile_seconds
    val = _metrics(
        run.ds,
        "val",
        run.trainer.predict(
            run.state,
            source.eval_batches("val", run.eval_batch_size, **run.shard),
            from_features=from_features,
        ),
        f"epoch {epoch + 1}",
        run.config.precision,
    )
    p.add("validation", time.perf_counter() - t_val - (run.trainer.compile_seconds - c_val))
    epoch_compile = run.trainer.compile_seconds - compiled_before
    p.compile_seconds += epoch_compile
    seconds = part.seconds + time.perf_counter() - t_epoch - epoch_compile
    if part.steps < len(it):
        p.partial = dataclasses.replace(part, iterator=it.get_state(), seconds=seconds, val=val)
        return None
    return {
        "epoch": epoch,
        "train_loss": float(np.mean(part.losses)) if part.losses else float("nan"),
        "val": val,
        "seconds": seconds,
        "train_seconds": part.train_seconds,
        "images_per_s": run.steps_per_epoch * config.batch_size / part.train_seconds
        if part.train_seconds
        else None,
        "trainable_blocks": list(run.schedule.trainable_blocks(epoch)),
        **({"from_features": True} if from_features else {}),
    }


def _epoch_source(run: _Run, epoch: int) -> tuple[Any, bool]:
    """The epoch's data: cached backbone features for a head-only epoch, else the images.

    The features are read or computed at the first head-only epoch (the
    backbone is frozen from the start of such a stage, so any epoch's
    weights give the same features); their seconds go to the record's
    ``features``, not to the epoch.
    """
    batchnorm = bool(jax.tree.leaves(run.state.batch_stats))  # VGG-19 has none
    if not run.feature_roots or not run.schedule.head_only(epoch, batchnorm=batchnorm):
        return run.ds, False
    if run.feature_info is None:
        compiled = run.trainer.compile_seconds
        state = run.state
        run.features, run.feature_info = features_lib.cached_features(
            run.ds,
            roots=run.feature_roots,
            arch=run.config.arch,
            precision=run.config.precision,
            variables=state.variables,
            partition=run.spec.partition,
            extract=lambda batches: run.trainer.features(state, batches),
            batch_size=run.eval_batch_size,
            compile_seconds=lambda: run.trainer.compile_seconds,
        )
        if run.feature_info.get("used"):
            spent = run.trainer.compile_seconds - compiled
            run.feature_info["seconds"] -= spent  # compilation is counted as such
            run.progress.add("features", run.feature_info["seconds"])
        if run.progress.features is None:  # the run's first head-only epoch, not a resumed one
            run.progress.features = run.feature_info
    return (run.features, True) if run.features is not None else (run.ds, False)


def _rgn_prepass(run: _Run, epoch: int, trainable: Any, bn_train: Any) -> float:
    """Auto-RGN's prepass on the epoch's first batches; its seconds, compilation excluded."""
    t, c = time.perf_counter(), run.trainer.compile_seconds
    batches = run.ds.train_iter(
        run.config.batch_size, seed=run.config.seed, epoch=epoch, **run.shard
    )
    run.state = run.trainer.estimate_rgn(
        run.state,
        itertools.islice(batches, run.schedule.prepass.batches),
        trainable=trainable,
        bn_train=bn_train,
        prepass=run.schedule.prepass,
    )
    return time.perf_counter() - t - (run.trainer.compile_seconds - c)


HEAD_STEPS_PER_CALL = 32
"""Cached-feature steps run per dispatch (:meth:`Trainer.head_steps`): a head step
computes so little that one dispatch per step would cost most of its time."""


def _run_batches(
    run: _Run,
    it: Any,
    part: PartialEpoch,
    epoch: int,
    stage: tuple[Any, Any, bool],
    *,
    progress: bool,
    stop_at: float,
) -> tuple[int, float]:
    """The epoch's train steps from ``part.steps`` on; ``(steps done, train seconds)``.

    ``stage``: the trainable mask, the BatchNorm mode, and whether the
    batches are cached features (then up to :data:`HEAD_STEPS_PER_CALL`
    steps run per call). Losses are appended to ``part.losses``; each
    call's losses are read one call late, which keeps the device busy.
    """
    trainable, bn_train, from_features = stage
    trainer, losses = run.trainer, part.losses
    position, train_seconds = part.steps, part.train_seconds
    bar = tqdm(
        total=len(it),
        initial=position,
        desc=f"epoch {epoch + 1}/{run.config.epochs}",
        disable=bars_hidden(progress) or jax.process_index() != 0,
        leave=False,
    )
    # Update numbers from the host: reading the state's step would wait for every step.
    done_before = int(run.state.step) - position

    def take(pending: tuple[jax.Array, int]) -> None:
        """Appends a call's losses, checking each (its step numbered from 1 for the run)."""
        loss, first = pending
        for i, value in enumerate(np.atleast_1d(np.asarray(loss))):
            losses.append(float(value))
            check_finite(
                losses[-1],
                step=done_before + first + i + 1,
                epoch=epoch,
                precision=run.config.precision,
            )
        bar.set_postfix(loss=f"{losses[-1]:.4f}")

    per_call = HEAD_STEPS_PER_CALL if from_features else 1
    kw = {"trainable": trainable, "bn_train": bn_train}
    pending = None
    # One process stops between steps on a Ctrl-C or SIGTERM, and its caller saves where
    # the epoch stands (an epoch longer than a cluster's time limit never finished: each
    # resume began it again); a multi-host job's save is collective, so it stops at once.
    alone = jax.process_count() == 1
    with deferred_stops() if alone else contextlib.nullcontext():
        while epoch * run.steps_per_epoch + position < stop_at:  # the step budget's end
            if stop_requested():  # a deferred signal, or one a gc callback swallowed
                if not alone:
                    raise_if_stopped()
                break
            t_data = time.perf_counter()
            left = stop_at - epoch * run.steps_per_epoch - position  # the step budget's
            batches = list(itertools.islice(it, int(max(1, min(per_call, left)))))
            if not batches:
                break
            if from_features:
                x = trainer.shard_steps(np.stack([b["image"] for b in batches]))
                y = trainer.shard_steps(np.stack([b["label"] for b in batches]))
            else:
                x, y = (
                    trainer.shard_batch(batches[0]["image"]),
                    trainer.shard_batch(batches[0]["label"]),
                )
            run.progress.add("data", time.perf_counter() - t_data)
            if from_features:
                trainer.compile_head_steps(run.state, x, y, **kw)
            else:
                trainer.compile_stage(run.state, x, y, **kw)
            t = time.perf_counter()
            if from_features:
                run.state, loss = trainer.head_steps(run.state, x, y, **kw)
            else:
                run.state, loss = trainer.train_step(run.state, x, y, **kw)
            if pending is not None:
                take(pending)
            pending = loss, position
            train_seconds += time.perf_counter() - t
            bar.update(len(batches))
            position += len(batches)
    if pending is not None:  # the last call's device work is the epoch's too: on the clock
        t = time.perf_counter()
        take(pending)
        train_seconds += time.perf_counter() - t
    bar.close()
    return position, train_seconds


def _finish(run: _Run, ckpts: RunCheckpoints, name: str, record_file: Path) -> dict[str, Any]:
    """Tests the best epoch and writes the record; removes the resume checkpoints."""
    p, config, ds = run.progress, run.config, run.ds
    best = next((e for e in p.epochs if e["epoch"] == p.stopper.best_epoch), None)
    if best is None:
        raise data.DataError(
            f"run {name}: no epoch had a finite validation {run.primary}; the val split "
            "cannot score it (does it hold both outcomes of every class?)"
        )
    with _saving():
        _save_best(run, ckpts)  # on disk before the record says the run is done
    raise_if_stopped()
    # The best epoch was trained in this call (a device copy), or before a restart.
    variables = run.best_variables
    if variables is None:
        t = time.perf_counter()
        variables, on_disk = ckpts.load_best_of_epoch(run.trainer.replicated)
        if on_disk != best["epoch"]:  # a kill between best/ and the resume checkpoint's commit
            raise ResumeError(
                f"{ckpts.best_dir}: holds epoch {on_disk}, not epoch {best['epoch']}, the best "
                "of the checkpoint the run resumed from (it was killed between the two saves, "
                f"and the epochs trained again did not write it again); {START_OVER}"
            )
        p.add("checkpoints", time.perf_counter() - t)
    best_state = run.state.replace(params=variables["params"], batch_stats=variables["batch_stats"])
    t, compiled = time.perf_counter(), run.trainer.compile_seconds
    test_logits = run.trainer.predict(
        best_state, ds.eval_batches("test", run.eval_batch_size, **run.shard)
    )
    test = _metrics(
        ds, "test", test_logits, f"best epoch {best['epoch'] + 1}", run.config.precision
    )
    compile_test = run.trainer.compile_seconds - compiled
    p.compile_seconds += compile_test
    p.add("test", time.perf_counter() - t - compile_test)
    record: RunRecord = {
        "config": config.to_dict(),
        "run": name,
        "weights_used": run.weights_used,
        "primary_metric": run.primary,
        "num_classes": ds.num_classes,
        "multilabel": ds.multilabel,
        "class_names": list(ds.class_names),
        **_dataset_options(config, ds),
        **_data_source(ds),
        "split_fingerprint": ds.split_fingerprint(),
        "order_fingerprint": ds.order_fingerprint(),
        **_source_fingerprint(ds),
        **_medmnist_file(ds),
        **_decoding(ds),
        **_skipped_images(ds),
        **_duplicates(ds),
        **patients_across_splits(ds),
        "split_sizes": {split: ds.num_examples(split) for split in ("train", "val", "test")},
        **_scored_units(ds),
        "steps_per_epoch": run.steps_per_epoch,
        "epochs": p.epochs,
        "best_epoch": best["epoch"],
        "val": best["val"],
        "test": test,
        "ranked_by": metrics.RANKED_BY if ds.eval_grouping == "image" else STUDY_RANKED_BY,
        "final_stage_epoch": run.schedule.final_stage_epoch,
        "compile_seconds": p.compile_seconds,
        "num_compilations": run.compilations(),
        "train_seconds": float(sum(e["seconds"] for e in p.epochs)),
        **({"features": run.progress.features} if run.progress.features else {}),
        "seconds": _seconds_split(run),
        "environment": _environment(p),
    }
    record["wall_seconds"] = record["seconds"]["wall"]
    record["finished_at"] = datetime.datetime.now(datetime.UTC).isoformat()
    if jax.process_index() == 0:
        record = results.write_record(record_file, record, sealed=True)
        _drop_previous(record_file.parent)
        # An earlier attempt's failure note: the record stands for the run now (a report
        # read the record, but the note stayed beside it, saying the run had failed).
        with contextlib.suppress(OSError):  # the run has succeeded whatever this says
            record_file.with_name(results.FAILURE_NAME).unlink(missing_ok=True)
    _tidy_up(ckpts)  # never raises: with the record written, the run has succeeded
    return record


def _say_tried_before(note: Path, force: bool) -> None:
    """One line when a run that failed before is tried again (``run`` retries a run asked
    for by name, a sweep with ``--retry-failed``): it said nothing of the earlier attempt."""
    if force or jax.process_index() != 0 or not note.is_file():
        return
    try:
        earlier = results.read_record(note)
        error = str(earlier.get("error") or "")[:200]
        why = f" ({earlier.get('kind', 'failed')}{': ' + error if error else ''})"
    except (results.RecordError, OSError):
        why = ""
    print(
        f"note: {note.parent.name}: an earlier attempt failed{why}; trying it again",
        file=sys.stderr,
        flush=True,
    )


def _environment(p: Progress) -> dict[str, Any]:
    """The record's ``environment``: this call's, and, when the run was resumed in another
    environment than it started in, ``attempts``, every environment it trained in (a run
    that kept one has no ``attempts``: its record is an uninterrupted run's)."""
    info = environment_info()
    if len(p.attempts) > 1:
        info["attempts"] = p.attempts
    return info


def _seconds_split(run: _Run) -> dict[str, float]:
    """The record's ``seconds``: the wall time by where it went (see :data:`TIMED`)."""
    p = run.progress
    split = {
        "wall": run.wall(),
        "train": float(sum(e.get("train_seconds", 0.0) for e in p.epochs)),
        "compile": p.compile_seconds,
        **{k: p.seconds.get(k, 0.0) for k in TIMED},
    }
    split["other"] = split["wall"] - sum(v for k, v in split.items() if k != "wall")
    return split


def _dataset_options(config: RunConfig, ds: data.Dataset) -> dict[str, Any]:
    """``{"dataset_options": ...}`` for a task with label or split options, else nothing.

    The record then says which split and labels its numbers come from (the
    config does not: the data fingerprint tells variants apart, not by name).
    """
    options = task_options(config.dataset, ds.metadata)
    return {"dataset_options": options} if options else {}


_TEXT_OPTIONS = ("path_column", "label_column", "group_column", "split_column")
"""Layout options whose value is a column name: kept as written (``"1"`` stays a string)."""


def data_source_of(ds: data.Dataset) -> dict[str, Any] | None:
    """Where a user's own dataset (``folder``, ``csv``) was read from, and how; None for
    other datasets, or a cache that does not say (built before it recorded its root).

    ``{"root": absolute folder, "csv_file": absolute path (csv), "options": {the layout
    options given: columns, fractions, patient folders; unset ones at their defaults},
    "skip_bad_images": bool}``. Every user's dataset is named ``folder`` or ``csv``, and a
    run's identity is its data's content fingerprint, so without this a record could not
    say which of two hospitals' folders it was trained on. Provenance only: it is outside
    the config (and so outside the run's name and hash), which stays content-addressed.
    ``bits_stored``/``dicom_window`` are left to the record's ``decoding``.
    """
    meta = ds.metadata
    if ds.name not in LOCAL_KINDS or not meta.get("root"):
        return None
    root = Path(str(meta["root"])).expanduser().resolve()
    given = meta.get("options") if isinstance(meta.get("options"), dict) else {}
    options = {
        str(k): _option_value(str(k), v)
        for k, v in sorted(given.items())
        if k not in ("csv_file", "bits_stored", "dicom_window") and v is not None
    }
    source: dict[str, Any] = {"root": str(root)}
    if given.get("csv_file") is not None:  # relative: to the root, as the loader reads it
        source["csv_file"] = str((root / Path(str(given["csv_file"])).expanduser()).resolve())
    source["options"] = options
    built = meta.get("source")
    if isinstance(built, dict) and "skip_bad_images" in built:
        source["skip_bad_images"] = bool(built["skip_bad_images"])
    return source


def _option_value(name: str, value: Any) -> Any:
    """A layout option as given, from the cache's metadata (which writes each as ``str``):
    fractions as numbers, lists as lists, flags as booleans; column names as written."""
    if not isinstance(value, str) or name in _TEXT_OPTIONS:
        return value
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return value
    if isinstance(parsed, (list, tuple)) and all(isinstance(v, str) for v in parsed):
        return list(parsed)
    plain = isinstance(parsed, (bool, int, float)) and not isinstance(parsed, complex)
    return parsed if plain else value


def _data_source(ds: data.Dataset) -> dict[str, Any]:
    """``{"data_source": ...}`` (:func:`data_source_of`) for a user's own dataset, else nothing."""
    source = data_source_of(ds)
    return {"data_source": source} if source else {}


def _skipped_images(ds: data.Dataset) -> dict[str, Any]:
    """``{"skipped_bad_images": {split: n}}`` when ``--skip-bad-images`` left files out.

    The numbers are of fewer images than the user gave; the record says so.
    """
    counts = skipped_counts(ds.metadata)
    return {"skipped_bad_images": counts} if counts else {}


def decoding_of(ds: data.Dataset) -> dict[str, Any]:
    """The declared decoding rules (``--bits-stored``, ``--dicom-window``) the user's files
    were decoded by (``{}``: the default rule): runs decoded otherwise saw other pixels."""
    rules = {k: ds.metadata.get(k) for k in ("bits_stored", "dicom_window")}
    return {k: v for k, v in rules.items() if v is not None}


def _decoding(ds: data.Dataset) -> dict[str, Any]:
    """``{"decoding": {...}}`` for a record, when a declared rule decoded the files."""
    rules = decoding_of(ds)
    return {"decoding": rules} if rules else {}


def _source_fingerprint(ds: data.Dataset) -> dict[str, Any]:
    """``{"source_fingerprint": ...}``: a hash of the data before the arch's resize (the
    decoded images of a folder or CSV dataset, a MedMNIST file), where the dataset has one,
    so the report can check that archs trained on the same images."""
    value = ds.metadata.get("source_fingerprint")
    if not value:
        return {}
    out = {"source_fingerprint": str(value)}
    # The decoding rules' version those pixels came from: an upgrade that decodes a file
    # otherwise (decoding 10 -> 11: 16-bit colour PPMs) changes this fingerprint too, and
    # the report then said "the data was edited between them" of data nobody touched.
    decoded = (ds.metadata.get("source") or {}).get("decoding")
    if isinstance(decoded, int) and not isinstance(decoded, bool):
        out["decoding_version"] = decoded
    return out


def _scored_units(ds: data.Dataset) -> dict[str, Any]:
    """``{"scored_units": {"unit": "study", "val": n, "test": n}}`` where a prediction is a
    study's mean over its images (MURA): the metrics are over studies, not the images
    ``split_sizes`` counts (41 test images, 21 studies scored)."""
    if ds.eval_grouping == "image":
        return {}
    counts = {s: len(np.unique(np.asarray(ds.split(s).groups))) for s in ("val", "test")}
    return {"scored_units": {"unit": ds.eval_grouping, **counts}}


def _medmnist_file(ds: data.Dataset) -> dict[str, Any]:
    """``{"medmnist_file": {"md5", "official"}}`` for a MedMNIST dataset: whether its ``.npz``
    is the file MedMNIST publishes. A note on stderr said so once per process; a table of
    an edited or swapped copy read as one of MedMNIST's data."""
    source = ds.metadata.get("source")
    if dataset_base(ds.name) != "medmnist" or not isinstance(source, dict):
        return {}
    if "md5" not in source or "official" not in source:
        return {}
    return {"medmnist_file": {"md5": str(source["md5"]), "official": bool(source["official"])}}


def _duplicates(ds: data.Dataset) -> dict[str, Any]:
    """``{"eval_copies_of_train": {split: n}, "eval_copies_rule": "same_label"}`` when val/test
    images are pixel-identical to training images of their label: their scores are
    inflated by that many, and the record says so. Without ``eval_copies_rule`` (a cache
    built before the rule) the counts include copies under another label."""
    counts = duplicate_counts(ds.metadata)
    if not counts:
        return {}
    rule = copies_rule(ds.metadata)  # absent: an older cache, copies of any label counted
    return {"eval_copies_of_train": counts, **({"eval_copies_rule": rule} if rule else {})}


PATIENTS_ACROSS = "dicom_patients_across_splits"
"""The record's count of DICOM PatientIDs with files in more than one split."""


def patients_across_splits(ds: data.Dataset) -> dict[str, Any]:
    """``{"dicom_patients_across_splits": [n, example]}`` when the DICOM headers of a
    user's folder or CSV put a PatientID's files in more than one split: the load said so
    once, the record and so the report did not, whose numbers are then inflated (a
    patient's images in training and evaluation) without a mark."""
    found = [
        value
        for key in ("dicom_patients_across_splits", "dicom_patients_across_groups")
        if isinstance(value := ds.metadata.get(key), list | tuple)
        and len(value) == 2
        and int(value[0]) > 0
    ]  # the loose images' and the one-image groups' (disjoint): counted together
    if not found:
        return {}
    return {PATIENTS_ACROSS: [sum(int(n) for n, _ in found), str(found[0][1])]}


def found_done(run_dir: Path) -> None:
    """What finding a run's record for the data on disk does: clears what a kill left
    beside it (:func:`clear_leftovers`) and stamps it as current
    (:func:`medft_jax.results.confirm_current`: data edited and put back makes it the
    newest again for ``report --latest``)."""
    clear_leftovers(run_dir)
    if jax.process_index() == 0:
        results.confirm_current(run_dir)


def clear_leftovers(run_dir: Path) -> None:
    """Deletes what a kill left beside a finished run's record: its resume checkpoints,
    what ``--force`` set aside (``previous/``), and a record write's temporary file.

    A run writes its record, then deletes the others (:func:`_tidy_up`,
    :func:`_drop_previous`); killed in between, they would stay for good (a
    ``previous/`` holds a whole model), every later call finding the record
    and returning. Under the run's lock (another process in the run: left
    to it; none other writes the record without it); a failure is one
    warning line, as in :func:`_tidy_up`.
    """
    run_dir = Path(run_dir)
    left = [run_dir / "checkpoints", *(run_dir / n for n in results.PREVIOUS_NAMES)]
    left += run_dir.glob(f".{glob.escape(results.RECORD_NAME)}.*.tmp")  # written before
    left += run_dir.glob(f".{glob.escape(results.RECORD_NAME)}.tmp-*")  # atomic.write_bytes'
    if not any(p.exists() for p in left):
        return
    try:
        with locks.run_lock(run_dir):
            for path in left if jax.process_index() == 0 else ():
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
    except locks.RunLocked:
        return
    except OSError as e:
        print(
            f"warning: {run_dir}: could not delete a finished run's leftovers ({one_line(e)}); "
            "delete its checkpoints/ and previous/ to free the space",
            file=sys.stderr,
        )


def _tidy_up(ckpts: RunCheckpoints) -> None:
    """Deletes a finished run's resume checkpoints; a failure (disk full) is one warning line.

    The record is written, so the run succeeded and must not end in an
    error exit: a leftover checkpoint only takes space.
    """
    try:
        try:
            ckpts.remove_latest()
        finally:
            ckpts.close()
        if jax.process_index() == 0:  # empty now: a finished run keeps no checkpoints/ folder
            with contextlib.suppress(OSError):
                ckpts.latest_dir.rmdir()
    except Exception as e:  # the record stands whatever went wrong here
        print(
            f"warning: {ckpts.latest_dir}: could not delete the resume checkpoints "
            f"({one_line(e)}); the record is written, delete them to free the space",
            file=sys.stderr,
        )


STUDY_RANKED_BY = "float64 probabilities, each study's mean"
"""A study-scored task's ``ranked_by`` (MURA): a study's score is its images' mean."""


def _metrics(
    ds: data.Dataset, split: str, logits: np.ndarray, when: str, precision: str
) -> dict[str, float]:
    """The split's metrics from the model's logits (:meth:`Trainer.predict`).

    Probabilities and log-odds are made in float64 on the host
    (:func:`medft_jax.metrics.scores_from_logits`), and an image-level
    task's AUROC and AP rank by the latter; a study's score (MURA) is the
    mean of its images' float64 probabilities.
    """
    if not np.all(np.isfinite(logits)):
        bad = int((~np.isfinite(logits)).any(axis=tuple(range(1, logits.ndim))).sum())
        raise NonFiniteOutputError(
            f"the model's {split} outputs became NaN or infinite ({bad} of {len(logits)} "
            f"examples, {when}); {diverged_hint(precision)}"
        )
    probs, log_odds = metrics.scores_from_logits(logits, ds.multilabel)
    _, scores, labels = ds.grouped_scores(split, probs)
    rank = log_odds if ds.eval_grouping == "image" else None
    return metrics.compute_metrics(scores, labels, multilabel=ds.multilabel, rank_scores=rank)


@jax.jit
def _copy(tree: Any) -> Any:
    """Fresh device buffers with the same values and shardings (works across processes)."""
    return jax.tree.map(jnp.copy, tree)
