"""Every flag and setting checked up front; a run is what its inputs are.

Command lines get wrong values (out of range, not a number, a file where a
folder belongs) and must answer with one ``error:`` line naming the flag or
config key, exit 2, and write nothing. Runs on other data or from other
weights get other records, and a cache prepared for a run is the one it finds.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import data_fakes as fakes
import numpy as np
import pytest
from PIL import Image

from experiments import prepare as prepare_cli
from experiments import report as report_cli
from experiments import run as run_cli
from experiments import select as select_cli
from experiments import sweep as sweep_cli
from medft_jax import fit
from medft_jax.checkpoints import pretrained
from medft_jax.config import RunConfig, check_config
from medft_jax.errors import UserError, cli_main
from medft_jax.models import ARCHS


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


# --- one resize rule ---------------------------------------------------------------------------


@pytest.mark.parametrize("arch", [*sorted(ARCHS), "resnet_tiny"])  # run takes the test arch
@pytest.mark.parametrize("crop", [32, 64, 224])
def test_prepare_and_run_compute_one_resize_size(arch, crop):
    args = prepare_cli.parse_args(
        ["--dataset", "folder", "--arch", arch, "--image-size", str(crop)]
    )
    resize, got_crop = prepare_cli.sizes(args)
    assert (resize, got_crop) == (fit.resize_for(arch, crop), crop)
    expected = {"resnet50": {32: 33, 64: 66, 224: 232}, "densenet121": {32: 37, 64: 73, 224: 256}}
    expected["vgg19"] = expected["densenet121"]
    expected["resnet_tiny"] = expected["resnet50"]
    assert resize == expected[arch][crop]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], (232, 224)),  # run's default arch, ResNet-50, at run's default crop
        (["--image-size", "64"], (66, 64)),
        (["--resize-size", "300"], (300, 224)),
        (["--arch", "vgg19"], (256, 224)),
    ],
)
def test_prepare_without_an_arch_prepares_what_a_default_run_reads(flags, expected):
    """`prepare --dataset bach` then `run --dataset bach`: the run found nothing prepared."""
    args = prepare_cli.parse_args(["--dataset", "bach", *flags])
    assert prepare_cli.sizes(args) == expected
    assert fit.resize_for(fit.RunConfig.arch, 224) == 232


# --- run: flags ---------------------------------------------------------------------------------


def test_out_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "f").write_text("not a folder")
    assert run_cli.main(["--strategy", "lp", "--out", str(tmp_path / "f" / "runs")]) == 2
    line = _one_error_line(capsys)
    assert line == f"error: --out {tmp_path / 'f' / 'runs'}: {tmp_path / 'f'} is a file, " + (
        "expected a folder"
    )
    assert run_cli.main(["--strategy", "lp", "--out", str(tmp_path / "f")]) == 2
    assert "--out" in _one_error_line(capsys)


def test_data_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "d").write_text("")
    argv = ["--strategy", "lp", "--dataset", "bach", "--out", str(tmp_path / "runs")]
    assert run_cli.main([*argv, "--data-dir", str(tmp_path / "d")]) == 2
    assert _one_error_line(capsys).startswith(f"error: --data-dir {tmp_path / 'd'}: ")


def test_read_only_data_dir_is_read_and_an_unreadable_one_refused(tmp_path, monkeypatch):
    """Prepared data on a lab's read-only drive is only read (root cannot make one here)."""
    from medft_jax import errors

    shared = tmp_path / "shared"
    shared.mkdir()
    denied: set[int] = set()
    real = errors.os.access
    monkeypatch.setattr(
        errors.os,
        "access",
        lambda path, mode: not (Path(path) == shared and mode & sum(denied)) and real(path, mode),
    )
    denied.add(errors.os.W_OK)
    errors.check_data_dir(shared)
    with pytest.raises(UserError, match="not writable"):
        errors.writable_dir(shared, "--out")
    denied.add(errors.os.R_OK)
    with pytest.raises(UserError, match=rf"^--data-dir {shared}: the folder cannot be read$"):
        errors.check_data_dir(shared)
    errors.check_data_dir(tmp_path / "new" / "d")
    assert (tmp_path / "new" / "d").is_dir()


def test_compilation_cache_variable_that_is_a_file_is_one_line(tmp_path, capsys, monkeypatch):
    from medft_jax.runtime import enable_compilation_cache

    (tmp_path / "c").write_text("")
    monkeypatch.setenv("MEDFT_JAX_CACHE", str(tmp_path / "c"))
    with pytest.raises(UserError, match=r"^MEDFT_JAX_CACHE .*c is a file, expected a folder"):
        enable_compilation_cache()


def test_cache_root_from_the_environment_is_one_rule(tmp_path, capsys, monkeypatch):
    """An empty MEDFT_JAX_CACHE is unset (as the switches read it), a relative one is
    refused, and a default under HOME='' or '/' or a missing HOME is refused naming HOME:
    each put the cache in the CWD, at /.cache or made a top-level folder."""
    from medft_jax.data.locations import user_cache_base
    from medft_jax.runtime import enable_compilation_cache

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MEDFT_JAX_CACHE", "")
    assert user_cache_base() == tmp_path / ".cache" / "medft_jax"
    monkeypatch.setenv("MEDFT_JAX_CACHE", "rel/c")
    with pytest.raises(UserError, match=r"^MEDFT_JAX_CACHE 'rel/c': expected an absolute path$"):
        user_cache_base()
    with pytest.raises(UserError, match=r"^MEDFT_JAX_CACHE 'rel/c'"):
        enable_compilation_cache()
    monkeypatch.setenv("MEDFT_JAX_CACHE", "")
    for home, why in [
        ("", "is empty"),
        ("/", "is the filesystem root"),
        ("/.", "is the filesystem root"),
        (".", "is not an absolute path"),
        (str(tmp_path / "nonexist"), "is not an existing folder"),
    ]:
        monkeypatch.setenv("HOME", home)
        with pytest.raises(
            UserError, match=rf"^HOME '{re.escape(home)}' {why}, .*set MEDFT_JAX_CACHE"
        ):
            user_cache_base()
        # The compilation cache is an optimisation: off, with one warning, nothing made.
        assert enable_compilation_cache() is None
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"warning: HOME '{home}'")
    assert not (tmp_path / "nonexist").exists()


def test_the_default_data_dir_is_checked_as_the_cache_root(tmp_path, monkeypatch):
    """``TFDS_DATA_DIR=`` meant the working directory and ``HOME=/`` a top-level
    ``/tensorflow_datasets``: empty is unset, and the default's home is checked."""
    from medft_jax.data.locations import default_data_dir

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("TFDS_DATA_DIR", "")
    assert default_data_dir() == tmp_path / "tensorflow_datasets"
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "d"))
    assert default_data_dir() == tmp_path / "d"
    monkeypatch.setenv("TFDS_DATA_DIR", "")
    monkeypatch.setenv("HOME", "/")
    with pytest.raises(UserError, match=r"^HOME '/' is the filesystem root, so the default data"):
        default_data_dir()
    from medft_jax.data import load

    assert load("demo", crop_size=32).num_classes == 2  # in memory: needs no data dir


def test_a_prepared_cache_loads_without_a_user_cache(tmp_path, monkeypatch):
    """``docker run -u $(id -u)`` gives HOME=/: the record of checked stats (an optimisation,
    under the user cache) refused every load of a prepared folder dataset."""
    from data_fakes import image

    from medft_jax.data import load

    for c in ("cat", "dog"):
        (tmp_path / "d" / c).mkdir(parents=True)
        for i in range(10):  # a val split of both classes
            image(i + (10 if c == "dog" else 0), (20, 18)).save(tmp_path / "d" / c / f"{i}.png")
    kw = {"manual_dir": tmp_path / "d", "data_dir": tmp_path / "out", "resize_size": 36}
    first = load("folder", crop_size=32, **kw)
    monkeypatch.delenv("MEDFT_JAX_CACHE", raising=False)
    monkeypatch.setenv("HOME", "/")
    again = load("folder", crop_size=32, **kw)
    assert again.metadata["fingerprint"] == first.metadata["fingerprint"]


def test_freezing_bn_where_no_block_freezes_is_the_update_run():
    """FT and its kin train every BatchNorm every epoch: ``freeze`` is another name only."""
    for strategy in ("ft", "l2_sp", "bitfit"):
        frozen = RunConfig(strategy=strategy, frozen_bn="freeze")
        assert frozen == RunConfig(strategy=strategy) and frozen.frozen_bn == "update"
    for strategy in ("lp", "g_lf", "lp_ft"):  # these freeze blocks: another run
        assert RunConfig(strategy=strategy, frozen_bn="freeze").frozen_bn == "freeze"


