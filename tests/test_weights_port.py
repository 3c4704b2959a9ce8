"""The weight port: round trips, strictness, safe loading, download."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import ClassVar

import jax
import numpy as np
import pytest

import weights_port
from medft_jax.checkpoints.model import CheckpointError, load_metadata, load_model
from medft_jax.errors import UserError
from tests.torch_ref import random_torchvision, state_dict_numpy, torch, torchvision
from weights_port import fetch as dl
from weights_port.__main__ import main
from weights_port.keymap import PortError, rename_legacy_keys, torch_to_flax

FAST_TESTS_GROUP = "torch"  # see tests/conftest.py


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tv") / "resnet50-random.pth"
    torch.save(random_torchvision("resnet50", 10, seed=3).state_dict(), path)
    return path


def _assert_same_state(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow  # full-size models
@pytest.mark.parametrize("arch", ["resnet50", "densenet121"])
def test_round_trip_is_bit_exact(arch, tmp_path, capsys):
    model = random_torchvision(arch, 10, seed=1)
    src = tmp_path / f"{arch}.pth"
    torch.save(model.state_dict(), src)
    assert main(["--arch", arch, "--torch-weights", str(src), "--out", str(tmp_path / "ck")]) == 0
    out = str(tmp_path / "o.pth")
    assert main(["export", "--checkpoint", str(tmp_path / "ck"), "--out", out]) == 0
    back = torch.load(tmp_path / "o.pth", map_location="cpu", weights_only=True)
    _assert_same_state(model.state_dict(), back)
    fresh = getattr(torchvision.models, arch)(num_classes=10)
    fresh.load_state_dict(back, strict=True)
    from safetensors.torch import load_file

    _assert_same_state(model.state_dict(), load_file(tmp_path / "o.safetensors"))
    meta = load_metadata(tmp_path / "ck")
    assert meta["arch"] == arch and meta["num_classes"] == 10
    assert meta["source"] == src.name and len(meta["source_sha256"]) == 64
    assert "wrote" in capsys.readouterr().out


@pytest.mark.slow  # a second full ResNet-50 port
def test_safetensors_input_equals_pth_input(resnet_file, tmp_path):
    from safetensors.torch import save_file

    state = torch.load(resnet_file, map_location="cpu", weights_only=True)
    st = tmp_path / "r.safetensors"
    save_file(state, st)
    weights_port.port("resnet50", resnet_file, tmp_path / "a")
    weights_port.port("resnet50", st, tmp_path / "b")
    (va, _), (vb, _) = load_model(tmp_path / "a"), load_model(tmp_path / "b")
    flat_a = {k: v for k, v in _leaves(va)}
    flat_b = {k: v for k, v in _leaves(vb)}
    assert flat_a.keys() == flat_b.keys()
    assert all(np.array_equal(flat_a[k], flat_b[k]) for k in flat_a)


def _leaves(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}/")
        else:
            yield prefix + k, v


@pytest.mark.slow  # seconds: the fast tier stays under 2 minutes
def test_a_densenet_tensor_under_its_legacy_and_current_names_is_refused():
    """Renamed, one replaced the other without a word (file order chose which; torchvision
    keeps the legacy one): 728 keys in, 727 ported, exit 0."""
    one = np.ones(3, np.float32)
    state = {
        "features.denseblock1.denselayer1.norm.1.weight": 7 * one,
        "features.denseblock1.denselayer1.norm1.weight": one,
    }
    with pytest.raises(PortError) as e:
        torch_to_flax(state, "densenet121", source="dn.pth")
    assert str(e.value) == (
        "dn.pth: keys 'features.denseblock1.denselayer1.norm1.weight' and "
        "'features.denseblock1.denselayer1.norm.1.weight' are one parameter, "
        "'features.denseblock1.denselayer1.norm1.weight', spelt in DenseNet's current and "
        "legacy forms; keep one of them"
    )


@pytest.mark.slow  # a DenseNet-121 to build and port twice
def test_densenet_legacy_keys_are_renamed():
    state = state_dict_numpy(random_torchvision("densenet121", 10))
    legacy = {}
    for k, v in state.items():
        k = k.replace("norm1.", "norm.1.").replace("conv2.", "conv.2.")
        legacy[k] = v
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    assert rename_legacy_keys(legacy).keys() == state.keys()
    a, _ = torch_to_flax(legacy, "densenet121")
    b, _ = torch_to_flax(state, "densenet121")
    assert np.array_equal(
        a["params"]["features"]["denseblock1"]["denselayer1"]["norm1"]["scale"],
        b["params"]["features"]["denseblock1"]["denselayer1"]["norm1"]["scale"],
    )


@pytest.fixture(scope="module")
def resnet_state():
    return state_dict_numpy(random_torchvision("resnet50", 10))


@pytest.mark.slow
def test_wrong_arch_is_named(resnet_state):
    with pytest.raises(PortError, match=r"^x.pth: file looks like resnet50, not densenet121$"):
        torch_to_flax(resnet_state, "densenet121", source="x.pth")


def test_missing_extra_and_misshapen_keys(resnet_state):
    s = dict(resnet_state)
    del s["layer2.1.conv2.weight"]
    with pytest.raises(PortError, match=r"missing key 'layer2.1.conv2.weight' expected by "):
        torch_to_flax(s, "resnet50")
    s = {**resnet_state, "layer5.0.conv1.weight": np.zeros((1,), np.float32)}
    with pytest.raises(PortError, match=r"unexpected key 'layer5.0.conv1.weight', not in resnet50"):
        torch_to_flax(s, "resnet50")
    s = {**resnet_state, "conv1.weight": np.zeros((64, 3, 3, 3), np.float32)}
    with pytest.raises(
        PortError, match=r"key 'conv1.weight' has shape \(64, 3, 3, 3\), expected \(64, 3, 7, 7\)"
    ):
        torch_to_flax(s, "resnet50")


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod.", "model."])
def test_a_wrapped_models_state_dict_ports_as_the_plain_one(resnet_state, prefix):
    """nn.DataParallel (``module.``), torch.compile (``_orig_mod.``), both, or a Lightning
    module's attribute prefix every key; stripped only when the rest is exactly the arch's
    keys. Wrapped, another arch's file is named as that arch."""
    plain, _ = torch_to_flax(resnet_state, "resnet50")
    wrapped, _ = torch_to_flax({prefix + k: v for k, v in resnet_state.items()}, "resnet50")
    assert jax.tree.all(jax.tree.map(np.array_equal, wrapped, plain))
    partly = {prefix + k: v for k, v in resnet_state.items() if k != "fc.bias"}
    with pytest.raises(PortError, match=r"missing key 'bn1.bias' expected by resnet50"):
        torch_to_flax(partly, "resnet50")  # not its keys once stripped: named, not renamed
    with pytest.raises(PortError, match=r"^checkpoint: file looks like resnet50, not vgg19$"):
        torch_to_flax({prefix + k: v for k, v in resnet_state.items()}, "vgg19")


def test_num_batches_tracked_dropped_and_restored(resnet_state):
    variables, tracked = torch_to_flax(resnet_state, "resnet50")
    assert tracked["bn1.num_batches_tracked"] == 7  # random_torchvision's marker
    assert "num_batches_tracked" not in str(list(_leaves(variables)))
    # A counter of no BatchNorm of the arch is an unexpected key, not metadata.
    stray = {**resnet_state, "bogus.num_batches_tracked": np.array(5, np.int64)}
    with pytest.raises(PortError, match=r"unexpected key 'bogus.num_batches_tracked', not in"):
        torch_to_flax(stray, "resnet50")
    bad = {**resnet_state, "bn1.num_batches_tracked": np.array([1, 2], np.int64)}
    with pytest.raises(PortError, match=r"'bn1.num_batches_tracked' has shape \(2,\) and dtype"):
        torch_to_flax(bad, "resnet50")
    # A negative count was blamed on "the flags given" (none were) by the metadata check.
    bad = {**resnet_state, "bn1.num_batches_tracked": np.array(-3, np.int64)}
    with pytest.raises(PortError) as err:
        torch_to_flax(bad, "resnet50", source="x.pth")
    assert str(err.value) == "x.pth: key 'bn1.num_batches_tracked' is -3, expected a count >= 0"


