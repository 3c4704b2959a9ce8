"""A run's checkpoints: the latest train state (to resume) and the best parameters.

``<run_dir>/checkpoints/<step>/`` (orbax ``CheckpointManager``, the latest
kept; ``step`` counts train steps) holds the whole
:class:`~medft_jax.train.TrainState` and a JSON ``progress`` item: the
per-epoch records so far, the early-stopping state, and, after a stop
inside an epoch, that partial epoch (the data iterator's state, its losses
and clocks). Restarting a run restores both and continues from the next
batch, so it ends with the record an uninterrupted run writes.

``<run_dir>/best/`` is a model checkpoint (:mod:`medft_jax.checkpoints.model`,
the weight port's format), so ``experiments.predict`` and ``weights_port
export`` work on a run's best parameters directly.

Every save is atomic: orbax writes a temporary folder and renames it, and
:meth:`RunCheckpoints.save_best` writes the new best beside the old one and
swaps them, so a failed or killed save never leaves a checkpoint that
restores as complete, nor a run without its previous best. A failed write
(a full disk, above all) is raised as an :class:`OSError` naming the
checkpoint folder, however orbax and tensorstore wrapped it: orbax's
background writes report their errors late (at the next save or at
:meth:`~RunCheckpoints.close`), and tensorstore reports a full disk as a
``ValueError`` ("RESOURCE_EXHAUSTED ... [os_error_code='28']"). Orbax's
own reports of such a failure (an absl ERROR log with a traceback per
background thread, and one "Event loop is closed" traceback per array write
still in flight when its event loop was closed) are silenced: the one line
says it all (:func:`quiet_reported_failures`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from medft_jax.checkpoints.model import (
    CheckpointError,
    _short,
    is_checkpoint,
    load_metadata,
    load_model,
    quiet_closed_event_loop,
    quiet_reported_failures,
    remove_once_written,
    save_model,
    staging_paths,
    start_host_copies,
    storage_read_error,
    tree_hash,
)
from medft_jax.errors import UserError, json_loads, naming_os_errors, one_line, os_errno_in
from medft_jax.results import content_hash

__all__ = [
    "ResumeError",
    "RunCheckpoints",
    "naming_os_errors",
    "os_errno_in",
    "quiet_reported_failures",
]


_PROGRESS_FILE = ("progress", "metadata")
"""Where orbax's JsonSave puts the ``progress`` item, relative to a step's folder."""


STATE_HASH = "state_sha256"
"""The ``progress`` key holding :func:`~medft_jax.checkpoints.model.tree_hash` of the saved
train state."""


PROGRESS_HASH = "progress_sha256"
"""The ``progress`` key holding :func:`~medft_jax.results.content_hash` of the rest of it
(the state's hash included): the epochs' metrics, the best epoch and the stopper's count
decide the run's record, so a flipped bit there would pick another best epoch without a
word. Saves from before it was written (2026-12-05) lack it and are read unchecked."""


START_OVER = "start the run over with experiments.run --force"
"""What every :class:`ResumeError` tells the user to do."""


class ResumeError(UserError):
    """A run's resume checkpoint is damaged: the run cannot go on from it.

    Its own kind, not a bare :class:`UserError`, because a sweep notes the run
    and goes on with the others (only this run needs the user), while
    ``experiments.run`` stops with this one line (exit 2).
    """


_METADATA_FILE = "_CHECKPOINT_METADATA"
"""What orbax writes into every step it commits; a step it was deleting may lack it."""


_STATE_METADATA = "_METADATA"
"""The tree structure orbax writes into a step's ``state`` item (read first on restore)."""


class RunCheckpoints:
    """The latest-state manager and the best-parameters folder of one run.

    ``exclusive``: this process holds the run's lock (:mod:`medft_jax.locks`),
    so it may tidy the folder: the leftovers of saves that were killed or
    failed are deleted, and a best checkpoint whose swap was interrupted is
    put back. Readers (``read_progress`` of another process's run) leave it.
    Also a context manager: leaving the block waits for the background
    writes and closes, so no write of this process outlives its lock.
    """

    def __init__(self, run_dir: str | Path, *, exclusive: bool = False):
        self.run_dir = Path(run_dir).expanduser().absolute()
        self.best_dir = self.run_dir / "best"
        self.latest_dir = self.run_dir / "checkpoints"
        self._exclusive = exclusive
        self._manager_: ocp.CheckpointManager | None = None  # made on first use
        quiet_reported_failures()
        if exclusive:
            self._recover_best()
            self._drop_half_deleted_steps()

    @property
    def _manager(self) -> ocp.CheckpointManager:
        if self._manager_ is None:
            self._manager_ = ocp.CheckpointManager(
                self.latest_dir,
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=1,
                    create=True,
                    cleanup_tmp_directories=self._exclusive,
                    # The step folder made in save(): made in a background thread, a failure
                    # (the run folder turned read-only) left orbax's other threads waiting
                    # 300 s for it, with four tracebacks, after the one error line.
                    async_options=ocp.options.AsyncOptions(create_directories_asynchronously=False),
                ),
                item_names=("state", "progress"),
            )
        return self._manager_

    def __enter__(self) -> RunCheckpoints:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc is None:
            self.close()
            return
        # Already failing: wait for the background writes, but the first error is the one to
        # report (a failed close is most often the same full disk again).
        with contextlib.suppress(Exception):
            self.close()

    def save_latest(self, step: int, state: Any, progress: dict[str, Any]) -> None:
        """Saves the train state after ``step`` train steps with the JSON ``progress``.

        The progress carries the state's hash (:data:`STATE_HASH`), checked when
        it is restored: orbax's files carry no checksum, and a flipped bit would
        otherwise resume training from a silently different weight or moment.
        """
        host = _host_copy(state)
        # A copy as JSON reads it back: orbax writes it in the background while the next
        # epoch trains and appends to the lists the caller's dict shares; written from
        # them, it could hold more than the state saved (and fail its own hash).
        progress = json.loads(json.dumps({**progress, STATE_HASH: tree_hash(host)}))
        progress[PROGRESS_HASH] = content_hash(progress)
        try:
            with naming_os_errors(self.latest_dir):
                if step in self._manager.all_steps():
                    # The same train state, its progress validated since: a Ctrl-C or SIGTERM
                    # in an epoch's (or a step budget's) last step saved it unvalidated, and
                    # orbax refuses a second save of a step (every resume crashed on it). With
                    # one step kept, a kill before the new save commits starts the run over.
                    self._manager.wait_until_finished()
                    self._manager.delete(step)
                self._manager.save(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardSave(host),
                        progress=ocp.args.JsonSave(progress),
                    ),
                    force=True,
                )
        except OSError:
            # This save, or the last one's background write (raised here), failed on a
            # full disk: its temporary folder (up to a VGG-19's 2 GB) is what frees space.
            self._discard_unfinished()
            raise
        # The write runs in the background while the next epoch trains (close()
        # waits for it); it reads private host copies, since the next train step
        # donates the device buffers of ``state``.

    def latest_step(self) -> int | None:
        """The step of the latest resume checkpoint saved, or None."""
        return self._manager.latest_step()

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict[str, Any]] | None:
        """``(state, progress)`` of the latest save, or None if there is none.

        A damaged save (a truncated or deleted file: a disk error, a copy cut
        short, a hand edit) raises :class:`ResumeError`, one line naming the file
        or folder. The run is refused rather than resumed from an older save or
        started over: orbax keeps only the latest step, and starting over would
        delete the run's progress and best checkpoint without being asked.
        """
        step = self._manager.latest_step()
        if step is None:
            return None
        progress = self._read_progress(step)
        step_dir = self.latest_dir / str(step)
        if not (step_dir / "state").is_dir():
            raise self._damaged(step_dir / "state", "missing")
        # Without it orbax guesses the tree from the files, and fails in a tree_map with a
        # ValueError ("pytree structure error") no read error is told from a bug by.
        if not (step_dir / "state" / _STATE_METADATA).is_file():
            raise self._damaged(step_dir / "state" / _STATE_METADATA, "missing")
        quiet_closed_event_loop()
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardRestore(_as_dict(abstract_state))),
            )
        except Exception as e:
            cause = storage_read_error(e)
            if cause is None:  # not a read of stored bytes: a bug keeps its traceback
                raise
            raise self._damaged(
                step_dir / "state",
                f"files there are truncated, missing or corrupted: {_short(cause)}",
            ) from None
        if STATE_HASH not in progress:  # every save writes it (null when sharded)
            raise ResumeError(
                f"{self.latest_dir}: the run cannot be resumed: its checkpoint has no "
                f"{STATE_HASH} to check its arrays by (saved by a medft-jax before 2026-12-03, "
                f"or edited); {START_OVER}, or by deleting that folder"
            )
        recorded = progress.pop(STATE_HASH)
        if recorded is not None:  # None: sharded, not every byte on this host
            actual = tree_hash(restored["state"])
            if actual is not None and actual != recorded:
                raise self._damaged(
                    step_dir / "state",
                    f"its arrays hash to {actual[:12]}…, not the {recorded[:12]}… saved; "
                    "a file there was corrupted",
                )
        state = abstract_state.replace(**restored["state"])
        return state, progress

    def read_progress(self) -> dict[str, Any] | None:
        """The JSON ``progress`` of the latest save (no state restored), or None.

        A damaged progress file raises :class:`ResumeError`, as when resuming.
        """
        step = self._manager.latest_step()
        if step is None:
            return None
        progress = self._read_progress(step)
        progress.pop(STATE_HASH, None)
        return progress

    def _read_progress(self, step: int) -> dict[str, Any]:
        """The ``progress`` item of ``step``, read directly (as orbax's JsonRestore does)
        so that a truncated or missing file is named in the error."""
        path = self.latest_dir.joinpath(str(step), *_PROGRESS_FILE)
        try:
            progress = json_loads(path.read_bytes().decode("utf-8"))
        except FileNotFoundError:
            raise self._damaged(path, "missing") from None
        except OSError as e:
            raise self._damaged(path, f"cannot be read: {e.strerror}") from None
        except UnicodeDecodeError:
            raise self._damaged(path, "not UTF-8 text") from None
        except json.JSONDecodeError as e:
            what = "empty" if not e.doc.strip() else f"{e.msg} at line {e.lineno} column {e.colno}"
            raise self._damaged(path, f"unreadable JSON, truncated? {what}") from None
        if not isinstance(progress, dict):
            raise self._damaged(path, f"a JSON {type(progress).__name__}, expected an object")
        recorded = progress.pop(PROGRESS_HASH, None)
        if recorded is not None and recorded != content_hash(progress):
            raise self._damaged(
                path, f"its contents hash to another value than the {str(recorded)[:12]}… saved"
            )
        return progress

    def damaged_progress(self, detail: str) -> ResumeError:
        """The one line for a latest ``progress`` that reads as JSON but not as a run's
        progress (a field missing or of another type, epochs that disagree)."""
        step = self._manager.latest_step()
        return self._damaged(self.latest_dir.joinpath(str(step), *_PROGRESS_FILE), detail)

    def _damaged(self, where: Path, detail: str) -> ResumeError:
        """The one line for a resume checkpoint that cannot be read, and what to do.

        It names the run's checkpoints folder (the thing to delete) and, inside it,
        the file or item found damaged.
        """
        return ResumeError(
            f"{self.latest_dir}: the run cannot be resumed, its checkpoint is damaged "
            f"({where.relative_to(self.latest_dir)}: {one_line(detail)}); {START_OVER}, or "
            "by deleting that folder"
        )

    def save_best(self, variables: dict[str, Any], metadata: dict[str, Any]) -> None:
        """Writes the best parameters as a model checkpoint (replacing the previous best).

        The new one is written completely beside the old one, then swapped
        in: a save that fails (disk full) or is killed leaves the previous
        best in place, which is what the resume checkpoint expects.
        """
        # Replicated jax.Arrays (not host copies): orbax then writes each array once
        # even when several processes save together.
        with naming_os_errors(self.best_dir):
            try:
                save_model(
                    self.best_dir,
                    variables["params"],
                    variables.get("batch_stats", {}),
                    metadata,
                    force=True,
                )
            except BaseException:
                # The space it took is needed; save_model waited for its own writes, and
                # the latest save's in flight are waited for by close().
                self._discard_unfinished(settle=False)
                raise

    def check_best_kept(self, best_epoch: int | None, epochs_done: int) -> None:
        """Refuses a resume whose ``best/`` is gone or damaged though its progress names a
        best epoch.

        Saved before every resume checkpoint (:func:`medft_jax.fit._save_latest`), it
        goes only by hand (to free disk): the run would train its remaining epochs and
        fail at the test, each rerun again, unless a later epoch happened to improve.
        A ``best/`` whose arrays no longer hash to its ``content_sha256`` (or cannot be
        read) failed the same way, found only at the end: it is read here, once, when it
        records a hash to check (one written before hashes were has none, and is not read).
        """
        if best_epoch is None:
            return
        if not is_checkpoint(self.best_dir):
            raise ResumeError(
                f"{self.best_dir}: no such checkpoint folder, but the run resumes after "
                f"{epochs_done} epoch{'s' * (epochs_done != 1)} whose best, epoch "
                f"{best_epoch + 1}, was saved there (deleted?); {START_OVER}, or by deleting "
                f"{self.run_dir}"
            )
        with _best_damaged():
            metadata = load_metadata(self.best_dir)
        self._check_own(metadata)
        with _best_damaged():
            if metadata.get("content_sha256") is not None:
                load_model(self.best_dir)  # checks the arrays against it

    def _check_own(self, metadata: dict[str, Any]) -> None:
        """Refuses a ``best/`` another run saved (copied in by hand, or restored from a
        backup): sound and of the right epoch number, its test metrics would go into this
        run's record beside this run's validation, without a word. Its metadata's
        ``source`` names the run that saved it (one written before it did says nothing)."""
        own = f"run {self.run_dir.name}"
        source = metadata.get("source")
        if source is not None and source != own:
            raise ResumeError(
                f"{self.best_dir}: saved by {source}, not by this {own} (copied in?); put "
                f"this run's own best/ back, or {START_OVER}"
            )

    def load_best_of_epoch(self, sharding: Any = None) -> tuple[dict[str, Any], Any]:
        """The best epoch's ``{'params', 'batch_stats'}`` (on ``sharding`` when given) and
        the epoch its metadata says it is (None if it says none).

        A damaged ``best/`` raises :class:`ResumeError`, its line saying what to do."""
        with _best_damaged():
            variables, metadata = load_model(self.best_dir)
        self._check_own(metadata)
        if sharding is not None:
            variables = jax.device_put(variables, sharding)
        return variables, metadata.get("epoch")

    def close(self) -> None:
        """Waits for the background writes (raising their error) and closes; idempotent."""
        manager, self._manager_ = self._manager_, None
        if manager is None:
            return
        try:
            with naming_os_errors(self.latest_dir):
                try:
                    manager.wait_until_finished()
                finally:
                    manager.close()
        except OSError:
            self._discard_unfinished()
            raise

    def remove_latest(self) -> None:
        """Deletes the resume checkpoints once the run's record is written, and closes.

        The last save's background write may have failed (a full disk): with the
        record written it is not needed, so its error is not this call's (it read
        "could not delete the resume checkpoints"), whatever its form (an
        ``OSError``, or tensorstore's ``ValueError`` carrying the errno), and the
        manager, which would raise it again on closing, is closed quietly. After such
        a failure orbax lists no steps at all, so the numbered step folders found on
        disk go too, with what the failed save left.
        """
        manager = self._manager
        failed = False
        try:
            manager.wait_until_finished()
        except Exception:  # the last save's background write: not needed any more
            failed = True
        with naming_os_errors(self.latest_dir):
            for step in list(manager.all_steps()):
                manager.delete(step)
        self._manager_ = None
        with contextlib.suppress(Exception):
            manager.close()
        self._discard_unfinished(settle=False)
        if jax.process_index() == 0 and self.latest_dir.is_dir():
            with naming_os_errors(self.latest_dir):
                for path in self.latest_dir.iterdir():
                    if path.name.isdigit() and path.is_dir():
                        shutil.rmtree(path)
        if failed and self._exclusive and jax.process_index() == 0:
            # Orbax raised the failed save's first error while its other writes went on:
            # what they make after the deletes above (a step folder made again, under a
            # loaded machine) is deleted once they stop, so no checkpoints/ is left.
            remove_once_written(
                lambda: (
                    [p for p in self.latest_dir.iterdir() if p.is_dir()]
                    if self.latest_dir.is_dir()
                    else []
                )
            )

    def _discard_unfinished(self, *, settle: bool = True) -> None:
        """Deletes what a failed save wrote (with the lock only: another process's save may run).

        Orbax leaves a failed save's temporary folder behind (it never
        restores as a checkpoint); on a full disk its space is needed.
        ``settle``: the writes of a failed save may still be going on (orbax raises
        the first failed write's error only), and are let end first
        (:func:`~medft_jax.checkpoints.model.remove_once_written`).
        """
        if not self._exclusive or jax.process_index() != 0:
            return

        def unfinished() -> list[Path]:
            return [
                *self.run_dir.glob(staging_paths(self.best_dir)[0].name + "*"),
                *self.latest_dir.glob("*.orbax-checkpoint-tmp*"),
            ]

        if settle:
            remove_once_written(unfinished)
            return
        for path in unfinished():
            shutil.rmtree(path, ignore_errors=True)

    def _drop_half_deleted_steps(self) -> None:
        """Deletes what a kill left of a superseded step that orbax was deleting (a step
        below the latest without its ``_CHECKPOINT_METADATA``): orbax printed a raw
        "Metadata file does not exist" line above the resume's note. The latest step is
        committed whole (written beside, then renamed) and is never touched here."""
        if jax.process_index() != 0 or not self.latest_dir.is_dir():
            return
        steps = sorted(
            (int(p.name), p) for p in self.latest_dir.iterdir() if p.name.isdigit() and p.is_dir()
        )
        for _, path in steps[:-1]:
            if not (path / _METADATA_FILE).exists():
                shutil.rmtree(path, ignore_errors=True)

    def _recover_best(self) -> None:
        """Undoes what a killed :meth:`save_best` left: the previous best goes back in place."""
        if jax.process_index() != 0:
            return
        old = staging_paths(self.best_dir)[1]
        if old.exists() and not self.best_dir.exists():
            os.replace(old, self.best_dir)  # killed between the two renames
        # The rest: an unswapped new best, a previous best not yet deleted, and orbax's
        # temporary folders of either.
        for leftover in self.run_dir.glob(".best.*"):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover)


@contextlib.contextmanager
def _best_damaged() -> Any:
    """A run's ``best/`` that fails its checks (:class:`CheckpointError`, naming it) is a
    :class:`ResumeError` saying what to do: the run cannot end without its best epoch."""
    try:
        yield
    except CheckpointError as e:
        raise ResumeError(f"{e}; the run cannot test its best epoch; {START_OVER}") from None


def _host_copy(state: Any) -> dict[str, Any]:
    """A host copy of the state that the next (donating) step cannot change."""
    tree = _as_dict(state)
    start_host_copies(tree)
    return jax.tree.map(lambda x: np.array(x, copy=True), tree)


def _as_dict(state: Any) -> dict[str, Any]:
    return {
        "step": state.step,
        "params": state.params,
        "batch_stats": state.batch_stats,
        "opt_state": state.opt_state,
    }
