"""CholecT50 instrument presence (Nwoye et al. 2022): 6 multilabel surgical instruments.

Layout: ``videos/VIDxx/000000.png`` (frames at 1 fps) + ``labels/VIDxx.json``
whose ``annotations`` map a frame id to a list of 15-value vectors, one per
action triplet, value [1] the instrument id (-1: none). A frame's label is
the multi-hot set of its instruments (two keys naming one frame, ``10`` and
``010``, and any key written twice in one object, are refused). Frames are subsampled to 6 a minute
(every 10th frame id); such a frame of ``videos/VIDxx/`` without an annotation
key is refused (a lost key). Splits follow the official video lists of the
CholecT50 release (Nwoye & Padoy 2022, "cholect50" split: 35 train, 5 val,
10 test videos), so ``seed`` and ``val_fraction`` are not used here.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from pathlib import Path

from medft_jax.data.builders.base import MedicalBuilder, MedicalConfig, Task
from medft_jax.data.errors import DataError
from medft_jax.data.examples import Example
from medft_jax.data.paths import safe_join, scan_files
from medft_jax.errors import json_loads

CLASS_NAMES = ("grasper", "bipolar", "hook", "scissors", "clipper", "irrigator")
VIDEOS = {
    "test": (6, 51, 10, 73, 14, 74, 32, 80, 42, 111),
    "val": (8, 12, 29, 50, 78),
    "train": (
        1, 15, 26, 40, 52, 65, 79, 2, 18, 27, 43, 56, 66, 92, 4, 22, 31, 47, 57, 68, 96,
        5, 23, 35, 48, 60, 70, 103, 13, 25, 36, 49, 62, 75, 110,
    ),
}  # fmt: skip
FRAME_STRIDE = 10  # 1 fps -> 6 frames a minute
VECTOR_LENGTH = 15


def find_root(manual_dir: Path) -> Path:
    for candidate in (manual_dir, manual_dir / "CholecT50"):
        if (candidate / "labels").is_dir() and (candidate / "videos").is_dir():
            return candidate
    raise DataError(f"{manual_dir}: no labels/ and videos/ folders; expected {LAYOUT}")


def split_of(video: int, path: Path) -> str:
    for split, videos in VIDEOS.items():
        if video in videos:
            return split
    raise DataError(f"{path}: VID{video:02d} is not one of CholecT50's 50 videos")


def _unique_keys(path: Path):
    """A ``json`` ``object_pairs_hook`` refusing a key written twice in any object of
    ``path`` (two ``"annotations"``, one frame twice), naming it: ``json`` keeps the last
    value without a word, and a hand-merged file's first block would be lost."""

    def hook(pairs: list[tuple[str, object]]) -> dict[str, object]:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            key = next(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
            raise DataError(
                f"{path}: key {key!r} written twice in one JSON object; expected each key "
                "once (a hand-merged file? the last would win without a word)"
            )
        return obj

    return hook


def frame_labels(path: Path) -> dict[int, tuple[float, ...]]:
    """``{frame id: multi-hot instruments}`` of one ``labels/VIDxx.json``.

    Two keys naming one frame (``"10"`` and ``"010"``) are refused, and so is any key
    written twice in one object of the file (:func:`_unique_keys`): the last would win
    without a word, a hand-merged file's other label lost. A frame key must be ASCII
    digits (``"²"`` passes ``str.isdigit``, not ``int``).
    """
    try:
        # utf-8-sig: a BOM (a copy saved by a Windows editor) is read as the CSVs are.
        text = path.read_text(encoding="utf-8-sig")
        annotations = json_loads(text, object_pairs_hook=_unique_keys(path))["annotations"]
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    except (KeyError, TypeError):
        raise DataError(f"{path}: missing the 'annotations' field") from None
    if not isinstance(annotations, dict):
        raise DataError(
            f"{path}: 'annotations' is a JSON {type(annotations).__name__}, "
            "expected an object mapping frame ids to lists of vectors"
        )
    frames: dict[int, tuple[float, ...]] = {}
    keys: dict[int, str] = {}
    for key, vectors in annotations.items():
        if not re.fullmatch(r"[0-9]+", key) or not isinstance(vectors, list):
            raise DataError(f"{path}: frame {key!r}: expected a frame number and a list of vectors")
        frame = int(key)
        if frame in keys:
            raise DataError(
                f"{path}: frame {frame} listed twice (keys {keys[frame]!r} and {key!r}); "
                "expected one entry per frame"
            )
        keys[frame] = key
        frames[frame] = multi_hot(path, key, vectors)
    return frames


def multi_hot(path: Path, key: str, vectors: list) -> tuple[float, ...]:
    """The instruments of one frame's triplet vectors (value [1]; -1: none) as multi-hot."""
    hot = [0.0] * len(CLASS_NAMES)
    for vector in vectors:
        if not isinstance(vector, list) or len(vector) != VECTOR_LENGTH:
            raise DataError(
                f"{path}: frame {key}: expected {VECTOR_LENGTH}-value vectors, got {vector!r:.60}"
            )
        instrument = vector[1]
        if isinstance(instrument, bool) or not isinstance(instrument, int | float):
            raise DataError(f"{path}: frame {key}: instrument {instrument!r} is not a number")
        if not math.isfinite(instrument) or instrument != int(instrument):
            raise DataError(f"{path}: frame {key}: instrument {instrument!r} is not a whole id")
        instrument = int(instrument)
        if instrument == -1:
            continue
        if not 0 <= instrument < len(CLASS_NAMES):
            raise DataError(
                f"{path}: frame {key}: instrument {instrument} outside the class list "
                f"0..{len(CLASS_NAMES) - 1} ({', '.join(CLASS_NAMES)})"
            )
        hot[instrument] = 1.0
    return tuple(hot)


def parse(manual_dir: Path, config: MedicalConfig) -> dict[str, list[Example]]:
    root = find_root(manual_dir)
    splits: dict[str, list[Example]] = {"train": [], "val": [], "test": []}
    label_files = [
        p
        for p in scan_files(manual_dir, root / "labels", (".json",), recursive=False)
        if p.name.startswith("VID")
    ]
    if not label_files:
        raise DataError(f"{root / 'labels'}: no VIDxx.json files; expected {LAYOUT}")
    # The label files index the frames: a video whose file is missing would drop out
    # of its split (the official test set among them) without a word.
    labelled = {p.stem for p in label_files}
    for video in sorted((root / "videos").iterdir()):
        if video.is_dir() and video.name.startswith("VID") and video.name not in labelled:
            raise DataError(
                f"{video}: frames without labels/{video.name}.json; a partial copy? "
                f"expected {LAYOUT}"
            )
    numbers: dict[int, Path] = {}
    for label_file in label_files:
        video = label_file.stem
        if not re.fullmatch(r"VID[0-9]+", video):  # int() took 'VID+6', 'VID1_0', 'VID٦'
            raise DataError(f"{label_file}: expected a name like VID01.json")
        number = int(video[3:])
        if number in numbers:  # VID6.json beside VID06.json: one video's frames twice
            raise DataError(
                f"{label_file} and {numbers[number]} name one video (VID{number:02d}); "
                "expected one labels file a video"
            )
        numbers[number] = label_file
        split = split_of(number, label_file)
        labels = frame_labels(label_file)
        refuse_unlabelled_frames(root / "videos" / video, label_file, labels)
        for frame, label in sorted(labels.items()):
            if frame % FRAME_STRIDE:
                continue
            rel = f"videos/{video}/{frame:06d}.png"
            path = safe_join(root, rel, source=str(label_file))
            splits[split].append(Example(path, label, rel, patient=video))
    refuse_missing_videos(root, {int(p.stem[3:]) for p in label_files})
    return splits


def refuse_unlabelled_frames(video_dir: Path, label_file: Path, labels: dict) -> None:
    """Refuse a subsampled frame (every ``FRAME_STRIDE``-th id) in ``video_dir`` without an
    annotation key in ``label_file``, naming the first and counting them: the labels index
    the frames, so a lost key dropped the frame (of the official test set, perhaps) without a
    word. A listing of the folder's names: no frame is read."""
    if not video_dir.is_dir():
        return  # the listed frames' absence is named when they are read
    with os.scandir(video_dir) as entries:
        unlabelled = sorted(
            e.name
            for e in entries
            if re.fullmatch(r"[0-9]+\.png", e.name, re.IGNORECASE)
            and int(e.name[:-4]) % FRAME_STRIDE == 0
            and int(e.name[:-4]) not in labels
        )
    if unlabelled:
        raise DataError(
            f"{video_dir}: frame {unlabelled[0]!r} has no annotation in {label_file.name} "
            f"({len(unlabelled)} such frame(s) of every {FRAME_STRIDE}th); expected a key for "
            "each subsampled frame (a lost key? a partial copy of the labels?)"
        )


def refuse_missing_videos(root: Path, present: set[int]) -> None:
    """Refuse a copy without every official video, naming the missing ones by split.

    The splits are fixed lists of videos, so a video absent from the copy (a partial
    download, the 45-video CholecT45 release) leaves its split smaller, and a test
    split so reduced is no longer the paper's test set, without a word."""
    missing = {
        split: [f"VID{v:02d}" for v in sorted(videos) if v not in present]
        for split, videos in VIDEOS.items()
    }
    if any(missing.values()):
        total = sum(len(v) for v in VIDEOS.values())
        named = "; ".join(f"{split}: {', '.join(ids)}" for split, ids in missing.items() if ids)
        raise DataError(
            f"{root / 'labels'}: {len(present)} of CholecT50's {total} official videos; "
            f"missing {named}. The official splits need every video (a partial copy, "
            "or the 45-video CholecT45 release?)"
        )


LAYOUT = (
    "videos/VIDxx/NNNNNN.png and labels/VIDxx.json (CholecT50, "
    "https://github.com/CAMMA-public/cholect50)"
)
TASK = Task(
    name="cholect50_instrument",
    class_names=CLASS_NAMES,
    parse=parse,
    layout=LAYOUT,
    multilabel=True,
)


class Cholect50Instrument(MedicalBuilder, skip_registration=True):
    """TFDS builder of CholecT50 instrument presence (official test videos)."""

    name = "medft_cholect50_instrument"
    TASK = TASK
    MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT
