"""Decoding image files safely: paths stay inside the dataset root, bad files are named.

Every file-based source (the eight paper tasks, ``folder``, ``csv``) decodes
through here, so the rules are the same everywhere: a path that escapes the
dataset root is refused, a corrupt or truncated image raises a
:class:`~medft_jax.data.errors.DataError` naming the file, or, when the user
asked for it (``--skip-bad-images``), is skipped and counted.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from medft_jax.data.errors import DataError
from medft_jax.data.preprocess import resize_and_crop

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


def safe_join(root: Path, relative: str, *, source: str) -> Path:
    """``root / relative``, refusing a path that resolves outside ``root``.

    ``source`` names where the path came from (a CSV file, a list file), for
    the error message. Symlinks are resolved before the check, so a link
    pointing outside the root is refused too.
    """
    root = Path(root).resolve()
    path = (root / relative).resolve()
    if path != root and root not in path.parents:
        raise DataError(f"{source}: image path {relative!r} escapes the dataset root {root}")
    return path


def open_image(path: Path) -> Image.Image:
    """Fully decodes the image at ``path`` (PIL is lazy: ``load()`` finds truncation)."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"corrupt or unreadable image {path}: {err}") from None


class ImageReader:
    """Decodes + preprocesses images, skipping (and counting) bad ones when asked.

    Args:
      resize_size: shorter side after resizing (torchvision ``Resize``).
      crop_size: side of the centre crop (torchvision ``CenterCrop``).
      skip_bad_images: if true, a file that fails to decode is recorded in
        :attr:`skipped` and :meth:`read` returns ``None``; otherwise the
        :class:`DataError` naming the file propagates.
      decode: file -> PIL image; the MRI task swaps in its HDF5 reader.
    """

    def __init__(
        self,
        resize_size: int,
        crop_size: int,
        *,
        skip_bad_images: bool = False,
        decode: Callable[[Path], Image.Image] = open_image,
    ) -> None:
        self.resize_size = resize_size
        self.crop_size = crop_size
        self.skip_bad_images = skip_bad_images
        self.decode = decode
        self.skipped: list[str] = []

    def read(self, path: Path) -> np.ndarray | None:
        """uint8 (crop, crop, 3) array of the image at ``path``, or ``None`` if skipped."""
        try:
            image = self.decode(Path(path))
        except DataError:
            if not self.skip_bad_images:
                raise
            self.skipped.append(os.fspath(path))
            return None
        return resize_and_crop(image, self.resize_size, self.crop_size)
