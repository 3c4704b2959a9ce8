"""One run, end to end: load data and weights, train with early stopping, test, record.

:func:`run_one` is what ``python -m experiments.run`` (and later the sweep)
calls for each (dataset, arch, strategy, lr, seed). It is idempotent: a run
whose record exists is skipped unless ``force``; a run killed half-way
resumes from its latest checkpoint and writes the record an uninterrupted
run writes; a failed run leaves no record.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import math
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from medft_jax import data, locks, metrics, pretrained, results, strategies
from medft_jax.checkpoint import RunCheckpoints
from medft_jax.config import RunConfig, check_config
from medft_jax.data.tasks import task_options
from medft_jax.early_stopping import EarlyStopping
from medft_jax.errors import one_line
from medft_jax.models import create, get_arch, init_variables
from medft_jax.train import Trainer, check_finite

PRECISIONS = {"fp32": jnp.float32, "bf16": jnp.bfloat16}


def _resize_for(arch: str, image_size: int) -> int:
    return get_arch(arch).resize_for(image_size)


def load_dataset(config: RunConfig, data_dir: str | None = None, **options: Any) -> data.Dataset:
    return data.load(
        config.dataset,
        data_dir=data_dir,
        resize_size=_resize_for(config.arch, config.image_size),
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
    path = pretrained.locate(weights, arch)
    from medft_jax import model_checkpoint

    return "none" if path is None else model_checkpoint.content_hash(path)


def identify(config: RunConfig, ds: data.Dataset) -> RunConfig:
    """``config`` with the fingerprints of its data and starting weights filled in.

    They are part of the run's identity (its record's name): a run on other
    images, or from other weights, is another run, never a skip.
    """
    if config.identified:
        return config
    fingerprint = ds.metadata.get("fingerprint")
    if not fingerprint:
        raise RuntimeError(f"dataset {ds.name!r} was loaded without a content fingerprint")
    return dataclasses.replace(
        config,
        data_fingerprint=str(fingerprint),
        weights_fingerprint=weights_fingerprint(config.weights, config.arch),
    )


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
    trainers: dict[tuple, Trainer] | None = None,
) -> dict[str, Any]:
    """Trains, evaluates and records one configuration; returns its record.

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
    check_config(config, lambda field: f"RunConfig.{field}")
    ds = dataset if dataset is not None else load_dataset(config, data_dir)
    config = identify(config, ds)
    cfg = config.to_dict()
    run_dir = results.run_dir(out_dir, cfg)
    record_file = results.record_path(out_dir, cfg)
    if record_file.exists() and not force:
        return results.read_record(record_file)
    # One process per run (another gets RunLocked); the lock is released, and this
    # process's background checkpoint writes end, whatever ends the run.
    with locks.run_lock(run_dir) as lock, RunCheckpoints(run_dir, exclusive=True) as ckpts:
        if record_file.exists() and not force:  # another process finished it meanwhile
            return results.read_record(record_file)
        if force:
            lock.clear_folder()
        return _train(
            config,
            ds,
            run_dir,
            record_file,
            ckpts,
            progress=progress,
            eval_batch_size=eval_batch_size,
            stop_after_steps=stop_after_steps,
            trainers=trainers,
        )


