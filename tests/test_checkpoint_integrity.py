"""Weights and checkpoints are checked, not trusted: damaged or inconsistent files are refused.

Every case is a real file the test writes and then damages as a disk, a
transfer or a hand edit would: bit flips inside a ``.pth``'s zip member and
inside orbax's array files, truncations, deletions, edited metadata. Each
must give one line naming the file (and the member, tensor or field), never
a silently wrong model and never a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import medft_jax.models
from experiments import predict
from medft_jax.checkpoints.model import (
    MAX_CROP_SIZE,
    CheckpointError,
    check_metadata,
    content_hash,
    load_metadata,
    load_model,
    save_model,
    staging_paths,
    variables_hash,
)
from medft_jax.data.images import DECODING_VERSION
from medft_jax.data.preprocess import normalize
from medft_jax.errors import Terminated
from medft_jax.models import variable_shapes
from medft_jax.models.blocks import flatten, unflatten
from tests.torch_ref import torch  # skips the module without torch
from weights_port.__main__ import main as port_main
from weights_port.keymap import PortError
from weights_port.state_io import read_state_dict

FAST_TESTS_GROUP = "torch"  # see tests/conftest.py

REPO = Path(__file__).resolve().parents[1]


# --- helpers -----------------------------------------------------------------------------------


def _abstract(arch: str, num_classes: int) -> dict:
    """``arch``'s variables as shapes only (no memory)."""
    return variable_shapes(arch, num_classes)


def _random_variables(arch: str, num_classes: int, seed: int = 0) -> dict:
    """Real arrays of ``arch``'s shapes; random values do not compress, as trained ones."""
    rng = np.random.default_rng(seed)
    out = {}
    for collection, tree in _abstract(arch, num_classes).items():
        flat = flatten(tree)
        values = {p: rng.standard_normal(s.shape, dtype=np.float32) * 0.05 for p, s in flat.items()}
        # BatchNorm variances are positive: a negative one is a NaN output.
        out[collection] = unflatten(
            {p: np.abs(v) + 1.0 if str(p).endswith("var") else v for p, v in values.items()}
        )
    return out


META = {
    "arch": "resnet50",
    "num_classes": 3,
    "multilabel": False,
    "class_names": ["a", "b", "c"],
    "resize_size": 232,
    "crop_size": 224,
    "source": "test",
}


def _member_data_offset(path: Path, member: str) -> int:
    """Where ``member``'s bytes start in the zip (after its local header)."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(member)
    raw = path.read_bytes()
    h = info.header_offset
    name_len, extra_len = struct.unpack("<HH", raw[h + 26 : h + 30])
    return h + 30 + name_len + extra_len


def _flip(path: Path, start: int, n: int) -> None:
    """Inverts ``n`` bytes of ``path`` from ``start``, as a damaged disk or transfer would."""
    b = bytearray(path.read_bytes())
    assert start + n <= len(b)
    for i in range(start, start + n):
        b[i] ^= 0xFF
    path.write_bytes(bytes(b))


def _one_error_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err[len("error: ") : -1]


# --- the .pth and .safetensors files of the port -----------------------------------------------


@pytest.fixture
def small_pth(tmp_path) -> Path:
    """A small torchvision-format state_dict: one 64 KiB float tensor and an int counter."""
    path = tmp_path / "small.pth"
    torch.manual_seed(0)
    torch.save({"w.weight": torch.randn(16384), "bn.num_batches_tracked": torch.tensor(3)}, path)
    return path


def _data_member(path: Path) -> str:
    with zipfile.ZipFile(path) as z:
        sizes = {i.filename: i.file_size for i in z.infolist() if "/data/" in i.filename}
    return max(sizes, key=sizes.get)  # the 64 KiB tensor's storage


def test_bit_flipped_pth_is_refused_naming_file_and_member(small_pth):
    clean = read_state_dict(small_pth)
    assert clean["w.weight"].shape == (16384,) and clean["bn.num_batches_tracked"] == 3
    member = _data_member(small_pth)
    _flip(small_pth, _member_data_offset(small_pth, member) + 1000, 4096)
    # torch.load itself does not notice: this is what was silently ported before.
    silent = torch.load(small_pth, map_location="cpu", weights_only=True)["w.weight"].numpy()
    assert not np.array_equal(silent, clean["w.weight"])
    with pytest.raises(PortError) as e:
        read_state_dict(small_pth)
    msg = str(e.value)
    assert msg == (
        f"{small_pth}: corrupted file: member {member!r} fails its CRC check; "
        "download or copy it again"
    )


def test_bit_flipped_pth_via_port_cli_is_one_line_and_writes_nothing(small_pth, tmp_path, capsys):
    _flip(small_pth, _member_data_offset(small_pth, _data_member(small_pth)) + 64, 4096)
    out = tmp_path / "ck"
    rc = port_main(["--arch", "resnet50", "--torch-weights", str(small_pth), "--out", str(out)])
    assert rc == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"{small_pth}: corrupted file: member ")
    assert not out.exists()


def test_nan_tensor_is_refused_with_its_name(tmp_path, capsys):
    path = tmp_path / "nan.pth"
    w = torch.ones(8, 4)
    w[3, 1] = float("nan")
    state = {"conv1.weight": torch.ones(3), "fc.weight": w}
    state["bn.num_batches_tracked"] = torch.tensor(2)  # an int: never "non-finite"

    torch.save(state, path)
    with pytest.raises(PortError, match=rf"^non-finite weights in {path}: fc.weight$"):
        read_state_dict(path)
    out = tmp_path / "ck"
    assert port_main(["--arch", "resnet50", "--torch-weights", str(path), "--out", str(out)]) == 2
    assert _one_error_line(capsys.readouterr().err) == f"non-finite weights in {path}: fc.weight"
    assert not out.exists()


def test_inf_in_safetensors_is_refused_with_its_name(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "inf.safetensors"
    save_file(
        {"a.weight": np.ones(4, np.float32), "b.running_var": np.array([1, np.inf], np.float32)},
        str(path),
    )
    with pytest.raises(PortError, match=rf"^non-finite weights in {path}: b.running_var$"):
        read_state_dict(path)


def test_a_negative_running_variance_is_refused_with_its_name(tmp_path):
    """Its square root is NaN, which XLA's CPU backend dropped in the pooling after it: the
    ported model gave finite, meaningless probabilities where torch gives NaN."""
    from safetensors.numpy import save_file

    path = tmp_path / "neg.safetensors"
    var = np.array([1.0, -0.5, 2.0], np.float32)
    save_file({"a.weight": -np.ones(3, np.float32), "bn1.running_var": var}, str(path))
    with pytest.raises(PortError) as e:
        read_state_dict(path)
    assert str(e.value) == (
        f"{path}: bn1.running_var has negative values; expected BatchNorm variances >= 0 "
        "(a damaged or edited file)"
    )


# --- the model checkpoint ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, dict]:
    """A real ResNet-50 model checkpoint (3 classes, random weights) written by save_model."""
    variables = _random_variables("resnet50", 3)
    path = save_model(
        tmp_path_factory.mktemp("ck") / "ck", variables["params"], variables["batch_stats"], META
    )
    return path, variables


@pytest.fixture
def ck(saved, tmp_path) -> Path:
    """A fresh copy of the saved checkpoint to damage."""
    return Path(shutil.copytree(saved[0], tmp_path / "ck"))


@pytest.fixture
def ck_meta(saved, tmp_path) -> Path:
    """A copy of the saved checkpoint whose metadata a test may edit: the metadata is
    copied, the 100 MB of arrays are hard links (only read here), so each test costs
    no 100 MB copy."""
    root = Path(shutil.copytree(saved[0], tmp_path / "ck", copy_function=os.link))
    shutil.rmtree(root / "metadata")
    shutil.copytree(saved[0] / "metadata", root / "metadata")
    return root


def _largest_array_file(ck: Path) -> Path:
    files = [p for p in (ck / "state").rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


def _edit_metadata(ck: Path, *, rehash: bool = True, **changes) -> None:
    """Edits the metadata; ``rehash``: as a writer would (its hash made again), so that
    what is checked is the metadata's sense, not the edit."""
    from medft_jax.checkpoints.model import METADATA_HASH, metadata_hash

    path = ck / "metadata" / "metadata"
    meta = json.loads(path.read_text())
    meta.update(changes)
    for k in [k for k, v in changes.items() if v is _DELETE]:
        del meta[k]
    if rehash and METADATA_HASH in meta and METADATA_HASH not in changes:
        meta[METADATA_HASH] = metadata_hash(meta)
    path.write_text(json.dumps(meta))