@pytest.mark.parametrize(
    "strategy, settings, options, message",
    [
        ("ft", {"lr": 1e-50}, {}, r"^--lr 1e-50 is 0 in float32, where the step computes"),
        ("llrd", {}, {"lr_decay": 1.0}, r"^--lr-decay 1: LLRD without decay is FT"),
        (  # ResNet-50: 6 blocks, the stem's rate 1e-4 x (1e-8)^5
            "llrd",
            {},
            {"lr_decay": 1e-8},
            r"^--lr-decay 1e-08: the first block's rate, --lr × 1e-08\^5 = 1e-44, is 0",
        ),
        ("l2_sp", {}, {"alpha": 0.0, "beta": 0.0}, r"^--alpha 0 and --beta 0: l2_sp without"),
        ("l1_sp", {}, {"alpha": 0, "beta": 0}, r"^--alpha 0 and --beta 0: l1_sp without"),
        # 0 in float32, where the penalty and the step compute: FT and FT-like under a name
        (
            "l2_sp",
            {},
            {"alpha": 1e-300, "beta": 1e-300},
            r"^--alpha 1e-300 and --beta 1e-300 are 0 in float32, where the penalty computes: "
            r"l2_sp without its penalty is FT",
        ),
        ("g_lf", {"epochs": 1}, {}, r"^--epochs 1 ends within g_lf's first stage .*only its last"),
        (
            "g_fl",
            {"epochs": 6},
            {"epochs_per_stage": 10},
            r"^--epochs 6 ends within g_fl's first stage \(--epochs-per-stage 10\): only its "
            r"first block and the head would ever train",
        ),
        (
            "surgical",
            {},
            {"surgical_block": "fc"},
            r"^--surgical-block fc: resnet50's fc is the new head alone, so this is LP",
        ),
    ],
)
def test_settings_that_make_another_strategy_or_train_nothing_are_refused(
    strategy, settings, options, message
):
    """Each trains nothing, or another strategy's numbers under this one's name."""
    config = RunConfig(strategy=strategy, **settings, strategy_options=tuple(options.items()))
    with pytest.raises(UserError, match=message):
        check_config(config)


def test_the_edges_next_to_another_strategy_are_allowed():
    check_config(RunConfig(strategy="ft", lr=2.0**-126))
    check_config(RunConfig(strategy="llrd", strategy_options=(("lr_decay", 0.999),)))
    check_config(RunConfig(strategy="l2_sp", strategy_options=(("alpha", 0.0),)))  # β: the head
    check_config(RunConfig(strategy="g_lf", epochs=3, strategy_options=(("epochs_per_stage", 2),)))
    for arch, block in (("densenet121", "classifier"), ("vgg19", "classifier")):  # + norm5, fc6-7
        check_config(
            RunConfig(strategy="surgical", arch=arch, strategy_options=(("surgical_block", block),))
        )


@pytest.mark.slow
def test_head_alone_blocks_are_those_whose_params_are_all_the_head():
    from medft_jax import models
    from medft_jax.models.blocks import flatten
    from medft_jax.names import HEAD_ALONE_BLOCK

    for arch in (*models.ARCHS, *models.TEST_ARCHS):
        partition = models.get_arch(arch).partition
        last = partition.names[-1]
        paths = [p for p in flatten(models.variable_shapes(arch, 3)["params"])]
        alone = all(partition.is_head(p) for p in paths if partition.block_of(p) == last)
        assert (HEAD_ALONE_BLOCK.get(arch) == last) == alone, arch


def test_huge_integers_and_numpy_or_negative_zero_defaults_are_one_line_or_one_run():
    """A 401-digit --lp-epochs was an OverflowError traceback (math.isfinite); a grid's
    np.float64(0.01) alpha, or a -0.0 beta, was another run than the default's, trained
    again bit for bit and refused by the report beside it."""
    huge = 10**400
    with pytest.raises(UserError) as e:
        check_config(RunConfig(strategy="lp_ft", strategy_options=(("lp_epochs", huge),)))
    assert str(e.value) == "--lp-epochs must be in [1, 10000], got an integer of 401 digits"
    with pytest.raises(UserError, match=r"^--alpha must be in .*, got an integer of 401 digits$"):
        check_config(RunConfig(strategy="l2_sp", strategy_options=(("alpha", huge),)))
    with pytest.raises(UserError, match=r"^--epochs must be .*, got a negative integer of 401 "):
        check_config(RunConfig(strategy="ft", epochs=-huge))
    default = RunConfig(strategy="l2_sp")
    assert RunConfig(strategy="l2_sp", strategy_options=(("alpha", np.float64(0.01)),)) == default
    zero = RunConfig(strategy="l2_sp", strategy_options=(("beta", -0.0),))
    assert zero == RunConfig(strategy="l2_sp", strategy_options=(("beta", 0.0),))
    assert math.copysign(1.0, dict(zero.strategy_options)["beta"]) == 1.0


def test_check_config_names_the_field_its_caller_uses():
    bad = RunConfig(strategy="g_lf", strategy_options=(("epochs_per_stage", 0),))
    with pytest.raises(UserError, match=r"^--epochs-per-stage must be in \[1, 10000\], got 0$"):
        check_config(bad)
    with pytest.raises(UserError, match=r"^--nosuch: unknown strategy option"):
        check_config(RunConfig(strategy="ft", strategy_options=(("nosuch", 1),)))
    with pytest.raises(UserError, match=r"^RunConfig.batch_size must be an integer"):
        check_config(RunConfig(strategy="ft", batch_size=2.5), lambda f: f"RunConfig.{f}")
    # A whole float is refused too: lp_epochs 5.0 would be another run (hash) than 5, and
    # strategies.make takes integers only.
    with pytest.raises(UserError, match=r"^--lp-epochs must be an integer in .*, got 5\.0$"):
        check_config(RunConfig(strategy="lp_ft", strategy_options=(("lp_epochs", 5.0),)))
    with pytest.raises(UserError, match=r"^--lr must be a number"):
        check_config(RunConfig(strategy="ft", lr="1e-3"))
    check_config(RunConfig(strategy="ft", lr=1.0, image_size=32, patience=0))  # the bounds
    with pytest.raises(UserError, match=r"^--sp-half must be True or False, got 'no'$"):
        check_config(RunConfig(strategy="l2_sp", strategy_options=(("sp_half", "no"),)))
    check_config(RunConfig(strategy="l2_sp", strategy_options=(("sp_half", False),)))
    with pytest.raises(UserError, match=r"^--rgn-mode must be one of stream, prepass, got 'pre'$"):
        check_config(RunConfig(strategy="auto_rgn", strategy_options=(("rgn_mode", "pre"),)))
    check_config(RunConfig(strategy="auto_rgn", strategy_options=(("rgn_mode", "prepass"),)))
    # An older numerics version is what older records say, not something to run.
    with pytest.raises(
        UserError, match=r"^--numerics 1: this medft-jax computes fp32 runs at numerics version 5 "
    ):
        check_config(RunConfig(strategy="ft", numerics=1))
    with pytest.raises(UserError, match=r"^--numerics 3: .* bf16 runs at numerics version 7 only"):
        check_config(RunConfig(strategy="ft", precision="bf16", numerics=3))
    check_config(RunConfig(strategy="ft", precision="bf16"))
    # Checked with the other settings, not raised by make() deep in a run (a traceback).
    # The blocks offered leave out what a second rule refuses: ResNet's fc alone is LP.
    with pytest.raises(
        UserError,
        match=r"^--strategy surgical needs --surgical-block: the one block to train, one of "
        r"stem, layer1, layer2, layer3, layer4$",
    ):
        check_config(RunConfig(strategy="surgical"))
    with pytest.raises(
        UserError,
        match=r"^--surgical-block must be one of stem, layer1, layer2, layer3, layer4 "
        r"\(the blocks of resnet50 but fc, the new head alone \(LP\)\), got 'nosuch'$",
    ):
        check_config(
            RunConfig(strategy="surgical", strategy_options=(("surgical_block", "nosuch"),))
        )
    with pytest.raises(UserError, match=r"\), got 'layr2'; did you mean layer2\?$"):
        check_config(
            RunConfig(strategy="surgical", strategy_options=(("surgical_block", "layr2"),))
        )
    with pytest.raises(UserError, match=r"stem, denseblock1, .*, classifier \(the blocks of dense"):
        check_config(
            RunConfig(
                strategy="surgical",
                arch="densenet121",
                strategy_options=(("surgical_block", "nosuch"),),
            )
        )
    check_config(RunConfig(strategy="surgical", strategy_options=(("surgical_block", "layer2"),)))
    # Nor does a range offer LLRD's decay 1 (FT under its name), which is said so by name.
    for bad in (0, 1.5):
        with pytest.raises(UserError, match=rf"^--lr-decay must be in \(0, 1\), got {bad:g}"):
            check_config(RunConfig(strategy="llrd", strategy_options=(("lr_decay", bad),)))
    # LP-FT that never leaves its head-only phase is LP under another name.
    with pytest.raises(UserError, match=r"^--epochs 5 ends within LP-FT's 5 head-only epochs"):
        check_config(RunConfig(strategy="lp_ft", epochs=5))
    check_config(RunConfig(strategy="lp_ft", epochs=2, strategy_options=(("lp_epochs", 1),)))
    check_config(RunConfig(strategy="g_lf", epochs=2))  # cut short, but G-LF: allowed
    import inspect

    from medft_jax.config import LP_EPOCHS_DEFAULT, RGN_MODES
    from medft_jax.strategies import make, rgn

    assert RGN_MODES == rgn.RGN_MODES  # the config's copy (no JAX import) is the transform's
    assert inspect.signature(make).parameters["lp_epochs"].default == LP_EPOCHS_DEFAULT


# --- sweep configs, select, prepare --------------------------------------------------------------

GRID = """
from medft_jax.grid import Grid


def get_config():
    return Grid(
        name="bad",
        datasets=("demo",),
        archs=("resnet50",),
        strategies=("ft", "lp_ft"),
        lrs={lrs},
        seeds=(0,),
        settings={settings},
        strategy_options={options},
    )
"""


