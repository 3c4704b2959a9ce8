"""Reading and writing torchvision state_dicts without ever running pickled code.

Reading needs no torch. A ``.pth`` written by ``torch.save`` (a zip archive
since torch 1.6, or torch's legacy format before it, as torchvision's oldest
files are) is read by :mod:`weights_port.pth_reader`, whose unpickler
resolves only tensor-rebuilding globals, to functions of its own, so a
``.pth`` that names anything else is refused as ``torch.load(...,
weights_only=True)`` refuses it, whether or not torch is installed; torch is
never used to read one. ``.safetensors`` files are read with
``safetensors.numpy``.
Writing a ``.pth`` (an export) needs torch; writing a ``.safetensors`` does
not.

What is read is checked, not trusted. A zip ``.pth``'s members carry CRC-32s
that ``torch.load`` never checks; they are verified first, so a damaged
download or disk is refused with the member named instead of porting
silently wrong weights, and a tensor reaching past its storage is refused as
a truncated or corrupted file, as is a legacy file whose storages do not
add up to its length. (A legacy non-zip ``.pth`` and a ``.safetensors`` file
carry no checksum, so only what follows applies to them.) Every float
tensor must be finite: "non-finite weights in PATH: KEY".
"""

from __future__ import annotations

import io
import json
import sys
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medft_jax.atomic import file_sha256, replace_all, stage_bytes
from medft_jax.checkpoints.model import METADATA_HASH, metadata_hash
from medft_jax.errors import json_loads, writable_dir
from weights_port import pth_reader
from weights_port.keymap import PortError

sha256 = file_sha256
"""The SHA-256 hex digest of a file (one implementation for the port and the caches)."""


_PICKLE_PROTO = b"\x80"
"""The first byte of a pickle of protocol 2 or later: torch's legacy (pre-1.6) format."""


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """A ``.pth`` or ``.safetensors`` state_dict as numpy arrays."""
    path = Path(path)
    if path.is_dir():
        raise PortError(f"{path}: a folder, expected a .pth or .safetensors file")
    if not path.is_file():
        raise PortError(f"{path}: no such file")
    kind = _content_kind(path)
    named = ".safetensors" if path.suffix.lower() == ".safetensors" else ".pth"
    if kind == "tar":
        raise PortError(
            f"{path}: a tar archive, not a file torch.save wrote; extract the .pth from it"
        )
    if kind in (".safetensors", ".pth") and kind != named:
        raise PortError(
            f"{path}: a {kind} file named {path.suffix or 'without a suffix'}; "
            f"rename it to end in {kind}"
        )
    if named == ".safetensors":
        state = _read_safetensors(path)
    else:
        if zipfile.is_zipfile(path):
            if kind != ".pth":  # its end record found past data before it: not torch.save's
                raise PortError(
                    f"{path}: a zip archive after {_zip_offset(path)} bytes of other data, not "
                    "a file torch.save wrote; expected a torchvision state_dict .pth"
                )
            check_zip_crcs(path)
        elif _first_bytes(path, 4) == b"PK\x03\x04":  # a zip without its directory: cut short
            raise PortError(
                f"{path}: truncated or corrupted zip archive (no central directory); download or "
                "copy it again"
            )
        elif _first_bytes(path, 1) != _PICKLE_PROTO:
            raise PortError(
                f"{path}: not a torch checkpoint (neither torch.save's zip archive nor a legacy "
                "pickle); expected a torchvision state_dict .pth or a .safetensors file"
            )
        state = _read_pth(path)
    check_finite(state, path)
    return state