def test_edited_metadata_is_refused_not_read_as_other_labels(saved, tmp_path):
    # Two class names swapped: every prediction's label inverted, the arrays unchanged.
    variables, names = saved[1], ["a", "b", "c"]
    meta = {**META, "class_names": names}
    path = save_model(tmp_path / "ck", variables["params"], variables["batch_stats"], meta)
    assert load_metadata(path)["class_names"] == names
    _edit_metadata(path, class_names=["b", "a", "c"], rehash=False)
    for read in (load_model, load_metadata, content_hash):
        with pytest.raises(CheckpointError, match=r"metadata: the metadata was edited or corr"):
            read(path)
    _edit_metadata(path, metadata_sha256=_DELETE)  # written before the hash was: unchecked
    assert load_metadata(path)["class_names"] == ["b", "a", "c"]
    # ... unless it holds a key first written after the hash was: then the hash was deleted.
    _edit_metadata(path, decoding_version=DECODING_VERSION)
    with pytest.raises(CheckpointError, match=r"metadata: the metadata lacks its metadata_sha"):
        load_metadata(path)


def test_class_names_given_twice_are_refused_on_save_and_load(saved, tmp_path):
    """Predict's rows read "a 0.55, a 0.45": which output is which could not be told."""
    variables = saved[1]
    params, stats = variables["params"], variables["batch_stats"]
    with pytest.raises(CheckpointError, match=r"class_names names 'a' twice; expected one name"):
        save_model(tmp_path / "ck", params, stats, {**META, "class_names": ["a", "b", "a"]})
    assert not (tmp_path / "ck").exists()
    path = save_model(tmp_path / "ck", params, stats, {**META, "class_names": ["a", "b", "c"]})
    _edit_metadata(path, class_names=["a", "b", "a"])
    with pytest.raises(CheckpointError, match=r"class_names names 'a' twice"):
        load_model(path)


_DELETE = object()


def test_clean_checkpoint_round_trips_with_its_hash(saved):
    path, variables = saved
    loaded, meta = load_model(path)
    assert len(meta["content_sha256"]) == 64
    assert meta["content_sha256"] == variables_hash(variables) == variables_hash(loaded)
    assert content_hash(path) == meta["content_sha256"]
    for p, leaf in flatten(variables["params"]).items():
        assert np.array_equal(flatten(loaded["params"])[p], leaf), p


def test_hash_depends_on_every_value(saved):
    _, variables = saved
    other = jax.tree.map(np.copy, variables)
    other["batch_stats"]["bn1"]["var"][5] = np.nextafter(other["batch_stats"]["bn1"]["var"][5], 1)
    assert variables_hash(other) != variables_hash(variables)


