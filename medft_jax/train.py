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

A step is two programs: the gradient program (forward, loss, backward:
what depends on the model, the trainable set and the BatchNorm mode) and
the update program (the strategy's optimizer). The gradient program is the
one that is slow to compile (about a minute for DenseNet-121 on a CPU) and
it is the same for FT, L1-SP, L2-SP, Auto-RGN and the last stages of LP-FT
and the gradual strategies, so it is compiled once per process and shared
by every trainer of the model; each strategy compiles only its update.
"""

from __future__ import annotations

import copy
import functools
import math
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

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
from medft_jax.strategies.build import built_learning_rate
from medft_jax.strategies.checks import is_concrete_number
from medft_jax.strategies.rgn import Prepass, hold_multipliers, rgn_vector

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
    """The training loss became NaN or infinite.

    ``step``: the run's train steps in all when it did (None where unknown: a
    non-finite evaluation), which a selection counts in the diverged arm's cost.
    """

    def __init__(self, message: str, step: int | None = None):
        super().__init__(message)
        self.step = step


class NonFiniteOutputError(NonFiniteLossError):
    """The model's evaluation outputs became NaN or infinite: diverged, as a loss would.

    A finite training loss does not rule it out (eval mode reads BatchNorm's
    running statistics, which can overflow while batch statistics stay finite).
    """


def process_ordered(devices: list[jax.Device]) -> list[jax.Device]:
    """``devices`` by process, then id: a process's devices form one block, in process order."""
    return sorted(devices, key=lambda d: (d.process_index, d.id))


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A 1-D ``data`` mesh over ``devices`` (default: every device of every process).

    The default orders devices by process, then id: each process's rows of a
    global batch are then one contiguous block, in process order, which is
    the order :meth:`Trainer.predict` gathers the examples' masks in (its
    logits come back in mesh order). ``jax.devices()`` is usually so
    ordered but need not be (TPU pods list by id).
    """
    devices = process_ordered(jax.devices()) if devices is None else devices
    return Mesh(np.asarray(devices), ("data",))


def classification_loss(logits: jax.Array, labels: jax.Array, multilabel: bool) -> jax.Array:
    """Softmax cross-entropy (class ids), or mean sigmoid BCE (multi-hot labels)."""
    logits = logits.astype(jnp.float32)
    if multilabel:
        return optax.sigmoid_binary_cross_entropy(logits, labels.astype(jnp.float32)).mean()
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _compute_dtype(model: nn.Module, given: Any) -> Any:
    """``given``, or the model's ``dtype`` (float32 for a module without one); a ``given``
    that is not the model's is refused (see :class:`Trainer`)."""
    own = getattr(model, "dtype", None)
    if given is None:
        return jnp.float32 if own is None else own
    if own is not None and jnp.dtype(own) != jnp.dtype(given):
        raise ValueError(
            f"compute_dtype {jnp.dtype(given).name} for a model built with dtype "
            f"{jnp.dtype(own).name}: build the model with the compute dtype "
            f"(models.create(arch, n, dtype=...)), or leave compute_dtype out"
        )
    return given


