"""The one rule for reading a user's dataset folder: nothing outside the dataset root is read.

Every file-based source goes through here: ``csv`` (and the paper tasks'
CSV/list files) with :func:`safe_join` for each listed path, ``folder`` (and
the tasks that list a directory) with :func:`scan_files`. A path, or a
symbolic link anywhere on the way, that resolves outside the root is refused
with the path at fault; links that stay inside the root are followed. Why
one place: a user sharing a dataset folder expects the toolkit to read that
folder, not whatever a stray link (or a hostile ``../``) points at, and two
sources with two rules is how one of them came to follow links out.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Iterable
from pathlib import Path

from medft_jax.data.errors import DataError


def is_inside(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> bool:
    """True when the resolved ``path`` is ``root`` or below it (``root`` already resolved)."""
    root, path = os.fspath(root), os.fspath(path)
    return path == root or path.startswith(os.path.join(root, ""))


def refuse_listed_output(root: Path, output: Path, flag: str, what: str) -> None:
    """Refuses an output folder (``--data-dir``, ``--out``) that the listing of the image
    folder ``root`` would walk into: its files would be read as a class or images on the
    next load. A hidden folder (``<root>/.medft``) is never listed, so it is fine."""
    root, output = Path(root).expanduser(), Path(output).expanduser()
    try:
        inside = output.resolve().relative_to(root.resolve())
    except ValueError:
        return
    if not any(part.startswith(".") for part in inside.parts):
        raise DataError(
            f"{flag} {output} is inside --manual-dir {root}, whose listing would read {what} "
            f"as images; put it elsewhere, or in a hidden folder ({root / '.medft'})"
        )


def safe_join(root: Path, relative: str, *, source: str) -> Path:
    """``root / relative``, refusing a path that resolves outside ``root``.

    ``source`` names where the path came from (a CSV file, a list file), for
    the error message. Symlinks are resolved before the check, so a link
    pointing outside the root is refused too.
    """
    # String paths: the builders call this once per listed image (CheXpert:
    # 224k), where pathlib's resolve costs three times os.path.realpath.
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, relative))
    if not is_inside(real_root, real):
        raise DataError(
            f"{source}: image path {relative!r} escapes the dataset root {Path(real_root)}"
        )
    return Path(real)


def listed_path(relative: str, *, source: str) -> str:
    """A listing's relative path, normalised: ``./MURA-v1.1/x.png`` and ``a//b`` as the
    release writes them (``MURA-v1.1/x.png``, ``a/b``).

    Why: pandas and Windows tools write listings with ``./``; read as written, the
    release's folder prefix was not recognised and every image looked missing under a
    doubled folder. A ``..`` part is refused (``source`` names the line): normalised
    away, it would name another file than the listing does, and the release has none.
    """
    if ".." in relative.replace("\\", "/").split("/"):
        raise DataError(
            f"{source}: path {relative!r} has a '..' part; expected a path inside the "
            "dataset, as the release lists its images and studies"
        )
    return posixpath.normpath(relative)


def resolved(path: Path | str) -> Path:
    """``Path(path).resolve()``; a symbolic link loop is one line naming it, not a
    RuntimeError (what ``resolve`` raises for one)."""
    try:
        return Path(path).resolve()
    except RuntimeError:
        raise DataError(f"{path} is a symbolic link loop: it never reaches a file") from None


def check_inside(root: Path, path: Path) -> Path:
    """``path`` unchanged if it resolves inside ``root``; else a :class:`DataError` naming it.

    For paths found by listing a directory: a symbolic link (to a file or a
    folder) that leads out of the root is named with where it points.
    """
    real_root = resolved(root)
    real = resolved(path)
    if not is_inside(real_root, real):
        if not os.path.lexists(real):  # dangling: copying it would not help either
            raise DataError(
                f"{path} is a symbolic link to {real}, which does not exist (and lies outside "
                f"the dataset root {real_root}); remove the link or restore its target"
            )
        what = "folder" if real.is_dir() else "file"
        raise DataError(
            f"{path} is a symbolic link to {real}, outside the dataset root {real_root}; "
            f"copy the {what} into the dataset folder or link inside it"
        )
    return Path(path)


def check_name_encodable(path: Path) -> None:
    """Refuses a file or folder name that is not UTF-8 (a Latin-1 ``café.png`` from an old
    archive): Python holds it with surrogates that no id, hash or record can encode, and
    a run had trained to its end before failing with a traceback at the record."""
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:
        raw = os.fsencode(path.name)
        raise DataError(
            f"{path.parent}: the name {raw!r} is not UTF-8 text; rename it in UTF-8 "
            "(e.g. convmv -f latin1 -t utf8 --notest -r <folder>)"
        ) from None


def scan_files(
    root: Path,
    folder: Path,
    suffixes: Iterable[str] | None = None,
    *,
    recursive: bool = True,
    links_anywhere: bool = False,
    hidden: list[Path] | None = None,
) -> list[Path]:
    """Sorted files in ``folder`` (and below, if ``recursive``) whose suffix is in ``suffixes``.

    Symbolic links are followed when they stay inside ``root`` (each real
    folder is walked once, so a link cycle ends) and refused when they lead
    out of it. A link that points nowhere is refused too: it is an image the
    user meant to include that would otherwise vanish without a word.
    Hidden entries (``.name``), ``__MACOSX`` and a drive's system folders are skipped
    (:func:`not_listed`). An
    entry of a wanted suffix (any, when ``suffixes`` is None) that is neither file nor
    folder (a named pipe, a socket, a device) is refused: read, a pipe blocks for ever.
    Paths keep the names seen under ``folder`` (not the link targets), so ids
    stay what the user sees.

    ``links_anywhere``: for a folder of files to read that is no dataset (``predict``'s
    ``--images scans/``, often links into a PACS export): links are followed wherever
    they lead, and one that loops or points nowhere is listed as a file, for its reader
    to name as the bad file it is. A dataset never passes it: its root is what a shared
    folder promises to read.

    ``hidden``: collects the hidden files skipped (``.x.png``; not macOS's ``._x.png``
    resource forks), for the left-out note to count.
    """
    wanted = None if suffixes is None else {s.lower() for s in suffixes}
    real_root = resolved(root)
    check_inside(root, folder)
    found: list[Path] = []
    seen: set[Path] = set()
    stack = [Path(folder)]
    while stack:
        current = stack.pop()
        real = resolved(current)
        if real in seen:
            continue
        seen.add(real)
        for entry in sorted(os.scandir(current), key=lambda e: e.name):
            if not_listed(entry.name):
                if hidden is not None and entry.name.startswith(".") and _own_file(entry):
                    hidden.append(Path(entry.path))
                continue
            path = Path(entry.path)
            if not links_anywhere:  # a dataset's names become its ids
                check_name_encodable(path)
            if links_anywhere and entry.is_symlink() and _broken_link(path):
                if wanted is None or path.suffix.lower() in wanted:
                    found.append(path)
                continue
            if entry.is_symlink() and not links_anywhere:
                target = resolved(path)
                if not is_inside(real_root, target):
                    check_inside(root, path)
                if not target.exists():
                    raise DataError(f"{path} is a symbolic link to {target}, which does not exist")
            if entry.is_dir():
                if recursive:
                    stack.append(path)
            elif wanted is None or path.suffix.lower() in wanted:
                if not entry.is_file():
                    kind = special_kind(path) or "neither a file nor a folder"
                    raise DataError(f"{path} is {kind}, not a file; move it out of {root}")
                found.append(path)
    return sorted(found)


def special_kind(path: str | os.PathLike[str]) -> str | None:
    """What ``path`` is, in words, when it is there but neither a file nor a folder; None
    for a file, a folder or nothing there.

    A named pipe called ``x.png`` would block its reader forever, and left out
    without a word it is an image the user meant to include that vanished."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    for test, kind in (
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return kind
    return "neither a file nor a folder"