def test_bit_flipped_array_file_is_refused_not_loaded(ck):
    data = _largest_array_file(ck)
    _flip(data, data.stat().st_size // 2, 64)
    with pytest.raises(CheckpointError) as e:
        load_model(ck)
    assert str(e.value).startswith(f"{ck}: content hash mismatch: the checkpoint's arrays were")


@pytest.mark.parametrize("offset", [0.25, 0.5, 0.9])
def test_4kib_flip_anywhere_in_the_arrays_is_refused(ck, offset):
    data = _largest_array_file(ck)
    _flip(data, int(data.stat().st_size * offset), 4096)
    with pytest.raises(CheckpointError) as e:
        load_model(ck)
    msg = str(e.value)
    assert msg.startswith(f"{ck}: ") and "\n" not in msg
    assert "content hash mismatch" in msg or "cannot be read" in msg


def test_content_hash_reads_only_the_metadata(saved, ck):
    """The run identity needs the hash without loading ~100 MB; load_model verifies it."""
    (ck / "state" / "_METADATA").unlink()  # no array can be read now
    assert content_hash(ck) == load_metadata(saved[0])["content_sha256"]
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_model(ck)


def test_checkpoint_without_hash_still_loads_and_hash_is_computed(saved, ck):
    _edit_metadata(ck, content_sha256=_DELETE)
    _, meta = load_model(ck)
    assert "content_sha256" not in meta
    assert content_hash(ck) == load_metadata(saved[0])["content_sha256"]


@pytest.mark.slow  # seconds: the fast tier stays under 2 minutes
def test_non_finite_weights_are_refused_by_path(saved, tmp_path):
    variables = jax.tree.map(np.copy, saved[1])
    variables["params"]["layer1"]["0"]["conv1"]["kernel"][0, 0, 3, 7] = np.nan
    path = save_model(tmp_path / "nan", variables["params"], variables["batch_stats"], META)
    with pytest.raises(CheckpointError) as e:
        load_model(path)
    assert str(e.value) == f"non-finite weights in {path}: params/layer1/0/conv1/kernel"
    _edit_metadata(path, content_sha256=_DELETE)  # an old checkpoint: still checked
    with pytest.raises(CheckpointError, match=r"non-finite weights in .*: params/layer1/0/conv1"):
        load_model(path)
    variables = jax.tree.map(np.copy, saved[1])  # a variance below 0: NaN in the model
    variables["batch_stats"]["layer2"]["0"]["bn2"]["var"][5] = -1.0
    path = save_model(tmp_path / "neg", variables["params"], variables["batch_stats"], META)
    with pytest.raises(CheckpointError) as e:
        load_model(path)
    assert str(e.value) == (
        f"{path}: batch_stats/layer2/0/bn2/var has negative values; expected BatchNorm "
        "variances >= 0 (a damaged or edited checkpoint)"
    )


@pytest.mark.parametrize(
    ("damage", "expect"),
    [
        ("truncate_data", "cannot be read"),
        ("delete_data", "cannot be read"),
        ("truncate_state_metadata", "cannot be read"),
        ("delete_state_metadata", "cannot be read"),
        ("flip_btree", "cannot be read"),
    ],
)
def test_truncated_or_missing_array_files_are_one_line(ck, damage, expect):
    data = _largest_array_file(ck)
    btree = next((ck / "state" / "d").iterdir())  # the root b-tree node of orbax's OCDBT store
    if damage == "truncate_data":
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    elif damage == "delete_data":
        data.unlink()
    elif damage == "truncate_state_metadata":
        p = ck / "state" / "_METADATA"
        p.write_bytes(p.read_bytes()[:100])
    elif damage == "delete_state_metadata":
        (ck / "state" / "_METADATA").unlink()
    else:
        _flip(btree, btree.stat().st_size - 40, 16)
    with pytest.raises(CheckpointError) as e:
        load_model(ck)
    msg = str(e.value)
    assert msg.startswith(f"{ck}: ") and expect in msg and "\n" not in msg
    assert "tensorstore_spec" not in msg and len(msg) < 500


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        (b"", "the metadata file is empty"),
        (b'{"arch": "resnet50",\n garbage', "unreadable metadata JSON (Expecting property name"),
        (b"[1, 2]", "the metadata is a JSON list, expected an object"),
        (b"\xff\xfe\x00", "not UTF-8"),
        (None, "missing"),
    ],
)
def test_unreadable_metadata_names_the_file(ck_meta, content, expect):
    ck = ck_meta
    path = ck / "metadata" / "metadata"
    if content is None:
        path.unlink()
    else:
        path.write_bytes(content)
    for read in (load_model, load_metadata, content_hash):
        with pytest.raises(CheckpointError) as e:
            read(ck)
        assert str(e.value).startswith(f"{path}: ") and expect in str(e.value)


BAD_METADATA = [
    (
        {"num_classes": 10**9},
        "metadata num_classes 1000000000 disagrees with the stored head "
        "params/fc/kernel of shape (2048, 3) (3 classes)",
    ),
    (
        {"arch": "vgg19"},
        "metadata arch 'vgg19' disagrees with the stored arrays (the arrays are "
        "a resnet50 model's)",
    ),
    ({"arch": "resnet18"}, "metadata arch 'resnet18' is not a known arch"),
    ({"crop_size": 10**6}, f"metadata crop_size 1000000 is not an integer in [32, {MAX_CROP_SIZE}"),
    ({"crop_size": 224.0}, "metadata crop_size 224.0 is not an integer"),
    ({"resize_size": 100}, "metadata resize_size 100 is not an integer in [224 (the crop)"),
    ({"class_names": ["a", "b"]}, "metadata class_names has 2 names for 3 classes"),
    ({"multilabel": "yes"}, "metadata multilabel 'yes' is not true or false"),
    ({"num_classes": _DELETE}, "metadata lacks the field 'num_classes'"),
    ({"num_classes": "3"}, "metadata num_classes '3' is not a positive integer"),
    ({"num_batches_tracked": {"bn1.num_batches_tracked": "x"}}, "metadata num_batches_tracked"),
    ({"bits_stored": 20}, "metadata bits_stored 20 is not an integer from 8 to 16"),
    ({"bits_stored": True}, "metadata bits_stored True is not an integer from 8 to 16"),
    ({"dicom_window": [40, 0]}, "metadata dicom_window [40, 0] is not [center, width]"),
    ({"dicom_window": "40,80"}, "metadata dicom_window '40,80' is not [center, width]"),
    ({"dicom_window": [40, float("nan")]}, "metadata dicom_window [40, nan] is not [center,"),
    ({"precision": "fp16"}, "metadata precision 'fp16' is not one of fp32, bf16"),
    ({"format_version": 0}, "metadata format_version 0 is not one this medft-jax reads (1 to"),
]


@pytest.mark.parametrize(("changes", "expect"), BAD_METADATA)
def test_inconsistent_metadata_is_refused_before_building_predictor(
    ck_meta, changes, expect, monkeypatch
):
    ck = ck_meta
    _edit_metadata(ck, **changes)

    def no_build(*args, **kwargs):
        raise AssertionError("a model was built from metadata that was not checked")

    monkeypatch.setattr(medft_jax.models, "create", no_build)
    with pytest.raises(CheckpointError) as e:
        predict.Predictor(ck)
    assert str(e.value) == f"{ck}: {expect}" or str(e.value).startswith(f"{ck}: {expect}")


@pytest.mark.slow
def test_a_checkpoint_carries_how_its_training_images_were_decoded(saved, tmp_path, monkeypatch):
    """A run on 16-bit files of declared bits (``--bits-stored 12``) writes it into its best
    parameters' metadata (format version 2: a version-1 reader would decode otherwise), and
    predict decodes with it; a flag that disagrees is refused, before any compute."""
    path0, variables = saved
    meta12 = {**META, "bits_stored": 12}
    path12 = save_model(tmp_path / "b", variables["params"], variables["batch_stats"], meta12)
    assert load_metadata(path12)["format_version"] == 2
    assert load_metadata(path0)["format_version"] == 1
    with pytest.raises(predict.PredictError) as e:
        predict.Predictor(path12, 16)
    assert str(e.value) == (
        "--bits-stored 16 disagrees with the checkpoint's 12, the bits its training images "
        "were decoded with; leave the flag out"
    )
    values = np.random.default_rng(0).integers(0, 4096, (240, 250)).astype(np.uint16)
    image = tmp_path / "xray.png"
    Image.fromarray(values).save(image)
    seen = []
    monkeypatch.setattr(
        predict.Predictor, "__call__", lambda self, b: seen.append(b) or b[:, :3, 0, 0]
    )
    predict.Predictor(path12).predict_files([str(image)])
    assert np.array_equal(seen[0][0], predict.load_image(image, 232, 224, 12))
    assert seen[0][0].max() > 200  # 12-bit data spread over 0..255, not crushed to 0..15
    with pytest.raises(predict.PredictError, match=r"xray\.png: 16-bit image whose values"):
        predict.Predictor(path0).predict_files([str(image)])


