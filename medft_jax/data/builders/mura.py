"""MURA (Rajpurkar et al. 2017): normal/abnormal musculoskeletal radiograph studies.

Layout: ``MURA-v1.1/{train,valid}_image_paths.csv`` (one image path a line)
and ``MURA-v1.1/{train,valid}_labeled_studies.csv`` (``study_dir,label``;
some copies have a header line, both are accepted: only the first line may be
one, and only when it does not look like a path (no backslash, no image
suffix); paths written ``./MURA-v1.1/...`` are normalised, one with a ``..`` part
refused) + the PNGs. Every labelled study of the body part must list at least one
image, as in the release (a listing cut short is refused), and every image in a listed
study's folder must be listed (a lost line is refused). One task per
body part (shoulder, wrist, humerus). Samples are studies: every image is
an example carrying its study's label and its study as evaluation group,
and a study's probability is the mean over its images. The official
``valid`` is ``test``; ``val`` is carved from training patients.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from medft_jax.data.builders.base import MedicalBuilder, MedicalConfig, Task, refuse_two_copies
from medft_jax.data.errors import DataError
from medft_jax.data.examples import Example, standard_splits
from medft_jax.data.images import IMAGE_SUFFIXES
from medft_jax.data.paths import listed_path, safe_join
from medft_jax.data.table import read_text, refuse_listed_again

CLASS_NAMES = ("normal", "abnormal")
BODY_PARTS = {"shoulder": "XR_SHOULDER", "wrist": "XR_WRIST", "humerus": "XR_HUMERUS"}
FOLDER = "MURA-v1.1"


def find_root(manual_dir: Path) -> Path:
    """The folder holding the listings: ``MURA-v1.1`` inside ``manual_dir``, or
    ``manual_dir`` itself, whatever it is called or however reached."""
    if (manual_dir / FOLDER / "train_image_paths.csv").is_file():
        if (manual_dir / "train_image_paths.csv").is_file():  # which one? not ours to guess
            refuse_two_copies(manual_dir / FOLDER, manual_dir, "train_image_paths.csv")
        return manual_dir / FOLDER
    if (manual_dir / "train_image_paths.csv").is_file():
        return manual_dir
    raise DataError(f"{manual_dir}: no {FOLDER}/train_image_paths.csv; expected {LAYOUT}")


def image_path(folder: Path, rel: str, where: str) -> Path:
    """The image a listing names, inside ``folder`` (the one holding the listing).

    The listings' paths start with ``MURA-v1.1/``. That prefix is the folder found,
    so it is dropped and the rest joined to ``folder`` itself: joined to its parent,
    a folder given as ``.``, through a symlink or renamed would read nothing, or a
    sibling copy named ``MURA-v1.1``.
    """
    first, _, rest = rel.partition("/")
    return safe_join(folder, rest if first == FOLDER and rest else rel, source=where)


def _lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, text)`` of the non-blank lines (UTF-8, no NUL: checked by read_text)."""
    if not path.is_file():
        raise DataError(f"{path} not found; expected {LAYOUT}")
    text = read_text(path)
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _fields(line: str) -> list[str]:
    """A listing line's CSV fields: quotes as pandas or a spreadsheet write them
    (``"MURA-v1.1/train/.../study1_negative/",0``) stripped, as the release has none;
    without them the study was "not in train_labeled_studies.csv" though it is."""
    return [f.strip() for f in next(csv.reader([line]))] or [""]


def read_studies(path: Path) -> dict[str, int]:
    """``{study_dir (no trailing /): label}`` from a ``*_labeled_studies.csv``: its last two
    fields (a leading index column, as pandas writes one, is left out)."""
    studies = {}
    for k, (n, line) in enumerate(_lines(path)):
        fields = _fields(line)
        study, label = (fields[-2], fields[-1]) if len(fields) > 1 else ("", fields[0])
        if k == 0 and label.strip() not in ("0", "1") and "/" not in study:
            continue  # header line, e.g. "study_dir,label"
        if label.strip() not in ("0", "1"):
            raise DataError(
                f"{path}:{n}: label {label.strip()!r} outside the class list 0 (normal), "
                "1 (abnormal); expected lines 'study_dir,label'"
            )
        key = listed_path(study.strip(), source=f"{path}:{n}")  # no trailing '/'; no './'
        if key in studies and studies[key] != int(label):  # which one holds? not ours to guess
            raise DataError(
                f"{path}:{n}: study {key!r} listed again with label {label.strip()} (before: "
                f"{studies[key]}); expected one label per study"
            )
        studies[key] = int(label)
    return studies


