"""The batch pipeline, the cache and the split carving: numbers that could be wrong."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle

import numpy as np
import pytest

from medft_jax.data import DataError, load, pipeline
from medft_jax.data import cache as cache_mod
from medft_jax.data.arrays import group_mean, make_split
from medft_jax.data.dataset import Dataset, Unscorable, local_scorable_hint
from medft_jax.data.splits import carve, check_disjoint
from tests.processes import writers_temporaries

ONE_HOST = {"shard_index": 0, "shard_count": 1}


def _indices(it) -> list[np.ndarray]:
    return [b["index"].copy() for b in it]


def _toy(n: int = 50) -> Dataset:
    images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
    split = make_split(images, np.arange(n, dtype=np.int32) % 3)
    return Dataset("toy", {"train": split, "test": split}, ("a", "b", "c"))


def test_demo_is_deterministic_and_balanced():
    a, b, c = load("demo", seed=0), load("demo", seed=0), load("demo", seed=1)
    assert {k: len(v) for k, v in a.splits.items()} == {"train": 192, "val": 64, "test": 128}
    assert a.image_shape == (32, 32, 3) and a.num_classes == 2
    assert np.array_equal(a.splits["train"].images, b.splits["train"].images)
    assert not np.array_equal(a.splits["train"].images, c.splits["train"].images)
    assert np.bincount(a.splits["train"].labels).tolist() == [96, 96]
    # The spot is bright in class 1, dark in class 0: the class means differ.
    tr = a.splits["train"]
    centre = tr.images[:, 6:26, 6:26, 0].reshape(len(tr), -1).max(axis=1)
    assert centre[tr.labels == 1].mean() > centre[tr.labels == 0].mean() + 20


def test_same_seed_same_batches_other_seed_or_epoch_differs():
    ds = load("demo")
    run = lambda seed, epoch: _indices(ds.train_iter(32, seed=seed, epoch=epoch, **ONE_HOST))  # noqa: E731
    a, b = run(0, 0), run(0, 0)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, run(1, 0), strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, run(0, 1), strict=True))
    # One epoch: 192 // 32 = 6 full batches, each index at most once, sorted within a batch.
    flat = np.concatenate(a)
    assert len(a) == 6 and len(np.unique(flat)) == 192
    assert all(np.all(np.diff(x) > 0) for x in a)


def test_batches_hold_the_right_images_and_labels():
    ds = _toy()
    for batch in ds.train_iter(8, seed=3, **ONE_HOST):
        assert np.array_equal(batch["image"][:, 0, 0, 0], batch["index"])
        assert np.array_equal(batch["label"], batch["index"] % 3)
        assert batch["image"].dtype == np.uint8 and batch["mask"].all()


def test_drop_remainder_but_every_example_seen_across_epochs():
    ds = _toy(50)
    seen = set()
    for epoch in range(6):
        batches = _indices(ds.train_iter(16, seed=0, epoch=epoch, **ONE_HOST))
        assert len(batches) == 3  # 50 // 16
        seen |= set(np.concatenate(batches).tolist())
    assert seen == set(range(50))


def test_eval_covers_every_example_once_with_padded_last_batch():
    ds = load("demo")
    batches = list(ds.eval_batches("test", 50, **ONE_HOST))
    assert [len(b["image"]) for b in batches] == [50, 50, 50]
    assert [int(b["mask"].sum()) for b in batches] == [50, 50, 28]
    idx = np.concatenate([b["index"][b["mask"]] for b in batches])
    assert np.array_equal(idx, np.arange(128))
    last = batches[-1]
    assert (last["index"][~last["mask"]] == -1).all() and (last["image"][~last["mask"]] == 0).all()
    labels = np.concatenate([b["label"][b["mask"]] for b in batches])
    assert np.array_equal(labels, ds.splits["test"].labels)


def test_hosts_split_each_global_batch_and_together_equal_one_host():
    ds = _toy(48)
    single = _indices(ds.train_iter(12, seed=5, **ONE_HOST))
    parts = [_indices(ds.train_iter(12, seed=5, shard_index=h, shard_count=3)) for h in range(3)]
    for b, whole in enumerate(single):
        # In order, not just as a set: batch position decides e.g. VGG's dropout mask.
        joined = np.concatenate([parts[h][b] for h in range(3)])
        assert np.array_equal(joined, whole)
        assert all(len(parts[h][b]) == 4 for h in range(3))
    ev = [list(ds.eval_batches("test", 20, shard_index=h, shard_count=2)) for h in range(2)]
    idx = np.concatenate([b["index"][b["mask"]] for host in ev for b in host])
    assert sorted(idx.tolist()) == list(range(48))
    with pytest.raises(DataError, match="not divisible by the number of hosts 3"):
        ds.train_iter(10, seed=0, shard_index=0, shard_count=3)


def test_state_resumes_exactly_mid_epoch():
    ds = load("demo")
    full = _indices(ds.train_iter(16, seed=7, epoch=2, **ONE_HOST))
    it = ds.train_iter(16, seed=7, epoch=2, **ONE_HOST)
    for _ in range(5):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # survives a JSON checkpoint
    assert state["position"] == 5 and state["seed"] == 7 and state["epoch"] == 2
    resumed = ds.train_iter(16, seed=7, epoch=2, **ONE_HOST)
    resumed.set_state(state)
    rest = _indices(resumed)
    assert len(rest) == len(full) - 5
    assert all(np.array_equal(x, y) for x, y in zip(rest, full[5:], strict=True))
    other = ds.train_iter(16, seed=8, epoch=2, **ONE_HOST)
    with pytest.raises(DataError, match="'seed' is 7, this iterator has 8"):
        other.set_state(state)

    # One host's saved state resumes every host (a multi-host run's progress is process
    # 0's): host 1 of 2 goes on with its halves of the same global batches.
    halves = [ds.train_iter(16, seed=7, epoch=2, shard_index=i, shard_count=2) for i in (0, 1)]
    for _ in range(5):
        next(halves[0])
    second = ds.train_iter(16, seed=7, epoch=2, shard_index=1, shard_count=2)
    second.set_state(halves[0].get_state())
    rest = _indices(second)
    assert len(rest) == len(full) - 5
    assert all(np.array_equal(x, y) for x, y in zip(rest, _indices(halves[1])[5:], strict=True))
    assert all(len(x) == 8 and set(x) <= set(y) for x, y in zip(rest, full[5:], strict=True))


@pytest.mark.parametrize(
    ("kwargs", "said"),
    [
        # shard 2 of 2 read no rows: a host silently training and scoring on nothing
        (
            {"shard_index": 2, "shard_count": 2},
            r"shard_index must be an integer in \[0, 1\], got 2",
        ),
        ({"shard_index": -1, "shard_count": 2}, r"shard_index must be .* got -1"),
        ({"shard_index": 0, "shard_count": 0}, r"shard_count must be an integer >= 1, got 0"),
        ({"shard_index": 1}, "give shard_index and shard_count together, or neither"),
        ({"shard_index": 0, "shard_count": 1, "num_workers": -1}, "num_workers must be an intege"),
        ({"shard_index": 0, "shard_count": 1, "num_threads": -2}, "num_threads must be an intege"),
        ({"shard_index": 0, "shard_count": 1, "prefetch": -1}, "prefetch must be an integer >= 0"),
        ({"batch_size": 2.5}, r"batch_size must be an integer >= 1, got 2\.5"),
        ({"batch_size": True}, "batch_size must be an integer >= 1, got True"),
    ],
)
def test_bad_iterator_arguments_are_one_line_naming_the_argument(kwargs, said):
    images, labels = _toy_arrays(10)
    kw = {"batch_size": 4, **ONE_HOST, **kwargs}
    if "shard_count" not in kwargs and "shard_index" in kwargs:
        del kw["shard_count"]
    batch_size = kw.pop("batch_size")
    for make in (
        lambda: pipeline.array_train_batches(images, labels, "t", batch_size, seed=0, **kw),
        lambda: pipeline.array_eval_batches(images, labels, "t", batch_size, **kw),
    ):
        with pytest.raises(DataError, match=said):
            make()


@pytest.mark.parametrize(
    ("position", "said"),
    [(None, "position None is not"), (1.7, "position 1.7 is not"), ("2", "position '2' is not")],
)
def test_a_damaged_iterator_state_position_is_refused(position, said):
    """A missing position was a KeyError, 1.7 read as 1 and "2" as 2."""
    images, labels = _toy_arrays(10)
    it = pipeline.array_train_batches(images, labels, "t", 2, seed=0, **ONE_HOST)
    state = {k: v for k, v in it.get_state().items() if k != "position"}
    if position is not None:
        state["position"] = position
    with pytest.raises(DataError, match=said):
        it.set_state(state)


@pytest.mark.slow  # starts worker processes
def test_worker_processes_give_the_same_batches(tmp_path):
    splits = {"train": make_split(*_toy_arrays(40))}
    meta = {"class_names": ["a", "b", "c"], "multilabel": False, "eval_grouping": "image"}
    plans = {
        "train": cache_mod.SplitPlan(
            40,
            (4, 4, 3),
            cache_mod.chunked(splits["train"].images, 16),
            {f: getattr(splits["train"], f) for f in cache_mod.FIELDS},
        )
    }
    read, _ = cache_mod.read_cache(
        cache_mod.write_cache(tmp_path / "c", plans, meta, progress=False)
    )
    ds = Dataset("toy", read, ("a", "b", "c"))
    threads = _indices(ds.train_iter(8, seed=1, **ONE_HOST))
    workers = _indices(ds.train_iter(8, seed=1, num_workers=2, **ONE_HOST))
    assert all(np.array_equal(x, y) for x, y in zip(threads, workers, strict=True))


def _toy_cache(path, images, labels):
    """A finished cache of one ``train`` split at ``path`` (a rebuild swaps it in)."""
    ids = np.asarray([f"im{i}" for i in range(len(images))])
    fields = {"labels": labels, "ids": ids, "groups": ids, "patients": ids}
    plan = cache_mod.SplitPlan(len(images), (4, 4, 3), cache_mod.chunked(images, 16), fields)
    meta = {"class_names": ["a", "b", "c"], "multilabel": False, "eval_grouping": "image"}
    return cache_mod.write_cache(path, {"train": plan}, meta, progress=False)


def test_a_worker_refuses_a_cache_rebuilt_under_the_iterator(tmp_path):
    """grain's worker processes re-open the memmapped images by file name. After the data
    was edited and loaded again (the cache rebuilt at the same path), a worker read the new
    file's rows under the old labels: every image after an insertion paired with its
    neighbour's label, no error. The file mapped is checked to be the one opened."""
    images, labels = _toy_arrays(40)
    read, _ = cache_mod.read_cache(_toy_cache(tmp_path / "c", images, labels))
    ds = Dataset("toy", read, ("a", "b", "c"))
    it = ds.train_iter(8, seed=1, **ONE_HOST)
    again = pickle.loads(pickle.dumps(it._source))  # what a worker process gets: unchanged
    assert np.array_equal(again.images, images) and np.array_equal(
        again[0]["image"], it._source[0]["image"]
    )
    shifted = np.concatenate([images[:1] + 100, images])  # one image added first
    _toy_cache(tmp_path / "c", shifted, np.concatenate([labels[:1], labels]))
    with pytest.raises(DataError, match="the dataset cache was rebuilt while this iterator"):
        pickle.loads(pickle.dumps(it._source))
    with pytest.raises(DataError, match=r"c/train_images\.npy: the dataset cache was rebuilt"):
        next(ds.train_iter(8, seed=1, num_workers=1, **ONE_HOST))  # before any worker starts
    # Loaded again: the new arrays, which workers may read.
    fresh = Dataset("toy", cache_mod.read_cache(tmp_path / "c")[0], ("a", "b", "c"))
    source = fresh.train_iter(8, seed=1, **ONE_HOST)._source
    assert np.array_equal(pickle.loads(pickle.dumps(source)).images, shifted)


