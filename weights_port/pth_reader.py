"""Reads ``torch.save`` files (a zip archive since torch 1.6, torch's legacy format
before it) without torch and without ever running pickled code.

A ``.pth`` written by ``torch.save`` is a zip archive::

    <prefix>/data.pkl        the object, pickled; tensors refer to storages by key
    <prefix>/data/<key>      each storage's raw bytes
    <prefix>/byteorder       "little" or "big" (absent in old files: little)
    <prefix>/version ...     not needed to read it

``data.pkl`` is read by :class:`_Unpickler`, a pure-Python unpickler that
resolves only the globals of :data:`_ALLOWED` (``collections.OrderedDict``,
torch's tensor rebuild functions, storage types, dtypes and layouts), each to
a function or marker of this module: torch is never imported and no other
global is ever looked up. ``REDUCE`` calls only those functions, ``BUILD``
only sets the state of a dict (a state_dict's ``_metadata``, dropped), and
objects cannot be made any other way (``NEWOBJ``, ``INST``, ``OBJ`` are
refused). A persistent id must be ``('storage', storage type, key, location,
numel)`` (and a view in a legacy file). Anything else raises :class:`Refused`.

Tensors come back as :class:`Tensor`: a C-contiguous numpy copy of what
``torch.load(..., weights_only=True)`` gives (offset, strides, byte order and
the neg/conj bits applied), bounds-checked against its storage. A bfloat16
tensor, which numpy has no type for, comes back widened to float32 (exact: its
bits are a float32's upper 16); another dtype numpy has no type for (float8,
complex32), or a meta, quantized or sparse tensor, comes back without an array,
saying what it is. A file that is cut short, or a tensor
that reaches past its storage, raises :class:`Corrupt`.

torch's legacy format (before 1.6, or ``_use_new_zipfile_serialization=False``:
a sequence of pickles, then the storages' bytes, in one file) is read by
:func:`load_legacy` with the same unpickler and whitelist (its first three
pickles allow no global at all), and the same checks; :func:`legacy_magic_ok`
tells it apart from a plain pickle. torch < 0.4's tensors
(``torch._utils._rebuild_tensor``, as in torchvision's oldest files) are read
in both formats, as ``torch.load(weights_only=True)`` reads them.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import math
import os
import pickle
import reprlib
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np


class PthError(Exception):
    """A ``.pth`` this module does not read; the text is one line of detail."""


class Refused(PthError):
    """The pickle holds something other than tensors and plain containers."""


class Corrupt(PthError):
    """The file is cut short or inconsistent (a tensor past its storage)."""


class Unsupported(PthError):
    """Something torch reads that this reader will not, for its cost (a dict key of
    thousands of parts); not a sign that the file is damaged."""


class TooLarge(PthError):
    """Reading the file ran out of memory: not a sign that it is damaged."""


class NotTorch(PthError):
    """A zip archive that ``torch.save`` did not write."""


class Tensor:
    """A tensor read from a ``.pth``.

    ``array`` is its values (C-contiguous, native byte order; a ``bfloat16`` one's widened
    to float32), or None when numpy has no type for ``dtype`` (torch's name without
    ``torch.``: ``float8_e4m3fn``) or when ``kind`` says it holds no dense data (``"meta (no
    data)"``, ``"quantized"``, ``"sparse_coo layout"``).
    """

    __slots__ = ("array", "dtype", "kind")

    def __init__(self, array: np.ndarray | None, dtype: str, kind: str | None = None):
        self.array = array
        self.dtype = dtype
        self.kind = kind

    def __repr__(self) -> str:
        shape = None if self.array is None else self.array.shape
        return f"Tensor(dtype={self.dtype}, shape={shape}, kind={self.kind})"


ITEMSIZE = {
    "float32": 4,
    "float64": 8,
    "float16": 2,
    "bfloat16": 2,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
    "complex64": 8,
    "complex128": 16,
    "complex32": 4,
    "uint16": 2,
    "uint32": 4,
    "uint64": 8,
    "float8_e4m3fn": 1,
    "float8_e4m3fnuz": 1,
    "float8_e5m2": 1,
    "float8_e5m2fnuz": 1,
    "float8_e8m0fnu": 1,
    "float4_e2m1fn_x2": 1,
    "quint8": 1,
    "qint8": 1,
    "qint32": 4,
    "quint4x2": 1,
    "quint2x4": 1,
}
"""Bytes per element of each torch dtype (by its name) that a ``.pth`` may hold."""

_NUMPY = {
    name: np.dtype(name)
    for name in (
        "float32",
        "float64",
        "float16",
        "int64",
        "int32",
        "int16",
        "int8",
        "uint8",
        "bool",
        "complex64",
        "complex128",
        "uint16",
        "uint32",
        "uint64",
    )
}
"""The torch dtypes numpy has a type for; the others come back without an array, but for
:data:`_WIDENED`'s."""

