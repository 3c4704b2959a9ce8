"""Sweeps: the grid, filters and shards by hand; real shards in parallel; kill and restart."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from experiments import report as report_cli
from experiments import select as select_cli
from experiments import sweep as sweep_cli
from medft_jax import grid as grid_lib
from medft_jax import locks, plans, results
from medft_jax.checkpoints.run import RunCheckpoints
from medft_jax.session import Session

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "experiments" / "configs" / "paper.py"
QUICK = ROOT / "experiments" / "configs" / "quick.py"

TINY = """
from medft_jax.grid import Grid

def get_config():
    return Grid(
        name="tiny",
        datasets=("demo",),
        archs=("resnet_tiny",),
        strategies={strategies},
        lrs={lrs},
        seeds={seeds},
        settings={{"weights": "none", "epochs": {epochs}, "patience": 5, "batch_size": 32,
                   "image_size": 32}},
    )
"""


def _grid_file(folder: Path, name: str, **axes) -> Path:
    path = folder / f"{name}.py"
    path.write_text(TINY.format(**{k: repr(v) for k, v in axes.items()}))
    return path


def _sweep(config: Path, out: Path, *flags: str) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}  # the session's compilation cache
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "experiments.sweep",
            "--config",
            str(config),
            "--out",
            str(out),
            *flags,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _identified(configs) -> list:
    """The grid's configs as the sweep runs them: with data and weights fingerprints."""
    from medft_jax import fit

    data = {}
    out = []
    for c in configs:
        key = (c.dataset, c.arch, c.image_size, c.data_seed)
        if key not in data:
            data[key] = fit.load_dataset(c)
        out.append(fit.identify(c, data[key]))
    return out


def _ran(log: str) -> list[str]:
    """Run names a sweep's log says it trained."""
    return [line.split("] ")[1].split(":")[0] for line in log.splitlines() if ": done in" in line]


# --- the grid by hand ----------------------------------------------------------------------------


def test_paper_grid_is_the_papers_1728_runs():
    g = grid_lib.load_grid(PAPER)
    runs = g.configs()
    assert len(runs) == g.size == 8 * 3 * 8 * 3 * 3 == 1728
    assert len({results.run_name(r.to_dict()) for r in runs}) == 1728
    first, second, last = runs[0], runs[1], runs[-1]
    assert (first.dataset, first.arch, first.strategy, first.lr, first.seed) == (
        "chexpert",
        "resnet50",
        "ft",
        1e-3,
        0,
    )
    assert second.seed == 1 and second.lr == 1e-3  # the seed varies fastest
    assert (last.dataset, last.arch, last.strategy, last.lr, last.seed) == (
        "cholect50_instrument",
        "vgg19",
        "auto_rgn",
        1e-5,
        2,
    )
    assert {(r.epochs, r.batch_size, r.image_size, r.patience) for r in runs} == {(50, 64, 224, 5)}


def test_only_filters():
    g = grid_lib.load_grid(PAPER)
    runs = grid_lib.select(g, grid_lib.parse_only(["dataset=bach,arch=vgg19"]))
    assert len(runs) == 8 * 3 * 3
    assert {(r.dataset, r.arch) for r in runs} == {("bach", "vgg19")}
    runs = grid_lib.select(g, grid_lib.parse_only(["strategy=ft|lp", "lr=0.0001", "seed=2"]))
    assert len(runs) == 8 * 3 * 2 and {(r.lr, r.seed) for r in runs} == {(1e-4, 2)}
    assert grid_lib.parse_only(["strategy=ft|lp", "strategy=lp|g_lf"]) == {"strategy": {"lp"}}
    # A bare first part of a second --only is no second value of the first's key.
    with pytest.raises(grid_lib.GridError, match=r"^--only 'bitfit': expected key=value"):
        grid_lib.parse_only(["strategy=lp", "bitfit"])


