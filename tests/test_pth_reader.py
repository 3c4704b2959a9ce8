"""The torch-free ``.pth`` reader: what it reads equals ``torch.load(weights_only=True)`` bit
for bit, it needs no torch, and it never runs pickled code."""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.torch_ref import random_torchvision, torch
from weights_port import pth_reader
from weights_port.keymap import PortError
from weights_port.state_io import STATE_DICT_KEYS, not_loadable, read_state_dict

FAST_TESTS_GROUP = "torch"  # see tests/conftest.py

ROOT = Path(__file__).resolve().parents[1]


def torch_load(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True)


def assert_bit_equal(ours: dict, theirs: dict) -> None:
    """Same keys in the same order, and per key the same dtype, shape and bytes."""
    assert list(ours) == list(theirs)
    for key, tensor in theirs.items():
        want = tensor.detach().resolve_conj().resolve_neg().numpy()
        got = ours[key]
        assert isinstance(got, np.ndarray), key
        assert (got.dtype, got.shape) == (want.dtype, want.shape), key
        assert got.tobytes() == np.ascontiguousarray(want).tobytes(), key
        assert got.flags.c_contiguous and got.flags.writeable, key


def saved(path: Path, obj, **kwargs) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(obj, path, **kwargs)
    return path


RESAVE_ADVICE = (
    "a whole model saved with torch.save(model): re-save model.state_dict(); a checkpoint "
    "dict holding other objects besides the weights: re-save its state_dict entry alone, "
    "e.g. torch.save(ckpt['state_dict'], FILE)"
)
"""How every refusal of pickled objects ends: the fix for both ways such a file is made."""

_LEGACY = {"_use_new_zipfile_serialization": False}
FORMATS = {"zip": {}, "legacy": _LEGACY}
"""torch.save's two formats: a zip archive (torch >= 1.6's default) and the legacy one."""


# --- equal to torch.load ----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize(
    "arch",
    ["resnet50", "densenet121", pytest.param("vgg19", marks=pytest.mark.slow)],
)
def test_torchvision_state_dicts_read_as_torch_loads_them(arch, fmt, tmp_path):
    state = random_torchvision(arch, 10, seed=2).state_dict()
    path = saved(tmp_path / f"{arch}.pth", state, **FORMATS[fmt])
    assert_bit_equal(read_state_dict(path), torch_load(path))


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("key", STATE_DICT_KEYS)
def test_a_training_checkpoint_is_unwrapped_as_torch_loads_it(key, fmt, tmp_path):
    """{'model': sd, 'optimizer': ..., 'epoch': 3}: the optimizer's state (tensors, param
    groups of floats, tuples, None) is read too, then left."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.ones(2, 3, 5, 5)).sum().backward()
    optimizer.step()
    checkpoint = {key: model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 3}
    path = saved(tmp_path / "ckpt.pth", checkpoint, **FORMATS[fmt])
    assert_bit_equal(read_state_dict(path), torch_load(path)[key])


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_views_read_as_torch_loads_them(fmt, tmp_path):
    """Non-contiguous tensors, several sharing one storage at offsets, expanded, with
    the neg bit, parameters, and tensors carrying Python attributes."""
    base = torch.randn(6, 8)
    marked = torch.randn(3)
    marked.note = "an attribute"  # pickled through torch._tensor._rebuild_from_type_v2
    param = torch.nn.Parameter(torch.randn(2, 2))
    param.note = 1  # through torch._utils._rebuild_parameter_with_state
    state = {
        "transposed": base.t(),
        "sliced": base[1:5:2, 3:],
        "row": base[4],
        "flat_offset": base.view(-1)[13:29],
        "column": base[:, 5],
        "expanded": torch.randn(3, 1).expand(3, 4),
        "channels_last": torch.randn(4, 3, 2, 2).to(memory_format=torch.channels_last),
        "negated": torch.randn(4)._neg_view(),
        "parameter": torch.nn.Parameter(torch.randn(3)),
        "parameter_with_state": param,
        "marked": marked,
        "num_batches_tracked": torch.tensor(7),
    }
    path = saved(tmp_path / "views.pth", state, **FORMATS[fmt])
    if fmt == "zip":  # the views share their storage: one member for them all
        with zipfile.ZipFile(path) as z:
            assert sum("/data/" in n for n in z.namelist()) < len(state)
    else:  # one storage for them all, its bytes written once
        assert path.read_bytes().count(base.numpy().tobytes()) == 1
    assert_bit_equal(read_state_dict(path), torch_load(path))


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_dtype_scalars_and_empty_tensors_read_as_torch_loads_them(fmt, tmp_path):
    g = torch.Generator().manual_seed(0)
    floats = torch.randn(3, 4, generator=g) * 100
    state = {
        "float32": floats,
        "float64": floats.double(),
        "float16": floats.half(),
        "int64": torch.randint(-(2**62), 2**62, (5,), generator=g),
        "int32": torch.randint(-(2**31), 2**31 - 1, (5,), generator=g, dtype=torch.int32),
        "int16": torch.randint(-(2**15), 2**15 - 1, (5,), generator=g, dtype=torch.int16),
        "int8": torch.randint(-128, 127, (2, 3), generator=g, dtype=torch.int8),
        "uint8": torch.randint(0, 255, (7,), generator=g, dtype=torch.uint8),
        "bool": torch.rand(6, generator=g) > 0.5,
        "complex64": torch.randn(3, dtype=torch.complex64, generator=g),
        "conj": torch.randn(3, dtype=torch.complex64, generator=g).conj(),
        "scalar_float": torch.tensor(2.5),
        "scalar_int": torch.tensor(7),
        "scalar_bool": torch.tensor(True),
        "empty": torch.empty(0),
        "empty_2d": torch.empty(0, 5, dtype=torch.int32),
        "empty_sliced": torch.arange(5.0)[5:],
    }
    for name in ("uint16", "uint32", "uint64"):  # torch >= 2.3
        if hasattr(torch, name):
            state[name] = torch.arange(9).to(getattr(torch, name))
    path = saved(tmp_path / "dtypes.pth", state, **FORMATS[fmt])
    if fmt == "zip":
        assert_bit_equal(read_state_dict(path), torch_load(path))
        return
    # torch.load fails on the uint16/32/64 tensors its own legacy save writes (on an
    # untyped storage, which its legacy load asks for a dtype): those are compared with
    # the zip file torch reads, the rest with torch.load of the legacy file itself.
    assert_bit_equal(read_state_dict(path), torch_load(saved(tmp_path / "zip.pth", state)))
    typed = {k: v for k, v in state.items() if k not in ("uint16", "uint32", "uint64")}
    path = saved(tmp_path / "typed.pth", typed, **_LEGACY)
    assert_bit_equal(read_state_dict(path), torch_load(path))


def test_a_big_endian_file_reads_as_torch_loads_it(tmp_path):
    """torch.save writes the machine's byte order and names it in `byteorder`."""
    little = saved(tmp_path / "little.pth", {"w": torch.randn(3, 5).double(), "n": torch.tensor(3)})
    big = tmp_path / "big.pth"
    with zipfile.ZipFile(little) as src, zipfile.ZipFile(big, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/byteorder"):
                data = b"big"
            elif "/data/" in info.filename:
                data = np.frombuffer(data, "<i8").astype(">i8").tobytes()  # both 8-byte types
            dst.writestr(info, data)
    assert_bit_equal(read_state_dict(big), torch_load(big))
    assert_bit_equal(read_state_dict(big), torch_load(little))


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_what_numpy_cannot_hold_is_named_as_the_torch_path_named_it(fmt, tmp_path):
    cases = {
        "half_complex": (torch.ones(2, dtype=torch.complex32), "has dtype complex32, expected"),
        "csr": (torch.eye(3).to_sparse_csr(), "is a sparse_csr layout tensor, expected a dense"),
        "quantized": (
            torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.quint8),
            "is a quantized tensor, expected a dense float32 one",
        ),
    }
    if hasattr(torch, "float8_e4m3fn"):
        cases["fp8"] = (torch.ones(2).to(torch.float8_e4m3fn), "has dtype float8_e4m3fn, expec")
    for name, (tensor, message) in cases.items():
        path = saved(tmp_path / f"{name}.pth", {"fc.weight": tensor}, **FORMATS[fmt])
        with pytest.raises(PortError, match=rf"^{path}: key 'fc.weight' {message}"):
            read_state_dict(path)