_WIDENED = {"bfloat16": (np.dtype("uint16"), np.dtype("float32"))}
"""torch dtypes numpy has no type for that are read anyway: their bits as the first type,
widened exactly to the second (:func:`bfloat16_to_float32`). Without it a bfloat16 file
(a model trained in mixed precision, saved as it was) was refused with no way to read it."""


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 values, given as their uint16 bits, as float32: exact, since a bfloat16 is a
    float32 whose lower 16 bits are zero (NaN and infinity included)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _result_dtype(dtype: str) -> np.dtype | None:
    """The numpy type a ``dtype`` tensor's array has (None: it comes back without one)."""
    return _WIDENED[dtype][1] if dtype in _WIDENED else _NUMPY.get(dtype)


_STORAGE_DTYPES = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
    "QUInt8Storage": "quint8",
    "QInt8Storage": "qint8",
    "QInt32Storage": "qint32",
    "QUInt4x2Storage": "quint4x2",
    "QUInt2x4Storage": "quint2x4",
}
"""torch's typed storage classes, as ``torch.save`` names them in a persistent id."""

_LAYOUTS = ("strided", "sparse_coo", "sparse_csr", "sparse_csc", "sparse_bsr", "sparse_bsc")
_QSCHEMES = (
    "per_tensor_affine",
    "per_channel_affine",
    "per_tensor_symmetric",
    "per_channel_symmetric",
    "per_channel_affine_float_qparams",
)

_MAX_EXPANDED_BYTES = 1 << 30
"""A tensor with more elements than its storage (stride 0) is copied up to this size."""

_COPIES = 4
"""The tensors of a file are copied out of its storages up to this many times their bytes
(and :data:`_MAX_EXPANDED_BYTES` more): tied weights name one storage twice; a 600-byte
file naming one storage ten thousand times had made gigabytes of copies."""


class _Budget:
    """What a file's tensors may copy out of its storages, in all (:data:`_COPIES`), and
    what its compressed members may inflate to (:data:`_INFLATION`, of its size).

    Tensors naming one view of one storage (shared weights, ``ModuleList([block] * 24)``)
    are one array, as torch gives them one storage: they copy nothing more."""

    def __init__(self, file_bytes: int = 0) -> None:
        self.stored = 0
        self.copied = 0
        self.inflate_left = _INFLATION * file_bytes + _INFLATION_SLACK
        self.arrays: dict[tuple, np.ndarray] = {}

    def take(self, nbytes: int) -> None:
        self.copied += nbytes
        if self.copied > _COPIES * self.stored + _MAX_EXPANDED_BYTES:
            raise Corrupt(
                f"its tensors copy {self.copied} bytes out of storages of {self.stored}: "
                "more than a state_dict's tensors hold"
            )


_INFLATION, _INFLATION_SLACK = 4, 64 << 20
"""torch.save stores its members as they are; a file zipped again with compression reads
while its members inflate to at most 4 times its size and 64 MiB (a 2 KB member that
inflates to 2 GB does not)."""

_BUDGET: contextvars.ContextVar[_Budget] = contextvars.ContextVar("pth_budget")


class _Marker:
    """What a whitelisted torch global that is no function stands for (a dtype, a storage
    type, a layout): a name, never callable, never built."""

    __slots__ = ("name", "torch_type")

    def __init__(self, torch_type: str, name: str):
        self.torch_type = torch_type
        self.name = name

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _StorageType(_Marker):
    __slots__ = ("dtype",)

    def __init__(self, name: str, dtype: str):
        super().__init__("type", name)
        self.dtype = dtype


class _Storage:
    """A storage's bytes and the dtype its persistent id gave it (``uint8`` when untyped).

    In a legacy file the bytes follow the pickle: ``data`` is None while it is
    read, ``nbytes`` is what the persistent id declared, and the tensors on the
    storage wait in ``pending`` for :func:`_fill`.
    """

    __slots__ = ("data", "dtype", "member", "nbytes", "order", "pending", "torch_type")

    def __init__(
        self,
        data: memoryview | None,
        dtype: str,
        member: str,
        order: str,
        torch_type: str,
        nbytes: int | None = None,
    ):
        self.data = data
        self.dtype = dtype
        self.member = member
        self.order = order  # the byte order of its data: "little" or "big"
        self.torch_type = torch_type
        self.nbytes = len(data) if data is not None else nbytes
        self.pending: list[tuple[Tensor, int, tuple, tuple, dict]] = []


