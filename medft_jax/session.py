"""The one way runs are run: ``experiments.run``, ``experiments.sweep`` and ``experiments.select``.

A :class:`Session` is a process's setup, done once
(:func:`medft_jax.runtime.set_up_process`: multi-host init under
``MEDFT_DISTRIBUTED=1``, the CPU host settings, the persistent compilation
cache), and what its runs share: each dataset loaded once, each strategy's
compiled steps built once (:class:`medft_jax.fit.TrainerKey`). :meth:`Session.run` takes one
:class:`RunConfig` through every step a run has, wherever it was started:
load and identify (the data and weights fingerprints), skip what is done,
train (:func:`medft_jax.fit.run_one`), and turn every way a run can end
into an :class:`Outcome`. A diverged run leaves a ``failed.json`` note, a
run another process holds is skipped, a run whose resume checkpoint is
damaged is left as it is (``cannot resume``: no note, since only the user
can decide to start it over), and a full disk or an exhausted device memory
ends the session (every later run would fail the same way).
The command lines only print outcomes.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax

from medft_jax import fit, results
from medft_jax.checkpoints.run import ResumeError
from medft_jax.config import RunConfig
from medft_jax.data import DataError
from medft_jax.data.cache import skipped_note
from medft_jax.data.errors import BatchTooLarge
from medft_jax.data.options import task_options
from medft_jax.errors import UserError, note
from medft_jax.locks import RunLocked
from medft_jax.names import same_data
from medft_jax.outcomes import (
    BUSY,
    DAMAGED,
    DIVERGED,
    DONE,
    FAILED_BEFORE,
    REFUSED,
    SKIPPED,
    STOPPED,
    UNAVAILABLE,
    UNRESUMABLE,
    Outcome,
    fatal_kind,
)
from medft_jax.runtime import (
    check_shared_folder,
    every_process,
    process_0_says,
    set_up_process,
)
from medft_jax.train import NonFiniteLossError

STATES = ("done", "failed", "todo")
"""What :meth:`Session.status` says of a run."""


class RecentTrainers(OrderedDict):
    """A dict of at most ``capacity`` entries, the least recently read or written dropped
    when another is added (:func:`medft_jax.fit.run_one`'s ``trainers``)."""

    def __init__(self, capacity: int):
        super().__init__()
        if capacity < 1:
            raise ValueError(f"keep at least one trainer, got {capacity}")
        self.capacity = capacity

    def __getitem__(self, key: Any) -> Any:
        value = super().__getitem__(key)
        self.move_to_end(key)
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.capacity:
            self.popitem(last=False)


class Session:
    """Runs configs one at a time, sharing datasets and compiled steps between them.

    Args:
      out: the results folder.
      data_dir: where prepared datasets live (None: the default).
      dataset_options: per dataset, extra arguments of :func:`medft_jax.data.load`
        (``--split-by``, ``--csv-file``, ...).
      force: train again runs whose record exists.
      retry_failed: train again runs that left a failure note.
      progress: per-epoch progress bars.
      feature_cache: head-only epochs under ``frozen_bn='freeze'`` (a model without
        BatchNorm: either mode) train from cached backbone features
        (:func:`medft_jax.fit.run_one`).
      keep_trainers: how many compiled trainers (one per arch, strategy, data shape) to
        keep for later runs, the least recently used dropped: a sweep in grid order reuses
        only the last one's (the default, 1), a selection its arms' strategies'.

    Constructing one sets up the process, once, for good (:func:`runtime.set_up_process`):
    JAX's persistent compilation cache under ``$MEDFT_JAX_CACHE/xla`` (every later
    compilation of a host program goes there too; ``MEDFT_JAX_XLA_CACHE=0`` leaves JAX's
    own setting), and on a CPU synchronous dispatch and glibc's ``mallopt`` keeping freed
    memory (``MEDFT_JAX_TUNE_CPU_HOST=0`` leaves both), and multi-host start-up under
    ``MEDFT_DISTRIBUTED=1``. Notes are printed to stderr (process 0 only), not logged.
    """

    def __init__(
        self,
        out: str | os.PathLike[str],
        *,
        data_dir: str | None = None,
        dataset_options: Mapping[str, Mapping[str, Any]] | None = None,
        force: bool = False,
        retry_failed: bool = False,
        progress: bool = False,
        feature_cache: bool = True,
        keep_trainers: int = 1,
    ):
        set_up_process()
        check_shared_folder(out, "--out")  # a node-local --out hung the first save
        self.out = str(out)
        self.data_dir = data_dir
        # Keyed as RunConfig names datasets: "medmnist/x@28" is "medmnist/x", and options
        # given under the other spelling (--no-progress) were silently dropped.
        self.dataset_options = {same_data(k): v for k, v in (dataset_options or {}).items()}
        self.force, self.retry_failed, self.progress = force, retry_failed, progress
        self.feature_cache = feature_cache
        # Which runs each process trains: one skipping a done run while another retrains
        # it hung both. Data options and folders may differ per host (a node-local copy
        # at another path); what they load is compared by its fingerprint, run by run.
        # The feature cache is off under several processes.
        _agree(
            results.config_hash({"force": force, "retry_failed": retry_failed}),
            "session flags",
            f"force={force}, retry_failed={retry_failed}",
        )
        # Bounded: every trainer kept its compiled programs to the process's end (the paper
        # grid's 192 about 15 GB of host memory, all but one never used again).
        self.trainers: RecentTrainers = RecentTrainers(keep_trainers)
        self.said: set[str] = set()
        """Notes printed so far (:func:`medft_jax.fit.run_one`'s ``said``): once each."""
        self._datasets: dict[tuple, Any] = {}
        self._unavailable: dict[tuple, DataError] = {}
        """Load failures by :meth:`_load_key`: that data is not tried again in this session.
        An error of one run's settings (a batch larger than the data) is that run's alone."""

    @property
    def main_process(self) -> bool:
        return jax.process_index() == 0

    @staticmethod
    def _load_key(config: RunConfig) -> tuple:
        """What a loaded dataset depends on: (dataset, arch, image size, data seed)."""
        return (config.dataset, config.arch, config.image_size, config.data_seed)

    def dataset(self, config: RunConfig) -> Any:
        """``config``'s dataset, loaded once per :meth:`_load_key`."""
        key = self._load_key(config)
        if key in self._unavailable:
            raise self._unavailable[key]
        if key not in self._datasets:
            options = dict(self.dataset_options.get(config.dataset, {}))
            try:
                self._datasets[key] = fit.load_dataset(
                    config, self.data_dir, batch_size=config.batch_size, **options
                )
            except BatchTooLarge:  # this run's setting: another run may take the data
                raise
            except DataError as e:
                self._unavailable[key] = e
                raise
            skipped = skipped_note(self._datasets[key].metadata)  # named once, as prepare does
            if skipped is not None and skipped not in self.said:
                self.said.add(skipped)
                note(skipped)
        return self._datasets[key]

    def identify(self, config: RunConfig) -> RunConfig:
        """``config`` with its data and weights fingerprints (loads the dataset).

        Every process of a multi-host job loads it or none goes on: a
        :class:`DataError` on one (a missing or stale mount) is raised on all,
        the others' saying that another process could not load it.
        """
        try:
            identified, error = fit.identify(config, self.dataset(config)), None
        except DataError as e:
            identified, error = config, e
        if not every_process(error is None):
            if error is None:
                error = DataError(
                    f"dataset {config.dataset}: unavailable on another process of this job "
                    "(its own error line says why)"
                )
                self._unavailable[self._load_key(config)] = error
            raise error
        _same_on_every_process(identified)
        return identified

    def status(self, config: RunConfig) -> str:
        """``done`` (record), ``failed`` (a failure note, no record) or ``todo``.

        ``config`` must be identified (:meth:`identify`, or an :class:`Outcome`'s): a record
        of the same settings on other data or weights is another run, and an unidentified
        config's hash names a folder no run writes ("todo" of a finished run).
        """
        _refuse_unidentified(config, "status")
        cfg = config.to_dict()
        if results.record_path(self.out, cfg).exists():
            state = 0
        elif results.failure_path(self.out, cfg).exists():
            state = 1
        else:
            state = 2
        return STATES[process_0_says(state)]  # every process of a job decides alike

    def run(
        self,
        config: RunConfig,
        *,
        on_start: Callable[[RunConfig], None] | None = None,
        stop_after_steps: int | None = None,
    ) -> Outcome:
        """Runs ``config`` unless it is done; ``on_start(config)`` once this process holds
        the run (its lock taken, no record yet), just before training."""
        t = time.perf_counter()
        outcome = self._run(config, on_start, stop_after_steps)
        outcome.seconds = time.perf_counter() - t  # every outcome's, a skipped run's too
        return outcome

    def _run(
        self,
        config: RunConfig,
        on_start: Callable[[RunConfig], None] | None,
        stop_after_steps: int | None,
    ) -> Outcome:
        try:
            config = self.identify(config)
        except BatchTooLarge as e:  # as found while training: this run's only
            return Outcome(config, REFUSED, error=str(e), exception=e)
        except DataError as e:
            return Outcome(config, UNAVAILABLE, error=str(e), exception=e)
        state = self.status(config)
        if state == "todo" and not self.force:
            twin = self._weights_spelt_otherwise(config)
            if twin is not None:
                config, state = twin, self.status(twin)
        if state == "done" and not self.force:
            path = results.record_path(self.out, config.to_dict())
            try:
                record = results.read_record(path)
                results.check_finished(path, record)
            except results.RecordError as e:  # this run's file: the others can go on
                return Outcome(config, DAMAGED, error=str(e), exception=e)
            fit.found_done(results.run_dir(self.out, config.to_dict()))
            self._note_headers_since(config, path, record)
            return Outcome(config, SKIPPED, record=record)
        if state == "failed" and not (self.retry_failed or self.force):
            return Outcome(config, FAILED_BEFORE)
        started = None if on_start is None else (lambda: on_start(config))
        return self._train(config, stop_after_steps, started)

    def _weights_spelt_otherwise(self, config: RunConfig) -> RunConfig | None:
        """``config`` as a finished run of it spelt its ``--weights`` path (relative,
        absolute, through a link; the same checkpoint by its content hash), or None: each
        spelling was a run of its own, trained again, and the report then refused the
        folder for two records of one run. One glob of the run's siblings."""
        if config.weights in ("auto", "imagenet", "none") or config.weights_fingerprint in (
            "",
            "none",
        ):
            return None
        mine = config.to_dict()
        for other in results.same_name_runs(results.run_dir(self.out, mine)):
            recorded = results.recorded_config(other)
            if recorded is None or recorded.get("weights") == config.weights:
                continue
            if {**recorded, "weights": config.weights} != mine:
                continue
            twin = dataclasses.replace(config)  # the recorded spelling as it is (a
            object.__setattr__(twin, "weights", str(recorded["weights"]))  # new one resolves)
            if results.config_hash(twin.to_dict()) != results.config_hash(recorded):
                continue
            if self.main_process:
                note(
                    f"note: {other}: this run's record, its --weights spelt "
                    f"{recorded['weights']!r} (the same checkpoint by its content as "
                    f"{config.weights!r})"
                )
            return twin
        return None

    def _note_headers_since(self, config: RunConfig, path: Path, record: dict[str, Any]) -> None:
        """Says once per dataset where a done run's record keeps another count of DICOM
        PatientIDs across splits than its data's headers give now (a header edited, the
        pixels, labels and splits not: the same run; or a record from before the count):
        the report reads the record, and marked its numbers inflated, or not, by the
        headers of its day."""
        now = fit.patients_across_splits(self.dataset(config)).get(fit.PATIENTS_ACROSS)
        then = record.get(fit.PATIENTS_ACROSS)
        count_now, count_then = (
            int(x[0]) if isinstance(x, list | tuple) and x and str(x[0]).isdigit() else 0
            for x in (now, then)
        )
        said = ("headers since", self._load_key(config))
        if count_now == count_then or said in self.said:
            return
        self.said.add(said)
        note(
            f"note: {path}: its record counts {count_then} DICOM PatientID(s) with files in more "
            f"than one split, the files' headers now {count_now} (the pixels, labels and "
            "splits are the same: the same run): the report reads the record and marks the "
            "numbers inflated by it; rerun with --force to record the headers' count (said "
            "once for the dataset's runs)"
        )

    def _train(
        self,
        config: RunConfig,
        stop_after_steps: int | None,
        on_start: Callable[[], None] | None = None,
    ) -> Outcome:
        started = []

        def start() -> None:
            started.append(True)
            if on_start is not None:
                on_start()

        def note(e: NonFiniteLossError) -> None:  # while the run's lock is held
            if self.main_process:
                ds = self.dataset(config)
                options = task_options(config.dataset, ds.metadata)
                decoding = fit.decoding_of(ds)
                results.write_failure(
                    self.out, config.to_dict(), "nonfinite", str(e), options, decoding
                )

        try:
            record = fit.run_one(
                config,
                self.out,
                on_start=start,
                dataset=self.dataset(config),
                force=self.force,
                progress=self.progress,
                stop_after_steps=stop_after_steps,
                trainers=self.trainers,
                said=self.said,
                feature_cache=self.feature_cache,
                on_diverged=note,
                skip_failed=not self.retry_failed,
            )
        except NonFiniteLossError as e:
            return Outcome(config, DIVERGED, error=str(e), exception=e)
        except fit.FailedBefore:  # another process's run diverged after status() looked
            return Outcome(config, FAILED_BEFORE)
        except DataError as e:  # found while training (e.g. a batch larger than the data):
            return Outcome(config, REFUSED, error=str(e), exception=e)  # this run's only
        except RunLocked as e:
            return Outcome(config, BUSY, error=str(e), exception=e)
        except ResumeError as e:  # this run's files, not the session's: the others can go on
            return Outcome(config, UNRESUMABLE, error=str(e), exception=e)
        except Exception as e:
            fatal = fatal_kind(e)
            if fatal is None:
                raise
            kind, line = fatal
            return Outcome(config, kind, error=line, exception=e)
        if record and not started:  # another process finished it after status() looked
            return Outcome(config, SKIPPED, record=record)
        return Outcome(config, DONE if record else STOPPED, record=record or None)

    def check_same_runs(self, configs: Sequence[RunConfig]) -> None:
        """Refuses a multi-host job whose processes were given other run lists (``--seeds
        0 1`` on one host, ``--seeds 0`` on another; another ``--shard``): each run's
        settings are compared as it starts, but a process whose list ended first waited at
        shutdown while the others waited in their next run's first collective, forever.
        A collective: every process calls it before its first run."""
        _agree(
            results.config_hash({"runs": [c.to_dict() for c in configs]}),
            "runs",
            f"{len(configs)}, the first {_first_name(configs)}",
        )

    def path_of(self, config: RunConfig) -> Path:
        """Where ``config``'s record is (or will be); ``config`` identified, as for
        :meth:`status`."""
        _refuse_unidentified(config, "path_of")
        return results.record_path(self.out, config.to_dict())


def _refuse_unidentified(config: RunConfig, method: str) -> None:
    if not config.identified:
        raise ValueError(
            f"Session.{method}: the config is not identified (no data or weights "
            "fingerprint), so its hash names no run's folder; give Session.identify(config) "
            "or the Outcome's config"
        )


def _first_name(configs: Sequence[RunConfig]) -> str:
    """The first run's name with ``*`` for its hash, as the dry run lists it: the configs
    are not identified yet (no data or weights fingerprint), and their hash named a
    folder no run writes."""
    if not configs:
        return "none"
    return results.run_name(configs[0].to_dict()).rpartition("-")[0] + "-*"


def _agree(digest: str, what: str, here: str) -> None:
    """Refuses a multi-host job whose processes hold another ``digest`` of ``what`` than
    process 0's (``here`` says what this process holds): a launcher that gave one host
    another flag (``--force``, ``--seeds``) hung every process in a collective the others
    never joined. A collective itself: every process calls it at the same point."""
    if jax.process_count() == 1:
        return
    mine = int(digest[:7], 16)  # 28 bits: int32 on device
    first = process_0_says(mine)
    if every_process(first == mine):
        return
    if first == mine:
        raise UserError(
            f"another process of this job was given other {what} than process 0 (its own "
            "error line says which): give every process the same command"
        )
    raise UserError(
        f"process {jax.process_index()} was given other {what} (here {here}) than process 0: "
        "give every process the same command"
    )


def _same_on_every_process(config: RunConfig) -> None:
    """Refuses a multi-host job whose processes were given other settings, or read other
    data, than process 0 (one flag differing in a launcher's per-host command): their
    first collective with differing values failed deep inside JAX, a traceback on every
    process. A collective itself: every process calls it at the same point."""
    if jax.process_count() == 1:
        return
    mine = int(results.config_hash(config.to_dict())[:7], 16)  # 28 bits: int32 on device
    first = process_0_says(mine)
    if every_process(first == mine):
        return
    name = results.run_name(config.to_dict())
    if first == mine:
        raise UserError(
            f"another process of this job was given other settings or data than process 0 "
            f"(here {name}; its own error line names its run): give every process the same "
            "command and data"
        )
    raise UserError(
        f"process {jax.process_index()} was given other settings or data than process 0: "
        f"here {name}, a run process 0 does not have; give every process the same command "
        "and data"
    )