@pytest.mark.slow
def test_a_runs_checkpoint_without_a_decoding_rule_refuses_one_at_predict(saved, tmp_path):
    """Its run decoded by the default rules: a flag here would show the model images unlike
    those it was trained on. Ported weights (no training images of their own) take them."""
    _, variables = saved
    meta = {**META, "source": "run demo-resnet50-ft-lr0.001-s0-abc"}
    path = save_model(tmp_path / "r", variables["params"], variables["batch_stats"], meta)
    with pytest.raises(predict.PredictError) as e:
        predict.Predictor(path, dicom_window="40,80")
    assert str(e.value) == (
        "--dicom-window 40,80: the checkpoint's run showed each DICOM file by its own window "
        "(or its range), and these must be shown alike; leave the flag out"
    )
    with pytest.raises(predict.PredictError, match=r"^--bits-stored 12: the checkpoint's run "):
        predict.Predictor(path, 12)
    # 16 maps as the default does (v >> 8); the default's refusal of a dark 16-bit file
    # tells the user to give it, so it is taken, and that file read as training would.
    dark = tmp_path / "dark.png"
    Image.fromarray(np.full((240, 250), 3000, np.uint16)).save(dark)
    with pytest.raises(predict.PredictError, match=r"or --bits-stored 16 to keep the 16-bit"):
        predict.load_image(dark, 232, 224, None)  # the default rule, the run's own
    sixteen = predict.Predictor(path, 16)
    assert sixteen.bits_stored == 16
    assert (predict.load_image(dark, 232, 224, sixteen.bits_stored) == 3000 >> 8).all()
    ported = predict.Predictor(saved[0], 12, dicom_window="40,80")  # source "test"
    assert (ported.bits_stored, ported.dicom_window) == (12, (40.0, 80.0))


def test_a_dark_16_bit_file_on_a_checkpoint_of_fixed_bits_is_told_what_predict_takes(tmp_path):
    """Predict decodes as the checkpoint's training did, so the decoder's "give
    --bits-stored" is wrong where the checkpoint fixes the bits: a 12-bit X-ray on a run
    trained without the flag was told to give 12, which was refused ("leave the flag
    out"), and only 16, a nearly black image, was taken. The refusal says how the run
    decoded such files and what reads this one, and asks for no flag predict refuses."""
    tiny = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), variable_shapes("resnet_tiny", 3))
    ported = {**META, "arch": "resnet_tiny", "resize_size": 32, "crop_size": 32}
    run = {**ported, "source": "run folder-resnet_tiny-ft-lr0.001-s0-abc"}

    def checkpoint(name: str, meta: dict) -> Path:
        return save_model(tmp_path / name, tiny["params"], tiny["batch_stats"], meta)

    path = checkpoint("r", run)
    xray = tmp_path / "xray12.png"
    Image.fromarray(np.full((40, 50), 4095, np.uint16)).save(xray)
    with pytest.raises(predict.PredictError) as e:
        predict.Predictor(path).predict_files([str(xray)])
    assert str(e.value) == (
        f"{xray}: 16-bit image whose values all fit in 14 bits (4095..4095) would keep at "
        "most 64 grey levels under the 16-bit rule; the checkpoint's run declared no "
        "--bits-stored, so it decoded 16-bit files by that rule, refusing files like this "
        "one, and predict decodes as it did: save this file as 8-bit, scaled as you want it, "
        "or train a run on such images with --bits-stored N, the bits they use (12 for most "
        "X-rays), and predict with its checkpoint (--bits-stored 16 forces that rule "
        "here, keeping those few grey levels)"
    )
    with pytest.raises(predict.PredictError, match=r"^--bits-stored 12: .*leave the flag out$"):
        predict.Predictor(path, 12)  # why the advice must not be "give --bits-stored 12"
    assert predict.Predictor(path, 16).bits_stored == 16  # the one flag it names: taken
    # Ported weights decode by any rule: the decoder's own advice holds there.
    with pytest.raises(predict.PredictError, match=r"; give --bits-stored with the bits its"):
        predict.Predictor(checkpoint("p", ported)).predict_files([str(xray)])
    # A checkpoint of 12 bits and a file of more: "give the bits the data really uses"
    # would be refused as disagreeing with the checkpoint's.
    path12 = checkpoint("b", {**run, "bits_stored": 12})
    wide = tmp_path / "wide.png"
    Image.fromarray(np.full((40, 50), 5000, np.uint16)).save(wide)
    with pytest.raises(predict.PredictError) as e:
        predict.Predictor(path12).predict_files([str(wide)])
    assert str(e.value) == (
        f"{wide}: values 5000..5000 exceed the 12-bit range 0..4095 of --bits-stored 12; the "
        "checkpoint records --bits-stored 12, the bits its training images were decoded "
        "with, and predict decodes as they were: save this file with values 0..4095, scaled "
        "as you want it, or train a run on such images with --bits-stored N, the bits they use"
    )


@pytest.mark.slow
def test_a_checkpoint_carries_its_dicom_window(saved, tmp_path):
    """A run's ``--dicom-window`` is in its best parameters' metadata (format version 4: an
    older reader would window each DICOM by its own), and predict takes it; a flag that
    disagrees is refused before any compute, one that agrees (in any spelling) is not."""
    _, variables = saved
    meta = {**META, "bits_stored": 12, "precision": "bf16", "dicom_window": [40.0, 80.0]}
    path = save_model(tmp_path / "w", variables["params"], variables["batch_stats"], meta)
    assert load_metadata(path)["format_version"] == 4
    old = {**META, "format_version": 1}  # an older checkpoint's metadata, a field added
    again = save_model(
        tmp_path / "v", variables["params"], variables["batch_stats"], {**old, **meta}
    )
    assert load_metadata(again)["format_version"] == 4
    plain = save_model(
        tmp_path / "p", variables["params"], variables["batch_stats"], {**META, "format_version": 4}
    )
    assert load_metadata(plain)["format_version"] == 1  # what its fields need, no more
    assert predict.Predictor(path).dicom_window == (40.0, 80.0)
    assert predict.Predictor(path, dicom_window="40,80.0").dicom_window == (40.0, 80.0)
    with pytest.raises(predict.PredictError) as e:
        predict.Predictor(path, dicom_window="50,80")
    assert str(e.value) == (
        "--dicom-window 50,80 disagrees with the checkpoint's 40,80, the window its training "
        "DICOM files were decoded with; leave the flag out"
    )