def type_name(value: Any) -> str:
    """The type of something read from a ``.pth``, as torch would name it."""
    if isinstance(value, Tensor):
        return "Tensor"
    return getattr(value, "torch_type", None) or type(value).__name__


def a_type(value: Any) -> str:
    """:func:`type_name` with its article: ``a Tensor``, ``an int``, ``an OrderedDict``."""
    name = type_name(value)
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


# --- the functions the whitelisted rebuild globals stand for ---------------------------------


def _int(value: Any, what: str) -> int:
    if type(value) is not int or value < 0:
        raise Corrupt(f"a tensor's {what} is {short(value)}, expected a count")
    return value


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if type(value) not in (tuple, list):
        raise Corrupt(f"a tensor's {what} is {type(value).__name__}, expected a tuple")
    return tuple(_int(v, what) for v in value)


def _tensor(storage: Any, offset: Any, size: Any, stride: Any, dtype: str, metadata: Any) -> Tensor:
    if not isinstance(storage, _Storage):
        raise Corrupt(f"a tensor's storage is {a_type(storage)}")
    offset, size, stride = _int(offset, "offset"), _ints(size, "size"), _ints(stride, "stride")
    if len(size) != len(stride):
        raise Corrupt(f"a tensor of size {short(size)} has strides {short(stride)}")
    itemsize = ITEMSIZE[dtype]
    available = storage.nbytes // itemsize
    count = math.prod(size)
    if count:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if last >= available:
            raise Corrupt(
                f"a {dtype} tensor of size {short(size)} (offset {offset}, strides "
                f"{short(stride)}) reaches "
                f"past its storage {short(storage.member)} of {available} elements"
            )
        if count > available and count * itemsize > _MAX_EXPANDED_BYTES:
            raise Corrupt(
                f"a {dtype} tensor of size {short(size)} expands its storage "
                f"{short(storage.member)} of "
                f"{available} elements past {_MAX_EXPANDED_BYTES >> 30} GiB"
            )
    flags = _metadata(metadata)
    np_dtype = _result_dtype(dtype)
    if np_dtype is None:
        return Tensor(None, dtype)
    if not count:
        return Tensor(np.zeros(size, np_dtype), dtype)
    if storage.data is None:  # a legacy file's: its bytes follow the pickle
        tensor = Tensor(None, dtype)
        storage.pending.append((tensor, offset, size, stride, flags))
        return tensor
    return Tensor(_array(storage, offset, size, stride, dtype, flags), dtype)


def _array(storage: _Storage, offset: int, size: tuple, stride: tuple, dtype: str, flags: dict):
    """A tensor's values: a C-contiguous copy out of its (bounds-checked) storage, one per
    view of a storage however many tensors name it."""
    itemsize = ITEMSIZE[dtype]
    budget = _BUDGET.get()
    same = (id(storage), offset, size, stride, dtype, tuple(sorted(flags.items())))
    if same in budget.arrays:
        return budget.arrays[same]
    budget.take(math.prod(size) * max(itemsize, _result_dtype(dtype).itemsize))
    budget.arrays[same] = array = _copy(storage, offset, size, stride, dtype, flags)
    return array


def _copy(storage: _Storage, offset: int, size: tuple, stride: tuple, dtype: str, flags: dict):
    np_dtype = _WIDENED[dtype][0] if dtype in _WIDENED else _NUMPY[dtype]
    itemsize = ITEMSIZE[dtype]
    stored = np_dtype.newbyteorder("<" if storage.order == "little" else ">")
    base = np.frombuffer(storage.data, dtype=stored, count=storage.nbytes // itemsize)
    view = np.lib.stride_tricks.as_strided(
        base[offset:], shape=size, strides=tuple(s * itemsize for s in stride), writeable=False
    )
    array = np.array(view, dtype=np_dtype, order="C", copy=True)
    if dtype == "bfloat16":  # before the neg bit: on the bits it were integer negation
        array = bfloat16_to_float32(array)
    if flags.get("neg"):
        np.negative(array, out=array)
    if flags.get("conj"):
        np.conjugate(array, out=array)
    return array


def _fill(storage: _Storage) -> None:
    """The tensors waiting for a legacy storage's bytes, now that ``data`` holds them."""
    for tensor, offset, size, stride, flags in storage.pending:
        tensor.array = _array(storage, offset, size, stride, tensor.dtype, flags)
    storage.pending.clear()


def _metadata(metadata: Any) -> dict[str, bool]:
    """The neg/conj bits ``torch.save`` adds to a tensor that has them."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(
        k in ("neg", "conj") and type(v) is bool for k, v in metadata.items()
    ):
        raise Refused(f"tensor metadata {short(metadata)}")
    return metadata


def _rebuild_tensor(storage, storage_offset, size, stride):
    """torch < 0.4's tensors (torchvision's oldest files): the dtype is the storage's."""
    dtype = storage.dtype if isinstance(storage, _Storage) else "uint8"
    return _tensor(storage, storage_offset, size, stride, dtype, None)


