"""Preprocessing equals torchvision's ImageNet weight transforms on PIL images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medft_jax.data.preprocess import center_crop, normalize, resize_and_crop, resized_size
from tests.torch_ref import torch, torchvision  # noqa: F401  (skips without torch)

FAST_TESTS_GROUP = "torch"  # see tests/conftest.py


def _image(w: int, h: int, mode: str, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode == "L":
        return Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


CASES = [  # (width, height, mode, resize, crop)
    (300, 200, "RGB", 232, 224),
    (201, 377, "RGB", 256, 224),
    (150, 100, "L", 256, 224),
    (512, 512, "L", 232, 224),
    (64, 48, "RGB", 36, 32),
    (40, 30, "RGB", 20, 24),  # crop larger than the resized image: zero padding
]


@pytest.mark.parametrize("w,h,mode,resize,crop", CASES)
def test_uint8_stage_equals_torchvision(w, h, mode, resize, crop):
    img = _image(w, h, mode, seed=w)
    ours = resize_and_crop(img, resize, crop)
    T = torchvision.transforms
    ref = T.Compose([T.Resize(resize), T.CenterCrop(crop)])(img.convert("RGB"))
    assert ours.dtype == np.uint8 and ours.shape == (crop, crop, 3)
    np.testing.assert_array_equal(ours, np.asarray(ref))


@pytest.mark.parametrize("arch", ["resnet50", "densenet121"])
def test_full_transform_equals_weights_transforms(arch):
    from torchvision.models import get_model_weights

    from medft_jax.models import ARCHS

    weights = {"resnet50": "IMAGENET1K_V2", "densenet121": "IMAGENET1K_V1"}[arch]
    transform = get_model_weights(arch)[weights].transforms()
    img = _image(333, 271, "RGB", seed=5)
    ref = transform(img).numpy().transpose(1, 2, 0)
    spec = ARCHS[arch]
    ours = np.asarray(normalize(resize_and_crop(img, spec.resize_size, spec.crop_size)[None]))[0]
    np.testing.assert_allclose(ours, ref, atol=1e-6, rtol=0)


def test_resized_size_and_crop_offsets_by_hand():
    assert resized_size(300, 200, 232) == (348, 232)  # int(232 * 300 / 200)
    assert resized_size(201, 377, 256) == (256, 480)  # int(256 * 377 / 201) = 480
    a = np.arange(5 * 8).reshape(5, 8)
    # torchvision: top = round((5 - 3) / 2) = 1, left = round((8 - 3) / 2) = round(2.5) = 2
    np.testing.assert_array_equal(center_crop(a, 3), a[1:4, 2:5])
