"""The names of what the toolkit has: architectures, strategies, paper tasks, dataset sources.

A leaf module (no JAX, no data libraries): the registries take their names
from here (``models.ARCHS``, ``strategies.SPECS`` and ``data.tasks`` are
checked against it by the tests), and what only needs the names reads them
here, so that checking settings, loading a grid file and listing a dry run
take a fraction of a second.
"""

from __future__ import annotations

import re

ARCHS = ("resnet50", "densenet121", "vgg19")
"""The paper's architectures (``medft_jax.models.ARCHS`` builds them)."""
ARCHS_WITHOUT_BATCHNORM = frozenset({"vgg19", "vgg_tiny"})
"""Archs whose frozen layers are a function of the image under either ``--frozen-bn``: their
head-only epochs train from cached features in both modes (the run reads it off the
model's variables; the commands, which build none, from here)."""
TEST_ARCHS = ("resnet_tiny", "vgg_tiny")
"""Small stand-ins that run by name wherever an arch does but are offered to no user
(``medft_jax.models.TEST_ARCHS``): the fast test tier trains these."""
BLOCKS: dict[str, tuple[str, ...]] = {
    "resnet50": ("stem", "layer1", "layer2", "layer3", "layer4", "fc"),
    "resnet_tiny": ("stem", "layer1", "layer2", "layer3", "layer4", "fc"),
    "densenet121": (
        "stem",
        "denseblock1",
        "transition1",
        "denseblock2",
        "transition2",
        "denseblock3",
        "transition3",
        "denseblock4",
        "classifier",
    ),
    "vgg19": ("stage1", "stage2", "stage3", "stage4", "stage5", "classifier"),
    "vgg_tiny": ("stage1", "stage2", "stage3", "stage4", "stage5", "classifier"),
}
"""Each arch's blocks, first to last (``medft_jax.models.blocks.PARTITIONS`` defines them):
what ``--surgical-block`` names, checked with the other settings."""
HEAD_ALONE_BLOCK: dict[str, str] = {"resnet50": "fc", "resnet_tiny": "fc"}
"""Archs whose last block is the new head and nothing else (DenseNet's holds ``norm5``,
VGG's fc6 and fc7): surgical fine-tuning of that block is linear probing."""
PAPER_STRATEGIES = ("ft", "lp", "g_lf", "g_fl", "lp_ft", "l1_sp", "l2_sp", "auto_rgn")
"""The paper's eight strategies, in its order (``medft_jax.strategies.SPECS``)."""
EXTRA_STRATEGIES = ("surgical", "llrd", "bitfit")
"""Strategies beyond the paper's."""
STRATEGIES = PAPER_STRATEGIES + EXTRA_STRATEGIES
ARCH_LABELS = {
    "resnet50": "ResNet-50",
    "densenet121": "DenseNet-121",
    "vgg19": "VGG-19",
    "resnet_tiny": "ResNet (1 bottleneck per layer)",
    "vgg_tiny": "VGG-19 (8 channels, 64-wide classifier)",
}
"""How tables and figures name each arch (``models.ARCHS[a].label``, checked by the tests)."""
STRATEGY_LABELS = {
    "ft": "FT",
    "lp": "LP",
    "g_lf": "G-LF",
    "g_fl": "G-FL",
    "lp_ft": "LP-FT",
    "l1_sp": "L1-SP",
    "l2_sp": "L2-SP",
    "auto_rgn": "Auto-RGN",
    "surgical": "Surgical",
    "llrd": "LLRD",
    "bitfit": "BitFit",
}
"""How tables and figures name each strategy, the paper's labels (``strategies.LABELS``)."""
WEIGHTS_CHOICES = ("auto", "imagenet", "none")
"""``--weights`` values besides a model checkpoint folder
(``medft_jax.checkpoints.pretrained`` resolves them)."""
TASK_NAMES = (
    "chexpert",
    "mura_shoulder",
    "mura_wrist",
    "mura_humerus",
    "t1w_mri",
    "bach",
    "isic2020",
    "cholect50_instrument",
)
"""The paper's eight tasks, in the order of its Tables 3-10 (``medft_jax.data.tasks``)."""
LOCAL_KINDS = ("folder", "csv")
"""The user's own images: a class-per-folder tree, or a CSV of paths and labels."""
DEMO = "demo"
"""Synthetic images, no files: the default dataset."""


def is_known_arch(arch: str) -> bool:
    """Whether ``arch`` names an architecture that can be built (offered or test-only)."""
    return arch in ARCHS or arch in TEST_ARCHS


