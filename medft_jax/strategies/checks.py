"""Argument checks shared by the strategies' transformations and :func:`.build.make`.

Two rules run through them. A check runs only on *concrete* Python or
numpy values: under ``optax.inject_hyperparams`` a numeric hyperparameter
arrives as a jax array (a tracer under ``jit``), and ``if x < 0`` on a
tracer raises ``TracerBoolConversionError``; optax's own transformations
(``add_decayed_weights``) do no range checks at all, so an injected value
is left to the caller here too. And counts of steps or epochs must be true
integers: a fractional one would be truncated in one place (the optimizer's
start step) and used as is in another (the schedule's epochs), so the two
would disagree about when a block unfreezes.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import numpy as np
import optax

from medft_jax.models.blocks import path_str


def is_concrete_number(value: Any) -> bool:
    """Whether ``value`` is a Python or numpy real number (not a jax array or tracer, not bool)."""
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, np.ndarray):
        return value.ndim == 0 and np.issubdtype(value.dtype, np.number)
    return isinstance(value, numbers.Real)


def is_integer(value: Any) -> bool:
    """Whether ``value`` is a Python or numpy integer (``bool`` excluded: ``True`` is no count)."""
    if isinstance(value, (bool, np.bool_)):
        return False
    return isinstance(value, (numbers.Integral, np.integer))


MAX_STEP = 2**31 - 1
"""The last update number optax's int32 step count reaches (it saturates there)."""


def require_int(where: str, name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    """``value`` as an ``int`` if it is an integer in [``minimum``, ``maximum``], else a
    ValueError naming it.

    One message for every fault (a fraction, a string, a bool; out of range),
    so the caller learns the argument and its valid range at once.
    """
    if isinstance(value, jax.core.Tracer):  # optax.inject_hyperparams, under jit
        raise ValueError(
            f"{where}: {name} is a count the stages are laid out by, not a value to trace; "
            "give it to optax.inject_hyperparams in static_args"
        )
    if maximum is not None and not (is_integer(value) and minimum <= value <= maximum):
        raise ValueError(
            f"{where}: {name} must be an integer in [{minimum}, {maximum}], got {value!r}"
        )
    if not is_integer(value) or value < minimum:
        raise ValueError(f"{where}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def require_coefficient(where: str, name: str, value: Any) -> None:
    """A penalty coefficient is a number >= 0, or a jax array (an injected hyperparameter).

    A string or None would otherwise fail far from here, inside the jitted
    update, with an error that names neither the argument nor its range.
    """
    if is_concrete_number(value):
        if not float(value) >= 0:  # also refuses NaN
            raise ValueError(f"{where}: {name} must be a number >= 0, got {value!r}")
        return
    if not isinstance(value, jax.Array):
        raise ValueError(
            f"{where}: {name} must be a number >= 0, got {type(value).__name__} {value!r}"
        )


def is_masked_group(params: Any) -> bool:
    """True for the params one group of ``optax.partition``/``optax.masked`` sees: the
    other groups' leaves are ``optax.MaskedNode``, so a check of the whole model (a head,
    a label that trains) may well find nothing of it in this group."""
    nodes = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, optax.MaskedNode))
    return any(isinstance(x, optax.MaskedNode) for x in nodes)


def require_marks_some(where: str, mask_name: str, mask: Any, params: Any) -> None:
    """Refuses a mask that marks none of ``params``: the typo that trains or spares nothing.

    The usual causes are named: params wrapped as ``{'params': ...}`` (paths
    then start with ``params/``), a pattern ``'fc'`` that should read ``'fc/*'``,
    or a mask function passed through ``optax.inject_hyperparams`` without
    ``static_args``, which takes it for a schedule and calls it with the step.
    """
    if any(jax.tree.leaves(mask)):
        return
    if type(params).__name__ == "_ParamsPlaceholder":  # optax.tree_map_params's stand-in
        raise ValueError(
            f"{where}: optax.tree_map_params cannot map this strategy's state: its init reads "
            "the params' paths, and tree_map_params gives it a placeholder; derive the "
            "state's shardings from jax.eval_shape(tx.init, params) instead"
        )
    paths = [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    sample = repr(paths[-1]) if paths else "none: the params are empty"
    raise ValueError(
        f"{where}: {mask_name} marks none of the params (paths look like {sample}; "
        "params wrapped as {'params': ...}, a pattern without '/*', or a mask function "
        "given to optax.inject_hyperparams without naming it in static_args?)"
    )


def require_learning_rate(where: str, value: Any) -> None:
    """A learning rate is a positive number or a schedule (a callable of the step count).

    A negative rate would ascend the loss and a zero one train nothing; both
    run without complaint, so they are refused here. A jax array (e.g. an
    injected hyperparameter) is not checked.
    """
    if callable(value):
        return
    if is_concrete_number(value):
        if not float(value) > 0:  # also refuses NaN
            raise ValueError(f"{where}: learning_rate must be > 0, got {value!r}")
        return
    if isinstance(value, jax.Array):
        return
    raise ValueError(
        f"{where}: learning_rate must be a number > 0 or a schedule (a callable), "
        f"got {type(value).__name__} {value!r}"
    )
