"""The port itself: torchvision state_dict files <-> medft-jax model checkpoints.

Imported by the package on first use of one of its names (``weights_port.port``), so
``python -m weights_port --help`` answers without loading JAX.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from medft_jax.checkpoints.model import (
    MAX_CROP_SIZE,
    MAX_RESIZE_SIZE,
    MIN_CROP_SIZE,
    CheckpointError,
    check_metadata,
    is_checkpoint,
    load_metadata,
    load_model,
    save_model,
)
from medft_jax.models import get_arch
from medft_jax.results import named_as_a_run
from weights_port.fetch import (
    KNOWN_RESIZE,
    WEIGHTS_NAMES,
    cache_dir,
    download,
    imagenet_source_problem,
    remove_killed_downloads,
    require_known,
)
from weights_port.keymap import PortError, flax_to_torch, torch_to_flax
from weights_port.state_io import (
    PREDICTION_KEYS,
    check_out_path,
    read_export_metadata,
    read_state_dict,
    sha256,
    write_state_dict,
)

__all__ = [
    "PortError",
    "default_checkpoint",
    "export",
    "imagenet_slot_problem",
    "imagenet_source_problem",
    "port",
    "port_imagenet",
    "ported_imagenet",
]


def port(
    arch: str,
    torch_weights: str | Path,
    out: str | Path,
    *,
    force: bool = False,
    multilabel: bool | None = None,
    class_names: Sequence[str] | None = None,
    image_size: int | None = None,
    resize_size: int | None = None,
) -> Path:
    """Ports a torchvision state_dict file of ``arch`` to a model checkpoint at ``out``.

    The file is checked before it is converted (zip CRCs of a ``.pth``, finite
    values, every key and shape; see :mod:`weights_port.state_io`).

    What the head means is not in a state_dict: ``multilabel`` (sigmoid outputs, as a
    BCE-trained head's), ``class_names`` (one per output), ``image_size`` (the crop
    it was trained at) and ``resize_size`` (the shorter side before that crop; unsaid,
    it follows the arch's rule) say it for predict. Unsaid,
    a one-output head is a sigmoid one (a softmax over one output is 1.0 for every
    image), any other a softmax over unnamed classes at the arch's ImageNet sizes; an
    export's header says it for a model exported by medft-jax.
    """
    spec = get_arch(arch)
    torch_weights = Path(torch_weights)
    _check_free(out, force)
    state = read_state_dict(torch_weights)
    digest = sha256(torch_weights)
    if arch in WEIGHTS_NAMES and _same_path(out, default_checkpoint(arch)):
        problem = imagenet_source_problem(arch, digest)
        if problem:
            raise PortError(
                f"--torch-weights {torch_weights}: {problem}; --out {out} holds those "
                "alone (--weights auto/imagenet record runs as trained from them): port "
                "these to another --out and train with --weights <that folder>"
            )
    exported = _exported_metadata(torch_weights, arch)
    variables, tracked = torch_to_flax(state, arch, source=str(torch_weights))
    head = variables["params"]
    for part in spec.partition.head.split("/"):
        head = head[part]
    metadata = {
        "arch": arch,
        "num_classes": int(head["kernel"].shape[-1]),
        "multilabel": False,
        "class_names": None,
        "resize_size": spec.resize_size,
        "crop_size": spec.crop_size,
        "source": torch_weights.name,
        "source_sha256": digest,
        "num_batches_tracked": tracked,
    }
    # An export of a trained model: its class names, sizes and decoding come back with it
    # (without them predict read a 32-px model's images at 224, its classes as numbers).
    metadata.update({k: v for k, v in exported.items() if k in PREDICTION_KEYS})
    if "source" in exported:  # the run it was trained in; the file read is another
        metadata["ported_from"] = torch_weights.name
    _check_head_flags(metadata["num_classes"], spec.partition.head, class_names, image_size)
    said = {
        "multilabel": multilabel,
        "class_names": list(class_names) if class_names is not None else None,
        "crop_size": image_size,
        "resize_size": resize_size,
    }
    for key, value in said.items():
        if value is not None and key in exported and exported[key] != value:
            raise PortError(
                f"--torch-weights {torch_weights}: its medft_jax header says {key} "
                f"{exported[key]!r}, not {value!r}; leave the flag out"
            )
        if value is not None:
            metadata[key] = value
    if image_size is not None and resize_size is None and "crop_size" not in exported:
        metadata["resize_size"] = spec.resize_for(image_size)  # an export keeps its own
    known = KNOWN_RESIZE.get(digest[:8])
    if known is not None and (image_size, resize_size) == (None, None) and not exported:
        # torchvision's ResNet-50 IMAGENET1K_V1 is evaluated at Resize(256): the arch's
        # rule (232, V2's) read its images otherwise than torchvision does, unsaid.
        metadata["resize_size"] = known
    _check_resize(resize_size, metadata["crop_size"], image_size)
    if metadata["num_classes"] == 1 and multilabel is None and "multilabel" not in exported:
        metadata["multilabel"] = True  # one logit: trained with a sigmoid (BCE)
    # An export's header edited out of step with its tensors (3 class names for a 2-class
    # head) was ported, and every reader of the checkpoint refused it: refused here, first.
    where = (
        f"--torch-weights {torch_weights}: its medft_jax header"
        if exported
        else f"--torch-weights {torch_weights} with the flags given (--class-names, "
        "--multilabel/--no-multilabel, --image-size, --resize-size)"
    )
    check_metadata(variables, metadata, where)
    return save_model(out, variables["params"], variables["batch_stats"], metadata, force=force)


def _check_head_flags(
    outputs: int, head: str, class_names: Sequence[str] | None, image_size: int | None
) -> None:
    if class_names is not None and any(not name.strip() for name in class_names):
        # predict printed `PATH: b 0.50, "" 0.49`: an output no one can name
        raise PortError("--class-names: an empty name; expected one non-empty name per output")
    if class_names is not None and len(class_names) != outputs:
        raise PortError(
            f"--class-names: {len(class_names)} names for the head's {outputs} outputs "
            f"({head.replace('/', '.')}.weight); give one per output, in order"
        )
    if class_names is not None and len(set(class_names)) != len(class_names):
        raise PortError("--class-names: a name given twice; expected one name per output")
    if image_size is not None and not MIN_CROP_SIZE <= image_size <= MAX_CROP_SIZE:
        raise PortError(
            f"--image-size {image_size}: expected {MIN_CROP_SIZE} to {MAX_CROP_SIZE} pixels"
        )


def _check_resize(resize_size: int | None, crop: int, image_size: int | None) -> None:
    """Refuses a ``--resize-size`` that predict could not centre-crop ``crop`` out of (or one
    past what a checkpoint may hold), naming where the crop came from."""
    if resize_size is None:
        return
    if resize_size > MAX_RESIZE_SIZE:
        raise PortError(f"--resize-size {resize_size}: expected at most {MAX_RESIZE_SIZE} pixels")
    if resize_size < crop:
        said = f"--image-size {crop}" if image_size is not None else f"the crop, {crop} px"
        raise PortError(f"--resize-size {resize_size}: expected at least {said}")


def _exported_metadata(path: Path, arch: str) -> dict:
    """What an export kept of the checkpoint (``{}``: a file from elsewhere).

    A ``.pth`` holds tensors only: one whose ``.safetensors`` twin holds an export's
    metadata is refused, naming the twin, rather than ported without it.
    """
    if path.suffix.lower() != ".safetensors":
        twin = path.with_suffix(".safetensors")
        try:
            held = read_export_metadata(twin, note_unsealed=False)
        except PortError as e:  # the user named the .pth: say why its twin was read at all
            raise PortError(
                f"--torch-weights {path}: its twin {twin.name}, read for an export's class "
                f"names and preprocessing, is not readable ({e}); move or repair it"
            ) from None
        if held is not None:
            raise PortError(
                f"--torch-weights {path}: exported by medft-jax, with its class names and "
                f"preprocessing in {twin}, which a .pth cannot hold; port that file instead"
            )
        return {}
    exported = read_export_metadata(path) or {}
    if exported and exported.get("arch") != arch:
        raise PortError(
            f"--torch-weights {path}: exported from a {exported.get('arch')} checkpoint, "
            f"not --arch {arch}"
        )
    return exported


def default_checkpoint(arch: str) -> Path:
    """Where the ported ImageNet weights of ``arch`` are cached (:class:`PortError` for an
    unknown arch; :class:`~medft_jax.errors.UserError` when there is no user cache, as
    under ``HOME=/``: :func:`medft_jax.data.locations.user_cache_base`)."""
    require_known(arch)
    return cache_dir() / "flax" / f"{arch}_{WEIGHTS_NAMES[arch]}"


def port_imagenet(arch: str, out: str | Path | None = None, *, force: bool = False) -> Path:
    """Downloads (or reuses) torchvision's ImageNet weights of ``arch`` and ports them."""
    out = Path(out) if out is not None else default_checkpoint(arch)
    if ported_imagenet(arch, out, force=force):
        remove_killed_downloads(arch)
        return out
    _check_free(out, force)  # before a 100 MB download that would then be refused
    return port(arch, download(arch, out=out), out, force=force)


def imagenet_slot_problem(arch: str, metadata: dict) -> str | None:
    """Why a checkpoint of ``metadata`` cannot stand as ``arch``'s ported ImageNet weights
    (another arch's, or ported from another file), or None."""
    if metadata.get("arch") != arch:
        return f"checkpoint is for arch {metadata.get('arch')!r}, not {arch!r}"
    return imagenet_source_problem(arch, metadata.get("source_sha256"))


def ported_imagenet(arch: str, out: str | Path, *, force: bool = False) -> bool:
    """Whether ``out`` is ``arch``'s cache slot already holding its ImageNet weights, to be
    reused (not with ``force``); a slot holding anything else is refused.

    Why checked: the slot can be filled by hand (another file ported into it, a copy of
    another arch's), and ``--download`` said "wrote" of it, checking nothing; the runs
    refused it later, one by one."""
    out = Path(out)
    if force or not out.exists() or out != default_checkpoint(arch):
        return False
    try:
        metadata = load_metadata(out)
        # The arrays too (their content hash): a slot cut short or damaged since was
        # "found (checked)", and the runs then refused it with no word of the remedy.
        load_model(out)
    except CheckpointError as err:
        raise PortError(f"{err}; port again with --force") from None
    problem = imagenet_slot_problem(arch, metadata)
    if problem:
        raise PortError(
            f"{out}: {problem}; port torchvision's again into it with --force, or train "
            f"from this folder by its path (--weights {out})"
        )
    return True


def _same_path(a: str | Path, b: str | Path) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _check_free(out: str | Path, force: bool) -> None:
    """Refuses an ``--out`` that exists, without ``--force``; one that ``--force`` could not
    replace either (a file, a folder that is not a checkpoint) is named as what it is, not
    told to pass a flag that then fails on it."""
    path = Path(out).expanduser()
    _refuse_out_in_a_toolkit_folder(out)
    if path.is_symlink():  # the save refuses it, after the whole file was read: said first
        raise CheckpointError(
            f"--out {out} is a link; give the folder it points to "
            f"({os.path.realpath(path)}), or another"
        )
    if not path.exists() or force:
        return
    if not path.is_dir():
        raise CheckpointError(f"--out {out} is a file, expected a checkpoint folder")
    if any(path.iterdir()) and not is_checkpoint(path):
        raise CheckpointError(
            f"--out {out} exists and is not a model checkpoint; --force replaces only a "
            "checkpoint, choose another folder"
        )
    raise CheckpointError(f"--out {out} already exists; pass --force to overwrite it")


def _refuse_out_in_a_toolkit_folder(out: str | Path) -> None:
    """A port written inside another checkpoint folder (one the toolkit replaces whole: a
    run's ``best/`` under ``run --force``) or inside a run's folder (which ``run --force``
    clears) was deleted later without a word; export and predict refuse those places
    already."""
    target = Path(out).expanduser().resolve()
    for above in target.parents:
        if is_checkpoint(above):
            raise CheckpointError(
                f"--out {out}: inside the checkpoint folder {above}, a folder the toolkit "
                "replaces whole; write the port elsewhere"
            )
        if named_as_a_run(above) and any(
            (above / name).exists() for name in ("best", "record.json", "checkpoints")
        ):
            raise CheckpointError(
                f"--out {out}: inside the run folder {above}, which a run --force clears; "
                "write the port elsewhere"
            )


def export(checkpoint: str | Path, out: str | Path, *, force: bool = False) -> list[Path]:
    """Writes a model checkpoint as a torchvision state_dict (``.pth`` + ``.safetensors``).

    ``out`` is checked first (an existing file, or the ``.safetensors`` twin of
    a ``.pth``, is replaced only with ``force``); the checkpoint is verified
    and its metadata checked against its arrays by :func:`load_model` before
    anything is built.
    """
    out = check_out_path(out, force=force)
    _refuse_out_inside(checkpoint, out)
    variables, metadata = load_model(checkpoint)
    state = flax_to_torch(variables, metadata["arch"], metadata.get("num_batches_tracked"))
    kept = {k: metadata[k] for k in PREDICTION_KEYS if metadata.get(k) is not None}
    return write_state_dict(state, out, force=force, metadata=kept)


def _refuse_out_inside(checkpoint: str | Path, out: Path) -> None:
    """An export written inside the checkpoint folder it reads sat in a folder the toolkit
    replaces whole (a ``run --force`` rewrites ``best/``, deleting it without a word), or in
    an orbax item folder; inside a run's folder (beside its ``best/``) likewise, which a
    ``run --force`` clears. predict's ``--out`` is refused there alike."""
    folder = Path(checkpoint).expanduser().resolve()
    target = Path(out).expanduser().resolve()
    if target.is_relative_to(folder):
        raise PortError(
            f"--out {out}: inside --checkpoint {checkpoint}, a folder the toolkit replaces "
            "whole; write the export elsewhere"
        )
    if (
        folder.name == "best"
        and named_as_a_run(folder.parent)
        and target.is_relative_to(folder.parent)
    ):
        raise PortError(
            f"--out {out}: inside the run folder {folder.parent} of --checkpoint {checkpoint}, "
            "which a run --force clears; write the export elsewhere"
        )
