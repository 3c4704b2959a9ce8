"""Fetching torchvision's ImageNet weights, with torch.hub's hash check.

The URLs are torchvision's own (``ResNet50_Weights.IMAGENET1K_V2`` and the
``IMAGENET1K_V1`` weights of DenseNet-121 and VGG-19); a test checks them
against the installed torchvision. As in ``torch.hub``, the hex digits after
the last ``-`` of the file name are the start of the file's sha256.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from medft_jax import download as download_lib
from medft_jax.errors import UserError
from weights_port.keymap import PortError
from weights_port.state_io import sha256

WEIGHTS_URLS: dict[str, str] = {
    "resnet50": "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
    "densenet121": "https://download.pytorch.org/models/densenet121-a639ec97.pth",
    "vgg19": "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
}
WEIGHTS_NAMES = {
    "resnet50": "IMAGENET1K_V2",
    "densenet121": "IMAGENET1K_V1",
    "vgg19": "IMAGENET1K_V1",
}


def cache_dir() -> Path:
    """``$MEDFT_JAX_CACHE`` or ``~/.cache/medft_jax``
    (:func:`medft_jax.data.locations.user_cache_base`: one rule for the cache root)."""
    from medft_jax.data.locations import user_cache_base

    return user_cache_base()


def require_known(arch: str) -> None:
    """Raises :class:`PortError` unless torchvision publishes ImageNet weights for ``arch``."""
    if arch not in WEIGHTS_URLS:
        known = ", ".join(WEIGHTS_URLS)
        raise PortError(f"--arch {arch}: no ImageNet weights known; known: {known}")


OTHER_KNOWN = {"0676ba61": "resnet50 IMAGENET1K_V1 (torchvision's pretrained=True; resize 256)"}
"""Hash prefixes of torchvision files that are not the ones :data:`WEIGHTS_URLS` names."""
KNOWN_RESIZE = {"0676ba61": 256}
"""The resize (shorter side before the 224 crop) torchvision evaluates those files at,
where it is not their arch's rule."""


def imagenet_source_problem(arch: str, digest: str | None) -> str | None:
    """Why a file of sha256 ``digest`` cannot be ``arch``'s ImageNet weights, or None.

    ``--weights auto``/``imagenet`` record a run as trained from
    :data:`WEIGHTS_NAMES` ``[arch]``, resized by its rule: only that file may be
    ported to, or found in, their cache folder. ``digest`` None: unknown source.
    """
    url = WEIGHTS_URLS[arch]
    prefix = expected_hash_prefix(url)
    if isinstance(digest, str) and digest.startswith(prefix):
        return None
    shown = "unknown" if not isinstance(digest, str) else f"{digest[:8]}..."
    known = OTHER_KNOWN.get(digest[:8], "") if isinstance(digest, str) else ""
    return (
        f"sha256 {shown}{f' ({known})' if known else ''} is not torchvision's {arch} "
        f"{WEIGHTS_NAMES[arch]} ({url.rsplit('/', 1)[-1]}, sha256 {prefix}...)"
    )


def expected_hash_prefix(url: str) -> str:
    m = re.search(r"-([a-f0-9]+)\.", url.rsplit("/", 1)[-1])
    if not m:
        raise PortError(f"{url}: no hash prefix in the file name")
    return m.group(1)


def remove_killed_downloads(arch: str) -> None:
    """Removes what killed downloads of ``arch``'s torchvision file left (10 minutes old or
    more): called where the ported weights are found too, which never ask for the file
    again (a 548 MB VGG-19 ``.part`` stayed for good beside a ported slot)."""
    if arch in WEIGHTS_URLS:
        download_lib.remove_killed(
            cache_dir() / "torchvision" / WEIGHTS_URLS[arch].rsplit("/", 1)[-1]
        )


def download(arch: str, *, timeout: float = 30.0, out: Path | None = None) -> Path:
    """The cached torchvision checkpoint of ``arch``, downloaded first if needed.

    ``out``: where the caller ports it (the offline hint names it; default: the slot
    ``--weights auto`` reads).
    """
    require_known(arch)
    url = WEIGHTS_URLS[arch]
    target = cache_dir() / "torchvision" / url.rsplit("/", 1)[-1]
    prefix = expected_hash_prefix(url)
    if target.is_file():
        download_lib.remove_killed(target)
        # Checked as a fresh download is: a cached file damaged or replaced since (another
        # model copied over it) was ported, and recorded, as torchvision's ImageNet weights.
        found = sha256(target)
        if not found.startswith(prefix):  # not a PortError: --weights auto stops, no fallback
            raise UserError(
                f"{target}: sha256 {found[:16]}... does not start with {prefix}, the hash in "
                "its torchvision name: the cached download is damaged or was replaced; delete "
                "it and run --download again"
            )
        return target
    # Folders this download makes are removed again if it fails (offline: a refused
    # --download left an empty torchvision/ folder, at worst under a mistyped HOME).
    made = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = download_lib.temporary(target)
    ported = out or cache_dir() / "flax" / f"{arch}_{WEIGHTS_NAMES[arch]}"
    manual = (
        f"download it elsewhere, then python -m weights_port --arch {arch} --torch-weights "
        f"FILE --out {ported}"
    )
    done = False
    try:
        try:
            digest = download_lib.fetch(
                url, tmp, algorithm="sha256", timeout=timeout, label=target.name
            )
        except download_lib.DownloadError as e:
            if e.connected:  # cut off or malformed: a retry may do (not "offline?"); a
                # 403 or a proxy's HTML page never will: the manual port is said too
                raise download_lib.DownloadError(
                    url, f"{e.why}; try again, or {manual}", connected=True
                ) from None
            raise PortError(f"{e}; offline? {manual[0].upper()}{manual[1:]}") from None
        if not digest.startswith(prefix):  # cut off without a length, or corrupted: the
            raise download_lib.DownloadError(  # server answered, so --weights auto stops
                url,  # (its PortError fallback trained a whole sweep from random weights)
                f"sha256 {digest[:16]}... does not start with {prefix}; the download is "
                f"corrupt: try again, or {manual}",
                connected=True,
            )
        os.replace(tmp, target)
        done = True
    finally:
        tmp.unlink(missing_ok=True)
        for folder in [] if done else made:  # deepest first; only if empty
            with contextlib.suppress(OSError):
                folder.rmdir()
    return target