FOLDER_LABELS = {"positive": 1, "negative": 0}
"""The label a study's folder name states (``study1_positive``): the release's labels CSV
must agree with it."""


def read_split(folder: Path, split: str, part: str) -> list[Example]:
    """The images of body part ``part`` in ``split`` with their study labels."""
    studies = read_studies(folder / f"{split}_labeled_studies.csv")
    paths_csv = folder / f"{split}_image_paths.csv"
    examples, first = [], {}
    for k, (n, line) in enumerate(_lines(paths_csv)):
        rel = _fields(line)[-1]  # the path: after an index column, without quotes
        if "/" not in rel or "\\" in rel:  # the release writes '/' only: a mixed line's
            if k == 0 and not _looks_like_a_path(rel):  # part went unseen, its image gone
                continue  # header line, e.g. "image_path"
            _refuse_not_a_path(f"{paths_csv}:{n}", rel, split, part)
        where = f"{paths_csv}:{n}"
        rel = listed_path(rel, source=where)
        refuse_listed_again(first, rel, paths_csv, n, "image")
        parts = rel.split("/")
        if part not in parts:
            continue
        study = rel.rsplit("/", 1)[0]
        if study not in studies:
            raise DataError(f"{where}: study {study!r} is not in {split}_labeled_studies.csv")
        named = FOLDER_LABELS.get(study.rsplit("_", 1)[-1])  # study1_positive: 1
        if named is not None and named != studies[study]:
            raise DataError(
                f"{folder / f'{split}_labeled_studies.csv'}: study {study!r} is labelled "
                f"{studies[study]}, its folder name says {named}; expected the release's "
                "labels (one of the two was edited)"
            )
        patient = next((p for p in parts if p.startswith("patient")), study)
        path = image_path(folder, rel, where)
        examples.append(Example(path, studies[study], rel, patient=patient, group=study))
    if not examples:
        raise DataError(
            f"{paths_csv}: lists no {part} images (expected lines like "
            f"MURA-v1.1/{split}/{part}/patient00001/study1_positive/image1.png)"
        )
    _refuse_studies_without_images(paths_csv, split, part, studies, examples)
    _refuse_unlisted_studies(split, examples)
    _refuse_unlisted_images(paths_csv, examples)
    return examples


def _refuse_unlisted_studies(split: str, examples: list[Example]) -> None:
    """Refuse a study folder (``patientN/studyM_*``) of the body part's folder that neither
    listing names, naming the first and counting them: both listings cut short alike (or
    a hand-edited pair) dropped the study, of the official test set for ``valid``, without
    a word. Folder names only: nothing is read."""
    listed = {ex.path.parent for ex in examples}
    unlisted: list[Path] = []
    for part_dir in sorted({study.parent.parent for study in listed}):
        with os.scandir(part_dir) as patients:
            for patient in sorted(e.path for e in patients if e.name.startswith("patient")):
                if not os.path.isdir(patient):
                    continue
                with os.scandir(patient) as studies:
                    unlisted += sorted(
                        Path(e.path)
                        for e in studies
                        if e.name.startswith("study") and e.is_dir() and Path(e.path) not in listed
                    )
    if unlisted:
        raise DataError(
            f"{unlisted[0].parent}: study folder {unlisted[0].name!r} is in neither "
            f"{split}_labeled_studies.csv nor {split}_image_paths.csv ({len(unlisted)} such "
            "folder(s)); expected the listings to name every study (lost lines? partial "
            "copies of the listings?)"
        )


