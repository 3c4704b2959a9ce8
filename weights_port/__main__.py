"""Command line of the weight port; see ``python -m weights_port --help``."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import sys
from collections.abc import Sequence
from pathlib import Path

from medft_jax.errors import (
    UNWRITABLE,
    ArgumentParser,
    UserError,
    cli_main,
    exit_command,
    exit_statuses,
    os_error_line,
    path_flag,
)
from medft_jax.names import ARCHS, TEST_ARCHS


def _port_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m weights_port",
        description="Port a torchvision checkpoint to a medft-jax (orbax) model checkpoint. "
        "Use `python -m weights_port export --help` for the way back.",
        epilog=exit_statuses(s0="ported"),
    )
    p.add_argument(
        "--arch",
        required=True,
        choices=[*sorted(ARCHS), *TEST_ARCHS],  # the test arch too: its exports port back
        metavar="{" + ",".join(sorted(ARCHS)) + "}",
        help="architecture of the file",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--torch-weights",
        type=path_flag("a file"),
        metavar="FILE",
        help="torchvision state_dict (.pth or .safetensors; read without torch, running no "
        "pickled code)",
    )
    src.add_argument(
        "--download",
        action="store_true",
        help="fetch torchvision's ImageNet weights (resnet50: IMAGENET1K_V2; others: "
        "IMAGENET1K_V1) with their hash check, cached under ~/.cache/medft_jax",
    )
    p.add_argument(
        "--out",
        type=path_flag("a folder", output=True),
        metavar="DIR",
        help="checkpoint folder to write (default with --download: the cache, "
        "where `experiments.run --weights auto` finds it)",
    )
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    head = p.add_argument_group(
        "what the file's head means (a state_dict does not say; predict reads it)"
    )
    head.add_argument(
        "--multilabel",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="sigmoid outputs, one independent probability each (a BCE-trained head); "
        "default: a softmax, except for a one-output head (sigmoid)",
    )
    head.add_argument(
        "--class-names",
        nargs="+",
        metavar="NAME",
        help="one name per output, in the head's order (default: numbers)",
    )
    head.add_argument(
        "--image-size",
        type=int,
        metavar="PX",
        help="the crop the model was trained at (default: the arch's ImageNet 224)",
    )
    head.add_argument(
        "--resize-size",
        type=int,
        metavar="PX",
        help="the shorter side the images were resized to before that crop, at least the crop "
        "(Resize(256) + CenterCrop(224): 256; default: the arch's rule, ResNet-50's 232/224 "
        "and 256/224 for the others, of the crop)",
    )
    return p


def _export_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m weights_port export",
        description="Write a medft-jax model checkpoint as a torchvision state_dict.",
        epilog=exit_statuses(s0="written"),
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        type=path_flag("a folder"),
        metavar="DIR",
        help="model checkpoint folder",
    )
    p.add_argument(
        "--out",
        required=True,
        type=path_flag("a file", output=True),
        metavar="FILE",
        help="model.pth or model.pt (each also writes model.safetensors beside it) or "
        "model.safetensors",
    )
    p.add_argument("--force", action="store_true", help="overwrite the file(s) if they exist")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0, or 2 with one ``error:`` line for bad input (see ``cli_main``)."""
    return cli_main(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    import weights_port as wp

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["export"]:
        args = _export_parser().parse_args(argv[1:])
        written = wp.export(args.checkpoint, args.out, force=args.force)
        for path in written:
            print(f"wrote {path}")
        _note_decoding_kept(args.checkpoint, written)
        return 0
    parser = _port_parser()
    if argv and not argv[0].startswith("-"):  # "exprt": not a port's missing --arch
        close = difflib.get_close_matches(argv[0], ["export"], n=1, cutoff=0.6)
        parser.error(
            f"{argv[0]!r} is neither a flag nor the subcommand export"
            + ("; did you mean export?" if close else "")
        )
    args = parser.parse_args(argv)
    if not args.download and args.out is None:
        parser.error("--out is required with --torch-weights")
    said = [
        f
        for f in ("multilabel", "class_names", "image_size", "resize_size")
        if getattr(args, f) is not None
    ]
    if args.download and said:
        parser.error(
            f"--{said[0].replace('_', '-')}: ImageNet weights' head is known; "
            "the flag is for --torch-weights"
        )
    from medft_jax.checkpoints.pretrained import one_porter

    with _naming_the_cache(args.out is None, wp.cache_dir()):
        target = Path(args.out).expanduser() if args.out else wp.default_checkpoint(args.arch)
        # A second port into --out waits, then sees it there; a user's --out whose folder does
        # not exist yet gets no lock file made for it (nor its folders, if the port then fails).
        lock = (
            one_porter(target.absolute())
            if args.out is None or target.parent.is_dir()
            else contextlib.nullcontext()
        )
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(lock)
            except OSError as e:  # the lock file beside --out: a refusal of --out's folder
                if args.out is None:
                    raise
                why = os_error_line(e)
                why = why.rsplit(": ", 1)[-1] if why else e.strerror
                raise UserError(
                    f"--out {args.out}: cannot write in its folder {target.parent} ({why})"
                ) from None
            if args.download and wp.ported_imagenet(args.arch, target, force=args.force):
                print(f"found {target} (checked: {args.arch}'s ImageNet weights, ported before)")
                return 0
            if args.download:
                out = wp.port_imagenet(args.arch, args.out, force=args.force)
            else:
                out = wp.port(
                    args.arch,
                    args.torch_weights,
                    args.out,
                    force=args.force,
                    multilabel=args.multilabel,
                    class_names=args.class_names,
                    image_size=args.image_size,
                    resize_size=args.resize_size,
                )
    print(f"wrote {out}")
    if not args.download:
        _note_assumed(out)
    return 0


@contextlib.contextmanager
def _naming_the_cache(default: bool, cache: Path):
    """Without ``--out`` the port writes under the user cache: a refusal there (a
    read-only HOME) says how to move it, not only the path."""
    try:
        yield
    except OSError as e:
        line = os_error_line(e)
        inside = e.filename is not None and Path(e.filename).is_relative_to(cache)
        # Only a cache that cannot be written is mended by moving it; a full disk is not.
        if not default or line is None or not inside or e.errno not in UNWRITABLE:
            raise
        raise UserError(
            f"{line}; set MEDFT_JAX_CACHE to a writable folder, or give --out"
        ) from None


def _note_assumed(out: Path) -> None:
    """One line saying what predict will take the head to mean where nothing said it."""
    from medft_jax.checkpoints.model import load_metadata

    m = load_metadata(out)
    if m.get("class_names") is not None or m.get("num_classes") == 1000:
        return  # named (an export's header, --class-names) or ImageNet's own head
    kind = "sigmoid outputs" if m.get("multilabel") else "a softmax"
    print(
        f"note: predict will read {m['num_classes']} unnamed output(s) as {kind}, at resize "
        f"{m['resize_size']} crop {m['crop_size']}; port again with --multilabel / "
        "--no-multilabel, --class-names, --image-size and --resize-size where the model was "
        "trained otherwise; it decodes 16-bit and DICOM images by the default rules (give predict "
        "--bits-stored / --dicom-window where the training images were decoded otherwise)",
        file=sys.stderr,
    )


def _note_decoding_kept(checkpoint: str, written: Sequence[Path]) -> None:
    """One line where the run had decoding rules the ``.pth`` cannot carry: that file
    ported alone decoded DICOM by each file's own window, 12-bit files by another rule,
    and predict gave other inputs than training without a word."""
    from medft_jax.checkpoints.model import load_metadata

    m = load_metadata(checkpoint)
    flags = []
    if m.get("bits_stored") is not None:
        flags.append(f"--bits-stored {m['bits_stored']}")
    if m.get("dicom_window") is not None:
        center, width = m["dicom_window"]
        flags.append(f"--dicom-window {center:g},{width:g}")
    pth = [p for p in written if p.suffix == ".pth"]
    twin = [p for p in written if p.suffix == ".safetensors"]
    if flags and pth and twin:
        print(
            f"note: {pth[0].name} holds tensors only, not the run's decoding rules "
            f"({' '.join(flags)}), which {twin[0].name} keeps: port that file, or give predict "
            "those flags, to read images as training did",
            file=sys.stderr,
        )


if __name__ == "__main__":
    exit_command(main())
