"""Extending the toolkit from Python: a dataset held in memory, a freeze pattern of one's own."""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from medft_jax import fit
from medft_jax.config import RunConfig
from medft_jax.data import DataError, Dataset
from medft_jax.errors import UserError
from medft_jax.models import create, get_arch, init_variables
from medft_jax.strategies import make
from medft_jax.strategies.freeze import map_paths, match_paths, staged


def _arrays(n: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n).astype(np.int32)
    images = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
    images[labels == 1, 8:24, 8:24, 0] = 255
    return images, labels


def _splits(size: int = 32, seed: int = 0) -> dict:
    return {s: _arrays(32, size, seed + k) for k, s in enumerate(("train", "val", "test"))}


@pytest.mark.xdist_group("resnet_tiny")
@pytest.mark.slow
def test_a_dataset_held_in_memory_trains_and_names_its_run_by_its_arrays(tmp_path):
    """No documented way to train on arrays: a Dataset built by hand was refused for its
    missing content fingerprint, and any string given as one named the run."""
    config = RunConfig(
        dataset="my_arrays",
        arch="resnet_tiny",
        strategy="ft",
        weights="none",
        epochs=1,
        batch_size=16,
        image_size=32,
        patience=0,
    )
    ds = Dataset.from_arrays("my_arrays", _splits(), ("neg", "pos"))
    record = fit.run_one(config, tmp_path, dataset=ds, progress=False)
    assert record["config"]["dataset"] == "my_arrays" and 0 <= record["test"]["auroc"] <= 1
    again = fit.run_one(
        config,
        tmp_path,
        dataset=Dataset.from_arrays("my_arrays", _splits(), ("neg", "pos")),
        progress=False,
    )
    assert again["run"] == record["run"]  # the same arrays: the same run, done
    other = Dataset.from_arrays("my_arrays", _splits(seed=7), ("neg", "pos"))
    assert fit.identify(config, other).to_dict() != fit.identify(config, ds).to_dict()
    # 64-px arrays under image_size 32 trained at 64 px while the record said 32.
    big = Dataset.from_arrays("my_arrays", _splits(size=64), ("neg", "pos"))
    with pytest.raises(
        UserError,
        match=r"^dataset 'my_arrays': its train images are 64x64 pixels, but "
        r"RunConfig.image_size is 32",
    ):
        fit.run_one(config, tmp_path, dataset=big, progress=False)
    # Only the train split's size was checked: 64-px test images were scored under 32.
    mixed = _splits()
    mixed["test"] = _arrays(32, 64, 9)
    with pytest.raises(UserError, match=r"^dataset 'my_arrays': its test images are 64x64 "):
        fit.run_one(
            config, tmp_path, dataset=Dataset.from_arrays("my_arrays", mixed, ("neg", "pos"))
        )
    # Arrays of another name under a config naming a paper dataset: the run's folder,
    # record and report called them medmnist/breastmnist, beside that dataset's runs.
    named = dataclasses.replace(config, dataset="medmnist/breastmnist")
    with pytest.raises(DataError) as err:
        fit.run_one(named, tmp_path, dataset=ds, progress=False)
    assert str(err.value) == (
        "RunConfig.dataset is 'medmnist/breastmnist', but the dataset given is 'my_arrays'; "
        "expected the config to name the data it trains on"
    )


