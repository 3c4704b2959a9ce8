"""experiments.predict against torchvision on the same images and weights.

ResNet-50 at 224 px, as a user runs it: the comparisons are ``slow``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

import weights_port
from experiments.predict import Predictor, main
from medft_jax.checkpoints.model import CheckpointError, load_model, save_model
from medft_jax.data.images import DECODING_VERSION
from medft_jax.models import variable_shapes
from tests.torch_ref import random_torchvision, torch, torchvision

FAST_TESTS_GROUP = "torch"  # see tests/conftest.py


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict")
    model = random_torchvision("resnet50", 4, seed=2)
    torch.save(model.state_dict(), tmp / "r.pth")
    ck = weights_port.port("resnet50", tmp / "r.pth", tmp / "ck")
    rng = np.random.default_rng(0)
    a, b = tmp / "a.png", tmp / "b.jpg"
    Image.fromarray(rng.integers(0, 256, (260, 300, 3), dtype=np.uint8)).save(a)
    Image.fromarray(rng.integers(0, 256, (240, 250), dtype=np.uint8), "L").save(b)
    return tmp, model, ck, [a, b]


def _torch_logits(model, paths):
    t = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.transforms()
    x = torch.stack([t(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.slow
def test_json_probs_equal_torchvision(setup, capsys):
    _, model, ck, paths = setup
    assert main(["--checkpoint", str(ck), "--images", *map(str, paths), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["image"] for r in rows] == [str(p) for p in paths]
    ref = torch.softmax(_torch_logits(model, paths), -1).numpy()
    np.testing.assert_allclose(np.array([r["probs"] for r in rows]), ref, atol=1e-5)


@pytest.mark.slow
def test_text_output_ranks_classes(setup, capsys):
    _, model, ck, paths = setup
    assert main(["--checkpoint", str(ck), "--images", str(paths[0]), "--top", "2"]) == 0
    line = capsys.readouterr().out.strip()
    ref = torch.softmax(_torch_logits(model, paths[:1]), -1).numpy()[0]
    best = np.argsort(-ref)[:2]
    assert line == f"{paths[0]}: {best[0]} {ref[best[0]]:.4f}, {best[1]} {ref[best[1]]:.4f}"


@pytest.mark.slow
def test_multilabel_checkpoint_uses_sigmoid(setup, capsys):
    tmp, model, ck, paths = setup
    variables, meta = load_model(ck)
    meta = {**meta, "multilabel": True, "class_names": ["a", "b", "c", "d"]}
    ml = save_model(tmp / "ml", variables["params"], variables["batch_stats"], meta)
    assert main(["--checkpoint", str(ml), "--images", *map(str, paths), "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert all(r["classes"] == ["a", "b", "c", "d"] for r in rows)
    probs = np.array([r["probs"] for r in rows])
    ref = torch.sigmoid(_torch_logits(model, paths)).numpy()
    np.testing.assert_allclose(probs, ref, atol=1e-5)


@pytest.mark.slow
def test_a_one_output_torchvision_head_ports_as_sigmoid(setup, capsys):
    """``resnet50(num_classes=1)`` trained with BCE: ported as a softmax, predict gave
    1.0000 for every image. Ported now as the sigmoid head it is, named by the flags."""
    from weights_port.__main__ import main as port_main

    tmp, _, _, paths = setup
    model = random_torchvision("resnet50", 1, seed=5)
    torch.save(model.state_dict(), tmp / "one.pth")
    argv = ["--arch", "resnet50", "--torch-weights", str(tmp / "one.pth")]
    assert port_main([*argv, "--out", str(tmp / "one"), "--class-names", "malignant"]) == 0
    assert capsys.readouterr().err == ""  # named: nothing assumed
    assert main(["--checkpoint", str(tmp / "one"), "--images", *map(str, paths), "--json"]) == 0
    probs = np.array([json.loads(x)["probs"] for x in capsys.readouterr().out.splitlines()])
    ref = torch.sigmoid(_torch_logits(model, paths)).numpy()
    np.testing.assert_allclose(probs, ref, atol=1e-5)
    assert probs.min() > 0.0 and probs.max() < 1.0
    # A checkpoint that says softmax over one output is refused wherever it is read.
    variables, meta = load_model(tmp / "one")
    with pytest.raises(CheckpointError, match="one class and not multilabel"):  # not written
        save_model(
            tmp / "bad",
            variables["params"],
            variables["batch_stats"],
            {**meta, "multilabel": False},
        )
    assert not (tmp / "bad").exists()
    bad = unchecked_save(
        tmp / "bad", variables["params"], variables["batch_stats"], {**meta, "multilabel": False}
    )
    assert main(["--checkpoint", str(bad), "--images", str(paths[0])]) == 2
    assert "one class and not multilabel: a softmax over one output" in capsys.readouterr().err


def test_bad_image_is_named(tmp_path, capsys):
    # Images are read before any compute: a checkpoint of zeros is enough (no torch, no port).
    shapes = variable_shapes("resnet_tiny", 2)
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    ck = tmp_path / "ck"
    meta = {"arch": "resnet_tiny", "num_classes": 2, "resize_size": 36, "crop_size": 32}
    save_model(ck, zeros["params"], zeros["batch_stats"], meta)
    good, bad = tmp_path / "a.png", tmp_path / "broken.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(good)
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert main(["--checkpoint", str(ck), "--images", str(good), str(bad)]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err.startswith(f"error: corrupt or unreadable image {bad}: ")
    assert cap.err.count("\n") == 1


def test_a_checkpoint_without_sizes_takes_its_archs_resize_rule(tmp_path):
    """ResNet's 232/224, as every run resizes: not a 256 that no run of it used."""
    from experiments.predict import Predictor

    shapes = variable_shapes("resnet_tiny", 2)
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    save_model(
        tmp_path / "a",
        zeros["params"],
        zeros["batch_stats"],
        {"arch": "resnet_tiny", "num_classes": 2},
    )
    p = Predictor(tmp_path / "a")
    assert (p.resize_size, p.crop_size) == (232, 224)
    meta = {"arch": "resnet_tiny", "num_classes": 2, "crop_size": 64}
    save_model(tmp_path / "b", zeros["params"], zeros["batch_stats"], meta)
    assert (Predictor(tmp_path / "b").resize_size, 64) == (66, 64)  # round(64 * 232 / 224)
    meta = {"arch": "resnet_tiny", "num_classes": 2, "crop_size": None, "resize_size": None}
    save_model(tmp_path / "c", zeros["params"], zeros["batch_stats"], meta)
    p = Predictor(tmp_path / "c")  # null reads as unsaid, not int(None)
    assert (p.resize_size, p.crop_size) == (232, 224)