@pytest.mark.slow  # compiles the model in two precisions
def test_a_bf16_runs_checkpoint_predicts_in_bf16(tmp_path, capsys):
    """A ``--precision bf16`` run evaluated in bfloat16; its checkpoint says so (format
    version 3: an older reader would compute in float32) and predict computes alike,
    unless ``--precision fp32`` asks otherwise."""
    rng = np.random.default_rng(0)
    shapes = variable_shapes("resnet_tiny", 3)  # random weights, unit BN statistics: no init
    variables = {
        "params": jax.tree.map(
            lambda s: rng.normal(0, 0.1, s.shape).astype(s.dtype), shapes["params"]
        ),
        "batch_stats": jax.tree.map(lambda s: np.ones(s.shape, s.dtype), shapes["batch_stats"]),
    }
    meta = {"arch": "resnet_tiny", "num_classes": 3, "resize_size": 36, "crop_size": 32}
    meta["precision"] = "bf16"
    ck = save_model(tmp_path / "ck", variables["params"], variables["batch_stats"], meta)
    assert load_metadata(ck)["format_version"] == 3
    image = tmp_path / "a.png"  # 36 px: the resize keeps it, the crop takes [2:34]
    Image.fromarray(rng.integers(0, 256, (36, 36, 3), np.uint8)).save(image)
    crop = np.asarray(Image.open(image))[None, 2:34, 2:34]

    def probs(dtype):  # normalised inside the jit, as a run's evaluation step does
        model = medft_jax.models.create("resnet_tiny", 3, dtype=dtype)

        def forward(variables, images):
            logits = model.apply(variables, normalize(images, dtype))
            return jax.nn.softmax(logits.astype(jnp.float32))

        return np.asarray(jax.jit(forward)(variables, crop))[0]

    bf16, f32 = probs(jnp.bfloat16), probs(jnp.float32)
    assert np.abs(bf16 - f32).max() > 1e-4  # the two differ: the test tells them apart
    argv = ["--checkpoint", str(ck), "--images", str(image), "--json"]
    for flags, expect, said in (([], bf16, "bf16"), (["--precision", "fp32"], f32, "fp32")):
        assert predict.main([*argv, *flags]) == 0
        out = json.loads(capsys.readouterr().out)
        np.testing.assert_allclose(out["probs"], expect, atol=1e-6)
        assert out["precision"] == said


@pytest.mark.slow  # the predictor test above checks the same metadata in the fast tier
@pytest.mark.parametrize(("changes", "expect"), BAD_METADATA[:4])
def test_inconsistent_metadata_is_refused_by_export(ck, tmp_path, changes, expect, capsys):
    _edit_metadata(ck, **changes)
    out = tmp_path / "o.pth"
    assert port_main(["export", "--checkpoint", str(ck), "--out", str(out)]) == 2
    assert _one_error_line(capsys.readouterr().err).startswith(f"{ck}: {expect}")
    assert not out.exists() and not out.with_suffix(".safetensors").exists()


@pytest.mark.slow  # traces DenseNet-121's and VGG-19's trees
def test_check_metadata_names_the_first_structural_difference():
    densenet = _abstract("densenet121", 5)
    meta = {"arch": "densenet121", "num_classes": 5}
    check_metadata(densenet, meta, "x")  # the right tree passes
    del densenet["params"]["features"]["denseblock2"]["denselayer3"]["conv1"]
    with pytest.raises(
        CheckpointError,
        match=r"^x: metadata arch 'densenet121' disagrees .*"
        r"params/features/denseblock2/denselayer3/conv1/kernel is missing",
    ):
        check_metadata(densenet, meta, "x")
    vgg = _abstract("vgg19", 7)
    with pytest.raises(CheckpointError, match=r"\(the arrays are a vgg19 model's\)$"):
        check_metadata(vgg, {"arch": "resnet50", "num_classes": 7}, "y")


def test_save_refuses_a_path_through_a_file(saved, tmp_path):
    (tmp_path / "f").write_text("x")
    params, stats = saved[1]["params"], saved[1]["batch_stats"]
    with pytest.raises(CheckpointError, match=r"is a file, expected a folder$"):
        save_model(tmp_path / "f" / "ck", params, stats, META)
    with pytest.raises(CheckpointError, match=r"is a file, expected a checkpoint folder$"):
        save_model(tmp_path / "f", params, stats, META, force=True)
    assert (tmp_path / "f").read_text() == "x"


