"""One class, one spelling: class names that differ only in Unicode normalisation, case or
surrounding whitespace are refused.

A folder made on macOS often stores ``pneumonía`` decomposed (NFD: ``i`` and a
combining accent), one made on Linux or typed into a CSV composed (NFC). The
two look the same and sort apart: read as given they are two classes, and the
macro metrics average over a class that does not exist. ``Benign`` and
``benign`` in one labels column (two people's typing) are the same mistake,
and so are ``Normal/`` and ``normal/`` folders, which a case-insensitive
filesystem (macOS, Windows) would not even hold apart; ``Normal/`` and
``Normal /`` (a trailing space, invisible in a listing; CSV labels are
stripped, folder names cannot be) too. Renaming is the
user's call (a folder name is a path), so the toolkit names both and stops.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterable

from medft_jax.data.errors import DataError


def normalised(name: str) -> str:
    """``name`` in NFC, case-folded, stripped: equal for two spellings of one name."""
    return unicodedata.normalize("NFC", name).casefold().strip()


def twin_of(name: str, names: Iterable[str]) -> str | None:
    """A name of ``names`` other than ``name`` that is ``name`` spelled otherwise, or None."""
    key = normalised(name)
    return next((n for n in names if n != name and normalised(n) == key), None)


def refuse_twins(names: Iterable[str], where: Callable[[str], str]) -> None:
    """Refuses two of ``names`` that differ only in Unicode normalisation or case, naming both;
    ``where(name)`` says where the second was found (a folder, a CSV line)."""
    seen: dict[str, str] = {}
    for name in names:
        other = seen.setdefault(normalised(name), name)
        if other != name:
            raise DataError(twins_message(where(name), other, name))


def twins_message(where: str, a: str, b: str) -> str:
    """The one line for two spellings of one class name (escaped, so they differ on screen)."""
    sa, sb = a.strip(), b.strip()
    kinds = []
    if sa != sb:
        if unicodedata.normalize("NFC", sa) == unicodedata.normalize("NFC", sb):
            kinds.append("Unicode normalisation")
        elif sa.casefold() == sb.casefold():
            kinds.append("case")
        else:
            kinds += ["case", "Unicode normalisation"]
    if (sa, sb) != (a, b):
        kinds.append("surrounding whitespace")
    how = " and ".join(kinds)
    if kinds == ["Unicode normalisation"]:
        how += " (one name written two ways, e.g. on macOS and on Linux)"
    else:
        how += f" (one name written {'two' if len(kinds) == 1 else 'several'} ways)"
    return f"{where}: class names {a!a} and {b!a} differ only in {how}; spell them alike"