def unchecked_save(*args, **kwargs):
    """``save_model`` without its metadata check: a checkpoint as another version of
    medft-jax, or a hand-edit before the hash, may have written it (the reader refuses)."""
    from unittest import mock

    from medft_jax.checkpoints import model

    with mock.patch.object(model, "_check_before_saving", lambda *a: None):
        return save_model(*args, **kwargs)


def _zeros_checkpoint(path, **meta):
    shapes = variable_shapes("resnet_tiny", 2)
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    return zeros, unchecked_save(
        path,
        zeros["params"],
        zeros["batch_stats"],
        {"arch": "resnet_tiny", "num_classes": 2, **meta},
    )


@pytest.mark.slow
def test_non_finite_outputs_are_refused_not_printed(tmp_path, capsys):
    """Finite weights that overflow (a head kernel of 3e38): NaN probabilities, which
    --json wrote as invalid JSON with exit 0."""
    zeros, _ = _zeros_checkpoint(tmp_path / "ok", resize_size=32, crop_size=32)
    params = jax.tree.map(np.copy, zeros["params"])
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if path[-1].key == "bias":  # BatchNorm shifts of 1: positive features
            leaf[:] = 1.0
    params["fc"]["kernel"][:] = 3e38  # finite, but the logits overflow to inf
    image = tmp_path / "a.png"
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(image)
    # Multilabel too: a +inf logit's sigmoid read as a finite probability of 1, printed.
    for multilabel in (False, True):
        meta = {"arch": "resnet_tiny", "num_classes": 2, "resize_size": 32, "crop_size": 32}
        ck = save_model(
            tmp_path / f"ck{multilabel}",
            params,
            zeros["batch_stats"],
            {**meta, "multilabel": multilabel},
        )
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # numpy's overflow line: none
            assert main(["--checkpoint", str(ck), "--images", str(image), "--json"]) == 2
        cap = capsys.readouterr()
        assert cap.out == "" and cap.err.count("\n") == 1
        assert "outputs are NaN or infinite for 1 of 1 images" in cap.err


def test_an_empty_image_path_is_named(tmp_path, capsys):
    _, ck = _zeros_checkpoint(tmp_path / "ck", resize_size=32, crop_size=32)
    assert main(["--checkpoint", str(ck), "--images", ""]) == 2
    assert capsys.readouterr().err == "error: --images: an empty path; expected an image file\n"
    # --checkpoint '' was read as the current folder: "<cwd>: not a medft-jax checkpoint"
    with pytest.raises(SystemExit) as exit_:
        main(["--checkpoint", "", "--images", str(tmp_path)])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.startswith(
        "error: argument --checkpoint: an empty path; expected a model checkpoint folder"
    )


def test_a_resize_below_the_unsaid_crop_is_refused(tmp_path):
    """crop_size null reads as 224: a resize of 40 would feed mostly padding."""
    from medft_jax.checkpoints.model import CheckpointError

    _, ck = _zeros_checkpoint(tmp_path / "ck", resize_size=40, crop_size=None)
    with pytest.raises(CheckpointError, match=r"resize_size 40 is not an integer in \[224"):
        load_model(ck)