@pytest.mark.xdist_group("resnet_tiny")
@pytest.mark.slow
def test_the_toolkits_auto_rgn_run_from_random_init_warns_of_nothing(tmp_path):
    """A random init's BatchNorm biases are zeros, which Auto-RGN handles as the reference
    does: ``make``'s warning for one's own model printed a raw UserWarning in every such
    run of the toolkit's own loop."""
    config = RunConfig(
        dataset="my_arrays", arch="resnet_tiny", strategy="auto_rgn", weights="none",
        epochs=1, batch_size=16, image_size=32, patience=0,
    )  # fmt: skip
    ds = Dataset.from_arrays("my_arrays", _splits(), ("neg", "pos"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit.run_one(config, tmp_path, dataset=ds, progress=False)
    assert not [w for w in caught if "all zeros at init" in str(w.message)]
    with pytest.warns(UserWarning, match=r"'bn1/bias' and \d+ more are all zeros at init"):
        params = init_variables(create("resnet_tiny", 2), 0, 32)["params"]
        make("auto_rgn", params, get_arch("resnet_tiny").partition, learning_rate=1e-3,
             steps_per_epoch=4)  # fmt: skip


def test_labels_of_a_dataset_held_in_memory_are_checked_naming_the_split():
    """A class id past class_names trained into a NaN loss ("try a smaller --lr") or, in
    val, failed after an epoch naming neither the split nor the value."""
    splits = _splits()
    images, labels = splits["val"]
    bad = {**splits, "val": (images, np.where(labels == 1, 5, labels).astype(np.int32))}
    with pytest.raises(
        DataError, match=r"^dataset 'x' split 'val': label 5 is not a class id in \[0, 2\)"
    ):
        Dataset.from_arrays("x", bad, ("neg", "pos"))
    hot = {s: (i, np.eye(2, dtype=np.float32)[y] * 2) for s, (i, y) in splits.items()}
    with pytest.raises(
        DataError, match=r"split 'train': multilabel labels must be 0 or 1, got 2\.0"
    ):
        Dataset.from_arrays("x", hot, ("neg", "pos"), multilabel=True)
    with pytest.raises(DataError, match=r"no 'test' split"):
        Dataset.from_arrays("x", {"train": splits["train"], "val": splits["val"]}, ("a", "b"))
    # The arrays' shapes too (they named no split).
    floats = {**splits, "test": (splits["test"][0].astype(np.float32), splits["test"][1])}
    with pytest.raises(DataError, match=r"^dataset 'x' split 'test': images must be uint8 \("):
        Dataset.from_arrays("x", floats, ("neg", "pos"))
    short = {**splits, "val": (images, labels[:-1])}
    with pytest.raises(DataError, match=r"^dataset 'x' split 'val': labels has \d+ rows, images"):
        Dataset.from_arrays("x", short, ("neg", "pos"))
    with pytest.raises(DataError, match=r"^dataset name 'my \$data' is not a name"):
        Dataset.from_arrays("my $data", splits, ("neg", "pos"))
    # A built-in name mixed the arrays' records into that task's tables and --vs-paper.
    for taken in ("bach", "demo", "medmnist/breastmnist@64", "folder"):
        with pytest.raises(DataError, match=rf"^dataset name '{taken}' is a built-in dataset's"):
            Dataset.from_arrays(taken, splits, ("neg", "pos"))


@pytest.mark.slow  # seconds: the fast tier stays under 2 minutes
def test_a_freeze_pattern_that_matches_nothing_is_named():
    """One typo among several patterns (layr4) left its layer out without a word; a freeze
    mask matching nothing, inverted, trained everything."""
    params = init_variables(create("resnet_tiny", 2), 1, 32)["params"]
    mask = match_paths(["fc/*", "layer1/*"])(params)
    assert any(jax.tree.leaves(mask)) and not all(jax.tree.leaves(mask))
    with pytest.raises(
        ValueError,
        match=r"^match_paths: pattern 'layr4/\*' matches no parameter \(paths look like '.*"
        r"pass strict=False",
    ):
        match_paths(["fc/*", "layr4/*"])(params)


@pytest.mark.slow
def test_a_pattern_mask_inside_staged_sees_one_group_and_may_pass_strict_false():
    """Inside ``staged`` each group's optimizer sees that group's parameters only, so
    '*/scale' rightly matches nothing in the head's group: strict=False lets it, and the
    update is the hand-computed one (decay on the head's kernel, none on its bias)."""
    params = init_variables(create("resnet_tiny", 2), 1, 32)["params"]
    labels = map_paths(lambda path: "head" if path.startswith("fc/") else "body")

    def decay_where(strict: bool) -> optax.GradientTransformation:
        mask = match_paths(["*/kernel", "*/scale"], strict=strict)
        return optax.masked(optax.add_decayed_weights(0.5), mask)

    with pytest.raises(ValueError, match=r"pattern '\*/scale' matches no parameter"):
        staged(decay_where(True), labels, {"head": 0, "body": None}).init(params)
    tx = staged(decay_where(False), labels, {"head": 0, "body": None})
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    np.testing.assert_allclose(updates["fc"]["kernel"], 0.5 * params["fc"]["kernel"])
    np.testing.assert_array_equal(updates["fc"]["bias"], 0.0)
    assert not any(np.any(u) for u in jax.tree.leaves(updates["layer1"]))


def test_a_run_config_takes_its_strategy_options_as_a_mapping():
    """A dict (as records hold them: RunConfig(**record["config"])) was accepted, then a
    bare "too many values to unpack" at the run."""
    as_dict = RunConfig(strategy="lp_ft", strategy_options={"lp_epochs": 2, "zzz": 1})
    assert as_dict.strategy_options == (("lp_epochs", 2), ("zzz", 1))
    assert RunConfig(strategy="lp_ft", strategy_options={"lp_epochs": 5}) == RunConfig(
        strategy="lp_ft"
    )  # at its default: the run without it
    again = RunConfig(**RunConfig(strategy="l2_sp", strategy_options={"alpha": 0.1}).to_dict())
    assert again.strategy_options == (("alpha", 0.1),)