def _rebuild_tensor_v2(
    storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None
):
    dtype = storage.dtype if isinstance(storage, _Storage) else "uint8"
    return _tensor(storage, storage_offset, size, stride, dtype, metadata)


def _rebuild_tensor_v3(
    storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None
):
    if not isinstance(dtype, _Marker) or dtype.torch_type != "dtype":
        raise Corrupt(f"a tensor's dtype is {a_type(dtype)}")
    return _tensor(storage, storage_offset, size, stride, dtype.name, metadata)


def _tensor_arg(data: Any) -> Tensor:
    if not isinstance(data, Tensor):
        raise Corrupt(f"a parameter holds a {type_name(data)}, not a tensor")
    return data


def _rebuild_parameter(data, requires_grad, backward_hooks):
    return _tensor_arg(data)


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    return _tensor_arg(data)  # the state: Python attributes set on the parameter


def _rebuild_from_type_v2(func, new_type, args, state):
    """A tensor with Python attributes (``t.note = ...``): the tensor, attributes dropped."""
    known = any(func is f for f in _REBUILDS)
    if not (known and isinstance(new_type, _Marker) and new_type.name in _TYPES):
        raise Refused(f"_rebuild_from_type_v2 of {short(new_type)}")
    if type(args) is not tuple:
        raise Corrupt("_rebuild_from_type_v2 without an argument tuple")
    return _tensor_arg(func(*args))


def _rebuild_meta_tensor_no_storage(dtype, size, stride, requires_grad):
    return Tensor(None, getattr(dtype, "name", "?"), kind="meta (no data)")


def _rebuild_qtensor(storage, *args):
    return Tensor(None, getattr(storage, "dtype", "?"), kind="quantized")


def _rebuild_sparse_tensor(layout, data):
    name = layout.name if isinstance(layout, _Marker) else "sparse"
    return Tensor(None, "?", kind=f"{name} layout")


def _rebuild_sparse_csr_tensor(layout, data):  # torch 1.x's name for the same
    return _rebuild_sparse_tensor(layout, data)


def _get_layout(name):
    layout = name.removeprefix("torch.") if isinstance(name, str) else None
    if layout not in _LAYOUTS:
        raise Refused(f"layout {short(name)}")
    return _MARKERS["torch", layout]


def _size(sizes=()):
    return _ints(sizes, "size")


def _ordered_dict(*args: Any) -> OrderedDict:
    """``collections.OrderedDict()`` as ``torch.save`` pickles it: no arguments (its items
    set after), or, from Python 2, one list of [key, value] pairs, each key checked by
    :func:`_key` before it is hashed."""
    if not args:
        return OrderedDict()
    pairs = args[0]
    if len(args) > 1 or type(pairs) is not list:
        raise Refused("an OrderedDict built from other than a list of pairs")
    if not all(type(p) in (list, tuple) and len(p) == 2 for p in pairs):
        raise Corrupt("an OrderedDict's items are not [key, value] pairs")
    return OrderedDict((_key(k), v) for k, v in pairs)


_KEY_TYPES = (str, bytes, int, float, bool, type(None))
"""What a dict key or set item read from a file may be made of: names, numbers, and
tuples of them, as torch reads them."""

_KEY_PARTS = 1000
"""A key or set item of more parts is refused before it is hashed: a tuple holding
itself twice per level costs 2^depth to hash (a 1 KB file held the load for hours)."""


def _key(key: Any) -> Any:
    left = [_KEY_PARTS]

    def walk(value: Any) -> None:
        left[0] -= 1
        if left[0] < 0:
            raise Unsupported(f"a dict key or set item of more than {_KEY_PARTS} parts")
        if type(value) is tuple:
            for item in value:
                walk(item)
        elif type(value) not in _KEY_TYPES:
            raise Unsupported(f"a dict key or set item of type {type_name(value)}")

    walk(key)
    return key


