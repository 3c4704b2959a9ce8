"""The train and eval steps: jit-compiled, data-parallel over a mesh of every device.

A :class:`Trainer` holds a model, a strategy's optimizer and schedule, and a
``jax.sharding.Mesh`` with one ``data`` axis spanning every device of every
host: batches are sharded along it, the train state is replicated, and XLA
inserts the gradient all-reduce (and BatchNorm's global batch statistics).

Per strategy stage the train step differentiates only the parameters that
stage trains: the params are split statically (by the schedule's trainable
mask) into a differentiated part and a constant part, so JAX never
linearises a frozen prefix (LP runs the backbone forward-only) and computes
no weight gradients for frozen blocks. The mask and the BatchNorm mode are
static arguments, so there is one compilation per stage, reused by every
epoch of that stage.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from medft_jax.data.preprocess import normalize
from medft_jax.models.layers import BNTrain

PyTree = Any


class TrainState(flax.struct.PyTreeNode):
    """Everything that changes during training, as one replicated pytree."""

    step: jax.Array
    params: PyTree
    batch_stats: PyTree
    opt_state: PyTree

    @property
    def variables(self) -> dict[str, PyTree]:
        return {"params": self.params, "batch_stats": self.batch_stats}


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A 1-D ``data`` mesh over ``devices`` (default: every device of every process)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("data",))


def classification_loss(logits: jax.Array, labels: jax.Array, multilabel: bool) -> jax.Array:
    """Softmax cross-entropy (class ids), or mean sigmoid BCE (multi-hot labels)."""
    logits = logits.astype(jnp.float32)
    if multilabel:
        return optax.sigmoid_binary_cross_entropy(logits, labels.astype(jnp.float32)).mean()
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def probabilities(logits: jax.Array, multilabel: bool) -> jax.Array:
    logits = logits.astype(jnp.float32)
    return jax.nn.sigmoid(logits) if multilabel else jax.nn.softmax(logits, axis=-1)


class Trainer:
    """Compiled train/eval steps for one model + strategy on one mesh.

    Args:
      model: a medft-jax model (Flax module taking ``bn_train`` and
        ``deterministic``).
      tx: the strategy's optimizer.
      multilabel: sigmoid BCE and sigmoid probabilities instead of softmax.
      mesh: the device mesh (default: every device).
      compute_dtype: ``jnp.bfloat16`` for bf16 compute (the model must be
        built with the same dtype); parameters and optimizer stay float32.
      seed: the dropout RNG's seed (folded with the step number, so resuming
        gives the same masks).
      learning_rate: when given, every update is multiplied by it inside the
        step, and ``tx`` must be built with a learning rate of 1 (every
        strategy's update is linear in its learning rate). The rate and the
        seed are arguments of the compiled step, not constants in it, so
        runs that differ only in learning rate or seed share one compiled
        program (in the persistent compilation cache): a sweep compiles
        each stage once, not once per (lr, seed).
    """

    def __init__(
        self,
        model: nn.Module,
        tx: optax.GradientTransformation,
        *,
        multilabel: bool,
        mesh: Mesh | None = None,
        compute_dtype: Any = jnp.float32,
        seed: int = 0,
        learning_rate: float | None = None,
    ):
        self.model = model
        self.tx = tx
        self.multilabel = multilabel
        self.mesh = mesh if mesh is not None else make_mesh()
        self.compute_dtype = compute_dtype
        self.seed = seed
        self.learning_rate = learning_rate
        self.replicated = NamedSharding(self.mesh, P())
        self._hyper = _hyper(seed, learning_rate, self.replicated)
        self.batch_sharding = NamedSharding(self.mesh, P("data"))
        self._train_steps: dict[tuple, Any] = {}
        self._compiled = 0
        self.compile_seconds = 0.0
        """Seconds this trainer spent compiling (train stages and eval steps)."""
        self._eval_step = jax.jit(self._eval, out_shardings=self.batch_sharding)
        self._eval_steps: dict[tuple, Any] = {}

    @property
    def num_compilations(self) -> int:
        """Train-step variants this trainer built (one per distinct stage)."""
        return self._compiled

    def with_hyper(self, *, seed: int, learning_rate: float | None) -> Trainer:
        """The same trainer for another run's seed and learning rate.

        The copy shares the compiled steps (lr and seed are step arguments),
        so the runs of a sweep that differ only in them trace and compile
        nothing again. Requires a trainer built with a runtime
        ``learning_rate`` (or none in both).
        """
        if (learning_rate is None) != (self.learning_rate is None):
            raise ValueError("with_hyper: learning_rate must be given iff the trainer has one")
        other = copy.copy(self)
        other.seed, other.learning_rate, other._compiled = seed, learning_rate, 0
        other.compile_seconds = 0.0
        other._hyper = _hyper(seed, learning_rate, self.replicated)
        return other

    # -- state ---------------------------------------------------------------

    def init_state(self, variables: Mapping[str, PyTree]) -> TrainState:
        """A replicated train state from ``{'params', 'batch_stats'}``.

        The state owns copies (the train step donates its buffers, which must
        not delete the caller's ``variables``).
        """
        params = variables["params"]
        state = TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=self.tx.init(params),
        )
        owned = jax.tree.map(lambda x: jnp.array(x, copy=True), state)
        return jax.device_put(owned, self.replicated)

    def abstract_state(self, variables: Mapping[str, PyTree]) -> TrainState:
        """Shapes, dtypes and shardings of the state (the restore target of a checkpoint)."""
        shapes = jax.eval_shape(self.init_state, variables)
        return jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.replicated), shapes
        )

    def shard_batch(self, array: np.ndarray) -> jax.Array:
        """This process's rows of a global batch -> one array sharded over the mesh."""
        return jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(array))

    # -- train ---------------------------------------------------------------

    def lower_stage(
        self,
        state: TrainState,
        images: jax.Array,
        labels: jax.Array,
        *,
        trainable: PyTree,
        bn_train: BNTrain,
    ) -> jax.stages.Lowered:
        """The stage's train step traced and lowered (its program, not yet compiled)."""
        mask, bn_key = _stage_key(trainable, bn_train)
        jitted = jax.jit(
            lambda s, x, y, h: self._train(s, x, y, h, mask=mask, bn_train=bn_key),
            in_shardings=(
                self.replicated,
                self.batch_sharding,
                self.batch_sharding,
                self.replicated,
            ),
            out_shardings=(self.replicated, self.replicated),
            donate_argnums=(0,),
        )
        return jitted.lower(state, images, labels, self._hyper)

    def compile_stage(
        self,
        state: TrainState,
        images: jax.Array,
        labels: jax.Array,
        *,
        trainable: PyTree,
        bn_train: BNTrain,
    ) -> float:
        """Compiles the stage's train step ahead of time; returns its seconds (0 if cached)."""
        key = _stage_key(trainable, bn_train)
        if key in self._train_steps:
            return 0.0
        t = time.perf_counter()
        lowered = self.lower_stage(state, images, labels, trainable=trainable, bn_train=bn_train)
        self._train_steps[key] = lowered.compile()
        self._compiled += 1
        seconds = time.perf_counter() - t
        self.compile_seconds += seconds
        return seconds

    def train_step(
        self,
        state: TrainState,
        images: jax.Array,
        labels: jax.Array,
        *,
        trainable: PyTree,
        bn_train: BNTrain,
    ) -> tuple[TrainState, jax.Array]:
        """One update; ``trainable`` (a bool pytree like the params) is the stage's mask.

        Frozen parameters are passed through untouched (bit-identical), and
        get no gradient computation at all. ``state`` is donated.
        """
        self.compile_stage(state, images, labels, trainable=trainable, bn_train=bn_train)
        step = self._train_steps[_stage_key(trainable, bn_train)]
        return step(state, images, labels, self._hyper)

    def _train(
        self,
        state: TrainState,
        images: jax.Array,
        labels: jax.Array,
        hyper: dict[str, jax.Array],
        *,
        mask: tuple[bool, ...],
        bn_train: BNTrain,
    ) -> tuple[TrainState, jax.Array]:
        leaves, treedef = jax.tree.flatten(state.params)
        if len(leaves) != len(mask):
            raise ValueError(f"trainable mask has {len(mask)} leaves, params have {len(leaves)}")
        trained = [p for p, m in zip(leaves, mask, strict=True) if m]
        rng = jax.random.fold_in(jax.random.wrap_key_data(hyper["rng"]), state.step)
        x = normalize(images, self.compute_dtype)

        def merge(trained_leaves):
            it = iter(trained_leaves)
            return treedef.unflatten(
                [next(it) if m else p for p, m in zip(leaves, mask, strict=True)]
            )

        def loss_fn(trained_leaves):
            logits, new_vars = self.model.apply(
                {"params": merge(trained_leaves), "batch_stats": state.batch_stats},
                x,
                bn_train=bn_train,
                deterministic=False,
                rngs={"dropout": rng},
                mutable=["batch_stats"],
            )
            return classification_loss(logits, labels, self.multilabel), new_vars

        (loss, new_vars), grads = jax.value_and_grad(loss_fn, has_aux=True)(trained)
        it = iter(grads)
        full_grads = treedef.unflatten(
            [next(it) if m else jnp.zeros_like(p) for p, m in zip(leaves, mask, strict=True)]
        )
        updates, opt_state = self.tx.update(full_grads, state.opt_state, state.params)
        if "lr" in hyper:
            updates = jax.tree.map(lambda u: u * hyper["lr"].astype(u.dtype), updates)
        new_params = optax.apply_updates(state.params, updates)
        # Frozen leaves keep their exact bits (p + 0.0 would turn -0.0 into 0.0).
        new_leaves = [
            n if m else p for n, p, m in zip(jax.tree.leaves(new_params), leaves, mask, strict=True)
        ]
        new_state = state.replace(
            step=state.step + 1,
            params=treedef.unflatten(new_leaves),
            batch_stats=new_vars.get("batch_stats", state.batch_stats),
            opt_state=opt_state,
        )
        return new_state, loss

    # -- eval ----------------------------------------------------------------

    def _eval(self, variables: PyTree, images: jax.Array) -> jax.Array:
        logits = self.model.apply(variables, normalize(images, self.compute_dtype))
        return probabilities(logits, self.multilabel)

    def compile_eval(self, state: TrainState, images: jax.Array) -> float:
        """Compiles the eval step for batches shaped like ``images``; its seconds (0 if done).

        Ahead of time, so that its cost is counted as compilation, not as
        the epoch's time (records report the two apart).
        """
        key = (images.shape, images.dtype)
        if key in self._eval_steps:
            return 0.0
        t = time.perf_counter()
        self._eval_steps[key] = self._eval_step.lower(state.variables, images).compile()
        seconds = time.perf_counter() - t
        self.compile_seconds += seconds
        return seconds

    def predict(self, state: TrainState, batches) -> np.ndarray:
        """Probabilities for every real (unmasked) example of ``batches``, in order.

        ``batches`` yield this process's rows (``image``, ``mask``); with
        several processes the rows of all of them are gathered, in process
        order, which is the order the data pipeline's shards come in.
        """
        out = []
        for batch in batches:
            x = self.shard_batch(batch["image"])
            self.compile_eval(state, x)
            probs = self._eval_steps[(x.shape, x.dtype)](state.variables, x)
            probs = _gather(probs)
            mask = _gather_host(np.asarray(batch["mask"]))
            out.append(probs[mask])
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _hyper(seed: int, learning_rate: float | None, sharding: NamedSharding) -> dict[str, Any]:
    """The step's runtime arguments: the dropout key's data and the learning rate."""
    hyper = {"rng": jax.random.key_data(jax.random.key(seed))}
    if learning_rate is not None:
        hyper["lr"] = jnp.asarray(learning_rate, jnp.float32)
    return jax.device_put(hyper, sharding)


def _stage_key(trainable: PyTree, bn_train: BNTrain) -> tuple[tuple[bool, ...], BNTrain]:
    mask = tuple(bool(m) for m in jax.tree.leaves(trainable))
    return mask, bn_train if isinstance(bn_train, bool) else frozenset(bn_train)


def _gather(x: jax.Array) -> np.ndarray:
    if jax.process_count() == 1:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _gather_host(x: np.ndarray) -> np.ndarray:
    if jax.process_count() == 1:
        return x
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=False)).reshape(-1)


def check_finite(loss: float, *, step: int, epoch: int) -> None:
    """Raises :class:`NonFiniteLossError` naming the step and epoch."""
    if not math.isfinite(loss):
        raise NonFiniteLossError(
            f"training loss became {loss} at step {step} (epoch {epoch}); "
            "try a smaller --lr or --precision fp32"
        )
