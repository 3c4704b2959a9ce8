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
stripped, folder names cannot be) too, and so is a label carrying an invisible
character (a zero-width space or a byte-order mark pasted in from a web page
or a spreadsheet), or a compatibility form (a full-width letter, a no-break
space) that NFKC folds into the plain one. Renaming is the
user's call (a folder name is a path), so the toolkit names both and stops.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable

from medft_jax.data.errors import DataError


def _visible(name: str) -> str:
    """``name`` without its format characters (Unicode category Cf: zero-width spaces and
    joiners, byte-order marks, direction marks), which print as nothing."""
    return "".join(c for c in name if unicodedata.category(c) != "Cf")


def normalised(name: str) -> str:
    """``name`` without invisible characters, in NFKC, case-folded, its whitespace runs one
    space and stripped: equal for two spellings of one name (``Basal  cell`` typed with two
    spaces is ``Basal cell``)."""
    return " ".join(unicodedata.normalize("NFKC", _visible(name)).casefold().split())


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
    kinds = []
    if (_visible(a), _visible(b)) != (a, b):
        kinds.append("invisible characters")
    sa, sb = _visible(a).strip(), _visible(b).strip()
    ja, jb = " ".join(sa.split()), " ".join(sb.split())
    if ja != jb:
        if unicodedata.normalize("NFKC", ja) == unicodedata.normalize("NFKC", jb):
            kinds.append("Unicode normalisation")
        elif ja.casefold() == jb.casefold():
            kinds.append("case")
        else:
            kinds += ["case", "Unicode normalisation"]
    if re.findall(r"\s+", sa) != re.findall(r"\s+", sb):
        kinds.append("whitespace within")
    if (sa, sb) != (_visible(a), _visible(b)):
        kinds.append("surrounding whitespace")
    how = " and ".join(kinds)
    nfc = unicodedata.normalize("NFC", sa) == unicodedata.normalize("NFC", sb)
    if kinds == ["Unicode normalisation"] and nfc:  # composed vs decomposed accents
        how += " (one name written two ways, e.g. on macOS and on Linux)"
    else:
        how += f" (one name written {'two' if len(kinds) == 1 else 'several'} ways)"
    return f"{where}: class names {a!a} and {b!a} differ only in {how}; spell them alike"


_PLAIN_NUMBER = re.compile(r"[+-]?[0-9]+(?:\.0*)?")
"""A patient id that reads as a whole number: ``7``, ``007``, ``7.0`` (Excel's slips)."""


def patient_twin(
    patient: str, where: str, seen: dict[str, tuple[str, str]]
) -> tuple[str, str, str] | None:
    """``(first spelling, where it was, how they differ)`` where ``patient`` is an id seen
    before spelled otherwise (``P1``/``p1``, ``007``/``7``/``7.0``), else None; ``seen``
    keeps each id's first spelling and ``where`` it was found.

    Taken as two patients, one patient's images were carved into train and test both, an
    inflated test score without a word. Exact for long numeric ids (float() rounds them)."""
    number = _PLAIN_NUMBER.fullmatch(patient)
    key = f"#{int(patient.split('.')[0])}" if number else normalised(patient)
    first, at = seen.setdefault(key, (patient, where))
    if first == patient:
        return None
    how = "leading zeros or a decimal point" if number else "case, spaces or Unicode form"
    return first, at, how