@pytest.mark.parametrize(
    "settings,lrs,options,message",
    [
        ({"epochs": 0}, (1e-3,), {}, "error: grid 'bad': settings['epochs'] must be in [1, 10000]"),
        ({"batch_size": 0}, (1e-3,), {}, "error: grid 'bad': settings['batch_size'] must be in"),
        ({"image_size": 10**6}, (1e-3,), {}, "error: grid 'bad': settings['image_size'] must be"),
        ({"precision": "fp8"}, (1e-3,), {}, "error: grid 'bad': settings['precision'] must be"),
        ({}, "(float('nan'),)", {}, "error: grid 'bad': lrs value must be a finite number"),
        ({}, "(-1e-3,)", {}, "error: grid 'bad': lrs value must be in (0, 1], got -0.001"),
        (
            {},
            (1e-3,),
            {"lp_ft": {"lp_epochs": -1}},
            "error: grid 'bad': strategy_options['lp_ft']['lp_epochs'] must be in [1, 10000]",
        ),
        (
            {"epochs": 3},
            (1e-3,),
            {},
            "error: grid 'bad': settings['epochs'] 3 ends within LP-FT's 5 head-only epochs",
        ),
    ],
)
def test_bad_grid_settings_are_named(settings, lrs, options, message, tmp_path, capsys):
    config = tmp_path / "bad.py"
    config.write_text(GRID.format(settings=settings, lrs=str(lrs), options=options))
    for extra in ([], ["--dry-run"]):
        argv = ["--config", str(config), "--out", str(tmp_path / "runs"), *extra]
        assert sweep_cli.main(argv) == 2
        said = message.replace("error: ", f"error: --config {config}: ", 1)
        assert _one_error_line(capsys).startswith(said)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "fields,message",
    [
        ("seeds=(0, 0.5)", "seeds value must be an integer, got 0.5"),
        ("seeds=(True,)", "seeds value must be an integer, got True"),
        ("seeds='01'", "seeds must be a tuple, got '01'"),  # not the seeds 0 and 1
        ("lrs=(1e-3, '0.001')", "lrs value must be a number, got '0.001'"),
        ("lrs=(1e-3, 0.001)", "lrs lists a value twice"),
        ("lrs=(1, 1.0)", "lrs lists a value twice"),  # one run, 1.0, twice
        (  # one float32
            "lrs=(1e-3, 1.00000001e-3)",
            "lrs lists a value twice: 0.001 and 0.00100000001 (equal in float32, where the step",
        ),
        ("lrs=(1e-3, __import__('numpy').float32(1e-3))", "lrs lists a value twice"),
        ("datasets=('demo@64',)", "datasets value 'demo@64': unknown; known: demo, chexpert"),
        ("datasets=(('demo', 'x'),)", "datasets value ('demo', 'x'): must be a name (a string)"),
        (
            "datasets=('medmnist/breastmnist@028',)",
            "datasets value 'medmnist/breastmnist@028': size @028 is not one of 28, 64, 128, 224",
        ),
        (  # 28 px is the default size: one dataset twice
            "datasets=('medmnist/breastmnist', 'medmnist/breastmnist@28')",
            "datasets lists a value twice: 'medmnist/breastmnist' and 'medmnist/breastmnist@28'",
        ),
        (
            "datasets=('chexpert',); dataset_options={'chexpert': {'uncertain': 'LibAUC'}}",
            "dataset_options['chexpert']: uncertain must be one of ones, zeros, libauc, got",
        ),
        (
            "datasets=('cholect50_instrument',); "
            "dataset_options={'cholect50_instrument': {'val_fraction': 0.2}}",
            "dataset_options['cholect50_instrument']: val_fraction 0.2 does not apply",
        ),
        ("datasets=('medmnist/nosuch',)", "datasets value 'medmnist/nosuch': unknown MedMNIST"),
        (
            "datasets=('folder',); dataset_options={'folder': {'skip_bad_images': 'no'}}",
            "dataset_options['folder']: skip_bad_images must be True or False, got 'no'",
        ),
        (
            "datasets=('folder',); dataset_options={'folder': {'val_fraction': '0.2'}}",
            "dataset_options['folder']: val_fraction must be a number in (0, 1), got '0.2'",
        ),
        (
            "datasets=('folder',); dataset_options={'folder': {'manual_dir': 5}}",
            "dataset_options['folder']: manual_dir must be a path, got 5",
        ),
        ("strategy_options={'ft': 5}", "strategy_options['ft'] must be a dict of option: value"),
        ("dataset_options={'bach': {}}", "dataset_options for bach, which the grid does not run"),
        (
            "datasets=('demo', 'bach'); dataset_options={'bach': {'val_fracton': 0.2}}",
            "dataset_options['bach']: unknown option 'val_fracton'; bach takes val_fraction",
        ),
        (  # CheXpert's own option, even at its default: refused as the command line does
            "datasets=('demo', 'bach'); dataset_options={'bach': {'uncertain': 'ones'}}",
            "dataset_options['bach']: uncertain applies to chexpert only, not bach",
        ),
        (
            "datasets=('chexpert',); dataset_options={'chexpert': {'split_by': 'image'}}",
            "dataset_options['chexpert']: split_by applies to isic2020 only, not chexpert",
        ),
        (  # a misspelt option is one even when set to None
            "datasets=('folder',); dataset_options={'folder': {'manual_dir': 'x', 'val': None}}",
            "dataset_options['folder']: unknown option 'val'; folder takes manual_dir, ",
        ),
        (
            "datasets=('folder',); dataset_options={'folder': {'manual_dir': 'x', 'val': 0.2}}",
            "dataset_options['folder']: unknown option 'val'; folder takes manual_dir, "
            "skip_bad_images, val_fraction, test_fraction, bits_stored, dicom_window",
        ),
        (
            "datasets=('folder',); dataset_options={'folder': {'manual_dir': 'x', "
            "'dicom_window': [40, 0]}}",
            "dataset_options['folder']: dicom_window must be [center, width]: two numbers, the "
            "width above 0, got [40, 0]",
        ),
        (
            "datasets=('folder',); dataset_options={'folder': {'manual_dir': 'x', "
            "'patient_folders': 'yes'}}",
            "dataset_options['folder']: patient_folders must be True or False, got 'yes'",
        ),
        (
            "datasets=('csv',); dataset_options={'csv': {'csv_file': 'x', "
            "'patient_folders': True}}",
            "dataset_options['csv']: unknown option 'patient_folders'; csv takes manual_dir, ",
        ),
        (
            "datasets=('folder',); dataset_options={'folder': {'manual_dir': 'x', "
            "'dicom_window': '40,80'}}",
            "dataset_options['folder']: dicom_window must be [center, width]",
        ),
        (
            "datasets=('csv',); dataset_options={'csv': {'csv_file': 'x', 'label_colum': 'y'}}",
            "dataset_options['csv']: unknown option 'label_colum'; csv takes manual_dir, "
            "skip_bad_images, val_fraction, test_fraction, bits_stored, dicom_window, csv_file, "
            "path_column, label_column, label_columns, class_names, group_column, split_column",
        ),
        (
            "dataset_options={'demo': {'manul_dir': 'x'}}",
            "dataset_options['demo']: demo takes no options, got 'manul_dir'",
        ),
        # --dry-run passed it, then every run crashed with a TypeError.
        ("data_dir=5", "data_dir must be a folder path (a string) or None, got 5"),
    ],
)
def test_bad_grid_axes_and_options_are_named_before_any_run(fields, message, tmp_path, capsys):
    values = {
        "datasets": "('demo',)",
        "seeds": "(0,)",
        "lrs": "(1e-3,)",
        "strategy_options": "{}",
        "dataset_options": "{}",
    }
    values.update(f.strip().split("=", 1) for f in fields.split("; "))
    body = ", ".join(f"{k}={v}" for k, v in values.items())
    config = tmp_path / "bad.py"
    config.write_text(
        "from medft_jax.grid import Grid\n\n"
        "def get_config():\n"
        f"    return Grid(name='bad', archs=('resnet_tiny',), strategies=('ft',), {body})\n"
    )
    argv = ["--config", str(config), "--out", str(tmp_path / "runs"), "--dry-run"]
    assert sweep_cli.main(argv) == 2
    # The file at fault, then the grid's name (a copy of quick.py keeps "quick").
    assert _one_error_line(capsys).startswith(f"error: --config {config}: grid 'bad': {message}")


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
def test_sweep_refuses_a_data_dir_for_a_demo_only_grid(dry_run, tmp_path, capsys):
    """As run does: the folder was made, left empty and never read."""
    quick = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "quick.py"
    argv = ["--config", str(quick), "--only", "dataset=demo", "--out", str(tmp_path / "s")]
    assert sweep_cli.main([*argv, "--data-dir", str(tmp_path / "d"), *dry_run]) == 2
    assert _one_error_line(capsys) == (
        "error: --data-dir does not apply to demo, the grid's only dataset here (synthetic, "
        "no files)"
    )
    assert sorted(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--min-epochs", "inf"], "error: --min-epochs must be a finite number > 0, got inf"),
        (["--min-epochs", "0"], "error: --min-epochs must be a finite number > 0, got 0.0"),
        (["--min-epochs", "nan"], "error: --min-epochs must be a finite number > 0, got nan"),
        (["--min-epochs", "3"], "error: --min-epochs 3 is not under the grid's 2 epochs; the "),
        (["--min-epochs", "2"], "error: --min-epochs 2 is not under the grid's 2 epochs; the "),
        (
            ["--only", "strategy=ft,lr=0.001"],
            "error: --only: select chooses among arms (strategy × lr); the selection has 1 "
            "(ft at lr 0.001): widen --only",
        ),
        (
            ["--data-dir", "/tmp/medft-test-never-made"],
            "error: --data-dir does not apply to demo, the grid's only dataset here (synthetic, "
            "no files)\n",
        ),
        (["--eta", "1"], "error: --eta must be in [2, 100], got 1"),
        (["--seed", "-1"], "error: --seed must be in [0, 2147483647], got -1"),
    ],
)
def test_bad_select_flags_are_named(flags, message, tmp_path, capsys):
    quick = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "quick.py"
    argv = ["--config", str(quick), "--only", "arch=resnet50", "--out", str(tmp_path / "s")]
    assert select_cli.main([*argv, *flags]) == 2
    assert (_one_error_line(capsys) + "\n").startswith(message)
    assert not (tmp_path / "s").exists() and not Path("/tmp/medft-test-never-made").exists()


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--image-size", "0"], "error: --image-size must be in [32, 1024], got 0"),
        (["--resize-size", "40", "--image-size", "64"], "error: --resize-size 40 must be >= "),
        (["--seed", "-2"], "error: --seed must be in [0, 2147483647], got -2"),
        (["--val-fraction", "0"], "error: --val-fraction must be in (0, 1), got 0.0"),
        (["--label-column", "y"], "error: --label-column applies to csv only"),
        (["--bits-stored", "20"], "error: --bits-stored must be an integer from 8 to 16, got 20"),
        (["--bits-stored", "7"], "error: --bits-stored must be an integer from 8 to 16, got 7"),
        (
            ["--dicom-window", "40"],
            "error: --dicom-window must be CENTER,WIDTH: two numbers, the width above 0 (a CT "
            "brain window: 40,80), got '40'",
        ),
        (["--dicom-window", "40,-1"], "error: --dicom-window must be CENTER,WIDTH: two numbers"),
        (  # read as 10,80: a number as a user writes it, as every number flag reads one
            ["--dicom-window", "1_0,\uff180"],
            "error: --dicom-window must be CENTER,WIDTH: two numbers, the width above 0 (a CT "
            "brain window: 40,80), got '1_0,\uff180'",
        ),
    ],
)
def test_bad_prepare_flags_are_named(flags, message, tmp_path, capsys):
    argv = ["--dataset", "folder", "--manual-dir", str(tmp_path), "--data-dir", str(tmp_path)]
    assert prepare_cli.main([*argv, *flags]) == 2
    assert _one_error_line(capsys).startswith(message)