def test_an_oddly_keyed_pth_is_one_line(tmp_path):
    from weights_port.state_io import read_state_dict

    numbered = tmp_path / "numbered.pth"
    torch.save({0: torch.ones(2)}, numbered)
    with pytest.raises(PortError, match=r"numbered.pth: key 0 is not a name; expected a state_d"):
        read_state_dict(numbered)


class _Evil:
    def __reduce__(self):
        return (Path.touch, (Path(_Evil.target),))


def test_pickled_code_is_never_run(tmp_path, capsys):
    _Evil.target = str(tmp_path / "pwned")
    bad = tmp_path / "evil.pth"
    buf = io.BytesIO()
    pickle.dump({"conv1.weight": _Evil()}, buf)
    bad.write_bytes(buf.getvalue())
    out = tmp_path / "ck"
    assert main(["--arch", "resnet50", "--torch-weights", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {bad}: not a loadable torch state_dict") and "\n" not in err
    assert not (tmp_path / "pwned").exists()
    assert not out.exists()
    # A whole model (torch.save(model)) is named as such, with the re-save that works.
    whole = tmp_path / "model.pth"
    torch.save(torch.nn.Linear(2, 2), whole)
    assert main(["--arch", "resnet50", "--torch-weights", str(whole), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "a whole model saved with torch.save(model): re-save model.state_dict();" in err
    assert err.endswith(
        "re-save its state_dict entry alone, e.g. torch.save(ckpt['state_dict'], FILE)"
    )
    # A .SAFETENSORS name reads as what it is, not as a torch file.
    upper = tmp_path / "x.SAFETENSORS"
    upper.write_bytes(b"junk")
    from weights_port.state_io import read_state_dict

    with pytest.raises(
        PortError, match=r"x\.SAFETENSORS: not a \.safetensors file \(its first 8 bytes"
    ):
        read_state_dict(upper)


def test_a_file_that_is_no_torch_checkpoint_is_named_as_such(tmp_path):
    from weights_port.state_io import read_state_dict

    for name, content in [("text.pth", b"junk\n"), ("empty.pth", b"")]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(PortError, match=r"not a torch checkpoint \(neither torch.save's zip"):
            read_state_dict(tmp_path / name)
    # A zip that torch.save did not write: torch's own words, then what was expected.
    with zipfile.ZipFile(tmp_path / "notes.pth", "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(PortError, match=r"\); expected a file written by torch.save\(model.state_"):
        read_state_dict(tmp_path / "notes.pth")
    # Whole, but pickle.dump's, not torch.save's: not "truncated or corrupted".
    (tmp_path / "plain.pth").write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(PortError, match=r"plain\.pth: not a torch\.save file \(a plain pickle"):
        read_state_dict(tmp_path / "plain.pth")
    # torch's legacy (pre-zip) format is read too, by the same torch-free reader.
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.arange(3.0)}, legacy, _use_new_zipfile_serialization=False)
    np.testing.assert_array_equal(read_state_dict(legacy)["w"], [0.0, 1.0, 2.0])


def test_a_training_checkpoint_dict_is_unwrapped_or_named(tmp_path):
    """``{'model': sd, 'optimizer': ..., 'epoch': 3}`` (torchvision's reference scripts) was
    refused as no state_dict, naming nothing; a folder was "no such file"."""
    from weights_port.state_io import read_state_dict

    sd = {"w": torch.arange(3.0)}
    for key in ("model", "state_dict", "model_state_dict"):
        path = tmp_path / f"{key}.pth"
        torch.save({key: sd, "optimizer": {"state": {}}, "epoch": 3}, path)
        np.testing.assert_array_equal(read_state_dict(path)["w"], [0.0, 1.0, 2.0])
    two = tmp_path / "two.pth"
    torch.save({"model": sd, "state_dict": sd}, two)
    with pytest.raises(PortError, match=r"two.pth: a checkpoint dict with state_dicts under "):
        read_state_dict(two)
    other = tmp_path / "other.pth"
    torch.save({"weights": sd, "epoch": 3}, other)
    with pytest.raises(PortError, match=r"other.pth: expected a state_dict .*\('weights' is a di"):
        read_state_dict(other)
    torch.save({"epoch": 3, "weights": sd}, other)  # "is a int" read wrong
    with pytest.raises(PortError, match=r"other.pth: expected a state_dict .*\('epoch' is an int"):
        read_state_dict(other)
    (tmp_path / "folder.pth").mkdir()
    with pytest.raises(PortError, match=r"folder.pth: a folder, expected a .pth or .safetensors"):
        read_state_dict(tmp_path / "folder.pth")


def read_header(path):
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        return f.metadata()


@pytest.mark.slow
def test_an_export_header_out_of_step_with_its_tensors_is_refused_before_writing(
    resnet_state, tmp_path, capsys
):
    """3 class names for the 10-class head: ported ("wrote ..."), then refused by every
    reader of the checkpoint. A .pth whose .safetensors twin is unreadable names the twin."""
    from weights_port.state_io import write_state_dict

    src = tmp_path / "m.safetensors"
    header = {"arch": "resnet50", "num_classes": 10, "class_names": ["a", "b", "c"]}
    write_state_dict(resnet_state, src, metadata=header)
    out = tmp_path / "ck"
    assert main(["--arch", "resnet50", "--torch-weights", str(src), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"error: --torch-weights {src}: its medft_jax header: metadata class_names has 3 "
        "names for 10 classes\n"
    )
    assert not out.exists()
    # The header is sealed: swapping two class names (consistent with the tensors) is
    # refused, not ported as the model's truth.
    from safetensors.numpy import load_file, save_file

    header = {"arch": "resnet50", "num_classes": 10, "class_names": list("abcdefghij")}
    write_state_dict(resnet_state, src, metadata=header, force=True)
    sealed = json.loads(read_header(src)["medft_jax"])
    assert sealed["metadata_sha256"] and sealed["class_names"] == list("abcdefghij")
    sealed["class_names"] = list("bacdefghij")
    save_file(load_file(str(src)), str(src), metadata={"medft_jax": json.dumps(sealed)})
    assert main(["--arch", "resnet50", "--torch-weights", str(src), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"error: {src}: its 'medft_jax' header does not match its metadata_sha256 (edited: "
        "class names reordered, multilabel flipped?); export the checkpoint again\n"
    )
    # The seal removed, the names swapped: ported as read (older exports have no seal),
    # with one note saying they went unchecked.
    del sealed["metadata_sha256"]
    save_file(load_file(str(src)), str(src), metadata={"medft_jax": json.dumps(sealed)})
    assert main(["--arch", "resnet50", "--torch-weights", str(src), "--out", str(out)]) == 0
    assert capsys.readouterr().err.startswith(
        f"note: {src}: its 'medft_jax' header carries no metadata_sha256 (an export from "
        "before 2026-12-05, or edited): its class names and settings are read unchecked; "
        "export the checkpoint again to seal them\n"
    )
    shutil.rmtree(out)
    pth = tmp_path / "m.pth"
    torch.save({k: torch.from_numpy(v) for k, v in resnet_state.items()}, pth)
    src.write_bytes(b"garbage")
    assert main(["--arch", "resnet50", "--torch-weights", str(pth), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --torch-weights {pth}: its twin m.safetensors, read for an ")
    assert err.endswith("; move or repair it\n") and err.count("\n") == 1 and not out.exists()


def test_a_port_holds_the_lock_runs_take_on_its_out(resnet_file, tmp_path, monkeypatch):
    """Two ports into one --out at once shared one staging folder: both failed, with
    tracebacks. Each now holds the lock --weights auto takes (``.<out>.lock``) while it
    writes; a second waits, then finds the folder there."""
    import contextlib

    from medft_jax.checkpoints import pretrained

    held = []

    @contextlib.contextmanager
    def recording(checkpoint):
        held.append((checkpoint, checkpoint.exists()))
        with real(checkpoint):
            yield
        held.append((checkpoint, checkpoint.exists()))

    real = pretrained.one_porter
    monkeypatch.setattr(pretrained, "one_porter", recording)
    out = tmp_path / "ck"
    assert main(["--arch", "resnet50", "--torch-weights", str(resnet_file), "--out", str(out)]) == 0
    assert held == [(out, False), (out, True)]  # written inside the lock
    assert (tmp_path / ".ck.lock").is_file()


def test_a_refused_port_leaves_no_lock_file(tmp_path, capsys):
    """A port refused for its input (bytes that are no state_dict) left ``.<out>.lock``
    in the user's folder: a refusal writes nothing."""
    bad = tmp_path / "m.pth"
    bad.write_bytes(b"not a checkpoint at all")
    out = tmp_path / "o"
    assert main(["--arch", "resnet_tiny", "--torch-weights", str(bad), "--out", str(out)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pth"]


def test_an_out_whose_folder_refuses_the_lock_names_out(tmp_path, capsys, monkeypatch):
    """A read-only folder's refusal named the lock file (``.../.o.lock: operation not
    permitted``), a file the user never named: it is --out's folder that cannot be written."""
    import contextlib
    import errno

    from medft_jax.checkpoints import pretrained

    @contextlib.contextmanager
    def refused(checkpoint):
        lock = checkpoint.parent / f".{checkpoint.name}.lock"
        raise PermissionError(errno.EPERM, "Operation not permitted", str(lock))
        yield

    monkeypatch.setattr(pretrained, "one_porter", refused)
    src = tmp_path / "m.pth"
    src.write_bytes(b"x")
    out = tmp_path / "o"
    assert main(["--arch", "resnet_tiny", "--torch-weights", str(src), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"error: --out {out}: cannot write in its folder {tmp_path} (operation not permitted)\n"
    )


def test_read_only_arrays_export_without_a_warning(tmp_path):
    """Arrays restored from a run's checkpoint can be read-only; torch would warn."""
    import warnings

    from weights_port.state_io import read_state_dict, write_state_dict

    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    w.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_state_dict({"fc.weight": w}, tmp_path / "x.pth")
    np.testing.assert_array_equal(read_state_dict(tmp_path / "x.pth")["fc.weight"], w)


def test_cli_errors_are_one_line_and_write_nothing(resnet_file, tmp_path, capsys):
    out = tmp_path / "ck"
    assert main(["--arch", "vgg19", "--torch-weights", str(resnet_file), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {resnet_file}: file looks like resnet50, not vgg19\n"
    assert not out.exists()
    missing = tmp_path / "nope.pth"
    assert main(["--arch", "resnet50", "--torch-weights", str(missing), "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"error: {missing}: no such file\n"
    out.mkdir()
    assert main(["--arch", "resnet50", "--torch-weights", str(resnet_file), "--out", str(out)]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(tmp_path / "none"), "--out", "x.pth"]) == 2
    assert "no such checkpoint folder" in capsys.readouterr().err


@pytest.mark.slow  # three full-size ports
def test_the_head_flags_say_what_predict_reads_and_a_note_says_what_was_assumed(
    resnet_file, tmp_path, capsys
):
    argv = ["--arch", "resnet50", "--torch-weights", str(resnet_file)]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert err == (
        "note: predict will read 10 unnamed output(s) as a softmax, at resize 232 crop 224; "
        "port again with --multilabel / --no-multilabel, --class-names, --image-size and "
        "--resize-size where the model was trained otherwise; it decodes 16-bit and DICOM "
        "images by the default rules (give predict --bits-stored / --dicom-window where the "
        "training images were decoded otherwise)\n"
    )
    names = [f"finding {i}" for i in range(10)]
    flags = ["--multilabel", "--image-size", "64", "--class-names", *names]
    assert main([*argv, "--out", str(tmp_path / "b"), *flags]) == 0
    assert capsys.readouterr().err == ""
    meta = load_metadata(tmp_path / "b")
    assert (meta["multilabel"], meta["class_names"]) == (True, names)
    assert (meta["crop_size"], meta["resize_size"]) == (64, 66)  # ResNet-50's 232/224
    for bad, message in [
        (
            ["--class-names", "a", "b"],
            "--class-names: 2 names for the head's 10 outputs (fc.weight)",
        ),
        (["--image-size", "8"], "--image-size 8: expected 32 to 2048 pixels"),
        (["--class-names", *["x"] * 10], "--class-names: a name given twice"),
        (["--class-names", "", *"bcdefghij"], "--class-names: an empty name; expected one"),
        (["--class-names", *"abcdefghi", " \t"], "--class-names: an empty name; expected"),
    ]:
        assert main([*argv, "--out", str(tmp_path / "c"), *bad]) == 2
        assert capsys.readouterr().err.startswith(f"error: {message}")
        assert not (tmp_path / "c").exists()
    with pytest.raises(SystemExit) as e:
        main(["--arch", "resnet50", "--download", "--multilabel"])
    assert e.value.code == 2
    assert "--multilabel: ImageNet weights' head is known" in capsys.readouterr().err


def test_urls_match_torchvision():
    from torchvision.models import DenseNet121_Weights, ResNet50_Weights, VGG19_Weights

    from medft_jax.models import ARCHS

    ref = {
        "resnet50": ResNet50_Weights.IMAGENET1K_V2,
        "densenet121": DenseNet121_Weights.IMAGENET1K_V1,
        "vgg19": VGG19_Weights.IMAGENET1K_V1,
    }
    for arch, w in ref.items():
        assert dl.WEIGHTS_URLS[arch] == w.url
        assert dl.WEIGHTS_NAMES[arch] == w.name
        assert ARCHS[arch].resize_size == w.transforms().resize_size[0]
        assert ARCHS[arch].crop_size == w.transforms().crop_size[0]


def test_download_offline_fails_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEDFT_JAX_CACHE", str(tmp_path))

    def offline(*a, **k):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    assert main(["--arch", "resnet50", "--download"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot download https://download.pytorch.org" in err
    assert "offline?" in err
    # The command it names is one that exists, with --out where --weights auto looks.
    command = err.split("then ", 1)[1].strip()
    ported = weights_port.default_checkpoint("resnet50")
    assert command == f"python -m weights_port --arch resnet50 --torch-weights FILE --out {ported}"
    # Nothing: not even the lock file a port into the slot holds while it works, nor the
    # folders made for the download and the lock.
    assert list(tmp_path.rglob("*")) == []
    # With its own --out, the hint names that folder, where the user asked for the port.
    mine = tmp_path / "mine"
    assert main(["--arch", "resnet50", "--download", "--out", str(mine)]) == 2
    err = capsys.readouterr().err
    assert err.endswith(f"weights_port --arch resnet50 --torch-weights FILE --out {mine}\n")


def test_an_http_error_status_is_the_servers_answer_not_offline(tmp_path, monkeypatch, capsys):
    """A 500 (or 404) was "offline?", and --weights auto trained from random weights."""
    monkeypatch.setenv("MEDFT_JAX_CACHE", str(tmp_path))
    url = dl.WEIGHTS_URLS["resnet50"]

    def status_500(*a, **k):
        raise urllib.error.HTTPError(url, 500, "Internal Server Error", {}, None)

    monkeypatch.setattr(urllib.request, "urlopen", status_500)
    assert main(["--arch", "resnet50", "--download"]) == 2
    # A 403 or a proxy's HTML page never passes by trying again: the manual port is said.
    assert capsys.readouterr().err == (
        f"error: cannot download {url} (HTTP 500 Internal Server Error; try again, or "
        "download it elsewhere, then python -m weights_port --arch resnet50 --torch-weights "
        f"FILE --out {tmp_path / 'flax' / 'resnet50_IMAGENET1K_V2'})\n"
    )


def test_a_download_cut_off_is_one_line_saying_try_again(tmp_path, monkeypatch, capsys):
    """A reset or stall after the headers was a traceback (the read loop was unguarded);
    it is not "offline?" either: the server answered."""

    class Cut(io.BytesIO):
        headers: ClassVar[dict[str, str]] = {"Content-Length": "100"}

        def read(self, size: int = -1) -> bytes:
            chunk = super().read(size)
            if not chunk:
                raise TimeoutError("timed out")
            return chunk

    monkeypatch.setenv("MEDFT_JAX_CACHE", str(tmp_path))
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: Cut(b"x" * 40))
    assert main(["--arch", "resnet50", "--download"]) == 2
    assert capsys.readouterr().err == (
        f"error: cannot download {dl.WEIGHTS_URLS['resnet50']} (timed out, after 40 bytes; "
        "try again, or download it elsewhere, then python -m weights_port --arch resnet50 "
        f"--torch-weights FILE --out {tmp_path / 'flax' / 'resnet50_IMAGENET1K_V2'})\n"
    )
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


class _FakeResponse(io.BytesIO):
    headers: ClassVar[dict[str, str]] = {"Content-Length": "0"}


@pytest.mark.slow
def test_download_checks_hash_and_caches(tmp_path, monkeypatch, resnet_file):
    monkeypatch.setenv("MEDFT_JAX_CACHE", str(tmp_path))
    payload = resnet_file.read_bytes()
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: _FakeResponse(payload))
    # Not a PortError: --weights auto took that for "unavailable" and trained a whole
    # sweep from random weights, for a download cut off without a length or corrupted.
    from medft_jax.download import DownloadError

    with pytest.raises(DownloadError, match="does not start with 11ad3fa6; the download is"):
        dl.download("resnet50")
    from medft_jax.checkpoints import pretrained

    monkeypatch.setattr(pretrained, "_UNAVAILABLE", {})
    with pytest.raises(DownloadError, match="corrupt: try again, or download it elsewhere"):
        pretrained.resolve("auto", "resnet50")
    assert not any(p.is_file() for p in tmp_path.rglob("*"))
    import hashlib

    digest = hashlib.sha256(payload).hexdigest()
    monkeypatch.setitem(
        dl.WEIGHTS_URLS, "resnet50", f"https://example.invalid/resnet50-{digest[:8]}.pth"
    )
    path = dl.download("resnet50")
    assert path.read_bytes() == payload and path.parent == tmp_path / "torchvision"
    ck = weights_port.port_imagenet("resnet50")
    assert ck == weights_port.default_checkpoint("resnet50")
    assert load_metadata(ck)["source_sha256"] == digest
    # A cached file damaged or replaced since is checked as a download is, not ported
    # (under the ImageNet file's name) from the cache.
    path.write_bytes(payload[:-1] + bytes([payload[-1] ^ 1]))
    with pytest.raises(UserError) as e:
        dl.download("resnet50")
    assert not isinstance(e.value, PortError)  # auto stops: no random-init fallback
    assert str(e.value).startswith(f"{path}: sha256 ")
    assert str(e.value).endswith(
        f"does not start with {digest[:8]}, the hash in its torchvision name: the cached "
        "download is damaged or was replaced; delete it and run --download again"
    )


@pytest.mark.slow
def test_only_torchvisions_file_fills_the_imagenet_slot(tmp_path, monkeypatch, resnet_file, capsys):
    """The offline hint ports FILE into the folder --weights auto/imagenet read: ResNet-50's
    V1 file (pretrained=True, resize 256), or any state_dict, went in as V2, and every
    later run was recorded as trained from IMAGENET1K_V2."""
    import hashlib

    from medft_jax.checkpoints import pretrained
    from medft_jax.checkpoints.model import CheckpointError

    monkeypatch.setenv("MEDFT_JAX_CACHE", str(tmp_path))
    slot = weights_port.default_checkpoint("resnet50")
    digest = hashlib.sha256(resnet_file.read_bytes()).hexdigest()
    with pytest.raises(PortError) as e:
        weights_port.port("resnet50", resnet_file, slot)
    assert str(e.value) == (
        f"--torch-weights {resnet_file}: sha256 {digest[:8]}... is not torchvision's resnet50 "
        "IMAGENET1K_V2 (resnet50-11ad3fa6.pth, sha256 11ad3fa6...); "
        f"--out {slot} holds those alone (--weights auto/imagenet record runs as trained "
        "from them): port these to another --out and train with --weights <that folder>"
    )
    assert not slot.exists()
    assert "(resnet50 IMAGENET1K_V1" in dl.imagenet_source_problem(
        "resnet50", "0676ba61" + "0" * 56
    )
    # Elsewhere it ports as any weights; moved into the slot by hand, a run refuses it.
    elsewhere = weights_port.port("resnet50", resnet_file, tmp_path / "mine")
    slot.parent.mkdir(parents=True)
    elsewhere.rename(slot)
    with pytest.raises(CheckpointError, match=rf"^--weights imagenet: {slot}: sha256 {digest[:8]}"):
        pretrained.resolve("imagenet", "resnet50")
    # --download said "wrote" of that slot, checking nothing (exit 0): refused as runs do.
    assert main(["--arch", "resnet50", "--download"]) == 2
    assert capsys.readouterr().err == (
        f"error: {slot}: sha256 {digest[:8]}... is not torchvision's resnet50 IMAGENET1K_V2 "
        "(resnet50-11ad3fa6.pth, sha256 11ad3fa6...); port torchvision's again into it with "
        f"--force, or train from this folder by its path (--weights {slot})\n"
    )
    # The file torchvision publishes (its hash prefix in the URL) is taken, and used.
    monkeypatch.setitem(dl.WEIGHTS_URLS, "resnet50", f"https://x.invalid/resnet50-{digest[:8]}.pth")
    assert pretrained.resolve("imagenet", "resnet50")[1] == f"imagenet ({slot})"
    assert main(["--arch", "resnet50", "--download"]) == 0  # found there, checked, not "wrote"
    assert capsys.readouterr().out == (
        f"found {slot} (checked: resnet50's ImageNet weights, ported before)\n"
    )
    # Its arrays cut short since: --download said "found (checked)" of it, reading the
    # metadata alone, and runs refused it naming no remedy.
    largest = max(
        (p for p in (slot / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )
    largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 2])
    assert main(["--arch", "resnet50", "--download"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {slot}") and err.endswith("; port again with --force\n")
    with pytest.raises(CheckpointError) as e:
        pretrained.resolve("auto", "resnet50")
    assert str(e.value).endswith(
        "; port them again: python -m weights_port --download --arch resnet50 --force"
    )
    weights_port.port("resnet50", resnet_file, slot, force=True)


def test_odd_tensors_and_cut_files_are_named_for_what_they_are(tmp_path):
    """Meta and sparse tensors, a zip cut short, a legacy pickle cut short: one line each,
    saying what is wrong with the file (not 'objects other than tensors')."""
    from weights_port.state_io import read_state_dict

    meta = tmp_path / "meta.pth"
    torch.save({"fc.weight": torch.empty(2, 3, device="meta")}, meta)
    with pytest.raises(PortError, match=r"meta.pth: key 'fc.weight' is a meta \(no data\) tens"):
        read_state_dict(meta)
    sparse = tmp_path / "sparse.pth"
    torch.save({"fc.weight": torch.eye(3).to_sparse()}, sparse)
    with pytest.raises(PortError, match=r"sparse.pth: key 'fc.weight' is a sparse_coo layout"):
        read_state_dict(sparse)
    whole = tmp_path / "whole.pth"
    torch.save({"w": torch.arange(1000.0)}, whole)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(PortError, match=r"cut.pth: truncated or corrupted zip archive"):
        read_state_dict(cut)
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.arange(1000.0)}, legacy, _use_new_zipfile_serialization=False)
    short = tmp_path / "short.pth"
    short.write_bytes(legacy.read_bytes()[:200])
    with pytest.raises(PortError, match=r"short.pth: truncated (or corrupted )?torch file"):
        read_state_dict(short)


def test_a_head_of_zero_classes_is_one_line(resnet_state):
    state = {**resnet_state, "fc.weight": np.zeros((0, 2048), np.float32)}
    state["fc.bias"] = np.zeros((0,), np.float32)
    with pytest.raises(PortError, match=r"'fc.weight' has shape \(0, 2048\), expected at least"):
        torch_to_flax(state, "resnet50", source="x.pth")


@pytest.mark.slow  # seconds: the fast tier stays under 2 minutes
def test_flags_a_plain_file_contradicts_are_named_not_a_header_it_lacks(tmp_path, capsys):
    """A one-output .pth ported with --no-multilabel was refused as "its medft_jax header:
    ...": the file has no header; the flags given are what the head contradicts."""
    src = tmp_path / "one.pth"
    torch.save(random_torchvision("resnet50", 1).state_dict(), src)
    out = tmp_path / "ck"
    argv = ["--arch", "resnet50", "--torch-weights", str(src), "--out", str(out)]
    assert main([*argv, "--no-multilabel"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: --torch-weights {src} with the flags given (--class-names, "
        "--multilabel/--no-multilabel, --image-size, --resize-size): metadata says one class "
        "and not multilabel"
    ), err
    assert err.count("\n") == 1 and not out.exists()


@pytest.mark.slow
def test_an_exported_run_ports_back_with_its_classes_and_preprocessing(resnet_file, tmp_path):
    """Ported back, a 32-px run's export was read by predict at 224 px, its classes as
    numbers and a multilabel head through softmax: the .safetensors header keeps them."""
    from medft_jax.checkpoints.model import save_model

    variables, meta = load_model(weights_port.port("resnet50", resnet_file, tmp_path / "p"))
    run = {
        **meta,
        "class_names": [f"c{i}" for i in range(10)],
        "multilabel": True,
        "resize_size": 33,
        "crop_size": 32,
        "precision": "bf16",
        "bits_stored": 12,
        "source": "run demo-resnet50-ft-lr0.001-s0-0123456789abcdef",
    }
    best = save_model(tmp_path / "best", variables["params"], variables["batch_stats"], run)
    weights_port.export(best, tmp_path / "model.pth")
    back = load_metadata(
        weights_port.port("resnet50", tmp_path / "model.safetensors", tmp_path / "b")
    )
    for key in ("class_names", "multilabel", "resize_size", "crop_size", "precision"):
        assert back[key] == run[key], key
    assert (back["bits_stored"], back["source"]) == (12, run["source"])
    assert back["ported_from"] == "model.safetensors"  # the file source_sha256 hashes
    # The .pth beside it cannot hold them: refused, naming the file that can.
    with pytest.raises(PortError, match=r"model\.pth: exported by medft-jax, with its class names"):
        weights_port.port("resnet50", tmp_path / "model.pth", tmp_path / "c")
    with pytest.raises(PortError, match=r"exported from a resnet50 checkpoint, not --arch vgg19"):
        weights_port.port("vgg19", tmp_path / "model.safetensors", tmp_path / "c")
    assert not (tmp_path / "c").exists()
    # Alone, the .pth ports as any state_dict does (the arch's sizes, classes unnamed).
    (tmp_path / "model.safetensors").unlink()
    alone = load_metadata(weights_port.port("resnet50", tmp_path / "model.pth", tmp_path / "d"))
    assert (alone["class_names"], alone["crop_size"]) == (None, 224)


def test_an_export_whose_twin_cannot_be_written_writes_neither(tmp_path):
    """A folder where the .safetensors twin goes: refused before anything, even with --force;
    and a twin that fails while written takes the .pth with it."""
    from weights_port.state_io import write_state_dict

    out = tmp_path / "model.pth"
    (tmp_path / "model.safetensors").mkdir()
    w = {"fc.weight": np.ones((2, 3), np.float32)}
    with pytest.raises(PortError, match=r"model.safetensors is a folder; expected a file name"):
        write_state_dict(w, out, force=True)
    assert not out.exists()
    (tmp_path / "model.safetensors").rmdir()
    import weights_port.state_io as sio

    real = sio.stage_bytes

    def full_disk(path, data):
        if Path(path).suffix == ".pth":
            raise OSError(28, "No space left on device", str(path))
        return real(path, data)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(sio, "stage_bytes", full_disk)
        with pytest.raises(OSError):
            write_state_dict(w, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    # With --force over an export: the old pair stays as it was, nothing new beside it.
    write_state_dict({"fc.weight": np.zeros((2, 3), np.float32)}, out)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.MonkeyPatch.context() as m:
        m.setattr(sio, "stage_bytes", full_disk)
        with pytest.raises(OSError):
            write_state_dict(w, out, force=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_forced_export_never_leaves_the_old_pth_beside_the_new_twin(tmp_path, monkeypatch):
    """The twin was written over the old one, then the .pth: a kill -9 between the two left
    two whole files of two models under one name. At the moment the new twin is in place,
    the old .pth must be gone (a kill there leaves one file of one model)."""
    import medft_jax.atomic as atomic
    from weights_port.state_io import write_state_dict

    out = tmp_path / "model.pth"
    write_state_dict({"fc.weight": np.zeros((2, 3), np.float32)}, out)
    old = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real, seen = atomic.os.replace, []

    def watching(src, dst):  # before each rename: what a kill there would leave in place
        placed = {p.name: p.read_bytes() for p in tmp_path.iterdir() if ".tmp-" not in p.name}
        seen.append(
            sorted(("old" if old.get(n) == b else "new") + " " + n for n, b in placed.items())
        )
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", watching)
    write_state_dict({"fc.weight": np.ones((2, 3), np.float32)}, out, force=True)
    assert seen == [["old model.safetensors"], ["new model.safetensors"]]
    from safetensors.numpy import load_file

    assert load_file(str(tmp_path / "model.safetensors"))["fc.weight"].sum() == 6


def test_a_misspelt_subcommand_is_named_not_taken_for_a_port(capsys):
    """``exprt --checkpoint x`` said "the following arguments are required: --arch"."""
    with pytest.raises(SystemExit) as e:
        main(["exprt", "--checkpoint", "x", "--out", "m.pth"])
    assert e.value.code == 2 and capsys.readouterr().err.startswith(
        "error: 'exprt' is neither a flag nor the subcommand export; did you mean export?"
    )
    with pytest.raises(SystemExit):
        main(["resnet50"])
    assert "did you mean" not in capsys.readouterr().err


def test_download_refuses_an_existing_out_before_downloading(tmp_path, monkeypatch, capsys):
    def no_download(*a, **k):
        pytest.fail("downloaded before checking --out")

    monkeypatch.setattr(urllib.request, "urlopen", no_download)
    out = tmp_path / "ck"
    out.mkdir()
    assert main(["--arch", "resnet50", "--download", "--out", str(out)]) == 2
    assert (
        capsys.readouterr().err
        == f"error: --out {out} already exists; pass --force to overwrite it\n"
    )


@pytest.mark.slow
def test_the_test_archs_export_ports_back(tmp_path, capsys):
    """``export`` took a resnet_tiny checkpoint, but the port refused --arch resnet_tiny."""
    from medft_jax.checkpoints.model import save_model
    from medft_jax.models import create, init_variables

    variables = init_variables(create("resnet_tiny", 3), 0, image_size=32)
    meta = {"arch": "resnet_tiny", "num_classes": 3, "resize_size": 36, "crop_size": 32}
    ck = save_model(tmp_path / "ck", variables["params"], variables["batch_stats"], meta)
    weights_port.export(ck, tmp_path / "tiny.safetensors")
    argv = ["--arch", "resnet_tiny", "--torch-weights", str(tmp_path / "tiny.safetensors")]
    assert main([*argv, "--out", str(tmp_path / "back")]) == 0
    back, back_meta = load_model(tmp_path / "back")
    assert (back_meta["crop_size"], back_meta["num_classes"]) == (32, 3)
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(back), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_an_export_names_the_decoding_rules_its_pth_cannot_carry(tmp_path, capsys):
    """A run trained with --bits-stored 12 --dicom-window 40,400: its model.pth, ported
    alone, gave predict each DICOM file by its own window, another input than training,
    and neither the export nor the port said so."""
    import shutil

    from medft_jax.checkpoints.model import save_model
    from medft_jax.models import create, init_variables

    variables = init_variables(create("resnet_tiny", 2), 0, image_size=32)
    meta = {"arch": "resnet_tiny", "num_classes": 2, "resize_size": 36, "crop_size": 32}
    plain = save_model(tmp_path / "plain", variables["params"], variables["batch_stats"], meta)
    meta.update(bits_stored=12, dicom_window=[40.0, 400.0], class_names=["a", "b"])
    ruled = save_model(tmp_path / "ruled", variables["params"], variables["batch_stats"], meta)
    assert main(["export", "--checkpoint", str(plain), "--out", str(tmp_path / "p.pth")]) == 0
    assert capsys.readouterr().err == ""  # nothing lost
    out = tmp_path / "e" / "model.pth"
    out.parent.mkdir()
    assert main(["export", "--checkpoint", str(ruled), "--out", str(out)]) == 0
    assert capsys.readouterr().err == (
        "note: model.pth holds tensors only, not the run's decoding rules (--bits-stored 12 "
        "--dicom-window 40,400), which model.safetensors keeps: port that file, or give "
        "predict those flags, to read images as training did\n"
    )
    twin = ["--arch", "resnet_tiny", "--torch-weights", str(out.with_suffix(".safetensors"))]
    assert main([*twin, "--out", str(tmp_path / "back")]) == 0
    back = load_metadata(tmp_path / "back")
    assert (back["bits_stored"], back["dicom_window"]) == (12, [40.0, 400.0])
    alone = tmp_path / "alone" / "model.pth"
    alone.parent.mkdir()
    shutil.copy(out, alone)
    argv = ["--arch", "resnet_tiny", "--torch-weights", str(alone), "--out", str(tmp_path / "a")]
    assert main(argv) == 0
    assert "decodes 16-bit and DICOM images by the default rules" in capsys.readouterr().err
    assert load_metadata(tmp_path / "a").get("dicom_window") is None


def test_download_into_an_unwritable_user_cache_says_how_to_move_it(tmp_path, capsys, monkeypatch):
    """A read-only HOME: ``--download`` named the path only; where it writes by default,
    MEDFT_JAX_CACHE (or --out) is what to change."""
    (tmp_path / "afile").write_text("x")  # as a read-only HOME would (root ignores modes)
    monkeypatch.setenv("MEDFT_JAX_CACHE", str(tmp_path / "afile" / "cache"))
    assert main(["--download", "--arch", "resnet50"]) == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'afile' / 'cache' / 'flax'}: a path component is a file, not a "
        "folder; set MEDFT_JAX_CACHE to a writable folder, or give --out\n"
    )
    # A full disk in the cache is no cache to move: said as it is, without that advice.
    import errno

    monkeypatch.setenv("MEDFT_JAX_CACHE", str(tmp_path / "cache"))
    where = tmp_path / "cache" / "flax" / "resnet50.part"

    def full(arch, out=None, force=False):
        raise OSError(errno.ENOSPC, "No space left on device", str(where))

    monkeypatch.setattr(weights_port, "port_imagenet", full)
    assert main(["--download", "--arch", "resnet50"]) != 0
    err = capsys.readouterr().err
    assert f"{where}: no space left on the device" in err and "MEDFT_JAX_CACHE" not in err


def test_an_out_that_force_cannot_replace_is_named_as_what_it_is(tmp_path, capsys):
    """A file as --out was told "pass --force", which then said it is a file."""
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    foreign = tmp_path / "results"
    foreign.mkdir()
    (foreign / "table.csv").write_text("a,b")
    said = {
        taken: f"error: --out {taken} is a file, expected a checkpoint folder\n",
        foreign: f"error: --out {foreign} exists and is not a model checkpoint; --force "
        "replaces only a checkpoint, choose another folder\n",
    }
    for out, line in said.items():
        argv = ["--arch", "resnet50", "--torch-weights", str(weights), "--out", str(out)]
        assert main(argv) == 2
        assert capsys.readouterr().err == line
    assert taken.read_text() == "mine" and [p.name for p in foreign.iterdir()] == ["table.csv"]


def test_a_sequential_head_is_named_with_what_the_file_needs():
    """``fc = nn.Sequential(nn.Dropout(0.2), nn.Linear(2048, 3))``, the tutorials' head, was
    refused naming the missing ``fc.bias`` alone, not the ``fc.1.*`` keys the file has."""
    from weights_port.keymap import _template

    state = {k: np.zeros(shape, np.float32) for k, (shape, _, _) in _template("vgg19", 3).items()}
    for name in ("weight", "bias"):
        state[f"classifier.6.1.{name}"] = state.pop(f"classifier.6.{name}")
    with pytest.raises(PortError) as e:
        torch_to_flax(state, "vgg19", source="seq.pth")
    assert str(e.value) == (
        "seq.pth: missing key 'classifier.6.bias' expected by vgg19 (2 missing, 2 unexpected, "
        "e.g. 'classifier.6.1.bias'); its head classifier.6 is a Sequential (classifier.6.1.*): "
        "re-save the state_dict with classifier.6.1.weight and classifier.6.1.bias renamed "
        "classifier.6.weight and classifier.6.bias, if the Sequential's other layers have no "
        "weights and change nothing in eval (Dropout)"
    )
    state["classifier.6.0.weight"] = state["classifier.6.1.weight"]  # two layers with weights
    with pytest.raises(PortError, match=r"a Sequential of 2 layers with weights; a ported "):
        torch_to_flax(state, "vgg19", source="seq.pth")
    del state["classifier.6.0.weight"], state["features.0.bias"]  # another key amiss: no hint
    with pytest.raises(PortError, match=r"^seq.pth: missing key 'classifier.6.bias' .*\)$"):
        torch_to_flax(state, "vgg19", source="seq.pth")
    # The head's bias missing alone: no nested key, no "Sequential of 0 layers".
    state = {k: np.zeros(shape, np.float32) for k, (shape, _, _) in _template("vgg19", 3).items()}
    del state["classifier.6.bias"]
    with pytest.raises(PortError) as e:
        torch_to_flax(state, "vgg19", source="seq.pth")
    assert str(e.value) == (
        "seq.pth: missing key 'classifier.6.bias' expected by vgg19 (1 missing, 0 unexpected)"
    )


def _half_state(dtype) -> dict[str, np.ndarray]:
    """A 3-class resnet50 state_dict of ``dtype`` floats, ``num_batches_tracked`` float too:
    what ``{k: v.float() for k, v in sd.items()}``, this port's old hint, made of one."""
    from weights_port.keymap import _template

    rng = np.random.default_rng(0)
    state = {
        k: rng.normal(size=s).astype(dtype) for k, (s, _, _) in _template("resnet50", 3).items()
    }
    for key in [k for k in state if k.endswith(".running_var")]:
        state[key.removesuffix("running_var") + "num_batches_tracked"] = np.array(7.0, dtype)
    return state


@pytest.mark.slow  # seconds: the fast tier stays under 2 minutes
def test_float16_ports_widened_and_float64_is_told_a_resave_that_works():
    """The fp16 hint `{k: v.float() for ...}` made num_batches_tracked float, which the port
    then refused; bfloat16 in a .pth had no hint at all. float16 is now widened (exact), an
    integral float num_batches_tracked taken as its integer, float64 told a re-save that works."""
    half = _half_state(np.float16)
    variables, tracked = torch_to_flax(half, "resnet50", source="half.pth")
    assert set(tracked.values()) == {7} and all(type(v) is int for v in tracked.values())
    kernel = variables["params"]["conv1"]["kernel"]
    assert kernel.dtype == np.float32
    np.testing.assert_array_equal(
        kernel, half["conv1.weight"].astype(np.float32).transpose(2, 3, 1, 0)
    )
    float32 = {k: v.astype(np.float32) for k, v in half.items()}  # the old hint's file
    assert torch_to_flax(float32, "resnet50")[1] == tracked
    float32["bn1.num_batches_tracked"] = np.array(7.5, np.float32)  # not a count: refused
    with pytest.raises(
        PortError, match=r"'bn1.num_batches_tracked' has shape \(\) and dtype float32"
    ):
        torch_to_flax(float32, "resnet50")
    with pytest.raises(PortError) as e:
        torch_to_flax(_half_state(np.float64), "resnet50", source="double.pth")
    assert str(e.value).endswith(
        "has dtype float64, expected float32; re-save the state_dict sd as {k: v.float() if "
        "v.is_floating_point() else v for k, v in sd.items()} (this rounds float64 to float32)"
    )
    # An integer weight was told the same re-save, which leaves integers as they are.
    ints = {k: v.astype(np.float32) for k, v in half.items()}
    ints["conv1.weight"] = ints["conv1.weight"].astype(np.int64)
    with pytest.raises(PortError) as e:
        torch_to_flax(ints, "resnet50", source="q.pth")
    assert str(e.value) == (
        "q.pth: key 'conv1.weight' has dtype int64, expected float32: a weight stored as "
        "integers or booleans (a quantised model, or not a trained model's state_dict?); "
        "port a float checkpoint"
    )


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_bfloat16_file_is_read_widened_to_float32(suffix, tmp_path):
    """bfloat16 in a .pth was refused with no hint, in a .safetensors as unreadable."""
    from safetensors.torch import save_file

    from weights_port.state_io import read_state_dict

    g = torch.Generator().manual_seed(0)
    state = {"w": torch.randn(4, 5, generator=g).bfloat16(), "n": torch.tensor(3)}
    path = tmp_path / f"bf16{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file(state, path)
    read = read_state_dict(path)
    assert read["w"].dtype == np.float32 and read["n"].dtype == np.int64
    np.testing.assert_array_equal(read["w"], state["w"].float().numpy())


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit: deprecated, still written
def test_a_torchscript_archive_is_named_with_the_resave_that_works(tmp_path, capsys):
    """torch.jit.save's file was told "a whole model saved with torch.save(model)?", and to
    call model.state_dict() on a model its user does not have."""
    path = tmp_path / "ts.pth"
    torch.jit.trace(torch.nn.Linear(2, 2), torch.ones(1, 2)).save(str(path))
    out = tmp_path / "o"
    assert main(["--arch", "resnet_tiny", "--torch-weights", str(path), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"error: {path}: a TorchScript archive (torch.jit.save), not a state_dict; re-save its "
        "weights with torch.save(torch.jit.load(FILE).state_dict(), OUT)\n"
    )
    assert not out.exists()


@pytest.mark.parametrize("prefix", ["model.", "model.module."])
def test_a_state_dict_under_a_prefix_beside_other_keys_is_named_as_such(resnet_state, prefix):
    """A Lightning module's `model.*` beside its loss's `criterion.pos_weight` buffer was told
    "267 missing, 321 unexpected". Named, with the re-save, and not ported: the other keys
    could be a second model."""
    state = {prefix + k: v for k, v in resnet_state.items()}
    state["criterion.pos_weight"] = np.ones(2, np.float32)
    with pytest.raises(PortError) as e:
        torch_to_flax(state, "resnet50", source="l.ckpt")
    n = len(prefix)
    assert str(e.value) == (
        f"l.ckpt: holds resnet50's state_dict under {prefix!r} beside 1 other key(s) (e.g. "
        f"'criterion.pos_weight'); re-save the model's keys of its state_dict sd alone: "
        f"torch.save({{k[{n}:]: v for k, v in sd.items() if k.startswith({prefix!r})}}, FILE)"
    )
    del state["model.fc.bias" if prefix == "model." else "model.module.fc.bias"]
    with pytest.raises(PortError, match=r"^l.ckpt: missing key 'bn1.bias' expected by resnet50"):
        torch_to_flax(state, "resnet50", source="l.ckpt")  # not the whole model: as before


def _tiny_export(tmp_path: Path) -> Path:
    """A resnet_tiny checkpoint exported with resize 36 crop 32 in its header."""
    from medft_jax.checkpoints.model import save_model
    from medft_jax.models import create, init_variables

    variables = init_variables(create("resnet_tiny", 3), 0, image_size=32)
    meta = {"arch": "resnet_tiny", "num_classes": 3, "resize_size": 36, "crop_size": 32}
    ck = save_model(tmp_path / "ck", variables["params"], variables["batch_stats"], meta)
    weights_port.export(ck, tmp_path / "tiny.safetensors")
    return tmp_path / "tiny.safetensors"


@pytest.mark.slow  # a checkpoint written and exported four times
def test_an_export_into_the_checkpoint_it_reads_is_refused(tmp_path):
    """It wrote into ``best/`` (even into orbax's ``state/``), a folder a ``run --force``
    replaces whole, deleting the export without a word; predict's --out is refused there."""
    ck = _tiny_export(tmp_path).parent / "ck"
    for out in (ck / "x.pth", ck / "state" / "x.safetensors"):
        with pytest.raises(PortError, match=r"^--out .*: inside --checkpoint .*, a folder the"):
            weights_port.export(ck, out)
        assert not out.exists() and not out.with_suffix(".safetensors").exists()
    assert weights_port.export(ck, tmp_path / "beside.safetensors")  # beside it is fine
    # A run's best/: its run folder, which a run --force clears, is no place either.
    best = tmp_path / "runs" / "demo-resnet_tiny-ft-lr0.001-s0-0123456789abcdef" / "best"
    shutil.copytree(ck, best)
    with pytest.raises(PortError, match=r"^--out .*model\.safetensors: inside the run folder"):
        weights_port.export(best, best.parent / "model.safetensors")
    assert weights_port.export(best, tmp_path / "runs" / "model.safetensors")
    # A user's own folder holding a best/ is no run folder: exporting beside it is fine.
    mine = tmp_path / "mine" / "best"
    shutil.copytree(ck, mine)
    assert weights_port.export(mine, mine.parent / "model.safetensors")


@pytest.mark.slow  # seconds: the fast tier stays under 2 minutes
def test_a_port_into_a_checkpoint_or_a_run_folder_is_refused(tmp_path):
    """Ported into a run's best/ or beside it, or into another checkpoint: a later
    ``run --force`` deleted it without a word (export and predict refused those places)."""
    from medft_jax.checkpoints.model import save_model
    from medft_jax.models import create, init_variables

    variables = init_variables(create("resnet_tiny", 3), 0, image_size=32)
    meta = {"arch": "resnet_tiny", "num_classes": 3, "resize_size": 36, "crop_size": 32}
    run = tmp_path / "runs" / "demo-resnet_tiny-ft-lr0.001-s0-0123456789abcdef"
    best = save_model(run / "best", variables["params"], variables["batch_stats"], meta)
    missing = tmp_path / "missing.pth"  # the place is judged before the file is read
    for out, where in (
        (best / "ported", f"the checkpoint folder {best.resolve()}, a folder the toolkit "
         "replaces whole"),
        (run / "ported", f"the run folder {run.resolve()}, which a run --force clears"),
    ):  # fmt: skip
        with pytest.raises(CheckpointError) as err:
            weights_port.port("resnet50", missing, out)
        assert str(err.value) == f"--out {out}: inside {where}; write the port elsewhere"
        assert not out.exists()
    # A user's own folder holding a best/ is no run folder: the file is what is wrong there.
    mine = tmp_path / "mine"
    (mine / "best").mkdir(parents=True)
    with pytest.raises(PortError, match=r"missing\.pth"):
        weights_port.port("resnet50", missing, mine / "ported")


@pytest.mark.slow  # seconds: the fast tier stays under 2 minutes
def test_resize_size_is_checked_against_the_crop_and_an_exports_header(tmp_path, capsys):
    """No port flag set the resize: a model trained with Resize(256) + CenterCrop(224) was
    read by predict at 232. --resize-size says it; refused below the crop, or where an
    export's header says otherwise."""
    from safetensors.numpy import load_file, save_file

    exported = _tiny_export(tmp_path)
    plain = tmp_path / "plain.safetensors"
    save_file(load_file(str(exported)), str(plain))  # the tensors without the header
    for src, flags, message in [
        (
            exported,
            ["--resize-size", "40"],
            f"--torch-weights {exported}: its medft_jax header says resize_size 36, not 40; "
            "leave the flag out",
        ),
        (
            plain,
            ["--image-size", "64", "--resize-size", "60"],
            "--resize-size 60: expected at least --image-size 64",
        ),
        (plain, ["--resize-size", "100"], "--resize-size 100: expected at least the crop, 224 px"),
        (plain, ["--resize-size", "5000"], "--resize-size 5000: expected at most 4096 pixels"),
    ]:
        argv = ["--arch", "resnet_tiny", "--torch-weights", str(src), "--out", str(tmp_path / "x")]
        assert main([*argv, *flags]) == 2
        assert capsys.readouterr().err == f"error: {message}\n"
        assert not (tmp_path / "x").exists()
    argv = ["--arch", "resnet_tiny", "--torch-weights", str(exported), "--resize-size", "36"]
    assert main([*argv, "--out", str(tmp_path / "same")]) == 0
    assert load_metadata(tmp_path / "same")["resize_size"] == 36
    meta = load_metadata(weights_port.port("resnet_tiny", plain, tmp_path / "p", resize_size=256))
    assert (meta["resize_size"], meta["crop_size"]) == (256, 224)
    with pytest.raises(SystemExit):
        main(["--arch", "resnet50", "--download", "--resize-size", "256"])
    assert "--resize-size: ImageNet weights' head is known" in capsys.readouterr().err


@pytest.mark.slow  # seconds: the fast tier stays under 2 minutes
def test_a_known_files_own_resize_and_a_linked_out_are_said_before_the_port(
    tmp_path, capsys, monkeypatch
):
    """torchvision's ResNet-50 IMAGENET1K_V1 (known by its hash) is evaluated at Resize(256),
    but its port recorded the arch's 232 without a word. An --out that is a link was
    told "pass --force", which then refused it after the whole file was converted."""
    from safetensors.numpy import load_file, save_file

    from weights_port import fetch, porting
    from weights_port.fetch import sha256

    plain = tmp_path / "plain.safetensors"
    save_file(load_file(str(_tiny_export(tmp_path))), str(plain))
    assert load_metadata(weights_port.port("resnet_tiny", plain, tmp_path / "a"))[
        "resize_size"
    ] == 232  # fmt: skip
    monkeypatch.setitem(fetch.KNOWN_RESIZE, sha256(plain)[:8], 256)
    assert load_metadata(weights_port.port("resnet_tiny", plain, tmp_path / "b"))[
        "resize_size"
    ] == 256  # fmt: skip
    (tmp_path / "link").symlink_to(tmp_path / "a")
    monkeypatch.setattr(porting, "read_state_dict", lambda *a: pytest.fail("read"))
    argv = ["--arch", "resnet_tiny", "--torch-weights", str(plain), "--out"]
    for flags in ([], ["--force"]):
        assert main([*argv, str(tmp_path / "link"), *flags]) == 2
        assert capsys.readouterr().err.startswith(f"error: --out {tmp_path / 'link'} is a link;")


@pytest.mark.slow  # a full-size port and predict
def test_a_port_with_resize_size_predicts_as_torchvisions_resize_and_crop(
    resnet_file, tmp_path, capsys
):
    """--image-size 160 --resize-size 200: predict reads an image as torchvision's
    Resize(200) + CenterCrop(160) does, not at the arch's 232/224 of 160 (166)."""
    from PIL import Image

    from experiments.predict import Predictor

    out = tmp_path / "ck"
    flags = ["--image-size", "160", "--resize-size", "200"]
    assert (
        main(["--arch", "resnet50", "--torch-weights", str(resnet_file), "--out", str(out), *flags])
        == 0
    )
    capsys.readouterr()
    meta = load_metadata(out)
    assert (meta["resize_size"], meta["crop_size"]) == (200, 160)
    rng = np.random.default_rng(0)
    image = tmp_path / "wide.png"
    Image.fromarray(rng.integers(0, 256, (230, 310, 3), dtype=np.uint8)).save(image)
    ours = Predictor(str(out)).predict_files([str(image)])[0]
    T = torchvision.transforms
    pipeline = T.Compose(
        [
            T.Resize(200),
            T.CenterCrop(160),
            T.ToTensor(),
            T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    model = random_torchvision("resnet50", 10, seed=3).eval()
    with torch.no_grad():
        theirs = torch.softmax(model(pipeline(Image.open(image))[None]), -1)[0].numpy()
    # Found 2e-7 apart; at Resize(166), the arch's rule, 3e-5 (a random model's outputs
    # are near uniform): the tolerance tells the two apart.
    np.testing.assert_allclose(ours, theirs, atol=2e-6)


def test_a_killed_downloads_part_file_goes_once_the_file_is_cached(tmp_path, monkeypatch):
    """A download killed (SIGKILL) left its .part; a later download cached the file, and
    every call after returned the cached file before looking: the .part stayed for good."""
    import hashlib
    import time

    monkeypatch.setenv("MEDFT_JAX_CACHE", str(tmp_path))
    payload = b"weights"
    digest = hashlib.sha256(payload).hexdigest()
    monkeypatch.setitem(dl.WEIGHTS_URLS, "resnet50", f"https://x.invalid/resnet50-{digest[:8]}.pth")
    target = tmp_path / "torchvision" / f"resnet50-{digest[:8]}.pth"
    target.parent.mkdir(parents=True)
    target.write_bytes(payload)
    killed = target.with_name(f".{target.name}.abc123.part")
    live = target.with_name(f".{target.name}.def456.part")
    for part in (killed, live):
        part.write_bytes(b"x" * 10)
    old = time.time() - 3600
    os.utime(killed, (old, old))
    assert dl.download("resnet50") == target
    assert not killed.exists() and live.exists()  # a live one (touched lately) stays