def _toy_arrays(n: int):
    images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
    return images, np.arange(n, dtype=np.int32) % 3


def test_batch_size_larger_than_split_is_an_error():
    with pytest.raises(DataError, match="batch_size 500 exceeds the 192 examples of split 'train'"):
        load("demo").train_iter(500, seed=0, **ONE_HOST)


def test_cache_is_atomic_and_shrinks_over_skipped_images(tmp_path):
    images, labels = _toy_arrays(5)
    ids = np.asarray([f"im{i}" for i in range(5)])
    fields = {"labels": labels, "ids": ids, "groups": ids, "patients": ids}

    def chunks():
        yield images[[0, 2]], np.array([True, False, True])
        yield images[[3]], np.array([True, False])

    target = tmp_path / "cache"
    plan = cache_mod.SplitPlan(5, (4, 4, 3), chunks, fields)
    splits, meta = cache_mod.read_cache(
        cache_mod.write_cache(target, {"train": plan}, {}, progress=False)
    )
    assert np.array_equal(splits["train"].images, images[[0, 2, 3]])
    assert splits["train"].ids.tolist() == ["im0", "im2", "im3"]
    assert meta["skipped_bad_images"] == {"train": ["im1", "im4"]}
    assert np.load(target / "train_images.npy", allow_pickle=False).shape == (3, 4, 4, 3)

    def failing():
        yield images[:2], np.ones(2, bool)
        raise KeyboardInterrupt  # interrupted mid-write

    other = tmp_path / "other"
    with pytest.raises(KeyboardInterrupt):
        cache_mod.write_cache(
            other, {"train": cache_mod.SplitPlan(5, (4, 4, 3), failing, fields)}, {}, progress=False
        )
    assert not other.exists() and not list(tmp_path.glob("other*"))
    with pytest.raises(DataError, match="not a finished dataset cache"):
        cache_mod.read_cache(other)