@pytest.mark.parametrize("dataset", ["csv", "bach", "demo"])
@pytest.mark.parametrize("flag", ["--patient-folders", "--no-patient-folders"])
def test_patient_folders_applies_to_folder_only(dataset, flag, tmp_path, capsys):
    """csv groups patients by --group-column; the others' splits are fixed when prepared."""
    argv = ["--dataset", dataset, flag, "--data-dir", str(tmp_path)]
    argv += ["--manual-dir", str(tmp_path), "--csv-file", "x.csv"] if dataset == "csv" else []
    assert prepare_cli.main(argv) == 2
    assert _one_error_line(capsys) == (
        f"error: --patient-folders applies to folder only, not to --dataset {dataset}"
    )


def test_runs_inside_the_image_folder_are_refused_unless_hidden(tmp_path, capsys):
    """``cd images && experiments.run --manual-dir .``: the default ``runs/`` would be read as
    a class folder by the next load. Refused before anything is written."""
    images = tmp_path / "imgs"
    for c in ("a", "b"):
        (images / c).mkdir(parents=True)
    argv = [*RUN, "--dataset", "folder", "--manual-dir", str(images)]
    argv += ["--data-dir", str(tmp_path / "data")]
    assert run_cli.main([*argv, "--out", str(images / "runs")]) == 2
    assert _one_error_line(capsys) == (
        f"error: --out {images / 'runs'} is inside --manual-dir {images}, whose listing would "
        f"read the runs as images; put it elsewhere, or in a hidden folder ({images / '.medft'})"
    )
    assert sorted(p.name for p in images.iterdir()) == ["a", "b"]


@pytest.mark.parametrize("cli", [prepare_cli, run_cli])
@pytest.mark.parametrize("dataset", ["bach", "demo", "medmnist/breastmnist"])
@pytest.mark.parametrize("flag", [("--bits-stored", "12"), ("--dicom-window", "40,80")])
def test_decoding_flags_apply_to_a_users_own_files_only(cli, dataset, flag, tmp_path, capsys):
    """The paper tasks, MedMNIST and the demo are 8-bit, not DICOM: the flag would be
    silently ignored."""
    argv = ["--dataset", dataset, *flag, "--data-dir", str(tmp_path)]
    argv += ["--out", str(tmp_path / "runs")] if cli is run_cli else []
    argv += ["--strategy", "lp"] if cli is run_cli else []
    assert cli.main(argv) == 2
    assert _one_error_line(capsys) == (
        f"error: {flag[0]} applies to folder and csv only, not to --dataset {dataset}"
    )


CHOLEC_SPLITS = "the official video lists (35 train, 5 val, 10 test videos)"


@pytest.mark.parametrize("cli", [prepare_cli, run_cli])
@pytest.mark.parametrize(
    "dataset,flags,said",
    [
        ("cholect50_instrument", ["--val-fraction", "0.1"], CHOLEC_SPLITS),
        ("cholect50_instrument", ["SEED", "3"], CHOLEC_SPLITS),
        ("medmnist/breastmnist", ["SEED", "1"], "MedMNIST's official train/val/test"),
    ],
)
def test_split_options_of_a_dataset_with_given_splits_are_refused(
    cli, dataset, flags, said, tmp_path, capsys
):
    """Every split given by the release: a seed or val fraction would change the run's name
    only, and seeds "over splits" would all be one split."""
    flags = [
        ("--seed" if cli is prepare_cli else "--data-seed") if f == "SEED" else f for f in flags
    ]
    argv = ["--dataset", dataset, *flags, "--data-dir", str(tmp_path / "d")]
    argv += ["--out", str(tmp_path / "runs"), "--strategy", "lp"] if cli is run_cli else []
    assert cli.main(argv) == 2
    assert _one_error_line(capsys) == (
        f"error: {flags[0]} {flags[1]} does not apply to {dataset}: its splits are {said}; "
        "leave it out"
    )
    assert not list(tmp_path.iterdir())


def test_the_library_refuses_split_options_of_given_splits_alike(tmp_path):
    """A grid's dataset_options or a script: the same refusal, before anything is read."""
    from medft_jax.data.errors import DataError
    from medft_jax.data.registry import load

    with pytest.raises(DataError, match=r"^seed 2 does not apply to medmnist/breastmnist: "):
        load("medmnist/breastmnist", data_dir=tmp_path, seed=2)
    with pytest.raises(DataError, match=r"^--val-fraction 0.2 does not apply to cholect50"):
        load("cholect50_instrument", data_dir=tmp_path, val_fraction=0.2)


def test_cli_main_keeps_real_bugs_and_maps_disk_errors(capsys):
    import errno

    def bug(argv):
        raise KeyError("a real bug")

    with pytest.raises(KeyError):
        cli_main(bug)

    def full(argv):
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/data/x.npy")
        except OSError as e:
            raise RuntimeError("orbax wrapped it") from e

    assert cli_main(full) == 1
    assert _one_error_line(capsys) == "error: /data/x.npy: no space left on the device"

    def faulty(argv):  # a failing disk, a network filesystem's hiccup: was a traceback
        try:
            raise OSError(errno.EIO, "Input/output error", "/runs/r/record.json.tmp")
        except OSError as e:
            raise RuntimeError("orbax wrapped it") from e

    assert cli_main(faulty) == 1
    assert _one_error_line(capsys) == (
        "error: /runs/r/record.json.tmp: input/output error (a failing disk, or a network "
        "filesystem's fault)"
    )

    def stale(argv):
        raise ValueError(
            "Failed to write 184 bytes to file 5: Stale file handle [os_error_code=116]"
        )

    assert cli_main(stale) == 1  # tensorstore names the errno in its text only
    assert "stale file handle" in _one_error_line(capsys)

    def huge(argv):  # a DICOM decoded in float64 copies, a CSV of one 1 GB line
        raise MemoryError("Unable to allocate 6.71 GiB for an array with shape (60000, 60000)")

    assert cli_main(huge) == 1
    assert _one_error_line(capsys) == (
        "error: out of host memory (Unable to allocate 6.71 GiB for an array with shape "
        "(60000, 60000)); a file larger than this machine can hold, or too many decoding "
        "threads (MEDFT_JAX_DECODE_THREADS)"
    )


def test_a_looping_link_where_a_file_belongs_is_one_line(tmp_path, capsys):
    from medft_jax import locks

    run = tmp_path / "run"
    run.mkdir()
    (run / locks.LOCK_NAME).symlink_to(run / locks.LOCK_NAME)  # a run's lock, say

    def lock(argv):
        locks.acquire(run)
        return 0

    assert cli_main(lock) == 2
    assert _one_error_line(capsys) == (
        f"error: {run / locks.LOCK_NAME}: a symbolic link that loops (or too many links in a row)"
    )


# --- a run is what its inputs are ---------------------------------------------------------------

RUN = ["--strategy", "lp", "--arch", "resnet_tiny", "--weights", "none", "--epochs", "1"]
RUN += ["--batch-size", "8", "--image-size", "32", "--no-progress"]


def _folder(root: Path, shift: int) -> Path:
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(12):
            fakes.image(100 * shift + 10 * i + (c == "b")).save(root / c / f"{i}.png")
    return root


def _records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.rglob("record.json"))]