# --- no torch needed --------------------------------------------------------------------------


_NO_TORCH = """
import json, sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "torchvision"):
            raise ImportError(f"import of {name} blocked by the test")

sys.meta_path.insert(0, NoTorch())
from weights_port.state_io import read_state_dict

state = read_state_dict(sys.argv[1])
assert "torch" not in sys.modules and "torchvision" not in sys.modules, "torch was imported"
print(json.dumps({k: [str(v.dtype), list(v.shape), v.tobytes().hex()] for k, v in state.items()}))
"""


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.slow
def test_a_pth_is_read_where_torch_cannot_be_imported(fmt, tmp_path):
    state = {"conv.weight": torch.randn(4, 3, 3, 3).permute(0, 2, 3, 1), "n": torch.tensor(5)}
    path = saved(tmp_path / "m.pth", {"model": state, "epoch": 3}, **FORMATS[fmt])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    run = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, str(path)], capture_output=True, text=True, env=env
    )
    assert run.returncode == 0, run.stderr
    import json

    got = json.loads(run.stdout.strip().splitlines()[-1])
    want = {k: v.contiguous().numpy() for k, v in state.items()}
    assert got == {k: [str(v.dtype), list(v.shape), v.tobytes().hex()] for k, v in want.items()}


def test_without_torch_a_zip_and_a_legacy_file_are_read(tmp_path, monkeypatch):
    path = saved(tmp_path / "m.pth", {"w": torch.arange(4.0)})
    legacy = saved(tmp_path / "legacy.pth", {"w": torch.arange(4.0)}, **_LEGACY)
    for name in ("torch", "torchvision"):
        monkeypatch.setitem(sys.modules, name, None)  # `import torch` raises ImportError
    np.testing.assert_array_equal(read_state_dict(path)["w"], [0.0, 1.0, 2.0, 3.0])
    np.testing.assert_array_equal(read_state_dict(legacy)["w"], [0.0, 1.0, 2.0, 3.0])
    # A plain pickle is still named as one, and pickled code refused, without torch.
    (tmp_path / "plain.pth").write_bytes(b"\x80\x02}q\x00X\x01\x00\x00\x00aK\x01s.")
    with pytest.raises(PortError, match=r"plain\.pth: not a torch\.save file \(a plain pickle"):
        read_state_dict(tmp_path / "plain.pth")
    target = tmp_path / "pwned"
    (tmp_path / "evil.pth").write_bytes(_call(b"cos\nsystem\n", f"touch {target}"))
    with pytest.raises(PortError) as refused:
        read_state_dict(tmp_path / "evil.pth")
    assert str(refused.value) == (f"{tmp_path / 'evil.pth'}: {not_loadable('global os.system')}")
    assert not target.exists()