def test_a_build_removes_what_killed_builds_of_other_variants_left(tmp_path):
    """A build killed at resize 36 left its temporary folder (its images file preallocated
    to the whole split) until that very variant was built again, which may be never: a
    build of any variant beside it now removes dead writers' folders, not live ones'."""
    parent = tmp_path / "folder-abc"
    killed, live = writers_temporaries(parent, "r36_c32_s0", "r40_c32_s0", os.getppid())
    for folder in (killed, live):
        (folder / "train_images.npy").parent.mkdir(parents=True)
        (folder / "train_images.npy").write_bytes(b"x" * 1000)
    images, labels = _toy_arrays(3)
    ids = np.asarray(["a", "b", "c"])
    fields = {"labels": labels, "ids": ids, "groups": ids, "patients": ids}
    plan = cache_mod.SplitPlan(3, (4, 4, 3), lambda: iter([(images, np.ones(3, bool))]), fields)
    cache_mod.write_cache(parent / "r33_c32_s0", {"train": plan}, {}, progress=False)
    assert not killed.exists() and live.exists()


def test_a_full_disk_while_writing_rows_names_the_file(tmp_path, monkeypatch):
    """Where the filesystem cannot preallocate, pwrite's ENOSPC named no file and the error
    named the final cache folder, which does not exist: it names the images file now."""
    import errno

    def full(fd, array, position):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_mod, "_write_at", full)
    images, labels = _toy_arrays(3)
    ids = np.asarray(["a", "b", "c"])
    fields = {"labels": labels, "ids": ids, "groups": ids, "patients": ids}
    plan = cache_mod.SplitPlan(3, (4, 4, 3), lambda: iter([(images, np.ones(3, bool))]), fields)
    with pytest.raises(OSError) as err:
        cache_mod.write_cache(tmp_path / "c", {"train": plan}, {}, progress=False)
    assert err.value.errno == errno.ENOSPC and err.value.filename.endswith("train_images.npy")
    assert not list(tmp_path.iterdir())  # nothing left