def _refuse_unlisted_images(paths_csv: Path, examples: list[Example]) -> None:
    """Refuse an image file in a listed study's folder that the listing does not name,
    naming the first and counting them: a lost line dropped the image, and the study's
    score (the mean over its images) changed, without a word. Only the listed studies'
    folders are listed (names, nothing read)."""
    listed: dict[Path, set[str]] = {}
    for ex in examples:
        listed.setdefault(ex.path.parent, set()).add(ex.path.name)
    unlisted: list[Path] = []
    for study, names in listed.items():
        if not study.is_dir():
            continue  # the listed images' absence is named when they are read
        with os.scandir(study) as entries:
            unlisted += sorted(
                study / e.name
                for e in entries
                if not e.name.startswith(".")
                and e.name.lower().endswith(IMAGE_SUFFIXES)
                and e.name not in names
            )
    if unlisted:
        raise DataError(
            f"{unlisted[0].parent}: image {unlisted[0].name!r} is not in {paths_csv.name} "
            f"({len(unlisted)} such image(s) in the listed studies); expected the listing to "
            "name every image of its studies (a lost line? a partial copy of the listing?)"
        )


def _looks_like_a_path(line: str) -> bool:
    """Whether a listing's line without '/' is a path all the same (written with
    backslashes, or naming an image file), so not a header such as ``image_path``."""
    return "\\" in line or line.lower().endswith(IMAGE_SUFFIXES)


def _refuse_not_a_path(where: str, rel: str, split: str, part: str) -> None:
    """Refuse a listing line without '/', or with a backslash, that is not the first
    line's header: only the first may be one, and only when it does not look like a path
    (see :func:`_looks_like_a_path`); any other such line was an image left out without a
    word (a line written with backslashes by a Windows tool, in part or whole, the first
    one included)."""
    hint = "; it uses backslashes, expected '/'" if "\\" in rel else ""
    raise DataError(
        f"{where}: {rel!r} is not an image path{hint} (only the first line may be a header); "
        f"expected a line like MURA-v1.1/{split}/{part}/patient00001/study1_positive/image1.png"
    )


def _refuse_studies_without_images(
    paths_csv: Path, split: str, part: str, studies: dict[str, int], examples: list[Example]
) -> None:
    """Refuse a labelled study of the body part with no listed image: in the release each
    has at least one, so a listing cut short (a download, a copy) is the likely cause, and
    the study (of the official test set, for ``valid``) would be gone without a word."""
    seen = {ex.group for ex in examples}
    unlisted = [s for s in studies if part in s.split("/") and s not in seen]
    if unlisted:
        raise DataError(
            f"{paths_csv}: study {unlisted[0]!r} is labelled in {split}_labeled_studies.csv but "
            f"lists no image; {len(unlisted)} such {part} studies (a cut-short listing?)"
        )


def make_parse(part: str):
    def parse(manual_dir: Path, config: MedicalConfig) -> dict[str, list[Example]]:
        folder = find_root(manual_dir)
        train = read_split(folder, "train", BODY_PARTS[part])
        test = read_split(folder, "valid", BODY_PARTS[part])
        return standard_splits(
            train,
            test,
            val_fraction=config.val_fraction,
            seed=config.seed,
            stratify=True,
            class_names=CLASS_NAMES,
        )

    return parse


LAYOUT = (
    "MURA-v1.1/{train,valid}_image_paths.csv, MURA-v1.1/{train,valid}_labeled_studies.csv and "
    "MURA-v1.1/{train,valid}/XR_<PART>/patientN/studyM_{positive,negative}/imageK.png "
    "(https://stanfordmlgroup.github.io/competitions/mura/)"
)


def _task(part: str) -> Task:
    return Task(
        name=f"mura_{part}",
        class_names=CLASS_NAMES,
        parse=make_parse(part),
        layout=LAYOUT,
        eval_grouping="study",
    )


class MuraShoulder(MedicalBuilder, skip_registration=True):
    """TFDS builder of MURA-Shoulder (study-level evaluation)."""

    name = "medft_mura_shoulder"
    TASK = _task("shoulder")
    MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT


class MuraWrist(MedicalBuilder, skip_registration=True):
    """TFDS builder of MURA-Wrist (study-level evaluation)."""

    name = "medft_mura_wrist"
    TASK = _task("wrist")
    MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT


class MuraHumerus(MedicalBuilder, skip_registration=True):
    """TFDS builder of MURA-Humerus (study-level evaluation)."""

    name = "medft_mura_humerus"
    TASK = _task("humerus")
    MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT
