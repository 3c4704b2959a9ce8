"""Image preprocessing exactly as torchvision's ImageNet weight transforms.

``Resize(resize_size)`` of the shorter side with PIL bilinear (antialiased)
resampling, ``CenterCrop(crop_size)``, then ``[0, 1]`` scaling and ImageNet
mean/std normalisation. The uint8 stage (:func:`resize_and_crop`) runs once
on the host (and can be cached: nothing random happens to an image); the
float stage (:func:`normalize`) runs on the device inside the jitted step.
The module loads JAX only when :func:`normalize` is called, so that reading
images (``prepare``, ``predict``) does not pay for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import jax

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

EIGHT_BIT_MODES = frozenset(
    {"1", "L", "P", "PA", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
)
"""Pillow modes whose ``convert("RGB")`` keeps every sample: 8 bits per channel or fewer.
Wider modes (``I;16``, ``I``, ``F``) would be clipped to 0..255 by it; files in
those are converted by :func:`medft_jax.data.images.open_image` first."""


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) with the shorter side ``size``, as torchvision computes it."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """torchvision's ``CenterCrop`` on an HWC array (zero-pads images smaller than ``size``)."""
    h, w = image.shape[:2]
    if h < size or w < size:
        pad_h, pad_w = max(size - h, 0), max(size - w, 0)
        pads = [(pad_h // 2, (pad_h + 1) // 2), (pad_w // 2, (pad_w + 1) // 2)]
        image = np.pad(image, pads + [(0, 0)] * (image.ndim - 2))
        h, w = image.shape[:2]
    top = round((h - size) / 2.0)
    left = round((w - size) / 2.0)
    return image[top : top + size, left : left + size]


def resize_and_crop(image: Image.Image, resize_size: int, crop_size: int = 224) -> np.ndarray:
    """8-bit PIL image -> uint8 (crop, crop, 3) RGB array; grayscale is repeated to 3 channels.

    Refuses (ValueError: a caller's bug, not the user's) 16-bit and float
    modes, which ``convert("RGB")`` would silently clip: decode files with
    :func:`medft_jax.data.images.open_image`.
    """
    if image.mode not in EIGHT_BIT_MODES:
        raise ValueError(
            f"resize_and_crop takes an 8-bit image, got mode {image.mode}; "
            "decode files with medft_jax.data.images.open_image"
        )
    if image.mode != "RGB":
        image = image.convert("RGB")
    image = image.resize(resized_size(*image.size, resize_size), Image.BILINEAR)
    return center_crop(np.asarray(image, dtype=np.uint8), crop_size)


def normalize(images: jax.Array, dtype: Any = np.float32) -> jax.Array:
    """uint8 NHWC -> ImageNet-normalised floats, as ``ToTensor`` + ``Normalize``."""
    import jax.numpy as jnp

    mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
    std = jnp.asarray(IMAGENET_STD, jnp.float32)
    x = images.astype(jnp.float32) / 255.0
    return ((x - mean) / std).astype(dtype)
