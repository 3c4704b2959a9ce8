"""A run's checkpoints: the latest train state (to resume) and the best parameters.

``<run_dir>/checkpoints/<step>/`` (orbax ``CheckpointManager``, the latest
kept; ``step`` counts train steps) holds the whole
:class:`~medft_jax.train.TrainState` and a JSON ``progress`` item: the
per-epoch records so far, the early-stopping state, and, after a stop
inside an epoch, that partial epoch (the data iterator's state, its losses
and clocks). Restarting a run restores both and continues from the next
batch, so it ends with the record an uninterrupted run writes.

``<run_dir>/best/`` is a model checkpoint (:mod:`medft_jax.model_checkpoint`,
the weight port's format), so ``experiments.predict`` and ``weights_port
export`` work on a run's best parameters directly.

Every save is atomic (orbax writes a temporary folder and renames it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from medft_jax.model_checkpoint import save_model


class RunCheckpoints:
    """The latest-state manager and the best-parameters folder of one run."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir).expanduser().absolute()
        self.best_dir = self.run_dir / "best"
        self._manager = ocp.CheckpointManager(
            self.run_dir / "checkpoints",
            options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True),
            item_names=("state", "progress"),
        )

    def save_latest(self, step: int, state: Any, progress: dict[str, Any]) -> None:
        """Saves the train state after ``step`` train steps with the JSON ``progress``."""
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_host_copy(state)),
                progress=ocp.args.JsonSave(progress),
            ),
            force=True,
        )
        # The write runs in the background while the next epoch trains (close()
        # waits for it); it reads private host copies, since the next train step
        # donates the device buffers of ``state``.

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict[str, Any]] | None:
        """``(state, progress)`` of the latest save, or None if there is none."""
        step = self._manager.latest_step()
        if step is None:
            return None
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(_as_dict(abstract_state)),
                progress=ocp.args.JsonRestore(),
            ),
        )
        state = abstract_state.replace(**restored["state"])
        return state, dict(restored["progress"])

    def read_progress(self) -> dict[str, Any] | None:
        """The JSON ``progress`` of the latest save (no state restored), or None."""
        step = self._manager.latest_step()
        if step is None:
            return None
        restored = self._manager.restore(
            step, args=ocp.args.Composite(progress=ocp.args.JsonRestore())
        )
        return dict(restored["progress"])

    def save_best(self, variables: dict[str, Any], metadata: dict[str, Any]) -> None:
        """Writes the best parameters as a model checkpoint (replacing the previous best)."""
        # Replicated jax.Arrays (not host copies): orbax then writes each array once
        # even when several processes save together.
        save_model(
            self.best_dir,
            variables["params"],
            variables.get("batch_stats", {}),
            metadata,
            force=True,
        )

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def remove_latest(self) -> None:
        """Deletes the resume checkpoints once the run's record is written."""
        self._manager.wait_until_finished()
        for step in list(self._manager.all_steps()):
            self._manager.delete(step)


def _host_copy(state: Any) -> dict[str, Any]:
    return jax.tree.map(lambda x: np.array(x, copy=True), _as_dict(state))


def _as_dict(state: Any) -> dict[str, Any]:
    return {
        "step": state.step,
        "params": state.params,
        "batch_stats": state.batch_stats,
        "opt_state": state.opt_state,
    }