@pytest.mark.slow
def test_other_images_in_the_same_folder_are_another_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(pretrained, "_UNAVAILABLE", {})
    monkeypatch.setattr(pretrained, "_WARNED", set())
    images = _folder(tmp_path / "imgs", shift=0)
    argv = [*RUN, "--dataset", "folder", "--manual-dir", str(images)]
    argv += ["--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "runs")]
    assert run_cli.main(argv) == 0
    first = _records(tmp_path / "runs")
    assert len(first) == 1 and first[0]["config"]["weights_fingerprint"] == "none"
    capsys.readouterr()
    # The same command again is a skip, and says so before the summary.
    assert run_cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "skipped: record exists (use --force)" in out
    assert out.index("skipped: record exists") < out.index("test metrics:")
    # Other images under the same path: a new run, not the old record.
    for p in (images / "a").iterdir():
        np_img = np.asarray(Image.open(p))
        Image.fromarray(255 - np_img).save(p)
    assert run_cli.main(argv) == 0
    both = _records(tmp_path / "runs")
    assert len(both) == 2
    prints = {r["config"]["data_fingerprint"] for r in both}
    assert len(prints) == 2 and all(prints)


def test_a_class_missing_from_an_evaluation_split_stops_the_run_before_it_starts(tmp_path, capsys):
    """One image of class "rare": some evaluation split lacks it, and its AUROC would be
    undefined there. The run refuses before its folder exists, naming split and class."""
    images = _folder(tmp_path / "imgs", shift=2)
    (images / "rare").mkdir()
    fakes.image(7).save(images / "rare" / "0.png")
    out = tmp_path / "runs"
    argv = [*RUN, "--dataset", "folder", "--manual-dir", str(images)]
    argv += ["--data-dir", str(tmp_path / "data"), "--out", str(out)]
    assert run_cli.main(argv) == 2
    line = _one_error_line(capsys)
    assert re.fullmatch(
        rf"error: {re.escape(str(images.resolve()))}: the (val|test) split \(\d+ examples\) has "
        r"no example of class 'rare', so its AUROC is undefined .* or drop the class",
        line,
    ), line
    assert not out.exists()  # not even the --out folder the flags' check made
    # prepare refuses it alike, and prints no summary first (a script reading that line
    # took the refused dataset for a prepared one).
    argv = ["--dataset", "folder", "--manual-dir", str(images), "--no-progress"]
    assert prepare_cli.main([*argv, "--data-dir", str(tmp_path / "data")]) == 2
    printed = capsys.readouterr()
    assert printed.out == "" and "no example of class 'rare'" in printed.err


def test_a_batch_larger_than_the_listed_training_split_is_refused_before_decoding(
    tmp_path, capsys, monkeypatch
):
    """24 images, --batch-size 64: refused (good), but only after every image was decoded
    into a full cache in the --data-dir this command had just created."""
    from medft_jax.data import local

    images = _folder(tmp_path / "imgs", shift=3)
    out, data_dir = tmp_path / "runs", tmp_path / "data"
    monkeypatch.setattr(local, "ImageReader", None)  # no image is decoded
    argv = ["64" if RUN[i - 1] == "--batch-size" else a for i, a in enumerate(RUN)]
    argv += ["--dataset", "folder", "--manual-dir", str(images)]
    assert run_cli.main([*argv, "--data-dir", str(data_dir), "--out", str(out)]) == 2
    line = _one_error_line(capsys)
    assert re.fullmatch(r"error: --batch-size 64 is larger than the \d+ training examples of "
                        r"folder " + re.escape(str(images)), line), line  # fmt: skip
    assert not data_dir.exists() and not out.exists()


def test_a_batch_above_a_medmnist_training_split_is_refused_before_its_file_is_read(
    tmp_path, capsys, monkeypatch
):
    """BreastMNIST has 546 training images: --batch-size 600 was refused only after its
    .npz was read and its resized cache built (for the 224 px files, minutes)."""
    from medft_jax.data import registry

    monkeypatch.setattr(registry, "load_medmnist", lambda *a, **k: pytest.fail("read"))
    data_dir, out = tmp_path / "data", tmp_path / "runs"
    argv = ["600" if RUN[i - 1] == "--batch-size" else a for i, a in enumerate(RUN)]
    argv += ["--dataset", "medmnist/breastmnist", "--data-dir", str(data_dir), "--out", str(out)]
    assert run_cli.main(argv) == 2
    assert _one_error_line(capsys) == (
        "error: --batch-size 600 is larger than the 546 training examples of medmnist/breastmnist"
    )
    assert not out.exists()


@pytest.mark.slow  # decodes a folder
def test_a_batch_above_the_training_images_left_after_skipping_names_the_folder(tmp_path, capsys):
    """Corrupt files --skip-bad-images drops can leave fewer training images than the batch
    the listing allowed: the refusal names the folder, not only "folder"."""
    images = _folder(tmp_path / "imgs", shift=4)
    for c in ("a", "b"):
        for i in range(2):
            (images / c / f"bad{i}.png").write_bytes(b"not a png")
    out, data_dir = tmp_path / "runs", tmp_path / "data"
    argv = [*RUN, "--dataset", "folder", "--manual-dir", str(images), "--skip-bad-images"]
    argv += ["--val-fraction", "0.3"]
    big = ["64" if argv[i - 1] == "--batch-size" else a for i, a in enumerate(argv)]
    assert run_cli.main([*big, "--data-dir", str(data_dir), "--out", str(out)]) == 2
    listed = int(re.search(r"than the (\d+) training", _one_error_line(capsys))[1])
    argv = [str(listed) if argv[i - 1] == "--batch-size" else a for i, a in enumerate(argv)]
    assert run_cli.main([*argv, "--data-dir", str(data_dir), "--out", str(out)]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    kept = int(re.search(r"than the (\d+) training", line)[1])
    assert kept < listed and line.endswith(f"training examples of folder {images.resolve()}")
    assert not out.exists()


@pytest.mark.slow
def test_12bit_files_train_only_once_their_bits_are_declared(tmp_path, capsys):
    """A folder of 12-bit X-rays in 16-bit PNGs: refused in one line naming a file, nothing
    written; with --bits-stored 12 it trains, and the best parameters carry the 12."""
    from medft_jax.checkpoints.model import load_metadata

    rng = np.random.default_rng(3)
    images = tmp_path / "imgs"
    for c, shift in (("a", 0), ("b", 1000)):
        (images / c).mkdir(parents=True)
        for i in range(12):
            values = rng.integers(0, 3000, (40, 44)) + shift
            Image.fromarray(values.astype(np.uint16)).save(images / c / f"{i}.png")
    out = tmp_path / "runs"
    argv = [*RUN, "--dataset", "folder", "--manual-dir", str(images)]
    argv += ["--data-dir", str(tmp_path / "data"), "--out", str(out)]
    assert run_cli.main(argv) == 2
    line = _one_error_line(capsys)
    assert re.fullmatch(r"error: .*/imgs/[ab]/\d+\.png: 16-bit image whose values all fit .*", line)
    assert not _records(out)
    assert run_cli.main([*argv, "--bits-stored", "12"]) == 0
    assert len(_records(out)) == 1
    best = next(out.rglob("record.json")).parent / "best"
    assert load_metadata(best)["bits_stored"] == 12


@pytest.mark.slow
def test_a_runs_record_counts_evaluation_images_that_copy_training_images(tmp_path, capsys):
    """Two test images are copies of training images: the record says how many, and the
    run's summary says its scores are inflated."""
    import shutil

    images = _folder(tmp_path / "imgs" / "train", shift=1)
    _folder(tmp_path / "imgs" / "test", shift=5)  # seeds 500-611: none of train's
    for c in ("a", "b"):
        shutil.copy(images / c / "3.png", images.parent / "test" / c / "copy.png")
    out = tmp_path / "runs"
    argv = [*RUN, "--dataset", "folder", "--manual-dir", str(images.parent)]
    argv += ["--data-dir", str(tmp_path / "data"), "--out", str(out)]
    assert run_cli.main(argv) == 0
    (record,) = _records(out)
    assert record["eval_copies_of_train"] == {"test": 2}
    assert record["eval_copies_rule"] == "same_label"
    from medft_jax.data import load

    ds = load("folder", manual_dir=images.parent, data_dir=tmp_path / "data", progress=False,
              resize_size=32, crop_size=32)  # fmt: skip
    assert record["split_fingerprint"] == ds.split_fingerprint()
    assert record["source_fingerprint"] == ds.metadata["source_fingerprint"]
    from medft_jax.data.images import DECODING_VERSION

    assert record["decoding_version"] == DECODING_VERSION  # an upgrade is told from an edit
    captured = capsys.readouterr()
    said = "evaluation images that are copies of training images of their label: test 2; scores"
    assert f"{said} inflated" in captured.out


@pytest.mark.slow
def test_run_reads_the_cache_prepare_wrote_and_takes_csv(tmp_path, capsys):
    images = _folder(tmp_path / "imgs", shift=1)
    rows = [{"file": f"{c}/{i}.png", "y": c, "who": f"p{i}"} for c in ("a", "b") for i in range(12)]
    with open(images / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["file", "y", "who"])
        w.writeheader()
        w.writerows(rows)
    data = tmp_path / "data"
    csv_flags = ["--dataset", "csv", "--manual-dir", str(images), "--csv-file", "labels.csv"]
    csv_flags += ["--path-column", "file", "--label-column", "y", "--group-column", "who"]
    prep = [*csv_flags, "--arch", "resnet50", "--image-size", "32", "--data-dir", str(data)]
    assert prepare_cli.main([*prep, "--no-progress"]) == 0
    caches = sorted(p.parent for p in (data / "medft_cache").rglob("meta.json"))
    assert len(caches) == 1 and caches[0].name.startswith("r33_c32")
    argv = [*RUN, *csv_flags, "--data-dir", str(data), "--out", str(tmp_path / "runs")]
    assert run_cli.main(argv) == 0
    assert sorted(p.parent for p in (data / "medft_cache").rglob("meta.json")) == caches
    (record,) = _records(tmp_path / "runs")
    assert record["config"]["dataset"] == "csv" and record["class_names"] == ["a", "b"]


def test_weights_fingerprint_is_the_checkpoint_content(tmp_path, monkeypatch, unchecked_saves):
    from medft_jax.checkpoints.model import content_hash, save_model

    monkeypatch.setattr(pretrained, "_UNAVAILABLE", {"resnet50": "offline"})

    monkeypatch.setattr(pretrained, "_WARNED", set())
    params = {"fc": {"kernel": np.ones((2, 2), np.float32)}}
    a = save_model(tmp_path / "a", params, {}, {"arch": "resnet50", "num_classes": 2})
    params["fc"]["kernel"] = params["fc"]["kernel"] * 2
    b = save_model(tmp_path / "b", params, {}, {"arch": "resnet50", "num_classes": 2})
    fa, fb = (
        fit.weights_fingerprint(str(a), "resnet50"),
        fit.weights_fingerprint(str(b), "resnet50"),
    )
    assert fa == content_hash(a) and fb == content_hash(b) and fa != fb
    assert fit.weights_fingerprint("none", "resnet50") == "none"
    assert fit.weights_fingerprint("auto", "resnet50") == "none"  # unavailable: random init


@pytest.mark.parametrize("cli", [run_cli, sweep_cli, select_cli, report_cli])
def test_help_states_each_default_once_and_never_none(cli):
    text = " ".join(cli.build_parser().format_help().split())
    assert "(default: None)" not in text
    assert not re.search(r"\(default[^)]*\) \(default", text)  # the help said it already
    if cli is run_cli:
        assert (
            "--patience PATIENCE early-stopping patience in epochs (0: no early stopping, "
            "every epoch runs) (default: 5)" in text
        )
        assert "(default: $TFDS_DATA_DIR or TFDS's) --manual-dir" in text


# --- refused before any work, naming the flag ----------------------------------------------------


def test_run_refuses_a_seed_given_twice_before_any_work(tmp_path, capsys):
    """Two runs of one (lr, seed) are one run: found only after training, and not by flag."""
    out = tmp_path / "runs"
    argv = [*RUN, "--dataset", "demo", "--out", str(out)]
    assert run_cli.main([*argv, "--seeds", "0", "1", "0"]) == 2
    assert _one_error_line(capsys) == (
        "error: --seeds 0 1 0: seed 0 given twice; expected distinct seeds"
    )
    assert not out.exists()


def test_a_run_another_process_holds_exits_75_without_a_record(tmp_path, capsys):
    """Busy is not done: ``run && report`` must stop, and can tell "try again later"."""
    from medft_jax import locks, results
    from medft_jax.errors import EXIT_BUSY

    out = tmp_path / "runs"
    argv = [*RUN, "--dataset", "demo", "--out", str(out)]
    (config,) = run_cli.make_configs(run_cli.build_parser().parse_args(argv))
    run = results.run_dir(out, fit.identify(config, fit.load_dataset(config)).to_dict())
    held = locks.acquire(run)  # a separate open file: excludes this process's run too
    try:
        assert run_cli.main(argv) == EXIT_BUSY == 75
    finally:
        held.release()
    captured = capsys.readouterr()
    assert f"{run.name}: running in process {locks.os.getpid()}, skipped" in captured.out
    assert "Traceback" not in captured.err
    assert not list(out.rglob("record.json"))


def _select_argv(out: Path) -> list[str]:
    quick = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "quick.py"
    return ["--config", str(quick), "--only", "arch=resnet50", "--out", str(out)]


@pytest.mark.parametrize(
    "flag,make,message",
    [
        ("--grid-runs", None, "{p}: no such folder; expected the full grid's --out"),
        ("--grid-runs", "file", "{p}: is a file; expected the full grid's --out folder"),
        ("--json", "folder", "{p}: is a folder; expected a file path"),
        ("--json", "under-file", "{p}: {parent} is a file, expected a folder"),
        ("--json", "file", "{p}: an existing file that is no selection's outcome (an image"),
        ("--out", "file", "{p}: {p} is a file, expected a folder"),
    ],
)
def test_select_checks_its_paths_before_any_work(
    flag, make, message, tmp_path, capsys, monkeypatch
):
    """Read or written only after every arm trained: a bad one would waste the selection."""

    def no_work(*args, **kwargs):
        pytest.fail("trained before checking the paths")

    monkeypatch.setattr(select_cli, "successive_halving", no_work)
    parent = tmp_path / "f"
    p = parent / "x.json" if make == "under-file" else tmp_path / "p"
    if make in ("file", "under-file"):
        (p if make == "file" else parent).write_text("a file")
    elif make == "folder":
        p.mkdir()
    argv = [*_select_argv(tmp_path / "s"), flag, str(p)]
    if flag == "--out":
        argv = _select_argv(p)
    assert select_cli.main(argv) == 2
    expected = f"error: {flag} " + message.format(p=p, parent=parent)
    assert _one_error_line(capsys).startswith(expected)
    assert not (tmp_path / "s").exists()
    if make == "file":  # the user's file is kept, not replaced by the outcome
        assert p.read_text() == "a file"


def test_select_json_may_be_an_empty_file_or_an_earlier_outcome(tmp_path):
    """``--json "$(mktemp)"`` holds nothing to lose, and an earlier --json is the selection's
    own: both pass the check that keeps an image or a record from being replaced."""
    empty, earlier = tmp_path / "empty.json", tmp_path / "earlier.json"
    empty.write_text("")
    earlier.write_text(json.dumps({"pick": {}, "rungs": [], "cost": {}}))
    for path in (empty, earlier, tmp_path / "new.json"):
        select_cli._check_json_path(str(path))


@pytest.mark.parametrize(
    ("dataset", "options", "message"),
    [
        ("folder", {"val_fractoin": 0.2}, "dataset folder: unknown option 'val_fractoin'"),
        ("csv", {"csv_file": "l.csv", "label_colum": "y"}, "dataset csv: unknown option"),
        ("bach", {"split_bi": "x"}, "dataset bach: unknown option 'split_bi'; bach takes"),
    ],
)
def test_a_misspelt_dataset_option_is_named_not_a_type_error(dataset, options, message, tmp_path):
    from medft_jax import data

    (tmp_path / "images").mkdir()
    with pytest.raises(data.DataError, match=re.escape(message)):
        data.load(
            dataset,
            manual_dir=tmp_path / "images",
            data_dir=tmp_path / "prepared",
            progress=False,
            **options,
        )
    assert not (tmp_path / "prepared").exists()


@pytest.mark.parametrize(
    ("cli", "argv", "message"),
    [
        (run_cli, [*RUN, "--lr", "1e-4", "--lr", "1e-3"], "--lr given twice"),
        (run_cli, [*RUN, "--seeds", "0", "1", "--seeds=2"], "--seeds given twice"),
        (run_cli, [*RUN, "--arch", "resnet50"], "--arch given twice"),  # RUN has one
        (report_cli, ["--runs", "a", "--runs", "b"], "--runs given twice"),
    ],
)
def test_a_one_value_flag_given_twice_is_refused(cli, argv, message, tmp_path, capsys):
    """argparse kept the last value without a word: `--lr 1e-4 ... --lr 1e-3` ran 1e-3."""
    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(argv)
    assert e.value.code == 2
    assert _one_error_line(capsys) == (
        f"error: {message}; expected it once (see {cli.build_parser().prog} --help)"
    )


@pytest.mark.parametrize(
    ("cli", "argv", "message"),
    [
        (run_cli, [*RUN, "--patient-folders", "--no-patient-folders"], None),
        (run_cli, [*RUN, "--no-patient-folders", "--patient-folders"], None),
        (prepare_cli, ["--dataset", "folder", "--patient-folders", "--no-patient-folders"], None),
        ("port", ["--multilabel", "--no-multilabel"], None),
        ("port", ["--multilabel", "--multilabel"], "--multilabel given twice; expected it once"),
    ],
)
def test_a_switch_said_both_ways_is_refused(cli, argv, message, capsys):
    """``--multilabel --no-multilabel`` was accepted, the last winning: ported as softmax."""
    if cli == "port":
        import weights_port.__main__ as port_cli

        parse = port_cli._port_parser().parse_args
        argv = ["--arch", "resnet_tiny", "--torch-weights", "m.pth", "--out", "o", *argv]
        prog = "python -m weights_port"
    elif cli is prepare_cli:
        parse, prog = prepare_cli.parse_args, "python -m experiments.prepare"
    else:
        parse, prog = cli.build_parser().parse_args, cli.build_parser().prog
    with pytest.raises(SystemExit) as e:
        parse(argv)
    assert e.value.code == 2
    switches = [a for a in argv if "multilabel" in a or "patient-folders" in a]
    message = message or f"{switches[0]} and {switches[1]} contradict each other; give one"
    assert _one_error_line(capsys) == f"error: {message} (see {prog} --help)"


def test_switches_that_agree_may_repeat():
    from medft_jax.errors import ArgumentParser

    p = ArgumentParser(prog="p")
    p.add_argument("--force", action="store_true")
    p.add_argument("--sp", dest="sp", action="store_const", const=True)
    p.add_argument("--also-sp", dest="sp", action="store_const", const=True)
    args = p.parse_args(["--force", "--force", "--sp", "--also-sp"])
    assert args.force and args.sp
    p.add_argument("--no-sp", dest="sp", action="store_const", const=False)
    with pytest.raises(SystemExit):
        p.parse_args(["--sp", "--no-sp"])


@pytest.mark.parametrize(
    ("argv", "flag", "meant"),
    [
        (["--strat", "ft"], "--strat", "--strategy"),  # beside RUN's --strategy lp
        (["--lr-g"], "--lr-g", "--lr-grid"),
    ],
)
def test_an_abbreviated_flag_is_refused_naming_the_full_one(argv, flag, meant, capsys):
    """argparse took ``--seed 1`` as ``--seeds 1`` and ``--strat lp`` beside ``--strategy
    ft`` as the same flag twice, the last winning: the run trained lp."""
    with pytest.raises(SystemExit) as e:
        run_cli.build_parser().parse_args([*RUN, *argv])
    assert e.value.code == 2
    assert _one_error_line(capsys) == (
        f"error: unrecognized arguments: {' '.join(argv)}; flags are spelled out in full: "
        f"{flag} may be {meant} (see python -m experiments.run --help)"
    )


@pytest.mark.parametrize(
    ("parser", "argv", "said"),
    [  # the nearest spelling pointed each at a flag of another meaning
        ("run", [*RUN, "--seed", "1"], "--seed 1; the training seeds are --seeds, the split's "
         "--data-seed (prepare's --seed)"),
        ("prepare", ["--dataset", "demo", "--data-seed", "1"], "--data-seed 1; prepare's split "
         "seed is --seed (run's --data-seed)"),
        ("sweep", ["--config", "quick", "--no-progress"], "--no-progress; the sweep's progress "
         "bars are off by default (--progress shows them)"),
        ("sweep", ["--config", "quick", "--strategy", "ft"], "--strategy ft; filter with --only "
         "strategy=..."),
        ("report", ["--runs", "r", "--seeds", "0"], "--seeds 0; filter with --only seed=..."),
        ("select", ["--config", "quick", "--dry-run"], "--dry-run; experiments.sweep --dry-run "
         "lists a grid's runs and their cost"),
        # Named before a missing required flag: the slip, not what it left out.
        ("run", ["--stratgy", "g_lf"], "--stratgy; did you mean --strategy?"),
        ("weights_port", ["--checkpoint", "x", "--out", "m.pth"], "--checkpoint; --checkpoint "
         "is export's: python -m weights_port export --checkpoint ... --out ..."),
        ("weights_port", ["--arch", "resnet50", "--torch-weight", "f.pth"], "--torch-weight; "
         "flags are spelled out in full: --torch-weight may be --torch-weights"),
    ],
)  # fmt: skip
def test_a_flag_of_another_command_or_meaning_says_where_it_belongs(parser, argv, said, capsys):
    import weights_port.__main__ as port_cli

    parse = {
        "run": lambda a: run_cli.build_parser().parse_args(a),
        "prepare": prepare_cli.parse_args,
        "sweep": lambda a: sweep_cli.build_parser().parse_args(a),
        "report": lambda a: report_cli.build_parser().parse_args(a),
        "select": lambda a: select_cli.build_parser().parse_args(a),
        "weights_port": lambda a: port_cli._port_parser().parse_args(a),
    }[parser]
    with pytest.raises(SystemExit) as e:
        parse(argv)
    assert e.value.code == 2
    prog = "weights_port" if parser == "weights_port" else f"experiments.{parser}"
    assert _one_error_line(capsys) == (
        f"error: unrecognized arguments: {said} (see python -m {prog} --help)"
    )


def test_a_misspelt_flag_or_value_names_the_one_it_is_near(capsys):
    """``--stratgy`` and ``--arch resnet-50`` listed what is valid, not which was meant."""
    import weights_port.__main__ as port_cli
    from medft_jax.config import RunConfig, check_config
    from medft_jax.errors import UserError

    with pytest.raises(SystemExit):
        run_cli.build_parser().parse_args([*RUN, "--stratgy", "lp"])
    assert _one_error_line(capsys) == (
        "error: unrecognized arguments: --stratgy lp; did you mean --strategy? "
        "(see python -m experiments.run --help)"
    )
    with pytest.raises(SystemExit):
        port_cli._port_parser().parse_args(["--arch", "resnet5"])
    assert _one_error_line(capsys).endswith(
        "; did you mean resnet50? (see python -m weights_port --help)"
    )
    with pytest.raises(UserError, match=r"valid: ft, .*, bitfit; did you mean g_lf\?$"):
        check_config(RunConfig(dataset="demo", arch="resnet50", strategy="g-lf"))
    with pytest.raises(
        UserError, match=r"valid: resnet50, densenet121, vgg19, resnet_tiny, vgg_tiny$"
    ):
        check_config(RunConfig(dataset="demo", arch="alexnet", strategy="ft"))


def _port_cli():
    import weights_port.__main__ as port_cli

    return port_cli


PATH_FLAGS = [
    ("run", ["--out"], "a folder"),
    ("run", ["--data-dir"], "a folder"),
    ("run", ["--manual-dir"], "a folder"),
    ("prepare", ["--data-dir"], "a folder"),
    ("prepare", ["--manual-dir"], "a folder"),
    ("prepare", ["--dataset", "csv", "--csv-file"], "a file"),
    ("run", ["--strategy", "ft", "--csv-file"], "a file"),
    ("sweep", ["--config", "c.py", "--out"], "a folder"),
    ("sweep", ["--config"], "a grid file"),
    ("select", ["--config", "c.py", "--out"], "a folder"),
    ("report", ["--runs", "r", "--out"], "a folder"),
    ("report", ["--runs"], "a folder"),
    ("report", ["--runs", "r", "--vs-paper"], "a CSV file"),
    ("port", ["--arch", "resnet_tiny", "--torch-weights", "m.pth", "--out"], "a folder"),
    ("port", ["--arch", "resnet_tiny", "--out", "o", "--torch-weights"], "a file"),
    ("export", ["--out", "m.pth", "--checkpoint"], "a folder"),
    ("export", ["--checkpoint", "ck", "--out"], "a file"),
]


def _parse(name, argv):
    """Parses ``argv`` with command ``name``'s flags; returns its prog (for the message)."""
    if name == "prepare":
        prepare_cli.parse_args(argv)
        return "python -m experiments.prepare"
    clis = {"run": run_cli, "sweep": sweep_cli, "select": select_cli, "report": report_cli}
    if name in clis:
        parser = clis[name].build_parser()
    else:
        parser = _port_cli()._port_parser() if name == "port" else _port_cli()._export_parser()
    parser.parse_args(argv)
    return parser.prog


@pytest.mark.parametrize(("cli", "argv", "expected"), PATH_FLAGS)
def test_an_empty_path_flag_is_refused_naming_it(cli, argv, expected, capsys):
    """``--out ''`` meant the current folder: run wrote its runs there, prepare its cache,
    and export --checkpoint '' named the CWD as the checkpoint that was not one."""
    with pytest.raises(SystemExit) as e:
        _parse(cli, [*argv, ""])
    assert e.value.code == 2
    prog = "python -m " + {"port": "weights_port", "export": "weights_port export"}.get(
        cli, f"experiments.{cli}"
    )
    assert _one_error_line(capsys) == (
        f"error: argument {argv[-1]}: an empty path; expected {expected} (see {prog} --help)"
    )


def test_an_empty_path_writes_nothing_and_the_helpers_refuse_it(tmp_path, capsys, monkeypatch):
    from medft_jax import errors

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        run_cli.main([*RUN, "--out", ""])
    assert "--out: an empty path" in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []
    for helper in (errors.writable_dir, errors.no_file_in_the_way, errors.check_data_dir):
        with pytest.raises(UserError, match=r"^--out: an empty path; expected a folder$"):
            helper("", "--out")


@pytest.mark.parametrize("cli", ["run", "sweep", "select", "report", "port", "export"])
@pytest.mark.parametrize("bad", ["o\nx", "o\tx", "o\x1bx"])
def test_an_output_path_with_a_control_character_is_refused(cli, bad, capsys):
    """``run --out $'o\\nx'`` was accepted: the closing ``record: ...`` line broke in two."""
    argv = dict(PATH_FLAGS_OUT)[cli]
    with pytest.raises(SystemExit) as e:
        _parse(cli, [*argv, bad])
    assert e.value.code == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"error: argument --out: {bad!r} holds a control character")


PATH_FLAGS_OUT = [(c, a) for c, a, _ in PATH_FLAGS if a[-1] == "--out"]


@pytest.mark.parametrize("cli", [sweep_cli, select_cli, report_cli])
def test_a_config_that_is_a_folder_is_said_to_be_one(cli, tmp_path, capsys):
    """``--config <a folder>`` said ``no such file``: it exists, as a folder."""
    (tmp_path / "cfg").mkdir()
    argv = ["--config", str(tmp_path / "cfg"), "--out", str(tmp_path / "o")]
    assert cli.main([*argv, "--runs", str(tmp_path)] if cli is report_cli else argv) == 2
    assert _one_error_line(capsys) == (
        f"error: --config {tmp_path / 'cfg'}: is a folder, expected a grid file (a Python file "
        "with get_config())"
    )
    assert not (tmp_path / "o").exists()


def test_flags_that_collect_may_repeat():
    args = sweep_cli.build_parser().parse_args(
        ["--config", "c.py", "--only", "strategy=lp", "--only", "lr=0.001", "--dry-run"]
    )
    assert args.only == ["strategy=lp", "lr=0.001"]


@pytest.mark.parametrize(
    ("flags", "options", "error"),
    [
        (["--strategy", "l2_sp", "--kernels-only"], (("kernels_only", True),), None),
        (["--strategy", "auto_rgn", "--rgn-estimate-steps", "3"],
         (("rgn_estimate_steps", 3),), None),
        (["--strategy", "auto_rgn", "--rgn-per-step"], (("rgn_per_step", True),), None),
        # per step, no estimate is averaged: the count was ignored without a word
        (["--strategy", "auto_rgn", "--rgn-estimate-steps", "3", "--rgn-per-step"], None,
         "--rgn-per-step applies each step's own RGN, and --rgn-estimate-steps averages an "
         "epoch's first steps; give one of them"),
        # At the default 5 too: the count was dropped as a default, and the pair ran.
        (["--strategy", "auto_rgn", "--rgn-estimate-steps", "5", "--rgn-per-step"], None,
         "--rgn-per-step applies each step's own RGN, and --rgn-estimate-steps averages an "
         "epoch's first steps; give one of them"),
        (["--strategy", "auto_rgn", "--rgn-estimate-steps", "5"], (), None),  # the default
        (["--strategy", "ft", "--kernels-only"], None,
         "--kernels-only applies to l1_sp, l2_sp only, not ft"),
        (["--strategy", "auto_rgn", "--rgn-estimate-steps", "0"], None,
         "--rgn-estimate-steps must be in [1, 1000000], got 0"),
        (["--strategy", "auto_rgn", "--rgn-per-step", "--rgn-mode", "prepass"], None,
         "--rgn-per-step is a stream variant (each step's own RGN), and --rgn-mode prepass "
         "holds a prepass's for the epoch; give one of them"),
    ],
)  # fmt: skip
def test_the_strategy_options_a_grid_takes_are_flags_of_run(flags, options, error):
    """kernels_only, rgn_estimate_steps and rgn_per_step could be set in a grid file only."""
    args = run_cli.build_parser().parse_args([*flags, "--dataset", "demo"])
    if error is None:
        (config,) = run_cli.make_configs(args)
        assert config.strategy_options == options
    else:
        with pytest.raises(UserError) as e:
            run_cli.make_configs(args)
        assert str(e.value) == error


@pytest.mark.parametrize("name", [5, "", "  ", None])
def test_a_grid_name_that_names_nothing_is_refused(name):
    """The name labels listings, reports and the sweep's plan file (``.plans/<name>-...``)."""
    from medft_jax.grid import Grid, GridError

    with pytest.raises(GridError, match=r"^grid name must be a non-empty string, got "):
        Grid(
            name=name,
            datasets=("demo",),
            archs=("resnet_tiny",),
            strategies=("ft",),
            lrs=(1e-3,),
            seeds=(0,),
        )


def test_a_misspelt_grid_setting_or_strategy_option_gets_the_one_it_is_near():
    """``settings={"epoch": 2}`` listed every setting; the near one is named too."""
    from medft_jax.grid import Grid, GridError

    axes = dict(datasets=("demo",), archs=("resnet_tiny",), strategies=("ft",), lrs=(1e-3,))
    said = r"^grid 'g': settings epoch unknown; .*did you mean epochs\?$"
    with pytest.raises(GridError, match=said):
        Grid(name="g", seeds=(0,), settings={"epoch": 2}, **axes)
    with pytest.raises(GridError, match=r"batch_size, .*[a-z]$"):  # two unknown: no guess
        Grid(name="g", seeds=(0,), settings={"epoch": 2, "patiense": 1}, **axes)
    with pytest.raises(UserError, match=r"^--lp-epoch: unknown strategy option; .*lp_epochs\?$"):
        check_config(RunConfig(strategy="lp_ft", strategy_options=(("lp_epoch", 1),)))


@pytest.mark.parametrize(
    "flags, said",
    [
        (
            ["--lr", "1e-3,1e-4"],
            "argument --lr: '1e-3,1e-4': one learning rate per run; --lr-grid runs the "
            "paper's 0.001, 0.0001, 1e-05 and chooses by validation",
        ),
        (["--lr", "1e-4x"], "argument --lr: '1e-4x': expected a number, such as 1e-4"),
        (
            ["--seeds", "0,1, 2"],
            "argument --seeds: '0,1, 2': seeds are separate values: --seeds 0 1 2",
        ),
        (["--seeds", "0", "one"], "argument --seeds: 'one': expected a whole number"),
    ],
)
def test_a_list_written_with_commas_is_told_how_the_flag_takes_it(flags, said, capsys):
    """``--lr 1e-3,1e-4`` got argparse's "invalid float value", no word of --lr-grid."""
    with pytest.raises(SystemExit):
        run_cli.build_parser().parse_args([*RUN, *flags])
    assert _one_error_line(capsys) == f"error: {said} (see python -m experiments.run --help)"


@pytest.mark.parametrize(
    ("command", "argv", "said"),
    [
        ("run", ["--batch-size", "1_0"], "argument --batch-size: invalid int value: '1_0'"),
        ("run", ["--epochs", "\uff18"], "argument --epochs: invalid int value: '\uff18'"),
        ("run", ["--lr", "1_0e-4"], "argument --lr: '1_0e-4': expected a number"),
        ("run", ["--seeds", "\u0661", "1"], "argument --seeds: '\u0661': expected a whole number"),
        ("run", ["--patience", " 3"], "argument --patience: invalid int value: ' 3'"),
        ("select", ["--eta", "1_0"], "argument --eta: invalid int value: '1_0'"),
        ("report", ["--only", "seed=1_0"], "--only seed=1_0: not an integer"),
        ("report", ["--only", "lr=1_0e-4"], "--only lr=1_0e-4: not a number"),
    ],
)
def test_numbers_are_read_as_a_user_writes_them(tmp_path, capsys, command, argv, said):
    """int() and float() read 1_0 as 10, a full-width 8 as 8 and an Arabic-Indic 1 as 1:
    `--lr 1_0e-4` trained at 1e-3 and `--batch-size 1_0` at 10, without a word."""
    cli = {"run": run_cli, "select": select_cli, "report": report_cli}[command]
    base = {
        "run": ["--strategy", "ft", "--dataset", "medmnist/breastmnist"],
        "select": ["--config", "quick"],
        "report": ["--runs", str(tmp_path), "--out", str(tmp_path / "report")],
    }[command]
    try:
        status = cli.main([*base, *argv])
    except SystemExit as e:
        status = e.code
    assert status == 2
    assert said in _one_error_line(capsys)
    assert not (tmp_path / "report").exists()


def test_a_value_with_a_space_is_no_unknown_flag(capsys):
    """``--out "--my runs"`` (a value argparse took) was named an unknown flag, hiding the
    missing required one."""
    with pytest.raises(SystemExit):
        run_cli.build_parser().parse_args(["--out", "--my runs"])
    assert _one_error_line(capsys) == (
        "error: the following arguments are required: --strategy (see python -m "
        "experiments.run --help)"
    )


def test_help_shows_no_rest_markup(capsys):
    """prepare's --help printed its module docstring's reST double backticks."""
    import weights_port.__main__ as port_cli

    for parse in (
        prepare_cli.parse_args,
        lambda a: run_cli.build_parser().parse_args(a),
        lambda a: sweep_cli.build_parser().parse_args(a),
        lambda a: port_cli._port_parser().parse_args(a),
    ):
        with pytest.raises(SystemExit):
            parse(["--help"])
        text = capsys.readouterr().out
        assert text.startswith("usage: ") and "``" not in text


def test_two_spellings_of_one_float32_option_are_one_run():
    """--alpha 0.010000000000000002 is 0.01 in float32, where the penalty computes: it was
    another run than the default's, trained again bit for bit (as np.logspace LRs were)."""
    assert RunConfig(
        strategy="l2_sp", strategy_options=(("alpha", 0.010000000000000002),)
    ) == RunConfig(strategy="l2_sp")
    # Not lr_decay: its powers are taken in float64 (other factors from the third block).
    decay = RunConfig(strategy="llrd", strategy_options=(("lr_decay", 0.700000015),))
    assert decay.strategy_options == (("lr_decay", 0.700000015),)
    # Not one float32: another run, kept as written.
    kept = RunConfig(strategy="l2_sp", strategy_options=(("alpha", 0.0100001),))
    assert kept.strategy_options == (("alpha", 0.0100001),)
    assert RunConfig(
        strategy="auto_rgn", strategy_options=(("rgn_eps", 3e-9),)
    ).strategy_options == (("rgn_eps", 3e-9),)


def test_a_path_that_is_not_utf8_is_refused_naming_the_flag_or_variable(monkeypatch):
    """``--out`` of undecodable bytes failed in orbax after the training (leaving its
    checkpoints), ``MEDFT_JAX_CACHE`` in the model's setup: one line each, before any work."""
    import argparse
    import os

    from medft_jax.data.locations import user_cache_base
    from medft_jax.errors import UserError, path_flag

    bad = os.fsdecode(b"/tmp/runs\xff")
    with pytest.raises(argparse.ArgumentTypeError, match=r"is not UTF-8 text"):
        path_flag("a folder", output=True)(bad)
    assert path_flag("a folder")("/tmp/日本 é") == "/tmp/日本 é"  # UTF-8 of any script
    monkeypatch.setenv("MEDFT_JAX_CACHE", bad)
    with pytest.raises(UserError, match=r"^MEDFT_JAX_CACHE '/tmp/runs\\udcff': not UTF-8 text"):
        user_cache_base()