_REBUILDS = {
    _rebuild_tensor,
    _rebuild_tensor_v2,
    _rebuild_tensor_v3,
    _rebuild_parameter,
    _rebuild_parameter_with_state,
    _rebuild_from_type_v2,
    _rebuild_meta_tensor_no_storage,
    _rebuild_qtensor,
    _rebuild_sparse_tensor,
    _rebuild_sparse_csr_tensor,
}
_TYPES = ("Tensor", "Parameter")

_MARKERS: dict[tuple[str, str], _Marker] = {
    **{("torch", n): _StorageType(n, d) for n, d in _STORAGE_DTYPES.items()},
    ("torch", "UntypedStorage"): _StorageType("UntypedStorage", "uint8"),
    ("torch.storage", "UntypedStorage"): _StorageType("UntypedStorage", "uint8"),
    **{("torch", n): _Marker("dtype", n) for n in ITEMSIZE},
    **{("torch", n): _Marker("layout", n) for n in _LAYOUTS},
    **{("torch", n): _Marker("qscheme", n) for n in _QSCHEMES},
    ("torch", "Tensor"): _Marker("type", "Tensor"),
    ("torch.nn.parameter", "Parameter"): _Marker("type", "Parameter"),
}

_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch", "Size"): _size,
    ("torch.serialization", "_get_layout"): _get_layout,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    **{("torch._utils", f.__name__): f for f in _REBUILDS if f is not _rebuild_from_type_v2},
    **_MARKERS,
}
"""Every global a ``.pth`` may name, and what it stands for here."""

_CALLABLE = frozenset(map(id, (_ordered_dict, _size, _get_layout, *_REBUILDS)))
"""What ``REDUCE`` may call (by identity)."""


class _Unpickler(pickle._Unpickler):
    """The pure-Python unpickler, restricted: see the module docstring.

    ``allowed`` is the whitelist (empty: no global at all); ``zip_file`` and
    ``prefix`` give the storages of a ``torch.save`` archive.
    """

    dispatch: ClassVar[dict] = dict(pickle._Unpickler.dispatch)

    def __init__(
        self,
        file: Any,
        allowed: dict[tuple[str, str], Any],
        zip_file: zipfile.ZipFile | None = None,
        prefix: str = "",
        order: str = "little",
    ):
        super().__init__(file, encoding="utf-8")
        self._allowed = allowed
        self._zip = zip_file
        self._prefix = prefix
        self._order = order
        self._storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[module, name]
        except (KeyError, TypeError):
            raise Refused(f"global {_plain(module)}.{_plain(name)}") from None

    def persistent_load(self, pid: Any) -> _Storage:
        if not (type(pid) is tuple and len(pid) == 5 and pid[0] == "storage"):
            raise Refused(f"persistent id {short(pid)}")
        _, storage_type, key, location, numel = pid
        if not isinstance(storage_type, _StorageType) or self._zip is None:
            raise Refused(f"persistent id {short(pid)}")
        if type(key) is not str or type(location) is not str or type(numel) is not int:
            raise Corrupt(f"persistent id {short(pid)}")
        if key in self._storages:  # as torch.load: one storage per key, however often named
            return self._storages[key]
        member = f"{self._prefix}/data/{key}"
        if numel < 0:
            raise Corrupt(f"storage {short(key)} of {numel} elements")
        need = numel * ITEMSIZE[storage_type.dtype]
        data = _member(self._zip, member)
        if len(data) < need:
            raise Corrupt(f"member {short(member)} holds {len(data)} bytes, its storage {need}")
        _BUDGET.get().stored += need
        storage = _Storage(
            memoryview(data)[:need], storage_type.dtype, member, self._order, storage_type.name
        )
        self._storages[key] = storage
        return storage

    def load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        if id(func) not in _CALLABLE:
            raise Refused(f"a call of {type_name(func)}")
        if type(args) is not tuple:
            raise Corrupt("a call without an argument tuple")
        self.stack[-1] = func(*args)

    def load_build(self) -> None:
        state = self.stack.pop()
        if not (isinstance(self.stack[-1], dict) and isinstance(state, dict)):
            raise Refused(f"setting the state of a {type_name(self.stack[-1])}")
        # A state_dict's `_metadata` (module versions): not needed, dropped.

    def load_global(self) -> None:
        module, name = self.readline(), self.readline()
        if not (module.endswith(b"\n") and name.endswith(b"\n")):  # not a name cut short
            raise EOFError("the pickle ends inside a global's name")
        self.append(self.find_class(module[:-1].decode("utf-8"), name[:-1].decode("utf-8")))

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = _key(self.stack.pop())
        self.stack[-1][key] = value

    def load_setitems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        for i in range(0, len(items), 2):
            target[_key(items[i])] = items[i + 1]

    def load_dict(self) -> None:
        items = self.pop_mark()
        self.append({_key(items[i]): items[i + 1] for i in range(0, len(items), 2)})

    def load_additems(self) -> None:
        items = [_key(item) for item in self.pop_mark()]
        if not isinstance(self.stack[-1], set):
            raise Corrupt("items added to what is not a set")
        self.stack[-1].update(items)

    def load_frozenset(self) -> None:
        self.append(frozenset(_key(item) for item in self.pop_mark()))

    def load_refused(self) -> None:
        raise Refused(
            "an object built by NEWOBJ, INST or OBJ, a copyreg extension, a pickle buffer or a set"
        )

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.GLOBAL[0]] = load_global
    dispatch[pickle.SETITEM[0]] = load_setitem
    dispatch[pickle.SETITEMS[0]] = load_setitems
    dispatch[pickle.DICT[0]] = load_dict
    dispatch[pickle.ADDITEMS[0]] = load_additems
    dispatch[pickle.FROZENSET[0]] = load_frozenset
    # EXT*: a global by copyreg's registry code, served from a process-wide cache that
    # another unpickler may have filled, past find_class: never needed by torch.save.
    for _op in (
        pickle.NEWOBJ,
        pickle.NEWOBJ_EX,
        pickle.INST,
        pickle.OBJ,
        pickle.EXT1,
        pickle.EXT2,
        pickle.EXT4,
        # BYTEARRAY8 allocates the length it reads before reading; torch.save never writes
        # it (nor protocol 5's out-of-band buffers).
        pickle.BYTEARRAY8,
        pickle.NEXT_BUFFER,
        pickle.READONLY_BUFFER,
    ):
        dispatch[_op[0]] = load_refused
    del _op