@pytest.mark.parametrize(
    "spec, message",
    [
        ("color=red", "unknown key 'color'"),
        ("dataset", "expected key=value"),
        ("strategy=nope", "strategy=nope: not in grid 'paper'"),
        ("lr=fast", "lr=fast: not a number"),
        ("strategy=|", "--only 'strategy=|': an empty alternative; expected values between"),
        ("strategy=ft|", "--only 'strategy=ft|': an empty alternative"),  # lp left out?
        (  # several values of one key: |, not the comma between keys
            "strategy=lp,bitfit",
            "--only 'strategy=lp,bitfit': 'bitfit' is no key=value; several values of one key "
            "are written with |, e.g. strategy=lp|bitfit",
        ),
        ("lr=1e-3,3e-4", "e.g. lr=1e-3|3e-4"),
        ("dataset=bach,arch", "--only 'arch': expected key=value"),  # a key without its value
    ],
)
def test_bad_only_is_named(spec, message, capsys):
    assert sweep_cli.main(["--config", str(PAPER), "--only", spec, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith("error: --only")


@pytest.mark.parametrize(
    "specs, message",
    [
        (  # ANDed: nothing would run, exit 0 and no word
            ["strategy=ft", "strategy=lp"],
            "error: --only strategy=ft and strategy=lp: no strategy passes both (a key given "
            "twice keeps the values both allow); for either, write strategy=ft|lp",
        ),
        ([""], "error: --only '': expected key=value, e.g. dataset=bach"),  # not the whole grid
    ],
)
def test_only_that_selects_nothing_or_is_empty_is_refused(specs, message, capsys):
    argv = ["--config", str(PAPER), "--dry-run"]
    assert sweep_cli.main([*argv, *(x for spec in specs for x in ("--only", spec))]) == 2
    assert capsys.readouterr().err == message + "\n"


def test_a_grid_sets_the_data_seed_for_all_its_runs(tmp_path, capsys):
    config = _grid_file(tmp_path, "g", strategies=("lp",), lrs=(1e-3,), seeds=(0, 1), epochs=1)
    text = config.read_text().replace('"epochs": 1,', '"epochs": 1, "data_seed": 3,')
    config.write_text(text)
    assert {c.data_seed for c in grid_lib.load_grid(config).configs()} == {3}
    config.write_text(text.replace('"data_seed": 3', '"data_seed": -1'))
    assert sweep_cli.main(["--config", str(config), "--dry-run"]) == 2
    assert "settings['data_seed']" in capsys.readouterr().err


def test_float32_learning_rates_are_the_runs_of_their_decimals(tmp_path, capsys):
    """A grid file may write its lrs as float32 or np.logspace: held raw
    (0.0010000000474974513, 9.999999999999999e-06) they were runs of other names than the
    decimal's, a finished run listed "todo" and trained again; any spelling of the rate
    filters its runs."""
    config = tmp_path / "f32.py"
    config.write_text(
        "import numpy as np\nfrom medft_jax.grid import Grid\n"
        "def get_config():\n"
        "    return Grid(name='f32', datasets=('demo',), archs=('resnet_tiny',),\n"
        "                strategies=('ft',), lrs=tuple(np.array([1e-3, 1e-2], np.float32)),\n"
        "                seeds=(0,), settings={'epochs': 1})\n"
    )
    grid = grid_lib.load_grid(config)
    assert [c.lr for c in grid.configs()] == [0.001, 0.01]
    for spelt in (repr(float(np.float32(1e-3))), "0.001", "1e-3"):
        runs = grid_lib.select(grid, grid_lib.parse_only([f"lr={spelt}"]))
        assert [r.lr for r in runs] == [0.001]
    decimal = dataclasses.replace(grid, lrs=(1e-5, 1e-4, 1e-3))
    logspace = dataclasses.replace(grid, lrs=tuple(np.logspace(-5, -3, 3)))
    assert logspace.lrs[0] != 1e-5
    assert [results.run_name(c.to_dict()) for c in logspace.configs()] == [
        results.run_name(c.to_dict()) for c in decimal.configs()
    ]
    # A rate no short decimal names keeps its name (runs trained before stay found); one
    # outside float32's range is named as written by the range check.
    for raw in (1 / 3, 2**-13, float(np.logspace(-5, -4, 3)[1]), 1e-46, 1e39):
        assert grid_lib.run_lr(raw) == raw
    for raw, said in ((1e-46, "1e-46 is 0 in float32"), (1e39, r"got 1e\+39")):
        with pytest.raises(grid_lib.GridError, match=said):
            dataclasses.replace(grid, lrs=(raw,)).validate()
    # The command line's --lr names the run the grid's rate does.
    from experiments.run import _one_lr

    assert _one_lr("9.999999999999999e-06") == 1e-05 and _one_lr("3e-4") == 3e-4


def test_a_dry_run_into_a_file_is_the_sweeps_error_not_every_run_to_do(tmp_path, capsys):
    out = tmp_path / "afile"
    out.write_text("")
    assert sweep_cli.main(["--config", str(QUICK), "--out", str(out), "--dry-run"]) == 2
    assert capsys.readouterr().err == f"error: --out {out}: {out} is a file, expected a folder\n"


def test_a_grid_folder_dataset_without_its_folder_stops_the_dry_run(tmp_path, capsys):
    config = tmp_path / "f.py"
    config.write_text(
        "from medft_jax.grid import Grid\n"
        "def get_config():\n"
        "    return Grid(name='f', datasets=('folder',), archs=('resnet_tiny',),\n"
        "                strategies=('ft',), lrs=(1e-3,), seeds=(0,),\n"
        "                dataset_options={'folder': {'manual_dir': 'no/such/imgs'}})\n"
    )
    assert sweep_cli.main(["--config", str(config), "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith(
        f"error: --config {config}: grid 'f': dataset_options['folder']['manual_dir'] "
        "no/such/imgs: no such folder "
        "(a relative path is from where the command runs, "
    )


def test_a_grid_folder_or_csv_dataset_without_its_paths_stops_the_dry_run(tmp_path, capsys):
    """The sweep has no --manual-dir to follow the loader's advice with."""
    config = tmp_path / "c.py"
    config.write_text(
        "from medft_jax.grid import Grid\n"
        "def get_config():\n"
        "    return Grid(name='c', datasets=('csv',), archs=('resnet_tiny',),\n"
        f"                strategies=('ft',), lrs=(1e-3,), seeds=(0,),\n"
        f"                dataset_options={{'csv': {{'manual_dir': {str(tmp_path)!r}}}}})\n"
    )
    assert sweep_cli.main(["--config", str(config), "--dry-run"]) == 2
    assert capsys.readouterr().err == (
        f"error: --config {config}: grid 'c': dataset csv needs "
        "dataset_options['csv']['csv_file']\n"
    )
    # A CSV that is not there: named as the grid's field (it was "dataset csv: CSV file
    # not found", naming neither).
    text = config.read_text().replace("}}", ", 'csv_file': 'labels.csv'}}")
    config.write_text(text)
    assert sweep_cli.main(["--config", str(config), "--dry-run"]) == 2
    assert capsys.readouterr().err == (
        f"error: --config {config}: grid 'c': dataset_options['csv']['csv_file'] labels.csv: "
        "no such file, "
        f"expected the labels CSV (a relative path is from its manual_dir, {tmp_path})\n"
    )


def test_a_csv_grid_whose_listing_is_wrong_stops_the_dry_run(tmp_path, capsys):
    """A misspelt label column passed the dry run ("36 runs todo"); the sweep then left
    out every run of the dataset. The listing is read (nothing decoded) by the dry run."""
    from PIL import Image

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(40):  # a val split of both values of each column
        Image.new("RGB", (20, 20), (i, 0, 0)).save(imgs / f"{i}.png")
    (imgs / "labels.csv").write_text(
        "path,cat,dog\n" + "".join(f"{i}.png,{i % 2},{1 - i % 2}\n" for i in range(40))
    )
    for columns, code in ((["cat", "dgo"], 2), (["cat", "dog"], 0)):
        config = tmp_path / f"c{code}.py"
        config.write_text(
            "from medft_jax.grid import Grid\n"
            "def get_config():\n"
            "    return Grid(name='c', datasets=('csv',), archs=('resnet_tiny',),\n"
            "                strategies=('ft',), lrs=(1e-3,), seeds=(0,),\n"
            "                settings={'batch_size': 8},\n"
            f"                data_dir={str(tmp_path / 'data')!r},\n"
            f"                dataset_options={{'csv': {{'manual_dir': {str(imgs)!r}, "
            f"'csv_file': 'labels.csv', 'label_columns': {columns!r}, 'val_fraction': 0.3}}}})\n"
        )
        argv = ["--config", str(config), "--dry-run", "--out", str(tmp_path / "runs")]
        assert sweep_cli.main(argv) == code
        err = capsys.readouterr().err
        if code:
            assert err == (
                f"error: dataset csv: {imgs / 'labels.csv'}: missing column 'dgo'; expected the "
                "header path,cat,dgo (found path,cat,dog)\n"
            )
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


def test_a_folder_whose_val_split_lacks_a_class_stops_the_dry_run_and_the_sweep_once(
    tmp_path, capsys
):
    """Class 'c' of one image: no val example. The dry run said "to run 2"; the sweep then
    refused each run with the same data error (exit 1, one line per run of the grid)."""
    from PIL import Image

    imgs, config = _folder_grid(tmp_path, seeds=(0, 1))
    (imgs / "c").mkdir()
    Image.new("RGB", (20, 20), (9, 9, 9)).save(imgs / "c" / "0.png")
    out = tmp_path / "runs"
    refusal = (
        f"dataset folder: {imgs}: the val split (2 examples) has no example of class 'c', so "
        "its AUROC is undefined and the macro means would leave it out; it has 1 image "
        "across train, val and test, and each of those splits needs one image of it: no "
        "fraction gives that; add images of it, or drop the class"
    )
    assert sweep_cli.main(["--config", str(config), "--out", str(out), "--dry-run"]) == 2
    assert capsys.readouterr().err == f"error: {refusal}\n"
    assert sweep_cli.main(["--config", str(config), "--out", str(out)]) == 1
    captured = capsys.readouterr()
    said = captured.out + captured.err
    assert said.count("AUROC is undefined") == 2  # the skip line, and the closing summary
    assert "[1/2] dataset folder unavailable, its runs skipped" in said
    assert "[2/2]" not in said and not (tmp_path / "data").exists()


def test_select_uses_the_grids_first_seed_as_its_help_says(tmp_path):
    config = _grid_file(tmp_path, "g", strategies=("ft", "lp"), lrs=(1e-3,), seeds=(1, 0), epochs=2)
    args = select_cli.build_parser().parse_args(["--config", str(config)])
    _, arms, _ = select_cli._arms(args)
    assert {a.config.seed for a in arms} == {1} and len(arms) == 2


def test_a_typod_strategy_is_named_before_the_options_of_the_one_meant():
    """quick.py with "g-lf" for "g_lf": the error said its lp_ft options were for a
    strategy the grid does not run, and the typo surfaced only once they were removed."""
    with pytest.raises(grid_lib.GridError) as err:
        grid_lib.Grid(
            name="q",
            datasets=("demo",),
            archs=("resnet50",),
            strategies=("ft", "g-lf"),
            lrs=(1e-3,),
            seeds=(0,),
            strategy_options={"g_lf": {"epochs_per_stage": 2}},
        )
    assert str(err.value).startswith("grid 'q': strategy 'g-lf' unknown; known: ft, lp, g_lf")


@pytest.mark.parametrize("count", [1, 2, 3, 5, 7])
def test_shards_partition_the_grid(count):
    runs = grid_lib.load_grid(PAPER).configs()
    shards = [grid_lib.shard(runs, i, count) for i in range(count)]
    names = [results.run_name(r.to_dict()) for s in shards for r in s]
    assert len(names) == len(set(names)) == len(runs)  # no run twice, none lost
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert all(s == sorted(s, key=runs.index) for s in shards)  # each in grid order
    for dataset in {r.dataset for r in runs}:  # each a like share of every task's costs
        held = [sum(r.dataset == dataset for r in s) for s in shards]
        assert max(held) - min(held) <= 1, (dataset, held)


def test_shards_do_not_depend_on_the_order_a_grid_lists_its_axes():
    """Processes that list an axis in another order (``tuple(a_set)`` of strings under
    each process's hash seed) still split the grid with no run twice and none lost."""
    g = grid_lib.load_grid(PAPER)
    listed = g.configs()
    reordered = dataclasses.replace(
        g, datasets=g.datasets[::-1], strategies=g.strategies[3:] + g.strategies[:3]
    ).configs()
    assert listed != reordered and sorted(map(repr, listed)) == sorted(map(repr, reordered))
    names = set()
    for i, runs in enumerate((listed, reordered, listed, reordered)):  # one process a shard
        names.update(results.run_name(r.to_dict()) for r in grid_lib.shard(runs, i, 4))
    assert len(names) == len(listed)
    # Dealt by position, the two orders' shards would have overlapped and left runs out.
    by_position = {results.run_name(r.to_dict()) for i in range(4)
                   for r in (listed, reordered)[i % 2][i::4]}  # fmt: skip
    assert len(by_position) < len(listed)


@pytest.mark.parametrize("spec", ["4/4", "-1/4", "a/b", "1", "0/0", "", "1_0/2_0", " 1/2", "+1/2"])
def test_bad_shard_is_named(spec, capsys):
    assert sweep_cli.main(["--config", str(PAPER), f"--shard={spec}", "--dry-run"]) == 2
    assert "--shard" in capsys.readouterr().err


def test_no_feature_cache_is_refused_where_nothing_is_cached(tmp_path, capsys):
    argv = ["--config", str(PAPER), "--dry-run", "--no-feature-cache"]
    assert sweep_cli.main([*argv, "--only", "arch=resnet50|densenet121"]) == 2
    assert capsys.readouterr().err == (
        "error: --no-feature-cache applies under frozen_bn 'freeze' (or with VGG-19, which "
        "has no BatchNorm), with a strategy that freezes blocks, only; no run of grid "
        "'paper' here has both, so nothing is cached\n"
    )
    # VGG-19 has no BatchNorm: its LP caches features under the paper's 'update' too.
    assert sweep_cli.main([*argv, "--only", "arch=vgg19"]) == 0
    capsys.readouterr()
    # Under freeze, FT freezes nothing (it runs as 'update'): refused as experiments.run does.
    config = _grid_file(tmp_path, "g", strategies=("ft", "lp"), lrs=(1e-3,), seeds=(0,), epochs=1)
    text = config.read_text().replace(
        '"image_size": 32}', '"image_size": 32, "frozen_bn": "freeze"}'
    )
    config.write_text(text)
    argv = [
        "--config",
        str(config),
        "--out",
        str(tmp_path / "o"),
        "--dry-run",
        "--no-feature-cache",
    ]
    assert sweep_cli.main([*argv, "--only", "strategy=ft"]) == 2
    assert "no run of grid 'tiny' here has both" in capsys.readouterr().err
    assert sweep_cli.main(argv) == 0


def test_bad_config_file_is_named(tmp_path, capsys):
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config():\n    return {'datasets': ['demo']}\n")
    for path, message in [
        (tmp_path / "absent.py", "no such file"),
        (bad, "returned a dict, expected a Grid"),
    ]:
        assert sweep_cli.main(["--config", str(path), "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--config {path}" in err and message in err
    typo = _grid_file(tmp_path, "typo", strategies=("ft", "lpp"), lrs=(1e-3,), seeds=(0,), epochs=1)
    assert sweep_cli.main(["--config", str(typo), "--dry-run"]) == 2
    assert "strategy 'lpp' unknown" in capsys.readouterr().err


def test_a_dry_run_piped_into_head_ends_quietly(tmp_path):
    """`sweep --dry-run | head`: the reader closes the pipe; no BrokenPipeError traceback,
    exit 141 as a Unix tool ending on SIGPIPE."""
    argv = [sys.executable, "-m", "experiments.sweep", "--config", str(PAPER), "--dry-run"]
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().startswith("grid paper: 1728 runs")
    proc.stdout.close()
    assert proc.wait(timeout=120) == 141
    assert proc.stderr.read() == ""


def test_a_dry_run_shows_a_user_datasets_grid_options():
    """The patient grouping and the DICOM window of a folder grid were left out of the
    dry run's settings: what a radiology user most needs to check before a long sweep."""
    from medft_jax.config import RunConfig

    options = {"folder": {"manual_dir": "/x", "patient_folders": True, "dicom_window": "40,400"}}
    lines = sweep_cli._settings_lines([RunConfig(strategy="ft", dataset="folder")], options)
    assert lines[-1] == (
        "dataset options: folder manual_dir=/x, patient_folders=True, dicom_window=40,400 "
        "(prepare each with the same flags)"
    )


def test_dry_run_lists_runs_status_and_cost(tmp_path, capsys):
    g = grid_lib.load_grid(PAPER)
    done = g.config("bach", "vgg19", "ft", 1e-3, 0)
    record = {
        "config": done.to_dict(),
        "epochs": [{"images_per_s": 600.0}, {"images_per_s": 600.0}],
    }
    results.write_record(results.record_path(tmp_path, done.to_dict()), record)
    argv = ["--config", str(PAPER), "--only", "dataset=bach,arch=vgg19", "--out", str(tmp_path)]
    assert sweep_cli.main([*argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line[:5].strip().isdigit()]
    assert len(rows) == 72 and rows[0][1] == "done" and {r[1] for r in rows[1:]} == {"todo"}
    # The protocol the names do not say, checkable before days of device time.
    assert out.splitlines()[1:3] == [
        "settings: at most 50 epochs, patience 5, batch 64, 224 px, fp32, frozen_bn update, "
        "weights imagenet, data seed 0",
        "strategy options: l2_sp sp_half=False; auto_rgn rgn_mode=prepass",
    ]
    assert sweep_cli.main(["--config", str(PAPER), "--dry-run", "--out", str(tmp_path)]) == 0
    assert (
        "\ndataset options: chexpert uncertain=libauc; isic2020 split_by=image (prepare each "
        "with the same flags)\n"
    ) in capsys.readouterr().out
    # BACH: 360 training images x 50 epochs at the measured 600 images/s of VGG-19 at 224 px.
    assert rows[1][2:4] == ["30", "s"]
    # The other strategies of VGG-19 at 224 px are unknown: FT's speed bounds none of them
    # (LP's would not bound FT's either), and this is not the reference device.
    assert "done 1, failed 0, to run 71: 4.0 min of device time in train steps (+63 of unk" in out
    # Disk: 72 VGG-19 runs keep 72 x 516 MB of best/; an L2-SP run needs 2 x (1 + 4) x 516 MB.
    assert "disk: the 72 selected runs keep about 37.2 GB of best/ checkpoints" in out
    assert "a running one needs up to 5.2 GB more" in out
    selected = [c for c in g.configs() if (c.dataset, c.arch) == ("bach", "vgg19")]
    holder = next(i for i in range(4) if done in grid_lib.shard(selected, i, 4))
    other = (holder + 1) % 4
    assert sweep_cli.main([*argv, "--dry-run", "--shard", f"{other}/4"]) == 0
    out = capsys.readouterr().out
    assert f"shard {other}/4: 18" in out
    listed = [line.split() for line in out.splitlines() if line[:5].strip().isdigit()]
    # '#' is the position shards are dealt by: shard i of N lists those of i mod N.
    dealt = grid_lib.canonical_order(selected)
    assert [int(r[0]) for r in listed] == [
        dealt.index(selected.index(c)) for c in grid_lib.shard(selected, other, 4)
    ]
    assert {int(r[0]) % 4 for r in listed} == {other}
    # One shard holds the done run; the other shards' unknown costs are counted, not dropped.
    per = out.split("shards: ")[1].split("; ")
    assert per[holder].startswith(f"{holder}: 17 of 18 runs to run, ")
    assert "(+" in per[holder] and "of unknown cost)" in per[holder]
    assert per[other].startswith(f"{other}: 18 of 18 runs to run")


def test_select_refuses_a_seed_its_only_filter_leaves_out(tmp_path, monkeypatch, capsys):
    """``--only seed=1 --seed 3`` trained the arms at seed 3 without a word."""

    def no_work(*args, **kwargs):
        pytest.fail("trained despite contradicting seeds")

    monkeypatch.setattr(select_cli, "successive_halving", no_work)
    config = _grid_file(tmp_path, "g", strategies=("lp", "ft"), lrs=(1e-3,), seeds=(3, 1), epochs=2)
    argv = ["--config", str(config), "--out", str(tmp_path / "sel"), "--only", "seed=1"]
    assert select_cli.main([*argv, "--seed", "3"]) == 2
    assert capsys.readouterr().err == (
        "error: --seed 3 is not among the seeds --only keeps (1); give one of them, or leave "
        "one of the two flags out\n"
    )


def test_the_own_folder_grid_runs_on_the_folder_it_is_given(tmp_path, monkeypatch, capsys):
    """The README's grid for one's own folder: where the docs named none, a user read the
    Grid docstring to learn how a sweep or a selection finds their images."""
    small, _ = _folder_grid(tmp_path / "small", (0,))
    config = ROOT / "experiments" / "configs" / "own_folder.py"
    argv = ["--config", str(config), "--out", str(tmp_path / "runs"), "--dry-run"]
    # Its batch of 64 over 14 training images: the dry run said "to run 216", and the sweep
    # then refused each run alone (exit 1).
    monkeypatch.setenv("MEDFT_FOLDER", str(small))
    assert sweep_cli.main(argv) == 2
    assert capsys.readouterr().err == (
        "error: dataset folder: batch_size 64 is larger than its 14 training examples; every "
        "run of it at that batch size would be refused: give the grid a smaller batch_size\n"
    )
    imgs, _ = _folder_grid(tmp_path, (0,), per_class=50)
    monkeypatch.setenv("MEDFT_FOLDER", str(imgs))
    assert sweep_cli.main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("grid own_folder: 216 runs (1 dataset x 3 archs x 8 strategies x ")
    assert "folder-resnet50-lp_ft-lr0.001-s2-*" in out
    # Its cost: the folder has no published size, and every run's was "unknown"; the
    # listing the dry run reads counts the training images (here at a slow reference).
    from medft_jax.data.folder import parse_folder

    train = len(parse_folder(imgs)[1]["train"])
    monkeypatch.setitem(grid_lib.REFERENCE_IMAGES_PER_S, "resnet50", 0.01)
    assert sweep_cli.main(argv) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "folder-resnet50-ft-lr0.001-s0-*" in line)
    assert f"  {50 * train / 0.01 / 3600:.1f} h  " in row and "unknown" not in row
    monkeypatch.delenv("MEDFT_FOLDER")  # the placeholder path was the error's only word
    assert sweep_cli.main(argv) == 2
    assert "set MEDFT_FOLDER to your images' folder" in capsys.readouterr().err
    monkeypatch.setenv("MEDFT_FOLDER", str(tmp_path / "nowhere"))
    assert sweep_cli.main(argv) == 2
    assert "['manual_dir'] " + str(tmp_path / "nowhere") + ": no such folder" in (
        capsys.readouterr().err
    )
    monkeypatch.setenv("MEDFT_FOLDER", str(config))  # a file: it exists, as no folder
    assert sweep_cli.main(argv) == 2
    assert f"['manual_dir'] {config}: is a file, expected the images' folder\n" in (
        capsys.readouterr().err
    )


def test_a_shards_dry_run_costs_every_shards_folder_runs(tmp_path, monkeypatch, capsys):
    """Each shard's dry run listed its own shard's folders alone: the closing "shards:" line
    gave the other shards' folder runs "?" (and their changed runs "done"), so each shard
    told other totals."""
    _, config = _folder_grid(tmp_path, (0,))
    text = config.read_text().replace("datasets=('folder',)", "datasets=('folder', 'demo')")
    config.write_text(text)  # one run each: shard 0 holds one dataset, shard 1 the other
    monkeypatch.setitem(grid_lib.REFERENCE_IMAGES_PER_S, "resnet_tiny", 0.01)
    lines = []
    for shard in ("0/2", "1/2"):
        argv = ["--config", str(config), "--out", str(tmp_path / "o"), "--dry-run"]
        assert sweep_cli.main([*argv, "--shard", shard]) == 0
        lines.append(next(x for x in capsys.readouterr().out.splitlines() if "shards:" in x))
    assert lines[0] == lines[1] and "?" not in lines[0], lines
    # Another shard's unreadable folder is that shard's dry run's to name, not this one's.
    imgs = tmp_path / "imgs"
    for f in (imgs / "b").iterdir():
        f.unlink()
    (imgs / "b").rmdir()  # one class left: refused where it is read
    codes = []
    for shard in ("0/2", "1/2"):
        argv = ["--config", str(config), "--out", str(tmp_path / "o"), "--dry-run"]
        codes.append(sweep_cli.main([*argv, "--shard", shard]))
    capsys.readouterr()
    assert sorted(codes) == [0, 2]


def _folder_grid(tmp_path: Path, seeds: tuple[int, ...], per_class: int = 10) -> tuple[Path, Path]:
    """A ``folder`` dataset of two classes of ``per_class`` 20 px PNGs, and a grid file of
    FT on it (resnet_tiny, 32 px, batch 4, no weights) over ``seeds``: ``(images folder,
    grid file)``."""
    from PIL import Image

    imgs = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (imgs / c).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(imgs / c / f"{i}.png")
    config = tmp_path / "f.py"
    config.write_text(
        "from medft_jax.grid import Grid\n"
        "def get_config():\n"
        "    return Grid(name='f', datasets=('folder',), archs=('resnet_tiny',),\n"
        f"                strategies=('ft',), lrs=(1e-3,), seeds={seeds!r},\n"
        "                settings={'weights': 'none', 'image_size': 32, 'batch_size': 4},\n"
        f"                data_dir={str(tmp_path / 'data')!r},\n"
        f"                dataset_options={{'folder': {{'manual_dir': {str(imgs)!r}}}}})\n"
    )
    return imgs, config


def test_dry_run_counts_runs_whose_folder_changed_since_their_records(
    tmp_path, capsys, monkeypatch
):
    """An edited folder: the sweep runs its recorded runs again (other data fingerprint), so
    the dry run says so, where it said "to run 0". The folder is listed once a dry run
    (its listings' check read it, then the change check again: 1.1 s each at 20k files)."""
    import dataclasses

    from PIL import Image

    from medft_jax import fit

    imgs, config = _folder_grid(tmp_path, seeds=(0, 1))
    g = grid_lib.load_grid(config)
    first, second = g.configs()
    ds = fit.load_dataset(first, g.data_dir, manual_dir=str(imgs))
    out = tmp_path / "runs"

    def record(c, fingerprint):
        c = dataclasses.replace(c, data_fingerprint=fingerprint, weights_fingerprint="none")
        results.write_record(results.record_path(out, c.to_dict()), {"config": c.to_dict()})

    record(first, ds.metadata["fingerprint"])
    record(second, "0" * 64)  # trained on other images

    def listed() -> tuple[list[str], str]:
        assert sweep_cli.main(["--config", str(config), "--out", str(out), "--dry-run"]) == 0
        text = capsys.readouterr().out
        return [line.split()[1] for line in text.splitlines() if line[:5].strip().isdigit()], text

    real, calls = fit.data_state, []
    monkeypatch.setattr(fit, "data_state", lambda *a, **k: calls.append(1) or real(*a, **k))
    states, text = listed()
    assert states == ["done", "changed"] and len(calls) == 1
    rows = [line for line in text.splitlines() if line[:5].strip().isdigit()]
    head = next(line for line in text.splitlines() if line.strip().startswith("# "))
    # The est. column in line under a 7-letter status ("changed", "running", "damaged").
    assert {line.index(line.split()[2]) + len(line.split()[2]) for line in rows} == {
        head.index("est.") + len("est.")
    }
    assert "done 1, failed 0, to run 1: " in text
    assert "1 of them have records on data that changed since (folder: other images than " in text
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(imgs / "a" / "new.png")
    states, text = listed()
    assert states == ["changed", "changed"] and "done 0, failed 0, to run 2: " in text
    assert "2 of them have records on data that changed since (folder: 1 file added)" in text


def test_dry_run_compares_the_listing_with_the_records_when_the_cache_is_not_built(
    tmp_path, capsys
):
    """A folder edited, then its cache deleted (or a fresh --data-dir): the dry run said
    "done ... nothing to run", and the sweep ran it again. The listing's split fingerprint
    (ids, splits, labels; nothing decoded) is compared with the records'."""
    import dataclasses
    import shutil

    from PIL import Image

    from medft_jax import fit

    imgs, config = _folder_grid(tmp_path, seeds=(0,))
    g = grid_lib.load_grid(config)
    (first,) = g.configs()
    ds = fit.load_dataset(first, g.data_dir, manual_dir=str(imgs))
    out = tmp_path / "runs"
    c = dataclasses.replace(
        first, data_fingerprint=ds.metadata["fingerprint"], weights_fingerprint="none"
    )
    results.write_record(
        results.record_path(out, c.to_dict()),
        {
            "config": c.to_dict(),
            "split_fingerprint": ds.split_fingerprint(),
            "order_fingerprint": ds.order_fingerprint(),
        },
    )
    shutil.rmtree(tmp_path / "data")  # the cache deleted

    def listed() -> tuple[list[str], str]:
        assert sweep_cli.main(["--config", str(config), "--out", str(out), "--dry-run"]) == 0
        text = capsys.readouterr().out
        return [line.split()[1] for line in text.splitlines() if line[:5].strip().isdigit()], text

    states, text = listed()  # unchanged: done, saying what was checked
    assert states == ["done"] and "done 1, failed 0, to run 0: " in text
    assert (
        "1 'done' of them are on user data whose cache is not built here (deleted, or another "
        "--data-dir): checked from the listing only (same examples, splits and labels as "
        "recorded); a file replaced under its name is found when the sweep builds the cache"
    ) in text
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(imgs / "a" / "new.png")
    states, text = listed()
    assert states == ["changed"] and "done 0, failed 0, to run 1: " in text
    assert (
        "1 of them have records on data that changed since (folder: other examples, splits "
        "or labels than recorded (its cache is not built here; the listing says so))"
    ) in text
    assert not (tmp_path / "data").exists()  # nothing built, nothing decoded


def test_dry_run_finds_a_labels_csv_whose_rows_were_only_reordered(tmp_path, capsys):
    """Rows of a labels CSV reordered, its cache deleted: the dry run said "done" (the split
    fingerprint sorts the ids) while the sweep ran it again (the batches, and so the data
    fingerprint, follow the rows' order). The listing's order is compared too."""
    import dataclasses
    import shutil

    from PIL import Image

    from medft_jax import fit

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(20):  # a val split of both classes
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(imgs / f"{i}.png")
        rows.append(f"{i}.png,{'ab'[i % 2]}\n")
    labels = imgs / "labels.csv"
    labels.write_text("path,label\n" + "".join(rows))
    config = tmp_path / "c.py"
    config.write_text(
        "from medft_jax.grid import Grid\n"
        "def get_config():\n"
        "    return Grid(name='c', datasets=('csv',), archs=('resnet_tiny',),\n"
        "                strategies=('ft',), lrs=(1e-3,), seeds=(0,),\n"
        "                settings={'weights': 'none', 'image_size': 32, 'batch_size': 4},\n"
        f"                data_dir={str(tmp_path / 'data')!r},\n"
        f"                dataset_options={{'csv': {{'manual_dir': {str(imgs)!r}, "
        "'csv_file': 'labels.csv'}})\n"
    )
    g = grid_lib.load_grid(config)
    (first,) = g.configs()
    options = {"manual_dir": str(imgs), "csv_file": "labels.csv"}
    ds = fit.load_dataset(first, g.data_dir, **options)
    out = tmp_path / "runs"
    c = dataclasses.replace(
        first, data_fingerprint=ds.metadata["fingerprint"], weights_fingerprint="none"
    )
    record = {
        "config": c.to_dict(),
        "split_fingerprint": ds.split_fingerprint(),
        "order_fingerprint": ds.order_fingerprint(),
    }
    results.write_record(results.record_path(out, c.to_dict()), record)
    shutil.rmtree(tmp_path / "data")  # the cache deleted

    def listed() -> tuple[list[str], str]:
        assert sweep_cli.main(["--config", str(config), "--out", str(out), "--dry-run"]) == 0
        text = capsys.readouterr().out
        return [line.split()[1] for line in text.splitlines() if line[:5].strip().isdigit()], text

    states, text = listed()
    assert states == ["done"] and "(same examples, splits and labels as recorded)" in text
    labels.write_text("path,label\n" + "".join(reversed(rows)))
    states, text = listed()
    assert states == ["changed"] and "done 0, failed 0, to run 1: " in text
    assert (
        "1 of them have records on data that changed since (csv: the recorded examples, "
        "splits and labels listed in another order (a labels CSV's rows reordered, say), "
        "which the training batches follow (its cache is not built here; the listing says "
        "so))"
    ) in text
    assert not (tmp_path / "data").exists()  # nothing built, nothing decoded
    # The sweep would indeed run it again: the reordered data is other data, same splits.
    again = fit.load_dataset(first, g.data_dir, **options)
    assert again.split_fingerprint() == record["split_fingerprint"]
    assert again.metadata["fingerprint"] != c.data_fingerprint
    assert again.order_fingerprint() != record["order_fingerprint"]
    # A record from before order_fingerprint: the order is said not to be compared.
    shutil.rmtree(tmp_path / "data")
    del record["order_fingerprint"]
    results.write_record(results.record_path(out, c.to_dict()), record)
    states, text = listed()
    assert states == ["done"]
    assert "(same examples, splits and labels as recorded (their order not compared: " in text


def test_dry_run_costs_come_from_runs_of_the_same_precision_and_uncached_epochs():
    """A bf16 run's or a cached epoch's images/s bounds no float32 run trained on images."""
    g = grid_lib.load_grid(PAPER)
    fp32 = g.config("bach", "vgg19", "lp", 1e-3, 0)
    bf16 = dataclasses.replace(fp32, precision="bf16")
    freeze = dataclasses.replace(fp32, frozen_bn="freeze")

    def record(config, *epochs):
        return {"config": config.to_dict(), "epochs": list(epochs)}

    measured = grid_lib.measured_throughput(
        [
            record(fp32, {"images_per_s": 600.0}, {"images_per_s": 400.0}),
            record(bf16, {"images_per_s": 1500.0}),
            record(freeze, {"images_per_s": 90000.0, "from_features": True}),
        ]
    )
    assert measured == {
        grid_lib.throughput_key(fp32.to_dict()): 500.0,
        grid_lib.throughput_key(bf16.to_dict()): 1500.0,
    }
    # BACH: 360 training images x 50 epochs.
    assert grid_lib.estimate_seconds(fp32, measured) == pytest.approx(50 * 360 / 500)
    assert grid_lib.estimate_seconds(bf16, measured) == pytest.approx(50 * 360 / 1500)
    # Only cached epochs of the freeze run: unknown, not 90,000 images/s.
    assert grid_lib.estimate_seconds(freeze, measured) is None
    # Every MedMNIST flag's training split is known (only BreastMNIST's was: "unknown").
    assert grid_lib.nominal_train_images("medmnist/pathmnist@64") == 89_996
    assert grid_lib.nominal_train_images("medmnist/breastmnist") == 546
    assert grid_lib.nominal_train_images("folder") is None
    path = dataclasses.replace(fp32, dataset="medmnist/dermamnist")
    at = grid_lib.throughput_key(path.to_dict())
    assert grid_lib.estimate_seconds(path, {at: 700.0}) == pytest.approx(50 * 7007 / 700)
    # Epochs of 100 s at 600 img/s and 300 s at 200 img/s: 120,000 images in 400 s, 300
    # images/s (the time they took), not the mean rate 400.
    timed = record(fp32, {"images_per_s": 600.0, "train_seconds": 100.0},
                   {"images_per_s": 200.0, "train_seconds": 300.0})  # fmt: skip
    assert grid_lib.measured_throughput([timed]) == {grid_lib.throughput_key(fp32.to_dict()): 300.0}


def test_dry_run_lists_past_a_damaged_record(tmp_path, capsys):
    """It stopped on the first damaged record, where the sweep names it and goes on."""
    config = _grid_file(tmp_path, "g", strategies=("lp", "ft"), lrs=(1e-3,), seeds=(0,), epochs=1)
    bad = tmp_path / "o" / "some-run" / "record.json"
    bad.parent.mkdir(parents=True)
    bad.write_text("")
    assert sweep_cli.main(["--config", str(config), "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "done 0, failed 0, to run 2" in out
    assert out.splitlines()[-1].startswith(
        f"1 damaged record(s) not counted (the sweep skips such a run, naming it): {bad}: "
    )


def test_dry_run_lists_a_run_whose_record_is_damaged_as_damaged_not_to_run(tmp_path, capsys):
    """The sweep skips such a run, naming the file: listed as to run, it was a promise
    (and a cost) the sweep never kept."""
    config = _grid_file(tmp_path, "g", strategies=("lp", "ft"), lrs=(1e-3,), seeds=(0,), epochs=1)
    out = tmp_path / "o"
    edited, unreadable = grid_lib.load_grid(config).configs()
    run = _identified([edited])[0].to_dict()
    path = results.record_path(out, run)
    finished = {"epochs": [], "best_epoch": 0, "primary_metric": "auroc", "train_seconds": 1.0}
    record = {"config": run, "run": results.run_name(run), "val": {"auroc": 0.5}, **finished}
    results.write_record(path, {**record, "test": {"auroc": 0.5}}, sealed=True)
    path.write_text(path.read_text().replace('"auroc": 0.5\n }', '"auroc": 0.9\n }'))
    folder = out / sweep_cli._unhashed(unreadable).replace("*", "0123456789abcdef")
    folder.mkdir()
    (folder / "record.json").write_text('{"config": ')  # cut short: no config to read
    assert sweep_cli.main(["--config", str(config), "--out", str(out), "--dry-run"]) == 0
    listed = capsys.readouterr().out
    for c in (edited, unreadable):
        assert re.search(rf"  damaged  .*  {re.escape(sweep_cli._unhashed(c))}\n", listed)
    assert "done 0, failed 0, damaged 2, to run 0: nothing to run" in listed
    assert "2 damaged record(s) not counted" in listed


def test_dry_run_with_no_cost_known_says_so(tmp_path, capsys):
    config = _grid_file(tmp_path, "g", strategies=("lp", "ft"), lrs=(1e-3,), seeds=(0,), epochs=1)
    assert sweep_cli.main(["--config", str(config), "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert (
        "to run 2: device time unknown for all 2 (no training-set size or throughput to "
        "estimate from: a dataset without a published size or listing, or an arch without a "
        "reference speed (the tests' stand-ins) and no finished run of its settings at this "
        "size; a record's seconds say what a run took)"
    ) in out
    assert "of device time" not in out
    assert "assumed H100 throughput" not in out  # no estimate rests on it
    assert (
        sweep_cli.main(
            ["--config", str(config), "--out", str(tmp_path / "o"), "--dry-run", "--shard", "1/2"]
        )
        == 0
    )
    assert "shards: 0: 1 of 1 runs to run, ? (1 of unknown cost); 1: 1" in capsys.readouterr().out
    # More shards than runs: the empty ones in one span (each was sorted and listed: a huge
    # N never finished), the runs dealt as before.
    argv = ["--config", str(config), "--out", str(tmp_path / "o"), "--dry-run", "--shard"]
    assert sweep_cli.main([*argv, f"1/{10**20}"]) == 0
    out = capsys.readouterr().out
    assert f"; shard 1/{10**20}: 1\n" in out
    assert (
        "shards: 0: 1 of 1 runs to run, ? (1 of unknown cost); 1: 1 of 1 runs to run, ? (1 of "
        f"unknown cost); 2-{10**20 - 1}: no runs (more shards than runs)\n"
    ) in out


def test_dry_run_counts_only_the_records_where_the_sweep_looks(tmp_path, capsys):
    """A selection's runs (or copies) in a folder below --out are not the sweep's: it would
    run them again, so the dry run must not call them done."""
    config = _grid_file(tmp_path, "g", strategies=("lp", "ft"), lrs=(1e-3,), seeds=(0,), epochs=1)
    out = tmp_path / "o"
    lp, ft = (c.to_dict() for c in grid_lib.load_grid(config).configs())
    results.write_record(results.record_path(out / "select", lp), {"config": lp, "epochs": []})
    results.write_failure(out / "select", ft, "nonfinite", "loss nan at step 1")
    argv = ["--config", str(config), "--out", str(out), "--dry-run"]
    assert sweep_cli.main(argv) == 0
    assert "done 0, failed 0, to run 2:" in capsys.readouterr().out
    results.write_record(results.record_path(out, lp), {"config": lp, "epochs": []})
    assert sweep_cli.main(argv) == 0
    assert "done 1, failed 0, to run 1:" in capsys.readouterr().out


def test_dry_run_counts_failed_runs_as_to_run_under_retry_failed(tmp_path, capsys):
    config = _grid_file(tmp_path, "g", strategies=("lp", "ft"), lrs=(1e-3,), seeds=(0,), epochs=1)
    out = tmp_path / "o"
    failed = grid_lib.load_grid(config).configs()[0].to_dict()
    results.write_failure(out, failed, "nonfinite", "loss nan at step 1")
    argv = ["--config", str(config), "--out", str(out), "--dry-run"]
    assert sweep_cli.main(argv) == 0
    assert "done 0, failed 1, to run 1:" in capsys.readouterr().out
    assert sweep_cli.main([*argv, "--retry-failed"]) == 0
    out_text = capsys.readouterr().out
    assert "done 0, failed 0, to run 2:" in out_text
    assert [line.split()[1] for line in out_text.splitlines() if line[:5].strip().isdigit()] == [
        "retry",
        "todo",
    ]


# --- real sweeps ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_shards(tmp_path_factory):
    """A 2 strategies x 2 lrs x 2 seeds grid run by two shard processes at once."""
    folder = tmp_path_factory.mktemp("shards")
    config = _grid_file(
        folder, "tiny", strategies=("ft", "lp"), lrs=(1e-3, 1e-4), seeds=(0, 1), epochs=1
    )
    out = folder / "runs"
    # Shard 1 starts once shard 0 has finished a run, so it loads the programs
    # shard 0 compiled from the session's compilation cache instead of
    # compiling them too; the two then train side by side.
    procs = [_sweep(config, out, "--shard", "0/2")]
    deadline = time.monotonic() + 600
    while not list(out.rglob("record.json")) and procs[0].poll() is None:
        assert time.monotonic() < deadline, "shard 0 finished no run in 10 minutes"
        time.sleep(0.5)
    procs.append(_sweep(config, out, "--shard", "1/2"))
    logs = []
    for p in procs:
        log, _ = p.communicate(timeout=900)
        assert p.returncode == 0, log[-3000:]
        logs.append(log)
    return config, out, logs


@pytest.mark.slow
@pytest.mark.xdist_group("shards")
def test_two_shards_run_the_grid_once(two_shards):
    config, out, logs = two_shards
    configs = _identified(grid_lib.load_grid(config).configs())
    expected = {results.run_name(c.to_dict()) for c in configs}
    ran = [_ran(log) for log in logs]
    assert len(ran[0]) == len(ran[1]) == 4
    for log in logs:  # what to run next, as typed
        assert f"tables: python -m experiments.report --runs {out} --config {config}" in log
    assert not set(ran[0]) & set(ran[1])
    assert set(ran[0]) | set(ran[1]) == expected
    assert {p.parent.name for p in out.rglob("record.json")} == expected
    # Both shards wrote one plan of the whole grid: a report counts a lost shard's runs.
    [(_, plan)] = plans.load_plans(out)
    axes = ("strategy", "lr", "seed")
    assert sorted(tuple(r[k] for k in axes) for r in plan["runs"]) == sorted(
        tuple(getattr(c, k) for k in axes) for c in configs
    )


@pytest.mark.slow
@pytest.mark.xdist_group("shards")
def test_report_numbers_are_the_records(two_shards, tmp_path):
    """Table cells = mean and SE recomputed from the records at the LR best on validation."""
    _, out, _ = two_shards
    assert report_cli.main(["--runs", str(out), "--out", str(tmp_path / "rep")]) == 0
    records = results.load_records(out)
    by_cell: dict[str, dict[float, list[dict]]] = {}
    for r in records:
        by_cell.setdefault(r["config"]["strategy"], {}).setdefault(r["config"]["lr"], []).append(r)
    expected = {}
    for strategy, per_lr in by_cell.items():
        val = {lr: np.mean([r["val"]["accuracy"] for r in rs]) for lr, rs in per_lr.items()}
        lr = min(lr for lr, v in val.items() if v == max(val.values()))
        for metric in ("accuracy", "auroc"):
            x = np.array([r["test"][metric] for r in per_lr[lr]])
            expected[(strategy, metric)] = (x.mean(), x.std(ddof=1) / np.sqrt(len(x)))
    rows = list(csv.DictReader((tmp_path / "rep" / "tables" / "results_demo.csv").open()))
    got = {}
    for row in rows:
        if row["metric"] in ("accuracy", "auroc"):
            got[(row["strategy"], row["metric"])] = (float(row["mean"]), float(row["se"]))
    assert set(got) == set(expected)
    for key, (mean, se) in expected.items():
        assert got[key] == pytest.approx((mean, se), rel=1e-9, abs=1e-12)
    # One arch: bold (best per arch) and underline (best overall) both mark the best shown mean.
    for metric in ("accuracy", "auroc"):
        shown = {s: round(100 * expected[(s, metric)][0], 2) for s in ("ft", "lp")}
        best = {s for s, v in shown.items() if v == max(shown.values())}
        for row in rows:
            if row["metric"] == metric:
                marked = row["strategy"] in best
                assert (row["bold"], row["underline"]) == (str(marked), str(marked)), row
    # Table 12 by hand: does LP beat FT by more than 0.1 % (relative) on the primary metric?
    ft, lp = expected[("ft", "accuracy")][0], expected[("lp", "accuracy")][0]
    beats = 100 * (lp - ft) / ft > 0.1
    table12 = (tmp_path / "rep" / "tables" / "table12.md").read_text()
    lp_row = next(line for line in table12.splitlines() if line.startswith("| LP "))
    assert f"{int(beats)}/1" in lp_row
    figures = sorted((tmp_path / "rep" / "figures").glob("*.png"))
    assert len(figures) == 2
    for f in figures:
        assert f.stat().st_size > 1000 and f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_select_refuses_grid_runs_from_other_data_before_training(tmp_path, monkeypatch, capsys):
    """Same settings, other data (a folder edited since the sweep): never compared."""

    def no_work(*args, **kwargs):
        pytest.fail("trained before checking --grid-runs")

    monkeypatch.setattr(select_cli, "successive_halving", no_work)
    config = _grid_file(tmp_path, "g", strategies=("lp",), lrs=(1e-3, 1e-4), seeds=(0,), epochs=2)
    grid = tmp_path / "grid"
    grid.mkdir()
    argv = ["--config", str(config), "--out", str(tmp_path / "sel"), "--grid-runs", str(grid)]
    assert select_cli.main(argv) == 2  # no record of the grid at all: the comparison is NaN
    assert capsys.readouterr().err.strip() == (
        f"error: --grid-runs {grid}: holds none of the grid's 2 runs of this selection; "
        "expected the full grid's --out"
    )
    # The grid's sweep under way: its folder, named as such (not "expected the full grid's").
    going = grid / "demo-resnet_tiny-lp-lr0.001-s0-0123456789abcdef"
    going.mkdir()
    (going / locks.LOCK_NAME).write_text(json.dumps({"pid": os.getppid(), "host": locks._host()}))
    assert select_cli.main(argv) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(
            f"expected the full grid's --out (1 run(s) there are under way, e.g. {going}: compare "
            "once the sweep has finished)"
        )
    )
    (going / locks.LOCK_NAME).unlink()
    going.rmdir()
    run = _identified(grid_lib.load_grid(config).configs())[0]
    stale = dataclasses.replace(run, data_fingerprint="0" * 16).to_dict()
    finished = {"epochs": [], "best_epoch": 0, "primary_metric": "auroc", "train_seconds": 1.0}
    finished |= {"val": {"auroc": 0.5}, "test": {"auroc": 0.5}}
    results.write_record(results.record_path(grid, stale), {"config": stale, **finished})
    assert select_cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: --grid-runs {grid}: {results.run_name(stale)} ran on other data than this "
        f"selection (data_fingerprint 000000000000, here {run.data_fingerprint[:12]}); "
        "compare with a grid run on the same data"
    )
    # A grid record without its train time (an edit): one line naming it, not a KeyError.
    results.record_path(grid, stale).unlink()
    untimed = results.record_path(grid, run.to_dict())
    del finished["train_seconds"]
    results.write_record(untimed, {"config": run.to_dict(), **finished})
    assert select_cli.main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {untimed}: no train_seconds (seconds of training); the record was "
        "edited: restore it, or delete it to run it again"
    )


def test_select_reads_the_grid_rerun_on_this_data_not_its_older_records(tmp_path):
    """A sweep rerun after the data was edited leaves each run's older record beside the new
    one (another name, as BUILD.md says). select called the pair "two records ... move the
    copy out", naming neither as the current one; the older record (and its failure note)
    is left out, said once, and the one on this data is the grid's."""
    config = _grid_file(tmp_path, "g", strategies=("lp",), lrs=(1e-3, 1e-4), seeds=(0,), epochs=2)
    g = grid_lib.load_grid(config)
    runs = _identified(g.configs())
    grid = tmp_path / "grid"
    finished = {"epochs": [], "best_epoch": 0, "primary_metric": "auroc", "train_seconds": 1.0}
    for run, auroc in zip(runs, (0.6, 0.7), strict=True):
        old = dataclasses.replace(run, data_fingerprint="0" * 16).to_dict()
        results.write_record(
            results.record_path(grid, old),
            {"config": old, **finished, "val": {"auroc": 0.9}, "test": {"auroc": 0.9}},
        )
        new = {"config": run.to_dict(), **finished, "val": {"auroc": auroc}}
        results.write_record(results.record_path(grid, run.to_dict()), new | {"test": new["val"]})
    old_failure = dataclasses.replace(runs[1], data_fingerprint="1" * 16).to_dict()
    results.write_record(
        results.record_path(grid, old_failure).with_name(results.FAILURE_NAME),
        {"config": old_failure, "error": "diverged"},
    )
    arms = [select_cli.Arm(r.strategy, r.lr, r) for r in runs]
    said = []
    records, failures, expected = select_cli.grid_records(g, arms, str(grid), runs[0], said.append)
    assert sorted(r["val"]["auroc"] for r in records) == [0.6, 0.7] and failures == []
    assert expected == 2
    assert said == [
        f"note: --grid-runs {grid}: left out 2 record(s) of runs on other data or weights, "
        "each rerun on this data there"
    ]
    # Rerun on this data and diverged there: its failure note stands for it, not the older
    # record (which the identity check refused as "ran on other data", though it was rerun).
    results.record_path(grid, runs[1].to_dict()).unlink()
    results.write_record(
        results.record_path(grid, runs[1].to_dict()).with_name(results.FAILURE_NAME),
        {"config": runs[1].to_dict(), "error": "diverged"},
    )
    records, failures, _ = select_cli.grid_records(g, arms, str(grid), runs[0], said.append)
    assert [r["val"]["auroc"] for r in records] == [0.6]
    assert [f["config"]["data_fingerprint"] for f in failures] == [runs[1].data_fingerprint]
    select_cli.check_grid_identity(records, runs[0], str(grid))  # nothing of other data
    results.record_path(grid, runs[1].to_dict()).with_name(results.FAILURE_NAME).unlink()
    results.write_record(results.record_path(grid, runs[1].to_dict()), new | {"test": new["val"]})
    # A run not yet rerun keeps its older record, which the identity check then refuses.
    results.record_path(grid, runs[1].to_dict()).unlink()
    records, _, _ = select_cli.grid_records(g, arms, str(grid), runs[0], said.append)
    assert sorted(r["config"]["data_fingerprint"] == "0" * 16 for r in records) == [False, True]
    with pytest.raises(select_cli.UserError, match="ran on other data than this selection"):
        select_cli.check_grid_identity(records, runs[0], str(grid))


def test_select_refuses_a_grid_holding_a_run_twice_before_training(tmp_path, monkeypatch, capsys):
    """A selection's runs inside --grid-runs (its --out, or a copy) would double the grid's
    seed-0 records: refused before any training, naming both files or the folder."""

    def no_work(*args, **kwargs):
        pytest.fail("trained before checking --grid-runs")

    monkeypatch.setattr(select_cli, "successive_halving", no_work)
    config = _grid_file(tmp_path, "g", strategies=("lp",), lrs=(1e-3, 1e-4), seeds=(0,), epochs=2)
    grid = tmp_path / "grid"
    argv = ["--config", str(config), "--grid-runs", str(grid), "--out"]
    grid.mkdir()
    for out in (grid, grid / "sel"):
        assert select_cli.main([*argv, str(out)]) == 2
        assert capsys.readouterr().err.strip() == (
            f"error: --out {out}: is inside --grid-runs {grid}, where the selection's runs "
            "would count as the grid's; expected a folder outside it"
        )
    run = _identified(grid_lib.load_grid(config).configs())[0].to_dict()
    finished = {"epochs": [], "best_epoch": 0, "primary_metric": "auroc", "train_seconds": 1.0}
    finished |= {"val": {"auroc": 0.5}, "test": {"auroc": 0.5}}
    first = results.record_path(grid, run)
    results.write_record(first, {"config": run, **finished})
    copy = results.record_path(grid / "old-selection", run)
    results.write_record(copy, {"config": run, **finished})
    assert select_cli.main([*argv, str(tmp_path / "sel")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --grid-runs {grid}: {results.run_name(run)} has two records, {first} and "
        f"{copy}; expected one per run: move the copy out"
    )


@pytest.mark.slow
def test_killed_sweep_restarts_where_it_stopped(tmp_path, monkeypatch, capsys):
    """Kill a sweep after its first record; the report marks what is missing; a restart ends it."""
    config = _grid_file(
        tmp_path, "lp3", strategies=("lp", "ft"), lrs=(1e-3, 1e-4, 1e-5), seeds=(0,), epochs=2
    )
    out = tmp_path / "runs"
    proc = _sweep(config, out)
    deadline = time.monotonic() + 600
    while not list(out.rglob("record.json")):
        assert proc.poll() is None and time.monotonic() < deadline, "sweep ended early"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    first = next(out.rglob("record.json"))
    before = (first.read_bytes(), first.stat().st_mtime_ns)
    assert len(list(out.rglob("record.json"))) == 1

    # A report over the half-finished sweep: LP partial (1 of 3 runs), FT missing, never 0.
    rep = tmp_path / "rep"
    assert report_cli.main(["--runs", str(out), "--config", str(config), "--out", str(rep)]) == 0
    table = (rep / "tables" / "results_demo.md").read_text()
    ft_row = next(line for line in table.splitlines() if line.startswith("| FT "))
    lp_row = next(line for line in table.splitlines() if line.startswith("| LP "))
    assert "—" in ft_row and "0.00" not in ft_row
    assert "†" in lp_row and "1 of 3" in table

    proc = _sweep(config, out, "--only", "strategy=lp")
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-3000:]
    assert "done, skipped" in log and len(_ran(log)) == 2
    assert (first.read_bytes(), first.stat().st_mtime_ns) == before
    lp = _identified(grid_lib.select(grid_lib.load_grid(config), {"strategy": {"lp"}}))
    assert all(results.record_path(out, c.to_dict()).exists() for c in lp)

    # Successive halving over the three LP learning rates, against that grid's records;
    # the first rung ends inside the first epoch (3 of its 6 steps).
    summary = tmp_path / "select.json"
    sel_dir = tmp_path / "sel"
    argv = ["--config", str(config), "--only", "strategy=lp", "--out", str(sel_dir)]
    argv += ["--grid-runs", str(out), "--eta", "2", "--min-epochs", "0.5", "--json", str(summary)]
    assert select_cli.main(argv) == 0
    outcome = json.loads(summary.read_text())
    assert [(r["epochs"], r["steps"]) for r in outcome["rungs"]] == [(0.5, 3), (1, 6)]
    assert [len(r["arms"]) for r in outcome["rungs"]] == [3, 2]
    first_rung = {a["arm"]: a["score"] for a in outcome["rungs"][0]["arms"]}
    # The lowest score is dropped; of tied ones the lowest AUROC, then the latest in grid order.
    order = [
        (-a["score"], -a["tiebreak"], i, a["arm"])
        for i, a in enumerate(outcome["rungs"][0]["arms"])
    ]
    assert outcome["tiebreak_metric"] == "auroc"
    assert (outcome["metric"], outcome["metric_label"]) == ("accuracy", "accuracy")  # binary
    dropped = max(order)[-1]
    assert dropped not in {a["arm"] for a in outcome["rungs"][1]["arms"]}
    assert [a["epochs"] for a in outcome["rungs"][1]["arms"]] == [1, 1]
    # Epochs trained: 3 arms x 0.5 + 2 arms x 0.5 more; the survivors' scores count epoch 0.
    assert outcome["cost"]["epochs"] == 2.5
    grid_epochs = sum(
        len(results.read_record(results.record_path(out, c.to_dict()))["epochs"]) for c in lp
    )
    assert outcome["grid"]["epochs"] == grid_epochs == 6
    assert outcome["grid"]["fraction_epochs"] == pytest.approx(2.5 / 6)
    # A survivor's score is the best of its validations: the half epoch's and epoch 0's.
    for arm in outcome["rungs"][1]["arms"]:
        lr = float(arm["arm"].split(" @ lr ")[1])
        run = results.run_dir(sel_dir, next(c for c in lp if c.lr == lr).to_dict())
        epochs = RunCheckpoints(run).read_progress()["epochs"]
        assert arm["score"] == max(first_rung[arm["arm"]], epochs[0]["val"]["accuracy"])
    # A multi-host job's other processes neither print the outcome nor write --json.
    capsys.readouterr()
    monkeypatch.setattr(Session, "main_process", property(lambda self: False))
    other = tmp_path / "select-process-1.json"
    assert select_cli.main([*argv[:-1], str(other)]) == 0
    assert not other.exists() and capsys.readouterr().out == ""


def test_rung_budgets_and_survivors_by_hand():
    assert select_cli.rung_budgets(1, 3, 50) == [1, 3, 9, 27, 50]
    assert select_cli.rung_budgets(1, 2, 2) == [1, 2]
    assert select_cli.rung_budgets(5, 3, 3) == [3]
    assert select_cli.rung_budgets(0.5, 3, 2) == [0.5, 1.5, 2]
    nan = float("nan")
    arms = [
        select_cli.Arm(s, 1e-3, None, score=v, tiebreak=t)
        for s, v, t in [
            ("ft", 0.5, 0.9),
            ("lp", nan, 0.9),
            ("g_lf", 0.7, 0.6),
            ("l2_sp", 0.7, 0.6),
            ("lp_ft", 0.6, 0.9),
            ("l1_sp", 0.7, 0.8),
            ("auto_rgn", 0.7, nan),
        ]
    ]
    arms[4].failed = "diverged"
    # ceil(7 / 2) = 4: by score, then tie-break (NaN last), then grid order; failed and NaN last.
    kept = select_cli.survivors(arms, 2)
    assert [a.strategy for a in kept] == ["l1_sp", "g_lf", "l2_sp", "auto_rgn"]
    assert [a.strategy for a in select_cli.survivors(arms, 7)] == ["l1_sp"]
    assert select_cli.tiebreak_metric("accuracy") == "auroc"
    assert select_cli.tiebreak_metric("auroc") == "map"


def test_the_grid_winner_breaks_ties_as_the_selection_does(monkeypatch):
    """Equal mean val accuracy: the grid's winner is the better AUROC, not the first cell."""
    from medft_jax.report.cells import COMPLETE, Cell

    def cell(strategy: str, auroc: float) -> Cell:
        val = {"accuracy": (0.75, 0.0), "auroc": (auroc, 0.0)}
        return Cell("demo", "resnet50", strategy, COMPLETE, "accuracy", 1e-3, val, val)

    cells = [cell("ft", 0.7), cell("lp", 0.9), cell("g_lf", 0.8)]
    summary = type("S", (), {"cells": {c.key: c for c in cells}})()
    monkeypatch.setattr(select_cli, "collect", lambda records, failures: summary)
    outcome = {"pick": {"strategy": "lp", "lr": 1e-3}, "dataset": "demo", "arch": "resnet50"}
    outcome["cost"] = {"epochs": 1, "seconds": 1.0, "device_seconds": 1.0}
    got = select_cli.compare_with_grid([], [], 3, outcome)
    assert got["winner_by_val"] == {"strategy": "lp", "lr": 1e-3} and got["same_strategy"]


def test_the_grid_winner_is_never_an_lr_at_which_a_seed_diverged(capsys):
    """FT at 1e-3: two seeds at 0.9, the third diverged; at 1e-4 three at 0.8. The report
    never chooses 1e-3, so neither does the comparison; the pick's test value is the grid's
    at the pick's own LR."""
    from tests.test_report import fail, rec

    records = [rec(strategy="ft", lr=1e-3, seed=s, val=0.9, test=0.7) for s in (0, 1)]
    records += [rec(strategy="ft", lr=1e-4, seed=s, val=0.8, test=0.6) for s in (0, 1, 2)]
    failures = [fail(strategy="ft", lr=1e-3, seed=2)]
    outcome = {"pick": {"strategy": "ft", "lr": 1e-3}, "dataset": "bach", "arch": "resnet50"}
    outcome["cost"] = {"epochs": 1, "seconds": 1.0, "device_seconds": 1.0}
    got = select_cli.compare_with_grid(records, failures, 6, outcome)
    assert got["winner_by_val"] == {"strategy": "ft", "lr": 1e-4}
    assert got["same_strategy"] and not got["same_strategy_and_lr"]
    assert got["winner_test"] == pytest.approx(0.6) and got["pick_test"] == pytest.approx(0.7)
    # The diverged run's cost is in no note: the fractions are said to be at most that.
    assert got["complete"] and got["runs_failed"] == 1
    select_cli._print_outcome({**outcome, "metric_label": "AUROC", "grid": got,
                               "pick": {**outcome["pick"], "val": 0.9},
                               "cost": {**outcome["cost"], "arms": 2}})  # fmt: skip
    (full,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("full grid")]
    assert full.startswith("full grid (5 of 6 runs recorded): ") and full.endswith(
        " of its device-seconds (at most: the 1 diverged run(s) are counted without the "
        "epochs they trained, which their failure notes do not keep)"
    )


# --- what a dry run checks and shows -------------------------------------------------------------

WEIGHTS_GRID = """
from medft_jax.grid import Grid

def get_config():
    return Grid(name="w", datasets=("demo",), archs=("resnet_tiny",), strategies=("lp",),
                lrs=(1e-3,), seeds=(0,), settings={{"weights": {weights!r}, "epochs": 1}})
"""


def test_a_grids_missing_weights_folder_fails_the_dry_run_naming_its_key(tmp_path, capsys):
    """Looked up only once the data is loaded, it failed the real sweep naming --weights."""
    config = tmp_path / "w.py"
    for weights in ("auto", "imagenet", "none", str(tmp_path)):  # no file needed, or one there
        config.write_text(WEIGHTS_GRID.format(weights=weights))
        assert sweep_cli.main(["--config", str(config), "--dry-run"]) == 0, weights
    capsys.readouterr()
    missing = tmp_path / "nonexistent"
    config.write_text(WEIGHTS_GRID.format(weights=str(missing)))
    out = tmp_path / "runs"
    for extra in (["--dry-run"], []):
        assert sweep_cli.main(["--config", str(config), "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert err == (
            f"error: --config {config}: grid 'w': settings['weights'] {missing}: no such "
            "checkpoint folder; "
            "expected auto, imagenet, none or a model checkpoint folder\n"
        )
    assert not out.exists()


def test_dry_run_names_runs_without_the_hash_decided_at_run_time(tmp_path, capsys):
    """The folder's hash covers the data and weights fingerprints, unknown before loading."""
    import fnmatch

    config = _grid_file(
        tmp_path, "tiny", strategies=("lp",), lrs=(1e-3, 1e-4), seeds=(0,), epochs=1
    )
    assert sweep_cli.main(["--config", str(config), "--out", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    shown = [line.split()[-1] for line in out.splitlines() if line[:5].strip().isdigit()]
    folders = [
        results.run_name(c.to_dict()) for c in _identified(grid_lib.load_grid(config).configs())
    ]
    assert len(shown) == len(folders) == 2
    for name, folder in zip(shown, folders, strict=True):
        assert name.endswith("-*") and fnmatch.fnmatch(folder, name), (name, folder)
    assert "hash in place of '*'" in out and "decided at run time" in out


@pytest.mark.slow  # trains a run
def test_a_run_refused_for_its_own_settings_leaves_its_datasets_other_runs(
    tmp_path, capsys, monkeypatch
):
    """A data error of one run's settings is that run's: the sweep says so, goes on with
    the dataset's other runs and exits 1 (an unloadable dataset skips them all)."""
    from medft_jax import outcomes

    config = _grid_file(tmp_path, "g", strategies=("ft", "lp"), lrs=(1e-3,), seeds=(0,), epochs=1)
    real = Session.run
    calls = []

    def run(self, config, **kw):
        calls.append(config.strategy)
        if config.strategy == "ft":
            return outcomes.Outcome(config, outcomes.REFUSED, error="its batch does not fit")
        return real(self, config, **kw)

    monkeypatch.setattr(Session, "run", run)
    out = tmp_path / "o"
    assert sweep_cli.main(["--config", str(config), "--out", str(out)]) == 1
    text = capsys.readouterr().out
    assert calls == ["ft", "lp"] and "refused (its batch does not fit)" in text
    assert [r["config"]["strategy"] for r in results.load_records(out)] == ["lp"]


def test_each_shard_writes_the_whole_filtered_grid_as_its_plan(tmp_path, monkeypatch):
    """The plan is what a report expects without --config: every run of the filtered grid,
    whichever shard writes it, one file for all shards (no training here)."""
    from medft_jax import outcomes

    config = _grid_file(
        tmp_path, "g", strategies=("ft", "lp"), lrs=(1e-3,), seeds=(0, 1, 2), epochs=1
    )
    ran = []

    def run(self, config, **kw):
        ran.append(config.seed)
        return outcomes.Outcome(config, outcomes.REFUSED, error="not trained here")

    monkeypatch.setattr(Session, "run", run)
    out = tmp_path / "o"
    for shard in ("0/3", "2/3"):
        argv = ["--config", str(config), "--out", str(out), "--only", "strategy=lp"]
        assert sweep_cli.main([*argv, "--shard", shard]) == 1
    assert sorted(ran) == [0, 2]  # each shard one seed of LP
    [(path, plan)] = plans.load_plans(out)
    assert path.parent == out / ".plans" and path.name.startswith("tiny-")
    assert (plan["grid"], plan["only"]) == ("tiny", ["strategy=lp"])
    assert sorted((r["strategy"], r["seed"]) for r in plan["runs"]) == [
        ("lp", k) for k in (0, 1, 2)
    ]


def test_only_slices_of_one_grid_listed_in_two_orders_add_up_and_another_grid_is_said(
    tmp_path, monkeypatch, capsys
):
    """The plan's grid hash was of the runs in listed order: a ``tuple(some_set)`` axis lists
    them otherwise in every process, so a second host's --only slice replaced the first's
    plan, and a lost shard of it was reported complete. Another grid file of the same name
    replaced it too, without a word."""
    from medft_jax import outcomes, results

    def refused(self, config, **kw):
        return outcomes.Outcome(config, outcomes.REFUSED, error="not trained here")

    monkeypatch.setattr(Session, "run", refused)
    out = tmp_path / "o"
    axes = {"lrs": (1e-3,), "seeds": (0, 1), "epochs": 1}
    one = _grid_file(tmp_path, "a", strategies=("ft", "lp"), **axes)
    other = _grid_file(tmp_path, "b", strategies=("lp", "ft"), **axes)  # the same grid
    assert sweep_cli.main(["--config", str(one), "--out", str(out), "--only", "seed=0"]) == 1
    assert sweep_cli.main(["--config", str(other), "--out", str(out), "--only", "seed=1"]) == 1
    [(path, plan)] = plans.load_plans(out)
    assert plan["only"] == ["seed=0", "seed=1"] and len(plan["runs"]) == 4
    assert "note:" not in capsys.readouterr().err
    # A plan written before (its hash of the runs in listed order) is added to as well.
    configs = [c.to_dict() for c in grid_lib.load_grid(one).configs()]
    path.unlink()
    legacy = results.config_hash({"runs": configs})
    plans.write_plan(out, "tiny", ["seed=0"], [c for c in configs if c["seed"] == 0], legacy)
    assert sweep_cli.main(["--config", str(one), "--out", str(out), "--only", "seed=1"]) == 1
    [(_, plan)] = plans.load_plans(out)
    assert plan["only"] == ["seed=0", "seed=1"] and len(plan["runs"]) == 4
    assert "note:" not in capsys.readouterr().err
    # Another grid of the name: replaced, and said so; by its dry run first, where a grid
    # file is checked before a sweep (it said nothing).
    third = _grid_file(tmp_path, "c", strategies=("ft",), **axes)
    assert sweep_cli.main(["--config", str(third), "--out", str(out), "--dry-run"]) == 0
    dry = [x for x in capsys.readouterr().err.splitlines() if x.startswith("note:")]
    assert len(dry) == 1 and dry[0].startswith(
        f"note: {path} held the plan of another definition of grid 'tiny' (4 runs: the grid "
        "file was edited since, or another grid file has its name); the sweep replaces it. "
    )
    assert len(plans.load_plans(out)[0][1]["runs"]) == 4  # a dry run writes nothing
    assert sweep_cli.main(["--config", str(third), "--out", str(out)]) == 1
    [(_, plan)] = plans.load_plans(out)
    assert len(plan["runs"]) == 2
    notes = [x for x in capsys.readouterr().err.splitlines() if x.startswith("note:")]
    assert notes == [
        f"note: {path} held the plan of another definition of grid 'tiny' (4 runs: the grid "
        "file was edited since, or another grid file has its name); replaced by this one. "
        "Records of runs this grid lacks still count in a report without --config (a dropped "
        "LR in its LR choice): move their folders out, or report with --config (and give each "
        "grid file its own name)"
    ]
    # The same grid (a --only slice of it) planned by an older medft-jax whose runs computed
    # at another numerics version: an upgrade, not an edit of the grid file (as the line
    # said); the same runs under another hash (dataset_options edited): no upgrade.
    configs = [c.to_dict() for c in grid_lib.load_grid(third).configs()]
    for runs, said in (
        ([{**configs[0], "numerics": 1}], "1 run: the same runs computed by an older "
         "medft-jax's numerics version: they are run again); replaced"),
        (configs, "2 runs: the grid file was edited since, or another grid file has its name)"),
    ):  # fmt: skip
        path.unlink()
        plans.write_plan(out, "tiny", [], runs, "old-hash")
        assert sweep_cli.main(["--config", str(third), "--out", str(out)]) == 1
        notes = [x for x in capsys.readouterr().err.splitlines() if x.startswith("note:")]
        assert notes[0].startswith(
            f"note: {path} held the plan of another definition of grid 'tiny' ({said}"
        )


def test_two_grid_files_differing_only_in_a_folders_manual_dir_are_two_definitions(
    tmp_path, monkeypatch, capsys
):
    """A run's config lacks the dataset options: the plan of a grid whose folder moved was
    added to the first one's as the same grid, without the edited-grid note."""
    from medft_jax import outcomes

    monkeypatch.setattr(
        Session, "run", lambda self, c, **kw: outcomes.Outcome(c, outcomes.REFUSED, error="no")
    )
    imgs, config = _folder_grid(tmp_path, seeds=(0, 1, 2))
    out = tmp_path / "runs"
    assert sweep_cli.main(["--config", str(config), "--out", str(out)]) == 1
    assert "note:" not in capsys.readouterr().err
    # A plan the previous version wrote (its hash without the options): the same grid,
    # taken over silently with the new hash, not replaced as an edited one.
    [(path, plan)] = plans.load_plans(out)
    configs = [c.to_dict() for c in grid_lib.load_grid(config).configs()]
    assert plans.grid_hash_of(configs) != results.config_hash({"runs": configs})  # not the oldest
    path.write_text(json.dumps({**plan, "grid_hash": plans.grid_hash_of(configs)}))
    assert sweep_cli.main(["--config", str(config), "--out", str(out)]) == 1
    assert "note:" not in capsys.readouterr().err
    assert plans.load_plans(out)[0][1]["grid_hash"] == plan["grid_hash"]
    shutil.copytree(imgs, tmp_path / "moved")
    config.write_text(config.read_text().replace(repr(str(imgs)), repr(str(tmp_path / "moved"))))
    assert sweep_cli.main(["--config", str(config), "--out", str(out)]) == 1
    notes = [x for x in capsys.readouterr().err.splitlines() if x.startswith("note:")]
    assert len(notes) == 1 and "held the plan of another definition of grid 'f'" in notes[0]
    # Unedited, a sweep adds to its own plan silently again.
    assert sweep_cli.main(["--config", str(config), "--out", str(out)]) == 1
    assert "note:" not in capsys.readouterr().err


def test_the_dry_run_says_a_run_another_process_trains_is_running(tmp_path, capsys):
    """It listed it as "todo" and counted it in "to run" and its cost: a user checking
    progress before launching more shards read it as not started."""
    config = _grid_file(tmp_path, "g", strategies=("ft", "lp"), lrs=(1e-3,), seeds=(0,), epochs=1)
    out = tmp_path / "o"
    name = sweep_cli._unhashed(grid_lib.load_grid(config).configs()[0]).replace("*", "0" * 16)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out / name)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert sweep_cli.main(["--config", str(config), "--out", str(out), "--dry-run"]) == 0
    finally:
        holder.kill()
        holder.wait()
    text = capsys.readouterr().out
    assert "grid tiny: 2 runs (1 dataset x 1 arch x 2 strategies x 1 lr x 1 seed)" in text
    assert re.search(rf"\n +0  running  .*  {re.escape(name[:-16])}\*\n", text), text
    assert re.search(r"\n +1  todo  ", text)
    assert "done 0, failed 0, running in another process 1, to run 1: " in text
    # The holder gone, its lock file left naming another host (a node killed mid-run): that
    # node cannot be asked from here, and the sweep runs it where no process holds it; it
    # read "running", "nothing to run", forever.
    lock = out / name / locks.LOCK_NAME
    lock.write_text("{")  # being written, or unreadable: a live process's, as before
    assert sweep_cli.main(["--config", str(config), "--out", str(out), "--dry-run"]) == 0
    assert re.search(r"\n +0  running  ", capsys.readouterr().out)
    lock.write_text(json.dumps({"pid": 1, "host": "node17"}))
    assert sweep_cli.main(["--config", str(config), "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert re.search(rf"\n +0  held\?  .*  {re.escape(name[:-16])}\*\n", text), text
    assert (
        "done 0, failed 0, held by another host's lock 1 (running there, or a dead node's "
        "lock: the sweep runs it where no process holds it), to run 1: "
    ) in text
    # A run's lock names its settings: a folder of this cell's name held under other
    # settings (an edited grid's run) is not this cell's run; under its own, it is.
    key = results.settings_hash(grid_lib.load_grid(config).configs()[0].to_dict())
    for settings, state in (("f" * 64, "todo"), (key, "held?")):
        lock.write_text(json.dumps({"pid": 1, "host": "node17", "settings": settings}))
        assert sweep_cli.main(["--config", str(config), "--out", str(out), "--dry-run"]) == 0
        assert re.search(rf"\n +0  {re.escape(state)}  ", capsys.readouterr().out), state


def test_a_run_lock_names_the_runs_settings(tmp_path):
    """The sweep's dry run reads them to tell an edited grid's held run from this cell's."""
    lock = locks.acquire(tmp_path / "run", "ab" * 32)
    try:
        assert locks.held_settings(tmp_path / "run") == "ab" * 32
        assert json.loads((tmp_path / "run" / locks.LOCK_NAME).read_text())["pid"] == os.getpid()
    finally:
        lock.release()
    assert locks.held_settings(tmp_path / "run") is None  # released: no lock file
    with locks.run_lock(tmp_path / "other"):  # no settings given: none written
        assert locks.held_settings(tmp_path / "other") is None


HOLDER = """
import sys, time
from medft_jax import locks
lock = locks.acquire(sys.argv[1])
print("locked", flush=True)
time.sleep(60)
"""


def test_a_sweep_that_reads_no_dataset_plans_nothing_and_an_unwritable_plan_is_a_note(
    tmp_path, monkeypatch, capsys
):
    """A sweep whose every dataset was unavailable (a mistaken --data-dir) left a plan of
    all its runs, and every later report read them missing; a ``.plans`` folder another
    user owns stopped the whole sweep, naming a temporary file."""
    import errno

    from medft_jax import outcomes, plans

    config = _grid_file(tmp_path, "g", strategies=("ft", "lp"), lrs=(1e-3,), seeds=(0,), epochs=1)
    out = tmp_path / "o"

    def unavailable(self, config, **kw):
        return outcomes.Outcome(config, outcomes.UNAVAILABLE, error="no such folder")

    monkeypatch.setattr(Session, "run", unavailable)
    assert sweep_cli.main(["--config", str(config), "--out", str(out)]) == 1
    assert plans.load_plans(out) == []
    capsys.readouterr()

    seen = []

    def killed_in_its_first_run(self, config, on_start=None, **kw):
        on_start(config)  # training now: the plan must be on disk already
        seen.append(plans.plan_path(out, "tiny").is_file())
        raise KeyboardInterrupt

    monkeypatch.setattr(Session, "run", killed_in_its_first_run)
    assert sweep_cli.main(["--config", str(config), "--out", str(out)]) != 0
    assert seen == [True]
    plans.plan_path(out, "tiny").unlink()
    capsys.readouterr()

    def refused(self, config, **kw):
        return outcomes.Outcome(config, outcomes.REFUSED, error="not trained here")

    def no_write(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(out / ".plans" / ".x.tmp"))

    monkeypatch.setattr(Session, "run", refused)
    monkeypatch.setattr(plans, "write_bytes", no_write)
    assert sweep_cli.main(["--config", str(config), "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert captured.out.count("refused (not trained here)") == 2  # both runs still reached
    path = plans.plan_path(out, "tiny")
    assert captured.err.startswith(
        f"note: {path} not written (Permission denied): a report without --config will not "
        "count this sweep's runs that never start\n"
    )


def test_select_whose_arm_another_process_trains_exits_75(tmp_path, capsys):
    """Busy is not bad input: a second selection into one --out says so in one line and
    exits 75 (try again later), as ``experiments.run`` does for a run another process holds."""
    from medft_jax import locks
    from medft_jax.errors import EXIT_BUSY

    config = _grid_file(tmp_path, "g", strategies=("lp",), lrs=(1e-3, 1e-4), seeds=(0,), epochs=2)
    out = tmp_path / "sel"
    first = _identified(grid_lib.load_grid(config).configs())[0]
    run = results.run_dir(out, first.to_dict())
    held = locks.acquire(run)  # the other selection, training this arm now
    try:
        status = select_cli.main(["--config", str(config), "--out", str(out), "--min-epochs", "1"])
    finally:
        held.release()
    err = capsys.readouterr().err.strip()
    assert status == EXIT_BUSY == 75
    assert err == (
        f"error: --out {out}: arm lp @ lr 0.001 is running in process {os.getpid()} (another "
        "selection, or a sweep or run given this --out); give each selection its own --out"
    )
    assert not list(out.rglob("record.json"))


def test_the_selections_pick_line_names_eq6_accuracy(capsys):
    """Eq. 6 of a 3-class task reads higher than top-1: the pick's score is named so."""
    outcome = {
        "dataset": "folder",
        "arch": "resnet50",
        "pick": {"strategy": "lp", "lr": 1e-3, "val": 5 / 9},
        "metric": "accuracy",
        "metric_label": "accuracy (eq. 6)",
        "cost": {"epochs": 2.5, "seconds": 10.0, "device_seconds": 10.0, "arms": 3},
    }
    select_cli._print_outcome(outcome)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("pick for folder (resnet50): lp at lr 0.001 (val accuracy (eq. 6)")
    outcome["pick"] = {
        "strategy": "l2_sp",
        "lr": 1e-3,
        "val": 0.5,
        "strategy_options": {"alpha": 0.1},
    }
    select_cli._print_outcome(outcome)
    assert (
        capsys.readouterr()
        .out.strip()
        .startswith("pick for folder (resnet50): l2_sp (alpha 0.1) at lr 0.001 (val")
    )
    assert lines[1] == (
        "accuracy (eq. 6) is the paper's mean over classes of one-vs-rest accuracy, not the "
        "share of images classed right"
    )


@pytest.mark.parametrize(
    ("dataset", "multilabel", "classes", "shown"),
    [
        ("medmnist/retinamnist", False, 5, "test top1_accuracy 0.2000"),  # not eq. 6's 0.68
        ("medmnist/breastmnist", False, 2, "test accuracy 0.6800"),
        ("medmnist/chestmnist", True, 14, "test map 0.3000"),
    ],
)
def test_a_sweep_line_shows_the_reports_headline_named_as_run_names_it(
    dataset, multilabel, classes, shown
):
    from medft_jax.config import RunConfig
    from medft_jax.outcomes import DONE, Outcome

    config = RunConfig(dataset=dataset, arch="resnet_tiny", strategy="ft", epochs=1)
    record = {
        "config": config.to_dict(),
        "primary_metric": "map" if multilabel else "accuracy",
        "multilabel": multilabel,
        "num_classes": classes,
        "test": {"accuracy": 0.68, "top1_accuracy": 0.2, "map": 0.3},
        "best_epoch": 0,
        "epochs": [{}],
    }
    line = sweep_cli._outcome_text(Outcome(config, DONE, record, seconds=6.0))
    assert line == f"done in 6 s, best epoch 1 of 1, {shown}"
    # Resumed: the overhead is of every call (the record's wall time), so is said to be.
    record["seconds"] = {"wall": 20.0, "train": 5.0, "setup": 9.0, "compile": 6.0}
    line = sweep_cli._outcome_text(Outcome(config, DONE, record, seconds=6.0))
    assert line == (
        f"done in 6 s (20 s with its earlier calls), best epoch 1 of 1, {shown}; overhead "
        "15.0 s = 75% (setup 9.0, compile 6.0)"
    )
    # Ended by its patience before its epochs: said (a run given 12 read as one given 6).
    record["config"]["epochs"], record["epochs"], record["best_epoch"] = 12, [{}] * 6, 0
    line = sweep_cli._outcome_text(Outcome(config, DONE, record, seconds=6.0))
    assert "best epoch 1 of 6 (stopped early, of at most 12), " in line


def test_a_dry_run_on_a_cpu_host_says_the_assumed_throughput_is_an_accelerators(
    tmp_path, capsys, monkeypatch
):
    """The quick grid's dry run estimated "<1 s" from H100 speeds on a CPU host, where it
    takes 26 minutes, and said nothing of it."""
    argv = ["--config", str(QUICK), "--out", str(tmp_path / "runs"), "--dry-run"]
    import pkgutil

    real = pkgutil.iter_modules
    said = ", often a hundred times slower or more"
    monkeypatch.setattr("pkgutil.iter_modules", lambda *a: iter(()))  # no GPU/TPU plugin
    for platforms, why in (
        ("cpu", "JAX_PLATFORMS=cpu runs JAX on this host's CPU"),  # it may have a GPU
        ("cuda", None),
        ("cuda,cpu", None),
        ("", "this host has no GPU or TPU plugin for JAX and runs on its CPU"),
    ):
        monkeypatch.setenv("JAX_PLATFORMS", platforms)
        assert sweep_cli.main(argv) == 0
        out = capsys.readouterr().out
        assert (said in out) == (why is not None) and (why is None or f"; {why}{said}" in out)

    monkeypatch.setenv("JAX_PLATFORMS", "")
    for name in ("jax_cuda12_plugin", "libtpu", "jax_rocm60_plugin"):
        plugin = pkgutil.ModuleInfo(None, name, True)
        monkeypatch.setattr("pkgutil.iter_modules", lambda *a, p=plugin: iter([p]))
        assert sweep_cli.accelerator_installed()  # judged without starting a backend
    # A plugin only in the jax_plugins namespace (older CUDA wheels, Metal).
    monkeypatch.setattr("pkgutil.iter_modules", lambda *a: real(*a) if a else iter(()))
    assert not sweep_cli.accelerator_installed() or _has_jax_plugins()
    space = tmp_path / "site" / "jax_plugins" / "xla_cuda12"
    space.mkdir(parents=True)
    (space / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert sweep_cli.accelerator_installed()


def _has_jax_plugins() -> bool:
    """Whether this environment has a jax_plugins module of its own (then a host with one)."""
    import importlib.util
    import pkgutil

    spec = importlib.util.find_spec("jax_plugins")
    return bool(spec and any(pkgutil.iter_modules(list(spec.submodule_search_locations or []))))


def test_a_missing_grid_file_names_the_toolkits_grids(tmp_path, capsys, monkeypatch):
    """Run from another folder, the README's ``--config experiments/configs/quick.py`` is no
    file: the error did not say where the grids are."""
    monkeypatch.chdir(tmp_path)
    assert sweep_cli.main(["--config", "experiments/configs/quick.py", "--dry-run"]) == 2
    configs = Path(sweep_cli.__file__).resolve().parent / "configs"
    assert capsys.readouterr().err == (
        "error: --config experiments/configs/quick.py: no such file (expected a Python file "
        f"with get_config()); the toolkit's grids: {configs / 'own_folder.py'}, "
        f"{configs / 'paper.py'}, {configs / 'quick.py'} (or by name: --config quick)\n"
    )
    # By name, as an installed wheel's user has no experiments/configs/ beside them; a file
    # of that name here is the user's own, and wins.
    (tmp_path / "quick").mkdir()  # a folder named so here is no grid file
    assert sweep_cli.main(["--config", "quick", "--dry-run"]) == 0
    said = capsys.readouterr()
    assert said.out.startswith("grid quick: 64 runs")
    assert said.err.startswith(f"note: --config quick: the toolkit's grid {configs / 'quick.py'}\n")
    # A file name (.py) is the user's file: their edited copy elsewhere is not replaced by
    # the toolkit's without a word.
    assert sweep_cli.main(["--config", "paper.py", "--dry-run"]) == 2
    assert "--config paper.py: no such file" in capsys.readouterr().err
    (tmp_path / "quick.py").write_text(
        "from medft_jax.grid import Grid\n"
        "def get_config():\n"
        "    return Grid(name='mine', datasets=('demo',), archs=('resnet_tiny',),\n"
        "                strategies=('ft',), lrs=(1e-3,), seeds=(0,))\n"
    )
    assert sweep_cli.main(["--config", "quick.py", "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("grid mine: 1 run")


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ("import sys\nsys.exit(0)\n", "exited while loading (SystemExit: 0)"),
        ("def get_config():\n    raise SystemExit(3)\n", "exited in get_config() (SystemExit: 3)"),
    ],
)
def test_a_grid_file_that_exits_is_refused_not_obeyed(tmp_path, capsys, body, said):
    """``sys.exit(0)`` in a grid file ended the sweep with 0 having done nothing (a ``sweep &&
    report`` script went on); ``sys.exit(3)`` ended it with 3 and no word."""
    (tmp_path / "g.py").write_text(body)
    assert sweep_cli.main(["--config", str(tmp_path / "g.py"), "--dry-run"]) == 2
    assert capsys.readouterr().err == (
        f"error: --config {tmp_path / 'g.py'}: {said}; a grid file only defines "
        "get_config(), returning a Grid\n"
    )


@pytest.mark.slow  # seconds: the fast tier stays under 2 minutes
def test_dry_run_says_measured_throughput_only_for_the_runs_it_was_used_for(tmp_path, capsys):
    """The paper grid's dry run beside the demo's 32 px record said its estimates came from
    "records in runs (of its 1)", measured throughput that matched none of its runs."""
    g = grid_lib.load_grid(PAPER)
    out = tmp_path / "runs"

    def record(config):
        epochs = [{"images_per_s": 400.0, "train_seconds": 2.0}]
        results.write_record(
            results.record_path(out, config.to_dict()),
            {"config": config.to_dict(), "epochs": epochs},
        )

    demo = dataclasses.replace(g.config("bach", "vgg19", "lp", 1e-3, 0), image_size=32)
    record(dataclasses.replace(demo, dataset="demo"))
    argv = ["--config", str(PAPER), "--out", str(out), "--dry-run"]
    assert sweep_cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "measured throughput" not in text and "estimates are of train steps" in text
    record(g.config("bach", "vgg19", "lp", 1e-3, 0))  # 8 tasks x 3 LRs x 3 seeds share it
    assert sweep_cli.main(argv) == 0
    said = f"for the 72 runs whose arch, image size and strategy have records in {out}, their "
    assert said + "measured throughput" in capsys.readouterr().out


def test_the_grid_comparison_counts_device_seconds_alike_and_says_when_the_grid_is_partial(
    capsys,
):
    """The selection's cost was wall seconds, the grid's its records' train seconds, both
    called device-seconds: a grid swept on 2 devices against a selection on 1 was off 2x.
    A grid folder of some runs only gave fractions over 100 % and "same strategy: no"
    for a pick the grid never ran."""
    from tests.test_report import rec

    records = []
    for strategy, val in (("ft", 0.9), ("lp", 0.8)):
        for seed in (0, 1):
            r = rec(strategy=strategy, lr=1e-3, seed=seed, val=val, test=0.7, epochs=2)
            r["environment"] = {**r.get("environment", {}), "device_count": 2}
            records.append(r)
    outcome = {"pick": {"strategy": "ft", "lr": 1e-3}, "dataset": "bach", "arch": "resnet50"}
    outcome["cost"] = {"epochs": 2.5, "seconds": 2.0, "device_seconds": 2.0}
    got = select_cli.compare_with_grid(records, [], 4, outcome)
    # Each record: 2 epochs of 1.0 s on 2 devices.
    assert (got["complete"], got["epochs"], got["device_seconds"]) == (True, 8, 16.0)
    assert (got["fraction_epochs"], got["fraction_seconds"]) == (2.5 / 8, 2.0 / 16)
    assert got["same_strategy"] is True
    part = select_cli.compare_with_grid(records[2:], [], 4, outcome)  # LP's runs alone
    assert part["complete"] is False and math.isnan(part["fraction_seconds"])
    # Neither can be said without the pick's strategy in the grid (was False: "differs").
    assert part["same_strategy"] is None and part["same_strategy_and_lr"] is None
    o = {**outcome, "metric_label": "AUROC", "grid": part}
    o["pick"] = {**o["pick"], "val": 0.9}
    o["cost"] = {**o["cost"], "arms": 2, "epochs": 1234.5}
    select_cli._print_outcome(o)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].endswith("spent 1,234.5 epochs, 2 device-s over 2 arms")
    assert lines[1] == (
        "grid incomplete: 2 of its 4 runs recorded (4 epochs, 8 device-s), so no fraction of "
        "its cost is given and its winner is that of these runs alone"
    )
    assert "; same strategy: unknown (the grid has no value for it); by test: lp" in lines[2]


def test_the_picks_lr_equal_to_the_grids_on_both_metrics_is_the_grids_lr():
    """FT at 1e-3 and 1e-4 equal on both validation metrics: the grid takes the smaller
    (the report's rule), the selection the first in grid order; "same strategy and lr: no"
    said the two disagreed where the grid cannot tell them apart."""
    from tests.test_report import rec

    records = [
        rec(strategy=strategy, lr=lr, seed=seed, val=val, epochs=2)
        for strategy, lr, val in (("ft", 1e-3, 0.9), ("ft", 1e-4, 0.9), ("lp", 1e-3, 0.5))
        for seed in (0, 1)
    ]
    outcome = {"pick": {"strategy": "ft", "lr": 1e-3}, "dataset": "bach", "arch": "resnet50"}
    outcome["cost"] = {"epochs": 2.5, "seconds": 2.0, "device_seconds": 2.0}
    got = select_cli.compare_with_grid(records, [], 6, outcome)
    assert got["winner_by_val"] == {"strategy": "ft", "lr": 1e-4}
    assert got["same_strategy"] is True and got["same_strategy_and_lr"] is True
    for r in records:  # 1e-3 behind on the tie-breaker (AUROC): another LR than the grid's
        r["val"]["auroc"] = 0.8 if r["config"]["lr"] == 1e-3 else 0.9
        r["test"]["auroc"] = 0.5
    got = select_cli.compare_with_grid(records, [], 6, outcome)
    assert got["same_strategy"] is True and got["same_strategy_and_lr"] is False


def test_a_tie_of_grid_cells_is_named_not_its_first_cell(capsys):
    """Five strategies at val mAP 1.0 and AUROC 1.0 (12 validation images): the first in
    cell order was "the grid winner", and "same strategy: yes" an artefact of that order."""
    from tests.test_report import rec

    records = [
        rec(strategy=strategy, lr=1e-3, seed=seed, val=1.0, test=test, epochs=2)
        for strategy, test in (("ft", 0.7), ("lp", 0.6), ("g_lf", 0.8))
        for seed in (0, 1)
    ]
    records += [rec(strategy="bitfit", lr=1e-3, seed=s, val=0.5, epochs=2) for s in (0, 1)]
    outcome = {"pick": {"strategy": "lp", "lr": 1e-3}, "dataset": "bach", "arch": "resnet50"}
    outcome["cost"] = {"epochs": 2.5, "seconds": 2.0, "device_seconds": 2.0}
    got = select_cli.compare_with_grid(records, [], 8, outcome)
    assert {t["strategy"] for t in got["tied_by_val"]} == {"ft", "lp", "g_lf"}
    assert got["same_strategy"] is True and got["same_strategy_and_lr"] is True
    outcome["pick"] = {"strategy": "bitfit", "lr": 1e-3}
    assert select_cli.compare_with_grid(records, [], 8, outcome)["same_strategy"] is False
    o = {**outcome, "metric_label": "AUROC", "grid": got}
    o["pick"], o["cost"] = {"strategy": "lp", "lr": 1e-3, "val": 1.0}, {**o["cost"], "arms": 4}
    select_cli._print_outcome(o)
    line = next(x for x in capsys.readouterr().out.splitlines() if "grid winner" in x)
    assert "): a tie of " in line and "same strategy (among the tied): yes" in line, line


def test_dry_run_calls_a_paper_task_record_of_another_val_fraction_changed(tmp_path, capsys):
    """The grid's val fraction 0.3 against a record made at 0.1: "done, nothing to run",
    while the sweep (a new data fingerprint) ran it again."""
    grid_text = (
        "from medft_jax.grid import Grid\n\n"
        "def get_config():\n"
        "    return Grid(name='vf', datasets=('chexpert',), archs=('resnet_tiny',),\n"
        "                strategies=('ft',), lrs=(1e-4,), seeds=(0,),\n"
        "                settings={'weights': 'none', 'epochs': 1, 'image_size': 32},\n"
        "                dataset_options={'chexpert': {'val_fraction': VF}})\n"
    )
    out = tmp_path / "runs"
    configs = {}
    for vf in ("0.1", "0.3"):
        configs[vf] = tmp_path / f"vf{vf[-1]}.py"
        configs[vf].write_text(grid_text.replace("VF", vf))
    (c,) = grid_lib.load_grid(configs["0.1"]).configs()
    record = {"config": c.to_dict(), "dataset_options": {"uncertain": "ones"}}  # no field: 0.1
    results.write_record(results.record_path(out, c.to_dict()), record)

    def states(config: Path) -> list[str]:
        assert sweep_cli.main(["--config", str(config), "--out", str(out), "--dry-run"]) == 0
        text = capsys.readouterr().out
        return [line.split()[1] for line in text.splitlines() if line[:5].strip().isdigit()]

    assert states(configs["0.1"]) == ["done"]
    assert states(configs["0.3"]) == ["changed"]


@pytest.mark.slow  # two tiny runs
def test_a_batch_not_dealt_evenly_over_the_devices_stops_the_sweep_once(
    tmp_path, capsys, monkeypatch
):
    """Each run refused it on its own once its data had loaded: one identical line per run
    (hundreds on a large grid), exit 1. Now one line before any run, naming the field."""
    import jax

    config = _grid_file(tmp_path, "g", strategies=("lp", "ft"), lrs=(1e-3,), seeds=(0,), epochs=1)
    out = tmp_path / "runs"
    real = jax.device_count
    monkeypatch.setattr(jax, "device_count", lambda *a: 3)  # 32 images a batch over 3
    assert sweep_cli.main(["--config", str(config), "--out", str(out)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: --config {config}: settings['batch_size'] 32 must be a multiple of the 3 "
        "devices this job trains on"
    )
    assert not out.exists()
    # A grid finished before (on one device) is done, not refused, on 3.
    monkeypatch.setattr(jax, "device_count", real)
    assert sweep_cli.main(["--config", str(config), "--out", str(out)]) == 0
    monkeypatch.setattr(jax, "device_count", lambda *a: 3)
    assert sweep_cli.main(["--config", str(config), "--out", str(out)]) == 0


def test_a_grid_files_helper_module_is_the_one_beside_it(tmp_path, monkeypatch):
    """A helper imported by a grid file was looked up from where the command ran: a
    same-named helper there gave its settings (epochs 1, not the grid's 3) without a word."""
    here, lab = tmp_path / "here", tmp_path / "lab"
    for folder, epochs in ((here, 1), (lab, 3)):
        folder.mkdir()
        (folder / "shared_settings.py").write_text(f"SETTINGS = {{'epochs': {epochs}}}\n")
    (lab / "mine.py").write_text(
        "from shared_settings import SETTINGS\nfrom medft_jax.grid import Grid\n"
        "def get_config():\n"
        "    return Grid(name='mine', datasets=('demo',), archs=('resnet_tiny',),\n"
        "                strategies=('ft',), lrs=(1e-3,), seeds=(0,), settings=SETTINGS)\n"
    )
    monkeypatch.chdir(here)
    monkeypatch.syspath_prepend(str(here))  # as `python -m` puts the working folder first
    monkeypatch.delitem(sys.modules, "shared_settings", raising=False)
    try:
        grid = grid_lib.load_grid(lab / "mine.py")
    finally:
        sys.modules.pop("shared_settings", None)
    assert grid.settings == {"epochs": 3}
    assert str(lab) not in sys.path  # put back as it was


def test_a_hand_edited_grids_slips_are_pointed_where_they_belong(tmp_path, capsys):
    """lp_epochs in settings was told "did you mean epochs?" (another setting); lr there
    nothing; lp-ft and ResNet50 no near name; np.int64 epochs "must be an integer"."""
    base = {
        "name": "x", "datasets": ("demo",), "archs": ("resnet_tiny",), "strategies": ("lp_ft",),
        "lrs": (1e-3,), "seeds": (0,),
    }  # fmt: skip
    for changed, said in (
        (
            {"settings": {"lp_epochs": 2}},
            "lp_epochs is a strategy option: give it as strategy_options={'lp_ft': "
            "{'lp_epochs': ...}}",
        ),
        ({"settings": {"lr": 1e-3}}, "lr is an axis: give it as lrs=(...) beside settings"),
        ({"settings": {"seeds": (1,)}}, "seeds is an axis: give it as seeds=(...) beside settings"),
        ({"settings": {"epoch": 2}}, "did you mean epochs?"),
        (  # was "did you mean data_seed?"
            {"settings": {"data_dir": "/data"}},
            "data_dir is the grid's own: give it as Grid(data_dir=...) beside settings",
        ),
        (
            {"settings": {"patient_folders": True}},
            "patient_folders is a dataset option: give it as dataset_options={'folder': "
            "{'patient_folders': ...}} (or 'csv')",
        ),
        ({"strategies": ("lp-ft",)}, "strategy 'lp-ft' unknown; known: "),
        ({"archs": ("ResNet50",)}, "arch 'ResNet50' unknown; known: resnet50, densenet121, vgg19"),
    ):
        with pytest.raises(grid_lib.GridError) as err:
            grid_lib.Grid(**{**base, **changed}).validate()
        assert str(err.value).endswith(said) or said in str(err.value), str(err.value)
    assert str(err.value).endswith("did you mean resnet50?")
    np_ints = grid_lib.Grid(
        **base,
        settings={"epochs": np.int64(7), "batch_size": np.int32(8)},
        strategy_options={"lp_ft": {"lp_epochs": np.int64(2)}},
    )
    np_ints.validate()
    llrd = {**base, "strategies": ("llrd", "auto_rgn")}
    numpy_options = {"llrd": {"lr_decay": np.float64(0.5)}, "auto_rgn": {"rgn_per_step": np.True_}}
    python_options = {"llrd": {"lr_decay": 0.5}, "auto_rgn": {"rgn_per_step": True}}
    assert [
        c.to_dict() for c in grid_lib.Grid(**llrd, strategy_options=numpy_options).configs()
    ] == [c.to_dict() for c in grid_lib.Grid(**llrd, strategy_options=python_options).configs()]
    plain = grid_lib.Grid(
        **base,
        settings={"epochs": 7, "batch_size": 8},
        strategy_options={"lp_ft": {"lp_epochs": 2}},
    )
    assert [results.run_name(c.to_dict()) for c in np_ints.configs()] == [
        results.run_name(c.to_dict()) for c in plain.configs()
    ]


@pytest.mark.parametrize("data_dir", ["afile", ""])
def test_a_grids_data_dir_is_checked_as_the_flag_is(tmp_path, capsys, monkeypatch, data_dir):
    """A grid data_dir that is a file passed the dry run, then the sweep failed naming a cache
    path; "" read and wrote the working folder (the flag's '' is refused)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("")
    config = _grid_file(tmp_path, "g", strategies=("ft",), lrs=(1e-3,), seeds=(0,), epochs=1)
    config.write_text(
        config.read_text().replace('name="tiny",', f'name="tiny", data_dir={data_dir!r},')
    )
    for extra in (["--dry-run"], []):
        assert sweep_cli.main(["--config", str(config), "--out", "o", *extra]) == 2
        err = capsys.readouterr().err
        where = f"error: --config {config}: grid 'tiny' data_dir"
        assert err == (
            f"{where} afile: afile is a file, expected a folder\n"
            if data_dir
            else f"{where}: an empty path; expected a folder\n"
        )
    assert not (tmp_path / "o").exists()


def _breastmnist_arrays() -> dict[str, np.ndarray]:
    """A BreastMNIST-shaped .npz's arrays: 8/4/4 random 28 px images, labels 0, 1, 0, ..."""
    rng = np.random.default_rng(0)
    return {
        f"{s}_{k}": (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) if k == "images"
                     else np.arange(n)[:, None] % 2)
        for s, n in (("train", 8), ("val", 4), ("test", 4))
        for k in ("images", "labels")
    }  # fmt: skip


def _breastmnist_grid(tmp_path: Path, data: Path, strategies=("ft",), **settings) -> Path:
    """A grid file of BreastMNIST at 32 px on resnet_tiny, reading ``data``."""
    config = tmp_path / "g.py"
    config.write_text(
        "from medft_jax.grid import Grid\n"
        "def get_config():\n"
        "    return Grid(name='m', datasets=('medmnist/breastmnist',), archs=('resnet_tiny',),\n"
        f"                strategies={tuple(strategies)!r}, lrs=(1e-3,), seeds=(0,),\n"
        f"                settings={{'weights': 'none', 'image_size': 32, **{settings!r}}},\n"
        f"                data_dir={str(data)!r})\n"
    )
    return config


def test_dry_run_says_a_medmnist_file_changed_since_the_records(tmp_path, capsys):
    """One label flipped in the .npz: the dry run said "done, nothing to run" (runs matched
    by settings), and the sweep trained every run again under new names without a word."""
    import hashlib

    data = tmp_path / "data"
    data.mkdir()
    arrays = _breastmnist_arrays()
    np.savez(data / "breastmnist.npz", **arrays)
    config = _breastmnist_grid(tmp_path, data, ("ft",))
    (c,) = grid_lib.load_grid(config).configs()
    c = dataclasses.replace(c, data_fingerprint="f" * 64, weights_fingerprint="none")
    out = tmp_path / "runs"
    md5 = hashlib.md5((data / "breastmnist.npz").read_bytes()).hexdigest()
    results.write_record(
        results.record_path(out, c.to_dict()),
        {"config": c.to_dict(), "medmnist_file": {"md5": md5, "official": False}},
    )

    def listed() -> str:
        assert sweep_cli.main(["--config", str(config), "--out", str(out), "--dry-run"]) == 0
        return capsys.readouterr().out

    assert "done 1, failed 0, to run 0" in listed()
    arrays["train_labels"][0] = 1 - arrays["train_labels"][0]
    np.savez(data / "breastmnist.npz", **arrays)
    now = hashlib.md5((data / "breastmnist.npz").read_bytes()).hexdigest()
    text = listed()
    assert "changed" in text and "done 0, failed 0, to run 1" in text
    assert (
        f"(medmnist/breastmnist: {data / 'breastmnist.npz'} is another file (MD5 {now}) than "
        f"recorded ({md5}))"
    ) in text
    # Rerun on the new file (a record of it beside the older one): done, as the sweep finds
    # it, not "changed" and counted to run because an older record of its settings is.
    rerun = dataclasses.replace(c, data_fingerprint="e" * 64)
    results.write_record(
        results.record_path(out, rerun.to_dict()),
        {"config": rerun.to_dict(), "medmnist_file": {"md5": now, "official": False}},
    )
    text = listed()
    assert "    0  done  " in text and "done 1, failed 0, to run 0" in text


def test_medmnist_md5_is_taken_from_a_cache_built_at_the_same_stat(tmp_path, monkeypatch):
    """The dry run hashed every MedMNIST .npz its records name at each call (seconds for the
    224 px files) though a resized cache keeps the file's MD5 at its stat; a file rewritten
    since (its stat changed) is hashed again."""
    import hashlib

    from medft_jax.data import medmnist

    data = tmp_path / "data"
    data.mkdir()
    arrays = _breastmnist_arrays()
    path = data / "breastmnist.npz"
    np.savez(path, **arrays)
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    medmnist.load_medmnist("medmnist/breastmnist", data_dir=data, crop_size=32, progress=False)
    hashed = []
    real = medmnist.file_source
    monkeypatch.setattr(medmnist, "file_source", lambda *a: hashed.append(a) or real(*a))
    assert medmnist.file_md5(path, "breastmnist", 28, data) == md5
    assert hashed == []
    arrays["train_labels"][0] = 1 - arrays["train_labels"][0]
    np.savez(path, **arrays)
    now = hashlib.md5(path.read_bytes()).hexdigest()
    assert medmnist.file_md5(path, "breastmnist", 28, data) == now != md5
    assert len(hashed) == 1


def test_a_damaged_plan_replaced_by_a_sweep_is_said(tmp_path, monkeypatch, capsys):
    """A plan that is no JSON was overwritten by the next sweep without a word, and the
    runs it listed (its other shards', never started) were expected by a report no more."""
    from medft_jax import outcomes

    def refused(self, config, **kw):
        return outcomes.Outcome(config, outcomes.REFUSED, error="not trained here")

    monkeypatch.setattr(Session, "run", refused)
    out = tmp_path / "o"
    grid = _grid_file(tmp_path, "a", strategies=("ft",), lrs=(1e-3,), seeds=(0,), epochs=1)
    path = plans.plan_path(out, "tiny")
    path.parent.mkdir(parents=True)
    path.write_text('{"grid": "tiny", "runs": [')
    said = (
        f"note: {path}: not a readable sweep plan (damaged, or another version's): the runs "
        "it listed are expected by a report no more"
    )
    assert sweep_cli.main(["--config", str(grid), "--out", str(out), "--dry-run"]) == 0
    assert f"{said}; the sweep replaces it\n" in capsys.readouterr().err
    assert sweep_cli.main(["--config", str(grid), "--out", str(out)]) == 1
    assert f"{said}; replaced by this sweep's\n" in capsys.readouterr().err
    assert len(plans.load_plans(out)[0][1]["runs"]) == 1


def test_a_grid_batch_over_a_medmnist_training_count_is_refused_naming_the_grid(tmp_path, capsys):
    """BreastMNIST's 546 training images at a grid's batch_size 600: the dry run listed
    every run "to run" (exit 0), and the sweep refused each naming --batch-size, a flag it
    does not have."""
    config = _breastmnist_grid(tmp_path, tmp_path / "data", ("ft", "lp"), batch_size=600)
    argv = ["--config", str(config), "--out", str(tmp_path / "runs")]
    assert sweep_cli.main([*argv, "--dry-run"]) == 2
    assert capsys.readouterr().err == (
        "error: dataset medmnist/breastmnist: batch_size 600 is larger than its 546 training "
        "examples; every run of it at that batch size would be refused: give the grid a "
        "smaller batch_size\n"
    )
    assert sweep_cli.main(argv) == 1
    said = capsys.readouterr()
    said, text = (
        (
            f"--config {config}: settings['batch_size'] 600 is larger than the 546 training "
            "examples of medmnist/breastmnist"
        ),
        said.out + said.err,
    )
    assert text.count(said) == 4 and "--batch-size" not in text  # per run, and at the end


def test_dry_run_notes_a_medmnist_file_the_data_dir_lacks(tmp_path, capsys):
    """The dry run listed the runs "todo" without a word; the sweep then tried to download
    the file and, offline, skipped every run of it (exit 1)."""
    data = tmp_path / "data"
    data.mkdir()
    config = _breastmnist_grid(tmp_path, data, ("ft",))
    argv = ["--config", str(config), "--out", str(tmp_path / "runs"), "--dry-run"]
    assert sweep_cli.main(argv) == 0
    assert capsys.readouterr().err == (
        f"note: medmnist/breastmnist: breastmnist.npz is in neither {data} nor "
        f"{data / 'medmnist'}: the sweep downloads it unless a resized cache of it is there "
        "(offline, its runs are not run: place the file there)\n"
    )
    np.savez(data / "breastmnist.npz", **_breastmnist_arrays())
    assert sweep_cli.main(argv) == 0
    assert capsys.readouterr().err == ""


def test_a_selections_batch_over_a_medmnist_training_count_names_the_grid(tmp_path, capsys):
    """select said "--batch-size 600 is larger than ...", a flag it does not have."""
    config = _breastmnist_grid(tmp_path, tmp_path / "data", ("ft", "lp"), batch_size=600)
    assert select_cli.main(["--config", str(config), "--out", str(tmp_path / "sel")]) == 2
    err = capsys.readouterr().err
    assert err.endswith(
        "error: the grid's settings['batch_size'] 600 is larger than the 546 training "
        "examples of medmnist/breastmnist\n"
    ), err