def _own_file(entry: os.DirEntry[str]) -> bool:
    """A hidden entry that is a user's file: not a folder, nor macOS's ``._`` resource fork
    or ``.DS_Store``."""
    return not entry.name.startswith("._") and entry.name != ".DS_Store" and entry.is_file()


def _broken_link(path: Path) -> bool:
    """Whether the link ``path`` loops or points nowhere (it leads to no file or folder)."""
    try:
        return not resolved(path).exists()
    except DataError:  # a loop
        return True


ARCHIVE_METADATA = frozenset({"__MACOSX"})
"""Folder names an unzipped archive leaves that never hold the user's images: macOS's
AppleDouble resource forks (``__MACOSX/<class>/._x.png``), which would otherwise be a
class of undecodable files."""

SYSTEM_FOLDERS = frozenset({"$RECYCLE.BIN", "System Volume Information", "lost+found"})
"""Folders a file system keeps at a drive's root (Windows' recycle bin and its index,
ext4's ``lost+found``): a dataset copied to, or kept at, a drive's root holds them, and
``$RECYCLE.BIN``'s deleted images were a class of their own."""


def not_listed(name: str) -> bool:
    """Whether a directory entry is left out of every listing: hidden, archive metadata or a
    file system's own folder."""
    return name.startswith(".") or name in ARCHIVE_METADATA or name in SYSTEM_FOLDERS


def sub_folders(root: Path, folder: Path) -> list[Path]:
    """Non-hidden sub-folders of ``folder``, sorted by name, each checked to stay in ``root``."""
    folders = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not_listed(entry.name):
            continue
        if entry.is_symlink():
            resolved(entry.path)  # a loop: named, not the OSError is_dir() raises
        if not entry.is_dir():
            continue
        check_name_encodable(Path(entry.path))
        folders.append(check_inside(root, Path(entry.path)))
    return folders