class Trainer:
    """Compiled train/eval steps for one model + strategy on one mesh.

    Args:
      model: a medft-jax model (Flax module taking ``bn_train`` and
        ``deterministic``).
      tx: the strategy's optimizer.
      multilabel: sigmoid BCE (independent labels) instead of softmax cross-entropy.
      mesh: the device mesh (default: every device).
      compute_dtype: ``jnp.bfloat16`` for bf16 compute; parameters and optimizer stay
        float32. Default: the model's own ``dtype``. One that differs from the model's is
        refused: a float32 model given bfloat16 rounded its input to bf16 and computed in
        float32, neither precision's logits.
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
        compute_dtype: Any = None,
        seed: int = 0,
        learning_rate: float | None = None,
    ):
        self.model = model
        self.tx = tx
        self.multilabel = multilabel
        self.mesh = mesh if mesh is not None else make_mesh()
        self.compute_dtype = _compute_dtype(model, compute_dtype)
        self.seed = seed
        _check_rate(tx, learning_rate)
        self.learning_rate = learning_rate
        self.replicated = NamedSharding(self.mesh, P())
        self._hyper = _hyper(seed, learning_rate, self.replicated)
        self.batch_sharding = NamedSharding(self.mesh, P("data"))
        self.steps_sharding = NamedSharding(self.mesh, P(None, "data"))
        """Stacked batches (steps first, then the global batch), as :meth:`head_steps` takes."""
        self._train_steps: dict[tuple, Any] = {}
        self._head_programs: dict[tuple, Any] = {}
        self._compiled = 0
        self.compile_seconds = 0.0
        """Seconds this trainer spent compiling (train stages and eval steps)."""
        self._eval_step = jax.jit(
            self._eval, out_shardings=self.batch_sharding, static_argnames=("part",)
        )
        self._init_state = jax.jit(self._new_state, out_shardings=self.replicated)
        self._eval_steps: dict[tuple, Any] = {}

    @property
    def num_compilations(self) -> int:
        """Train programs this trainer built: one per distinct stage, and per call length of
        :meth:`head_steps` for a cached-feature stage."""
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
        _check_rate(self.tx, learning_rate)
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
        return self._init_state(jax.device_put(_both(variables), self.replicated))

    def _new_state(self, variables: Mapping[str, PyTree]) -> TrainState:
        # One program for the whole state (not one small program per leaf).
        owned = jax.tree.map(jnp.copy, _both(variables))
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=owned["params"],
            batch_stats=owned["batch_stats"],
            opt_state=self.tx.init(owned["params"]),
        )

    def abstract_state(self, variables: Mapping[str, PyTree]) -> TrainState:
        """Shapes, dtypes and shardings of the state (the restore target of a checkpoint)."""
        shapes = jax.eval_shape(self._new_state, _both(variables))
        return jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.replicated), shapes
        )

    def shard_batch(self, array: np.ndarray) -> jax.Array:
        """This process's rows of a global batch -> one array sharded over the mesh."""
        return jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(array))

    def shard_steps(self, array: np.ndarray) -> jax.Array:
        """This process's rows of several global batches, stacked on a first axis of steps."""
        return jax.make_array_from_process_local_data(self.steps_sharding, np.asarray(array))

    # -- train ---------------------------------------------------------------

    def lower_stage(
        self,
        state: TrainState,
        images: jax.Array,
        labels: jax.Array,
        *,
        trainable: PyTree,
        bn_train: BNTrain,
        from_features: bool = False,
    ) -> StagePrograms:
        """The stage's two programs traced and lowered (not yet compiled)."""
        mask, bn_key, _ = _stage_key(trainable, bn_train, from_features)
        _check_mask(state.params, mask)
        grad = self._lower_grad(state, images, labels, mask, bn_key, from_features)
        return StagePrograms(grad, self._lower_update(state, grad.out_info[1], mask))

    def compile_stage(
        self,
        state: TrainState,
        images: jax.Array,
        labels: jax.Array,
        *,
        trainable: PyTree,
        bn_train: BNTrain,
        from_features: bool = False,
    ) -> float:
        """Compiles the stage's train step ahead of time; returns its seconds (0 if cached).

        The gradient program comes from the process-wide cache when any
        trainer of the same model compiled it for the same trainable set,
        BatchNorm mode and shapes; only the update program is this trainer's.
        """
        key = _stage_key(trainable, bn_train, from_features)
        return self._stage_programs(key, state, images, labels)[1]

    def _stage_programs(
        self, key: tuple, state: TrainState, images: jax.Array, labels: jax.Array
    ) -> tuple[tuple[Any, Any], float]:
        """The stage's (gradient, update) programs for this batch's shapes, and their compile
        seconds (0 if built). Keyed by the batch's shapes too: a loop of the user's own
        whose last batch is smaller got the full batch's program, and XLA's TypeError."""
        build = functools.partial(self._build_stage, key, state, images, labels)
        return self._built(self._train_steps, (key, _shapes((images, labels))), build)

    def _built(self, programs: dict, key: tuple, build: Callable[[], Any]) -> tuple[Any, float]:
        """``programs[key]``, built, kept (and its seconds counted as compilation) if missing."""
        program = programs.get(key)
        if program is not None:
            return program, 0.0
        t = time.perf_counter()
        program = programs[key] = build()
        seconds = time.perf_counter() - t
        self.compile_seconds += seconds
        return program, seconds

    def _build_stage(
        self, key: tuple, state: TrainState, images: jax.Array, labels: jax.Array
    ) -> tuple[Any, Any]:
        """The stage's compiled (gradient, update) programs (the gradient one kept process-wide)."""
        mask, bn_key, from_features = key
        _check_mask(state.params, mask)
        grad_key = (
            self.model,
            self.multilabel,
            jnp.dtype(self.compute_dtype),
            self.mesh,
            key,
            _shapes((state.params, state.batch_stats, images, labels)),
        )
        grad = _GRAD_PROGRAMS.get(grad_key)
        if grad is None:
            grad = self._lower_grad(state, images, labels, mask, bn_key, from_features).compile()
            _GRAD_PROGRAMS[grad_key] = grad
        update = self._lower_update(state, grad.out_info[1], mask).compile()
        self._compiled += 1
        return grad, update

    def train_step(
        self,
        state: TrainState,
        images: jax.Array,
        labels: jax.Array,
        *,
        trainable: PyTree,
        bn_train: BNTrain,
        from_features: bool = False,
    ) -> tuple[TrainState, jax.Array]:
        """One update; ``trainable`` (a bool pytree like the params) is the stage's mask.

        Frozen parameters are passed through untouched (bit-identical), and
        get no gradient computation at all. ``state`` is donated (its trained
        parameters, optimizer state and step are rewritten in place).
        ``from_features``: ``images`` are the backbone's features of the
        batch (``model(..., part='backbone')``) and only the head runs; the
        update is the one the images would give when only the head trains.
        """
        key = _stage_key(trainable, bn_train, from_features)  # once per step: walks the mask
        grad, update = self._stage_programs(key, state, images, labels)[0]
        loss, grads, changed = grad(
            state.params, state.batch_stats, state.step, images, labels, self._hyper["rng"]
        )
        mask = key[0]
        trained, frozen, treedef = _split(state.params, mask)
        trained, opt_state, step = update(
            trained, frozen, state.opt_state, state.step, grads, self._hyper.get("lr")
        )
        new_state = state.replace(
            step=step,
            params=_merge(treedef, mask, trained, frozen),
            batch_stats=_with_changed(state.batch_stats, changed),
            opt_state=opt_state,
        )
        return new_state, loss

    def compile_head_steps(
        self,
        state: TrainState,
        features: jax.Array,
        labels: jax.Array,
        *,
        trainable: PyTree,
        bn_train: BNTrain,
    ) -> float:
        """Compiles :meth:`head_steps` for these shapes ahead of time; its seconds (0 if done)."""
        return self._head_program(state, features, labels, trainable, bn_train)[1]

    def head_steps(
        self,
        state: TrainState,
        features: jax.Array,
        labels: jax.Array,
        *,
        trainable: PyTree,
        bn_train: BNTrain,
    ) -> tuple[TrainState, jax.Array]:
        """Head-only train steps from cached features, one per leading row, in one program.

        ``features`` and ``labels`` stack a step's batch per row
        (:meth:`shard_steps`). Each step is :meth:`train_step`'s with
        ``from_features=True`` (the same loss, gradient and update, in
        order); returns the new state and the steps' losses. Why one
        program: a head step computes almost nothing, so one dispatch per
        step (two programs and every parameter passed) cost a cached LP
        epoch as much as a tenth of an FT epoch on a GPU; a scan over the
        steps pays that once. ``state`` is donated.
        """
        program, _, mask = self._head_program(state, features, labels, trainable, bn_train)
        args, treedef = self._head_args(state, features, labels, mask)
        trained, opt_state, step, losses = program(*args)
        params = _merge(treedef, mask, trained, args[1])
        return state.replace(step=step, params=params, opt_state=opt_state), losses

    def _head_args(
        self, state: TrainState, features: jax.Array, labels: jax.Array, mask: tuple[bool, ...]
    ) -> tuple[tuple, Any]:
        """:meth:`_scan_head`'s arguments (the frozen leaves second), and the params' treedef."""
        trained, frozen, treedef = _split(state.params, mask)
        rng, lr = self._hyper["rng"], self._hyper.get("lr")
        args = (trained, frozen, state.batch_stats, state.opt_state, state.step)
        return (*args, features, labels, rng, lr), treedef

    def _head_program(
        self, state: TrainState, features: Any, labels: Any, trainable: PyTree, bn_train: BNTrain
    ) -> tuple[Any, float, tuple[bool, ...]]:
        """:meth:`head_steps`' program for these shapes, its compile seconds, and the mask."""
        mask, bn_key, _ = _stage_key(trainable, bn_train, True)
        key = mask, bn_key, _shapes((state.params, state.batch_stats, features, labels))
        build = functools.partial(self._build_head_steps, key, state, features, labels)
        return (*self._built(self._head_programs, key, build), mask)

    def _build_head_steps(
        self, key: tuple, state: TrainState, features: jax.Array, labels: jax.Array
    ) -> Any:
        mask, bn_key, _ = key
        _check_mask(state.params, mask)
        args, treedef = self._head_args(state, features, labels, mask)
        r, s = self.replicated, self.steps_sharding
        jitted = jax.jit(
            functools.partial(self._scan_head, mask=mask, bn_train=bn_key, treedef=treedef),
            in_shardings=(r, r, r, r, r, s, s, r, r),
            out_shardings=r,
            donate_argnums=(0, 3, 4),  # the trained leaves, optimizer state and step
        )
        program = jitted.lower(*args).compile()
        self._compiled += 1
        return program

    def _scan_head(
        self,
        trained: list[jax.Array],
        frozen: list[jax.Array],
        batch_stats: PyTree,
        opt_state: PyTree,
        step: jax.Array,
        features: jax.Array,
        labels: jax.Array,
        rng_data: jax.Array,
        lr: jax.Array | None,
        *,
        mask: tuple[bool, ...],
        bn_train: BNTrain,
        treedef: Any,
    ) -> tuple[list[jax.Array], PyTree, jax.Array, jax.Array]:
        """:meth:`_grads` then :meth:`_update`, once per row of ``features``."""

        def one(carry, batch):
            trained, opt_state, step = carry
            params = _merge(treedef, mask, trained, frozen)
            loss, grads, changed = self._grads(
                params,
                batch_stats,
                step,
                *batch,
                rng_data,
                mask=mask,
                bn_train=bn_train,
                from_features=True,
            )
            if any(c is not None for c in changed):
                raise ValueError("a head-only step changed BatchNorm statistics")
            carry = self._update(
                trained, frozen, opt_state, step, grads, lr, mask=mask, treedef=treedef
            )
            return carry, loss

        (trained, opt_state, step), losses = jax.lax.scan(
            one, (trained, opt_state, step), (features, labels)
        )
        return trained, opt_state, step, losses

    def estimate_rgn(
        self,
        state: TrainState,
        batches,
        *,
        trainable: PyTree,
        bn_train: BNTrain,
        prepass: Prepass,
    ) -> TrainState:
        """Auto-RGN's prepass: ``state`` holding the multipliers of ``batches``' mean RGN.

        Each batch (``image``, ``label``; this process's rows) gets one
        gradient evaluation on ``state``'s weights through the stage's own
        gradient program (no extra compilation of the model); the new
        BatchNorm statistics are dropped and nothing is updated, so only the
        optimizer state's held multipliers change. Frozen tensors count with
        a zero gradient. ``state`` is not donated.
        """
        key = _stage_key(trainable, bn_train, False)
        mask = key[0]
        total, n = None, 0
        for batch in batches:
            x, y = self.shard_batch(batch["image"]), self.shard_batch(batch["label"])
            _, grads, _ = self._stage_programs(key, state, x, y)[0][0](
                state.params, state.batch_stats, state.step, x, y, self._hyper["rng"]
            )
            if total is None:
                total = jax.device_put(np.zeros(len(mask), np.float32), self.replicated)
            args = (grads, state.params, total)
            total = self._program(_rgn_sum, args, mask=mask, eps=prepass.eps)(*args)
            n += 1
        if n == 0:
            raise ValueError("estimate_rgn: no batches")
        args = (state.opt_state, total)
        return state.replace(opt_state=self._program(_hold, args, n=n)(*args))

    def state_finite(self, state: TrainState) -> bool:
        """Whether every parameter and BatchNorm statistic of ``state`` is finite.

        The training loss does not say it: on XLA's CPU backend a reduction fused with a
        ``maximum`` (ReLU before the global average pool, a max pool) drops NaN, so a
        backbone whose weights became NaN can give finite logits and a finite loss (VGG-19
        in training: no BatchNorm spreads the NaN first), and the run would go on training
        a head on zeros. One reduction on the device."""
        args = ((state.params, state.batch_stats),)
        out = self._program(_all_finite, args, programs=_CHECK_PROGRAMS)(*args)
        return bool(np.asarray(out.addressable_data(0)))

    def _program(self, fn: Any, args: tuple, programs: dict | None = None, **static: Any) -> Any:
        """``fn`` compiled for ``args`` and ``static``, its compilation counted as such, kept
        in ``programs`` (the prepass's, by default)."""
        key = (fn, self.mesh, tuple(sorted(static.items())), _shapes(args))

        def build() -> Any:
            return fn.lower(*args, **static).compile()

        return self._built(_PREPASS_PROGRAMS if programs is None else programs, key, build)[0]

    def _lower_grad(
        self,
        state: TrainState,
        images: jax.Array,
        labels: jax.Array,
        mask: tuple[bool, ...],
        bn_train: BNTrain,
        from_features: bool = False,
    ) -> jax.stages.Lowered:
        r, b = self.replicated, self.batch_sharding
        jitted = jax.jit(
            functools.partial(
                self._grads, mask=mask, bn_train=bn_train, from_features=from_features
            ),
            in_shardings=(r, r, r, b, b, r),
            out_shardings=(r, r, r),
        )
        return jitted.lower(
            state.params, state.batch_stats, state.step, images, labels, self._hyper["rng"]
        )

    def _lower_update(
        self, state: TrainState, grads: Any, mask: tuple[bool, ...]
    ) -> jax.stages.Lowered:
        trained, frozen, treedef = _split(state.params, mask)
        jitted = jax.jit(
            functools.partial(self._update, mask=mask, treedef=treedef),
            in_shardings=self.replicated,
            out_shardings=self.replicated,
            # The trained leaves, optimizer state and step are rewritten in
            # place; frozen leaves are read-only inputs and never copied.
            donate_argnums=(0, 2, 3),
        )
        return jitted.lower(
            trained, frozen, state.opt_state, state.step, grads, self._hyper.get("lr")
        )

    def _grads(
        self,
        params: PyTree,
        batch_stats: PyTree,
        step: jax.Array,
        images: jax.Array,
        labels: jax.Array,
        rng_data: jax.Array,
        *,
        mask: tuple[bool, ...],
        bn_train: BNTrain,
        from_features: bool = False,
    ) -> tuple[jax.Array, list[jax.Array], list[jax.Array | None]]:
        """Loss, gradients of the trained leaves (in leaf order), changed BatchNorm statistics.

        The statistics come back as a list over ``batch_stats``' leaves
        holding only those the step changed (None for the rest; see
        :func:`_changed`): a frozen BatchNorm, or a head-only step from
        cached features, returns none. Returning the unchanged ones made the
        program copy every statistic every step, which cost a cached LP
        step most of its time (106 copies for ResNet-50).

        Depends on the model, the trainable set and the BatchNorm mode
        only, not on the strategy's optimizer, so trainers of different
        strategies share it (it is the expensive program to compile).
        """
        trained, frozen, treedef = _split(params, mask)
        rng = jax.random.fold_in(jax.random.wrap_key_data(rng_data), step)
        part = "head" if from_features else "all"
        x = _model_input(images, part, self.compute_dtype)

        def loss_fn(trained_leaves):
            merged = _merge(treedef, mask, trained_leaves, frozen)
            logits, new_vars = self.model.apply(
                {"params": merged, "batch_stats": batch_stats},
                x,
                bn_train=bn_train,
                deterministic=False,
                rngs={"dropout": rng},
                mutable=["batch_stats"],
                **_part_kwargs(part),
            )
            return classification_loss(logits, labels, self.multilabel), new_vars

        (loss, new_vars), grads = jax.value_and_grad(loss_fn, has_aux=True)(trained)
        return loss, grads, _changed(batch_stats, new_vars.get("batch_stats", {}))

    def _update(
        self,
        trained: list[jax.Array],
        frozen: list[jax.Array],
        opt_state: PyTree,
        step: jax.Array,
        grads: list[jax.Array],
        lr: jax.Array | None,
        *,
        mask: tuple[bool, ...],
        treedef: Any,
    ) -> tuple[list[jax.Array], PyTree, jax.Array]:
        """The strategy's optimizer applied to the trained leaves' gradients.

        Returns only the trained leaves: frozen ones keep their buffers
        (and their exact bits) without a copy.
        """
        params = _merge(treedef, mask, trained, frozen)
        zeros = [jnp.zeros_like(p) for p in frozen]
        full_grads = _merge(treedef, mask, grads, zeros)
        updates, opt_state = self.tx.update(full_grads, opt_state, params)
        if lr is not None:
            updates = jax.tree.map(lambda u: u * lr.astype(u.dtype), updates)
        new_params = optax.apply_updates(params, updates)
        new_trained, _, _ = _split(new_params, mask)
        return new_trained, opt_state, step + 1

    # -- eval ----------------------------------------------------------------

    def _eval(self, variables: PyTree, images: jax.Array, part: str = "all") -> jax.Array:
        x = _model_input(images, part, self.compute_dtype)
        out = self.model.apply(variables, x, **_part_kwargs(part))
        # Features are stored in float32 (exact for bf16 compute). Logits, not
        # probabilities: float32 rounds a probability to 1.0 past a margin of 16.6, and the
        # host makes them in float64 (medft_jax.metrics.scores_from_logits).
        return out.astype(jnp.float32)

    def compile_eval(self, state: TrainState, images: jax.Array, part: str = "all") -> float:
        """Compiles the eval step for batches shaped like ``images``; its seconds (0 if done).

        Ahead of time, so that its cost is counted as compilation, not as
        the epoch's time (records report the two apart). ``part``: what the
        step computes (:data:`medft_jax.models.layers.PARTS`): logits
        from images (``'all'``) or from features (``'head'``), or the
        features themselves (``'backbone'``).
        """
        key = (images.shape, images.dtype, part)
        if key in self._eval_steps:
            return 0.0
        t = time.perf_counter()
        lowered = self._eval_step.lower(state.variables, images, part=part)
        self._eval_steps[key] = lowered.compile()
        seconds = time.perf_counter() - t
        self.compile_seconds += seconds
        return seconds

    def predict(self, state: TrainState, batches, *, from_features: bool = False) -> np.ndarray:
        """The head's float32 logits for every real (unmasked) example of ``batches``, in
        order (:func:`medft_jax.metrics.scores_from_logits` makes them probabilities).

        ``batches`` yield this process's rows (``image``, ``mask``); with
        several processes the rows of all of them are gathered, in process
        order, which is the order the data pipeline's shards come in.
        ``from_features``: the batches' ``image`` are backbone features.
        """
        return self._map(state, batches, "head" if from_features else "all")

    def features(self, state: TrainState, batches) -> Iterator[np.ndarray]:
        """The backbone's float32 features of every real example of ``batches``, batch by batch.

        Inference mode (BatchNorm running statistics, no dropout): what the
        backbone computes in a train step when it is frozen under
        ``frozen_bn='freeze'``.
        """
        yield from self._outputs(state, batches, "backbone")

    def _map(self, state: TrainState, batches, part: str) -> np.ndarray:
        out = list(self._outputs(state, batches, part))
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def _outputs(self, state: TrainState, batches, part: str) -> Iterator[np.ndarray]:
        """Each batch's outputs for its real rows, read one batch late: the device computes
        batch k + 1 while the host takes batch k's (reading each at once left it idle while
        the host fetched, uploaded and sent the next)."""
        pending = None
        for batch in batches:
            x = self.shard_batch(batch["image"])
            self.compile_eval(state, x, part)
            y = self._eval_steps[(x.shape, x.dtype, part)](state.variables, x)
            if y.is_fully_addressable:
                y.copy_to_host_async()
            if pending is not None:
                yield _real_rows(*pending)
            pending = (y, batch["mask"])
        if pending is not None:
            yield _real_rows(*pending)


