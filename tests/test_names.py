"""The names module is the registries' one list, and what reads only names loads no JAX."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from medft_jax import data, models, names, strategies
from medft_jax.data import tasks

ROOT = Path(__file__).resolve().parents[1]


def test_the_registries_hold_exactly_the_names():
    assert tuple(models.ARCHS) == names.ARCHS
    assert tuple(models.TEST_ARCHS) == names.TEST_ARCHS
    assert strategies.PAPER_STRATEGIES == names.PAPER_STRATEGIES
    assert strategies.EXTRA_STRATEGIES == names.EXTRA_STRATEGIES
    assert tasks.TASK_NAMES is names.TASK_NAMES
    assert data.known_names() == names.dataset_names()
    assert names.dataset_base("medmnist/breastmnist@64") == "medmnist"
    every = [*models.ARCHS, *models.TEST_ARCHS]
    assert {a: models.get_arch(a).partition.names for a in every} == names.BLOCKS
    # The data package's lazy names: each listed once, each found in its module.
    assert sorted(data.__all__) == sorted(data._HOMES)
    assert all(getattr(data, name) is not None for name in data.__all__)


HEAVY = ("jax", "flax", "optax", "grain", "tensorflow", "orbax", "sklearn")


def _run_then_heavy(code: str) -> str:
    """Runs ``code`` in a fresh interpreter; its stdout, then the heavy libraries it loaded."""
    code += f"\nprint(sorted(m for m in {HEAVY!r} if m in __import__('sys').modules))\n"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return out.stdout.strip()


def test_a_grid_file_and_its_check_load_no_jax():
    """The paper grid loads and validates (1,728 runs) with no JAX, Flax or data library."""
    code = (
        "from medft_jax.grid import load_grid\n"
        f"g = load_grid({str(ROOT / 'experiments' / 'configs' / 'paper.py')!r})\n"
        "g.validate()\n"
        "print(len(g.configs()))\n"
    )
    assert _run_then_heavy(code).split("\n") == ["1728", "[]"]


@pytest.mark.slow
def test_a_report_loads_no_jax_nor_scikit_learn(tmp_path):
    """A report reads records and writes tables: JAX, grain and scikit-learn took ~3 s of
    a 4 s report, imported for the names of tasks, archs and strategies."""
    record = {
        "config": {"dataset": "bach", "arch": "resnet50", "strategy": "ft", "lr": 1e-4,
                   "seed": 0, "epochs": 50, "image_size": 224, "batch_size": 64,
                   "weights": "imagenet", "strategy_options": {}},
        "primary_metric": "accuracy", "multilabel": False,
        "val": {"accuracy": 0.5, "kappa": 0.5}, "test": {"accuracy": 0.5, "kappa": 0.2},
        "epochs": [{"images_per_s": 1.0, "seconds": 1.0}], "train_seconds": 1.0,
        "environment": {"device_count": 1},
    }  # fmt: skip
    code = (
        "from medft_jax import results\n"
        "from medft_jax.report import collect, write_report\n"
        f"record = {record!r}\n"
        "record['run'] = results.run_name(record['config'])\n"
        f"write_report(collect([record]), {str(tmp_path / 'report')!r})\n"
        "print('written')\n"
    )
    assert _run_then_heavy(code).split("\n") == ["written", "[]"]
    assert "ResNet-50" in (tmp_path / "report" / "index.md").read_text()


def test_the_labels_are_the_registries_labels():
    assert {a: models.get_arch(a).label for a in names.ARCH_LABELS} == names.ARCH_LABELS
    assert set(names.ARCH_LABELS) == {*names.ARCHS, *names.TEST_ARCHS}
    assert strategies.LABELS == names.STRATEGY_LABELS


def test_the_commands_help_loads_no_jax():
    """``--help`` of the run, sweep, select, report, prepare and predict commands prints in a
    fraction of a second: their modules load JAX (with the session, the data pipeline or the
    checkpoint) only once flags are checked."""
    code = (
        "import contextlib, io\n"
        "from experiments import predict, prepare, report, run, select, sweep\n"
        "for m in (run, sweep, select, report, prepare, predict):\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "        try:\n"
        "            m.main(['--help'])\n"
        "        except SystemExit as e:\n"
        "            assert e.code == 0, (m.__name__, e.code)\n"
        "    assert 'usage:' in out.getvalue(), m.__name__\n"
    )
    assert _run_then_heavy(code) == "[]"


def test_a_path_given_as_a_dataset_name_is_pointed_to_folder():
    """``--dataset /data/images`` listed the known names only; a path means the user's own
    images, which are ``--dataset folder --manual-dir PATH``."""
    from medft_jax.names import dataset_name_error

    hint = "; for your own images: --dataset folder --manual-dir {} (or csv with --csv-file)"
    for path in ("/data/images", "./imgs", "~/scans", "C:\\scans"):
        assert dataset_name_error(path).endswith(hint.format(path))
    for name in ("demo@64", "chexpertt"):
        assert "--manual-dir" not in dataset_name_error(name)
    assert dataset_name_error("medmnist/nosuch").startswith("unknown MedMNIST flag")
    # A 3D dataset is named as such, not taken for a typo of another dataset ("did you
    # mean organsmnist?", 2D slices of other scans).
    for flag in ("organmnist3d", "nodulemnist3d@64"):
        error = dataset_name_error(f"medmnist/{flag}")
        assert error.startswith(
            f"{flag.partition('@')[0]!r} is one of MedMNIST's 3D datasets (volumes), which the "
            "2D models here do not read; the 2D flags: bloodmnist, breastmnist, "
        )
        assert "did you mean" not in error


def test_a_misspelt_dataset_name_gets_the_name_it_is_near():
    """A newcomer's ``--dataset medmnist``, ``breastmnist``, ``MedMNIST/breastmnist`` (a case
    slip was taken for a path and pointed to ``--dataset folder``) and ``BACH`` each got the
    whole list and no word on which was meant."""
    from medft_jax.names import dataset_name_error

    assert dataset_name_error("medmnist").startswith(
        "MedMNIST is a collection: name one of its datasets, medmnist/<flag>[@size] "
        "(medmnist/breastmnist, medmnist/pneumoniamnist@224); flags: pathmnist, chestmnist, "
    )
    said = {
        "breastmnist": "unknown; did you mean medmnist/breastmnist?",
        "BreastMNIST@64": "unknown; did you mean medmnist/breastmnist@64?",
        "MedMNIST/breastmnist": "unknown; did you mean medmnist/breastmnist?",
    }
    for name, line in said.items():
        assert dataset_name_error(name) == line
    for name, near in (("BACH", "bach"), ("isic", "isic2020"), ("Folder", "folder")):
        assert dataset_name_error(name).endswith(f"csv; did you mean {near}?"), name
    assert dataset_name_error("medmnist/brestmnist").endswith("; did you mean breastmnist?")
    assert "did you mean" not in dataset_name_error("xray_set")
    # MURA's three tasks: "mura" is near none of them by spelling, and got no suggestion.
    for name in ("mura", "MURA"):
        assert dataset_name_error(name).endswith(
            "csv; did you mean one of mura_shoulder, mura_wrist, mura_humerus?"
        )


def test_did_you_mean_sees_case_and_dash_slips():
    """difflib alone scores ``G_LF`` against ``g_lf`` 0.5: no suggestion for a case slip."""
    from medft_jax.errors import did_you_mean

    strategies = ("ft", "lp", "g_lf", "g_fl", "lp_ft")
    assert did_you_mean("G_LF", strategies) == "; did you mean g_lf?"
    assert did_you_mean("g-fl", strategies) == "; did you mean g_fl?"
    assert did_you_mean("gl_f", strategies) == "; did you mean g_lf?"
    assert did_you_mean("LP-FT", strategies) == "; did you mean lp_ft?"
    assert did_you_mean("sgd", strategies) == ""