def _first_bytes(path: Path, n: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _content_kind(path: Path) -> str | None:
    """What the file's first bytes say it is, whatever its name: ``".pth"`` (a zip from its
    first byte, as torch.save writes it), ``".safetensors"`` (a little-endian header length
    that fits the file, then ``{``), ``"tar"`` (``ustar`` at byte 257), or None (a legacy
    pickle, or unknown: the readers decide). A zip whose end record ``zipfile`` finds past
    other data (a tar of ``.pth`` files, stored uncompressed) read as the last ``.pth`` in
    it, silently."""
    head = _first_bytes(path, 263)
    if head[:4] == b"PK\x03\x04":
        return ".pth"
    if head[257:262] == b"ustar":
        return "tar"
    if len(head) > 8 and head[8:9] == b"{":
        size = int.from_bytes(head[:8], "little")
        if 2 <= size <= path.stat().st_size - 8:
            return ".safetensors"
    return None


def _zip_offset(path: Path) -> int:
    """Bytes before the first local file header of a zip ``zipfile`` opens."""
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
        # zipfile adds the bytes before the archive to each member's header_offset.
        return min((i.header_offset for i in infos), default=0)


def check_zip_crcs(path: str | Path) -> None:
    """Refuses a zip (a ``.pth``) whose members do not match their CRC-32, naming the first.

    Streams every member once (``ZipFile.testzip``); about as fast as the disk.
    """
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
        raise PortError(f"{path}: corrupted zip archive ({e}); download or copy it again") from None
    if bad is not None:
        raise PortError(
            f"{path}: corrupted file: member {bad!r} fails its CRC check; download or copy it again"
        )


def check_finite(state: Mapping[str, np.ndarray], path: str | Path) -> None:
    """Refuses NaN or infinite float tensors, and a BatchNorm ``running_var`` below 0 (its
    square root is NaN, which XLA's CPU backend drops in the pooling that follows: the
    model gave finite, meaningless probabilities), naming the first by its key."""
    for key, value in state.items():
        a = np.asarray(value)
        if np.issubdtype(a.dtype, np.inexact) and not np.isfinite(a).all():
            raise PortError(f"non-finite weights in {path}: {key}")
        if key.endswith("running_var") and (a < 0).any():
            raise PortError(
                f"{path}: {key} has negative values; expected BatchNorm variances >= 0 "
                "(a damaged or edited file)"
            )


EXPORT_KEY = "medft_jax"
"""The ``.safetensors`` header field an export keeps the checkpoint's metadata in."""

PREDICTION_KEYS = (
    "arch",
    "num_classes",
    "multilabel",
    "class_names",
    "resize_size",
    "crop_size",
    "precision",
    "bits_stored",
    "dicom_window",
    "decoder",
    "decoding_version",
    "numerics",
    "source",
)
"""What predict reads from a checkpoint: kept through an export and a port back."""


def read_export_metadata(path: str | Path, *, note_unsealed: bool = True) -> dict | None:
    """The metadata an export wrote into a ``.safetensors`` header, or None (another file).

    A ``.pth`` carries tensors only: None. A header without its seal (an export from
    before the seal, or one edited with it removed) is read as it is, with one ``note:``
    line unless ``note_unsealed`` is False (a twin read only to refuse its ``.pth``).
    """
    path = Path(path)
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), "np") as f:
            raw = (f.metadata() or {}).get(EXPORT_KEY)
    except Exception as e:
        raise PortError(f"{path}: not a readable .safetensors file ({e})") from e
    if raw is None:
        return None
    try:
        value = json_loads(raw)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise PortError(f"{path}: its {EXPORT_KEY!r} header is not a JSON object; edited?")
    seal = value.pop(METADATA_HASH, None)  # exports before it: read as they are
    if seal is None and note_unsealed:  # or edited with it removed: names go unchecked
        print(
            f"note: {path}: its {EXPORT_KEY!r} header carries no {METADATA_HASH} (an export "
            "from before 2026-12-05, or edited): its class names and settings are read "
            "unchecked; export the checkpoint again to seal them",
            file=sys.stderr,
        )
    elif seal is not None and seal != metadata_hash(value):
        raise PortError(
            f"{path}: its {EXPORT_KEY!r} header does not match its {METADATA_HASH} (edited: "
            "class names reordered, multilabel flipped?); export the checkpoint again"
        )
    return value


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """A ``.safetensors`` file's tensors, a bfloat16 one widened to float32 (numpy has no
    bfloat16: ``safetensors.numpy`` refuses the whole file)."""
    try:
        from safetensors import safe_open
    except ImportError as e:  # pragma: no cover - depends on the install
        raise PortError(f"{path}: reading .safetensors needs `pip install safetensors`") from e
    header = _safetensors_header(path)
    try:
        with safe_open(str(path), "np") as f:
            names = f.keys()  # safe_open is no mapping: no `in f`
            return {
                k: _read_bf16(path, header, k) if header[k]["dtype"] == "BF16" else f.get_tensor(k)
                for k in names
            }
    except Exception as e:
        raise PortError(f"{path}: not a readable .safetensors file ({e})") from e