def _check_rate(tx: optax.GradientTransformation, learning_rate: float | None) -> None:
    """A trainer's own rate is a finite number > 0, multiplying a ``tx`` built at rate 1:
    ``make(..., learning_rate=1e-3)`` with ``Trainer(learning_rate=1e-3)`` trained at 1e-6."""
    if learning_rate is None:
        return
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float, np.number)):
        raise ValueError(
            f"Trainer: learning_rate must be a number (a step argument; a schedule belongs "
            f"in tx), got {type(learning_rate).__name__} {learning_rate!r}"
        )
    if not (math.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(
            f"Trainer: learning_rate must be a finite number > 0, got {learning_rate!r}"
        )
    built = built_learning_rate(tx)
    if built is not None and not (is_concrete_number(built) and float(built) == 1.0):
        raise ValueError(
            f"Trainer: learning_rate {learning_rate!r} multiplies every update, and tx was built "
            f"by make() with learning_rate {built!r}: the run would train at their product; "
            "build tx with learning_rate=1.0, or give the Trainer no learning_rate"
        )


def _hyper(seed: int, learning_rate: float | None, sharding: NamedSharding) -> dict[str, Any]:
    """The step's runtime arguments: the dropout key's data and the learning rate."""
    hyper = {"rng": jax.random.key_data(jax.random.key(seed))}
    if learning_rate is not None:
        hyper["lr"] = jnp.asarray(learning_rate, jnp.float32)
    return jax.device_put(hyper, sharding)


class StagePrograms(NamedTuple):
    """A stage's train step as XLA gets it: the gradient program, then the update program."""

    grad: jax.stages.Lowered
    update: jax.stages.Lowered

    def as_text(self) -> str:
        return self.grad.as_text() + "\n" + self.update.as_text()


@functools.partial(jax.jit, static_argnames=("mask", "eps"))
def _rgn_sum(
    grads: list[jax.Array], params: PyTree, total: jax.Array, *, mask: tuple[bool, ...], eps: float
) -> jax.Array:
    """``total`` plus every tensor's RGN (frozen tensors: a zero gradient).

    Module-level, not a method: a sweep's runs (``Trainer.with_hyper`` copies)
    then share one compiled program per stage.
    """
    _, frozen, treedef = _split(params, mask)
    full = _merge(treedef, mask, grads, [jnp.zeros_like(p) for p in frozen])
    return total + rgn_vector(full, params, eps)


@jax.jit
def _all_finite(tree: PyTree) -> jax.Array:
    """True where every float leaf of ``tree`` is finite (:meth:`Trainer.state_finite`)."""
    flags = [
        jnp.isfinite(x).all() for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    return jnp.stack(flags).all() if flags else jnp.bool_(True)


@functools.partial(jax.jit, static_argnames=("n",))
def _hold(opt_state: PyTree, total: jax.Array, *, n: int) -> PyTree:
    return hold_multipliers(opt_state, total / n)


_GRAD_PROGRAMS: dict[tuple, Any] = {}
"""Compiled gradient programs of this process, keyed by model, stage and shapes."""
_PREPASS_PROGRAMS: dict[tuple, Any] = {}
_CHECK_PROGRAMS: dict[tuple, Any] = {}
"""The epoch-end finiteness check's programs (:meth:`Trainer.state_finite`), by state shape."""
"""Compiled Auto-RGN prepass programs (:func:`_rgn_sum`, :func:`_hold`), as above."""


def _both(variables: Mapping[str, PyTree]) -> dict[str, PyTree]:
    """``{'params', 'batch_stats'}`` (VGG has no BatchNorm: empty statistics)."""
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def _shapes(tree: PyTree) -> tuple:
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((tuple(x.shape), jnp.dtype(x.dtype)) for x in leaves)


def _changed(old: PyTree, new: PyTree) -> list[jax.Array | None]:
    """``new``'s leaves that are not ``old``'s own (traced) leaves; None where unchanged.

    Decided while tracing, by identity: a BatchNorm that did not update
    hands back the very array it was given. ``new`` is either empty (the
    model wrote no statistics: a head-only step) or shaped like ``old``.
    """
    old_leaves, treedef = jax.tree.flatten(old)
    if not jax.tree.leaves(new):
        return [None] * len(old_leaves)
    new_leaves, new_def = jax.tree.flatten(new)
    if new_def != treedef:
        raise ValueError(f"new BatchNorm statistics {new_def} are not shaped like {treedef}")
    return [None if n is o else n for o, n in zip(old_leaves, new_leaves, strict=True)]


def _with_changed(old: PyTree, changed: list[jax.Array | None]) -> PyTree:
    """``old`` with :func:`_changed`'s new leaves put in (the inverse of it)."""
    if all(c is None for c in changed):
        return old
    leaves, treedef = jax.tree.flatten(old)
    return treedef.unflatten([o if c is None else c for o, c in zip(leaves, changed, strict=True)])


def _split(params: PyTree, mask: tuple[bool, ...]) -> tuple[list, list, Any]:
    """The trained leaves, the frozen leaves (each in leaf order) and the tree's structure."""
    leaves, treedef = jax.tree.flatten(params)
    trained = [p for p, m in zip(leaves, mask, strict=True) if m]
    frozen = [p for p, m in zip(leaves, mask, strict=True) if not m]
    return trained, frozen, treedef


def _merge(treedef: Any, mask: tuple[bool, ...], trained: list, frozen: list) -> PyTree:
    """The inverse of :func:`_split`."""
    t, f = iter(trained), iter(frozen)
    return treedef.unflatten([next(t) if m else next(f) for m in mask])


def _check_mask(params: PyTree, mask: tuple[bool, ...]) -> None:
    n = len(jax.tree.leaves(params))
    if n != len(mask):
        raise ValueError(f"trainable mask has {len(mask)} leaves, params have {n}")


def _stage_key(
    trainable: PyTree, bn_train: BNTrain, from_features: bool
) -> tuple[tuple[bool, ...], BNTrain, bool]:
    mask = tuple(bool(m) for m in jax.tree.leaves(trainable))
    return mask, bn_train if isinstance(bn_train, bool) else frozenset(bn_train), from_features


def _part_kwargs(part: str) -> dict[str, str]:
    """``part`` for the model only when it is not the whole model.

    A model of the user's own that knows no ``part`` argument still trains
    here; only the cached-feature stages (which the toolkit's models
    support) need it.
    """
    return {} if part == "all" else {"part": part}


def _model_input(x: jax.Array, part: str, dtype: Any) -> jax.Array:
    """Images are normalised for the backbone; features go to the head as they are."""
    return x.astype(dtype) if part == "head" else normalize(x, dtype)


def _real_rows(y: jax.Array, mask: Any) -> np.ndarray:
    """``y``'s rows of real examples, every process's, in process order."""
    return _gather(y)[_gather_host(np.asarray(mask))]


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


def diverged_hint(precision: str) -> str:
    """What to try when a run's numbers became NaN or infinite: ``--precision fp32`` is
    named only where the run computed in another precision (it is the default)."""
    return "try a smaller --lr" + (" or --precision fp32" if precision != "fp32" else "")


def check_finite(loss: float, *, step: int, epoch: int, precision: str = "fp32") -> None:
    """Raises :class:`NonFiniteLossError` naming the step and epoch (``epoch`` counted from
    0, as records do; said from 1, as the progress lines say it)."""
    if not math.isfinite(loss):
        raise NonFiniteLossError(
            f"training loss became {loss} at step {step} (epoch {epoch + 1}); "
            + diverged_hint(precision),
            step=step,
        )