# --- never runs pickled code ------------------------------------------------------------------


def _str(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _int(n: int) -> bytes:
    if -(2**31) <= n < 2**31:
        return b"J" + struct.pack("<i", n)
    data = pickle.encode_long(n)
    return b"\x8a" + bytes([len(data)]) + data  # LONG1


def _tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _global(module: str, name: str) -> bytes:
    return f"c{module}\n{name}\n".encode()


def _call(func: bytes, arg: str) -> bytes:
    """A protocol-2 pickle of ``func(arg)``."""
    return b"\x80\x02" + func + _str(arg) + b"\x85R."


_ROOT = object()
"""A legacy persistent id's view that is None: the tensor is on its root storage."""


def _tensor(
    key: str, numel: int, offset: int, size, stride, storage="FloatStorage", view=None
) -> bytes:
    """The opcodes torch.save writes for one tensor (torch._utils._rebuild_tensor_v2); with
    a ``view`` (``_ROOT`` or ``(view key, offset, numel)``), a legacy file's."""
    pid = [_str("storage"), _global("torch", storage), _str(key), _str("cpu"), _int(numel)]
    if view is not None:
        pid.append(b"N" if view is _ROOT else _tuple(_str(view[0]), *map(_int, view[1:])))
    hooks = _global("collections", "OrderedDict") + b")R"
    sizes, strides = _tuple(*map(_int, size)), _tuple(*map(_int, stride))
    args = _tuple(_tuple(*pid) + b"Q", _int(offset), sizes, strides, b"\x89", hooks)
    return _global("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def _old_tensor(key: str, numel: int, offset: int, size, stride, view=_ROOT) -> bytes:
    """What torch < 0.4 wrote for a tensor (torch._utils._rebuild_tensor), its strings as
    Python 2's (SHORT_BINSTRING)."""

    def py2(text: str) -> bytes:
        return b"U" + bytes([len(text)]) + text.encode()

    view_id = b"N" if view is _ROOT else _tuple(py2(view[0]), *map(_int, view[1:]))
    pid = _tuple(py2("storage"), _global("torch", "FloatStorage"), py2(key), py2("cuda:0"))
    pid = pid[:-1] + _int(numel) + view_id + b"t"
    sizes, strides = _tuple(*map(_int, size)), _tuple(*map(_int, stride))
    args = _tuple(pid + b"Q", _int(offset), sizes, strides)
    return _global("torch._utils", "_rebuild_tensor") + args + b"R"


def _state(*items: tuple[str, bytes]) -> bytes:
    """A protocol-2 pickle of a dict of names to what ``items`` pickle."""
    return b"\x80\x02}(" + b"".join(_str(k) + v for k, v in items) + b"u."


def torch_zip(path: Path, pickled: bytes, storages: dict[str, bytes] | None = None) -> Path:
    """A zip laid out as torch.save lays it out, around a pickle made by hand."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickled)
        z.writestr("archive/byteorder", b"little")
        for key, data in (storages or {}).items():
            z.writestr(f"archive/data/{key}", data)
        z.writestr("archive/version", b"3\n")
    return path


def test_the_hand_made_archive_is_what_torch_reads(tmp_path):
    """The builders below make files torch.load reads: what they refuse is refused for
    what it holds, not for its layout."""
    data = np.arange(6, dtype="<f4").tobytes()
    path = torch_zip(
        tmp_path / "ok.pth", _state(("w", _tensor("0", 6, 1, (2, 2), (1, 2)))), {"0": data}
    )
    assert_bit_equal(read_state_dict(path), torch_load(path))
    np.testing.assert_array_equal(read_state_dict(path)["w"], [[1, 3], [2, 4]])


def _payloads(target: Path, view=None) -> dict[str, bytes]:
    """Pickles naming code; their tensors with persistent ids of a legacy file's with
    ``view=_ROOT``."""
    touch = f"touch {target}"
    evil = _call(_global("os", "system"), touch)
    stack_global = b"\x80\x04" + _str("os") + _str("system") + b"\x93" + _str(touch) + b"\x85R."
    opened = f"open({str(target)!r}, 'w')"
    return {
        "os.system": evil,
        "posix.system": _call(_global("posix", "system"), touch),
        "builtins.eval": _call(_global("builtins", "eval"), opened),
        "__builtin__.eval": _call(_global("__builtin__", "eval"), opened),
        "stack_global": stack_global,
        # Hidden inside a training checkpoint, behind a whole state_dict.
        "in_a_checkpoint": _state(
            ("model", b"}" + _str("w") + _tensor("0", 6, 0, (6,), (1,), view=view) + b"s"),
            ("epoch", _global("os", "system") + _str(touch) + b"\x85R"),
        ),
        # OrderedDict is allowed; calling a global it is not allowed is not.
        "ordered_dict_of_eval": b"\x80\x02"
        + _global("collections", "OrderedDict")
        + _global("builtins", "eval")
        + _str(opened)
        + b"\x85R\x85R.",
        # No object may be made but by the allowed functions: not by NEWOBJ, nor BUILD.
        "newobj": b"\x80\x02" + _global("collections", "OrderedDict") + b")\x81.",
        # A global by copyreg extension code (EXT1 1): past find_class, whatever is registered.
        "extension": b"\x80\x02\x82\x01" + _str(touch) + b"\x85R.",
        "build_on_a_tensor": _state(("w", _tensor("0", 6, 0, (6,), (1,), view=view) + b"}b")),
        # A persistent id other than ('storage', type, key, location, numel).
        "persistent_id": b"\x80\x02" + _tuple(_str("module"), _str("os")) + b"Q.",
        "text_persistent_id": b"\x80\x02Pos.system\n.",
        # torch's legacy save names a whole model's classes so: ('module', type, file, source).
        "module_persistent_id": b"\x80\x02"
        + _tuple(_str("module"), _global("os", "system"), b"N", b"N")
        + b"Q.",
        "module_persistent_id_no_global": b"\x80\x02"
        + _tuple(_str("module"), _str("os.system"), b"N", b"N")
        + b"Q.",
    }


def test_a_reference_scripts_checkpoint_names_the_object_it_pickles(tmp_path):
    """torchvision's reference scripts save ``{"model": sd, "args": Namespace(...)}``: refused
    (weights_only=True refuses it too), but the line guessed "a whole model saved with
    torch.save(model)?" and dropped the name of what was refused."""
    import argparse

    path = tmp_path / "checkpoint.pth"
    torch.save({"model": {"w": torch.arange(4.0)}, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(PortError) as refused:
        read_state_dict(path)
    assert str(refused.value) == f"{path}: {not_loadable('global argparse.Namespace')}"


@pytest.mark.parametrize("payload", list(_payloads(Path("x"))))
def test_pickled_code_is_refused_in_one_line_and_never_run(payload, tmp_path):
    target = tmp_path / "pwned"
    storages = {"0": np.arange(6, dtype="<f4").tobytes()}
    path = torch_zip(tmp_path / "evil.pth", _payloads(target)[payload], storages)
    with pytest.raises(PortError) as refused:
        read_state_dict(path)
    assert str(refused.value).startswith(f"{path}: not a loadable torch state_dict (it holds ")
    assert str(refused.value).endswith(RESAVE_ADVICE)
    assert not target.exists()
    with pytest.raises(pth_reader.Refused):
        pth_reader.load(path)
    assert not target.exists()


def test_a_legacy_pickle_naming_code_in_its_first_pickle_is_refused(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    path.write_bytes(_call(_global("os", "system"), f"touch {target}"))
    with pytest.raises(PortError) as refused:
        read_state_dict(path)
    assert str(refused.value) == f"{path}: {not_loadable('global os.system')}"
    assert not target.exists()


def torch_legacy(
    path: Path,
    pickled: bytes,
    storages: dict[str, tuple[int, bytes]] | None = None,
    *,
    keys: list | None = None,
    little: bool = True,
    count_order: str | None = None,
    version: bytes | None = None,
    sys_info: bytes | None = None,
) -> Path:
    """A file laid out as torch.save(..., _use_new_zipfile_serialization=False) lays it out,
    around an object pickle made by hand: ``storages`` maps a key to (the element count
    written before its bytes, its bytes), the count in ``count_order`` (the writer's by
    default, as torch < 1.12 wrote it)."""
    dump = lambda obj: pickle.dumps(obj, protocol=2)  # noqa: E731
    info = {"protocol_version": 1001, "little_endian": little, "type_sizes": {"short": 2}}
    order = "<" if (count_order or ("little" if little else "big")) == "little" else ">"
    path.write_bytes(
        dump(pth_reader.LEGACY_MAGIC)
        + (dump(1001) if version is None else version)
        + (dump(info) if sys_info is None else sys_info)
        + pickled
        + dump(list(storages or {}) if keys is None else keys)
        + b"".join(struct.pack(f"{order}q", n) + data for n, data in (storages or {}).values())
    )
    return path


def test_the_hand_made_legacy_file_is_what_torch_reads(tmp_path):
    data = np.arange(6, dtype="<f4").tobytes()
    pickled = _state(("w", _tensor("0", 6, 1, (2, 2), (1, 2), view=_ROOT)))
    path = torch_legacy(tmp_path / "ok.pth", pickled, {"0": (6, data)})
    assert_bit_equal(read_state_dict(path), torch_load(path))
    np.testing.assert_array_equal(read_state_dict(path)["w"], [[1, 3], [2, 4]])


def test_a_torch_0_3_file_with_storage_views_reads_as_torch_loads_it(tmp_path):
    """torchvision's oldest files (DenseNet, VGG, 2017): tensors by _rebuild_tensor, on
    storages or views into them at offsets, in a Python 2 OrderedDict with _metadata."""
    root = np.arange(10, dtype="<f4") * 1.5
    doubles = np.arange(4, dtype="<f8") - 2
    items = [
        ("root", _old_tensor("1", 10, 0, (10,), (1,))),
        ("view", _old_tensor("1", 10, 1, (3,), (1,), view=("7", 2, 4))),  # root[3:6]
        ("view_2d", _old_tensor("1", 10, 0, (2, 2), (1, 2), view=("8", 5, 5))),
        ("same_view", _old_tensor("1", 10, 0, (4,), (1,), view=("7", 2, 4))),  # root[2:6]
        ("double", _tensor("2", 4, 1, (3,), (1,), "DoubleStorage", view=_ROOT)),
    ]
    pairs = b"".join(b"](" + _str(k) + v + b"e" for k, v in items)
    metadata = b"}" + _str("_metadata") + b"}" + _str("") + b"}ss"
    pickled = b"\x80\x02" + _global("collections", "OrderedDict") + b"](" + pairs
    pickled += b"e\x85R" + metadata + b"b."
    storages = {"1": (10, root.tobytes()), "2": (4, doubles.tobytes())}
    path = torch_legacy(tmp_path / "old.pth", pickled, storages)
    got = read_state_dict(path)
    assert list(got) == [k for k, _ in items]
    np.testing.assert_array_equal(got["view"], root[3:6])
    np.testing.assert_array_equal(got["view_2d"], [[root[5], root[7]], [root[6], root[8]]])
    np.testing.assert_array_equal(got["same_view"], root[2:6])
    np.testing.assert_array_equal(got["double"], doubles[1:])
    assert_bit_equal(got, torch_load(path))


@pytest.mark.parametrize("count_order", ["writer", "little"])
def test_a_big_endian_writers_legacy_file_reads_as_torch_loads_it(count_order, tmp_path):
    """torch writes a storage's bytes little-endian on any machine; its count in the
    writer's byte order (sys_info) before torch 1.12, little-endian after."""
    values = np.array([1.5, -2.0, 3.25], dtype="<f8")
    pickled = _state(("w", _tensor("0", 3, 0, (3,), (1,), "DoubleStorage", view=_ROOT)))
    order = "big" if count_order == "writer" else "little"
    path = torch_legacy(
        tmp_path / "big.pth",
        pickled,
        {"0": (3, values.tobytes())},
        little=False,
        count_order=order,
    )
    np.testing.assert_array_equal(read_state_dict(path)["w"], values)
    if count_order == "little":  # torch.load reads the count little-endian only
        assert_bit_equal(read_state_dict(path), torch_load(path))


@pytest.mark.parametrize("where", ["version", "sys_info", "object"])
@pytest.mark.parametrize("payload", list(_payloads(Path("x"))))
def test_pickled_code_in_a_legacy_file_is_refused_in_one_line_and_never_run(
    payload, where, tmp_path
):
    target = tmp_path / "pwned"
    evil = _payloads(target, view=_ROOT)[payload]
    good = _state(("w", _tensor("0", 6, 0, (6,), (1,), view=_ROOT)))
    storages = {"0": (6, np.arange(6, dtype="<f4").tobytes())}
    path = tmp_path / "evil.pth"
    if where == "object":
        torch_legacy(path, evil, storages)
    else:
        torch_legacy(path, good, storages, **{where: evil})
    with pytest.raises(PortError) as refused:
        read_state_dict(path)
    assert str(refused.value).startswith(f"{path}: not a loadable torch state_dict (it holds ")
    assert str(refused.value).endswith(RESAVE_ADVICE)
    assert not target.exists()
    with pytest.raises(pth_reader.Refused):
        pth_reader.load_legacy(path)
    assert not target.exists()


def test_a_whole_model_saved_in_the_legacy_format_is_refused_in_one_line(tmp_path):
    path = saved(tmp_path / "model.pth", torch.nn.Linear(2, 3), **_LEGACY)
    with pytest.raises(PortError) as refused:
        read_state_dict(path)
    assert str(refused.value).startswith(f"{path}: not a loadable torch state_dict (it holds ")
    assert str(refused.value).endswith(RESAVE_ADVICE)


def test_a_legacy_file_cut_anywhere_is_one_line(tmp_path):
    state = {"w": torch.randn(5, 4), "n": torch.tensor(3), "h": torch.randn(3).half()}
    whole = saved(tmp_path / "whole.pth", state, **_LEGACY).read_bytes()
    assert_bit_equal(read_state_dict(tmp_path / "whole.pth"), state)
    cut = tmp_path / "cut.pth"
    for n in range(1, len(whole)):
        cut.write_bytes(whole[:n])
        with pytest.raises(PortError) as refused:
            read_state_dict(cut)
        message = str(refused.value)
        assert message.startswith(f"{cut}: truncated or corrupted torch file ("), (n, message)
        assert message.endswith("); download or copy it again") and "\n" not in message


def test_a_legacy_storage_count_that_lies_is_refused_without_allocating(tmp_path):
    import tracemalloc

    data = np.arange(6, dtype="<f4").tobytes()
    huge = 1 << 40  # elements: 4 TiB of float32
    cases = {
        # the persistent id and the count agree, on more than the file holds
        "huge.pth": (_tensor("0", huge, 0, (huge,), (1,), view=_ROOT), {"0": (huge, data)}),
        # the count says more than the persistent id
        "count.pth": (_tensor("0", 6, 0, (6,), (1,), view=_ROOT), {"0": (huge, data)}),
        "fewer.pth": (_tensor("0", 6, 0, (6,), (1,), view=_ROOT), {"0": (5, data)}),
        "short.pth": (_tensor("0", 6, 0, (6,), (1,), view=_ROOT), {"0": (6, data[:20])}),
        "negative.pth": (_tensor("0", 6, 0, (6,), (1,), view=_ROOT), {"0": (-1, data)}),
    }
    messages = {
        "huge.pth": f"storage '0' of {huge * 4} bytes, but the file ends 24 bytes on",
        "count.pth": f"storage '0' holds {huge} elements, its persistent id 6",
        "fewer.pth": "storage '0' holds 5 elements, its persistent id 6",
        "short.pth": "storage '0' of 24 bytes, but the file ends 20 bytes on",
        "negative.pth": "storage '0' holds -1 elements, its persistent id 6",
    }
    for name, (tensor, storages) in cases.items():
        path = torch_legacy(tmp_path / name, _state(("w", tensor)), storages)
        tracemalloc.start()
        try:
            with pytest.raises(PortError) as refused:
                read_state_dict(path)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert str(refused.value) == (
            f"{path}: truncated or corrupted torch file ({messages[name]}); download or "
            "copy it again"
        )
        assert peak < 1 << 20, (name, peak)


def test_a_legacy_files_storage_keys_must_be_those_its_pickle_names(tmp_path):
    data = np.arange(6, dtype="<f4").tobytes()
    pickled = _state(("w", _tensor("0", 6, 0, (6,), (1,), view=_ROOT)))
    cases = {
        "unknown.pth": (["9"], "storage keys ['9'], expected those its pickle names"),
        "twice.pth": (["0", "0"], "a storage's key is listed twice"),
        "missing.pth": ([], "no data for storage '0'"),
    }
    for name, (keys, message) in cases.items():
        path = torch_legacy(tmp_path / name, pickled, {"0": (6, data)}, keys=keys)
        with pytest.raises(PortError) as refused:
            read_state_dict(path)
        assert str(refused.value) == (
            f"{path}: truncated or corrupted torch file ({message}); download or copy it again"
        )
    view = _state(("w", _tensor("0", 6, 0, (2,), (1,), view=("v", 5, 2))))
    path = torch_legacy(tmp_path / "view.pth", view, {"0": (6, data)})
    with pytest.raises(PortError, match=r"a view of 2 elements at 5 into storage '0' of 6 el"):
        read_state_dict(path)


# --- cut short or inconsistent ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("numel", "offset", "size", "stride", "member_bytes"),
    [
        (1000, 0, (1000,), (1,), 100),  # the storage member shorter than its numel
        (6, 0, (7,), (1,), 24),  # a size past the storage
        (6, 5, (2,), (1,), 24),  # an offset
        (6, 0, (2, 2), (1, 5), 24),  # a stride
        (6, 6, (), (), 24),  # a scalar just past the end
    ],
)
def test_a_tensor_past_its_storage_is_one_line(numel, offset, size, stride, member_bytes, tmp_path):
    data = np.arange(member_bytes // 4, dtype="<f4").tobytes()
    pickled = _state(("w", _tensor("0", numel, offset, size, stride)))
    path = torch_zip(tmp_path / "short.pth", pickled, {"0": data})
    with pytest.raises(PortError) as refused:
        read_state_dict(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: truncated or corrupted torch file (")
    assert message.endswith("); download or copy it again") and "\n" not in message


def test_a_storage_member_cut_short_is_one_line(tmp_path):
    """Its CRC rewritten to match (or a zip tool that wrote it short): only the size tells."""
    whole = saved(tmp_path / "whole.pth", {"w": torch.arange(1000.0)})
    short = tmp_path / "short.pth"
    with zipfile.ZipFile(whole) as src, zipfile.ZipFile(short, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, data[:100] if info.filename.endswith("/data/0") else data)
    with pytest.raises(PortError) as refused:
        read_state_dict(short)
    with zipfile.ZipFile(whole) as z:
        member = next(n for n in z.namelist() if n.endswith("/data/0"))
    assert str(refused.value) == (
        f"{short}: truncated or corrupted torch file (member {member!r} holds 100 bytes, its "
        "storage 4000); download or copy it again"
    )


def test_a_pickle_cut_short_or_a_member_missing_is_one_line(tmp_path):
    good = _state(("w", _tensor("0", 6, 0, (6,), (1,))))
    storages = {"0": np.arange(6, dtype="<f4").tobytes()}
    cuts = [(f"cut{n}.pth", good[:n], storages) for n in range(1, len(good))]
    for name, pickled, members in [*cuts, ("missing.pth", good, {})]:
        path = torch_zip(tmp_path / name, pickled, members)
        with pytest.raises(PortError) as refused:
            read_state_dict(path)
        message = str(refused.value)
        assert message.startswith(f"{path}: truncated or corrupted torch file (")
        assert "\n" not in message


# --- bounded on hostile files: time, memory and message size ----------------------------------


def _doubling(depth: int, opener: bytes, closer: bytes) -> bytes:
    """A container holding the one below twice, ``depth`` levels: a few bytes per level
    (the memo), 2^depth when shown or hashed whole."""
    out = opener + closer + b"q\x00"
    for i in range(1, depth):
        out += b"(h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + closer + b"q" + bytes([i])
    return out


def test_a_value_that_doubles_per_level_is_named_in_a_short_line(tmp_path):
    """A storage key that is a list holding itself twice per level (900 bytes of pickle)
    was shown whole in the message: 42 MB at depth 22, exponential beyond."""
    key = b"\x80\x02" + _doubling(22, b"(", b"l")  # a list, not the storage's string
    pid = _tuple(_str("storage"), _global("torch", "FloatStorage"), b"h\x15", _str("cpu"), _int(1))
    args = _tuple(pid + b"Q", _int(0), _tuple(_int(1)), _tuple(_int(1)), b"\x89", b"N")
    tensor = _global("torch._utils", "_rebuild_tensor_v2") + args + b"R"
    pickled = key + b"0}(" + _str("w") + tensor + b"u."  # POP the list: only its memo is used
    path = torch_zip(tmp_path / "bomb.pth", pickled, {"0": b"\0" * 4})
    with pytest.raises(PortError) as refused:
        read_state_dict(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: truncated or corrupted torch file (persistent id ")
    assert len(message) < 600 and "\n" not in message


def test_a_dict_key_of_thousands_of_parts_is_refused_before_it_is_hashed(tmp_path):
    """A tuple holding itself twice per level costs 2^depth to hash: a 1 KB file's dict
    key held the load for hours. Keys and set items of names, numbers and tuples of them
    read, as torch reads them; one of more than a thousand parts is refused."""
    tup = b"\x80\x02" + _doubling(24, b"(", b"t")
    for pickled in (
        tup + b"0}(h\x17" + _int(1) + b"u.",  # SETITEMS
        tup + b"0}h\x17" + _int(1) + b"s.",  # SETITEM
        b"(" + tup[2:] + b"0h\x17" + _int(1) + b"d.",  # DICT, protocol 0's
        # Python 2's OrderedDict([[key, value]]): the pairs are hashed by its constructor.
        tup + b"0" + _global("collections", "OrderedDict") + b"(((h\x17" + _int(1) + b"lltR.",
        b"\x80\x04" + tup[2:] + b"0\x8f(h\x17\x90.",  # a set (ADDITEMS)
        b"\x80\x04" + tup[2:] + b"0(h\x17\x91.",  # a frozenset
    ):
        path = torch_zip(tmp_path / "key.pth", pickled)
        with pytest.raises(PortError) as refused:
            read_state_dict(path)
        assert str(refused.value) == (
            f"{path}: not read (a dict key or set item of more than 1000 parts); a "
            "state_dict's keys are names"
        )
    fine = {("a", 1): torch.ones(2), 7: {(1.5, None): 2}}
    got = pth_reader.load(saved(tmp_path / "fine.pth", fine))
    assert set(got) == {("a", 1), 7} and got[7] == {(1.5, None): 2}
    np.testing.assert_array_equal(got[("a", 1)].array, np.ones(2, "f4"))
    small = b"\x80\x04\x8f(" + _int(1) + _tuple(_str("x"), _int(2)) + b"\x90."  # a set
    assert pth_reader.load(torch_zip(tmp_path / "set.pth", small)) == {1, ("x", 2)}


def test_tensors_copying_one_storage_many_times_over_are_refused(tmp_path, monkeypatch):
    """Each tensor is a copy: a 600-byte file naming one storage 10,000 times made 3 GB.
    Tensors naming one view are one array (shared weights: ModuleList([block] * 24));
    five tensors of other views of one storage, copying 5 times its bytes, are refused."""
    monkeypatch.setattr(pth_reader, "_MAX_EXPANDED_BYTES", 0)
    data = {"0": np.arange(256, dtype="<f4").tobytes()}
    whole = _tensor("0", 256, 0, (256,), (1,))
    shared = _state(*((f"w{k}", whole) for k in range(24)))
    got = pth_reader.load(torch_zip(tmp_path / "shared.pth", shared, data))
    assert all(got[f"w{k}"].array is got["w0"].array for k in range(24))
    np.testing.assert_array_equal(got["w23"].array, np.arange(256, dtype="f4"))
    views = _state(*((f"w{k}", _tensor("0", 256, k, (252,), (1,))) for k in range(5)))
    many = torch_zip(tmp_path / "many.pth", views, data)
    with pytest.raises(pth_reader.Corrupt, match="copy 5040 bytes out of storages of 1024"):
        pth_reader.load(many)
    real = saved(tmp_path / "tied.pth", {f"w{k}": t for k, t in enumerate([torch.ones(8)] * 24)})
    assert_bit_equal(read_state_dict(real), torch_load(real))


def test_a_file_zipped_again_with_compression_reads_while_it_inflates_within_bounds(
    tmp_path, monkeypatch
):
    """torch.save stores its members; a file zipped again with deflate reads (torch reads
    it), but a member declaring more than 4 times the file (and 64 MiB) is refused before
    it is inflated: a 2 KB member inflating to 2 GB had been read whole."""
    original = saved(tmp_path / "w.pth", {"w": torch.zeros(25_000), "b": torch.ones(3)})
    again = tmp_path / "again.pth"
    with zipfile.ZipFile(original) as src, zipfile.ZipFile(again, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info), compress_type=zipfile.ZIP_DEFLATED)
    assert_bit_equal(read_state_dict(again), torch_load(original))
    monkeypatch.setattr(pth_reader, "_INFLATION_SLACK", 0)
    with pytest.raises(PortError) as refused:
        read_state_dict(again)
    assert "inflates to 100000 bytes from " in str(refused.value)
    assert str(refused.value).startswith(f"{again}: truncated or corrupted torch file (member ")


def test_a_legacy_header_nested_deep_is_one_line(tmp_path):
    """A version pickle of 100,000 nested lists raised RecursionError from its message."""
    deep = b"\x80\x02" + b"(" * 100_000 + b"l" * 100_000 + b"."
    path = torch_legacy(tmp_path / "deep.pth", b"\x80\x02}.", version=deep)
    with pytest.raises(PortError) as refused:
        read_state_dict(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: truncated or corrupted torch file (legacy protocol ")
    assert len(message) < 600


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_running_out_of_memory_is_not_called_a_damaged_file(fmt, tmp_path, monkeypatch):
    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(pth_reader, "_array", no_memory)
    path = saved(tmp_path / "w.pth", {"w": torch.ones(3)}, **FORMATS[fmt])
    with pytest.raises(PortError) as refused:
        read_state_dict(path)
    assert str(refused.value) == (
        f"{path}: not enough memory to read it on this machine (a state_dict's tensors did not fit)"
    )


def test_a_file_is_read_for_what_it_holds_not_for_a_zip_found_inside_it(tmp_path):
    """A tar of two ``.pth`` files was ported as the last of them (``zipfile`` finds the end
    record of the zip stored in it), silently; a ``.safetensors`` file named ``.pth`` was
    called corrupted ("download it again") or not a checkpoint, and a ``.pth`` named
    ``.safetensors`` had a "header too large"."""
    import tarfile

    from safetensors.numpy import save_file

    small = torch_zip(
        tmp_path / "a.pth", _state(("w", _tensor("0", 2, 0, (2,), (1,)))), {"0": bytes(8)}
    )
    with tarfile.open(tmp_path / "two.pth", "w") as tar:
        tar.add(small, arcname="a.pth")
    assert zipfile.is_zipfile(tmp_path / "two.pth")  # what made it readable
    with pytest.raises(PortError) as e:
        read_state_dict(tmp_path / "two.pth")
    assert str(e.value) == (
        f"{tmp_path / 'two.pth'}: a tar archive, not a file torch.save wrote; extract the .pth "
        "from it"
    )
    prefixed = tmp_path / "prefixed.pth"
    prefixed.write_bytes(b"#" * 100 + small.read_bytes())
    with pytest.raises(PortError) as e:
        read_state_dict(prefixed)
    assert str(e.value) == (
        f"{prefixed}: a zip archive after 100 bytes of other data, not a file torch.save "
        "wrote; expected a torchvision state_dict .pth"
    )
    st = tmp_path / "w.safetensors"
    for pad in range(256):  # a header length whose first byte is a pickle's 0x80
        save_file({"w": np.ones(2, np.float32)}, str(st), metadata={"pad": "x" * pad})
        if st.read_bytes()[:1] == b"\x80":
            break
    cases = (
        ("st.pth", st, ".safetensors", ".pth"),
        ("a.safetensors", small, ".pth", ".safetensors"),
    )
    for name, source, kind, suffix in cases:
        renamed = tmp_path / name
        renamed.write_bytes(source.read_bytes())
        with pytest.raises(PortError) as e:
            read_state_dict(renamed)
        said = f"{renamed}: a {kind} file named {suffix}; rename it to end in {kind}"
        assert str(e.value) == said
    np.testing.assert_array_equal(read_state_dict(st)["w"], [1.0, 1.0])
    np.testing.assert_array_equal(read_state_dict(small)["w"], [0.0, 0.0])


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_bfloat16_reads_as_torch_widens_it_to_float32(fmt, tmp_path):
    """numpy has no bfloat16: such a tensor came back without an array, and the port refused
    it. Its bits are a float32's upper 16: widened exactly, views and specials included."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=g).bfloat16()
    base[0, :3] = torch.tensor([float("inf"), -0.0, 1e-40])  # inf, -0, a subnormal
    state = {"w": base, "view": base[1:, 2:].t(), "scalar": torch.tensor(2.5).bfloat16()}
    path = saved(tmp_path / "bf16.pth", state, **FORMATS[fmt])
    tensors = (pth_reader.load if fmt == "zip" else pth_reader.load_legacy)(path)
    assert {k: v.dtype for k, v in tensors.items()} == dict.fromkeys(state, "bfloat16")
    widened = {k: v.float() for k, v in torch_load(path).items()}
    for key, tensor in widened.items():
        got = tensors[key].array
        assert got.dtype == np.float32 and got.flags.c_contiguous, key
        assert got.tobytes() == tensor.contiguous().numpy().tobytes(), key


def test_a_safetensors_file_with_a_header_past_its_end_or_no_json_says_so(tmp_path):
    """A PNG renamed .safetensors, or a length field of 2**35, was "not a readable
    .safetensors file ()" (a MemoryError's empty text) after allocating the length."""
    from weights_port.keymap import PortError

    cases = {
        "png.safetensors": (
            b"\x89PNG\r\n\x1a\n" + b"\0" * 40,
            "its first 8 bytes give a header of 727905341920923785 bytes, the file holds 40 after",
        ),
        "long.safetensors": (
            (2**35).to_bytes(8, "little") + b"{}",
            f"its first 8 bytes give a header of {2**35} bytes, the file holds 2 after them",
        ),
        "text.safetensors": ((4).to_bytes(8, "little") + b"\xce\xce{}", "its header is no JSON"),
        "list.safetensors": ((2).to_bytes(8, "little") + b"[]", "its header is no JSON object"),
    }
    for name, (data, said) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(PortError) as err:
            read_state_dict(tmp_path / name)
        line = str(err.value)
        assert line.startswith(f"{tmp_path / name}: not a .safetensors file (") and said in line
        assert "\n" not in line, line