def dataset_names() -> list[str]:
    """Every dataset name or pattern ``medft_jax.data.load`` takes, for messages and checks."""
    return [DEMO, *TASK_NAMES, "medmnist/<flag>[@size]", *LOCAL_KINDS]


def dataset_name_error(name: object) -> str | None:
    """Why ``name`` names no dataset, or None: checked where a grid or flag names one, so
    that a typo (``demo@64``, ``medmnist/nosuch``) stops a dry run, not a sweep midway.

    A size is written as MedMNIST names it (``@64``, not ``@064``); ``@28``, the default,
    is accepted as runs before this check named it, and :func:`same_data` says it is
    the name without it.
    """
    if not isinstance(name, str):
        return f"must be a name (a string), got {name!r}"
    if name in (DEMO, *TASK_NAMES, *LOCAL_KINDS):
        return None
    from medft_jax.data.medmnist_info import FLAGS, FLAGS_3D, SIZES  # names and sizes only
    from medft_jax.errors import did_you_mean

    if name.startswith("medmnist/"):
        flag, at, size = name.removeprefix("medmnist/").partition("@")
        if flag.lower() in FLAGS_3D:
            return (
                f"{flag!r} is one of MedMNIST's 3D datasets (volumes), which the 2D models "
                f"here do not read; the 2D flags: {', '.join(sorted(FLAGS))}"
            )
        if flag not in FLAGS:
            return (
                f"unknown MedMNIST flag {flag!r}; known: {', '.join(sorted(FLAGS))}"
                + did_you_mean(flag, FLAGS)
            )
        sizes = [str(s) for s in SIZES]
        if at and size not in sizes:
            return f"size @{size} is not one of {', '.join(sizes)}"
        return None
    lower = name.lower()
    if lower == "medmnist":
        return (
            "MedMNIST is a collection: name one of its datasets, medmnist/<flag>[@size] "
            f"(medmnist/breastmnist, medmnist/pneumoniamnist@224); flags: {', '.join(FLAGS)}"
        )
    flag = lower.removeprefix("medmnist/").partition("@")[0]
    if flag in FLAGS:  # a bare flag, or the prefix in another case
        return f"unknown; did you mean medmnist/{lower.removeprefix('medmnist/')}?"
    known = f"unknown; known: {', '.join(dataset_names())}"
    if "/" in name or "\\" in name or name.startswith((".", "~")):  # a path, not a name
        return known + (
            f"; for your own images: --dataset folder --manual-dir {name} (or csv with --csv-file)"
        )
    starting = [n for n in TASK_NAMES if n.startswith(lower.replace("-", "_") + "_")]
    if len(starting) > 1:  # mura: close to none of its three by spelling
        return known + f"; did you mean one of {', '.join(starting)}?"
    return known + did_you_mean(name, (DEMO, *TASK_NAMES, *LOCAL_KINDS))


def lr_text(lr: float) -> str:
    """``0.001``, ``1e-05``, ``0.00012345678``: a learning rate in the fewest digits that
    read back as it (the CSVs' ``lr``), wherever one is printed: six significant digits
    made two LRs of a fine grid one, and a left-out LR match no ``lr`` in the CSV."""
    return repr(float(lr))


_RECORDED = re.compile(r"[A-Za-z0-9_.@/-]+")


def recorded_dataset_error(name: object) -> str | None:
    """Why a run record's ``dataset`` is none a run ever wrote, or None. Looser than
    :func:`dataset_name_error`: records of older runs spelt sizes otherwise
    (``medmnist/breastmnist@064``), and a dataset held in memory
    (:meth:`medft_jax.data.Dataset.from_arrays`) is named by its user. The name reaches
    the report's file names, Markdown, LaTeX and figure titles, so it is a name:
    letters, digits and ``_ . @ / -``."""
    if not isinstance(name, str):
        return f"must be a name (a string), got {name!r}"
    if not _RECORDED.fullmatch(name):
        return "is not a name (letters, digits and _ . @ / - only)"
    return None


def same_data(name: str) -> str:
    """``name`` as the data it names: ``medmnist/breastmnist@28`` is ``medmnist/breastmnist``
    (28 px is the default size), so a grid cannot list one dataset twice."""
    return name.removesuffix("@28") if name.startswith("medmnist/") else name


def dataset_base(name: str) -> str:
    """``medmnist`` of ``medmnist/breastmnist@64``: the part a name is checked by."""
    return name.split("/")[0].split("@")[0]