def _safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a ``.safetensors`` file (its length in 8 little-endian bytes,
    then the header): each tensor's dtype, shape and byte range after it. A length past
    the file's end (a PNG renamed, a cut copy) or a header that is no JSON object is one
    line saying so: it was "not a readable .safetensors file ()" (a MemoryError's text)."""
    total = path.stat().st_size
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        if total < 8 or size > total - 8:
            raise PortError(
                f"{path}: not a .safetensors file (its first 8 bytes give a header of {size} "
                f"bytes, the file holds {max(total - 8, 0)} after them)"
            )
        try:
            header = json_loads(f.read(size))
        except ValueError as e:  # UnicodeDecodeError too
            raise PortError(
                f"{path}: not a .safetensors file (its header is no JSON: {e})"
            ) from None
    if not isinstance(header, dict):
        raise PortError(f"{path}: not a .safetensors file (its header is no JSON object)")
    header.pop("__metadata__", None)
    return {**header, "__start__": 8 + size}


def _read_bf16(path: Path, header: Mapping[str, Any], key: str) -> np.ndarray:
    """The bfloat16 tensor ``key`` of a ``.safetensors`` file, widened to float32 (exact)."""
    begin, end = header[key]["data_offsets"]
    with open(path, "rb") as f:
        f.seek(header["__start__"] + begin)
        raw = f.read(end - begin)
    bits = np.frombuffer(raw, "<u2").reshape(header[key]["shape"])
    return pth_reader.bfloat16_to_float32(bits.astype(np.uint16))


STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "net")
"""Where training scripts keep the state_dict in a checkpoint dict (``{'model': sd,
'optimizer': ..., 'epoch': 3}``): torchvision's reference scripts, Lightning
(``state_dict``) and the common ``model_state_dict``. One of them holding a state_dict
is unwrapped; two are refused (which one is the model is not for the port to guess).
A dict that also pickles an object (the reference scripts' ``args``, an
``argparse.Namespace``) is refused as ``torch.load(weights_only=True)`` refuses it,
naming the object, with both fixes (:func:`not_loadable`): re-save its state_dict entry
alone (``torch.save(ckpt['model'], FILE)``)."""


def _unwrap(obj: Any, path: Path) -> Any:
    """The state_dict inside a training checkpoint's dict, or ``obj`` itself."""
    if not isinstance(obj, Mapping) or all(not isinstance(v, Mapping) for v in obj.values()):
        return obj
    held = [k for k in STATE_DICT_KEYS if isinstance(obj.get(k), Mapping) and obj[k]]
    if len(held) > 1:
        raise PortError(
            f"{path}: a checkpoint dict with state_dicts under {', '.join(map(repr, held))}; "
            "expected one: re-save the model's with torch.save(sd, FILE)"
        )
    return obj[held[0]] if held else obj


def not_loadable(refused: str) -> str:
    """Why a ``.pth`` naming anything but tensors and plain containers is refused: what the
    unpickler refused (``global argparse.Namespace``, ``global os.system``), then the fix."""
    return (
        f"not a loadable torch state_dict (it holds pickled objects other than tensors, here "
        f"{refused}, refused as weights_only=True refuses them); a whole model saved with "
        "torch.save(model): re-save model.state_dict(); a checkpoint dict holding other "
        "objects besides the weights: re-save its state_dict entry alone, e.g. "
        "torch.save(ckpt['state_dict'], FILE)"
    )