def _unpickle(file: Any, allowed: dict, zip_file=None, prefix: str = "", order="little") -> Any:
    return _run(_Unpickler(file, allowed, zip_file, prefix, order))


def _run(unpickler: _Unpickler) -> Any:
    """``unpickler.load()``, whatever goes wrong raised as :class:`PthError`."""
    try:
        return unpickler.load()
    except PthError:
        raise
    except (zipfile.BadZipFile, zlib.error) as e:
        raise Corrupt(f"corrupted zip archive: {_first_line(e)}") from None
    except RecursionError:
        raise Corrupt("its pickle nests too deep") from None
    except MemoryError:
        raise TooLarge("not enough memory to read it") from None
    except Exception as e:  # a pickle cut short or garbled: EOFError, KeyError, struct.error...
        raise Corrupt(f"unreadable pickle: {type(e).__name__}: {_first_line(e)}") from None


def _member(z: zipfile.ZipFile, name: str) -> bytes:
    """A member of a ``torch.save`` archive: stored, as torch.save writes them (no larger
    than the file), or compressed (the file zipped again) within :data:`_INFLATION`,
    checked before it is inflated (a 2 KB member inflating to 2 GB is refused)."""
    try:
        info = z.getinfo(name)
    except KeyError:
        raise Corrupt(f"no member {short(name)}") from None
    if info.compress_type != zipfile.ZIP_STORED:
        budget = _BUDGET.get()
        if info.file_size > budget.inflate_left:
            raise Corrupt(
                f"member {short(name)} inflates to {info.file_size} bytes from "
                f"{info.compress_size}: more than the file's tensors could hold"
            )
        budget.inflate_left -= info.file_size  # zipfile inflates no more than file_size
    return z.read(info)


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def load(path: str | Path) -> Any:
    """What ``torch.load(path, weights_only=True)`` returns, with :class:`Tensor` for tensors.

    Raises :class:`Refused`, :class:`Corrupt` or :class:`NotTorch`.
    """
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise Corrupt(f"unreadable zip archive: {_first_line(e)}") from None
    with z:
        names = z.namelist()
        # As torch: the first member's folder is the archive's prefix, whatever its name.
        prefix = names[0].split("/", 1)[0] if names and "/" in names[0] else None
        if prefix is None or f"{prefix}/data.pkl" not in names:
            raise NotTorch("a zip archive without torch.save's data.pkl")
        with _budget(os.path.getsize(path)):
            order = "little"
            if f"{prefix}/byteorder" in names:
                order = _member(z, f"{prefix}/byteorder").decode("ascii", "replace")
                if order not in ("little", "big"):
                    raise Corrupt(f"unknown byte order {order[:20]!r}")
            pickled = io.BytesIO(_member(z, f"{prefix}/data.pkl"))
            return _unpickle(pickled, _ALLOWED, z, prefix, order)


