"""Tiny fake copies of the official on-disk layouts of the paper's eight tasks.

Each ``make_*`` writes a few small images with the real file formats
(JPEG, PNG, TIFF, MATLAB v7.3/HDF5, the CholecT50 JSON) and the real CSV
headers under ``root``, and returns what the test needs to know (the truth
to check counts and labels against). Images are a few dozen pixels: the
tests resize to 36 and crop 32.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from medft_jax.data.builders.chexpert import HEADER as CHEXPERT_HEADER
from medft_jax.data.builders.cholect50 import VIDEOS as CHOLECT50_VIDEOS
from medft_jax.data.builders.isic2020 import HEADER as ISIC_HEADER


def image(seed: int, size: tuple[int, int] = (40, 48), mode: str = "RGB") -> Image.Image:
    """A small random image (width, height) = ``size``; same seed, same pixels."""
    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)


def _write(path: Path, img: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def _csv(path: Path, header: list[str], rows: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in header})


def make_chexpert(root: Path, n_train: int = 12, n_valid: int = 4) -> dict:
    """``CheXpert-v1.0-small``: each training patient has a lateral view listed first,
    then two frontal studies; only the first frontal counts. Returns
    ``{"train": {patient: (raw labels)}, "valid": {...}}`` of the frontal images kept."""
    base = root / "CheXpert-v1.0-small"
    truth: dict[str, dict[str, tuple[str, ...]]] = {"train": {}, "valid": {}}
    cycle = ["1.0", "0.0", "-1.0", ""]
    seed = 0
    for split, n in (("train", n_train), ("valid", n_valid)):
        rows = []
        for p in range(1, n + 1):
            patient = f"patient{p:05d}" if split == "train" else f"patient{64540 + p:05d}"
            views = [
                ("study1", "view2_lateral.jpg", "Lateral"),
                ("study1", "view1_frontal.jpg", "Frontal"),
                ("study2", "view1_frontal.jpg", "Frontal"),
            ]
            for k, (study, view, fl) in enumerate(views):
                seed += 1
                rel = f"CheXpert-v1.0-small/{split}/{patient}/{study}/{view}"
                _write(root / rel, image(seed, mode="L"))
                raw = tuple(
                    cycle[(p + j + k) % 4] if split == "train" else cycle[(p + j) % 2]
                    for j in range(5)
                )
                row = {
                    "Path": rel,
                    "Sex": "Female",
                    "Age": 50,
                    "Frontal/Lateral": fl,
                    "AP/PA": "AP" if fl == "Frontal" else "",
                    "No Finding": "",
                }
                names = [
                    "Cardiomegaly",
                    "Edema",
                    "Consolidation",
                    "Atelectasis",
                    "Pleural Effusion",
                ]
                row.update(dict(zip(names, raw, strict=True)))
                rows.append(row)
                if k == 1:
                    truth[split][patient] = raw
        _csv(base / f"{split}.csv", CHEXPERT_HEADER, rows)
    return truth


def make_mura(
    root: Path,
    parts: tuple[str, ...] = ("XR_SHOULDER", "XR_WRIST", "XR_HUMERUS"),
    n_train_patients: int = 8,
    n_valid_patients: int = 3,
) -> dict:
    """``MURA-v1.1``: per part, patients with 1-2 studies of 1-3 PNG images.
    train_labeled_studies.csv has no header, valid's has one (both occur).
    Returns ``{(split, part): {study_dir: label}}`` and the image count."""
    base = root / "MURA-v1.1"
    truth: dict = {}
    seed = 1000
    for split, n_pat in (("train", n_train_patients), ("valid", n_valid_patients)):
        paths, studies = [], []
        for part in parts:
            studies_of_part = {}
            for p in range(1, n_pat + 1):
                patient = f"patient{p + (0 if split == 'train' else 11000):05d}"
                for s in range(1, 1 + 1 + p % 2):
                    label = (p + s) % 2
                    study = (
                        f"MURA-v1.1/{split}/{part}/{patient}/"
                        f"study{s}_{'positive' if label else 'negative'}"
                    )
                    studies_of_part[study] = label
                    studies.append(f"{study}/,{label}")
                    for k in range(1, 1 + 1 + (p + s) % 3):
                        seed += 1
                        rel = f"{study}/image{k}.png"
                        _write(root / rel, image(seed, (36 + k, 40), mode="L"))
                        paths.append(rel)
            truth[(split, part)] = studies_of_part
        (base / f"{split}_image_paths.csv").write_text("\n".join(paths) + "\n")
        header = "study_dir,label\n" if split == "valid" else ""
        (base / f"{split}_labeled_studies.csv").write_text(header + "\n".join(studies) + "\n")
    return truth


def write_mat(path: Path, pixels: np.ndarray, label: int, pid: str) -> None:
    """A MATLAB v7.3 (HDF5) file shaped like figshare 1512427's: column-major ``cjdata``."""
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        g = f.create_group("cjdata")
        g["image"] = pixels.T  # MATLAB writes column-major: h5py sees the transpose
        g["label"] = np.array([[float(label)]])
        if pid:
            g["PID"] = np.array([[ord(c)] for c in pid], dtype=np.uint16)
        else:  # MATLAB's empty char array: its dimensions, marked empty
            g["PID"] = np.array([0, 0], dtype=np.uint64)
            g["PID"].attrs["MATLAB_empty"] = np.uint8(1)
        g["tumorMask"] = np.zeros_like(pixels, dtype=np.uint8).T
        g["tumorBorder"] = np.zeros((1, 4))