def _train(
    config: RunConfig,
    ds: data.Dataset,
    run_dir: Path,
    record_file: Path,
    ckpts: RunCheckpoints,
    *,
    progress: bool,
    eval_batch_size: int | None,
    stop_after_steps: int | None,
    trainers: dict[tuple, Trainer] | None,
) -> dict[str, Any]:
    """The body of :func:`run_one`, run while holding the run's lock."""
    cfg = config.to_dict()
    primary = metrics.primary_metric(config.dataset, ds.multilabel)
    dtype = PRECISIONS[config.precision]
    spec = get_arch(config.arch)
    start, weights_used = pretrained.resolve(config.weights, config.arch)
    model = create(config.arch, ds.num_classes, dtype=dtype)
    variables = jax.device_get(init_variables(model, config.seed, image_size=32))
    if start is not None:
        variables = pretrained.merge(variables, start, spec.partition)

    steps_per_epoch = ds.steps_per_epoch(config.batch_size)
    if steps_per_epoch < 1:
        raise data.DataError(
            f"--batch-size {config.batch_size} is larger than the {ds.num_examples('train')} "
            f"training examples of {config.dataset}"
        )
    strategy = strategies.make(
        config.strategy,
        variables["params"],
        spec.partition,
        learning_rate=1.0,  # the trainer applies config.lr (one compilation for every lr)
        steps_per_epoch=steps_per_epoch,
        frozen_bn=config.frozen_bn,
        **dict(config.strategy_options),
    )
    schedule = strategy.schedule

    def build_trainer() -> Trainer:
        return Trainer(
            model,
            strategy.tx,
            multilabel=ds.multilabel,
            compute_dtype=dtype,
            seed=config.seed,
            learning_rate=config.lr,
        )

    if trainers is None:
        trainer = build_trainer()
    else:
        key = (
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
        if key not in trainers:
            trainers[key] = build_trainer()
        trainer = trainers[key].with_hyper(seed=config.seed, learning_rate=config.lr)
    n_dev = jax.device_count()
    if config.batch_size % n_dev:
        raise data.DataError(
            f"--batch-size {config.batch_size} must be a multiple of {n_dev} devices"
        )
    eval_bs = eval_batch_size or max(n_dev, config.batch_size)
    eval_bs -= eval_bs % n_dev
    shard = {"shard_index": jax.process_index(), "shard_count": jax.process_count()}

    state = trainer.init_state(variables)
    restored = ckpts.restore_latest(trainer.abstract_state(variables))
    stopper = EarlyStopping(patience=config.patience, start_epoch=schedule.final_stage_epoch)
    epochs: list[dict[str, Any]] = []
    compile_seconds = 0.0
    partial: dict[str, Any] | None = None  # the epoch a mid-epoch stop left unfinished
    if restored is not None:
        state, prog = restored
        epochs = list(prog["epochs"])
        stopper = EarlyStopping.from_state(prog["early_stopping"])
        compile_seconds = float(prog["compile_seconds"])
        partial = prog.get("partial")
    best_meta = {
        "arch": config.arch,
        "num_classes": ds.num_classes,
        "multilabel": ds.multilabel,
        "class_names": list(ds.class_names),
        "resize_size": _resize_for(config.arch, config.image_size),
        "crop_size": config.image_size,
        "source": f"run {run_dir.name}",
    }
    stop = bool(epochs) and bool(epochs[-1].get("stop"))
    stop_at = math.inf if stop_after_steps is None else stop_after_steps
    if len(epochs) * steps_per_epoch + (partial["steps"] if partial else 0) >= stop_at:
        ckpts.close()
        return {}
    best_variables = None
    for epoch in range(len(epochs), config.epochs):
        if stop:
            break
        trainable = schedule.trainable_mask(variables["params"], epoch)
        bn_train = schedule.bn_train(epoch)
        it = ds.train_iter(config.batch_size, seed=config.seed, epoch=epoch, **shard)
        # A resumed partial epoch continues its batches, losses and clocks.
        losses: list[float] = list(partial["losses"]) if partial else []
        train_seconds = float(partial["train_seconds"]) if partial else 0.0
        spent = float(partial["seconds"]) if partial else 0.0
        position = int(partial["steps"]) if partial else 0
        if partial:
            it.set_state(partial["iterator"])
            partial = None
        bar = tqdm(
            total=len(it),
            initial=position,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not progress or jax.process_index() != 0,
            leave=False,
        )
        pending = None
        t_epoch = time.perf_counter()
        compiled_before = trainer.compile_seconds
        if schedule.prepass is not None and position == 0:
            t, c = time.perf_counter(), trainer.compile_seconds
            state = trainer.estimate_rgn(
                state,
                itertools.islice(
                    ds.train_iter(config.batch_size, seed=config.seed, epoch=epoch, **shard),
                    schedule.prepass.batches,
                ),
                trainable=trainable,
                bn_train=bn_train,
                prepass=schedule.prepass,
            )
            train_seconds += time.perf_counter() - t - (trainer.compile_seconds - c)
        for batch in it:
            x = trainer.shard_batch(batch["image"])
            y = trainer.shard_batch(batch["label"])
            trainer.compile_stage(state, x, y, trainable=trainable, bn_train=bn_train)
            t = time.perf_counter()
            state, loss = trainer.train_step(state, x, y, trainable=trainable, bn_train=bn_train)
            if pending is not None:  # read the previous step's loss: keeps the device busy
                losses.append(float(pending))
                check_finite(losses[-1], step=int(state.step) - 1, epoch=epoch)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
            pending = loss
            train_seconds += time.perf_counter() - t
            bar.update(1)
            position += 1
            if epoch * steps_per_epoch + position >= stop_at:
                break
        if pending is not None:
            losses.append(float(pending))
            check_finite(losses[-1], step=int(state.step), epoch=epoch)
        bar.close()
        val_probs = trainer.predict(state, ds.eval_batches("val", eval_bs, **shard))
        epoch_compile = trainer.compile_seconds - compiled_before
        compile_seconds += epoch_compile
        val = _metrics(ds, "val", val_probs)
        seconds = spent + time.perf_counter() - t_epoch - epoch_compile
        if position < len(it):  # a mid-epoch stop: validated, saved, not an epoch for stopping
            ckpts.save_latest(
                epoch * steps_per_epoch + position,
                state,
                {
                    **_progress(epochs, stopper, compile_seconds),
                    "partial": {
                        "epoch": epoch,
                        "steps": position,
                        "iterator": it.get_state(),
                        "losses": losses,
                        "train_seconds": train_seconds,
                        "seconds": seconds,
                        "val": val,
                    },
                },
            )
            ckpts.close()
            return {}
        decision = stopper.update(epoch, val[primary])
        images = steps_per_epoch * config.batch_size
        epochs.append(
            {
                "epoch": epoch,
                "train_loss": float(np.mean(losses)) if losses else float("nan"),
                "val": val,
                "seconds": seconds,
                "images_per_s": images / train_seconds if train_seconds else None,
                "trainable_blocks": list(schedule.trainable_blocks(epoch)),
                "improved": bool(decision.improved),
                "stop": bool(decision.stop),
            }
        )
        if progress and jax.process_index() == 0:
            print(
                f"epoch {epoch + 1}: loss {epochs[-1]['train_loss']:.4f}  val {primary} "
                f"{val[primary]:.4f}{'  *' if decision.improved else ''}",
                flush=True,
            )
        if decision.improved:
            ckpts.save_best(state.variables, {**best_meta, "epoch": epoch})
            # A device copy for the test pass (the next step donates ``state``).
            best_variables = _copy(state.variables)
        stop = bool(decision.stop)
        if stop or epoch + 1 >= config.epochs:
            break  # finishing: no resume point needed (a kill now redoes only this epoch)
        ckpts.save_latest(
            (epoch + 1) * steps_per_epoch,
            state,
            _progress(epochs, stopper, compile_seconds),
        )
        if (epoch + 1) * steps_per_epoch >= stop_at:
            ckpts.close()
            return {}

    best = next((e for e in epochs if e["epoch"] == stopper.best_epoch), None)
    if best is None:
        raise RuntimeError(f"run {run_dir.name}: no epoch finished with a finite val {primary}")
    if best_variables is None:  # the best epoch was trained before a restart
        best_state = _load_best(trainer, state, ckpts)
    else:
        best_state = state.replace(
            params=best_variables["params"], batch_stats=best_variables["batch_stats"]
        )
    test_probs = trainer.predict(best_state, ds.eval_batches("test", eval_bs, **shard))
    record = {
        "config": cfg,
        "run": run_dir.name,
        "weights_used": weights_used,
        "primary_metric": primary,
        "num_classes": ds.num_classes,
        "multilabel": ds.multilabel,
        "class_names": list(ds.class_names),
        **_dataset_options(config, ds),
        "steps_per_epoch": steps_per_epoch,
        "epochs": epochs,
        "best_epoch": best["epoch"],
        "val": best["val"],
        "test": _metrics(ds, "test", test_probs),
        "final_stage_epoch": schedule.final_stage_epoch,
        "compile_seconds": compile_seconds,
        "num_compilations": trainer.num_compilations,
        "train_seconds": float(sum(e["seconds"] for e in epochs)),
        "environment": results.environment_info(),
    }
    record["finished_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat()
    if jax.process_index() == 0:
        record = results.write_record(record_file, record)
    _tidy_up(ckpts)  # never raises: with the record written, the run has succeeded
    return record


def _dataset_options(config: RunConfig, ds: data.Dataset) -> dict[str, Any]:
    """``{"dataset_options": ...}`` for a task with label or split options, else nothing.

    The record then says which split and labels its numbers come from (the
    config does not: the data fingerprint tells variants apart, not by name).
    """
    options = task_options(config.dataset, ds.metadata)
    return {"dataset_options": options} if options else {}


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
    except Exception as e:  # the record stands whatever went wrong here
        print(
            f"warning: {ckpts.latest_dir}: could not delete the resume checkpoints "
            f"({one_line(e)}); the record is written, delete them to free the space",
            file=sys.stderr,
        )


def _progress(
    epochs: list[dict[str, Any]], stopper: EarlyStopping, compile_seconds: float
) -> dict[str, Any]:
    """The resume checkpoint's JSON item: finished epochs, early stopping, compile time."""
    return {
        "epochs": epochs,
        "early_stopping": stopper.state_dict(),
        "compile_seconds": compile_seconds,
    }


def _metrics(ds: data.Dataset, split: str, probs: np.ndarray) -> dict[str, float]:
    _, scores, labels = ds.grouped_scores(split, probs)
    return metrics.compute_metrics(scores, labels, multilabel=ds.multilabel)


@jax.jit
def _copy(tree: Any) -> Any:
    """Fresh device buffers with the same values and shardings (works across processes)."""
    return jax.tree.map(jnp.copy, tree)


def _load_best(trainer: Trainer, state: Any, ckpts: RunCheckpoints) -> Any:
    from medft_jax.model_checkpoint import load_model

    variables, _ = load_model(ckpts.best_dir)
    variables = jax.device_put(variables, trainer.replicated)
    return state.replace(params=variables["params"], batch_stats=variables["batch_stats"])
