"""Auto-RGN: each tensor's update scaled by its normalised relative gradient norm.

Lee et al. (2023, "Surgical fine-tuning") give each parameter tensor the
learning rate lr × RGN / max RGN, with RGN = ‖g‖₂/‖w‖₂: tensors whose
gradient is large relative to their weights (the layers that need to move
for this task) train fastest. Under Adam a per-tensor learning rate is the
same as scaling that tensor's Adam update, so :func:`scale_by_rgn` wraps an
inner transformation (Adam) and multiplies its updates, computing RGN from
the raw gradients it receives (scaling the gradients *before* Adam would
cancel out in Adam's normalisation).

Reference semantics (the authors' code: RGN averaged over the first 5
batches of each epoch and held for the epoch), run as a stream inside the
jitted update: during the first ``estimate_steps`` steps of epoch e the
transform accumulates each tensor's RGN while applying epoch e−1's
multipliers (in epoch 0: the current step's own normalised RGN); from the
next step on it applies the mean of those RGNs, normalised by their
maximum, until epoch e ends. ``per_step=True`` applies every step's own
normalised RGN instead.

A tensor whose ‖w‖ is 0 (at most ``eps``: a fresh zero bias, or BatchNorm
biases trained from scratch) has no defined RGN: :func:`relative_gradient_norms`
gives it ``inf``. Dividing by a floor instead would make its RGN ~‖g‖/1e-8,
the maximum by seven orders of magnitude, and every other tensor's
multiplier ~1e-8: one zero bias would freeze the network for an epoch.
So in every mode (stream, per-step, prepass) :func:`normalise_by_max`
gives an ``inf`` RGN the multiplier 1 and leaves it out of the maximum
that normalises the others (all ones if every tensor is zero-norm). In the
stream's averaged estimate the decision comes from the accumulated values:
a tensor that was zero-norm at any of the epoch's estimation steps sums to
``inf`` and gets 1 for the epoch (a prepass sees one set of weights, so
there the two readings agree).

That covers a zero tensor's first step only. A new head whose bias starts
at zero (flax's ``nn.Dense`` default) has a tiny norm after one update, so
its RGN ‖g‖/‖w‖ becomes the maximum and shrinks every other multiplier for
the epochs that follow (the reference, PyTorch, draws a new Linear's bias
uniformly, as :func:`medft_jax.models.layers.torch_linear_bias` does). So
``init`` warns, naming the zero tensors, when the params it is given are
concrete.

``mode="prepass"`` is the reference code's own order: before epoch e's
first update, the gradients of ``estimate_steps`` batches are evaluated on
the current weights without updating anything, and their mean RGN,
normalised, is held for the whole of epoch e (epoch 0 included). A
transform cannot evaluate gradients itself, so the training loop does it
(:meth:`medft_jax.train.Trainer.estimate_rgn`; in other code:
:func:`rgn_vector` per batch, then :func:`hold_multipliers`); the transform
applies what it was given. It costs ``estimate_steps`` extra gradient
evaluations per epoch; the stream costs none, and differs only in which
weights the estimate is taken on (the epoch's first steps rather than the
weights before them).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from medft_jax.models.blocks import path_str
from medft_jax.strategies.checks import is_concrete_number, require_int

PyTree = Any
RGN_MODES = ("stream", "prepass")


class RGNState(NamedTuple):
    """Step count, running RGN sum, held and last-applied multipliers, inner state."""

    count: jax.Array
    """Updates made so far (int32); with ``steps_per_epoch`` it gives epoch and step in epoch."""
    accumulated: jax.Array
    """Per tensor, in leaf order (a vector): RGN summed over this epoch's estimation steps
    (``inf`` for a tensor that was zero-norm at one of them: it gets multiplier 1)."""
    held: jax.Array
    """Per tensor, in leaf order (a vector): the multipliers of the last finished estimate."""
    applied: PyTree
    """Per tensor (a scalar per leaf): the multipliers applied by the last update (for logging)."""
    inner_state: optax.OptState


class PrepassRGNState(RGNState):
    """The state of a ``mode="prepass"`` Auto-RGN: the one :func:`hold_multipliers` fills.

    The same fields (and checkpoint layout) as :class:`RGNState`; its own type so that
    holding multipliers on a stream-mode state, which estimates its own and would
    overwrite them, is refused rather than ignored.
    """


@dataclasses.dataclass(frozen=True)
class Prepass:
    """What the training loop does before each epoch of a ``mode="prepass"`` Auto-RGN.

    Evaluate the loss gradients of the epoch's first ``batches`` batches on
    the current weights, update nothing (parameters, BatchNorm statistics,
    optimizer state), and hold the mean RGN's normalised multipliers for the
    epoch (:func:`hold_multipliers`).
    """

    batches: int = 5
    eps: float = 1e-8


def relative_gradient_norms(grads: PyTree, params: PyTree, eps: float = 1e-8) -> PyTree:
    """Per tensor ‖g‖₂ / ‖w‖₂ as float32 scalars; ``inf`` where ‖w‖₂ <= ``eps``.

    ``inf`` marks an undefined RGN (a zero-norm tensor), whatever its
    gradient (0/0 included: no NaN), so :func:`normalise_by_max` can give it
    the multiplier 1 without letting it set the others' scale.
    """

    def rgn(g: jax.Array, w: jax.Array) -> jax.Array:
        gn = jnp.sqrt(jnp.sum(jnp.square(jnp.abs(g).astype(jnp.float32))))  # abs: complex
        wn = jnp.sqrt(jnp.sum(jnp.square(jnp.abs(w).astype(jnp.float32))))
        zero = wn <= eps
        return jnp.where(zero, jnp.inf, gn / jnp.where(zero, 1.0, wn))

    return jax.tree.map(rgn, grads, params)


def normalise_by_max(values: PyTree) -> PyTree:
    """Divides every scalar leaf by the maximum over the finite leaves.

    An ``inf`` leaf (a zero-norm tensor's undefined RGN) maps to 1 and is
    left out of the maximum, so it cannot shrink the others; if every leaf
    is ``inf``, or the finite maximum is 0, all map to 1. The maximum maps
    to exactly 1 and the rest are clipped to 1: XLA may divide by
    multiplying with a reciprocal, a rounding error off. The leaves are stacked
    behind an optimisation barrier: without it XLA fuses every tensor's norm
    reduction into every consumer of the maximum, which made compiling
    Auto-RGN's step for ResNet-50 take over a minute on a CPU (3 s with it).
    """
    leaves, treedef = jax.tree.flatten(values)
    if not leaves:
        return values
    return jax.tree.unflatten(treedef, list(_normalise(_stack(leaves))))


def rgn_vector(grads: PyTree, params: PyTree, eps: float = 1e-8) -> jax.Array:
    """Every tensor's RGN, in leaf order, as one float32 vector (what a prepass sums).

    A zero-norm tensor's ``inf`` survives the prepass's sum and mean, so
    :func:`hold_multipliers` gives it 1 (see :func:`normalise_by_max`).
    """
    return _stack(jax.tree.leaves(relative_gradient_norms(grads, params, eps)))


def hold_multipliers(opt_state: PyTree, mean_rgn: jax.Array) -> PyTree:
    """``opt_state`` with every :class:`RGNState` holding ``mean_rgn`` normalised by its max.

    ``mean_rgn`` is the prepass's mean of :func:`rgn_vector` over its
    batches (``opt_state`` may be a ``flax.nnx.Optimizer``'s ``opt_state``: its
    variable is set in place). A ``mode="prepass"`` transform applies the held multipliers
    from its next update on (NaN updates until the first call: a loop that
    never holds fails loudly rather than training plain Adam).
    """
    found = []
    mean_rgn = jnp.asarray(mean_rgn)  # a list or numpy vector as well
    _check_rgns(mean_rgn)

    def hold(node: Any) -> Any:
        if not isinstance(node, RGNState):
            return node
        if not isinstance(node, PrepassRGNState):
            raise ValueError(
                "hold_multipliers: this Auto-RGN state is mode='stream', which estimates its "
                "own multipliers and would overwrite held ones; build scale_by_rgn(..., "
                "mode='prepass') (make(..., rgn_mode='prepass')) to hold a prepass's"
            )
        if node.held.shape != mean_rgn.shape:
            raise ValueError(
                f"hold_multipliers: mean_rgn must be a vector of shape {node.held.shape} (one "
                f"RGN per tensor, as rgn_vector gives), got shape {mean_rgn.shape}"
            )
        found.append(node)
        held = _normalise(mean_rgn.astype(jnp.float32))
        if hasattr(node.held, "value") and not isinstance(node.held, (jax.Array, np.ndarray)):
            node.held.value = held  # flax.nnx's Optimizer keeps its state in variables
            return node
        return node._replace(held=held)

    new = jax.tree.map(hold, opt_state, is_leaf=lambda n: isinstance(n, RGNState))
    if not found:
        raise ValueError("hold_multipliers: the optimizer state has no Auto-RGN state")
    return new


def _check_rgns(mean_rgn: jax.Array) -> None:
    """Refuses a concrete mean RGN holding NaN (a non-finite gradient in the prepass) or a
    negative value: normalised, a NaN made every multiplier 1 (plain Adam under Auto-RGN's
    name) and a negative one ascended the loss. Traced, :func:`_normalise` gives NaN."""
    if isinstance(mean_rgn, jax.core.Tracer):
        return
    values = np.asarray(mean_rgn, dtype=np.float64)
    bad = np.flatnonzero(np.isnan(values) | (values < 0))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"hold_multipliers: mean_rgn[{i}] is {values.flat[i]} ({bad.size} such); an RGN is "
            ">= 0 (inf: a zero-norm tensor), and a NaN comes from a non-finite gradient in "
            "the prepass's batches"
        )


ZERO_TENSORS_WARNING = "scale_by_rgn: parameter "
"""How :func:`warn_zero_tensors`' warning begins (to filter it where it is expected)."""


def warn_zero_tensors(params: PyTree, eps: Any, stacklevel: int = 3) -> None:
    """Warns when tensors of concrete ``params`` have norm <= ``eps`` (module doc: after
    one update their RGN would set the maximum). Traced params are not checked, nor
    empty tensors (no update can make them the maximum)."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    concrete = all(
        isinstance(w, (jax.Array, np.ndarray))
        and not isinstance(w, jax.core.Tracer)
        and getattr(w, "is_fully_addressable", True)
        for _, w in leaves
    )  # not traced, nor shapes alone (jax.ShapeDtypeStruct, as make is given in planning)
    if not leaves or not concrete or not is_concrete_number(eps):
        return
    # On the host, in numpy: op by op on the device it compiled a program per tensor shape
    # (50 for ResNet-50, 134 for DenseNet-121, each too quick for the persistent cache, so
    # every process paid them again) and uploaded host params whole; and numpy gives
    # concrete norms inside a trace too (``make`` under ``inject_hyperparams``, jitted).
    norms = [float(np.linalg.norm(np.asarray(w, dtype=np.float32).ravel())) for _, w in leaves]
    zero = [path_str(p) for (p, w), n in zip(leaves, norms, strict=True) if n <= eps and w.size]
    if zero:
        more = f" and {len(zero) - 1} more are" if len(zero) > 1 else " is"
        warnings.warn(
            f"{ZERO_TENSORS_WARNING}{zero[0]!r}{more} all zeros at init; after one "
            "update its RGN (|g|/|w| with a tiny |w|) will be the maximum that scales every "
            "other tensor down (for a new head's bias, initialise it as PyTorch does: "
            "medft_jax.models.layers.torch_linear_bias)",
            stacklevel=stacklevel,
        )


def _stack(leaves: list[jax.Array]) -> jax.Array:
    if not leaves:  # a group with no tensors (an optax.partition label this model lacks)
        return jnp.zeros((0,), jnp.float32)
    return jax.lax.optimization_barrier(jnp.stack(leaves))


def _normalise(v: jax.Array) -> jax.Array:
    """RGNs -> multipliers: v / max over finite v, clipped to 1; 1 for ``inf`` (see above).

    A NaN or negative RGN (no RGN: a non-finite gradient) makes every multiplier NaN, so
    the updates fail loudly: the NaN maximum read as "no finite RGN" gave 1 everywhere,
    plain Adam without a word.
    """
    undefined = jnp.isposinf(v)
    top = jnp.max(jnp.where(undefined, 0.0, v), initial=0.0)  # RGNs are >= 0; none: 0
    safe = jnp.where(top > 0, top, 1.0)
    out = jnp.where(~undefined & (top > 0) & (v < top), jnp.minimum(v / safe, 1.0), 1.0)
    invalid = jnp.any(jnp.isnan(v) | (v < 0))
    return jnp.where(invalid, jnp.nan, out)


def scale_by_rgn(
    inner: optax.GradientTransformation,
    steps_per_epoch: int | None = None,
    *,
    estimate_steps: int = 5,
    mode: str = "stream",
    per_step: bool = False,
    eps: float = 1e-8,
    warn_zero_norm: bool = True,
) -> optax.GradientTransformationExtraArgs:
    """Multiplies ``inner``'s update of each tensor by its normalised RGN.

    Args:
      inner: the optimizer whose updates are scaled (e.g. ``optax.adam(lr)``).
        Extra keyword arguments of ``update`` (e.g. ``value`` for
        ``optax.contrib.reduce_on_plateau``) are passed on to it.
      steps_per_epoch: updates per epoch; required unless ``per_step``.
      estimate_steps: batches at the start of each epoch whose RGN is
        averaged (the reference uses 5); capped at ``steps_per_epoch``.
        Under ``mode="prepass"`` the loop's :class:`Prepass` holds the count.
      mode: ``"stream"`` (estimate from the epoch's first updates, no extra
        passes) or ``"prepass"`` (apply the multipliers that
        :func:`hold_multipliers` set before the epoch, as the reference
        code does). Until the first :func:`hold_multipliers` a prepass
        transform's updates are NaN: never held, it would be plain ``inner``
        under Auto-RGN's name, without a word (hold before every epoch).
      per_step: apply each step's own normalised RGN instead (stream only).
      eps: a tensor with ‖w‖ <= eps counts as zero-norm: its RGN is
        undefined and its multiplier 1, outside the others' maximum.
      warn_zero_norm: warn at ``init`` of concrete params holding a zero-norm
        tensor (:func:`warn_zero_tensors`); False where the caller checked them
        already (:func:`medft_jax.strategies.make` does, when it is given the params,
        so a ``jax.jit``-ed ``init``, whose params are traced, still hears of it).

    The update needs ``params``: ``tx.update(grads, state, params)``.
    Range checks run on Python/numpy numbers only, so the numeric arguments
    may be injected (``optax.inject_hyperparams``, with ``inner`` static)
    and traced under ``jit``.
    """
    if mode not in RGN_MODES:
        raise ValueError(f"scale_by_rgn: mode must be one of {RGN_MODES}, got {mode!r}")
    prepass = mode == "prepass"
    if prepass and per_step:
        raise ValueError("scale_by_rgn: per_step=True is a stream variant, not a prepass one")
    streams = not per_step and not prepass
    if streams:
        if steps_per_epoch is None:
            raise ValueError(
                "scale_by_rgn: steps_per_epoch must be >= 1 (got None) unless per_step=True"
            )
        if not isinstance(steps_per_epoch, jax.Array):
            require_int("scale_by_rgn", "steps_per_epoch", steps_per_epoch, 1)
        if not isinstance(estimate_steps, jax.Array):
            require_int("scale_by_rgn", "estimate_steps", estimate_steps, 1)
    if is_concrete_number(eps) and not eps >= 0:
        raise ValueError(f"scale_by_rgn: eps must be >= 0, got {eps!r}")
    if not streams:
        k: Any = 1
    elif isinstance(estimate_steps, jax.Array) or isinstance(steps_per_epoch, jax.Array):
        k = jnp.minimum(estimate_steps, steps_per_epoch)  # injected: known only when traced
    else:
        k = min(int(estimate_steps), int(steps_per_epoch))
    spe = 1 if steps_per_epoch is None else steps_per_epoch
    inner = optax.with_extra_args_support(inner)

    def scalars(params: PyTree, value: float) -> PyTree:
        return jax.tree.map(lambda _: jnp.full((), value, jnp.float32), params)

    state_type = PrepassRGNState if prepass else RGNState

    def init_fn(params: PyTree) -> RGNState:
        if warn_zero_norm:
            warn_zero_tensors(params, eps)
        n = len(jax.tree.leaves(params))
        return state_type(
            count=jnp.zeros((), jnp.int32),
            accumulated=jnp.zeros((n,), jnp.float32),
            # Prepass: NaN until the loop holds the first multipliers (see mode).
            held=jnp.full((n,), jnp.nan if prepass else 1.0, jnp.float32),
            applied=scalars(params, 1.0),
            inner_state=inner.init(params),
        )

    def update_fn(
        updates: PyTree, state: RGNState, params: PyTree | None = None, **extra_args: Any
    ) -> tuple[PyTree, RGNState]:
        if params is None:
            raise ValueError("scale_by_rgn needs the params: call tx.update(grads, state, params)")
        tensors, initialised = len(jax.tree.leaves(params)), state.accumulated.shape[0]
        if tensors != initialised:  # else a broadcasting error of two vectors' shapes
            raise ValueError(
                f"scale_by_rgn: the params have {tensors} tensors and the state was "
                f"initialised for {initialised}: init and update on one params structure"
            )
        # The per-tensor bookkeeping runs on one vector (a handful of ops),
        # not on a scalar per tensor (hundreds of tiny ops that XLA compiles
        # one by one: seconds per architecture on a CPU).
        treedef = jax.tree.structure(params)
        if prepass:  # the loop's prepass set ``held``; nothing to estimate here
            multipliers, accumulated, held = state.held, state.accumulated, state.held
        else:
            rgn = rgn_vector(updates, params, eps)
            current = _normalise(rgn)
        if per_step:
            multipliers, accumulated, held = current, state.accumulated, state.held
        elif not prepass:
            epoch, pos = state.count // spe, state.count % spe
            estimating = pos < k
            # A zero-norm tensor's inf stays inf in the sum: 1 for the epoch (module doc).
            accumulated = jnp.where(pos == 0, 0.0, state.accumulated) + jnp.where(
                estimating, rgn, 0.0
            )
            multipliers = jnp.where(estimating & (epoch == 0), current, state.held)
            held = jnp.where(pos == k - 1, _normalise(accumulated / k), state.held)
        applied = jax.tree.unflatten(treedef, list(multipliers))
        new_updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
        new_updates = jax.tree.map(lambda u, m: u * m.astype(u.dtype), new_updates, applied)
        return new_updates, state_type(
            count=optax.safe_increment(state.count),
            accumulated=accumulated,
            held=held,
            applied=applied,
            inner_state=inner_state,
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