@pytest.mark.slow  # seconds: the fast tier stays under 2 minutes
def test_a_t1w_run_predicts_from_its_mat_files_as_it_trained(tmp_path, capsys):
    """A T1w run read each .mat slice min-max scaled; predict could read no .mat, and the
    slice as a 16-bit PNG with --bits-stored 16 reached the model nearly black."""
    pytest.importorskip("h5py")
    from data_fakes import write_mat

    from experiments.predict import load_image
    from medft_jax.data.builders.t1w_mri import decode
    from medft_jax.data.preprocess import resize_and_crop

    pixels = np.random.default_rng(0).integers(-50, 1400, (48, 40)).astype(np.int16)
    write_mat(tmp_path / "1.mat", pixels, 1, "100000")
    Image.fromarray(pixels.astype(np.uint16)).save(tmp_path / "1.png")
    _, ck = _zeros_checkpoint(tmp_path / "ck", crop_size=32, resize_size=33, decoder="t1w_mri")
    seen = load_image(tmp_path / "1.mat", 33, 32, decoder="t1w_mri")
    assert np.array_equal(seen, resize_and_crop(decode(tmp_path / "1.mat"), 33, 32))
    assert seen.mean() > 64  # min-max scaled: mid-grey on average, not a dark 16-bit read
    assert main(["--checkpoint", str(ck), "--images", str(tmp_path / "1.mat"), "--json"]) == 0
    alone = json.loads(capsys.readouterr().out)
    # A folder of .mat files was "a folder with no image under it" for a T1w checkpoint.
    (tmp_path / "vols").mkdir()
    shutil.copy(tmp_path / "1.mat", tmp_path / "vols" / "1.mat")
    assert main(["--checkpoint", str(ck), "--images", str(tmp_path / "vols"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["probs"] == alone["probs"]
    assert main(["--checkpoint", str(ck), "--images", str(tmp_path / "1.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1.png: the checkpoint's run read T1w MRI .mat files" in err
    argv = ["--checkpoint", str(ck), "--images", str(tmp_path / "1.mat"), "--bits-stored", "16"]
    assert main(argv) == 2
    assert "--bits-stored: the checkpoint's run read t1w_mri files" in capsys.readouterr().err
    # An unknown reader (a newer toolkit's) is refused when the checkpoint is read.
    _zeros_checkpoint(tmp_path / "new", decoder="t2w_dicom_series")
    assert main(["--checkpoint", str(tmp_path / "new"), "--images", str(tmp_path / "1.mat")]) == 2
    assert "metadata decoder 't2w_dicom_series' is not one" in capsys.readouterr().err


def test_a_runs_best_checkpoint_names_the_reader_of_its_files():
    from types import SimpleNamespace

    from medft_jax import fit
    from medft_jax.models import get_arch

    def meta(dataset):
        ds = SimpleNamespace(
            name=dataset, num_classes=3, multilabel=False, class_names=("a", "b", "c"), metadata={}
        )
        config = SimpleNamespace(arch="resnet_tiny", image_size=32, precision="fp32", numerics=5)
        return fit._best_metadata(
            SimpleNamespace(config=config, ds=ds, spec=get_arch("resnet_tiny")), "r"
        )

    assert meta("t1w_mri")["decoder"] == "t1w_mri"
    assert "decoder" not in meta("bach")


def test_a_run_folder_given_as_the_checkpoint_points_to_its_best(tmp_path, capsys):
    _zeros_checkpoint(tmp_path / "run" / "best")
    Image.new("L", (40, 40)).save(tmp_path / "a.png")
    assert main(["--checkpoint", str(tmp_path / "run"), "--images", str(tmp_path / "a.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.rstrip().endswith(f"; a run's folder: its best parameters are {tmp_path}/run/best")


@pytest.mark.slow
def test_an_unfinished_runs_best_is_noted_with_the_finished_one_set_aside(tmp_path, capsys):
    """A run killed mid-training (or after ``--force``) leaves ``best/`` without a record
    beside it: its best epoch so far, not the run's result; the note names the finished
    run's parameters where ``--force`` set them aside. The metadata's epoch counts from
    0 (3: the fourth); the note counts from 1, as run prints epochs (``epoch 4: ...``)."""
    run = tmp_path / "r"
    meta = {"resize_size": 32, "crop_size": 32, "source": "run r", "epoch": 3}
    meta["decoding_version"] = DECODING_VERSION
    _zeros_checkpoint(run / "best", **meta)
    Image.new("L", (40, 40)).save(tmp_path / "a.png")
    argv = ["--checkpoint", str(run / "best"), "--images", str(tmp_path / "a.png")]
    assert main(argv) == 0
    err = capsys.readouterr().err
    note = f"note: {run / 'best'}: its run has not finished (no record.json in {run}): these "
    assert f"{note}are its best parameters so far (epoch 4)\n" in err
    _zeros_checkpoint(run / "previous" / "best", **meta)
    (run / "previous" / "record.json").write_text("{}")
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"so far (epoch 4); its last finished run's are {run / 'previous' / 'best'}\n" in err
    (run / "record.json").write_text("{}")  # finished: nothing to say
    assert main(argv) == 0 and "note:" not in capsys.readouterr().err
    # Its best/ copied out to be used: no record beside it by design, nothing to say.
    _zeros_checkpoint(tmp_path / "deploy" / "best", **meta)
    copy = ["--checkpoint", str(tmp_path / "deploy" / "best"), *argv[2:]]
    assert main(copy) == 0 and "note:" not in capsys.readouterr().err


def test_out_refuses_the_files_of_the_checkpoints_run(tmp_path, capsys):
    """``--checkpoint runs/r/best --out runs/r/record.json`` (the last part of a copied path
    edited) wrote the rows over the finished run's record: ``run`` and ``report`` could no
    longer read it. The run's own files are refused; a new file beside them is written."""
    run = tmp_path / "r"
    _zeros_checkpoint(run / "best", resize_size=32, crop_size=32, source="run r")
    record = run / "record.json"
    record.write_text('{"kept": 1}')
    (run / "checkpoints").mkdir()
    Image.new("L", (40, 40)).save(tmp_path / "a.png")
    argv = ["--checkpoint", str(run / "best"), "--images", str(tmp_path / "a.png"), "--out"]
    for out in (record, run / "failed.json", run / "checkpoints" / "rows.txt"):
        assert main([*argv, str(out)]) == 2
        err = capsys.readouterr().err
        assert err == (
            f"error: --out {out}: a file of the run folder {run} that --checkpoint's run keeps "
            "(its record, notes, lock or checkpoints), which the rows would overwrite; write "
            "them elsewhere\n"
        )
    assert record.read_text() == '{"kept": 1}' and not (run / "failed.json").exists()
    assert main([*argv, str(run / "rows.txt")]) == 0
    assert (run / "rows.txt").read_text().startswith(f"{tmp_path / 'a.png'}: ")


@pytest.mark.slow
def _notes_of_a_runs_checkpoint(run: Path, capsys, image: str = "a.png", **meta) -> str:
    """What predict says on stderr of a zero-weights run checkpoint of ``meta`` in ``run``
    (beside a record, as a run leaves it), predicting ``image`` beside ``run``."""
    _zeros_checkpoint(run / "best", **meta)
    (run / "record.json").write_text("{}")
    argv = ["--checkpoint", str(run / "best"), "--images", str(run.parent / image)]
    assert main(argv) == 0
    return capsys.readouterr().err


@pytest.mark.slow  # three predict commands (~3 s)
def test_a_runs_checkpoint_of_another_decoding_version_is_noted(tmp_path, capsys):
    """A run's best parameters record the decoding version its images were decoded by;
    predict under another (a DICOM padded with -2000 decoded otherwise before version 8)
    says so, and so it does for a checkpoint that does not say (written before they did);
    an export's metadata keeps the version."""
    from types import SimpleNamespace

    from medft_jax import fit
    from medft_jax.models import get_arch
    from weights_port.state_io import PREDICTION_KEYS

    ds = SimpleNamespace(
        name="folder", num_classes=2, multilabel=False, class_names=("a", "b"), metadata={}
    )
    config = SimpleNamespace(arch="resnet_tiny", image_size=32, precision="fp32", numerics=5)
    run = SimpleNamespace(config=config, ds=ds, spec=get_arch("resnet_tiny"))
    assert fit._best_metadata(run, "r")["decoding_version"] == DECODING_VERSION == 12
    assert fit._best_metadata(run, "r")["numerics"] == 5
    assert "decoding_version" in PREDICTION_KEYS
    Image.new("L", (40, 40)).save(tmp_path / "a.png")
    wide = np.linspace(0, 65535, 1600).astype(np.uint16).reshape(40, 40)
    Image.fromarray(wide).save(tmp_path / "b.png")  # 16-bit: its rules have changed
    base = {"resize_size": 32, "crop_size": 32, "source": "run r", "image": "b.png"}

    def err_of(name, **meta):
        return _notes_of_a_runs_checkpoint(tmp_path / name, capsys, **{**base, **meta})

    assert "note:" not in err_of("same", decoding_version=DECODING_VERSION)
    # An 8-bit PNG decodes alike under every version: nothing to say of it.
    assert "note:" not in err_of("old8", decoding_version=7, image="a.png")
    err = err_of("old", decoding_version=7)
    assert err.count("\n") == 1
    assert err.startswith(
        f"note: {tmp_path / 'old' / 'best'} was trained on images decoded by decoding "
        f"version 7; predict decodes by version {DECODING_VERSION}: a 16-bit, float or DICOM file"
    )
    err = err_of("unsaid")
    assert err.startswith(
        f"note: {tmp_path / 'unsaid' / 'best'} does not record the decoding version its run used"
    )
    with pytest.raises(CheckpointError, match="metadata decoding_version 'x' is not a positive"):
        _zeros_checkpoint(tmp_path / "bad", **base, decoding_version="x")
        Predictor(tmp_path / "bad")


@pytest.mark.slow  # seconds: the fast tier stays under 2 minutes
def test_a_bf16_runs_checkpoint_of_another_forward_pass_is_noted(tmp_path, capsys):
    """A bf16 checkpoint of numerics 5 was computed by today's bf16 layers without a word:
    probabilities up to 0.03 off its run's evaluation, a class flipped, its record's
    metrics not following from them. float32's forward pass never changed: no note."""
    from weights_port.state_io import PREDICTION_KEYS

    assert "numerics" in PREDICTION_KEYS  # kept through an export and a port back
    Image.new("L", (40, 40)).save(tmp_path / "a.png")
    base = {
        "resize_size": 32,
        "crop_size": 32,
        "source": "run r",
        "decoding_version": DECODING_VERSION,
    }

    def err_of(name, **meta):
        return _notes_of_a_runs_checkpoint(tmp_path / name, capsys, **base, **meta)

    assert err_of("bf16_now", precision="bf16", numerics=7) == ""
    # --precision fp32 on it: its rows move off its record's metrics, which was silent.
    best = tmp_path / "bf16_now" / "best"
    argv = ["--checkpoint", str(best), "--images", str(tmp_path / "a.png")]
    assert main([*argv, "--precision", "fp32"]) == 0
    assert capsys.readouterr().err == (
        f"note: {best} was evaluated by its run in bf16; predict computes fp32 (--precision): "
        "its probabilities differ from its run's evaluation, and from its record's metrics\n"
    )
    err = err_of("bf16_old", precision="bf16", numerics=5)
    assert err == (
        f"note: {tmp_path / 'bf16_old' / 'best'} was evaluated by its run at numerics version "
        "5; predict computes bf16 at version 7, whose forward pass differs "
        "(medft_jax.config.NUMERICS_VERSION lists each version's changes): its probabilities "
        "may differ from its run's evaluation, and from its record's metrics\n"
    )
    assert err_of("bf16_unsaid", precision="bf16").startswith(
        f"note: {tmp_path / 'bf16_unsaid' / 'best'} does not record the numerics version"
    )
    assert err_of("bf16_newer", precision="bf16", numerics=99).endswith(
        "predict computes bf16 at version 7, which knows no later version (written by a newer "
        "medft-jax): its probabilities may differ from its run's evaluation, and from its "
        "record's metrics\n"
    )
    assert err_of("fp32_old", precision="fp32", numerics=3) == ""  # the same forward pass
    assert err_of("fp32_unsaid", precision="fp32") == ""
    # A best/ written before checkpoints said: its run's record beside it does (it was
    # "does not record" while the record said 6).
    from medft_jax import results
    from medft_jax.config import RunConfig

    config = RunConfig(strategy="ft", arch="resnet_tiny", precision="bf16", numerics=6)
    name = results.run_name(config.to_dict())
    run = tmp_path / name
    _zeros_checkpoint(run / "best", **{**base, "source": f"run {name}"}, precision="bf16")
    results.write_record(run / "record.json", {"config": config.to_dict(), "run": name})
    assert main(["--checkpoint", str(run / "best"), "--images", str(tmp_path / "a.png")]) == 0
    assert capsys.readouterr().err.startswith(
        f"note: {run / 'best'} was evaluated by its run at numerics version 6; predict "
        "computes bf16 at version 7, whose forward pass differs"
    )
    with pytest.raises(CheckpointError, match="metadata numerics 0 is not a positive integer"):
        _zeros_checkpoint(tmp_path / "bad", **base, numerics=0)
        Predictor(tmp_path / "bad")


def _random_checkpoint(path, num_classes, seed=0, **meta):
    """resnet_tiny with random weights: probabilities that differ between images."""
    rng = np.random.default_rng(seed)
    shapes = variable_shapes("resnet_tiny", num_classes)

    def draw(s):
        return (rng.standard_normal(s.shape) * 0.2).astype(s.dtype)

    params = jax.tree.map(draw, shapes["params"])
    stats = jax.tree_util.tree_map_with_path(
        lambda p, s: (
            np.ones(s.shape, s.dtype) if p[-1].key == "var" else np.zeros(s.shape, s.dtype)
        ),
        shapes["batch_stats"],
    )
    meta = {"arch": "resnet_tiny", "num_classes": num_classes, "resize_size": 32, **meta}
    return save_model(path, params, stats, {"crop_size": 32, **meta})


def _images(tmp_path, n):
    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(paths[-1])
    return [str(p) for p in paths]


@pytest.mark.slow  # seconds: the fast tier stays under 2 minutes
def test_progress_bars_count_the_images_read_and_predicted(tmp_path, monkeypatch, capsys):
    """20,000 files were 75 s without a word (run and prepare show bars): a bar for the
    reading and one for the compute, counting images (not the last batch's padding), on a
    terminal only; --no-progress and the library's default show none."""
    from experiments import predict

    bars = []

    class Bar:
        def __init__(self, total, desc, unit, disable, leave):
            self.total, self.desc, self.disable, self.n = total, desc, disable, 0
            bars.append(self)

        def update(self, n):
            self.n += n

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(predict, "tqdm", Bar)
    ck = _random_checkpoint(tmp_path / "ck", 3)
    paths = _images(tmp_path, 5)
    assert main(["--checkpoint", str(ck), "--images", *paths, "--batch-size", "2"]) == 0
    assert [(b.desc, b.total, b.n, b.disable) for b in bars] == [
        ("reading images", 5, 5, None),  # None: tqdm shows it where stderr is a terminal
        ("predicting", 5, 5, None),
    ]
    bars.clear()
    assert main(["--checkpoint", str(ck), "--images", *paths, "--no-progress"]) == 0
    Predictor(ck).predict_files(paths)
    assert [b.disable for b in bars] == [True] * 4
    capsys.readouterr()


@pytest.mark.slow
def test_images_beyond_the_memory_bound_wait_in_a_memmap_with_the_same_probs(tmp_path, monkeypatch):
    from experiments import predict

    ck = _random_checkpoint(tmp_path / "ck", 3)
    paths = _images(tmp_path, 5)
    predictor = predict.Predictor(ck)
    in_memory = predictor.predict_files(paths, batch_size=2)
    assert np.ptp(in_memory[:, 0]) > 1e-4  # the images' probabilities differ
    stores, store = [], predict._image_store

    def spy(n, crop, scratch):
        stores.append(store(n, crop, scratch))
        return stores[-1]

    monkeypatch.setattr(predict, "IN_MEMORY_BYTES", 32 * 32 * 3 * 4)  # room for 4 of 5
    monkeypatch.setattr(predict, "_image_store", spy)
    np.testing.assert_array_equal(predictor.predict_files(paths, batch_size=2), in_memory)
    assert isinstance(stores[0], np.memmap)
    assert not Path(stores[0].filename).parent.exists()  # its scratch folder is gone


def test_a_scratch_disk_too_small_for_the_images_is_one_line_not_a_bus_error(
    tmp_path, monkeypatch, capsys
):
    """Over the memory bound the images wait in a memmap in TMPDIR; a page a full disk
    could not back killed predict with SIGBUS (exit 135, no word, the file left)."""
    import errno
    import os

    from experiments import predict

    ck = _random_checkpoint(tmp_path / "ck", 3)
    paths = _images(tmp_path, 5)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", None)  # TMPDIR read again
    monkeypatch.setattr(predict, "IN_MEMORY_BYTES", 32 * 32 * 3 * 4)  # room for 4 of 5

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    argv = ["--checkpoint", str(ck), "--images", *map(str, paths)]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"error: 5 images at 32 px need 0.0 GiB of scratch space in {scratch} (TMPDIR), which "
        "has not that much free; set TMPDIR to a larger disk, or predict the images in parts\n"
    )
    assert list(scratch.iterdir()) == []  # the scratch folder went with the error


@pytest.mark.slow
def test_text_output_quotes_names_with_commas_and_shows_every_multilabel_class(tmp_path, capsys):
    names = ["effusion, left", "edema", " padded"]
    ck = _random_checkpoint(tmp_path / "ml", 3, class_names=names, multilabel=True)
    (path,) = _images(tmp_path, 1)
    assert main(["--checkpoint", str(ck), "--images", path, "--json"]) == 0
    probs = json.loads(capsys.readouterr().out)["probs"]
    assert main(["--checkpoint", str(ck), "--images", path]) == 0
    line = capsys.readouterr().out.strip()
    shown = {"effusion, left": '"effusion, left"', "edema": "edema", " padded": '" padded"'}
    ranked = sorted(range(3), key=lambda i: -probs[i])  # all three: a multilabel checkpoint
    assert line == f"{path}: " + ", ".join(f"{shown[names[i]]} {probs[i]:.4f}" for i in ranked)
    assert main(["--checkpoint", str(ck), "--images", path, "--top", "1"]) == 0
    assert capsys.readouterr().out.count(" 0.") == 1
    single = _random_checkpoint(tmp_path / "sl", 5)  # one label: the three best by default
    assert main(["--checkpoint", str(single), "--images", path]) == 0
    assert capsys.readouterr().out.count(", ") == 2


@pytest.mark.slow  # predict's compiles, twice
def test_a_folder_of_images_is_predicted_as_its_files(tmp_path, capsys):
    """``--images scans/`` was "is a folder, expected an image file"; a folder is every
    image under it, as ``--dataset folder`` lists them (notes and hidden files left out)."""
    ck = _random_checkpoint(tmp_path / "ck", 3)
    scans = tmp_path / "scans"
    (scans / "b").mkdir(parents=True)
    paths = _images(scans, 3)
    Path(paths[2]).rename(scans / "b" / "2.png")
    (scans / "notes.txt").write_text("not an image")
    (scans / "._0.png").write_bytes(b"macOS resource fork")
    files = [paths[0], paths[1], str(scans / "b" / "2.png")]
    assert main(["--checkpoint", str(ck), "--images", *files, "--json"]) == 0
    by_files = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert main(["--checkpoint", str(ck), "--images", str(scans), "--json"]) == 0
    by_folder = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted((r["image"], r["probs"]) for r in by_folder) == sorted(
        (r["image"], r["probs"]) for r in by_files
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--checkpoint", str(ck), "--images", str(empty)]) == 2
    assert capsys.readouterr().err == f"error: --images {empty}: a folder with no image under it\n"
    # A list of paths was "corrupt or unreadable image ...; --skip-bad-images leaves out".
    listing = tmp_path / "list.csv"
    listing.write_text("\n".join(files) + "\n")
    assert main(["--checkpoint", str(ck), "--images", str(listing)]) == 2
    assert capsys.readouterr().err == (
        f"error: --images {listing}: a .csv file, not an image; --images takes image files "
        "and folders, not a list of them: pass its paths as arguments (e.g. with xargs)\n"
    )
    # A MedMNIST .npz or a NIfTI volume named alone was "corrupt ...: --skip-bad-images",
    # though a folder holding it leaves it out as no image.
    for name in ("breastmnist.npz", "scan.nii.gz"):
        (tmp_path / name).write_bytes(b"PK\x03\x04")
        assert main(["--checkpoint", str(ck), "--images", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(
            f"error: --images {tmp_path / name}: not a file predict reads as an image (by its "
            f"suffix {'.npz' if name.endswith('npz') else '.nii.gz'!r}: .jpg/.jpeg/.png/"
        ) and err.endswith(", or a DICOM file); a folder holding it leaves it out\n"), err
    # A T1w .mat (any case) and a file without a suffix (a DICOM) are the reader's to judge.
    for name in ("vol.MAT", "IM0001"):
        (tmp_path / name).write_bytes(b"junk")
        assert main(["--checkpoint", str(ck), "--images", str(tmp_path / name)]) == 2
        assert "not a file predict reads as an image" not in capsys.readouterr().err
    # Rows written as an image into a folder it predicts: the next predict read them as one.
    for out in (scans / "rows.png", scans / "b" / "rows.JPG"):
        assert main(["--checkpoint", str(ck), "--images", str(scans), "--out", str(out)]) == 2
        assert capsys.readouterr().err == (
            f"error: --out {out}: inside --images {scans}, under a name its listing reads as "
            "an image (the next predict on it would read the rows as one); write them "
            "elsewhere, or name them .txt or .jsonl\n"
        )
    for name in ("r.txt", "rows", ".rows.png"):  # none of them listed as an image
        rows = ["--out", str(scans / name)]
        assert main(["--checkpoint", str(ck), "--images", str(scans), *rows]) == 0
    assert main(["--checkpoint", str(ck), "--images", str(scans)]) == 0  # r.txt left out


def _lines(text):
    """Rows as a reader splits them: on every line break Python knows (U+2028 too)."""
    return text.splitlines()


@pytest.mark.slow
def test_out_writes_every_row_or_leaves_the_old_file(tmp_path, capsys, monkeypatch):
    """Rows went to stdout one at a time: a full disk under ``> rows.txt`` left half a
    file. ``--out`` writes them whole, beside the file, then renames; a missing folder is
    refused before any model work."""
    import errno

    from medft_jax import atomic

    ck = _random_checkpoint(tmp_path / "ck", 3)
    paths = _images(tmp_path, 3)
    assert main(["--checkpoint", str(ck), "--images", *paths]) == 0
    printed = capsys.readouterr().out
    out = tmp_path / "rows.txt"
    assert main(["--checkpoint", str(ck), "--images", *paths, "--out", str(out)]) == 0
    assert capsys.readouterr().out == "" and out.read_text() == printed
    # A link is written through, as the shell's > does: the rename replaced the link by a
    # file and left the file it points to with the old rows.
    (tmp_path / "dated.txt").write_text("old rows\n")
    (tmp_path / "latest.txt").symlink_to("dated.txt")
    argv = ["--checkpoint", str(ck), "--images", *paths, "--out", str(tmp_path / "latest.txt")]
    assert main(argv) == 0
    assert (tmp_path / "latest.txt").is_symlink()
    assert (tmp_path / "dated.txt").read_text() == printed
    # A link into a folder that does not exist is refused as that folder, not made.
    (tmp_path / "dangling.txt").symlink_to(tmp_path / "nowhere" / "rows.txt")
    argv[-1] = str(tmp_path / "dangling.txt")
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"error: --out {argv[-1]}: its folder {tmp_path / 'nowhere'} does not exist; create "
        "it first\n"
    )
    assert not (tmp_path / "nowhere").exists()
    out.write_text("old rows\n")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    assert main(["--checkpoint", str(ck), "--images", *paths, "--out", str(out)]) == 1
    assert capsys.readouterr().err == f"error: {out}: no space left on the device\n"
    assert out.read_text() == "old rows\n" and sorted(tmp_path.glob(".rows*")) == []
    monkeypatch.undo()
    gone = tmp_path / "missing" / "rows.txt"
    assert (
        main(["--checkpoint", str(tmp_path / "no-ck"), "--images", *paths, "--out", str(gone)]) == 2
    )
    err = capsys.readouterr().err  # before the checkpoint is read: the folder is named
    assert err == f"error: --out {gone}: its folder {gone.parent} does not exist; create it first\n"
    # A file where its folder belongs is said to be a file, not a folder that does not exist.
    (tmp_path / "afile").write_text("")
    under = tmp_path / "afile" / "rows.txt"
    assert main(["--checkpoint", str(ck), "--images", *paths, "--out", str(under)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --out {under}: {tmp_path / 'afile'} is a file, expected a folder\n"
    # An empty path is said to be one, not "not a folder".
    assert main(["--checkpoint", str(ck), "--images", *paths, "--out", ""]) == 2
    err = capsys.readouterr().err
    assert err == "error: --out '': an empty path; expected a file to write the rows to\n"


@pytest.mark.slow  # seconds: the fast tier stays under 2 minutes
def test_out_keeps_a_files_mode_writes_pipes_in_place_and_refuses_what_is_no_file(
    tmp_path, capsys, monkeypatch
):
    """``--out`` renamed its rows over whatever was there: a named pipe (or, as root,
    ``/dev/null``) became a plain file, a private 0600 file became 0644; ``rows.txt/``
    wrote ``rows.txt``; a closed stdout was a traceback after the compute."""
    import os
    import stat
    import sys
    import threading

    ck = _random_checkpoint(tmp_path / "ck", 3)
    paths = _images(tmp_path, 2)
    base = ["--checkpoint", str(ck), "--images", *paths]
    assert main(base) == 0
    printed = capsys.readouterr().out
    private = tmp_path / "private.txt"
    private.write_text("old\n")
    private.chmod(0o600)
    assert main([*base, "--out", str(private)]) == 0
    assert private.read_text() == printed and stat.S_IMODE(private.stat().st_mode) == 0o600
    fifo = tmp_path / "rows.fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    assert main([*base, "--out", str(fifo)]) == 0
    reader.join(10)
    assert got == [printed] and stat.S_ISFIFO(fifo.lstat().st_mode)
    # /dev/stdout into a pipe: its resolved name (/proc/<pid>/fd/pipe:[N]) is no file's,
    # and the rows' temporary beside it failed after the compute.
    if Path("/proc/self/fd").is_dir():
        r, w = os.pipe()
        try:
            assert main([*base, "--out", f"/proc/self/fd/{w}"]) == 0
            assert os.read(r, 1 << 16).decode() == printed
        finally:
            os.close(r)
            os.close(w)
    for out, said in [
        (f"{tmp_path}/new.txt/", f"--out {tmp_path}/new.txt/: a folder's path (it ends in /)"),
    ]:
        assert main([*base, "--out", out]) == 2
        err = capsys.readouterr().err
        assert err == f"error: {said}, expected a file\n"
    assert not (tmp_path / "new.txt").exists()
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert main([*base, "--out", str(loop)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --out {loop}: a link that loops; expected a file\n"
    assert main(["--checkpoint", str(ck), "--images", f"{tmp_path}/*.png"]) == 2
    assert capsys.readouterr().err == (
        f"error: --images {tmp_path}/*.png: no such file; predict does not expand patterns: "
        "leave them unquoted for the shell to expand, or give the folder\n"
    )
    monkeypatch.setattr(sys, "stdout", None)
    assert main(base) == 2
    monkeypatch.undo()
    assert capsys.readouterr().err == (
        "error: stdout is closed; give --out FILE to write the rows to\n"
    )


def test_a_failed_write_to_stdout_names_stdout_in_one_line(tmp_path, capsys, monkeypatch):
    """EFBIG on stdout was a 15-line traceback; a full disk said ``?: no space left``."""
    import errno
    import os
    import sys

    ck = _random_checkpoint(tmp_path / "ck", 3)
    (path,) = _images(tmp_path, 1)

    class Refusing:
        def __init__(self, code):
            self.code = code

        def write(self, text):
            raise OSError(self.code, os.strerror(self.code))

        def flush(self):
            pass

    for code, status, said in [
        (errno.EFBIG, 1, "file too large"),
        (errno.ENOSPC, 1, "no space left on the device"),
    ]:
        monkeypatch.setattr(sys, "stdout", Refusing(code))
        assert main(["--checkpoint", str(ck), "--images", path]) == status
        monkeypatch.undo()
        err = capsys.readouterr().err
        assert err.startswith(f"error: stdout: {said}") and err.count("\n") == 1


def test_out_of_device_memory_names_the_batch_size(tmp_path, capsys, monkeypatch):
    from experiments import predict

    ck = _random_checkpoint(tmp_path / "ck", 3)
    paths = _images(tmp_path, 2)

    def exhausted(self, images):
        raise jax.errors.JaxRuntimeError(
            "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9.1GiB.\nBuffer..."
        )

    monkeypatch.setattr(predict.Predictor, "__call__", exhausted)
    assert main(["--checkpoint", str(ck), "--images", *paths, "--batch-size", "64"]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err.count("\n") == 1
    assert cap.err.startswith("error: --batch-size 64: out of device memory computing a batch")
    assert cap.err.rstrip().endswith("give a smaller --batch-size")


@pytest.mark.slow
def test_text_rows_are_one_line_each_with_paths_quoted_where_misread(tmp_path, capsys):
    ck = _random_checkpoint(tmp_path / "ck", 3)
    (plain,) = _images(tmp_path, 1)
    odd = [tmp_path / "a\nb.png", tmp_path / "c: d.png", tmp_path / "e\u2028f.png"]
    for p in odd:
        shutil.copy(plain, p)
    given = [plain, *map(str, odd)]
    assert main(["--checkpoint", str(ck), "--images", *given]) == 0
    rows = _lines(capsys.readouterr().out)
    assert len(rows) == 4 and rows[0].startswith(f"{plain}: ")
    for row, path in zip(rows[1:], odd, strict=True):
        assert row.startswith('"')
        quoted, rest = row.split('": ', 1)
        assert json.loads(quoted + '"') == str(path) and rest.count(" 0.") + rest.count(" 1.") == 3


def _bad_files(folder):
    """A truncated PNG, a zero-byte file, a symbolic link loop and a link to nothing."""
    folder.mkdir(exist_ok=True)
    (folder / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    (folder / "gone.png").symlink_to(folder / "moved.png")
    return [str(folder / n) for n in ("empty.jpg", "gone.png", "loop.png", "truncated.png")]


@pytest.mark.slow
def test_skip_bad_images_notes_each_and_predicts_the_others(tmp_path, capsys):
    ck = _random_checkpoint(tmp_path / "ck", 3)
    scans = tmp_path / "scans"
    scans.mkdir()
    good = _images(scans, 2)
    bad = _bad_files(scans)
    assert main(["--checkpoint", str(ck), "--images", *good, "--json"]) == 0
    alone = capsys.readouterr().out
    assert main(["--checkpoint", str(ck), "--images", str(scans)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: corrupt or unreadable image {bad[0]}") and err.count("\n") == 1
    assert err.rstrip().endswith("--skip-bad-images leaves out such files and predicts the others")
    argv = ["--checkpoint", str(ck), "--images", str(scans), "--json", "--skip-bad-images"]
    assert main(argv) == 0
    cap = capsys.readouterr()
    assert cap.out == alone
    notes = _lines(cap.err)
    assert len(notes) == 4 and all(
        n.startswith("note: skipped bad image (--skip-bad-images)") for n in notes
    )
    assert all(path in note for path, note in zip(bad, notes, strict=True))
    assert main(["--checkpoint", str(ck), "--images", *bad, "--skip-bad-images"]) == 2
    err = capsys.readouterr().err
    assert err.endswith(
        "error: --images: all 4 file(s) are bad images, left out by "
        "--skip-bad-images (see the notes above); nothing to predict\n"
    )


@pytest.mark.slow
def test_a_link_to_nothing_named_as_a_pacs_file_is_a_bad_image_not_a_non_image(
    tmp_path, capsys, monkeypatch
):
    """A PACS export names files IM0001 or by UID: a link to nothing of such a name was
    counted among the folder's non-images and the scan vanished with exit 0. A path
    listed twice whose file broke between its two reads keeps the row it was read for."""
    from experiments import predict as cli

    ck = _random_checkpoint(tmp_path / "ck", 3)
    scans = tmp_path / "scans"
    scans.mkdir()
    _images(scans, 1)
    (scans / "IM0001").symlink_to(tmp_path / "gone")
    assert main(["--checkpoint", str(ck), "--images", str(scans)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {scans / 'IM0001'} is a symbolic link to {tmp_path / 'gone'}")
    assert main(["--checkpoint", str(ck), "--images", str(scans), "--skip-bad-images"]) == 0
    cap = capsys.readouterr()
    assert len(_lines(cap.out)) == 1 and "note: skipped bad image" in cap.err
    # Named by a UID, a link to nothing is a bad image too; named notes.txt, a non-image.
    (scans / "IM0001").unlink()
    (scans / "1.2.840.10008.5").symlink_to(tmp_path / "gone")
    assert main(["--checkpoint", str(ck), "--images", str(scans)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {scans / '1.2.840.10008.5'} is a symb")
    (scans / "1.2.840.10008.5").unlink()
    (scans / "notes.txt").symlink_to(tmp_path / "gone")
    assert main(["--checkpoint", str(ck), "--images", str(scans)]) == 0
    cap = capsys.readouterr()
    assert len(_lines(cap.out)) == 1 and "notes.txt" not in cap.out and ".txt" in cap.err
    (good,) = _images(tmp_path, 1)
    real, calls = cli.load_image, []

    def breaks_on_its_second_read(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise cli.BadImage(f"{path}: broke")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(cli, "load_image", breaks_on_its_second_read)
    argv = ["--checkpoint", str(ck), "--images", good, good, "--skip-bad-images", "--json"]
    assert main(argv) == 0
    rows = [json.loads(line) for line in _lines(capsys.readouterr().out)]
    assert [r["image"] for r in rows] == [good]


def test_skip_bad_images_keeps_refusing_sound_files_the_rules_refuse(tmp_path, capsys):
    """As run's flag: a dark 16-bit file is refused until --bits-stored says what it is;
    skipping it would drop every file of its kind. A path not there is a typo, not a bad file."""
    ck = _random_checkpoint(tmp_path / "ck", 3)
    (good,) = _images(tmp_path, 1)
    dark = tmp_path / "dark.png"
    Image.fromarray(np.full((40, 40), 100, np.uint16)).save(dark)
    argv = ["--checkpoint", str(ck), "--skip-bad-images", "--images", good]
    assert main([*argv, str(dark)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {dark}: 16-bit image") and "--skip-bad-images" not in err
    assert main([*argv, str(tmp_path / "typo.png")]) == 2
    assert capsys.readouterr().err == f"error: image file not found: {tmp_path / 'typo.png'}\n"


@pytest.mark.slow  # seconds: the fast tier stays under 2 minutes
def test_a_folder_of_links_to_images_elsewhere_is_predicted(tmp_path, capsys):
    """Refused as links out of "the dataset root": predict has no dataset, and the same
    link given as a file was read. Its non-images are counted in one note line."""
    ck = _random_checkpoint(tmp_path / "ck", 3)
    store = tmp_path / "store"
    store.mkdir()
    paths = _images(store, 2)
    links = tmp_path / "links"
    links.mkdir()
    for p in paths:
        (links / Path(p).name).symlink_to(p)
    (links / "notes.txt").write_text("a note")
    (links / "report.pdf").write_text("a report")
    (links / "b.pdf").write_text("another")
    assert main(["--checkpoint", str(ck), "--images", *paths, "--json"]) == 0
    direct = [json.loads(x) for x in _lines(capsys.readouterr().out)]
    assert main(["--checkpoint", str(ck), "--images", str(links), "--json"]) == 0
    cap = capsys.readouterr()
    linked = [json.loads(x) for x in _lines(cap.out)]
    assert [r["image"] for r in linked] == [str(links / Path(p).name) for p in paths]
    assert [r["probs"] for r in linked] == [r["probs"] for r in direct]
    assert cap.err == f"note: {links}: 3 file(s) not read as images left out (.pdf 2, .txt 1)\n"


def test_a_dataset_still_refuses_links_out_of_its_root(tmp_path):
    from medft_jax.data.errors import DataError
    from medft_jax.data.folder import image_files

    (tmp_path / "store").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "store" / "a.png")
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "a.png").symlink_to(tmp_path / "store" / "a.png")
    with pytest.raises(DataError, match="outside the dataset root"):
        image_files(tmp_path / "ds", tmp_path / "ds")


def test_top_with_json_and_a_state_dict_checkpoint_are_refused(tmp_path, capsys):
    (path,) = _images(tmp_path, 1)
    assert main(["--checkpoint", "ck", "--images", path, "--json", "--top", "2"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: --top with --json: --json writes every class")
        and err.count("\n") == 1
    )
    for name in ("model.pth", "model.safetensors"):
        (tmp_path / name).write_bytes(b"weights")
        assert main(["--checkpoint", str(tmp_path / name), "--images", path]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert (
            f"port it first: python -m weights_port --arch ARCH --torch-weights {tmp_path / name}"
            in err
        )


def test_out_that_is_an_input_image_or_inside_the_checkpoint_is_refused(tmp_path, capsys):
    """``--out a.png`` among ``--images a.png`` wrote the rows over the image, and ``--out``
    inside the checkpoint over its metadata: both after a run that said nothing was wrong."""
    import os

    ck = _random_checkpoint(tmp_path / "ck", 3)
    (tmp_path / "imgs").mkdir()
    paths = _images(tmp_path / "imgs", 2)
    before = {p: Path(p).read_bytes() for p in paths}
    os.link(paths[1], tmp_path / "hard.png")
    (tmp_path / "soft.png").symlink_to(paths[0])
    meta = next(p for p in ck.rglob("*") if p.is_file())
    cases = [
        ([*paths], paths[0], f"--out {paths[0]}: is the input image {paths[0]}, which the rows"),
        ([str(tmp_path / "imgs")], paths[1], f"--out {paths[1]}: is the input image {paths[1]}"),
        ([paths[0]], str(tmp_path / "soft.png"), "is the input image"),
        ([paths[1]], str(tmp_path / "hard.png"), f"is the input image {paths[1]}"),
        ([paths[0]], str(meta), f"--out {meta}: inside --checkpoint {ck}, whose files the rows"),
    ]
    meta_bytes = meta.read_bytes()
    for images, out, message in cases:
        args = ["--checkpoint", str(ck), "--images", *images, "--out", out]
        assert main(args) == 2, out
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert {p: Path(p).read_bytes() for p in paths} == before
    assert meta.read_bytes() == meta_bytes


def test_images_decoded_on_threads_keep_their_order_notes_and_first_error(capsys, monkeypatch):
    """Files decode on several threads (one thread read 20,000 files in 2.7 s of a 17 s
    job), finishing out of order here: rows, notes and the error that stops the job
    follow the files' order all the same."""
    import time

    from experiments import predict

    monkeypatch.setenv("MEDFT_JAX_DECODE_THREADS", "4")
    paths = [f"f{i}.png" for i in range(40)]
    bad = {"f3.png", "f17.png", "f18.png", "f39.png"}

    def load(p):
        i = int(p[1:-4])
        time.sleep(0.002 * ((7 * i) % 5))  # later files often finish first
        if p in bad:
            raise predict.BadImage(f"corrupt or unreadable image {p}")
        return np.full((2, 2, 3), i, np.uint8)

    store = np.zeros((40, 2, 2, 3), np.uint8)
    skipped: list[str] = []
    read = predict._read_images(paths, store, load, skipped)
    assert read == [p for p in paths if p not in bad] and skipped == sorted(bad, key=paths.index)
    assert [int(x) for x in store[: len(read), 0, 0, 0]] == [int(p[1:-4]) for p in read]
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert [n.rsplit(" ", 1)[1] for n in notes] == skipped
    with pytest.raises(predict.BadImage, match=r"^corrupt or unreadable image f3\.png; "):
        predict._read_images(paths, store, load, None)  # the first bad file in order
    # Ctrl-C: the files queued behind are not read (the whole window ran on before).
    started = []

    def interrupted(p):
        started.append(p)
        if p == "f2.png":
            raise KeyboardInterrupt
        if p not in ("f0.png", "f1.png"):
            time.sleep(0.5)  # the threads stay busy while the interrupt is handled
        return np.zeros((2, 2, 3), np.uint8)

    with pytest.raises(KeyboardInterrupt):
        predict._read_images(paths, store, interrupted, None)
    assert len(started) <= 8, started  # those running (4 threads), not the window of 16


def test_only_single_frame_8_bit_pngs_and_jpegs_by_content_decode_alike_in_every_version(
    tmp_path,
):
    """The decoding-version note is left out for those alone: a 16-bit grey+alpha PNG
    (Pillow opens it as 8-bit RGBA) or a 16-bit PNG named .jpg were taken for 8-bit."""
    import struct
    import zlib

    from experiments.predict import _decodes_alike_in_every_version as alike

    Image.new("L", (4, 4)).save(tmp_path / "a.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "b.jpg")
    Image.fromarray(np.full((4, 4), 40000, np.uint16)).save(tmp_path / "c.png")
    (tmp_path / "c.png").rename(tmp_path / "c.jpg")

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    rows = b"".join(b"\0" + b"\x0f\xff\xff\xff" * 4 for _ in range(4))  # 16-bit grey+alpha
    (tmp_path / "la16.png").write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 16, 4, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    (tmp_path / "d.dcm").write_bytes(b"x")
    got = {n: alike(str(tmp_path / n)) for n in ("a.png", "b.jpg", "c.jpg", "la16.png", "d.dcm")}
    assert got == {"a.png": True, "b.jpg": True, "c.jpg": False, "la16.png": False, "d.dcm": False}


def test_out_naming_stdout_writes_to_stdout_as_it_is(capsys):
    """``--out /dev/stdout >> log.txt``: the rows were renamed over the log (its earlier
    lines gone), as over any file; stdout is written as without --out."""
    from experiments.predict import write_rows

    for name in ("/dev/stdout", "/dev/fd/1", "/proc/self/fd/1", "/dev//stdout"):
        write_rows("rows\n", name)
        assert capsys.readouterr().out == "rows\n", name