def _read_pth(path: Path) -> dict[str, np.ndarray]:
    """A torch.save file's state_dict, read by :mod:`pth_reader` with or without torch:
    a zip (torch >= 1.6) or the legacy format (before 1.6)."""
    if zipfile.is_zipfile(path):
        _refuse_torchscript(path)
        try:
            obj = pth_reader.load(path)
        except pth_reader.PthError as e:
            raise _pth_error(path, e) from None
    else:
        obj = _read_legacy_pth(path)
    obj = _unwrap(obj, path)
    tensor = pth_reader.Tensor
    if not isinstance(obj, Mapping) or not all(isinstance(v, tensor) for v in obj.values()):
        first = (
            next((k for k, v in obj.items() if not isinstance(v, tensor)), None)
            if isinstance(obj, Mapping)
            else None
        )
        which = (
            f" ({pth_reader.short(first)} is {pth_reader.a_type(obj[first])})"
            if first is not None
            else ""
        )
        raise PortError(f"{path}: expected a state_dict (a mapping of names to tensors){which}")
    out = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise PortError(
                f"{path}: key {pth_reader.short(key)} is not a name; expected a state_dict"
            )
        if value.kind is not None:
            raise PortError(
                f"{path}: key {key!r} is a {value.kind} tensor, expected a dense float32 one"
            )
        if value.array is None:  # float8 and other dtypes numpy has no type for
            raise PortError(f"{path}: key {key!r} has dtype {value.dtype}, expected float32")
        out[key] = value.array
    return out


def _refuse_torchscript(path: Path) -> None:
    """Names a TorchScript archive (``torch.jit.save``: a ``code/`` folder and
    ``constants.pkl`` beside ``data.pkl``) as one: its pickle names the model's classes, and
    the fix for a whole model (``model.state_dict()``) needs a model its user may not have."""
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    prefix = names[0].split("/", 1)[0] + "/" if names and "/" in names[0] else ""
    if any(n.startswith(prefix + "code/") or n == prefix + "constants.pkl" for n in names):
        raise PortError(
            f"{path}: a TorchScript archive (torch.jit.save), not a state_dict; re-save its "
            "weights with torch.save(torch.jit.load(FILE).state_dict(), OUT)"
        )


def _pth_error(path: Path, e: pth_reader.PthError) -> PortError:
    if isinstance(e, pth_reader.Refused):  # named: a reference script's argparse.Namespace
        return PortError(f"{path}: {not_loadable(str(e))}")
    if isinstance(e, pth_reader.Unsupported):
        return PortError(f"{path}: not read ({e}); a state_dict's keys are names")
    if isinstance(e, pth_reader.TooLarge):
        return PortError(f"{path}: {e} on this machine (a state_dict's tensors did not fit)")
    if isinstance(e, pth_reader.NotTorch):
        return PortError(
            f"{path}: not a loadable torch state_dict ({e}); expected a file written by "
            "torch.save(model.state_dict(), FILE)"
        )
    return PortError(f"{path}: truncated or corrupted torch file ({e}); download or copy it again")


def _read_legacy_pth(path: Path) -> Any:
    """torch's format before 1.6 (a sequence of pickles, not a zip), read by
    :func:`pth_reader.load_legacy` as a zip is: with or without torch."""
    try:  # its magic number first: a plain pickle is named as one
        if not pth_reader.legacy_magic_ok(path):
            raise PortError(
                f"{path}: not a torch.save file (a plain pickle, or another format); expected "
                "a file written by torch.save(model.state_dict(), FILE)"
            )
        return pth_reader.load_legacy(path)
    except pth_reader.PthError as e:
        raise _pth_error(path, e) from None


