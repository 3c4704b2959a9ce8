"""Reading and writing torchvision state_dicts without ever running pickled code.

``.pth`` files are read with ``torch.load(..., weights_only=True)``, which
refuses anything but tensors and plain containers; ``.safetensors`` files are
read with ``safetensors.numpy``, which needs no torch at all.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from weights_port.keymap import PortError


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """A ``.pth`` or ``.safetensors`` state_dict as numpy arrays."""
    path = Path(path)
    if not path.is_file():
        raise PortError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    return _read_pth(path)


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    try:
        from safetensors.numpy import load_file
    except ImportError as e:  # pragma: no cover - depends on the install
        raise PortError(f"{path}: reading .safetensors needs `pip install safetensors`") from e
    try:
        return dict(load_file(str(path)))
    except Exception as e:
        raise PortError(f"{path}: not a readable .safetensors file ({e})") from e


def _read_pth(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise PortError(
            f"{path}: reading .pth needs torch (pip install 'medft-jax[port]'), "
            "or convert the file to .safetensors"
        ) from e
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise PortError(
            f"{path}: not a loadable torch state_dict (it holds pickled objects other than "
            "tensors, refused by weights_only=True)"
        ) from None
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PortError(f"{path}: not a loadable torch state_dict ({first})") from e
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PortError(f"{path}: expected a state_dict (a mapping of names to tensors)")
    return {k: v.detach().cpu().numpy() for k, v in obj.items()}


def write_state_dict(state: Mapping[str, np.ndarray], out: str | Path) -> list[Path]:
    """Writes ``out`` (``.pth`` needs torch; ``.safetensors`` does not).

    A ``.pth`` is written together with a ``.safetensors`` twin beside it.
    Files are written to a temporary name and renamed, so a failed export
    leaves nothing half-written.
    """
    out = Path(out)
    if out.suffix not in (".pth", ".pt", ".safetensors"):
        raise PortError(f"--out {out}: expected a .pth or .safetensors file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    if out.suffix in (".pth", ".pt"):
        try:
            import torch
        except ImportError as e:
            raise PortError(
                f"--out {out}: writing .pth needs torch (pip install 'medft-jax[port]'); "
                "ask for a .safetensors file instead"
            ) from e
        tensors = {k: torch.from_numpy(np.asarray(v, order="C")) for k, v in state.items()}
        written.append(_atomic(out, lambda p: torch.save(tensors, p)))
        out = out.with_suffix(".safetensors")
    from safetensors.numpy import save_file

    arrays = {k: np.asarray(v, order="C") for k, v in state.items()}
    written.append(_atomic(out, lambda p: save_file(arrays, p)))
    return written


def _atomic(path: Path, write) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