@pytest.mark.slow  # seconds: the fast tier stays under 2 minutes
def test_a_failed_overwrite_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    """Orbax's own ``force`` deleted the old checkpoint before writing: a full disk then
    left none. The new one is written beside it and swapped in when whole."""
    import errno

    import orbax.checkpoint as ocp

    meta = {**META, "arch": "resnet_tiny", "resize_size": 36, "crop_size": 32}
    first, second = _random_variables("resnet_tiny", 3, 0), _random_variables("resnet_tiny", 3, 1)
    folder = save_model(tmp_path / "ck", first["params"], first["batch_stats"], meta)
    real_save = ocp.Checkpointer.save

    def save_then_fill_the_disk(self, directory, *args, **kwargs):
        real_save(self, directory, *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device", str(directory))

    with monkeypatch.context() as m:
        m.setattr(ocp.Checkpointer, "save", save_then_fill_the_disk)
        with pytest.raises(OSError, match="No space left on device"):
            save_model(folder, second["params"], second["batch_stats"], meta, force=True)
    assert variables_hash(load_model(folder)[0]) == variables_hash(first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # the staging folder is gone
    save_model(folder, second["params"], second["batch_stats"], meta, force=True)
    assert variables_hash(load_model(folder)[0]) == variables_hash(second)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_save_refuses_metadata_the_loader_refuses_and_keeps_the_previous_checkpoint(tmp_path):
    """It wrote them (a wrong class count, a missing field, a crop of 99999), and with
    force replaced a good checkpoint with one no command could load."""
    meta = {**META, "arch": "resnet_tiny", "resize_size": 36, "crop_size": 32}
    good = _random_variables("resnet_tiny", 3, 0)
    folder = save_model(tmp_path / "ck", good["params"], good["batch_stats"], meta)
    no_classes = {k: v for k, v in meta.items() if k != "num_classes"}
    for bad, message in (
        ({**meta, "num_classes": 7}, "metadata num_classes 7 disagrees with the stored head"),
        (no_classes, "metadata lacks the field 'num_classes'"),
        ({**meta, "crop_size": 99999}, "metadata crop_size 99999 is not an integer in"),
    ):
        with pytest.raises(CheckpointError, match=f"^{re.escape(str(folder))}: {message}"):
            save_model(folder, good["params"], good["batch_stats"], bad, force=True)
        assert variables_hash(load_model(folder)[0]) == variables_hash(good)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_a_best_replaced_while_it_is_read_is_read_again_not_called_corrupted(tmp_path, monkeypatch):
    """Predict on a run still training: a new best swapped in between the metadata's read
    and the arrays' was "modified or corrupted", the checkpoint sound."""
    from medft_jax.checkpoints import model

    meta = {**META, "arch": "resnet_tiny", "resize_size": 36, "crop_size": 32}
    first, second = _random_variables("resnet_tiny", 3, 0), _random_variables("resnet_tiny", 3, 1)
    folder = save_model(tmp_path / "best", first["params"], first["batch_stats"], meta)
    reading = model._restore_state
    calls = []

    def a_new_best_lands(directory):
        if not calls and saving:  # the run's next save, between the two reads
            save_model(folder, second["params"], second["batch_stats"], meta, force=True)
        calls.append(directory)
        return reading(directory)

    saving = True

    monkeypatch.setattr(model, "_restore_state", a_new_best_lands)
    loaded, got = load_model(folder)
    assert len(calls) == 2 and variables_hash(loaded) == variables_hash(second)
    assert got["content_sha256"] == variables_hash(second)
    # The arrays moved aside mid-read ("files under state/ are truncated, missing or
    # corrupted"): read again too.
    calls.clear()

    def moved_aside(directory):
        if not calls:
            save_model(folder, first["params"], first["batch_stats"], meta, force=True)
            calls.append(directory)
            raise CheckpointError(f"{directory}: files under state/ are truncated")
        calls.append(directory)
        return reading(directory)

    monkeypatch.setattr(model, "_restore_state", moved_aside)
    loaded, _ = load_model(folder)
    assert len(calls) == 2 and variables_hash(loaded) == variables_hash(first)
    monkeypatch.setattr(model, "_restore_state", a_new_best_lands)
    # Arrays that do not hash to a metadata unchanged meanwhile: damaged, said so at once.
    calls.clear()
    saving = False
    monkeypatch.setattr(model, "variables_hash", lambda v: "0" * 64)
    with pytest.raises(CheckpointError, match="content hash mismatch"):
        load_model(folder)
    assert len(calls) == 1


def test_a_save_failing_on_a_full_disk_leaves_nothing_its_late_writes_made(tmp_path, monkeypatch):
    """Orbax raises the first failed write's error while the save's other writes go on:
    the staging folder, deleted at once, was made again by them, and a full disk kept a
    half-written checkpoint after the run stopped. Its writers are let end first: a thread
    the save started is joined, and what writes from no such thread (tensorstore's own
    threads) is removed again until nothing comes back."""
    import errno
    import threading
    import time

    import orbax.checkpoint as ocp

    meta = {**META, "arch": "resnet_tiny", "resize_size": 36, "crop_size": 32}
    variables = _random_variables("resnet_tiny", 3, 0)
    folder = tmp_path / "ck"
    failed = threading.Event()

    def late_write(directory: Path, delay: float) -> None:
        time.sleep(delay)
        d = Path(f"{directory}.orbax-checkpoint-tmp") / "state" / "ocdbt.process_0" / "d"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"late{delay}").write_bytes(b"x" * 1000)

    def tensorstore_write() -> None:  # a thread older than the save
        failed.wait(10)
        late_write(staging_paths(folder)[0], 0.1)

    def save_on_a_full_disk(self, directory, *args, **kwargs):
        late_write(directory, 0)
        own.start()
        failed.set()
        raise OSError(errno.ENOSPC, "No space left on device", str(directory))

    stray = threading.Thread(target=tensorstore_write)
    own = threading.Thread(target=late_write, args=(staging_paths(folder)[0], 0.6))
    stray.start()
    monkeypatch.setattr(ocp.Checkpointer, "save", save_on_a_full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        save_model(folder, variables["params"], variables["batch_stats"], meta)
    stray.join()
    own.join()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_two_runs_needing_the_imagenet_weights_port_them_once(tmp_path, monkeypatch):
    """Two runs starting at once on an empty cache ported into one folder together: one
    deleted the other's unfinished orbax folder and died with a traceback."""
    import threading
    import time

    import weights_port
    from medft_jax.checkpoints import pretrained

    target = tmp_path / "flax" / "resnet50_IMAGENET1K_V2"
    ported = []

    def slow_port(arch):
        ported.append(arch)
        time.sleep(0.3)  # the other run asks meanwhile
        target.mkdir(parents=True)
        return target

    monkeypatch.setattr(weights_port, "default_checkpoint", lambda arch: target)
    monkeypatch.setattr(weights_port, "port_imagenet", slow_port)
    found = []
    runs = [
        threading.Thread(target=lambda: found.append(pretrained.locate("auto", "resnet50")))
        for _ in range(2)
    ]
    for t in runs:
        t.start()
    for t in runs:
        t.join()
    assert ported == ["resnet50"] and found == [target, target]


def test_late_event_loop_reports_are_dropped_and_others_kept(ck, monkeypatch):
    """tensorstore reports "Event loop is closed" through sys.unraisablehook after a failed
    restore (a traceback per pending array); only that report is dropped."""
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(str(u.exc_value)))
    (ck / "state" / "_METADATA").unlink()
    with pytest.raises(CheckpointError):
        load_model(ck)  # wraps the hook in place
    # A read coroutine orbax closed unfinished, reporting its GeneratorExit as its own error.
    abandoned = Exception("Encountered error while reading array index: (slice(0, 1, 1),)")
    abandoned.__cause__ = GeneratorExit()
    unexplained = Exception("Encountered error while reading array index: (slice(0, 1, 1),)")
    for error in (
        RuntimeError("Event loop is closed"),
        RuntimeError("something else"),
        abandoned,
        unexplained,
    ):
        report = SimpleNamespace(
            exc_type=type(error), exc_value=error, exc_traceback=None, err_msg=None, object=None,
        )  # fmt: skip
        sys.unraisablehook(report)
    assert seen == ["something else", str(unexplained)]


def test_orbax_racing_its_managers_close_is_not_reported_other_errors_are(caplog):
    """A run refused at its resume closes orbax's manager while its signalling thread
    starts; the thread's RuntimeError came with a traceback after the one error line."""
    from medft_jax.checkpoints.model import quiet_reported_failures

    quiet_reported_failures()
    absl = logging.getLogger("absl")
    race = RuntimeError("cannot schedule new futures after shutdown")
    # A SIGTERM raised while orbax's finalize thread was joined: the command's own line
    # says it ("terminated (SIGTERM): ..."), after orbax's 14-line traceback of it.
    stopped = Terminated()
    with caplog.at_level(logging.ERROR, logger="absl"):
        for error in (race, stopped, RuntimeError("something else")):
            try:
                raise error
            except (RuntimeError, Terminated) as e:
                absl.error("_SignalingThread.run() raised an exception: %s", e, exc_info=True)
    assert [r.exc_info[1] for r in caplog.records] == [caplog.records[0].exc_info[1]]
    assert str(caplog.records[0].exc_info[1]) == "something else"


# --- command-line flags and outputs ------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "expect"),
    [
        (["--batch-size", "0"], "--batch-size must be an integer in [1, 4096], got 0"),
        (["--batch-size", "100000"], "--batch-size must be an integer in [1, 4096], got 100000"),
        (["--top", "-1"], "--top must be an integer >= 1, got -1"),
        (["--top", "0"], "--top must be an integer >= 1, got 0"),
    ],
)
def test_predict_flags_checked_before_any_work(tmp_path, flags, expect, capsys):
    missing = tmp_path / "no-such-checkpoint"  # the flag is named first, before the folder
    rc = predict.main(["--checkpoint", str(missing), "--images", "x.png", *flags])
    assert rc == 2
    cap = capsys.readouterr()
    assert cap.out == "" and _one_error_line(cap.err) == expect