@contextlib.contextmanager
def _budget(file_bytes: int = 0) -> Iterator[_Budget]:
    """A fresh :class:`_Budget` for the tensors of one file."""
    token = _BUDGET.set(_Budget(file_bytes))
    try:
        yield _BUDGET.get()
    finally:
        _BUDGET.reset(token)


LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
"""The number torch's legacy (pre-1.6) format pickles first."""

LEGACY_PROTOCOL = 1001
"""The legacy format's protocol version, pickled second (the only one torch ever wrote)."""


def legacy_magic_ok(path: str | Path) -> bool:
    """Whether a non-zip file starts as torch's legacy format does (its magic number).

    The first pickle is read with no global allowed: :class:`Refused` for one
    that names any (pickled code, as ``torch.load(weights_only=True)`` refuses
    it), :class:`Corrupt` for one cut short.
    """
    with open(path, "rb") as raw:
        magic = _unpickle(_Bounded(raw), {})
    return type(magic) is int and magic == LEGACY_MAGIC


class _Bounded:
    """A file whose reads never ask for more than what is left in it: a length read
    from the file (a pickle's, a storage's) cannot make a huge allocation."""

    def __init__(self, file: Any):
        self._file = file
        self.size = os.fstat(file.fileno()).st_size

    def left(self) -> int:
        return max(self.size - self._file.tell(), 0)

    def read(self, n: int = -1) -> bytes:
        left = self.left()
        return self._file.read(left if n is None or n < 0 else min(n, left))

    def readline(self) -> bytes:
        return self._file.readline()

    def tell(self) -> int:
        return self._file.tell()


class _LegacyUnpickler(_Unpickler):
    """The object pickle of a legacy file: its storages' bytes come after it, so a
    persistent id only declares a storage (and a view into it, in torch < 0.4's files);
    its tensors are bounds-checked against what it declared, then filled by :func:`_fill`.
    """

    def __init__(self, file: Any):
        super().__init__(file, _ALLOWED)
        self.views: dict[str, tuple[_Storage, str, int]] = {}  # key: (view, root key, offset)

    def persistent_load(self, pid: Any) -> _Storage:
        if not (type(pid) is tuple and len(pid) == 6 and pid[0] == "storage"):
            raise Refused(f"persistent id {short(pid)}")  # ('module', class, ...) included
        _, storage_type, key, location, numel, view = pid
        if not isinstance(storage_type, _StorageType):
            raise Refused(f"persistent id {short(pid)}")
        if type(key) is not str or type(location) is not str or type(numel) is not int:
            raise Corrupt(f"persistent id {short(pid)}")
        if numel < 0:
            raise Corrupt(f"storage {short(key)} of {numel} elements")
        root = self._storages.get(key)
        if root is None:  # as torch.load: the first persistent id of a key declares it
            itemsize = ITEMSIZE[storage_type.dtype]
            root = _Storage(
                None, storage_type.dtype, key, "little", storage_type.name, numel * itemsize
            )
            self._storages[key] = root
        if view is None:
            return root
        if not (
            type(view) is tuple
            and len(view) == 3
            and type(view[0]) is str
            and all(type(n) is int and n >= 0 for n in view[1:])
        ):
            raise Corrupt(f"storage view {short(view)}")
        view_key, offset, size = view
        if view_key in self.views:
            return self.views[view_key][0]
        itemsize = ITEMSIZE[root.dtype]
        if (offset + size) * itemsize > root.nbytes:
            raise Corrupt(
                f"a view of {size} elements at {offset} into storage {short(key)} of "
                f"{root.nbytes // itemsize} elements"
            )
        storage = _Storage(None, root.dtype, view_key, "little", root.torch_type, size * itemsize)
        self.views[view_key] = (storage, key, offset * itemsize)
        return storage


_REPR = reprlib.Repr()
for _limit, _n in {
    "maxlevel": 3,
    "maxtuple": 6,
    "maxlist": 6,
    "maxdict": 4,
    "maxset": 4,
    "maxfrozenset": 4,
    "maxstring": 60,
    "maxother": 60,
    "maxlong": 40,
}.items():
    setattr(_REPR, _limit, _n)
del _limit, _n
"""How a value read from a file is shown in a message: bounded in depth and breadth
while it is built (a list that holds itself twice per level, 1 KB of pickle, had a
full ``repr`` of gigabytes)."""


def _plain(text: Any) -> str:
    """A name read from a file as it is when short and printable, else :func:`short`'s."""
    plain = isinstance(text, str) and len(text) <= 100 and text.isprintable()
    return text if plain else short(text)