def make_t1w_mri(
    root: Path, n_patients: int = 12, per_patient: int = 3, cvind_size: int | None = None
) -> dict:
    """``N.mat`` files in two part folders + ``cvind.mat``; label = patient % 3 + 1.
    ``cvind.mat`` holds a fold id per file, or ``cvind_size`` ids (3064: the official
    release's, which makes the copy claim to be the release).
    Returns ``{file name: (label 1..3, pid, pixels)}``."""
    truth = {}
    n = 0
    for p in range(n_patients):
        pid = f"{100000 + p}"
        for _ in range(per_patient):
            n += 1
            rng = np.random.default_rng(n)
            h, w = (40, 40) if n % 4 else (36, 44)
            pixels = rng.integers(-50, 1200, (h, w)).astype(np.int16)
            label = p % 3 + 1
            part = "brainTumorDataPublic_1-766" if n % 2 else "brainTumorDataPublic_767-1532"
            write_mat(root / part / f"{n}.mat", pixels, label, pid)
            truth[f"{n}.mat"] = (label, pid, pixels)
    import h5py

    with h5py.File(root / "cvind.mat", "w") as f:
        f["cvind"] = np.arange(cvind_size or n, dtype=np.float64)[None] % 5 + 1
    return truth


def make_bach(root: Path, per_class: int = 10, ground_truth: bool = False) -> dict:
    """``ICIAR2018_BACH_Challenge/Photos/<class>/*.tif`` RGB TIFFs; with ``ground_truth``
    also the release's ``Photos/microscopy_ground_truth.csv`` (``n001.tif,Normal``), which
    makes the copy claim to be the release (100 per class)."""
    photos = root / "ICIAR2018_BACH_Challenge" / "Photos"
    truth = {}
    prefix = {"Normal": "n", "Benign": "b", "InSitu": "is", "Invasive": "iv"}
    for c, (cls, pre) in enumerate(prefix.items()):
        for i in range(1, per_class + 1):
            rel = f"Photos/{cls}/{pre}{i:03d}.tif"
            _write(photos.parent / rel, image(2000 + 100 * c + i, (48, 36)))
            truth[rel] = c
    if ground_truth:
        names = list(prefix)
        lines = [f"{rel.rsplit('/', 1)[1]},{names[c]}" for rel, c in truth.items()]
        (photos / "microscopy_ground_truth.csv").write_text("\n".join(lines) + "\n")
    return truth


def make_isic2020(root: Path, n_patients: int = 20, per_patient: int = 2) -> dict:
    """``train.csv`` + ``jpeg/train/*.jpg`` + the duplicate list (2 pairs).
    Patients 0 to 3 are malignant (every image), the rest benign."""
    rows, truth = [], {}
    n = 0
    for p in range(n_patients):
        for _ in range(per_patient):
            n += 1
            name = f"ISIC_{n:07d}"
            target = 1 if p < 4 else 0
            _write(root / "jpeg" / "train" / f"{name}.jpg", image(3000 + n, (44, 40)))
            rows.append(
                {
                    "image_name": name,
                    "patient_id": f"IP_{p:07d}",
                    "sex": "male",
                    "age_approx": 45,
                    "anatom_site_general_challenge": "torso",
                    "diagnosis": "melanoma" if target else "nevus",
                    "benign_malignant": "malignant" if target else "benign",
                    "target": target,
                }
            )
            truth[name] = (target, f"IP_{p:07d}")
    _csv(root / "train.csv", ISIC_HEADER, rows)
    duplicates = [("ISIC_0000005", "ISIC_0000006"), ("ISIC_0000011", "ISIC_0000012")]
    _csv(
        root / "ISIC_2020_Training_Duplicates.csv",
        ["image_name_1", "image_name_2"],
        [{"image_name_1": a, "image_name_2": b} for a, b in duplicates],
    )
    for _, b in duplicates:
        truth.pop(b, None)
    return truth


def make_cholect50(
    root: Path, videos: tuple[int, ...] = (1, 2, 8, 6), frames: int = 25, complete: bool = True
) -> dict:
    """``videos/VIDxx/NNNNNN.png`` at "1 fps" + ``labels/VIDxx.json``.
    Frame f holds instruments {(f // 10) % 6, (f // 10 + 3) % 6} (plus one null triplet): the
    subsampled frames 0, 10, 20 of a video hold every instrument, as a training split must.
    ``videos`` get ``frames`` frames each; with ``complete`` every other official video is
    there too with its frame 0 alone (instruments {0, 3}), as the builder needs all 50.
    Returns ``{frame id string: multi-hot}`` of the subsampled frames."""
    counts = {v: frames for v in videos}
    if complete:
        for v in sorted(v for split in CHOLECT50_VIDEOS.values() for v in split):
            counts.setdefault(v, 1)
    truth = {}
    for v, n in counts.items():
        name = f"VID{v:02d}"
        annotations = {}
        for f in range(n):
            _write(root / "videos" / name / f"{f:06d}.png", image(4000 + 100 * v + f, (40, 32)))
            instruments = {(f // 10) % 6, (f // 10 + 3) % 6}
            vectors = [[i * 10, i] + [0] * 13 for i in sorted(instruments)]
            vectors.append([-1] * 15)
            annotations[str(f)] = vectors
            if f % 10 == 0:
                truth[f"videos/{name}/{f:06d}.png"] = tuple(
                    1.0 if i in instruments else 0.0 for i in range(6)
                )
        (root / "labels").mkdir(parents=True, exist_ok=True)
        (root / "labels" / f"{name}.json").write_text(
            json.dumps({"video": v, "annotations": annotations, "categories": {}})
        )
    return truth