@pytest.mark.slow  # seconds: the fast tier stays under 2 minutes
def test_predict_top_larger_than_classes_shows_all(tmp_path, capsys):
    from PIL import Image

    # ResNet-50 with one bottleneck per layer and a small crop: a quick compile.
    variables = _random_variables("resnet_tiny", 3)
    meta = {**META, "arch": "resnet_tiny", "resize_size": 37, "crop_size": 32}
    path = save_model(tmp_path / "ck", variables["params"], variables["batch_stats"], meta)
    image = tmp_path / "a.png"
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(image)
    assert predict.main(["--checkpoint", str(path), "--images", str(image), "--top", "50"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{image}: ") and line.count(",") == 2  # all three classes


def test_export_out_in_a_file_or_a_folder_is_one_line(saved, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    (tmp_path / "d.pth").mkdir()
    for out, expect in [
        (tmp_path / "f" / "m.pth", f"--out {tmp_path / 'f'}: {tmp_path / 'f'} is a file"),
        (tmp_path / "d.pth", f"--out {tmp_path / 'd.pth'}: is a folder"),
        (tmp_path / "m.txt", "expected a file name ending in .pth, .pt or .safetensors"),
        (tmp_path / "m.PTH", ": expected a file name ending in .pth, .pt or .safetensors (lower"),
    ]:
        assert port_main(["export", "--checkpoint", str(saved[0]), "--out", str(out)]) == 2
        assert expect in _one_error_line(capsys.readouterr().err)


def test_a_file_given_as_a_checkpoint_is_named_a_file(tmp_path):
    (tmp_path / "ck").write_text("")
    with pytest.raises(CheckpointError, match=r"ck: is a file, expected a checkpoint folder$"):
        load_model(tmp_path / "ck")
    with pytest.raises(CheckpointError, match=r"none: no such checkpoint folder$"):
        load_model(tmp_path / "none")
    # A --force rerun that has not saved its best/ yet: the finished one waits in previous/.
    run = tmp_path / "run"
    (run / "previous" / "best" / "metadata").mkdir(parents=True)
    with pytest.raises(CheckpointError) as e:
        load_model(run / "best")
    assert str(e.value) == (
        f"{run / 'best'}: no such checkpoint folder; a --force rerun of this run has not saved "
        f"one yet: its last finished parameters are {run / 'previous' / 'best'}"
    )
    # A run in its first epoch (its lock held, here by another host's process).
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / ".lock").write_text(json.dumps({"pid": 1, "host": "node17"}))
    with pytest.raises(CheckpointError) as e:
        load_model(fresh / "best")
    assert str(e.value) == (
        f"{fresh / 'best'}: no such checkpoint folder; its run's lock names host node17 (a run "
        "there that has not saved a best epoch yet, or one killed there before it did)"
    )
    (fresh / ".lock").write_text("garbage")  # unreadable: nothing said of a process
    with pytest.raises(CheckpointError, match=r"no such checkpoint folder$"):
        load_model(fresh / "best")


def test_export_replaces_existing_files_only_with_force(tiny_saved, tmp_path, capsys):
    """It wrote over the user's files, the .safetensors twin of a .pth without a word."""
    for name in ("model.pth", "model.safetensors"):
        mine = tmp_path / name
        mine.write_text("mine")
        out = tmp_path / "model.pth"
        assert port_main(["export", "--checkpoint", str(tiny_saved), "--out", str(out)]) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert line == f"--out {out}: {mine} already exists; pass --force to overwrite it"
        assert mine.read_text() == "mine" and len(list(tmp_path.iterdir())) == 1
        mine.unlink()
    argv = ["export", "--checkpoint", str(tiny_saved), "--out", str(tmp_path / "model.pth")]
    assert port_main(argv) == 0
    assert port_main(argv) == 2 and "already exists" in capsys.readouterr().err
    assert port_main([*argv, "--force"]) == 0
    # A link as --out: --force replaced the link with a file, the docs said it is refused.
    kept = tmp_path / "elsewhere.pth"
    kept.write_text("mine")
    link = tmp_path / "linked.pth"
    link.symlink_to(kept)
    for force in ([], ["--force"]):
        argv = ["export", "--checkpoint", str(tiny_saved), "--out", str(link), *force]
        assert port_main(argv) == 2
        assert _one_error_line(capsys.readouterr().err) == (
            f"--out {link}: {link} is a link; give the file it points to, or another name"
        )
        assert link.is_symlink() and kept.read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_export_into_read_only_folder_is_one_line(saved, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert port_main(["export", "--checkpoint", str(saved[0]), "--out", str(ro / "m.pth")]) == 2
        assert "not writable" in _one_error_line(capsys.readouterr().err)
    finally:
        ro.chmod(0o700)


@pytest.mark.slow  # the fast tier's damaged resnet_tiny checkpoint goes through predict too
def test_predict_cli_on_damaged_checkpoint_prints_one_line(ck, tmp_path):
    """The whole process, as a user sees it: no orbax/tensorstore/asyncio traceback on stderr."""
    btree = next((ck / "state" / "d").iterdir())
    _flip(btree, btree.stat().st_size - 40, 16)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.predict", "--checkpoint", str(ck), "--images", "x.png"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert _one_error_line(proc.stderr).startswith(f"{ck}: the checkpoint's arrays cannot be read")


# --- a damaged array file of a small model: orbax wraps tensorstore's error -----------------------


@pytest.fixture(scope="module")
def tiny_saved(tmp_path_factory) -> Path:
    """A resnet_tiny model checkpoint: its arrays are small enough that orbax reads each
    in one piece and wraps tensorstore's read error in a bare ``Exception``."""
    variables = _random_variables("resnet_tiny", 3)
    meta = {**META, "arch": "resnet_tiny", "resize_size": 36, "crop_size": 32}
    folder = tmp_path_factory.mktemp("tiny") / "ck"
    return save_model(folder, variables["params"], variables["batch_stats"], meta)


def _damage_array_file(ck: Path, damage: str) -> None:
    """Truncates or deletes the largest OCDBT data file (``state/ocdbt.process_0/d/*``)."""
    files = [p for p in (ck / "state" / "ocdbt.process_0" / "d").iterdir() if p.is_file()]
    data = max(files, key=lambda p: p.stat().st_size)
    if damage == "truncate":
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    else:
        data.unlink()


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_damaged_array_file_under_ocdbt_is_one_line_from_load_predict_and_run(
    tiny_saved, tmp_path, capsys, damage
):
    from experiments import run as run_cli

    ck = Path(shutil.copytree(tiny_saved, tmp_path / "ck"))
    _damage_array_file(ck, damage)
    with pytest.raises(CheckpointError) as e:
        load_model(ck)
    msg = str(e.value)
    assert msg.startswith(f"{ck}: the checkpoint's arrays cannot be read") and "\n" not in msg
    assert "Error reading" in msg and "TensorStore(" not in msg and len(msg) < 500

    assert predict.main(["--checkpoint", str(ck), "--images", "x.png"]) == 2
    assert _one_error_line(capsys.readouterr().err).startswith(f"{ck}: the checkpoint's arrays")

    out = tmp_path / "out" / "runs"  # two folders the command would create
    argv = ["--strategy", "lp", "--dataset", "demo", "--arch", "resnet_tiny", "--weights"]
    argv += [str(ck), "--image-size", "32", "--batch-size", "8", "--epochs", "1"]
    assert run_cli.main([*argv, "--no-progress", "--out", str(out)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"{ck}: the checkpoint's arrays cannot be read")
    assert not (tmp_path / "out").exists()  # nothing half-written, not even the folder


def test_reads_a_failed_restore_abandoned_are_not_reported_later(tiny_saved, tmp_path, caplog):
    """The other concurrent reads of a damaged checkpoint fail too; their futures, collected
    later (at exit, in the CLI), were each reported by asyncio with a tensorstore traceback
    after the one line. Once a restore has failed, only those are held back."""
    import asyncio
    import gc
    import logging

    ck = Path(shutil.copytree(tiny_saved, tmp_path / "ck"))
    _damage_array_file(ck, "truncate")
    with pytest.raises(CheckpointError):
        load_model(ck)

    async def fail(error: Exception) -> None:
        raise error

    spec = ' [tensorstore_spec=\'{"driver":"zarr"}\']'
    abandoned = ValueError(f'Error opening "zarr" driver: Error reading "params.a/.zarray"{spec}')
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            for error in (abandoned, ValueError("a bug of ours")):
                task = loop.create_task(fail(error))
                loop.run_until_complete(asyncio.sleep(0))
                del task
                gc.collect()
    finally:
        loop.close()
    reported = [r.exc_info[1] for r in caplog.records if "never retrieved" in r.getMessage()]
    assert [str(e) for e in reported] == ["a bug of ours"]


def test_only_read_errors_wrapped_by_orbax_count_as_a_damaged_checkpoint(tiny_saved, monkeypatch):
    """Orbax wraps whatever fails in a read (its ``except BaseException``); a bug stays one."""
    import orbax.checkpoint as ocp

    from medft_jax.checkpoints.model import storage_read_error

    def wrapped(inner: BaseException) -> Exception:
        try:
            try:
                raise inner
            except BaseException as e:
                raise Exception("Encountered error while reading array index: (0,)") from e
        except Exception as outer:
            return outer

    ts = ValueError('OUT_OF_RANGE: Error reading "params.fc.kernel/0" in OCDBT database')
    assert storage_read_error(wrapped(ts)) is ts
    assert storage_read_error(wrapped(TypeError("unsupported operand"))) is None
    assert storage_read_error(wrapped(ValueError("shapes (3,) and (4,) differ"))) is None

    bug = wrapped(TypeError("unsupported operand"))

    def restore(*a, **k):
        raise bug

    monkeypatch.setattr(ocp.Checkpointer, "restore", restore)
    with pytest.raises(Exception) as e:
        load_model(tiny_saved)
    assert e.value is bug  # not a CheckpointError: the traceback is what a bug needs


@pytest.mark.slow
def test_a_model_saved_across_two_devices_loads_on_one(tmp_path):
    """Trained on several GPUs (parameters replicated over their mesh), used on a laptop:
    orbax restored each array with its saved sharding, a "topology mismatch" read as a
    corrupted checkpoint."""
    script = (
        "import sys, jax, numpy as np\n"
        "from jax.sharding import Mesh, NamedSharding, PartitionSpec\n"
        "from medft_jax.checkpoints import model\n"
        "model._check_before_saving = lambda *a: None  # a two-leaf tree, not an arch's\n"
        "mesh = Mesh(np.array(jax.devices()), ('data',))\n"
        "rep = NamedSharding(mesh, PartitionSpec())\n"
        "params = {'fc': {'kernel': jax.device_put(np.arange(6, dtype=np.float32)"
        ".reshape(2, 3), rep)}}\n"
        "stats = {'bn': {'mean': jax.device_put(np.ones(3, np.float32), rep)}}\n"
        "assert len(params['fc']['kernel'].sharding.device_set) == 2\n"
        "model.save_model(sys.argv[1], params, stats, {'arch': 'resnet50'})\n"
    )
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
    }
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "ck")], env=env, check=True, timeout=300
    )
    assert jax.device_count() == 1
    from medft_jax.checkpoints.model import _restore_state

    state = _restore_state(tmp_path / "ck")
    kernel = state["params"]["fc"]["kernel"]
    np.testing.assert_array_equal(np.asarray(kernel), np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(np.asarray(state["batch_stats"]["bn"]["mean"]), np.ones(3))