def test_empty_split_in_cache_is_an_error(tmp_path):
    images, labels = _toy_arrays(2)
    ids = np.asarray(["a", "b"])
    fields = {"labels": labels, "ids": ids, "groups": ids, "patients": ids}
    plan = cache_mod.SplitPlan(
        2, (4, 4, 3), lambda: iter([(images[:0], np.zeros(2, bool))]), fields
    )
    with pytest.raises(DataError, match="split 'val' came out empty"):
        cache_mod.write_cache(tmp_path / "c", {"val": plan}, {}, progress=False)


def test_carve_is_group_disjoint_stratified_and_seeded():
    groups = [f"p{i // 3}" for i in range(300)]  # 100 patients, 3 images each
    labels = [(i // 3) % 4 for i in range(300)]
    mask = carve(groups, 0.2, seed=0, labels=labels)
    assert mask.sum() == 60
    assert np.bincount(np.asarray(labels)[mask]).tolist() == [15, 15, 15, 15]
    carved = {g for g, m in zip(groups, mask, strict=True) if m}
    kept = {g for g, m in zip(groups, mask, strict=True) if not m}
    assert not carved & kept
    assert np.array_equal(mask, carve(groups, 0.2, seed=0, labels=labels))
    assert not np.array_equal(mask, carve(groups, 0.2, seed=1, labels=labels))
    with pytest.raises(DataError) as e:
        check_disjoint({"train": ["a", "b"], "test": ["b", "c", "a"]}, "/data/x")
    assert str(e.value) == (
        "/data/x: splits 'train' and 'test' share 2 patient group(s), e.g. 'a'; one "
        "patient's images in two splits would leak into the evaluation"
    )


def test_carve_keeps_a_rare_class_share_held_by_mixed_patients():
    # ISIC-like: 40 of 200 patients have one melanoma among ten images, so every
    # patient's most frequent label is benign; the carve must still take 20% of
    # the melanomas, whatever the seed.
    groups = [f"p{i // 10}" for i in range(2000)]
    labels = [int(i % 10 == 0 and i // 10 < 40) for i in range(2000)]
    for seed in range(5):
        mask = carve(groups, 0.2, seed=seed, labels=labels)
        assert np.asarray(labels)[mask].sum() == 8
        assert mask.sum() == 400  # 8 mixed patients' 80 images + 320 of the rest's 1600


def test_carve_stops_nearest_its_quota_not_past_it():
    # Four patients of 5 images: a 30% quota of 20 is 6. Stopping only once the quota
    # was met took two patients (10, 4 past it); one (5) is nearer.
    groups = [f"p{i // 5}" for i in range(20)]
    for seed in range(4):
        assert carve(groups, 0.3, seed=seed).sum() == 5
        assert carve(groups, 0.4, seed=seed).sum() == 10  # quota 8: 10 is nearer than 5
        assert carve(groups, 0.05, seed=seed).sum() == 5  # quota 1: a first group always
    # Patients of 2, 7 and 11 images, quota 5: after a first 2 (3 short), a 7 or 11 would
    # end 4 or 8 past: the carve holds 2. A first 7 or 11 is kept alone.
    groups = ["a"] * 2 + ["b"] * 7 + ["c"] * 11
    assert {int(carve(groups, 0.25, seed=s).sum()) for s in range(20)} == {2, 7, 11}
    # A T1w-like split (233 patients of 1-25 images, three classes): the paper's 542 of
    # 3,064 on average over seeds, where the old rule averaged about 561.
    rng = np.random.default_rng(0)
    sizes = rng.multinomial(3064 - 233, np.ones(233) / 233) + 1
    groups = np.repeat([f"p{i}" for i in range(233)], sizes)
    labels = np.repeat(rng.integers(0, 3, 233), sizes)
    counts = [carve(groups, 542 / 3064, seed=s, labels=labels).sum() for s in range(40)]
    assert abs(np.mean(counts) - 542) < 5


def test_an_edited_folder_keeps_its_splits_but_for_a_few_patients():
    """Adding or removing patients moves a few others across the carve at most: one seeded
    shuffle of all of them dealt the whole split afresh (half of val changed)."""
    rng = np.random.default_rng(3)
    sizes = rng.integers(1, 6, 400)
    labels_of = rng.integers(0, 3, 400)

    def carved(patients):
        groups = np.repeat([f"p{i}" for i in patients], sizes[patients])
        labels = np.repeat(labels_of[patients], sizes[patients])
        mask = carve(groups, 0.15, seed=0, labels=labels)
        return set(groups[mask])

    before = carved(np.arange(390))
    for edited in (np.arange(400), np.delete(np.arange(390), [5, 77, 200])):
        after = carved(edited)
        kept = {f"p{i}" for i in np.intersect1d(edited, np.arange(390))}
        moved = (before ^ after) & kept  # patients in both listings whose split changed
        assert len(before) > 40 and len(moved) <= 6, len(moved)
    # The order is each name's own: a name's rank does not depend on the others.
    assert (
        carve(["b", "a", "c"], 0.34, seed=4).tolist()
        == carve(["c", "a", "b"], 0.34, seed=4)[[2, 1, 0]].tolist()
    )


def test_group_mean_is_the_study_probability():
    ids, scores, labels = group_mean(
        np.array([0.2, 0.4, 0.9, 0.1, 0.3]), np.array([1, 1, 0, 0, 0]), np.array(list("aabbb"))
    )
    assert ids.tolist() == ["a", "b"]
    assert np.allclose(scores, [0.3, (0.9 + 0.1 + 0.3) / 3])
    assert labels.tolist() == [1, 0]
    with pytest.raises(DataError, match="different labels"):
        group_mean(np.zeros(2), np.array([0, 1]), np.array(["a", "a"]))


def _scored(labels: np.ndarray, multilabel: bool, names=("a", "b", "c")) -> Dataset:
    n = len(labels)
    split = make_split(np.zeros((n, 2, 2, 3), np.uint8), labels)
    return Dataset("toy", {"train": split, "val": split, "test": split}, names, multilabel)


def test_a_split_that_holds_every_class_both_ways_is_scorable():
    _scored(np.array([0, 1, 2, 2], np.int32), False).check_scorable()
    multi = np.array([[1, 0, 1], [0, 1, 1], [0, 0, 0]], np.float32)
    _scored(multi, True).check_scorable()


@pytest.mark.parametrize(
    ("labels", "multilabel", "what", "wanted"),
    [
        (np.array([0, 2, 2, 0], np.int32), False, "no example", "more images of it"),
        (np.array([[1, 0, 1], [0, 0, 0]], np.float32), True, "no positive", "more images of it"),
        (np.array([[1, 1, 1], [0, 1, 0]], np.float32), True, "only positives", "images without it"),
    ],
)
def test_a_class_with_one_label_value_in_an_evaluation_split_is_refused(
    labels, multilabel, what, wanted
):
    """Its AUROC is undefined; the macro mean would quietly be over fewer classes. A split
    of only positives needs negatives, not more images of the class."""
    ds = _scored(labels, multilabel)
    with pytest.raises(DataError) as e:
        ds.check_scorable()
    assert str(e.value) == (
        f"toy: the val split ({len(labels)} examples) has {what} of class 'b', so its "
        f"AUROC is undefined and the macro means would leave it out; give the split {wanted} "
        "or drop the class"
    )


def test_a_paper_tasks_unscorable_split_is_not_told_to_carve_a_test_fraction():
    # --test-fraction is folder and csv's alone: a paper task's test split is its own.
    ds = dataclasses.replace(_scored(np.array([0, 2, 2, 0], np.int32), False), name="bach")
    with pytest.raises(DataError, match=r"the val split .*a larger --val-fraction at exp"):
        ds.check_scorable()
    ds = dataclasses.replace(ds, splits={"test": ds.splits["val"]})
    with pytest.raises(DataError, match=r"; bach fixes this split: is your copy of its data comp"):
        ds.check_scorable(("test",))
    # MedMNIST carves neither (a user's folder: test_local_scorable_hint_*).
    mnist = dataclasses.replace(ds, name="medmnist/pathmnist")
    with pytest.raises(DataError, match=r"; its splits are MedMNIST's official train/val/test: is"):
        mnist.check_scorable(("test",))


def _hint(train: list[int], val: list[int], given: str | None = None, patients=None) -> str:
    """local_scorable_hint for class 1 missing from val; test given (``test/``)."""
    labels = {"train": np.array(train), "val": np.array(val), "test": np.array([0, 1])}
    ids = {k: np.array([f"{k}{i}" for i in range(len(v))]) for k, v in labels.items()}
    if patients:
        ids["train"] = np.array(patients)
    gap = Unscorable("val", len(val), 1, lacks_negatives=False)
    return local_scorable_hint(gap, labels, ids, {"val": given, "test": "test/"}, False)


def test_local_scorable_hint_names_what_gives_the_split_and_when_no_fraction_can():
    """A given split's fix is images added to it (its fraction flag is refused); a class
    with fewer patients than the splits sharing them gets each by no fraction (one
    raised moves the refusal to the training split); only otherwise a larger fraction."""
    assert _hint([0, 1, 1], [0], given="val/") == (
        "val/ gives the val split, so no --val-fraction applies: add images of it there, or "
        "drop the class"
    )
    assert _hint([0, 1], [0]) == (
        "it has 1 image across train and val, and each of those splits needs one image of it: "
        "no fraction gives that; add images of it, or drop the class"
    )
    assert _hint([0, 1, 1, 1], [0], patients=["p0", "p1", "p1", "p1"]) == (
        "it has 3 images of 1 patient across train and val, and each of those splits needs "
        "one patient of it: no fraction gives that; add images of it, or drop the class"
    )
    assert _hint([0, 1, 1], [0]) == (
        "give the split more images of it (a larger --val-fraction), or drop the class"
    )
    multi = {k: np.ones((3, 1)) for k in ("train", "val", "test")}
    multi["train"][0, 0] = 0
    ids = {k: np.array([f"{k}{i}" for i in range(3)]) for k in multi}
    all_positive = Unscorable("val", 3, 0, lacks_negatives=True)
    assert local_scorable_hint(all_positive, multi, ids, {"val": None, "test": None}, True) == (
        "only 1 image across train, val and test lacks it, and each of those splits needs one "
        "image without it: no fraction gives that; add images without it, or leave its column "
        "out of --label-columns"
    )


@pytest.mark.parametrize(
    "view",
    [lambda mm: mm[32:], lambda mm: mm[32:][8:], lambda mm: mm[:, :, ::2], lambda mm: mm[::2]],
    ids=["slice", "slice-of-slice", "strided-columns", "strided-rows"],
)
def test_a_worker_reads_a_memmap_view_where_it_lies_in_its_file(tmp_path, view):
    """A caller's splits cut from one memmapped file (``mm[32:]``) kept the whole file's
    ``offset`` (numpy copies it onto views): a worker process re-mapped the view from the
    file's start and trained on rows 0.. under the labels of rows 32.., silently."""
    n = 96
    images = np.zeros((n, 4, 4, 3), np.uint8)
    images[..., 0] = np.arange(n)[:, None, None]  # each image holds its row number
    np.save(tmp_path / "all.npy", images)
    part = view(np.load(tmp_path / "all.npy", mmap_mode="r"))
    source = pipeline._BatchSource(part, np.arange(len(part)), np.arange(len(part))[None, :8])
    again = pickle.loads(pickle.dumps(source))  # what a worker process gets
    assert np.array_equal(again.images, view(images))
    assert np.array_equal(again[0]["image"], source[0]["image"])


def test_file_stats_names_each_file_by_where_it_resolves(tmp_path):
    """The cache's signature of a user's folder (computed with strings now, as
    ``Path.resolve`` took ten times the stat): names relative to the resolved root, links
    followed and named with their targets, a file outside the root by its full path, a
    missing one with -1s."""
    root = tmp_path / "imgs"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "x.png").write_bytes(b"1")
    (root / "y.png").write_bytes(b"22")
    outside = tmp_path / "z.png"
    outside.write_bytes(b"333")
    (root / "a" / "out.png").symlink_to(outside)
    (root / "a" / "in.png").symlink_to("b/x.png")
    paths = [root / "a" / "in.png", root / "a" / ".." / "y.png", root / "a" / "out.png"]
    paths.append(root / "gone.png")
    for given in (root, root / "a" / "..", f"{root}/"):
        stats = cache_mod.file_stats(given, paths)
        assert [(name, size) for name, size, _ in stats] == [
            ("a/in.png\0a/b/x.png", 1),
            (f"a/out.png\0{outside.resolve()}", 3),
            ("gone.png", -1),
            ("y.png", 2),
        ]
    # A link farm relabelled by swapping two links' targets: the same files, other
    # examples' pixels (named by their targets alone, the signature was the same).
    (root / "a" / "in2.png").symlink_to("../y.png")
    farm = [root / "a" / "in.png", root / "a" / "in2.png"]
    before = cache_mod.file_stats(root, farm)
    for link, target in (("in.png", "../y.png"), ("in2.png", "b/x.png")):
        (root / "a" / link).unlink()
        (root / "a" / link).symlink_to(target)
    after = cache_mod.file_stats(root, farm)
    assert sorted(x[1:] for x in before) == sorted(x[1:] for x in after) and before != after
    assert cache_mod.describe_change({"files": before}, {"files": after}) == "2 files changed"
    # A record of the older form, links named by their targets alone: rebuilt once, saying
    # why (it said "2 files added, 2 removed" of data nobody touched).
    older = [[name.split("\0")[1], *rest] for name, *rest in before]
    assert cache_mod.describe_change({"files": older}, {"files": before}) == (
        "its record of 2 linked file(s) predates naming links with their targets (so that "
        "swapping two links' targets counts)"
    )
    # A file named "x -> 1.png" is no link: two such names are two entries.
    plain = [["c/x -> 1.png", 10, 1], ["c/x -> 2.png", 10, 1]]
    edited = [["c/x -> 1.png", 99, 2], ["c/x -> 2.png", 10, 1]]
    assert cache_mod.describe_change({"files": plain}, {"files": edited}) == "1 file changed"
    assert (
        cache_mod.file_stats(root, [root / "y.png"], ctime=True)[0][3]
        == os.stat(root / "y.png").st_ctime_ns
    )