def short(value: Any) -> str:
    """A value read from a file, as a message shows it: at most a few hundred characters,
    on one line, whatever the value."""
    return " ".join(_REPR.repr(value).split())[:240]


def load_legacy(path: str | Path) -> Any:
    """:func:`load` for torch's legacy format (``torch.save`` before torch 1.6, or with
    ``_use_new_zipfile_serialization=False``): not a zip, but a sequence in one file::

        pickle  the magic number (LEGACY_MAGIC)        no global allowed
        pickle  the protocol version (1001)            no global allowed
        pickle  sys_info: byte order, type sizes       no global allowed
        pickle  the object; persistent ids ('storage', storage type, key, location,
                numel, view) where view is None or (view key, offset, numel)
        pickle  the storage keys, in the order their bytes follow
        then per key: an int64 count of elements, then their bytes

    The object pickle is read as a zip's ``data.pkl`` is (same whitelist); a
    ``('module', ...)`` persistent id (a whole model's classes) is refused.
    Each storage's count must be what its persistent id declared, and its
    bytes must be in the file, before anything is read (a lying count
    allocates nothing). As torch, the bytes are little-endian whatever the
    writer's machine; the count is the writer's byte order (``sys_info``) in
    torch < 1.12 and little-endian after, so either must give the declared
    count. Raises :class:`Refused`, :class:`Corrupt` or :class:`NotTorch`.
    """
    try:
        with open(path, "rb") as raw, _budget():
            return _load_legacy(_Bounded(raw))
    except MemoryError:
        raise TooLarge("not enough memory to read it") from None


def _load_legacy(f: _Bounded) -> Any:
    magic = _unpickle(f, {})
    if not (type(magic) is int and magic == LEGACY_MAGIC):
        raise NotTorch("not torch.save's legacy format (no magic number)")
    version = _unpickle(f, {})
    if not (type(version) is int and version == LEGACY_PROTOCOL):
        raise Corrupt(f"legacy protocol version {short(version)}, expected {LEGACY_PROTOCOL}")
    count_order = _legacy_byte_order(_unpickle(f, {}))
    unpickler = _LegacyUnpickler(f)
    obj = _run(unpickler)
    keys = _unpickle(f, {})
    roots = unpickler._storages
    if type(keys) is not list or not all(type(k) is str and k in roots for k in keys):
        raise Corrupt(f"storage keys {short(keys)}, expected those its pickle names")
    if len(set(keys)) != len(keys):
        raise Corrupt("a storage's key is listed twice")
    # Each storage's views, found once: asking per storage was storages x views.
    views: dict[str, list[tuple[_Storage, int]]] = {}
    for view, root, offset in unpickler.views.values():
        views.setdefault(root, []).append((view, offset))
    listed = set(keys)
    missing = [
        k
        for k, s in roots.items()
        if k not in listed and (s.pending or any(v.pending for v, _ in views.get(k, ())))
    ]
    if missing:
        raise Corrupt(f"no data for storage {short(missing[0])}")
    for key in keys:
        _read_legacy_storage(f, roots[key], count_order, views.get(key, []))
    return obj


def _legacy_byte_order(sys_info: Any) -> str:
    if not isinstance(sys_info, dict):
        raise Corrupt(f"legacy sys_info {short(sys_info)}, expected a dict")
    little = sys_info.get("little_endian", True)
    if type(little) is not bool:
        raise Corrupt(f"legacy sys_info little_endian={short(little)}")
    return "little" if little else "big"


def _read_legacy_storage(
    f: _Bounded, storage: _Storage, count_order: str, views: list[tuple[_Storage, int]]
) -> None:
    head = f.read(8)
    if len(head) < 8:
        raise Corrupt(f"the file ends before storage {short(storage.member)}")
    itemsize = ITEMSIZE[storage.dtype]
    declared = storage.nbytes // itemsize
    counts = {int.from_bytes(head, order, signed=True) for order in (count_order, "little")}
    if declared not in counts:
        count = int.from_bytes(head, count_order, signed=True)
        raise Corrupt(
            f"storage {short(storage.member)} holds {count} elements, its persistent id {declared}"
        )
    if storage.nbytes > f.left():
        raise Corrupt(
            f"storage {short(storage.member)} of {storage.nbytes} bytes, but the file ends "
            f"{f.left()} bytes on"
        )
    storage.data = memoryview(f.read(storage.nbytes))
    _BUDGET.get().stored += storage.nbytes
    _fill(storage)
    for view, offset in views:
        view.data = storage.data[offset : offset + view.nbytes]
        _fill(view)
        view.data = None
    storage.data = None  # the tensors hold copies: its bytes can go