def check_out_path(out: str | Path, *, force: bool = False) -> Path:
    """``--out`` of an export: a .pth/.safetensors name in a folder that can be written.

    Checked before any work, so a bad ``--out`` is one line, not a traceback
    after the checkpoint was read. The folder is created when missing. Without
    ``force``, a file already there (the ``.safetensors`` written beside a
    ``.pth`` included) is refused: it may be the user's.
    """
    out = Path(out).expanduser()
    if out.suffix not in (".pth", ".pt", ".safetensors"):
        raise PortError(
            f"--out {out}: expected a file name ending in .pth, .pt or .safetensors (lower case)"
        )
    if out.is_dir():
        raise PortError(f"--out {out}: is a folder, expected a .pth or .safetensors file name")
    for target in output_files(out):
        if target.is_dir():  # not even --force replaces a folder with a file
            raise PortError(f"--out {out}: {target} is a folder; expected a file name there")
        if target.is_symlink():  # --force would replace the link, not write through it
            raise PortError(
                f"--out {out}: {target} is a link; give the file it points to, or another name"
            )
        if not force and target.exists():
            raise PortError(f"--out {out}: {target} already exists; pass --force to overwrite it")
    writable_dir(out.parent, "--out")
    return out


def output_files(out: Path) -> list[Path]:
    """The files :func:`write_state_dict` writes for ``out``: a ``.pth`` has a
    ``.safetensors`` twin."""
    if out.suffix in (".pth", ".pt"):
        return [out, out.with_suffix(".safetensors")]
    return [out]


def write_state_dict(
    state: Mapping[str, np.ndarray],
    out: str | Path,
    *,
    force: bool = False,
    metadata: Mapping[str, object] | None = None,
) -> list[Path]:
    """Writes ``out`` (``.pth`` needs torch; ``.safetensors`` does not).

    ``metadata`` (JSON values) goes into the ``.safetensors`` header under
    :data:`EXPORT_KEY`, so that a port back restores the class names and the
    preprocessing; a ``.pth`` holds tensors only.

    A ``.pth`` is written together with a ``.safetensors`` twin beside it
    (:func:`output_files`); files already there are replaced only with
    ``force``. Files are written to a temporary name and renamed, so a
    failed export leaves nothing half-written.
    """
    out = check_out_path(out, force=force)
    *wants_pth, safetensors = output_files(out)
    pth: list[tuple[Path, bytes]] = []
    if wants_pth:
        try:
            import torch
        except ImportError as e:
            raise PortError(
                f"--out {out}: writing .pth needs torch (pip install 'medft-jax[port]'); "
                "ask for a .safetensors file instead"
            ) from e
        # A copy: arrays restored from a checkpoint can be read-only, which torch warns about.
        tensors = {k: torch.from_numpy(np.array(v, order="C")) for k, v in state.items()}
        buffer = io.BytesIO()  # torch reports a full disk without its errno: write it ourselves
        torch.save(tensors, buffer)
        pth = [(out, buffer.getvalue())]
    from safetensors.numpy import save

    arrays = {k: np.asarray(v, order="C") for k, v in state.items()}
    # Sealed as a checkpoint's metadata is: a header edit that stays consistent with the
    # tensors (two class names swapped) would otherwise come back as the model's truth.
    sealed = {**metadata, METADATA_HASH: metadata_hash(metadata)} if metadata else None
    header = {EXPORT_KEY: json.dumps(sealed)} if sealed else None
    # Both written whole under temporary names, then renamed, the old .pth removed first:
    # renamed one after the other, a kill -9 between the two writes of a --force export
    # left the new twin beside the old .pth, two whole files of two models; now a kill
    # leaves one model's files, and a failed write (a full disk) the old pair as it was.
    staged: list[tuple[Path, Path]] = []
    try:
        staged.append((stage_bytes(safetensors, save(arrays, metadata=header)), safetensors))
        for path, data in pth:
            staged.append((stage_bytes(path, data), path))
        replace_all(staged, before=[path for path, _ in pth])  # the twin first
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    return [final for _, final in staged[::-1]]
